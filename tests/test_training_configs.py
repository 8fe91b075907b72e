"""The training configurations that ship (how each potential was trained, and the same-budget runs
of the MACE comparison) stay runnable: each parses, and the files it names are in the repository."""

from pathlib import Path

import pytest

from e2former_calc.training.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "potentials" / "training").glob("*.yaml")) + sorted(
    (ROOT / "benchmarks" / "accuracy").glob("*.yaml"))


def test_the_configurations_are_found():
    assert len(CONFIGS) >= 10, CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_a_shipped_training_configuration_parses_and_names_files_that_exist(path):
    config = load_config(path)
    named = config.train_files + [config.data.valid] * (config.data.valid is not None)
    if config.model.get("init_from"):
        named.append(config.model["init_from"])
    missing = [name for name in named if not (ROOT / name).is_file()]
    assert not missing, f"{path.name} names files that are not in the repository: {missing}"
