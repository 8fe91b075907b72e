"""Training: configuration checks, E0 fit, learning, exact resume after kill -9, data-parallel
equivalence with one process, evaluation tables and parity plots."""

import ast
import dataclasses
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from e2former_calc.forces import ForceField
from e2former_calc.graph import AtomGraph
from e2former_calc.cli import main
from e2former_calc.model import E2Former, E2FormerConfig
from e2former_calc.model_file import load_model
from e2former_calc.neighbours import neighbour_list
from e2former_calc.training import CheckpointError, Trainer, parse_config
from e2former_calc.training.data import Sample, fit_e0, read_frames, read_samples

TINY_MODEL = {"preset": "small", "channels": 8, "num_layers": 1, "num_heads": 2, "head_dim": 4,
              "feedforward_channels": 16, "radial_hidden": 16, "max_degree": 1, "cutoff": 4.0}


def copper_frames(n, seed):
    """Rattled, strained 8-atom copper cells (periodic, with stress) and 4-atom clusters (not)."""
    rng = np.random.default_rng(seed)
    frames = []
    for k in range(n):
        if k % 4 == 3:
            atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
            atoms.pbc = False
            atoms.center(vacuum=3.0)
        else:
            atoms = bulk("Cu", "fcc", a=3.6) * (2, 2, 2)
            e = rng.uniform(-0.03, 0.03, (3, 3))
            atoms.set_cell(atoms.cell.array @ (np.eye(3) + 0.5 * (e + e.T)), scale_atoms=True)
        atoms.positions += rng.normal(0, 0.08, atoms.positions.shape)
        atoms.calc = EMT()
        atoms.info["REF_energy"] = atoms.get_potential_energy()
        atoms.arrays["REF_forces"] = atoms.get_forces()
        if atoms.pbc.all():
            atoms.info["REF_stress"] = atoms.get_stress()
        atoms.info["config_type"] = "cluster" if k % 4 == 3 else "bulk"
        atoms.calc = None
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def copper_data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cu")
    write(folder / "train.extxyz", copper_frames(16, 0))
    write(folder / "valid.extxyz", copper_frames(4, 1))
    return folder


def write_config(folder, data, output, **training):
    values = {
        "data": {"train": str(data / "train.extxyz"), "valid": str(data / "valid.extxyz"),
                 "e0": {"Cu": -0.01}},
        "model": dict(TINY_MODEL),
        "training": {"batch_size": 4, "max_epochs": 3, "lr": 0.01, "threads": 1, "seed": 3, **training},
        "output": str(output), "name": "tiny-cu",
    }
    path = Path(folder) / f"{Path(output).name}.yaml"
    path.write_text(yaml.safe_dump(values))
    return path


def test_config_errors_name_the_key():
    base = {"data": {"train": "x.xyz"}, "output": "run"}
    parse_config(base)
    for bad, words in [
        ({**base, "trainig": {}}, "trainig"),
        ({"output": "run"}, "data: train"),
        ({**base, "training": {"dtype": "float16"}}, "training.dtype"),
        ({**base, "training": {"lr_max": 1}}, "lr_max"),
        ({**base, "model": {"chanels": 3}}, "chanels"),
        ({**base, "training": {"loss": {"energy": 1, "dipole": 2}}}, "dipole"),
        ({**base, "data": {"train": "x", "e0": "magic"}}, "data.e0"),
        ({**base, "training": {"lr": "1e-3"}}, "training.lr must be a number.*1.0e-3"),
        ({**base, "training": {"batch_size": 2.5}}, "training.batch_size must be an integer"),
        ({**base, "training": {"max_time_minutes": 0}}, "max_time_minutes must be positive"),
        ({**base, "training": {"clip_grad_norm": -1.0}}, "clip_grad_norm"),
        ({**base, "data": {"train": []}}, "data.train must be a file or a non-empty list"),
        ({**base, "data": {"train": ["x.xyz", 3]}}, "data.train must be a file or a non-empty list"),
    ]:
        with pytest.raises(ValueError, match=words):
            parse_config(bad)


