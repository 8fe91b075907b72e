"""The attention weights ``alpha_ij = u_ij exp(l_ij) / (1 + sum_k u_ik exp(l_ik))`` (smooth_softmax)."""

import torch

from e2former_calc.model.attention import smooth_softmax


def _formula(logits, envelope, receivers, n_nodes):
    numerators = envelope[:, None] * torch.exp(logits)
    denominators = 1 + torch.zeros(n_nodes, logits.shape[1], dtype=logits.dtype).index_add(0, receivers, numerators)
    return numerators / denominators[receivers]


def test_the_weights_are_the_formula_and_vanish_beyond_the_cutoff():
    """float64, moderate logits: the formula to 1e-14 (its shift cancels), derivatives in the
    logits and the envelope by gradcheck; an edge beyond the cutoff (u = 0) and the lone
    neighbour of node 2 at the cutoff get exactly 0."""
    gen = torch.Generator().manual_seed(0)
    receivers = torch.tensor([0, 0, 0, 1, 1, 2])
    logits = torch.randn(6, 3, generator=gen, dtype=torch.float64) * 3
    envelope = torch.tensor([1.0, 0.7, 0.0, 0.2, 0.9, 0.0], dtype=torch.float64)
    alpha = smooth_softmax(logits, envelope, receivers, 3)
    torch.testing.assert_close(alpha, _formula(logits, envelope, receivers, 3), rtol=1e-14, atol=1e-14)
    assert torch.equal(alpha[[2, 5]], torch.zeros(2, 3, dtype=torch.float64))
    inside = envelope.clone()
    inside[[2, 5]] = 0.3  # gradcheck away from the kink of u = 0
    assert torch.autograd.gradcheck(lambda l, u: smooth_softmax(l, u, receivers, 3),
                                    (logits.clone().requires_grad_(True), inside.requires_grad_(True)))


def test_no_subnormal_weight_and_no_overflow():
    """A weight below the dtype's smallest normal number is exactly 0 (subnormal numbers slow every
    product they enter many times over on a CPU): in float32 a logit 95 below its neighbour's
    (exp(-95) = 5.5e-42) gives 0, in float64 the formula; logits of 1000 give finite weights; the
    gradients stay finite."""
    receivers = torch.tensor([0, 0, 1, 1])
    envelope = torch.tensor([1.0, 1.0, 0.5, 1.0])
    for dtype in (torch.float32, torch.float64):
        logits = torch.tensor([[0.0], [-95.0], [1000.0], [999.0]], dtype=dtype, requires_grad=True)
        alpha = smooth_softmax(logits, envelope.to(dtype), receivers, 2)
        tiny = torch.finfo(dtype).tiny
        assert not ((alpha != 0) & (alpha.abs() < tiny)).any(), alpha
        assert torch.isfinite(alpha).all()
        (grad,) = torch.autograd.grad(alpha.sum(), logits)
        assert torch.isfinite(grad).all()
        if dtype == torch.float32:
            assert alpha[1, 0] == 0
        else:
            expected = torch.exp(torch.tensor(-95.0, dtype=dtype)) / (1 + 1 + torch.exp(torch.tensor(-95.0, dtype=dtype)))
            torch.testing.assert_close(alpha[1, 0], expected, rtol=1e-14, atol=0)
        torch.testing.assert_close(alpha[2:].sum(), torch.tensor(1.0, dtype=dtype), rtol=1e-6, atol=0)
