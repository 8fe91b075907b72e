"""Error statistics of predicted energies, forces and stresses, overall and per configuration type.

Units: energies eV (reported as meV per structure and meV/atom), forces eV/Å (meV/Å, over all
Cartesian components), stresses eV/Å³ (meV/Å³, over the 6 independent components).
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

FIELDS = ("n", "e_abs", "e_sq", "ea_abs", "ea_sq", "f_n", "f_abs", "f_sq", "s_n", "s_abs", "s_sq")
VOIGT = ((0, 0), (1, 1), (2, 2), (1, 2), (0, 2), (0, 1))


class ErrorTally:
    """Sums of absolute and squared errors, by configuration type (and ``"all"``)."""

    def __init__(self):
        self.sums = defaultdict(lambda: dict.fromkeys(FIELDS, 0.0))

    def add(self, config_type: str, n_atoms: int, energy_error: float, force_errors=None, stress_error=None):
        """``force_errors [n, 3]``; ``stress_error [3, 3]`` (only the 6 Voigt components count)."""
        for key in (config_type, "all"):
            s = self.sums[key]
            s["n"] += 1
            s["e_abs"] += abs(energy_error)
            s["e_sq"] += energy_error**2
            s["ea_abs"] += abs(energy_error) / n_atoms
            s["ea_sq"] += (energy_error / n_atoms) ** 2
            if force_errors is not None:
                f = np.asarray(force_errors).ravel()
                s["f_n"] += f.size
                s["f_abs"] += float(np.abs(f).sum())
                s["f_sq"] += float((f**2).sum())
            if stress_error is not None:
                v = np.array([stress_error[i][j] for i, j in VOIGT])
                s["s_n"] += 6
                s["s_abs"] += float(np.abs(v).sum())
                s["s_sq"] += float((v**2).sum())

    def vector(self, keys) -> np.ndarray:
        """The sums of ``keys`` as one array (for an all-reduce across processes)."""
        return np.array([self.sums[k][f] for k in keys for f in FIELDS])

    def load_vector(self, keys, values) -> None:
        values = np.asarray(values).reshape(len(keys), len(FIELDS))
        for k, row in zip(keys, values):
            self.sums[k] = dict(zip(FIELDS, (float(v) for v in row)))

    def metrics(self, key: str = "all") -> dict:
        """MAE/RMSE in meV units: energy per structure and per atom, forces, stress."""
        s = self.sums[key]
        n = max(s["n"], 1)
        out = {
            "frames": int(s["n"]),
            "energy_mae": 1000 * s["e_abs"] / n,
            "energy_rmse": 1000 * np.sqrt(s["e_sq"] / n),
            "energy_per_atom_mae": 1000 * s["ea_abs"] / n,
            "energy_per_atom_rmse": 1000 * np.sqrt(s["ea_sq"] / n),
        }
        if s["f_n"]:
            out["forces_mae"] = 1000 * s["f_abs"] / s["f_n"]
            out["forces_rmse"] = 1000 * np.sqrt(s["f_sq"] / s["f_n"])
        if s["s_n"]:
            out["stress_mae"] = 1000 * s["s_abs"] / s["s_n"]
            out["stress_rmse"] = 1000 * np.sqrt(s["s_sq"] / s["s_n"])
        return {k: (int(v) if k == "frames" else float(v)) for k, v in out.items()}

    def keys(self) -> list[str]:
        """Configuration types in sorted order, then ``"all"``."""
        return sorted(k for k in self.sums if k != "all") + ["all"]

    def table(self) -> str:
        """A Markdown table of every configuration type."""
        has_stress = any(self.sums[k]["s_n"] for k in self.sums)
        head = ["config_type", "frames", "E MAE (meV)", "E MAE (meV/atom)", "E RMSE (meV/atom)", "F MAE (meV/Å)",
                "F RMSE (meV/Å)"] + (["σ MAE (meV/Å³)"] if has_stress else [])
        rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for key in self.keys():
            m = self.metrics(key)
            cells = [key, str(m["frames"]), f"{m['energy_mae']:.2f}", f"{m['energy_per_atom_mae']:.3f}",
                     f"{m['energy_per_atom_rmse']:.3f}", f"{m.get('forces_mae', float('nan')):.2f}",
                     f"{m.get('forces_rmse', float('nan')):.2f}"]
            if has_stress:
                cells.append(f"{m.get('stress_mae', float('nan')):.3f}")
            rows.append("| " + " | ".join(cells) + " |")
        return "\n".join(rows)
