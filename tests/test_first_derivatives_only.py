"""Forces and stress through radial networks that carry dphi/dr forward (ForceField without
create_graph): the numbers of plain autograd, less kept for the backward pass, no silent
second derivative."""

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from e2former_calc.forces import ForceField
from e2former_calc.graph import AtomGraph
from e2former_calc.model import E2Former, E2FormerConfig
from e2former_calc.model.radial import BesselBasis, value_and_slope
from e2former_calc.neighbours import neighbour_list


def _field_and_graph(dtype=torch.float64):
    """A frozen untrained two-species model (hidden width 40: no other per-edge tensor has it;
    no ZBL term, so that the forces are the network's) and a rattled periodic 32-atom cell with
    both species."""
    torch.manual_seed(0)
    config = E2FormerConfig(cutoff=4.0, radial_hidden=40, zbl=False)
    model = E2Former(config, atomic_numbers=(29, 8))
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2)
    atoms.numbers[::5] = 8
    atoms.rattle(0.1, seed=1)
    neighbours = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, config.cutoff)
    graph = AtomGraph.from_arrays([model.species_indices(atoms.numbers)], [atoms.positions], [atoms.cell.array],
                                  [atoms.pbc], [neighbours], torch.device("cpu"))
    return ForceField.frozen(model, "cpu", dtype), graph


def test_the_bessel_basis_slope_is_its_derivative():
    basis = BesselBasis(5.0, 8).double()
    r = torch.linspace(0.5, 4.9, 50, dtype=torch.float64)
    value, slope = basis.value_and_slope(r)
    torch.testing.assert_close(value, basis(r), rtol=1e-14, atol=1e-14)
    jacobian = torch.autograd.functional.jacobian(basis, r)  # [50, 8, 50]: b_n(r_e) by r_e'
    torch.testing.assert_close(slope, torch.einsum("ene->en", jacobian), rtol=1e-12, atol=1e-12)


