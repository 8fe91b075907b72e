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


def test_a_section_not_asked_for_keeps_what_the_file_had(tmp_path, monkeypatch):
    """`--copper` alone rewrites the copper section and keeps the molecules' (and vice versa):
    the two sections come from separate runs."""
    import json

    import properties

    monkeypatch.setattr(properties, "copper_properties", lambda calc: {"a0_A": 3.6, "calls": type(calc).__name__})
    monkeypatch.setattr(properties, "_load", lambda path: EMT())
    monkeypatch.setattr(properties, "copper_table", lambda results: "copper: " + ", ".join(results))
    monkeypatch.setattr(properties, "molecule_table", lambda results: "molecules: " + ", ".join(results))
    out = tmp_path / "properties"
    out.with_suffix(".json").write_text(json.dumps({"copper": {"EMT": {}, "old": {}},
                                                    "molecules": {"kept": {"benzene_c0": 0.001}}}))
    properties.main(["--copper", "new=whatever.pt", "--out", str(out)])
    written = json.loads(out.with_suffix(".json").read_text())
    assert sorted(written["copper"]) == ["EMT", "new"]  # the old copper columns are replaced
    assert written["molecules"] == {"kept": {"benzene_c0": 0.001}}
    markdown = out.with_suffix(".md").read_text()
    assert "copper: EMT, new" in markdown and "molecules: kept" in markdown
