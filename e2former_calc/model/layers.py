"""Equivariant layers on features ``[N, C, (L_max+1)^2]`` (irreps ``0e + 1o + 2e + ...``)."""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn


def degree_slices(max_degree: int) -> list[slice]:
    """Component slice of each degree ``l = 0 .. max_degree`` in ``0e + 1o + 2e + ...`` (e3nn's)."""
    return o3.Irreps.spherical_harmonics(max_degree).slices()


class DegreeLinear(nn.Module):
    """Per degree ``l``, a linear map of the channels: ``y_l = W_l^T x_l`` (+ bias on ``l = 0``).

    ``[N, C_in, D] -> [N, C_out, D]``; equivariant because it never mixes components ``m``.
    """

    def __init__(self, max_degree: int, channels_in: int, channels_out: int, bias: bool = True):
        super().__init__()
        self.max_degree = max_degree
        self.slices = degree_slices(max_degree)
        self.weights = nn.Parameter(torch.randn(max_degree + 1, channels_in, channels_out) / math.sqrt(channels_in))
        self.bias = nn.Parameter(torch.zeros(channels_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        blocks = [torch.einsum("ncm,cd->ndm", x[:, :, s], self.weights[l]) for l, s in enumerate(self.slices)]
        out = torch.cat(blocks, dim=-1)
        if self.bias is not None:
            out = torch.cat([out[:, :, :1] + self.bias[:, None], out[:, :, 1:]], dim=-1)
        return out


class EquivariantRMSNorm(nn.Module):
    """RMS layer norm over all degrees.

    The scalars (``l = 0``) are centred over the channels; one statistic
    ``sigma^2 = mean over channels and components of x^2`` scales every degree; then a learned
    scale per degree and channel, and a bias on the scalars.
    """

    def __init__(self, max_degree: int, channels: int, eps: float = 1e-6):
        super().__init__()
        self.max_degree, self.eps = max_degree, eps
        self.scale = nn.Parameter(torch.ones(max_degree + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        repeats = torch.tensor([2 * l + 1 for l in range(max_degree + 1)])
        self.register_buffer("component_degree", torch.repeat_interleave(torch.arange(max_degree + 1), repeats), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scalars = x[:, :, :1] - x[:, :, :1].mean(dim=1, keepdim=True)
        x = torch.cat([scalars, x[:, :, 1:]], dim=-1)
        rms = torch.sqrt(x.pow(2).mean(dim=(1, 2), keepdim=True) + self.eps)
        scale = self.scale[self.component_degree].T  # [C, D]
        out = x / rms * scale
        return torch.cat([out[:, :, :1] + self.bias[:, None], out[:, :, 1:]], dim=-1)


class GatedFeedForward(nn.Module):
    """``DegreeLinear -> gate -> DegreeLinear``: scalars through SiLU, each degree ``l >= 1``
    times a sigmoid gate computed from the scalars (exactly equivariant)."""

    def __init__(self, max_degree: int, channels: int, hidden: int):
        super().__init__()
        self.max_degree = max_degree
        self.slices = degree_slices(max_degree)
        self.up = DegreeLinear(max_degree, channels, hidden)
        self.gates = nn.Linear(hidden, hidden * max_degree) if max_degree > 0 else None
        self.down = DegreeLinear(max_degree, hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.up(x)
        scalars = h[:, :, 0]
        blocks = [nn.functional.silu(scalars).unsqueeze(-1)]
        if self.gates is not None:
            gates = torch.sigmoid(self.gates(scalars)).unflatten(-1, (self.max_degree, -1))  # [N, L, hidden]
            for l, s in enumerate(self.slices[1:], start=1):
                blocks.append(h[:, :, s] * gates[:, l - 1, :, None])
        return self.down(torch.cat(blocks, dim=-1))