def test_an_mlp_slope_is_its_directional_derivative():
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Linear(7, 16), torch.nn.SiLU(), torch.nn.Linear(16, 16), torch.nn.SiLU(),
                              torch.nn.Linear(16, 5)).double()
    x = torch.randn(11, 7, dtype=torch.float64)
    direction = torch.randn(11, 3, dtype=torch.float64)
    with torch.no_grad():
        value, slope = value_and_slope(net, x, direction)
    full = torch.cat([direction, torch.zeros(11, 4, dtype=torch.float64)], dim=-1)
    expected_value, expected_slope = torch.func.jvp(net, (x,), (full,))
    torch.testing.assert_close(value, expected_value, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(slope, expected_slope, rtol=1e-12, atol=1e-12)
    with pytest.raises(TypeError, match="Linear and SiLU"):
        value_and_slope(torch.nn.Sequential(torch.nn.Linear(7, 3), torch.nn.Tanh()).double(), x, direction)


@pytest.mark.parametrize("stress", [False, True])
def test_forces_and_stress_are_those_of_plain_autograd(stress):
    field, graph = _field_and_graph()
    first_order = field(graph, forces=True, stress=stress)  # radial networks carry dphi/dr
    plain = field(graph, forces=True, stress=stress, create_graph=True)  # the ordinary graph
    for key in ("energy", "atom_energies", "forces") + (("stress", "virial") if stress else ()):
        torch.testing.assert_close(first_order[key], plain[key].detach(), rtol=1e-12, atol=1e-12, msg=key)
    assert first_order["forces"].abs().max() > 1e-3  # not a trivial comparison


def test_radial_networks_in_pieces_give_the_same_numbers(monkeypatch):
    """The first-order radial networks run in pieces of ``RADIAL_PIECE`` edges: pieces of 7 edges
    (the last one short) give the energies and forces of one piece and of plain autograd to 1e-12
    (matrix products of other shapes may round differently, so not bit for bit)."""
    from e2former_calc.model import radial

    field, graph = _field_and_graph()
    assert graph.conv_graph().n_edges > 7 and graph.conv_graph().n_edges % 7
    monkeypatch.setattr(radial, "RADIAL_PIECE", 10**9)
    whole = field(graph, forces=True)
    monkeypatch.setattr(radial, "RADIAL_PIECE", 7)
    pieces = field(graph, forces=True)
    plain = field(graph, forces=True, create_graph=True)
    for key in ("energy", "forces"):
        torch.testing.assert_close(pieces[key], whole[key], rtol=1e-12, atol=1e-12, msg=key)
        torch.testing.assert_close(pieces[key], plain[key].detach(), rtol=1e-12, atol=1e-12, msg=key)


def test_pair_gradients_are_those_of_plain_autograd():
    """The LAMMPS path: ``dE/dr_ij`` from pair vectors, with and without layer stages."""
    from e2former_calc.conv import SpanningForest

    field, graph = _field_and_graph()
    conv = graph.conv_graph()
    vectors = conv.vectors.detach()
    forest = SpanningForest.build(conv.receivers, conv.senders, conv.n_nodes, vectors)
    hops = torch.zeros(conv.n_nodes, dtype=torch.int64).numpy()
    hops[conv.n_nodes // 2:] = 1  # the energies of the first half, the rest one hop out
    stages = field.pair_stages(forest, vectors, hops)
    for options in ({}, {"stages": stages}):
        first_order = field.pair_forward(graph.species, forest, vectors, **options)
        plain = field.pair_forward(graph.species, forest, vectors, create_graph=True, **options)
        torch.testing.assert_close(first_order["pair_gradients"], plain["pair_gradients"].detach(), rtol=1e-12,
                                   atol=1e-12)
        torch.testing.assert_close(first_order["energy"], plain["energy"].detach(), rtol=1e-12, atol=1e-12)
        assert first_order["pair_gradients"].abs().max() > 1e-3


def test_the_backward_pass_keeps_no_hidden_radial_activation():
    field, graph = _field_and_graph(torch.float32)
    config = field.model.config
    n_edges = graph.conv_graph().n_edges

    def hidden_shaped(first_derivatives_only):
        shapes = []

        def pack(t):
            shapes.append(tuple(t.shape))
            return t

        positions = graph.positions.detach().requires_grad_(True)
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            field.model(graph.species, graph.with_geometry(positions).conv_graph(),
                        first_derivatives_only=first_derivatives_only)
        return [s for s in shapes if s in ((n_edges, config.radial_hidden), embedding_out)]

    # the hidden activations of every radial network, and the embedding's radial output (or its
    # slope) [E, (L_max + 1) C]: the first-order path keeps none of them
    embedding_out = (n_edges, (config.max_degree + 1) * config.channels)
    assert len(hidden_shaped(False)) == 2 * (1 + config.num_layers)  # two SiLU inputs per network
    assert hidden_shaped(True) == []


def test_a_second_derivative_through_the_first_order_path_raises():
    field, graph = _field_and_graph()
    positions = graph.positions.detach().requires_grad_(True)
    energy = field.model(graph.species, graph.with_geometry(positions).conv_graph(), first_derivatives_only=True).sum()
    with pytest.raises(RuntimeError, match="second derivative through a radial network"):
        torch.autograd.grad(energy, positions, create_graph=True)


def test_trainable_weights_take_the_ordinary_path():
    """With trainable weights the flag changes nothing: parameter gradients stay exact."""
    field, graph = _field_and_graph()
    field.requires_grad_(True)
    gradients = []
    for flag in (False, True):
        positions = graph.positions.detach().requires_grad_(True)
        energy = field.model(graph.species, graph.with_geometry(positions).conv_graph(), first_derivatives_only=flag).sum()
        weight = field.model.embedding.radial.net[0].weight
        gradients.append(torch.autograd.grad(energy, [positions, weight]))
    for a, b in zip(*gradients):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert gradients[0][1].abs().max() > 0


def test_a_molecule_through_the_calculator_matches_finite_differences():
    """End to end (the calculator's default path): forces are minus the energy's slope."""
    from e2former_calc import E2FormerCalculator

    atoms = molecule("CH3CH2OH")
    atoms.calc = E2FormerCalculator.from_config("small", species=("H", "C", "O"), dtype="float64", quiet=True)
    forces = atoms.get_forces()
    step = 1e-5
    for atom, axis in ((0, 0), (3, 2), (8, 1)):
        energies = []
        for sign in (1, -1):
            moved = atoms.copy()
            moved.calc = atoms.calc
            moved.positions[atom, axis] += sign * step
            energies.append(moved.get_potential_energy())
        np.testing.assert_allclose(forces[atom, axis], -(energies[0] - energies[1]) / (2 * step), rtol=1e-6, atol=1e-8)


def test_radial_output_blocks_as_separate_tensors():
    """``RadialNetwork(edges, sizes)``: the output's column blocks as separate tensors, on the
    ordinary and on the first-order path, equal to the whole output's columns; their gradients in
    the lengths equal those of the whole output (1e-12, float64); sizes that do not add up are named."""
    from e2former_calc.model.radial import EdgeInputs, FirstOrderEdges, RadialNetwork

    torch.manual_seed(2)
    bessel = BesselBasis(4.0, 8).double()
    network = RadialNetwork(8, 3, 16, 7).double().requires_grad_(False)
    features = torch.randn(5, 3, dtype=torch.float64)
    receivers, senders = torch.tensor([0, 1, 2, 3, 4, 4]), torch.tensor([1, 2, 3, 4, 0, 2])
    lengths0 = torch.linspace(1.0, 3.5, 6, dtype=torch.float64)
    probe = torch.randn(6, 7, dtype=torch.float64)

    def run(first_order, sizes):
        lengths = lengths0.clone().requires_grad_(True)
        if first_order:
            edges = EdgeInputs(lengths, None, None, None, None, FirstOrderEdges(bessel, features, receivers, senders))
        else:
            edges = EdgeInputs(lengths, bessel(lengths), features[receivers], features[senders], None)
        out = network(edges, sizes)
        whole = out if sizes is None else torch.cat(out, dim=-1)
        (grad,) = torch.autograd.grad((whole * probe).sum(), lengths)
        return whole, grad

    reference = run(False, None)
    for first_order in (False, True):
        for sizes in (None, (2, 5), (7,)):
            for a, b in zip(run(first_order, sizes), reference):
                torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="add up"):
        network(EdgeInputs(lengths0, bessel(lengths0), features[receivers], features[senders], None), (2, 4))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_radial_network_summed_over_edges(monkeypatch, dtype):
    """``summed_over_edges`` (phi and dphi/dr made again in the backward pass, pieces of 3 edges)
    against the explicit ``[E, C, M]`` messages of the ordinary network summed by index_add:
    values and the gradients in the lengths and the per-edge values to 1e-12 in float64 (1e-5 in
    float32), a node without edges included; either gradient alone; no edges at all; it keeps
    neither phi nor its slope; bad sizes and values, trainable weights and a second derivative
    are refused."""
    from e2former_calc.model import radial
    from e2former_calc.model.radial import EdgeInputs, FirstOrderEdges, RadialNetwork

    torch.manual_seed(4)
    bessel = BesselBasis(4.0, 8).to(dtype)
    network = RadialNetwork(8, 3, 16, 2 * 5).to(dtype).requires_grad_(False)  # two blocks of C = 5
    features = torch.randn(5, 3, dtype=dtype)  # node 4 receives no edge
    receivers, senders = torch.tensor([0, 1, 2, 3, 3, 0, 2]), torch.tensor([1, 2, 3, 0, 2, 3, 4])
    lengths0 = torch.linspace(1.0, 3.7, 7, dtype=dtype)
    values0 = torch.randn(7, 4, dtype=dtype)
    sizes = (1, 3)  # phi_0 weights column 0, phi_1 columns 1..3
    probe = torch.randn(5, 5, 4, dtype=dtype)
    tolerance = 1e-12 if dtype == torch.float64 else 1e-5

    def run(fused, wrt=(True, True), edge_rows=slice(None)):
        lengths = lengths0[edge_rows].clone().requires_grad_(wrt[0])
        values = values0[edge_rows].clone().requires_grad_(wrt[1])
        r, s = receivers[edge_rows], senders[edge_rows]
        if fused:
            edges = EdgeInputs(lengths, None, None, None, None, FirstOrderEdges(bessel, features, r, s))
            out = network.summed_over_edges(edges, values, sizes, 5)
        else:
            phi = network(EdgeInputs(lengths, bessel(lengths), features[r], features[s], None)).view(-1, 2, 5)
            messages = phi[:, [0, 1, 1, 1], :].transpose(1, 2) * values[:, None, :]
            out = messages.new_zeros(5, 5, 4).index_add(0, r, messages)
        wanted = [t for t, w in zip((lengths, values), wrt) if w]
        return (out, *torch.autograd.grad((out * probe).sum(), wanted)) if wanted else (out,)

    reference = run(False)
    monkeypatch.setattr(radial, "RADIAL_PIECE", 3)
    for a, b in zip(run(True), reference):
        torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    assert reference[1].abs().max() > 1e-3 and reference[0][4].abs().max() == 0
    for wrt in ((True, False), (False, True)):
        for a, b in zip(run(True, wrt), run(False, wrt)):
            torch.testing.assert_close(a, b, rtol=tolerance, atol=tolerance)
    for a, b in zip(run(True, edge_rows=slice(0, 0)), (torch.zeros(5, 5, 4, dtype=dtype),) + (torch.zeros(0),) * 2):
        assert torch.equal(a.float(), b.float().reshape(a.shape))

    edges = EdgeInputs(lengths0.clone().requires_grad_(True), None, None, None, None,
                       FirstOrderEdges(bessel, features, receivers, senders))
    kept = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(tuple(t.shape)) or t, lambda t: t):
        out = network.summed_over_edges(edges, values0, sizes, 5)
    assert sorted(kept) == [(7,), (7, 4)], kept  # the lengths and the values
    with pytest.raises(RuntimeError, match="second derivative"):
        torch.autograd.grad(out.sum(), edges.lengths, create_graph=True)
    for bad in ((1, 1, 2), (0, 4), ()):
        with pytest.raises(ValueError, match="sizes must give"):
            network.summed_over_edges(edges, values0, bad, 5)
    with pytest.raises(ValueError, match=r"values must have shape \[7, 4\]"):
        network.summed_over_edges(edges, values0[:, :3], sizes, 5)
    with pytest.raises(ValueError, match="dtype"):
        network.summed_over_edges(edges, values0.to(torch.float16), sizes, 5)
    with pytest.raises(ValueError, match="first_order"):
        network.summed_over_edges(edges._replace(first_order=None), values0, sizes, 5)
    network.requires_grad_(True)
    with pytest.raises(ValueError, match="frozen weights"):
        network.summed_over_edges(edges, values0, sizes, 5)


