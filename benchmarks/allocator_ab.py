"""One energy+forces call with and without ``keep_freed_memory()`` (glibc's thresholds), A/B.

Fresh processes in the order without, with, with, without, per size (fcc Cu, ``e2former-emt-cu``,
float32, one thread); per process the median of 3 calls after the first, and the peak memory the
first call added. Prints one JSON line per process and the medians per size and mode::

    python benchmarks/allocator_ab.py --sizes 10 14      # 4,000 and 10,976 atoms
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys

WORKER = r'''
import json, resource, sys, time
import numpy as np, torch
mode, n = sys.argv[1], int(sys.argv[2])
if mode == "with":
    from e2former_calc.allocator import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
from ase.build import bulk
from e2former_calc import E2FormerCalculator
atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
atoms.rattle(0.05, seed=0)
atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device="cpu", dtype="float32", skin=0.0, quiet=True)
def hwm():
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM"))
before = hwm()
atoms.get_forces()
peak = (hwm() - before) / len(atoms)
times, rng = [], np.random.default_rng(1)
for _ in range(3):
    atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
    start = time.perf_counter()
    atoms.get_forces()
    times.append(time.perf_counter() - start)
print(json.dumps({"mode": mode, "n_atoms": len(atoms), "us_per_atom": 1e6 * sorted(times)[1] / len(atoms),
                  "peak_kib_per_atom": peak}))
'''


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 14], help="cubic repeats (4 n^3 atoms)")
    args = parser.parse_args(argv)
    rows = []
    for n in args.sizes:
        for mode in ("without", "with", "with", "without"):
            out = subprocess.run([sys.executable, "-c", WORKER, mode, str(n)], capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    for n in sorted({r["n_atoms"] for r in rows}):
        for mode in ("without", "with"):
            mine = [r for r in rows if r["n_atoms"] == n and r["mode"] == mode]
            print(f"{n:6d} atoms, {mode:7s}: {statistics.median(r['us_per_atom'] for r in mine):6.0f} µs/atom, "
                  f"{statistics.median(r['peak_kib_per_atom'] for r in mine):5.0f} KiB/atom")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
