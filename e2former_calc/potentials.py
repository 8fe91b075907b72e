"""Where shipped and user potentials are found by name."""

from __future__ import annotations

import os
import sys
from pathlib import Path

#: The repository's ``potentials/`` folder (present in a clone and an editable install).
POTENTIALS = Path(__file__).resolve().parent.parent / "potentials"
#: Where a regular (non-editable) install puts the shipped potentials (pyproject's data-files).
INSTALLED_POTENTIALS = Path(sys.prefix) / "share" / "e2former-calc" / "potentials"


def potential_folders() -> list[Path]:
    """Where ``from_pretrained`` looks for ``NAME.pt``: the folders in ``$E2FORMER_POTENTIALS``
    (separated by ``os.pathsep``), the repository's ``potentials/``, then the installed copies
    under ``sys.prefix/share/e2former-calc/potentials``."""
    extra = [Path(p) for p in os.environ.get("E2FORMER_POTENTIALS", "").split(os.pathsep) if p]
    return extra + [POTENTIALS, INSTALLED_POTENTIALS]


def find_potential(name: str) -> Path | None:
    for folder in potential_folders():
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
    return None


def resolve_potential(name: str) -> Path:
    """The file of the potential ``name``; ValueError listing the available names if there is none."""
    path = find_potential(name)
    if path is None:
        known = sorted({p.stem for folder in potential_folders() if folder.is_dir() for p in folder.glob("*.pt")})
        raise ValueError(f"no shipped potential named {name!r}; available: {', '.join(known) or 'none yet'}")
    return path
