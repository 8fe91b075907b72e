"""The conventional convolution: one e3nn tensor product on every edge (the reference)."""

from __future__ import annotations

import torch
from e3nn import o3

from ..so3.features import channels_from_e3nn
from ..so3.solid_harmonics import spherical_harmonics
from .aggregation import scatter_sum
from .base import Convolution
from .graph import ConvGraph


class EdgeWiseConvolution(Convolution):
    """Channel-wise tensor product ``[x_j (x) Y_f(r_ij)]`` on each edge, summed over neighbours.

    The slow, obviously correct form of :class:`Convolution`: ``O(|E|)`` tensor products built
    from ``e3nn.o3.TensorProduct`` ("uvu" instructions, no normalisation constants, so each path
    is exactly the ``wigner_3j`` contraction). It is the reference the factorised convolution is
    tested against, and the "edge-wise channel-wise" form (as in MACE and NequIP) in benchmarks.
    """

    def __init__(self, irreps_in, channels: int, filter_degrees, irreps_out):
        super().__init__(irreps_in, channels, filter_degrees, irreps_out)
        self.tensor_products = torch.nn.ModuleList()
        self._out_degrees = []
        for f in self.filter_degrees:
            paths = [p for p in self.paths if p.f == f]
            irreps_out = o3.Irreps([(channels, (p.l_out, p.parity)) for p in paths])
            instructions = [(p.input, 0, n, "uvu", False) for n, p in enumerate(paths)]
            self.tensor_products.append(
                o3.TensorProduct(
                    self.layout_in.e3nn_irreps(channels),
                    o3.Irreps([(1, (f, (-1) ** f))]),
                    irreps_out,
                    instructions,
                    irrep_normalization="none",
                    path_normalization="none",
                )
            )
            self._out_degrees.append([p.l_out for p in paths])

    def forward(self, x: torch.Tensor, graph: ConvGraph, edge_weights: torch.Tensor) -> torch.Tensor:
        self.check_inputs(x, graph, edge_weights)
        vectors = graph.vectors.to(x.dtype)
        x_senders = x.index_select(0, graph.senders)  # [E, C, dim_in]
        outputs = []
        for n, (f, tp) in enumerate(zip(self.filter_degrees, self.tensor_products)):
            if not self._out_degrees[n]:
                continue
            filters = spherical_harmonics(f, vectors)  # [E, 2f+1]
            weighted = x_senders * edge_weights[:, n, :, None]
            messages = tp(self.layout_in.to_e3nn(weighted), filters)  # [E, C*dim_f]
            messages = channels_from_e3nn(messages, self._out_degrees[n], self.channels)
            outputs.append(scatter_sum(messages, graph.receivers, graph.n_nodes))
        return torch.cat(outputs, dim=-1)


class EdgeUVWConvolution(torch.nn.Module):
    """Convolution and channel mixing in one "uvw" tensor product on every edge.

    ``y_i[c'] = sum_j sum_paths sum_c W_p[c, c'] w_ij[f, c] [x_j[c] (x) Y_f(r_ij)]``: the
    conventional SO(3) convolution the E2Former paper compares against, with learned channel
    mixing on every edge (``O(|E| C^2)``). It equals ``mixing(convolution(...))`` for the
    given :class:`~e2former_calc.conv.PathMixing`, whose weights it copies; it exists to
    benchmark and test that equality.
    """

    def __init__(self, convolution: Convolution, mixing):
        super().__init__()
        self.convolution = convolution
        self.channels_out = mixing.channels_out
        irreps_out = mixing.layout_out.e3nn_irreps(mixing.channels_out)
        rows = {}  # path number -> rows of its output irrep's mixing weight
        for o in range(len(mixing.layout_out.irreps)):
            incoming = [n for n, p in enumerate(convolution.paths) if p.output == o]
            for position, n in enumerate(incoming):
                rows[n] = (o, slice(position * convolution.channels, (position + 1) * convolution.channels))
        self.tensor_products = torch.nn.ModuleList()
        for f in convolution.filter_degrees:
            numbered = [(n, p) for n, p in enumerate(convolution.paths) if p.f == f]
            tp = o3.TensorProduct(
                convolution.layout_in.e3nn_irreps(convolution.channels),
                o3.Irreps([(1, (f, (-1) ** f))]),
                irreps_out,
                [(p.input, 0, p.output, "uvw", True) for _, p in numbered],
                irrep_normalization="none",
                path_normalization="none",
                internal_weights=True,
            )
            with torch.no_grad():
                tp.weight.copy_(
                    torch.cat([mixing.weights[rows[n][0]][rows[n][1]].flatten() for n, _ in numbered])
                )
            self.tensor_products.append(tp)
        self.layout_out = mixing.layout_out

    def forward(self, x: torch.Tensor, graph: ConvGraph, edge_weights: torch.Tensor) -> torch.Tensor:
        """``[N, C, dim_in] -> [N, C_out, dim_out]`` (same inputs as the convolution)."""
        conv = self.convolution
        conv.check_inputs(x, graph, edge_weights)
        vectors = graph.vectors.to(x.dtype)
        x_senders = x.index_select(0, graph.senders)
        out = 0
        for n, (f, tp) in enumerate(zip(conv.filter_degrees, self.tensor_products)):
            weighted = conv.layout_in.to_e3nn(x_senders * edge_weights[:, n, :, None])
            messages = tp(weighted, spherical_harmonics(f, vectors))  # [E, C_out*dim_out]
            out = out + scatter_sum(messages, graph.receivers, graph.n_nodes)
        return self.layout_out.from_e3nn(out, self.channels_out)
