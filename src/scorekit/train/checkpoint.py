"""Checkpoints: safetensors + JSON folders, written atomically, loaded with every check.

A run folder holds::

    config.json                          everything to rebuild model, process, loss and data
    metrics.jsonl                        one line of training metrics per logged step
    checkpoints/step-0000500/            one folder per checkpoint:
        config.json                        the run's config.json
        model.safetensors                  the trained weights
        ema.safetensors                    the moving average of the weights (sample from these)
        trainer.safetensors                optimiser tensors, random-generator states, data order
        trainer.json                       step, data epoch and position, optimiser settings, versions
    latest                               the name of the newest complete checkpoint

Nothing is pickled: tensors are stored with ``safetensors`` and everything else as JSON, so
loading a checkpoint from anywhere runs no code from it.

Atomic saving (:func:`save_checkpoint`): the checkpoint is written into a hidden temporary folder
beside its final place, every file and the folder are flushed to disk (``fsync``), the folder is
renamed into place (``os.rename``, atomic on POSIX), and only then is ``latest`` replaced (a
temporary file + ``os.replace``). A process killed at any moment therefore leaves either the
previous ``latest`` or the new one, each naming a complete checkpoint; half-written folders keep
their hidden temporary names, are never taken for checkpoints and are removed by the next save.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import FileWriteError, ScorekitError, write_failure
from ..plotting import fsync_path, write_json  # noqa: F401  (the file helpers checkpoints use)

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
EMA_FILE = "ema.safetensors"
TRAINER_TENSORS_FILE = "trainer.safetensors"
TRAINER_JSON_FILE = "trainer.json"
CHECKPOINT_FILES = (CONFIG_FILE, MODEL_FILE, EMA_FILE, TRAINER_TENSORS_FILE, TRAINER_JSON_FILE)
CONFIG_FORMAT = "scorekit.run"
#: the newest layout of config.json and trainer.json this scorekit writes (and reads: all up to it)
FORMAT_VERSION = 1

_STEP_DIR = re.compile(r"^step-(\d{7,})$")


def checkpoint_name(step: int) -> str:
    """The folder name of the checkpoint after ``step`` optimiser steps: ``step-0000500``."""
    return f"step-{int(step):07d}"


# --- low-level file helpers -----------------------------------------------------------------------

def read_json(path: str, what: str):
    """Parse a JSON file; a missing or corrupt file raises :class:`ScorekitError` naming it."""
    try:
        with open(path, encoding="utf-8") as fh:
            return json.load(fh)
    except FileNotFoundError:
        raise ScorekitError(f"{what} {path} is missing") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ScorekitError(f"{what} {path} is corrupt (not valid JSON: {err}); restore it or use "
                            f"another checkpoint") from None
    except OSError as err:
        raise ScorekitError(f"cannot read {what} {path}: {err.strerror or err}") from None


def save_tensors(tensors: dict, path: str, metadata: dict | None = None) -> None:
    """Write tensors with safetensors (contiguous CPU copies) and flush the file to disk."""
    from safetensors.torch import save_file

    flat = {k: v.detach().to("cpu").contiguous().clone() for k, v in tensors.items()}
    save_file(flat, path, metadata={k: str(v) for k, v in (metadata or {}).items()})
    fsync_path(path)


def load_tensors(path: str, what: str) -> dict:
    """Read a safetensors file (no code is run); errors name the file."""
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise ScorekitError(f"{what} {path} is missing; the checkpoint is incomplete")
    try:
        return load_file(path, device="cpu")
    except Exception as err:  # safetensors raises its own error types for corrupt files
        raise ScorekitError(f"{what} {path} cannot be read ({type(err).__name__}: "
                            f"{' '.join(str(err).split())}); the file is corrupt or not a "
                            f"safetensors file") from None


# --- writing ----------------------------------------------------------------------------------------

def _trash(path: str) -> None:
    """Remove a folder safely: rename it to a hidden name first (atomic), then delete it."""
    parent, name = os.path.split(path)
    hidden = os.path.join(parent, f".trash-{name}-{os.getpid()}")
    with contextlib.suppress(OSError):
        os.rename(path, hidden)
        shutil.rmtree(hidden, ignore_errors=True)


def clean_partial(run_dir: str) -> list[str]:
    """Delete hidden temporary folders left by interrupted saves; returns their names."""
    folder = os.path.join(run_dir, CHECKPOINTS_DIR)
    removed = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith((".tmp-", ".trash-", ".old-")):
                shutil.rmtree(os.path.join(folder, name), ignore_errors=True)
                removed.append(name)
    return removed


def write_latest(run_dir: str, name: str) -> None:
    """Point ``run_dir/latest`` at ``checkpoints/<name>`` atomically (temp file + os.replace)."""
    target = os.path.join(run_dir, LATEST_FILE)
    tmp = os.path.join(run_dir, f".{LATEST_FILE}.{os.getpid()}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(f"{CHECKPOINTS_DIR}/{name}\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise
    fsync_path(run_dir)


def list_checkpoints(run_dir: str) -> list[tuple[int, str]]:
    """``(step, folder)`` of every checkpoint folder in ``run_dir/checkpoints``, by step.

    Only folders named ``step-NNNNNNN`` that hold all five files count; hidden temporary
    folders of interrupted saves never do.
    """
    folder = os.path.join(run_dir, CHECKPOINTS_DIR)
    found = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = _STEP_DIR.match(name)
            path = os.path.join(folder, name)
            if m and all(os.path.isfile(os.path.join(path, f)) for f in CHECKPOINT_FILES):
                found.append((int(m.group(1)), path))
    return sorted(found)


def save_checkpoint(run_dir: str, step: int, *, config: dict, model_state: dict, ema_state: dict,
                    trainer_tensors: dict, trainer_info: dict, keep: int | None = None,
                    metadata: dict | None = None) -> str:
    """Write the checkpoint after ``step`` steps into ``run_dir/checkpoints/`` atomically.

    Args:
        run_dir: the run folder.
        step: optimiser steps taken; the folder is ``checkpoints/step-NNNNNNN``.
        config: the run's configuration (written as ``config.json``).
        model_state, ema_state: ``state_dict`` of the network and of its moving average.
        trainer_tensors: every other tensor needed to resume (optimiser, generator states).
        trainer_info: JSON-serialisable resume information (step, data position, ...).
        keep: keep only the newest ``keep`` checkpoints (``None``: keep all).
        metadata: strings stored in the header of each safetensors file.

    Returns the checkpoint folder. See the module docstring for why a kill at any moment is safe.
    A failed write (a full disk, a file-size limit, no permission) raises
    :class:`scorekit.errors.FileWriteError` naming the folder and the cause; the temporary
    folder is removed and ``latest`` still names the previous checkpoint.
    """
    folder = os.path.join(run_dir, CHECKPOINTS_DIR)
    name = checkpoint_name(step)
    try:
        final = _write_checkpoint(run_dir, folder, name, config=config, model_state=model_state,
                                  ema_state=ema_state, trainer_tensors=trainer_tensors,
                                  trainer_info=trainer_info, metadata=metadata)
    except Exception as err:
        cause = write_failure(err)
        if cause is None:
            raise
        previous = latest_checkpoint(run_dir)
        kept = (f"the previous checkpoint {os.path.basename(previous)} is intact" if previous
                else "no earlier checkpoint exists")
        raise FileWriteError(f"cannot write checkpoint {name} into {folder}: {cause}; {kept}") from None
    if keep is not None:
        if int(keep) < 1:
            raise ScorekitError(f"keep must be at least 1 checkpoint, got {keep}")
        for _, path in list_checkpoints(run_dir)[:-int(keep)]:
            if os.path.abspath(path) != os.path.abspath(final):
                _trash(path)
    return final


def _write_checkpoint(run_dir: str, folder: str, name: str, *, config, model_state, ema_state,
                      trainer_tensors, trainer_info, metadata) -> str:
    """The atomic protocol of :func:`save_checkpoint`: a hidden temporary folder, flushed, renamed
    into place, then ``latest``."""
    os.makedirs(folder, exist_ok=True)
    clean_partial(run_dir)
    final = os.path.join(folder, name)
    tmp = os.path.join(folder, f".tmp-{name}-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        write_json(os.path.join(tmp, CONFIG_FILE), config)
        save_tensors(model_state, os.path.join(tmp, MODEL_FILE), metadata)
        save_tensors(ema_state, os.path.join(tmp, EMA_FILE), metadata)
        save_tensors(trainer_tensors, os.path.join(tmp, TRAINER_TENSORS_FILE), metadata)
        write_json(os.path.join(tmp, TRAINER_JSON_FILE), trainer_info)
        fsync_path(tmp)
        if os.path.exists(final):                   # a checkpoint of an abandoned run past this step
            old = os.path.join(folder, f".old-{name}-{os.getpid()}")
            os.rename(final, old)
            os.rename(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, final)
        fsync_path(folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    write_latest(run_dir, name)
    return final


def remove_checkpoints_after(run_dir: str, step: int) -> list[str]:
    """Delete checkpoints later than ``step`` (left by a run that is being resumed from ``step``)."""
    removed = []
    for s, path in list_checkpoints(run_dir):
        if s > step:
            _trash(path)
            removed.append(path)
    return removed


# --- locating -------------------------------------------------------------------------------------

def is_run_dir(path: str) -> bool:
    return os.path.isfile(os.path.join(path, LATEST_FILE)) or \
        os.path.isdir(os.path.join(path, CHECKPOINTS_DIR))


def resolve_checkpoint(path) -> str:
    """The checkpoint folder meant by ``path``: a checkpoint folder itself, or a run folder
    (then the checkpoint ``latest`` names, or the newest complete one if ``latest`` is missing).
    """
    if not isinstance(path, (str, os.PathLike)):
        raise ScorekitError(f"the checkpoint path must be a folder name (str or os.PathLike), got "
                            f"{type(path).__name__}")
    path = os.fspath(path)
    give = ("give a run folder (the out_dir of scorekit.train.train) or one of its "
            "checkpoints/step-NNNNNNN folders")
    give_cli = "give a run folder (the --out of scorekit train) or one of its checkpoints/step-NNNNNNN folders"
    if not os.path.exists(path):
        raise ScorekitError(f"{path!r} does not exist; {give}", cli=f"{path!r} does not exist; {give_cli}")
    if not os.path.isdir(path):
        raise ScorekitError(f"{path!r} is a file; {give}", cli=f"{path!r} is a file; {give_cli}")
    if os.path.isfile(os.path.join(path, CONFIG_FILE)) and \
            os.path.isfile(os.path.join(path, MODEL_FILE)):
        return path
    if not is_run_dir(path) and any(os.path.exists(os.path.join(path, f)) for f in CHECKPOINT_FILES):
        return path           # a checkpoint folder with a file missing: loading names the file
    if not is_run_dir(path):
        lacks = (f"{path!r} is not a scorekit run or checkpoint folder (it has no '{LATEST_FILE}' "
                 f"file, no '{CHECKPOINTS_DIR}' folder and no {MODEL_FILE})")
        raise ScorekitError(f"{lacks}; give the out_dir of scorekit.train.train",
                            cli=f"{lacks}; give the --out folder of scorekit train")
    latest = os.path.join(path, LATEST_FILE)
    if os.path.isfile(latest):
        try:
            with open(latest, encoding="utf-8") as fh:
                rel = fh.read().strip()
        except (OSError, UnicodeDecodeError):
            rel = ""
        target = os.path.normpath(os.path.join(path, rel)) if rel else ""
        inside = os.path.abspath(target).startswith(os.path.abspath(os.path.join(path, CHECKPOINTS_DIR)))
        if rel and inside and all(os.path.isfile(os.path.join(target, f)) for f in CHECKPOINT_FILES):
            return target
    found = list_checkpoints(path)
    if not found:
        empty = f"run folder {path!r} holds no complete checkpoint yet; train longer"
        raise ScorekitError(f"{empty} (see checkpoint_every) or give another folder",
                            cli=f"{empty} (see --checkpoint-every) or give another folder")
    return found[-1][1]


def latest_checkpoint(run_dir: str) -> str | None:
    """The checkpoint folder a resumed run continues from, or ``None`` if there is none."""
    if not os.path.isdir(run_dir) or not is_run_dir(run_dir):
        return None
    try:
        return resolve_checkpoint(run_dir)
    except ScorekitError:
        return None


# --- checking weights against a model ---------------------------------------------------------------

def check_state_fits(net: nn.Module, state: dict, source: str) -> None:
    """Raise :class:`ScorekitError` naming the first tensor of ``state`` that does not fit ``net``."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    hint = "the weights belong to another model than the one config.json describes"
    if missing:
        raise ScorekitError(f"{source} does not fit the model: tensor {missing[0]!r} is missing "
                            f"({len(missing)} missing in all); {hint}")
    if unexpected:
        raise ScorekitError(f"{source} does not fit the model: it has tensor {unexpected[0]!r} that "
                            f"the model lacks ({len(unexpected)} extra in all); {hint}")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise ScorekitError(f"{source} does not fit the model: tensor {k!r} has shape "
                                f"{tuple(state[k].shape)} in the file but {tuple(v.shape)} in the "
                                f"model; {hint}")
        if state[k].is_floating_point() != v.is_floating_point():
            raise ScorekitError(f"{source} does not fit the model: tensor {k!r} has dtype "
                                f"{state[k].dtype} in the file but {v.dtype} in the model; {hint}")
        if state[k].is_floating_point() and not torch.isfinite(state[k]).all():
            raise ScorekitError(f"{source}: tensor {k!r} holds NaN or Inf values; the checkpoint is "
                                f"unusable, take an earlier one")


