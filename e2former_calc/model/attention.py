"""Equivariant attention whose values are aggregated by the Wigner 6j convolution."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..conv import ConvGraph, ConvPlan, PathMixing, Wigner6jConvolution, scatter_sum
from ..so3 import FeatureLayout
from .layers import DegreeLinear, degree_slices
from .radial import RadialNetwork, edge_piece


#: edges per piece of :func:`edge_dot` (its ``[piece, H, d]`` gathers) on the CPU, outside
#: autograd (other devices: :func:`~e2former_calc.model.radial.edge_piece`)
EDGE_PIECE = 16384


class _EdgeDot(torch.autograd.Function):
    """``out[e, h] = <q[receivers[e], h], k[senders[e], h]>``; only ``q`` and ``k`` are kept for
    the backward pass (not the two gathered ``[E, H, d]`` copies), whose gathers are redone
    there with differentiable operations, so that double backward works too. Both passes take
    the edges in pieces of :data:`EDGE_PIECE`, so no ``[E, H, d]`` temporary exists (beyond one
    piece's, where the backward pass builds a graph of the derivatives)."""

    @staticmethod
    def forward(ctx, q, k, receivers, senders):
        ctx.save_for_backward(q, k, receivers, senders)
        out = q.new_empty(receivers.shape[0], q.shape[1])
        piece = edge_piece(EDGE_PIECE, q.device)
        for start in range(0, receivers.shape[0], piece):
            rows = slice(start, start + piece)
            out[rows] = (q.index_select(0, receivers[rows]) * k.index_select(0, senders[rows])).sum(-1)
        return out

    @staticmethod
    def backward(ctx, grad):
        q, k, receivers, senders = ctx.saved_tensors
        grad_q = q.new_zeros(q.shape) if ctx.needs_input_grad[0] else None
        grad_k = k.new_zeros(k.shape) if ctx.needs_input_grad[1] else None
        piece = edge_piece(EDGE_PIECE, q.device)
        for start in range(0, receivers.shape[0], piece):  # out-of-place sums: differentiable
            rows = slice(start, start + piece)
            g = grad[rows, :, None]
            if grad_q is not None:
                grad_q = grad_q + scatter_sum(g * k.index_select(0, senders[rows]), receivers[rows], q.shape[0])
            if grad_k is not None:
                grad_k = grad_k + scatter_sum(g * q.index_select(0, receivers[rows]), senders[rows], k.shape[0])
        return grad_q, grad_k, None, None


def edge_dot(q: torch.Tensor, k: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor) -> torch.Tensor:
    """``[E, H]`` inner products ``<q_i, k_j>`` of each edge ``i <- j``, for ``q, k`` ``[N, H, d]``
    (differentiable to any order, storing ``O(N)`` for the backward pass instead of ``O(E)``)."""
    return _EdgeDot.apply(q, k, receivers, senders)


def smooth_softmax(logits: torch.Tensor, envelope: torch.Tensor, receivers: torch.Tensor, n_nodes: int) -> torch.Tensor:
    """Attention weights that vanish smoothly with the envelope, a lone neighbour included.

    ``alpha_ij = u_ij exp(l_ij) / (1 + sum_k u_ik exp(l_ik))``: a softmax over the neighbours and
    one "nobody" entry of logit 0, each neighbour weighted by its cutoff envelope ``u``. When the
    last neighbour of ``i`` leaves (``u -> 0``) its weight goes to zero with ``u``; an edge beyond
    the cutoff (``u = 0``) contributes exactly nothing, so extra pairs in a Verlet list change
    nothing. ``logits``: ``[E, H]``; ``envelope``: ``[E]``.
    """
    inside = envelope[:, None] > 0
    with torch.no_grad():  # a shift that cancels exactly; only for overflow safety
        shift = torch.zeros(n_nodes, logits.shape[1], dtype=logits.dtype, device=logits.device)
        if logits.numel():  # max(0, largest logit of an edge inside the cutoff)
            largest = torch.where(inside, logits, torch.full_like(logits, -torch.inf))
            shift = shift.scatter_reduce(0, receivers[:, None].expand_as(logits), largest, reduce="amax")
    # edges beyond the cutoff get exp(-inf) = 0, never 0 * inf; so do weights below the dtype's
    # smallest normal number (exp(shifted) < tiny, |alpha| < 1.2e-38 in float32): subnormal
    # numbers make the CPU's arithmetic on them, and on every product they enter, many times slower
    shifted = logits - shift[receivers]
    floor = math.log(torch.finfo(logits.dtype).tiny)
    shifted = torch.where(inside & (shifted > floor), shifted, torch.full_like(logits, -torch.inf))
    numerators = envelope[:, None] * torch.exp(shifted)
    denominators = torch.exp(-shift) + scatter_sum(numerators, receivers, n_nodes)
    return numerators / denominators[receivers]


class EquivariantAttention(nn.Module):
    """Multi-head attention over the neighbour graph, values through the Wigner 6j convolution.

    For edge ``i <- j`` and head ``h``: invariant queries ``q_i`` and keys ``k_j`` from all degrees
    of the node features; logit ``<q_ih, k_jh>/sqrt(d)`` plus a radial bias of
    ``(|r_ij|, Z_i, Z_j)``; weights ``alpha`` from :func:`smooth_softmax`. The convolution's
    per-edge, per-channel weight is ``alpha_ij,h(c) * phi_c,f(|r_ij|, Z_i, Z_j)``; its path
    outputs are mixed by a :class:`~e2former_calc.conv.PathMixing` on the nodes.

    ``[N, C, D] -> [N, C, D]``.
    """

    def __init__(self, config):
        super().__init__()
        c, lmax = config.channels, config.max_degree
        self.num_heads, self.head_dim, self.max_degree = config.num_heads, config.head_dim, lmax
        self.slices = degree_slices(lmax)
        self.invariant_map = DegreeLinear(lmax, c, c, bias=False)
        n_invariants = c * (lmax + 1)
        self.queries = nn.Sequential(nn.Linear(n_invariants, c), nn.SiLU(), nn.Linear(c, config.num_heads * config.head_dim))
        self.keys = nn.Sequential(nn.Linear(n_invariants, c), nn.SiLU(), nn.Linear(c, config.num_heads * config.head_dim))
        n_f = len(config.filter_degrees)
        self.radial = RadialNetwork(config.radial_basis, config.species_features, config.radial_hidden, config.num_heads + n_f * c)
        layout = FeatureLayout.spherical(lmax)
        self.convolution = Wigner6jConvolution(layout, c, config.filter_degrees, layout)
        self.mixing = PathMixing(self.convolution.paths, layout, c, c)

    def invariants(self, h: torch.Tensor) -> torch.Tensor:
        """``[N, C, D] -> [N, C (L_max + 1)]``: scalars and ``|z_l|^2 / (2l+1)`` of ``z = W h``."""
        z = self.invariant_map(h)
        parts = [z[:, :, 0]] + [z[:, :, s].pow(2).mean(-1) for s in self.slices[1:]]
        return torch.cat(parts, dim=-1)

    def forward(self, h, graph: ConvGraph, plan: ConvPlan, edges):
        """``edges``: the graph's :class:`~e2former_calc.model.radial.EdgeInputs`."""
        n_edges, c = graph.n_edges, h.shape[1]
        invariants = self.invariants(h)
        q = self.queries(invariants).view(-1, self.num_heads, self.head_dim)
        k = self.keys(invariants).view(-1, self.num_heads, self.head_dim)
        n_f = len(self.convolution.filter_degrees)
        bias, phi = self.radial(edges, (self.num_heads, n_f * c))  # [E, H], [E, n_f C]
        logits = edge_dot(q, k, graph.receivers, graph.senders) / math.sqrt(self.head_dim) + bias
        alpha = smooth_softmax(logits, edges.envelope, graph.receivers, graph.n_nodes)  # [E, H]
        # w[e, f, c] = alpha[e, head(c)] phi[e, f, c]: the convolution takes the two factors, so
        # that neither pass keeps an [E, C] copy of alpha nor (with recompute_products) the product
        return self.mixing(self.convolution(h, graph, phi.view(n_edges, n_f, c), plan, head_weights=alpha))
