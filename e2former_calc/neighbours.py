"""Neighbour lists from matscipy for any cell: periodic, non-periodic, mixed, triclinic, small.

:func:`neighbour_list` returns every pair ``(i, j, S)`` with ``|r_j + S @ cell - r_i| < cutoff``,
``i != j`` or ``S != 0`` (an atom sees its own periodic images when the cell is short). Integer
shifts ``S`` are zero along non-periodic axes.

matscipy needs a cell that holds the atoms along non-periodic axes. Those axes are replaced by a
box built around the atoms (perpendicular to the periodic axes, sized from the atoms' extent),
and the atoms are moved into it before the search: the result does not depend on where the
structure sits, and a molecule 10,000 Å from the origin costs what it costs at the origin.

:class:`VerletList` keeps a list built with a cutoff ``cutoff + skin`` while no pair outside it
can have come within the cutoff: atoms moved less than ``skin / 2`` or, when a periodic cell
changed too (NPT), ``2 max|displacement| + eps (cutoff + skin) <= skin`` with ``eps`` the strain
of the cell (see :meth:`VerletList.update`). Pairs beyond the cutoff stay in the list; the model
gives them exactly zero weight. The reuse decision is computed where the positions are: with the
torch search on a GPU the list, the old positions and the test stay on the device, and a step
that keeps the list reads back a single boolean.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from matscipy.neighbours import neighbour_list as _matscipy_neighbour_list

#: Axes names for error messages.
AXES = ("a (first cell vector)", "b (second cell vector)", "c (third cell vector)")


@dataclass
class Neighbours:
    """Pairs within the cutoff: receiver ``i``, sender ``j``, integer image shift ``S`` of ``j``.

    numpy arrays from the matscipy search, int64 tensors on the search's device from the torch one.
    """

    receivers: np.ndarray | torch.Tensor  # [E] int64
    senders: np.ndarray | torch.Tensor  # [E] int64
    shifts: np.ndarray | torch.Tensor  # [E, 3] int64


def check_cell(cell: np.ndarray, pbc: np.ndarray) -> None:
    """Raise ValueError naming the axis when a periodic cell vector is zero, non-finite or
    linearly dependent on the other periodic ones."""
    cell = np.asarray(cell, dtype=np.float64)
    periodic = [k for k in range(3) if pbc[k]]
    for k in periodic:
        if not np.all(np.isfinite(cell[k])):
            raise ValueError(f"cell axis {AXES[k]} is periodic but its cell vector is not finite: {cell[k].tolist()}")
        if np.linalg.norm(cell[k]) < 1e-8:
            raise ValueError(f"cell axis {AXES[k]} is periodic but its cell vector is zero")
    if len(periodic) >= 2:
        vectors = cell[periodic]
        singular = np.linalg.svd(vectors, compute_uv=False)
        if singular[-1] < 1e-6 * singular[0]:
            names = ", ".join(AXES[k] for k in periodic)
            raise ValueError(f"the periodic cell vectors ({names}) are degenerate: they span less than {len(periodic)} dimensions")


def _numpy(values) -> np.ndarray:
    """float64 numpy array of an array or a tensor on any device."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=np.float64)


def _search_cell(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float):
    """A cell for matscipy: periodic vectors kept, the others replaced by a box around the
    atoms; and the positions moved into that box (only along the replaced directions)."""
    periodic = [k for k in range(3) if pbc[k]]
    free = [k for k in range(3) if not pbc[k]]
    if not free:
        return positions, cell
    # orthonormal directions perpendicular to the periodic vectors
    if periodic:
        q, _ = np.linalg.qr(np.concatenate([cell[periodic].T, np.eye(3)], axis=1))
        directions = q[:, len(periodic) : len(periodic) + len(free)].T
    else:
        directions = np.eye(3)
    new_cell = cell.copy()
    moved = positions.copy()
    for k, direction in zip(free, directions):
        coordinate = positions @ direction
        extent = coordinate.max() - coordinate.min()
        new_cell[k] = direction * (extent + 2 * cutoff + 1.0)
        moved += np.outer(cutoff + 0.5 - coordinate.min(), direction)
    return moved, new_cell


