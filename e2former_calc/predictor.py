"""Energies, forces and stresses of ASE ``Atoms`` from an E2Former model, one or many at a time.

Forces are ``F = -dE/dr`` and the stress ``sigma = (1/V) dE/d(epsilon)`` for a symmetric strain
``epsilon`` applied to positions and cell (ASE's sign: positive is tensile; Voigt order xx, yy,
zz, yz, xz, xy), both from one backward pass. Positions, cells and edge vectors stay float64;
the network runs in the model's dtype.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from ase.data import chemical_symbols

from .batching import StructureBatch, assemble, energies_and_derivatives
from .conv import ConvGraph
from .model import E2Former
from .neighbours import VerletList, check_cell, neighbour_list

#: Two atoms closer than this (Å) are refused: no chemistry puts nuclei this close, and a
#: potential trained on real structures says nothing meaningful there.
MINIMUM_DISTANCE = 0.4


def resolve_device(device) -> torch.device:
    """``"auto"``: CUDA when available, else CPU."""
    if device == "auto" or device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype) and dtype in (torch.float32, torch.float64):
        return dtype
    if dtype in ("float32", "float64"):
        return getattr(torch, dtype)
    raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")


class Predictor:
    """Evaluates a model on ASE ``Atoms``.

    Args:
        model: an :class:`~e2former_calc.model.E2Former`; the predictor works on its own copy
            (on ``device``, in ``dtype``, frozen), so the caller's model is left as it was.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        dtype: ``"float64"`` (default) or ``"float32"``.
        skin: Verlet skin (Å) for :meth:`compute` on a sequence of similar structures (MD);
            0 rebuilds the neighbour list at every call. Batches never use it.
    """

    def __init__(self, model: E2Former, device="auto", dtype="float64", skin: float = 0.0):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        self.model = copy.deepcopy(model).to(device=self.device, dtype=self.dtype).eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.cutoff = float(model.config.cutoff)
        self._index = {z: n for n, z in enumerate(model.atomic_numbers)}
        self.verlet = VerletList(self.cutoff, skin)
        self._graph = None  # (neighbours, ConvGraph) reused while the Verlet list is

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in self.model.atomic_numbers]

    # -- input checks -----------------------------------------------------------------------
    def check(self, atoms) -> None:
        """Raise ValueError naming the problem if ``atoms`` cannot be evaluated."""
        if len(atoms) == 0:
            raise ValueError("the structure has no atoms")
        positions = atoms.get_positions()
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
        if bad.size:
            raise ValueError(f"atom {bad[0]} ({atoms[bad[0]].symbol}) has a non-finite position {positions[bad[0]].tolist()}")
        for k, z in enumerate(atoms.numbers):
            if z not in self._index:
                name = chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)
                raise ValueError(
                    f"element {name} (atom {k}) is not known to this potential; it knows {', '.join(self.symbols)}"
                )
        check_cell(atoms.cell.array, atoms.pbc)

    def _check_distances(self, graph: ConvGraph, numbers, offsets) -> None:
        if graph.n_edges == 0:
            return
        shortest = int(torch.argmin(graph.lengths))
        distance = float(graph.lengths[shortest])
        if distance < MINIMUM_DISTANCE:
            i, j = int(graph.receivers[shortest]), int(graph.senders[shortest])
            s = int(np.searchsorted(offsets, i, side="right") - 1)
            where = f" in structure {s}" if len(offsets) > 1 else ""
            image = " (a periodic image of itself)" if i == j else ""
            raise ValueError(
                f"atoms {i - offsets[s]} ({chemical_symbols[numbers[i]]}) and {j - offsets[s]} "
                f"({chemical_symbols[numbers[j]]}){image}{where} are {distance:.3f} Å apart, closer than the "
                f"minimum of {MINIMUM_DISTANCE} Å this package accepts"
            )

    # -- assembling a batch -----------------------------------------------------------------
    def _assemble(self, atoms_list, neighbours_list) -> StructureBatch:
        return assemble([np.array([self._index[z] for z in a.numbers]) for a in atoms_list],
                        [a.get_positions() for a in atoms_list], [a.cell.array for a in atoms_list],
                        [a.pbc for a in atoms_list], neighbours_list, self.device)

    # -- evaluation -------------------------------------------------------------------------
    def _evaluate(self, b: StructureBatch, base: ConvGraph, forces: bool, stress: bool) -> list[dict]:
        out = energies_and_derivatives(self.model, b, base, forces, stress)
        energies, atom_energies = out["energies"].detach(), out["atom_energies"].detach()
        finite = torch.isfinite(energies)
        if not bool(finite.all()):
            s = int(torch.nonzero(~finite)[0, 0])
            where = f" for structure {s}" if b.n_structures > 1 else ""
            raise FloatingPointError(f"the potential returned a non-finite energy{where}; its weights may be damaged")
        force_values = out.get("forces")
        virials = out.get("virials")
        results = []
        start = 0
        for s, n in enumerate(b.n_atoms):
            out = {
                "energy": float(energies[s].detach()),
                "energies": atom_energies[start : start + n].detach().cpu().numpy().copy(),
            }
            out["free_energy"] = out["energy"]
            if forces:
                out["forces"] = force_values[start : start + n].cpu().numpy().copy()
            if stress and b.periodic[s]:
                volume = abs(float(torch.det(b.cells[s])))
                sigma = (virials[s] / volume).cpu().numpy()
                out["stress"] = np.array([sigma[0, 0], sigma[1, 1], sigma[2, 2], sigma[1, 2], sigma[0, 2], sigma[0, 1]])
            results.append(out)
            start += n
        return results

    def compute(self, atoms, forces: bool = True, stress: bool = True) -> dict:
        """Energy, per-atom energies, forces and (fully periodic cells) stress of one structure.

        Reuses the neighbour list and the convolution's structure while the Verlet skin allows.
        """
        self.check(atoms)
        neighbours, rebuilt = self.verlet.update(atoms.get_positions(), atoms.cell.array, atoms.pbc, atoms.numbers)
        b = self._assemble([atoms], [neighbours])
        if rebuilt or self._graph is None:
            self._graph = b.graph(self.cutoff)
        base = self._graph.with_positions(b.positions, b.shifts())  # the cell may have changed (NPT)
        self._check_distances(base, atoms.numbers, [0])
        return self._evaluate(b, base, forces, stress and bool(atoms.pbc.all()))[0]

    def compute_batch(self, atoms_list, forces: bool = True, stress: bool = True) -> list[dict]:
        """The same for several structures in one pass (fresh neighbour lists, no skin)."""
        atoms_list = list(atoms_list)
        for atoms in atoms_list:
            self.check(atoms)
        neighbours = [neighbour_list(a.get_positions(), a.cell.array, a.pbc, self.cutoff) for a in atoms_list]
        b = self._assemble(atoms_list, neighbours)
        base = b.graph(self.cutoff)
        numbers = np.concatenate([a.numbers for a in atoms_list])
        self._check_distances(base, numbers, np.cumsum([0] + [len(a) for a in atoms_list])[:-1])
        return self._evaluate(b, base, forces, stress and any(b.periodic))
