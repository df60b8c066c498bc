r"""The training loop: data, loss, AdamW, EMA, checkpoints, logging -- and exact resumption.

:func:`train` runs :class:`TrainConfig` into a run folder (layout in
:mod:`scorekit.train.checkpoint`). The parts of a run live in their own modules:

* :mod:`scorekit.train.config` -- :class:`TrainConfig`, its checks, and what is built from it (the
  process, the network configuration, the default prediction type);
* :mod:`scorekit.train.state` -- the run's generators (:class:`DataOrder`, :func:`derive_seed`) and
  the trainer state a checkpoint keeps for exact resumption;
* :mod:`scorekit.train.objectives` -- what the run minimises (``TrainConfig.objective``): the
  denoising loss (:class:`~scorekit.train.objectives.DiffusionObjective`, the default) or another
  :class:`~scorekit.train.objectives.Objective`;
* this module -- the loop (``_Trainer``), :func:`learning_rate`, :func:`make_optimizer`,
  :func:`write_samples` and :func:`train`.

One optimiser step ``k`` (counting from 0):

1. ``lr_k`` from :func:`learning_rate` (linear warm-up, then constant or cosine);
2. the global batch: the next ``batch_size`` indices of a per-epoch random permutation of the
   data (batches run on across epoch ends), the dataset's augmentation (random horizontal flips
   when enabled), then the objective's ``prepare`` -- for a diffusion run with labelled data,
   label dropout: each label is replaced by the "no label" value ``num_classes`` with probability
   ``label_dropout`` (classifier-free guidance needs the unconditional model too) -- and its
   ``attach_condition``: for a task run, the degraded views the network is conditioned on;
3. this process's block of the batch (all of it in a single process, see
   :mod:`scorekit.train.distributed`), split into ``grad_accum`` micro-batches; each adds
   ``grad(L_micro) / grad_accum`` to the gradient, ``L_micro`` the objective's mean loss over the
   micro-batch (:func:`scorekit.losses.diffusion_loss` for a diffusion run), so the step follows
   the gradient of the mean loss over the whole batch;
4. the gradient norm is clipped to ``grad_clip`` (the norm before clipping is logged), AdamW
   steps, and the EMA of the weights is updated (:mod:`scorekit.train.ema`).

A NaN or infinite loss or gradient norm stops the run with a :class:`ScorekitError`; the last
checkpoint stays as it was. On a CPU it is caught before the bad step is applied. On a GPU the
loop does not wait for the device each step (:meth:`_Trainer._settle`): the loss and gradient
norm are read, and checked, at the next log step, checkpoint, sample grid or the end, so the steps
up to there are applied, but nothing of them is saved, and the message names the first bad step.

**On a GPU** (see :class:`TrainConfig`: ``compile``, ``mixed_precision``, ``channels_last``,
``deterministic``): the network the loss calls may be compiled, the data are indexed on the
device when they fit (:func:`place_data`), and the batches are drawn by the same CPU generators
as on a CPU; the timesteps and noise come from a CUDA generator.

**Exact resumption.** Every random draw comes from a generator whose state is saved at each
checkpoint (:mod:`scorekit.train.state`): the data order (``data``: epoch, position and the
permutation itself), flips (``augment``), label dropout (``labels``), degradations (``degrade``),
timesteps and noise
(``noise``, one per process) and torch's global generator, which dropout layers use (``torch``, one
per process). Seeds are derived from ``seed`` and the generator's name. A run resumed from step
``k`` therefore continues exactly as if it had not stopped: on CPU the weights, EMA, optimiser
state and logged metrics are the same bit for bit. (Wall-clock fields -- ``seconds``,
``images_per_second`` -- differ, of course.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import sys
import time
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn

from ..devices import to_device
from ..errors import ScorekitError
from . import checkpoint as ckpt_io
# re-exported: these names were defined here before the settings moved to config.py and the
# random state to state.py, and scorekit.train.trainer still serves them
from .config import (DEFAULT_DDPM_SCHEDULE, LR_SCHEDULES, MIXED_PRECISION, PROCESS_NAMES, RESUMABLE_FIELDS,
                     TIMESTEP_SAMPLERS, VARIANCE_CHOICES, TrainConfig, build_process, coarse_noise_warning,
                     default_prediction, model_config_for, resolve_compile, resolve_mixed_precision,
                     resolve_preset, settings_changed)
from .distributed import DistributedContext, setup
from .ema import EMA
from .interrupt import StopRequest, TrainingInterrupted, stop_signals
from .logging import LOSS_PLOT_FILE, METRICS_FILE, MetricsLog, plot_loss_curve
from .objectives import Batch, objective_classes
from .state import (DataOrder, RunGenerators, derive_seed, load_trainer_state, seeded_generator, trainer_state,
                    versions)

Tensor = torch.Tensor

RUN_CONFIG_FILE = "config.json"
#: the loss curve is redrawn at a checkpoint if this many seconds passed since it was last drawn
PLOT_INTERVAL = 30.0
SAMPLES_DIR = "samples"
#: the sums the loop keeps between two lines of metrics.jsonl; an objective's metrics join them
_INTERVAL_KEYS = {"loss": 0.0, "grad_norm": 0.0, "count": 0}
FORMAT_VERSION = ckpt_io.FORMAT_VERSION


@dataclass
class TrainResult:
    """What :func:`train` did.

    Attributes:
        out_dir: the run folder.
        step: optimiser steps taken in all.
        start_step: the step this call started from (0, or the checkpoint it resumed).
        checkpoint: the final checkpoint folder.
        loss: the mean training loss over the last logged interval.
        seconds: training time of this call (excluding loading).
        images_per_second: samples trained on per second in this call.
        files: the outputs by name (``config``, ``metrics``, ``loss_plot``, ``samples``).
    """

    out_dir: str
    step: int
    start_step: int
    checkpoint: str
    loss: float
    seconds: float
    images_per_second: float
    files: dict


# --- pure helpers ------------------------------------------------------------------------------

def learning_rate(step: int, *, lr: float, warmup_steps: int = 0, total_steps: int = 1,
                  schedule: str = "constant", min_lr: float = 0.0) -> float:
    r"""The learning rate of optimiser step ``step`` (counting from 0).

    Warm-up: ``lr (step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the first step is
    already trained and ``lr`` is reached at step ``warmup_steps - 1``). Afterwards ``constant``:
    ``lr``; ``cosine``: ``min_lr + (lr - min_lr) (1 + cos(pi p)) / 2`` with
    ``p = (step - warmup_steps) / (total_steps - warmup_steps)`` clipped to ``[0, 1]``.
    """
    if schedule not in LR_SCHEDULES:
        raise ScorekitError(f"unknown lr_schedule {schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "constant":
        return lr
    p = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    p = min(max(p, 0.0), 1.0)
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * p))


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``net``'s parameters with the run's settings; the fused implementation (one
    kernel for all tensors: several times faster for small networks on CPU) where torch has it."""
    kwargs = dict(lr=config.lr, betas=tuple(config.adam_betas), eps=config.adam_eps,
                  weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(net.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(net.parameters(), **kwargs)


class _StepRecord(NamedTuple):
    """One optimiser step as the loop keeps it until :meth:`_Trainer._settle`: its number (from
    1), learning rate, and ``values`` = ``[loss, grad_norm, *metrics]`` as a float64 device tensor."""

    step: int
    lr: float
    values: Tensor
    metric_names: tuple


def _sync_each_step(device: torch.device) -> bool:
    """Whether the loop reads each step's loss and gradient norm on the host at once: on a CPU,
    where that costs nothing and stops a diverging run before its bad step is applied; not on a
    GPU, where it would make the host wait for the device every step."""
    return device.type != "cuda"


#: the training data stay on a GPU when they take at most this share of its free memory
DEVICE_DATA_SHARE = 0.25


def place_data(dataset, device: torch.device, *, host: bool = False) -> tuple[Tensor, Tensor | None, str]:
    """``(x, y, placement)``: the dataset's samples and labels where the loop indexes them.

    ``"host"`` on a CPU (the dataset's own tensors). On a GPU: ``"device"``, copied there once,
    when they take at most :data:`DEVICE_DATA_SHARE` of its free memory, so that a batch is
    gathered on the GPU; otherwise ``"pinned"``: the dataset's own tensors stay in host memory,
    and each batch gathered there is page-locked and copied without waiting (``non_blocking``, in
    ``_Trainer._on_device``). Indexing returns an ordinary tensor whatever the source, so pinning
    the whole dataset would only double its host memory. The indices, flips, label
    dropout and degradations are drawn by the same CPU generators in every case, so the batches
    hold the same samples. ``host=True`` (an objective that :attr:`~scorekit.train.objectives.Objective.conditions_on_host`,
    a task's degradation) keeps them ``"pinned"`` on a GPU whatever their size: the condition is
    then made from each batch on the CPU, where it does not make the device wait."""
    x, y = dataset.x, dataset.y
    if device.type != "cuda":
        return x, y, "host"
    if host:
        return x, y, "pinned"
    size = x.nbytes + (y.nbytes if y is not None else 0)
    free, _ = torch.cuda.mem_get_info(device)
    if size <= DEVICE_DATA_SHARE * free:
        return x.to(device), (None if y is None else y.to(device)), "device"
    return x, y, "pinned"


def _check_data_fits(dataset, net_config: dict) -> None:
    from ..data import check_compatible
    from ..models import IMAGE_KINDS

    if net_config["kind"] in IMAGE_KINDS:
        levels = len(net_config["channel_mults"])    # none: the network's own check names it
        check_compatible(dataset, channels=net_config["in_channels"],
                         multiple_of=2 ** (levels - 1) if levels else None,
                         num_classes=net_config.get("num_classes"))
    else:
        check_compatible(dataset, dim=net_config["dim"], num_classes=net_config.get("num_classes"))


# --- the trainer ---------------------------------------------------------------------------------

class _Trainer:
    def __init__(self, config: TrainConfig, out_dir: str, ctx: DistributedContext, *, resume: bool,
                 progress: bool, log, objective=None):
        self.ctx = ctx
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.progress = progress and ctx.is_main
        self.log = log if ctx.is_main else None
        self.objectives, chosen = objective_classes(objective)
        self.config, resume_from = self._settle_config(config, resume, chosen)
        cfg = self.config
        self.device = ctx.device

        from ..data import dataset_from_config, load_dataset

        quiet = {} if self.progress else {"progress": False}     # no loading bar either
        if self.saved_run is not None:                  # resuming: the run's own data
            self.dataset = dataset_from_config(self.saved_run["data"], **quiet)
        else:
            self.dataset = load_dataset(cfg.data, **{**cfg.data_options, **quiet})
        if len(self.dataset) < 1:
            raise ScorekitError(f"{cfg.data}: the dataset is empty")
        if self.saved_run is not None and isinstance(self.saved_run.get("process"), dict):
            from ..processes import process_from_config

            # resuming: the run's own process, as it was saved (its options may mean other betas now;
            # read_config gave a config saved before the 1000 / T scaling the betas it meant)
            self.process = process_from_config(dict(self.saved_run["process"]))
        else:
            self.process = build_process(cfg.process, cfg.process_options)
        if cfg.sample_steps is not None:
            from ..timesteps import check_step_count

            check_step_count(self.process, cfg.sample_steps, "sample_steps", cli_name="--sample-steps")
        from ..models import build_model

        objective_cls = self.objectives[cfg.objective]
        self.net_config = objective_cls.model_config(cfg, self.dataset, self.process) if self.saved_run is None \
            else dict(self.saved_run["model"])
        _check_data_fits(self.dataset, self.net_config)
        self.net = build_model(dict(self.net_config)).to(self.device)
        self.init_record = self.saved_run.get("init_from") if self.saved_run is not None else None
        if self.saved_run is None and cfg.init_from is not None:      # before the EMA copies the weights
            from .init import init_from

            self.init_record = init_from(self.net, self.net_config, cfg.init_from,
                                         process_config=self.process.config(), prediction=cfg.prediction)
            if self.log is not None:
                zeroed = f"; new condition channels of {', '.join(self.init_record['zeroed'])} at zero" \
                    if self.init_record["zeroed"] else ""
                self.log(f"network initialised from {self.init_record['checkpoint']} "
                         f"(step {self.init_record['step']}, EMA weights){zeroed}")
        self.net.train()
        # channels_last: 4-D weights (and, in _on_device, the batches) in NHWC layout
        self.channels_last = bool(cfg.channels_last) and self.dataset.is_image
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
        try:
            self.timestep_sampler = TIMESTEP_SAMPLERS[cfg.timesteps](self.process, **cfg.timesteps_options)
        except TypeError as err:
            raise ScorekitError(f"bad timesteps_options for {cfg.timesteps!r}: {err}") from None
        if hasattr(self.timestep_sampler, "to"):             # a state (importance sampling) on the device
            self.timestep_sampler.to(self.device)
        self.objective = objective_cls(cfg, process=self.process, dataset=self.dataset,
                                       net_config=self.net_config, timestep_sampler=self.timestep_sampler)
        self.data_x, self.data_y, self.data_placement = place_data(
            self.dataset, self.device, host=self.objective.conditions_on_host)
        self.ddp_net = ctx.wrap(self.net)
        # compiled or not, the module holds self.net's parameters: checkpoints save self.net's own
        # state_dict (no "_orig_mod." names) and the EMA copies self.net
        self.compiled = resolve_compile(cfg.compile, self.device)
        called = torch.compile(self.ddp_net) if self.compiled else self.ddp_net
        # what the loss trains: the network, or e.g. the preconditioned denoiser D around it
        self.loss_net = self.objective.training_net(called)
        self.ema = EMA(self.net, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.optimizer = make_optimizer(self.net, cfg)
        self.scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None

        per_rank = cfg.batch_size // ctx.world_size
        if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
            raise ScorekitError(f"batch_size {cfg.batch_size} must be a multiple of world size "
                                f"{ctx.world_size} x grad_accum {cfg.grad_accum}")
        self.per_rank = per_rank
        self.micro = per_rank // cfg.grad_accum

        self.generators = RunGenerators(cfg.seed, len(self.dataset), ctx.rank, self.device)

        self.step = 0
        self.elapsed = 0.0
        self.interval = dict(_INTERVAL_KEYS)
        # steps whose loss, gradient norm and metrics are still device tensors (see _settle)
        self.pending: list[_StepRecord] = []
        self.sync_each_step = _sync_each_step(self.device)
        self.last_checkpoint = None
        self.last_plot = time.monotonic()
        self.metrics = MetricsLog(os.path.join(self.out_dir, METRICS_FILE))
        if ctx.is_main:
            os.makedirs(self.out_dir, exist_ok=True)
            self._write_run_config()
        if resume_from is not None:
            self._load(resume_from)
        if ctx.is_main:
            if resume_from is not None:
                self.metrics.truncate_after(self.step)
                ckpt_io.remove_checkpoints_after(self.out_dir, self.step)
            else:
                self.metrics.reset()
            ckpt_io.clean_partial(self.out_dir)
        ctx.barrier()

    # -- configuration and run folder ----------------------------------------------------------------
    def _settle_config(self, config: TrainConfig | None, resume: bool, objective: str | None):
        """The run's configuration (``config``, or the run's own when resuming, with the objective
        ``objective`` if given) checked, and the checkpoint to resume from (``None``: none)."""
        if config is not None and objective is not None and config.objective != objective:
            if config.objective != TrainConfig.objective:
                raise ScorekitError(f"config.objective {config.objective!r} and objective={objective!r} "
                                    f"disagree; give it once")
            config = dataclasses.replace(config, objective=objective)
        run_cfg_path = os.path.join(self.out_dir, RUN_CONFIG_FILE)
        exists = os.path.isfile(run_cfg_path) or os.path.isdir(
            os.path.join(self.out_dir, ckpt_io.CHECKPOINTS_DIR))
        self.saved_run = None
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ScorekitError(f"the run folder {self.out_dir!r} is an existing file; give a folder")
        if exists and not resume and not ckpt_io.list_checkpoints(self.out_dir):
            exists = False          # a run stopped before its first checkpoint: nothing to lose, start anew
        if exists and not resume:
            taken = f"{self.out_dir!r} already holds a training run; continue it with"
            raise ScorekitError(f"{taken} resume=True or choose another out_dir",
                                cli=f"{taken} --resume or choose another --out folder")
        if not exists:
            if config is None:
                raise ScorekitError(f"nothing to resume in {self.out_dir!r} (no run there); give a "
                                    f"training configuration to start one")
            config.validate(self.objectives)
            config = dataclasses.replace(config, mixed_precision=resolve_mixed_precision(
                config.mixed_precision, self.ctx.device))       # recorded resolved: kept on resume
            return self.objectives[config.objective].complete_config(config), None
        saved = ckpt_io.read_config(self.out_dir) if os.path.isfile(run_cfg_path) else None
        if saved is None:
            raise ScorekitError(f"{self.out_dir!r} has checkpoints but no {RUN_CONFIG_FILE}; it is not "
                                f"a complete run folder")
        saved_cfg = TrainConfig.from_dict(saved.get("train", {}), run_cfg_path)
        if config is None and objective is not None and saved_cfg.objective != objective:
            raise ScorekitError(f"{self.out_dir!r} holds a run of objective {saved_cfg.objective!r}, not "
                                f"{objective!r}; resume it with its own objective")
        if config is not None:
            if config.prediction is None:              # the run's own (chosen for its process)
                config = dataclasses.replace(config, prediction=saved_cfg.prediction)
            changed = settings_changed(saved_cfg, config)
            if changed:
                raise ScorekitError(
                    f"cannot resume {self.out_dir!r} with different settings: "
                    + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changed.items())
                    + f"; only {', '.join(RESUMABLE_FIELDS)} may change (or start a new run in "
                      f"another out_dir)")
            merged = dataclasses.replace(saved_cfg, **{k: getattr(config, k) for k in RESUMABLE_FIELDS})
        else:
            merged = saved_cfg
        self.saved_run = saved
        resume_from = ckpt_io.latest_checkpoint(self.out_dir)
        return merged.validate(self.objectives), resume_from

    def run_config(self) -> dict:
        """What ``config.json`` holds: the run's settings and what was built from them, and the
        objective's entries (:meth:`scorekit.train.objectives.Objective.describe`)."""
        cfg = self.config
        return {
            "format": ckpt_io.CONFIG_FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": versions(),
            "objective": self.objective.name,
            "train": cfg.to_dict(),
            "model_preset": self.net_preset(),
            "model": dict(self.net_config),
            "process": self.process.config(),
            **self.objective.describe(),
            "data": self.dataset.config(),
            "sample_shape": list(self.dataset.shape),
            "num_classes": self.dataset.num_classes,
            "class_names": list(self.dataset.class_names) if self.dataset.class_names else None,
            "ema": {"decay": cfg.ema_decay, "warmup": cfg.ema_warmup},
            **({"init_from": self.init_record} if self.init_record is not None else {}),
        }

    def net_preset(self) -> str:
        """The name of the preset the network was built from."""
        from ..models import CLASSIFIER_KINDS

        return resolve_preset(self.config.model, self.dataset,
                              classifier=self.net_config["kind"] in CLASSIFIER_KINDS)

    def _write_run_config(self) -> None:
        import json
        from ..plotting import write_text

        text = json.dumps(self.run_config(), indent=2, allow_nan=False) + "\n"
        write_text(os.path.join(self.out_dir, RUN_CONFIG_FILE), text)

    # -- checkpoints ------------------------------------------------------------------------------
    def save(self, *, final: bool = False) -> str:
        """Write a checkpoint (rank 0) and redraw the loss curve: always for the ``final`` one,
        otherwise at most every :data:`PLOT_INTERVAL` seconds (a plot costs about a second). The
        steps not yet brought to the host are checked first: a diverged run is never saved."""
        self._settle()
        tensors, info = trainer_state(self)           # collective under DDP: every rank calls
        path = None
        if self.ctx.is_main:
            meta = {"format": "pt", "scorekit_step": str(self.step)}
            path = ckpt_io.save_checkpoint(
                self.out_dir, self.step, config=self.run_config(), model_state=self.net.state_dict(),
                ema_state=self.ema.state_dict(), trainer_tensors=tensors, trainer_info=info,
                keep=self.config.keep_checkpoints, metadata=meta)
            if final or time.monotonic() - self.last_plot >= PLOT_INTERVAL:
                plot_loss_curve(os.path.join(self.out_dir, METRICS_FILE),
                                os.path.join(self.out_dir, LOSS_PLOT_FILE))
                self.last_plot = time.monotonic()
        self.ctx.barrier()
        self.last_checkpoint = path or os.path.join(self.out_dir, ckpt_io.CHECKPOINTS_DIR,
                                                    ckpt_io.checkpoint_name(self.step))
        return self.last_checkpoint

    def _load(self, ckpt_dir: str) -> None:
        load_trainer_state(self, ckpt_dir)
        self.last_checkpoint = ckpt_dir
        if self.channels_last:      # the optimiser's moments in their parameters' layout, as before the stop
            for param, state in self.optimizer.state.items():
                for key, value in state.items():
                    if isinstance(value, Tensor) and value.shape == param.shape:
                        state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)

    # -- one step ---------------------------------------------------------------------------------
    def _global_batch(self) -> Batch:
        cfg = self.config
        idx = self.generators.order.next(cfg.batch_size)
        if self.data_placement == "device":             # index where the data are (no host copy)
            idx = to_device(idx, self.device)
        x = self.data_x[idx]
        x = self.dataset.augment(x, self.generators.augment)
        y = self.data_y[idx].clone() if self.objective.uses_labels else None
        batch = self.objective.prepare(Batch(x, y), self.generators.labels)
        return self.objective.attach_condition(batch, self.generators.degrade)

    def _on_device(self, t: Tensor | None) -> Tensor | None:
        """A block of the batch on the training device (from pinned memory without waiting for
        the copy when the data stay on the host of a GPU), NHWC for ``channels_last``."""
        if t is None:
            return None
        t = to_device(t, self.device)
        if self.channels_last and t.ndim == 4:
            t = t.contiguous(memory_format=torch.channels_last)
        return t

    def _autocast(self):
        mp = self.config.mixed_precision
        if mp == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if mp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def train_step(self) -> "_StepRecord":
        """One optimiser step. Returns its :class:`_StepRecord` -- the loss and the objective's
        metrics (:class:`scorekit.train.objectives.ObjectiveOutput`) averaged over the whole batch,
        and the gradient norm, as float64 tensors on the device -- and appends it to
        ``self.pending`` for :meth:`_settle`. Nothing here waits for the device, except the
        divergence checks of ``sync_each_step`` (a CPU run)."""
        cfg, ctx = self.config, self.ctx
        lr = learning_rate(self.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                           schedule=cfg.lr_schedule, min_lr=cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y, cond = self._global_batch()
        lo = ctx.rank * self.per_rank
        x, y, cond = (self._on_device(None if v is None else v[lo:lo + self.per_rank]) for v in (x, y, cond))
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        metric_sums = {}
        ts, losses = [], []
        for j in range(cfg.grad_accum):
            xm = x[j * self.micro:(j + 1) * self.micro]
            ym = None if y is None else y[j * self.micro:(j + 1) * self.micro]
            cm = None if cond is None else cond[j * self.micro:(j + 1) * self.micro]
            last = j == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not ctx.distributed) else self.ddp_net.no_sync()
            with sync:
                with self._autocast():
                    out = self.objective.loss(self.loss_net, Batch(xm, ym, cm), self.generators.noise)
                scaled = out.loss / cfg.grad_accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            loss_sum += out.loss.detach().to(torch.float64)
            for name, values in out.metrics.items():
                metric_sums[name] = metric_sums.get(name, 0.0) + values.detach().to(torch.float64).sum()
            if out.t is not None:
                ts.append(out.t.detach())
                losses.append(out.per_sample.detach())
        # float64 tensor arithmetic rounds as Python's floats did when these were floats
        loss = ctx.all_reduce_sum(loss_sum) / (cfg.grad_accum * ctx.world_size)
        metrics = {name: ctx.all_reduce_sum(total) / cfg.batch_size for name, total in metric_sums.items()}
        if self.sync_each_step and ctx.any(not math.isfinite(float(loss))):
            self._diverged("loss", float(loss), lr, self.step + 1)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm)
        if self.scaler is None and self.sync_each_step and ctx.any(not math.isfinite(float(grad_norm))):
            self._diverged("gradient norm", float(grad_norm), lr, self.step + 1, loss=float(loss))
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.net)
        if ts and hasattr(self.timestep_sampler, "update"):
            t_all = torch.cat([self._gather(t) for t in ts])
            l_all = torch.cat([self._gather(v.float()) for v in losses])
            self.timestep_sampler.update(t_all, l_all)         # on the device, without waiting
        self.step += 1
        values = torch.stack([loss, grad_norm.detach().to(loss.device, torch.float64), *metrics.values()])
        record = _StepRecord(self.step, lr, values, tuple(metrics))
        self.pending.append(record)
        return record

    def _settle(self) -> None:
        """Bring the steps of ``self.pending`` to the host in one transfer: stop on the first NaN
        or infinite loss or gradient norm among them (:meth:`_diverged`, the same message as a
        per-step check), else add them, in order, to the logging interval's sums.

        On a CPU (``sync_each_step``) this runs after every step, which has already been checked
        before its update was applied. On a GPU it runs at each log step, before each checkpoint
        and sample grid, and at the end, so that the device never waits for the host in between:
        a divergence is then detected at the next of these, after the steps up to it were applied,
        but always before anything of them is saved; the message names the first bad step."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        rows = torch.stack([r.values for r in pending]).tolist()
        bad = None
        for record, (loss, grad_norm, *_) in zip(pending, rows):
            if not math.isfinite(loss):
                bad = ("loss", loss, record.lr, record.step, None)
            elif self.scaler is None and not math.isfinite(grad_norm):
                bad = ("gradient norm", grad_norm, record.lr, record.step, loss)
            if bad is not None:
                break
        if self.ctx.any(bad is not None):
            what, value, lr, step, loss = bad if bad is not None else ("loss", float("nan"), pending[0].lr,
                                                                       pending[0].step, None)
            self._diverged(what, value, lr, step, loss=loss)
        for record, (loss, grad_norm, *metric_values) in zip(pending, rows):
            self.interval["loss"] += loss
            self.interval["grad_norm"] += grad_norm
            self.interval["count"] += 1
            for name, value in zip(record.metric_names, metric_values):
                self.interval[name] = self.interval.get(name, 0.0) + value

    def _gather(self, t: Tensor) -> Tensor:
        if not self.ctx.distributed:
            return t
        import torch.distributed as dist

        out = [torch.empty_like(t) for _ in range(self.ctx.world_size)]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    def _diverged(self, what: str, value: float, lr: float, step: int, *, loss: float | None = None):
        """Raise the error of a run whose ``what`` became ``value`` at step ``step`` (from 1)."""
        kind = "NaN" if math.isnan(value) else "infinite"
        extra = f", loss {loss:.4g}" if loss is not None else ""
        if self.last_checkpoint:
            where = (f"the last good checkpoint is at {self.last_checkpoint}", "then resume from it")
        else:
            where = ("no checkpoint was saved before it", "then run the command again (it starts anew)")
        stopped = f"{what} became {kind} at step {step} (learning rate {lr:.3g}{extra}); {where[0]}."
        raise ScorekitError(
            f"{stopped} Lower the learning rate (lr), clip gradients (grad_clip) or check the data, {where[1]}",
            cli=f"{stopped} Lower the learning rate (--lr), clip gradients (--grad-clip) or check the data, "
                f"{where[1]}")

    # -- outputs ------------------------------------------------------------------------------------
    def _log_row(self, images_per_second: float) -> dict:
        n = max(self.interval["count"], 1)
        row = {"step": self.step, "loss": self.interval["loss"] / n,
               **{k: v / n for k, v in self.interval.items() if k not in _INTERVAL_KEYS},
               "lr": self.optimizer.param_groups[0]["lr"],
               "grad_norm": self.interval["grad_norm"] / n,
               "ema_decay": self.ema.last_decay(),      # like lr: what the logged step used
               "images_per_second": round(images_per_second, 3),
               "seconds": round(self.elapsed, 3)}
        self.interval = dict(_INTERVAL_KEYS)
        return row

    def sample_grid(self, stop: StopRequest | None = None) -> str | None:
        """Sample from the EMA weights with fixed noise and write the grid (or scatter plot); a
        stop signal (``stop``) abandons the grid (``None``, nothing written). Only for an objective
        that draws samples (a diffusion run; ``None`` otherwise)."""
        if not self.ctx.is_main or not self.objective.draws_samples:
            return None
        from ..sampling import sample

        cfg = self.config
        n = cfg.sample_num or (64 if self.dataset.is_image else 2000)
        shape = (n, *self.dataset.shape)
        x_T = self.process.prior_sample(shape, generator=seeded_generator(cfg.seed, "samples"),
                                        dtype=torch.float32).to(self.device)
        model, y = self.objective.sampling_model(self.ema.net, n, self.device)
        from ..timesteps import default_step_count

        steps = cfg.sample_steps if cfg.sample_steps is not None else default_step_count(self.process)

        def give_up_on_stop(*_):
            if stop is not None and stop.requested:
                raise _GridAbandoned

        try:
            x0 = sample(model, x_T, process=self.process,
                        sampler=cfg.sample_sampler, num_steps=steps, callback=give_up_on_stop,
                        generator=seeded_generator(cfg.seed, "sampler", device=self.device))
        except _GridAbandoned:
            return None
        folder = os.path.join(self.out_dir, SAMPLES_DIR)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{ckpt_io.checkpoint_name(self.step)}.png")
        write_samples(x0, path, data=self.dataset.x,
                      title=f"step {self.step}: {cfg.sample_sampler}, {steps} steps, EMA weights",
                      nrow=self.net_config["num_classes"] if y is not None else None)
        return path

    def _log_compile_time(self, first_steps: list, steps: int) -> None:
        """Log what :func:`torch.compile` cost: the first step's seconds beyond the second's."""
        if len(first_steps) == 2:
            self.log(f"torch.compile: the first step took {first_steps[0]:.1f} s, {first_steps[0] - first_steps[1]:.1f} s "
                     f"more than the second (compilation)")
        elif steps == 1:
            self.log(f"torch.compile: the only step, compilation included, took {first_steps[0]:.1f} s")

    # -- the loop -----------------------------------------------------------------------------------
    def _stop_signal(self, stop: StopRequest | None) -> int:
        """The stop signal any process received (0: none); collective under DDP."""
        return self.ctx.max(stop.signum or 0) if stop is not None else 0

    def run(self, stop_at_step: int | None = None, max_seconds: float | None = None,
            stop: StopRequest | None = None) -> TrainResult:
        """Train to ``config.steps`` (or ``stop_at_step``, or for ``max_seconds``). A signal
        recorded in ``stop`` ends the run after the current step with a checkpoint of that step
        and raises :class:`TrainingInterrupted`."""
        from tqdm.auto import tqdm

        cfg, ctx = self.config, self.ctx
        start_step = self.step
        if self.log:
            from ..models import count_parameters

            word = "resuming at" if start_step else "starting at"
            preset = self.net_preset()
            self.log(f"{cfg.data}: {len(self.dataset)} samples of shape {self.dataset.shape}; model "
                     f"{preset} ({count_parameters(self.net):,} parameters); {cfg.process} "
                     f"{self.objective.summary()}; {word} step "
                     f"{start_step} of {cfg.steps}; writing to {self.out_dir}")
        warning = None
        if ctx.is_main and start_step == 0 and self.objective.draws_samples:
            warning = coarse_noise_warning(self.process, self.dataset.x)
        if warning and self.log:
            self.log(f"warning: {warning}")
        elif warning:
            import warnings

            warnings.warn(warning, stacklevel=3)
        bar = tqdm(total=cfg.steps, initial=start_step, disable=not self.progress, unit="step",
                   dynamic_ncols=True, file=sys.stderr, desc="train")
        t_call = time.perf_counter()
        t_last = t_call
        images_since = 0
        samples_path = None
        last_loss = float("nan")
        trained_seconds = 0.0
        interrupted = 0
        first_steps = []                                # seconds of this call's first two steps
        try:
            end = cfg.steps if stop_at_step is None else min(cfg.steps, int(stop_at_step))
            while self.step < end:
                # A stop signal or the time limit (which counts optimiser steps only), agreed on by
                # every process in one collective that does not wait for the GPU.
                interrupted, out_of_time = ctx.agree((stop.signum or 0) if stop is not None else 0,
                                                     max_seconds is not None and trained_seconds >= max_seconds)
                if interrupted or out_of_time:
                    break
                t0 = time.perf_counter()
                self.train_step()
                log_now = self.step % cfg.log_every == 0 or self.step == cfg.steps
                sample_now = bool(cfg.sample_every) and self.step % cfg.sample_every == 0 and self.step < cfg.steps
                if self.sync_each_step or log_now or sample_now or self.step % cfg.checkpoint_every == 0:
                    self._settle()                      # (waiting for the device counts as training)
                now = time.perf_counter()
                self.elapsed += now - t0
                trained_seconds += now - t0
                images_since += cfg.batch_size
                bar.update(1)
                if self.compiled and self.log and self.step - start_step <= 2:
                    first_steps.append(now - t0)
                    self._log_compile_time(first_steps, end - start_step)
                if log_now:
                    ips = images_since / max(now - t_last, 1e-9)
                    row = self._log_row(ips)
                    last_loss = row["loss"]
                    if ctx.is_main:
                        self.metrics.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}", refresh=False)
                    t_last, images_since = time.perf_counter(), 0
                t_out = time.perf_counter()
                if sample_now:
                    samples_path = self.sample_grid(stop) or samples_path
                if self.step % cfg.checkpoint_every == 0 and self.step < cfg.steps:
                    self.save()
                t_last += time.perf_counter() - t_out   # outputs do not count as training time
            if not interrupted:                         # a signal during the last step
                interrupted = self._stop_signal(stop)
        finally:
            bar.close()
        seconds = time.perf_counter() - t_call
        saved = self.last_checkpoint is not None and \
            self.last_checkpoint.endswith(ckpt_io.checkpoint_name(self.step))
        if interrupted:                                 # save (unless nothing was trained), then stop
            if not saved and self.step > start_step:
                self.save()
            raise TrainingInterrupted(interrupted, self.step, self.last_checkpoint, self.out_dir)
        if not saved:
            self.save(final=True)                       # (also draws the loss curve)
        elif ctx.is_main and self.step > start_step:
            plot_loss_curve(os.path.join(self.out_dir, METRICS_FILE),
                            os.path.join(self.out_dir, LOSS_PLOT_FILE))
        if self.step == cfg.steps and ctx.is_main:
            samples_path = self.sample_grid(stop)
            if stop is not None and stop.requested:     # a signal while drawing the final grid
                raise TrainingInterrupted(stop.signum, self.step, self.last_checkpoint, self.out_dir)
        trained = self.step - start_step
        files = {"config": os.path.join(self.out_dir, RUN_CONFIG_FILE),
                 "metrics": os.path.join(self.out_dir, METRICS_FILE),
                 "loss_plot": os.path.join(self.out_dir, LOSS_PLOT_FILE),
                 "samples": samples_path}
        if trained == 0 and ctx.is_main:                # nothing to do: report the logged loss
            rows = self.metrics.rows()
            last_loss = float(rows[-1]["loss"]) if rows and rows[-1].get("loss") is not None else last_loss
        return TrainResult(out_dir=self.out_dir, step=self.step, start_step=start_step,
                           checkpoint=self.last_checkpoint,
                           loss=last_loss, seconds=seconds,
                           images_per_second=trained * cfg.batch_size / max(seconds, 1e-9), files=files)


class _GridAbandoned(Exception):
    """Raised from the sampler's callback to abandon a sample grid when a stop signal arrives."""


