"""Labelled structures for training: read from any ASE-readable file, neighbour lists made once.

A :class:`Sample` holds one structure and its reference labels (float64, eV and Å):
energy ``[]``, forces ``[n, 3]``, and for fully periodic cells the stress ``[6]`` (Voigt xx yy zz
yz xz xy, eV/Å³, ASE's sign) when the file has one. Labels are looked up under the configured keys
in ``atoms.info`` / ``atoms.arrays`` first, then among the results of an attached (single-point)
calculator, which is where ASE puts ``energy``/``forces``/``stress`` of extended XYZ files.
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols
from ase.io import read
from ase.stress import voigt_6_to_full_3x3_stress

import torch

from ..neighbours import Neighbours, neighbour_list
from ..validation import check_distances, check_structure


@dataclass
class Sample:
    numbers: np.ndarray  # [n] atomic numbers
    positions: np.ndarray  # [n, 3]
    cell: np.ndarray  # [3, 3]
    pbc: np.ndarray  # [3] bool
    energy: float
    forces: np.ndarray | None  # [n, 3]
    stress: np.ndarray | None  # [3, 3] (full tensor), periodic cells only
    config_type: str
    neighbours: Neighbours | None = None

    @property
    def n_atoms(self) -> int:
        return len(self.numbers)


def label(atoms, key):
    """The label ``key`` of ``atoms``: info, arrays, then the calculator's results; None if absent."""
    if key is None:
        return None
    for store in (atoms.info, atoms.arrays):
        if key in store:
            return store[key]
    calc = atoms.calc
    if calc is not None and key in getattr(calc, "results", {}):
        return calc.results[key]
    return None


def stress_tensor(value, where: str) -> np.ndarray:
    """A stress label as a 3x3 tensor: from Voigt 6 (xx yy zz yz xz xy), 9 numbers or 3x3."""
    value = np.asarray(value, dtype=np.float64)
    if value.shape == (6,):
        return voigt_6_to_full_3x3_stress(value)
    if value.size == 9:
        return value.reshape(3, 3)
    raise ValueError(f"{where}: the stress label has shape {value.shape}, expected 6 (Voigt), 9 or 3x3")


def read_frames(path, index=":") -> list:
    """Frames of an ASE-readable file. Compressed files (``.gz``, ``.bz2``, ``.xz``) are
    decompressed into memory first: ASE's reader seeks in them, which re-decompresses from the
    start every time (minutes for ten thousand frames)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"structure file not found: {path}")
    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    if path.suffix in openers:
        with openers[path.suffix](path, "rt") as handle:
            text = io.StringIO(handle.read())
        inner = Path(path.stem).suffix.lstrip(".") or "extxyz"
        frames = read(text, index=index, format={"xyz": "extxyz"}.get(inner, inner))
    else:
        frames = read(path, index=index)
    return frames if isinstance(frames, list) else [frames]


def read_samples(path, energy_key="REF_energy", forces_key="REF_forces", stress_key="REF_stress",
                 index=":") -> list[Sample]:
    """Every frame of ``path`` as a :class:`Sample`; a frame without an energy, or with labels of
    the wrong shape or non-finite values, raises ``ValueError`` naming the frame."""
    frames = read_frames(path, index)
    if not frames:
        raise ValueError(f"{path} holds no structures")
    samples = []
    for k, atoms in enumerate(frames):
        where = f"{path}, frame {k}"
        energy = label(atoms, energy_key)
        if energy is None:
            raise ValueError(f"{where}: no energy under the key {energy_key!r}")
        forces = label(atoms, forces_key)
        if forces is not None:
            forces = np.asarray(forces, dtype=np.float64)
            if forces.shape != (len(atoms), 3):
                raise ValueError(f"{where}: forces under {forces_key!r} have shape {forces.shape}, expected ({len(atoms)}, 3)")
        stress = label(atoms, stress_key) if atoms.pbc.all() else None
        if stress is not None:
            stress = stress_tensor(stress, f"{where}, key {stress_key!r}")
        energy = float(energy)
        for name, value in (("energy", energy), ("forces", forces), ("stress", stress)):
            if value is not None and not np.all(np.isfinite(value)):
                raise ValueError(f"{where}: the {name} label is not finite")
        check_structure(atoms.numbers, atoms.get_positions(), atoms.cell.array, atoms.pbc, where=f"{where}: ")
        samples.append(Sample(
            numbers=atoms.numbers.copy(), positions=atoms.get_positions(), cell=atoms.cell.array.copy(),
            pbc=atoms.pbc.copy(), energy=energy, forces=forces, stress=stress,
            config_type=str(atoms.info.get("config_type", "all")),
        ))
    return samples


def attach_neighbours(samples, cutoff: float, where: str = "data") -> None:
    """Neighbour lists of the (fixed) training geometries, made once. Two atoms closer than the
    calculator's minimum distance are refused, naming the frame and the atoms."""
    for k, sample in enumerate(samples):
        nb = neighbour_list(sample.positions, sample.cell, sample.pbc, cutoff)
        lengths = np.linalg.norm(sample.positions[nb.senders] + nb.shifts @ sample.cell - sample.positions[nb.receivers],
                                 axis=1)
        try:
            check_distances(torch.from_numpy(lengths), torch.from_numpy(nb.receivers), torch.from_numpy(nb.senders),
                            sample.numbers)
        except ValueError as error:
            raise ValueError(f"{where}, frame {k}: {error}") from None
        sample.neighbours = nb


