#!/usr/bin/env python3
"""Train MACE for a fixed wall-clock budget, then evaluate it on the test set.

The MACE side of the E2Former-vs-MACE accuracy comparison.  Run it with the
MACE environment's python (see setup_mace_env.sh and README.md):

    benchmarks/accuracy/.venv-mace/bin/python benchmarks/accuracy/train_mace.py \
        --data datasets/xtb-rmd17 --name xtb-rmd17 --budget-minutes 600 --threads 2

What it does:

1. Decompresses DATA/{train,valid,test}.extxyz.gz into WORK/data/*.xyz (MACE reads
   ``.xyz``; compressed files are not recognised by its file-type dispatch).
2. Picks the number of channels of the hidden irreps (``Cx0e+Cx1o``) whose MACE
   model has the parameter count closest to ``--target-params`` (85,385, the
   E2Former model of the comparison) for the elements found in the training data,
   unless ``--num-channels`` is given.
3. Runs MACE's own trainer (``mace.cli.run_train.run``, i.e. ``mace_run_train``)
   in this process with a huge ``max_num_epochs``; a small patch on MACE's epoch
   loop stops taking optimizer steps when the budget is reached (checked before
   every batch, keeping back the time of one validation pass), lets MACE validate
   and checkpoint that last (partial) epoch, and ends the training loop.  MACE then
   restores its best-validation checkpoint (EMA weights) and saves the model as
   usual.  The training wall-clock time (MACE's ``train`` function: the initial
   validation, epochs, validations, checkpoints) is measured separately from data
   loading/statistics before it and from the evaluation after it.  MACE's own
   train/valid error tables at the end are skipped (step 4 replaces them).
   With ``--resume`` the run in WORK continues where it stopped (MACE's ``--restart_latest``:
   from its latest checkpoint, i.e. its best validation so far with EMA weights, the optimizer
   and learning-rate scheduler state; the EMA starts again from those weights) for what is left
   of ``--budget-minutes`` after the training time of the earlier parts, so that a long budget
   can be spent in several sessions; the result file then lists the parts and their sums.
4. Evaluates the saved model on the test file with ``mace.calculators.MACECalculator``
   (float64, CPU, one structure at a time) and writes
   ``benchmarks/results/accuracy_mace_<name>.json``.

Hyper-parameters (defaults): r_max 5 Å, 8 Bessel radial functions, polynomial
cutoff p=5, spherical harmonics up to l=3, hidden irreps Cx0e+Cx1o (max_L 1),
correlation order 3, 2 interactions, radial MLP [64,64,64], readout MLP 16x0e,
E0s by least squares on the training set ("average"), float64, Adam (amsgrad)
lr 0.01 with MACE's ReduceLROnPlateau, EMA decay 0.99, gradient clipping 10,
batch size 5; loss "weighted" (energy per atom weight 1, forces weight 100) or,
with --stress, loss "stress" (energy 1, forces 10, stress 100).
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import os
import platform
import shlex
import shutil
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_RESULTS_DIR = HERE.parent / "results"
E2FORMER_PARAMS = 85_385

SPLITS = ("train", "valid", "test")
ENERGY_KEY = "REF_energy"
FORCES_KEY = "REF_forces"
STRESS_KEY = "REF_stress"


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--data",
        required=True,
        type=Path,
        help="directory with train/valid/test .extxyz.gz (or .extxyz / .xyz)",
    )
    p.add_argument("--name", required=True, help="run name; results go to accuracy_mace_<name>.json")
    p.add_argument(
        "--budget-minutes",
        required=True,
        type=float,
        help="wall-clock budget for training (evaluation not included)",
    )
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    p.add_argument("--seed", type=int, default=123)
    p.add_argument(
        "--work", type=Path, default=None, help="work directory (default: /tmp/mace-accuracy/<name>)"
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="delete a previous MACE run in WORK/mace instead of refusing to start",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in WORK (MACE's --restart_latest) until the total training time of all "
        "its parts reaches --budget-minutes; its accuracy_mace_<name>.json must exist",
    )
    p.add_argument(
        "--stress",
        action="store_true",
        help="train and evaluate stress (REF_stress, periodic data such as copper)",
    )
    p.add_argument(
        "--e0s",
        choices=("average", "isolated"),
        default="average",
        help="MACE's E0s: least squares on the training set, or the training file's one-atom frames",
    )
    p.add_argument(
        "--results-dir",
        type=Path,
        default=DEFAULT_RESULTS_DIR,
        help="where accuracy_mace_<name>.json is written",
    )
    p.add_argument(
        "--evaluate-only",
        action="store_true",
        help="no training: evaluate WORK's trained model on the test file again and update the "
        "test errors of an existing accuracy_mace_<name>.json",
    )
    p.add_argument(
        "--count-only",
        action="store_true",
        help="only choose the channel count and print the parameter count, no training",
    )
    # model
    g = p.add_argument_group("model")
    g.add_argument(
        "--target-params",
        type=int,
        default=E2FORMER_PARAMS,
        help="choose the channel count whose parameter count is closest to this",
    )
    g.add_argument(
        "--num-channels",
        type=int,
        default=None,
        help="channels of the hidden irreps (overrides --target-params)",
    )
    g.add_argument("--max-L", type=int, default=1, help="highest l of the hidden irreps")
    g.add_argument("--max-ell", type=int, default=3, help="highest l of the edge spherical harmonics")
    g.add_argument("--r-max", type=float, default=5.0)
    g.add_argument("--num-radial-basis", type=int, default=8)
    g.add_argument("--num-cutoff-basis", type=int, default=5)
    g.add_argument("--correlation", type=int, default=3)
    g.add_argument("--num-interactions", type=int, default=2)
    g.add_argument("--radial-mlp", default="[64, 64, 64]")
    g.add_argument("--mlp-irreps", default="16x0e")
    # optimisation
    g = p.add_argument_group("training")
    g.add_argument("--batch-size", type=int, default=5)
    g.add_argument("--valid-batch-size", type=int, default=10)
    g.add_argument("--lr", type=float, default=0.01)
    g.add_argument("--ema-decay", type=float, default=0.99)
    g.add_argument("--energy-weight", type=float, default=1.0)
    g.add_argument(
        "--forces-weight",
        type=float,
        default=None,
        help="default 100 (energy/forces loss) or 10 (with --stress)",
    )
    g.add_argument("--stress-weight", type=float, default=100.0, help="only with --stress")
    g.add_argument(
        "--max-num-epochs",
        type=int,
        default=1_000_000,
        help="upper bound on epochs; the budget is what normally ends training",
    )
    g.add_argument(
        "--extra", default="", help="extra mace_run_train arguments, one shell-quoted string (appended last)"
    )
    args = p.parse_args(argv)
    if args.forces_weight is None:
        args.forces_weight = 10.0 if args.stress else 100.0
    if args.work is None:
        args.work = Path("/tmp/mace-accuracy") / args.name
    if args.budget_minutes <= 0:
        p.error("--budget-minutes must be positive")
    if args.threads < 1:
        p.error("--threads must be >= 1")
    return args


def set_thread_env(threads: int) -> None:
    """Thread limits for OpenMP/BLAS; must run before torch and numpy are imported."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(threads)


