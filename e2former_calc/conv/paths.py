"""Coupling paths of a convolution: input irrep (x) filter of degree f -> output irrep."""

from __future__ import annotations

from dataclasses import dataclass

from ..so3.coupling import triangle
from ..so3.features import FeatureLayout


@dataclass(frozen=True)
class Path:
    """``[x^(l_in) (x) Y_f]^(l_out)``, with parities; ``input``/``output`` index the layouts."""

    input: int
    l_in: int
    f: int
    output: int
    l_out: int
    parity: int

    @property
    def dim(self) -> int:
        return 2 * self.l_out + 1


def enumerate_paths(
    layout_in: FeatureLayout, filter_degrees: tuple[int, ...], layout_out: FeatureLayout
) -> list[Path]:
    """All allowed paths, ordered by filter degree, then input irrep, then output irrep.

    A path is allowed when ``l_out`` is in the triangle of ``l_in`` and ``f`` and the parities
    match: ``p_out = p_in * (-1)^f`` (the filter ``Y_f`` has parity ``(-1)^f``).
    """
    paths = []
    for f in filter_degrees:
        for i, (l_in, p_in) in enumerate(layout_in.irreps):
            for o, (l_out, p_out) in enumerate(layout_out.irreps):
                if triangle(l_in, f, l_out) and p_out == p_in * (-1) ** f:
                    paths.append(Path(i, l_in, f, o, l_out, p_out))
    return paths
