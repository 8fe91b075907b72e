"""Write ``potentials/<name>.md``, the model card of a shipped potential, from the files that hold
its numbers: the potential's own provenance, its training log, the test-set evaluations on the
new and the previous split (``benchmarks/results/side_by_side_<data>.json``, from
benchmarks/accuracy/side_by_side.py, the potential under the name ``retrained``), the properties
(``benchmarks/results/properties.json``), the MACE comparison and the MD stability results. Only the prose in ``CARDS`` (data, intended use,
limits, and the machine the shipped files were trained on) is written by hand.

    python potentials/training/write_model_card.py e2former-xtb-organic
    python potentials/training/write_model_card.py e2former-emt-cu
"""

from __future__ import annotations

import ast
import csv
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2former_calc.model_file import read_model_file, stored_hyperparameters, training_seconds  # noqa: E402

#: Where the shipped files were trained ({cpu}: the CPU model their provenance names; the project's
#: machine is an AMD EPYC in some sessions and an Intel Xeon in others).
MACHINE = ("this project's machine ({cpu}, 2 cores, no GPU), one torch thread, while another training (the other "
           "potential's, or MACE's for the comparison) used the other core")

CARDS = {
    "e2former-xtb-organic": {
        "data": "xtb-organic",
        "old_data": "xtb-rmd17",
        "title": "E2Former for small organic molecules (H, C, N, O), trained on xTB-organic",
        "data_text": "`datasets/xtb-organic` (see docs/training.md): GFN2-xTB (tblite) energies and forces of the ten "
                     "rMD17 molecules from three starting conformers each (both azobenzene isomers, both malonaldehyde "
                     "enols, aspirin rotamers), Langevin MD at 300, 500, 700 and 1,000 K, near-minimum samples and the "
                     "isolated atoms, three more 700 K trajectories per molecule from a second conformer ensemble "
                     "(`train.extxyz.gz`), and two supplements from those extra conformers: their trajectories at 500 "
                     "and 1,000 K (`train-extra-500K-1000K.extxyz.gz`) and start-up runs at all four temperatures, "
                     "frames from the first 300 fs of MD started from the force-field conformer "
                     "(`train-startup.extxyz.gz`). The test split is one whole trajectory per molecule and temperature, "
                     "never trained on; the extra conformers' runs start from the same conformers as some held-out "
                     "trajectories (other seeds), and the supplements were added after looking at the test results, so "
                     "the split measures other trajectories from trained starts rather than unseen starts "
                     "(docs/training.md). The old rMD17-style split (`datasets/xtb-rmd17`, random frames of one 500 K "
                     "trajectory) is evaluated too.",
        "intended": "Molecular dynamics, relaxation and energy/force prediction of the ten rMD17 molecules (their "
                    "isomers and rotamers) and very similar small, neutral, closed-shell H/C/N/O molecules in the "
                    "gas phase, from the minimum up to 1,000 K dynamics.",
        "limits": [
            "The reference is GFN2-xTB, a semi-empirical method: the potential inherits xTB's errors against "
            "DFT or experiment; it is not a DFT-accuracy potential.",
            "Trained on ten molecules only: other chemistry (charged species, radicals, bond breaking, "
            "intermolecular complexes, condensed phases) is extrapolation and is not validated.",
            "Isolated molecules: no periodic or condensed-phase data, no stress training.",
            "A short training budget on a 2-core CPU (see above): errors are well above what longer training reaches.",
            "The ZBL repulsion is part of the model up to 0.75 of the sum of the covalent radii, short of every "
            "bond of the data (the potential shipped before 2026-12-05 had it up to the full radii, inside C=O, "
            "aromatic C-C and N=N bonds, where its network had to cancel it; `docs/model.md`). Hot MD pushes close "
            "atoms apart, but no bond breaking or formation was in the data.",
            "Two runs: the start (`potentials/training/e2former-xtb-organic-base.yaml`, kept as "
            "`e2former-xtb-organic-base.pt`: from scratch on `train.extxyz.gz`, 150 epochs, 277.2 min, over three "
            "sessions) and this file, its fine-tuning on the training set and both supplements (12 epochs). The "
            "potentials shipped before were a chain of fine-tunings of the first organic potential "
            "(`potentials/training/e2former-xtb-organic-rmd17.pt` to `-finetune5.pt`).",
            "Cis-azobenzene's held-out 700 K trajectory stays the worst at 700 K (44.1 meV/Å; the aim was "
            "40): its first 17 frames (69 meV/Å; the rest 34) are cis geometries with narrow CNN angles, still "
            "relaxing from the force-field start; the first nine lie 0.18-0.22 Å from the nearest training frame "
            "of azobenzene even with the supplements (0.26-0.34 without; docs/accuracy.md). Geometries that far from "
            "the training set get errors several times the typical ones. At 1,000 K aspirin, azobenzene and "
            "malonaldehyde are at 42-50 meV/Å.",
        ],
    },
    "e2former-emt-cu": {
        "data": "emt-cu-diverse",
        "old_data": "emt-cu",
        "title": "E2Former for copper, trained on ASE's EMT",
        "data_text": "`datasets/emt-cu-diverse` (see docs/training.md): ASE EMT energies, forces and stresses of fcc "
                     "bulk (rattled, strained, triclinic), vacancies and vacancy clusters, (111)/(100)/(110) slabs, "
                     "adatoms, twin boundaries and stacking faults, MD frames from 300 to 1,500 K, liquid copper at "
                     "1,800 K and the isolated atom, 1 to 108 atoms per cell. One whole MD trajectory per temperature "
                     "(and one liquid trajectory) is test data; the old split (`datasets/emt-cu`) is evaluated too.",
        "intended": "A demonstration and test potential for metallic copper: large-cell MD (NVT/NPT) of fcc "
                    "copper, its defects and surfaces, 300–1,800 K including the melt.",
        "limits": [
            "The reference is EMT, a simple effective-medium model, not DFT: use it to exercise workflows and "
            "to compare with EMT, not to predict real copper.",
            "No other elements, no strongly compressed or expanded lattices beyond ±6 % strain. The ZBL repulsion "
            "is part of the model up to 0.75 of the sum of the covalent radii (1.98 Å for Cu-Cu), short of the "
            "first shell (2.55 Å): it acts on 28 pairs in 24 of the 1,592 training frames (mostly rattled bulk, the "
            "closest 1.79 Å) and on none of the test frames, and in hot or compressed MD where atoms come closer (the "
            "potential shipped before the end of 2026-12-04 had it up to the full radii, inside the first shell, where its "
            "network had to cancel force components of RMS 1.15 eV/Å on the test frames; `docs/model.md`).",
            "A light model (L_max 1, 24 channels) chosen for speed in 4,000-atom cells.",
            "Two runs: the start (`potentials/training/e2former-emt-cu-base.yaml`, kept as "
            "`e2former-emt-cu-base.pt`; the same run as `benchmarks/accuracy/e2former-emt-cu-same-budget-switch075.yaml`, "
            "E2Former at MACE's budget: 26 epochs, 65.2 min) and this file, its fine-tuning with a 30-fold stress "
            "weight and a tenfold energy weight (16 epochs).",
        ],
    },
}


