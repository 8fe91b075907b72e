"""The Wigner 6j convolution: all tensor products on nodes, a scalar-weighted sum on edges.

With the addition theorem and recoupling (:mod:`e2former_calc.so3.coupling`), for any origin
``o``, source coordinates ``a_j = r_j + s - o`` and target coordinates ``t_i = o - r_i``::

    m_i^(L) = sum_{lam, k} c[f, lam] W_k [ (sum_j w'_ij P_j^(lam, k)) (x) S_{f-lam}(t_i) ]^(L)

    P_j^(lam, k) = [x_j (x) S_lam(a_j)]^(k)      one tensor product per source entry
    w'_ij        = w_ij / |r_ij|^f                a scalar per edge and channel

1. per source entry: ``P`` -- done once per distinct (atom, image, target block);
2. per edge: ``Q_i = sum_j w'_ij P_j`` -- no Clebsch-Gordan work, one sparse-dense product
   (:class:`~e2former_calc.conv.aggregation.EdgeAggregation`);
3. per target: one tensor product of ``Q_i`` with ``S_{f-lam}(t_i)``.

Each stage is a batched matrix product with a constant coupling tensor assembled at
construction: ``P = x_j @ (S(a_j) . C_source)`` and ``m_i = Q_i @ (S(t_i) . C_target[f])``.
Components ``(l_in, lam, k)`` that feed no requested output are never computed.
"""

from __future__ import annotations

import contextlib

import torch

from ..so3.coupling import addition_coefficient, recoupling_coefficients, wigner_3j
from ..so3.solid_harmonics import solid_harmonics
from .aggregation import check_head_weights, scale_by_heads
from .base import Convolution
from .graph import ConvGraph
from .plan import ConvPlan

#: With float32 stages: blocks of this many times the cutoff (the longest edge if the graph does
#: not state its cutoff). From ``benchmarks/conv_precision.py``: float32 error <= 1e-5 for f <= 1.
FLOAT32_BLOCKS_PER_CUTOFF = 2.0
#: With float64 stages: blocks of this side (Å). Float64 needs no small blocks; they only keep the
#: error bounded however far from the origin the atoms are.
FLOAT64_BLOCK_SIDE = 100.0

_ZERO = 1e-12


class _DivideByLengthPower(torch.autograd.Function):
    """``w' = w / |r|^f``, ``[E, C]`` from ``w [E, C]`` and ``|r| [E]``, keeping ``w'`` (which the
    edge stage keeps anyway) and ``|r|`` for the backward pass instead of ``w``:
    ``dL/dw = dL/dw' / |r|^f`` and ``dL/d|r| = -(f / |r|) sum_c dL/dw'_c w'_c``. The backward pass
    is made of differentiable operations: derivatives of every order."""

    @staticmethod
    def forward(ctx, weights, lengths, f):
        out = weights * lengths.pow(-f).unsqueeze(-1)
        ctx.f = f
        ctx.save_for_backward(out, lengths)
        return out

    @staticmethod
    def backward(ctx, grad):
        out, lengths = ctx.saved_tensors
        grad_weights = grad * lengths.pow(-ctx.f).unsqueeze(-1) if ctx.needs_input_grad[0] else None
        grad_lengths = (grad * out).sum(-1) * (-ctx.f / lengths) if ctx.needs_input_grad[1] else None
        return grad_weights, grad_lengths, None


