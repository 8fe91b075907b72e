"""The training loop: energies, forces and stresses, AdamW, cosine schedule, EMA, checkpoints,
exact resume and data-parallel processes.

Loss of a batch ``B`` (``n_s`` atoms in structure ``s``; hats are references)::

    L = w_E mean_s ((E_s - Ê_s) / n_s)^2 + w_F mean_{atoms, xyz} (F - F̂)^2 + w_S mean_{s periodic, ij} (σ_s - σ̂_s)^2

Data parallel: with ``torchrun --nproc_per_node P``, every process takes every P-th structure of
each batch, normalises its part of the loss by the counts of the *whole* batch and the gradients
are summed across processes (``all_reduce``). The update is then exactly that of one process
on the whole batch, up to the order of floating-point sums. (The all-reduce is explicit rather
than through ``DistributedDataParallel``, whose hooks do not support the double backward that
force training needs.)

Reproducible: weights start from ``seed``, the batch order of epoch ``k`` comes from a generator
seeded by ``(seed, k)``, and the checkpoint written after every epoch holds the weights, the
optimiser, the EMA and the history. A run that is killed resumes from the last finished epoch
and reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from ase.data import atomic_numbers as symbol_to_z
from ase.data import chemical_symbols

from ..forces import ForceField
from ..graph import AtomGraph
from ..model import E2Former
from ..model_file import atomic_save, load_model, save_model, training_seconds
from ..progress import progress_bar
from .config import TrainConfig
from .data import (
    attach_neighbours,
    check_species,
    fit_e0,
    isolated_atom_e0,
    read_samples,
    species_of,
    statistics,
)
from .ema import ExponentialMovingAverage
from .metrics import ErrorTally

CHECKPOINT_FORMAT = "e2former-calc-checkpoint"
#: Settings that may change between a run and its resumption (the rest must match the checkpoint).
RESUMABLE = ("max_epochs", "max_time_minutes", "threads", "device", "tf32", "prefetch")


def training_device(name: str, local_rank: int = 0, world: int = 1) -> torch.device:
    """The device of ``training.device``: ``auto`` is this process's GPU (``cuda:LOCAL_RANK``
    under torchrun) when torch sees one, else the CPU; ``cuda`` insists on a GPU."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ValueError(f"training.device is {name!r} but torch sees no CUDA device (torch {torch.__version__}, "
                         f"CUDA build: {torch.version.cuda or 'no'}); use device: auto or cpu")
    if name.startswith("cuda:"):
        if world > 1:
            raise ValueError(f"training.device: {name} names one GPU, but {world} processes run: use device: cuda "
                             "(each process takes the GPU of its LOCAL_RANK)")
        index = int(name[5:])
    else:
        index = local_rank
    if index >= torch.cuda.device_count():
        raise ValueError(f"training.device: GPU {index} requested, torch sees {torch.cuda.device_count()}")
    return torch.device("cuda", index)


class CheckpointError(ValueError):
    """The checkpoint cannot continue this configuration."""


