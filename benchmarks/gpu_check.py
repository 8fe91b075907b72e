"""One prepared run on a GPU machine: the CUDA tests, the scaling table, a training step, MACE.

Meant for a lent GPU (one call, well under 8 minutes on one H200; every part has a time budget
and the run stops adding sizes once its budget is spent):

1. the CUDA tests (``tests/`` files that test on CUDA, ``-k "cuda or gpu"``), with their summary;
2. fcc Cu (``e2former-emt-cu``), float32 then float64: one energy+forces call (neighbour list,
   plan, network) and one velocity-Verlet step with the 0.3 Å skin, from 4,000 atoms up by
   factors of about 2 to 1,000,188 atoms (63^3 cubic cells) or the largest that fits; per size
   the time per atom, atom·steps/s and peak GPU memory per atom (``max_memory_allocated``); an
   out-of-memory error ends that dtype's series and is recorded; then float32 with
   ``recompute="blocks"`` at the largest sizes the default reached (about a fifth less
   memory per atom);
3. the neighbour search: the torch cell list on the GPU against matscipy on the CPU, by size;
4. one training step (forces and stress in the loss, double backward) on a batch of 8 rattled
   108-atom Cu cells, float32 with and without TF32 and float64;
5. MACE (``mace-torch`` with its ``cuequivariance`` acceleration when they import there) of about
   the same size on the same cells, else the reason it did not run;
6. torch-sim (when it imports): NVE steps of one large Cu cell through
   :class:`~e2former_calc.integrations.torch_sim.E2FormerModel` with the 0.3 Å skin, float32,
   sizes up as in 2 until its budget or memory ends, per size the step time and lists rebuilt.

    python benchmarks/gpu_check.py --output results/gpu_check.json       # on the GPU machine
    python benchmarks/gpu_check.py --cpu-smoke                            # here: the same code, tiny sizes

Writes JSON (``--output``) and prints a Markdown table; ``docs/model.md`` quotes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIN = 0.3
REPEATS_GPU = (10, 13, 16, 20, 25, 32, 40, 50, 63)  # 4 n^3 atoms: 4,000 ... 1,000,188
REPEATS_SMOKE = (2, 3)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_bytes(device) -> int:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    with open("/proc/self/status") as handle:
        return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))


def reset_peak(device):
    import torch

    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def cuda_tests(budget: float) -> dict:
    files = [str(p.relative_to(ROOT)) for p in (ROOT / "tests").rglob("test_*.py") if "cuda" in p.read_text()]
    start = time.perf_counter()
    try:
        result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-k", "cuda or gpu", *files], cwd=ROOT,
                                capture_output=True, text=True, timeout=budget)
        tail = result.stdout.strip().splitlines()[-8:]
        return {"files": files, "returncode": result.returncode, "summary": tail, "seconds": time.perf_counter() - start}
    except subprocess.TimeoutExpired:
        return {"files": files, "error": f"over its {budget:.0f} s budget"}


def scaling(device, dtype: str, repeats, budget: float, md: bool = True, recompute="auto") -> list[dict]:
    """Energy+forces call and MD step per size until the budget, an out-of-memory error or the end
    (``recompute``: the calculator's, e2former_calc.model.recompute)."""
    import numpy as np
    import torch
    from ase import units
    from ase.build import bulk
    from ase.md.verlet import VelocityVerlet

    from e2former_calc import E2FormerCalculator

    rows, start = [], time.perf_counter()
    for n in repeats:
        if time.perf_counter() - start > budget:
            rows.append({"repeat": n, "n_atoms": 4 * n**3, "dtype": dtype, "error": "not run: time budget spent"})
            break
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.05, seed=0)
        row = {"n_atoms": len(atoms), "dtype": dtype, "recompute": str(recompute)}
        try:
            calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device=str(device), dtype=dtype, skin=0.0,
                                                      quiet=True, recompute=recompute)
            atoms.calc = calc
            reset_peak(device)
            base = peak_bytes(device) if device.type != "cuda" else torch.cuda.memory_allocated(device)
            t0 = time.perf_counter()
            atoms.get_forces()
            sync(device)
            row["first_call_s"] = time.perf_counter() - t0
            row["peak_memory_kib_per_atom"] = (peak_bytes(device) - base) / 1024 / len(atoms)
            atoms.positions += np.random.default_rng(1).normal(scale=1e-3, size=atoms.positions.shape)
            t0 = time.perf_counter()
            atoms.get_forces()
            sync(device)
            row["call_s"] = time.perf_counter() - t0
            row["call_us_per_atom"] = 1e6 * row["call_s"] / len(atoms)
            if md:
                atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device=str(device), dtype=dtype,
                                                                skin=SKIN, quiet=True, recompute=recompute)
                dyn = VelocityVerlet(atoms, timestep=2.0 * units.fs)
                dyn.run(1)  # first step: list, plan
                sync(device)
                t0 = time.perf_counter()
                dyn.run(2)
                sync(device)
                row["md_step_s"] = (time.perf_counter() - t0) / 2
                row["md_atom_steps_per_s"] = len(atoms) / row["md_step_s"]
        except torch.cuda.OutOfMemoryError as error:
            row["error"] = f"out of memory ({str(error).splitlines()[0][:120]})"
            rows.append(row)
            break
        finally:
            atoms.calc = None
            reset_peak(device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def torch_sim_md(device, repeats, budget: float, steps: int = 4) -> list[dict]:
    """NVE steps of one fcc Cu cell through torch-sim (float32, skin 0.3 Å), by size until the budget."""
    try:
        import torch_sim as ts

        from e2former_calc.integrations.torch_sim import E2FormerModel, torch_sim_version
    except ImportError as error:
        return [{"error": f"torch-sim not importable: {error}"}]
    import torch
    from ase.build import bulk

    rows, start = [], time.perf_counter()
    model = E2FormerModel.from_pretrained("e2former-emt-cu", device=str(device), dtype="float32", skin=SKIN)
    units = ts.units.MetalUnits
    kT = torch.tensor(1000.0 * units.temperature, device=device)
    dt = torch.tensor(0.002 * units.time, device=device)
    for n in repeats:
        if time.perf_counter() - start > budget:
            rows.append({"n_atoms": 4 * n**3, "error": "not run: time budget spent"})
            break
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.05, seed=0)
        row = {"n_atoms": len(atoms), "dtype": "float32", "torch_sim": torch_sim_version()}
        try:
            model._verlets = []  # a new system: fresh lists
            state = ts.io.atoms_to_state([atoms], device, torch.float32)
            if hasattr(ts, "nve_init"):  # torch-sim >= 0.4
                state = ts.nve_init(state, model, kT=kT, seed=0)
                step = lambda s: ts.nve_step(s, model, dt=dt)  # noqa: E731
            else:
                init, update = ts.nve(model=model, dt=dt, kT=kT, seed=0)
                state = init(state)
                step = lambda s: update(s, dt)  # noqa: E731
            state = step(state)  # first step: lists, plan
            sync(device)
            builds = sum(v.builds for v in model._verlets)
            t0 = time.perf_counter()
            for _ in range(steps):
                state = step(state)
            sync(device)
            row["step_s"] = (time.perf_counter() - t0) / steps
            row["atom_steps_per_s"] = len(atoms) / row["step_s"]
            row["rebuilds"] = sum(v.builds for v in model._verlets) - builds
            row["steps"] = steps
        except torch.cuda.OutOfMemoryError as error:
            row["error"] = f"out of memory ({str(error).splitlines()[0][:120]})"
            rows.append(row)
            break
        finally:
            state = None
            reset_peak(device)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def neighbour_search(device, repeats, budget: float) -> list[dict]:
    """Seconds of one neighbour search (cutoff 5.3 Å: e2former-emt-cu's plus its skin): the torch
    cell list on ``device`` against matscipy on the CPU, with the pair counts (which must agree)."""
    import torch
    from ase.build import bulk

    from e2former_calc.cell_list import cell_list
    from e2former_calc.neighbours import neighbour_list

    rows, start = [], time.perf_counter()
    for n in repeats:
        if time.perf_counter() - start > budget:
            break
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.05, seed=0)
        t0 = time.perf_counter()
        reference = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 5.3)
        cpu_s = time.perf_counter() - t0
        positions, cell = torch.tensor(atoms.positions, device=device), torch.tensor(atoms.cell.array, device=device)
        try:
            cell_list(positions, cell, atoms.pbc, 5.3)  # warm-up
            sync(device)
            t0 = time.perf_counter()
            receivers, _, _ = cell_list(positions, cell, atoms.pbc, 5.3)
            sync(device)
            rows.append({"n_atoms": len(atoms), "matscipy_cpu_s": cpu_s, "cell_list_s": time.perf_counter() - t0,
                         "pairs_equal_count": int(receivers.numel()) == len(reference.receivers)})
        except torch.cuda.OutOfMemoryError:
            rows.append({"n_atoms": len(atoms), "error": "out of memory"})
            break
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training_step(device, smoke: bool) -> list[dict]:
    """Seconds per optimiser step (forces and stress in the loss) on 8 rattled 108-atom Cu cells."""
    import tempfile

    import torch
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    from e2former_calc.training.config import parse_config
    from e2former_calc.training.trainer import Trainer

    folder = Path(tempfile.mkdtemp())
    frames = []
    for k in range(8):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2 if smoke else 3)
        atoms.rattle(0.08, seed=k)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        atoms.info["REF_stress"] = atoms.get_stress()
        atoms.calc = None
        frames.append(atoms)
    write(folder / "train.extxyz", frames)
    rows = []
    for dtype, tf32 in (("float32", False), ("float32", True), ("float64", False)):
        if tf32 and device.type != "cuda":
            continue
        config = parse_config({
            "data": {"train": str(folder / "train.extxyz"), "valid": str(folder / "train.extxyz"), "e0": {"Cu": 0.0}},
            "model": {"preset": "small"}, "output": str(folder / f"run-{dtype}-{tf32}"), "name": "gpu-check",
            "training": {"batch_size": 8, "max_epochs": 1, "dtype": dtype, "device": str(device.type), "tf32": tf32},
        })
        trainer = Trainer(config, progress=False, log=lambda m: None)
        trainer._build()
        batch = trainer.train[:8]
        counts = {"structures": 8, "atoms": sum(s.n_atoms for s in batch), "stress": 8}
        times = []
        for _ in range(3):
            sync(device)
            t0 = time.perf_counter()
            trainer.optimizer.zero_grad()
            trainer._loss(batch, counts).backward()
            trainer.optimizer.step()
            sync(device)
            times.append(time.perf_counter() - t0)
        rows.append({"dtype": dtype, "tf32": tf32, "atoms_per_batch": counts["atoms"], "first_step_s": times[0],
                     "step_s": sorted(times[1:])[0]})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def mace_comparison(device, repeats, budget: float, python: str | None, site: str | None) -> dict:
    """MACE of about the size of e2former-emt-cu (``benchmarks/mace_speed.py``), in its own Python
    (``--mace-python``; mace-torch pins e3nn 0.4.4) or with its packages on ``--mace-site``."""
    python = python or sys.executable
    env = dict(os.environ)
    if site:
        env["PYTHONPATH"] = site
    if not Path(python).exists():
        return {"error": f"no MACE Python at {python} (benchmarks/accuracy/setup_mace_env.sh makes one)"}
    command = [python, str(ROOT / "benchmarks" / "mace_speed.py"), "--device", device.type, "--budget", str(budget),
               "--repeats", *map(str, repeats)]
    if device.type == "cuda":
        command.append("--cueq")
    try:
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=budget + 120)
    except subprocess.TimeoutExpired:
        return {"error": f"over its {budget + 120:.0f} s limit"}
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    if result.returncode != 0 and not rows:
        return {"error": f"mace_speed.py failed: {(result.stderr.strip().splitlines() or ['?'])[-1][:300]}"}
    return {"model": rows[0] if rows else None, "rows": rows[1:]}