def write_samples(x0: Tensor, path: str, *, data: Tensor | None = None, title: str | None = None,
                  nrow: int | None = None) -> str:
    """Write samples as a PNG: an image grid for ``(N, C, H, W)``, a scatter plot (beside up to
    2000 points of ``data``) for 2-D points, and the first two coordinates otherwise."""
    from ..plotting import Panel, image_grid, scatter_grid, square_limits

    x0 = x0.detach().cpu().float()
    if x0.ndim == 4:
        return image_grid(x0.clamp(-1, 1), path, nrow=nrow)
    if x0.ndim == 2 and x0.shape[1] >= 2:
        pts = x0[:, :2]
        ref = None if data is None else Panel("data", data[:2000, :2].cpu().float(), color="#4d4d4d")
        limits = square_limits(ref.points) if ref is not None else None
        return scatter_grid([Panel("samples", pts)], path, reference=ref, limits=limits, title=title)
    raise ScorekitError(f"cannot draw samples of shape {tuple(x0.shape)}: expected images "
                        f"(N, C, H, W) or points (N, D >= 2)")


@contextlib.contextmanager
def kernel_settings(deterministic: bool, device: torch.device):
    """torch's kernel choices for the length of a run, restored afterwards.

    ``deterministic``: ``torch.use_deterministic_algorithms(True)`` (an operation without a
    deterministic kernel raises), cuDNN without benchmarking, and ``CUBLAS_WORKSPACE_CONFIG``
    (``:4096:8``, if unset; cuBLAS reads it when it first starts in the process). Otherwise, on a
    GPU, cuDNN benchmarks the convolution algorithms for the run's fixed shapes and keeps the
    fastest. A CPU run is unaffected by either but for the checks of the first."""
    before = (torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    env_before = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    try:
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True, warn_only=False)
            torch.backends.cudnn.benchmark = False
        elif device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]
        if env_before is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)


