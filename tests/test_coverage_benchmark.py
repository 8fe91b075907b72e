"""benchmarks/accuracy/coverage.py: its geometry distance ignores atom labels and rigid motions,
is zero for a training frame itself and grows with a real change of shape."""

import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import molecule

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "accuracy"))
from coverage import coverage_distances, descriptor  # noqa: E402


def _frame(atoms, kind):
    atoms = atoms.copy()
    atoms.info["config_type"] = kind
    return atoms


def test_descriptor_ignores_labels_and_rigid_motions():
    ethanol = molecule("CH3CH2OH")
    moved = ethanol.copy()
    moved.rotate(37, (1, 2, 3), center="COM")
    moved.translate((1.5, -2.0, 0.3))
    moved = moved[np.random.default_rng(0).permutation(len(moved))]  # other atom order
    assert np.allclose(descriptor(moved), descriptor(ethanol), atol=1e-12)


def test_nearest_training_frame_distance():
    ethanol = molecule("CH3CH2OH")
    stretched = ethanol.copy()
    o = int(np.flatnonzero(ethanol.numbers == 8)[0])
    hydrogens = np.flatnonzero(ethanol.numbers == 1)
    h = int(hydrogens[np.argmin(ethanol.get_distances(o, hydrogens))])  # the hydroxyl H
    stretched.set_distance(o, h, ethanol.get_distance(o, h) + 0.05, fix=0)  # 0.97 -> 1.02 Å, still the shortest X-H
    swapped = ethanol.copy()
    swapped.set_distance(o, h, ethanol.get_distance(o, h) + 0.3, fix=0)  # 1.27 Å: now the longest X-H
    train = [_frame(ethanol, "ethanol"), _frame(molecule("H2O"), "water")]
    test = [_frame(ethanol, "ethanol"), _frame(stretched, "ethanol"), _frame(swapped, "ethanol"),
            _frame(molecule("CH4"), "methane")]
    distance, missing = coverage_distances(train, test)
    n_entries = descriptor(ethanol).size
    assert distance[0] == pytest.approx(0.0, abs=1e-12)
    # one entry of the descriptor moved by 0.05 Å: its RMS over all entries
    assert distance[1] == pytest.approx(0.05 / np.sqrt(n_entries), rel=1e-6)
    # sorting matches the changed set of distances at best: no more than the labelled change, not zero
    assert 0.05 / np.sqrt(n_entries) < distance[2] < 0.3 / np.sqrt(n_entries)
    assert np.isnan(distance[3]) and missing == ["methane"]
