"""``e2former eval``: errors of a potential on labelled structures, per configuration type, and
parity plots.

Reference labels are looked up as in training (:func:`~e2former_calc.training.data.read_samples`):
under the given keys in ``atoms.info``/``atoms.arrays``, else among an attached calculator's
results. By default ``REF_energy``/``REF_forces``/``REF_stress`` are tried first, then ASE's
``energy``/``forces``/``stress``.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .training.data import label, stress_tensor
from .training.metrics import ErrorTally

DEFAULT_KEYS = {"energy": ("REF_energy", "energy"), "forces": ("REF_forces", "forces"), "stress": ("REF_stress", "stress")}


def reference(atoms, kind: str, key: str | None = None):
    """The reference ``energy``/``forces``/``stress`` of ``atoms`` (None if absent)."""
    for k in ((key,) if key else DEFAULT_KEYS[kind]):
        value = label(atoms, k)
        if value is not None:
            return value
    return None


def tally_errors(atoms_list, results, keys: dict | None = None) -> tuple[ErrorTally, dict]:
    """Errors of ``results`` (from :func:`~e2former_calc.predictor.predict`) against the references;
    also the parity data (per-atom energies and force components, reference and predicted)."""
    keys = {k: v for k, v in (keys or {}).items() if v}
    for kind, key in keys.items():  # a key given by name must exist: a typo is not "no labels"
        if not any(label(atoms, key) is not None for atoms in atoms_list):
            raise ValueError(f"no structure has a {kind} label under the key {key!r}")
    tally = ErrorTally()
    parity = {"config_type": [], "energy_ref": [], "energy_pred": [], "force_ref": [], "force_pred": [], "force_type": []}
    for atoms, result in zip(atoms_list, results):
        energy = reference(atoms, "energy", keys.get("energy"))
        if energy is None:
            continue
        kind = str(atoms.info.get("config_type", "all"))
        n = len(atoms)
        forces = reference(atoms, "forces", keys.get("forces"))
        force_error = None
        if forces is not None:
            forces = np.asarray(forces, dtype=float)
            if forces.shape != (n, 3):
                raise ValueError(f"frame {len(parity['config_type'])}: reference forces have shape {forces.shape}, "
                                 f"expected ({n}, 3)")
            force_error = result["forces"] - forces
            parity["force_ref"].append(forces.ravel())
            parity["force_pred"].append(result["forces"].ravel())
            parity["force_type"] += [kind] * forces.size
        stress_error = None
        stress = reference(atoms, "stress", keys.get("stress")) if atoms.pbc.all() else None
        if stress is not None and "stress" in result:
            full = stress_tensor(stress, f"frame {len(parity['config_type'])}")
            stress_error = stress_tensor(result["stress"], "prediction") - full
        tally.add(kind, n, float(result["energy"] - float(energy)), force_error, stress_error)
        parity["config_type"].append(kind)
        parity["energy_ref"].append(float(energy) / n)
        parity["energy_pred"].append(result["energy"] / n)
    return tally, parity


def parity_plots(parity: dict, prefix, title: str = "") -> list[Path]:
    """``PREFIX_energy.png`` (per-atom energies, shifted by the mean reference of each
    configuration type, so that molecules of different size share one axis) and
    ``PREFIX_forces.png`` (force components). Needs matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("parity plots need matplotlib: pip install 'e2former-calc[plot]'") from error
    prefix = Path(prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    written = []
    kinds = sorted(set(parity["config_type"]))
    colours = plt.cm.tab10(np.linspace(0, 1, max(len(kinds), 1)))
    types = np.array(parity["config_type"])
    e_ref, e_pred = np.array(parity["energy_ref"]), np.array(parity["energy_pred"])
    f_types = np.array(parity["force_type"])
    f_ref = np.concatenate(parity["force_ref"]) if parity["force_ref"] else np.zeros(0)
    f_pred = np.concatenate(parity["force_pred"]) if parity["force_pred"] else np.zeros(0)
    for name, unit, make in (
        ("energy", "energy per atom minus its mean per type (meV/atom)", lambda k: (
            1000 * (e_ref[types == k] - e_ref[types == k].mean()), 1000 * (e_pred[types == k] - e_ref[types == k].mean()))),
        ("forces", "force component (eV/Å)", lambda k: (f_ref[f_types == k], f_pred[f_types == k])),
    ):
        if name == "forces" and f_ref.size == 0:
            continue
        figure, axis = plt.subplots(figsize=(5.2, 5))
        low, high = np.inf, -np.inf
        for colour, kind in zip(colours, kinds):
            x, y = make(kind)
            if x.size == 0:
                continue
            axis.scatter(x, y, s=3, alpha=0.5, color=colour, label=kind, rasterized=True)
            low, high = min(low, x.min(), y.min()), max(high, x.max(), y.max())
        axis.plot([low, high], [low, high], "k-", lw=0.8)
        axis.set_xlabel(f"reference {unit}")
        axis.set_ylabel(f"E2Former {unit}")
        axis.set_title(f"{title} {name}".strip())
        if len(kinds) > 1:
            axis.legend(fontsize=7, markerscale=3, loc="upper left")
        figure.tight_layout()
        path = prefix.with_name(f"{prefix.name}_{name}.png")
        figure.savefig(path, dpi=120)
        plt.close(figure)
        written.append(path)
    return written


def write_metrics(tally: ErrorTally, path) -> Path:
    path = Path(path)
    path.write_text(json.dumps({k: tally.metrics(k) for k in tally.keys()}, indent=1) + "\n")
    return path
