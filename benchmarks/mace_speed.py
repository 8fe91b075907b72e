"""MACE's energy+forces time and memory on fcc Cu: the comparison side of ``gpu_check.py``.

Runs in MACE's own environment (mace-torch pins e3nn 0.4.4; ``benchmarks/accuracy/setup_mace_env.sh``
makes one), with the model of the accuracy comparison (``benchmarks/accuracy/train_mace.py``
defaults for ``e2former-emt-cu``'s size: 14 channels, L_max 1, l_max 3, correlation 3, two
interactions, r_max 5 Å; untrained weights: speed and memory do not depend on them), through
``mace.calculators.MACECalculator`` (with cuEquivariance when ``--cueq`` and it imports)::

    .venv-mace/bin/python benchmarks/mace_speed.py --device cuda --repeats 10 20 32 --dtype float32

Prints one JSON line per size: ``n_atoms``, ``call_s`` (second call), ``call_us_per_atom``,
``peak_memory_kib_per_atom`` (GPU: ``max_memory_allocated``; CPU: peak resident set), or ``error``.
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
from pathlib import Path


def build_model(args):
    import numpy as np
    import torch
    from e3nn import o3
    from mace import modules

    hidden = "+".join(f"{args.channels}x{ell}{'e' if ell % 2 == 0 else 'o'}" for ell in range(args.max_L + 1))
    model = modules.ScaleShiftMACE(
        r_max=args.r_max, num_bessel=8, num_polynomial_cutoff=5, max_ell=3,
        interaction_cls=modules.interaction_classes["RealAgnosticResidualInteractionBlock"],
        interaction_cls_first=modules.interaction_classes["RealAgnosticInteractionBlock"],
        num_interactions=2, num_elements=1, hidden_irreps=o3.Irreps(hidden), atomic_energies=np.zeros(1),
        avg_num_neighbors=43.0, atomic_numbers=[29], correlation=3, gate=torch.nn.functional.silu,
        MLP_irreps=o3.Irreps("16x0e"), atomic_inter_scale=1.0, atomic_inter_shift=0.0,
        radial_MLP=ast.literal_eval("[64, 64, 64]"), heads=["Default"],
    )
    return model


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--repeats", type=int, nargs="+", default=[3, 6])
    parser.add_argument("--channels", type=int, default=14)
    parser.add_argument("--max-L", type=int, default=1)
    parser.add_argument("--r-max", type=float, default=5.0)
    parser.add_argument("--cueq", action="store_true", help="cuEquivariance kernels when they import")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds; no new size after this")
    args = parser.parse_args(argv)

    import numpy as np
    import torch
    from ase.build import bulk
    from mace.calculators import MACECalculator

    torch.set_default_dtype(getattr(torch, args.dtype))
    model = build_model(args).to(getattr(torch, args.dtype))
    path = Path(tempfile.mkdtemp()) / "cu.model"
    torch.save(model, path)
    cueq = False
    if args.cueq:
        try:
            import cuequivariance_torch  # noqa: F401
            cueq = True
        except Exception:  # noqa: BLE001
            cueq = False
    device = torch.device(args.device)
    calc = MACECalculator(model_paths=str(path), device=args.device, default_dtype=args.dtype,
                          **({"enable_cueq": True} if cueq else {}))
    print(json.dumps({"parameters": sum(p.numel() for p in model.parameters()), "cueq": cueq}), flush=True)
    start = time.perf_counter()
    for n in args.repeats:
        if time.perf_counter() - start > args.budget:
            print(json.dumps({"n_atoms": 4 * n**3, "error": "not run: time budget spent"}), flush=True)
            break
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(n)
        atoms.rattle(0.05, seed=0)
        atoms.calc = calc
        row = {"n_atoms": len(atoms), "dtype": args.dtype, "cueq": cueq}
        try:
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
                base = torch.cuda.memory_allocated(device)
            atoms.get_forces()
            atoms.positions += np.random.default_rng(1).normal(scale=1e-3, size=atoms.positions.shape)
            t0 = time.perf_counter()
            atoms.get_forces()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
                row["peak_memory_kib_per_atom"] = (torch.cuda.max_memory_allocated(device) - base) / 1024 / len(atoms)
            row["call_s"] = time.perf_counter() - t0
            row["call_us_per_atom"] = 1e6 * row["call_s"] / len(atoms)
        except (torch.cuda.OutOfMemoryError, RuntimeError) as error:
            # MACE's TorchScript model raises a plain RuntimeError when CUDA runs out of memory
            if not isinstance(error, torch.cuda.OutOfMemoryError) and "out of memory" not in str(error):
                raise
            row["error"] = "out of memory"
            print(json.dumps(row), flush=True)
            break
        print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
