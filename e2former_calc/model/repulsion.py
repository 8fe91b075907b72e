"""Screened nuclear repulsion (ZBL) between atoms that come too close, off at bonding distances.

Two nuclei closer than any bond repel as screened point charges; the universal screening of
Ziegler, Biersack and Littmark (ZBL) gives, for atoms ``i, j`` at distance ``r``,

    V(r) = k_e Z_i Z_j / r * phi(r / a_ij),     a_ij = 0.46850 Å / (Z_i^0.23 + Z_j^0.23),
    phi(x) = 0.18175 e^(-3.19980 x) + 0.50986 e^(-0.94229 x) + 0.28022 e^(-0.40290 x)
             + 0.02817 e^(-0.20162 x),

with ``k_e = e^2 / (4 pi eps0)`` (14.40 eV·Å). The model adds

    E_i += 1/2 sum_{j} V(r_ij) u(r_ij / r_ij^c),     r_ij^c = min(s (R_i + R_j), cutoff),

over its (directed) edges ``i <- j``, with ``R`` the covalent radii (``ase.data.covalent_radii``),
``s`` the switch-off fraction (``E2FormerConfig.zbl_switch_off``) and ``u`` the model's
polynomial envelope (exponent 6), C² and zero from ``r_ij^c`` on. Atoms pushed together (hot or
compressed MD) meet a wall that grows as ``Z_i Z_j / r`` instead of whatever a network makes of
distances it never saw; the network learns the rest. A lone atom is untouched (no edges), so its
energy stays E0.

The switch must end short of every bond length, or the network has to learn to cancel the term
there. With ``s = 1`` (the first potentials) many bonds are shorter than ``R_i + R_j`` (C=O 1.23 Å
against 1.42 Å, aromatic C-C 1.40 against 1.52), and on the organic test frames the term gave
force components of RMS 2.9 eV/Å, twice the labels' own 1.3 eV/Å (largest 24 eV/Å;
``benchmarks/zbl_on_data.py``). :data:`DEFAULT_SWITCH_OFF` ends it at 3/4 of the radii, below
the shortest bonds of H, C, N and O (triple bonds: 0.77-0.80 of the radii).
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
#: the switch-off radius of new models, as a fraction of the two covalent radii (module doc)
DEFAULT_SWITCH_OFF = 0.75
#: the switch-off fraction of model files written before it was a setting
LEGACY_SWITCH_OFF = 1.0


class ZBLRepulsion(nn.Module):
    """Pair energies ``V(r) u(r / r^c)`` of the model's species (module doc), float64.

    Args:
        atomic_numbers: the model's species, in its species order.
        cutoff: the model's cutoff (Å); the switch-off radius never exceeds it.
        switch_off: ``s``, the switch-off radius as a fraction of the sum of the covalent radii.
    """

    def __init__(self, atomic_numbers, cutoff: float, switch_off: float = DEFAULT_SWITCH_OFF):
        super().__init__()
        if not 0 < switch_off <= 1.5:
            raise ValueError(f"the ZBL switch-off fraction must lie in (0, 1.5], got {switch_off}")
        self.switch_off = float(switch_off)
        z = torch.tensor([float(n) for n in atomic_numbers], dtype=torch.float64)
        self.register_buffer("charges", z, persistent=False)
        # s R_i, so that r^c = s R_i + s R_j
        radii = [self.switch_off * float(covalent_radii[int(n)]) for n in atomic_numbers]
        self.register_buffer("switch_radii", torch.tensor(radii, dtype=torch.float64), persistent=False)
        self.cutoff = float(cutoff)

    def close_edges(self, lengths: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """``[E']`` indices of the edges inside their switch-off radius: the only ones with a
        nonzero energy or derivative (``u`` and its derivatives vanish beyond it): few or none near
        equilibrium, so the pair term stores ``O(E')`` for the backward pass, not ``O(E)``."""
        with torch.no_grad():
            radii = self.switch_radii.to(lengths.device)
            switch_off = torch.clamp(radii.index_select(0, species_i) + radii.index_select(0, species_j), max=self.cutoff)
            return torch.nonzero(lengths.to(torch.float64) < switch_off).squeeze(-1)

    def forward(self, lengths: torch.Tensor, species_i: torch.Tensor, species_j: torch.Tensor) -> torch.Tensor:
        """``[E]`` pair energies (eV) of edges of ``lengths`` (Å) between species indices."""
        r = lengths.to(torch.float64)
        charges, radii = self.charges.to(r.device), self.switch_radii.to(r.device)
        zi, zj = charges.index_select(0, species_i), charges.index_select(0, species_j)
        x = r * (zi.pow(0.23) + zj.pow(0.23)) / ZBL_LENGTH
        phi = sum(c * torch.exp(-b * x) for c, b in zip(ZBL_COEFFICIENTS, ZBL_EXPONENTS))
        switch_off = torch.clamp(radii.index_select(0, species_i) + radii.index_select(0, species_j), max=self.cutoff)
        u = polynomial_envelope(r / switch_off, 1.0, ZBL_ENVELOPE_EXPONENT)
        # beyond the switch-off radius u is exactly 0; r > 0 for every edge (coincident atoms are
        # refused before the model runs)
        return COULOMB_EV_ANGSTROM * zi * zj / r * phi * u
