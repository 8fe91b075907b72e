"""MD throughput of ``e2former-emt-cu`` in LAMMPS (ML-IAP unified, ghost shell) against ASE.

For fcc Cu of 4,000 and 32,000 atoms, float32 and float64: LAMMPS velocity-Verlet (``fix nve``)
atom·steps per second on 1 and 2 MPI ranks, and the ASE calculator's (VelocityVerlet, 0.3 Å
Verlet skin) on the same cell. Each measurement is short (one warm-up step, then a few timed
steps) and runs in its own process; a configuration whose projected memory exceeds 80% of the
available memory, or that ran out of its time limit, is reported as not run with the reason.

    python benchmarks/lammps_throughput.py              # writes results/lammps_throughput.{json,md}
    python benchmarks/lammps_throughput.py --sizes 4000 --steps 2

Needs LAMMPS with ML-IAP's Python coupling in this environment (``bash .ci/build_lammps.sh``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from proc_memory import available_kib  # benchmarks/proc_memory.py

RESULTS = Path(__file__).resolve().parent / "results"
REPEATS = {4000: 10, 32000: 20}  # cubic fcc repeats: 4 n^3 atoms
LATTICE = 3.61
SKIN_LAMMPS = 1.0  # Å, neighbor skin in LAMMPS
SKIN_ASE = 0.3  # Å, the calculator's default

LAMMPS_DRIVER = textwrap.dedent('''
    import json, resource, sys, time
    import lammps, lammps.mliap
    job = json.load(open(sys.argv[1]))
    lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    me = lmp.extract_setting("world_rank")
    lammps.mliap.activate_mliappy(lmp)
    lmp.commands_list([
        "units metal", "atom_style atomic", "boundary p p p",
        f"lattice fcc {job['a']}", f"region box block 0 {job['n']} 0 {job['n']} 0 {job['n']}",
        "create_box 1 box", "create_atoms 1 box", "mass 1 63.546",
        "velocity all create 600.0 7 mom yes rot no dist gaussian",
        f"neighbor {job['skin']} bin", f"comm_modify cutoff {job['ghost_cutoff']}",
        f"pair_style mliap unified {job['unified']} 1", "pair_coeff * * Cu",
        "timestep 0.002", "fix nve all nve", "thermo 0",
    ])
    start = time.perf_counter()
    lmp.command("run 1")  # setup, the first neighbour lists and the network's first call
    warm = time.perf_counter() - start
    start = time.perf_counter()
    lmp.command(f"run {job['steps']} pre no post no")
    seconds = time.perf_counter() - start
    out = {"rank": me, "seconds": seconds, "warmup_seconds": warm, "nlocal": lmp.extract_setting("nlocal"),
           "nghost": lmp.extract_setting("nghost"), "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
           "natoms": lmp.get_natoms()}
    lmp.finalize()
    json.dump(out, open(f"{sys.argv[2]}.{me}", "w"))
''')

ASE_DRIVER = textwrap.dedent('''
    import json, resource, sys, time
    from ase import units
    from ase.build import bulk
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution
    from ase.md.verlet import VelocityVerlet
    from e2former_calc import E2FormerCalculator
    job = json.load(open(sys.argv[1]))
    atoms = bulk("Cu", "fcc", a=job["a"], cubic=True).repeat(job["n"])
    MaxwellBoltzmannDistribution(atoms, temperature_K=600.0, rng=__import__("numpy").random.default_rng(7))
    atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device="cpu", dtype=job["dtype"],
                                                    skin=job["skin"], quiet=True)
    md = VelocityVerlet(atoms, timestep=2.0 * units.fs)
    start = time.perf_counter(); md.run(1); warm = time.perf_counter() - start
    start = time.perf_counter(); md.run(job["steps"]); seconds = time.perf_counter() - start
    json.dump({"seconds": seconds, "warmup_seconds": warm, "natoms": len(atoms),
               "peak_rss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}, open(sys.argv[2] + ".0", "w"))
''')




def mpirun(nprocs: int) -> list[str]:
    exe = shutil.which("mpirun")
    version = subprocess.run([exe, "--version"], capture_output=True, text=True).stdout
    extra = ["--allow-run-as-root", "--oversubscribe"] if "Open MPI" in version else []
    return [exe, "-np", str(nprocs), *extra]


def run(command, job, folder, nprocs, timeout):
    job_file, out = Path(folder) / "job.json", Path(folder) / "out.json"
    for old in Path(folder).glob("out.json.*"):
        old.unlink()
    job_file.write_text(json.dumps(job))
    env = dict(os.environ, OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    try:
        proc = subprocess.run([*command, str(job_file), str(out)], capture_output=True, text=True, timeout=timeout,
                              env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"not run: over the {timeout} s limit"}
    ranks = [json.loads(p.read_text()) for p in sorted(Path(folder).glob("out.json.*"))]
    if proc.returncode != 0 or len(ranks) != nprocs:
        why = [line for line in proc.stderr.splitlines() if "Error" in line or "ERROR" in line][-1:]
        return {"error": f"failed (exit {proc.returncode}): {' '.join(why) or 'see stderr'}"}
    seconds = max(r["seconds"] for r in ranks)
    return {"seconds": seconds, "steps": job["steps"], "natoms": ranks[0]["natoms"],
            "atom_steps_per_s": ranks[0]["natoms"] * job["steps"] / seconds,
            "warmup_seconds": max(r["warmup_seconds"] for r in ranks),
            "peak_rss_kib": sum(r["peak_rss_kib"] for r in ranks),
            "ghosts": sum(r.get("nghost", 0) for r in ranks)}


def ghost_nodes(n_atoms: int, ghost_cutoff: float, nprocs: int) -> float:
    """Owned + ghost atoms over all ranks (cube of side L split along x into ``nprocs`` slabs)."""
    side = (n_atoms / 4) ** (1 / 3) * LATTICE
    density = 4 / LATTICE**3
    return nprocs * (side / nprocs + 2 * ghost_cutoff) * (side + 2 * ghost_cutoff) ** 2 * density


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=sorted(REPEATS))
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--steps", type=int, default=2, help="timed MD steps per measurement")
    parser.add_argument("--timeout", type=int, default=600, help="seconds per measurement")
    parser.add_argument("--output", type=Path, default=RESULTS / "lammps_throughput")
    args = parser.parse_args(argv)

    from e2former_calc.integrations.lammps import export_lammps, lammps_available, load_unified

    ok, why = lammps_available()
    if not ok:
        raise SystemExit(f"LAMMPS with ML-IAP python is not available: {why}")
    import torch

    rows = []
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "run_lammps.py").write_text(LAMMPS_DRIVER)
        (Path(folder) / "run_ase.py").write_text(ASE_DRIVER)
        per_node_kib = {}  # measured peak memory per (owned + ghost) atom, by dtype
        per_atom_ase_kib = {}
        for size in args.sizes:
            n = REPEATS.get(size) or round((size / 4) ** (1 / 3))
            natoms = 4 * n**3
            for dtype in args.dtypes:
                unified_path = Path(folder) / f"cu-{dtype}.mliap.pkl"
                export_lammps("e2former-emt-cu", unified_path, dtype=dtype)
                unified = load_unified(unified_path)
                job = {"a": LATTICE, "n": n, "steps": args.steps, "skin": SKIN_LAMMPS, "unified": str(unified_path),
                       "ghost_cutoff": unified.ghost_cutoff(SKIN_LAMMPS), "dtype": dtype}
                for engine, nprocs in [("ASE", 1)] + [("LAMMPS", k) for k in args.ranks]:
                    row = {"atoms": natoms, "dtype": dtype, "engine": engine, "ranks": nprocs}
                    if engine == "ASE":
                        projected = per_atom_ase_kib.get(dtype, 0) * natoms
                        command = [sys.executable, str(Path(folder) / "run_ase.py")]
                        ase_job = dict(job, skin=SKIN_ASE)
                    else:
                        projected = per_node_kib.get(dtype, 0) * ghost_nodes(natoms, job["ghost_cutoff"], nprocs)
                        command = [*mpirun(nprocs), sys.executable, str(Path(folder) / "run_lammps.py")]
                    if projected > 0.8 * available_kib():
                        row["error"] = (f"not run: projected peak memory {projected / 2**20:.0f} GiB exceeds 80% of "
                                        f"the available memory")
                    else:
                        row.update(run(command, ase_job if engine == "ASE" else job, folder, nprocs, args.timeout))
                    if "peak_rss_kib" in row:
                        if engine == "ASE":
                            per_atom_ase_kib[dtype] = max(per_atom_ase_kib.get(dtype, 0), row["peak_rss_kib"] / natoms)
                        else:
                            nodes = ghost_nodes(natoms, job["ghost_cutoff"], nprocs)
                            per_node_kib[dtype] = max(per_node_kib.get(dtype, 0), row["peak_rss_kib"] / nodes)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    machine = (f"{platform.machine()}, {os.cpu_count()} threads, torch {torch.__version__}, device cpu, "
               f"OMP_NUM_THREADS=1 per process")
    report = {"machine": machine, "potential": "e2former-emt-cu (cutoff 5 Å, 2 layers)",
              "lammps_skin": SKIN_LAMMPS, "ase_skin": SKIN_ASE, "steps": args.steps, "rows": rows}
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [f"Machine: {machine}; {report['potential']}, fcc Cu at 600 K, {args.steps} timed MD steps of 2 fs "
             f"after one warm-up step; LAMMPS: ghost cutoff 16 Å (3 cutoffs + {SKIN_LAMMPS:g} Å skin), "
             f"ASE: {SKIN_ASE:g} Å Verlet skin.", "",
             "| atoms | dtype | engine | MPI ranks | s per step | atom·steps/s | ghost atoms (all ranks) | peak memory (GiB, all ranks) |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['atoms']} | {r['dtype']} | {r['engine']} | {r['ranks']} | {r['error']} | | | |")
        else:
            lines.append(f"| {r['atoms']} | {r['dtype']} | {r['engine']} | {r['ranks']} | {r['seconds'] / r['steps']:.2f} | "
                         f"{r['atom_steps_per_s']:.0f} | {r['ghosts'] if r['engine'] == 'LAMMPS' else '-'} | "
                         f"{r['peak_rss_kib'] / 2**20:.1f} |")
    args.output.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
