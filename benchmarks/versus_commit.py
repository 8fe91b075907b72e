"""This tree against an earlier commit, side by side: fcc Cu, ``e2former-emt-cu``, as a new user runs it.

Each tree runs with its own package and its own shipped potential file (an old tree may not read
a newer file), default calculator settings, ``dtype="float32"`` on the CPU. Per size and repeat,
one fresh process per tree, the trees alternating, the earlier tree first on even repeats and
second on odd ones (so a machine's drift hits both alike):

- the peak memory one energy+forces call adds (``VmHWM`` after the call minus before it) per atom;
- the time of a second call (positions moved by 1e-3 Å) per atom;
- the time of a velocity-Verlet step (2 fs, 5 steps after one warm-up step) per atom, and the peak
  memory added by then.

    python benchmarks/versus_commit.py --commit cb03931 --sizes 6 10 14 --repeats 3 --threads 1 \\
        --output benchmarks/results/versus_cb03931

Writes ``OUTPUT.json`` (every process's numbers, rewritten after each process) and ``OUTPUT.md``
(medians, then/now ratios). The earlier commit is checked out with ``git worktree`` into a
temporary folder, removed after (also on Ctrl-C or SIGTERM). "Now" is the working tree, labelled
with HEAD's hash and "+changes" when it differs from HEAD.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

MEASURE = r"""
import json, sys, time
root, n, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sys.path.insert(0, root)
import numpy as np, torch
torch.set_num_threads(threads)
import e2former_calc
from e2former_calc import E2FormerCalculator
from ase import units
from ase.build import bulk
from ase.md.verlet import VelocityVerlet
assert e2former_calc.__file__.startswith(root), f"imported {e2former_calc.__file__}, not the tree at {root}"
def hwm():
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) for line in handle if line.startswith("VmHWM:")) * 1024
atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
atoms.rattle(0.05, seed=0)
atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device="cpu", dtype="float32")
base = hwm()
atoms.get_forces()
call_peak = (hwm() - base) / 1024 / len(atoms)
atoms.positions += np.random.default_rng(1).normal(scale=1e-3, size=atoms.positions.shape)
t0 = time.perf_counter(); atoms.get_forces(); call = time.perf_counter() - t0
dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
dyn.run(1)
t0 = time.perf_counter(); dyn.run(5); step = (time.perf_counter() - t0) / 5
print(json.dumps({"n_atoms": len(atoms), "call_us_per_atom": 1e6 * call / len(atoms), "call_peak_kib_per_atom": call_peak,
                  "md_us_per_atom": 1e6 * step / len(atoms), "md_peak_kib_per_atom": (hwm() - base) / 1024 / len(atoms)}))
"""

KEYS = ("call_us_per_atom", "call_peak_kib_per_atom", "md_us_per_atom", "md_peak_kib_per_atom")


def measure(tree: Path, n: int, threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tree), str(n), str(threads)], capture_output=True,
                            text=True, env=env, timeout=3600, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{tree} at repeat {n}: {result.stderr.strip().splitlines()[-1:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def table(rows: list[dict], commit: str, head: str) -> str:
    out = [f"This tree ({head}) against {commit}: `e2former-emt-cu`, float32, CPU; medians over processes.", "",
           "| atoms | processes | call µs/atom | call peak KiB/atom | MD step µs/atom | MD peak KiB/atom |",
           "|---|---|---|---|---|---|"]
    for n in sorted({r["n_atoms"] for r in rows}):
        cells = []
        for key in KEYS:
            then = statistics.median(r[key] for r in rows if r["n_atoms"] == n and r["tree"] == "then")
            now = statistics.median(r[key] for r in rows if r["n_atoms"] == n and r["tree"] == "now")
            cells.append(f"{then:,.0f} → {now:,.0f} ({now / then:.2f}×)")
        count = sum(1 for r in rows if r["n_atoms"] == n and r["tree"] == "now")
        out.append(f"| {n:,} | {count} each | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", required=True, help="the earlier commit (any git revision)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[6, 10], help="cubic-cell repeats (4 n^3 atoms)")
    parser.add_argument("--repeats", type=int, default=3, help="processes per tree and size")
    parser.add_argument("--largest-repeats", type=int, default=None, help="processes for the largest size")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--output", type=Path, required=True, help="path without suffix")
    args = parser.parse_args(argv)
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", args.commit], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    head += "+changes" if changed else ""
    scratch = tempfile.TemporaryDirectory()
    folder = Path(scratch.name) / commit
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(folder), commit], cwd=ROOT, check=True,
                   capture_output=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # through the finally below
    rows = []
    report = {"then": commit, "now": head, "threads": args.threads, "started": time.strftime("%Y-%m-%d %H:%M"),
              "command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]), "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    try:
        for n in args.sizes:
            repeats = args.largest_repeats if n == max(args.sizes) and args.largest_repeats else args.repeats
            for repeat in range(repeats):
                order = (("then", folder), ("now", ROOT))
                for tree, path in order if repeat % 2 == 0 else order[::-1]:
                    t0 = time.perf_counter()
                    row = {"tree": tree, "repeat": repeat, "threads": args.threads, **measure(path, n, args.threads)}
                    rows.append(row)
                    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1))
                    print(f"{tree} {row['n_atoms']} atoms, repeat {repeat}: {time.perf_counter() - t0:.0f} s",
                          json.dumps({k: round(row[k], 1) for k in KEYS}), flush=True)
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(folder)], cwd=ROOT, check=False)
        scratch.cleanup()
    markdown = table(rows, commit, head)
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)
    return 0


if __name__ == "__main__":
    sys.exit(main())
