"""Regular solid harmonics and spherical harmonics in e3nn's real basis.

``S_l(v) = |v|^l Y_l(v/|v|)`` is a homogeneous polynomial of degree ``l`` in the components
of ``v``: smooth everywhere, zero at ``v = 0`` for ``l > 0``, and ``S_0 = 1``.
"""

from __future__ import annotations

import torch
from e3nn import o3


def solid_harmonics(max_degree: int, vectors: torch.Tensor) -> torch.Tensor:
    """All regular solid harmonics ``S_0 .. S_max_degree`` of ``vectors``.

    Args:
        max_degree: highest degree ``l`` (>= 0).
        vectors: ``[..., 3]``.

    Returns:
        ``[..., (max_degree + 1)**2]``: the blocks ``S_0, S_1, ...`` side by side, each of
        ``2l + 1`` components ("component" normalisation: ``|Y_l(u)|^2 = 2l + 1`` on the sphere).
    """
    return o3.spherical_harmonics(
        list(range(max_degree + 1)), vectors, normalize=False, normalization="component"
    )


def spherical_harmonics(degree: int, vectors: torch.Tensor) -> torch.Tensor:
    """``Y_degree(v/|v|)``: ``[..., 3] -> [..., 2 degree + 1]`` ("component" normalisation)."""
    return o3.spherical_harmonics(degree, vectors, normalize=True, normalization="component")