def test_least_squares_e0_recovers_reference_energies():
    e0 = {1: -13.6, 6: -1029.0, 8: -2040.0}
    rng = np.random.default_rng(0)
    samples = []
    for _ in range(12):
        numbers = rng.choice([1, 6, 8], size=rng.integers(3, 9))
        energy = sum(e0[z] for z in numbers)
        samples.append(Sample(numbers, np.zeros((len(numbers), 3)), np.zeros((3, 3)), np.zeros(3, bool), energy,
                              None, None, "x"))
    np.testing.assert_allclose(fit_e0(samples, [1, 6, 8]), [-13.6, -1029.0, -2040.0], rtol=1e-12)
    same_ratio = [Sample(np.array([1, 1, 8] * k), None, None, None, -10.0 * k, None, None, "x") for k in (1, 2, 3)]
    with pytest.raises(ValueError, match="determine only 1 of the 2"):
        fit_e0(same_ratio, [1, 8])


def test_missing_labels_name_the_frame(tmp_path):
    frames = copper_frames(3, 0)
    del frames[1].info["REF_energy"]
    write(tmp_path / "bad.extxyz", frames)
    with pytest.raises(ValueError, match="frame 1: no energy under the key 'REF_energy'"):
        read_samples(tmp_path / "bad.extxyz")


def test_atoms_on_top_of_each_other_name_the_frame(tmp_path):
    frames = copper_frames(3, 0)
    frames[2].positions[1] = frames[2].positions[0] + [0.1, 0.0, 0.0]
    write(tmp_path / "bad.extxyz", frames)
    samples = read_samples(tmp_path / "bad.extxyz")
    from e2former_calc.training.data import attach_neighbours

    with pytest.raises(ValueError, match=r"data.train, frame 2: atoms [01] \(Cu\) and [01] \(Cu\) are 0.100 Å apart"):
        attach_neighbours(samples, 4.0, "data.train")


def test_training_forces_equal_inference_forces(float64):
    torch.manual_seed(0)
    model = E2Former(E2FormerConfig.preset("small", **{k: v for k, v in TINY_MODEL.items() if k != "preset"}), [29])
    frames = copper_frames(3, 2)
    nbs = [neighbour_list(a.positions, a.cell.array, a.pbc, 4.0) for a in frames]
    graph = AtomGraph.from_arrays([np.zeros(len(a), int) for a in frames], [a.positions for a in frames],
                                  [a.cell.array for a in frames], [a.pbc for a in frames], nbs, "cpu")
    plain = ForceField(model)(graph, forces=True, stress=True)
    trained = ForceField(model)(graph, forces=True, stress=True, create_graph=True)
    assert trained["forces"].requires_grad and trained["stress"].requires_grad
    for key in ("forces", "stress", "virial"):
        torch.testing.assert_close(trained[key].detach(), plain[key], rtol=1e-12, atol=1e-12)


def test_training_learns_and_writes_a_loadable_potential(copper_data, tmp_path):
    config = parse_config(yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "run", max_epochs=6).read_text()))
    trainer = Trainer(config, progress=False, log=lambda m: None)
    path = trainer.run()
    history = trainer.history
    assert len(history) == 6
    assert history[-1]["train_loss"] < 0.5 * history[0]["train_loss"]
    assert history[-1]["valid_forces_mae"] < history[0]["valid_forces_mae"]
    assert "valid_stress_mae" in history[-1]
    model, metadata = load_model(path)
    assert model.atomic_numbers == (29,) and metadata["dtype"] == "float64"
    assert metadata["provenance"]["name"] == "tiny-cu"
    assert (tmp_path / "run" / "log.csv").read_text().count("\n") == 7
    # a finished run resumes to "finished" and rewrites the same potential
    again = Trainer(config, progress=False, log=lambda m: None)
    again.run()
    for k, v in load_model(path)[0].state_dict().items():
        assert torch.equal(v, model.state_dict()[k])


