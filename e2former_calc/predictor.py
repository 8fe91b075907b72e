"""Energies, forces and stresses of ASE ``Atoms`` from an E2Former model, one or many at a time.

Forces are ``F = -dE/dr`` and the stress ``sigma = (1/V) dE/d(epsilon)`` for a symmetric strain
``epsilon`` applied to positions and cell (ASE's sign: positive is tensile; Voigt order xx, yy,
zz, yz, xz, xy), both from one backward pass. Positions, cells and edge vectors stay float64;
the network runs in the model's dtype.
"""

from __future__ import annotations


import numpy as np
import torch
from ase.data import chemical_symbols
from ase.stress import full_3x3_to_voigt_6_stress

from .allocator import keep_freed_memory_on
from .forces import ForceField, StepGraphs
from .graph import AtomGraph
from .model import E2Former
from .model.recompute import set_recompute
from .neighbours import VerletList, neighbour_list
from .validation import check_graph_distances, check_structure


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
    """Evaluates a model on ASE ``Atoms`` through the :class:`~e2former_calc.forces.ForceField`.

    Args:
        model: an :class:`~e2former_calc.model.E2Former`; the predictor works on its own copy
            (on ``device``, in ``dtype``, frozen), so the caller's model is left as it was.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ...
        dtype: ``"float64"`` (default) or ``"float32"``.
        skin: Verlet skin (Å) for :meth:`compute` on a sequence of similar structures (MD);
            0 rebuilds the neighbour list at every call. Batches never use it.
        neighbours: ``"auto"`` (the torch cell list on a GPU, matscipy on the CPU),
            ``"matscipy"`` or ``"torch"`` (see :func:`~e2former_calc.neighbours.neighbour_list`).
        recompute: ``"auto"`` (the convolutions' source products are redone in the backward
            pass), False (keep everything), or ``"blocks"``: the backward pass recomputes every
            block's activations instead of keeping them (less memory per atom, more time, the
            same numbers), see :mod:`~e2former_calc.model.recompute`.
        keep_freed_memory: on the CPU, raise glibc's mmap and trim thresholds for the process
            (:mod:`~e2former_calc.allocator`), so that large systems reuse freed memory instead
            of mapping fresh pages at every call; False leaves the allocator alone.
        prune: with a skin, evaluate the network only on the pairs within the cutoff at each
            call, with a plan built for them (``"auto"``: on the CPU, lists of 20,000 pairs or
            more; True, False), see :class:`~e2former_calc.forces.StepGraphs`.
    """

    def __init__(self, model: E2Former, device="auto", dtype="float64", skin: float = 0.0, neighbours: str = "auto",
                 recompute="auto", keep_freed_memory: bool = True, prune="auto"):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype)
        keep_freed_memory_on(self.device, keep_freed_memory)
        self.forcefield = ForceField.frozen(model, self.device, self.dtype)
        set_recompute(self.forcefield, recompute)
        self.cutoff = float(model.config.cutoff)
        if neighbours == "auto":
            neighbours = "torch" if self.device.type == "cuda" else "matscipy"
        if neighbours not in ("matscipy", "torch"):
            raise ValueError(f"neighbours must be auto, matscipy or torch, got {neighbours!r}")
        self.verlet = VerletList(self.cutoff, skin, neighbours, self.device)
        self.step_graphs = StepGraphs(self.forcefield, prune, skin)

    @property
    def model(self) -> E2Former:
        return self.forcefield.model

    @property
    def symbols(self) -> list[str]:
        return [chemical_symbols[z] for z in self.model.atomic_numbers]

    def check(self, atoms, where: str = "") -> None:
        """Raise ValueError naming the problem if ``atoms`` cannot be evaluated."""
        check_structure(atoms.numbers, atoms.get_positions(), atoms.cell.array, atoms.pbc,
                        self.model.atomic_numbers, where)

    def _graph(self, atoms_list, neighbours_list) -> AtomGraph:
        return AtomGraph.from_arrays([self.model.species_indices(a.numbers) for a in atoms_list],
                                     [a.get_positions() for a in atoms_list], [a.cell.array for a in atoms_list],
                                     [a.pbc for a in atoms_list], neighbours_list, self.device)

    def _evaluate(self, graph: AtomGraph, plan, forces: bool, stress: bool) -> list[dict]:
        out = self.forcefield(graph, plan, forces=forces, stress=stress)
        energies = out["energy"].detach()
        finite = torch.isfinite(energies)
        if not bool(finite.all()):
            s = int(torch.nonzero(~finite)[0, 0])
            where = f" for structure {s}" if graph.n_structures > 1 else ""
            raise FloatingPointError(f"the potential returned a non-finite energy{where}; its weights may be damaged")
        energies = energies.cpu().numpy()
        atom_energies = out["atom_energies"].detach().cpu().numpy()
        force_values = out["forces"].detach().cpu().numpy() if forces else None
        stresses = out["stress"].detach().cpu().numpy() if stress else None
        periodic = graph.periodic.cpu().numpy()
        results = []
        start = 0
        for s, n in enumerate(graph.atoms_per_structure().tolist()):
            result = {"energy": float(energies[s]), "free_energy": float(energies[s]),
                      "energies": atom_energies[start : start + n].copy()}
            if forces:
                result["forces"] = force_values[start : start + n].copy()
            if stress and periodic[s]:
                result["stress"] = full_3x3_to_voigt_6_stress(stresses[s])
            results.append(result)
            start += n
        return results

    def compute(self, atoms, forces: bool = True, stress: bool = True) -> dict:
        """Energy, per-atom energies, forces and (fully periodic cells) stress of one structure.

        Reuses the neighbour list and the convolution plan while the Verlet skin allows.
        """
        self.check(atoms)
        # the one copy of the positions to the device a step needs; the skin test runs there
        positions = torch.as_tensor(atoms.get_positions(), dtype=torch.float64, device=self.device)
        cell = torch.as_tensor(atoms.cell.array, dtype=torch.float64, device=self.device)
        neighbours, rebuilt = self.verlet.update(positions, cell, atoms.pbc, atoms.numbers)
        graph, plan = self.step_graphs(
            rebuilt, lambda: AtomGraph.from_arrays([self.model.species_indices(atoms.numbers)], [positions], [cell],
                                                   [atoms.pbc], [neighbours], self.device),
            positions, cell[None])
        check_graph_distances(graph, atoms.numbers)
        return self._evaluate(graph, plan, forces, stress and bool(atoms.pbc.all()))[0]

    def compute_batch(self, atoms_list, forces: bool = True, stress: bool = True) -> list[dict]:
        """The same for several structures in one pass (fresh neighbour lists, no skin)."""
        atoms_list = list(atoms_list)
        for k, atoms in enumerate(atoms_list):
            self.check(atoms, f"structure {k}: " if len(atoms_list) > 1 else "")
        neighbours = [neighbour_list(a.get_positions(), a.cell.array, a.pbc, self.cutoff) for a in atoms_list]
        graph = self._graph(atoms_list, neighbours)
        check_graph_distances(graph, np.concatenate([a.numbers for a in atoms_list]))
        stress = stress and any(bool(a.pbc.all()) for a in atoms_list)
        return self._evaluate(graph, self.forcefield.plan(graph), forces, stress)


