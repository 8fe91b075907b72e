"""Write ``potentials/<name>.md``, the model card of a shipped potential, from the files that hold
its numbers: the potential's own provenance, its training log, the test-set evaluation
(``benchmarks/results/accuracy_e2former_<data>.json``, from benchmarks/accuracy/compare.py), the
MACE comparison and the MD stability results. Only the prose in ``CARDS`` (data, intended use,
limits, and the machine the shipped files were trained on) is written by hand.

    python potentials/training/write_model_card.py e2former-xtb-organic
    python potentials/training/write_model_card.py e2former-emt-cu
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2former_calc.model_file import read_model_file  # noqa: E402

#: Where the shipped files were trained (their provenance names the CPU architecture only).
MACHINE = ("this project's machine (AMD EPYC, 2 cores, no GPU), one torch thread, while the MACE comparison run "
           "used the other core")

CARDS = {
    "e2former-xtb-organic": {
        "data": "xtb-rmd17",
        "title": "E2Former for small organic molecules (H, C, N, O), trained on xTB-rMD17",
        "data_text": "the ten xTB-rMD17 molecules together (`datasets/xtb-rmd17`, see docs/training.md): "
                     "GFN2-xTB (tblite) energies and forces of frames from Langevin MD at 500 K; "
                     "9,500 training, 500 validation and 2,000 test frames (per molecule 950 / 50 / 200, fixed by seed).",
        "intended": "Molecular dynamics, relaxation and energy/force prediction of the ten rMD17 molecules and "
                    "very similar small, neutral, closed-shell H/C/N/O molecules in the gas phase, near the "
                    "configurations of 300–500 K dynamics.",
        "limits": [
            "The reference is GFN2-xTB, a semi-empirical method: the potential inherits xTB's errors against "
            "DFT or experiment; it is not a DFT-accuracy potential.",
            "Trained on ten molecules only: other chemistry (charged species, radicals, bond breaking, "
            "intermolecular complexes, condensed phases) is extrapolation and is not validated.",
            "Isolated molecules: no periodic or condensed-phase data, no stress training.",
            "A short training budget on a 2-core CPU (50 minutes): errors are well above what longer training reaches.",
            "Energies across molecules: the loss weights forces 100:1 over per-atom energies (MACE's convention), and "
            "the test energy error is almost entirely one constant per molecule (the 'mean E error' column, up to "
            "32 meV/atom for azobenzene); with it removed the energy MAE is 0.2–1.0 meV/atom. The offset changes no "
            "force and no trajectory of that molecule, but energy differences between different molecules "
            "(reaction or conformer-family energies across compositions) are not reliable.",
        ],
    },
    "e2former-emt-cu": {
        "data": "emt-cu",
        "title": "E2Former for copper, trained on ASE's EMT",
        "data_text": "`datasets/emt-cu` (see docs/training.md): ASE EMT energies, forces and stresses of fcc "
                     "bulk (rattled, strained, triclinic), vacancies, (111)/(100) slabs and MD frames from 300 to "
                     "1,500 K, 8 to 108 atoms per cell; 1,120 training, 140 validation, 140 test frames.",
        "intended": "A demonstration and test potential for metallic copper: large-cell MD (NVT/NPT) of fcc "
                    "copper, vacancies and surfaces, within 300–1,500 K.",
        "limits": [
            "The reference is EMT, a simple effective-medium model, not DFT: use it to exercise workflows and "
            "to compare with EMT, not to predict real copper.",
            "No liquid copper above about 1,500 K, no other elements, no strongly compressed or expanded lattices "
            "beyond ±6 % strain.",
            "A light model (L_max 1, 24 channels) chosen for speed in 4,000-atom cells.",
            "Energies differ between kinds of structure by a near-constant per kind (the 'mean E error' column): "
            "bulk and MD frames are +4 to +6 meV/atom, the slabs -14 to -20 meV/atom. Surface energies (slab "
            "minus bulk) are therefore too low by roughly 20-25 meV per slab atom; within one kind of structure the "
            "energy MAE is 0.1-1.3 meV/atom. Training with a larger energy weight is the remedy.",
        ],
    },
}


def fmt(v, digits=1):
    return "–" if v is None else f"{v:.{digits}f}"


def main(name: str) -> None:
    card = CARDS[name]
    data = card["data"]
    content = read_model_file(ROOT / "potentials" / f"{name}.pt")
    provenance = content["provenance"]
    config_yaml = ROOT / "potentials" / "training" / f"{name}.yaml"
    settings = yaml.safe_load(config_yaml.read_text())
    results = json.loads((ROOT / "benchmarks" / "results" / f"accuracy_e2former_{data}.json").read_text())
    mace_path = ROOT / "benchmarks" / "results" / f"accuracy_mace_{data}.json"
    mace = json.loads(mace_path.read_text()) if mace_path.exists() else None
    stability_path = ROOT / "benchmarks" / "results" / "md_stability.json"
    stability = json.loads(stability_path.read_text()) if stability_path.exists() else {}
    log_rows = list(csv.DictReader(open(ROOT / "potentials" / "training" / f"{name}.log.csv")))
    has_stress = "stress_mae" in results["test"]["overall"]
    size_mb = (ROOT / "potentials" / f"{name}.pt").stat().st_size / 1e6

    lines = [f"# {name}: {card['title']}", "",
             f"File: `potentials/{name}.pt` ({size_mb:.1f} MB). Load: "
             f"`E2FormerCalculator.from_pretrained(\"{name}\", dtype=\"float32\")` (or `\"float64\"`).", "",
             "## Data", "", card["data_text"], "",
             "## Model and training", "",
             f"- E2Former, {results['parameters']:,} parameters; hyper-parameters: " + ", ".join(
                 f"{k} {v}" for k, v in content["config"].items()) + ".",
             f"- E0s (eV, `{settings['data'].get('e0', 'least_squares')}`): " + ", ".join(
                 f"Z={z}: {e:.4f}" for z, e in zip(content["atomic_numbers"], content["e0"])) + ".",
             f"- Training configuration: `potentials/training/{name}.yaml` (`e2former train` on it retrains this "
             f"file from the same seed and data; a rerun was not done to check bit-identity): " + ", ".join(f"{k} {v}" for k, v in settings["training"].items()) + ".",
             f"- Trained for {provenance['epochs']} epochs, {float(provenance['training_time_s']) / 60:.1f} min "
             f"wall-clock ({content['dtype']}) on {MACHINE}; the file holds the EMA weights of the "
             f"best validation epoch ({provenance['best_epoch']}). Per-epoch log: `potentials/training/{name}.log.csv`.",
             "",
             "## Test errors", "",
             "Command: `python benchmarks/accuracy/compare.py --name " + data + " --data datasets/" + data +
             f" --potential potentials/{name}.pt` (float64 evaluation). MAE over the test split; energies per "
             "structure and per atom, forces per Cartesian component.", ""]
    offsets = results.get("energy_offsets", {})
    head = ["test set", "frames", "E MAE (meV)", "E MAE (meV/atom)", "mean E error (meV/atom)",
            "E MAE, mean removed (meV/atom)", "F MAE (meV/Å)", "F RMSE (meV/Å)"]
    if has_stress:
        head.append("σ MAE (meV/Å³)")
    if not offsets:
        head = [h for h in head if "mean" not in h]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    per = results["test"]["per_config_type"]
    for kind in sorted(per) + ["all"]:
        m = results["test"]["overall"] if kind == "all" else per[kind]
        o = offsets.get(kind, {})
        row = [kind, str(m["frames"]), fmt(m["energy_mae"]), fmt(m["energy_per_atom_mae"], 2),
               fmt(o.get("mean_error_meV_per_atom"), 2), fmt(o.get("mae_offset_removed_meV_per_atom"), 2),
               fmt(m["forces_mae"]), fmt(m["forces_rmse"])]
        if not offsets:
            row = row[:4] + row[6:]
        if has_stress:
            row.append(fmt(m.get("stress_mae"), 3))
        lines.append("| " + " | ".join(row) + " |")
    if mace:
        lines += ["", f"MACE {mace['versions']['mace-torch']} ({mace['parameters']:,} parameters) trained on the same "
                  f"splits for the same wall-clock budget: force MAE {mace['test']['overall']['forces_mae']:.1f} meV/Å, "
                  f"energy MAE {mace['test']['overall']['energy_per_atom_mae']:.2f} meV/atom "
                  f"(full table: `benchmarks/results/accuracy_{data}.md`, docs/accuracy.md)."]
    if data == "xtb-rmd17" and "organic" in stability:
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
    if data == "emt-cu" and "copper" in stability:
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
