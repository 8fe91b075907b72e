"""The factorised (Wigner 6j) convolution against the edge-wise reference, and its symmetries."""

import numpy as np
import pytest
import torch
from conftest import cluster_graph, jittered_lattice, periodic_graph

from e2former_calc.conv import ConvGraph, ConvPlan, EdgeWiseConvolution, Wigner6jConvolution
from e2former_calc.so3 import FeatureLayout

pytestmark = pytest.mark.usefixtures("float64")

ALL_IN = "0e + 1o + 2e + 3o + 4e"
ALL_OUT = "0e + 1o + 2e + 3o + 4e + 0o + 1e + 2o + 3e + 4o"


def _inputs(conv, graph, dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(graph.n_nodes, conv.channels, conv.layout_in.dim, generator=gen, dtype=torch.float64)
    w = torch.randn(graph.n_edges, len(conv.filter_degrees), conv.channels, generator=gen, dtype=torch.float64)
    return x.to(dtype), w.to(dtype)


def _relative(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if a.numel() else 0.0


def _pair(irreps_in, filters, irreps_out, channels=3, block_side=3.0):
    factorised = Wigner6jConvolution(irreps_in, channels, filters, irreps_out, block_side=block_side)
    reference = EdgeWiseConvolution(irreps_in, channels, filters, irreps_out)
    return factorised, reference


def _outputs_and_gradients(conv, graph, x, w):
    positions = graph.positions.detach().clone().requires_grad_(True)
    graph = ConvGraph.build(positions, graph.receivers, graph.senders, graph.shifts)
    x = x.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    out = conv(x, graph, w)
    probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
    grads = torch.autograd.grad((out * probe).sum(), (positions, x, w), allow_unused=True, materialize_grads=True)
    return (out, *grads)


@pytest.mark.parametrize("filters", [(0,), (1,), (2,), (3,), (4,), (0, 1, 2, 3, 4)])
def test_factorised_equals_edgewise_in_float64_for_degrees_up_to_4(filters):
    factorised, reference = _pair(ALL_IN, filters, ALL_OUT)
    graph = cluster_graph(n_atoms=14, seed=sum(filters))
    x, w = _inputs(factorised, graph)
    got = _outputs_and_gradients(factorised, graph, x, w)
    expected = _outputs_and_gradients(reference, graph, x, w)
    for name, a, b in zip(("output", "d/dpositions", "d/dfeatures", "d/dweights"), got, expected):
        assert _relative(a, b) < 1e-10, name


def test_factorised_equals_edgewise_in_a_cell_shorter_than_the_cutoff():
    """A 2-atom triclinic cell of ~3 Å with a 5 Å cutoff: each atom sees its own images."""
    cell = np.array([[3.0, 0.0, 0.0], [0.8, 2.9, 0.0], [0.4, 0.5, 3.1]])
    graph = periodic_graph([[0.1, 0.2, 0.3], [1.6, 1.3, 1.5]], cell, cutoff=5.0)
    assert bool((graph.receivers == graph.senders).any()), "no self-image edges: the test lost its point"
    factorised, reference = _pair("0e + 1o + 2e", (1, 2), "0e + 1o + 2e + 1e")
    x, w = _inputs(factorised, graph)
    for a, b in zip(_outputs_and_gradients(factorised, graph, x, w), _outputs_and_gradients(reference, graph, x, w)):
        assert _relative(a, b) < 1e-10


@pytest.mark.parametrize("filters", [(1,), (1, 2)])
def test_float32_stays_within_1e5_of_float64_in_a_box_moved_1000_angstrom(filters):
    """Default settings, ~1,700 atoms, cutoff 5 Å, box translated by 1,000 Å in every axis.

    f = 1 runs its stages in float32 with blocks; f = 2 switches them to float64.
    """
    positions, cell = jittered_lattice(12, spacing=2.0, seed=1)
    graph64 = periodic_graph(positions + 1000.0, cell, cutoff=5.0)
    factorised = Wigner6jConvolution("0e + 1o + 2e", 4, filters, "0e + 1o + 2e")
    reference = EdgeWiseConvolution("0e + 1o + 2e", 4, filters, "0e + 1o + 2e")
    x, w = _inputs(factorised, graph64)
    expected = reference(x, graph64, w)
    got = factorised(x.float(), graph64, w.float())
    assert got.dtype == torch.float32
    stage_dtype, _ = factorised.resolve(torch.float32, float(graph64.lengths.max()))
    assert stage_dtype == (torch.float64 if 2 in filters else torch.float32)
    error = float((got.double() - expected).abs().max() / expected.pow(2).mean().sqrt())
    assert error < 1e-5


def test_a_float32_module_keeps_exact_float64_constants():
    """model.to(float32) must not round the coupling constants that float64 stages use."""
    factorised, reference = _pair("0e + 1o + 2e", (2,), "0e + 1o + 2e", block_side=100.0)
    factorised = factorised.float()
    assert factorised.source_coupling.dtype == torch.float64
    graph = cluster_graph(n_atoms=10, seed=2, offset=(60.0, 60.0, 60.0))
    x, w = _inputs(factorised, graph)
    assert _relative(factorised(x, graph, w), reference(x, graph, w)) < 1e-10


def test_explicit_float32_stages_with_a_global_origin_lose_precision_far_away():
    """The failure the local origins exist to prevent, so the test above can fail."""
    positions, cell = jittered_lattice(6, spacing=2.0, seed=1)
    graph = periodic_graph(positions + 1000.0, cell, cutoff=4.0)
    conv = Wigner6jConvolution("0e + 1o + 2e", 2, (2,), "0e + 1o + 2e", block_side=None, stage_dtype=torch.float32)
    x, w = _inputs(conv, graph)
    expected = EdgeWiseConvolution("0e + 1o + 2e", 2, (2,), "0e + 1o + 2e")(x, graph, w)
    error = float((conv(x.float(), graph, w.float()).double() - expected).abs().max() / expected.pow(2).mean().sqrt())
    assert error > 1e-3


def _transformed_graph(graph, matrix, translation):
    positions = graph.positions @ matrix.T + translation
    return ConvGraph.build(positions, graph.receivers, graph.senders, graph.shifts @ matrix.T)


@pytest.mark.parametrize("dtype,tolerance", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
@pytest.mark.parametrize("reflect", [False, True])
def test_rotation_and_reflection_equivariance(dtype, tolerance, reflect):
    from e3nn import o3

    conv = Wigner6jConvolution(
        "0e + 1o + 2e + 1e", 4, (1, 2, 3), "0e + 1o + 2e + 1e + 2o", block_side=3.0, stage_dtype=dtype
    )
    positions, cell = jittered_lattice(3, spacing=1.8, seed=2)
    graph = periodic_graph(positions, cell, cutoff=3.5)
    x, w = _inputs(conv, graph, dtype)
    torch.manual_seed(5)
    matrix = o3.rand_matrix(dtype=torch.float64)
    if reflect:
        matrix = -matrix
    moved = _transformed_graph(graph, matrix, torch.zeros(3, dtype=torch.float64))
    out = conv(x, graph, w)
    x_moved = x @ conv.layout_in.wigner_D(matrix).to(dtype).T
    out_moved = conv(x_moved, moved, w)
    D_paths = torch.block_diag(
        *[FeatureLayout(((p.l_out, p.parity),)).wigner_D(matrix) for p in conv.paths]
    ).to(dtype)
    assert _relative(out_moved, out @ D_paths.T) < tolerance


def test_invariance_to_translation_wrapping_and_block_side(float64):
    positions, cell = jittered_lattice(3, spacing=2.0, seed=3)
    graph = periodic_graph(positions, cell, cutoff=4.0)
    conv = Wigner6jConvolution("0e + 1o + 2e", 3, (1, 2), "0e + 1o + 2e", block_side=3.0)
    x, w = _inputs(conv, graph)
    out = conv(x, graph, w)

    shifted = _transformed_graph(graph, torch.eye(3), torch.tensor([123.4, -56.7, 8.9]))
    assert _relative(conv(x, shifted, w), out) < 1e-10

    # wrap: move atom 0 by a lattice vector; its edges' shifts compensate
    move = torch.from_numpy(cell[0])
    wrapped_positions = graph.positions.clone()
    wrapped_positions[0] += move
    shifts = graph.shifts.clone()
    shifts[graph.senders == 0] -= move
    shifts[graph.receivers == 0] += move
    wrapped = ConvGraph.build(wrapped_positions, graph.receivers, graph.senders, shifts)
    assert _relative(conv(x, wrapped, w), out) < 1e-10

    for side in (1.0, 7.0, 100.0, None):
        other = Wigner6jConvolution("0e + 1o + 2e", 3, (1, 2), "0e + 1o + 2e", block_side=side)
        assert _relative(other(x, graph, w), out) < 1e-10


def test_smaller_blocks_mean_more_source_entries_and_a_global_origin_fewest():
    positions, cell = jittered_lattice(6, spacing=2.0, seed=4)
    graph = periodic_graph(positions, cell, cutoff=4.0)
    entries = [ConvPlan.build(graph, side, 1).n_sources for side in (None, 12.0, 6.0, 3.0)]
    assert entries == sorted(entries) and entries[0] < entries[-1] <= graph.n_edges


def test_atom_without_neighbours_gets_zero_and_finite_gradients():
    graph = cluster_graph(n_atoms=6, spread=1.0, seed=1)
    far = torch.cat([graph.positions, torch.tensor([[50.0, 0.0, 0.0]], dtype=torch.float64)])
    graph = ConvGraph.build(far, graph.receivers, graph.senders)
    conv = Wigner6jConvolution("0e + 1o + 2e", 3, (1, 2), "0e + 1o + 2e")
    x, w = _inputs(conv, graph)
    out, d_pos, d_x, d_w = _outputs_and_gradients(conv, graph, x, w)
    assert torch.equal(out[-1], torch.zeros_like(out[-1]))
    assert all(bool(t.isfinite().all()) for t in (out, d_pos, d_x, d_w))


def test_graph_without_edges():
    graph = ConvGraph.build(
        torch.zeros(2, 3, dtype=torch.float64), torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long)
    )
    conv = Wigner6jConvolution("0e + 1o", 2, (1,), "0e + 1o")
    x, w = _inputs(conv, graph)
    assert torch.equal(conv(x, graph, w), torch.zeros(2, 2, 4, dtype=torch.float64))


def test_second_derivatives_match_the_reference():
    """Force training differentiates forces again: d/dx of (d out / d positions) must agree."""
    factorised, reference = _pair("0e + 1o + 2e", (1, 2), "0e + 1o + 2e")
    graph = cluster_graph(n_atoms=8, seed=9)

    def second(conv):
        positions = graph.positions.detach().clone().requires_grad_(True)
        g = ConvGraph.build(positions, graph.receivers, graph.senders)
        x, w = _inputs(conv, g)
        x.requires_grad_(True)
        w.requires_grad_(True)
        # edge weights that depend on the lengths too, as the model's radial weights do
        weights = w * torch.cos(g.lengths)[:, None, None]
        energy = conv(x, g, weights).pow(2).sum()
        (forces,) = torch.autograd.grad(energy, positions, create_graph=True)
        return torch.autograd.grad(forces.pow(2).sum(), (x, w, positions))

    for a, b in zip(second(factorised), second(reference)):
        assert _relative(a, b) < 1e-10


@pytest.mark.parametrize("periodic", [False, True], ids=["cluster", "periodic"])
def test_source_products_redone_in_the_backward_pass_give_the_numbers_of_keeping_them(periodic):
    """``recompute_products`` (several filter degrees: the edge stage aggregates column subsets of
    one product) against keeping the products: outputs, first derivatives and the derivative of a
    force-like first derivative, in the positions, the features and the weights, to 1e-12."""
    graph = periodic_graph(*jittered_lattice(2), cutoff=3.0) if periodic else cluster_graph(n_atoms=8, seed=9)

    def run(recompute):
        conv = Wigner6jConvolution("0e + 1o + 2e", 3, (0, 1, 2), "0e + 1o + 2e", block_side=3.0)
        conv.recompute_products = recompute
        positions = graph.positions.detach().clone().requires_grad_(True)
        g = ConvGraph.build(positions, graph.receivers, graph.senders, graph.shifts, graph.images)
        x, w = (t.requires_grad_(True) for t in _inputs(conv, g))
        weights = w * torch.cos(g.lengths)[:, None, None]  # depending on the lengths, as the model's do
        out = conv(x, g, weights)
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
        first = torch.autograd.grad((out * probe).sum(), (positions, x, w), create_graph=True)
        second = torch.autograd.grad(first[0].pow(2).sum(), (positions, x, w))
        return (out, *first, *second)

    for name, a, b in zip(("out", "d pos", "d x", "d w", "dd pos", "dd x", "dd w"), run(True), run(False)):
        assert _relative(a, b) < 1e-12, name
        assert b.abs().max() > 1e-6, name  # not a comparison of zeros


@pytest.mark.parametrize("recompute", [True, False], ids=["products-redone", "products-kept"])
@pytest.mark.parametrize("periodic", [False, True], ids=["cluster", "periodic"])
def test_head_weights_give_the_numbers_of_their_product(periodic, recompute):
    """``head_weights`` [E, H] (the attention's per-head factors) against passing the product
    ``w[e, f, c] = a[e, c // (C / H)] phi[e, f, c]``: outputs, first derivatives and the derivative
    of a force-like first derivative in the positions, features and both factors, to 1e-12
    (filter degrees 0, 1 and 2; the head weights a strided view, as the model's radial blocks can be)."""
    graph = periodic_graph(*jittered_lattice(2), cutoff=3.0) if periodic else cluster_graph(n_atoms=8, seed=9)
    heads, channels = 2, 4

    def run(factored):
        conv = Wigner6jConvolution("0e + 1o + 2e", channels, (0, 1, 2), "0e + 1o + 2e", block_side=3.0)
        conv.recompute_products = recompute
        positions = graph.positions.detach().clone().requires_grad_(True)
        g = ConvGraph.build(positions, graph.receivers, graph.senders, graph.shifts, graph.images)
        x, w = (t.requires_grad_(True) for t in _inputs(conv, g))
        gen = torch.Generator().manual_seed(5)
        a = torch.rand(g.n_edges, heads + 1, generator=gen, dtype=torch.float64).requires_grad_(True)
        alpha = (a * torch.sin(g.lengths)[:, None])[:, 1:]  # a strided view, depending on the lengths
        phi = w * torch.cos(g.lengths)[:, None, None]
        if factored:
            out = conv(x, g, phi, head_weights=alpha)
        else:
            spread = alpha.repeat_interleave(channels // heads, dim=1)  # [E, C]
            out = conv(x, g, phi * spread[:, None, :])
        probe = torch.randn(out.shape, generator=torch.Generator().manual_seed(7), dtype=out.dtype)
        first = torch.autograd.grad((out * probe).sum(), (positions, x, w, a), create_graph=True)
        second = torch.autograd.grad(first[0].pow(2).sum(), (positions, x, w, a))
        return (out, *first, *second)

    names = ("out", "d pos", "d x", "d w", "d heads", "dd pos", "dd x", "dd w", "dd heads")
    for name, a, b in zip(names, run(True), run(False)):
        assert _relative(a, b) < 1e-12, name
        assert b.abs().max() > 1e-6, name  # not a comparison of zeros


def test_bad_head_weights_are_named():
    conv = Wigner6jConvolution("0e + 1o", 4, (1,), "0e + 1o")
    graph = cluster_graph(n_atoms=4, seed=0)
    x, w = _inputs(conv, graph)
    for bad in (torch.ones(graph.n_edges, 3), torch.ones(graph.n_edges + 1, 2), torch.ones(graph.n_edges),
                torch.ones(graph.n_edges, 0)):
        with pytest.raises(ValueError, match="head weights"):
            conv(x, graph, w, head_weights=bad.double())


def test_bad_shapes_and_degrees_are_named():
    conv = Wigner6jConvolution("0e + 1o", 2, (1,), "0e + 1o")
    graph = cluster_graph(n_atoms=4, seed=0)
    x, w = _inputs(conv, graph)
    with pytest.raises(ValueError, match="node features"):
        conv(x[:, :1], graph, w)
    with pytest.raises(ValueError, match="edge weights"):
        conv(x, graph, w[:, :, :1])
    with pytest.raises(ValueError, match="0..4"):
        Wigner6jConvolution("0e + 5o", 2, (1,), "0e")
    with pytest.raises(ValueError, match="no coupling path"):
        Wigner6jConvolution("0e", 2, (1,), "0e")
    with pytest.raises(ValueError, match="block_side"):
        Wigner6jConvolution("0e", 2, (0,), "0e", block_side=-2.0)
    with pytest.raises(ValueError, match="stage_dtype"):
        Wigner6jConvolution("0e", 2, (0,), "0e", stage_dtype=torch.float16)
