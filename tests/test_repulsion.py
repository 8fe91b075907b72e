"""The optional ZBL repulsion (``E2FormerConfig(zbl=True)``): the formula, its switch-off, forces
and stress as derivatives, a lone atom at E0, the file round trip, and LAMMPS's stages."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms, units
from ase.build import bulk, molecule
from ase.data import covalent_radii
from ase.io import read
from ase.neighborlist import neighbor_list
from conftest import TEST_CONFIG

from e2former_calc import E2FormerCalculator
from e2former_calc.model.repulsion import DEFAULT_SWITCH_OFF, LEGACY_SWITCH_OFF, ZBLRepulsion
from e2former_calc.model_file import load_model, read_model_file
from e2former_calc.testing import assert_forces_are_minus_gradient, assert_stress_is_strain_derivative

ROOT = Path(__file__).resolve().parent.parent
POTENTIALS, DATASETS = ROOT / "potentials", ROOT / "datasets"
ZBL_CONFIG = dataclasses.replace(TEST_CONFIG, zbl=True)


def zbl_reference(r, z1, z2):
    """ZBL from its published constants, written out independently of the package, no switch."""
    k = units._e / (4 * np.pi * units._eps0) * 1e10  # eV Å
    a = 0.46850 / (z1**0.23 + z2**0.23)
    x = r / a
    phi = (0.18175 * np.exp(-3.19980 * x) + 0.50986 * np.exp(-0.94229 * x) + 0.28022 * np.exp(-0.40290 * x)
           + 0.02817 * np.exp(-0.20162 * x))
    return k * z1 * z2 / r * phi


def calculators(seed=4, switch_off=DEFAULT_SWITCH_OFF):
    kwargs = dict(species=("H", "C", "O", "Cu"), seed=seed, device="cpu", dtype="float64", skin=0.0,
                  e0=[-1.0, -2.0, -3.0, -4.0], quiet=True)
    config = dataclasses.replace(ZBL_CONFIG, zbl_switch_off=switch_off)
    return E2FormerCalculator.from_config(config, **kwargs), E2FormerCalculator.from_config(TEST_CONFIG, **kwargs)


def energies_of(atoms, *calculators):
    """The energy of ``atoms`` by each calculator."""
    energies = []
    for calc in calculators:
        copy = atoms.copy()
        copy.calc = calc
        energies.append(copy.get_potential_energy())
    return energies


def squeezed_ethanol():
    """Ethanol with its C-C bond at 0.76 Å, inside the default switch-off radius (1.14 Å)."""
    ethanol = molecule("CH3CH2OH")
    ethanol.positions[1] = ethanol.positions[0] + 0.5 * (ethanol.positions[1] - ethanol.positions[0])
    return ethanol


@pytest.mark.parametrize("switch_off", [DEFAULT_SWITCH_OFF, LEGACY_SWITCH_OFF])
def test_pair_energy_is_zbl_times_a_switch_that_ends_at_a_fraction_of_the_covalent_radii(switch_off):
    zbl = ZBLRepulsion([1, 6, 29], cutoff=5.0, switch_off=switch_off)
    for (a, b), (za, zb) in {(0, 1): (1, 6), (1, 1): (6, 6), (2, 2): (29, 29)}.items():
        rc = switch_off * (covalent_radii[za] + covalent_radii[zb])
        r = torch.linspace(0.05, 1.2 * rc, 200, dtype=torch.float64)
        v = zbl(r, torch.full_like(r, a, dtype=torch.long), torch.full_like(r, b, dtype=torch.long)).numpy()
        d = r.numpy() / rc
        u = np.where(d < 1, 1 - 28 * d**6 + 48 * d**7 - 21 * d**8, 0.0)  # p = 6 envelope
        # the envelope cancels near its end (1 - 28 + 48 - 21 = 0): compare to the largest value there
        np.testing.assert_allclose(v, zbl_reference(r.numpy(), za, zb) * u, rtol=1e-12, atol=1e-14 * v.max())
        assert np.all(v[d >= 1] == 0) and np.all(np.diff(v[d < 1]) < 0)  # repulsive, monotonic, then off


@pytest.mark.parametrize("switch_off", [DEFAULT_SWITCH_OFF, LEGACY_SWITCH_OFF])
def test_close_atoms_are_pushed_apart_and_lone_atoms_keep_e0(switch_off):
    with_zbl, without = calculators(switch_off=switch_off)
    tested = 0
    for pair in ("H2", "C2", "Cu2"):
        z = {"H2": 1, "C2": 6, "Cu2": 29}[pair]
        rc = switch_off * 2 * covalent_radii[z]
        distances = [fraction * rc for fraction in (0.66, 0.8, 0.95)]
        if distances[0] < 0.4:  # H2 with the default: the wall ends at 0.46 Å, the calculator refuses 0.4 Å
            continue
        tested += 1
        energies, forces = {}, {}
        for name, calc in (("zbl", with_zbl), ("plain", without)):
            out = []
            for r in distances:
                atoms = Atoms(pair, positions=[[0, 0, 0], [0, 0, r]])
                atoms.calc = calc
                out.append((atoms.get_potential_energy(), atoms.get_forces()[1, 2]))
            energies[name], forces[name] = zip(*out)
        # the repulsion is what the energy difference is (the network part is the same function)
        for r, e_zbl, e_plain in zip(distances, energies["zbl"], energies["plain"]):
            d = r / rc
            u = 1 - 28 * d**6 + 48 * d**7 - 21 * d**8 if d < 1 else 0.0
            assert e_zbl - e_plain == pytest.approx(zbl_reference(r, z, z) * u, rel=1e-9)
        # the repulsion's force on the upper atom points up (apart), and grows as they close in
        pushes = [a - b for a, b in zip(forces["zbl"], forces["plain"])]
        assert pushes[0] > pushes[1] > 0 and pushes[2] >= 0
    assert tested == (2 if switch_off < 1 else 3)
    lone = Atoms("Cu", positions=[[0, 0, 0]])
    lone.calc = with_zbl
    assert lone.get_potential_energy() == pytest.approx(-4.0, abs=1e-12)


def test_forces_and_stress_are_derivatives_with_zbl():
    calc, _ = calculators()
    assert_forces_are_minus_gradient(squeezed_ethanol(), calc, indices=[0, 1, 3])  # the squeezed pair and an H
    copper = bulk("Cu", "fcc", a=2.7, cubic=True)  # compressed: neighbours at 1.91 Å < 0.75 * 2 R_Cu = 1.98 Å
    copper.rattle(0.05, seed=1)
    assert_forces_are_minus_gradient(copper, calc)
    assert_stress_is_strain_derivative(copper, calc)


def test_zbl_survives_the_model_file(tmp_path):
    calc, _ = calculators(switch_off=0.6)
    loaded = E2FormerCalculator.from_file(calc.save(tmp_path / "zbl.pt"), device="cpu", dtype="float64", quiet=True)
    assert loaded.model.config.zbl and loaded.model.repulsion is not None
    assert loaded.model.config.zbl_switch_off == 0.6 and loaded.model.repulsion.switch_off == 0.6
    energies = energies_of(Atoms("CO", positions=[[0, 0, 0], [0, 0, 0.7]]), calc, loaded)
    assert energies[0] == pytest.approx(energies[1], abs=1e-12)


def test_only_edges_inside_the_switch_off_radius_are_computed(monkeypatch):
    """The pair term runs on the close edges only; with every edge instead (the reference) the
    energies, forces and stress are the same to 1e-12, and only a part of the edges is computed."""
    copper = bulk("Cu", "fcc", a=2.75, cubic=True).repeat((2, 2, 2))  # first shell at 1.94 Å < 1.98 Å
    copper.rattle(0.1, seed=3)
    ethanol = squeezed_ethanol()
    ethanol.center(vacuum=4.0)
    chosen = []
    original = ZBLRepulsion.close_edges

    def record(self, lengths, species_i, species_j):
        close = original(self, lengths, species_i, species_j)
        chosen.append((len(close), len(lengths)))
        return close

    for atoms in (copper, ethanol):
        results = {}
        for name, close in (("close", record), ("every edge", lambda self, lengths, si, sj: torch.arange(len(lengths)))):
            monkeypatch.setattr(ZBLRepulsion, "close_edges", close)
            calc, _ = calculators()
            a = atoms.copy()
            a.calc = calc
            results[name] = (a.get_potential_energy(), a.get_forces(), a.get_stress() if a.pbc.all() else None)
        (e1, f1, s1), (e2, f2, s2) = results["close"], results["every edge"]
        assert e1 == pytest.approx(e2, rel=1e-12, abs=1e-12)
        np.testing.assert_allclose(f1, f2, rtol=0, atol=1e-12)
        if s1 is not None:
            np.testing.assert_allclose(s1, s2, rtol=0, atol=1e-12)
    # copper: its first shell of the neighbours within the cutoff; ethanol: the squeezed C-C pair
    # (every bond at its length is longer than 3/4 of its covalent radii) of its edges
    assert all(0 < k < n for k, n in chosen) and chosen[-1][0] < 0.1 * chosen[-1][1]


def test_files_from_before_the_switch_off_setting_keep_the_covalent_radii(tmp_path):
    """A file whose hyper-parameters lack ``zbl_switch_off`` was trained with the switch at the
    full covalent radii: it loads with 1.0, not today's default, and gives the energies it gave."""
    for name in ("e2former-xtb-organic", "e2former-emt-cu"):  # both shipped now: trained with the default
        assert load_model(POTENTIALS / f"{name}.pt")[0].config.zbl_switch_off == DEFAULT_SWITCH_OFF
    legacy = POTENTIALS / "training" / "e2former-xtb-organic-finetune5.pt"  # shipped until 2026-12-05
    shipped, _ = load_model(legacy)  # written before the setting
    assert "zbl_switch_off" not in read_model_file(legacy)["config"]
    assert shipped.config.zbl and shipped.config.zbl_switch_off == LEGACY_SWITCH_OFF

    calc, _ = calculators(switch_off=LEGACY_SWITCH_OFF)
    path = calc.save(tmp_path / "new.pt")
    content = torch.load(path, weights_only=True)
    del content["config"]["zbl_switch_off"]  # as the file would have been written before
    torch.save(content, tmp_path / "old.pt")
    old = E2FormerCalculator.from_file(tmp_path / "old.pt", device="cpu", dtype="float64", quiet=True)
    assert old.model.config.zbl_switch_off == LEGACY_SWITCH_OFF
    energies = energies_of(squeezed_ethanol(), calc, old)
    assert energies[0] == pytest.approx(energies[1], abs=1e-12)


def test_the_default_switch_ends_short_of_every_bond_of_the_organic_test_frames():
    """On held-out xTB frames (300-1,000 K) the default switch-off leaves no bonded pair inside the
    wall: the network need not cancel the term; at the full covalent radii many pairs were."""
    frames = read(DATASETS / "xtb-organic" / "test.extxyz.gz", index="::60")
    species = {1: 0, 6: 1, 7: 2, 8: 3}
    close = {}
    for switch_off in (DEFAULT_SWITCH_OFF, LEGACY_SWITCH_OFF):
        zbl = ZBLRepulsion([1, 6, 7, 8], cutoff=5.0, switch_off=switch_off)
        count = 0
        for atoms in frames:
            i, j, d = neighbor_list("ijd", atoms, 2.0)
            kinds = torch.tensor([species[int(z)] for z in atoms.numbers])
            count += len(zbl.close_edges(torch.tensor(d), kinds[torch.tensor(i)], kinds[torch.tensor(j)]))
        close[switch_off] = count
    assert len(frames) >= 30
    assert close[DEFAULT_SWITCH_OFF] == 0 and close[LEGACY_SWITCH_OFF] > 10 * len(frames)
