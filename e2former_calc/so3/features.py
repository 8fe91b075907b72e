"""Layout of equivariant node features: one channel count ``C`` for every irrep.

A feature tensor has shape ``[n, C, dim]``: for each channel, the components of the irreps
side by side (``dim = sum(2l + 1)``). For the irreps ``0e + 1o + 2e`` and ``C = 128`` that is
``[n, 128, 9]``. e3nn keeps the same numbers as ``[n, C*dim]`` in the order
``128x0e + 128x1o + 128x2e``; :meth:`FeatureLayout.to_e3nn` and :meth:`FeatureLayout.from_e3nn`
convert between the two.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from e3nn import o3


@dataclass(frozen=True)
class FeatureLayout:
    """Irreps ``(l, parity)`` of one channel, in order; parity is +1 (even) or -1 (odd)."""

    irreps: tuple[tuple[int, int], ...]

    @classmethod
    def parse(cls, irreps: "str | o3.Irreps | FeatureLayout") -> "FeatureLayout":
        """From e3nn irreps of multiplicity one, e.g. ``"0e + 1o + 2e"``."""
        if isinstance(irreps, FeatureLayout):
            return irreps
        parsed = o3.Irreps(irreps)
        entries = []
        for mul, ir in parsed:
            if mul != 1:
                raise ValueError(
                    f"feature irreps take one copy of each irrep (channels are separate), got {parsed}"
                )
            entries.append((ir.l, ir.p))
        if len(set(entries)) != len(entries):
            raise ValueError(f"feature irreps repeat an irrep: {parsed}")
        return cls(tuple(entries))

    @classmethod
    def spherical(cls, max_degree: int) -> "FeatureLayout":
        """``0e + 1o + 2e + ...``: the parities of spherical harmonics, up to ``max_degree``."""
        return cls(tuple((l, (-1) ** l) for l in range(max_degree + 1)))

    @property
    def dim(self) -> int:
        return sum(2 * l + 1 for l, _ in self.irreps)

    def slices(self) -> list[slice]:
        """Component slice of each irrep along the last axis (e3nn's ``Irreps.slices``)."""
        return self.e3nn_irreps(1).slices()

    def e3nn_irreps(self, channels: int) -> o3.Irreps:
        """The same features as e3nn irreps: ``channels x`` each irrep."""
        return o3.Irreps([(channels, (l, p)) for l, p in self.irreps])

    def to_e3nn(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., C, dim] -> [..., C*dim]`` in e3nn's order."""
        blocks = [x[..., s].flatten(-2) for s in self.slices()]
        return torch.cat(blocks, dim=-1)

    def from_e3nn(self, x: torch.Tensor, channels: int) -> torch.Tensor:
        """``[..., C*dim]`` in e3nn's order ``-> [..., C, dim]``."""
        return channels_from_e3nn(x, [l for l, _ in self.irreps], channels)

    def wigner_D(self, rotation: torch.Tensor) -> torch.Tensor:
        """Block-diagonal representation ``[dim, dim]`` of an orthogonal 3x3 matrix (O(3)).

        Improper matrices (reflections) multiply odd-parity irreps by -1.
        """
        return self.e3nn_irreps(1).D_from_matrix(rotation)

    def __str__(self) -> str:
        return " + ".join(f"{l}{'e' if p == 1 else 'o'}" for l, p in self.irreps)


def channels_from_e3nn(x: torch.Tensor, degrees: list[int], channels: int) -> torch.Tensor:
    """e3nn's ``[..., C*dim]`` for irreps of the given degrees (``C`` copies each, in order)
    to ``[..., C, dim]``."""
    blocks, start = [], 0
    for l in degrees:
        size = channels * (2 * l + 1)
        blocks.append(x[..., start : start + size].unflatten(-1, (channels, 2 * l + 1)))
        start += size
    return torch.cat(blocks, dim=-1)
