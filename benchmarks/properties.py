"""What a user computes with a potential, against its labeller: copper's lattice constant, bulk
modulus, elastic constants, vacancy and surface energies (vs EMT); relaxed molecular geometries
(vs the GFN2-xTB minima of ``datasets/xtb-organic``).

Copper, each calculator the same way (float64):

- **a0, B**: energies of the 32-atom cubic cell at 11 volumes within +-6 % of 3.59**3 Å^3 per
  4 atoms, Birch-Murnaghan fit (``ase.eos``).
- **C11, C12, C44**: at each calculator's own a0, stress (ASE sign, ``dE/dε / V``) under
  +-0.5 % strain, central differences: C11 = dσ_xx/dε_xx, C12 = dσ_yy/dε_xx, C44 = dσ_yz/dγ_yz
  (γ the engineering shear). fcc copper has one atom per primitive cell, so no internal
  relaxation enters.
- **Vacancy formation energy**: 4x4x4 cubic cell (256 sites) at a0, one atom removed, positions
  relaxed (BFGS, fmax 0.005 eV/Å): E_v = E(N-1) - (N-1)/N E(N).
- **Surface energies** (111) and (100): 3x3 slabs of 12 layers with 15 Å of vacuum at a0, relaxed
  (fmax 0.005 eV/Å): γ = (E_slab - N E_bulk/atom) / 2A, in J/m^2.

Molecules: each xTB minimum of ``datasets/xtb-organic/minima.extxyz.gz`` relaxed with the potential
(BFGS, fmax 0.005 eV/Å, at most 2,000 steps); RMSD over all atoms after the best rigid alignment.

Usage::

    python benchmarks/properties.py --copper potentials/e2former-emt-cu.pt old=/tmp/old/e2former-emt-cu.pt \
        --organic potentials/e2former-xtb-organic.pt old=/tmp/old/e2former-xtb-organic.pt

Writes ``benchmarks/results/properties.json`` and ``properties.md`` (quoted by docs/accuracy.md); a
section not asked for (``--copper`` or ``--organic``) keeps what the file had.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from ase import units
from ase.build import bulk, fcc100, fcc111, minimize_rotation_and_translation
from ase.calculators.emt import EMT
from ase.eos import EquationOfState
from ase.optimize import BFGS

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from e2former_calc import E2FormerCalculator  # noqa: E402
from e2former_calc.training.data import read_frames  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
J_PER_M2 = units.J / units.m**2  # eV/Å^2 per J/m^2
FMAX = 0.005


def _energy(atoms, calculator):
    atoms = atoms.copy()
    atoms.calc = calculator
    return atoms.get_potential_energy()


def _relaxed_energy(atoms, calculator, steps=2000):
    atoms = atoms.copy()
    atoms.calc = calculator
    BFGS(atoms, logfile=None).run(fmax=FMAX, steps=steps)
    return atoms.get_potential_energy(), atoms


def copper_properties(calculator) -> dict:
    """a0 (Å), B, C11, C12, C44 (GPa), vacancy formation energy (eV), surface energies (J/m^2)."""
    reference = bulk("Cu", "fcc", a=3.59, cubic=True) * (2, 2, 2)
    volumes, energies = [], []
    for scale in np.linspace(0.94, 1.06, 11):
        atoms = reference.copy()
        atoms.set_cell(reference.cell.array * scale ** (1 / 3), scale_atoms=True)
        volumes.append(atoms.get_volume())
        energies.append(_energy(atoms, calculator))
    eos = EquationOfState(volumes, energies, eos="birchmurnaghan")
    v0, e0, b = eos.fit()
    a0 = (v0 / 8) ** (1 / 3)  # eight cubic cells of side a0
    cell = bulk("Cu", "fcc", a=a0, cubic=True) * (2, 2, 2)

    def stress(strain):
        atoms = cell.copy()
        atoms.set_cell(cell.cell.array @ (np.eye(3) + strain), scale_atoms=True)
        atoms.calc = calculator
        return atoms.get_stress(voigt=True)  # xx yy zz yz xz xy

    h = 0.005
    normal = np.zeros((3, 3))
    normal[0, 0] = h
    shear = np.zeros((3, 3))
    shear[1, 2] = shear[2, 1] = h / 2  # engineering shear γ_yz = h
    d_normal = (stress(normal) - stress(-normal)) / (2 * h)
    d_shear = (stress(shear) - stress(-shear)) / (2 * h)
    gpa = 1 / units.GPa
    per_atom = e0 / 32

    big = bulk("Cu", "fcc", a=a0, cubic=True) * (4, 4, 4)
    n = len(big)
    vacancy = big.copy()
    del vacancy[0]
    e_vacancy, _ = _relaxed_energy(vacancy, calculator)
    surfaces = {}
    for name, build in (("111", fcc111), ("100", fcc100)):
        slab = build("Cu", size=(3, 3, 12), a=a0, vacuum=7.5, periodic=True)
        e_slab, relaxed = _relaxed_energy(slab, calculator)
        area = np.linalg.norm(np.cross(relaxed.cell[0], relaxed.cell[1]))
        surfaces[f"surface_{name}_J_m2"] = float((e_slab - len(slab) * per_atom) / (2 * area) / J_PER_M2)
    return {"a0_A": float(a0), "B_GPa": float(b * gpa), "C11_GPa": float(d_normal[0] * gpa),
            "C12_GPa": float(d_normal[1] * gpa), "C44_GPa": float(d_shear[3] * gpa),
            "vacancy_formation_eV": float(e_vacancy - (n - 1) / n * _energy(big, calculator)), **surfaces}


def molecule_rmsds(calculator, minima) -> dict:
    """Per xTB minimum (molecule, conformer): RMSD (Å) of the potential's relaxed geometry."""
    out = {}
    for minimum in minima:
        _, relaxed = _relaxed_energy(minimum, calculator)
        minimize_rotation_and_translation(minimum, relaxed)
        key = f"{minimum.info['config_type']}_c{minimum.info['conformer']}"
        out[key] = float(np.sqrt(((relaxed.positions - minimum.positions) ** 2).sum(axis=1).mean()))
    return out


