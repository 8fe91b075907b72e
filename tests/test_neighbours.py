"""Neighbour lists over matscipy against a brute-force search, and the Verlet skin."""

import itertools

import numpy as np
import pytest

from e2former_calc.neighbours import VerletList, neighbour_list


def brute_force(positions, cell, pbc, cutoff, reach=3):
    pairs = set()
    ranges = [range(-reach, reach + 1) if p else range(1) for p in pbc]
    for S in itertools.product(*ranges):
        shift = np.array(S) @ cell
        for i in range(len(positions)):
            for j in range(len(positions)):
                if i == j and not any(S):
                    continue
                if np.linalg.norm(positions[j] + shift - positions[i]) < cutoff:
                    pairs.add((i, j, *S))
    return pairs


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


def test_verlet_list_rebuilds_only_when_an_atom_moved_half_the_skin():
    positions = np.random.default_rng(2).uniform(0, 8, size=(30, 3))
    cell, pbc, numbers = np.eye(3) * 8, (True,) * 3, np.ones(30, dtype=int)
    verlet = VerletList(cutoff=3.0, skin=1.0)
    _, rebuilt = verlet.update(positions, cell, pbc, numbers)
    assert rebuilt
    moved = positions.copy()
    moved[3] += [0.49, 0, 0]
    assert not verlet.update(moved, cell, pbc, numbers)[1]
    moved[3] += [0.02, 0, 0]
    assert verlet.update(moved, cell, pbc, numbers)[1]
    assert verlet.builds == 2


def test_verlet_list_survives_a_small_change_of_the_cell_and_stays_complete():
    rng = np.random.default_rng(3)
    cell = np.array([[8.0, 0.0, 0.0], [1.0, 7.5, 0.0], [0.5, 0.8, 8.2]])
    positions = rng.uniform(0, 1, size=(40, 3)) @ cell
    pbc, numbers = (True,) * 3, np.ones(40, dtype=int)
    verlet = VerletList(cutoff=3.0, skin=1.0)
    verlet.update(positions, cell, pbc, numbers)
    strained = cell @ (np.eye(3) + np.array([[0.02, 0.01, 0.0], [0.0, -0.015, 0.0], [0.0, 0.0, 0.01]]))
    moved = positions @ np.linalg.solve(cell, strained) + rng.normal(scale=0.1, size=positions.shape)
    kept, rebuilt = verlet.update(moved, strained, pbc, numbers)
    assert not rebuilt
    # every pair now within the cutoff is in the kept list
    assert brute_force(moved, strained, pbc, 3.0) <= as_set(kept)
    assert verlet.update(moved, cell * 1.2, pbc, numbers)[1]  # a large strain rebuilds
