"""What every form of the convolution shares: its paths, its interface and input checks."""

from __future__ import annotations

import torch
from torch import nn

from ..so3.features import FeatureLayout
from .graph import ConvGraph
from .paths import enumerate_paths

MAX_DEGREE = 4


class Convolution(nn.Module):
    """An equivariant convolution over a neighbour graph, one output block per coupling path.

    For each path ``p = (l_in, f, l_out)``, target atom ``i`` and channel ``c``::

        m_i[c, p] = sum_{edges i <- j} w_ij[f, c] [x_j[c]^(l_in) (x) Y_f(r_ij / |r_ij|)]^(l_out)

    The channels stay separate (a "channel-wise" convolution); learned mixing of channels and
    paths happens on the nodes afterwards (:class:`~e2former_calc.conv.PathMixing`).

    Args:
        irreps_in: irreps of one input channel, e.g. ``"0e + 1o + 2e"``.
        channels: number of channels ``C``.
        filter_degrees: degrees ``f`` of the filters, any subset of ``0 .. 4``.
        irreps_out: irreps of the outputs to compute.

    Forward:
        x: ``[N, C, dim_in]`` node features.
        graph: :class:`ConvGraph` with the edges.
        edge_weights: ``[E, len(filter_degrees), C]`` scalar weight per edge, filter degree and
            channel (attention times radial function; per-head weights expand to channels).

    Returns:
        ``[N, C, paths_dim]``: the path outputs side by side, in the order of ``self.paths``.
    """

    def __init__(self, irreps_in, channels: int, filter_degrees, irreps_out):
        super().__init__()
        self.layout_in = FeatureLayout.parse(irreps_in)
        self.layout_out = FeatureLayout.parse(irreps_out)
        self.channels = int(channels)
        self.filter_degrees = tuple(sorted(set(int(f) for f in filter_degrees)))
        if not self.filter_degrees:
            raise ValueError("filter_degrees is empty")
        degrees = [l for l, _ in self.layout_in.irreps + self.layout_out.irreps]
        for name, values in (("filter degree", self.filter_degrees), ("irrep degree", degrees)):
            if min(values) < 0 or max(values) > MAX_DEGREE:
                raise ValueError(f"{name}s must lie in 0..{MAX_DEGREE}, got {sorted(values)}")
        self.paths = enumerate_paths(self.layout_in, self.filter_degrees, self.layout_out)
        if not self.paths:
            raise ValueError(
                f"no coupling path leads from {self.layout_in} through filters "
                f"{self.filter_degrees} to {self.layout_out}"
            )
        self.paths_dim = sum(p.dim for p in self.paths)

    def check_inputs(self, x: torch.Tensor, graph: ConvGraph, edge_weights: torch.Tensor) -> None:
        expected_x = (graph.n_nodes, self.channels, self.layout_in.dim)
        if tuple(x.shape) != expected_x:
            raise ValueError(f"node features must have shape {expected_x}, got {tuple(x.shape)}")
        expected_w = (graph.n_edges, len(self.filter_degrees), self.channels)
        if tuple(edge_weights.shape) != expected_w:
            raise ValueError(f"edge weights must have shape {expected_w}, got {tuple(edge_weights.shape)}")

    def extra_repr(self) -> str:
        return (
            f"{self.layout_in} x Y_f, f in {self.filter_degrees} -> {self.layout_out}, "
            f"channels={self.channels}, paths={len(self.paths)}"
        )
