"""How far each held-out frame lies from the training set, beside the potential's error on it.

For molecules: every test frame is compared with every training frame of the same molecule
(``config_type``) by a permutation-invariant geometry descriptor, the sorted heavy-atom pair
distances followed by the sorted distances of each hydrogen to its nearest heavy atom. The
distance between two frames is the root mean square difference of their descriptors (Å); for the
heavy-atom part, sorting both lists is the best matching of the two sets of distances, so it is a
lower bound on how much the pair distances differ under any relabelling of the atoms. Each test
frame gets the distance to its nearest training frame ("coverage distance"); frames of a
trajectory that wanders where the training set never went stand out from the rest.

Per held-out trajectory: median, 90th percentile and largest coverage distance, the number of
frames beyond ``--far`` Å, and the potential's force MAE (meV/Å, float64); then the force MAE of
all frames within and beyond ``--far``. Frames whose molecule has no training frame of the same
composition are skipped (named in the output).

Run from the repository root::

    python benchmarks/accuracy/coverage.py --name xtb-organic --data datasets/xtb-organic \
        --potential potentials/e2former-xtb-organic.pt

Writes ``benchmarks/results/coverage_<name>.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from e2former_calc import E2FormerCalculator, predict  # noqa: E402
from e2former_calc.training.data import read_frames  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def descriptor(atoms) -> np.ndarray:
    """Sorted heavy-atom pair distances, then sorted hydrogen-to-nearest-heavy-atom distances (Å)."""
    heavy = atoms.numbers > 1
    distances = atoms.get_all_distances()
    upper = np.triu_indices(int(heavy.sum()), 1)
    pairs = np.sort(distances[np.ix_(heavy, heavy)][upper])
    hydrogens = np.sort(distances[np.ix_(heavy, ~heavy)].min(0)) if (~heavy).any() and heavy.any() else np.zeros(0)
    return np.concatenate([pairs, hydrogens])


def composition(atoms) -> tuple:
    return tuple(sorted(atoms.get_chemical_symbols()))


def coverage_distances(train, test) -> tuple[np.ndarray, list[str]]:
    """Nearest-training-frame distance of each test frame (NaN where none is comparable)."""
    pools = defaultdict(list)
    for atoms in train:
        if len(atoms) > 1:
            pools[(str(atoms.info.get("config_type")), composition(atoms))].append(descriptor(atoms))
    pools = {key: np.array(value) for key, value in pools.items()}
    out, missing = np.full(len(test), np.nan), set()
    for i, atoms in enumerate(test):
        key = (str(atoms.info.get("config_type")), composition(atoms))
        if key not in pools:
            missing.add(key[0])
            continue
        out[i] = np.sqrt(((pools[key] - descriptor(atoms)) ** 2).mean(1)).min()
    return out, sorted(missing)


def force_errors(frames, potential: str) -> np.ndarray:
    """Force MAE of each frame, meV/Å (float64)."""
    calculator = E2FormerCalculator.from_file(potential, dtype="float64", quiet=True)
    results = predict(frames, calculator, batch_size=16)
    return np.array([1000 * np.abs(r["forces"] - a.arrays["REF_forces"]).mean() for a, r in zip(frames, results)])


def trajectory_key(atoms) -> str:
    return str(atoms.info.get("trajectory", atoms.info.get("config_type", "all")))


def _trajectory_order(name: str):
    match = re.match(r"(.+)_(\d+)K_(c\d+)$", name)
    return (match.group(1), int(match.group(2)), match.group(3)) if match else (name, 0, "")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True, help="data set name for the output files")
    p.add_argument("--data", type=Path, required=True, help="folder with train.extxyz.gz and test.extxyz.gz")
    p.add_argument("--potential", help="a potential file: its per-frame force MAE beside the distances")
    p.add_argument("--far", type=float, default=0.1, help="coverage distance (Å) counted as far from the training set")
    p.add_argument("--output", type=Path, default=None, help="output stem (default benchmarks/results/coverage_<name>)")
    args = p.parse_args(argv)
    train = read_frames(str(args.data / "train.extxyz.gz"))
    test = [a for a in read_frames(str(args.data / "test.extxyz.gz")) if len(a) > 1]
    distance, missing = coverage_distances(train, test)
    errors = force_errors(test, args.potential) if args.potential else np.full(len(test), np.nan)
    groups = defaultdict(list)
    for i, atoms in enumerate(test):
        if np.isfinite(distance[i]):
            groups[trajectory_key(atoms)].append(i)
    rows = []
    for name in sorted(groups, key=_trajectory_order):
        d, e = distance[groups[name]], errors[groups[name]]
        rows.append({"trajectory": name, "frames": len(d), "median_A": float(np.median(d)),
                     "p90_A": float(np.percentile(d, 90)), "max_A": float(d.max()),
                     "far_frames": int((d > args.far).sum()),
                     "forces_mae_meV_A": float(e.mean()) if args.potential else None})
    valid = np.isfinite(distance)
    far, near = valid & (distance > args.far), valid & (distance <= args.far)
    summary = {"frames": int(valid.sum()), "far_frames": int(far.sum()), "far_A": args.far,
               "skipped_config_types": missing}
    if args.potential:
        summary.update(forces_mae_near_meV_A=float(errors[near].mean()) if near.any() else None,
                       forces_mae_far_meV_A=float(errors[far].mean()) if far.any() else None)
        medians = np.array([r["median_A"] for r in rows])
        maes = np.array([r["forces_mae_meV_A"] for r in rows])
        summary["correlation_median_distance_vs_mae"] = (float(np.corrcoef(medians, maes)[0, 1])
                                                         if len(rows) > 2 else None)
    out = {"data": str(args.data), "potential": args.potential, "summary": summary, "trajectories": rows}
    stem = args.output or RESULTS / f"coverage_{args.name}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    lines = [f"# Coverage of the held-out trajectories of {args.data} by its training set", "",
             f"`python benchmarks/accuracy/coverage.py --name {args.name} --data {args.data}"
             + (f" --potential {args.potential}`" if args.potential else "`"), "",
             "Coverage distance: RMS difference (Å) of the sorted heavy-atom pair distances and sorted "
             "H-to-nearest-heavy-atom distances, to the nearest training frame of the same molecule.", "",
             f"| trajectory | frames | median (Å) | 90 % (Å) | largest (Å) | frames beyond {args.far:g} Å |"
             + (" force MAE (meV/Å) |" if args.potential else ""),
             "|---|---|---|---|---|---|" + ("---|" if args.potential else "")]
    for r in rows:
        lines.append(f"| {r['trajectory']} | {r['frames']} | {r['median_A']:.3f} | {r['p90_A']:.3f} | "
                     f"{r['max_A']:.3f} | {r['far_frames']} |"
                     + (f" {r['forces_mae_meV_A']:.1f} |" if args.potential else ""))
    lines.append("")
    lines.append(f"{summary['far_frames']} of {summary['frames']} frames lie beyond {args.far:g} Å.")
    if args.potential and far.any() and near.any():
        lines.append(f"Force MAE of the frames within {args.far:g} Å: {summary['forces_mae_near_meV_A']:.1f} meV/Å; "
                     f"beyond: {summary['forces_mae_far_meV_A']:.1f} meV/Å.")
    if args.potential and summary["correlation_median_distance_vs_mae"] is not None:
        lines.append(f"Correlation of a trajectory's median coverage distance with its force MAE: "
                     f"{summary['correlation_median_distance_vs_mae']:.2f}.")
    if missing:
        lines.append(f"Skipped (no training frame of the same composition): {', '.join(missing)}.")
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return out


if __name__ == "__main__":
    main()
