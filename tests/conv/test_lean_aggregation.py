"""The lean edge stage (O(G E) indices, no [E, C, K] tensor) against the block-CSR reference."""

import pytest
import torch
from conftest import assert_aggregation_derivatives, periodic_graph
from torch.utils._python_dispatch import TorchDispatchMode

from e2former_calc.conv import aggregation
from e2former_calc.conv.aggregation import BlockCSRAggregation, EdgeAggregation, EdgeSum

@pytest.fixture(autouse=True)
def _leave_the_global_generator_alone():
    """These tests draw from their own generators; model initialisation draws from the global one,
    which other tests (e.g. test_mixing's unseeded inputs) must find as they left it."""
    with torch.random.fork_rng():
        yield


# (GROUP_ENTRIES, MIN_GROUP, MAX_GROUPS): one product for all channels; equal groups; uneven
# groups; one per channel; as few groups as MAX_GROUPS allows (C = 5: groups of 3 and 2)
GROUPINGS = [(2**20, 8, 4), (30, 2, 100), (44, 3, 100), (1, 1, 100), (1, 1, 2)]


@pytest.fixture(params=GROUPINGS, ids=["one-group", "equal-groups", "uneven-groups", "per-channel", "max-groups"])
def grouping(request, monkeypatch):
    monkeypatch.setattr(aggregation, "GROUP_ENTRIES", request.param[0])
    monkeypatch.setattr(aggregation, "MIN_GROUP", request.param[1])
    monkeypatch.setattr(aggregation, "MAX_GROUPS", request.param[2])
    return request.param


def _case(seed=0, n_sources=7, n_targets=6, n_edges=15, channels=5, width=3, sorted_targets=False):
    gen = torch.Generator().manual_seed(seed)
    sources = torch.randint(0, n_sources - 1, (n_edges,), generator=gen)  # the last source has no edge
    targets = torch.randint(0, n_targets - 1, (n_edges,), generator=gen)  # nor the last target
    sources[1], targets[1] = sources[0], targets[0]  # one (target, source) pair twice
    if sorted_targets:
        targets = targets.sort().values
    values = torch.randn(n_sources, channels, width, generator=gen, dtype=torch.float64)
    weights = torch.randn(n_edges, channels, generator=gen, dtype=torch.float64)
    target_values = torch.randn(n_targets, channels, width, generator=gen, dtype=torch.float64)
    return sources, targets, values, weights, target_values


def _relative(a, b):
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300)) if b.numel() else 0.0


def _derivatives(form, values, weights, target_values):
    """Outputs, first derivatives and second derivatives (through a loss of the first ones)."""
    values = values.clone().requires_grad_(True)
    weights = weights.clone().requires_grad_(True)
    target_values = target_values.clone().requires_grad_(True)
    out = form(values, weights)
    inner = form.edge_inner(values, target_values)
    probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
    first = torch.autograd.grad((out * probe).sum() + inner.pow(2).sum(), (values, weights, target_values),
                                create_graph=True)
    loss = sum((g * g.detach().sin()).sum() for g in first)
    second = torch.autograd.grad(loss, (values, weights, target_values))
    return (out, inner, *first, *second)


@pytest.mark.parametrize("sorted_targets", [False, True], ids=["unsorted", "sorted"])
def test_values_first_and_second_derivatives_equal_the_block_csr_reference(grouping, sorted_targets):
    sources, targets, values, weights, target_values = _case(sorted_targets=sorted_targets)
    lean = EdgeAggregation(sources, targets, 7, 6, 5)
    reference = BlockCSRAggregation(sources, targets, 7, 6, 5)
    if grouping[0] < 2**20:
        assert len(lean.groups()) > 1
    if grouping[2] == 2:  # MAX_GROUPS: two products for five channels, however small MIN_GROUP
        assert [size for _, size in lean.groups()] == [3, 2]
    names = ("out", "edge_inner", "d values", "d weights", "d target_values", "dd values", "dd weights", "dd targets")
    for name, a, b in zip(names, _derivatives(lean, values, weights, target_values),
                          _derivatives(reference, values, weights, target_values)):
        assert _relative(a, b) < 1e-12, name


def test_gradcheck_and_gradgradcheck(grouping):
    sources, targets, values, weights, target_values = _case(seed=1, n_edges=9, channels=4, width=2)
    lean = EdgeAggregation(sources, targets, 7, 6, 4)
    assert_aggregation_derivatives(lean, values, weights, target_values)


def _edge_sum_reference(targets, n_targets, weights, edge_values):
    messages = weights[:, :, None] * edge_values[:, None, :]  # the [E, C, K] tensor EdgeSum avoids
    return messages.new_zeros((n_targets,) + messages.shape[1:]).index_add(0, targets, messages)


