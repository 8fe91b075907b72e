"""torch-sim adapter: an E2Former potential as a ``torch_sim`` model, many systems in one pass.

    from e2former_calc.integrations.torch_sim import E2FormerModel
    model = E2FormerModel.from_pretrained("e2former-emt-cu", device="cuda", dtype="float32")
    out = model(state)  # energy [n_systems], forces [n_atoms, 3], stress [n_systems, 3, 3]

:class:`E2FormerModel` implements ``torch_sim.models.interface.ModelInterface``. Each call turns
the ``SimState`` into an :class:`~e2former_calc.graph.AtomGraph` (one neighbour list per system,
from :func:`~e2former_calc.neighbours.neighbour_list`: matscipy on the CPU, a torch cell list on a GPU) and evaluates it with
the :class:`~e2former_calc.forces.ForceField`: energies, forces ``-dE/dx`` and the stress
``(1/V) dE/d(epsilon)`` (ASE's sign, positive is tensile, which is what torch-sim's integrators
and optimizers take: pressure ``= -trace(stress) / 3``), from one backward pass. The stress of a
system that is not fully periodic is a zero matrix.

Neighbour lists: by default (``skin=0``) they are rebuilt at every call. With ``skin > 0`` every
system keeps a :class:`~e2former_calc.neighbours.VerletList` (cutoff ``cutoff + skin``); when no
system's list needs rebuilding the graph of the previous call is reused with the new positions and
cells, together with its convolution plan; when any system's list is rebuilt the batch's graph and
plan are rebuilt (the other systems' lists are still reused). Atoms that torch-sim wrapped back
into the cell (0.3.0 does at every MD step) are first moved back next to their previous positions
by whole cell vectors, so a wrap does not force a rebuild. The lists are kept for one batch at a
time: a call with another number of systems starts afresh. On a CPU the skin did not pay: two
108-atom copper cells, float32, 300 K Langevin, 230 ms per step with ``skin=0`` and 260 / 247 ms
with 0.3 / 0.5 Å (2 / 1 rebuilds in 12 steps): the network's cost grows with the extra pairs more
than the rebuilds cost (about 15 % of a step). Where the network is fast (a GPU) a skin may pay;
that is not measured.

torch-sim conventions read here (the same in torch-sim 0.3.0 and 0.6.2): ``state.cell`` holds the
cell vectors as *columns*; this adapter reads ``state.row_vector_cell`` (rows, as ASE and
:class:`AtomGraph`). ``state.pbc`` is one bool (0.3.0) or three bools (0.6.x), shared by all the
systems of a state; a ``[n_systems, 3]`` tensor is accepted too. ``state.system_idx`` maps atoms to
systems (atoms of one system contiguous, systems in order).

Tested on the CPU with torch-sim 0.3.0 on Python 3.11 (CI) and by hand with torch-sim 0.6.2 on
Python 3.12; CUDA is written for (tensors on ``device``) but was not run (no GPU here).
Not supported: ``retain_graph`` (differentiable simulation through the model outputs); the
outputs are detached.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

try:
    import torch_sim as ts
    from torch_sim.models.interface import ModelInterface
except ImportError as error:  # pragma: no cover - exercised only without torch-sim
    raise ImportError(
        "e2former_calc.integrations.torch_sim needs torch-sim: pip install 'e2former-calc[torchsim]' "
        "(the PyPI package torch-sim-atomistic>=0.3)"
    ) from error

from ..allocator import keep_freed_memory_on
from ..forces import ForceField, StepGraphs
from ..graph import AtomGraph
from ..model import E2Former
from ..model_file import load_model
from ..model.recompute import set_recompute
from ..neighbours import VerletList
from ..potentials import resolve_potential
from ..predictor import resolve_device, resolve_dtype
from ..validation import check_graph_distances, check_structure


def torch_sim_version() -> str:
    """The installed torch-sim (``torch-sim-atomistic``) version, or ``"unknown"``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("torch-sim-atomistic")
    except PackageNotFoundError:
        return getattr(ts, "__version__", "unknown")