def neighbour_list(positions, cell, pbc, cutoff: float, backend: str = "matscipy", device=None) -> Neighbours:
    """All pairs closer than ``cutoff`` (Å).

    Args:
        positions: ``[N, 3]`` Cartesian positions (any, wrapped or not).
        cell: ``[3, 3]`` cell vectors as rows; only the periodic ones are used.
        pbc: three booleans.
        cutoff: radius in Å.
        backend: ``"matscipy"`` (on the CPU, the default; numpy arrays) or ``"torch"``: the
            cell list of :mod:`e2former_calc.cell_list` on ``device`` (a GPU: the search of a
            large system runs there and its pairs stay there; the same pairs, sorted by receiver).
    """
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    if backend == "torch":
        from .cell_list import cell_list

        positions = torch.as_tensor(positions, dtype=torch.float64, device=device).reshape(-1, 3)
        cell = torch.as_tensor(cell, dtype=torch.float64, device=positions.device).reshape(3, 3)
        check_cell(cell.cpu().numpy(), pbc)
        return Neighbours(*cell_list(positions, cell, pbc, cutoff))
    if backend != "matscipy":
        raise ValueError(f"neighbour backend must be matscipy or torch, got {backend!r}")
    positions = _numpy(positions)
    cell = _numpy(cell).reshape(3, 3)
    check_cell(cell, pbc)
    if len(positions) == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Neighbours(empty, empty, np.zeros((0, 3), dtype=np.int64))
    moved, search_cell = _search_cell(positions, cell, pbc, cutoff)
    i, j, S = _matscipy_neighbour_list("ijS", positions=moved, cell=search_cell, pbc=pbc, cutoff=cutoff)
    S = S.astype(np.int64)
    S[:, ~pbc] = 0
    return Neighbours(i.astype(np.int64), j.astype(np.int64), S)


class VerletList:
    """A neighbour list with a skin, rebuilt only when needed.

    Args:
        cutoff: the model's cutoff (Å).
        skin: extra radius (Å); 0 rebuilds at every call.
        backend, device: the search (see :func:`neighbour_list`); the reuse test runs on
            ``device`` (the positions' device when None).

    ``update(positions, cell, pbc, numbers)`` returns the current :class:`Neighbours` (cutoff
    ``cutoff + skin``) and whether it was rebuilt. ``positions`` and ``cell`` may be numpy arrays
    or tensors; ``pbc`` and ``numbers`` are small host arrays.

    Reuse criterion: with ``F = cell_old^-1 cell_new`` (the identity when the cell is unchanged),
    ``eps = ||F - 1||_2`` and ``u_i = r_i - r_i_old F`` each atom's motion beyond the homogeneous
    deformation, every pair vector becomes ``d_old F + u_j - u_i``, so a pair that was farther
    than ``cutoff + skin`` is still farther than ``cutoff`` while
    ``2 max |u_i| + eps (cutoff + skin) <= skin``. A cell change of a structure that is not fully
    periodic, or new atoms or periodicity, always rebuild.
    """

    def __init__(self, cutoff: float, skin: float = 1.0, backend: str = "matscipy", device=None):
        if skin < 0:
            raise ValueError(f"skin must be >= 0, got {skin}")
        self.cutoff, self.skin = float(cutoff), float(skin)
        self.backend, self.device = backend, device
        self._state = None
        self.builds = 0

    def update(self, positions, cell, pbc, numbers) -> tuple[Neighbours, bool]:
        device = self.device if self.device is not None else getattr(positions, "device", "cpu")
        positions = torch.as_tensor(positions, dtype=torch.float64, device=device).reshape(-1, 3)
        cell = torch.as_tensor(cell, dtype=torch.float64, device=positions.device).reshape(3, 3)
        pbc = np.asarray(pbc, dtype=bool).reshape(3)
        numbers = np.asarray(numbers)
        if self._state is not None and self.skin > 0:
            old_positions, old_cell, old_pbc, old_numbers, neighbours = self._state
            if (
                old_positions.shape == positions.shape
                and np.array_equal(old_numbers, numbers)
                and np.array_equal(old_pbc, pbc)
            ):
                strain = self._strain(old_cell, cell, pbc)
                if strain is not None and bool(self._within_skin(old_positions, positions, strain)):
                    return neighbours, False
        neighbours = neighbour_list(positions, cell, pbc, self.cutoff + self.skin, self.backend, positions.device)
        self._state = (positions.clone(), cell.clone(), pbc.copy(), numbers.copy(), neighbours)
        self.builds += 1
        return neighbours, True

    def _within_skin(self, old_positions: torch.Tensor, positions: torch.Tensor, strain: torch.Tensor) -> torch.Tensor:
        """0-d bool tensor on the positions' device: ``2 max |u_i| + eps (cutoff + skin) <= skin``."""
        deformation = torch.eye(3, dtype=strain.dtype, device=strain.device) + strain
        moved = torch.linalg.vector_norm(positions - old_positions @ deformation, dim=1).max() if len(positions) \
            else positions.new_zeros(())
        eps = torch.linalg.matrix_norm(strain, ord=2)
        return 2 * moved + eps * (self.cutoff + self.skin) <= self.skin

    @staticmethod
    def _strain(old_cell: torch.Tensor, cell: torch.Tensor, pbc: np.ndarray):
        """``F - 1`` with ``cell = old_cell F``; zero for an unchanged cell, None when a changed
        cell is not fully periodic and invertible."""
        if torch.equal(old_cell, cell):
            return torch.zeros_like(cell)
        if not pbc.all() or abs(float(torch.linalg.det(old_cell))) < 1e-12:
            return None
        return torch.linalg.solve(old_cell, cell) - torch.eye(3, dtype=cell.dtype, device=cell.device)
