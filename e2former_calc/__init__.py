"""e2former-calc: the E2Former equivariant transformer as an interatomic potential.

    from e2former_calc import E2FormerCalculator
    atoms.calc = E2FormerCalculator.from_file("my_potential.pt")
"""

__version__ = "0.1.0"

from .forces import ForceField  # noqa: E402
from .graph import AtomGraph  # noqa: E402
from .integrations.ase import E2FormerCalculator  # noqa: E402
from .model import E2Former, E2FormerConfig  # noqa: E402
from .predict import predict  # noqa: E402

__all__ = ["AtomGraph", "E2Former", "E2FormerCalculator", "E2FormerConfig", "ForceField", "predict"]
