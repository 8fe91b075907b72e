"""A neighbour list in torch (a cell list), for positions that live on a GPU.

Same contract as :func:`e2former_calc.neighbours.neighbour_list` (matscipy, on the CPU): every
pair ``(i, j, S)`` with ``|x_j + S @ cell - x_i| < cutoff``, ``i != j`` or ``S != 0``, for any
cell -- periodic, non-periodic, mixed, triclinic, shorter than the cutoff -- with integer shifts
``S`` zero along non-periodic axes; here the pairs come sorted by receiver ``i`` and everything
stays on the positions' device.

Method. Non-periodic cell vectors are replaced by a box around the atoms (perpendicular to the
periodic ones, ``2 cutoff + 1`` Å wider than their extent), so that every axis has a cell
vector. Atoms are wrapped into the cell (fractional coordinates in ``[0, 1)``, their integer
offsets remembered) and binned: along axis ``k`` with distance ``d_k`` between lattice planes,
``n_k = max(1, floor(d_k / cutoff))`` bins, and a neighbour lies at most
``m_k = ceil(cutoff n_k / d_k)`` bins away (one, or more when the cell is shorter than the
cutoff and an atom meets several images of another). For each atom and each of the
``prod(2 m_k + 1)`` bin offsets the atoms of the target bin (wrapped with an image shift along
periodic axes, skipped beyond the box along the others) are the candidates; those within the
cutoff are kept. Atoms go in chunks so that at most ``max_candidates`` candidates exist at a time.
"""

from __future__ import annotations

import itertools
import math

import torch

#: candidates (atom x bin offset x bin occupancy) held at once
MAX_CANDIDATES = 2**24


def _box_cell(positions: torch.Tensor, cell: torch.Tensor, pbc: tuple[bool, bool, bool], cutoff: float):
    """The cell with its non-periodic vectors replaced by a box around the atoms, and the
    positions moved into that box along the replaced directions."""
    periodic = [k for k in range(3) if pbc[k]]
    free = [k for k in range(3) if not pbc[k]]
    if not free:
        return positions, cell
    if periodic:
        q, _ = torch.linalg.qr(torch.cat([cell[periodic].T, torch.eye(3, dtype=cell.dtype, device=cell.device)], dim=1))
        directions = q[:, len(periodic) : len(periodic) + len(free)].T
    else:
        directions = torch.eye(3, dtype=cell.dtype, device=cell.device)
    new_cell, moved = cell.clone(), positions.clone()
    for k, direction in zip(free, directions):
        coordinate = positions @ direction
        low, extent = coordinate.min(), coordinate.max() - coordinate.min()
        new_cell[k] = direction * (extent + 2 * cutoff + 1.0)
        moved = moved + (cutoff + 0.5 - low) * direction
    return moved, new_cell


def cell_list(positions: torch.Tensor, cell: torch.Tensor, pbc, cutoff: float,
              max_candidates: int = MAX_CANDIDATES) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """All pairs closer than ``cutoff`` (module doc).

    Args:
        positions: ``[N, 3]`` Cartesian positions (float64 recommended), on any device.
        cell: ``[3, 3]`` cell vectors as rows (only the periodic ones are used).
        pbc: three booleans.
        cutoff: radius in Å.
        max_candidates: memory bound of the search (candidates held at once).

    Returns:
        ``receivers [E]``, ``senders [E]`` (int64) and integer ``shifts [E, 3]`` on the
        positions' device, sorted by receiver.
    """
    device = positions.device
    pbc = tuple(bool(p) for p in pbc)
    n = positions.shape[0]
    empty = torch.zeros(0, dtype=torch.long, device=device)
    if n == 0:
        return empty, empty, torch.zeros((0, 3), dtype=torch.long, device=device)
    positions = positions.detach().to(torch.float64)
    cell = cell.detach().to(device=device, dtype=torch.float64).reshape(3, 3)
    moved, box = _box_cell(positions, cell, pbc, float(cutoff))
    periodic = torch.tensor(pbc, device=device)
    frac = torch.linalg.solve(box.T, moved.T).T  # [N, 3]: moved = frac @ box
    image = torch.where(periodic, torch.floor(frac), torch.zeros_like(frac))  # integer offset of each atom
    frac = frac - image
    wrapped = frac @ box
    volume = torch.abs(torch.linalg.det(box))
    spacing = [float(volume / torch.linalg.norm(torch.linalg.cross(box[(k + 1) % 3], box[(k + 2) % 3]))) for k in range(3)]
    bins = [max(1, int(math.floor(d / cutoff))) for d in spacing]
    reach = [int(math.ceil(cutoff * b / d)) for b, d in zip(bins, spacing)]
    n_bins = torch.tensor(bins, device=device)
    index = torch.clamp(torch.floor(frac * n_bins).long(), min=0)
    index = torch.minimum(index, n_bins - 1)  # [N, 3]
    linear = (index[:, 0] * bins[1] + index[:, 1]) * bins[2] + index[:, 2]
    order = torch.argsort(linear, stable=True)
    counts = torch.bincount(linear, minlength=bins[0] * bins[1] * bins[2])
    starts = torch.cumsum(counts, 0) - counts
    occupancy = int(counts.max())
    offsets = torch.tensor(list(itertools.product(*(range(-m, m + 1) for m in reach))), device=device)  # [O, 3]
    slots = torch.arange(occupancy, device=device)
    chunk = max(1, max_candidates // (offsets.shape[0] * occupancy))
    image_long = image.long()
    out_i, out_j, out_s = [], [], []
    for first in range(0, n, chunk):
        atoms = torch.arange(first, min(n, first + chunk), device=device)
        target = index[atoms][:, None, :] + offsets[None, :, :]  # [A, O, 3]
        shift = torch.where(periodic, torch.div(target, n_bins, rounding_mode="floor"), torch.zeros_like(target))
        target = torch.where(periodic, target - shift * n_bins, target)
        inside = ((target >= 0) & (target < n_bins)).all(-1)  # non-periodic axes: no bins beyond the box
        target = torch.where(inside[..., None], target, torch.zeros_like(target))
        bin_id = (target[..., 0] * bins[1] + target[..., 1]) * bins[2] + target[..., 2]  # [A, O]
        filled = (slots[None, None, :] < counts[bin_id][..., None]) & inside[..., None]  # [A, O, M]
        position = torch.clamp(starts[bin_id][..., None] + slots, max=n - 1)
        j = order[position]  # [A, O, M]
        i = atoms[:, None, None].expand_as(j)
        s = shift[:, :, None, :].expand(*j.shape, 3)
        vector = wrapped[j] + (s.to(torch.float64) @ box) - wrapped[i]
        keep = filled & ((vector * vector).sum(-1) < cutoff * cutoff) & ~((j == i) & (s == 0).all(-1))
        i, j, s = i[keep], j[keep], s[keep]
        out_i.append(i)
        out_j.append(j)
        # back to the unwrapped atoms: x = wrapped + image @ box
        out_s.append(s + image_long[i] - image_long[j])
    receivers, senders, shifts = torch.cat(out_i), torch.cat(out_j), torch.cat(out_s)
    shifts = torch.where(periodic, shifts, torch.zeros_like(shifts))
    return receivers, senders, shifts
