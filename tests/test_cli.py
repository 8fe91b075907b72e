"""The e2former command and the workflows behind it."""

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.io import read, write

from e2former_calc import cli
from e2former_calc.cli import auto_potential, build_parser, main

PACKAGE = Path(cli.__file__).resolve().parent


def test_md_nve_writes_trajectory_and_reports_drift(tmp_path, capsys):
    traj, log = tmp_path / "md.traj", tmp_path / "md.log"
    code = main(["md", "--system", "ethanol", "--ensemble", "nve", "--steps", "20", "--interval", "5",
                 "--dtype", "float64", "--trajectory", str(traj), "--log", str(log)])
    out = capsys.readouterr()
    assert code == 0
    assert "NVE energy drift" in out.out and "using the shipped potential e2former-xtb-organic" in out.err
    assert "relax to about 150 K by equipartition" in out.err  # why NVE from 300 K ends near 150 K
    assert "E_tot=" in out.err  # the progress bar's energy is the total energy
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


def test_npt_or_a_clear_error_on_an_older_ase(tmp_path, capsys):
    code = main(["md", "--system", "copper", "--ensemble", "npt", "--steps", "4", "--interval", "2",
                 "--trajectory", str(tmp_path / "npt.traj"), "--log", str(tmp_path / "npt.log")])
    try:
        from ase.md.nose_hoover_chain import IsotropicMTKNPT  # noqa: F401  (ASE >= 3.25)
    except ImportError:
        assert code == 2 and "NPT needs ase >= 3.25" in capsys.readouterr().err
    else:
        assert code == 0


def test_relax_and_eval(tmp_path, capsys):
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


def test_md_defaults_to_langevin_nvt(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["md", "--steps", "4", "--interval", "2"]) == 0
    out = capsys.readouterr()
    assert "MD nvt" in out.err and "equipartition" not in out.err and "NVE energy drift" not in out.out


def test_md_and_relax_never_overwrite_silently(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    short = ["--steps", "2", "--interval", "1"]
    assert main(["md", *short]) == 0
    first = (tmp_path / "md.traj").read_bytes()
    assert main(["md", *short]) == 0  # numbered, the first run kept
    assert "trajectory md-1.traj, log md-1.log" in capsys.readouterr().out
    assert (tmp_path / "md.traj").read_bytes() == first and (tmp_path / "md-1.log").is_file()
    assert main(["md", *short, "--trajectory", "md.traj"]) == 2  # an explicit existing file: refused
    err = capsys.readouterr().err
    assert "md.traj and md.log already exist" in err and "--resume" in err and "--overwrite" in err
    assert (tmp_path / "md.traj").read_bytes() == first
    assert main(["md", *short, "--trajectory", "md.traj", "--overwrite"]) == 0
    assert main(["md", "--steps", "4", "--interval", "1", "--resume"]) == 0  # the newest run: md-1
    assert "appending to md-1.traj and md-1.log" in capsys.readouterr().err
    assert len(read(tmp_path / "md-1.traj", index=":")) == 5 and not (tmp_path / "md-2.traj").exists()

    relax = ["relax", "--steps", "2", "--fmax", "1.0"]
    assert main(relax) == 0 and main(relax) == 0
    assert (tmp_path / "relaxed.extxyz").is_file() and "wrote relaxed-1.extxyz" in capsys.readouterr().out
    assert main(relax + ["--output", "relaxed.extxyz"]) == 2
    assert "relaxed.extxyz already exists" in capsys.readouterr().err
    assert main(relax + ["--output", "relaxed.extxyz", "--overwrite"]) == 0


def test_auto_model_stays_inside_the_model_cards():
    assert auto_potential(molecule("CH3CH2OH")) == "e2former-xtb-organic"
    boxed = molecule("CH3CH2OH")
    boxed.center(vacuum=6.0)
    boxed.pbc = True  # a molecule in a periodic box with vacuum: still an isolated molecule
    assert auto_potential(boxed) == "e2former-xtb-organic"
    assert auto_potential(bulk("Cu", "fcc", a=3.61, cubic=True)) == "e2former-emt-cu"
    with pytest.raises(ValueError, match="condensed phases an extrapolation.*--model e2former-xtb-organic"):
        auto_potential(cli.built_in_system("water-box"))
    with pytest.raises(ValueError, match="condensed"):
        auto_potential([molecule("H2O"), cli.built_in_system("water-box")])


def test_md_auto_refuses_the_organic_potential_for_a_water_box(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["md", "--system", "water-box", "--steps", "2"]) == 2
    assert "--model e2former-xtb-organic to run it anyway" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def test_nve_and_nvt_need_no_nose_hoover_chain_module(monkeypatch):
    """ASE < 3.25 has no ase.md.nose_hoover_chain.IsotropicMTKNPT: only NPT needs it."""
    from e2former_calc.workflows import _dynamics

    monkeypatch.setitem(sys.modules, "ase.md.nose_hoover_chain", None)  # importing it raises ImportError
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True)
    for ensemble in ("nve", "nvt"):
        assert _dynamics(atoms, ensemble, 1.0, 300.0, 0.01, 1.0, 0) is not None
    with pytest.raises(ValueError, match=r"NPT needs ase >= 3\.25"):
        _dynamics(atoms, "npt", 1.0, 300.0, 0.01, 1.0, 0)


