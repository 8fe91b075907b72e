"""Energies, forces, stress and virial of an energy model: the one module every engine calls.

The ASE calculator, batch prediction, torch-sim, LAMMPS and the trainer all go through
:class:`ForceField`. From an :class:`~e2former_calc.graph.AtomGraph` (positions, cells, neighbour
list with integer shifts) it returns, in float64:

- ``energy [S]``: ``E_s = sum_{i in s} E_i``; ``atom_energies [N]``;
- ``forces [N, 3]``: ``F = -dE/dx``;
- ``virial [S, 3, 3]``: ``W_s = -dE_s/d(epsilon_s)`` for a symmetric strain ``epsilon_s`` applied to
  the positions and the cell of structure ``s`` (the sign MACE, NequIP and LAMMPS use);
- ``stress [S, 3, 3]``: ``sigma_s = -W_s / V_s = (1/V_s) dE_s/d(epsilon_s)`` (ASE's sign: positive
  is tensile), for fully periodic structures; zero rows elsewhere, where it is undefined
  (``periodic [S]`` says which).

Forces and the virial come from one backward pass. With ``create_graph`` the outputs stay in
the autograd graph and the derivatives are themselves differentiable (training on forces and
stresses); without it they are detached.

:meth:`ForceField.pair_forward` serves engines that hand pair vectors ``r_ij`` and want
``dE/dr_ij`` back (LAMMPS ML-IAP): node coordinates are rebuilt from the pairs along a spanning
forest, so the network runs exactly as on positions.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import nn

from .conv import ConvGraph, ConvPlan, SpanningForest, scatter_sum
from .graph import AtomGraph
from .model import E2Former
from .model.stages import LayerStages


class ForceField(nn.Module):
    """Wraps an :class:`~e2former_calc.model.E2Former` (an energy model) with its derivatives.

    Args:
        model: the network; it is used as it is (its device, dtype and parameters).
    """

    def __init__(self, model: E2Former):
        super().__init__()
        self.model = model

    @classmethod
    def frozen(cls, model: E2Former, device, dtype) -> "ForceField":
        """A ForceField on a copy of ``model`` on ``device`` in ``dtype``, in eval mode, without
        parameter gradients (inference); the caller's model is left as it was."""
        copied = copy.deepcopy(model).to(device=device, dtype=dtype).eval()
        for parameter in copied.parameters():
            parameter.requires_grad_(False)
        return cls(copied)

    @property
    def cutoff(self) -> float:
        return float(self.model.config.cutoff)

    def plan(self, graph: AtomGraph) -> ConvPlan | None:
        """The convolution plan of ``graph``: keep it while the neighbour list holds."""
        return self.model.plan(graph.conv_graph())

    def forward(self, graph: AtomGraph, plan: ConvPlan | None = None, forces: bool = True, stress: bool = False,
                create_graph: bool = False) -> dict:
        """Energies and the requested derivatives (see the module docstring).

        Args:
            graph: the atoms and edges.
            plan: from :meth:`plan` for this graph's edges (made on the spot when None).
            forces: compute ``forces``.
            stress: compute ``virial`` and ``stress``.
            create_graph: keep the derivatives differentiable (training).
        """
        if plan is None:
            plan = self.plan(graph)
        with torch.set_grad_enabled(forces or stress or create_graph or torch.is_grad_enabled()):
            positions = graph.positions.detach().requires_grad_(forces) if forces else graph.positions
            strain = torch.zeros(graph.n_structures, 3, 3, dtype=torch.float64, device=graph.device,
                                 requires_grad=stress)
            if stress:
                deformation = torch.eye(3, dtype=torch.float64, device=graph.device) + 0.5 * (strain + strain.transpose(1, 2))
                strained = graph.with_geometry(torch.einsum("ni,nij->nj", positions, deformation.index_select(0, graph.batch)),
                                               graph.cells @ deformation)
            else:
                strained = graph.with_geometry(positions)
            atom_energies = self.model(graph.species, strained.conv_graph(), plan,
                                       first_derivatives_only=not create_graph)  # [N] float64
            energy = scatter_sum(atom_energies, graph.batch, graph.n_structures)  # [S]
            out = {"energy": energy, "atom_energies": atom_energies}
            wanted = [t for t, flag in ((positions, forces), (strain, stress)) if flag]
            if wanted:
                grads = list(torch.autograd.grad(energy.sum(), wanted, create_graph=create_graph))
                if forces:
                    out["forces"] = -grads.pop(0)
                if stress:
                    virial = -grads.pop(0)
                    periodic = graph.periodic
                    volume = torch.linalg.det(graph.cells).abs()
                    safe_volume = torch.where(periodic, volume, torch.ones_like(volume))
                    out["virial"] = virial
                    out["stress"] = torch.where(periodic[:, None, None], -virial / safe_volume[:, None, None],
                                                torch.zeros_like(virial))
                    out["periodic"] = periodic
        if not create_graph:
            out = {k: v.detach() for k, v in out.items()}
        return out

    def pair_forward(self, species: torch.Tensor, forest: SpanningForest, edge_vectors: torch.Tensor,
                     plan: ConvPlan | None = None, energy_mask: torch.Tensor | None = None,
                     create_graph: bool = False, stages: LayerStages | None = None, exchange=None) -> dict:
        """Energies and ``dE/dr_ij`` from pair vectors alone.

        Args:
            species: ``[N]`` species index of every node (owned and ghost atoms alike).
            forest: :class:`~e2former_calc.conv.SpanningForest` of the pairs (made once per pair list).
            edge_vectors: ``[E, 3]`` ``r_ij = x_j - x_i`` of the forest's pairs ``i <- j``.
            plan: the plan of :meth:`pair_plan` (made on the spot when None).
            energy_mask: ``[M]`` bool over the returned atom energies, the atoms whose energies
                count (e.g. those a rank owns); None: all.
            create_graph: keep ``pair_gradients`` differentiable.
            stages: from :meth:`pair_stages`: each layer only where the energies of the first
                ``stages.nodes[-1]`` nodes need it (``plan`` is then unused).
            exchange: the model's halo exchange before each block (see
                :class:`~e2former_calc.model.E2Former`).

        Returns:
            ``atom_energies [M]`` (``M = N``, or ``stages.nodes[-1]``), ``energy`` (the sum over
            the mask) and ``pair_gradients [E, 3]`` ``= dE/dr_ij``, float64.
        """
        with torch.set_grad_enabled(True):
            vectors = edge_vectors.to(torch.float64)
            if not vectors.requires_grad:
                vectors = vectors.detach().requires_grad_(True)
            graph = ConvGraph.from_edge_vectors(vectors, forest)
            if plan is None and stages is None:
                plan = self.model.plan(graph)
            atom_energies = self.model(species, graph, plan, stages=stages, exchange=exchange,
                                       first_derivatives_only=not create_graph)
            counted = atom_energies if energy_mask is None else atom_energies[energy_mask]
            energy = counted.sum()
            (gradients,) = torch.autograd.grad(energy, vectors, create_graph=create_graph)
        out = {"atom_energies": atom_energies, "energy": energy, "pair_gradients": gradients}
        return out if create_graph else {k: v.detach() for k, v in out.items()}

    def pair_plan(self, forest: SpanningForest, edge_vectors: torch.Tensor) -> ConvPlan | None:
        """The convolution plan for :meth:`pair_forward` on this pair list."""
        with torch.no_grad():
            return self.model.plan(ConvGraph.from_edge_vectors(edge_vectors.detach().to(torch.float64), forest))

    def pair_stages(self, forest: SpanningForest, edge_vectors: torch.Tensor, hops) -> LayerStages:
        """The :class:`~e2former_calc.model.stages.LayerStages` for :meth:`pair_forward` on this
        pair list, its nodes at graph distances ``hops`` ``[N]`` (non-decreasing) from the atoms
        whose energies are wanted."""
        with torch.no_grad():
            graph = ConvGraph.from_edge_vectors(edge_vectors.detach().to(torch.float64), forest)
            return LayerStages.build(self.model, graph, hops)