# --- optimiser state <-> safetensors + JSON --------------------------------------------------------

def flatten_optimizer_state(state_dict: dict, prefix: str = "optimizer") -> tuple[dict, dict]:
    """Split an optimiser ``state_dict`` into tensors (for safetensors) and a JSON structure."""
    tensors, per_param = {}, {}
    for idx, slots in state_dict["state"].items():
        entry = {}
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.state.{idx}.{key}"] = value
                entry[key] = {"tensor": f"{prefix}.state.{idx}.{key}"}
            else:
                entry[key] = {"value": value}
        per_param[str(idx)] = entry
    groups = []
    for group in state_dict["param_groups"]:
        g = {}
        for k, v in group.items():
            g[k] = list(v) if isinstance(v, tuple) else v
        g["_tuples"] = [k for k, v in group.items() if isinstance(v, tuple)]
        groups.append(g)
    return tensors, {"param_groups": groups, "state": per_param}


def unflatten_optimizer_state(structure: dict, tensors: dict) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state = {}
    for idx, entry in structure["state"].items():
        slots = {}
        for key, where in entry.items():
            if "tensor" in where:
                if where["tensor"] not in tensors:
                    raise ScorekitError(f"optimiser tensor {where['tensor']!r} is missing from "
                                        f"{TRAINER_TENSORS_FILE}; the checkpoint is corrupt")
                slots[key] = tensors[where["tensor"]]
            else:
                slots[key] = where["value"]
        state[int(idx)] = slots
    groups = []
    for g in structure["param_groups"]:
        g = dict(g)
        tuples = g.pop("_tuples", [])
        for k in tuples:
            g[k] = tuple(g[k])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# --- loading ----------------------------------------------------------------------------------------

