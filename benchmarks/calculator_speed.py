"""Speed and memory of the ASE calculator: energy + forces per call, by size, preset and dtype.

For fcc copper of about 100, 1,000 and 10,000 atoms (untrained weights: speed does not depend on
them), each configuration in a fresh process:

* seconds per energy+forces call (median over repeats, positions moved a little each call, the
  neighbour list rebuilt every call: skin 0) and atom·steps per second;
* the fraction of that call spent building the neighbour list, and the same fraction in a short
  velocity-Verlet run with a 0.3 Å Verlet skin (the calculator's default);
* peak resident memory of the process above its size before the first call, per atom.

    python benchmarks/calculator_speed.py            # writes results/calculator_speed.{json,md}
    python benchmarks/calculator_speed.py --quick    # ~100 and ~1,000 atoms only
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from proc_memory import available_kib, peak_rss_kib  # benchmarks/proc_memory.py

RESULTS = Path(__file__).resolve().parent / "results"
SIZES = {100: 3, 1000: 6, 10000: 14}  # cubic fcc repeats: 4 n^3 atoms (108, 864, 10976)
SKIN = 0.3  # Å, the calculator's default




def measure_one(size: int, preset: str, dtype: str, repeats: int, device: str) -> dict:
    import numpy as np
    import torch
    from ase import units
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet

    from e2former_calc import E2FormerCalculator
    from e2former_calc import predictor as predictor_module
    from e2former_calc.workflows import thermalize

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(SIZES[size])
    atoms.rattle(0.05, seed=0)
    before = peak_rss_kib()

    # time spent in the neighbour list, measured by wrapping the function the predictor calls
    spent = {"neighbours": 0.0}
    original_update = predictor_module.VerletList.update

    def timed_update(self, *args, **kwargs):
        start = time.perf_counter()
        out = original_update(self, *args, **kwargs)
        spent["neighbours"] += time.perf_counter() - start
        return out

    predictor_module.VerletList.update = timed_update

    calc = E2FormerCalculator.from_config(preset, species=("Cu",), device=device, dtype=dtype, skin=0.0, quiet=True)
    atoms.calc = calc
    atoms.get_forces()  # warm-up
    times, fractions = [], []
    rng = np.random.default_rng(1)
    for _ in range(repeats):
        atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
        spent["neighbours"] = 0.0
        start = time.perf_counter()
        atoms.get_forces()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        fractions.append(spent["neighbours"] / elapsed)
    peak = peak_rss_kib() - before

    md_atoms = atoms.copy()
    md_atoms.calc = E2FormerCalculator.from_config(preset, species=("Cu",), device=device, dtype=dtype, skin=SKIN, quiet=True)
    thermalize(md_atoms, 1000, seed=0)
    dyn = VelocityVerlet(md_atoms, timestep=2 * units.fs)
    dyn.run(1)
    spent["neighbours"] = 0.0
    steps = max(3, repeats)
    start = time.perf_counter()
    dyn.run(steps)
    md_seconds = time.perf_counter() - start
    seconds = statistics.median(times)
    return {
        "n_atoms": len(atoms),
        "preset": preset,
        "dtype": dtype,
        "device": device,
        "seconds_per_call": seconds,
        "atom_steps_per_second": len(atoms) / seconds,
        "neighbour_fraction_no_skin": statistics.median(fractions),
        "neighbour_fraction_md_skin": spent["neighbours"] / md_seconds,
        "md_seconds_per_step": md_seconds / steps,
        "neighbour_builds_in_md": md_atoms.calc.predictor.verlet.builds,
        "md_steps": steps + 1,
        "peak_memory_kib_per_atom": peak / len(atoms),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--one", nargs=3, metavar=("SIZE", "PRESET", "DTYPE"), help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    if args.one:
        size, preset, dtype = int(args.one[0]), args.one[1], args.one[2]
        repeats = args.repeats if size < 5000 else max(2, args.repeats // 2)
        print(json.dumps(measure_one(size, preset, dtype, repeats, args.device)))
        return
    sizes = [100, 1000] if args.quick else [100, 1000, 10000]
    records = []
    started = time.time()
    memory_per_atom = {}  # KiB/atom measured at the previous size, to skip what cannot fit
    for size in sizes:
        for preset in ("small", "medium"):
            for dtype in ("float32", "float64"):
                projected = memory_per_atom.get((preset, dtype), 0) * 4 * SIZES[size] ** 3
                if projected > 0.8 * available_kib():
                    records.append({"n_atoms": 4 * SIZES[size] ** 3, "preset": preset, "dtype": dtype, "device": args.device,
                                    "skipped": f"projected peak memory {projected / 2**20:.0f} GiB exceeds 80% of the available memory"})
                    print(f"[{time.time() - started:6.0f}s] {size} atoms {preset} {dtype}: skipped, {records[-1]['skipped']}", flush=True)
                    continue
                command = [sys.executable, __file__, "--one", str(size), preset, dtype, "--device", args.device,
                           "--repeats", str(args.repeats)]
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode != 0:
                    records.append({"n_atoms": 4 * SIZES[size] ** 3, "preset": preset, "dtype": dtype, "device": args.device,
                                    "skipped": f"failed with exit code {result.returncode}: {result.stderr.strip()[-300:]}"})
                    print(f"[{time.time() - started:6.0f}s] {size} atoms {preset} {dtype}: {records[-1]['skipped']}", flush=True)
                    continue
                record = json.loads(result.stdout.strip().splitlines()[-1])
                memory_per_atom[(preset, dtype)] = record["peak_memory_kib_per_atom"]
                records.append(record)
                print(f"[{time.time() - started:6.0f}s] {record['n_atoms']:6d} atoms {preset:6s} {dtype}: "
                      f"{record['seconds_per_call'] * 1e3:9.1f} ms/call, {record['atom_steps_per_second']:8.0f} atom·steps/s, "
                      f"neighbour list {100 * record['neighbour_fraction_no_skin']:4.1f}% (MD, skin {SKIN} Å: "
                      f"{100 * record['neighbour_fraction_md_skin']:4.1f}%), {record['peak_memory_kib_per_atom']:.0f} KiB/atom",
                      flush=True)
    path = args.json or RESULTS / f"calculator_speed{'_quick' if args.quick else ''}{'' if args.device == 'cpu' else '_' + args.device}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(records, indent=1))
    lines = ["| atoms | preset | dtype | ms per energy+forces call (list rebuilt) | atom·calls/s | MD ms per step (0.3 Å skin) "
             "| MD atom·steps/s | neighbour list share, rebuilt | neighbour list share, MD | peak memory (KiB/atom) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        if "skipped" in r:
            lines.append(f"| {r['n_atoms']} | {r['preset']} | {r['dtype']} | not run: {r['skipped']} | | | | | | |")
            continue
        lines.append(f"| {r['n_atoms']} | {r['preset']} | {r['dtype']} | {r['seconds_per_call'] * 1e3:.1f} | {r['atom_steps_per_second']:.0f} "
                     f"| {r['md_seconds_per_step'] * 1e3:.1f} | {r['n_atoms'] / r['md_seconds_per_step']:.0f} "
                     f"| {100 * r['neighbour_fraction_no_skin']:.1f}% | {100 * r['neighbour_fraction_md_skin']:.1f}% | {r['peak_memory_kib_per_atom']:.0f} |")
    import platform

    import torch
    path.with_suffix(".md").write_text(
        f"Machine: {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, device {args.device}; fcc Cu, cutoff 5 Å.\n\n"
        + "\n".join(lines) + "\n")
    print(f"wrote {path} and {path.with_suffix('.md')}")


if __name__ == "__main__":
    main()
