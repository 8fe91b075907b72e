"""One prepared run on a GPU machine: the CUDA tests, the scaling table, training, MACE.

Meant for a lent GPU (one call, about 6 minutes on one H200; every part has a time budget and
stops adding sizes once its budget is spent; the report is saved after every part, so a run
stopped at its limit keeps what it finished, and an error in one part is recorded and the
others still run):

1. the CUDA tests (``tests/`` files that test on CUDA, ``-k "cuda or gpu"``), with their summary
   (the pytest output beside the report, ``cuda_tests.log``);
2. the fused Triton edge kernels against the sparse products on the same GPU: forces in float64
   (4,000 Cu atoms) and the time of an energy+forces call in float32 with each;
3. fcc Cu (``e2former-emt-cu``), float32 then float64: one energy+forces call (neighbour list,
   plan, network) and one velocity-Verlet step with the 0.3 Å skin, from 4,000 atoms up by
   factors of about 2 to 1,000,188 atoms (63^3 cubic cells) or the largest that fits; per size
   the time per atom, atom·steps/s and peak GPU memory per atom (``max_memory_allocated``); an
   out-of-memory error ends that dtype's series and is recorded; then float32 with
   ``recompute="blocks"`` at the largest sizes the default reached;
4. the neighbour search: the torch cell list on the GPU against matscipy on the CPU, by size;
5. one training step (forces and stress in the loss, double backward) on a batch of 8 rattled
   108-atom Cu cells, float32 with and without TF32 and float64;
6. two whole epochs of the copper recipe through ``torchrun`` (NCCL), float64 at batch 4 and
   float32 at batch 16;
7. MACE (``mace-torch`` with its ``cuequivariance`` acceleration when they import there) of about
   the same size on the same cells, else the reason it did not run;
8. torch-sim (when it imports): NVE steps of one large Cu cell through
   :class:`~e2former_calc.integrations.torch_sim.E2FormerModel` with the 0.3 Å skin, float32,
   sizes up as in 3 until its budget or memory ends, per size the step time and lists rebuilt.

    python benchmarks/gpu_check.py --output results/gpu_check.json       # on the GPU machine
    python benchmarks/gpu_check.py --cpu-smoke      # here: the same code, tiny sizes (runs/gpu_check_cpu_smoke.json)
    python benchmarks/gpu_check.py --render benchmarks/results/gpu_check.json   # its Markdown again

On a machine that cannot fetch packages, carry ase, matscipy (and torch-sim, mace-torch with
e3nn 0.4.4 on its own path: ``--mace-python python3 --mace-site DIR``) as wheels.

Writes JSON (``--output``) and the same as Markdown beside it; ``docs/model.md`` quotes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import traceback
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


def stop(process: subprocess.Popen, grace: float = 15.0) -> None:
    """End ``process`` and everything it started in its session (``start_new_session=True``):
    SIGTERM (torchrun passes it on to its workers), then SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def cuda_tests(budget: float, log: Path) -> dict:
    """The tests that exercise CUDA (``-k "cuda or gpu"`` in the files that mention it); the
    pytest output goes to ``log``, so a run stopped at its budget still says what passed."""
    files = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "tests").rglob("test_*.py"))
             if "cuda" in p.read_text() and p.name != "test_gpu_check.py"]  # not this script's own CPU smoke test
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-k",
                                    "cuda or gpu", *files], cwd=ROOT, stdout=handle, stderr=subprocess.STDOUT, text=True,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            stop(process)
            returncode = None
    tail = log.read_text().strip().splitlines()[-12:]
    report = {"files": files, "returncode": returncode, "summary": tail, "seconds": time.perf_counter() - start}
    if returncode is None:
        report["error"] = f"stopped at its {budget:.0f} s budget"
    return report


