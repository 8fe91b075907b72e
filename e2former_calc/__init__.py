"""e2former-calc: the E2Former equivariant transformer as an interatomic potential."""

__version__ = "0.1.0"
