"""e2former-calc: the E2Former equivariant transformer as an interatomic potential.

    from e2former_calc import E2FormerCalculator
    atoms.calc = E2FormerCalculator.from_file("my_potential.pt")

The names below are imported on first use, so that ``e2former --help`` starts without torch.
"""

import importlib

__version__ = "0.1.0"

_WHERE = {
    "AtomGraph": ".graph",
    "E2Former": ".model",
    "E2FormerCalculator": ".integrations.ase",
    "E2FormerConfig": ".model",
    "ForceField": ".forces",
    "predict": ".predictor",
}
__all__ = sorted(_WHERE)


def __getattr__(name):
    if name in _WHERE:
        value = getattr(importlib.import_module(_WHERE[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + __all__)