def test_several_training_files_train_like_one_file_of_them_all(copper_data, tmp_path):
    """``data.train`` as a list reads the files one after the other: the same weights, bit for bit,
    as the one file that holds their frames in that order; a one-file list is that file."""
    frames = read_frames(copper_data / "train.extxyz")
    write(tmp_path / "first.extxyz", frames[:10])
    write(tmp_path / "second.extxyz", frames[10:])
    one = yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "one", max_epochs=2).read_text())
    two = {**one, "data": {**one["data"], "train": [str(tmp_path / "first.extxyz"), str(tmp_path / "second.extxyz")]},
           "output": str(tmp_path / "two")}
    weights = []
    for values in (one, two):
        trainer = Trainer(parse_config(values), progress=False, log=lambda m: None)
        weights.append(load_model(trainer.run())[0].state_dict())
    assert len(trainer.train) == 16
    for name, value in weights[0].items():
        assert torch.equal(value, weights[1][name]), name
    assert parse_config({**one, "data": {**one["data"], "train": [one["data"]["train"]]}}).data.train == one["data"]["train"]
    # without a valid file the seeded fraction is drawn from the frames of all files, as from one file
    splits = []
    for values in (one, two):
        trainer = Trainer(parse_config({**values, "data": {k: v for k, v in values["data"].items() if k != "valid"}}),
                          progress=False, log=lambda m: None)
        trainer._load_data()
        splits.append([[s.energy for s in part] for part in (trainer.train, trainer.valid)])
    assert splits[0] == splits[1] and len(splits[0][1]) == 1
    del frames[12].arrays["REF_forces"]
    write(tmp_path / "second.extxyz", frames[10:])
    with pytest.raises(ValueError, match=r"data.train .*second.extxyz: frame 2 has no forces"):
        Trainer(parse_config({**two, "output": str(tmp_path / "three")}), progress=False, log=lambda m: None).run()


def test_the_stress_term_trains(copper_data, tmp_path):
    """With only the stress in the loss, the validation stress error falls: gradients reach the
    weights through the virial (the sign against the labels is checked on the shipped copper
    potential, tests/test_potentials.py)."""
    path = write_config(tmp_path, copper_data, tmp_path / "stress", max_epochs=20, batch_size=2, lr=0.005,
                        loss={"energy": 0.0, "forces": 0.0, "stress": 1000.0})
    trainer = Trainer(parse_config(yaml.safe_load(path.read_text())), progress=False, log=lambda m: None)
    trainer.run()
    history = trainer.history
    assert history[-1]["train_loss"] < 0.3 * history[0]["train_loss"]  # seen: 0.66 -> 0.09
    assert history[-1]["valid_stress_mae"] < 0.6 * history[0]["valid_stress_mae"]  # seen: 13.9 -> 5.2 meV/Å³


def test_float32_training_runs(copper_data, tmp_path):
    config = parse_config(yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "run32", max_epochs=1,
                                                      dtype="float32").read_text()))
    model, metadata = load_model(Trainer(config, progress=False, log=lambda m: None).run())
    assert metadata["dtype"] == "float32" and model.dtype == torch.float32


def test_changed_settings_refuse_to_resume(copper_data, tmp_path):
    path = write_config(tmp_path, copper_data, tmp_path / "run", max_epochs=1)
    Trainer(parse_config(yaml.safe_load(path.read_text())), progress=False, log=lambda m: None).run()
    changed = yaml.safe_load(path.read_text())
    changed["training"]["lr"] = 0.5
    with pytest.raises(CheckpointError, match="training.lr"):
        Trainer(parse_config(changed), progress=False, log=lambda m: None).run()
    changed["training"]["lr"] = 0.01
    changed["training"]["max_epochs"] = 2  # allowed: a longer run continues
    trainer = Trainer(parse_config(changed), progress=False, log=lambda m: None)
    trainer.run()
    assert trainer.epoch == 2


def _final_weights(output):
    content = torch.load(Path(output) / "checkpoint.pt", map_location="cpu", weights_only=True)
    return content["model"], content["epoch"]


