"""How much of the ZBL pair term the network has to cancel on real data, per switch-off fraction.

The model's repulsion (``e2former_calc.model.repulsion``) ends at ``s (R_i + R_j)``. Wherever a
labelled structure has pairs inside that radius, the network is trained on top of the term and
must learn to cancel it there. For each data set and each ``s`` this reports, over the frames of
its test file (every tenth), the share of pairs (within 3 Å) inside the switch by pair of elements, the
mean pair energy, and the RMS force component the term puts on the atoms beside the RMS
component of the labels themselves.

    python benchmarks/zbl_on_data.py

Writes ``benchmarks/results/zbl_on_data.{json,md}`` (``--output`` to change the stem).
"""

from __future__ import annotations

import argparse
import collections
import json
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols
from ase.io import read
from ase.neighborlist import neighbor_list

from e2former_calc.model.repulsion import DEFAULT_SWITCH_OFF, LEGACY_SWITCH_OFF, ZBLRepulsion

ROOT = Path(__file__).resolve().parent.parent
DATA = {"xtb-organic": ROOT / "datasets" / "xtb-organic" / "test.extxyz.gz",
        "emt-cu-diverse": ROOT / "datasets" / "emt-cu-diverse" / "test.extxyz.gz"}
#: pairs this close are counted (Å): beyond every switch-off radius of H, C, N, O and Cu (at most
#: 2.64 Å, Cu-Cu at s = 1)
SEARCH = 3.0


def measure(path: Path, switch_off: float, every: int) -> dict:
    frames = read(path, index=f"::{every}")
    numbers = sorted({int(z) for atoms in frames for z in atoms.numbers})
    index = {z: k for k, z in enumerate(numbers)}
    zbl = ZBLRepulsion(numbers, cutoff=5.0, switch_off=switch_off)
    pairs = collections.defaultdict(lambda: [0, 0, 0.0])  # pairs, inside, energy
    zbl_forces, label_forces = [], []
    for atoms in frames:
        i, j, D = neighbor_list("ijD", atoms, SEARCH)
        vectors = torch.tensor(D, requires_grad=True)
        kinds = torch.tensor([index[int(z)] for z in atoms.numbers])
        energies = zbl(vectors.norm(dim=-1), kinds[torch.tensor(i)], kinds[torch.tensor(j)])  # directed: each pair twice
        (grad,) = torch.autograd.grad(0.5 * energies.sum(), vectors)
        # r_ij = x_j - x_i: dE/dx_j = grad, dE/dx_i = -grad
        forces = np.zeros((len(atoms), 3))
        np.add.at(forces, i, grad.numpy())
        np.add.at(forces, j, -grad.numpy())
        zbl_forces.append(forces)
        label_forces.append(atoms.arrays.get("REF_forces", np.zeros((len(atoms), 3))))
        for a, b, e in zip(i, j, energies.detach().numpy()):
            if a < b:
                key = "-".join(sorted((chemical_symbols[atoms.numbers[a]], chemical_symbols[atoms.numbers[b]])))
                pairs[key][0] += 1
                pairs[key][1] += e > 0
                pairs[key][2] += e
    zbl_forces, label_forces = np.concatenate(zbl_forces), np.concatenate(label_forces)
    return {
        "frames": len(frames), "switch_off": switch_off,
        "zbl_force_rms": float(np.sqrt((zbl_forces ** 2).mean())),
        "zbl_force_max": float(np.abs(zbl_forces).max()),
        "label_force_rms": float(np.sqrt((label_forces ** 2).mean())),
        "pairs": {k: {"pairs": n, "inside": int(inside), "mean_energy_eV": float(e / n)}
                  for k, (n, inside, e) in sorted(pairs.items())},
    }


def markdown(results: list[dict], command: str) -> str:
    lines = ["# The ZBL term on the test frames, by switch-off fraction", "",
             (f"`{command}`; pairs within {SEARCH} Å; 'inside' = closer than the switch-off radius "
              "s (R_i + R_j); force components in eV/Å."), "",
             "| data | s | frames | RMS force of the term | largest | RMS force of the labels | pairs inside (share, mean energy per pair) |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        inside = ", ".join(f"{k} {v['inside'] / v['pairs']:.0%} ({v['mean_energy_eV']:.3f} eV)"
                           for k, v in r["pairs"].items() if v["inside"]) or "none"
        lines.append(f"| {r['data']} | {r['switch_off']} | {r['frames']} | {r['zbl_force_rms']:.3f} | "
                     f"{r['zbl_force_max']:.2f} | {r['label_force_rms']:.3f} | {inside} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--every", type=int, default=10, help="every n-th test frame (default 10)")
    p.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "zbl_on_data"))
    args = p.parse_args(argv)
    results = []
    for name, path in DATA.items():
        for s in (LEGACY_SWITCH_OFF, DEFAULT_SWITCH_OFF):
            results.append({"data": name, **measure(path, s, args.every)})
            print(f"{name} s={s}: RMS force of the term {results[-1]['zbl_force_rms']:.3f} eV/Å", flush=True)
    command = "python benchmarks/zbl_on_data.py" + (f" --every {args.every}" if args.every != 10 else "")
    Path(args.output + ".json").write_text(json.dumps({"command": command, "results": results}, indent=1))
    Path(args.output + ".md").write_text(markdown(results, command))
    print(markdown(results, command))


if __name__ == "__main__":
    main()
