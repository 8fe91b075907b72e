"""The engine-neutral input of a potential: atoms, cells and a neighbour list, as tensors only.

An :class:`AtomGraph` is what every engine hands the forces/stress module
(:class:`~e2former_calc.forces.ForceField`): ``N`` atoms of ``S`` structures and ``E`` directed
edges ``i <- j`` (receiver ``i``, sender ``j``) with integer cell shifts ``S_e``, so that

    r_e = x_j + S_e @ cell_s - x_i        (s the structure of i and j)

with ``S_e = 0`` along non-periodic axes. Positions and cells are float64 (the network casts
what it needs); integer shifts, not Cartesian ones, identify periodic images, so the same
graph serves a moved or strained geometry (:meth:`AtomGraph.with_geometry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch

from .conv import ConvGraph


@dataclass(frozen=True)
class AtomGraph:
    """Atoms of one or several structures and their neighbour list. ``N`` atoms, ``E`` edges, ``S`` structures."""

    species: torch.Tensor  # [N] int64 species index (position in the model's atomic_numbers)
    positions: torch.Tensor  # [N, 3] float64, Å
    cells: torch.Tensor  # [S, 3, 3] float64, cell vectors as rows, Å
    pbc: torch.Tensor  # [S, 3] bool
    batch: torch.Tensor  # [N] int64 structure of each atom
    receivers: torch.Tensor  # [E] int64, i
    senders: torch.Tensor  # [E] int64, j
    cell_shifts: torch.Tensor  # [E, 3] int64, S_e

    def __post_init__(self):
        n, e, s = self.species.shape[0], self.receivers.shape[0], self.cells.shape[0]
        expected = {"positions": (n, 3), "cells": (s, 3, 3), "pbc": (s, 3), "batch": (n,), "senders": (e,),
                    "cell_shifts": (e, 3)}
        for name, shape in expected.items():
            if tuple(getattr(self, name).shape) != shape:
                raise ValueError(f"AtomGraph.{name} must have shape {shape}, got {tuple(getattr(self, name).shape)}")

    @property
    def n_atoms(self) -> int:
        return self.species.shape[0]

    @property
    def n_edges(self) -> int:
        return self.receivers.shape[0]

    @property
    def n_structures(self) -> int:
        return self.cells.shape[0]

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def edge_batch(self) -> torch.Tensor:
        """``[E]`` structure of each edge."""
        return self.batch.index_select(0, self.receivers)

    @property
    def periodic(self) -> torch.Tensor:
        """``[S]`` bool: fully periodic structures (the ones with a stress)."""
        return self.pbc.all(dim=1)

    def atoms_per_structure(self) -> torch.Tensor:
        """``[S]`` int64."""
        return torch.bincount(self.batch, minlength=self.n_structures)

    def with_geometry(self, positions: torch.Tensor | None = None, cells: torch.Tensor | None = None) -> "AtomGraph":
        """The same atoms and edges at other positions and/or cells (e.g. a moved or strained frame)."""
        return dataclasses.replace(self, positions=self.positions if positions is None else positions,
                                   cells=self.cells if cells is None else cells)

    def within(self, cutoff: float) -> "AtomGraph":
        """The same atoms with only the edges shorter than ``cutoff`` (Å) at this geometry, in
        their order (``self`` when every edge is): a Verlet list's pairs in the skin dropped."""
        keep = torch.linalg.vector_norm(self.edge_vectors(), dim=-1) < cutoff
        if bool(keep.all()):
            return self
        edges = keep.nonzero().squeeze(1)
        return dataclasses.replace(self, receivers=self.receivers.index_select(0, edges),
                                   senders=self.senders.index_select(0, edges),
                                   cell_shifts=self.cell_shifts.index_select(0, edges))

    def cartesian_shifts(self) -> torch.Tensor:
        """``[E, 3]`` float64 ``S_e @ cell``."""
        shifts = self.cell_shifts.to(self.cells.dtype)
        if self.n_structures == 1:  # one product, not a [E, 3, 3] gather of the cell
            return shifts @ self.cells[0]
        return torch.einsum("ei,eij->ej", shifts, self.cells.index_select(0, self.edge_batch))

    def edge_vectors(self) -> torch.Tensor:
        """``[E, 3]`` float64 ``r_e = x_j + S_e @ cell - x_i``."""
        return (self.positions.index_select(0, self.senders) + self.cartesian_shifts()
                - self.positions.index_select(0, self.receivers))

    def conv_graph(self) -> ConvGraph:
        """The geometry the network reads, image keys = the integer cell shifts."""
        return ConvGraph.build(self.positions, self.receivers, self.senders, self.cartesian_shifts(), self.cell_shifts)

    @classmethod
    def from_arrays(cls, species, positions, cells, pbcs, neighbours, device="cpu") -> "AtomGraph":
        """One graph from per-structure arrays (numpy, or tensors).

        Args:
            species: per structure, ``[n_s]`` species indices.
            positions: per structure, ``[n_s, 3]`` positions (Å).
            cells: per structure, ``[3, 3]`` cell vectors as rows.
            pbcs: per structure, three booleans.
            neighbours: per structure, a :class:`~e2former_calc.neighbours.Neighbours` (local
                indices; numpy arrays or tensors, which stay where they are when on ``device``).
            device: where the tensors go.
        """
        if not len(positions):
            raise ValueError("an AtomGraph needs at least one structure")

        def tensor(values, dtype):
            return torch.as_tensor(values, dtype=dtype, device=device)

        sizes = [len(p) for p in positions]
        offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64).tolist()
        return cls(
            species=torch.cat([tensor(z, torch.long).reshape(-1) for z in species]),
            positions=torch.cat([tensor(p, torch.float64).reshape(-1, 3) for p in positions]),
            cells=torch.stack([tensor(c, torch.float64).reshape(3, 3) for c in cells]),
            pbc=torch.stack([tensor(np.asarray(p, dtype=bool), torch.bool).reshape(3) for p in pbcs]),
            batch=torch.repeat_interleave(torch.arange(len(sizes), device=device), tensor(sizes, torch.long)),
            receivers=torch.cat([tensor(nb.receivers, torch.long) + o for nb, o in zip(neighbours, offsets)]),
            senders=torch.cat([tensor(nb.senders, torch.long) + o for nb, o in zip(neighbours, offsets)]),
            cell_shifts=torch.cat([tensor(nb.shifts, torch.long).reshape(-1, 3) for nb in neighbours]),
        )
