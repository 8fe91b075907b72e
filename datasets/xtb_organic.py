"""xTB-organic: the ten rMD17 molecules from many starting conformers and temperatures, GFN2-xTB labels.

The data set the shipped organic potential trains on. Per molecule:

- **Starting conformers.** rdkit ETKDG ensembles (20 embeddings per isomer, MMFF-relaxed, seeded)
  of every isomer in ``ISOMERS`` (both azobenzene isomers, both malonaldehyde enols), reduced to
  ``--conformers`` by farthest-point selection on the symmetry-aware heavy-atom RMSD, starting
  from each isomer's lowest-MMFF conformer (so every isomer is kept). For aspirin this picks
  different ester/acid rotamers.
- **Trajectories.** From every conformer, Langevin MD at each of ``--temperatures`` (default 300,
  500, 700 and 1,000 K) with GFN2-xTB forces (``tblite``, defaults), 0.5 fs steps, friction
  0.01/fs, Maxwell-Boltzmann start; after ``--equilibrate`` steps a frame every ``--interval``
  steps until ``--frames`` are kept. Each trajectory has its own seed.
- **Near-minimum samples.** Every conformer relaxed with xTB (BFGS, fmax 0.005 eV/Å): the relaxed
  geometry (``near_minimum`` frame, also written as the labeller's minimum) and ``--rattles``
  Gaussian displacements of it (sigma uniform in 0.005-0.05 Å).
- **Isolated atoms** H, C, N, O in their ground-state spin multiplicity (2, 3, 4, 3), for
  ``e0: isolated_atoms``.
- **Extra training trajectories.** ``--extra-conformers`` more starting conformers per molecule,
  chosen the same way from a second, independently seeded rdkit ensemble (so again the lowest
  conformer of every isomer first: both azobenzene isomers), numbered after the regular ones, each
  run at ``--extra-temperatures`` (default 700 K) with its own seed. Training data only: they take
  no part in the validation draw or the test split, which stay what they are without them.

Splits (fixed by ``--seed``): per molecule and temperature, **one whole trajectory** is the test
set (the conformer index rotates with the temperature, shifted by a seeded offset per molecule),
so no test frame comes from a trajectory trained on; ``--valid`` frames per molecule are drawn from
the training trajectories; near-minimum frames and isolated atoms are training data.

Every trajectory is its own file under ``OUT/raw/<molecule>/``: a stopped run resumes, reusing what
is finished. Workers run one trajectory each with ``OMP_NUM_THREADS=1``: deterministic for a given
machine and library build.

Usage::

    pip install -e ".[data]"
    python datasets/xtb_organic.py --out datasets/xtb-organic          # the shipped data set
    python datasets/xtb_organic.py --out /tmp/x --molecules ethanol --conformers 2 \
        --temperatures 300 700 --frames 4 --equilibrate 4 --interval 2 --rattles 2 --valid 1 \
        --extra-conformers 1

Writes ``OUT/{train,valid,test}.extxyz.gz`` (``config_type`` = molecule, or ``isolated_atom``; info
``temperature_K``, ``trajectory``, ``conformer``), ``OUT/minima.extxyz.gz`` (the xTB minimum of each
conformer) and ``OUT/splits.json``.

**Supplements.** ``--supplement NAME`` runs only the extra conformers' trajectories, at
``--extra-temperatures`` other than those of the data set in ``OUT`` (so none is in its
``train.extxyz.gz`` already), and writes them to ``OUT/NAME``: more training data beside the split
files, which stay as they are (a training lists both files under ``data.train``); ``splits.json``
records it. With ``--startup`` the runs are start-up runs instead: from the same starts, with
their own seeds, ``--frames`` frames ``--interval`` steps apart from the start (no equilibration:
the first frame after one interval), the geometries an MD run started from a force-field
conformer passes through first. The shipped supplements::

    python datasets/xtb_organic.py --out datasets/xtb-organic --supplement train-extra-500K-1000K.extxyz.gz \
        --extra-temperatures 500 1000
    python datasets/xtb_organic.py --out datasets/xtb-organic --supplement train-startup.extxyz.gz --startup \
        --extra-temperatures 300 500 700 1000 --frames 30
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy/tblite load: one thread per worker

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MOLECULE_FRICTION, MOLECULE_TIMESTEP, label, molecule_langevin, write_frames, write_json  # noqa: E402
from xtb_rmd17 import MOLECULES  # noqa: E402

from e2former_calc.training.data import read_frames  # noqa: E402  (fast for .gz)

ISOMERS = {name: [smiles] for name, smiles in MOLECULES.items()}
ISOMERS["azobenzene"].append("C1=CC=C(C=C1)/N=N\\C2=CC=CC=C2")  # cis
ISOMERS["malonaldehyde"].append("O/C=C/C=O")  # E enol, no internal hydrogen bond
TEMPERATURES = (300, 500, 700, 1000)  # K
EXTRA_TEMPERATURES = (700,)  # K: the extra conformers' trajectories
PARTS = ("train.extxyz.gz", "valid.extxyz.gz", "test.extxyz.gz", "minima.extxyz.gz", "splits.json")  # its own files
EXTRA_ENSEMBLE_SEED = 1000  # added to the seed of the extra conformers' rdkit ensemble
STARTUP_SEED = 50_000  # added to the trajectory seed of a start-up run (--startup)
MULTIPLICITY = {"H": 2, "C": 3, "N": 4, "O": 3}  # ground-state spin multiplicity of the free atom
EMBEDDINGS = 20  # rdkit embeddings per isomer before selection


def _xtb(**parameters):
    from tblite.ase import TBLite

    return TBLite(method="GFN2-xTB", verbosity=0, **parameters)


def conformers(name: str, count: int, seed: int) -> list[Atoms]:
    """``count`` starting geometries of a molecule, spread over its isomers and rotamers.

    ETKDG embeddings (``EMBEDDINGS`` per isomer, seeded) relaxed with MMFF; the first picks are the
    lowest-MMFF conformer of each isomer, then farthest-point selection on the heavy-atom RMSD after
    the best symmetry-aware alignment (``rdMolAlign.GetBestRMS``)."""
    from rdkit import Chem
    from rdkit.Chem import AllChem, rdMolAlign

    pool = []  # (isomer, heavy-atom molecule with one conformer, MMFF energy, Atoms)
    for isomer, smiles in enumerate(ISOMERS[name]):
        molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
        ids = list(AllChem.EmbedMultipleConfs(molecule, numConfs=EMBEDDINGS, randomSeed=seed + isomer))
        if not ids:
            raise RuntimeError(f"rdkit could not embed {name} ({smiles})")
        energies = AllChem.MMFFOptimizeMoleculeConfs(molecule, maxIters=2000)
        symbols = [a.GetSymbol() for a in molecule.GetAtoms()]
        for cid, (_, energy) in zip(ids, energies):
            heavy = Chem.RemoveHs(Chem.Mol(molecule, confId=cid))
            pool.append((isomer, heavy, energy, Atoms(symbols, positions=molecule.GetConformer(cid).GetPositions())))

    def rms(i, j):
        return rdMolAlign.GetBestRMS(Chem.Mol(pool[i][1]), Chem.Mol(pool[j][1]))

    chosen = [min((k for k in range(len(pool)) if pool[k][0] == isomer), key=lambda k: pool[k][2])
              for isomer in range(len(ISOMERS[name]))][:count]
    distance = np.array([min(rms(k, c) for c in chosen) for k in range(len(pool))])
    while len(chosen) < count:
        pick = int(np.argmax(distance))  # ties (symmetric molecules: all ~0) take the first
        chosen.append(pick)
        distance = np.minimum(distance, [rms(k, pick) for k in range(len(pool))])
    return [pool[k][3] for k in chosen]


def starting_conformers(path: Path, name: str, count: int, seed: int) -> list[Atoms]:
    """``conformers(name, count, seed)``, computed once and kept at ``path`` for resumed runs."""
    if count == 0:
        return []
    if not path.exists():
        write_frames(path, conformers(name, count, seed))
    starts = read_frames(path)
    if len(starts) != count:
        raise RuntimeError(f"{path} has {len(starts)} conformers, expected {count}; delete it")
    return starts


def trajectory_file(raw: Path, name: str, temperature: float, conformer: int, startup: bool = False) -> Path:
    """The raw file of one trajectory (a regular or an extra conformer's, or a start-up run)."""
    return raw / name / f"{int(temperature)}K_c{conformer}{'_startup' if startup else ''}.extxyz.gz"


def trajectory_seed(seed: int, name: str, temperature: float, conformer: int) -> int:
    return seed * 100_003 + sorted(MOLECULES).index(name) * 1009 + int(temperature) * 7 + conformer


def run_trajectory(name: str, start: Atoms, temperature: float, conformer: int, args, startup: bool = False) -> list:
    """Langevin MD with xTB from one conformer at one temperature; the kept frames, labelled. A
    start-up run (its own seed) keeps its frames from the start instead of after the equilibration."""
    seed = trajectory_seed(args.seed, name, temperature, conformer) + (STARTUP_SEED if startup else 0)
    atoms = start.copy()
    calculator = _xtb()
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    dynamics = molecule_langevin(atoms, temperature, rng)
    dynamics.run(0 if startup else args.equilibrate)
    frames = []
    for k in range(args.frames):
        dynamics.run(args.interval)
        frames.append(label(atoms, calculator, config_type=name, temperature_K=float(temperature),
                            trajectory=f"{name}_{int(temperature)}K_c{conformer}{'_startup' if startup else ''}",
                            conformer=conformer, frame=k))
    return frames


def run_near_minimum(name: str, start: Atoms, conformer: int, args) -> list:
    """The xTB minimum from one conformer (first frame) and Gaussian rattles of it, labelled."""
    from ase.optimize import BFGS

    atoms = start.copy()
    atoms.calc = _xtb()
    BFGS(atoms, logfile=None).run(fmax=0.005, steps=1000)
    minimum = atoms.copy()
    rng = np.random.default_rng(trajectory_seed(args.seed, name, 0, conformer))
    info = dict(config_type=name, temperature_K=0.0, trajectory=f"{name}_minimum_c{conformer}", conformer=conformer)
    frames = [label(minimum, _xtb(), frame=0, **info)]
    for k in range(args.rattles):
        rattled = minimum.copy()
        rattled.positions += rng.normal(0.0, rng.uniform(0.005, 0.05), rattled.positions.shape)
        frames.append(label(rattled, _xtb(), frame=k + 1, **info))
    return frames


def isolated_atoms() -> list:
    """H, C, N, O alone, in their ground-state multiplicity."""
    return [label(Atoms(symbol), _xtb(multiplicity=m), config_type="isolated_atom", temperature_K=0.0,
                  trajectory=f"isolated_{symbol}", conformer=0, frame=0) for symbol, m in MULTIPLICITY.items()]


def test_conformer(args, name: str, temperature_index: int) -> int:
    """The conformer whose trajectory at this temperature is test data."""
    offset = int(np.random.default_rng([args.seed, sorted(MOLECULES).index(name)]).integers(args.conformers))
    return (offset + temperature_index) % args.conformers


def run_jobs(jobs: dict, raw: Path, workers: int) -> None:
    """Run the jobs (raw file -> (function, arguments)) whose file is missing, ``workers`` at a time."""
    todo = {path: job for path, job in jobs.items() if not path.exists()}
    print(f"{len(jobs) - len(todo)} of {len(jobs)} trajectories already done; running {len(todo)}", flush=True)
    begin = time.perf_counter()
    with ProcessPoolExecutor(max_workers=max(1, min(workers, len(todo) or 1))) as pool:
        futures = {path: pool.submit(function, *arguments) for path, (function, arguments) in todo.items()}
        for k, (path, future) in enumerate(futures.items()):
            write_frames(path, future.result())  # one file per trajectory: a crash keeps the rest
            print(f"{k + 1}/{len(todo)} {path.relative_to(raw)}, {time.perf_counter() - begin:.0f} s", flush=True)


def supplement(args) -> None:
    """``--supplement``: the extra conformers' trajectories at ``--extra-temperatures`` (none of the
    data set's own), or with ``--startup`` their start-up runs, as one more training file, recorded
    in ``splits.json``."""
    splits_path = args.out / "splits.json"
    if not splits_path.is_file():
        raise SystemExit(f"--supplement adds to a data set: {splits_path} not found (make the data set first)")
    splits = json.loads(splits_path.read_text())
    settings = splits["settings"]
    if args.supplement in PARTS or Path(args.supplement).name != args.supplement:
        raise SystemExit(f"--supplement: {args.supplement!r} must be a new file name in {args.out}, not one of "
                         f"{', '.join(PARTS)} or a path")
    wanted = set(map(float, args.extra_temperatures))
    taken = sorted(wanted & set(map(float, settings["extra_temperatures_K"])))
    if taken and not args.startup:
        raise SystemExit(f"--supplement: the extra trajectories at {', '.join(f'{t:g}' for t in taken)} K are in "
                         f"{args.out / 'train.extxyz.gz'} already")
    for other, record in splits.get("supplements", {}).items():  # the same runs in two files: trained twice
        both = sorted(wanted & set(map(float, record["extra_temperatures_K"])))
        if other != args.supplement and bool(record.get("startup")) == args.startup and both:
            raise SystemExit(f"--supplement: {other} holds these runs at {', '.join(f'{t:g}' for t in both)} K already")
    same = ("conformers", "extra_conformers") + (() if args.startup else ("interval", "equilibrate", "frames"))
    for key in same:
        if getattr(args, key) != settings[key]:
            raise SystemExit(f"--supplement: --{key.replace('_', '-')} must be the data set's ({settings[key]}), "
                             f"got {getattr(args, key)}")
    if splits["seed"] != args.seed:
        raise SystemExit(f"--supplement: --seed must be the data set's ({splits['seed']}), got {args.seed}")
    raw = args.out / "raw"
    jobs = {}
    for name in args.molecules:
        index = sorted(MOLECULES).index(name)
        starts = starting_conformers(raw / name / "extra_conformers.extxyz", name, args.extra_conformers,
                                     args.seed + EXTRA_ENSEMBLE_SEED + index)
        for c, start in enumerate(starts, start=args.conformers):
            for temperature in args.extra_temperatures:
                jobs[trajectory_file(raw, name, temperature, c, args.startup)] = (
                    run_trajectory, (name, start, temperature, c, args, args.startup))
    run_jobs(jobs, raw, args.workers)
    trajectories = [read_frames(path) for path in jobs]
    stale = [(path, len(frames)) for path, frames in zip(jobs, trajectories) if len(frames) != args.frames]
    if stale:  # a raw file of an earlier run with other settings (its name does not say them)
        raise SystemExit(f"--supplement: {stale[0][0]} has {stale[0][1]} frames, not --frames {args.frames}: "
                         "delete the raw files of that earlier run")
    frames = [f for trajectory in trajectories for f in trajectory]
    write_frames(args.out / args.supplement, frames)
    splits.setdefault("supplements", {})[args.supplement] = {
        "molecules": list(args.molecules), "extra_temperatures_K": list(args.extra_temperatures),
        **({"startup": True, "frames_per_run": args.frames, "interval": args.interval} if args.startup else {}),
        "trajectories": [trajectory[0].info["trajectory"] for trajectory in trajectories], "frames": len(frames)}
    write_json(splits_path, splits)
    print(f"wrote {len(frames)} frames to {args.out / args.supplement}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--molecules", nargs="+", default=sorted(MOLECULES), choices=sorted(MOLECULES))
    parser.add_argument("--conformers", type=int, default=3, help="starting conformers per molecule")
    parser.add_argument("--temperatures", type=float, nargs="+", default=TEMPERATURES)
    parser.add_argument("--frames", type=int, default=60, help="frames kept per trajectory")
    parser.add_argument("--interval", type=int, default=20, help="MD steps between kept frames")
    parser.add_argument("--equilibrate", type=int, default=200, help="MD steps before the first kept frame")
    parser.add_argument("--rattles", type=int, default=10, help="rattled frames around each xTB minimum")
    parser.add_argument("--valid", type=int, default=40, help="validation frames per molecule")
    parser.add_argument("--extra-conformers", type=int, default=3,
                        help="training-only starting conformers per molecule, from a second rdkit ensemble")
    parser.add_argument("--extra-temperatures", type=float, nargs="+", default=EXTRA_TEMPERATURES,
                        help="temperatures (K) of the extra conformers' trajectories")
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--supplement", metavar="NAME",
                        help="run only the extra conformers at --extra-temperatures and write them to OUT/NAME")
    parser.add_argument("--startup", action="store_true",
                        help="with --supplement: start-up runs (own seeds), no equilibration: a frame every --interval steps from the start")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.conformers < 2:
        parser.error("--conformers must be at least 2: one trajectory per temperature is held out for test")
    if args.extra_conformers < 0:
        parser.error("--extra-conformers must be 0 or more")

    if args.startup and not args.supplement:
        parser.error("--startup makes a supplement: give --supplement NAME too")
    if args.supplement:
        return supplement(args)

    raw = args.out / "raw"
    starts, extra_starts = {}, {}
    for name in args.molecules:
        index = sorted(MOLECULES).index(name)
        starts[name] = starting_conformers(raw / name / "conformers.extxyz", name, args.conformers, args.seed + index)
        extra_starts[name] = starting_conformers(raw / name / "extra_conformers.extxyz", name, args.extra_conformers,
                                                 args.seed + EXTRA_ENSEMBLE_SEED + index)

    jobs = {}  # raw file -> (function, arguments)
    for name in args.molecules:
        for c, start in enumerate(starts[name]):
            for temperature in args.temperatures:
                jobs[trajectory_file(raw, name, temperature, c)] = (run_trajectory, (name, start, temperature, c, args))
            jobs[raw / name / f"minimum_c{c}.extxyz.gz"] = (run_near_minimum, (name, start, c, args))
        for c, start in enumerate(extra_starts[name], start=args.conformers):
            for temperature in args.extra_temperatures:
                jobs[trajectory_file(raw, name, temperature, c)] = (run_trajectory, (name, start, temperature, c, args))
    run_jobs(jobs, raw, args.workers)

    parts = {"train": list(isolated_atoms()), "valid": [], "test": []}
    minima, splits = [], {}
    for name in args.molecules:
        training, tests = [], []
        for c in range(args.conformers):
            near = read_frames(raw / name / f"minimum_c{c}.extxyz.gz")
            minima.append(near[0])
            parts["train"].extend(near)
            for t, temperature in enumerate(args.temperatures):
                frames = read_frames(trajectory_file(raw, name, temperature, c))
                (tests if c == test_conformer(args, name, t) else training).append(frames)
        flat = [f for frames in training for f in frames]
        order = np.random.default_rng([args.seed, sorted(MOLECULES).index(name), 1]).permutation(len(flat))
        valid = set(order[:args.valid].tolist())
        parts["valid"].extend(flat[i] for i in sorted(valid))
        parts["train"].extend(f for i, f in enumerate(flat) if i not in valid)
        extra = [read_frames(trajectory_file(raw, name, temperature, c))
                 for c in range(args.conformers, args.conformers + args.extra_conformers)
                 for temperature in args.extra_temperatures]
        parts["train"].extend(f for frames in extra for f in frames)  # after the draw: valid stays as it was
        parts["test"].extend(f for frames in tests for f in frames)
        splits[name] = {"test_trajectories": [frames[0].info["trajectory"] for frames in tests],
                        "valid_frames": len(valid),
                        "train_frames": len(flat) - len(valid) + args.conformers * (1 + args.rattles) + sum(map(len, extra)),
                        "extra_trajectories": [frames[0].info["trajectory"] for frames in extra]}
    for part, frames in parts.items():
        write_frames(args.out / f"{part}.extxyz.gz", frames)
    write_frames(args.out / "minima.extxyz.gz", minima)
    record = {"seed": args.seed, "settings": {
        "temperatures_K": list(args.temperatures), "conformers": args.conformers, "timestep_fs": MOLECULE_TIMESTEP,
        "friction_per_fs": MOLECULE_FRICTION, "interval": args.interval, "equilibrate": args.equilibrate, "frames": args.frames,
        "rattles": args.rattles, "extra_conformers": args.extra_conformers,
        "extra_temperatures_K": list(args.extra_temperatures), "method": "GFN2-xTB (tblite, defaults)"},
        "isomers": {m: ISOMERS[m] for m in args.molecules}, "splits": splits}
    if (args.out / "splits.json").is_file():  # supplements made before stay recorded
        record.update({k: v for k, v in json.loads((args.out / "splits.json").read_text()).items() if k == "supplements"})
    write_json(args.out / "splits.json", record)
    print(f"wrote {', '.join(f'{p}: {len(f)}' for p, f in parts.items())} frames to {args.out}")


if __name__ == "__main__":
    main()