def cpu_name() -> str:
    """The CPU model (Linux), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


class Trainer:
    """Trains an E2Former from a :class:`~e2former_calc.training.config.TrainConfig`.

    Call :meth:`run`; it resumes from ``output/checkpoint.pt`` when one exists (``restart=True``
    starts over) and returns the path of the written potential.
    """

    def __init__(self, config: TrainConfig, restart: bool = False, progress: bool = True, log=print):
        self.config = config
        self.restart = restart
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.progress = progress and self.rank == 0
        self._log = log
        self.out = config.output_dir
        self.checkpoint_path = self.out / "checkpoint.pt"
        self.potential_path = self.out / "potential.pt"
        t = config.training
        if t.threads:
            torch.set_num_threads(int(t.threads))
        self.dtype = getattr(torch, t.dtype)
        self.device = training_device(t.device, int(os.environ.get("LOCAL_RANK", "0")), self.world)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
            torch.backends.cuda.matmul.allow_tf32 = bool(t.tf32)
            torch.backends.cudnn.allow_tf32 = bool(t.tf32)

    def log(self, message: str) -> None:
        if self.rank == 0:
            self._log(message)

    # -- data -------------------------------------------------------------------------------
    def _load_data(self) -> None:
        d = self.config.data
        self.train_parts = [(path, read_samples(path, d.energy_key, d.forces_key, d.stress_key))
                            for path in self.config.train_files]  # one after the other
        valid = read_samples(d.valid, d.energy_key, d.forces_key, d.stress_key) if d.valid else None
        if d.forces_key is not None:
            named = [(f"data.train {path}", samples) for path, samples in self.train_parts]
            for where, samples in named + [("data.valid", valid or [])]:
                missing = [k for k, s in enumerate(samples) if s.forces is None]
                if missing:
                    raise ValueError(f"{where}: frame {missing[0]} has no forces under {d.forces_key!r} "
                                     "(set forces_key: null to train on energies only)")
        train = [s for _, samples in self.train_parts for s in samples]
        if valid is None:  # a seeded fraction of the training files
            order = np.random.default_rng(self.config.training.seed).permutation(len(train))
            n_valid = max(1, int(round(d.valid_fraction * len(train))))
            valid = [train[i] for i in order[:n_valid]]
            train = [train[i] for i in sorted(order[n_valid:])]
        self.train, self.valid = train, valid

    def _e0(self, species) -> list[float]:
        e0 = self.config.data.e0
        if e0 == "least_squares":
            return fit_e0(self.train, species)
        if e0 == "isolated_atoms":
            return isolated_atom_e0(self.train, species)
        values = {symbol_to_z[str(k)] if str(k) in symbol_to_z else int(k): float(v) for k, v in e0.items()}
        missing = [chemical_symbols[z] for z in species if z not in values]
        if missing:
            raise ValueError(f"data.e0 gives no energy for {', '.join(missing)}")
        return [values[z] for z in species]

    # -- set-up -----------------------------------------------------------------------------
    def _build(self) -> None:
        self._load_data()
        species = species_of(self.train)
        check_species(self.valid, species, "data.valid")
        self.e0 = self._e0(species)
        e0_by_z = dict(zip(species, self.e0))
        cutoff = float(self.config.model_config(1.0, 1.0).cutoff)
        for path, samples in self.train_parts:  # a bad frame is named by its file and index there
            attach_neighbours(samples, cutoff, f"data.train {path}")
        if self.config.data.valid:  # else the validation frames are some of those just done
            attach_neighbours(self.valid, cutoff, "data.valid")
        self.stats = statistics(self.train, e0_by_z)
        self.model_config = self.config.model_config(self.stats["rms_force"] or 1.0, self.stats["mean_neighbours"])
        torch.manual_seed(self.config.training.seed)
        self.model = E2Former(self.model_config, species, self.e0).to(device=self.device, dtype=self.dtype)
        self.initial = self._initial_weights(species) if self.config.init_from is not None else None
        self.forcefield = ForceField(self.model)
        if self.world > 1:
            for p in self.model.parameters():
                dist.broadcast(p.data, src=0)
        self.index = {z: k for k, z in enumerate(species)}
        for s in self.train + self.valid:
            s.species = np.array([self.index[int(z)] for z in s.numbers])
        t = self.config.training
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        self.ema = ExponentialMovingAverage(self.model, t.ema_decay)
        self.steps_per_epoch = math.ceil(len(self.train) / t.batch_size)
        self.epoch = 0
        self.elapsed = 0.0
        self.history: list[dict] = []
        self.best = {"loss": float("inf"), "epoch": -1, "ema": None}
        self.finished = ""

    def _initial_weights(self, species) -> dict:
        """Load the weights of ``model.init_from`` into the new model (its E0s are this run's, from
        ``data.e0``); returns what the provenance records of that file."""
        path = self.config.init_from
        start, metadata = load_model(path, dtype=torch.float64)
        if list(start.atomic_numbers) != list(species):
            raise ValueError(f"model.init_from: {path} is a model of {', '.join(chemical_symbols[z] for z in start.atomic_numbers)}, "
                             f"the training data hold {', '.join(chemical_symbols[z] for z in species)}")
        with torch.no_grad():
            for name, p in self.model.state_dict().items():
                p.copy_(start.state_dict()[name])
        provenance = metadata.get("provenance", {})
        behind = training_seconds(provenance)  # the start's run and, if it was fine-tuned too, its start's
        return {"path": str(path), "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "name": provenance.get("name", ""), "train": provenance.get("train", ""),
                "training_time_s": "" if math.isnan(behind) else f"{behind:.1f}"}

    def learning_rate(self, step: int) -> float:
        """Linear warm-up, then a cosine from ``lr`` to ``lr * min_lr_factor`` at ``max_epochs``;
        times ``second_stage.lr_factor`` from its start epoch."""
        rate = self._learning_rate(step, self.config.training.max_epochs)
        stage = self.config.training.second_stage
        if stage is not None and step >= stage["start_epoch"] * self.steps_per_epoch:
            rate *= stage["lr_factor"]
        return rate

    def loss_weights(self, epoch: int) -> dict:
        """The loss weights of epoch ``epoch`` (0-based): ``training.loss``, or from
        ``second_stage.start_epoch`` on, the second stage's."""
        stage = self.config.training.second_stage
        if stage is not None and epoch >= stage["start_epoch"]:
            return stage["loss"]
        return self.config.training.loss

    def _learning_rate(self, step: int, max_epochs: int) -> float:
        t = self.config.training
        warmup = t.warmup_epochs * self.steps_per_epoch
        total = max_epochs * self.steps_per_epoch
        if step < warmup:
            return t.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(total - warmup, 1))
        return t.lr * (t.min_lr_factor + (1 - t.min_lr_factor) * 0.5 * (1 + math.cos(math.pi * progress)))

    # -- one batch --------------------------------------------------------------------------
    def _prepare(self, samples) -> "PreparedBatch":
        """The batch's graph and labels as tensors on the training device (what a worker thread
        builds for the next batch while this one trains)."""
        graph = AtomGraph.from_arrays([s.species for s in samples], [s.positions for s in samples],
                                      [s.cell for s in samples], [s.pbc for s in samples],
                                      [s.neighbours for s in samples], self.device)
        f64 = dict(dtype=torch.float64, device=self.device)
        labelled = [k for k, s in enumerate(samples) if s.stress is not None]
        return PreparedBatch(
            samples=samples, graph=graph, energy=torch.tensor([s.energy for s in samples], **f64),
            forces=(torch.as_tensor(np.concatenate([s.forces for s in samples]), **f64)
                    if self.config.data.forces_key is not None else None),
            stress_rows=labelled,
            stress=torch.as_tensor(np.stack([samples[k].stress for k in labelled]), **f64) if labelled else None)

    def _batch_outputs(self, samples, create_graph: bool):
        batch = samples if isinstance(samples, PreparedBatch) else self._prepare(samples)
        want_forces = self.config.data.forces_key is not None
        out = self.forcefield(batch.graph, forces=want_forces, stress=bool(batch.stress_rows), create_graph=create_graph)
        return batch.graph, out

    def _loss(self, samples, counts, weights: dict | None = None) -> torch.Tensor:
        """This process's share of the loss of a batch (its samples, or their
        :class:`PreparedBatch`) whose totals are ``counts`` (loss weights ``weights``, default
        ``training.loss``)."""
        w = self.config.training.loss if weights is None else weights
        batch = samples if isinstance(samples, PreparedBatch) else self._prepare(samples)
        graph, out = self._batch_outputs(batch, create_graph=True)
        n_atoms = graph.atoms_per_structure().to(torch.float64)
        loss = w["energy"] * (((out["energy"] - batch.energy) / n_atoms) ** 2).sum() / counts["structures"]
        if "forces" in out and w["forces"] > 0:
            loss = loss + w["forces"] * ((out["forces"] - batch.forces) ** 2).sum() / (3 * counts["atoms"])
        if "stress" in out and w["stress"] > 0 and batch.stress_rows:
            sigma = out["stress"][batch.stress_rows]
            loss = loss + w["stress"] * ((sigma - batch.stress) ** 2).sum() / (9 * counts["stress"])
        return loss

    @property
    def prefetch(self) -> bool:
        """Whether the next batch is prepared on a worker thread: ``training.prefetch``, where
        ``auto`` means on a GPU (on a CPU the thread would only compete for the same cores)."""
        setting = self.config.training.prefetch
        return self.device.type == "cuda" if setting == "auto" else bool(setting)

    def _agreed(self, flag: bool) -> bool:
        """Rank 0's value of ``flag`` on every process (each has its own clock: one decides)."""
        if self.world == 1:
            return flag
        value = torch.tensor([float(flag)], dtype=torch.float64, device=self.device)
        dist.broadcast(value, src=0)
        return bool(value.item())

    def _train_epoch(self, epoch: int, deadline: float | None) -> tuple[float, bool]:
        t = self.config.training
        generator = torch.Generator().manual_seed(t.seed * 1_000_003 + epoch)
        order = torch.randperm(len(self.train), generator=generator).tolist()
        batches = [order[k : k + t.batch_size] for k in range(0, len(order), t.batch_size)]
        bar = progress_bar(len(batches), label=f"epoch {epoch + 1}", unit="batches") if self.progress else None
        self.model.train()
        total_loss, timed_out = 0.0, False
        shares = [[self.train[i] for i in indices][self.rank :: self.world] for indices in batches]
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="e2former-batches") if self.prefetch else None

        def submit(k):  # batch k's share, prepared on the worker thread (None: prepared in the step)
            return pool.submit(self._prepare, shares[k]) if pool is not None and shares[k] else None

        upcoming = submit(0)
        try:
            for k, indices in enumerate(batches):
                step = epoch * self.steps_per_epoch + k
                batch = [self.train[i] for i in indices]
                counts = {"structures": len(batch), "atoms": sum(s.n_atoms for s in batch),
                          "stress": sum(s.stress is not None for s in batch)}
                mine = upcoming.result() if upcoming is not None else shares[k]
                upcoming = submit(k + 1) if k + 1 < len(batches) else None
                loss, timed_out = self._train_step(mine, counts, epoch, step, deadline)
                total_loss += loss
                if bar is not None:
                    bar.set_postfix_str(f"loss {total_loss / (k + 1):.4g}", refresh=False)
                    bar.update(1)
                if timed_out:
                    break
        finally:
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)
        if bar is not None:
            bar.close()
        return total_loss / (k + 1), timed_out

    def _train_step(self, mine, counts: dict, epoch: int, step: int, deadline: float | None) -> tuple[float, bool]:
        """One optimiser step on this process's share ``mine`` (samples or a PreparedBatch, may be
        empty) of a batch with totals ``counts``: the batch's loss, and whether the time limit is reached."""
        t = self.config.training
        self.optimizer.zero_grad(set_to_none=False)
        loss = (self._loss(mine, counts, self.loss_weights(epoch)) if mine
                else sum(0.0 * p.sum() for p in self.model.parameters()))
        loss.backward()
        if self.world > 1:
            for p in self.model.parameters():
                dist.all_reduce(p.grad)
            loss_value = loss.detach().clone()
            dist.all_reduce(loss_value)
        else:
            loss_value = loss.detach()
        if not math.isfinite(float(loss_value)):  # before the step: the weights stay as they were
            raise FloatingPointError(f"epoch {epoch + 1}, batch {step - epoch * self.steps_per_epoch}: the loss is "
                                     f"{float(loss_value)}; lower training.lr or check the data (the last checkpoint "
                                     "is intact)")
        if t.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.clip_grad_norm)
        for group in self.optimizer.param_groups:
            group["lr"] = self.learning_rate(step)
        self.optimizer.step()
        self.ema.update(self.model)
        return float(loss_value), deadline is not None and self._agreed(time.monotonic() > deadline)

    # -- validation -------------------------------------------------------------------------
    def evaluate(self, samples, batch_size: int | None = None) -> ErrorTally:
        """Errors of the current model on ``samples`` (this process's share; summed across
        processes when distributed)."""
        tally = ErrorTally()
        batch_size = batch_size or self.config.training.batch_size
        self.model.eval()
        mine = samples[self.rank :: self.world]
        for k in range(0, len(mine), batch_size):
            batch = mine[k : k + batch_size]
            _, out = self._batch_outputs(batch, create_graph=False)
            energies = out["energy"].detach().cpu().numpy()
            forces = out["forces"].detach().cpu().numpy() if "forces" in out else None
            start = 0
            for j, s in enumerate(batch):
                force_error = forces[start : start + s.n_atoms] - s.forces if forces is not None and s.forces is not None else None
                stress_error = None
                if s.stress is not None and "stress" in out:
                    stress_error = out["stress"][j].detach().cpu().numpy() - s.stress
                tally.add(s.config_type, s.n_atoms, float(energies[j] - s.energy), force_error, stress_error)
                start += s.n_atoms
        if self.world > 1:
            keys = sorted({s.config_type for s in samples}) + ["all"]
            values = torch.as_tensor(tally.vector(keys), dtype=torch.float64, device=self.device)
            dist.all_reduce(values)
            tally.load_vector(keys, values.cpu().numpy())
        return tally

    def _validation_loss(self, m: dict, weights: dict | None = None) -> float:
        """A scalar for choosing the best epoch: the loss weights applied to RMSEs (eV units)."""
        w = self.config.training.loss if weights is None else weights
        value = w["energy"] * (m["energy_per_atom_rmse"] / 1000) ** 2
        if "forces_rmse" in m:
            value += w["forces"] * (m["forces_rmse"] / 1000) ** 2
        if "stress_rmse" in m:
            value += w["stress"] * (m["stress_rmse"] / 1000) ** 2
        return value

    # -- checkpoints ------------------------------------------------------------------------
    def _fingerprint(self) -> dict:
        """What a checkpoint must share with the run that continues it: the settings (but those in
        RESUMABLE) and what the data determined (species, E0s, the resolved hyper-parameters), so
        that regenerated data files cannot silently change the function being trained."""
        values = self.config.to_dict()
        values["training"] = {k: v for k, v in values["training"].items() if k not in RESUMABLE}
        values.pop("output")
        values["derived"] = {"species": list(self.model.atomic_numbers), "e0": [round(e, 9) for e in self.e0],
                             "model": {k: (round(v, 9) if isinstance(v, float) else v)
                                       for k, v in self.model_config.to_dict().items()}}
        if self.initial:  # the start's weights, not only its name
            values["derived"]["init_sha256"] = self.initial["sha256"]
        return values

    def _save_checkpoint(self) -> None:
        content = {
            "format": CHECKPOINT_FORMAT, "format_version": 1, "fingerprint": self._fingerprint(),
            "epoch": self.epoch, "elapsed": self.elapsed, "history": self.history, "finished": self.finished,
            "max_epochs": self.config.training.max_epochs,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(), "ema": self.ema.state_dict(),
            "best": {"loss": self.best["loss"], "epoch": self.best["epoch"], "ema": self.best["ema"]},
        }
        atomic_save(content, self.checkpoint_path)

    def _load_checkpoint(self) -> None:
        try:
            content = torch.load(self.checkpoint_path, map_location="cpu", weights_only=True)
        except Exception as error:  # noqa: BLE001 - a torn or foreign file: say so
            raise CheckpointError(f"{self.checkpoint_path} cannot be read ({type(error).__name__}: {error}); "
                                  "delete it or use --restart") from None
        if not isinstance(content, dict) or content.get("format") != CHECKPOINT_FORMAT:
            raise CheckpointError(f"{self.checkpoint_path} is not an e2former-calc training checkpoint")
        self._check_second_stage(content["fingerprint"], int(content["epoch"]))
        if _without_stage(content["fingerprint"]) != _without_stage(self._fingerprint()):
            old, new = _without_stage(content["fingerprint"]), _without_stage(self._fingerprint())
            changed = sorted(f"{section}.{k}" if isinstance(new.get(section), dict) else section
                             for section in set(old) | set(new)
                             for k in ((set(old.get(section, {})) | set(new.get(section, {})))
                                       if isinstance(new.get(section), dict) else [None])
                             if (old.get(section, {}).get(k) if k else old.get(section))
                             != (new.get(section, {}).get(k) if k else new.get(section)))
            raise CheckpointError(f"{self.checkpoint_path} was made with other settings or data ({', '.join(changed)}); "
                                  f"only {', '.join('training.' + r for r in RESUMABLE)} may change on resume. "
                                  "Use another output folder or --restart")
        content = _without_old_readout_bias(content, [name for name, _ in self.model.named_parameters()])
        self.model.load_state_dict(content["model"])
        self.optimizer.load_state_dict(content["optimizer"])
        self.ema.load_state_dict(content["ema"])
        self.epoch, self.elapsed = int(content["epoch"]), float(content["elapsed"])
        self.history = list(content["history"])  # "finished" is decided anew: the limits may have grown
        self.best = dict(content["best"])
        old_epochs = int(content.get("max_epochs", self.config.training.max_epochs))
        if old_epochs != self.config.training.max_epochs:
            step = self.epoch * self.steps_per_epoch
            before = self._learning_rate(step, old_epochs)
            self.log(f"note: max_epochs changed from {old_epochs} to {self.config.training.max_epochs}: the cosine "
                     f"schedule is rescaled, the learning rate goes from {before:.3g} to {self.learning_rate(step):.3g}")

    def _check_second_stage(self, fingerprint: dict, epochs_done: int) -> None:
        """A second stage may be added, moved or changed on resume while neither the checkpoint's
        nor the new one has begun (the epochs done are the same under both); not after."""
        before = fingerprint.get("training", {}).get("second_stage")
        after = self.config.training.second_stage
        if before == after:
            return
        begun = min(stage["start_epoch"] for stage in (before, after) if stage is not None)
        if epochs_done > begun:  # stage epochs are those after `start_epoch` epochs done
            raise CheckpointError(f"{self.checkpoint_path}: training.second_stage changed ({before} -> {after}), but "
                                  f"one of them began after epoch {begun} and {epochs_done} epochs are done; keep it, "
                                  "use another output folder or --restart")
        self.log(f"note: training.second_stage changed from {before} to {after} before either began "
                 f"({epochs_done} epochs done)")

    def _write_log(self) -> None:
        if not self.history:
            return
        fields = list(self.history[0])
        for row in self.history:
            fields += [k for k in row if k not in fields]
        path = self.out / "log.csv"
        with open(path.with_suffix(".tmp"), "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(self.history)
        os.replace(path.with_suffix(".tmp"), path)

    def _write_potential(self) -> Path:
        final = copy.deepcopy(self.model)
        with torch.no_grad():
            for name, p in final.named_parameters():
                p.copy_(self.best["ema"][name])
        best_row = next((r for r in self.history if r["epoch"] == self.best["epoch"]), {})
        provenance = {
            "name": self.config.name, "train": self.config.data.train, "valid": self.config.data.valid or "fraction of train",
            "epochs": self.epoch, "best_epoch": self.best["epoch"], "training_time_s": f"{self.elapsed:.1f}",
            "processes": self.world, "hardware": (f"{torch.cuda.get_device_name(self.device)} x {self.world} processes"
                                               if self.device.type == "cuda" else
                                               f"{cpu_name()}, {torch.get_num_threads()} threads x {self.world} processes"),
            "validation": {k: v for k, v in best_row.items() if k.startswith("valid_")},
            "config": self.config.to_dict(),
        }
        if self.initial:  # fine-tuned: the time and data of the start count too
            provenance["init_from"] = self.initial
        return save_model(final, self.potential_path, provenance)

    # -- the run ----------------------------------------------------------------------------
    def run(self) -> Path:
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")
        self.out.mkdir(parents=True, exist_ok=True)
        self._build()
        if self.checkpoint_path.exists() and not self.restart:
            self._load_checkpoint()
            self.log(f"resuming from {self.checkpoint_path}: {self.epoch} epochs done, {self.elapsed:.0f} s trained")
        else:
            self.log(f"training {self.config.name}: {len(self.train)} training and {len(self.valid)} validation "
                     f"structures, species {', '.join(chemical_symbols[z] for z in self.model.atomic_numbers)}, "
                     f"{sum(p.numel() for p in self.model.parameters())} parameters, {self.config.training.dtype}, "
                     f"{self.world} process(es); RMS force {self.stats['rms_force']:.3f} eV/Å, "
                     f"{self.stats['mean_neighbours']:.1f} neighbours per atom")
        t = self.config.training
        budget = None if t.max_time_minutes is None else 60 * t.max_time_minutes
        while self.epoch < t.max_epochs and not self.finished:
            if budget is not None and self._agreed(self.elapsed >= budget):
                self.finished = "time limit"
                break
            stage = t.second_stage
            if stage is not None and self.epoch == stage["start_epoch"]:
                # another objective: the best epoch is chosen among the second stage's epochs
                self.best = {"loss": float("inf"), "epoch": -1, "ema": None}
                self.log(f"second stage from epoch {self.epoch + 1}: loss weights {stage['loss']}, "
                         f"learning rate x {stage['lr_factor']:g}")
            weights = self.loss_weights(self.epoch)
            start = time.monotonic()
            deadline = None if budget is None else start + budget - self.elapsed
            train_loss, timed_out = self._train_epoch(self.epoch, deadline)
            live = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self.ema.copy_to(self.model)
            metrics = self.evaluate(self.valid).metrics()
            self.model.load_state_dict(live)
            self.elapsed += time.monotonic() - start
            self.epoch += 1
            row = {"epoch": self.epoch, "partial": int(timed_out), "time_s": round(self.elapsed, 1),
                   "lr": self.learning_rate(self.epoch * self.steps_per_epoch - 1), "train_loss": train_loss}
            row.update({f"valid_{k}": v for k, v in metrics.items() if k != "frames"})
            self.history.append(row)
            value = self._validation_loss(metrics, weights)
            if not math.isfinite(value):
                raise FloatingPointError(f"epoch {self.epoch}: the validation errors are not finite ({metrics}); "
                                         "check the validation structures (the last checkpoint is intact)")
            if value < self.best["loss"]:
                self.best = {"loss": value, "epoch": self.epoch, "ema": {k: v.clone() for k, v in self.ema.shadow.items()}}
            if timed_out:
                self.finished = "time limit"
            elif self.epoch >= t.max_epochs:
                self.finished = "max_epochs"
            if self.rank == 0:
                self._save_checkpoint()
                self._write_log()
            self.log(f"epoch {self.epoch}: loss {train_loss:.4g}, valid E {metrics['energy_per_atom_mae']:.2f} meV/atom, "
                     f"F {metrics.get('forces_mae', float('nan')):.1f} meV/Å"
                     + (f", σ {metrics['stress_mae']:.3f} meV/Å³" if "stress_mae" in metrics else "")
                     + f" ({self.elapsed:.0f} s)")
        path = self.potential_path
        if self.best["ema"] is None:
            raise ValueError("no epoch was trained (the time limit was already reached?): no potential written")
        if self.rank == 0:
            path = self._write_potential()
            self.log(f"finished ({self.finished or 'max_epochs'}) after {self.epoch} epochs, {self.elapsed:.0f} s; "
                     f"best validation at epoch {self.best['epoch']}; wrote {path}")
        if self.world > 1:
            dist.barrier()
        return path


def train(config: TrainConfig, restart: bool = False, progress: bool = True) -> Path:
    """Train as configured (resuming when a checkpoint exists); the path of the potential file."""
    return Trainer(config, restart=restart, progress=progress).run()


@dataclasses.dataclass
class PreparedBatch:
    """A batch (one process's share) ready for the loss: its graph and labels on the device.

    ``energy`` ``[S]`` eV, ``forces`` ``[N, 3]`` eV/Å (None without force labels), ``stress``
    ``[len(stress_rows), 3, 3]`` eV/Å³ of the structures ``stress_rows`` (None if none)."""

    samples: list
    graph: AtomGraph
    energy: torch.Tensor
    forces: torch.Tensor | None
    stress_rows: list
    stress: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.samples)


