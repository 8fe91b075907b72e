"""Screened nuclear repulsion (ZBL) between atoms that come too close, off at bonding distances.

Two nuclei closer than any bond repel as screened point charges; the universal screening of
Ziegler, Biersack and Littmark (ZBL) gives, for atoms ``i, j`` at distance ``r``,

    V(r) = k_e Z_i Z_j / r * phi(r / a_ij),     a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x)
             + 0.02817 e^(-0.20162 x),

with ``k_e = e^2 / (4 pi eps0)`` (14.40 eV·Å). The model adds

    E_i += 1/2 sum_{j} V(r_ij) u(r_ij / r_ij^c),     r_ij^c = min(R_i + R_j, cutoff),

over its (directed) edges ``i <- j``, with ``R`` the covalent radii (``ase.data.covalent_radii``)
and ``u`` the model's polynomial envelope (exponent 6): it is C² and vanishes at the sum of the
covalent radii, so near-equilibrium bonds feel little of it and the network learns the rest,
while atoms pushed together (hot or compressed MD) meet a wall that grows as ``Z_i Z_j / r``
instead of whatever a network makes of distances it never saw. A lone atom is untouched (no
edges), so its energy stays E0.
"""

from __future__ import annotations

import math

import torch
from ase import units
from ase.data import covalent_radii
from torch import nn

from .radial import polynomial_envelope

#: e^2 / (4 pi eps0) in eV·Å
COULOMB_EV_ANGSTROM = units._e / (4 * math.pi * units._eps0) * 1e10
#: the universal screening function's coefficients and exponents
ZBL_COEFFICIENTS = (0.18175, 0.50986, 0.28022, 0.02817)
ZBL_EXPONENTS = (3.19980, 0.94229, 0.40290, 0.20162)
#: Å, the screening length's numerator (0.8854 Bohr radii)
ZBL_LENGTH = 0.46850
ZBL_ENVELOPE_EXPONENT = 6


class ZBLRepulsion(nn.Module):
    """Pair energies ``V(r) u(r / r^c)`` of the model's species (module doc), float64.

    Args:
        atomic_numbers: the model's species, in its species order.
        cutoff: the model's cutoff (Å); the switch-off radius never exceeds it.
    """

    def __init__(self, atomic_numbers, cutoff: float):
        super().__init__()
        z = torch.tensor([float(n) for n in atomic_numbers], dtype=torch.float64)
        self.register_buffer("charges", z, persistent=False)
        self.register_buffer("radii", torch.tensor([float(covalent_radii[int(n)]) for n in atomic_numbers],
                                                   dtype=torch.float64), persistent=False)
        self.cutoff = float(cutoff)

    def close_edges(self, lengths: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """``[E']`` indices of the edges inside their switch-off radius: the only ones with a
        nonzero energy or derivative (``u`` and its derivatives vanish beyond it), typically the
        bonded pairs, so the pair term stores ``O(E')`` for the backward pass, not ``O(E)``."""
        with torch.no_grad():
            radii = self.radii.to(lengths.device)
            switch_off = torch.clamp(radii.index_select(0, species_i) + radii.index_select(0, species_j), max=self.cutoff)
            return torch.nonzero(lengths.to(torch.float64) < switch_off).squeeze(-1)

    def forward(self, lengths: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """``[E]`` pair energies (eV) of edges of ``lengths`` (Å) between species indices."""
        r = lengths.to(torch.float64)
        charges, radii = self.charges.to(r.device), self.radii.to(r.device)
        zi, zj = charges.index_select(0, species_i), charges.index_select(0, species_j)
        x = r * (zi.pow(0.23) + zj.pow(0.23)) / ZBL_LENGTH
        phi = sum(c * torch.exp(-b * x) for c, b in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS))
        switch_off = torch.clamp(radii.index_select(0, species_i) + radii.index_select(0, species_j), max=self.cutoff)
        u = polynomial_envelope(r / switch_off, 1.0, ZBL_ENVELOPE_EXPONENT)
        # beyond the switch-off radius u is exactly 0; r > 0 for every edge (coincident atoms are
        # refused before the model runs)
        return COULOMB_EV_ANGSTROM * zi * zj / r * phi * u
