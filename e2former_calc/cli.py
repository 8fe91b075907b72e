"""The ``e2former`` command: ``md``, ``relax``, ``train``, ``eval`` and ``export-lammps``.

Nothing heavy (torch, e3nn, ASE) is imported before the arguments are parsed: ``--help`` is quick.
Output files are never silently replaced: default names are numbered past existing files
(``md.traj``, ``md-1.traj``, ...) and an explicit path that exists is refused unless ``--overwrite``
(or, for ``md``, ``--resume``) is given.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from .systems import SYSTEMS, built_in_system

#: The shipped potentials ``--model auto`` picks from: (the elements it covers, its name, whether
#: periodic condensed phases are in its model card's domain).
AUTO_POTENTIALS = (
    (frozenset({"H", "C", "N", "O"}), "e2former-xtb-organic", False),  # isolated gas-phase molecules
    (frozenset({"Cu"}), "e2former-emt-cu", True),  # bulk, vacancies, surfaces
)
#: Vacuum (Å, the shipped potentials' cutoff) a periodic structure needs along every periodic axis
#: to count as an isolated molecule or cluster in a box rather than a condensed phase.
ISOLATION_GAP = 5.0

DEFAULT_TRAJECTORY = "md.traj"
DEFAULT_RELAXED = "relaxed.extxyz"


def condensed(atoms, gap: float = ISOLATION_GAP) -> bool:
    """Whether ``atoms`` is a periodic condensed phase: along some periodic axis its atoms leave no
    vacuum layer ``gap`` Å thick, so they interact with their periodic images."""
    import numpy as np

    if not atoms.pbc.any() or len(atoms) == 0:
        return False
    cell = atoms.cell.complete()
    scaled = cell.scaled_positions(atoms.positions) % 1.0
    spacings = 1.0 / np.linalg.norm(np.asarray(cell.reciprocal()), axis=1)  # between lattice planes
    for axis in np.flatnonzero(atoms.pbc):
        s = np.sort(scaled[:, axis])
        if np.max(np.diff(np.append(s, s[0] + 1.0))) * spacings[axis] < gap:
            return True
    return False


def auto_potential(atoms) -> str:
    """The shipped potential for ``atoms`` (one structure or a list). ValueError if none covers the
    elements, or if the one that does is for isolated molecules and a structure is a periodic
    condensed phase (see :func:`condensed`): ``--model auto`` does not pick a potential outside
    its model card's domain; naming the potential explicitly runs it anyway."""
    frames = atoms if isinstance(atoms, (list, tuple)) else [atoms]
    elements = sorted({symbol for frame in frames for symbol in frame.get_chemical_symbols()})
    for allowed, name, condensed_ok in AUTO_POTENTIALS:
        if set(elements) <= allowed:
            if not condensed_ok and any(condensed(frame) for frame in frames):
                raise ValueError(
                    f"--model auto: the shipped potential for {', '.join(elements)} is {name}, trained on isolated "
                    f"gas-phase molecules only; its model card (potentials/{name}.md) calls condensed phases an "
                    f"extrapolation, and this structure is periodic with less than {ISOLATION_GAP:g} Å of vacuum "
                    f"(a liquid or solid). Pass --model {name} to run it anyway as an extrapolation, or --model "
                    "with a potential file trained on condensed phases")
            return name
    raise ValueError(f"no shipped potential covers the elements {', '.join(elements)}; "
                     "pass --model with a potential file")


def _numbered(path: Path, n: int) -> Path:
    """``path`` for n = 0, else ``stem-n.suffix`` (md.traj, md-1.traj, md-2.traj, ...)."""
    return path if n == 0 else path.with_name(f"{path.stem}-{n}{path.suffix}")


def _first_free(path: Path, *companions: Path) -> list[Path]:
    """``path`` and its companions (e.g. the log of a trajectory), numbered alike, for the lowest
    number at which none of them exists."""
    n = 0
    while any(_numbered(p, n).exists() for p in (path, *companions)):
        n += 1
    return [_numbered(p, n) for p in (path, *companions)]


def _latest(path: Path) -> Path | None:
    """The highest-numbered existing ``path`` (md.traj, md-1.traj, ...), None if there is none."""
    pattern = re.compile(re.escape(path.stem) + r"(?:-(\d+))?" + re.escape(path.suffix))
    found = [(int(m.group(1) or 0), p) for p in path.parent.glob(f"{path.stem}*{path.suffix}")
             if (m := pattern.fullmatch(p.name))]
    return max(found)[1] if found else None