def test_kill_9_then_resume_gives_the_same_weights(copper_data, tmp_path):
    """An uninterrupted run and a run killed (SIGKILL) after its first checkpoint and resumed end
    with bit-identical weights."""
    straight = write_config(tmp_path, copper_data, tmp_path / "straight", max_epochs=4)
    killed = write_config(tmp_path, copper_data, tmp_path / "killed", max_epochs=4)
    command = [sys.executable, "-m", "e2former_calc", "train", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([*command, str(straight)], check=True, env=env, capture_output=True, timeout=600)
    process = subprocess.Popen([*command, str(killed)], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "checkpoint.pt"
    deadline = time.monotonic() + 300
    while not checkpoint.exists() and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    _, epochs_at_kill = _final_weights(tmp_path / "killed")
    assert 1 <= epochs_at_kill < 4, "the kill should land after the first checkpoint and before the end"
    result = subprocess.run([*command, str(killed)], env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"resuming from {checkpoint}: {epochs_at_kill} epochs done" in result.stdout
    a, epochs_a = _final_weights(tmp_path / "straight")
    b, epochs_b = _final_weights(tmp_path / "killed")
    assert epochs_a == epochs_b == 4
    for key in a:
        assert torch.equal(a[key], b[key]), key
    ema_a = torch.load(tmp_path / "straight" / "checkpoint.pt", weights_only=True)["ema"]["shadow"]
    ema_b = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["ema"]["shadow"]
    assert all(torch.equal(ema_a[k], ema_b[k]) for k in ema_a)
    shipped_a, _ = load_model(tmp_path / "straight" / "potential.pt")
    shipped_b, _ = load_model(tmp_path / "killed" / "potential.pt")
    for key, value in shipped_a.state_dict().items():
        assert torch.equal(value, shipped_b.state_dict()[key]), key


def test_a_checkpoint_with_the_old_readout_bias_resumes(copper_data, tmp_path):
    """Checkpoints from before model-file format 3 hold the readout's output bias (which cancels
    in the energies) in the weights, the EMA and the optimizer; resuming drops it and continues
    exactly as from the same checkpoint without it."""
    import shutil

    path = write_config(tmp_path, copper_data, tmp_path / "new", max_epochs=1)
    Trainer(parse_config(yaml.safe_load(path.read_text())), progress=False, log=lambda m: None).run()
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    checkpoint = tmp_path / "old" / "checkpoint.pt"
    content = torch.load(checkpoint, weights_only=True)
    bias = torch.tensor([0.3], dtype=torch.float64)
    index = len(content["optimizer"]["param_groups"][0]["params"])  # the bias was the last parameter
    content["model"]["readout.2.bias"] = bias
    content["ema"]["shadow"]["readout.2.bias"] = bias.clone()
    content["best"]["ema"]["readout.2.bias"] = bias.clone()
    content["optimizer"]["param_groups"][0]["params"].append(index)
    content["optimizer"]["state"][index] = {"step": content["optimizer"]["state"][0]["step"].clone(),
                                            "exp_avg": torch.full((1,), 0.1, dtype=torch.float64),
                                            "exp_avg_sq": torch.full((1,), 0.01, dtype=torch.float64)}
    torch.save(content, checkpoint)
    for name in ("new", "old"):
        config = yaml.safe_load(path.read_text())
        config["output"], config["training"]["max_epochs"] = str(tmp_path / name), 2
        Trainer(parse_config(config), progress=False, log=lambda m: None).run()
    a, epochs_a = _final_weights(tmp_path / "new")
    b, epochs_b = _final_weights(tmp_path / "old")
    assert epochs_a == epochs_b == 2 and "readout.2.bias" not in b
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_device_auto_cpu_and_a_clear_error_for_cuda(copper_data, tmp_path):
    from e2former_calc.training.trainer import training_device

    assert training_device("cpu") == torch.device("cpu")
    assert training_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="training.device is 'cuda' but torch sees no CUDA device"):
            training_device("cuda")
    values = yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "run", tf32=True).read_text())
    with pytest.raises(ValueError, match="training.tf32 needs training.dtype: float32"):
        parse_config(values)
    values["training"].update(tf32=False, device="gpu")
    with pytest.raises(ValueError, match="training.device must be auto, cpu, cuda or cuda:N, got 'gpu'"):
        parse_config(values)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the GPU training test needs one")
