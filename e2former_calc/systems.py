"""Built-in structures for demos, examples and benchmarks.

ASE is imported only when a structure is built, so that listing the names (``e2former --help``)
stays fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ase import Atoms


def _molecule(name: str) -> Atoms:
    from ase.build import molecule

    return molecule(name)


def _copper() -> Atoms:
    from ase.build import bulk

    return bulk("Cu", "fcc", a=3.61, cubic=True).repeat(3)


def _water_box() -> Atoms:
    from ase import Atoms

    water = _molecule("H2O")
    atoms = Atoms()
    for i in range(3):
        for j in range(3):
            for k in range(3):
                copy = water.copy()
                copy.translate([3.1 * i + 1.0, 3.1 * j + 1.0, 3.1 * k + 1.0])
                atoms += copy
    atoms.cell = [9.3, 9.3, 9.3]
    atoms.pbc = True
    return atoms


#: name: (description, function building a fresh copy)
SYSTEMS = {
    "ethanol": ("an ethanol molecule (9 atoms, no periodicity)", lambda: _molecule("CH3CH2OH")),
    "benzene": ("a benzene molecule (12 atoms, no periodicity)", lambda: _molecule("C6H6")),
    "water-box": ("27 water molecules in a periodic 9.3 Å box (81 atoms)", _water_box),
    "copper": ("fcc copper, 3x3x3 cubic cells (108 atoms, periodic)", _copper),
}


def built_in_system(name: str) -> Atoms:
    """A fresh copy of the built-in system ``name`` (see :data:`SYSTEMS`)."""
    if name not in SYSTEMS:
        raise ValueError(f"unknown built-in system {name!r}; choose one of {', '.join(SYSTEMS)}")
    return SYSTEMS[name][1]()