#: ``prune="auto"`` prunes lists of at least this many pairs (on the CPU): below, building a plan
#: per call costs about what the dropped pairs save (0.5 fs MD, float32, one thread: 108 Cu atoms,
#: ~7,000 pairs, 65.4 against 64.7 ms per step; ethanol 29.2 against 27.4; 500 Cu atoms, ~32,000
#: pairs, 212 against 226).
PRUNE_MIN_PAIRS = 20_000


class StepGraphs:
    """The graph and convolution plan of each call of an engine that keeps Verlet lists.

    A Verlet list holds every pair within ``cutoff + skin`` and is reused while no other pair can
    have come within ``cutoff``. Two ways to evaluate on it:

    - ``prune=False``: the network runs on every pair of the list (those beyond the cutoff
      contribute exactly nothing) and the plan is built once per list;
    - ``prune=True``: at each call the pairs within ``cutoff`` at the current geometry are kept
      (:meth:`~e2former_calc.graph.AtomGraph.within`) and a plan is built for them. On the CPU
      the network costs far more per pair than the plan: with a 0.3 Å skin about a sixth of the
      pairs are dropped (``docs/model.md``, "Memory and scaling").

    Both give the same energies, forces and stress to rounding. ``"auto"``: prune on the CPU
    lists of at least :data:`PRUNE_MIN_PAIRS` pairs (decided at every rebuild). Without a skin
    (``skin=0``, the lists hold only pairs within the cutoff) nothing is pruned.
    """

    def __init__(self, forcefield: ForceField, prune="auto", skin: float = 0.0):
        if prune not in ("auto", True, False):
            raise ValueError(f"prune must be 'auto', True or False, got {prune!r}")
        self.forcefield = forcefield
        self.prune = prune if skin > 0 else False
        self._kept = None  # (the lists' AtomGraph, its ConvPlan (None when pruning), pruning)

    @property
    def pruning(self) -> bool:
        """Whether the calls on the current lists prune."""
        return self._kept is not None and self._kept[2]

    def reset(self) -> None:
        """Forget the kept graph (the lists are new)."""
        self._kept = None

    def __call__(self, rebuilt: bool, build: Callable[[], AtomGraph], positions: torch.Tensor,
                 cells: torch.Tensor) -> tuple[AtomGraph, ConvPlan | None]:
        """``(graph, plan)`` for this call. ``rebuilt``: a list was searched again; ``build()``
        makes the lists' graph; ``positions [N, 3]`` and ``cells [S, 3, 3]``: the geometry now."""
        if rebuilt or self._kept is None:
            self._kept = None  # the previous plan goes before the next is built
            graph = build()
            prune = self.prune
            if prune == "auto":
                prune = graph.device.type == "cpu" and graph.n_edges >= PRUNE_MIN_PAIRS
            self._kept = (graph, None if prune else self.forcefield.plan(graph), prune)
        else:  # the same pairs at the new positions and cells (NPT)
            graph = self._kept[0].with_geometry(positions, cells)
        if not self.pruning:
            return graph, self._kept[1]
        graph = graph.within(self.forcefield.cutoff)
        return graph, self.forcefield.plan(graph)
