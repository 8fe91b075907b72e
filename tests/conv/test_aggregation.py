"""The edge stage, lean (default) and block-CSR (reference) forms: sums over edges with derivatives of
any order. tests/conv/test_lean_aggregation.py compares the two forms to 1e-12."""

import pytest
import torch
from conftest import assert_aggregation_derivatives

from e2former_calc.conv import aggregation
from e2former_calc.conv.aggregation import BlockCSRAggregation, EdgeAggregation


def _case(seed=0, n_sources=5, n_targets=4, n_edges=11, channels=3, width=2, form=EdgeAggregation):
    gen = torch.Generator().manual_seed(seed)
    values = torch.randn(n_sources, channels, width, generator=gen, dtype=torch.float64)
    weights = torch.randn(n_edges, channels, generator=gen, dtype=torch.float64)
    sources = torch.randint(0, n_sources, (n_edges,), generator=gen)
    targets = torch.randint(0, n_targets, (n_edges,), generator=gen)
    plan = form(sources, targets, n_sources, n_targets, channels)
    return values, weights, sources, targets, plan


def test_matches_the_edge_by_edge_sum_including_repeated_pairs():
    values, weights, sources, targets, plan = _case()
    sources[1], targets[1] = sources[0], targets[0]  # the same (target, source) pair twice
    plan = EdgeAggregation(sources, targets, 5, 4, 3)
    dense = torch.zeros(4, 3, 2, dtype=torch.float64)
    inner = torch.zeros(len(sources), 3, dtype=torch.float64)
    other = torch.randn(4, 3, 2, dtype=torch.float64)
    for e in range(len(sources)):
        dense[targets[e]] += weights[e, :, None] * values[sources[e]]
        inner[e] = (values[sources[e]] * other[targets[e]]).sum(-1)
    assert torch.allclose(plan(values, weights), dense, atol=1e-14)
    assert torch.allclose(plan.edge_inner(values, other), inner, atol=1e-14)


def test_first_and_second_derivatives():
    values, weights, _, _, plan = _case(seed=1)
    values.requires_grad_(True)
    weights.requires_grad_(True)
    assert torch.autograd.gradcheck(plan, (values, weights))
    assert torch.autograd.gradgradcheck(plan, (values, weights))
    other = torch.randn(4, 3, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(plan.edge_inner, (values, other))
    assert torch.autograd.gradgradcheck(plan.edge_inner, (values, other))


def test_no_edges_and_targets_without_edges():
    plan = EdgeAggregation(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2, 3, 4)
    assert torch.equal(plan(torch.ones(2, 4, 5), torch.ones(0, 4)), torch.zeros(3, 4, 5))
    values, weights, sources, targets, plan = _case(seed=3, n_targets=9)
    out = plan(values, weights)
    lonely = sorted(set(range(9)) - set(targets.tolist()))
    assert lonely and torch.equal(out[lonely], torch.zeros_like(out[lonely]))


def test_block_csr_reference_matches_the_edge_by_edge_sum_with_derivatives():
    """The reference form (own random numbers: the global generator is left as it was)."""
    gen = torch.Generator().manual_seed(5)
    values, weights, sources, targets, plan = _case(seed=5, form=BlockCSRAggregation)
    sources[1], targets[1] = sources[0], targets[0]
    plan = BlockCSRAggregation(sources, targets, 5, 4, 3)
    other = torch.randn(4, 3, 2, generator=gen, dtype=torch.float64)
    dense = torch.zeros(4, 3, 2, dtype=torch.float64)
    inner = torch.zeros(len(sources), 3, dtype=torch.float64)
    for e in range(len(sources)):
        dense[targets[e]] += weights[e, :, None] * values[sources[e]]
        inner[e] = (values[sources[e]] * other[targets[e]]).sum(-1)
    assert torch.allclose(plan(values, weights), dense, atol=1e-14)
    assert torch.allclose(plan.edge_inner(values, other), inner, atol=1e-14)
    assert_aggregation_derivatives(plan, values, weights, other)
    empty = BlockCSRAggregation(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 2, 3, 4)
    assert torch.equal(empty(torch.ones(2, 4, 5), torch.ones(0, 4)), torch.zeros(3, 4, 5))


def test_scatter_sum_backends_give_identical_numbers():
    pytest.importorskip("torch_scatter")
    gen = torch.Generator().manual_seed(2)
    src = torch.randn(500, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    index = torch.randint(0, 40, (500,), generator=gen)
    results = {}
    previous = aggregation.scatter_backend()
    try:
        for backend in ("native", "torch_scatter"):
            aggregation.set_scatter_backend(backend)
            out = aggregation.scatter_sum(src, index, 40)
            (grad,) = torch.autograd.grad(out.pow(2).sum(), src)
            into = aggregation.scatter_sum_into(torch.ones(40, 4, 3, dtype=torch.float64),
                                                src.detach().transpose(1, 2), index)
            results[backend] = (out, grad, into)
    finally:
        aggregation.set_scatter_backend(previous)
    for a, b in zip(results["native"], results["torch_scatter"]):
        assert torch.equal(a, b)


def test_scatter_sum_into_adds_what_scatter_sum_makes():
    """In place, into a tensor that already holds numbers, from a strided source, in pieces."""
    gen = torch.Generator().manual_seed(3)
    src = torch.randn(500, 4, 3, generator=gen, dtype=torch.float64).transpose(1, 2)  # strided
    index = torch.randint(0, 40, (500,), generator=gen)
    start = torch.randn(40, 3, 4, generator=gen, dtype=torch.float64)
    out = start.clone()
    for rows in (slice(0, 123), slice(123, 500)):
        assert aggregation.scatter_sum_into(out, src[rows], index[rows]) is out
    torch.testing.assert_close(out, start + aggregation.scatter_sum(src, index, 40), rtol=1e-14, atol=1e-14)


def test_unknown_backend_is_refused():
    with pytest.raises(ValueError, match="scatter backend"):
        aggregation.set_scatter_backend("cuda-magic")