def test_entry_pieces_bound_the_temporaries_off_the_cpu():
    """Pieces of the embedding's ``[piece, C M]`` messages: the CPU's cache-sized pieces on the
    CPU; on a GPU at most DEVICE_ENTRIES entries, at least RADIAL_PIECE edges."""
    from e2former_calc.model.radial import DEVICE_ENTRIES, DEVICE_PIECE, RADIAL_PIECE, entry_piece

    cuda = torch.device("cuda")
    assert entry_piece(96, torch.device("cpu")) == entry_piece(10**6, torch.device("cpu")) == RADIAL_PIECE
    assert entry_piece(96, cuda) == DEVICE_PIECE  # emt-cu: C M = 24 x 4
    assert entry_piece(96 * 9, cuda) * 96 * 9 <= DEVICE_ENTRIES < (entry_piece(96 * 9, cuda) + 1) * 96 * 9
    assert entry_piece(10**9, cuda) == RADIAL_PIECE


def test_pieces_of_edges_are_larger_off_the_cpu():
    """Loops over pieces of edges keep the CPU's cache-sized pieces on the CPU only: on a GPU
    (tens of millions of edges) each piece is at least DEVICE_PIECE edges, so launches stay few."""
    from e2former_calc.model.radial import DEVICE_PIECE, RADIAL_PIECE, edge_piece

    assert edge_piece(RADIAL_PIECE, torch.device("cpu")) == RADIAL_PIECE
    assert edge_piece(RADIAL_PIECE, torch.device("cuda")) == DEVICE_PIECE > 100 * RADIAL_PIECE
