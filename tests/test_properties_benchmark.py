"""benchmarks/properties.py measures what it says: checked on EMT, whose numbers must agree
with each other (cubic B = (C11 + 2 C12) / 3) and with EMT's known fcc copper."""

import sys
from pathlib import Path

import pytest
from ase.calculators.emt import EMT

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from properties import copper_properties  # noqa: E402


def test_copper_properties_of_emt_agree_with_each_other():
    p = copper_properties(EMT())
    assert p["a0_A"] == pytest.approx(3.59, abs=0.01)  # EMT's copper lattice constant
    # the equation-of-state bulk modulus against the one from the elastic constants (finite strains)
    assert p["B_GPa"] == pytest.approx((p["C11_GPa"] + 2 * p["C12_GPa"]) / 3, rel=0.01)
    assert p["C11_GPa"] > p["C12_GPa"] > 0 and p["C44_GPa"] > 0  # mechanically stable fcc
    assert 0.5 < p["vacancy_formation_eV"] < 2.0
    assert 0.5 < p["surface_111_J_m2"] < p["surface_100_J_m2"] < 2.0  # (111) is the close-packed, cheapest face
