"""The ``e2former`` command: ``md``, ``relax``, ``train`` and ``eval``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .systems import SYSTEMS, built_in_system

#: The shipped potential ``--model auto`` picks for a structure made only of these elements.
AUTO_POTENTIALS = ((frozenset({"H", "C", "N", "O"}), "e2former-xtb-organic"), (frozenset({"Cu"}), "e2former-emt-cu"))


def auto_potential(atoms) -> str:
    """The shipped potential for the elements of ``atoms`` (one structure or a list); ValueError
    naming them if none fits."""
    frames = atoms if isinstance(atoms, (list, tuple)) else [atoms]
    elements = {symbol for frame in frames for symbol in frame.get_chemical_symbols()}
    for allowed, name in AUTO_POTENTIALS:
        if elements <= allowed:
            return name
    raise ValueError(f"no shipped potential covers the elements {', '.join(sorted(elements))}; "
                     "pass --model with a potential file")


def _load_calculator(model: str, device: str, dtype: str, skin: float = 0.3, atoms=None):
    from . import E2FormerCalculator
    from .potentials import find_potential

    if model == "auto":
        model = auto_potential(atoms)
        print(f"e2former: using the shipped potential {model}", file=sys.stderr)
    if model == "untrained":
        print("e2former: WARNING: an UNTRAINED model with random weights: the dynamics are not physical; "
              "use it to try the workflow only", file=sys.stderr)
        return E2FormerCalculator.from_config(species=("H", "C", "N", "O", "Cu"), device=device, dtype=dtype, skin=skin)
    if Path(model).is_file():
        return E2FormerCalculator.from_file(model, device=device, dtype=dtype, skin=skin)
    if find_potential(model) is not None:
        return E2FormerCalculator.from_pretrained(model, device=device, dtype=dtype, skin=skin)
    raise FileNotFoundError(f"no potential file {model!r} and no shipped potential of that name (or use 'untrained')")


def _structure(args):
    from .training.data import read_frames

    if args.structure:
        frames = read_frames(args.structure)
        return frames[-1]
    return built_in_system(args.system)


def _add_model_options(parser, default_dtype):
    parser.add_argument("--model", default="auto",
                        help="potential file, shipped potential name, 'auto' (default: the shipped potential for the "
                             "structure's elements) or 'untrained' (random weights)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda")
    parser.add_argument("--dtype", default=default_dtype, choices=("float32", "float64"))


def _add_structure_options(parser, default_system):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--structure", help="any ASE-readable structure file (its last frame)")
    group.add_argument("--system", default=default_system, choices=sorted(SYSTEMS),
                       help=f"built-in system (default {default_system})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2former",
                                     description="E2Former interatomic potential: MD, relaxation, training, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True)

    md = sub.add_parser("md", help="molecular dynamics (NVE, Langevin NVT, NPT)")
    _add_model_options(md, "float32")
    _add_structure_options(md, "ethanol")
    md.add_argument("--ensemble", default="nve", choices=("nve", "nvt", "npt"))
    md.add_argument("--steps", type=int, default=1000)
    md.add_argument("--timestep", type=float, default=0.5, help="fs (default 0.5)")
    md.add_argument("--temperature", type=float, default=300.0, help="K: initial velocities and thermostat")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs")
    md.add_argument("--pressure", type=float, default=1.0, help="NPT pressure, bar")
    md.add_argument("--trajectory", default="md.traj")
    md.add_argument("--log", default="md.log")
    md.add_argument("--interval", type=int, default=10, help="steps between frames and log lines")
    md.add_argument("--skin", type=float, default=0.3, help="Verlet skin, Å (default 0.3)")
    md.add_argument("--seed", type=int, default=0)
    md.add_argument("--resume", action="store_true", help="continue from the last frame of --trajectory")

    relax = sub.add_parser("relax", help="geometry (and cell) optimisation")
    _add_model_options(relax, "float64")
    _add_structure_options(relax, "ethanol")
    relax.add_argument("--optimizer", default="fire", choices=("fire", "bfgs"))
    relax.add_argument("--fmax", type=float, default=0.05, help="eV/Å")
    relax.add_argument("--steps", type=int, default=500)
    relax.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter)")
    relax.add_argument("--output", default="relaxed.extxyz")
    relax.add_argument("--trajectory", default=None)

    tr = sub.add_parser("train", help="train a potential from a YAML configuration (resumes a stopped run)")
    tr.add_argument("config", help="YAML file: data, model, training, output (see the docs)")
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = sub.add_parser("eval", help="errors per configuration type, parity plots, predictions as extxyz")
    ev.add_argument("potential", help="potential file, shipped potential name, 'auto' or 'untrained'")
    ev.add_argument("data", help="any ASE-readable file (references: REF_energy/REF_forces/REF_stress, else ASE's)")
    ev.add_argument("--output", default="predictions.extxyz")
    ev.add_argument("--plots", default="parity", help="prefix of the parity plots PREFIX_{energy,forces}.png ('' for none)")
    ev.add_argument("--metrics", default="metrics.json", help="errors as JSON ('' for none)")
    ev.add_argument("--energy-key", default=None)
    ev.add_argument("--forces-key", default=None)
    ev.add_argument("--stress-key", default=None)
    ev.add_argument("--batch-size", type=int, default=16)
    ev.add_argument("--device", default="auto")
    ev.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .training.data import read_frames
    from .workflows import energy_drift_text, run_eval, run_md, run_relax

    try:
        if args.command == "md":
            atoms = _structure(args)
            atoms.calc = _load_calculator(args.model, args.device, args.dtype, args.skin, atoms)
            report = run_md(atoms, args.ensemble, args.steps, args.timestep, args.temperature, args.friction,
                            args.pressure, args.trajectory, args.log, args.interval, args.seed, args.resume)
            rate = report.steps / report.seconds if report.seconds else float("nan")
            print(f"{report.steps} steps of {len(atoms)} atoms in {report.seconds:.1f} s "
                  f"({rate:.1f} steps/s, {rate * len(atoms):.0f} atom·steps/s); trajectory {args.trajectory}")
            if report.energy_drift_per_atom_per_ps is not None:
                print(energy_drift_text(report))
        elif args.command == "relax":
            atoms = _structure(args)
            atoms.calc = _load_calculator(args.model, args.device, args.dtype, skin=0.0, atoms=atoms)
            converged = run_relax(atoms, args.optimizer, args.fmax, args.steps, args.cell, args.trajectory)
            from ase.io import write

            write(args.output, atoms, format="extxyz")
            print(f"{'converged' if converged else 'NOT converged'}: E = {atoms.get_potential_energy():.6f} eV; wrote {args.output}")
            return 0 if converged else 1
        elif args.command == "train":
            from .training import load_config, train

            train(load_config(args.config), restart=args.restart, progress=not args.quiet)
        else:
            frames = read_frames(args.data)
            calc = _load_calculator(args.potential, args.device, args.dtype, skin=0.0, atoms=frames)
            keys = {"energy": args.energy_key, "forces": args.forces_key, "stress": args.stress_key}
            _, tally, parity = run_eval(frames, calc, args.output, args.batch_size, keys=keys)
            print(f"{len(frames)} structures; wrote {args.output}")
            if tally.sums:
                from .evaluation import parity_plots, write_metrics

                print(tally.table())
                if args.metrics:
                    print(f"wrote {write_metrics(tally, args.metrics)}")
                if args.plots:
                    try:
                        written = parity_plots(parity, args.plots, title=f"{Path(args.data).parent.name}/{Path(args.data).name}")
                        print(f"wrote {', '.join(str(p) for p in written)}")
                    except ImportError as error:
                        print(f"e2former: no parity plots: {error}", file=sys.stderr)
            else:
                print("no reference energies in the file: predictions only")
    except KeyboardInterrupt:
        print("\ne2former: stopped; files written so far are complete", file=sys.stderr)
        return 130
    except (FileNotFoundError, ValueError) as error:
        print(f"e2former: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