@dataclass
class Checkpoint:
    """A loaded checkpoint.

    Attributes:
        path: the checkpoint folder.
        config: the run configuration (``config.json``).
        net: the trained network (eval mode); for a preconditioned run the raw network ``F``,
            which :func:`checkpoint_denoiser` wraps.
        ema_net: the network with the moving-average weights (eval mode); sample from this.
        process: the forward process it was trained with.
        prediction_type: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"`` for a diffusion run; what
            another objective's network outputs (``"logits"`` for a noise-aware classifier).
        step: optimiser steps taken.
        data_config: the dataset configuration (``scorekit.data.dataset_from_config`` rebuilds it).
        trainer: the contents of ``trainer.json``.
        objective: what the run trained (``"diffusion"``, ``"classifier"``, ...; runs written
            before objectives were recorded are ``"diffusion"``).
    """

    path: str
    config: dict
    net: nn.Module
    ema_net: nn.Module
    process: object
    prediction_type: str
    step: int
    data_config: dict | None
    trainer: dict = field(default_factory=dict)
    objective: str = "diffusion"

    @property
    def model_config(self) -> dict:
        return self.config["model"]

    @property
    def train_config(self) -> dict:
        return self.config.get("train", {})

    @property
    def num_classes(self) -> int | None:
        return self.config["model"].get("num_classes")

    @property
    def task(self) -> dict | None:
        """The trained image-to-image task (``{"name", "options", "cond_dropout", "cond_channels"}``,
        :mod:`scorekit.tasks.degradations`), or ``None`` for a generative model."""
        check_entries(self.config, _CONFIG_FORMS, os.path.join(self.path, CONFIG_FILE), keys=("task",))
        return self.config.get("task")

    @property
    def sample_shape(self) -> tuple[int, ...]:
        """The shape of one sample, ``(C, H, W)`` or ``(D,)``."""
        return tuple(self.config["sample_shape"])


