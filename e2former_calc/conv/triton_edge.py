"""Fused kernels (Triton) for the edge stage: each face of the trilinear edge form in one pass.

The edge stage of :class:`~e2former_calc.conv.aggregation.EdgeAggregation` is the trilinear form

    F(a, v, g) = sum_{e, c, k} a[e, c] v[s(e), c, k] g[t(e), c, k]

over edges ``e`` (source ``s``, target ``t``), channels ``c`` and components ``k``. Its three
faces are what the forward pass and every derivative need:

- ``"target"``: ``g[t, c, k] = sum_{e: t(e) = t} a[e, c] v[s(e), c, k]`` (the aggregation);
- ``"source"``: ``v[u, c, k] = sum_{e: s(e) = u} a[e, c] g[t(e), c, k]`` (its transpose);
- ``"edge"``: ``a[e, c] = sum_k v[s(e), c, k] g[t(e), c, k]`` (the sampled product).

The first two are one kernel, :func:`segment_sum`: one program per output row and block of
channels walks the row's entries of a CSR list (edges sorted by target, or by source) and
accumulates ``a[e, c] * dense[partner(e), c, :]`` in registers, so no ``[E, C, K]`` tensor is
ever written; the third is :func:`edge_inner`, one program per edge and block of channels.
Every sum runs in a fixed order (no atomics): results are deterministic, in float32 and float64.

Both are registered as torch custom operators (``e2former_calc::segment_sum``,
``e2former_calc::edge_inner``, with shape functions for ``torch.compile``); their derivatives of
every order come from the form itself (the derivative of one face is another face), through
:class:`~e2former_calc.conv.aggregation._Trilinear`, as for the sparse-product implementation.

On CUDA tensors these kernels are the default when Triton is installed
(``E2FORMER_EDGE_KERNEL=torch`` turns them off). Without a GPU they run in Triton's
interpreter (``TRITON_INTERPRET=1``, set before Triton is first imported) when
``E2FORMER_EDGE_KERNEL=triton``: that is how the tests check them on a CPU, against the
sparse-product implementation, in float64.
"""

from __future__ import annotations

import os

import torch

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the environment
    triton = None

__all__ = ["available", "edge_inner", "segment_sum", "use_triton"]


def available() -> bool:
    """Triton imports."""
    return triton is not None


def use_triton(tensor: torch.Tensor) -> bool:
    """Whether the edge stage of ``tensor``'s device runs on these kernels: CUDA tensors with
    Triton installed, unless ``E2FORMER_EDGE_KERNEL=torch``; any tensor when
    ``E2FORMER_EDGE_KERNEL=triton`` (CPU tensors then need ``TRITON_INTERPRET=1``)."""
    choice = os.environ.get("E2FORMER_EDGE_KERNEL", "auto")
    if choice not in ("auto", "torch", "triton"):
        raise ValueError(f"E2FORMER_EDGE_KERNEL must be auto, torch or triton, got {choice!r}")
    if choice == "torch" or triton is None:
        if choice == "triton":
            raise RuntimeError("E2FORMER_EDGE_KERNEL=triton, but Triton does not import (pip install triton)")
        return False
    return choice == "triton" or tensor.is_cuda


