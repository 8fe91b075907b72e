"""Energies and forces of every structure in a file, evaluated in batches.

    python md_examples/batch_predict.py --input my_structures.extxyz

Without ``--input`` it writes and reads a small demo file of rattled ethanol molecules.
"""

import sys

from _common import load
from ase.build import molecule
from ase.io import read, write

from e2former_calc import predict

path = sys.argv[sys.argv.index("--input") + 1] if "--input" in sys.argv else None
if path is None:
    path = "demo_structures.extxyz"
    frames = []
    for seed in range(12):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed)
        frames.append(atoms)
    write(path, frames)


class _Defaults:
    model, dtype = None, "float64"


structures = read(path, index=":")
calc = load(_Defaults)
results = predict(structures, calc, batch_size=8)
for n, result in enumerate(results):
    print(f"{n:3d}  {len(structures[n]):4d} atoms  E = {result['energy']:.5f} eV  max |F| = {abs(result['forces']).max():.4f} eV/Å")