_REQUIRED = ("model", "process", "prediction_type", "sample_shape")


def _whole(value, least: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= least


def _object(value) -> bool:
    return isinstance(value, dict)


#: entry -> (test, the form it must have) of config.json: what the commands read from it
_CONFIG_FORMS = {
    "model": (lambda v: isinstance(v, dict) and "kind" in v, "a model configuration with a 'kind'"),
    "sample_shape": (lambda v: isinstance(v, list) and len(v) > 0 and all(_whole(s, 1) for s in v),
                     "a list of positive whole numbers"),
    "train": (_object, "an object (the training options)"),
    "data": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("spec"), str)),
             "an object (the dataset configuration) with a 'spec' string or null"),
    "loss": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("options", {}), dict)),
             "an object (the loss weighting, its options and the time steps)"),
    "label_dropout": (lambda v: v is None or (isinstance(v, (int, float)) and not isinstance(v, bool)
                                              and 0 <= v < 1),
                      "a number from 0 up to (not including) 1 or null"),
    "class_names": (lambda v: v is None or (isinstance(v, list) and all(isinstance(n, str) for n in v)),
                    "a list of class names (strings) or null"),
    "ema": (_object, "an object (the EMA settings)"),
    "task": (lambda v: v is None or (isinstance(v, dict) and isinstance(v.get("name"), str)
                                     and isinstance(v.get("options", {}), dict)),
             "an object with the task's name (and its options, an object) or null"),
}

