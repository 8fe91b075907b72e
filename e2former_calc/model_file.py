"""Potential files: one file per potential, loaded without executing code.

A file is ``torch.save`` of a plain dictionary of numbers, strings, lists and tensors::

    format          "e2former-calc-potential"
    format_version  3
    config          E2FormerConfig.to_dict()
    atomic_numbers  species of the model, in order
    e0              energy of an isolated atom of each species (eV)
    cutoff          Å (the same as config["cutoff"], for readers that look only at this)
    dtype           "float32" or "float64": the precision the weights were trained in
    provenance      free-form strings: data, training, software versions, date
    state_dict      the weights

:func:`load_model` reads it with ``torch.load(..., weights_only=True)``, which refuses pickled
code; a truncated, corrupted or foreign file raises :class:`ModelFileError` saying so.

Older formats are read too, every energy staying what it was (to rounding):

- format 2 has an output bias in the readout (``readout.2.bias``), which cancels exactly in
  ``R(h_i) - R(h_iso)``; format 3 dropped it, and :func:`load_model` drops it from older files;
- format 1 (before the readout was made relative to the isolated atom, so that a lone atom gets
  exactly E0): its models computed ``R(h_i) * energy_scale + e0``, which is the present model
  with ``e0 + energy_scale * R(h_iso)`` (the old ``R`` with its bias); :func:`load_model`
  converts the E0s so, in float64.
"""

from __future__ import annotations

import ast
import datetime
import os
import tempfile
from pathlib import Path

import torch

from . import __version__
from .model import E2Former, E2FormerConfig
from .model.repulsion import LEGACY_SWITCH_OFF

FORMAT = "e2former-calc-potential"
FORMAT_VERSION = 3
#: the readout's output bias of format 1 and 2 files: it has no effect in format 2 (it cancels)
OLD_READOUT_BIAS = "readout.2.bias"


class ModelFileError(ValueError):
    """The file is not a readable e2former-calc potential."""


def atomic_write(path, write) -> Path:
    """``write(temporary_path)`` to a temporary file beside ``path``, then rename: a crash (even
    ``kill -9``) leaves either the old file or the new one, never a torn one. The file gets the
    usual mode (``0666`` less the umask), not ``mkstemp``'s ``0600``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(temporary, 0o666 & ~mask)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def atomic_save(content, path) -> Path:
    """``torch.save`` of ``content`` to ``path`` through :func:`atomic_write`."""
    return atomic_write(path, lambda temporary: torch.save(content, temporary))


def save_model(model: E2Former, path, provenance: dict | None = None) -> Path:
    """Write ``model`` to ``path`` atomically (a crash never leaves a half-written file)."""
    path = Path(path)
    info = {"software": f"e2former-calc {__version__}, torch {torch.__version__}", "saved": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    info.update({str(k): str(v) for k, v in (provenance or {}).items()})
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": model.config.to_dict(),
        "atomic_numbers": list(model.atomic_numbers),
        "e0": list(model.e0),
        "cutoff": float(model.config.cutoff),
        "dtype": str(model.dtype).replace("torch.", ""),
        "provenance": info,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    return atomic_save(content, path)


def read_model_file(path) -> dict:
    """The checked contents of a potential file (no code is executed)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"potential file not found: {path}")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, code in the pickle, ...
        raise ModelFileError(f"{path} is not a readable e2former-calc potential file ({type(error).__name__}: {error})") from None
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ModelFileError(f"{path} is not an e2former-calc potential file (no '{FORMAT}' format tag)")
    version = content.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelFileError(f"{path} has format version {version!r}; this e2former-calc reads versions up to {FORMAT_VERSION}")
    missing = [k for k in ("config", "atomic_numbers", "e0", "cutoff", "state_dict", "dtype") if k not in content]
    if missing:
        raise ModelFileError(f"{path} lacks the entries {', '.join(missing)}")
    if content["dtype"] not in ("float32", "float64"):
        raise ModelFileError(f"{path} states dtype {content['dtype']!r}; expected float32 or float64")
    config = content["config"]
    if not isinstance(config, dict) or config.get("cutoff") != content["cutoff"]:
        raise ModelFileError(f"{path}: the cutoff {content['cutoff']!r} differs from the hyper-parameters' one")
    state = content["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelFileError(f"{path}: the weights are not a dictionary of tensors")
    damaged = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if damaged or not all(isinstance(e, (int, float)) and e == e and abs(e) != float("inf") for e in content["e0"]):
        raise ModelFileError(f"{path} holds non-finite numbers ({', '.join(damaged) or 'E0'})")
    return content


def stored_hyperparameters(content: dict) -> dict:
    """The ``E2FormerConfig`` values of a file's content (from :func:`read_model_file`), with what
    files written before a setting existed used for it: ``zbl_switch_off`` 1.0."""
    values = dict(content["config"])
    values.setdefault("zbl_switch_off", LEGACY_SWITCH_OFF)
    return values


def training_seconds(provenance: dict) -> float:
    """Wall-clock seconds of training behind a potential file's weights: its own run's, plus
    those behind the file a fine-tuning started from (``provenance["init_from"]``, a dictionary the
    file stores as text: read with :func:`ast.literal_eval`, literals only; it records the whole
    time behind the start, so a chain of fine-tunings counts every run); NaN if unrecorded."""
    own = float(provenance.get("training_time_s", "nan"))
    if "init_from" not in provenance:
        return own
    start = ast.literal_eval(provenance["init_from"])
    return own + float(start.get("training_time_s") or 0)


def load_model(path, device="cpu", dtype: torch.dtype | None = None) -> tuple[E2Former, dict]:
    """The model in ``path`` on ``device`` in ``dtype`` (default: the file's), and the file's metadata."""
    content = read_model_file(path)
    try:
        config = E2FormerConfig.from_dict(stored_hyperparameters(content))
        state = dict(content["state_dict"])
        stored = next((v.dtype for v in state.values() if v.is_floating_point()), torch.float64)
        # in the stored precision before loading: a float64 file's weights are not rounded to float32
        model = E2Former(config, content["atomic_numbers"], content["e0"]).to(stored)
        bias = state.pop(OLD_READOUT_BIAS, None) if content["format_version"] < 3 else None
        model.load_state_dict(state)
    except (TypeError, ValueError, RuntimeError) as error:
        raise ModelFileError(f"{path}: the weights do not fit the stated hyper-parameters ({error})") from None
    if content["format_version"] == 1:
        model = _isolated_atom_e0(model.double(), 0.0 if bias is None else float(bias.double().sum()))
    dtype = dtype or {"float32": torch.float32, "float64": torch.float64}[content["dtype"]]
    model = model.to(device=device, dtype=dtype).eval()
    metadata = {k: v for k, v in content.items() if k != "state_dict"}
    metadata["e0"] = list(model.e0)
    return model, metadata


def _isolated_atom_e0(model: E2Former, readout_bias: float) -> E2Former:
    """A format-1 model as the present one: ``e0 <- e0 + energy_scale * R(h_iso)`` (float64),
    ``R`` with the file's output bias ``readout_bias`` (which the present readout lacks)."""
    with torch.no_grad():
        offsets = (model.isolated_atom_readout().double() + readout_bias) * model.config.energy_scale
    model.e0 = tuple(float(e) + float(o) for e, o in zip(model.e0, offsets))
    return model
