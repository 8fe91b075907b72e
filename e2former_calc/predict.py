"""Batched prediction over many structures."""

from __future__ import annotations

from .integrations.ase import E2FormerCalculator
from .model import E2Former
from .predictor import Predictor


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