class Wigner6jConvolution(Convolution):
    """The factorised (Wigner 6j) form of :class:`~e2former_calc.conv.base.Convolution`.

    Same arguments, same outputs, to rounding, as
    :class:`~e2former_calc.conv.edgewise.EdgeWiseConvolution`, plus:

    Args:
        block_side: side in Å of the cubic blocks whose centres serve as local origins; smaller
            is more precise in float32 and costs more source tensor products per atom
            (``docs/convolution.md`` has the table). ``"auto"`` (default):
            ``FLOAT32_BLOCKS_PER_CUTOFF`` cutoffs with float32 stages, ``FLOAT64_BLOCK_SIDE``
            with float64 stages. None: one origin at 0 (imprecise far from it; benchmarks only).
        stage_dtype: dtype of the three stages. ``"auto"`` (default): float64 when the features
            are float64 or a filter degree is 2 or more (float32 would need blocks so small that
            float64 is faster, see the precision benchmark), else the features' dtype. The output
            always has the features' dtype.

    ``recompute_products`` (default False; :func:`~e2former_calc.model.recompute.set_recompute`
    sets it): the source products ``P = x[rows] @ coupling`` ``[U, C, K]`` are not kept for the
    backward pass; the edge stage's backward pass redoes them
    (:meth:`~e2former_calc.conv.aggregation.EdgeAggregation.of_products`): less memory, one more
    batched product in the backward pass, the same numbers and derivatives of every order.
    """

    def __init__(
        self, irreps_in, channels: int, filter_degrees, irreps_out, block_side="auto", stage_dtype="auto"
    ):
        super().__init__(irreps_in, channels, filter_degrees, irreps_out)
        if block_side not in ("auto", None) and not float(block_side) > 0:
            raise ValueError(f"block_side must be 'auto', None or a positive length in Å, got {block_side!r}")
        if stage_dtype not in ("auto", torch.float32, torch.float64):
            raise ValueError(f"stage_dtype must be 'auto', torch.float32 or torch.float64, got {stage_dtype!r}")
        self.block_side = block_side if block_side in ("auto", None) else float(block_side)
        self.stage_dtype = stage_dtype
        self.recompute_products = False
        self.max_lam = max(self.filter_degrees)
        in_slices = self.layout_in.slices()

        # terms[f] = [(path number, path, lam, k, coefficient c[f,lam] W_k)]
        terms = {f: [] for f in self.filter_degrees}
        for n, path in enumerate(self.paths):
            for lam in range(path.f + 1):
                mu = path.f - lam
                for k, w_k in recoupling_coefficients(path.l_in, lam, mu, path.f, path.l_out).items():
                    if abs(w_k) > _ZERO:
                        terms[path.f].append((n, path, lam, k, addition_coefficient(path.f, lam) * w_k))

        # components (input irrep, lam, k) of P, in a fixed order, and their slices
        components = sorted({(p.input, lam, k) for f in terms for _, p, lam, k, _ in terms[f]})
        comp_slice, start = {}, 0
        for comp in components:
            comp_slice[comp] = slice(start, start + 2 * comp[2] + 1)
            start += 2 * comp[2] + 1
        n_comp = start

        # stage 1: P[u, c, K] = x[u, c, :] @ (sum_s S(a_u)[s] C_source[s, :, K])
        source = torch.zeros((self.max_lam + 1) ** 2, self.layout_in.dim, n_comp, dtype=torch.float64)
        for i, lam, k in components:
            l_in = self.layout_in.irreps[i][0]
            lam_slice = slice(lam**2, (lam + 1) ** 2)
            source[lam_slice, in_slices[i], comp_slice[(i, lam, k)]] = wigner_3j(l_in, lam, k).permute(1, 0, 2)
        self.register_buffer("source_coupling", source, persistent=False)

        # stage 3, per f: out[n, c, :] = Q_f[n, c, :] @ (sum_b S(t_n)[b] C_target_f[b, :, :])
        path_start, start = [], 0
        for p in self.paths:
            path_start.append(start)
            start += p.dim
        for f_index, f in enumerate(self.filter_degrees):
            f_comps = sorted({(p.input, lam, k) for _, p, lam, k, _ in terms[f]})
            columns = torch.cat([torch.arange(n_comp)[comp_slice[c]] for c in f_comps])
            local, pos = {}, 0
            for c in f_comps:
                local[c] = slice(pos, pos + 2 * c[2] + 1)
                pos += 2 * c[2] + 1
            f_paths = [n for n, p in enumerate(self.paths) if p.f == f]
            out_offset = path_start[f_paths[0]]
            out_dim = sum(self.paths[n].dim for n in f_paths)
            target = torch.zeros((f + 1) ** 2, pos, out_dim, dtype=torch.float64)
            for n, p, lam, k, coeff in terms[f]:
                mu = f - lam
                out = slice(path_start[n] - out_offset, path_start[n] - out_offset + p.dim)
                target[mu**2 : (mu + 1) ** 2, local[(p.input, lam, k)], out] += (
                    coeff * wigner_3j(k, mu, p.l_out).permute(1, 0, 2)
                )
            self.register_buffer(f"component_index_{f_index}", columns, persistent=False)
            self.register_buffer(f"target_coupling_{f_index}", target, persistent=False)
        # float64 masters: module.to(float32) must not round the constants of float64 stages
        self._float64_constants = {
            name: buffer.clone() for name, buffer in self._buffers.items() if buffer.is_floating_point()
        }

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        for name, master in self._float64_constants.items():  # back to exact float64, on the new device
            self._buffers[name] = master.to(self._buffers[name].device)
        return self

    def resolve(self, dtype: torch.dtype, cutoff: float) -> tuple[torch.dtype, float | None]:
        """The stage dtype and block side (Å, or None for one origin) for features of ``dtype`` on a
        graph of this ``cutoff`` (Å)."""
        stage = self.stage_dtype
        if stage == "auto":
            stage = torch.float64 if dtype == torch.float64 or max(self.filter_degrees) >= 2 else dtype
        side = self.block_side
        if side == "auto":
            side = FLOAT64_BLOCK_SIDE if stage == torch.float64 else FLOAT32_BLOCKS_PER_CUTOFF * cutoff
        return stage, side

    def plan(self, graph: ConvGraph, dtype: torch.dtype, cutoff: float | None = None) -> ConvPlan:
        """The :class:`~e2former_calc.conv.plan.ConvPlan` this convolution uses on ``graph`` for
        features of ``dtype``; ``cutoff`` (Å) of the neighbour list, None: the longest edge."""
        if cutoff is None:
            cutoff = float(graph.lengths.detach().max()) if graph.n_edges else 1.0
        return ConvPlan.build(graph, self.resolve(dtype, cutoff)[1], self.channels)

    def forward(self, x: torch.Tensor, graph: ConvGraph, edge_weights: torch.Tensor,
                plan: ConvPlan | None = None, head_weights: torch.Tensor | None = None) -> torch.Tensor:
        """As :class:`~e2former_calc.conv.base.Convolution`; ``plan`` from :meth:`plan` (made on the
        spot when None: keep it when the same edges are evaluated again).

        ``head_weights`` ``[E, H]`` (``H`` dividing ``C``; None: all ones): per-head factors of the
        edge weights, ``w[e, f, c] = head_weights[e, c // (C / H)] edge_weights[e, f, c]`` (attention
        weights times radial functions). The same numbers as passing that product; with
        ``recompute_products`` the product ``[E, C]`` is then not kept for the backward pass (its
        two factors are)."""
        self.check_inputs(x, graph, edge_weights)
        if head_weights is not None:
            check_head_weights(head_weights, graph.n_edges, self.channels)
        out_dtype = x.dtype
        dtype, block_side = self.resolve(x.dtype, 1.0)
        if plan is None:
            plan = self.plan(graph, x.dtype)
        elif plan.channels != self.channels or (self.block_side != "auto" and plan.block_side != block_side):
            raise ValueError(f"the plan is for {plan.channels} channels and blocks of {plan.block_side} Å; this "
                             f"convolution has {self.channels} channels and blocks of {block_side} Å")
        x, edge_weights = x.to(dtype), edge_weights.to(dtype)
        if head_weights is not None:
            head_weights = head_weights.to(dtype)
        source_coords, target_coords = plan.local_coordinates(graph)
        n_nodes = graph.n_nodes

        # stage 1: source tensor products, once per (atom, image, target block)
        s_source = solid_harmonics(self.max_lam, source_coords.to(dtype))  # [U, (lmax+1)^2]
        source = self.source_coupling.to(dtype)
        source_coupling = (s_source @ source.flatten(1)).view(-1, *source.shape[1:])  # [U, dim_in, K]
        recompute = self.recompute_products and torch.is_grad_enabled()
        with torch.no_grad() if recompute else contextlib.nullcontext():
            p = torch.bmm(x.index_select(0, plan.source_atoms), source_coupling)  # [U, C, K]

        s_target = solid_harmonics(self.max_lam, target_coords.to(dtype))  # [N, (fmax+1)^2]
        lengths = graph.lengths.to(dtype)  # [E]
        outputs = []
        for f_index, f in enumerate(self.filter_degrees):
            columns = getattr(self, f"component_index_{f_index}")
            target = getattr(self, f"target_coupling_{f_index}").to(dtype)
            # stage 2: scalar-weighted sum over edges, w' = w / |r|^f
            weights = edge_weights[:, f_index, :]  # [E, C]
            if f:  # (no multiplication by 1 for f = 0: the backward pass would keep a copy of w)
                weights = _DivideByLengthPower.apply(weights, lengths, f)
            selected = None if columns.numel() == p.shape[-1] else columns
            if recompute:  # P kept by no one, nor the weights: the edge stage's backward pass redoes them
                q = plan.aggregation.of_products(x, plan.source_atoms, source_coupling, weights, selected, p,
                                                 head_weights)
            else:
                if head_weights is not None:
                    weights = scale_by_heads(weights, head_weights)
                q = plan.aggregation(p if selected is None else p.index_select(2, selected), weights)  # [N, C, K_f]
            # stage 3: target tensor products
            coupling = (s_target[:, : (f + 1) ** 2] @ target.flatten(1)).view(n_nodes, *target.shape[1:])
            outputs.append(torch.bmm(q, coupling))  # [N, C, dim of f's paths]
        return torch.cat(outputs, dim=-1).to(out_dtype)
