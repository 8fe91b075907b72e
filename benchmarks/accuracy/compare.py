"""E2Former against MACE on the same test split: evaluates the E2Former potential, reads MACE's
results (from ``train_mace.py``) and writes the side-by-side table.

Run with e2former-calc's environment, from the repository root::

    python benchmarks/accuracy/compare.py --name xtb-rmd17 --data datasets/xtb-rmd17 \
        --potential potentials/e2former-xtb-organic.pt
    python benchmarks/accuracy/compare.py --name emt-cu --data datasets/emt-cu \
        --potential potentials/e2former-emt-cu.pt

Writes ``benchmarks/results/accuracy_e2former_<name>.json`` and ``accuracy_<name>.md``; the
README and docs/accuracy.md quote the tables.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2former_calc import E2FormerCalculator, predict  # noqa: E402
from e2former_calc.evaluation import tally_errors  # noqa: E402
from e2former_calc.model_file import training_seconds  # noqa: E402
from e2former_calc.training.data import read_frames  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def evaluate_e2former(args) -> dict:
    calc = E2FormerCalculator.from_file(args.potential, device="cpu", dtype="float64", quiet=True)
    frames = read_frames(Path(args.data) / "test.extxyz.gz")
    start = time.perf_counter()
    results = predict(frames, calc, batch_size=16)
    seconds = time.perf_counter() - start
    tally, parity = tally_errors(frames, results)
    # the part of the energy error that is one constant per configuration type (a per-molecule offset
    # moves no force and no MD trajectory of that molecule): MAE before and after removing it
    offsets = {}
    for kind in sorted(set(parity["config_type"])):
        chosen = [k for k, t in enumerate(parity["config_type"]) if t == kind]
        errors = np.array([parity["energy_pred"][k] - parity["energy_ref"][k] for k in chosen])  # eV/atom
        offsets[kind] = {"mean_error_meV_per_atom": 1000 * float(errors.mean()),
                         "mae_offset_removed_meV_per_atom": 1000 * float(np.abs(errors - errors.mean()).mean())}
    provenance = calc.metadata.get("provenance", {})
    model = calc.model
    return {
        "model": "E2Former", "name": args.name, "potential": str(args.potential),
        "parameters": sum(p.numel() for p in model.parameters()),
        # a fine-tuned potential's budget includes the training of the weights it started from
        "training_wall_s": training_seconds(provenance),
        "epochs": provenance.get("epochs"), "hardware": provenance.get("hardware"),
        "test": {"overall": tally.metrics("all"),
                 "per_config_type": {k: tally.metrics(k) for k in tally.keys() if k != "all"}},
        "energy_offsets": offsets, "evaluation_s": seconds, "torch": torch.__version__,
    }


def threads(hardware: str) -> str:
    """'x86_64, 1 threads x 1 processes' -> '1 thread(s) x 1 process(es)'."""
    match = re.search(r"(\d+) threads x (\d+) processes", hardware or "")
    return f"{match[1]} thread(s) x {match[2]} process(es)" if match else str(hardware)


def cell(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}"


def table(e2, mace, stress: bool) -> str:
    kinds = sorted(e2["test"]["per_config_type"])
    head = ["test set", "frames", "E2Former E (meV/atom)", "MACE E (meV/atom)", "E2Former F (meV/Å)", "MACE F (meV/Å)",
            "F ratio E2Former/MACE"]
    if stress:
        head += ["E2Former σ (meV/Å³)", "MACE σ (meV/Å³)"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for kind in kinds + ["all"]:
        a = e2["test"]["overall"] if kind == "all" else e2["test"]["per_config_type"][kind]
        b = (mace["test"]["overall"] if kind == "all" else mace["test"]["per_config_type"].get(kind)) if mace else None
        ratio = a["forces_mae"] / b["forces_mae"] if b else None
        values = [f"**{kind}**" if kind == "all" else kind, str(a["frames"]), cell(a["energy_per_atom_mae"], 2),
                  cell(b and b["energy_per_atom_mae"], 2), cell(a["forces_mae"]), cell(b and b["forces_mae"]),
                  cell(ratio, 2)]
        if stress:
            values += [cell(a.get("stress_mae"), 3), cell(b and b.get("stress_mae"), 3)]
        rows.append("| " + " | ".join(values) + " |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--name", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--potential", required=True)
    args = parser.parse_args(argv)
    e2 = evaluate_e2former(args)
    (RESULTS / f"accuracy_e2former_{args.name}.json").write_text(json.dumps(e2, indent=1) + "\n")
    mace_path = RESULTS / f"accuracy_mace_{args.name}.json"
    mace = json.loads(mace_path.read_text()) if mace_path.exists() else None
    stress = "stress_mae" in e2["test"]["overall"]
    lines = [f"# Test-set accuracy on {args.name}: E2Former and MACE\n",
             f"Same train/validation/test files (`{args.data}`); energies per atom and force components, MAE.\n",
             "| model | parameters | training wall-clock | epochs | threads |", "|---|---|---|---|---|",
             f"| E2Former | {e2['parameters']:,} | {e2['training_wall_s'] / 60:.1f} min | {e2['epochs']} | {threads(e2['hardware'])} |"]
    if mace:
        lines.append(f"| MACE {mace['versions'].get('mace-torch', '')} | {mace['parameters']:,} | "
                     f"{mace['training_wall_s'] / 60:.1f} min | {mace['epochs_completed']:.2f} | {mace['threads']} thread(s) |")
    else:
        lines.append("| MACE | not run | | | |")
    lines += ["", table(e2, mace, stress), ""]
    text = "\n".join(lines)
    (RESULTS / f"accuracy_{args.name}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
