"""Learned mixing of a convolution's path outputs and channels, on the nodes."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..so3.features import FeatureLayout
from .paths import Path


class PathMixing(nn.Module):
    """Per output irrep, a linear map from (path, channel) to channel.

    ``y[n, c', L] = sum_{paths p -> L} sum_c W_L[(p, c), c'] m[n, c, p]``, equivariant because it
    acts on channels only. Weights start as ``N(0, 1 / fan_in)``. Irreps of the output layout
    that no path reaches are zero.

    Args:
        paths: the convolution's paths (their order fixes the input layout).
        irreps_out: output irreps (every path's ``output`` indexes it).
        channels_in, channels_out: ``C`` of the path outputs and of the result.

    Forward: ``[N, channels_in, paths_dim] -> [N, channels_out, dim_out]``.
    """

    def __init__(self, paths: list[Path], irreps_out, channels_in: int, channels_out: int):
        super().__init__()
        self.layout_out = FeatureLayout.parse(irreps_out)
        self.channels_in, self.channels_out = channels_in, channels_out
        starts, start = [], 0
        for p in paths:
            starts.append(start)
            start += p.dim
        self.weights = nn.ParameterList()
        self._columns = []
        for o, (l, _) in enumerate(self.layout_out.irreps):
            incoming = [s for s, p in zip(starts, paths) if p.output == o]
            if not incoming:
                self._columns.append(None)
                self.weights.append(nn.Parameter(torch.zeros(0, channels_out)))
                continue
            columns = torch.tensor([s + m for s in incoming for m in range(2 * l + 1)])
            self._columns.append(columns)
            fan_in = len(incoming) * channels_in
            self.weights.append(nn.Parameter(torch.randn(fan_in, channels_out) / math.sqrt(fan_in)))

    def forward(self, m: torch.Tensor) -> torch.Tensor:
        n = m.shape[0]
        blocks = []
        for (l, _), columns, weight in zip(self.layout_out.irreps, self._columns, self.weights):
            if columns is None:
                blocks.append(m.new_zeros(n, self.channels_out, 2 * l + 1))
                continue
            # [N, C, P*(2l+1)] -> [N, 2l+1, P*C]
            x = m[:, :, columns.to(m.device)].unflatten(-1, (-1, 2 * l + 1)).permute(0, 3, 2, 1).flatten(2)
            blocks.append((x @ weight).transpose(1, 2))  # [N, C_out, 2l+1]
        return torch.cat(blocks, dim=-1)
