"""Neighbour lists over matscipy against a brute-force search, and the Verlet skin."""

import itertools

import numpy as np
import pytest
import torch

from e2former_calc.graph import AtomGraph
from e2former_calc.neighbours import VerletList, neighbour_list


def brute_force(positions, cell, pbc, cutoff, reach=3):
    """Every (i, j, S) within the cutoff, by checking all pairs and all shifts up to ``reach``."""
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    shifts = np.array(list(itertools.product(*ranges)))  # [K, 3]
    vectors = (positions[None, :, None, :] + (shifts @ cell)[None, None, :, :]
               - positions[:, None, None, :])  # [i, j, K, 3]
    close = np.linalg.norm(vectors, axis=-1) < cutoff
    i, j, k = np.nonzero(close)
    return {(int(a), int(b), *map(int, shifts[c])) for a, b, c in zip(i, j, k) if a != b or shifts[c].any()}


def as_set(nb):
    return {(int(i), int(j), *map(int, S)) for i, j, S in zip(nb.receivers, nb.senders, nb.shifts)}


CELL = np.array([[3.2, 0.0, 0.0], [1.1, 2.9, 0.0], [0.6, 0.8, 3.4]])


@pytest.mark.parametrize("pbc", [(True, True, True), (True, True, False), (True, False, False), (False, False, False)])
def test_any_periodicity_and_a_short_triclinic_cell(pbc):
    rng = np.random.default_rng(0)
    positions = rng.uniform(0, 3, size=(5, 3)) + np.array([40.0, -20.0, 7.0])  # unwrapped, far from the cell
    cutoff = 4.5  # longer than the cell vectors
    found = neighbour_list(positions, CELL, pbc, cutoff)
    assert as_set(found) == brute_force(positions, CELL, pbc, cutoff)


def test_molecule_far_away_gives_the_same_pairs():
    rng = np.random.default_rng(1)
    positions = rng.uniform(0, 6, size=(20, 3))
    near = neighbour_list(positions, np.zeros((3, 3)), (False,) * 3, 3.0)
    far = neighbour_list(positions + 1e4, np.zeros((3, 3)), (False,) * 3, 3.0)
    assert as_set(near) == as_set(far) == brute_force(positions, np.eye(3), (False,) * 3, 3.0)


BACKENDS = ["matscipy", "torch"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_verlet_list_rebuilds_only_when_an_atom_moved_half_the_skin(backend):
    positions = np.random.default_rng(2).uniform(0, 8, size=(30, 3))
    cell, pbc, numbers = np.eye(3) * 8, (True,) * 3, np.ones(30, dtype=int)
    verlet = VerletList(cutoff=3.0, skin=1.0, backend=backend)
    _, rebuilt = verlet.update(positions, cell, pbc, numbers)
    assert rebuilt
    moved = positions.copy()
    moved[3] += [0.49, 0, 0]
    assert not verlet.update(moved, cell, pbc, numbers)[1]
    moved[3] += [0.02, 0, 0]
    assert verlet.update(moved, cell, pbc, numbers)[1]
    assert verlet.builds == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_verlet_list_survives_a_small_change_of_the_cell_and_stays_complete(backend):
    rng = np.random.default_rng(3)
    cell = np.array([[8.0, 0.0, 0.0], [1.0, 7.5, 0.0], [0.5, 0.8, 8.2]])
    positions = rng.uniform(0, 1, size=(40, 3)) @ cell
    pbc, numbers = (True,) * 3, np.ones(40, dtype=int)
    verlet = VerletList(cutoff=3.0, skin=1.0, backend=backend)
    verlet.update(positions, cell, pbc, numbers)
    strained = cell @ (np.eye(3) + np.array([[0.02, 0.01, 0.0], [0.0, -0.015, 0.0], [0.0, 0.0, 0.01]]))
    moved = positions @ np.linalg.solve(cell, strained) + rng.normal(scale=0.1, size=positions.shape)
    kept, rebuilt = verlet.update(moved, strained, pbc, numbers)
    assert not rebuilt
    # every pair now within the cutoff is in the kept list
    assert brute_force(moved, strained, pbc, 3.0) <= as_set(kept)
    assert verlet.update(moved, cell * 1.2, pbc, numbers)[1]  # a large strain rebuilds


def test_the_torch_search_keeps_its_pairs_and_its_skin_test_on_the_device():
    """With the torch search the pairs are tensors on the device and the graph built from them
    is the one built from matscipy's; along a random walk with a straining cell both backends
    rebuild at the same steps, from the positions given as numpy arrays or as tensors."""
    rng = np.random.default_rng(4)
    cell = np.array([[7.0, 0.0, 0.0], [0.9, 6.8, 0.0], [0.4, 0.7, 7.3]])
    positions = rng.uniform(0, 1, size=(35, 3)) @ cell
    pbc, numbers = (True,) * 3, np.full(35, 29)
    on_device = neighbour_list(torch.tensor(positions), torch.tensor(cell), pbc, 3.0, backend="torch", device="cpu")
    assert all(isinstance(a, torch.Tensor) for a in (on_device.receivers, on_device.senders, on_device.shifts))
    reference = neighbour_list(positions, cell, pbc, 3.0)
    assert as_set(on_device) == as_set(reference)
    graphs = [AtomGraph.from_arrays([np.zeros(35, dtype=int)], [positions], [cell], [pbc], [nb], "cpu")
              for nb in (on_device, reference)]
    a, b = (sorted(zip(g.receivers.tolist(), g.senders.tolist(), map(tuple, g.cell_shifts.tolist()))) for g in graphs)
    assert a == b and torch.equal(graphs[0].positions, graphs[1].positions)

    lists = {"matscipy": VerletList(3.0, 0.8), "torch": VerletList(3.0, 0.8, "torch", "cpu")}
    decisions = {name: [] for name in lists}
    for step in range(40):
        positions = positions + rng.normal(scale=0.05, size=positions.shape)
        if step % 7 == 3:  # NPT-like strain steps, one of them too large to keep the list
            cell = cell @ (np.eye(3) + rng.normal(scale=0.004 if step < 30 else 0.05, size=(3, 3)))
        within = brute_force(positions, cell, pbc, 3.0)
        for name, verlet in lists.items():
            given = (positions, cell) if name == "matscipy" else (torch.tensor(positions), torch.tensor(cell))
            nb, rebuilt = verlet.update(*given, pbc, numbers)
            decisions[name].append(rebuilt)
            assert within <= as_set(nb)  # complete within the cutoff
    assert decisions["matscipy"] == decisions["torch"]
    assert 2 < sum(decisions["torch"]) < 40  # kept and rebuilt, both
