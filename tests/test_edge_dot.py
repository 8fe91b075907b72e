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