# --------------------------------------------------------------------------- data


def find_split(data_dir: Path, split: str) -> Path:
    for suffix in (".extxyz.gz", ".xyz.gz", ".extxyz", ".xyz"):
        path = data_dir / f"{split}{suffix}"
        if path.is_file():
            return path
    raise FileNotFoundError(f"no {split}.extxyz.gz (or .extxyz/.xyz) in {data_dir}")


def prepare_data(data_dir: Path, work: Path) -> dict:
    """Plain-text copies of the splits, named .xyz so that MACE reads them with ASE."""
    out_dir = work / "data"
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for split in SPLITS:
        src = find_split(data_dir, split)
        dst = out_dir / f"{split}.xyz"
        opener = gzip.open if src.suffix == ".gz" else open
        with opener(src, "rb") as fin, open(dst, "wb") as fout:
            shutil.copyfileobj(fin, fout)
        paths[split] = dst
    return paths


def read_frames(path: Path):
    import ase.io

    return ase.io.read(str(path), index=":", format="extxyz")


# --------------------------------------------------------------------------- model size


def hidden_irreps_str(channels: int, max_L: int) -> str:
    return "+".join(f"{channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(max_L + 1))


def count_mace_parameters(zs, channels: int, args) -> int:
    """Parameters of the model that mace_run_train builds for these settings.

    Mirrors mace.tools.model_script_utils (``--model MACE``: ScaleShiftMACE with a
    RealAgnosticInteractionBlock first and RealAgnosticResidualInteractionBlock
    after).  Scale, shift, E0s and avg_num_neighbors are buffers or do not change
    the count.  The count of the trained model is checked against it afterwards.
    """
    import ast

    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    model = modules.ScaleShiftMACE(
        r_max=args.r_max,
        num_bessel=args.num_radial_basis,
        num_polynomial_cutoff=args.num_cutoff_basis,
        max_ell=args.max_ell,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=args.num_interactions,
        num_elements=len(zs),
        hidden_irreps=o3.Irreps(hidden_irreps_str(channels, args.max_L)),
        atomic_energies=np.zeros(len(zs)),
        avg_num_neighbors=10.0,
        atomic_numbers=list(zs),
        correlation=args.correlation,
        gate=torch.nn.functional.silu,
        MLP_irreps=o3.Irreps(args.mlp_irreps),
        atomic_inter_scale=1.0,
        atomic_inter_shift=0.0,
        radial_MLP=ast.literal_eval(args.radial_mlp),
        heads=["Default"],
    )
    return sum(p.numel() for p in model.parameters())


def choose_channels(zs, args) -> tuple[int, int]:
    """Channel count whose parameter count is closest to args.target_params."""
    if args.num_channels is not None:
        return args.num_channels, count_mace_parameters(zs, args.num_channels, args)
    cache = {}

    def n(c):
        if c not in cache:
            cache[c] = count_mace_parameters(zs, c, args)
        return cache[c]

    lo, hi = 1, 8
    while n(hi) < args.target_params:  # the count grows with the channel count
        lo, hi = hi, hi * 2
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if n(mid) < args.target_params:
            lo = mid
        else:
            hi = mid
    best = min((lo, hi), key=lambda c: (abs(n(c) - args.target_params), c))
    return best, n(best)


# --------------------------------------------------------------------------- training


class _BudgetReached(Exception):
    pass


class BudgetedTraining:
    """Stops MACE's epoch loop at a wall-clock budget (mace-torch 0.3.16).

    Patches, in mace.tools.train: ``train_one_epoch`` (the data loader it gets
    stops yielding batches at the deadline; an epoch that would start after the
    deadline raises _BudgetReached instead) and ``evaluate`` (timed, so that one
    validation pass is kept back from the budget); and ``mace.tools.train`` (the
    function run_train calls) to time the loop and catch _BudgetReached.  The
    first epoch always gets at least one batch so that a checkpoint exists.
    """

    def __init__(self, budget_s: float):
        self.budget_s = budget_s
        self.t0 = None
        self.t_end = None
        self.stop = False
        self.stopped_by_budget = False
        self.last_eval_s = 0.0
        self.eval_s = []
        self.epochs = []  # per epoch: steps, steps_in_epoch, train_s
        self.steps = 0

    def deadline(self) -> float:
        reserve = 1.2 * self.last_eval_s + 1.0
        return self.t0 + self.budget_s - reserve

    def install(self):
        import importlib

        import mace.tools

        trainmod = importlib.import_module("mace.tools.train")
        for attr in ("train", "train_one_epoch", "evaluate"):
            if not callable(getattr(trainmod, attr, None)):
                raise RuntimeError(f"mace.tools.train.{attr} not found: unsupported mace-torch version")
        if getattr(mace.tools, "train", None) is not trainmod.train:
            raise RuntimeError(
                "mace.tools.train is not the training function: unsupported mace-torch version"
            )

        orig_train = trainmod.train
        orig_epoch = trainmod.train_one_epoch
        orig_eval = trainmod.evaluate
        budget = self

        class BudgetLoader:
            def __init__(self, loader, first):
                self.loader = loader
                self.first = first
                self.yielded = 0

            def __len__(self):
                return len(self.loader)

            def __iter__(self):
                for batch in self.loader:
                    if time.monotonic() >= budget.deadline() and not (self.first and self.yielded == 0):
                        budget.stop = True
                        budget.stopped_by_budget = True
                        return
                    self.yielded += 1
                    budget.steps += 1
                    yield batch

        def train_one_epoch(*a, **kw):
            if budget.stop or (budget.epochs and time.monotonic() >= budget.deadline()):
                budget.stopped_by_budget = True
                raise _BudgetReached
            loader = BudgetLoader(kw["data_loader"], first=not budget.epochs)
            kw["data_loader"] = loader
            t = time.monotonic()
            orig_epoch(*a, **kw)
            budget.epochs.append(
                {"steps": loader.yielded, "steps_in_epoch": len(loader), "train_s": time.monotonic() - t}
            )

        def evaluate(*a, **kw):
            t = time.monotonic()
            out = orig_eval(*a, **kw)
            budget.last_eval_s = time.monotonic() - t
            budget.eval_s.append(budget.last_eval_s)
            return out

        def train(*a, **kw):
            budget.t0 = time.monotonic()
            try:
                orig_train(*a, **kw)
            except _BudgetReached:
                logging.info("Wall-clock budget of %.1f min reached: training stopped", budget.budget_s / 60)
            budget.t_end = time.monotonic()

        trainmod.train_one_epoch = train_one_epoch
        trainmod.evaluate = evaluate
        mace.tools.train = train

    def summary(self) -> dict:
        full = sum(1 for e in self.epochs if e["steps"] == e["steps_in_epoch"])
        frac = sum(e["steps"] / e["steps_in_epoch"] for e in self.epochs if e["steps_in_epoch"])
        full_train_s = [e["train_s"] for e in self.epochs if e["steps"] == e["steps_in_epoch"]]
        return {
            "training_wall_s": None if self.t_end is None else self.t_end - self.t0,
            "stopped_by_budget": self.stopped_by_budget,
            "epochs_completed": round(frac, 4),
            "full_epochs": full,
            "optimizer_steps": self.steps,
            "mean_epoch_train_s": (sum(full_train_s) / len(full_train_s)) if full_train_s else None,
            "mean_validation_s": (sum(self.eval_s) / len(self.eval_s)) if self.eval_s else None,
            "last_epoch": self.epoch_log()[-1] if self.epochs else None,
        }

    def epoch_log(self) -> list[dict]:
        return [
            {"epoch": i, **{k: (round(v, 3) if isinstance(v, float) else v) for k, v in e.items()}}
            for i, e in enumerate(self.epochs)
        ]


def skip_final_error_tables():
    """MACE's end-of-run train/valid error table costs a pass over the training set;
    this script evaluates the test set itself, so the tables are skipped."""
    import mace.cli.run_train as rt

    if not hasattr(rt, "create_error_table"):
        raise RuntimeError("mace.cli.run_train.create_error_table not found: unsupported mace-torch version")
    rt.create_error_table = lambda *a, **kw: "(skipped by train_mace.py; test set evaluated separately)"


def isolated_atom_e0s(train_file: Path) -> str:
    """MACE's ``--E0s`` as a mapping atomic number: energy, from the one-atom frames of the file."""
    e0s = {int(f.numbers[0]): float(f.info[ENERGY_KEY]) for f in read_frames(train_file) if len(f) == 1}
    if not e0s:
        raise SystemExit(f"--e0s isolated: {train_file} has no one-atom frame")
    return str(e0s)


def mace_arguments(args, paths: dict, channels: int, mace_dir: Path) -> list[str]:
    margs = [
        "--name",
        args.name,
        "--seed",
        str(args.seed),
        "--work_dir",
        str(mace_dir),
        "--device",
        "cpu",
        "--default_dtype",
        "float64",
        "--train_file",
        str(paths["train"]),
        "--valid_file",
        str(paths["valid"]),
        "--energy_key",
        ENERGY_KEY,
        "--forces_key",
        FORCES_KEY,
        "--E0s",
        isolated_atom_e0s(paths["train"]) if args.e0s == "isolated" else "average",
        "--model",
        "MACE",
        "--r_max",
        str(args.r_max),
        "--num_radial_basis",
        str(args.num_radial_basis),
        "--num_cutoff_basis",
        str(args.num_cutoff_basis),
        "--max_ell",
        str(args.max_ell),
        "--num_channels",
        str(channels),
        "--max_L",
        str(args.max_L),
        "--correlation",
        str(args.correlation),
        "--num_interactions",
        str(args.num_interactions),
        "--radial_MLP",
        args.radial_mlp,
        "--MLP_irreps",
        args.mlp_irreps,
        "--batch_size",
        str(args.batch_size),
        "--valid_batch_size",
        str(args.valid_batch_size),
        "--lr",
        str(args.lr),
        "--ema",
        "--ema_decay",
        str(args.ema_decay),
        "--amsgrad",
        "--energy_weight",
        str(args.energy_weight),
        "--forces_weight",
        str(args.forces_weight),
        "--max_num_epochs",
        str(args.max_num_epochs),
        "--patience",
        str(args.max_num_epochs),
        "--eval_interval",
        "1",
        "--num_workers",
        "0",
        "--pin_memory",
        "False",
        "--plot",
        "False",
        "--save_cpu",
    ]
    if args.stress:
        margs += [
            "--loss",
            "stress",
            "--stress_key",
            STRESS_KEY,
            "--stress_weight",
            str(args.stress_weight),
            "--compute_stress",
            "True",
            "--error_table",
            "PerAtomMAEstressvirials",
        ]
    else:
        margs += ["--loss", "weighted", "--error_table", "PerAtomMAE"]
    margs += shlex.split(args.extra)
    return margs


def run_mace_training(margs: list[str], budget_s: float) -> tuple[BudgetedTraining, float]:
    from mace import tools
    from mace.cli import run_train

    budget = BudgetedTraining(budget_s)
    budget.install()
    skip_final_error_tables()
    parser = tools.build_default_arg_parser()
    mace_args = parser.parse_args(margs)
    t = time.monotonic()
    run_train.run(mace_args)
    total = time.monotonic() - t
    # run_train configured the root logger (file + stream); detach it from here on.
    for h in list(logging.getLogger().handlers):
        logging.getLogger().removeHandler(h)
    return budget, total


# --------------------------------------------------------------------------- evaluation


def metrics_for(records, stress: bool) -> dict:
    """MAE/RMSE in meV units, with the key names and definitions of the E2Former side
    (e2former_calc.training.metrics.ErrorTally): energy per structure and per atom
    (mean over structures of |dE|/N), forces over all Cartesian components, stress over
    the 6 Voigt components of the periodic structures that have a reference stress."""
    import numpy as np

    n_atoms = np.array([r["n_atoms"] for r in records])
    de = np.array([r["e_pred"] - r["e_ref"] for r in records])
    df = np.concatenate([(r["f_pred"] - r["f_ref"]).ravel() for r in records])
    out = {
        "frames": len(records),
        "atoms": int(n_atoms.sum()),
        "energy_mae": 1e3 * float(np.mean(np.abs(de))),
        "energy_rmse": 1e3 * float(np.sqrt(np.mean(de**2))),
        "energy_per_atom_mae": 1e3 * float(np.mean(np.abs(de) / n_atoms)),
        "energy_per_atom_rmse": 1e3 * float(np.sqrt(np.mean((de / n_atoms) ** 2))),
        # the constant part of the error of these frames (one per molecule: the "offset")
        "energy_per_atom_mean_error": 1e3 * float(np.mean(de / n_atoms)),
        "energy_per_atom_mae_offset_removed": 1e3 * float(np.mean(np.abs(de / n_atoms - np.mean(de / n_atoms)))),
        "forces_mae": 1e3 * float(np.mean(np.abs(df))),
        "forces_rmse": 1e3 * float(np.sqrt(np.mean(df**2))),
    }
    if stress:
        with_s = [r for r in records if r.get("s_ref") is not None]
        if with_s:
            ds = np.concatenate([(r["s_pred"] - r["s_ref"]).ravel() for r in with_s])
            out["stress_frames"] = len(with_s)
            out["stress_mae"] = 1e3 * float(np.mean(np.abs(ds)))
            out["stress_rmse"] = 1e3 * float(np.sqrt(np.mean(ds**2)))
    return out


def evaluate_test(model_path: Path, test_path: Path, stress: bool) -> dict:
    import numpy as np
    from mace.calculators import MACECalculator

    frames = read_frames(test_path)
    calc = MACECalculator(model_paths=str(model_path), device="cpu", default_dtype="float64")
    records = []
    t = time.monotonic()
    for atoms in frames:
        e_ref = float(atoms.info[ENERGY_KEY])
        f_ref = np.array(atoms.arrays[FORCES_KEY], dtype=float)
        s_ref = atoms.info.get(STRESS_KEY) if (stress and atoms.pbc.all()) else None
        at = atoms.copy()
        at.calc = calc
        rec = {
            "config_type": str(atoms.info.get("config_type", "Default")),
            "temperature_K": atoms.info.get("temperature_K"),
            "n_atoms": len(atoms),
            "e_ref": e_ref,
            "e_pred": float(at.get_potential_energy()),
            "f_ref": f_ref,
            "f_pred": np.array(at.get_forces(), dtype=float),
        }
        if s_ref is not None:
            s_ref = np.asarray(s_ref, dtype=float).ravel()
            if s_ref.size == 9:  # full 3x3 -> Voigt (xx, yy, zz, yz, xz, xy)
                m = s_ref.reshape(3, 3)
                s_ref = np.array([m[0, 0], m[1, 1], m[2, 2], m[1, 2], m[0, 2], m[0, 1]])
            rec["s_ref"] = s_ref
            rec["s_pred"] = np.array(at.get_stress(voigt=True), dtype=float)
        records.append(rec)
    wall = time.monotonic() - t
    per_type = {}
    for ct in sorted({r["config_type"] for r in records}):
        per_type[ct] = metrics_for([r for r in records if r["config_type"] == ct], stress)
    # frames of MD at a temperature (the held-out trajectories): also by type and temperature,
    # keyed as benchmarks/accuracy/side_by_side.py keys them ("aspirin @ 300 K", "all @ 300 K")
    temperatures = sorted({float(r["temperature_K"]) for r in records if r["temperature_K"] is not None})
    for t in temperatures:
        at_t = [r for r in records if r["temperature_K"] is not None and float(r["temperature_K"]) == t]
        per_type[f"all @ {t:g} K"] = metrics_for(at_t, stress)
        for ct in sorted({r["config_type"] for r in at_t}):
            per_type[f"{ct} @ {t:g} K"] = metrics_for([r for r in at_t if r["config_type"] == ct], stress)
    return {
        "overall": metrics_for(records, stress),
        "per_config_type": per_type,
        "evaluation_wall_s": wall,
    }


# --------------------------------------------------------------------------- main


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    set_thread_env(args.threads)
    # Noise from e3nn 0.4.4 / TorchScript under torch 2.13, repeated for every module built.
    warnings.filterwarnings("ignore", message="The TorchScript type system doesn't support instance-level")
    warnings.filterwarnings(
        "ignore", message="Environment variable TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD detected"
    )
    command = (
        shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["train_mace.py", *argv])
    )

    import mace  # noqa: F401  (first: sets TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD, needed by e3nn 0.4.4)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float64)
    import e3nn

    work = args.work.resolve()
    mace_dir = work / "mace"
    out = args.results_dir / f"accuracy_mace_{args.name}.json"
    if args.evaluate_only:
        result = json.loads(out.read_text())
        paths = prepare_data(args.data.resolve(), work)
        test = evaluate_test(mace_dir / f"{args.name}.model", paths["test"], args.stress)
        result["test"] = {"overall": test["overall"], "per_config_type": test["per_config_type"]}
        result["evaluation"]["wall_s"] = test["evaluation_wall_s"]
        out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"[train_mace] re-evaluated the test file; wrote {out}", flush=True)
        return 0
    previous = None
    if args.resume:
        if not (mace_dir / "checkpoints").is_dir() or not out.is_file():
            print(f"error: --resume needs the earlier run's {mace_dir / 'checkpoints'} and {out}", file=sys.stderr)
            return 2
        previous = json.loads(out.read_text())
        if previous.get("work_dir") != str(work):
            print(f"error: {out} is of the run in {previous.get('work_dir')}, not {work}", file=sys.stderr)
            return 2
        left_s = 60.0 * args.budget_minutes - previous["training_wall_s"]
        if left_s < 60.0:
            print(f"error: {previous['training_wall_s'] / 60:.1f} min of the {args.budget_minutes:g}-minute budget "
                  "are spent already", file=sys.stderr)
            return 2
    elif not args.count_only and mace_dir.exists():
        if not args.overwrite:
            print(
                f"error: {mace_dir} exists (a previous run); pass --overwrite to delete it", file=sys.stderr
            )
            return 2
        shutil.rmtree(mace_dir)
    work.mkdir(parents=True, exist_ok=True)

    t_prep = time.monotonic()
    paths = prepare_data(args.data.resolve(), work)
    train_frames = read_frames(paths["train"])
    zs = sorted({int(z) for atoms in train_frames for z in atoms.numbers})
    n_frames = {"train": len(train_frames)}
    n_frames.update({s: len(read_frames(paths[s])) for s in ("valid", "test")})
    del train_frames
    channels, predicted = choose_channels(zs, args)
    prep_s = time.monotonic() - t_prep
    print(
        f"[train_mace] elements {zs}; hidden irreps {hidden_irreps_str(channels, args.max_L)}: "
        f"{predicted:,} parameters (target {args.target_params:,}); frames {n_frames}",
        flush=True,
    )
    if args.count_only:
        return 0

    margs = mace_arguments(args, paths, channels, mace_dir)
    if previous is not None:
        margs.append("--restart_latest")
    print("[train_mace] mace_run_train " + shlex.join(margs), flush=True)
    budget_s = 60.0 * args.budget_minutes - (previous["training_wall_s"] if previous else 0.0)
    budget, run_s = run_mace_training(margs, budget_s)
    torch.set_num_threads(args.threads)
    summary = budget.summary()
    print(
        f"[train_mace] training {summary['training_wall_s']:.1f} s, {summary['epochs_completed']} epochs, "
        f"{summary['optimizer_steps']} steps",
        flush=True,
    )

    epoch_log = work / "train_mace_epochs.json"
    log = {"validation_s": budget.eval_s, "epochs": budget.epoch_log()}
    if previous is not None and epoch_log.is_file():  # the earlier parts' epochs first
        earlier = json.loads(epoch_log.read_text())
        log = {"validation_s": earlier["validation_s"] + log["validation_s"], "epochs": earlier["epochs"] + log["epochs"]}
    with open(epoch_log, "w") as f:
        json.dump(log, f, indent=1)
    if previous is not None:  # totals over the parts; each part's own summary kept in "parts"
        this_part = {**summary, "budget_s": budget_s, "command": command}
        parts = previous.get("parts") or [{**{k: previous.get(k) for k in (*summary, "command")},
                                           "budget_s": 60.0 * previous["budget_minutes"]}]
        parts = parts + [this_part]
        summary = {**summary,
                   "training_wall_s": sum(part["training_wall_s"] for part in parts),
                   "epochs_completed": round(sum(part["epochs_completed"] for part in parts), 4),
                   "full_epochs": sum(part["full_epochs"] for part in parts),
                   "optimizer_steps": sum(part["optimizer_steps"] for part in parts)}

    model_path = mace_dir / f"{args.name}.model"
    ckpts = sorted((mace_dir / "checkpoints").glob(f"{args.name}_run-{args.seed}_epoch-*.pt"))
    best_epoch = None
    if ckpts:
        best_epoch = max(int(p.stem.rsplit("-", 1)[1]) for p in ckpts)
    model = torch.load(str(model_path), map_location="cpu", weights_only=False)
    n_params = sum(p.numel() for p in model.parameters())
    del model
    if n_params != predicted:
        print(
            f"[train_mace] warning: trained model has {n_params} parameters, predicted {predicted}",
            flush=True,
        )
    print(f"[train_mace] MACE parameters: {n_params:,}", flush=True)

    test = evaluate_test(model_path, paths["test"], args.stress)
    o = test["overall"]
    line = (
        f"[train_mace] test: E MAE {o['energy_mae']:.2f} meV ({o['energy_per_atom_mae']:.3f} meV/atom), "
        f"F MAE {o['forces_mae']:.2f} meV/Å, F RMSE {o['forces_rmse']:.2f} meV/Å"
    )
    if "stress_mae" in o:
        line += f", stress MAE {o['stress_mae']:.3f} meV/Å^3"
    print(line, flush=True)

    result = {
        "model": "MACE",
        "name": args.name,
        "data": str(args.data.resolve()),
        "frames": n_frames,
        "elements": zs,
        "parameters": n_params,
        "target_parameters": args.target_params,
        "hyperparameters": {
            "hidden_irreps": hidden_irreps_str(channels, args.max_L),
            "num_channels": channels,
            "max_L": args.max_L,
            "max_ell": args.max_ell,
            "r_max": args.r_max,
            "num_radial_basis": args.num_radial_basis,
            "num_cutoff_basis": args.num_cutoff_basis,
            "correlation": args.correlation,
            "num_interactions": args.num_interactions,
            "radial_MLP": args.radial_mlp,
            "MLP_irreps": args.mlp_irreps,
            "E0s": ("isolated (the training file's one-atom frames)" if args.e0s == "isolated"
                    else "average (least squares on the training set)"),
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "adam (amsgrad), ReduceLROnPlateau (MACE defaults: factor 0.8, patience 50)",
            "ema_decay": args.ema_decay,
            "loss": "stress" if args.stress else "weighted",
            "energy_weight": args.energy_weight,
            "forces_weight": args.forces_weight,
            "stress_weight": args.stress_weight if args.stress else None,
            "dtype": "float64",
            "extra": args.extra,
        },
        "budget_minutes": args.budget_minutes,
        **summary,
        **({"parts": parts, "parts_note": "resumed with --resume (MACE's --restart_latest: from the latest "
            "checkpoint, the best validation so far, EMA weights; optimizer and scheduler state kept)"}
           if previous is not None else {}),
        "checkpoint_epoch": best_epoch,
        "checkpoint_note": "MACE keeps the best-validation-loss checkpoint (EMA weights): the one evaluated",
        "data_preparation_s": prep_s,
        "mace_run_total_s": run_s,
        "threads": args.threads,
        "seed": args.seed,
        "test": {"overall": test["overall"], "per_config_type": test["per_config_type"]},
        "units": {
            "energy_mae, energy_rmse": "meV per structure (total energy)",
            "energy_per_atom_mae, energy_per_atom_rmse": "meV/atom (over structures, of |dE|/N)",
            "forces_mae, forces_rmse": "meV/Å over all Cartesian force components",
            "stress_mae, stress_rmse": "meV/Å^3, 6 Voigt components (ASE sign convention), periodic only",
        },
        "evaluation": {
            "method": "mace.calculators.MACECalculator, one structure at a time",
            "device": "cpu",
            "dtype": "float64",
            "wall_s": test["evaluation_wall_s"],
        },
        "versions": {
            "mace-torch": mace.__version__,
            "e3nn": e3nn.__version__,
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "cpu": cpu_model(),
        "command": command,
        "mace_run_train_args": margs,
        "work_dir": str(work),
        "epoch_log": str(epoch_log),
        "model_file": str(model_path),
    }
    args.results_dir.mkdir(parents=True, exist_ok=True)
    with open(out, "w") as f:
        json.dump(result, f, indent=1)
        f.write("\n")
    print(f"[train_mace] wrote {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