def _saved_device(out_dir) -> str:
    """The device a run folder's configuration names (cpu if there is none to read)."""
    try:
        return ckpt_io.read_config(os.fspath(out_dir)).get("train", {}).get("device", "cpu")
    except ScorekitError:
        return "cpu"


def train(config: TrainConfig | None, out_dir, *, resume: bool = False, progress: bool = True,
          log=None, stop_at_step: int | None = None, max_seconds: float | None = None,
          objective=None) -> TrainResult:
    """Train a diffusion model (or what ``config.objective`` names) as ``config`` says, writing the
    run into ``out_dir``.

    Args:
        config: the settings; with ``resume=True`` it may be ``None`` (use the run's own), else it
            must agree with the run's except for :data:`RESUMABLE_FIELDS` (e.g. more ``steps``).
        out_dir: the run folder (created). A folder that already holds a run needs ``resume=True``.
        resume: continue from the newest checkpoint in ``out_dir`` -- exactly as if the run had
            never stopped -- or start it if there is none yet.
        progress: show a progress bar (step, loss, images/s, it/s, ETA) on standard error.
        log: optional ``log(line)`` for a few lines of information.
        stop_at_step: stop once this step is reached (saving a checkpoint there), as if the run
            had been interrupted; ``resume=True`` continues it (e.g. for time-limited jobs).
        max_seconds: stop (saving a checkpoint) once the optimiser steps of this call have taken
            this many seconds; checkpoints, sample grids and start-up do not count. The stopped
            run resumes exactly like any other; the learning-rate schedule still follows
            ``config.steps``.
        objective: what to train, if not ``config.objective``: a name in
            :data:`scorekit.train.objectives.OBJECTIVES` or an
            :class:`~scorekit.train.objectives.Objective` subclass (its ``name`` is recorded; resume
            such a run by passing the class again).

    Works unchanged under ``torchrun`` (see :mod:`scorekit.train.distributed`). Threads: with
    ``config.num_threads`` set, torch uses that many during the call (restored afterwards).
    torch's global random state is also restored afterwards.

    Stopping: while the call runs (in the main thread), SIGINT (Ctrl-C) and SIGTERM do not
    raise at once: the current step is finished, a checkpoint of it is saved (a further signal
    cannot interrupt that save) and :class:`~scorekit.train.interrupt.TrainingInterrupted`, a
    :class:`KeyboardInterrupt`, is raised with the signal, the step and the checkpoint;
    ``resume=True`` continues exactly. See :mod:`scorekit.train.interrupt`.

    Returns a :class:`TrainResult`. Raises :class:`ScorekitError` for bad settings or data, and
    when the loss becomes NaN or infinite (naming the last good checkpoint).
    """
    threads_before = torch.get_num_threads()
    rng_before = torch.get_rng_state()
    if config is not None and not isinstance(config, TrainConfig):
        raise ScorekitError(f"config must be a TrainConfig, got {type(config).__name__}")
    threads = config.num_threads if config is not None else None
    device = config.device if config is not None else _saved_device(out_dir)
    ctx = setup(device)
    try:
        with stop_signals() as stop:                    # SIGINT / SIGTERM: finish the step, save, stop
            if threads:
                torch.set_num_threads(int(threads))
            trainer = _Trainer(config, out_dir, ctx, resume=resume, progress=progress, log=log,
                               objective=objective)
            if trainer.config.num_threads and trainer.config.num_threads != torch.get_num_threads():
                torch.set_num_threads(int(trainer.config.num_threads))
            if max_seconds is not None and not (float(max_seconds) > 0):
                raise ScorekitError(f"max_seconds must be positive, got {max_seconds}")
            with kernel_settings(trainer.config.deterministic, trainer.device):
                return trainer.run(stop_at_step, max_seconds, stop)
    finally:
        torch.set_num_threads(threads_before)
        torch.set_rng_state(rng_before)
        ctx.close()


__all__ = ["DEFAULT_DDPM_SCHEDULE", "DataOrder", "LR_SCHEDULES", "MIXED_PRECISION", "PROCESS_NAMES",
           "RESUMABLE_FIELDS", "TIMESTEP_SAMPLERS", "VARIANCE_CHOICES", "TrainConfig", "TrainResult", "build_process",
           "coarse_noise_warning", "default_prediction", "derive_seed", "learning_rate", "make_optimizer",
           "model_config_for", "resolve_preset", "settings_changed", "train", "write_samples"]
