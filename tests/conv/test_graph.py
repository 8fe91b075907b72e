import pytest
import torch
from conftest import jittered_lattice, periodic_graph

from e2former_calc.conv import ConvGraph


def test_local_origins_reproduce_every_edge_vector():
    positions, cell = jittered_lattice(4, seed=5)
    graph = periodic_graph(positions + 500.0, cell, cutoff=4.0)
    origins = graph.local_origins(5.0)
    # r_ij = a_u + t_i, with a_u the source entry of the edge and t_i = o - r_i
    top = origins.topology
    rebuilt = origins.source_coords[top.edge_source] + origins.target_coords[graph.receivers]
    assert torch.allclose(rebuilt, graph.vectors, atol=1e-12)
    assert float(origins.target_coords.abs().max()) <= 2.5 + 1e-9
    assert torch.equal(top.source_atoms[top.edge_source], graph.senders)


def test_bad_graphs_are_refused():
    positions = torch.zeros(3, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\[N, 3\]"):
        ConvGraph.build(positions[:, :2], torch.tensor([0]), torch.tensor([1]))
    with pytest.raises(IndexError, match="senders"):
        ConvGraph.build(positions, torch.tensor([0]), torch.tensor([3]))
    with pytest.raises(ValueError, match="shifts"):
        ConvGraph.build(positions, torch.tensor([0]), torch.tensor([1]), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="block_side"):
        ConvGraph.build(positions, torch.tensor([0]), torch.tensor([1])).local_origins(-1.0)


def test_moved_positions_share_the_topology_and_stay_exact():
    positions, cell = jittered_lattice(3, seed=6)
    graph = periodic_graph(positions, cell, cutoff=3.0)
    top = graph.topology(2.0)
    moved = graph.with_positions(graph.positions + 0.4 * torch.randn_like(graph.positions))
    assert moved.topology(2.0) is top
    origins = moved.local_origins(2.0)
    rebuilt = origins.source_coords[top.edge_source] + origins.target_coords[moved.receivers]
    assert torch.allclose(rebuilt, moved.vectors, atol=1e-12)
