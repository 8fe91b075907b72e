"""xTB-rMD17: the ten rMD17 molecules, relabelled with GFN2-xTB (tblite), from Langevin MD at 500 K.

For each molecule: a starting geometry from SMILES (rdkit ETKDG embedding and an MMFF
relaxation, seeded), Maxwell-Boltzmann velocities at 500 K, Langevin dynamics with GFN2-xTB
forces (``tblite.ase.TBLite(method="GFN2-xTB")``, default settings), 0.5 fs steps, friction
0.01/fs. After ``--equilibrate`` steps a frame is kept every ``--interval`` steps until
``--frames`` frames are kept. Splits in the rMD17 style per molecule, fixed by ``--seed``: 950
train, 50 validation, the rest test.

Molecules run in parallel processes (``--workers``), each with ``OMP_NUM_THREADS=1``: the run is
deterministic for a given machine and library build.

Usage::

    pip install -e ".[data]"
    python datasets/xtb_rmd17.py --out datasets/xtb-rmd17             # the shipped data set
    python datasets/xtb_rmd17.py --out /tmp/x --frames 20 --equilibrate 10 --interval 2 \
        --train 10 --valid 5 --molecules ethanol                      # a quick check

Writes ``OUT/raw/<molecule>.extxyz.gz`` (all frames in time order), ``OUT/{train,valid,test}.extxyz.gz``
(all molecules, ``config_type`` = molecule) and ``OUT/splits.json``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"  # before numpy/tblite load: one thread per molecule

import numpy as np  # noqa: E402
from ase import Atoms  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import MOLECULE_FRICTION, MOLECULE_TIMESTEP, label, molecule_langevin, split_indices, write_frames, write_json  # noqa: E402,E501

from e2former_calc.training.data import read_frames  # noqa: E402  (fast for .gz)

MOLECULES = {
    "aspirin": "CC(=O)OC1=CC=CC=C1C(=O)O",
    "azobenzene": "C1=CC=C(C=C1)/N=N/C2=CC=CC=C2",
    "benzene": "c1ccccc1",
    "ethanol": "CCO",
    "malonaldehyde": "O/C=C\\C=O",
    "naphthalene": "c1ccc2ccccc2c1",
    "paracetamol": "CC(=O)NC1=CC=C(O)C=C1",
    "salicylic_acid": "OC(=O)c1ccccc1O",
    "toluene": "Cc1ccccc1",
    "uracil": "O=C1C=CNC(=O)N1",
}
TEMPERATURE = 500.0  # K


def starting_geometry(smiles: str, seed: int) -> Atoms:
    """3D structure with hydrogens from SMILES: ETKDG embedding, then MMFF relaxation."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    molecule = Chem.AddHs(Chem.MolFromSmiles(smiles))
    if AllChem.EmbedMolecule(molecule, randomSeed=seed) != 0:
        raise RuntimeError(f"rdkit could not embed {smiles}")
    AllChem.MMFFOptimizeMolecule(molecule)
    symbols = [a.GetSymbol() for a in molecule.GetAtoms()]
    return Atoms(symbols, positions=molecule.GetConformer().GetPositions())


def run_molecule(name: str, args) -> list:
    """Langevin MD of one molecule with xTB; the kept frames, labelled, in time order."""
    from tblite.ase import TBLite

    seed = args.seed + sorted(MOLECULES).index(name)
    atoms = starting_geometry(MOLECULES[name], seed)
    calculator = TBLite(method="GFN2-xTB", verbosity=0)
    atoms.calc = calculator
    rng = np.random.default_rng(seed)
    dynamics = molecule_langevin(atoms, TEMPERATURE, rng)
    start = time.perf_counter()
    dynamics.run(args.equilibrate)
    frames = []
    for k in range(args.frames):
        dynamics.run(args.interval)
        frames.append(label(atoms, calculator, config_type=name, frame=k))
        if (k + 1) % max(args.frames // 10, 1) == 0:
            print(f"{name}: {k + 1}/{args.frames} frames, {time.perf_counter() - start:.0f} s", flush=True)
    return frames


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--molecules", nargs="+", default=sorted(MOLECULES), choices=sorted(MOLECULES))
    parser.add_argument("--frames", type=int, default=1200, help="frames kept per molecule")
    parser.add_argument("--interval", type=int, default=20, help="MD steps between kept frames")
    parser.add_argument("--equilibrate", type=int, default=2000, help="MD steps before the first kept frame")
    parser.add_argument("--train", type=int, default=950)
    parser.add_argument("--valid", type=int, default=50)
    parser.add_argument("--seed", type=int, default=17)
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args(argv)
    if args.train + args.valid >= args.frames:
        parser.error(f"--frames ({args.frames}) must exceed --train + --valid ({args.train + args.valid}) to leave a test set")

    raw = args.out / "raw"
    todo = [m for m in args.molecules if not (raw / f"{m}.extxyz.gz").exists()]
    done = sorted(set(args.molecules) - set(todo))
    if done:
        print(f"reusing finished molecules: {', '.join(done)}")
    with ProcessPoolExecutor(max_workers=max(1, min(args.workers, len(todo) or 1))) as pool:
        futures = {m: pool.submit(run_molecule, m, args) for m in todo}
        for name, future in futures.items():
            write_frames(raw / f"{name}.extxyz.gz", future.result())  # one file per molecule: a crash keeps the rest

    splits, parts = {}, {"train": [], "valid": [], "test": []}
    for name in args.molecules:
        frames = read_frames(raw / f"{name}.extxyz.gz")
        if len(frames) != args.frames:
            raise RuntimeError(f"{raw / name}.extxyz.gz has {len(frames)} frames, expected {args.frames}; delete it to regenerate")
        indices = split_indices(len(frames), {"train": args.train, "valid": args.valid, "test": None},
                                args.seed + sorted(MOLECULES).index(name))
        splits[name] = indices
        for part, chosen in indices.items():
            parts[part].extend(frames[i] for i in chosen)
    for part, frames in parts.items():
        write_frames(args.out / f"{part}.extxyz.gz", frames)
    write_json(args.out / "splits.json", {"seed": args.seed, "settings": {
        "temperature_K": TEMPERATURE, "timestep_fs": MOLECULE_TIMESTEP, "friction_per_fs": MOLECULE_FRICTION, "interval": args.interval,
        "equilibrate": args.equilibrate, "frames": args.frames, "method": "GFN2-xTB (tblite, defaults)"},
        "molecules": {m: MOLECULES[m] for m in args.molecules}, "splits": splits})
    print(f"wrote {', '.join(f'{p}: {len(f)}' for p, f in parts.items())} frames to {args.out}")


if __name__ == "__main__":
    main()
