"""The torch cell list gives exactly matscipy's pairs, on every kind of cell."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, fcc111, molecule

from e2former_calc.cell_list import cell_list
from e2former_calc.neighbours import neighbour_list


def pair_set(receivers, senders, shifts):
    return {(int(i), int(j), *map(int, s)) for i, j, s in zip(receivers, senders, shifts)}


def triclinic():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((3, 3, 2))
    cell = atoms.cell.array @ np.array([[1.0, 0.0, 0.0], [0.35, 0.95, 0.0], [-0.2, 0.15, 1.05]])
    atoms.set_cell(cell, scale_atoms=True)
    return atoms


def far_molecule():
    m = molecule("CH3CH2OH")
    m.positions += 10_000.0
    return m


def mixed():
    slab = fcc111("Cu", size=(3, 3, 4), vacuum=8.0)
    slab.pbc = (True, True, False)
    return slab


def unwrapped():
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
    atoms.positions += np.random.default_rng(0).normal(scale=6.0, size=atoms.positions.shape)  # outside the cell
    return atoms


CASES = {
    "cubic": (lambda: bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3), 5.0),
    "triclinic": (triclinic, 5.3),
    "short cell (many images)": (lambda: bulk("Cu", "fcc", a=3.61), 7.5),
    "slab, mixed pbc": (mixed, 5.0),
    "molecule 10,000 Å out": (far_molecule, 4.0),
    "atoms outside the cell": (unwrapped, 5.0),
    "one atom, periodic": (lambda: bulk("Cu", "sc", a=2.5), 5.1),
}


@pytest.mark.parametrize("name", list(CASES))
def test_the_same_pairs_as_matscipy(name):
    build, cutoff = CASES[name]
    atoms = build()
    atoms.rattle(0.05, seed=3)
    expected = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    receivers, senders, shifts = cell_list(torch.tensor(atoms.positions), torch.tensor(atoms.cell.array), atoms.pbc,
                                           cutoff, max_candidates=5000)  # several chunks
    assert torch.all(receivers[1:] >= receivers[:-1])  # sorted by receiver
    got = pair_set(receivers, senders, shifts)
    assert len(got) == len(receivers)  # no pair twice
    assert got == pair_set(expected.receivers, expected.senders, expected.shifts)
    assert len(got) > 0


def test_an_empty_structure():
    r, s, sh = cell_list(torch.zeros((0, 3), dtype=torch.float64), torch.eye(3), (True, True, True), 5.0)
    assert r.numel() == s.numel() == 0 and sh.shape == (0, 3)


def test_the_calculator_on_the_torch_list_matches_matscipy_through_md():
    """Energies and forces along a short MD run (Verlet skin: reused and rebuilt lists) are the
    same with either search: the pairs are the same, only their order differs."""
    from ase import units
    from ase.md.verlet import VelocityVerlet
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    from e2former_calc import E2FormerCalculator

    results = []
    for neighbours in ("matscipy", "torch"):
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(2)
        MaxwellBoltzmannDistribution(atoms, temperature_K=1500, rng=np.random.default_rng(1))
        atoms.calc = E2FormerCalculator.from_pretrained("e2former-emt-cu", device="cpu", dtype="float64", skin=0.3,
                                                        quiet=True, neighbours=neighbours)
        energies = []
        dyn = VelocityVerlet(atoms, timestep=4 * units.fs)
        dyn.attach(lambda: energies.append((atoms.get_potential_energy(), atoms.get_forces().copy())), interval=1)
        dyn.run(12)
        results.append((energies, atoms.calc.predictor.verlet.builds))
    (a, builds_a), (b, builds_b) = results
    assert builds_a == builds_b >= 2  # the list was rebuilt along the way, the same way
    for (ea, fa), (eb, fb) in zip(a, b):
        assert abs(ea - eb) < 1e-10 and np.abs(fa - fb).max() < 1e-10
    with pytest.raises(ValueError, match="neighbours must be auto, matscipy or torch"):
        E2FormerCalculator.from_pretrained("e2former-emt-cu", device="cpu", quiet=True, neighbours="vesin")