def test_training_on_a_gpu_matches_the_cpu(copper_data, tmp_path):
    """Two epochs in float64 on the GPU and on the CPU end with the same weights (index_add_ on
    the GPU sums in another order: round-off only)."""
    runs = {}
    for device in ("cpu", "cuda"):
        path = write_config(tmp_path, copper_data, tmp_path / device, max_epochs=2, device=device)
        Trainer(parse_config(yaml.safe_load(path.read_text())), progress=False, log=lambda m: None).run()
        runs[device], _ = _final_weights(tmp_path / device)
    for key in runs["cpu"]:
        torch.testing.assert_close(runs["cuda"][key], runs["cpu"][key], rtol=1e-7, atol=1e-9,
                                   msg=lambda message, key=key: f"{key}: {message}")


def test_a_second_stage_raises_the_energy_weight_and_picks_its_own_best_epoch(copper_data, tmp_path):
    stage = {"start_epoch": 2, "loss": {"energy": 50.0}, "lr_factor": 0.5}
    path = write_config(tmp_path, copper_data, tmp_path / "staged", max_epochs=3, second_stage=stage)
    messages = []
    trainer = Trainer(parse_config(yaml.safe_load(path.read_text())), progress=False, log=messages.append)
    trainer.run()
    first = trainer.config.training.loss
    assert trainer.loss_weights(1) == first and trainer.loss_weights(2) == {**first, "energy": 50.0}
    steps = trainer.steps_per_epoch
    assert trainer.learning_rate(2 * steps) == pytest.approx(0.5 * trainer._learning_rate(2 * steps, 3))
    assert trainer.learning_rate(2 * steps - 1) == pytest.approx(trainer._learning_rate(2 * steps - 1, 3))
    assert trainer.best["epoch"] == 3  # the only second-stage epoch: the first stage's best was set aside
    assert any(m.startswith("second stage from epoch 3") for m in messages)
    for bad, match in (({"start_epoch": 3, "loss": {}}, r"start_epoch must be an integer in 1\.\.2"),
                       ({"start_epoch": 1, "loss": {"charge": 1.0}}, "second_stage.loss takes energy, forces, stress"),
                       ({"start_epoch": 1, "lr_factor": 0}, "second_stage.lr_factor must be a positive number"),
                       ({"start": 1}, "unknown keys in 'training.second_stage': start")):
        values = yaml.safe_load(path.read_text())
        values["training"]["second_stage"] = bad
        with pytest.raises(ValueError, match=match):
            parse_config(values)


def test_prefetching_the_next_batch_changes_no_number(copper_data, tmp_path):
    """training.prefetch builds the next batch on a worker thread (the default on a GPU): the
    weights after two epochs are bit-identical to building each batch in the step."""
    runs = {}
    for prefetch in (False, True):
        values = yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / f"prefetch-{prefetch}", max_epochs=2,
                                             prefetch=prefetch).read_text())
        trainer = Trainer(parse_config(values), progress=False, log=lambda m: None)
        assert trainer.prefetch is prefetch
        trainer.run()
        runs[prefetch] = trainer.model.state_dict()
    for name, value in runs[False].items():
        torch.testing.assert_close(runs[True][name], value, rtol=0, atol=0, msg=name)
    with pytest.raises(ValueError, match="training.prefetch must be auto, true or false"):
        parse_config({"data": {"train": "x"}, "output": "o", "training": {"prefetch": "yes"}})


def test_a_second_stage_may_change_on_resume_until_it_begins(copper_data, tmp_path):
    """Epochs before a stage are the same with or without it: a run whose stage was moved while
    neither had begun equals one configured that way from the start; after, a change is refused."""

    class Stopped(Exception):
        pass

    def stop_after_the_first_epoch(message):  # the epoch's checkpoint is written before its message
        if message.startswith("epoch 1:"):
            raise Stopped

    early = {"start_epoch": 1, "loss": {"energy": 50.0}}
    values = yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "moved", max_epochs=3,
                                         second_stage={"start_epoch": 2, "loss": {"energy": 50.0}}).read_text())
    with pytest.raises(Stopped):
        Trainer(parse_config(values), progress=False, log=stop_after_the_first_epoch).run()
    values["training"]["second_stage"] = early
    messages = []
    moved = Trainer(parse_config(values), progress=False, log=messages.append)
    moved.run()
    assert any("second_stage changed" in m and "before either began" in m for m in messages)
    direct = Trainer(parse_config(yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "direct", max_epochs=3,
                                                              second_stage=early).read_text())),
                     progress=False, log=lambda m: None)
    direct.run()
    for name, value in direct.model.state_dict().items():
        torch.testing.assert_close(moved.model.state_dict()[name], value, rtol=0, atol=0, msg=name)
    values["training"]["second_stage"] = {"start_epoch": 1, "loss": {"energy": 5.0}}  # that stage has run
    with pytest.raises(CheckpointError, match="second_stage changed"):
        Trainer(parse_config(values), progress=False, log=lambda m: None).run()


