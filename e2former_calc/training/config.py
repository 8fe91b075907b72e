"""The training configuration: one YAML file, checked before any work starts.

Example (every key shown; only ``data.train`` and ``output`` are required)::

    data:
      train: datasets/xtb-rmd17/train.extxyz.gz    # any ASE-readable file, or a list of them
      valid: datasets/xtb-rmd17/valid.extxyz.gz    # optional; else `valid_fraction` of train
      valid_fraction: 0.05
      energy_key: REF_energy
      forces_key: REF_forces
      stress_key: REF_stress                       # null: no stress training
      e0: least_squares                            # or isolated_atoms, or {H: -10.7, C: -48.8}
    model:
      preset: small                                # plus any E2FormerConfig field, e.g.
      channels: 32
      energy_scale: auto                           # eV; auto: the RMS force component (eV/Å) x 1 Å
      average_neighbours: auto                     # auto: mean neighbours per atom of the data
      # or, to fine-tune: start from a potential file's weights and hyper-parameters (only
      # `zbl` and `zbl_switch_off` may be given beside it); E0 still comes from `data.e0`
      # init_from: potentials/e2former-xtb-organic.pt
    training:
      dtype: float64                               # or float32
      batch_size: 8
      max_epochs: 100
      max_time_minutes: null                       # stop (and write the potential) after this
      lr: 0.005
      min_lr_factor: 0.02                          # cosine schedule ends at lr * this
      warmup_epochs: 1
      weight_decay: 1.0e-6                         # AdamW (decoupled)
      ema_decay: 0.99
      clip_grad_norm: 10.0
      loss: {energy: 1.0, forces: 100.0, stress: 10.0}
      second_stage: null                           # e.g. {start_epoch: 80, loss: {energy: 100.0}, lr_factor: 0.5}
      seed: 0
      threads: null                                # torch threads; null leaves torch's default
      device: auto                                 # auto (a GPU when torch sees one), cpu, cuda or cuda:N
      tf32: false                                  # float32 on a GPU: TF32 matrix products (faster, ~1e-3)
      prefetch: auto                               # next batch's graph built on a thread meanwhile (auto: on a GPU)
    output: runs/organic                           # checkpoint.pt, log.csv, potential.pt go here
    name: e2former-xtb-organic                     # recorded in the potential file
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..model import E2FormerConfig

#: model keys a fine-tuning may set beside ``init_from``: the pair term has no weights to fit
REPLACEABLE_ON_INIT = ("zbl", "zbl_switch_off")


@dataclass(frozen=True)
class DataSection:
    train: str | list  # one file, or a list of files read one after the other
    valid: str | None = None
    valid_fraction: float = 0.05
    energy_key: str = "REF_energy"
    forces_key: str | None = "REF_forces"
    stress_key: str | None = "REF_stress"
    e0: object = "least_squares"


@dataclass(frozen=True)
class TrainingSection:
    dtype: str = "float64"
    batch_size: int = 8
    max_epochs: int = 100
    max_time_minutes: float | None = None
    lr: float = 0.005
    min_lr_factor: float = 0.02
    warmup_epochs: float = 1.0
    weight_decay: float = 1e-6
    ema_decay: float = 0.99
    clip_grad_norm: float | None = 10.0
    loss: dict = field(default_factory=lambda: {"energy": 1.0, "forces": 100.0, "stress": 10.0})
    seed: int = 0
    threads: int | None = None
    second_stage: dict | None = None
    device: str = "auto"
    tf32: bool = False
    prefetch: object = "auto"


@dataclass(frozen=True)
class TrainConfig:
    data: DataSection
    model: dict
    training: TrainingSection
    output: str
    name: str = "e2former-potential"
    source: str = ""  # the YAML file it came from

    @property
    def output_dir(self) -> Path:
        return Path(self.output)

    @property
    def train_files(self) -> list[str]:
        """``data.train`` as a list of files (one, or several read in turn)."""
        return [self.data.train] if isinstance(self.data.train, str) else list(self.data.train)

    @property
    def init_from(self) -> Path | None:
        """The potential file whose weights the run starts from (``model.init_from``), or None."""
        value = self.model.get("init_from")
        return None if value is None else Path(value)

    def model_config(self, energy_scale: float, average_neighbours: float) -> E2FormerConfig:
        """The network's hyper-parameters, with ``auto`` values filled in from the data; with
        ``model.init_from``, those of that file (``zbl`` and ``zbl_switch_off`` as given here, if
        given)."""
        values = dict(self.model)
        if self.init_from is not None:
            from ..model_file import read_model_file, stored_hyperparameters

            others = sorted(set(values) - {"init_from", *REPLACEABLE_ON_INIT})
            if others:
                raise ValueError(f"training config: model.init_from takes the hyper-parameters of {self.init_from}; "
                                 f"only {' and '.join(REPLACEABLE_ON_INIT)} may be given beside it, not {', '.join(others)}")
            stored = stored_hyperparameters(read_model_file(self.init_from))
            stored.update({key: values[key] for key in REPLACEABLE_ON_INIT if key in values})
            return E2FormerConfig.from_dict(stored)
        preset = values.pop("preset", "small")
        known = {f.name for f in dataclasses.fields(E2FormerConfig)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"training config: unknown keys in 'model': {', '.join(unknown)} "
                             f"(known: preset, {', '.join(sorted(known))})")
        if values.get("energy_scale", "auto") == "auto":
            values["energy_scale"] = energy_scale
        if values.get("average_neighbours", "auto") == "auto":
            values["average_neighbours"] = average_neighbours
        return E2FormerConfig.preset(preset, **values)

    def to_dict(self) -> dict:
        return {"data": dataclasses.asdict(self.data), "model": dict(self.model),
                "training": dataclasses.asdict(self.training), "output": self.output, "name": self.name}


def _section(cls, values, name: str):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ValueError(f"training config: '{name}' must be a mapping, got {type(values).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"training config: unknown keys in '{name}': {', '.join(unknown)} (known: {', '.join(sorted(known))})")
    return cls(**values)


def parse_config(values: dict, source: str = "") -> TrainConfig:
    """A :class:`TrainConfig` from a mapping; raises ``ValueError`` naming the offending key."""
    if not isinstance(values, dict):
        raise ValueError("training config: the file must hold a mapping (data:, model:, training:, output:)")
    unknown = sorted(set(values) - {"data", "model", "training", "output", "name"})
    if unknown:
        raise ValueError(f"training config: unknown top-level keys: {', '.join(unknown)}")
    if "data" not in values or not isinstance(values["data"], dict) or "train" not in values["data"]:
        raise ValueError("training config: 'data: train:' (the training structures) is required")
    if "output" not in values:
        raise ValueError("training config: 'output:' (the run folder) is required")
    data = _section(DataSection, values["data"], "data")
    files = list(data.train) if isinstance(data.train, (list, tuple)) else [data.train]
    if not files or not all(isinstance(path, str) and path for path in files):
        raise ValueError(f"training config: data.train must be a file or a non-empty list of files, got {data.train!r}")
    data = dataclasses.replace(data, train=files[0] if len(files) == 1 else files)  # one file stays a string
    training = _section(TrainingSection, values.get("training"), "training")
    model = dict(values.get("model") or {})
    loss = {"energy": 1.0, "forces": 100.0, "stress": 10.0, **dict(training.loss)}
    def number(name, value, integer=False, optional=False):
        if optional and value is None:
            return
        kinds = (int,) if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kinds):
            hint = " (YAML reads 1e-3 as text: write 1.0e-3)" if isinstance(value, str) else ""
            raise ValueError(f"training config: training.{name} must be {'an integer' if integer else 'a number'}, "
                             f"got {value!r}{hint}")

    for name in ("batch_size", "max_epochs", "seed"):
        number(name, getattr(training, name), integer=True)
    for name in ("lr", "min_lr_factor", "warmup_epochs", "weight_decay", "ema_decay"):
        number(name, getattr(training, name))
    for name in ("max_time_minutes", "clip_grad_norm"):
        number(name, getattr(training, name), optional=True)
    number("threads", training.threads, integer=True, optional=True)
    for key, weight in dict(training.loss).items():
        number(f"loss.{key}", weight)
    number("valid_fraction", data.valid_fraction)
    checks = [
        (training.max_time_minutes is None or training.max_time_minutes > 0, "training.max_time_minutes must be positive"),
        (training.warmup_epochs >= 0, "training.warmup_epochs must be >= 0"),
        (training.weight_decay >= 0, "training.weight_decay must be >= 0"),
        (training.clip_grad_norm is None or training.clip_grad_norm > 0, "training.clip_grad_norm must be positive or null"),
        (training.threads is None or training.threads >= 1, "training.threads must be >= 1 or null"),
        (training.dtype in ("float32", "float64"), f"training.dtype must be float32 or float64, got {training.dtype!r}"),
        (isinstance(training.device, str) and (training.device in ("auto", "cpu", "cuda")
                                               or (training.device.startswith("cuda:") and training.device[5:].isdigit())),
         f"training.device must be auto, cpu, cuda or cuda:N, got {training.device!r}"),
        (isinstance(training.tf32, bool), f"training.tf32 must be true or false, got {training.tf32!r}"),
        (training.prefetch in ("auto", True, False), f"training.prefetch must be auto, true or false, got {training.prefetch!r}"),
        (not training.tf32 or training.dtype == "float32", "training.tf32 needs training.dtype: float32"),
        (training.batch_size >= 1, "training.batch_size must be >= 1"),
        (training.max_epochs >= 1, "training.max_epochs must be >= 1"),
        (training.lr > 0, "training.lr must be positive"),
        (0 <= training.ema_decay < 1, "training.ema_decay must lie in [0, 1)"),
        (0 < training.min_lr_factor <= 1, "training.min_lr_factor must lie in (0, 1]"),
        (set(loss) == {"energy", "forces", "stress"}, f"training.loss takes energy, forces, stress; got {sorted(loss)}"),
        (all(w >= 0 for w in loss.values()), "training.loss weights must be >= 0"),
        (0 < data.valid_fraction < 1, "data.valid_fraction must lie in (0, 1)"),
        (data.e0 in ("least_squares", "isolated_atoms") or isinstance(data.e0, dict),
         f"data.e0 must be least_squares, isolated_atoms or a mapping element: energy, got {data.e0!r}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(f"training config: {message}")
    training = dataclasses.replace(training, loss=loss, second_stage=_second_stage(training.second_stage, loss,
                                                                                  training.max_epochs))
    config = TrainConfig(data=data, model=model, training=training, output=str(values["output"]),
                         name=str(values.get("name", "e2former-potential")), source=source)
    config.model_config(1.0, 1.0)  # raises now on unknown or invalid model keys
    return config


def _second_stage(stage, loss: dict, max_epochs: int) -> dict | None:
    """``training.second_stage`` checked and completed: from epoch ``start_epoch`` (epochs done)
    on, the loss weights ``loss`` (missing ones: the first stage's) and the learning rate times
    ``lr_factor`` (default 1). Typically a larger energy weight once the forces have converged."""
    if stage is None:
        return None
    if not isinstance(stage, dict):
        raise ValueError(f"training config: training.second_stage must be a mapping, got {type(stage).__name__}")
    unknown = sorted(set(stage) - {"start_epoch", "loss", "lr_factor"})
    if unknown:
        raise ValueError(f"training config: unknown keys in 'training.second_stage': {', '.join(unknown)} "
                         "(known: loss, lr_factor, start_epoch)")
    start = stage.get("start_epoch")
    if not isinstance(start, int) or isinstance(start, bool) or not 1 <= start < max_epochs:
        raise ValueError(f"training config: training.second_stage.start_epoch must be an integer in 1..{max_epochs - 1} "
                         f"(before max_epochs), got {start!r}")
    weights = stage.get("loss") or {}
    if not isinstance(weights, dict) or not set(weights) <= {"energy", "forces", "stress"}:
        raise ValueError(f"training config: training.second_stage.loss takes energy, forces, stress; got {weights!r}")
    weights = {**loss, **weights}
    factor = stage.get("lr_factor", 1.0)
    for name, value in [*((f"loss.{k}", v) for k, v in weights.items()), ("lr_factor", factor)]:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (name == "lr_factor" and value == 0):
            raise ValueError(f"training config: training.second_stage.{name} must be a "
                             f"{'positive' if name == 'lr_factor' else 'non-negative'} number, got {value!r}")
    return {"start_epoch": start, "loss": {k: float(v) for k, v in weights.items()}, "lr_factor": float(factor)}


def load_config(path) -> TrainConfig:
    """Read and check a YAML training configuration. Relative data and output paths are taken
    relative to the current directory (where ``e2former train`` runs)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config not found: {path}")
    with open(path) as handle:
        values = yaml.safe_load(handle)
    return parse_config(values, source=str(path))
