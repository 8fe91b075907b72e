"""NVE molecular dynamics of ethanol with an energy-drift report.

    python md_examples/nve_energy_drift.py --steps 2000 --model my_potential.pt
"""

import numpy as np
from _common import arguments, load
from ase import units
from ase.build import molecule
from ase.md.verlet import VelocityVerlet

from e2former_calc.workflows import thermalize

args = arguments(__doc__, steps=200)
atoms = molecule("CH3CH2OH")
atoms.calc = load(args)
thermalize(atoms, 300, seed=0)

dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
times, totals = [], []


def record():
    times.append(dyn.get_number_of_steps() * 0.5e-3)  # ps
    totals.append(atoms.get_total_energy())


dyn.attach(record, interval=10)
dyn.run(args.steps)
slope = np.polyfit(times, totals, 1)[0] / len(atoms)
print(f"{args.steps} steps: energy drift {slope * 1e3:+.4f} meV/atom/ps, "
      f"largest deviation {np.max(np.abs(np.array(totals) - totals[0])) / len(atoms) * 1e3:.4f} meV/atom")