class E2FormerModel(ModelInterface):
    """An E2Former potential as a torch-sim model.

    Args:
        model: the network; the adapter works on its own frozen copy (on ``device``, in
            ``dtype``), so the caller's model is left as it was.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, a ``torch.device``.
        dtype: ``"float64"`` (default), ``"float32"`` or the ``torch`` dtype: the precision of
            the network (positions, cells and edge vectors stay float64 inside). Outputs are
            returned in the dtype of the state's positions.
        compute_forces: return ``forces``.
        compute_stress: return ``stress`` (zero for systems that are not fully periodic).
        skin: Verlet skin in Å (see the module docstring); 0 (default) rebuilds the neighbour
            lists at every call.
        recompute: ``"auto"`` (the convolutions' source products), False (keep everything),
            or ``"blocks"``: what the backward
            pass recomputes instead of keeping (:mod:`~e2former_calc.model.recompute`; the same
            numbers; ``"blocks"`` for the largest systems a device holds).
        keep_freed_memory: on the CPU, let the process reuse the memory a call freed (glibc's
            thresholds, :mod:`~e2former_calc.allocator`); False leaves the allocator alone.
        prune: with a skin, evaluate the network only on the pairs within the cutoff at each
            call, with a plan built for them (``"auto"``: on the CPU, lists of 20,000 pairs or
            more; True, False), see :class:`~e2former_calc.forces.StepGraphs`.
    """

    def __init__(self, model: E2Former, device="auto", dtype="float64", compute_forces: bool = True,
                 compute_stress: bool = True, skin: float = 0.0, recompute="auto", keep_freed_memory: bool = True,
                 prune="auto"):
        super().__init__()
        self._device = resolve_device(device)
        self._dtype = resolve_dtype(dtype)
        keep_freed_memory_on(self._device, keep_freed_memory)
        self._compute_forces = bool(compute_forces)
        self._compute_stress = bool(compute_stress)
        self.forcefield = ForceField.frozen(model, self._device, self._dtype)
        set_recompute(self.forcefield, recompute)
        self.cutoff = float(model.config.cutoff)
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.skin = float(skin)
        self.atomic_numbers = tuple(model.atomic_numbers)
        self._verlets: list[VerletList] = []
        self._previous: list = []  # per system, the positions of the previous call (unwrapped)
        self._step_graphs = StepGraphs(self.forcefield, prune, skin)  # graph and plan while the lists hold
        self._fixed = None  # host copies of the atomic numbers and systems (see _layout)

    # -- constructors -----------------------------------------------------------------------
    @classmethod
    def from_file(cls, path, device="auto", dtype="float64", **kwargs) -> "E2FormerModel":
        """Load a potential file (no code is executed)."""
        model, _ = load_model(path, device="cpu")
        return cls(model, device=device, dtype=dtype, **kwargs)

    @classmethod
    def from_pretrained(cls, name: str, device="auto", dtype="float64", **kwargs) -> "E2FormerModel":
        """A shipped potential by name (the names ``E2FormerCalculator.from_pretrained`` takes)."""
        return cls.from_file(resolve_potential(name), device=device, dtype=dtype, **kwargs)

    # -- ModelInterface ---------------------------------------------------------------------
    @ModelInterface.compute_stress.setter
    def compute_stress(self, value: bool) -> None:
        self._compute_stress = bool(value)

    @ModelInterface.compute_forces.setter
    def compute_forces(self, value: bool) -> None:
        self._compute_forces = bool(value)

    @property
    def model(self) -> E2Former:
        """The frozen network the adapter evaluates."""
        return self.forcefield.model

    def forward(self, state, **kwargs) -> dict[str, torch.Tensor]:
        """``energy [n_systems]``, and as configured ``forces [n_atoms, 3]`` and
        ``stress [n_systems, 3, 3]`` (ASE sign), detached, in the dtype of ``state.positions``.

        ``state`` is a ``torch_sim.SimState`` (or a dict of its fields, made into one).
        """
        if isinstance(state, dict):
            fields = dict(state)
            fields.setdefault("masses", torch.ones(fields["positions"].shape[0], dtype=fields["positions"].dtype,
                                                   device=fields["positions"].device))
            state = ts.SimState(**fields)
        out_dtype = state.positions.dtype
        graph, plan = self._graph(state)
        out = self.forcefield(graph, plan, forces=self._compute_forces, stress=self._compute_stress)
        energy = out["energy"].detach()
        finite = torch.isfinite(energy)
        if not bool(finite.all()):
            s = int(torch.nonzero(~finite)[0, 0])
            raise FloatingPointError(f"the potential returned a non-finite energy for system {s}; "
                                     "its weights may be damaged")
        results = {"energy": energy.to(out_dtype)}
        if self._compute_forces:
            results["forces"] = out["forces"].detach().to(out_dtype)
        if self._compute_stress:
            results["stress"] = out["stress"].detach().to(out_dtype)
        return results

    # -- SimState -> AtomGraph --------------------------------------------------------------
    def _layout(self, state, n_atoms: int, n_systems: int) -> dict:
        """What stays fixed along a run, on the host: atomic numbers, each system's atom range,
        their species indices (checked against the potential's elements). Made again only when
        the state's atomic numbers or systems change (compared on the device: no per-step copy)."""
        numbers = state.atomic_numbers.detach()
        system_idx = getattr(state, "system_idx", None)
        if system_idx is None:
            system_idx = torch.zeros(n_atoms, dtype=torch.long, device=numbers.device)
        system_idx = system_idx.detach()
        kept = self._fixed
        if (kept is not None and kept["n_systems"] == n_systems and kept["numbers"].shape == numbers.shape
                and kept["system"].shape == system_idx.shape and kept["numbers"].device == numbers.device
                and torch.equal(kept["numbers"], numbers) and torch.equal(kept["system"], system_idx)):
            return kept
        system_np = system_idx.cpu().numpy()
        if system_np.size and (np.any(np.diff(system_np) < 0) or system_np[0] < 0 or system_np[-1] >= n_systems):
            raise ValueError("state.system_idx must group the atoms of each system together, systems in order "
                             f"0..{n_systems - 1}")
        counts = np.bincount(system_np, minlength=n_systems)
        offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        numbers_np = numbers.cpu().numpy().astype(np.int64)
        systems = [slice(int(offsets[s]), int(offsets[s] + counts[s])) for s in range(n_systems)]
        for s, where in enumerate(systems):
            check_structure(numbers_np[where], None, None, None, self.atomic_numbers, f"system {s}: ")
        self._fixed = {"n_systems": n_systems, "numbers": numbers.clone(), "system": system_idx.clone(),
                       "numbers_np": numbers_np, "systems": systems,
                       "species": [self.model.species_indices(numbers_np[w]) for w in systems]}
        return self._fixed

    def _graph(self, state):
        """The state as an AtomGraph on the model's device. Per call the only copies to the host
        are the cells (9 numbers per system) and a few booleans (the finiteness of the positions,
        the skin tests, the shortest distance); positions stay on the device."""
        # a copy, never a view of the state (torch-sim moves its atoms in place; unwrapped below)
        positions = state.positions.detach().to(device=self._device, dtype=torch.float64, copy=True)
        rows = state.row_vector_cell.detach().to(device=self._device, dtype=torch.float64)  # [S, 3, 3] rows
        n_systems, n_atoms = rows.shape[0], positions.shape[0]
        pbc = torch.as_tensor(state.pbc, dtype=torch.bool).detach().cpu()
        if pbc.ndim == 0:
            pbc = pbc.repeat(3)
        if pbc.ndim == 1:
            pbc = pbc.expand(n_systems, 3)
        if tuple(pbc.shape) != (n_systems, 3):
            raise ValueError(f"state.pbc must be a bool, three bools or [n_systems, 3], got shape {tuple(pbc.shape)}")
        pbc_np = pbc.numpy()
        fixed = self._layout(state, n_atoms, n_systems)
        numbers_np, systems = fixed["numbers_np"], fixed["systems"]
        cells_np = rows.cpu().numpy()
        if not bool(torch.isfinite(positions).all()):  # name the atom (host copy only on this error)
            positions_np = positions.cpu().numpy()
            for s, where in enumerate(systems):
                check_structure(numbers_np[where], positions_np[where], None, None, None, f"system {s}: ")
        for s in range(n_systems):
            check_structure(numbers_np[systems[s]], None, cells_np[s], pbc_np[s], None, f"system {s}: ")

        if len(self._verlets) != n_systems:
            search = "torch" if self._device.type == "cuda" else "matscipy"  # the cell list on a GPU
            self._verlets = [VerletList(self.cutoff, self.skin, search, self._device) for _ in range(n_systems)]
            self._previous = [None] * n_systems
            self._step_graphs.reset()
        parts = [positions[where] for where in systems]
        if self.skin > 0:  # undo torch-sim's wrapping of atoms into the cell (0.3.0 wraps at every MD step)
            parts = [self._unwrap(s, part, rows[s], pbc_np[s]) for s, part in enumerate(parts)]
            positions = torch.cat(parts) if parts else positions
        neighbours, rebuilt = [], False
        for s, part in enumerate(parts):
            nb, fresh = self._verlets[s].update(part, rows[s], pbc_np[s], numbers_np[systems[s]])
            neighbours.append(nb)
            rebuilt = rebuilt or fresh
        graph, plan = self._step_graphs(
            rebuilt, lambda: AtomGraph.from_arrays(fixed["species"], parts, list(rows), list(pbc_np), neighbours,
                                                   self._device),
            positions, rows)
        check_graph_distances(graph, numbers_np, "system")
        return graph, plan

    def _unwrap(self, s: int, positions: torch.Tensor, cell: torch.Tensor, pbc: np.ndarray) -> torch.Tensor:
        """``positions`` moved by whole periodic cell vectors to lie next to those of the previous
        call (an atom wrapped back into the cell is put back where it came from), so that the
        Verlet list sees the true displacements. The same structure either way: the list's
        integer shifts are those of the positions it was built from, which are the ones returned.
        On the positions' device; an atom that was not wrapped moves by exactly zero."""
        previous = self._previous[s]
        if previous is not None and previous.shape == positions.shape and pbc.any():
            periodic = cell[torch.as_tensor(pbc, device=cell.device)]  # [n_periodic, 3]
            steps = torch.round((positions - previous) @ torch.linalg.pinv(periodic))  # whole cell vectors
            positions = positions - steps @ periodic
        self._previous[s] = positions
        return positions
