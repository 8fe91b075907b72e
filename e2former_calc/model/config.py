"""Hyper-parameters of an E2Former potential, in one object."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .repulsion import DEFAULT_SWITCH_OFF


@dataclass(frozen=True)
class E2FormerConfig:
    """Every hyper-parameter of the model (the species and E0s live in the model file).

    Attributes:
        cutoff: radius of the neighbour graph in Å; every edge weight vanishes smoothly there.
        channels: ``C``, channels of every degree of the node features.
        max_degree: ``L_max`` of the node features (irreps ``0e + 1o + 2e + ...``).
        num_layers: transformer blocks.
        num_heads: attention heads (must divide ``channels``).
        head_dim: size of each head's queries and keys.
        filter_degrees: degrees ``f`` of the Wigner 6j convolution's filters.
        radial_basis: Bessel functions of the distance.
        radial_hidden: hidden width of the radial networks.
        species_features: size of the species embedding fed to the radial networks.
        feedforward_channels: hidden channels of the gated feed-forward layers.
        envelope_exponent: ``p`` of the polynomial cutoff envelope (C² at the cutoff for any p;
            p >= 2 keeps it smooth at r = 0 too).
        average_neighbours: normalisation of the edge-degree embedding's sum.
        energy_scale: factor (eV) on the per-atom energy readout. Training's ``auto`` sets it to
            the numerical value of the data's RMS force component in eV/Å (i.e. the typical energy
            change of moving an atom by 1 Å against a typical force), the usual scale in MACE.
        zbl: add the screened nuclear repulsion (ZBL) of close atoms
            (:mod:`e2former_calc.model.repulsion`): hot or compressed MD then pushes atoms apart
            where the training data had none so close.
        zbl_switch_off: where the repulsion ends, as a fraction of the sum of the two atoms'
            covalent radii; short of every bond length, so that the network need not cancel it
            there (model files written before this setting existed load with 1.0, what they used).
    """

    cutoff: float = 5.0
    channels: int = 32
    max_degree: int = 2
    num_layers: int = 2
    num_heads: int = 4
    head_dim: int = 8
    filter_degrees: tuple[int, ...] = (1,)
    radial_basis: int = 8
    radial_hidden: int = 32
    species_features: int = 8
    feedforward_channels: int = 64
    envelope_exponent: int = 5
    average_neighbours: float = 20.0
    energy_scale: float = 1.0
    zbl: bool = False
    zbl_switch_off: float = DEFAULT_SWITCH_OFF

    def __post_init__(self):
        object.__setattr__(self, "filter_degrees", tuple(int(f) for f in self.filter_degrees))
        checks = [
            (self.cutoff > 0, "cutoff must be positive"),
            (self.channels > 0 and self.num_heads > 0, "channels and num_heads must be positive"),
            (self.channels % self.num_heads == 0, f"num_heads ({self.num_heads}) must divide channels ({self.channels})"),
            (0 <= self.max_degree <= 4, "max_degree must lie in 0..4"),
            (bool(self.filter_degrees) and all(0 <= f <= 4 for f in self.filter_degrees), "filter degrees must lie in 0..4"),
            (self.num_layers >= 0, "num_layers must be >= 0"),
            (self.envelope_exponent >= 2, "envelope_exponent must be >= 2"),
            (self.average_neighbours > 0, "average_neighbours must be positive"),
            (isinstance(self.zbl, bool), f"zbl must be true or false, got {self.zbl!r}"),
            (isinstance(self.zbl_switch_off, (int, float)) and 0 < self.zbl_switch_off <= 1.5,
             f"zbl_switch_off must be a fraction in (0, 1.5], got {self.zbl_switch_off!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"E2FormerConfig: {message}")

    def to_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["filter_degrees"] = list(self.filter_degrees)
        return out

    @classmethod
    def from_dict(cls, values: dict) -> "E2FormerConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown E2FormerConfig keys: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def preset(cls, name: str, **overrides) -> "E2FormerConfig":
        """``"small"`` (fast, for tests and quick MD) or ``"medium"`` (accuracy)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)


PRESETS = {
    "small": E2FormerConfig(),
    "medium": E2FormerConfig(
        channels=96, num_layers=4, num_heads=8, head_dim=16, radial_hidden=64, species_features=16,
        feedforward_channels=192,
    ),
}
