"""The edge stage of a convolution: per-channel weighted sums over edges, as sparse products.

The only work the Wigner 6j convolution does per edge is

    out[t, c, :] = sum_{e : target[e] = t}  w[e, c] * values[source[e], c, :]

For every channel this is a sparse matrix (targets x sources, one entry per edge) times a dense
one. Laid out block-diagonally (row ``t*C + c``, column ``s*C + c``) one CSR sparse-dense product
(``torch.sparse``; MKL on CPU, cuSPARSE on GPU) does all channels in ``values``' natural
``[n, C, K]`` layout without materialising ``[E, C, K]`` messages, but its index arrays have
``E * C`` entries. :class:`EdgeAggregation` (the default) takes the channels in groups of ``G``
per product (:data:`GROUP_ENTRIES`, :data:`MIN_GROUP`): every group of one size shares one
pattern, so its index arrays have ``O(G E)`` entries; :class:`BlockCSRAggregation`, all channels
in one product, is kept as the reference.

Derivatives: ``d values = A(w)^T @ d out`` is the same product with the transposed structure,
and ``d w[e, c] = <values[source[e], c], d out[target[e], c]>`` is a sampled dense-dense product
on the pattern of ``A`` (:meth:`EdgeAggregation.edge_inner`). These are the three faces of one
trilinear form, and the derivatives of each face are again faces of it, so gradients of any
order work (forces, and the gradient of a force loss). :class:`EdgeSum` is the same for per-edge
values shared by all channels (the edge-degree embedding's spherical harmonics).

:func:`scatter_sum` (plain sums over an index, used by the edge-wise reference and the model)
runs on native torch (``index_add``) or, when it is installed, on torch-scatter;
``E2FORMER_SCATTER=native`` or :func:`set_scatter_backend` force one. Both give the same numbers.
"""

from __future__ import annotations

import os
import warnings

import torch

from . import triton_edge

try:  # optional accelerator of scatter_sum
    import torch_scatter
except ImportError:  # pragma: no cover - depends on the environment
    torch_scatter = None

_BACKENDS = ("native", "torch_scatter")


def _default_backend() -> str:
    requested = os.environ.get("E2FORMER_SCATTER", "auto")
    if requested == "auto":
        return "torch_scatter" if torch_scatter is not None else "native"
    if requested not in _BACKENDS:
        raise ValueError(f"E2FORMER_SCATTER must be one of auto, {', '.join(_BACKENDS)}; got {requested!r}")
    return requested


_backend = _default_backend()


def set_scatter_backend(name: str) -> None:
    """Choose ``"native"`` (``index_add``) or ``"torch_scatter"`` for :func:`scatter_sum`."""
    global _backend
    if name not in _BACKENDS:
        raise ValueError(f"scatter backend must be one of {_BACKENDS}, got {name!r}")
    if name == "torch_scatter" and torch_scatter is None:
        raise ImportError("torch-scatter is not installed (pip install e2former-calc[scatter])")
    _backend = name


def scatter_backend() -> str:
    """The scatter backend in use."""
    return _backend