def _without_stage(fingerprint: dict) -> dict:
    """A checkpoint fingerprint without ``training.second_stage`` (checked on its own) and
    without the path of ``model.init_from`` (the start's SHA-256 is compared: the file may move)."""
    training = {k: v for k, v in fingerprint.get("training", {}).items() if k != "second_stage"}
    model = {k: v for k, v in fingerprint.get("model", {}).items() if k != "init_from"}
    return {**fingerprint, "training": training, "model": model}


def _without_old_readout_bias(content: dict, parameter_names: list[str]) -> dict:
    """A checkpoint of a model with the readout's output bias (before model-file format 3) as
    one of the present model, which lacks it: the bias cancelled exactly in the energies, so
    dropping it, its EMA copy and its optimizer state resumes the same training."""
    from ..model_file import OLD_READOUT_BIAS

    if OLD_READOUT_BIAS not in content["model"] or OLD_READOUT_BIAS in parameter_names:
        return content
    known = set(parameter_names) | {OLD_READOUT_BIAS}
    old_names = [name for name in content["model"] if name in known]  # the old parameter order
    index = old_names.index(OLD_READOUT_BIAS)
    optimizer = dict(content["optimizer"])
    renumber = {old: old - (old > index) for old in range(len(old_names)) if old != index}
    optimizer["state"] = {renumber[k]: v for k, v in optimizer["state"].items() if k != index}
    optimizer["param_groups"] = [{**g, "params": [renumber[p] for p in g["params"] if p != index]}
                                 for g in optimizer["param_groups"]]
    ema = dict(content["ema"])
    ema["shadow"] = {k: v for k, v in ema["shadow"].items() if k != OLD_READOUT_BIAS}
    best = dict(content["best"])
    if isinstance(best.get("ema"), dict):
        best["ema"] = {k: v for k, v in best["ema"].items() if k != OLD_READOUT_BIAS}
    model = {k: v for k, v in content["model"].items() if k != OLD_READOUT_BIAS}
    return {**content, "model": model, "optimizer": optimizer, "ema": ema, "best": best}
