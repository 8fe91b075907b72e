"""Langevin NVT of a periodic box of 27 water molecules at 300 K, written to a trajectory.

    python md_examples/langevin_nvt.py --steps 2000
"""

import numpy as np
from _common import arguments, load
from ase import units
from ase.io import Trajectory
from ase.md.langevin import Langevin

from e2former_calc.systems import built_in_system
from e2former_calc.workflows import thermalize

args = arguments(__doc__, steps=50)
atoms = built_in_system("water-box")
atoms.calc = load(args, skin=1.0)
thermalize(atoms, 300, seed=0)
dyn = Langevin(atoms, timestep=0.5 * units.fs, temperature_K=300, friction=0.01 / units.fs, fixcm=False, rng=np.random.default_rng(1))
with Trajectory("water_nvt.traj", "w", atoms) as trajectory:
    dyn.attach(trajectory.write, interval=10)
    dyn.attach(lambda: print(f"step {dyn.get_number_of_steps():5d}  T = {atoms.get_temperature():6.1f} K  "
                             f"E_pot = {atoms.get_potential_energy():.4f} eV"), interval=10)
    dyn.run(args.steps)
print("wrote water_nvt.traj")
