import pytest
import torch
from conftest import cluster_graph, jittered_lattice, periodic_graph

from e2former_calc.conv import ConvGraph, ConvPlan, SpanningForest


def _rebuilt_vectors(plan, graph):
    source_coords, target_coords = plan.local_coordinates(graph)
    # r_ij = a_u + t_i, with a_u the source entry of the edge and t_i = o - r_i
    return source_coords[plan.edge_source] + target_coords[graph.receivers]


def test_local_origins_reproduce_every_edge_vector():
    positions, cell = jittered_lattice(4, seed=5)
    graph = periodic_graph(positions + 500.0, cell, cutoff=4.0)
    plan = ConvPlan.build(graph, 5.0, channels=3)
    assert torch.allclose(_rebuilt_vectors(plan, graph), graph.vectors, atol=1e-12)
    assert float(plan.local_coordinates(graph)[1].abs().max()) <= 2.5 + 1e-9
    assert torch.equal(plan.source_atoms[plan.edge_source], graph.senders)


def test_source_entries_are_the_distinct_sender_image_block_rows_in_their_sorted_order():
    """Against plain Python: one source entry per distinct (sender, image, target block), numbered
    in the rows' lexicographic order, negative images and blocks included."""
    positions, cell = jittered_lattice(4, seed=7)
    graph = periodic_graph(positions - 3.0, cell, cutoff=4.5)
    plan = ConvPlan.build(graph, 2.5, channels=2)
    blocks = torch.floor(graph.positions / 2.5).long()
    rows = [(int(j), *map(int, image), *map(int, blocks[i]))
            for i, j, image in zip(graph.receivers, graph.senders, graph.images)]
    distinct = sorted(set(rows))
    assert min(min(r[1:4]) for r in rows) < 0 and min(min(r[4:]) for r in rows) < 0
    assert plan.n_sources == len(distinct)
    assert plan.edge_source.tolist() == [distinct.index(r) for r in rows]
    assert torch.allclose(_rebuilt_vectors(plan, graph), graph.vectors, atol=1e-12)


def test_source_entries_are_keyed_on_integer_images_not_on_rounded_shifts():
    """Two images of one sender 0.001 Å apart (a tiny cell vector) stay two source entries."""
    positions = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    shifts = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, 1e-3]], dtype=torch.float64)
    images = torch.tensor([[0, 0, 0], [0, 0, 1]])
    graph = ConvGraph.build(positions, torch.tensor([0, 0]), torch.tensor([1, 1]), shifts, images)
    plan = ConvPlan.build(graph, 10.0, channels=1)
    assert plan.n_sources == 2
    assert torch.allclose(_rebuilt_vectors(plan, graph), graph.vectors, atol=1e-14)


def test_bad_graphs_are_refused():
    positions = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        ConvGraph.build(positions[:, :2], torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(IndexError, match="senders"):
        ConvGraph.build(positions, torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="shifts"):
        ConvGraph.build(positions, torch.tensor([0]), torch.tensor([1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="block_side"):
        ConvPlan.build(ConvGraph.build(positions, torch.tensor([0]), torch.tensor([1])), -1.0, 1)


def test_a_plan_serves_moved_positions_exactly_and_refuses_other_edges():
    positions, cell = jittered_lattice(3, seed=6)
    graph = periodic_graph(positions, cell, cutoff=3.0)
    plan = ConvPlan.build(graph, 2.0, channels=2)
    moved = ConvGraph.build(graph.positions + 0.4 * torch.randn_like(graph.positions), graph.receivers, graph.senders,
                            graph.shifts, graph.images)
    assert torch.allclose(_rebuilt_vectors(plan, moved), moved.vectors, atol=1e-12)
    fewer = ConvGraph.build(graph.positions, graph.receivers[1:], graph.senders[1:], graph.shifts[1:])
    with pytest.raises(ValueError, match="plan was built for"):
        plan.local_coordinates(fewer)


@pytest.mark.parametrize("structure", ["cluster", "periodic"])
def test_spanning_forest_rebuilds_coordinates_consistent_with_every_pair(structure):
    """p_j + s_e - p_i = r_e for every pair; s_e = 0 where the pairs are those of positions
    (a cluster, ghost-atom style), a lattice vector for wrap-around pairs of a periodic cell."""
    if structure == "cluster":
        graph = cluster_graph(n_atoms=20, cutoff=3.0, seed=3, offset=(300.0, -20.0, 7.0))
    else:
        positions, cell = jittered_lattice(3, seed=2)
        graph = periodic_graph(positions, cell, cutoff=3.0)
    forest = SpanningForest.build(graph.receivers, graph.senders, graph.n_nodes, graph.vectors)
    rebuilt = ConvGraph.from_edge_vectors(graph.vectors, forest)
    assert torch.equal(rebuilt.vectors, graph.vectors)
    consistent = rebuilt.positions[rebuilt.senders] + rebuilt.shifts - rebuilt.positions[rebuilt.receivers]
    assert torch.allclose(consistent, graph.vectors, atol=1e-12, rtol=0)
    # the rebuilt coordinates are the true ones up to one translation per connected component
    shifted = forest.images[:, 0] != 0
    assert torch.equal(shifted, graph.images.abs().sum(1) != 0) or structure == "periodic"
    if structure == "cluster":
        assert not bool(shifted.any())
        assert torch.allclose(rebuilt.shifts, torch.zeros_like(rebuilt.shifts), atol=1e-12)


def test_spanning_forest_of_several_components_and_lone_nodes():
    positions = torch.tensor([[0.0, 0, 0], [1.0, 0, 0], [2.0, 0.5, 0], [10.0, 0, 0], [11.0, 0, 0], [30.0, 0, 0]],
                             dtype=torch.float64)
    receivers = torch.tensor([0, 1, 1, 2, 3, 4])
    senders = torch.tensor([1, 0, 2, 1, 4, 3])
    graph = ConvGraph.build(positions, receivers, senders)
    forest = SpanningForest.build(receivers, senders, 6, graph.vectors)
    p = forest.node_coordinates(graph.vectors)
    for component in ([0, 1, 2], [3, 4], [5]):
        expected = positions[component] - positions[component[0]]
        assert torch.allclose(p[component], expected, atol=1e-14)


def test_coordinates_from_pair_vectors_are_differentiable():
    graph = cluster_graph(n_atoms=10, cutoff=3.0, seed=4)
    forest = SpanningForest.build(graph.receivers, graph.senders, graph.n_nodes, graph.vectors)
    vectors = graph.vectors.detach().requires_grad_(True)
    torch.autograd.gradcheck(lambda v: forest.node_coordinates(v).pow(2).sum(), (vectors,))