def edge_kernels(device, budget: float, check_repeat: int = 10, repeats=(10, 20, 32)) -> list[dict]:
    """The fused Triton edge kernels against the sparse-product implementation on the same GPU:
    largest force difference in float64 (4,000 Cu atoms) and the time of one energy+forces call
    in float32 with each, by size until the budget."""
    import numpy as np
    import torch
    from ase.build import bulk

    from e2former_calc import E2FormerCalculator

    before = os.environ.get("E2FORMER_EDGE_KERNEL")

    def forces(atoms, dtype, kernel):
        os.environ["E2FORMER_EDGE_KERNEL"] = kernel
        try:
            atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device=str(device), dtype=dtype,
                                                            skin=0.0, quiet=True)
            atoms.get_forces()  # first call: compilation, list, plan
            atoms.positions += 1e-4
            sync(device)
            t0 = time.perf_counter()
            f = atoms.get_forces()
            sync(device)
            return f, atoms.get_potential_energy(), time.perf_counter() - t0
        finally:
            atoms.calc = None
            if before is None:
                os.environ.pop("E2FORMER_EDGE_KERNEL", None)
            else:
                os.environ["E2FORMER_EDGE_KERNEL"] = before
            reset_peak(device)

    rows, start = [], time.perf_counter()
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(check_repeat)
    atoms.rattle(0.05, seed=0)
    f_t, e_t, _ = forces(atoms.copy(), "float64", "triton")
    f_s, e_s, _ = forces(atoms.copy(), "float64", "torch")
    rows.append({"n_atoms": len(atoms), "dtype": "float64", "max_force_difference_eV_A": float(np.abs(f_t - f_s).max()),
                 "energy_difference_eV": abs(e_t - e_s)})
    print(json.dumps(rows[-1]), flush=True)
    for n in repeats:
        if time.perf_counter() - start > budget:
            break
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.05, seed=0)
        row = {"n_atoms": len(atoms), "dtype": "float32"}
        for kernel in ("triton", "torch"):
            try:
                row[f"{kernel}_call_s"] = forces(atoms.copy(), "float32", kernel)[2]
            except torch.cuda.OutOfMemoryError:
                row[f"{kernel}_call_s"] = None
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


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
            atoms.calc = calc = None
            reset_peak(device)
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
        except Exception as error:  # recorded: the other series still run
            row["error"] = f"{type(error).__name__}: {str(error)[:300]}"
            rows.append(row)
            print(json.dumps(row), flush=True)
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

    with tempfile.TemporaryDirectory() as name:
        return _training_steps(device, smoke, Path(name))


def _training_steps(device, smoke: bool, folder: Path) -> list[dict]:
    from ase.build import bulk
    from ase.calculators.emt import EMT
    from ase.io import write

    from e2former_calc.training.config import parse_config
    from e2former_calc.training.trainer import Trainer

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
                     "step_s": min(times[1:])})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def training_epochs(device, smoke: bool, budget: float) -> list[dict]:
    """Whole epochs through ``torchrun`` (one process, NCCL on a GPU, gloo on a CPU) of the copper
    same-budget recipe (``benchmarks/accuracy/e2former-emt-cu-same-budget.yaml``, 2 epochs, no
    second stage): float64 at its batch of 4, and float32 at a batch of 16. The epoch times
    (``log.csv``'s ``time_s``) compare with the recipe's 2.6 min per epoch on one CPU thread."""
    import tempfile

    import yaml

    recipe = yaml.safe_load((ROOT / "benchmarks" / "accuracy" / "e2former-emt-cu-same-budget.yaml").read_text())
    for key in ("train", "valid"):
        recipe["data"][key] = str(ROOT / recipe["data"][key])
    with tempfile.TemporaryDirectory() as name:
        return _epochs(device, smoke, budget, recipe, Path(name))


