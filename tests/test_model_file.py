"""Potential files: round trip, and clear errors for anything that is not one."""

import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk
from conftest import make_calculator

from e2former_calc import E2FormerCalculator
from e2former_calc.model_file import ModelFileError, load_model, read_model_file


def test_save_and_load_give_bit_identical_weights_and_outputs(tmp_path):
    """The weights and the network's outputs round-trip bit for bit; the calculator's energies
    agree to rounding (a loaded model's tensors sit elsewhere in memory, which can move the last
    bit of a BLAS reduction in the backward pass)."""
    from e2former_calc.conv import ConvGraph
    from e2former_calc.neighbours import neighbour_list

    calc = make_calculator(seed=3)
    path = calc.save(tmp_path / "pot.pt", provenance={"data": "none, untrained"})
    loaded = E2FormerCalculator.from_file(path, device="cpu", quiet=True)
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.rattle(0.05, seed=2)
    results = []
    for c in (calc, loaded):
        a = atoms.copy()
        a.calc = c
        results.append((a.get_potential_energy(), a.get_forces(), a.get_stress()))
    for name, value in calc.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[name]), name
    nb = neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, calc.cutoff)
    shifts = torch.tensor(nb.shifts, dtype=torch.float64) @ torch.tensor(atoms.cell.array)
    species = torch.full((len(atoms),), 3)
    outputs = []
    for model in (calc.model, loaded.model):
        graph = ConvGraph.build(torch.tensor(atoms.positions), torch.tensor(nb.receivers), torch.tensor(nb.senders), shifts)
        with torch.no_grad():
            outputs.append(model(species, graph))
    assert torch.equal(outputs[0], outputs[1])
    assert results[0][0] == pytest.approx(results[1][0], abs=1e-12)
    assert np.abs(results[0][1] - results[1][1]).max() < 1e-12 and np.abs(results[0][2] - results[1][2]).max() < 1e-12
    content = read_model_file(path)
    assert content["format_version"] == 3 and content["atomic_numbers"] == [1, 6, 8, 29]
    assert content["cutoff"] == calc.cutoff and content["e0"] == [-1.0, -2.0, -3.0, -4.0]
    assert content["provenance"]["data"] == "none, untrained" and "torch" in content["provenance"]["software"]
    assert loaded.cutoff == calc.cutoff


def test_float64_weights_load_bit_exactly(tmp_path):
    """Weights that float32 cannot hold come back unchanged (the model is made in the stored
    precision before the weights are copied in)."""
    from e2former_calc.model import E2Former
    from e2former_calc.model_file import save_model

    from conftest import TEST_CONFIG

    torch.manual_seed(0)
    model = E2Former(TEST_CONFIG, [1, 6, 8]).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1e-12 * torch.randn_like(p))
    assert all(not torch.equal(p, p.float().double()) for p in model.parameters())
    loaded, _ = load_model(save_model(model, tmp_path / "pot.pt"))
    assert loaded.dtype == torch.float64
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_float32_loading_of_a_float64_file(tmp_path):
    path = make_calculator().save(tmp_path / "pot.pt")
    loaded = E2FormerCalculator.from_file(path, device="cpu", dtype="float32", quiet=True)
    assert loaded.model.dtype == torch.float32


class _Evil:
    def __reduce__(self):
        return (print, ("this must never run",))


@pytest.mark.parametrize(
    "kind", ["truncated", "garbage", "pickle-with-code", "other-dict", "future-version", "wrong-weights", "nan-weights", "float16"]
)
def test_unreadable_files_raise_clear_errors(tmp_path, kind, capsys):
    good = make_calculator().save(tmp_path / "good.pt")
    bad = tmp_path / "bad.pt"
    if kind == "truncated":
        bad.write_bytes(good.read_bytes()[:2000])
    elif kind == "garbage":
        bad.write_bytes(b"\x00not a potential at all" * 10)
    elif kind == "pickle-with-code":
        torch.save({"format": "e2former-calc-potential", "payload": _Evil()}, bad)
    elif kind == "other-dict":
        torch.save({"weights": torch.zeros(3)}, bad)
    elif kind == "future-version":
        content = torch.load(good, weights_only=True)
        content["format_version"] = 99
        torch.save(content, bad)
    elif kind == "wrong-weights":
        content = torch.load(good, weights_only=True)
        content["config"]["channels"] = 12
        torch.save(content, bad)
    elif kind == "nan-weights":
        content = torch.load(good, weights_only=True)
        next(v for v in content["state_dict"].values() if v.is_floating_point()).view(-1)[0] = float("nan")
        torch.save(content, bad)
    else:
        content = torch.load(good, weights_only=True)
        content["dtype"] = "float16"
        torch.save(content, bad)
    with pytest.raises(ModelFileError, match="bad.pt"):
        E2FormerCalculator.from_file(bad, device="cpu", quiet=True)
    assert "must never run" not in capsys.readouterr().out


