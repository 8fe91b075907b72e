"""NPT (isotropic Martyna-Tobias-Klein) of fcc copper at 300 K and 1 bar.

    python md_examples/npt_crystal.py --steps 2000 --model my_copper_potential.pt
"""

import sys

import numpy as np
from _common import arguments, load
from ase import units
from ase.build import bulk

try:
    from ase.md.nose_hoover_chain import IsotropicMTKNPT
except ImportError:
    sys.exit("npt_crystal.py needs ase >= 3.25 (ase.md.nose_hoover_chain.IsotropicMTKNPT): pip install 'ase>=3.25'")

from e2former_calc.workflows import thermalize

args = arguments(__doc__, steps=40)
atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
atoms.calc = load(args, default="e2former-emt-cu", skin=1.0)
thermalize(atoms, 300, seed=0)
dt = 1.0 * units.fs
dyn = IsotropicMTKNPT(atoms, timestep=dt, temperature_K=300, pressure_au=1.0 * units.bar, tdamp=100 * dt, pdamp=1000 * dt)
dyn.attach(lambda: print(f"step {dyn.get_number_of_steps():5d}  T = {atoms.get_temperature():6.1f} K  "
                         f"V = {atoms.get_volume():8.3f} Å^3  p = {-np.trace(atoms.get_stress(voigt=False)) / 3 / units.GPa:7.3f} GPa"),
           interval=10)
dyn.run(args.steps)
