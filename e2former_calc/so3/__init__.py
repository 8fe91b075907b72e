"""O(3) mathematics: feature layout, solid harmonics and coupling coefficients.

Everything here follows e3nn's real basis: spherical harmonics from
``e3nn.o3.spherical_harmonics`` and coupling tensors from ``e3nn.o3.wigner_3j``.
"""

from .coupling import addition_coefficient, recoupling_coefficients, wigner_3j
from .features import FeatureLayout
from .solid_harmonics import solid_harmonics, spherical_harmonics

__all__ = [
    "FeatureLayout",
    "addition_coefficient",
    "recoupling_coefficients",
    "solid_harmonics",
    "spherical_harmonics",
    "wigner_3j",
]