def _epochs(device, smoke: bool, budget: float, recipe: dict, folder: Path) -> list[dict]:
    import yaml

    rows, start = [], time.perf_counter()
    for dtype, batch in (("float64", 4), ("float32", 16)):
        remaining = budget - (time.perf_counter() - start)
        if remaining < 20:
            rows.append({"dtype": dtype, "batch_size": batch, "error": "not run: time budget spent"})
            break
        training = {k: v for k, v in recipe["training"].items() if k != "second_stage"}
        # the trainer stops itself inside the budget (a killed launcher would leave its worker running)
        training.update(device=device.type, dtype=dtype, batch_size=batch, max_epochs=1 if smoke else 2, threads=4,
                        max_time_minutes=max(remaining - 30, 5) / 60)
        name = f"{dtype}-batch{batch}"
        data = dict(recipe["data"])
        if smoke:  # a few frames: the same code, seconds
            from ase.io import read, write

            write(folder / "few.extxyz", read(data["train"], index=":12"))
            data.update(train=str(folder / "few.extxyz"), valid=str(folder / "few.extxyz"), e0={"Cu": 0.0})
        config = folder / f"{name}.yaml"
        config.write_text(yaml.safe_dump({**recipe, "data": data, "training": training,
                                          "output": str(folder / name), "name": name}))
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "1",
                   "-m", "e2former_calc", "train", "--quiet", str(config)]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        t0 = time.perf_counter()
        process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   env=env, start_new_session=True)
        try:
            stdout, stderr = process.communicate(timeout=remaining)
        except subprocess.TimeoutExpired:
            stop(process)
            rows.append({"dtype": dtype, "batch_size": batch, "error": f"over the remaining {remaining:.0f} s"})
            break
        row = {"dtype": dtype, "batch_size": batch, "wall_s": time.perf_counter() - t0,
               "returncode": process.returncode, "last_line": (stdout.strip().splitlines() or [""])[-1][:300]}
        log = folder / name / "log.csv"
        if log.exists():
            lines = [line.split(",") for line in log.read_text().strip().splitlines()]
            header = lines[0]
            row["epochs"] = [{k: float(v) for k, v in zip(header, line) if k in
                              ("epoch", "time_s", "valid_forces_mae", "valid_energy_per_atom_mae")} for line in lines[1:]]
        if process.returncode != 0 or not log.exists():
            said = [line for line in stderr.splitlines() if "error" in line.lower()] or [f"exit {process.returncode}"]
            row["error"] = said[0][:300]
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def mace_comparison(device, repeats, budget: float, python: str | None, site: str | None) -> dict:
    """MACE of about the size of e2former-emt-cu (``benchmarks/mace_speed.py``), in its own Python
    (``--mace-python``; mace-torch pins e3nn 0.4.4) or with its packages on ``--mace-site``."""
    python = shutil.which(python or sys.executable) or python
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
        result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=budget + 60)
    except subprocess.TimeoutExpired:
        return {"error": f"over its {budget + 60:.0f} s limit"}
    rows = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    failed = f"mace_speed.py exited {result.returncode}: {(result.stderr.strip().splitlines() or ['?'])[-1][:300]}"
    if result.returncode != 0 and not rows:
        return {"error": failed}
    report = {"model": rows[0] if rows else None, "rows": rows[1:]}
    if result.returncode != 0:
        report["stopped"] = failed
    return report


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


def _number(value, digits=2) -> str:
    return "–" if value is None else f"{value:,.{digits}f}"


def _table(title, columns, rows) -> list[str]:
    """Markdown lines of one table (under a ``## title`` when given)."""
    head = ["", f"## {title}"] if title else []
    return [*head, "", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
            *("| " + " | ".join(map(str, cells)) + " |" for cells in rows)]


