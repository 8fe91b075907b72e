"""Path mixing on nodes equals channel mixing on every edge ("uvw" tensor products)."""

import torch
from conftest import cluster_graph

from e2former_calc.conv import EdgeUVWConvolution, PathMixing, Wigner6jConvolution


def test_factorised_convolution_then_mixing_equals_edge_uvw(float64):
    torch.manual_seed(0)
    conv = Wigner6jConvolution("0e + 1o + 2e", 4, (1, 2), "0e + 1o + 2e + 1e")
    mixing = PathMixing(conv.paths, "0e + 1o + 2e + 1e + 3o", 4, 5)
    graph = cluster_graph(n_atoms=15, seed=4)
    x = torch.randn(graph.n_nodes, 4, 9)
    w = torch.randn(graph.n_edges, 2, 4)
    expected = EdgeUVWConvolution(conv, mixing)(x, graph, w)
    got = mixing(conv(x, graph, w))
    assert got.shape == (graph.n_nodes, 5, 1 + 3 + 5 + 3 + 7)
    # the factorised form's float64 rounding on this cluster: 0.7-2.0e-12 over 12 seeds
    assert float((got - expected).abs().max() / expected.abs().max()) < 1e-11
    assert torch.equal(got[..., -7:], torch.zeros_like(got[..., -7:]))  # 3o: no path reaches it