def test_two_processes_train_like_one(copper_data, tmp_path):
    """torchrun with two CPU processes (gloo): each takes half of every batch and the gradients
    are summed, so the weights after an epoch equal those of one process (float64 round-off)."""
    # a time limit that is never reached: rank 0's clock is broadcast at every batch (no deadlock)
    one = write_config(tmp_path, copper_data, tmp_path / "one", max_epochs=2, ema_decay=0.5, max_time_minutes=100)
    two = write_config(tmp_path, copper_data, tmp_path / "two", max_epochs=2, ema_decay=0.5, max_time_minutes=100)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "e2former_calc", "train", "--quiet", str(one)], check=True, env=env,
                   capture_output=True, timeout=600)
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             "-m", "e2former_calc", "train", "--quiet", str(two)], env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    a, _ = _final_weights(tmp_path / "one")
    b, _ = _final_weights(tmp_path / "two")
    for key in a:
        torch.testing.assert_close(b[key], a[key], rtol=1e-9, atol=1e-11, msg=key)
    log_one = (tmp_path / "one" / "log.csv").read_text().splitlines()
    log_two = (tmp_path / "two" / "log.csv").read_text().splitlines()
    valid_one = [float(x) for x in log_one[-1].split(",")[5:]]
    valid_two = [float(x) for x in log_two[-1].split(",")[5:]]
    np.testing.assert_allclose(valid_two, valid_one, rtol=1e-7)


def test_eval_prints_a_table_per_type_and_draws_parity_plots(copper_data, tmp_path, capsys, monkeypatch):
    config = parse_config(yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "run", max_epochs=1).read_text()))
    potential = Trainer(config, progress=False, log=lambda m: None).run()
    monkeypatch.chdir(tmp_path)
    assert main(["eval", str(potential), str(copper_data / "valid.extxyz"), "--plots", "fig/parity"]) == 0
    out = capsys.readouterr().out
    assert "| bulk | 3 |" in out and "| cluster | 1 |" in out and "| all | 4 |" in out
    for name in ("fig/parity_energy.png", "fig/parity_forces.png", "metrics.json", "predictions.extxyz"):
        assert (tmp_path / name).stat().st_size > 1000 or name.endswith("json")
    assert main(["eval", str(potential), str(copper_data / "valid.extxyz"), "--forces-key", "REF_force"]) == 2
    assert "no structure has a forces label under the key 'REF_force'" in capsys.readouterr().err
    assert main(["eval", "auto", str(copper_data / "valid.extxyz"), "--plots", ""]) == 0
    assert "using the shipped potential e2former-emt-cu" in capsys.readouterr().err


