"""E2Former potentials in LAMMPS through ML-IAP "unified" models (``pair_style mliap unified``).

LAMMPS (built with ML-IAP + Python, PYTHON and MPI; see ``docs/lammps.md`` and
``.ci/build_lammps.sh``) loads a pickled Python object that computes energies and pair forces
from the pair vectors of its neighbour list. :func:`export_lammps` writes such an object for an
E2Former potential::

    from e2former_calc.integrations.lammps import export_lammps
    export_lammps("e2former-emt-cu", "cu.mliap.pkl")

and the LAMMPS input then reads (the ghost cutoff below is for ``e2former-emt-cu``: see
:func:`ghost_cutoff`)::

    newton          on                      # ML-IAP requires it (the default)
    neighbor        1.0 bin
    comm_modify     cutoff 16.0             # (num_layers + 1) * cutoff + skin
    pair_style      mliap unified cu.mliap.pkl 1
    pair_coeff      * * Cu

How it works. An E2Former's energy of atom ``i`` depends on the atoms within ``num_layers + 1``
cutoffs of it (the edge-degree embedding and ``num_layers`` attention blocks), more than the
one or two cutoffs that LAMMPS's ghost atoms cover by default. So the potential runs on the
"ghost shell": the trailing ``1`` of ``pair_style`` asks LAMMPS for the neighbour lists of the
ghost atoms too, ``comm_modify cutoff`` makes the shell thick enough, and each rank evaluates the
network on its owned and ghost atoms, counting only the energies of the atoms it owns. The
derivatives by the pair vectors of all pairs (ghost ones too) go back through
``update_pair_forces``; LAMMPS folds the ghosts' forces onto their owners (``newton on``) and
gets the virial from the pairs, so energies, forces and the virial equal the periodic
evaluation exactly (to rounding) on any number of ranks. Before evaluating, the pair list is cut
to what the owned energies depend on: pairs whose receiving atom is more than ``num_layers``
hops from every owned atom are dropped (their ``dE/dr`` is exactly zero), and so are the atoms
more than ``num_layers + 1`` hops away.

LAMMPS's ML-IAP hands pair vectors ``r_ij = x_j - x_i`` (``data.rij``) of the pairs
``i = data.pair_i`` <- ``j = data.pair_j`` and, in ``update_pair_forces(fij)``, adds ``fij`` to
the force on ``i`` and subtracts it from ``j``'s, and tallies the virial ``-r_ij (x) fij``: so
``fij = dE/dr_ij``, which is exactly :meth:`~e2former_calc.forces.ForceField.pair_forward`'s
``pair_gradients``. Its cutoff is ``2 * rcutfac``.

Security. The file ``pair_style mliap unified FILE`` reads is a pickle, by LAMMPS's design:
loading it imports :mod:`e2former_calc.integrations.lammps` to find the class
:class:`E2FormerMLIAP` (so only open such files from sources you trust, as with any pickle).
The potential inside is kept as the bytes of the potential file and read with
``torch.load(weights_only=True)`` (:func:`e2former_calc.model_file.load_model`), which executes
no code from the potential. LAMMPS reads files whose name ends in ``.pt``/``.pth`` with a bare
``torch.load`` instead, which refuses this object: :func:`export_lammps` refuses such names.

Errors. A Python exception in LAMMPS's callback is printed with its message and becomes a LAMMPS
error on one rank; with several MPI ranks the others would wait forever, so for the errors that
can differ between ranks (an element the potential lacks on some rank only, a ghost shell found
too thin) the message goes to stderr and that rank exits with status 1, which ends the MPI job.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from ase.data import chemical_symbols as _SYMBOLS

try:  # LAMMPS's base class when its Python module is there; the object works without it too
    from lammps.mliap.mliap_unified_abc import MLIAPUnified as _MLIAPUnifiedBase
except Exception:  # ImportError, or OSError from lammps.mliap's libpython check
    class _MLIAPUnifiedBase:  # the same attributes as lammps.mliap.mliap_unified_abc.MLIAPUnified
        def __init__(self, interface=None, element_types=None, ndescriptors=None, nparams=None, rcutfac=None):
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac

__all__ = ["E2FormerMLIAP", "LammpsGhostShellError", "export_lammps", "ghost_cutoff", "input_lines",
           "lammps_available"]

#: Every element symbol (H..Og): ``pair_coeff`` accepts any of them, so that an element the
#: potential lacks gives this module's clear message instead of LAMMPS's generic one.
ELEMENTS = tuple(_SYMBOLS[1:])
#: Ghost-shell check: how much thinner (Å) than ``(num_layers + 1) * cutoff`` the observed ghost
#: shell may be (the outermost ghosts sit up to about one interatomic spacing inside LAMMPS's
#: ghost cutoff).
SHELL_TOLERANCE = 1.0


class LammpsGhostShellError(RuntimeError):
    """LAMMPS's ghost atoms do not reach far enough for the potential's receptive field."""


def lammps_available() -> tuple[bool, str]:
    """(True, version) when LAMMPS's Python module with ML-IAP's Python coupling loads, else
    (False, why not)."""
    try:
        import lammps
        import lammps.mliap  # noqa: F401
    except Exception as error:  # noqa: BLE001
        return False, f"the LAMMPS Python module does not import ({type(error).__name__}: {error})"
    try:
        lmp = lammps.lammps(cmdargs=["-nocite", "-log", "none", "-screen", "none"])
    except Exception as error:  # noqa: BLE001
        return False, f"LAMMPS does not start ({type(error).__name__}: {error})"
    try:
        missing = [p for p in ("ML-IAP", "PYTHON") if not lmp.has_package(p)]
        if missing:
            return False, f"LAMMPS lacks the packages {', '.join(missing)}"
        if not hasattr(lammps.mliap, "activate_mliappy"):
            return False, "lammps.mliap has no activate_mliappy (not an ML-IAP Python build)"
        return True, str(lmp.version())
    finally:
        lmp.close()


def ghost_cutoff(num_layers: int, cutoff: float, skin: float) -> float:
    """The ``comm_modify cutoff`` an E2Former needs: ``(num_layers + 1) * cutoff + skin``.

    The energy of an owned atom depends on atoms up to ``num_layers + 1`` cutoffs away, and
    between two neighbour-list builds atoms may approach by up to ``skin`` (the ``neighbor``
    skin, 2 Å by default in metal units)."""
    return (num_layers + 1) * float(cutoff) + float(skin)


def _world_size() -> int:
    for name in ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_SIZE", "MPI_LOCALNRANKS", "SLURM_NTASKS"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 1


def _rank() -> int:
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK"):
        value = os.environ.get(name)
        if value and value.isdigit():
            return int(value)
    return 0


def _fail(error: Exception):
    """Raise ``error`` (one rank: LAMMPS turns it into an ordinary error), or, under MPI with
    several ranks, print it and end this process: LAMMPS's error path waits for every rank,
    and the others may never get there."""
    if _world_size() > 1:
        sys.stderr.write(f"\nERROR on MPI rank {_rank()} (e2former-calc, pair_style mliap unified): "
                         f"{type(error).__name__}: {error}\n")
        sys.stderr.flush()
        sys.stdout.flush()
        os._exit(1)
    raise error


class E2FormerMLIAP(_MLIAPUnifiedBase):
    """An E2Former potential as an ML-IAP unified model (the object LAMMPS unpickles).

    Made by :func:`export_lammps`. The potential is held as the bytes of its file; the network
    is built on the first call, on ``device`` in ``dtype``.

    Args:
        potential: the bytes of an e2former-calc potential file.
        dtype: ``"float64"`` or ``"float32"`` for the network (the pair vectors, the forest and
            the derivatives stay float64).
        device: ``"cpu"``, ``"cuda"``, ... (LAMMPS's arrays are copied there and back); arrays that
            LAMMPS hands as torch tensors (KOKKOS builds) are used on their own device.
        name: a label for messages.
        prune: drop the pairs the owned energies do not depend on (exact; see the module doc).
        check_ghost_shell: stop with a message saying what ``comm_modify cutoff`` to set when the
            ghost atoms are seen not to reach ``(num_layers + 1) * cutoff``. Turn it off only for
            systems that have no atoms further out (a small cluster split over ranks), where the
            check cannot tell vacuum from a thin shell.
    """

    def __init__(self, potential: bytes, dtype: str = "float64", device: str = "cpu", name: str | None = None,
                 prune: bool = True, check_ghost_shell: bool = True):
        from ..model_file import read_model_file

        if dtype not in ("float32", "float64"):
            raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        content = _with_file(bytes(potential), read_model_file)  # checks it now, at export
        config = content["config"]
        self.cutoff = float(content["cutoff"])
        self.num_layers = int(config["num_layers"])
        super().__init__(interface=None, element_types=list(ELEMENTS), ndescriptors=1, nparams=1,
                         rcutfac=0.5 * self.cutoff)
        self.potential = bytes(potential)
        self.atomic_numbers = [int(z) for z in content["atomic_numbers"]]
        self.species = [_SYMBOLS[z] for z in self.atomic_numbers]
        self.dtype = dtype
        self.device = device
        self.name = name or "E2Former potential"
        self.prune = bool(prune)
        self.check_ghost_shell = bool(check_ghost_shell)
        self._runtime = None

    # -- pickling: the bytes and the settings, never the built network or LAMMPS's interface --
    def __getstate__(self):
        state = dict(self.__dict__)
        state["interface"] = None
        state["_runtime"] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._runtime = None

    def __repr__(self):
        return (f"E2FormerMLIAP({self.name!r}, species {'/'.join(self.species)}, cutoff {self.cutoff:g} Å, "
                f"{self.num_layers} layers, {self.dtype})")

    @property
    def receptive_field(self) -> float:
        """``(num_layers + 1) * cutoff`` (Å): how far an atom's energy reaches."""
        return (self.num_layers + 1) * self.cutoff

    def ghost_cutoff(self, skin: float) -> float:
        """The ``comm_modify cutoff`` for neighbour skin ``skin`` (Å)."""
        return ghost_cutoff(self.num_layers, self.cutoff, skin)

    # -- the ML-IAP unified interface -----------------------------------------------------------
    def compute_descriptors(self, data):
        """No descriptors: everything happens in :meth:`compute_forces`."""

    def compute_gradients(self, data):
        """No descriptor gradients: everything happens in :meth:`compute_forces`."""

    def compute_forces(self, data):
        """Energies of the owned atoms, ``dE/dr_ij`` of every pair, handed to LAMMPS."""
        if callable(getattr(data, "forward_exchange", None)):
            return self._compute_with_exchange(data)
        nlocal, ntotal, npairs = int(data.nlocal), int(data.ntotal), int(data.npairs)
        nlist = int(data.nlistatoms)
        if nlocal == 0 or nlist == 0:  # a rank without atoms (a small cell on many ranks, vacuum)
            data.energy = 0.0
            return
        runtime = self._ensure_runtime(data)
        elems = _host(data.elems)[:ntotal]
        species = self._species_of(elems)
        iatoms = _host(data.iatoms)[:nlist].astype(np.int64)
        if npairs == 0:  # isolated atoms: E0 each, no forces
            e0 = np.asarray(runtime["e0"])[species[iatoms]]
            data.eatoms = np.ascontiguousarray(e0, dtype=np.float64)
            data.energy = float(e0.sum())
            return
        pair_i = _host(data.pair_i)[:npairs]
        pair_j = _host(data.pair_j)[:npairs]
        device = runtime["device"]
        if isinstance(data.rij, torch.Tensor):
            device = data.rij.device
        vectors_all = _pair_vectors(data, npairs, device)
        graph = self._pair_graph(runtime, nlocal, ntotal, pair_i, pair_j, species, vectors_all, device)
        vectors = vectors_all.index_select(0, graph["kept_edges"]) if graph["kept_edges"] is not None else vectors_all
        out = runtime["forcefield"].pair_forward(graph["species"], graph["forest"], vectors, graph["plan"],
                                                 energy_mask=graph["owned"], stages=graph["stages"])
        self._hand_back(data, out, graph["kept_edges"], npairs, device, graph["node_of"][iatoms])

    def _hand_back(self, data, out, kept_edges, npairs, device, rows):
        """``dE/dr_ij`` of every pair (zero for the pairs not evaluated), the energy and the
        per-atom energies (``out["atom_energies"][rows]``, in ``iatoms`` order) to LAMMPS."""
        gradients = out["pair_gradients"]
        if kept_edges is not None:
            full = torch.zeros((npairs, 3), dtype=torch.float64, device=device)
            full.index_copy_(0, kept_edges, gradients)
            gradients = full
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        energy = float(out["energy"])
        if not np.isfinite(energy):
            _fail(FloatingPointError(f"{self.name} returned a non-finite energy; its weights may be damaged"))
        data.update_pair_forces(np.ascontiguousarray(gradients.detach().cpu().numpy(), dtype=np.float64))
        data.eatoms = np.ascontiguousarray(out["atom_energies"].detach().cpu().numpy()[rows], dtype=np.float64)
        data.energy = energy

    def _compute_with_exchange(self, data):
        """The feature-exchange path (ML-IAP with ``forward_exchange``, KOKKOS builds).

        Only the pairs around owned atoms are used (LAMMPS's ordinary ghosts, one cutoff plus
        skin deep, suffice: no ghost neighbour lists, no redundant shell); before each
        transformer block the ghosts' feature rows are refreshed from their owners by
        ``data.forward_exchange``, and in the backward pass ``data.reverse_exchange`` adds the
        ghosts' feature gradients to their owners. Every rank takes part in every exchange,
        including ranks without atoms or pairs, so that the collective calls match."""
        runtime = self._ensure_runtime(data)
        nlocal, ntotal, npairs = int(data.nlocal), int(data.ntotal), int(data.npairs)
        nlist = int(data.nlistatoms)
        device = runtime["device"]
        if isinstance(data.rij, torch.Tensor):
            device = data.rij.device
        elems = _host(data.elems)[:ntotal]
        species = self._species_of(elems)
        pair_i = _host(data.pair_i)[:npairs].astype(np.int64) if npairs else np.zeros(0, dtype=np.int64)
        local_pairs = np.flatnonzero(pair_i < nlocal)
        if nlocal == 0 or nlist == 0 or local_pairs.size == 0:  # no work here, but the exchanges are collective
            width = runtime["feature_width"]
            dtype = getattr(torch, self.dtype)
            for direction in (data.forward_exchange, data.reverse_exchange):
                for _ in range(self.num_layers):
                    buffer = torch.zeros((ntotal, width), dtype=dtype, device=device)
                    direction(buffer, torch.empty_like(buffer), width)
            iatoms = _host(data.iatoms)[:nlist].astype(np.int64) if nlist else np.zeros(0, dtype=np.int64)
            e0 = np.asarray(runtime["e0"])[species[iatoms]] if nlist else np.zeros(0)
            if nlist:
                data.eatoms = np.ascontiguousarray(e0, dtype=np.float64)
            data.energy = float(e0.sum())
            return
        vectors_all = _pair_vectors(data, npairs, device)
        graph = self._exchange_graph(runtime, nlocal, ntotal, pair_i, _host(data.pair_j)[:npairs].astype(np.int64),
                                     local_pairs, species, vectors_all, device)
        vectors = vectors_all.index_select(0, graph["kept_edges"])

        def exchange(h):
            return _HaloExchange.apply(h, data)

        out = runtime["forcefield"].pair_forward(graph["species"], graph["forest"], vectors, graph["plan"],
                                                 energy_mask=graph["owned"], exchange=exchange)
        self._hand_back(data, out, graph["kept_edges"], npairs, device, _host(data.iatoms)[:nlist].astype(np.int64))

    def _exchange_graph(self, runtime, nlocal, ntotal, pair_i, pair_j, local_pairs, species, vectors_all, device):
        """All ``ntotal`` atoms as nodes (the exchange works on LAMMPS's atom order), the pairs
        around owned atoms as edges: kept while the pair list is the same."""
        key = ("exchange", nlocal, ntotal)
        cached = runtime["graph"]
        if (cached is not None and runtime["key"] == key and np.array_equal(cached["pair_i"], pair_i)
                and np.array_equal(cached["pair_j"], pair_j) and np.array_equal(cached["species_all"], species)):
            return cached
        from ..conv import SpanningForest

        kept_t = torch.as_tensor(local_pairs, device=device)
        recv = torch.as_tensor(pair_i[local_pairs], device=device)
        send = torch.as_tensor(pair_j[local_pairs], device=device)
        vectors = vectors_all.index_select(0, kept_t)
        forest = SpanningForest.build(recv, send, ntotal, vectors)
        graph = {
            "pair_i": pair_i.copy(), "pair_j": pair_j.copy(), "species_all": species.copy(),
            "kept_edges": kept_t,
            "species": torch.as_tensor(species, device=device),
            "owned": torch.arange(ntotal, device=device) < nlocal,
            "forest": forest,
            "plan": runtime["forcefield"].pair_plan(forest, vectors),
        }
        runtime["graph"], runtime["key"] = graph, key
        return graph

    # -- helpers ---------------------------------------------------------------------------------
    def _ensure_runtime(self, data):
        if self._runtime is not None:
            return self._runtime
        from ..forces import ForceField
        from ..model.recompute import set_recompute
        from ..model_file import load_model

        device = torch.device(self.device)
        if isinstance(data.rij, torch.Tensor):
            device = data.rij.device
        model, _ = _with_file(self.potential, lambda path: load_model(path, device=device,
                                                                      dtype=getattr(torch, self.dtype)))
        model.eval()
        for parameter in model.parameters():
            parameter.requires_grad_(False)
        set_recompute(model, "auto")  # as the other engines' default: source products redone, not kept
        lookup = np.full(len(ELEMENTS), -1, dtype=np.int64)  # ML-IAP element index (Z - 1) -> species
        for k, z in enumerate(model.atomic_numbers):
            lookup[z - 1] = k
        config = model.config
        self._runtime = {"forcefield": ForceField(model), "device": device, "lookup": lookup,
                         "feature_width": config.channels * (config.max_degree + 1) ** 2,
                         "e0": [float(e) for e in model.e0], "key": None, "graph": None, "shell_checked": None}
        return self._runtime

    def _species_of(self, elems: np.ndarray) -> np.ndarray:
        lookup = self._runtime["lookup"]
        elems = elems.astype(np.int64)
        if elems.size and (elems.min() < 0 or elems.max() >= len(ELEMENTS)):
            _fail(ValueError("an atom type is mapped to NULL in pair_coeff: pair_style mliap unified with "
                             f"{self.name} needs every atom type mapped to one of {', '.join(self.species)}"))
        species = lookup[elems]
        if elems.size and species.min() < 0:
            unknown = sorted({ELEMENTS[e] for e in np.unique(elems[species < 0])})
            _fail(ValueError(f"{self.name} has no parameters for {', '.join(unknown)}: its species are "
                             f"{', '.join(self.species)} (check pair_coeff * * ..., one element per atom type)"))
        return species

    def _pair_graph(self, runtime, nlocal, ntotal, pair_i, pair_j, species, vectors_all, device):
        """The (pruned, renumbered) graph, its forest and plan: kept while the pair list is the same."""
        key = (nlocal, ntotal)
        cached = runtime["graph"]
        if (cached is not None and runtime["key"] == key and np.array_equal(cached["pair_i"], pair_i)
                and np.array_equal(cached["pair_j"], pair_j) and np.array_equal(cached["species_all"], species)):
            return cached
        from ..conv import SpanningForest

        receivers = pair_i.astype(np.int64)
        senders = pair_j.astype(np.int64)
        if self.check_ghost_shell and runtime["shell_checked"] != key and ntotal > nlocal:
            self._check_shell(nlocal, ntotal, receivers, senders, vectors_all)
            runtime["shell_checked"] = key
        n_layers = self.num_layers
        if self.prune:  # hop <= L + 1 nodes, numbered by hop (owned atoms, hop 0, keep 0..nlocal-1)
            hops = _hop_distances(receivers, senders, ntotal, nlocal, n_layers + 1)
            kept = np.flatnonzero(hops[receivers] <= n_layers)
            order = np.flatnonzero(hops <= n_layers + 1)
            order = order[np.argsort(hops[order], kind="stable")]
        else:
            kept = np.arange(receivers.size)
            order = np.arange(ntotal)
        node_of = np.full(ntotal, -1, dtype=np.int64)
        node_of[order] = np.arange(order.size)
        n_nodes = int(order.size)
        kept_t = torch.as_tensor(kept, device=device)
        recv = torch.as_tensor(node_of[receivers[kept]], device=device)
        send = torch.as_tensor(node_of[senders[kept]], device=device)
        vectors = vectors_all.index_select(0, kept_t)
        forest = SpanningForest.build(recv, send, n_nodes, vectors)
        forcefield = runtime["forcefield"]
        staged = self.prune and n_layers > 0
        graph = {
            "pair_i": pair_i.copy(), "pair_j": pair_j.copy(), "species_all": species.copy(),
            "kept_edges": None if kept.size == receivers.size else kept_t,
            "node_of": node_of,
            "species": torch.as_tensor(species[order], device=device),
            # with layer stages only the owned atoms' energies come out (all count)
            "owned": None if staged else torch.arange(n_nodes, device=device) < nlocal,
            "forest": forest,
            "plan": None if staged else forcefield.pair_plan(forest, vectors),
            "stages": forcefield.pair_stages(forest, vectors, hops[order]) if staged else None,
        }
        runtime["graph"], runtime["key"] = graph, key
        return graph

    def _check_shell(self, nlocal, ntotal, receivers, senders, vectors_all):
        """Stop when the ghost atoms are seen not to reach the receptive field (see the class doc).

        In each connected piece of the pair graph that holds owned atoms, node coordinates are
        rebuilt from the pairs; along each Cartesian axis and side where ghosts lie, the ghosts'
        reach beyond the owned atoms estimates LAMMPS's ghost cutoff. If it is short of
        ``(num_layers + 1) * cutoff`` and an atom within ``num_layers`` hops of an owned atom
        has its cutoff sphere reach past the last ghost on that side, its neighbour list may be
        cut short, and the owned energies would be wrong."""
        from ..conv import SpanningForest

        with torch.no_grad():
            v = vectors_all.detach().to("cpu", torch.float64)
            forest = SpanningForest.build(torch.as_tensor(receivers), torch.as_tensor(senders), ntotal, v)
            p = forest.node_coordinates(v).numpy()
            root = (forest.ancestors[-1] if forest.ancestors else forest.parent).cpu().numpy()
        near = _hop_distances(receivers, senders, ntotal, nlocal, self.num_layers) <= self.num_layers
        owned = np.zeros(ntotal, dtype=bool)
        owned[:nlocal] = True
        ghosts = ~owned
        pieces, label = np.unique(root, return_inverse=True)  # connected pieces of the pair graph
        sides = []  # per axis and side: coordinate, last ghost and the ghosts' reach, per piece
        for d in range(3):
            for sign in (1.0, -1.0):
                x = sign * p[:, d]
                owned_edge = np.full(pieces.size, -np.inf)
                np.maximum.at(owned_edge, label[owned], x[owned])
                beyond = ghosts & (x > owned_edge[label])  # (-inf in pieces without owned atoms)
                last = np.full(pieces.size, -np.inf)
                np.maximum.at(last, label[beyond], x[beyond])
                sides.append((x, last, last - owned_edge))
        # the ghost cutoff shows as the reach of the ghosts on the sides where atoms go on (a
        # side facing vacuum reaches less): its largest value over the sides, per piece
        reach = np.max([np.where(np.isfinite(r), r, -np.inf) for _, _, r in sides], axis=0)
        short = np.isfinite(reach) & (reach < self.receptive_field - SHELL_TOLERANCE)
        worst = None
        if short.any():
            for x, last, _ in sides:
                poking = near & short[label] & np.isfinite(last[label]) & (x + self.cutoff > last[label] + 1e-6)
                if poking.any():
                    r = float(reach[np.unique(label[poking])].min())
                    worst = r if worst is None else min(worst, r)
        if worst is not None:
            _fail(LammpsGhostShellError(
                f"LAMMPS's ghost atoms reach only about {worst:.2f} Å beyond the owned atoms, but {self.name} "
                f"({self.num_layers} layers, cutoff {self.cutoff:g} Å) needs (num_layers + 1) * cutoff = "
                f"{self.receptive_field:g} Å: add `comm_modify cutoff {self.ghost_cutoff(2.0):g}` for the default "
                f"2 Å neighbor skin ((num_layers + 1) * cutoff + skin; e.g. {self.ghost_cutoff(1.0):g} with "
                f"`neighbor 1.0 bin`) and the trailing 1 of `pair_style mliap unified FILE 1`. (If the system "
                f"has no atoms further out, e.g. a small cluster split over ranks, export with "
                f"check_ghost_shell=False.)"))


class _HaloExchange(torch.autograd.Function):
    """``h [ntotal, C, D]`` with the ghost atoms' rows replaced by their owners' (LAMMPS's
    ``forward_exchange``, over all ranks); backward: the ghosts' gradient rows added to their
    owners' and zeroed (``reverse_exchange``, the transpose)."""

    @staticmethod
    def forward(ctx, h, data):
        ctx.data = data
        flat = h.detach().reshape(h.shape[0], -1).contiguous()
        out = torch.empty_like(flat)
        data.forward_exchange(flat, out, flat.shape[1])
        return out.view_as(h)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        flat = grad.reshape(grad.shape[0], -1).contiguous()
        out = torch.empty_like(flat)
        ctx.data.reverse_exchange(flat, out, flat.shape[1])
        return out.view_as(grad), None


def _hop_distances(receivers: np.ndarray, senders: np.ndarray, n_nodes: int, n_owned: int,
                   max_hops: int) -> np.ndarray:
    """``[n_nodes]`` int64: in how many message passings each node's features reach an owned
    atom (a receiver reads its senders; owned atoms 0..n_owned-1 are hop 0); ``max_hops + 1``
    for the nodes farther away."""
    hops = np.full(n_nodes, max_hops + 1, dtype=np.int64)
    hops[:n_owned] = 0
    frontier = np.zeros(n_nodes, dtype=bool)
    frontier[:n_owned] = True
    for hop in range(1, max_hops + 1):
        reached = senders[frontier[receivers]]
        reached = reached[hops[reached] > hop]
        if reached.size == 0:
            break
        hops[reached] = hop
        frontier[:] = False
        frontier[reached] = True
    return hops


def _pair_vectors(data, npairs: int, device) -> torch.Tensor:
    """``[npairs, 3]`` float64 ``r_ij`` of LAMMPS's pairs on ``device`` (after the device's
    pending work, for arrays LAMMPS hands on a GPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    rij = data.rij
    rij = rij[:npairs] if isinstance(rij, torch.Tensor) else _host(rij)[:npairs]
    return torch.as_tensor(rij, dtype=torch.float64).to(device)


def _host(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _with_file(content: bytes, reader):
    """Run ``reader(path)`` on a temporary file holding ``content`` (the model-file readers
    take paths)."""
    handle, path = tempfile.mkstemp(prefix="e2former-lammps-", suffix=".pt")
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(content)
        return reader(path)
    finally:
        os.remove(path)


def _potential_bytes(potential) -> tuple[bytes, str]:
    """The bytes and a label of a potential given as a path, a shipped name or a model."""
    from ..model import E2Former
    from ..model_file import save_model
    from ..potentials import find_potential, potential_folders

    if isinstance(potential, E2Former) or hasattr(potential, "predictor"):
        model = potential.predictor.model if hasattr(potential, "predictor") else potential
        handle, path = tempfile.mkstemp(prefix="e2former-lammps-", suffix=".pt")
        os.close(handle)
        try:
            save_model(model, path)
            return Path(path).read_bytes(), getattr(potential, "metadata", {}).get("name", "E2Former potential")
        finally:
            os.remove(path)
    path = Path(potential)
    if not path.is_file():
        found = find_potential(str(potential))
        if found is None:
            known = sorted({p.stem for folder in potential_folders() if folder.is_dir() for p in folder.glob("*.pt")})
            raise FileNotFoundError(f"{potential!r} is neither a potential file nor a shipped potential "
                                    f"(shipped: {', '.join(known) or 'none'})")
        path = found
    return path.read_bytes(), path.stem


def export_lammps(potential_path_or_name, output_path, dtype: str = "float64", device: str = "cpu",
                  prune: bool = True, check_ghost_shell: bool = True) -> Path:
    """Write the ML-IAP unified file for ``pair_style mliap unified OUTPUT 1``.

    Args:
        potential_path_or_name: a potential file, the name of a shipped potential
            (``"e2former-emt-cu"``), an :class:`~e2former_calc.model.E2Former` or an
            :class:`~e2former_calc.E2FormerCalculator` (its weights in its dtype).
        output_path: where to write; a name ending in ``.pt``/``.pth`` is refused (LAMMPS would
            read it with ``torch.load``, which refuses the object). ``.mliap.pkl`` is customary.
        dtype: the network's precision in LAMMPS: ``"float64"`` (default) or ``"float32"``.
        device, prune, check_ghost_shell: see :class:`E2FormerMLIAP`.

    Returns:
        The path written. The file holds the potential's bytes (read back with
        ``weights_only``) and the settings; it is read by unpickling, which imports this module.
    """
    import pickle

    output_path = Path(output_path)
    if output_path.suffix in (".pt", ".pth"):
        raise ValueError(f"{output_path}: LAMMPS reads .pt/.pth files with torch.load, which refuses this object; "
                         "use another name, e.g. .mliap.pkl")
    content, label = _potential_bytes(potential_path_or_name)
    unified = E2FormerMLIAP(content, dtype=dtype, device=device, name=label, prune=prune,
                            check_ghost_shell=check_ghost_shell)
    from ..model_file import atomic_write

    def write(temporary):
        with open(temporary, "wb") as stream:
            pickle.dump(unified, stream, protocol=pickle.HIGHEST_PROTOCOL)

    return atomic_write(output_path, write)


def load_unified(path) -> E2FormerMLIAP:
    """Read back an exported file (a pickle: only for files you trust, as LAMMPS does)."""
    import pickle

    with open(path, "rb") as stream:
        unified = pickle.load(stream)
    if not isinstance(unified, E2FormerMLIAP):
        raise TypeError(f"{path} holds a {type(unified).__name__}, not an E2FormerMLIAP")
    return unified


def input_lines(unified_path, elements, skin: float = 1.0) -> list[str]:
    """The LAMMPS commands that set the potential up: neighbour skin, ghost cutoff, pair style
    and the type-to-element map (``elements[k]`` for atom type ``k + 1``).

    Raises ValueError for an element the potential lacks."""
    unified = load_unified(unified_path)
    elements = [str(e) for e in elements]
    unknown = [e for e in elements if e not in unified.species]
    if unknown:
        raise ValueError(f"{unified.name} has no parameters for {', '.join(unknown)}: its species are "
                         f"{', '.join(unified.species)}")
    return [
        "newton on",
        f"neighbor {skin:g} bin",
        f"comm_modify cutoff {unified.ghost_cutoff(skin):.6g}",
        f"pair_style mliap unified {unified_path} 1",
        f"pair_coeff * * {' '.join(elements)}",
    ]