#: the same for trainer.json
_TRAINER_FORMS = {
    "data": (lambda v: isinstance(v, dict) and all(_whole(v.get(k, 0)) for k in ("epoch", "position", "size")),
             "an object (the data order: epoch, position and size, whole numbers)"),
    "ema": (lambda v: isinstance(v, dict) and _whole(v.get("num_updates", 0)),
            "an object (the EMA's decay, warmup and num_updates, a whole number)"),
}


def short_repr(value, limit: int = 80) -> str:
    """``repr(value)``, cut to ``limit`` characters (for messages naming a corrupt entry)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_entries(data: dict, forms: dict, path: str, keys=None) -> None:
    """Raise :class:`ScorekitError` naming ``path`` and the first entry of ``data`` (of ``keys``,
    all of ``forms`` by default) that is present but not of the form ``forms`` gives it."""
    for key in forms if keys is None else keys:
        fits, form = forms[key]
        if key in data and not fits(data[key]):
            raise ScorekitError(f"{path}: {key!r} must be {form}, got {short_repr(data[key])}; the file is "
                                f"corrupt: restore it or use another checkpoint")


def check_format_version(data: dict, path: str) -> None:
    """Refuse a config.json or trainer.json written in a newer format than :data:`FORMAT_VERSION`
    (its fields may mean something this scorekit does not know); a missing version is format 1."""
    version = data.get("format_version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ScorekitError(f"{path}: format_version must be a whole number >= 1, got {version!r}; "
                            f"the file is corrupt")
    if version > FORMAT_VERSION:
        raise ScorekitError(f"{path} was written by a newer scorekit (format {version}; this one reads "
                            f"up to {FORMAT_VERSION}); upgrade scorekit")


def read_trainer_info(ckpt_dir: str) -> dict:
    """``trainer.json`` of a checkpoint folder: a JSON object in a format this scorekit reads."""
    path = os.path.join(ckpt_dir, TRAINER_JSON_FILE)
    info = read_json(path, "trainer state")
    if not isinstance(info, dict):
        raise ScorekitError(f"trainer state {path} is corrupt (a JSON {type(info).__name__}, not an "
                            f"object); restore it or use another checkpoint")
    check_format_version(info, path)
    check_entries(info, _TRAINER_FORMS, path)
    return info


def read_config(ckpt_dir: str) -> dict:
    """``config.json`` of a checkpoint or run folder, checked for the required entries."""
    path = os.path.join(ckpt_dir, CONFIG_FILE)
    if not os.path.isfile(path):
        raise ScorekitError(f"{ckpt_dir!r} has no {CONFIG_FILE} (the run configuration); the "
                            f"checkpoint is incomplete: restore the file or use another checkpoint")
    config = read_json(path, "the run configuration")
    if not isinstance(config, dict) or config.get("format") != CONFIG_FORMAT:
        raise ScorekitError(f"{path} is not a scorekit run configuration (expected a JSON object with "
                            f"\"format\": \"{CONFIG_FORMAT}\")")
    check_format_version(config, path)
    missing = [k for k in _REQUIRED if k not in config]
    if missing:
        raise ScorekitError(f"{path} lacks the entr{'y' if len(missing) == 1 else 'ies'} "
                            f"{', '.join(missing)}; the configuration is corrupt")
    check_entries(config, _CONFIG_FORMS, path)
    if isinstance(config["process"], dict):
        from ..processes import unscaled_ddpm_config

        config["process"] = unscaled_ddpm_config(config["process"])     # as meant when it was written
    return config


def build_from_config(config: dict, source: str = "config.json"):
    """``(net, process)`` built from a run configuration (random initial weights)."""
    from ..models import build_model
    from ..processes import process_from_config

    try:
        net = build_model(dict(config["model"]))
    except ScorekitError as err:
        raise ScorekitError(f"{source}: cannot build the model: {err}") from None
    except (TypeError, ValueError, KeyError) as err:
        raise ScorekitError(f"{source}: cannot build the model ({type(err).__name__}: {err}); "
                            f"the configuration is corrupt") from None
    try:
        process = process_from_config(dict(config["process"]))
    except ScorekitError as err:
        raise ScorekitError(f"{source}: {err}") from None
    except (TypeError, ValueError, KeyError) as err:
        raise ScorekitError(f"{source}: cannot build the process ({err})") from None
    return net, process


def load_checkpoint(path, *, device="cpu") -> Checkpoint:
    """Load a checkpoint folder, or the newest checkpoint of a run folder.

    Checks that ``config.json`` exists and parses, builds the model and process it describes,
    and checks that every tensor of ``model.safetensors`` and ``ema.safetensors`` fits that model
    (same names and shapes); anything wrong raises :class:`ScorekitError` naming the file and,
    for weights, the mismatching tensor. No pickle is involved.
    """
    from .distributed import resolve_device

    device = resolve_device(device)
    ckpt_dir = resolve_checkpoint(path)
    config = read_config(ckpt_dir)
    from ..prediction import PREDICTION_TYPES

    objective = run_objective(config, os.path.join(ckpt_dir, CONFIG_FILE))
    if objective == "diffusion" and config["prediction_type"] not in PREDICTION_TYPES:
        raise ScorekitError(f"{os.path.join(ckpt_dir, CONFIG_FILE)}: unknown prediction type "
                            f"{config['prediction_type']!r}")
    net, process = build_from_config(config, os.path.join(ckpt_dir, CONFIG_FILE))
    ema_net, _ = build_from_config(config, os.path.join(ckpt_dir, CONFIG_FILE))
    _preconditioned(net, process, config, os.path.join(ckpt_dir, CONFIG_FILE))     # checks the entry
    for module, fname in ((net, MODEL_FILE), (ema_net, EMA_FILE)):
        file = os.path.join(ckpt_dir, fname)
        state = load_tensors(file, "weights file")
        check_state_fits(module, state, file)
        module.load_state_dict(state)
        module.to(device).eval()
    trainer_path = os.path.join(ckpt_dir, TRAINER_JSON_FILE)
    trainer = read_trainer_info(ckpt_dir) if os.path.isfile(trainer_path) else {}
    step = trainer.get("step", config.get("step", 0))
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise ScorekitError(f"trainer state {trainer_path}: step must be a whole number >= 0, got "
                            f"{step!r}; the file is corrupt")
    return Checkpoint(path=ckpt_dir, config=config, net=net, ema_net=ema_net, process=process,
                      prediction_type=config["prediction_type"], step=step,
                      data_config=config.get("data"), trainer=trainer, objective=objective)


def run_objective(config: dict, source: str = "config.json") -> str:
    """The objective a run configuration records (``"diffusion"`` where it names none)."""
    objective = config.get("objective", "diffusion")
    if not isinstance(objective, str) or not objective:
        raise ScorekitError(f"{source}: 'objective' must be the name of a training objective, got "
                            f"{objective!r}; the configuration is corrupt")
    return objective


def _preconditioned(net: nn.Module, process, config: dict, source: str):
    """``net`` wrapped by the run's preconditioning (``config["precondition"]``; none if absent)."""
    from ..precondition import precondition

    try:
        return precondition(net, process, config.get("precondition"))
    except ScorekitError as err:
        raise ScorekitError(f"{source}: {err}") from None