def _refuse_existing(paths, hint: str) -> None:
    taken = [str(p) for p in paths if p is not None and p.exists()]
    if taken:
        raise FileExistsError(f"{' and '.join(taken)} already exist{'s' if len(taken) == 1 else ''}; {hint}")


def md_outputs(args) -> tuple[Path, Path, bool]:
    """(trajectory, log, resuming) of ``e2former md``.

    Without ``--trajectory``: the first free ``md.traj``/``md.log``, ``md-1.traj``/``md-1.log``, ...
    (with ``--resume``: the highest-numbered existing ``md[-N].traj``). The log defaults to the
    trajectory's name with ``.log``. An explicit trajectory or log that exists is refused
    (FileExistsError) unless ``--overwrite`` (start again) or ``--resume`` (append) is given."""
    default = Path(DEFAULT_TRAJECTORY)
    trajectory = Path(args.trajectory) if args.trajectory else (_latest(default) if args.resume else None)
    if trajectory is None:
        trajectory = _first_free(default, *([] if args.log else [default.with_suffix(".log")]))[0]
    log = Path(args.log) if args.log else trajectory.with_suffix(".log")
    resuming = args.resume and trajectory.is_file() and trajectory.stat().st_size > 0
    if not resuming and not args.overwrite:
        _refuse_existing((trajectory, log), "pass --resume to continue that run, --overwrite to start it "
                         "again, or another --trajectory")
    return trajectory, log, resuming


def relax_outputs(args) -> tuple[Path, Path | None]:
    """(output, trajectory) of ``e2former relax``: without ``--output`` the first free
    ``relaxed.extxyz``, ``relaxed-1.extxyz``, ...; an explicit output or trajectory that exists is
    refused (FileExistsError) unless ``--overwrite``."""
    output = Path(args.output) if args.output else _first_free(Path(DEFAULT_RELAXED))[0]
    trajectory = Path(args.trajectory) if args.trajectory else None
    if not args.overwrite:
        _refuse_existing((output, trajectory), "pass --overwrite to replace, or another name")
    return output, trajectory


#: ``--recompute`` -> the calculator's ``recompute`` (e2former_calc.model.recompute)
RECOMPUTE = {"auto": "auto", "off": False, "blocks": "blocks"}


def _load_calculator(model: str, device: str, dtype: str, skin: float = 0.3, atoms=None,
                     recompute: str = "auto"):
    from . import E2FormerCalculator
    from .potentials import find_potential

    options = {"device": device, "dtype": dtype, "skin": skin, "recompute": RECOMPUTE[recompute]}
    if model == "auto":
        model = auto_potential(atoms)
        print(f"e2former: using the shipped potential {model}", file=sys.stderr)
    if model == "untrained":
        print("e2former: WARNING: an UNTRAINED model with random weights: the dynamics are not physical; "
              "use it to try the workflow only", file=sys.stderr)
        return E2FormerCalculator.from_config(species=("H", "C", "N", "O", "Cu"), **options)
    if Path(model).is_file():
        return E2FormerCalculator.from_file(model, **options)
    if find_potential(model) is not None:
        return E2FormerCalculator.from_pretrained(model, **options)
    raise FileNotFoundError(f"no potential file {model!r} and no shipped potential of that name (or use 'untrained')")


def _structure(args):
    from .training.data import read_frames

    if args.structure:
        frames = read_frames(args.structure)
        return frames[-1]
    return built_in_system(args.system)


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: ...)`` to every option's help, except for flags and options whose
    default is None (their help says what happens without them)."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool):
            return action.help
        return super()._get_help_string(action)


def _add_device_options(parser, default_dtype):
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--dtype", default=default_dtype, choices=("float32", "float64"),
                        help="floating-point precision of the model (float32 is faster, float64 more exact)")
    parser.add_argument("--recompute", default="auto", choices=tuple(RECOMPUTE),
                        help="what the backward pass (forces) recomputes instead of keeping: less memory "
                             "per atom for more time, the same numbers; 'auto': the convolutions' source products "
                             "(cheap to redo), 'off': keep everything (fastest with wide features), 'blocks' for the "
                             "largest systems (about a fifth less memory per atom)")


