"""Batched Langevin NVT with torch-sim: four copper cells at four temperatures, one model call per
step for all of them, with the shipped copper potential.

    pip install 'e2former-calc[torchsim]'
    python md_examples/torch_sim_batched_md.py --steps 2000 --dtype float32

See docs/torch_sim.md.
"""

import sys
import time

import torch
from _common import arguments, load
from ase.build import bulk

try:
    import torch_sim as ts

    from e2former_calc.integrations.torch_sim import E2FormerModel, torch_sim_version
except ImportError as error:
    sys.exit(f"torch_sim_batched_md.py needs torch-sim: pip install 'e2former-calc[torchsim]' ({error})")

args = arguments(__doc__, steps=50)
calc = load(args, default="e2former-emt-cu", species=("Cu",), quiet=True)
model = E2FormerModel(calc.model, device="auto", dtype=args.dtype)

# four different cells: cubic fcc 2x2x2 (32 atoms), 2x2x1 (16), a sheared primitive 3x3x3 (27), cubic 3x2x2 at a = 3.65 Å (48)
cells = [bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)), bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 1)),
         bulk("Cu", "fcc", a=3.61).repeat((3, 3, 3)), bulk("Cu", "fcc", a=3.65, cubic=True).repeat((3, 2, 2))]
cells[2].set_cell(cells[2].cell.array + [[0.0, 0.0, 0.0], [0.15, 0.0, 0.0], [0.0, -0.1, 0.0]], scale_atoms=True)
temperatures = [300.0, 600.0, 900.0, 1200.0]  # K, one per cell
state = ts.io.atoms_to_state(cells, model.device, model.dtype)

units = ts.units.MetalUnits  # internal: eV, Å, amu; MetalUnits.time is one picosecond
kT = torch.tensor(temperatures, device=model.device, dtype=model.dtype) * units.temperature
dt = torch.tensor(0.004 * units.time, device=model.device, dtype=model.dtype)  # 4 fs
gamma = 1 / (20 * dt)  # friction 1 / (80 fs): the cells reach their temperatures within a few hundred steps

print(f"torch-sim {torch_sim_version()}: {state.n_systems} copper cells, {state.n_atoms} atoms, "
      f"{str(model.dtype).replace('torch.', '')} on {model.device}")


def temperature(md_state):
    return ts.quantities.calc_temperature(masses=md_state.masses, momenta=md_state.momenta, system_idx=md_state.system_idx)


def report(step, md_state):
    temps = "  ".join(f"{t:7.1f}" for t in temperature(md_state).tolist())
    energies = "  ".join(f"{e / n:8.4f}" for e, n in zip(md_state.energy.tolist(), md_state.n_atoms_per_system.tolist()))
    print(f"step {step:5d}  T (K): {temps}   E_pot (eV/atom): {energies}")


start = time.perf_counter()
if hasattr(ts, "nvt_langevin_init"):  # torch-sim >= 0.4: init and step functions
    state.rng = 0
    md_state = ts.nvt_langevin_init(state, model, kT=kT)

    def step_once(s):
        return ts.nvt_langevin_step(s, model, dt=dt, kT=kT, gamma=gamma)
else:  # torch-sim 0.3: a factory of (init, update)
    init, update = ts.nvt_langevin(model=model, dt=dt, kT=kT, gamma=gamma, seed=0)
    md_state = init(state)

    def step_once(s):
        return update(s, kT=kT)

report(0, md_state)
for step in range(1, args.steps + 1):
    md_state = step_once(md_state)
    if step % 10 == 0 or step == args.steps:
        report(step, md_state)
elapsed = time.perf_counter() - start
print(f"{args.steps} steps in {elapsed:.1f} s ({1000 * elapsed / max(args.steps, 1):.0f} ms per step for all cells)")
print("final temperatures: " + ", ".join(f"{t:.0f} K (target {target:.0f} K)"
                                         for t, target in zip(temperature(md_state).tolist(), temperatures)))
