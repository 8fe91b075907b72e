"""Several potentials (e.g. before and after retraining) on one test file, side by side.

Per configuration type (molecule or kind of copper structure), and per temperature where the frames
carry ``temperature_K``: force MAE (meV/Å, per Cartesian component), energy MAE (meV/atom), the
mean energy error (meV/atom; one constant per molecule is the "offset" a force-weighted loss leaves)
and, where fully periodic frames carry ``REF_stress``, the stress MAE (meV/Å³, over the six Voigt
components, as ``train_mace.py`` counts it).

Run with e2former-calc's environment, from the repository root::

    python benchmarks/accuracy/side_by_side.py --name xtb-organic --test datasets/xtb-organic/test.extxyz.gz \
        --potentials before=/tmp/old/e2former-xtb-organic.pt after=potentials/e2former-xtb-organic.pt \
        --mace MACE=benchmarks/results/accuracy_mace_xtb-organic.json   # optional: MACE's errors beside them

Writes ``benchmarks/results/side_by_side_<name>.json`` and ``.md`` (float64 evaluation).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from ase.stress import full_3x3_to_voigt_6_stress  # noqa: E402

from e2former_calc import E2FormerCalculator, predict  # noqa: E402
from e2former_calc.training.data import read_frames  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def errors(frames, calculator) -> dict:
    """Per group (config_type, and config_type at temperature): force MAE, energy MAE, mean energy error."""
    results = predict(frames, calculator, batch_size=16)
    groups = defaultdict(lambda: {"force": [], "energy": [], "stress": []})
    for atoms, result in zip(frames, results):
        kind = str(atoms.info.get("config_type", "all"))
        force = np.abs(result["forces"] - atoms.arrays["REF_forces"]).ravel()
        energy = (result["energy"] - atoms.info["REF_energy"]) / len(atoms)
        stress = None
        if "REF_stress" in atoms.info and "stress" in result:
            reference = np.asarray(atoms.info["REF_stress"], dtype=float).ravel()
            reference = full_3x3_to_voigt_6_stress(reference.reshape(3, 3)) if reference.size == 9 else reference
            stress = np.abs(result["stress"] - reference)
        names = [kind, "all"]
        if "temperature_K" in atoms.info and atoms.info["temperature_K"] > 0:
            names += [f"{kind} @ {atoms.info['temperature_K']:g} K", f"all @ {atoms.info['temperature_K']:g} K"]
        for name in names:
            groups[name]["force"].append(force)
            groups[name]["energy"].append(energy)
            if stress is not None:
                groups[name]["stress"].append(stress)
    out = {}
    for name, values in groups.items():
        energy = np.array(values["energy"])
        out[name] = {"frames": len(energy), "forces_mae_meV_A": 1000 * float(np.concatenate(values["force"]).mean()),
                     "energy_mae_meV_atom": 1000 * float(np.abs(energy).mean()),
                     "energy_mean_error_meV_atom": 1000 * float(energy.mean()),
                     "energy_mae_offset_removed_meV_atom": 1000 * float(np.abs(energy - energy.mean()).mean())}
        if values["stress"]:
            out[name]["stress_mae_meV_A3"] = 1000 * float(np.concatenate(values["stress"]).mean())
    return out


def mace_errors(result: dict, test: str, n_frames: int) -> dict:
    """A MACE result of benchmarks/accuracy/train_mace.py as an :func:`errors` table (its groups
    are keyed the same way); refused unless it was evaluated on the same frames."""
    if Path(result["data"]).name != Path(test).resolve().parent.name or result["test"]["overall"]["frames"] != n_frames:
        raise SystemExit(f"the MACE result {result['name']} is of {result['data']} "
                         f"({result['test']['overall']['frames']} test frames), not of {test} ({n_frames})")
    groups = {"all": result["test"]["overall"], **result["test"]["per_config_type"]}
    if "energy_per_atom_mean_error" not in groups["all"]:
        raise SystemExit("the MACE result has no mean energy errors: evaluate it again "
                         "(train_mace.py ... --evaluate-only)")
    return {name: {"frames": m["frames"], "forces_mae_meV_A": m["forces_mae"],
                   "energy_mae_meV_atom": m["energy_per_atom_mae"],
                   "energy_mean_error_meV_atom": m["energy_per_atom_mean_error"],
                   "energy_mae_offset_removed_meV_atom": m["energy_per_atom_mae_offset_removed"],
                   **({"stress_mae_meV_A3": m["stress_mae"]} if m.get("stress_frames") else {})}
            for name, m in groups.items()}


def molecule_average(table: dict, temperature: str | None) -> float:
    """Force MAE averaged over the configuration types (each molecule counts once)."""
    suffix = f" @ {temperature} K" if temperature else ""
    kinds = [k for k in table if not k.startswith("all") and "@" not in k]
    chosen = [table[k + suffix]["forces_mae_meV_A"] for k in kinds if k + suffix in table]
    return float(np.mean(chosen)) if chosen else float("nan")


def markdown(name: str, test: str, tables: dict) -> str:
    names = list(tables)
    first = tables[names[0]]
    kinds = sorted(k for k in first if not k.startswith("all") and "@" not in k)
    temperatures = sorted({k.split(" @ ")[1][:-2] for k in first if k.startswith("all @")}, key=float)
    lines = [f"# {name}: side by side on `{test}`\n", "Float64 evaluation; force MAE per Cartesian component, "
             "energies per atom; 'offset' is the mean energy error of the configuration type.\n"]
    with_stress = all("stress_mae_meV_A3" in tables[n]["all"] for n in names)
    head = ["test set", "frames"]
    for n in names:
        head += [f"{n} F (meV/Å)", f"{n} E (meV/atom)", f"{n} offset (meV/atom)"]
        head += [f"{n} σ (meV/Å³)"] if with_stress else []
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds + ["all"]:
        row = [f"**{kind}**" if kind == "all" else kind, str(first[kind]["frames"])]
        for n in names:
            t = tables[n][kind]
            row += [f"{t['forces_mae_meV_A']:.1f}", f"{t['energy_mae_meV_atom']:.2f}",
                    "–" if kind == "all" else f"{t['energy_mean_error_meV_atom']:+.2f}"]
            if with_stress:
                row.append(f"{t['stress_mae_meV_A3']:.3f}" if "stress_mae_meV_A3" in t else "–")
        lines.append("| " + " | ".join(row) + " |")
    if temperatures:
        lines += ["", "Force MAE (meV/Å) by temperature:\n"]
        head = ["test set", *(f"{n} @ {t} K" for t in temperatures for n in names)]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for kind in kinds:
            row = [kind]
            for t in temperatures:
                for n in names:
                    entry = tables[n].get(f"{kind} @ {t} K")
                    row.append("–" if entry is None else f"{entry['forces_mae_meV_A']:.1f}")
            lines.append("| " + " | ".join(row) + " |")
        row = ["**mean over types**"]
        for t in temperatures:
            row += [f"**{molecule_average(tables[n], t):.1f}**" for n in names]
        lines.append("| " + " | ".join(row) + " |")
        row = ["largest type"]
        for t in temperatures:
            for n in names:
                row.append(f"{max(tables[n][k + f' @ {t} K']['forces_mae_meV_A'] for k in kinds if k + f' @ {t} K' in tables[n]):.1f}")
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--test", required=True)
    parser.add_argument("--potentials", nargs="*", default=[], metavar="NAME=POTENTIAL",
                        help="none: keep the potentials' errors of the existing side_by_side_<name>.json (to add --mace)")
    parser.add_argument("--mace", nargs="*", default=[], metavar="NAME=JSON",
                        help="also MACE's errors on the same test file, from train_mace.py's accuracy_mace_<name>.json")
    args = parser.parse_args(argv)
    frames = [f for f in read_frames(args.test) if len(f) > 1]
    tables, potentials = {}, dict(p.rpartition("=")[::2] for p in args.potentials)
    if not args.potentials:
        before = json.loads((RESULTS / f"side_by_side_{args.name}.json").read_text())
        if before["test"] != args.test:
            raise SystemExit(f"side_by_side_{args.name}.json is of {before['test']}, not {args.test}")
        potentials = before["potentials"]
        tables = {n: before["errors"][n] for n in potentials}
    for spec in args.potentials:
        name, _, path = spec.rpartition("=")
        calculator = E2FormerCalculator.from_file(path, device="cpu", dtype="float64", quiet=True)
        tables[name or path] = errors(frames, calculator)
        print(f"{name}: F {tables[name or path]['all']['forces_mae_meV_A']:.1f} meV/Å", flush=True)
    for spec in args.mace:
        name, _, path = spec.rpartition("=")
        tables[name or "MACE"] = mace_errors(json.loads(Path(path).read_text()), args.test, len(frames))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"side_by_side_{args.name}.json").write_text(json.dumps(
        {"test": args.test, "potentials": potentials, "mace": dict(p.rpartition("=")[::2] for p in args.mace),
         "errors": tables},
        indent=1) + "\n")
    text = markdown(args.name, args.test, tables)
    (RESULTS / f"side_by_side_{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