def test_help_shows_every_option_with_its_default():
    parser = build_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    for name, sub in commands.items():
        for action in sub._actions:
            assert action.help, f"e2former {name} {action.option_strings or action.dest} has no help"
    md_help = commands["md"].format_help()
    for shown in ("(default: nvt)", "(default: 1000)", "(default: 0.5)", "(default: 300.0)", "(default: md.traj"):
        assert shown in md_help


def test_help_imports_no_torch_or_ase():
    """cli.py and what it imports parse the arguments without torch, e3nn or ASE (the package's
    __init__ is bypassed here: it is covered by the test below)."""
    code = ("import sys, types\n"
            f"package = types.ModuleType('e2former_calc'); package.__path__ = [{str(PACKAGE)!r}]\n"
            "sys.modules['e2former_calc'] = package\n"
            "from e2former_calc.cli import main\n"
            "try:\n    main(['md', '--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'e3nn', 'ase') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "--ensemble" in result.stdout and "HEAVY []" in result.stdout


def test_console_help_imports_no_torch():
    code = ("import sys\nfrom e2former_calc.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print('HEAVY', sorted(m for m in ('torch', 'e3nn', 'ase') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "HEAVY []" in result.stdout


def test_progress_bars_are_tqdm():
    from tqdm import tqdm

    from e2former_calc.progress import progress_bar

    stream = io.StringIO()
    bar = progress_bar(10, label="epoch 1", unit="batches", stream=stream)
    assert isinstance(bar, tqdm)
    bar.set_postfix_str("loss=0.5", refresh=False)
    bar.update(4)
    bar.update(6)
    bar.close()
    assert "epoch 1" in stream.getvalue() and "10/10" in stream.getvalue() and "loss=0.5" in stream.getvalue()


def test_errors_are_clear(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
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
    return bulk("Fe", "bcc", a=2.87, cubic=True)


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "e2former_calc.cli", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "md" in result.stdout


def test_export_lammps_writes_a_loadable_file_and_never_overwrites(tmp_path, capsys):
    from e2former_calc.integrations.lammps import load_unified

    out = tmp_path / "cu.mliap.pkl"
    assert main(["export-lammps", "e2former-emt-cu", "-o", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "pair_style mliap unified" in printed and "comm_modify cutoff" in printed and "pair_coeff * * Cu" in printed
    assert load_unified(out).species == ["Cu"]
    assert main(["export-lammps", "e2former-emt-cu", "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err
    assert main(["export-lammps", "e2former-emt-cu", "-o", str(tmp_path / "cu.pt")]) == 2


@pytest.mark.parametrize("option, blocks", [("auto", False), ("off", False), ("blocks", True)])
def test_recompute_option_reaches_the_calculator(option, blocks):
    args = build_parser().parse_args(["md", "--model", "e2former-emt-cu", "--recompute", option])
    calc = cli._load_calculator(args.model, "cpu", args.dtype, args.skin, recompute=args.recompute)
    assert calc.predictor.forcefield.model.recompute_blocks is blocks
    for wrong in ("everything", "radial"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["md", "--recompute", wrong])