def predict(atoms_list, calc_or_model, batch_size: int = 16, stress: bool = True, progress=None) -> list[dict]:
    """Energies, per-atom energies, forces (and stresses of fully periodic cells) of many structures.

    Args:
        atoms_list: ASE ``Atoms`` objects (any sizes, any mix of periodicities).
        calc_or_model: an :class:`E2FormerCalculator`, a :class:`~e2former_calc.predictor.Predictor`
            or an :class:`E2Former` (then evaluated in float64 on the CPU).
        batch_size: structures evaluated together in one forward/backward pass.
        progress: optional callable ``progress(done, total)``.

    Returns:
        One dict per structure with ``energy``, ``free_energy``, ``energies``, ``forces`` and, for
        fully periodic cells, ``stress``: the same numbers as one-by-one calls, to rounding.
    """
    from .integrations.ase import E2FormerCalculator

    if isinstance(calc_or_model, E2FormerCalculator):
        predictor = calc_or_model.predictor
    elif isinstance(calc_or_model, Predictor):
        predictor = calc_or_model
    elif isinstance(calc_or_model, E2Former):
        predictor = Predictor(calc_or_model, device="cpu", dtype="float64")
    else:
        raise TypeError(f"expected an E2FormerCalculator, Predictor or E2Former, got {type(calc_or_model).__name__}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    atoms_list = list(atoms_list)
    results = []
    for start in range(0, len(atoms_list), batch_size):
        results += predictor.compute_batch(atoms_list[start : start + batch_size], forces=True, stress=stress)
        if progress:
            progress(len(results), len(atoms_list))
    return results