@pytest.mark.parametrize("sorted_targets", [False, True], ids=["unsorted", "sorted"])
def test_edge_sum_equals_the_explicit_messages_with_derivatives(grouping, sorted_targets):
    _, targets, _, weights, _ = _case(seed=2, sorted_targets=sorted_targets)
    edge_values = torch.randn(len(targets), 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    edge_sum = EdgeSum(targets, 6, 5)
    results = []
    for form in (edge_sum, lambda w, y: _edge_sum_reference(targets, 6, w, y)):
        w, y = weights.clone().requires_grad_(True), edge_values.clone().requires_grad_(True)
        out = form(w, y)
        first = torch.autograd.grad((out * out.detach().cos()).sum(), (w, y), create_graph=True)
        second = torch.autograd.grad(sum((g * g.detach()).sum() for g in first), (w, y))
        results.append((out, *first, *second))
    for a, b in zip(*results):
        assert _relative(a, b) < 1e-12
    w, y = weights[:7].clone().requires_grad_(True), edge_values[:7].clone().requires_grad_(True)
    small = EdgeSum(targets[:7], 6, 5)
    assert torch.autograd.gradcheck(small, (w, y))
    assert torch.autograd.gradgradcheck(small, (w, y))


def test_no_edges_and_rows_without_edges():
    empty = torch.zeros(0, dtype=torch.long)
    lean = EdgeAggregation(empty, empty, 2, 3, 4)
    assert torch.equal(lean(torch.ones(2, 4, 5), torch.ones(0, 4)), torch.zeros(3, 4, 5))
    assert lean.edge_inner(torch.ones(2, 4, 5), torch.ones(3, 4, 5)).shape == (0, 4)
    assert torch.equal(EdgeSum(empty, 3, 4)(torch.ones(0, 4), torch.ones(0, 2)), torch.zeros(3, 4, 2))
    sources, targets, values, weights, _ = _case(seed=4)
    out = EdgeAggregation(sources, targets, 7, 6, 5)(values, weights)
    assert torch.equal(out[5], torch.zeros_like(out[5]))  # target 5 has no edge
    values.requires_grad_(True)
    (grad,) = torch.autograd.grad(EdgeAggregation(sources, targets, 7, 6, 5)(values, weights).sum(), values)
    assert torch.equal(grad[6], torch.zeros_like(grad[6]))  # neither has source 6


def test_shapes_are_checked():
    sources, targets, values, weights, _ = _case()
    lean = EdgeAggregation(sources, targets, 7, 6, 5)
    with pytest.raises(ValueError, match="weights"):
        lean(values, weights[:, :4])
    with pytest.raises(ValueError, match="one entry per edge"):
        EdgeAggregation(sources[:3], targets, 7, 6, 5)
    with pytest.raises(ValueError, match="edge_values"):
        EdgeSum(targets, 6, 5)(weights, torch.ones(3, 2))


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements of any tensor an operation returns."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor) and t.layout == torch.strided:
                self.largest = max(self.largest, t.numel())
        return out


def test_the_default_group_policy_runs_at_most_four_products_and_keeps_narrow_groups():
    """40,000 edges (2^20 / E = 26): C = 128 takes four groups of 32 (not five of 26), C = 24 one
    product; 200,000 edges (2^20 / E = 5): C = 24 takes groups of MIN_GROUP = 8."""
    gen = torch.Generator().manual_seed(7)
    sources, targets = torch.randint(0, 2000, (2, 40_000), generator=gen)
    assert [n for _, n in EdgeAggregation(sources, targets, 2000, 2000, 128).groups()] == [32] * 4
    assert EdgeAggregation(sources, targets, 2000, 2000, 24).groups() == [(0, 24)]
    sources, targets = torch.randint(0, 8000, (2, 200_000), generator=gen)
    assert [n for _, n in EdgeAggregation(sources, targets, 8000, 8000, 24).groups()] == [8] * 3


def test_index_arrays_are_o_of_e_and_no_edge_channel_component_tensor_is_made(monkeypatch):
    """A periodic box of 216 atoms, C = 32, K = 9: with groups of 8 channels no index array and
    no tensor of the forward and double-backward passes has E * C * K entries (it would be E * C
    for the indices of the block-CSR form)."""
    monkeypatch.setattr(aggregation, "GROUP_ENTRIES", 1)
    monkeypatch.setattr(aggregation, "MIN_GROUP", 8)
    positions = torch.rand(216, 3, generator=torch.Generator().manual_seed(5), dtype=torch.float64) * 13.0
    graph = periodic_graph(positions.numpy(), torch.eye(3).numpy() * 13.0, cutoff=4.0)
    n, e, c, k = graph.n_nodes, graph.n_edges, 32, 9
    assert e > 20 * n
    lean = EdgeAggregation(graph.senders, graph.receivers, n, n, c)
    block = BlockCSRAggregation(graph.senders, graph.receivers, n, n, c)
    assert lean.group_size == 8
    block_bytes = sum(t.untyped_storage().nbytes() for p in (block.forward_pattern, block.transpose_pattern)
                      for t in (p.crow_indices, p.col_indices, p.value_index))
    assert lean.index_bytes() < 8 * e * 8 * 6  # 8 channels per group, a few int32/int64 arrays
    assert lean.index_bytes() < block_bytes / 2
    gen = torch.Generator().manual_seed(6)
    values = torch.randn(n, c, k, generator=gen, requires_grad=True)
    weights = torch.randn(e, c, generator=gen, requires_grad=True)
    edge_values = torch.randn(e, k, generator=gen, requires_grad=True)
    edge_sum = EdgeSum(graph.receivers, n, c)
    with _LargestTensor() as mode:
        out = lean(values, weights) + edge_sum(weights, edge_values)
        first = torch.autograd.grad(out.pow(2).sum(), (values, weights, edge_values), create_graph=True)
        torch.autograd.grad(sum(g.pow(2).sum() for g in first), (values, weights, edge_values))
    assert mode.largest < e * c * k / 4, mode.largest
    assert mode.largest >= n * c * k  # the recorder works


def test_edge_degree_embedding_equals_the_explicit_messages():
    """The embedding through EdgeSum against the [E, C, D] messages it replaced, with forces and the
    gradient of a force loss, float64."""
    from e2former_calc.model import E2Former, E2FormerConfig
    from e2former_calc.so3 import spherical_harmonics

    config = E2FormerConfig(cutoff=4.0, channels=6, max_degree=2, num_layers=0, num_heads=2, radial_basis=4, radial_hidden=8,
                            species_features=3, average_neighbours=7.0)
    model = E2Former(config, (1, 8)).double()
    embedding = model.embedding
    positions = torch.rand(30, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64) * 8.0
    graph = periodic_graph(positions.numpy(), torch.eye(3).numpy() * 8.0, cutoff=4.0)
    species = torch.arange(30) % 2

    def explicit(graph, edges):
        phi = embedding.radial(edges).view(graph.n_edges, 3, config.channels) * edges.envelope[:, None, None]
        blocks = [phi[:, l, :, None] * spherical_harmonics(l, graph.vectors)[:, None, :] for l in range(3)]
        messages = torch.cat(blocks, dim=-1)
        h = messages.new_zeros(graph.n_nodes, *messages.shape[1:]).index_add(0, graph.receivers, messages)
        h = h / config.average_neighbours
        return torch.cat([h[:, :, :1] + embedding.species(species)[:, :, None], h[:, :, 1:]], dim=-1)

    results = []
    for form in (lambda *args: embedding(species, *args), explicit):
        pos = graph.positions.detach().clone().requires_grad_(True)
        g = type(graph).build(pos, graph.receivers, graph.senders, graph.shifts, graph.images)
        lengths = g.lengths
        basis = model.basis(lengths)
        from e2former_calc.model.radial import EdgeInputs, polynomial_envelope

        envelope = polynomial_envelope(lengths, config.cutoff, config.envelope_exponent)
        features = model.species_features(species)
        h = form(g, EdgeInputs(lengths, basis, features[g.receivers], features[g.senders], envelope))
        energy = (h * h.detach().cos()).sum()
        (forces,) = torch.autograd.grad(energy, pos, create_graph=True)
        weight = embedding.radial.net[0].weight
        (force_loss_grad,) = torch.autograd.grad(forces.pow(2).sum(), weight)
        results.append((h, forces, force_loss_grad))
    for a, b in zip(*results):
        assert _relative(a, b) < 1e-12


@pytest.mark.parametrize("columns", [None, [4, 0, 2]], ids=["all-columns", "some-columns"])
@pytest.mark.parametrize("sorted_targets", [False, True], ids=["unsorted", "sorted"])
def test_aggregation_of_products_equals_aggregating_the_products(grouping, sorted_targets, columns):
    """``of_products`` (products recomputed in the backward pass) against the same products made by
    differentiable operations and aggregated: values, first and second derivatives in x, the
    per-source coupling and the weights, to 1e-12 in float64; and the products are not kept."""
    sources, targets, _, weights, _ = _case(sorted_targets=sorted_targets)
    gen = torch.Generator().manual_seed(3)
    n_atoms, channels, dim, width = 4, 5, 3, 6
    rows = torch.randint(0, n_atoms, (7,), generator=gen)  # the atom of each of the 7 sources
    x0 = torch.randn(n_atoms, channels, dim, generator=gen, dtype=torch.float64)
    coupling0 = torch.randn(7, dim, width, generator=gen, dtype=torch.float64)
    columns = None if columns is None else torch.tensor(columns)
    form = EdgeAggregation(sources, targets, 7, 6, channels)

    def run(lean):
        x, coupling, w = (t.clone().requires_grad_(True) for t in (x0, coupling0, weights))
        if lean:
            out = form.of_products(x, rows, coupling, w, columns)
        else:
            products = torch.bmm(x.index_select(0, rows), coupling)
            out = form(products if columns is None else products.index_select(2, columns), w)
        probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        first = torch.autograd.grad((out * probe).sum(), (x, coupling, w), create_graph=True)
        second = torch.autograd.grad(sum((g * g.detach().sin()).sum() for g in first), (x, coupling, w))
        return (out, *first, *second)

    for name, a, b in zip(("out", "d x", "d coupling", "d weights", "dd x", "dd coupling", "dd weights"),
                          run(True), run(False)):
        assert _relative(a, b) < 1e-12, name

    kept = []
    x, coupling, w = (t.clone().requires_grad_(True) for t in (x0, coupling0, weights))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(tuple(t.shape)) or t, lambda t: t):
        form.of_products(x, rows, coupling, w, columns)
    products_shapes = {(7, channels, width), (7, channels, width if columns is None else len(columns))}
    assert kept and not products_shapes & set(kept) and (7, channels, dim) not in kept  # neither products nor x[rows]