def test_caller_model_is_left_alone():
    from conftest import TEST_CONFIG

    from e2former_calc import E2Former
    from e2former_calc.predictor import Predictor

    model = E2Former(TEST_CONFIG, [1, 8])
    Predictor(model, device="cpu", dtype="float64")
    assert model.dtype == torch.float32 and all(p.requires_grad for p in model.parameters()) and model.training


def test_pretrained_names_resolve_through_the_search_path(tmp_path, monkeypatch):
    make_calculator().save(tmp_path / "my-test-potential.pt")
    monkeypatch.setenv("E2FORMER_POTENTIALS", str(tmp_path))
    calc = E2FormerCalculator.from_pretrained("my-test-potential", device="cpu", quiet=True)
    assert calc.cutoff == 4.0


def test_missing_file_and_unknown_pretrained_name(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing.pt"):
        E2FormerCalculator.from_file(tmp_path / "nothing.pt")
    with pytest.raises(ValueError, match="no shipped potential named 'no-such-potential'"):
        E2FormerCalculator.from_pretrained("no-such-potential")


def test_pickle_module_is_not_how_files_are_read(tmp_path):
    """A plain pickle (not torch's zip format) is refused rather than unpickled."""
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"format": "e2former-calc-potential"}))
    with pytest.raises(ModelFileError):
        read_model_file(path)


def test_save_after_loading_in_float32_writes_the_original_float64_weights(tmp_path):
    path = make_calculator(seed=5).save(tmp_path / "pot64.pt")
    fast = E2FormerCalculator.from_file(path, device="cpu", dtype="float32", quiet=True)
    again = fast.save(tmp_path / "again.pt")
    original, written = read_model_file(path), read_model_file(again)
    assert written["dtype"] == "float64"
    for name, value in original["state_dict"].items():
        assert written["state_dict"][name].dtype == value.dtype and torch.equal(written["state_dict"][name], value), name


def test_format_1_files_load_with_the_same_energies(tmp_path):
    """Format 1 models computed R(h) * scale + e0 with no isolated-atom subtraction; loading one
    moves R(h_iso) * scale into E0, so every energy is what it was and a lone atom gets the new E0."""
    from ase import Atoms

    from e2former_calc.model_file import atomic_save

    calc = make_calculator(seed=7)
    path = calc.save(tmp_path / "v2.pt")
    content = read_model_file(path)
    model = calc.model
    with torch.no_grad():
        offsets = model.isolated_atom_readout().double() * model.config.energy_scale
    bias = 0.37  # format 1 and 2 readouts had an output bias; in format 1 it did not cancel
    content["format_version"] = 1
    content["state_dict"] = {**content["state_dict"], "readout.2.bias": torch.tensor([bias], dtype=torch.float64)}
    scale = model.config.energy_scale
    content["e0"] = [e - float(o) - bias * scale for e, o in zip(content["e0"], offsets)]  # what format 1 stored
    old = atomic_save(content, tmp_path / "v1.pt")
    loaded = E2FormerCalculator.from_file(old, device="cpu", quiet=True)
    assert loaded.model.e0 == pytest.approx(model.e0, abs=1e-12)
    content["format_version"], content["e0"] = 2, list(model.e0)  # format 2: the bias cancels
    v2 = E2FormerCalculator.from_file(atomic_save(content, tmp_path / "v2-bias.pt"), device="cpu", quiet=True)
    atoms = bulk("Cu", "fcc", a=3.6).repeat(2)
    atoms.rattle(0.05, seed=1)
    for structure in (atoms, Atoms("Cu", positions=[[0, 0, 0]])):
        energies = []
        for c in (calc, loaded, v2):
            a = structure.copy()
            a.calc = c
            energies.append(a.get_potential_energy())
        assert energies[0] == pytest.approx(energies[1], abs=1e-10)
        assert energies[0] == pytest.approx(energies[2], abs=1e-10)