def checkpoint_denoiser(ckpt: Checkpoint, *, ema: bool = True, y: torch.Tensor | None = None,
                        condition=None):
    """The ready denoiser of a loaded checkpoint: what :func:`scorekit.sample` and every sampler take.

    A :class:`scorekit.prediction.Denoiser` over the network (the EMA copy by default), the
    run's process and prediction type, and its number of classes, bound to ``condition`` (class
    labels, or a :class:`~scorekit.conditioning.Condition`; ``y`` is the same for labels)::

        d = checkpoint_denoiser(load_checkpoint("runs/digits"), condition=torch.tensor([3, 3]))
        x0 = scorekit.sample(d, x_T, sampler="ddim")

    For a network with a variance head (``learn_variance``) it is a
    :class:`scorekit.variances.LearnedVarianceDenoiser`, whose ``x0_and_log_variance`` the
    ``ddpm`` sampler (``variance="learned"``) uses. A run trained with a preconditioning
    (``config["precondition"]``) has its network wrapped by it here (e.g.
    :class:`scorekit.precondition.EDMPrecond`, an ``x0`` prediction).
    """
    from ..prediction import Denoiser

    if y is not None and condition is not None:
        raise ScorekitError("give the labels either as y or as condition, not both")
    if ckpt.objective != "diffusion":
        what = "a noise-aware classifier" if ckpt.objective == "classifier" else "a network"
        holds = f"{ckpt.path} holds {what} trained with objective {ckpt.objective!r}, not a denoiser"
        raise ScorekitError(f"{holds}; its network is ckpt.ema_net (outputs: {ckpt.prediction_type}); sample "
                            f"from a diffusion run", cli=f"{holds}; give the folder of a diffusion run")
    net = _preconditioned(ckpt.ema_net if ema else ckpt.net, ckpt.process, ckpt.config, ckpt.path)
    kind = Denoiser
    if ckpt.model_config.get("learn_variance"):
        from ..variances import LearnedVarianceDenoiser as kind
    return kind(net, ckpt.process, ckpt.prediction_type, num_classes=ckpt.num_classes,
                condition=condition if y is None else y)


