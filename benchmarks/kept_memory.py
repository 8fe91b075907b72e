"""What autograd keeps between the forward and the backward pass of one energy+forces call.

Fcc copper (a = 3.61 Å, cubic cell repeated ``--size`` times: 4 n^3 atoms, rattled 0.05 Å), the
shipped ``e2former-emt-cu`` through the ASE calculator (its default options). A saved-tensors
hook records every tensor autograd keeps for the backward pass of the second call (the first
builds the neighbour list and the plan); distinct storages are counted once, by the line of
``e2former_calc`` that saved them and their shape. KiB per atom.

``--compare-tree PATH`` runs the same in a child process with another source tree first on
``PYTHONPATH`` (e.g. a copy of the code before a change), so that both columns come from one run.

    python benchmarks/kept_memory.py --size 10 --compare-tree /tmp/before

Writes ``benchmarks/results/kept_memory.{json,md}`` (``--output`` to change the stem).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def census(size: int, dtype: str) -> dict:
    """``{"atoms", "total_kib_per_atom", "rows": [[where, shape, KiB/atom], ...]}`` for this tree."""
    import torch
    from ase.build import bulk

    from e2former_calc import E2FormerCalculator

    torch.set_num_threads(1)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(size)
    atoms.rattle(0.05, seed=1)
    atoms.calc = E2FormerCalculator.from_file(str(ROOT / "potentials" / "e2former-emt-cu.pt"), dtype=dtype, quiet=True)
    atoms.get_forces()
    seen, kept = set(), collections.Counter()

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in seen:
            seen.add(storage.data_ptr())
            frames = [f for f in traceback.extract_stack()[:-1] if "e2former_calc" in f.filename]
            where = f"{frames[-1].filename.split('e2former_calc')[-1].lstrip('/')}:{frames[-1].lineno}" if frames else "?"
            kept[(where, str(tuple(t.shape)))] += storage.nbytes()
        return t

    atoms.rattle(0.01, seed=2)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        atoms.get_forces()
    n = len(atoms)
    rows = [[where, shape, nbytes / n / 1024] for (where, shape), nbytes in kept.most_common()]
    return {"atoms": n, "dtype": dtype, "total_kib_per_atom": sum(kept.values()) / n / 1024, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=10, help="cubic cells per side (4 n^3 atoms)")
    parser.add_argument("--dtype", default="float32", choices=("float32", "float64"))
    parser.add_argument("--compare-tree", help="another source tree, run in a child process")
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "kept_memory"))
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(census(args.size, args.dtype)))
        return
    results = {"this tree": census(args.size, args.dtype)}
    if args.compare_tree:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([args.compare_tree, os.environ.get("PYTHONPATH", "")]))
        out = subprocess.run([sys.executable, __file__, "--child", "--size", str(args.size), "--dtype", args.dtype],
                             env=env, capture_output=True, text=True, check=True, cwd=args.compare_tree)
        results[args.compare_tree] = json.loads(out.stdout.strip().splitlines()[-1])
    stem = Path(args.output)
    stem.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    lines = [f"# Tensors kept for the backward pass of one energy+forces call ({results['this tree']['atoms']} Cu "
             f"atoms, e2former-emt-cu, {args.dtype})", "",
             "`python benchmarks/kept_memory.py " + " ".join(sys.argv[1:]) + "`; KiB per atom, distinct storages.", ""]
    for name, result in results.items():
        lines += [f"## {name}: {result['total_kib_per_atom']:.1f} KiB/atom", "", "| saved at | shape | KiB/atom |",
                  "|---|---|---|"]
        lines += [f"| {where} | {shape} | {kib:.2f} |" for where, shape, kib in result["rows"] if kib >= 0.5]
        lines.append("")
    stem.with_suffix(".md").write_text("\n".join(lines))
    for name, result in results.items():
        print(f"{name}: {result['total_kib_per_atom']:.1f} KiB/atom kept for the backward pass")
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
