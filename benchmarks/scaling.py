"""How the cost of the calculator grows with the system: time and peak memory per atom, by size.

Fcc copper (a = 3.61 Å, cubic cell repeated n times: 4 n^3 atoms, rattled by 0.05 Å) with the
shipped ``e2former-emt-cu`` (``--potential``) or a preset with untrained weights (``--preset``).
Every (size, dtype, mode, source tree) runs in a fresh process:

* ``call``: one energy+forces call with the neighbour list and the convolution plan rebuilt
  (skin 0). Peak memory: the process's peak resident set (VmHWM) after the first call minus
  before it (model loaded, atoms built). Time: median of ``--repeats`` further calls, positions
  moved by 1e-3 Å each time, with its parts (neighbour list, plan, network forward+backward) and
  the CPU time, system time and minor page faults per call.
* ``md``: velocity-Verlet at 1,000 K, 2 fs, the calculator's default 0.3 Å Verlet skin (the list
  and plan kept while it holds). Peak memory: VmHWM after the first step minus before it; time:
  median over ``--md-steps`` steps.

Per-atom numbers are µs/atom and KiB/atom; "vs 4000" is the per-atom time relative to the
4,000-atom system of the same tree, dtype and mode (1.0 = linear scaling). "CPU µs/atom" is the
process's user + system time: on a machine shared with other work it is the steadier number.

``--compare-tree PATH`` runs the same with another source tree on ``PYTHONPATH`` (for example a
copy of the code before a change), process by process interleaved with this tree, so the two
columns of the table see the same machine load. ``--env KEY=VALUE`` sets a variable for every
run, ``--compare-env KEY=VALUE`` only for the comparison runs (with this tree when no
``--compare-tree`` is given), e.g. glibc's ``MALLOC_MMAP_THRESHOLD_``, or ``SCALING_RECOMPUTE=blocks``
(or ``false``; ``true`` for trees that still had it; read by this script: the calculator's
``recompute``; default ``auto``) or ``SCALING_PRUNE=false`` (the calculator's ``prune``; ``true``,
``false`` or ``auto``; unset: the calculator's default).

    python benchmarks/scaling.py                                   # 108 .. 10,976 atoms, float32 and float64
    python benchmarks/scaling.py --sizes 6 10 14 --compare-tree /tmp/before --dtypes float32
    python benchmarks/scaling.py --compare-env MALLOC_MMAP_THRESHOLD_=1073741824 --compare-env MALLOC_TRIM_THRESHOLD_=1073741824

Writes ``benchmarks/results/scaling.{json,md}`` (``--output`` to change the stem).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from proc_memory import available_kib, peak_rss_kib  # benchmarks/proc_memory.py

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
SKIN = 0.3  # Å, the calculator's default




def _calculator(args, skin):
    from e2former_calc import E2FormerCalculator

    # SCALING_RECOMPUTE=true|false|auto|blocks and SCALING_PRUNE=true|false|auto (--env / --compare-env
    # values): the calculator's recompute and (for trees that have it, only when set) prune
    options = {"recompute": os.environ.get("SCALING_RECOMPUTE", "auto")}
    if "SCALING_PRUNE" in os.environ:
        options["prune"] = os.environ["SCALING_PRUNE"]
    options = {key: {"true": True, "false": False}.get(value, value) for key, value in options.items()}
    if args.preset:
        return E2FormerCalculator.from_config(args.preset, species=("Cu",), device="cpu", dtype=args.dtype, skin=skin,
                                              quiet=True, **options)
    return E2FormerCalculator.from_pretrained(args.potential, device="cpu", dtype=args.dtype, skin=skin, quiet=True,
                                              **options)


def measure(args) -> dict:
    """One run in this process (``--one``)."""
    import resource

    import numpy as np
    import torch
    from ase.build import bulk

    import e2former_calc
    from e2former_calc import forces as forces_module
    from e2former_calc import predictor as predictor_module

    torch.set_num_threads(args.threads)
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(args.size)
    atoms.rattle(0.05, seed=0)
    n = len(atoms)
    spent = {"neighbours": 0.0, "plan": 0.0}

    def timed(owner, name, key):
        original = getattr(owner, name)

        def wrapper(*a, **k):
            start = time.perf_counter()
            out = original(*a, **k)
            spent[key] += time.perf_counter() - start
            return out

        setattr(owner, name, wrapper)

    timed(predictor_module.VerletList, "update", "neighbours")
    timed(forces_module.ForceField, "plan", "plan")
    record = {"n_atoms": n, "dtype": args.dtype, "mode": args.mode, "threads": args.threads,
              "model": args.preset or args.potential, "package": str(Path(e2former_calc.__file__).parent)}
    rng = np.random.default_rng(1)
    if args.mode == "call":
        calc = _calculator(args, 0.0)
        atoms.calc = calc
        before = peak_rss_kib()
        start = time.perf_counter()
        atoms.get_forces()
        record["first_call_seconds"] = time.perf_counter() - start
        record["peak_memory_kib_per_atom"] = (peak_rss_kib() - before) / n
        times, parts = [], {"neighbours": [], "plan": []}
        usage = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(args.repeats):
            atoms.positions += rng.normal(scale=1e-3, size=atoms.positions.shape)
            spent.update(neighbours=0.0, plan=0.0)
            start = time.perf_counter()
            atoms.get_forces()
            times.append(time.perf_counter() - start)
            for key in parts:
                parts[key].append(spent[key])
        after = resource.getrusage(resource.RUSAGE_SELF)
        seconds = statistics.median(times)
        record.update(
            seconds=seconds,
            us_per_atom=seconds / n * 1e6,
            cpu_us_per_atom=(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / args.repeats / n * 1e6,
            neighbours_us_per_atom=statistics.median(parts["neighbours"]) / n * 1e6,
            plan_us_per_atom=statistics.median(parts["plan"]) / n * 1e6,
            network_us_per_atom=statistics.median(t - a - b for t, a, b in zip(times, parts["neighbours"], parts["plan"]))
            / n * 1e6,
            cpu_seconds_per_call=(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / args.repeats,
            system_seconds_per_call=(after.ru_stime - usage.ru_stime) / args.repeats,
            page_faults_per_atom_call=(after.ru_minflt - usage.ru_minflt) / args.repeats / n,
        )
    else:
        from ase import units
        from ase.md.verlet import VelocityVerlet

        from e2former_calc.workflows import thermalize

        atoms.calc = _calculator(args, SKIN)
        thermalize(atoms, 1000, seed=0)
        dyn = VelocityVerlet(atoms, timestep=2 * units.fs)
        before = peak_rss_kib()
        dyn.run(1)
        record["peak_memory_kib_per_atom"] = (peak_rss_kib() - before) / n
        times = []
        usage = resource.getrusage(resource.RUSAGE_SELF)
        for _ in range(args.md_steps):
            start = time.perf_counter()
            dyn.run(1)
            times.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_SELF)
        seconds = statistics.median(times)
        record.update(seconds=seconds, us_per_atom=seconds / n * 1e6,
                      cpu_us_per_atom=(after.ru_utime + after.ru_stime - usage.ru_utime - usage.ru_stime) / args.md_steps / n * 1e6,
                      page_faults_per_atom_step=(after.ru_minflt - usage.ru_minflt) / args.md_steps / n,
                      neighbour_builds=atoms.calc.predictor.verlet.builds, md_steps=args.md_steps + 1)
    return record


def _label(tree: Path | None, env: dict) -> str:
    name = "this tree" if tree is None else str(tree)
    return name + "".join(f" {k}={v}" for k, v in sorted(env.items()))


def _parse_env(pairs) -> dict:
    out = {}
    for pair in pairs or ():
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"--env / --compare-env take KEY=VALUE, got {pair!r}")
        out[key] = value
    return out


def run_child(args, tree: Path | None, env: dict, size: int, dtype: str, mode: str) -> dict:
    child_env = dict(os.environ)
    child_env["PYTHONPATH"] = str(tree or ROOT) + (os.pathsep + child_env["PYTHONPATH"] if child_env.get("PYTHONPATH") else "")
    child_env.setdefault("E2FORMER_POTENTIALS", str(ROOT / "potentials"))  # another tree finds the shipped files
    child_env["OMP_NUM_THREADS"] = str(args.threads)
    child_env.update(env)
    command = [sys.executable, str(Path(__file__).resolve()), "--one", mode, str(size), dtype,
               "--threads", str(args.threads), "--repeats", str(args.repeats), "--md-steps", str(args.md_steps)]
    command += ["--preset", args.preset] if args.preset else ["--potential", args.potential]
    try:  # run outside the repository: its folder on sys.path would shadow the tree under test
        result = subprocess.run(command, capture_output=True, text=True, env=child_env, cwd="/", timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"skipped": f"ran longer than {args.timeout} s"}
    if result.returncode != 0:
        return {"skipped": f"exit code {result.returncode}: {result.stderr.strip()[-300:]}"}
    return json.loads(result.stdout.strip().splitlines()[-1])


def markdown(records, labels, description) -> str:
    lines = [description, ""]
    variants = list(labels)
    header = "| atoms | dtype | mode |"
    rule = "|---|---|---|"
    for v, label in enumerate(variants):
        tag = "A" if v == 0 else "B"
        header += f" µs/atom {tag} | vs 4000 {tag} | CPU µs/atom {tag} | KiB/atom {tag} |"
        rule += "---|---|---|---|"
    if len(variants) == 2:
        header += " time B/A | CPU time B/A | memory B/A |"
        rule += "---|---|---|"
    lines += [header, rule]
    keys = sorted({(r["n_atoms"], r["dtype"], r["mode"]) for r in records}, key=lambda k: (k[2], k[1], k[0]))
    index = {}
    for r in records:
        index.setdefault((r["n_atoms"], r["dtype"], r["mode"], r["variant"]), []).append(r)

    def value(key, variant, field):
        rows = [r for r in index.get((*key, variant), []) if field in r]
        return statistics.median(r[field] for r in rows) if rows else None

    for key in keys:
        row = f"| {key[0]} | {key[1]} | {key[2]} |"
        for v in range(len(variants)):
            t = value(key, v, "us_per_atom")
            ref = value((4000, key[1], key[2]), v, "us_per_atom")
            m = value(key, v, "peak_memory_kib_per_atom")
            skipped = [r["skipped"] for r in index.get((*key, v), []) if "skipped" in r]
            if t is None:
                row += f" not run: {skipped[0][:60] if skipped else '-'} | | | |"
                continue
            row += f" {t:.0f} | {t / ref:.2f} |" if ref else f" {t:.0f} | |"
            cpu = value(key, v, "cpu_us_per_atom")
            row += f" {cpu:.0f} |" if cpu is not None else " |"
            row += f" {m:.0f} |"
        if len(variants) == 2:
            ta, tb = value(key, 0, "us_per_atom"), value(key, 1, "us_per_atom")
            ma, mb = value(key, 0, "peak_memory_kib_per_atom"), value(key, 1, "peak_memory_kib_per_atom")
            ca, cb = value(key, 0, "cpu_us_per_atom"), value(key, 1, "cpu_us_per_atom")
            row += f" {tb / ta:.2f} |" if ta and tb else " |"
            row += f" {cb / ca:.2f} |" if ca and cb else " |"
            row += f" {mb / ma:.2f} |" if ma and mb else " |"
        lines.append(row)
    lines.append("")
    lines.append("Columns: " + "; ".join(f"{'A' if v == 0 else 'B'} = {label}" for v, label in enumerate(variants)) + ".")
    parts = [r for r in records if r.get("mode") == "call" and "network_us_per_atom" in r]
    if parts:
        lines += ["", "Parts of a call (µs/atom; CPU and system seconds and minor page faults per call):", "",
                  "| atoms | dtype | run | neighbour list | plan | network | CPU s | system s | page faults / atom |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for r in sorted(parts, key=lambda r: (r["dtype"], r["n_atoms"], r["variant"])):
            lines.append(f"| {r['n_atoms']} | {r['dtype']} | {'A' if r['variant'] == 0 else 'B'} "
                         f"| {r['neighbours_us_per_atom']:.0f} | {r['plan_us_per_atom']:.0f} | {r['network_us_per_atom']:.0f} "
                         f"| {r['cpu_seconds_per_call']:.2f} | {r['system_seconds_per_call']:.2f} "
                         f"| {r['page_faults_per_atom_call']:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[3, 6, 10, 14],
                        help="cubic repeats n of the fcc cell (4 n^3 atoms); default 3 6 10 14 (108 .. 10,976)")
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--modes", nargs="+", default=["call", "md"], choices=["call", "md"])
    parser.add_argument("--potential", default="e2former-emt-cu")
    parser.add_argument("--preset", help="untrained weights of this preset instead of --potential")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first (default 3)")
    parser.add_argument("--md-steps", type=int, default=3, help="timed MD steps after the first (default 3)")
    parser.add_argument("--process-repeats", type=int, default=1, help="fresh processes per configuration and tree")
    parser.add_argument("--timeout", type=float, default=1200.0, help="seconds per process")
    parser.add_argument("--compare-tree", type=Path, help="another source tree, run side by side (PYTHONPATH)")
    parser.add_argument("--env", action="append", help="KEY=VALUE for every run (repeatable)")
    parser.add_argument("--compare-env", action="append", help="KEY=VALUE for the comparison runs only (repeatable)")
    parser.add_argument("--output", type=Path, default=RESULTS / "scaling", help="stem of the .json and .md files")
    parser.add_argument("--one", nargs=3, metavar=("MODE", "SIZE", "DTYPE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        args.mode, args.size, args.dtype = args.one[0], int(args.one[1]), args.one[2]
        print(json.dumps(measure(args)))
        return

    env = _parse_env(args.env)
    variants = [(None, env)]
    if args.compare_tree or args.compare_env:
        variants.append((args.compare_tree.resolve() if args.compare_tree else None, {**env, **_parse_env(args.compare_env)}))
    labels = [_label(tree, e) for tree, e in variants]
    records, started = [], time.time()
    memory_per_atom = {}
    for size in args.sizes:
        n_atoms = 4 * size**3
        for dtype in args.dtypes:
            for mode in args.modes:
                for repeat in range(args.process_repeats):
                    order = range(len(variants)) if repeat % 2 == 0 else reversed(range(len(variants)))
                    for v in order:
                        tree, e = variants[v]
                        projected = memory_per_atom.get((v, dtype, mode), 0) * n_atoms
                        if projected > 0.8 * available_kib():
                            record = {"skipped": f"projected peak {projected / 2**20:.0f} GiB > 80% of the free memory"}
                        else:
                            record = run_child(args, tree, e, size, dtype, mode)
                        record.update(variant=v, label=labels[v], n_atoms=n_atoms, dtype=dtype, mode=mode)
                        records.append(record)
                        if "skipped" in record:
                            print(f"[{time.time() - started:6.0f}s] {n_atoms:6d} {dtype} {mode} {labels[v]}: {record['skipped']}",
                                  flush=True)
                            continue
                        memory_per_atom[(v, dtype, mode)] = max(memory_per_atom.get((v, dtype, mode), 0),
                                                                record["peak_memory_kib_per_atom"])
                        print(f"[{time.time() - started:6.0f}s] {n_atoms:6d} {dtype} {mode:4s} {labels[v]}: "
                              f"{record['us_per_atom']:7.0f} µs/atom, {record['peak_memory_kib_per_atom']:5.0f} KiB/atom",
                              flush=True)
                        args.output.parent.mkdir(parents=True, exist_ok=True)
                        args.output.with_suffix(".json").write_text(json.dumps(records, indent=1))
    import torch

    model = args.preset or args.potential
    description = (f"Machine: {platform.machine()}, {args.threads} threads, torch {torch.__version__}, cpu; fcc Cu "
                   f"(a = 3.61 Å, rattled 0.05 Å), {model}; `call`: energy+forces with the list rebuilt, `md`: "
                   f"velocity-Verlet step, {SKIN} Å skin; peak memory added per atom in a fresh process.")
    args.output.with_suffix(".json").write_text(json.dumps(records, indent=1))
    args.output.with_suffix(".md").write_text(markdown(records, labels, description))
    print(f"wrote {args.output.with_suffix('.json')} and {args.output.with_suffix('.md')}")


if __name__ == "__main__":
    main()