def species_of(samples) -> list[int]:
    """The atomic numbers present, sorted."""
    return sorted({int(z) for s in samples for z in np.unique(s.numbers)})


def check_species(samples, known, where: str) -> None:
    """Raise naming the first element of ``samples`` that ``known`` lacks."""
    known = set(known)
    for k, sample in enumerate(samples):
        unknown = set(int(z) for z in sample.numbers) - known
        if unknown:
            names = ", ".join(chemical_symbols[z] for z in sorted(unknown))
            raise ValueError(f"{where}, frame {k}: element {names} is not among the model's species "
                             f"({', '.join(chemical_symbols[z] for z in sorted(known))})")


def fit_e0(samples, species) -> list[float]:
    """Per-species reference energies by least squares, ``E_s ~ sum_Z n_sZ e0_Z`` (eV).

    Raises if the compositions cannot separate the species (e.g. every frame has the same
    stoichiometry ratios), rather than returning an arbitrary split.
    """
    counts = np.array([[np.sum(s.numbers == z) for z in species] for s in samples], dtype=np.float64)
    energies = np.array([s.energy for s in samples])
    rank = np.linalg.matrix_rank(counts)
    if rank < len(species):
        raise ValueError(
            f"the training compositions determine only {rank} of the {len(species)} reference energies "
            f"({', '.join(chemical_symbols[z] for z in species)}); give e0 as isolated atoms or explicit values"
        )
    e0, *_ = np.linalg.lstsq(counts, energies, rcond=None)
    return [float(e) for e in e0]


def isolated_atom_e0(samples, species) -> list[float]:
    """Reference energies from single-atom frames of the data (one per species)."""
    found = {}
    for s in samples:
        if s.n_atoms == 1:
            found.setdefault(int(s.numbers[0]), s.energy)
    missing = [chemical_symbols[z] for z in species if z not in found]
    if missing:
        raise ValueError(f"no isolated-atom frame for {', '.join(missing)}")
    return [found[z] for z in species]


def statistics(samples, e0: dict) -> dict:
    """Scales for the network: RMS force component (eV/Å), mean neighbours per atom, and the RMS
    per-atom energy after subtracting E0 (eV/atom)."""
    forces = np.concatenate([s.forces.ravel() for s in samples if s.forces is not None] or [np.zeros(1)])
    residual = [(s.energy - sum(e0[int(z)] for z in s.numbers)) / s.n_atoms for s in samples]
    neighbours = [len(s.neighbours.receivers) / s.n_atoms for s in samples if s.neighbours is not None]
    return {
        "rms_force": float(np.sqrt(np.mean(forces**2))),
        "rms_residual_energy_per_atom": float(np.sqrt(np.mean(np.square(residual)))),
        "mean_neighbours": float(np.mean(neighbours)) if neighbours else float("nan"),
    }