def render(report: dict) -> str:
    """The report as Markdown tables (what ``docs/model.md`` quotes)."""
    env = report.get("environment", {})
    out = [f"# GPU check ({report.get('started', '?')})", "",
           f"{env.get('gpu', env.get('device'))}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
           f"Triton {env.get('triton')}, Python {env.get('python')}; edge stage: {env.get('edge_kernel')}; "
           f"{report.get('seconds', 0):.0f} s in all. Written by `benchmarks/gpu_check.py`.", ""]
    for note in report.get("notes", []):
        out += [f"- {note}"]
    failed = [(name, value["error"]) for name, value in report.items() if isinstance(value, dict) and "error" in value
              and name != "mace"]
    failed += [(f"scaling, {series}", rows["error"]) for series, rows in (report.get("scaling") or {}).items()
               if isinstance(rows, dict) and "error" in rows]
    if failed:
        out += ["", "## Parts that failed", ""] + [f"- {name}: {error}" for name, error in failed]
    tests = report.get("cuda_tests")
    if isinstance(tests, dict):
        out += ["", "## CUDA tests", "", f"`{' '.join(tests.get('files', []))}` with `-k 'cuda or gpu'`: "
                f"{(tests.get('summary') or ['?'])[-1]}"]
    if isinstance(report.get("edge_kernels"), list):
        out += _table("Fused edge kernels (Triton) against the sparse products, same GPU",
                      ("atoms", "dtype", "max force difference (eV/Å)", "Triton call (s)", "sparse call (s)"),
                      ((f"{r['n_atoms']:,}", r["dtype"], r.get("max_force_difference_eV_A", "–"),
                        _number(r.get("triton_call_s"), 3), _number(r.get("torch_call_s"), 3))
                       for r in report["edge_kernels"]))
    if isinstance(report.get("scaling"), dict):
        out += _table("Energy+forces call and MD step, fcc Cu, e2former-emt-cu",
                      ("atoms", "series", "call µs/atom", "MD atom·steps/s", "peak GPU memory KiB/atom", "note"),
                      ((f"{r['n_atoms']:,}", series, _number(r.get("call_us_per_atom")),
                        _number(r.get("md_atom_steps_per_s"), 0), _number(r.get("peak_memory_kib_per_atom"), 1),
                        r.get("error", "")[:80])
                       for series, rows in report["scaling"].items() for r in (rows if isinstance(rows, list) else [])))
    if isinstance(report.get("neighbours"), list):
        out += _table("Neighbour search (cutoff 5.3 Å)",
                      ("atoms", "matscipy, CPU (s)", "torch cell list, GPU (s)", "same pair count"),
                      ((f"{r['n_atoms']:,}", _number(r.get("matscipy_cpu_s"), 3), _number(r.get("cell_list_s"), 4),
                        r.get("pairs_equal_count", r.get("error"))) for r in report["neighbours"]))
    if isinstance(report.get("training"), list):
        out += _table("One training step (forces and stress in the loss), 8 rattled Cu cells",
                      ("dtype", "TF32", "atoms per batch", "step (s)"),
                      ((r["dtype"], r["tf32"], r["atoms_per_batch"], _number(r["step_s"], 3)) for r in report["training"]))
    if isinstance(report.get("training_epochs"), list):
        out += _table("Whole epochs through torchrun, copper same-budget recipe",
                      ("dtype", "batch", "epoch times (s, cumulative)", "valid force MAE (meV/Å)", "note"),
                      ((r["dtype"], r["batch_size"], ", ".join(_number(e["time_s"], 1) for e in r.get("epochs", [])),
                        ", ".join(_number(e.get("valid_forces_mae"), 1) for e in r.get("epochs", [])), r.get("error", ""))
                       for r in report["training_epochs"]))
    mace = report.get("mace")
    if isinstance(mace, dict):
        out += ["", "## MACE of the same size (mace-torch, ASE calculator)", ""]
        if "error" in mace:
            out.append(f"Not run: {mace['error']}")
        else:
            model = mace.get("model") or {}
            out.append(f"{model.get('parameters')} parameters, cuEquivariance: {model.get('cueq')}.")
            out += _table(None, ("atoms", "call µs/atom", "peak GPU memory KiB/atom", "note"),
                          ((f"{r['n_atoms']:,}", _number(r.get("call_us_per_atom")),
                            _number(r.get("peak_memory_kib_per_atom"), 1), r.get("error", r.get("note", "")))
                           for r in mace.get("rows", [])))
            if "stopped" in mace:
                out += ["", f"Stopped: {mace['stopped']}"]
    if isinstance(report.get("torch_sim"), list):
        out += _table("torch-sim NVE steps, float32", ("atoms", "step (s)", "atom·steps/s", "lists rebuilt", "note"),
                      ((f"{r.get('n_atoms', 0):,}", _number(r.get("step_s"), 3), _number(r.get("atom_steps_per_s"), 0),
                        r.get("rebuilds", "–"), r.get("error", "")) for r in report["torch_sim"]))
    return "\n".join(out) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="run every part on the CPU at tiny sizes")
    parser.add_argument("--output", type=Path, help="the JSON report (default benchmarks/results/gpu_check.json; "
                        "with --cpu-smoke runs/gpu_check_cpu_smoke.json, so that a smoke run never overwrites "
                        "the recorded GPU results)")
    parser.add_argument("--skip-tests", action="store_true")
    default_mace = ROOT / "benchmarks" / "accuracy" / ".venv-mace" / "bin" / "python"
    parser.add_argument("--mace-python", default=str(default_mace), help="a Python with mace-torch")
    parser.add_argument("--mace-site", help="PYTHONPATH holding mace-torch and its e3nn 0.4.4 (carried wheels)")
    parser.add_argument("--render", type=Path, help="only write the Markdown of this report (JSON) beside it")
    args = parser.parse_args(argv)
    if args.output is None:
        args.output = ROOT / ("runs/gpu_check_cpu_smoke.json" if args.cpu_smoke else "benchmarks/results/gpu_check.json")
    if args.render:
        args.render.with_suffix(".md").write_text(render(json.loads(args.render.read_text())))
        return 0
    sys.path.insert(0, str(ROOT))
    import torch

    if args.cpu_smoke:
        device, repeats, budgets = torch.device("cpu"), REPEATS_SMOKE, {
            "tests": 60, "kernels": 0, "float32": 60, "float64": 60, "blocks": 30, "neighbours": 30, "epochs": 120,
            "mace": 30, "torch_sim": 30}
    else:
        if not torch.cuda.is_available():
            print("no CUDA device: run with --cpu-smoke to check the script here", file=sys.stderr)
            return 2
        device, repeats, budgets = torch.device("cuda"), REPEATS_GPU, {
            "tests": 60, "kernels": 20, "float32": 100, "float64": 40, "blocks": 30, "neighbours": 15, "epochs": 200,
            "mace": 40, "torch_sim": 25}
    started = time.perf_counter()
    report = {"environment": environment(device), "started": time.strftime("%Y-%m-%d %H:%M:%S"), "budgets_s": budgets}
    print(json.dumps(report["environment"]), flush=True)
    args.output.parent.mkdir(parents=True, exist_ok=True)

    def section(name, run, series=None):
        """One part (``series``: one series of the scaling part): its result, or the error that
        stopped it, in its own slot; the report is saved after each part (a run stopped at its time
        limit keeps what it finished)."""
        t0 = time.perf_counter()
        print(f"## {name}{f' ({series})' if series else ''}", flush=True)
        slot, key = (report, name) if series is None else (report.setdefault(name, {}), series)
        try:
            slot[key] = run()
        except Exception as error:  # the other parts still run
            slot[key] = {"error": f"{type(error).__name__}: {error}"[:600],
                         "traceback": traceback.format_exc().splitlines()[-6:]}
            print(json.dumps(slot[key]), flush=True)
        times = report.setdefault("section_seconds", {})
        times[name] = times.get(name, 0.0) + time.perf_counter() - t0
        report["seconds"] = time.perf_counter() - started
        args.output.write_text(json.dumps(report, indent=1))

    if not args.skip_tests:
        section("cuda_tests", lambda: cuda_tests(budgets["tests"], args.output.with_name("cuda_tests.log")))
    if device.type == "cuda":
        section("edge_kernels", lambda: edge_kernels(device, budgets["kernels"]))
    for dtype in ("float32", "float64"):
        section("scaling", lambda dtype=dtype: scaling(device, dtype, repeats, budgets[dtype]), series=dtype)

    def blocks():
        # recompute="blocks" from the largest float32 size the default reached (or ran out of memory at)
        default = report["scaling"].get("float32")
        reached = [r["n_atoms"] for r in (default if isinstance(default, list) else [])
                   if "error" not in r or "memory" in r["error"]]
        largest = [n for n in repeats if 4 * n**3 >= max(reached, default=0)][:3]
        return scaling(device, "float32", largest, budgets["blocks"], recompute="blocks")

    section("scaling", blocks, series="float32, recompute=blocks")
    section("neighbours", lambda: neighbour_search(device, repeats, budgets["neighbours"]))
    section("training", lambda: training_step(device, args.cpu_smoke))
    section("training_epochs", lambda: training_epochs(device, args.cpu_smoke, budgets["epochs"]))
    section("mace", lambda: mace_comparison(device, repeats, budgets["mace"], args.mace_python, args.mace_site))
    section("torch_sim", lambda: torch_sim_md(device, repeats, budgets["torch_sim"]))
    markdown = render(report)
    args.output.with_suffix(".md").write_text(markdown)
    print(markdown)
    print(f"wrote {args.output} and its .md ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