def load_denoiser(path, *, ema: bool = True, condition=None, device="cpu"):
    """The one way from a trained run to a ready denoiser: :func:`load_checkpoint` (``path`` a run
    folder or one of its checkpoints, the latest by default) then :func:`checkpoint_denoiser`.

    ``denoiser.process``, ``denoiser.prediction_type`` and ``denoiser.num_classes`` describe the
    run; ``denoiser.checkpoint`` is the loaded :class:`Checkpoint` (config, step, data)::

        d = scorekit.load_denoiser("runs/mnist", condition=torch.full((16,), 7))
        x0 = scorekit.sample(d, d.process.prior_sample((16, 1, 28, 28), generator=g), guidance_scale=3)
    """
    ckpt = load_checkpoint(path, device=device)
    denoiser = checkpoint_denoiser(ckpt, ema=ema, condition=condition)
    denoiser.checkpoint = ckpt
    return denoiser


class NoisyClassifier:
    """A trained noise-aware classifier ``p_phi(y | x_t, t)``, as classifier guidance
    (:class:`scorekit.guidance.ClassifierGuidance`) takes it: ``classifier(x_t, t) -> logits``.

    Attributes:
        net: the network (the EMA copy by default), ``net(x_t, t) -> (N, num_classes)``.
        process: the forward process whose noisy data it was trained on.
        num_classes: its number of classes.
        sample_shape: the shape of one sample it classifies.
        path: the checkpoint it came from.
    """

    def __init__(self, net, process, num_classes: int, sample_shape, path: str | None = None):
        self.net, self.process, self.num_classes = net, process, num_classes
        self.sample_shape, self.path = tuple(sample_shape), path

    def __call__(self, x_t: torch.Tensor, t) -> torch.Tensor:
        return self.net(x_t, t)

    def __repr__(self) -> str:
        return f"NoisyClassifier({self.path or type(self.net).__name__}, {self.num_classes} classes, {self.process!r})"


