"""Geometry optimisation of a molecule (BFGS), then positions and cell of a strained crystal
(FIRE through FrechetCellFilter).

    python md_examples/relax_structures.py        # shipped organic and copper potentials
"""

import numpy as np
from _common import arguments, load
from ase.build import bulk, molecule
from ase.filters import FrechetCellFilter
from ase.optimize import BFGS, FIRE

args = arguments(__doc__, steps=100)
mol = molecule("CH3CH2OH")
mol.rattle(0.05, seed=0)
mol.calc = load(args, default="e2former-xtb-organic")
BFGS(mol, logfile=None).run(fmax=0.01, steps=args.steps)
print(f"ethanol: E = {mol.get_potential_energy():.5f} eV, largest force {np.abs(mol.get_forces()).max():.4f} eV/Å")

crystal = bulk("Cu", "fcc", a=3.7).repeat(2)
crystal.rattle(0.02, seed=1)
crystal.calc = load(args, default="e2former-emt-cu")
FIRE(FrechetCellFilter(crystal), logfile=None).run(fmax=0.01, steps=args.steps)
print(f"copper: E = {crystal.get_potential_energy():.5f} eV, volume {crystal.get_volume() / len(crystal):.3f} Å^3/atom, "
      f"stress {np.abs(crystal.get_stress()).max():.2e} eV/Å^3")
