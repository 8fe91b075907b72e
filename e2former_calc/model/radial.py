"""Functions of the interatomic distance: Bessel basis, smooth cutoff envelope, radial networks."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


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


class RadialNetwork(nn.Module):
    """MLP of (Bessel basis of ``|r_ij|``, species features of ``Z_i`` and ``Z_j``): ``[E, out]``.

    ``recompute``: whether a backward pass with frozen weights (inference: forces and stress)
    recomputes the two hidden ``[E, hidden]`` activations, the largest per-edge tensors of a
    forward pass, from the inputs instead of keeping them
    (:func:`torch.utils.checkpoint.checkpoint`, non-reentrant: derivatives of any order stay
    exact). ``"auto"`` (default): on a GPU, where memory bounds the system size and the MLP is
    cheap; not on the CPU, where it costs time. ``True``/``False`` force it. With trainable
    weights the activations are always kept: the parameter gradients need them anyway.
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
        self.recompute: bool | str = "auto"

    def forward(self, basis: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        if self._recomputes(basis):
            # the saved inputs are the model's shared per-edge inputs, kept once for all its networks
            return checkpoint(self._net, basis, species_i, species_j, use_reentrant=False, preserve_rng_state=False)
        return self._net(basis, species_i, species_j)

    def _recomputes(self, basis: torch.Tensor) -> bool:
        if not (torch.is_grad_enabled() and basis.requires_grad) or self.net[0].weight.requires_grad:
            return False
        return basis.is_cuda if self.recompute == "auto" else bool(self.recompute)

    def _net(self, basis, species_i, species_j):
        return self.net(torch.cat([basis, species_i, species_j], dim=-1))