def load_classifier(path, *, ema: bool = True, device="cpu") -> NoisyClassifier:
    """The noise-aware classifier of a run trained with ``objective="classifier"``, ready for
    ``scorekit.sample(..., classifier=...)`` (``path``: its run folder or a checkpoint)."""
    ckpt = load_checkpoint(path, device=device)
    if ckpt.objective != "classifier":
        holds = f"{ckpt.path} holds a run trained with objective {ckpt.objective!r}, not a noise-aware classifier"
        raise ScorekitError(f"{holds}; train one with objective='classifier'",
                            cli=f"{holds}; train one with scorekit train --objective classifier")
    return NoisyClassifier(ckpt.ema_net if ema else ckpt.net, ckpt.process, ckpt.num_classes,
                           ckpt.sample_shape, ckpt.path)


__all__ = ["CHECKPOINT_FILES", "Checkpoint", "NoisyClassifier", "checkpoint_denoiser", "checkpoint_name",
           "load_classifier", "load_denoiser",
           "check_state_fits", "clean_partial", "flatten_optimizer_state", "latest_checkpoint",
           "list_checkpoints", "load_checkpoint", "read_config", "read_trainer_info", "remove_checkpoints_after",
           "resolve_checkpoint", "run_objective", "save_checkpoint", "unflatten_optimizer_state", "write_latest"]