def _add_model_options(parser, default_dtype):
    parser.add_argument("--model", default="auto",
                        help="potential file, shipped potential name, 'auto' (the shipped potential for the "
                             "structure's elements, refused outside its model card's domain) or 'untrained' "
                             "(random weights, to try the workflow only)")
    _add_device_options(parser, default_dtype)


def _add_structure_options(parser, default_system):
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--structure", help="any ASE-readable structure file (its last frame); replaces --system")
    group.add_argument("--system", default=default_system, choices=sorted(SYSTEMS),
                       help="built-in system: " + "; ".join(f"{name}: {SYSTEMS[name][0]}"
                                                            for name in sorted(SYSTEMS)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="e2former", formatter_class=_HelpFormatter,
                                     description="E2Former interatomic potential: MD, relaxation, training, evaluation.")
    sub = parser.add_subparsers(dest="command", required=True, help="'e2former COMMAND --help' for its options")

    def command(name, text):
        return sub.add_parser(name, help=text, description=text, formatter_class=_HelpFormatter)

    md = command("md", "molecular dynamics (Langevin NVT, NVE, NPT) with a trajectory and a log")
    _add_model_options(md, "float32")
    _add_structure_options(md, "ethanol")
    md.add_argument("--ensemble", default="nvt", choices=("nvt", "nve", "npt"),
                    help="nvt: Langevin thermostat; nve: velocity Verlet (the temperature falls to about half "
                         "the initial one by equipartition); npt: isotropic MTK barostat (fully periodic cells, "
                         "ase >= 3.25)")
    md.add_argument("--steps", type=int, default=1000,
                    help="MD steps (with --resume: in total, counting those already run)")
    md.add_argument("--timestep", type=float, default=0.5, help="time step, fs")
    md.add_argument("--temperature", type=float, default=300.0,
                    help="K: Maxwell-Boltzmann initial velocities and the NVT/NPT thermostat")
    md.add_argument("--friction", type=float, default=0.01, help="Langevin friction (nvt), 1/fs")
    md.add_argument("--pressure", type=float, default=1.0, help="pressure (npt), bar")
    md.add_argument("--trajectory", default=None,
                    help=f"ASE trajectory file (default: {DEFAULT_TRAJECTORY}, or md-1.traj, md-2.traj, ... "
                         "when taken; an existing file is refused without --resume or --overwrite)")
    md.add_argument("--log", default=None,
                    help="text log (default: the trajectory's name with .log; an existing file is refused "
                         "without --resume or --overwrite)")
    md.add_argument("--interval", type=int, default=10, help="steps between trajectory frames and log lines")
    md.add_argument("--skin", type=float, default=0.3, help="Verlet skin of the neighbour list, Å")
    md.add_argument("--seed", type=int, default=0, help="random seed of the initial velocities and the thermostat")
    again = md.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue from the last frame of --trajectory (without it: of the highest-numbered "
                            "md[-N].traj), appending to it and to the log")
    again.add_argument("--overwrite", action="store_true", help="replace a trajectory or log that already exists")

    relax = command("relax", "geometry (and cell) optimisation; writes the relaxed structure as extended XYZ")
    _add_model_options(relax, "float64")
    _add_structure_options(relax, "ethanol")
    relax.add_argument("--optimizer", default="fire", choices=("fire", "bfgs"), help="ASE optimiser")
    relax.add_argument("--fmax", type=float, default=0.05, help="converged when every force is below this, eV/Å")
    relax.add_argument("--steps", type=int, default=500, help="most optimiser steps")
    relax.add_argument("--cell", action="store_true", help="relax the cell too (FrechetCellFilter; periodic cells)")
    relax.add_argument("--output", default=None,
                       help=f"relaxed structure (default: {DEFAULT_RELAXED}, or relaxed-1.extxyz, ... when taken; "
                            "an existing file is refused without --overwrite)")
    relax.add_argument("--trajectory", default=None,
                       help="ASE trajectory of the optimisation steps (default: none)")
    relax.add_argument("--overwrite", action="store_true",
                       help="replace an --output or --trajectory file that exists")

    tr = command("train", "train a potential from a YAML configuration (resumes a stopped run)")
    tr.add_argument("config", help="YAML file: data, model, training, output (see docs/training.md)")
    tr.add_argument("--restart", action="store_true", help="ignore an existing checkpoint and start over")
    tr.add_argument("--quiet", action="store_true", help="no progress bars")

    ev = command("eval", "errors per configuration type, parity plots, predictions as extxyz")
    ev.add_argument("potential", help="potential file, shipped potential name, 'auto' or 'untrained'")
    ev.add_argument("data", help="any ASE-readable file (references: REF_energy/REF_forces/REF_stress, else ASE's)")
    ev.add_argument("--output", default="predictions.extxyz", help="the structures with the predictions, extended XYZ")
    ev.add_argument("--plots", default="parity", help="prefix of the parity plots PREFIX_{energy,forces}.png ('' for none)")
    ev.add_argument("--metrics", default="metrics.json", help="errors as JSON ('' for none)")
    for label in ("energy", "forces", "stress"):
        ev.add_argument(f"--{label}-key", default=None,
                        help=f"name of the reference {label} in the file (default: REF_{label}, else ASE's {label})")
    ev.add_argument("--batch-size", type=int, default=16, help="structures per forward/backward pass")
    _add_device_options(ev, "float64")

    lm = command("export-lammps", "write a potential as a LAMMPS ML-IAP unified file (docs/lammps.md)")
    lm.add_argument("potential", help="potential file or shipped potential name")
    lm.add_argument("-o", "--output", required=True, help="the file to write, e.g. cu.mliap.pkl (not .pt/.pth)")
    lm.add_argument("--dtype", default="float64", choices=("float32", "float64"), help="the network's precision in LAMMPS")
    lm.add_argument("--elements", nargs="+", default=None,
                    help="element of each LAMMPS atom type, in order, for the printed input lines (default: the potential's)")
    lm.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .allocator import keep_freed_memory

    keep_freed_memory()  # this process is the command's: large systems reuse freed memory (allocator.py)
    from .training.data import read_frames
    from .workflows import energy_drift_text, run_eval, run_md, run_relax

    try:
        if args.command == "md":
            trajectory, log, resuming = md_outputs(args)
            atoms = _structure(args)
            atoms.calc = _load_calculator(args.model, args.device, args.dtype, args.skin, atoms, args.recompute)
            if args.ensemble == "nve" and not resuming:
                print(f"e2former: NVE: initial velocities at {args.temperature:g} K relax to about "
                      f"{args.temperature / 2:g} K by equipartition from a minimum-energy start "
                      "(--ensemble nvt holds the temperature)", file=sys.stderr)
            print(f"e2former: {'appending to' if resuming else 'writing'} {trajectory} and {log}", file=sys.stderr)
            report = run_md(atoms, args.ensemble, args.steps, args.timestep, args.temperature, args.friction,
                            args.pressure, trajectory, log, args.interval, args.seed, resuming)
            rate = report.steps / report.seconds if report.seconds else float("nan")
            print(f"{report.steps} steps of {len(atoms)} atoms in {report.seconds:.1f} s "
                  f"({rate:.1f} steps/s, {rate * len(atoms):.0f} atom·steps/s); trajectory {trajectory}, log {log}")
            if report.energy_drift_per_atom_per_ps is not None:
                print(energy_drift_text(report))
        elif args.command == "relax":
            output, trajectory = relax_outputs(args)
            atoms = _structure(args)
            atoms.calc = _load_calculator(args.model, args.device, args.dtype, skin=0.0, atoms=atoms,
                                          recompute=args.recompute)
            converged = run_relax(atoms, args.optimizer, args.fmax, args.steps, args.cell, trajectory)
            from ase.io import write

            write(output, atoms, format="extxyz")
            print(f"{'converged' if converged else 'NOT converged'}: E = {atoms.get_potential_energy():.6f} eV; "
                  f"wrote {output}" + (f" and {trajectory}" if trajectory else ""))
            return 0 if converged else 1
        elif args.command == "export-lammps":
            from .integrations.lammps import export_lammps, input_lines, load_unified

            if Path(args.output).exists() and not args.overwrite:
                raise ValueError(f"{args.output} exists; pass --overwrite to replace it")
            written = export_lammps(args.potential, args.output, dtype=args.dtype)
            elements = args.elements or load_unified(written).species
            print(f"wrote {written}; in the LAMMPS input:")
            print("\n".join(f"    {line}" for line in input_lines(written, elements)))
        elif args.command == "train":
            from .training import load_config, train

            train(load_config(args.config), restart=args.restart, progress=not args.quiet)
        else:
            frames = read_frames(args.data)
            calc = _load_calculator(args.potential, args.device, args.dtype, skin=0.0, atoms=frames,
                                    recompute=args.recompute)
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
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        print(f"e2former: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