def scatter_sum(src: torch.Tensor, index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """``out[t] = sum_{e: index[e] = t} src[e]`` along the first axis (differentiable)."""
    if _backend == "torch_scatter":
        return torch_scatter.scatter(src, index, dim=0, dim_size=dim_size, reduce="sum")
    return src.new_zeros((dim_size,) + src.shape[1:]).index_add(0, index, src)


def scatter_sum_into(out: torch.Tensor, src: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """``out[t] += sum_{e: index[e] = t} src[e]`` in place (for loops over pieces of edges outside
    autograd); the numbers of :func:`scatter_sum` with the same backend. Returns ``out``."""
    if _backend == "torch_scatter":
        return torch_scatter.scatter(src, index, dim=0, out=out, reduce="sum")
    return out.index_add_(0, index, src)


#: The lean edge stage takes the channels in groups of ``G`` per sparse product:
#: ``G = clamp(max(GROUP_ENTRIES // E, ceil(C / MAX_GROUPS)), MIN_GROUP, C)``. A small graph needs
#: one product per operation (``G = C``); a large one keeps index arrays of ``O(G E)`` with
#: ``G = max(MIN_GROUP, ceil(C / MAX_GROUPS))``: a quarter of the ``C E`` entries of one product for
#: wide features, a fixed ``MIN_GROUP E`` for narrow ones.
GROUP_ENTRIES = 2**20
#: Smallest group. Smaller groups hold smaller index arrays (about ``24 G`` bytes per edge) but
#: read ``values`` and the weights in shorter contiguous runs: on this project's CPU (emt-cu, 4,000
#: atoms, ``C = 24``, energy+forces) ``G = 6`` cost 4% more time than one group, ``G = 8`` 0.6%.
MIN_GROUP = 8
#: Most products per operation. Every product reads its own slice of the weights and writes its own
#: slice of the output, which costs more than the cache the smaller slices save: at ``C = 128``
#: (1,728 atoms, K = 80, f = 1, forward and backward, one thread) groups of 32 took 0.83 of the time
#: of groups of 8, at f = 2 the same (``benchmarks/conv_groups.py``). The price is memory: index
#: arrays of about ``25 G`` bytes per edge (815 against 229 there): for a large graph about ``6 C``,
#: 1.6 times the ``[E, C]`` float32 weights. With ``C <= 4 MIN_GROUP`` (the shipped potentials)
#: nothing changes.
MAX_GROUPS = 4

# the three slots of a trilinear edge form, in the order its operands are passed
_SLOTS = ("edge", "source", "target")


def _csr(crow: torch.Tensor, col: torch.Tensor, values: torch.Tensor, shape) -> torch.Tensor:
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, shape, check_invariants=False)


def _sorted_order(keys: torch.Tensor) -> torch.Tensor | None:
    """A stable permutation that sorts ``keys``; None when they are sorted already."""
    if keys.numel() < 2 or bool((keys[1:] >= keys[:-1]).all()):
        return None
    return torch.argsort(keys, stable=True)


def _index_dtype(largest: int) -> torch.dtype:
    return torch.int32 if largest < 2**31 - 1 else torch.int64


def scale_by_heads(weights: torch.Tensor, head_weights: torch.Tensor) -> torch.Tensor:
    """``w[e, c] = head_weights[e, c // (C / H)] * weights[e, c]``: per-head weights ``[E, H]``
    spread over the ``C / H`` consecutive channels of each head, times ``weights`` ``[E, C]``."""
    heads = head_weights.shape[1]
    return (head_weights.unsqueeze(-1) * weights.unflatten(1, (heads, -1))).flatten(1)


def check_head_weights(head_weights: torch.Tensor, n_edges: int, channels: int) -> None:
    """A clear error unless ``head_weights`` is ``[n_edges, H]`` with ``H`` dividing ``channels``."""
    if (head_weights.ndim != 2 or head_weights.shape[0] != n_edges or head_weights.shape[1] == 0
            or channels % head_weights.shape[1]):
        raise ValueError(f"head weights must have shape [{n_edges}, H] with H dividing the {channels} channels, "
                         f"got {tuple(head_weights.shape)}")


class _Rows:
    """Entries sorted by row (``rows`` non-decreasing, ``n_rows`` rows) laid out for a group of
    ``G`` channels: CSR row ``r * G + c`` holds the entries of row ``r`` for channel ``c``."""

    def __init__(self, rows: torch.Tensor, n_rows: int):
        self.rows, self.n_rows = rows, n_rows
        self.counts = torch.bincount(rows, minlength=n_rows) if rows.numel() else rows.new_zeros(n_rows)
        self.start = torch.cumsum(self.counts, 0) - self.counts

    def positions(self, group: int) -> torch.Tensor:
        """``[n, G]`` int64: position of (entry, channel) among the stored values."""
        channel = torch.arange(group, device=self.rows.device)
        start = self.start.index_select(0, self.rows)
        first = start * (group - 1) + torch.arange(self.rows.shape[0], device=self.rows.device)  # start*G + rank
        return first[:, None] + channel[None, :] * self.counts.index_select(0, self.rows)[:, None]

    def row_pointers(self, group: int, dtype) -> torch.Tensor:
        """``[n_rows * G + 1]``."""
        crow = torch.zeros(self.n_rows * group + 1, dtype=torch.int64, device=self.rows.device)
        crow[1:] = torch.cumsum(self.counts.repeat_interleave(group), 0)
        return crow.to(dtype)


class _LeanEdgeForm:
    """Common part of :class:`EdgeAggregation` and :class:`EdgeSum`: a trilinear form over the
    edges whose sparse products use index arrays of ``O(G E)``.

    Tensors keep their natural layout (``[rows, C, K]``); per-edge tensors are in *canonical*
    order: the edges stably sorted by target (the given order when it is sorted already, as
    neighbour lists are). Channels go in groups of ``G`` (:data:`GROUP_ENTRIES`, :data:`MIN_GROUP`,
    :data:`MAX_GROUPS`). The sparse
    matrix of the group that starts at channel ``c0`` has rows ``t*G + c`` and columns
    ``s*C + c``, and multiplies the dense rows ``values.view(-1, K)[c0:]``: every group of one
    size shares one pattern (column indices and the positions of its ``G * E`` values in the
    ``[E, C]`` weights, which one ``index_select`` gathers per product), and no index array has
    ``C * E`` entries unless ``G = C``. Derivatives are the other two faces of the same form
    (:class:`_Trilinear`), so gradients of any order work.
    """

    def __init__(self, targets: torch.Tensor, n_targets: int, channels: int):
        targets = targets.long()
        if targets.ndim != 1:
            raise ValueError(f"targets must be a 1-d index array, got shape {tuple(targets.shape)}")
        self.n_edges, self.n_targets, self.channels = targets.shape[0], int(n_targets), int(channels)
        self.device = targets.device
        self.order = _sorted_order(targets)  # canonical position -> given edge
        if self.order is None:
            self.inverse_order = None
            self.canonical_targets = targets
        else:
            self.inverse_order = torch.empty_like(self.order)
            self.inverse_order[self.order] = torch.arange(self.n_edges, device=self.device)
            self.canonical_targets = targets.index_select(0, self.order)
        self.target_entries = _Rows(self.canonical_targets, self.n_targets)
        wanted = max(GROUP_ENTRIES // max(self.n_edges, 1), -(-self.channels // MAX_GROUPS))
        self.group_size = max(1, min(self.channels, max(MIN_GROUP, wanted)))
        self._patterns = {}
        self._zeros = {}

    def _build_patterns(self) -> None:
        if self.n_edges:
            for _, n in self.groups():
                for kind in ("target", "source"):
                    self._pattern(kind, n)

    # -- layout conversions (ordinary differentiable torch operations) --------------------------
    def _to_canonical(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.order is None else x.index_select(0, self.order)

    def _from_canonical(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.order is None else x.index_select(0, self.inverse_order)

    def _check_weights(self, weights: torch.Tensor) -> None:
        if weights.shape != (self.n_edges, self.channels):
            raise ValueError(f"weights must have shape {(self.n_edges, self.channels)}, got {tuple(weights.shape)}")

    # -- structure ------------------------------------------------------------------------------
    def groups(self) -> list[tuple[int, int]]:
        """``(first channel, size)`` of each sparse product: near-equal sizes, at most
        ``group_size`` (fixed at construction from :data:`GROUP_ENTRIES`, :data:`MIN_GROUP` and
        :data:`MAX_GROUPS`)."""
        n_groups = -(-self.channels // self.group_size)
        size = -(-self.channels // n_groups)
        return [(start, min(size, self.channels - start)) for start in range(0, self.channels, size)]

    def index_bytes(self) -> int:
        """Bytes held by the index arrays and cached patterns."""
        seen, total = set(), 0
        tensors = [t for p in self._patterns.values() for t in p.values()] + list(self._zeros.values())
        tensors += [t for t in vars(self).values() if isinstance(t, torch.Tensor)]
        tensors += [t for rows in vars(self).values() if isinstance(rows, _Rows) for t in vars(rows).values()
                    if isinstance(t, torch.Tensor)]
        for t in tensors:
            if t.data_ptr() not in seen:
                seen.add(t.data_ptr())
                total += t.untyped_storage().nbytes()
        return total

    def _pattern(self, kind: str, group: int) -> dict:
        key = (kind, group)
        if key not in self._patterns:
            self._patterns[key] = self._build_pattern(kind, group)
        return self._patterns[key]

    def _grouped(self, rows: _Rows, group: int, edges: torch.Tensor, columns: torch.Tensor, per_channel: bool,
                 n_rows: int, scatter: bool) -> dict:
        """The pattern of entries ``rows`` (of canonical edges ``edges``, in that order) for a group
        of channels: ``columns[p] (+ c if per_channel)`` the column of entry ``p`` and channel ``c``,
        ``gather`` the position of each stored value in the ``[E, C]`` weights, ``scatter`` the
        position of (entry, channel) among the stored values. Built in the stored order (no
        scattered writes)."""
        E, C = self.n_edges, self.channels
        largest = max(E * C, n_rows * group, int(columns.max()) + group if E else 0)
        dtype = _index_dtype(largest + 1)
        counts = rows.counts.repeat_interleave(group)  # entries of CSR row r*G + c
        crow = torch.zeros(n_rows * group + 1, dtype=torch.int64, device=self.device)
        crow[1:] = torch.cumsum(counts, 0)
        row = torch.repeat_interleave(torch.arange(n_rows * group, device=self.device), counts)  # of each stored value
        channel = row % group
        entry = rows.start.index_select(0, row // group) + torch.arange(E * group, device=self.device) - crow.index_select(0, row)
        gather = edges.index_select(0, entry) * C + channel
        col = columns.index_select(0, entry) + channel if per_channel else columns.index_select(0, entry)
        out = {"crow": crow.to(dtype), "col": col.to(dtype), "gather": gather.to(dtype)}
        if scatter:
            out["scatter"] = rows.positions(group).reshape(-1).to(dtype)
        return out

    def _zero_values(self, n: int, dtype: torch.dtype) -> torch.Tensor:
        key = (n, dtype)
        if key not in self._zeros:
            self._zeros[key] = torch.zeros(n, dtype=dtype, device=self.device)
        return self._zeros[key]

    def _products(self, kind: str, flat_weights: torch.Tensor, dense2d: torch.Tensor, n_out: int, dense_per_channel: bool,
                  out: torch.Tensor) -> torch.Tensor:
        """``out [n_out, C, K]`` = the products of every group (``dense2d``: ``[n * C, K]`` rows
        ``r*C + c`` if ``dense_per_channel``, else ``[n, K]`` shared by the channels)."""
        C, K = self.channels, out.shape[-1]
        groups = self.groups()
        for start, n in groups:
            p = self._pattern(kind, n)
            dense = dense2d[start:] if dense_per_channel else dense2d
            matrix = _csr(p["crow"], p["col"], flat_weights[start:].index_select(0, p["gather"]),
                          (n_out * n, dense.shape[0]))
            if len(groups) == 1:  # out=: no zero-fill and copy of the result
                torch.mm(matrix, dense, out=out.view(n_out * C, K))
            else:
                out[:, start : start + n].copy_(torch.mm(matrix, dense).view(n_out, n, K))
        return out


class EdgeAggregation(_LeanEdgeForm):
    """The sparse structure of one graph's edge stage, built once and shared by every layer.

    ``out[t, c, :] = sum_{e: target[e] = t} w[e, c] * values[source[e], c, :]`` and the
    sampled product :meth:`edge_inner`, with index arrays of ``O(G E)`` (``G`` channels per
    sparse product, :data:`GROUP_ENTRIES`) and no ``[E, C, K]`` tensor in the forward or
    backward pass: per group of channels one CSR sparse x dense product (MKL on CPU, cuSPARSE on
    GPU) reading ``values`` in its natural ``[n, C, K]`` layout. :class:`BlockCSRAggregation` is
    the former form (all channels in one product, ``E * C`` stored indices), kept as the
    reference.

    Args:
        sources: ``[E]`` row of ``values`` that each edge reads.
        targets: ``[E]`` output row that each edge adds to.
        n_sources, n_targets: numbers of rows of ``values`` and of the output.
        channels: ``C``; weights are ``[E, C]``.
    """

    def __init__(self, sources: torch.Tensor, targets: torch.Tensor, n_sources: int, n_targets: int, channels: int):
        if sources.shape != targets.shape:
            raise ValueError(f"sources and targets must have one entry per edge, got {tuple(sources.shape)} and "
                             f"{tuple(targets.shape)}")
        super().__init__(targets, n_targets, channels)
        self.n_sources = int(n_sources)
        self.canonical_sources = self._to_canonical(sources.long())
        order = _sorted_order(self.canonical_sources)  # the transposed pattern: entries by source
        self.source_order = torch.arange(self.n_edges, device=self.device) if order is None else order
        self.source_entries = _Rows(self.canonical_sources.index_select(0, self.source_order), self.n_sources)
        self._kernel_indices = None
        if not triton_edge.use_triton(targets):  # the fused kernels need no sparse patterns
            self._build_patterns()

    def __call__(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``out[t, c, :] = sum_{e: t} weights[e, c] values[source[e], c, :]``.

        Args:
            values: ``[n_sources, C, K]``.
            weights: ``[E, C]``.

        Returns:
            ``[n_targets, C, K]``, differentiable to any order in both inputs.
        """
        self._check_weights(weights)
        return _Trilinear.apply(self, "target", self._to_canonical(weights), values)

    def edge_inner(self, values: torch.Tensor, target_values: torch.Tensor) -> torch.Tensor:
        """``out[e, c] = <values[source[e], c, :], target_values[target[e], c, :]>``: ``[E, C]``."""
        return self._from_canonical(_Trilinear.apply(self, "edge", values, target_values))

    def of_products(self, x: torch.Tensor, rows: torch.Tensor, coupling: torch.Tensor, weights: torch.Tensor,
                    columns: torch.Tensor | None = None, products: torch.Tensor | None = None,
                    head_weights: torch.Tensor | None = None) -> torch.Tensor:
        """This aggregation of per-source tensor products ``values = (x[rows] @ coupling)[..., columns]``
        that the backward pass recomputes instead of keeping them.

        Same numbers and derivatives (of every order) as ``self(values, weights)`` with ``values``
        made by those differentiable operations; what the backward pass keeps is ``x``
        ``[N, C, D]``, ``coupling`` ``[U, D, K]`` and ``weights`` instead of the gathered ``x[rows]``
        ``[U, C, D]`` and ``values`` ``[U, C, K_f]`` (``U``: the sources, several per atom), and it
        redoes the gather and one batched product, cheap beside the edge stage.

        Args:
            x: ``[N, C, D]`` node features.
            rows: ``[U]`` row of ``x`` of each source.
            coupling: ``[U, D, K]`` per-source matrices.
            weights: ``[E, C]``.
            columns: ``[K_f]`` columns of the product to aggregate (None: all ``K``).
            products: ``x[rows] @ coupling`` when the caller has it already (several ``columns``
                of one product), used as given in the forward pass only.
            head_weights: ``[E, H]`` (``H`` dividing ``C``): the weights are then
                ``scale_by_heads(weights, head_weights)`` (:func:`scale_by_heads`), which neither
                pass keeps: both make it from its two factors when they need it (the factors are
                kept; an attention layer keeps them anyway).

        Returns:
            ``[n_targets, C, K_f]``.
        """
        self._check_weights(weights)
        if head_weights is not None:
            check_head_weights(head_weights, self.n_edges, self.channels)
            head_weights = self._to_canonical(head_weights)
        if products is None:
            with torch.no_grad():
                products = torch.bmm(x.index_select(0, rows), coupling)
        values = products.detach() if columns is None else products.detach().index_select(2, columns)
        return _ProductsAggregate.apply(self, x, rows, coupling, columns, self._to_canonical(weights), values,
                                        head_weights)

    def _build_pattern(self, kind, group):
        C = self.channels
        if kind == "target":  # rows t*G + c, columns s*C + c
            edges = torch.arange(self.n_edges, device=self.device)
            return self._grouped(self.target_entries, group, edges, self.canonical_sources * C, True, self.n_targets, True)
        # "source": rows s*G + c, columns t*C + c, entries in source order
        edges = self.source_order
        return self._grouped(self.source_entries, group, edges, self.canonical_targets.index_select(0, edges) * C, True,
                             self.n_sources, False)

    def face(self, face: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One face of ``sum_{e, c, k} a[e, c] v[s(e), c, k] g[t(e), c, k]`` from the other two
        slots (edges canonical): ``"target"`` (a, v) -> g ``[T, C, K]``, ``"source"`` (a, g) -> v
        ``[U, C, K]``, ``"edge"`` (v, g) -> a ``[E, C]``."""
        C, E, T, U = self.channels, self.n_edges, self.n_targets, self.n_sources
        if triton_edge.use_triton(x):
            return self._fused_face(face, x, y)
        if face == "edge":
            v, g = x.contiguous(), y.contiguous()
            K = v.shape[-1]
            out = v.new_empty(E, C)
            if E == 0:
                return out
            groups = self.groups()
            v2d = v.view(U * C, K)
            for start, n in groups:
                p = self._pattern("target", n)
                rows = g.view(T * C, K) if len(groups) == 1 else g[:, start : start + n].reshape(T * n, K)
                pattern = _csr(p["crow"], p["col"], self._zero_values(n * E, v.dtype), (T * n, U * C - start))
                sampled = torch.sparse.sampled_addmm(pattern, rows, v2d[start:].t(), beta=0.0).values()
                out[:, start : start + n] = sampled.index_select(0, p["scatter"]).view(E, n)
            return out
        a, dense = x.contiguous(), y.contiguous()
        kind, n_in, n_out = ("target", U, T) if face == "target" else ("source", T, U)
        K = dense.shape[-1]
        out = dense.new_empty(n_out, C, K)
        if E == 0:
            return out.zero_()
        return self._products(kind, a.view(-1), dense.view(n_in * C, K), n_out, True, out)


    def _fused_face(self, face: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """:meth:`face` through the Triton kernels of :mod:`~e2former_calc.conv.triton_edge`."""
        if self._kernel_indices is None:
            def pointers(rows: _Rows) -> torch.Tensor:
                return torch.cat([rows.counts.new_zeros(1), torch.cumsum(rows.counts, 0)])

            self._kernel_indices = {
                "target_rowptr": pointers(self.target_entries), "edges": torch.arange(self.n_edges, device=self.device),
                "sources": self.canonical_sources, "targets": self.canonical_targets,
                "source_rowptr": pointers(self.source_entries), "source_order": self.source_order,
                "targets_by_source": self.canonical_targets.index_select(0, self.source_order),
            }
        i = self._kernel_indices
        if face == "target":  # (a, v) -> g
            return triton_edge.segment_sum(i["target_rowptr"], i["edges"], i["sources"], x, y)
        if face == "source":  # (a, g) -> v
            return triton_edge.segment_sum(i["source_rowptr"], i["source_order"], i["targets_by_source"], x, y)
        return triton_edge.edge_inner(i["sources"], i["targets"], x, y)  # (v, g) -> a


class EdgeSum(_LeanEdgeForm):
    """``out[t, c, :] = sum_{e: target[e] = t} w[e, c] * edge_values[e, :]``: a per-channel weighted
    sum of per-edge values that all channels share (e.g. the spherical harmonics of the bond),
    without the ``[E, C, K]`` products, with index arrays of ``O(G E)`` and derivatives of any
    order.

    Args:
        targets: ``[E]`` output row of each edge.
        n_targets: rows of the output.
        channels: ``C``; weights are ``[E, C]``.
    """

    def __init__(self, targets: torch.Tensor, n_targets: int, channels: int):
        super().__init__(targets, n_targets, channels)
        # made for one call (the edge-degree embedding): its patterns, not ``E * C`` messages, are
        # what the call holds, so the groups stay small whatever the size of the graph
        self.group_size = max(1, min(self.channels, MIN_GROUP))
        self._build_patterns()

    def __call__(self, weights: torch.Tensor, edge_values: torch.Tensor) -> torch.Tensor:
        """``weights [E, C]``, ``edge_values [E, K]`` -> ``[n_targets, C, K]``."""
        self._check_weights(weights)
        if edge_values.ndim != 2 or edge_values.shape[0] != self.n_edges:
            raise ValueError(f"edge_values must have shape [{self.n_edges}, K], got {tuple(edge_values.shape)}")
        return _Trilinear.apply(self, "target", self._to_canonical(weights), self._to_canonical(edge_values))

    def _build_pattern(self, kind, group):
        E, C = self.n_edges, self.channels
        edges = torch.arange(E, device=self.device)
        if kind == "target":  # [T*G, E]: rows t*G + c, column = the edge (its values serve every c)
            return self._grouped(self.target_entries, group, edges, edges, False, self.n_targets, False)
        # "source", the transpose [E, T*C]: row e holds t(e)*C + c for the group's channels
        dtype = _index_dtype(max(E * group, self.n_targets * C) + 1)
        channel = torch.arange(group, device=self.device)
        return {"crow": torch.arange(0, group * E + 1, group, device=self.device).to(dtype),
                "col": (self.canonical_targets[:, None] * C + channel).reshape(-1).to(dtype)}

    def face(self, face: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One face of ``sum_{e, c, k} a[e, c] y[e, k] g[t(e), c, k]`` (edges canonical):
        ``"target"`` (a, y) -> g ``[T, C, K]``, ``"source"`` (a, g) -> y ``[E, K]``, ``"edge"``
        (y, g) -> a ``[E, C]``."""
        C, E, T = self.channels, self.n_edges, self.n_targets
        if face == "target":
            a, y = x.contiguous(), y.contiguous()
            out = y.new_empty(T, C, y.shape[-1])
            if E == 0:
                return out.zero_()
            return self._products("target", a.view(-1), y, T, False, out)
        first, g = x.contiguous(), y.contiguous()  # a (source face) or y (edge face); g
        K = g.shape[-1]
        out = first.new_zeros(E, K if face == "source" else C)
        if E == 0:
            return out
        g2d = g.view(T * C, K)
        for start, n in self.groups():
            p = self._pattern("source", n)
            shape = (E, T * C - start)
            if face == "source":  # out[e] += sum_c a[e, c] g[t(e), c]
                out.addmm_(_csr(p["crow"], p["col"], first[:, start : start + n].contiguous().view(-1), shape), g2d[start:])
            else:  # out[e, c] = <y[e], g[t(e), c]>
                pattern = _csr(p["crow"], p["col"], self._zero_values(n * E, first.dtype), shape)
                out[:, start : start + n] = torch.sparse.sampled_addmm(pattern, first, g2d[start:].t(), beta=0.0).values().view(E, n)
        return out


class _Trilinear(torch.autograd.Function):
    """A face of a trilinear edge form ``F(a, v, g)``: the slot ``face`` from the other two.

    The derivative of face ``X`` by the operand in slot ``Y``, applied to the incoming gradient
    ``G``, is face ``Y`` evaluated with ``G`` in slot ``X``: the same function again, so every
    order of derivative is available.
    """

    @staticmethod
    def forward(ctx, form, face, x, y):
        ctx.save_for_backward(x, y)
        ctx.form, ctx.face = form, face
        return form.face(face, x, y)

    @staticmethod
    def backward(ctx, grad):
        x, y = ctx.saved_tensors
        slots = [slot for slot in _SLOTS if slot != ctx.face]
        operands = {ctx.face: grad, slots[0]: x, slots[1]: y}
        grads = [
            _Trilinear.apply(ctx.form, slot, *(operands[s] for s in _SLOTS if s != slot))
            if ctx.needs_input_grad[2 + n] else None
            for n, slot in enumerate(slots)
        ]
        return None, None, *grads


class _ProductsAggregate(torch.autograd.Function):
    """``face "target"(w, P)`` with ``P = (x[rows] @ coupling)[..., columns]`` given in the forward
    pass (``values``) and recomputed from ``x`` and ``coupling`` in the backward pass, whose
    operations are differentiable, so that every order of derivative is available
    (:meth:`EdgeAggregation.of_products`). With ``head_weights`` the weights are
    ``w = scale_by_heads(weights, head_weights)``, made in each pass from the two factors."""

    @staticmethod
    def forward(ctx, form, x, rows, coupling, columns, weights, values, head_weights):
        ctx.save_for_backward(x, coupling, weights, head_weights)
        ctx.form, ctx.rows, ctx.columns = form, rows, columns
        full = weights if head_weights is None else scale_by_heads(weights, head_weights)
        return form.face("target", full, values)

    @staticmethod
    def backward(ctx, grad):
        x, coupling, weights, head_weights = ctx.saved_tensors
        form, rows, columns = ctx.form, ctx.rows, ctx.columns
        need_x, need_coupling, need_weights, need_heads = (ctx.needs_input_grad[i] for i in (1, 3, 5, 7))
        grad_x = grad_coupling = grad_weights = grad_heads = None
        # only the aggregated columns of the coupling: [U, D, K_f]
        selected = coupling if columns is None else coupling.index_select(2, columns)
        # one [U, C, K_f] tensor at a time: the gradient of the products, then the products themselves
        gathered = x.index_select(0, rows) if need_coupling or need_weights or need_heads else None  # [U, C, D]
        if need_x or need_coupling:
            full = weights if head_weights is None else scale_by_heads(weights, head_weights)  # [E, C]
            grad_values = _Trilinear.apply(form, "source", full, grad)  # [U, C, K_f]
            del full  # (made from its factors: not needed beyond this face)
            if need_x:
                grad_x = scatter_sum(torch.bmm(grad_values, selected.transpose(1, 2)), rows, x.shape[0])
            if need_coupling:
                grad_coupling = torch.bmm(gathered.transpose(1, 2), grad_values)  # [U, D, K_f]
                if columns is not None:
                    grad_coupling = grad_coupling.new_zeros(coupling.shape).index_add(2, columns, grad_coupling)
            del grad_values
        if need_weights or need_heads:
            grad_full = _Trilinear.apply(form, "edge", torch.bmm(gathered, selected), grad)  # [E, C]
            if head_weights is None:
                grad_weights = grad_full
            else:
                if need_weights:
                    grad_weights = scale_by_heads(grad_full, head_weights)
                if need_heads:  # sum over each head's channels of dL/dw * weights, no [E, C] product
                    heads = head_weights.shape[1]
                    grad_heads = torch.einsum("ehc,ehc->eh", grad_full.unflatten(1, (heads, -1)),
                                              weights.unflatten(1, (heads, -1)))
        return None, grad_x, None, grad_coupling, None, grad_weights, None, grad_heads


class _BlockCSR:
    """CSR pattern of ``A[t*C + c, s*C + c] = w[e, c]`` over edges ``e = (t <- s)``.

    ``value_index[n]`` is the position in ``w.flatten()`` of stored entry ``n``.
    """

    def __init__(self, rows: torch.Tensor, cols: torch.Tensor, n_rows: int, n_cols: int, channels: int):
        n_edges = rows.shape[0]
        device = rows.device
        big = channels * max(n_rows, n_cols, n_edges) >= 2**31 - 1
        index_dtype = torch.int64 if big else torch.int32
        order = torch.argsort(rows * n_cols + cols, stable=True) if n_edges else rows
        rows_sorted, cols_sorted = rows[order], cols[order]
        counts = torch.bincount(rows_sorted, minlength=n_rows) if n_edges else rows.new_zeros(n_rows)
        start = torch.cumsum(counts, 0) - counts  # first sorted edge of each row
        channel = torch.arange(channels, device=device)
        # stored entry of (sorted edge p, channel c): row block t*C + c holds counts[t] entries
        rank = torch.arange(n_edges, device=device) - start[rows_sorted]
        position = (start[rows_sorted] * channels + rank)[:, None] + channel[None, :] * counts[rows_sorted][:, None]
        flat_position = position.reshape(-1)
        col_indices = torch.empty(n_edges * channels, dtype=torch.int64, device=device)
        col_indices[flat_position] = (cols_sorted[:, None] * channels + channel[None, :]).reshape(-1)
        value_index = torch.empty(n_edges * channels, dtype=torch.int64, device=device)
        value_index[flat_position] = (order[:, None] * channels + channel[None, :]).reshape(-1)
        crow = torch.zeros(n_rows * channels + 1, dtype=torch.int64, device=device)
        crow[1:] = torch.cumsum(counts.repeat_interleave(channels), 0)
        self.crow_indices = crow.to(index_dtype)
        self.col_indices = col_indices.to(index_dtype)
        self.value_index = value_index
        self.shape = (n_rows * channels, n_cols * channels)
        self._zeros = {}

    def matrix(self, weights: torch.Tensor) -> torch.Tensor:
        """The sparse matrix for edge weights ``[E, C]``."""
        return self._csr(weights.reshape(-1).index_select(0, self.value_index))

    def pattern(self, dtype: torch.dtype) -> torch.Tensor:
        """A matrix with this pattern and zero values (cached per dtype)."""
        if dtype not in self._zeros:
            self._zeros[dtype] = self._csr(torch.zeros(self.col_indices.shape[0], dtype=dtype, device=self.col_indices.device))
        return self._zeros[dtype]

    def _csr(self, values: torch.Tensor) -> torch.Tensor:
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                self.crow_indices, self.col_indices, values, self.shape, check_invariants=False
            )


class BlockCSRAggregation:
    """The reference form of :class:`EdgeAggregation`: the channels laid out block-diagonally
    (row ``t*C + c``, column ``s*C + c``), one CSR product for all of them, with ``E * C`` stored
    column indices and value positions. Same interface and numbers (to rounding); kept for tests
    and comparisons.

    Args:
        sources: ``[E]`` row of ``values`` that each edge reads.
        targets: ``[E]`` output row that each edge adds to.
        n_sources, n_targets: numbers of rows of ``values`` and of the output.
        channels: ``C``; weights are ``[E, C]``.
    """

    def __init__(self, sources: torch.Tensor, targets: torch.Tensor, n_sources: int, n_targets: int, channels: int):
        self.n_sources, self.n_targets, self.channels = n_sources, n_targets, channels
        self.n_edges = sources.shape[0]
        self.forward_pattern = _BlockCSR(targets, sources, n_targets, n_sources, channels)
        self.transpose_pattern = _BlockCSR(sources, targets, n_sources, n_targets, channels)

    def __call__(self, values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        """``out[t, c, :] = sum_{e: t} weights[e, c] values[source[e], c, :]``.

        Args:
            values: ``[n_sources, C, K]``.
            weights: ``[E, C]``.

        Returns:
            ``[n_targets, C, K]``, differentiable to any order in both inputs.
        """
        return _Aggregate.apply(values, weights, self, False)

    def edge_inner(self, values: torch.Tensor, target_values: torch.Tensor) -> torch.Tensor:
        """``out[e, c] = <values[source[e], c, :], target_values[target[e], c, :]>``: ``[E, C]``."""
        return _EdgeInner.apply(values, target_values, self)

    def _product(self, values, weights, transpose: bool):
        pattern = self.transpose_pattern if transpose else self.forward_pattern
        n_out = self.n_sources if transpose else self.n_targets
        if self.n_edges == 0:
            return values.new_zeros((n_out,) + values.shape[1:])
        flat = values.reshape(values.shape[0] * self.channels, -1)
        out = values.new_empty(n_out * self.channels, flat.shape[1])
        torch.mm(pattern.matrix(weights), flat, out=out)  # out=: no zero-fill and copy of the result
        return out.view(n_out, self.channels, -1)

    def _sampled(self, values, target_values):
        if self.n_edges == 0:
            return values.new_zeros(0, self.channels)
        pattern = self.forward_pattern
        flat_targets = target_values.reshape(self.n_targets * self.channels, -1)
        flat_values = values.reshape(self.n_sources * self.channels, -1)
        sampled = torch.sparse.sampled_addmm(pattern.pattern(values.dtype), flat_targets, flat_values.T, beta=0.0)
        out = values.new_empty(self.n_edges * self.channels)
        out[pattern.value_index] = sampled.values()
        return out.view(self.n_edges, self.channels)


class _Aggregate(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, weights, plan, transpose):
        ctx.save_for_backward(values, weights)
        ctx.plan, ctx.transpose = plan, transpose
        return plan._product(values, weights, transpose)

    @staticmethod
    def backward(ctx, grad_out):
        values, weights = ctx.saved_tensors
        plan, transpose = ctx.plan, ctx.transpose
        grad_values = grad_weights = None
        if ctx.needs_input_grad[0]:
            grad_values = _Aggregate.apply(grad_out, weights, plan, not transpose)
        if ctx.needs_input_grad[1]:
            if transpose:  # values live on targets, grad_out on sources
                grad_weights = _EdgeInner.apply(grad_out, values, plan)
            else:
                grad_weights = _EdgeInner.apply(values, grad_out, plan)
        return grad_values, grad_weights, None, None


class _EdgeInner(torch.autograd.Function):
    @staticmethod
    def forward(ctx, values, target_values, plan):
        ctx.save_for_backward(values, target_values)
        ctx.plan = plan
        return plan._sampled(values, target_values)

    @staticmethod
    def backward(ctx, grad_out):
        values, target_values = ctx.saved_tensors
        plan = ctx.plan
        grad_values = grad_targets = None
        if ctx.needs_input_grad[0]:
            grad_values = _Aggregate.apply(target_values, grad_out, plan, True)
        if ctx.needs_input_grad[1]:
            grad_targets = _Aggregate.apply(values, grad_out, plan, False)
        return grad_values, grad_targets, None
