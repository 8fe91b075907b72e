"""Langevin NVT of a benzene molecule at 500 K with the shipped organic potential, written to a
trajectory.

    python md_examples/langevin_nvt.py --steps 2000
"""

import numpy as np
from _common import arguments, load
from ase import units
from ase.build import molecule
from ase.io import Trajectory
from ase.md.langevin import Langevin

from e2former_calc.workflows import thermalize

args = arguments(__doc__, steps=50)
atoms = molecule("C6H6")
atoms.calc = load(args, default="e2former-xtb-organic")
thermalize(atoms, 500, seed=0)
dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=500, friction=0.01 / units.fs, fixcm=False, rng=np.random.default_rng(1))
with Trajectory("benzene_nvt.traj", "w", atoms) as trajectory:
    dyn.attach(trajectory.write, interval=10)
    dyn.attach(lambda: print(f"step {dyn.get_number_of_steps():5d}  T = {atoms.get_temperature():6.1f} K  "
                             f"E_pot = {atoms.get_potential_energy():.4f} eV"), interval=10)
    dyn.run(args.steps)
print("wrote benzene_nvt.traj")
