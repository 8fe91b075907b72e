"""The forces/stress module: positions and pair-vector inputs agree, ghost shells, sign conventions."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from conftest import TEST_CONFIG, make_calculator

from e2former_calc.conv import SpanningForest
from e2former_calc.forces import ForceField
from e2former_calc.graph import AtomGraph
from e2former_calc.neighbours import neighbour_list


def _forcefield():
    return ForceField(make_calculator(species=("H", "C", "O", "Cu")).model)


def _graph(atoms, cutoff=TEST_CONFIG.cutoff):
    index = {1: 0, 6: 1, 8: 2, 29: 3}
    nb = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, cutoff)
    return AtomGraph.from_arrays([np.array([index[z] for z in atoms.numbers])], [atoms.positions], [atoms.cell.array],
                                 [atoms.pbc], [nb])


def _node_forces(pair_gradients, receivers, senders, n_nodes):
    """F = -dE/dx from dE/dr_e, r_e = x_j - x_i: x_j gets +g_e, x_i gets -g_e."""
    grad = torch.zeros(n_nodes, 3, dtype=torch.float64)
    grad.index_add_(0, senders, pair_gradients)
    grad.index_add_(0, receivers, -pair_gradients)
    return -grad


def _pair_virial(vectors, pair_gradients):
    """W = -dE/d(epsilon) = -sum_e r_e (x) dE/dr_e (symmetrised)."""
    w = -torch.einsum("ea,eb->ab", vectors, pair_gradients)
    return 0.5 * (w + w.T)


def _copper():
    atoms = bulk("Cu", "fcc", a=3.6).repeat((2, 2, 2))
    atoms.rattle(0.1, seed=4)
    return atoms


def _reference(forcefield, atoms):
    out = forcefield(_graph(atoms), forces=True, stress=True)
    return float(out["energy"][0]), out["forces"], out["virial"][0]


def test_pair_vectors_of_a_molecule_give_the_energy_forces_and_virial_of_positions():
    forcefield = _forcefield()
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=1)
    energy, forces, virial = _reference(forcefield, atoms)
    graph = _graph(atoms)
    vectors = graph.conv_graph().vectors
    forest = SpanningForest.build(graph.receivers, graph.senders, graph.n_atoms, vectors)
    out = forcefield.pair_forward(graph.species, forest, vectors)
    assert float(out["energy"]) == pytest.approx(energy, abs=1e-12)
    torch.testing.assert_close(_node_forces(out["pair_gradients"], graph.receivers, graph.senders, graph.n_atoms),
                               forces, rtol=0, atol=1e-12)
    torch.testing.assert_close(_pair_virial(vectors, out["pair_gradients"]), virial, rtol=0, atol=1e-11)


def test_pair_vectors_of_a_periodic_cell_with_wrap_around_pairs():
    """No ghosts: the cell's own pairs, wrap-around ones with a lattice-vector shift."""
    forcefield = _forcefield()
    atoms = _copper()
    energy, forces, virial = _reference(forcefield, atoms)
    graph = _graph(atoms)
    vectors = graph.conv_graph().vectors
    forest = SpanningForest.build(graph.receivers, graph.senders, graph.n_atoms, vectors)
    assert bool((forest.images[:, 0] != 0).any()), "the test needs wrap-around pairs"
    out = forcefield.pair_forward(graph.species, forest, vectors)
    assert float(out["energy"]) == pytest.approx(energy, abs=1e-10)
    torch.testing.assert_close(_node_forces(out["pair_gradients"], graph.receivers, graph.senders, graph.n_atoms),
                               forces, rtol=0, atol=1e-10)
    torch.testing.assert_close(_pair_virial(vectors, out["pair_gradients"]), virial, rtol=0, atol=1e-10)


def ghost_shell(atoms, radius):
    """Owned atoms plus every periodic image within ``radius`` of one (LAMMPS-style ghosts):
    positions [n_all, 3], owner of each [n_all], and how many are owned."""
    cell = atoms.cell.array
    reach = int(np.ceil(radius / min(np.abs(np.linalg.eigvalsh(cell @ cell.T)) ** 0.5))) + 1
    owned = atoms.positions
    ghosts, owners = [], []
    for shift in np.ndindex(*(2 * reach + 1,) * 3):
        s = np.array(shift) - reach
        if not s.any():
            continue
        images = owned + s @ cell
        d = np.linalg.norm(images[:, None, :] - owned[None, :, :], axis=-1).min(axis=1)
        keep = d < radius
        ghosts.append(images[keep])
        owners.append(np.flatnonzero(keep))
    positions = np.concatenate([owned] + ghosts)
    return positions, np.concatenate([np.arange(len(owned))] + owners), len(owned)