@pytest.mark.parametrize("sorted_targets", [False, True], ids=["unsorted", "sorted"])
def test_aggregation_of_products_with_head_weights_keeps_the_factors_only(grouping, sorted_targets):
    """``of_products(..., head_weights=a)`` against aggregating with the product
    ``scale_by_heads(w, a)`` made by autograd: values, first and second derivatives in x, the
    coupling and both factors to 1e-12 in float64; the backward pass keeps one ``[E, C]`` tensor
    (the factor ``w``), not the product beside it."""
    channels, heads = 6, 3
    sources, targets, _, _, _ = _case(channels=channels, sorted_targets=sorted_targets)
    gen = torch.Generator().manual_seed(4)
    n_atoms, dim, width, n_edges = 4, 3, 5, sources.shape[0]
    rows = torch.randint(0, n_atoms, (7,), generator=gen)
    x0 = torch.randn(n_atoms, channels, dim, generator=gen, dtype=torch.float64)
    coupling0 = torch.randn(7, dim, width, generator=gen, dtype=torch.float64)
    w0 = torch.randn(n_edges, channels, generator=gen, dtype=torch.float64)
    a0 = torch.rand(n_edges, heads, generator=gen, dtype=torch.float64)
    form = EdgeAggregation(sources, targets, 7, 6, channels)

    def run(factored):
        x, coupling, w, a = (t.clone().requires_grad_(True) for t in (x0, coupling0, w0, a0))
        if factored:
            out = form.of_products(x, rows, coupling, w, head_weights=a)
        else:
            out = form(torch.bmm(x.index_select(0, rows), coupling), aggregation.scale_by_heads(w, a))
        probe = torch.linspace(-1, 1, out.numel(), dtype=out.dtype).view(out.shape)
        first = torch.autograd.grad((out * probe).sum(), (x, coupling, w, a), create_graph=True)
        second = torch.autograd.grad(sum((g * g.detach().sin()).sum() for g in first), (x, coupling, w, a))
        return (out, *first, *second)

    names = ("out", "d x", "d coupling", "d w", "d heads", "dd x", "dd coupling", "dd w", "dd heads")
    for name, a, b in zip(names, run(True), run(False)):
        assert _relative(a, b) < 1e-12, name
        assert b.abs().max() > 1e-6, name

    kept = []
    x, coupling, w, a = (t.clone().requires_grad_(True) for t in (x0, coupling0, w0, a0))
    with torch.autograd.graph.saved_tensors_hooks(lambda t: kept.append(tuple(t.shape)) or t, lambda t: t):
        form.of_products(x, rows, coupling, w, head_weights=a)
    assert kept.count((n_edges, channels)) == 1 and (n_edges, heads) in kept


def test_scale_by_heads_spreads_each_head_over_its_channels():
    weights = torch.arange(12.0).view(2, 6)
    heads = torch.tensor([[1.0, 10.0, 100.0], [2.0, 3.0, 4.0]])
    expected = torch.tensor([[0.0, 1, 20, 30, 400, 500], [12, 14, 24, 27, 40, 44]])
    assert torch.equal(aggregation.scale_by_heads(weights, heads), expected)
