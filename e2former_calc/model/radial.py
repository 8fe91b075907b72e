"""Functions of the interatomic distance: Bessel basis, smooth cutoff envelope, radial networks."""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import nn

from ..conv.aggregation import scatter_sum_into


def polynomial_envelope(r: torch.Tensor, cutoff: float, p: int) -> torch.Tensor:
    """``u(d) = 1 - (p+1)(p+2)/2 d^p + p(p+2) d^(p+1) - p(p+1)/2 d^(p+2)`` for ``d = r/cutoff < 1``,
    else 0. ``u(1) = u'(1) = u''(1) = 0``: edge weights are C² where a neighbour leaves."""
    d = r / cutoff
    u = 1 - (p + 1) * (p + 2) / 2 * d**p + p * (p + 2) * d ** (p + 1) - p * (p + 1) / 2 * d ** (p + 2)
    return torch.where(d < 1, u, torch.zeros_like(u))


class BesselBasis(nn.Module):
    """``b_n(r) = sqrt(2/cutoff) sin(n pi r / cutoff) / r``, ``n = 1..num``: ``[E] -> [E, num]``."""

    def __init__(self, cutoff: float, num: int):
        super().__init__()
        self.cutoff = cutoff
        self.register_buffer("frequencies", torch.arange(1, num + 1, dtype=torch.float64) * math.pi / cutoff)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.unsqueeze(-1)
        return math.sqrt(2 / self.cutoff) * torch.sin(self.frequencies.to(r.dtype) * r) / r

    def value_and_slope(self, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``b_n(r)`` and ``db_n/dr = sqrt(2/cutoff) w_n cos(w_n r) / r - b_n(r) / r``, both
        ``[E, num]`` (``w_n = n pi / cutoff``)."""
        r = r.unsqueeze(-1)
        phase = self.frequencies.to(r.dtype) * r
        inverse = r.reciprocal()
        value = math.sqrt(2 / self.cutoff) * torch.sin(phase) * inverse
        slope = (math.sqrt(2 / self.cutoff) * self.frequencies.to(r.dtype) * torch.cos(phase) - value) * inverse
        return value, slope


class FirstOrderEdges(NamedTuple):
    """What the radial networks of the first-order path make their inputs from, piece by piece:
    ``bessel`` (the :class:`BesselBasis`), ``features [N, S]`` the species features of the nodes
    (no gradient), ``receivers``, ``senders`` ``[E]``."""

    bessel: BesselBasis
    features: torch.Tensor
    receivers: torch.Tensor
    senders: torch.Tensor


class EdgeInputs(NamedTuple):
    """The per-edge inputs that the embedding and every block share, ``E`` edges.

    ``lengths [E]``: ``|r_ij|`` in the network's dtype; ``basis [E, B]``: its Bessel basis;
    ``species_i``, ``species_j`` ``[E, S]``: the species features of the receiver and the sender;
    ``envelope [E]``: the cutoff envelope ``u(r)``. ``first_order``: given only where the caller
    takes nothing beyond first derivatives with frozen weights (see :class:`RadialNetwork`); the
    radial networks then make the basis, its slope ``d basis / d r`` and the species features of a
    piece of edges at a time from it, and ``basis``, ``species_i``, ``species_j`` are None (no
    ``[E, B]`` or ``[E, S]`` tensor lives through the forward pass).
    """

    lengths: torch.Tensor
    basis: torch.Tensor | None
    species_i: torch.Tensor | None
    species_j: torch.Tensor | None
    envelope: torch.Tensor
    first_order: FirstOrderEdges | None = None

    def select(self, edges: torch.Tensor) -> "EdgeInputs":
        """The inputs of the edges ``edges`` (indices), in that order."""
        first = self.first_order
        if first is not None:
            first = first._replace(receivers=first.receivers.index_select(0, edges),
                                   senders=first.senders.index_select(0, edges))
        def pick(t):
            return None if t is None else t.index_select(0, edges)

        return EdgeInputs(pick(self.lengths), pick(self.basis), pick(self.species_i), pick(self.species_j),
                          pick(self.envelope), first)


class RadialNetwork(nn.Module):
    """MLP of (Bessel basis of ``|r_ij|``, species features of ``Z_i`` and ``Z_j``): ``[E, out]``.

    First derivatives only (the edge inputs carry ``first_order``, the weights are frozen): the
    network's output ``phi(r)`` and its derivative ``dphi/dr`` are computed together in the
    forward pass (forward-mode: the tangent ``dz/dr`` is carried through each layer,
    ``silu'(z) = s (1 + z (1 - s))``, ``s = sigmoid(z)``), and the backward pass keeps only
    ``dphi/dr`` ``[E, out]``: ``dL/dr = sum_k dL/dphi_k dphi_k/dr``. The hidden ``[E, hidden]``
    activations and the basis are not kept. Exact to rounding; a second derivative through this
    path raises an error (the caller asked for first derivatives only). Otherwise (training,
    second derivatives) it is an ordinary module.
    """

    def __init__(self, num_basis: int, species_features: int, hidden: int, out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(num_basis + 2 * species_features, hidden),
            nn.SiLU(),
            nn.Linear(hidden, hidden),
            nn.SiLU(),
            nn.Linear(hidden, out),
        )

    def forward(self, edges: EdgeInputs, sizes: tuple[int, ...] | None = None):
        """``[E, out]`` from the edges' :class:`EdgeInputs`; with ``sizes`` (summing to ``out``) the
        output's consecutive column blocks as separate tensors ``[E, size]``, whose gradients the
        backward pass takes one by one (no ``[E, out]`` gradient is assembled from them)."""
        if sizes is not None and sum(sizes) != self.net[-1].out_features:
            raise ValueError(f"sizes {tuple(sizes)} do not add up to the {self.net[-1].out_features} outputs")
        if edges.first_order is not None:
            self._check_frozen(edges.first_order)
            parts = _RadialWithSlope.apply(edges.lengths, edges.first_order, self.net,
                                           (self.net[-1].out_features,) if sizes is None else tuple(sizes))
            return parts[0] if sizes is None else parts
        out = self.net(torch.cat([edges.basis, edges.species_i, edges.species_j], dim=-1))
        return out if sizes is None else out.split(list(sizes), dim=-1)

    def summed_over_edges(self, edges: EdgeInputs, values: torch.Tensor, sizes: tuple[int, ...], n_nodes: int) -> torch.Tensor:
        """``out[i, c, m] = sum_{e: receivers[e] = i} phi_b(m)[e, c] values[e, m]``, ``[n_nodes, C, M]``.

        This network's output ``phi [E, nb C]`` is read as ``nb = len(sizes)`` blocks ``phi_b``
        of ``C`` channels; block ``b`` weights the next ``sizes[b]`` of the ``M = sum(sizes)``
        columns of the per-edge ``values [E, M]`` (the embedding: ``phi_l`` times the ``2l + 1``
        components of ``u Y_l``). ``receivers`` are those of ``edges.first_order``.

        First derivatives only (``edges.first_order``, frozen weights): neither ``phi`` nor
        ``dphi/dr`` is kept for the backward pass, which makes both again, a piece of edges at a
        time, and returns ``dL/dr`` and ``dL/dvalues``; the pass keeps ``values`` and the lengths.
        No ``[E, C, M]`` message exists beyond a piece's (:func:`entry_piece`). Exact to rounding;
        a second derivative raises an error.
        """
        first = edges.first_order
        if first is None:
            raise ValueError("summed_over_edges is the first-derivatives-only path: the edge inputs need first_order")
        sizes = tuple(int(n) for n in sizes)
        out_features, n_edges = self.net[-1].out_features, edges.lengths.shape[0]
        if not sizes or min(sizes) < 1 or out_features % len(sizes):
            raise ValueError(f"sizes must give, for each of the blocks that divide this network's {out_features} "
                             f"outputs, how many value columns it weights (at least one); got {sizes}")
        if values.shape != (n_edges, sum(sizes)) or first.receivers.shape != (n_edges,):
            raise ValueError(f"values must have shape [{n_edges}, {sum(sizes)}] (edges, sum of sizes {sizes}) with "
                             f"one receiver per edge; got values {tuple(values.shape)}, receivers "
                             f"{tuple(first.receivers.shape)}")
        if values.dtype != edges.lengths.dtype:
            raise ValueError(f"values ({values.dtype}) must have the lengths' dtype ({edges.lengths.dtype})")
        self._check_frozen(first)
        return _RadialEdgeSum.apply(edges.lengths, values, first, self.net, sizes, n_nodes)


    def _check_frozen(self, first_order: FirstOrderEdges) -> None:
        if first_order.features.requires_grad or any(p.requires_grad for p in self.parameters()):
            raise ValueError("first_order edge inputs are for frozen weights and species features: "
                             "only the lengths may carry gradients")


def value_and_slope(net: nn.Sequential, inputs: torch.Tensor, slope: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An MLP ``Linear, SiLU, ..., Linear`` and its derivative along one direction of its input:
    ``net(x)`` and ``J(x) t`` for ``inputs x [E, in]`` and ``slope t [E, k]``, the direction's
    first ``k`` components (the rest are zero). Both ``[E, out]``. For use without gradients
    (inside :class:`_RadialWithSlope`): it works in place."""
    first = net[0]
    if not isinstance(first, nn.Linear):
        raise TypeError(f"value_and_slope needs a Linear first layer, not {type(first).__name__}")
    value = first(inputs)
    tangent = slope @ first.weight[:, : slope.shape[1]].T
    for layer in net[1:]:
        if isinstance(layer, nn.SiLU):  # in place: no [E, hidden] temporary beyond two
            s = torch.sigmoid(value)
            slope_of_silu = torch.sub(1, s).mul_(value).add_(1).mul_(s)
            tangent.mul_(slope_of_silu)
            del slope_of_silu
            value.mul_(s)
            del s
        elif isinstance(layer, nn.Linear):
            value = layer(value)
            tangent = tangent @ layer.weight.T
        else:
            raise TypeError(f"value_and_slope handles Linear and SiLU layers, not {type(layer).__name__}")
    return value, tangent


#: edges per piece of :class:`_RadialWithSlope` on the CPU: its ``[piece, hidden]`` temporaries
#: stay in the core's cache (2 MiB of L2 here), and no ``[E, hidden]`` one exists
RADIAL_PIECE = 4096
#: edges per piece on other devices: pieces large enough that kernel launches stay few (a GPU's
#: million-atom graph has tens of millions of edges), small enough to bound the temporaries
DEVICE_PIECE = 2**20


def edge_piece(cpu_piece: int, device: torch.device) -> int:
    """Edges per piece of a loop over edges outside autograd: ``cpu_piece`` on the CPU, at least
    :data:`DEVICE_PIECE` elsewhere."""
    return cpu_piece if device.type == "cpu" else max(cpu_piece, DEVICE_PIECE)


#: entries of the largest per-piece temporary ``[piece, width]`` off the CPU (512 MiB in float32)
DEVICE_ENTRIES = 2**27


def entry_piece(width: int, device: torch.device) -> int:
    """Edges per piece of a loop whose temporaries have ``width`` entries per edge (``C M``
    messages): :data:`RADIAL_PIECE` on the CPU; elsewhere :func:`edge_piece`'s, fewer where
    ``width`` is wide, so that each temporary holds at most :data:`DEVICE_ENTRIES` entries (never
    fewer than ``RADIAL_PIECE`` edges; :class:`_RadialEdgeSum`'s backward pass holds three)."""
    if device.type == "cpu":
        return RADIAL_PIECE
    return max(RADIAL_PIECE, min(edge_piece(RADIAL_PIECE, device), DEVICE_ENTRIES // max(width, 1)))


class _RadialWithSlope(torch.autograd.Function):
    """``phi(r)`` of a frozen MLP whose backward pass keeps ``dphi/dr`` ``[E, out]`` only.

    Inputs: ``lengths [E]`` (the only differentiable input), the :class:`FirstOrderEdges` the MLP's
    input (Bessel basis of the lengths, species features of receiver and sender) and the basis's
    slope are made from, the MLP, the sizes of the output blocks returned as separate tensors.
    Both passes run in pieces of edges (:func:`edge_piece`: :data:`RADIAL_PIECE` on the CPU; every
    operation is row-wise: the same numbers to rounding), so no ``[E, hidden]`` temporary exists
    and the backward pass makes no ``[E, out]`` product.
    """

    @staticmethod
    def forward(ctx, lengths, first_order, net, sizes):
        n_edges, piece = lengths.shape[0], edge_piece(RADIAL_PIECE, lengths.device)
        parts = [lengths.new_empty(n_edges, size) for size in sizes]
        slope = lengths.new_empty(n_edges, sum(sizes))
        for start in range(0, n_edges, piece):
            rows = slice(start, start + piece)
            inputs, basis_slope = _network_inputs(first_order, lengths, rows)
            value, slope[rows] = value_and_slope(net, inputs, basis_slope)
            column = 0
            for part in parts:
                part[rows] = value[:, column : column + part.shape[1]]
                column += part.shape[1]
        ctx.save_for_backward(slope)
        ctx.sizes = sizes
        ctx.set_materialize_grads(False)  # a block nobody used gets None, not zeros to multiply
        return tuple(parts)

    @staticmethod
    def backward(ctx, *grads):
        _refuse_second_derivative()
        (slope,) = ctx.saved_tensors
        grad_lengths = slope.new_zeros(slope.shape[0])  # sum_k dL/dphi_k dphi_k/dr, a piece at a time
        piece = edge_piece(RADIAL_PIECE, slope.device)
        for start in range(0, slope.shape[0], piece):
            rows, column = slice(start, start + piece), 0
            for grad, size in zip(grads, ctx.sizes):
                if grad is not None:
                    grad_lengths[rows] += (grad[rows] * slope[rows, column : column + size]).sum(-1)
                column += size
        return grad_lengths, None, None, None


def _refuse_second_derivative() -> None:
    """The first-order path keeps no graph of its derivatives: say so instead of a silent zero."""
    if torch.is_grad_enabled():
        raise RuntimeError("a second derivative through a radial network evaluated for first derivatives "
                           "only: evaluate the model without first_derivatives_only (ForceField does so "
                           "with create_graph=True)")


def _network_inputs(first_order: FirstOrderEdges, lengths: torch.Tensor, rows: slice):
    """The MLP input ``[piece, B + 2S]`` of the edges ``rows`` and the basis's slope ``[piece, B]``."""
    basis, basis_slope = first_order.bessel.value_and_slope(lengths[rows])
    features = first_order.features
    inputs = torch.cat([basis, features.index_select(0, first_order.receivers[rows]),
                        features.index_select(0, first_order.senders[rows])], dim=-1)
    return inputs, basis_slope


class _RadialEdgeSum(torch.autograd.Function):
    """``out[i, c, m] = sum_{e -> i} phi_b(m)[e, c] values[e, m]`` for a frozen MLP ``phi``
    whose backward pass makes ``phi`` and ``dphi/dr`` again instead of keeping them
    (:meth:`RadialNetwork.summed_over_edges`). Both passes take the edges in pieces
    (:func:`entry_piece`) and work with the channels last (``[piece, M, C]``: ``phi_b(m)`` is a
    row gather of ``phi [piece, nb, C]``); the backward pass, per edge, with
    ``g = dL/dout[receivers[e]]`` ``[C, M]`` and ``m`` in block ``b(m)``::

        dL/dvalues[e, m] = sum_c phi_b(m)[e, c] g[c, m]
        dL/dr[e]         = sum_m values[e, m] sum_c dphi_b(m)[e, c]/dr g[c, m]
    """

    @staticmethod
    def forward(ctx, lengths, values, first_order, net, sizes, n_nodes):
        channels = net[-1].out_features // len(sizes)
        n_edges, width = lengths.shape[0], values.shape[1]
        blocks = _block_of_each_column(sizes, lengths.device)
        piece = entry_piece(channels * width, lengths.device)
        out = values.new_zeros(n_nodes, width, channels)  # channels last, transposed at the end
        for start in range(0, n_edges, piece):
            rows = slice(start, start + piece)
            inputs, _ = _network_inputs(first_order, lengths, rows)
            messages = net(inputs).view(-1, len(sizes), channels).index_select(1, blocks)  # [piece, M, C]
            scatter_sum_into(out, messages.mul_(values[rows, :, None]), first_order.receivers[rows])
        ctx.save_for_backward(lengths, values)
        ctx.first_order, ctx.net, ctx.sizes, ctx.channels = first_order, net, sizes, channels
        ctx.set_materialize_grads(False)
        return out.transpose(1, 2).contiguous()

    @staticmethod
    def backward(ctx, grad):
        _refuse_second_derivative()
        need_lengths, need_values = ctx.needs_input_grad[:2]
        if grad is None or not (need_lengths or need_values):
            return None, None, None, None, None, None
        lengths, values = ctx.saved_tensors
        first_order, net, channels, n_blocks = ctx.first_order, ctx.net, ctx.channels, len(ctx.sizes)
        blocks = _block_of_each_column(ctx.sizes, lengths.device)
        grad = grad.transpose(1, 2).contiguous()  # [N, M, C]
        grad_lengths = lengths.new_empty(lengths.shape) if need_lengths else None
        grad_values = values.new_empty(values.shape) if need_values else None
        piece = entry_piece(channels * values.shape[1], lengths.device)
        for start in range(0, lengths.shape[0], piece):
            rows = slice(start, start + piece)
            inputs, basis_slope = _network_inputs(first_order, lengths, rows)
            if need_lengths:
                phi, slope = value_and_slope(net, inputs, basis_slope)
            else:
                phi = net(inputs)
            g = grad.index_select(0, first_order.receivers[rows])  # [piece, M, C]
            if need_values:
                grad_values[rows] = (phi.view(-1, n_blocks, channels).index_select(1, blocks) * g).sum(-1)
            if need_lengths:
                g.mul_(slope.view(-1, n_blocks, channels).index_select(1, blocks))
                grad_lengths[rows] = (g.sum(-1) * values[rows]).sum(-1)
        return grad_lengths, grad_values, None, None, None, None


def _block_of_each_column(sizes: tuple[int, ...], device) -> torch.Tensor:
    """``[sum(sizes)]`` int64: the block ``b`` of each column, for blocks of ``sizes`` columns
    (made on the device from Python numbers: no copy from the host, no synchronisation)."""
    return torch.cat([torch.full((n,), b, dtype=torch.long, device=device) for b, n in enumerate(sizes)])