if triton is not None:

    @triton.jit
    def _segment_kernel(rowptr, edge_ids, partner, a, dense, out, C, K,
                        BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
        row = tl.program_id(0)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        k = tl.arange(0, BLOCK_K)
        c_ok = c < C
        tile_ok = c_ok[:, None] & (k < K)[None, :]
        tile = c[:, None] * K + k[None, :]
        start = tl.load(rowptr + row)
        end = tl.load(rowptr + row + 1)
        acc = tl.zeros([BLOCK_C, BLOCK_K], dtype=out.dtype.element_ty)
        for j in range(start, end):
            e = tl.load(edge_ids + j).to(tl.int64)
            p = tl.load(partner + j).to(tl.int64)
            w = tl.load(a + e * C + c, mask=c_ok, other=0.0)
            x = tl.load(dense + p * C * K + tile, mask=tile_ok, other=0.0)
            acc += w[:, None] * x
        tl.store(out + row.to(tl.int64) * C * K + tile, acc, mask=tile_ok)

    @triton.jit
    def _edge_kernel(sources, targets, v, g, out, C, K, BLOCK_C: tl.constexpr, BLOCK_K: tl.constexpr):
        e = tl.program_id(0).to(tl.int64)
        c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
        k = tl.arange(0, BLOCK_K)
        c_ok = c < C
        tile_ok = c_ok[:, None] & (k < K)[None, :]
        tile = c[:, None] * K + k[None, :]
        s = tl.load(sources + e).to(tl.int64)
        t = tl.load(targets + e).to(tl.int64)
        x = tl.load(v + s * C * K + tile, mask=tile_ok, other=0.0)
        y = tl.load(g + t * C * K + tile, mask=tile_ok, other=0.0)
        tl.store(out + e * C + c, tl.sum(x * y, axis=1), mask=c_ok)


def _blocks(C: int, K: int) -> tuple[int, int]:
    block_k = triton.next_power_of_2(max(K, 1))
    block_c = max(1, min(triton.next_power_of_2(C), max(1, 2048 // block_k), 32))
    return block_c, block_k


@torch.library.custom_op("e2former_calc::segment_sum", mutates_args=())
def segment_sum(rowptr: torch.Tensor, edge_ids: torch.Tensor, partner: torch.Tensor, a: torch.Tensor,
                dense: torch.Tensor) -> torch.Tensor:
    """``out[r, c, :] = sum_{j in rowptr[r]..rowptr[r+1]} a[edge_ids[j], c] dense[partner[j], c, :]``.

    Args:
        rowptr: ``[R + 1]`` int64 CSR row pointers of the entries.
        edge_ids: ``[E]`` edge (row of ``a``) of each entry.
        partner: ``[E]`` row of ``dense`` of each entry.
        a: ``[E, C]`` per-edge, per-channel weights.
        dense: ``[n, C, K]``.

    Returns:
        ``[R, C, K]`` in ``dense``'s dtype.
    """
    n_rows = rowptr.shape[0] - 1
    C, K = dense.shape[1], dense.shape[2]
    out = torch.empty((n_rows, C, K), dtype=dense.dtype, device=dense.device)
    if n_rows == 0 or C == 0 or K == 0:
        return out.zero_()
    block_c, block_k = _blocks(C, K)
    grid = (n_rows, triton.cdiv(C, block_c))
    _segment_kernel[grid](rowptr, edge_ids, partner, a.contiguous(), dense.contiguous(), out, C, K,
                          BLOCK_C=block_c, BLOCK_K=block_k)
    return out


@segment_sum.register_fake
def _(rowptr, edge_ids, partner, a, dense):
    return dense.new_empty((rowptr.shape[0] - 1, dense.shape[1], dense.shape[2]))


@torch.library.custom_op("e2former_calc::edge_inner", mutates_args=())
def edge_inner(sources: torch.Tensor, targets: torch.Tensor, v: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """``out[e, c] = sum_k v[sources[e], c, k] g[targets[e], c, k]``: ``[E, C]``."""
    n_edges, C, K = sources.shape[0], v.shape[1], v.shape[2]
    out = torch.empty((n_edges, C), dtype=v.dtype, device=v.device)
    if n_edges == 0 or C == 0:
        return out
    if K == 0:
        return out.zero_()
    block_c, block_k = _blocks(C, K)
    grid = (n_edges, triton.cdiv(C, block_c))
    _edge_kernel[grid](sources, targets, v.contiguous(), g.contiguous(), out, C, K, BLOCK_C=block_c, BLOCK_K=block_k)
    return out


@edge_inner.register_fake
def _(sources, targets, v, g):
    return v.new_empty((sources.shape[0], v.shape[1]))