RESULTS = ROOT / "benchmarks" / "results"



#: the side-by-side result of E2Former trained from scratch at MACE's budget, by data set
SAME_BUDGET = {"xtb-organic": "xtb-organic-same-budget-132min", "emt-cu-diverse": "emt-cu-same-budget"}
#: the same runs with the ZBL switch of new models (0.75 of the covalent radii; docs/model.md)
SAME_BUDGET_SWITCH075 = {key: value + "-switch075" for key, value in SAME_BUDGET.items()}

def fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def parameters(path) -> int:
    from e2former_calc import E2FormerCalculator

    return sum(p.numel() for p in E2FormerCalculator.from_file(path, quiet=True).model.parameters())


def split_section(results: dict, data: str, title: str, who: str = "retrained") -> list[str]:
    """The potential's rows of a side_by_side table: per configuration type (and temperature)."""
    errors = results["errors"][who]
    kinds = sorted(k for k in errors if not k.startswith("all") and "@" not in k)
    temperatures = sorted({k.split(" @ ")[1][:-2] for k in errors if k.startswith("all @")}, key=float)
    lines = [f"### {title}", "", f"`python benchmarks/accuracy/side_by_side.py --name {data} --test {results['test']} "
             "--potentials ...` (float64). MAE; forces per Cartesian component; 'offset' is the mean energy error "
             "of the configuration type; the same columns for the previous potential are in "
             f"`benchmarks/results/side_by_side_{data}.md`.", ""]
    head = ["test set", "frames", "F MAE (meV/Å)", *(f"F MAE @ {t} K" for t in temperatures), "E MAE (meV/atom)",
            "offset (meV/atom)", "E MAE, offset removed (meV/atom)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds + ["all"]:
        m = errors[kind]
        row = [f"**{kind}**" if kind == "all" else kind, str(m["frames"]), fmt(m["forces_mae_meV_A"]),
               *(fmt(errors.get(f"{kind} @ {t} K", {}).get("forces_mae_meV_A")) for t in temperatures),
               fmt(m["energy_mae_meV_atom"], 2), "–" if kind == "all" else fmt(m["energy_mean_error_meV_atom"], 2),
               "–" if kind == "all" else fmt(m["energy_mae_offset_removed_meV_atom"], 2)]
        lines.append("| " + " | ".join(row) + " |")
    return lines + [""]


def property_lines(properties: dict, data: str) -> list[str]:
    if data.startswith("emt"):
        table = properties.get("copper", {})
        if "retrained" not in table:
            return []
        rows = ["| property | EMT | this potential | difference |", "|---|---|---|---|"]
        for key, value in table["EMT"].items():
            mine = table["retrained"][key]
            delta = f"{mine - value:+.3f} eV" if key.endswith("_eV") else f"{100 * (mine / value - 1):+.1f} %"
            rows.append(f"| {key} | {value:.4g} | {mine:.4g} | {delta} |")
        return rows + [""]
    table = properties.get("molecules", {}).get("retrained")
    if not table:
        return []
    return [f"Relaxed from each xTB minimum (BFGS, fmax 0.005 eV/Å): RMSD to the minimum {min(table.values()):.3f}–"
            f"{max(table.values()):.3f} Å over the {len(table)} minima (median {sorted(table.values())[len(table) // 2]:.3f} Å).", ""]


def starting_point(provenance: dict) -> dict | None:
    """What a fine-tuned potential started from (``model.init_from``: path, name, training time,
    data, SHA-256), None for a potential trained from scratch."""
    if "init_from" not in provenance:
        return None
    return ast.literal_eval(provenance["init_from"])  # a dict written as text; literals only


def training_files(train) -> list[str]:
    """A provenance's ``train``: one file, or a list of them (provenance values are stored as text, so a
    list comes back as its repr)."""
    if isinstance(train, str) and train.startswith("["):
        train = ast.literal_eval(train)
    return [train] if isinstance(train, str) else list(train)


def start_lines(provenance: dict) -> list[str]:
    """The card's line on the weights a fine-tuned potential started from."""
    start = starting_point(provenance)
    if start is None:
        return []
    before = float(start["training_time_s"] or 0)
    return [f"- Fine-tuned from `{start['path']}` ({start['name']}, {before / 60:.1f} min of training behind it, the "
            f"last on {', '.join(f'`{path}`' for path in training_files(start['train']))}; SHA-256 {start['sha256'][:12]}…): "
            f"{training_seconds(provenance) / 60:.1f} min of training in all."]


def main(name: str) -> None:
    card = CARDS[name]
    data = card["data"]
    content = read_model_file(ROOT / "potentials" / f"{name}.pt")
    provenance = content["provenance"]
    if not all(path.startswith(f"datasets/{data}/") for path in training_files(provenance.get("train", ""))):
        raise SystemExit(f"potentials/{name}.pt was trained on {provenance.get('train')}, but the card text here is "
                         f"for datasets/{data}: ship the potential trained on it first")
    config_yaml = ROOT / "potentials" / "training" / f"{name}.yaml"
    settings = yaml.safe_load(config_yaml.read_text())
    results = json.loads((RESULTS / f"side_by_side_{data}.json").read_text())
    old_results = json.loads((RESULTS / f"side_by_side_{card['old_data']}.json").read_text())
    properties_path = RESULTS / "properties.json"
    properties = json.loads(properties_path.read_text()) if properties_path.exists() else None
    mace_path = ROOT / "benchmarks" / "results" / f"accuracy_mace_{data}.json"
    mace = json.loads(mace_path.read_text()) if mace_path.exists() else None
    same_budget_name = SAME_BUDGET.get(data)
    same_budget_path = RESULTS / f"side_by_side_{same_budget_name}.json"
    same_budget = json.loads(same_budget_path.read_text()) if same_budget_name and same_budget_path.exists() else None
    switch075_name = SAME_BUDGET_SWITCH075.get(data)
    switch075_path = RESULTS / f"side_by_side_{switch075_name}.json"
    switch075 = json.loads(switch075_path.read_text()) if switch075_name and switch075_path.exists() else None
    stability_path = ROOT / "benchmarks" / "results" / "md_stability.json"
    stability = json.loads(stability_path.read_text()) if stability_path.exists() else {}
    log_rows = list(csv.DictReader(open(ROOT / "potentials" / "training" / f"{name}.log.csv")))
    cpu = str(provenance["hardware"]).split(",")[0]  # "CPU model, N threads x M processes"
    size_mb = (ROOT / "potentials" / f"{name}.pt").stat().st_size / 1e6

    lines = [f"# {name}: {card['title']}", "",
             f"File: `potentials/{name}.pt` ({size_mb:.1f} MB). Load: "
             f"`E2FormerCalculator.from_pretrained(\"{name}\", dtype=\"float32\")` (or `\"float64\"`).", "",
             "## Data", "", card["data_text"], "",
             "## Model and training", "",
             f"- E2Former, {parameters(ROOT / 'potentials' / (name + '.pt')):,} parameters; hyper-parameters: " + ", ".join(
                 f"{k} {v}" for k, v in stored_hyperparameters(content).items()) + ".",
             f"- E0s (eV, `{settings['data'].get('e0', 'least_squares')}`): " + ", ".join(
                 f"Z={z}: {e:.4f}" for z, e in zip(content["atomic_numbers"], content["e0"])) + ".",
             f"- Training configuration: `potentials/training/{name}.yaml` (`e2former train` on it retrains this "
             f"file from the same seed and data; a rerun was not done to check bit-identity): " + ", ".join(f"{k} {v}" for k, v in settings["training"].items()) + ".",
             f"- Trained for {provenance['epochs']} epochs, {float(provenance['training_time_s']) / 60:.1f} min "
             f"wall-clock ({content['dtype']}) on {MACHINE.format(cpu=cpu)}; the file holds the EMA weights of the "
             f"best validation epoch ({provenance['best_epoch']}). Per-epoch log: `potentials/training/{name}.log.csv`.",
             *start_lines(provenance),
             "",
             "## Test errors", ""]
    lines += split_section(results, card["data"], "Independent test split (whole trajectories never trained on)")
    lines += split_section(old_results, card["old_data"], "Previous test split (random frames of the previous data set, `datasets/" + card["old_data"] + "`)")
    if mace:
        ours = results["errors"]["retrained"]["all"]["forces_mae_meV_A"]
        files = training_files(provenance["train"])
        alone = (f" (its training file, `{files[0]}`, alone: without the "
                 f"{' and '.join(f'`{Path(f).name}`' for f in files[1:])} this file also trained on)") if len(files) > 1 else ""
        lines += [f"MACE {mace['versions']['mace-torch']} ({mace['parameters']:,} parameters) trained on the same "
                  f"splits{alone} for {mace['training_wall_s'] / 60:.1f} min on this project's machine ({mace['cpu']}, one "
                  f"thread): force MAE {mace['test']['overall']['forces_mae']:.1f} meV/Å (this file: {ours:.1f}), "
                  f"energy MAE {mace['test']['overall']['energy_per_atom_mae']:.2f} meV/atom on the independent split "
                  f"({'per kind of structure' if data.startswith('emt') else 'by molecule and temperature'}: "
                  f"`benchmarks/results/side_by_side_{data}.md`, docs/accuracy.md).", ""]
    if mace and same_budget:
        scratch = same_budget["errors"]["same-budget"]["all"]["forces_mae_meV_A"]
        theirs = mace["test"]["overall"]["forces_mae"]
        lines += [f"At MACE's budget, E2Former trained from scratch on the same training set with the ZBL switch at "
                  f"the full covalent radii (`benchmarks/accuracy/e2former-{same_budget_name}.yaml`) reaches a force "
                  f"MAE of {scratch:.1f} meV/Å on the independent split against MACE's {theirs:.1f} "
                  f"(`benchmarks/results/side_by_side_{same_budget_name}.md`)."]
        if switch075:
            new = switch075["errors"]["same-budget-switch075"]["all"]["forces_mae_meV_A"]
            start = starting_point(provenance)
            if stored_hyperparameters(content).get("zbl_switch_off") == 1.0:
                tail = "; this file, trained with the switch at the full radii, is not yet retrained with it"
            elif start is not None and start["name"] == f"e2former-{switch075_name}":
                tail = "; that run is the start this file was fine-tuned from"
            else:
                tail = ""
            lines += [f"The same run with the switch of new models (0.75 of the radii, short of every bond; "
                      f"`benchmarks/accuracy/e2former-{switch075_name}.yaml`) reaches {new:.1f} meV/Å, "
                      f"{'below' if new < theirs else 'not below'} MACE's {theirs:.1f} "
                      f"(`benchmarks/results/side_by_side_{switch075_name}.md`{tail})."]
        lines += [""]
    if properties:
        lines += ["## Properties against the labeller", "", "`python benchmarks/properties.py` (float64; "
                  "table with the previous potential: `benchmarks/results/properties.md`):", ""]
        lines += property_lines(properties, data)
    if data == "xtb-organic" and "organic" in stability:
        o = stability["organic"]
        stable = [n for n, m in o["molecules"].items() if m["stable"]]
        lines += ["", "## MD stability", "",
                  f"Langevin MD at 500 K, 0.5 fs steps, {o['ps']} ps per molecule in float32 "
                  f"(`python benchmarks/md_stability.py`): {len(stable)} of {len(o['molecules'])} molecules stayed "
                  f"stable (no bond more than 0.5 Å from its reference length)"
                  + ("" if len(stable) == len(o["molecules"]) else
                     "; unstable: " + ", ".join(f"{n} (after {m['stable_ps']:.2f} ps)"
                                                for n, m in o["molecules"].items() if not m["stable"]))
                  + f". {next(iter(o['ms_per_step_single'].values())):.1f} ms per step for one "
                  f"{next(iter(o['ms_per_step_single']))} through the ASE calculator on this CPU. "
                  "Table: `benchmarks/results/md_stability.md`."]
    if data == "emt-cu-diverse" and "copper" in stability:
        c = stability["copper"]
        lines += ["", "## MD stability", "",
                  f"{c['atoms']} atoms, Langevin NVT at {c['temperature_K']:.0f} K, {c['timestep_fs']} fs steps, "
                  f"{c['ps']} ps in float32: {c['ms_per_step']:.0f} ms per step on this CPU; potential energy change "
                  f"between the two halves {c['potential_drift_meV_per_atom_first_to_second_half']:+.2f} meV/atom, "
                  f"E2Former minus EMT on the same frames {c['mean_error_vs_emt_meV_per_atom']:+.2f} meV/atom, "
                  f"final mean-square displacement from the lattice sites {c['final_msd_A2']:.3f} Å² "
                  + ("(small and flat: the fcc lattice holds)" if c["final_msd_A2"] < 0.2 else
                     "(large: the lattice did not hold)")
                  + ". Table: `benchmarks/results/md_stability.md`."]
    lines += ["", "## Intended use", "", card["intended"], "", "## Known limits", ""]
    lines += [f"- {item}" for item in card["limits"]]
    best = next(r for r in log_rows if int(r["epoch"]) == int(provenance["best_epoch"]))
    lines += ["", f"Validation errors of the epoch whose EMA weights the file holds ({best['epoch']}): force MAE "
              f"{float(best['valid_forces_mae']):.1f} meV/Å, energy MAE {float(best['valid_energy_per_atom_mae']):.2f} meV/atom."]
    path = ROOT / "potentials" / f"{name}.md"
    path.write_text("\n".join(lines) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main(sys.argv[1])
