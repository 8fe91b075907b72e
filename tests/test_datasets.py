"""The data recipes in datasets/: deterministic, labelled, split as documented (tiny settings)."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from ase.io import read

DATASETS = Path(__file__).resolve().parent.parent / "datasets"


def run(script, *args):
    result = subprocess.run([sys.executable, str(DATASETS / script), *map(str, args)], capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_copper_recipe_is_deterministic_and_labelled(tmp_path):
    run("emt_copper.py", "--out", tmp_path / "a", "--scale", "0.02", "--kinds", "classic")
    run("emt_copper.py", "--out", tmp_path / "b", "--scale", "0.02", "--kinds", "classic")
    frames = read(tmp_path / "a" / "all.extxyz.gz", index=":")
    again = read(tmp_path / "b" / "all.extxyz.gz", index=":")
    assert len(frames) == len(again) == 30  # 5 + 5 + 4 + 3 + 3 structures, 10 MD frames
    for f, g in zip(frames, again):
        np.testing.assert_array_equal(f.positions, g.positions)
        assert f.info["REF_energy"] == g.info["REF_energy"]
    kinds = {f.info["config_type"] for f in frames}
    assert {"bulk_rattled", "bulk_strained", "vacancy", "surface_111", "surface_100", "md_300K", "md_1500K"} <= kinds
    assert all(f.pbc.all() and f.info["REF_stress"].shape == (6,) and f.arrays["REF_forces"].shape == (len(f), 3)
               for f in frames)
    assert min(len(f) for f in frames) >= 8 and max(len(f) for f in frames) <= 108
    parts = {p: read(tmp_path / "a" / f"{p}.extxyz.gz", index=":") for p in ("train", "valid", "test")}
    frame_ids = [sorted(f.info["frame"] for f in parts[p]) for p in parts]
    assert sorted(sum(frame_ids, [])) == list(range(30))
    # EMT labels are reproducible from the stored geometry (written with 8 decimals: ~1e-7 eV)
    from ase.calculators.emt import EMT

    atoms = frames[3].copy()
    atoms.calc = EMT()
    assert abs(atoms.get_potential_energy() - frames[3].info["REF_energy"]) < 1e-5


def test_extended_copper_recipe_keeps_the_classic_frames_and_holds_out_whole_trajectories(tmp_path):
    run("emt_copper.py", "--out", tmp_path / "classic", "--scale", "0.02", "--kinds", "classic")
    run("emt_copper.py", "--out", tmp_path / "extended", "--scale", "0.02")
    classic = read(tmp_path / "classic" / "all.extxyz.gz", index=":")
    frames = read(tmp_path / "extended" / "all.extxyz.gz", index=":")
    for f, g in zip(classic, frames):  # the extra kinds come from their own generator, after the classic ones
        np.testing.assert_array_equal(f.positions, g.positions)
    kinds = {f.info["config_type"] for f in frames[len(classic):]}
    assert {"surface_110", "adatom", "vacancy_cluster", "planar_defect", "liquid", "isolated_atom"} <= kinds
    lone = [f for f in frames if f.info["config_type"] == "isolated_atom"]
    assert len(lone) == 1 and len(lone[0]) == 1
    from ase.neighborlist import neighbor_list

    assert min(neighbor_list("d", f, 2.5).min(initial=9.0) for f in frames if len(f) > 1) > 1.5  # no adatom on an adatom
    parts = {p: read(tmp_path / "extended" / f"{p}.extxyz.gz", index=":") for p in ("train", "valid", "test")}
    assert sorted(f.info["frame"] for p in parts.values() for f in p) == list(range(len(frames)))
    trajectories = {p: {f.info["trajectory"] for f in part if "trajectory" in f.info} for p, part in parts.items()}
    assert not trajectories["test"] & (trajectories["train"] | trajectories["valid"])
    tested = {f.info["config_type"] for f in parts["test"] if "trajectory" in f.info}
    assert {"md_300K", "md_1500K", "liquid"} <= tested  # one whole trajectory of each MD kind


def test_organic_recipe_holds_out_whole_trajectories(tmp_path):
    pytest.importorskip("tblite")
    pytest.importorskip("rdkit")
    settings = ["--molecules", "ethanol", "malonaldehyde", "--conformers", "2", "--temperatures", "300", "700",
                "--frames", "3", "--equilibrate", "2", "--interval", "2", "--rattles", "1", "--valid", "1"]
    out = run("xtb_organic.py", "--out", tmp_path, *settings, "--extra-conformers", "0", "--workers", "2")
    # per molecule 2 conformers x 2 temperatures x 3 frames; one trajectory per temperature is test;
    # train: the rest minus 1 valid, plus 2 minima and 2 rattles; plus 4 isolated atoms
    assert "train: 22, valid: 2, test: 12" in out
    parts = {p: read(tmp_path / f"{p}.extxyz.gz", index=":") for p in ("train", "valid", "test")}
    test = {f.info["trajectory"] for f in parts["test"]}
    assert len(test) == 4 and not test & {f.info["trajectory"] for f in parts["train"] + parts["valid"]}
    assert {f.info["temperature_K"] for f in parts["test"]} == {300.0, 700.0}
    lone = {f.get_chemical_symbols()[0]: f.info["REF_energy"] for f in parts["train"] if len(f) == 1}
    assert sorted(lone) == ["C", "H", "N", "O"] and all(e < 0 for e in lone.values())
    minima = read(tmp_path / "minima.extxyz.gz", index=":")
    assert len(minima) == 4 and max(np.abs(m.arrays["REF_forces"]).max() for m in minima) < 0.02
    # malonaldehyde's two enols (Z with its internal hydrogen bond, and E) both start trajectories
    starts = read(tmp_path / "raw" / "malonaldehyde" / "conformers.extxyz", index=":")
    oxygen = [np.flatnonzero(np.array(s.get_chemical_symbols()) == "O") for s in starts]
    distances = sorted(float(s.get_distance(*o)) for s, o in zip(starts, oxygen))
    assert distances[0] < 3.0 < distances[1]
    # a stopped run resumes: nothing is recomputed, the same files come out
    again = run("xtb_organic.py", "--out", tmp_path, *settings, "--extra-conformers", "0")
    assert "12 of 12 trajectories already done; running 0" in again
    assert [f.info["REF_energy"] for f in read(tmp_path / "test.extxyz.gz", index=":")] == \
        [f.info["REF_energy"] for f in parts["test"]]
    # extra conformers add training trajectories only: valid and test stay frame for frame the same
    more = run("xtb_organic.py", "--out", tmp_path, *settings, "--extra-conformers", "2", "--extra-temperatures", "700",
               "--workers", "2")
    assert "12 of 16 trajectories already done; running 4" in more
    assert "train: 34, valid: 2, test: 12" in more  # + 2 molecules x 2 conformers x 1 temperature x 3 frames
    extended = {p: read(tmp_path / f"{p}.extxyz.gz", index=":") for p in ("train", "valid", "test")}
    for part in ("valid", "test"):
        assert [f.info["trajectory"] for f in extended[part]] == [f.info["trajectory"] for f in parts[part]]
        assert all(np.array_equal(a.positions, b.positions) for a, b in zip(extended[part], parts[part]))
    added = {f.info["trajectory"] for f in extended["train"]} - {f.info["trajectory"] for f in parts["train"]}
    assert added == {f"{m}_700K_c{c}" for m in ("ethanol", "malonaldehyde") for c in (2, 3)}
    assert not added & {f.info["trajectory"] for f in parts["test"] + parts["valid"]}
    extra = read(tmp_path / "raw" / "malonaldehyde" / "extra_conformers.extxyz", index=":")
    oxygen = [np.flatnonzero(np.array(s.get_chemical_symbols()) == "O") for s in extra]
    assert sorted(float(s.get_distance(*o)) < 3.0 for s, o in zip(extra, oxygen)) == [False, True]  # both enols
    assert not any(np.allclose(e.positions, s.positions) for e in extra for s in starts)  # another ensemble
    splits = json.loads((tmp_path / "splits.json").read_text())
    assert splits["splits"]["ethanol"]["extra_trajectories"] == ["ethanol_700K_c2", "ethanol_700K_c3"]
    # a supplement: the extra conformers at other temperatures, in a file of their own
    before = {p: (tmp_path / f"{p}.extxyz.gz").read_bytes() for p in ("train", "valid", "test")}
    out = run("xtb_organic.py", "--out", tmp_path, *settings, "--extra-conformers", "2", "--extra-temperatures", "300",
              "--supplement", "more.extxyz.gz")
    assert "0 of 4 trajectories already done; running 4" in out
    supplement = read(tmp_path / "more.extxyz.gz", index=":")
    expected = [f"{m}_300K_c{c}" for m in ("ethanol", "malonaldehyde") for c in (2, 3)]
    assert [f.info["trajectory"] for f in supplement[::3]] == expected and len(supplement) == 12
    assert {f.info["temperature_K"] for f in supplement} == {300.0}
    assert before == {p: (tmp_path / f"{p}.extxyz.gz").read_bytes() for p in ("train", "valid", "test")}
    recorded = json.loads((tmp_path / "splits.json").read_text())["supplements"]["more.extxyz.gz"]
    assert recorded["trajectories"] == expected and recorded["frames"] == 12
    # the extra trajectories at 700 K are in train.extxyz.gz already: refused, naming them
    again = subprocess.run([sys.executable, str(DATASETS / "xtb_organic.py"), "--out", str(tmp_path), *settings,
                            "--extra-conformers", "2", "--extra-temperatures", "700", "--supplement", "x.extxyz.gz"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode != 0 and "at 700 K are in" in again.stderr
    # start-up runs: from the same starts with their own seeds, frames from the first steps on
    two_frames = [("2" if k == settings.index("--frames") + 1 else value) for k, value in enumerate(settings)]
    run("xtb_organic.py", "--out", tmp_path, *two_frames, "--extra-conformers", "2", "--extra-temperatures", "700",
        "--supplement", "startup.extxyz.gz", "--startup")
    startup = read(tmp_path / "startup.extxyz.gz", index=":")
    assert [f.info["trajectory"] for f in startup[::2]] == [f"{m}_700K_c{c}_startup" for m in ("ethanol", "malonaldehyde")
                                                            for c in (2, 3)]
    regular = {f.info["trajectory"]: f for f in extended["train"] if f.info["frame"] == 0}
    assert not np.allclose(startup[0].positions, regular["ethanol_700K_c2"].positions)
    recorded = json.loads((tmp_path / "splits.json").read_text())["supplements"]
    assert recorded["startup.extxyz.gz"]["startup"] and "more.extxyz.gz" in recorded


def test_a_startup_run_has_its_own_seed_and_no_equilibration():
    """Same start, same steps: a start-up run differs from the regular trajectory by its seed
    alone, and it keeps its frames from the start whatever --equilibrate says."""
    pytest.importorskip("tblite")
    sys.path.insert(0, str(DATASETS))
    import xtb_organic
    from ase.build import molecule

    start = molecule("CH3CH2OH")
    args = SimpleNamespace(seed=23, equilibrate=0, interval=2, frames=1)
    regular = xtb_organic.run_trajectory("ethanol", start, 700.0, 3, args)[0]
    startup = xtb_organic.run_trajectory("ethanol", start, 700.0, 3, args, startup=True)[0]
    assert regular.info["trajectory"] == "ethanol_700K_c3" and startup.info["trajectory"] == "ethanol_700K_c3_startup"
    assert not np.allclose(regular.positions, startup.positions)  # other velocities and noise
    equilibrated = SimpleNamespace(seed=23, equilibrate=50, interval=2, frames=1)
    again = xtb_organic.run_trajectory("ethanol", start, 700.0, 3, equilibrated, startup=True)[0]
    # --equilibrate does not apply (to rounding: tblite may run threaded here, torch loaded first)
    np.testing.assert_allclose(again.positions, startup.positions, rtol=0, atol=1e-8)


def test_xtb_recipe_labels_with_gfn2(tmp_path):
    pytest.importorskip("tblite")  # in the test extra: installed in CI, so this runs there
    out = run("xtb_rmd17.py", "--out", tmp_path, "--frames", "12", "--equilibrate", "4", "--interval", "2",
              "--train", "6", "--valid", "2", "--molecules", "ethanol", "uracil")
    assert "train: 12, valid: 4, test: 8" in out
    train = read(tmp_path / "train.extxyz.gz", index=":")
    assert {f.info["config_type"] for f in train} == {"ethanol", "uracil"}
    from tblite.ase import TBLite

    atoms = train[0].copy()
    atoms.calc = TBLite(method="GFN2-xTB", verbosity=0)
    assert abs(atoms.get_potential_energy() - train[0].info["REF_energy"]) < 1e-5
    # the MD restarted each SCF from the previous density, this one starts fresh: the SCF
    # tolerance shows as a few 1e-5 eV/Å, far below any model error
    np.testing.assert_allclose(atoms.get_forces(), train[0].arrays["REF_forces"], atol=2e-4)
