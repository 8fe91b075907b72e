"""Training E2Former potentials: ``e2former train CONFIG.yaml`` (see :mod:`.config`)."""

from .config import TrainConfig, load_config, parse_config
from .metrics import ErrorTally
from .trainer import CheckpointError, Trainer, train

__all__ = ["CheckpointError", "ErrorTally", "TrainConfig", "Trainer", "load_config", "parse_config", "train"]