def environment(device) -> dict:
    import torch

    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "device": str(device)}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = torch.cuda.get_device_properties(device).total_memory / 2**30
    try:
        import triton

        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    from e2former_calc.conv import triton_edge

    probe = torch.zeros(1, device=device)
    info["edge_kernel"] = "triton" if triton_edge.use_triton(probe) else "sparse products"
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="run every part on the CPU at tiny sizes")
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "results" / "gpu_check.json")
    parser.add_argument("--skip-tests", action="store_true")
    default_mace = ROOT / "benchmarks" / "accuracy" / ".venv-mace" / "bin" / "python"
    parser.add_argument("--mace-python", default=str(default_mace), help="a Python with mace-torch")
    parser.add_argument("--mace-site", help="PYTHONPATH holding mace-torch and its e3nn 0.4.4 (carried wheels)")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    import torch

    if args.cpu_smoke:
        device, repeats, budgets = torch.device("cpu"), REPEATS_SMOKE, {"tests": 60, "float32": 60, "float64": 60,
                                                                          "blocks": 30, "mace": 30, "torch_sim": 30}
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-smoke to check the script here", file=sys.stderr)
            return 2
        device, repeats, budgets = torch.device("cuda"), REPEATS_GPU, {"tests": 90, "float32": 130, "float64": 80,
                                                                         "blocks": 40, "mace": 55, "torch_sim": 40}
    started = time.perf_counter()
    report = {"environment": environment(device), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    print(json.dumps(report["environment"]), flush=True)
    if not args.skip_tests:
        report["cuda_tests"] = cuda_tests(budgets["tests"])
    report["scaling"] = {dtype: scaling(device, dtype, repeats, budgets[dtype]) for dtype in ("float32", "float64")}
    # recompute="blocks" from the largest float32 size the default reached (or ran out of memory at)
    reached = [r["n_atoms"] for r in report["scaling"]["float32"] if "error" not in r or "memory" in r["error"]]
    largest = [n for n in repeats if 4 * n**3 >= max(reached, default=0)][:3]
    report["scaling"]["float32, recompute=blocks"] = scaling(device, "float32", largest, budgets["blocks"],
                                                             recompute="blocks")
    report["neighbours"] = neighbour_search(device, repeats, 30 if args.cpu_smoke else 40)
    report["training"] = training_step(device, args.cpu_smoke)
    report["mace"] = mace_comparison(device, repeats, budgets["mace"], args.mace_python, args.mace_site)
    report["torch_sim"] = torch_sim_md(device, repeats, budgets["torch_sim"])
    report["seconds"] = time.perf_counter() - started
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=1))
    print("| atoms | dtype | call µs/atom | MD atom·steps/s | peak KiB/atom | note |\n|---|---|---|---|---|---|")
    for series, rows in report["scaling"].items():
        for r in rows:
            print(f"| {r['n_atoms']:,} | {series} | {r.get('call_us_per_atom', float('nan')):.2f} | "
                  f"{r.get('md_atom_steps_per_s', float('nan')):,.0f} | {r.get('peak_memory_kib_per_atom', float('nan')):.1f} "
                  f"| {r.get('error', '')} |")
    print(f"wrote {args.output} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