def test_fine_tuning_starts_from_a_potential_file_with_this_runs_e0(copper_data, tmp_path):
    """``model.init_from``: the new run's model is the file's network (weights and
    hyper-parameters) with the E0s of ``data.e0``, so its forces equal the file's at the start
    and its energies differ by exactly sum_i (E0_new - E0_old); the provenance names the start."""
    from e2former_calc.model_file import save_model

    first = Trainer(parse_config(yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "first",
                                                             max_epochs=4).read_text())),
                    progress=False, log=lambda m: None)
    start_file = first.run()
    start, _ = load_model(start_file)
    values = yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "tuned", max_epochs=1).read_text())
    values["model"] = {"init_from": str(start_file)}
    values["data"]["e0"] = {"Cu": -0.25}
    tuned = Trainer(parse_config(values), progress=False, log=lambda m: None)
    tuned._build()
    assert tuned.model.config == start.config and tuned.model.e0 == (-0.25,)
    atoms = copper_frames(1, 7)[0]
    graph = AtomGraph.from_arrays([np.zeros(len(atoms), int)], [atoms.positions], [atoms.cell.array], [atoms.pbc],
                                  [neighbour_list(atoms.positions, atoms.cell.array, atoms.pbc, 4.0)], "cpu")
    before = ForceField(start)(graph, forces=True)
    after = ForceField(tuned.model)(graph, forces=True)
    assert torch.allclose(after["forces"], before["forces"], rtol=0, atol=1e-12)
    shift = len(atoms) * (-0.25 - start.e0[0])
    assert abs(float(after["energy"].sum() - before["energy"].sum()) - shift) < 1e-9
    # one epoch on from the trained weights beats one epoch from scratch
    path = Trainer(parse_config(values), progress=False, log=lambda m: None).run()
    tuned_history = list(csv_rows(tmp_path / "tuned" / "log.csv"))
    first_epoch = first.history[0]["valid_forces_mae"]
    assert float(tuned_history[0]["valid_forces_mae"]) < first_epoch
    provenance = load_model(path)[1]["provenance"]
    record = provenance["init_from"]
    assert str(start_file) in record and hashlib.sha256(Path(start_file).read_bytes()).hexdigest() in record
    from e2former_calc.model_file import training_seconds

    start_seconds = float(load_model(start_file)[1]["provenance"]["training_time_s"])
    assert training_seconds(provenance) == pytest.approx(float(provenance["training_time_s"]) + start_seconds)
    # a fine-tuning of the fine-tuned file counts all three runs
    chained = dict(values, model={"init_from": str(path)}, output=str(tmp_path / "tuned-again"))
    again_provenance = load_model(Trainer(parse_config(chained), progress=False, log=lambda m: None).run())[1]["provenance"]
    behind = ast.literal_eval(again_provenance["init_from"])["training_time_s"]
    assert start_seconds > 0 and behind == f"{float(provenance['training_time_s']) + start_seconds:.1f}"
    assert training_seconds(again_provenance) == float(again_provenance["training_time_s"]) + float(behind)
    # the start may move (its content is what the checkpoint remembers), not change
    moved = tmp_path / "moved.pt"
    moved.write_bytes(Path(start_file).read_bytes())
    values["model"] = {"init_from": str(moved)}
    values["training"]["max_epochs"] = 2
    again = Trainer(parse_config(values), progress=False, log=lambda m: None)
    again.run()
    assert again.epoch == 2
    Trainer(parse_config(yaml.safe_load(write_config(tmp_path, copper_data, tmp_path / "first", max_epochs=5)
                                        .read_text())), progress=False, log=lambda m: None).run()
    values["model"] = {"init_from": str(start_file)}  # now the five-epoch file
    with pytest.raises(CheckpointError, match="derived"):
        Trainer(parse_config(values), progress=False, log=lambda m: None).run()
    # only the pair term's settings may stand beside init_from; the file's species must be the data's
    values["model"] = {"init_from": str(start_file), "channels": 16}
    with pytest.raises(ValueError, match="only zbl and zbl_switch_off may be given beside it, not channels"):
        parse_config(values)
    values["model"] = {"init_from": str(start_file), "zbl": True, "zbl_switch_off": 0.6}
    replaced = parse_config(values).model_config(1.0, 1.0)
    stored = load_model(start_file)[0].config
    assert replaced == dataclasses.replace(stored, zbl=True, zbl_switch_off=0.6)
    other = E2Former(E2FormerConfig.preset("small", **{k: v for k, v in TINY_MODEL.items() if k != "preset"}), [1, 29])
    save_model(other, tmp_path / "hcu.pt")
    values["model"] = {"init_from": str(tmp_path / "hcu.pt"), "zbl": True}
    values["output"] = str(tmp_path / "mismatch")
    with pytest.raises(ValueError, match="is a model of H, Cu, the training data hold Cu"):
        Trainer(parse_config(values), progress=False, log=lambda m: None).run()


def csv_rows(path):
    import csv

    with open(path, newline="") as handle:
        yield from csv.DictReader(handle)