def _named(specs):
    out = {}
    for spec in specs or []:
        name, _, path = spec.rpartition("=")
        out[name or "E2Former"] = path
    return out


def _load(path):
    return E2FormerCalculator.from_file(path, device="cpu", dtype="float64", quiet=True)


COPPER_ROWS = [("a0_A", "lattice constant a0 (Å)", 4), ("B_GPa", "bulk modulus B (GPa)", 1),
               ("C11_GPa", "C11 (GPa)", 1), ("C12_GPa", "C12 (GPa)", 1), ("C44_GPa", "C44 (GPa)", 1),
               ("vacancy_formation_eV", "vacancy formation energy (eV)", 3),
               ("surface_111_J_m2", "(111) surface energy (J/m²)", 3), ("surface_100_J_m2", "(100) surface energy (J/m²)", 3)]


def copper_table(results) -> str:
    names = [n for n in results if n != "EMT"]
    head = ["property", "EMT", *(f"{n}" for n in names), *(f"{n} vs EMT" for n in names)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key, label, digits in COPPER_ROWS:
        ref = results["EMT"][key]
        values = [f"{results[n][key]:.{digits}f}" for n in names]
        if key == "vacancy_formation_eV":
            deltas = [f"{results[n][key] - ref:+.3f} eV" for n in names]
        else:
            deltas = [f"{100 * (results[n][key] / ref - 1):+.1f} %" for n in names]
        rows.append("| " + " | ".join([label, f"{ref:.{digits}f}", *values, *deltas]) + " |")
    return "\n".join(rows)


def molecule_table(results) -> str:
    names = list(results)
    keys = list(results[names[0]])
    head = ["xTB minimum", *(f"{n} RMSD (Å)" for n in names)]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for key in keys:
        rows.append("| " + " | ".join([key, *(f"{results[n][key]:.3f}" for n in names)]) + " |")
    rows.append("| **largest** | " + " | ".join(f"**{max(results[n].values()):.3f}**" for n in names) + " |")
    return "\n".join(rows)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--copper", nargs="*", default=[], metavar="[NAME=]POTENTIAL")
    parser.add_argument("--organic", nargs="*", default=[], metavar="[NAME=]POTENTIAL")
    parser.add_argument("--minima", type=Path, default=ROOT / "datasets" / "xtb-organic" / "minima.extxyz.gz")
    parser.add_argument("--out", type=Path, default=RESULTS / "properties")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    # a section not asked for keeps what the output file had (copper and molecules run separately)
    previous = args.out.with_suffix(".json")
    out = json.loads(previous.read_text()) if previous.exists() else {}
    out = {"copper": out.get("copper", {}), "molecules": out.get("molecules", {})}
    if args.copper:
        out["copper"] = {"EMT": copper_properties(EMT())}
        for name, path in _named(args.copper).items():
            out["copper"][name] = copper_properties(_load(path))
            print(f"copper {name}: {out['copper'][name]}", flush=True)
    if args.organic:
        minima = read_frames(args.minima)
        out["molecules"] = {}
        for name, path in _named(args.organic).items():
            out["molecules"][name] = molecule_rmsds(_load(path), minima)
            print(f"molecules {name}: largest RMSD {max(out['molecules'][name].values()):.3f} Å", flush=True)
    out["seconds"] = time.perf_counter() - start
    lines = ["# Properties against the labeller\n", "Written by `benchmarks/properties.py` (float64, this CPU).\n"]
    if out["copper"]:
        lines += ["## Copper (vs EMT)\n", copper_table(out["copper"]), ""]
    if out["molecules"]:
        lines += ["## Molecules: relaxed geometry vs the GFN2-xTB minimum\n", molecule_table(out["molecules"]), ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
