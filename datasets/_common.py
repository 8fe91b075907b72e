"""What both data recipes share: reproducible splits and compressed extended-XYZ output.

Labels are stored under ``REF_energy`` (eV, ``atoms.info``), ``REF_forces`` (eV/Å,
``atoms.arrays``) and, for periodic cells, ``REF_stress`` (eV/Å³, Voigt xx yy zz yz xz xy, ASE's
sign), so that no program mistakes them for its own predictions. ``config_type`` names the
molecule or kind of structure, ``frame`` its index in the recipe's own order.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from ase import units
from ase.io import write
from ase.md.langevin import Langevin
from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta

MOLECULE_TIMESTEP = 0.5  # fs, Langevin MD of the molecules
MOLECULE_FRICTION = 0.01  # 1/fs


def label(atoms, calculator, stress: bool = False, **info):
    """A copy of ``atoms`` with the calculator's energy, forces (and stress) as REF_* labels."""
    atoms = atoms.copy()
    atoms.calc = calculator
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    labelled = atoms.copy()  # no calculator attached: the labels live in info/arrays
    if "momenta" in labelled.arrays:
        del labelled.arrays["momenta"]
    labelled.info.update(info)
    labelled.info["REF_energy"] = float(energy)
    labelled.arrays["REF_forces"] = np.array(forces)
    if stress:
        labelled.info["REF_stress"] = np.array(atoms.get_stress(voigt=True))
    return labelled


def molecule_langevin(atoms, temperature: float, rng) -> Langevin:
    """Langevin dynamics of a free molecule (``MOLECULE_TIMESTEP``, ``MOLECULE_FRICTION``) from
    Maxwell-Boltzmann momenta at ``temperature`` (K) without net momentum or rotation."""
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    return Langevin(atoms, MOLECULE_TIMESTEP * units.fs, temperature_K=temperature,
                    friction=MOLECULE_FRICTION / units.fs, fixcm=False, rng=rng)


def split_indices(n: int, sizes: dict, seed: int) -> dict:
    """Disjoint index sets from one seeded permutation of ``range(n)``: ``sizes`` maps names to
    counts in order; a count of None takes the rest."""
    order = np.random.default_rng(seed).permutation(n)
    out, start = {}, 0
    for name, size in sizes.items():
        stop = n if size is None else start + size
        if stop > n:
            raise ValueError(f"split {name!r} needs {stop} frames, only {n} exist")
        out[name] = sorted(int(i) for i in order[start:stop])
        start = stop
    return out


def write_frames(path: Path, frames) -> None:
    """Write frames as (gzipped, by extension) extended XYZ, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name.replace(".extxyz", ".partial.extxyz"))
    write(temporary, list(frames), format="extxyz")
    os.replace(temporary, path)


def write_json(path: Path, data) -> None:
    path = Path(path)
    path.write_text(json.dumps(data, indent=1) + "\n")
