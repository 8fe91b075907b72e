"""Several structures as one graph, and their energies, forces and virials from one backward pass.

Shared by the :class:`~e2former_calc.predictor.Predictor` (inference) and the trainer (which needs
the forces as differentiable functions of the weights, ``create_graph=True``).

Forces are ``F = -dE/dr``; the virial of structure ``s`` is ``W_s = dE_s/d(epsilon_s)`` for a
symmetric strain ``epsilon_s`` applied to its positions and cell, so that its stress is
``sigma_s = W_s / V_s`` (ASE's sign: positive is tensile).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .conv import ConvGraph, scatter_sum


@dataclass
class StructureBatch:
    """Concatenated structures. ``N`` atoms, ``E`` edges, ``S`` structures."""

    species: torch.Tensor  # [N] species index
    positions: torch.Tensor  # [N, 3] float64
    cells: torch.Tensor  # [S, 3, 3] float64
    batch: torch.Tensor  # [N] structure of each atom
    receivers: torch.Tensor  # [E]
    senders: torch.Tensor  # [E]
    cell_shifts: torch.Tensor  # [E, 3] float64 (integer image shifts)
    edge_batch: torch.Tensor  # [E] structure of each edge
    periodic: list  # [S] fully periodic?
    n_atoms: list  # [S]

    @property
    def n_structures(self) -> int:
        return len(self.n_atoms)

    def shifts(self) -> torch.Tensor:
        """Cartesian image shifts ``S @ cell`` of the edges, with the current cells."""
        return torch.einsum("ei,eij->ej", self.cell_shifts, self.cells[self.edge_batch])

    def graph(self, cutoff: float) -> ConvGraph:
        return ConvGraph.build(self.positions, self.receivers, self.senders, self.shifts(), cutoff=cutoff)


def assemble(species_list, positions_list, cells, pbcs, neighbours_list, device) -> StructureBatch:
    """One batch from per-structure arrays: species indices ``[n_s]``, positions ``[n_s, 3]``,
    cells ``[3, 3]``, pbc ``[3]`` and :class:`~e2former_calc.neighbours.Neighbours`."""
    receivers, senders, shifts, batch, edge_batch = [], [], [], [], []
    offset = 0
    for s, (positions, nb) in enumerate(zip(positions_list, neighbours_list)):
        n = len(positions)
        batch.append(np.full(n, s))
        receivers.append(nb.receivers + offset)
        senders.append(nb.senders + offset)
        shifts.append(nb.shifts)
        edge_batch.append(np.full(len(nb.receivers), s))
        offset += n

    def cat(parts, dtype):
        return torch.as_tensor(np.concatenate(parts), dtype=dtype, device=device)

    return StructureBatch(
        species=cat(species_list, torch.long),
        positions=cat(positions_list, torch.float64),
        cells=torch.as_tensor(np.stack(cells), dtype=torch.float64, device=device),
        batch=cat(batch, torch.long),
        receivers=cat(receivers, torch.long),
        senders=cat(senders, torch.long),
        cell_shifts=cat(shifts, torch.float64),
        edge_batch=cat(edge_batch, torch.long),
        periodic=[bool(np.all(p)) for p in pbcs],
        n_atoms=[len(p) for p in positions_list],
    )


def energies_and_derivatives(model, b: StructureBatch, base: ConvGraph, forces: bool, virials: bool,
                             create_graph: bool = False) -> dict:
    """Evaluate ``model`` on the batch.

    Returns a dict of tensors: ``energies [S]`` and ``atom_energies [N]`` (float64), and when
    asked ``forces [N, 3]`` and ``virials [S, 3, 3]``. With ``create_graph`` the derivatives are
    themselves differentiable (force and stress training).
    """
    device = b.positions.device
    with torch.set_grad_enabled(forces or virials or create_graph):
        positions = b.positions.clone().requires_grad_(forces)
        strain = torch.zeros(b.n_structures, 3, 3, dtype=torch.float64, device=device, requires_grad=virials)
        deformation = torch.eye(3, dtype=torch.float64, device=device) + 0.5 * (strain + strain.transpose(1, 2))
        strained_positions = torch.einsum("ni,nij->nj", positions, deformation[b.batch])
        strained_cells = b.cells @ deformation
        shifts = torch.einsum("ei,eij->ej", b.cell_shifts, strained_cells[b.edge_batch])
        graph = base.with_positions(strained_positions, shifts)
        atom_energies = model(b.species, graph)  # [N] float64
        energies = scatter_sum(atom_energies, b.batch, b.n_structures)
        out = {"energies": energies, "atom_energies": atom_energies}
        wanted = [t for t, flag in ((positions, forces), (strain, virials)) if flag]
        if wanted:
            grads = list(torch.autograd.grad(energies.sum(), wanted, create_graph=create_graph))
            if forces:
                out["forces"] = -grads.pop(0)
            if virials:
                out["virials"] = grads.pop(0)
    return out
