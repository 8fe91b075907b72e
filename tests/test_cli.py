"""The e2former command and the workflows behind it."""

import subprocess
import sys

import numpy as np
import pytest
from ase.build import molecule
from ase.io import read, write

from e2former_calc.cli import main


def test_md_nve_writes_trajectory_and_reports_drift(tmp_path, capsys):
    traj, log = tmp_path / "md.traj", tmp_path / "md.log"
    code = main(["md", "--system", "ethanol", "--steps", "20", "--interval", "5", "--dtype", "float64",
                 "--trajectory", str(traj), "--log", str(log)])
    out = capsys.readouterr()
    assert code == 0
    assert "NVE energy drift" in out.out and "using the shipped potential e2former-xtb-organic" in out.err
    assert len(read(traj, index=":")) == 5  # step 0 and every 5 steps
    assert len(log.read_text().splitlines()) >= 5


def test_md_resumes_from_its_trajectory(tmp_path):
    traj = tmp_path / "md.traj"
    args = ["md", "--system", "ethanol", "--ensemble", "nvt", "--interval", "5", "--trajectory", str(traj), "--log", str(tmp_path / "md.log")]
    assert main(args + ["--steps", "10"]) == 0
    first = read(traj, index=":")
    assert main(args + ["--steps", "20", "--resume"]) == 0
    frames = read(traj, index=":")
    assert len(frames) == 5
    assert np.array_equal(frames[2].positions, first[2].positions)


def test_npt_and_relax_and_eval(tmp_path, capsys):
    assert main(["md", "--system", "copper", "--ensemble", "npt", "--steps", "4", "--interval", "2",
                 "--trajectory", str(tmp_path / "npt.traj"), "--log", str(tmp_path / "npt.log")]) == 0
    output = tmp_path / "relaxed.extxyz"
    code = main(["relax", "--system", "ethanol", "--optimizer", "bfgs", "--fmax", "0.05", "--output", str(output)])
    assert code == 0 and output.is_file()
    data = tmp_path / "data.extxyz"
    frames = [molecule("H2O") for _ in range(3)]
    for n, f in enumerate(frames):
        f.rattle(0.02, seed=n)
    write(data, frames)
    predictions = tmp_path / "pred.extxyz"
    capsys.readouterr()
    assert main(["eval", "untrained", str(data), "--output", str(predictions), "--batch-size", "2"]) == 0
    assert "UNTRAINED" in capsys.readouterr().err
    back = read(predictions, index=":")
    assert len(back) == 3 and back[0].arrays["e2former_forces"].shape == (3, 3)


def test_errors_are_clear(tmp_path, capsys):
    assert main(["md", "--structure", str(tmp_path / "missing.xyz")]) == 2
    assert "structure file not found" in capsys.readouterr().err
    assert main(["eval", str(tmp_path / "nope.pt"), str(tmp_path / "missing.xyz")]) == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["md", "--ensemble", "npx"])
    assert exit_info.value.code == 2
    assert main(["md", "--system", "ethanol", "--ensemble", "npt", "--steps", "2"]) == 2
    assert "fully periodic" in capsys.readouterr().err
    iron = tmp_path / "fe.xyz"
    write(iron, bulk_iron())
    assert main(["md", "--structure", str(iron), "--steps", "2"]) == 2
    assert "no shipped potential covers the elements Fe" in capsys.readouterr().err


def bulk_iron():
    from ase.build import bulk

    return bulk("Fe", "bcc", a=2.87, cubic=True)


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "e2former_calc.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "md" in result.stdout