def test_a_ghost_shell_of_num_layers_plus_one_cutoffs_reproduces_the_periodic_cell():
    """LAMMPS with ghost neighbour lists: only owned atoms' energies count, ghost forces fold
    back onto their owners, and the virial comes from the pairs."""
    forcefield = _forcefield()
    atoms = _copper()
    energy, forces, virial = _reference(forcefield, atoms)
    radius = (TEST_CONFIG.num_layers + 1) * TEST_CONFIG.cutoff
    positions, owners, n_owned = ghost_shell(atoms, radius)
    nb = neighbour_list(positions, np.zeros((3, 3)), [False] * 3, TEST_CONFIG.cutoff)
    receivers, senders = torch.from_numpy(nb.receivers), torch.from_numpy(nb.senders)
    x = torch.from_numpy(positions)
    vectors = x[senders] - x[receivers]
    forest = SpanningForest.build(receivers, senders, len(positions), vectors)
    assert not bool((forest.images != 0).any()), "ghost-atom pairs need no shift"
    species = torch.full((len(positions),), 3)
    mask = torch.arange(len(positions)) < n_owned
    out = forcefield.pair_forward(species, forest, vectors, energy_mask=mask)
    assert float(out["energy"]) == pytest.approx(energy, abs=1e-10)
    node_forces = _node_forces(out["pair_gradients"], receivers, senders, len(positions))
    folded = torch.zeros(n_owned, 3, dtype=torch.float64).index_add_(0, torch.from_numpy(owners), node_forces)
    torch.testing.assert_close(folded, forces, rtol=0, atol=1e-10)
    torch.testing.assert_close(_pair_virial(vectors, out["pair_gradients"]), virial, rtol=0, atol=1e-10)
    # one cutoff of ghosts is not enough for a model of two layers: the owned energy changes
    positions, owners, n_owned = ghost_shell(atoms, TEST_CONFIG.cutoff)
    nb = neighbour_list(positions, np.zeros((3, 3)), [False] * 3, TEST_CONFIG.cutoff)
    receivers, senders = torch.from_numpy(nb.receivers), torch.from_numpy(nb.senders)
    x = torch.from_numpy(positions)
    thin_forest = SpanningForest.build(receivers, senders, len(positions), x[senders] - x[receivers])
    thin = forcefield.pair_forward(torch.full((len(positions),), 3), thin_forest, x[senders] - x[receivers],
                                   energy_mask=torch.arange(len(positions)) < n_owned)
    assert abs(float(thin["energy"]) - energy) > 1e-6


def test_stress_is_minus_virial_over_volume_and_zero_where_undefined():
    forcefield = _forcefield()
    crystal, molecule_ = _copper(), molecule("H2O")
    graphs = [_graph(crystal), _graph(molecule_)]
    both = AtomGraph.from_arrays(
        [g.species.numpy() for g in graphs], [crystal.positions, molecule_.positions],
        [crystal.cell.array, molecule_.cell.array], [crystal.pbc, molecule_.pbc],
        [neighbour_list(a.positions, a.cell.array, a.pbc, TEST_CONFIG.cutoff) for a in (crystal, molecule_)])
    out = forcefield(both, forces=True, stress=True)
    volume = abs(np.linalg.det(crystal.cell.array))
    torch.testing.assert_close(out["stress"][0], -out["virial"][0] / volume, rtol=1e-14, atol=0)
    assert out["periodic"].tolist() == [True, False]
    assert torch.equal(out["stress"][1], torch.zeros(3, 3, dtype=torch.float64))
    assert float(out["virial"][1].abs().max()) > 0  # the virial is defined for any structure
    # the same numbers as each structure alone
    for s, atoms in enumerate((crystal, molecule_)):
        alone = forcefield(_graph(atoms), forces=True, stress=True)
        assert float(out["energy"][s]) == pytest.approx(float(alone["energy"][0]), abs=1e-12)
        torch.testing.assert_close(out["virial"][s], alone["virial"][0], rtol=0, atol=1e-12)


def test_a_lone_atom_has_exactly_its_e0_and_far_fragments_add_up():
    calc = make_calculator(species=("H", "C", "O", "Cu"))  # e0 = -1, -2, -3, -4
    forcefield = ForceField(calc.model)
    from ase import Atoms

    lone = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    out = forcefield(_graph(lone), forces=True)
    assert float(out["energy"][0]) == pytest.approx(-3.0, abs=1e-12)
    assert float(out["forces"].abs().max()) == 0.0
    water = molecule("H2O")
    far = water + Atoms("Cu", positions=[[TEST_CONFIG.cutoff + 5.0, 0.0, 0.0]])
    apart = forcefield(_graph(far))["energy"][0]
    assert float(apart) == pytest.approx(float(forcefield(_graph(water))["energy"][0]) - 4.0, abs=1e-12)
    # an isolated atom differs from one with a neighbour: the subtraction is not a constant shift of everything
    pair = Atoms("OO", positions=[[0, 0, 0], [1.3, 0, 0]])
    assert abs(float(forcefield(_graph(pair))["energy"][0]) + 6.0) > 1e-6
