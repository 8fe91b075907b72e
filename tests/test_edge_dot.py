"""The attention logits' edge inner product, against the plain gathered expression (float64)."""

import torch

from e2former_calc.model.attention import edge_dot


def test_edge_dot_values_and_derivatives_of_two_orders():
    torch.manual_seed(0)
    n, e, h, d = 9, 40, 3, 4
    receivers, senders = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    q = torch.randn(n, h, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(n, h, d, dtype=torch.float64, requires_grad=True)
    plain = (q[receivers] * k[senders]).sum(-1)
    assert torch.allclose(edge_dot(q, k, receivers, senders), plain, rtol=1e-14, atol=0)
    assert torch.autograd.gradcheck(lambda a, b: edge_dot(a, b, receivers, senders), (q, k))
    assert torch.autograd.gradgradcheck(lambda a, b: edge_dot(a, b, receivers, senders), (q, k))


def test_edge_dot_in_pieces_against_whole_edges(monkeypatch):
    """Pieces of 4 edges (the last one short), forward and a backward pass without a graph,
    against the gathers of all edges at once, to 1e-14 in float64; q, k or both differentiable;
    second derivatives through the pieces (gradgradcheck)."""
    from e2former_calc.model import attention

    gen = torch.Generator().manual_seed(1)
    q = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    k = torch.randn(6, 2, 3, generator=gen, dtype=torch.float64)
    receivers = torch.randint(0, 6, (11,), generator=gen)
    senders = torch.randint(0, 6, (11,), generator=gen)
    probe = torch.randn(11, 2, generator=gen, dtype=torch.float64)
    plain = (q[receivers] * k[senders]).sum(-1)
    monkeypatch.setattr(attention, "EDGE_PIECE", 4)
    for wanted in ((True, True), (True, False), (False, True)):
        a, b = q.clone().requires_grad_(wanted[0]), k.clone().requires_grad_(wanted[1])
        out = edge_dot(a, b, receivers, senders)
        assert torch.allclose(out, plain, rtol=1e-14, atol=0)
        inputs = [t for t in (a, b) if t.requires_grad]
        grads = torch.autograd.grad((out * probe).sum(), inputs)
        a2, b2 = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        expected = torch.autograd.grad(((a2[receivers] * b2[senders]).sum(-1) * probe).sum(), (a2, b2))
        expected = [e for e, w in zip(expected, wanted) if w]
        for g, e in zip(grads, expected):
            assert torch.allclose(g, e, rtol=1e-14, atol=1e-15)
    a, b = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
    assert torch.autograd.gradgradcheck(lambda x, y: edge_dot(x, y, receivers, senders), (a, b))  # in pieces too
