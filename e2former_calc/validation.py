"""Input checks shared by the calculator, batch prediction, torch-sim and the training data.

Each raises ``ValueError`` naming the problem -- which atom, which element, which cell axis, in
which structure -- instead of letting a NaN or a silently wrong number through. All are
vectorised (no Python loop over atoms: they run on every MD step).
"""

from __future__ import annotations

import numpy as np
import torch
from ase.data import chemical_symbols

from .neighbours import check_cell

#: Two atoms closer than this (Å) are refused: no chemistry puts nuclei this close, and a
#: potential trained on real structures says nothing meaningful there.
MINIMUM_DISTANCE = 0.4


def element_name(z: int) -> str:
    return chemical_symbols[z] if 0 <= z < len(chemical_symbols) else str(z)


def check_structure(numbers, positions, cell, pbc, known_numbers=None, where: str = "") -> None:
    """Raise ValueError if the structure cannot be evaluated: no atoms, a non-finite position, an
    element outside ``known_numbers`` (None: no check), or a periodic cell axis that is zero,
    non-finite or degenerate. ``where`` (e.g. ``"structure 3: "``) prefixes the message.
    ``positions`` or ``cell`` None skips that check (a caller that checks them on its own)."""
    numbers = np.asarray(numbers)
    if len(numbers) == 0:
        raise ValueError(f"{where}the structure has no atoms")
    if positions is not None:
        positions = np.asarray(positions, dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(positions).all(axis=1))
        if bad.size:
            k = bad[0]
            raise ValueError(f"{where}atom {k} ({element_name(int(numbers[k]))}) has a non-finite position "
                             f"{positions[k].tolist()}")
    if known_numbers is not None:
        unknown = np.flatnonzero(~np.isin(numbers, np.asarray(list(known_numbers))))
        if unknown.size:
            k = unknown[0]
            known = ", ".join(element_name(int(z)) for z in known_numbers)
            raise ValueError(f"{where}element {element_name(int(numbers[k]))} (atom {k}) is not known to this "
                             f"potential; it knows {known}")
    if cell is None:
        return
    try:
        check_cell(cell, pbc)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def check_distances(lengths: torch.Tensor, receivers: torch.Tensor, senders: torch.Tensor, numbers,
                    offsets=None, name: str = "structure") -> None:
    """Raise ValueError naming the closest pair if two atoms are closer than ``MINIMUM_DISTANCE``.

    ``lengths``, ``receivers``, ``senders``: ``[E]`` (tensors of one graph of several structures);
    ``numbers``: ``[N]`` atomic numbers; ``offsets``: first atom of each structure (None: one).
    """
    if lengths.numel() == 0:
        return
    distance, shortest = torch.min(lengths.detach(), dim=0)
    distance = float(distance)  # the one value read back per call (a sync on a GPU)
    if distance >= MINIMUM_DISTANCE:
        return
    shortest = int(shortest)
    i, j = int(receivers[shortest]), int(senders[shortest])
    offsets = np.zeros(1, dtype=np.int64) if offsets is None else np.asarray(offsets)
    s = int(np.searchsorted(offsets, i, side="right") - 1)
    where = f" in {name} {s}" if len(offsets) > 1 else ""
    image = " (a periodic image of itself)" if i == j else ""
    raise ValueError(
        f"atoms {i - offsets[s]} ({element_name(int(numbers[i]))}) and {j - offsets[s]} "
        f"({element_name(int(numbers[j]))}){image}{where} are {distance:.3f} Å apart, closer than the "
        f"minimum of {MINIMUM_DISTANCE} Å this package accepts"
    )


def stress_is_defined(pbc) -> bool:
    """The stress of a structure is defined only for a fully periodic cell."""
    return bool(np.all(pbc))


def check_graph_distances(graph, numbers, name: str = "structure") -> None:
    """:func:`check_distances` on every edge of an :class:`~e2former_calc.graph.AtomGraph`;
    ``numbers`` ``[N]`` atomic numbers; ``name`` is what the message calls a structure."""
    counts = graph.atoms_per_structure().cpu().numpy()
    offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    check_distances(torch.linalg.vector_norm(graph.edge_vectors(), dim=-1), graph.receivers, graph.senders,
                    numbers, offsets, name)
