r"""The training loop: data, loss, AdamW, EMA, checkpoints, logging -- and exact resumption.

:func:`train` runs :class:`TrainConfig` into a run folder (layout in
:mod:`scorekit.train.checkpoint`). One optimiser step ``k`` (counting from 0):

1. ``lr_k`` from :func:`learning_rate` (linear warm-up, then constant or cosine);
2. the global batch: the next ``batch_size`` indices of a per-epoch random permutation of the
   data (batches run on across epoch ends), the dataset's augmentation (random horizontal flips
   when enabled) and, for labelled data, label dropout: each label is replaced by the "no label"
   value ``num_classes`` with probability ``label_dropout`` (classifier-free guidance needs the
   unconditional model too);
3. this process's block of the batch (all of it in a single process, see
   :mod:`scorekit.train.distributed`), split into ``grad_accum`` micro-batches; each adds
   ``grad(L_micro) / grad_accum`` to the gradient, ``L_micro`` the mean loss of
   :func:`scorekit.losses.diffusion_loss` over the micro-batch, so the step follows the gradient
   of the mean loss over the whole batch;
4. the gradient norm is clipped to ``grad_clip`` (the norm before clipping is logged), AdamW
   steps, and the EMA of the weights is updated (:mod:`scorekit.train.ema`).

A NaN or infinite loss or gradient norm stops the run with a :class:`ScorekitError` before the
bad step is applied or saved; the last checkpoint stays as it was.

**Exact resumption.** Every random draw comes from a generator whose state is saved at each
checkpoint: the data order (``data``: epoch, position and the permutation itself), flips
(``augment``), label dropout (``labels``), timesteps and noise (``noise``, one per process) and
torch's global generator, which dropout layers use (``torch``, one per process). Seeds are derived
from ``seed`` and the generator's name. A run resumed from step ``k`` therefore continues exactly
as if it had not stopped: on CPU the weights, EMA, optimiser state and logged metrics are the
same bit for bit. (Wall-clock fields -- ``seconds``, ``images_per_second`` -- differ, of course.)
"""
from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..errors import ScorekitError, check_options, option_schema
from . import checkpoint as ckpt_io
from .distributed import DistributedContext, resolve_device, setup
from .ema import EMA
from .interrupt import StopRequest, TrainingInterrupted, stop_signals
from .logging import LOSS_PLOT_FILE, METRICS_FILE, MetricsLog, plot_loss_curve

# the loss is looked up here (not bound at import) so that it can be swapped in one place
from .. import losses as _losses

Tensor = torch.Tensor

#: process names accepted by :class:`TrainConfig` (``--process``) and the classes they build
PROCESS_NAMES = {
    "ddpm": "DDPM",          # discrete, integer steps 0..T-1 (options: schedule, num_steps, ...)
    "vp": "VPSDE",           # continuous variance-preserving SDE (beta_min, beta_max)
    "subvp": "SubVPSDE",
    "ve": "VESDE",           # variance-exploding SDE (sigma_min, sigma_max)
    "edm": "EDM",            # Karras et al. (sigma_min, sigma_max, sigma_data)
    "simple_ve": "SimpleVE",  # x_t = x_0 + sqrt(t) eps, t = 1..T
}

#: time samplers for training (``--timesteps``)
TIMESTEP_SAMPLERS = {
    "uniform": _losses.UniformTimesteps,
    "importance": _losses.ImportanceTimesteps,
    "lognormal": _losses.LogNormalTimesteps,
}

#: the beta schedule of ``process="ddpm"`` unless ``process_options`` give one: measured on the
#: digits, the cosine schedule (with v-prediction) gives clean DDIM samples where the linear one
#: (with eps-prediction) blows a few up (see :class:`TrainConfig`)
DEFAULT_DDPM_SCHEDULE = "cosine"

LR_SCHEDULES = ("constant", "cosine")
#: ``TrainConfig.variance``: fixed reverse variances, or learned ones (Nichol & Dhariwal 2021)
VARIANCE_CHOICES = ("fixed", "learned")
MIXED_PRECISION = ("no", "bf16", "fp16")

#: fields of TrainConfig that a resumed run may change: the length and learning-rate schedule
#: (e.g. a lower rate after a divergence) and the outputs; the rest defines what is trained
RESUMABLE_FIELDS = ("steps", "lr", "lr_schedule", "warmup_steps", "min_lr", "grad_clip",
                    "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                    "sample_num", "sample_steps", "sample_sampler", "num_threads", "device")

RUN_CONFIG_FILE = "config.json"
#: the loss curve is redrawn at a checkpoint if this many seconds passed since it was last drawn
PLOT_INTERVAL = 30.0
SAMPLES_DIR = "samples"
FORMAT_VERSION = ckpt_io.FORMAT_VERSION

#: the arguments of the loss that a run sets itself (the rest are its ``weighting_options``)
_LOSS_ARGUMENTS = ("net", "process", "x0", "prediction_type", "weighting", "generator", "y",
                   "timestep_sampler")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the run's ``config.json``).

    Data and model:
        data: dataset spec for :func:`scorekit.data.load_dataset` (``"digits"``, ``"moons"``,
            ``"mnist:PATH"``, ``"folder:PATH"``, ``"npz:PATH"``, ...).
        data_options: its options (e.g. ``{"flip": True}``, ``{"pad_to": 32}``).
        model: a preset name in :data:`scorekit.models.PRESETS` (``"tiny"``, ``"small"``,
            ``"base"`` for images, ``"mlp"`` for vectors), or ``"auto"``: ``tiny`` for images,
            ``mlp`` for vectors.
        model_options: overrides of the preset (e.g. ``{"base_channels": 32}``). The data's
            channels / dimension and number of classes are filled in; continuous-time
            processes get ``time_scale = 1000 / t_max`` so the sinusoidal embedding sees
            values like DDPM's steps.

    Diffusion:
        process: ``ddpm``, ``vp``, ``subvp``, ``ve``, ``edm`` or ``simple_ve``
            (:data:`PROCESS_NAMES`); ``process_options`` are its constructor's arguments, e.g.
            ``{"schedule": "linear", "num_steps": 1000}`` for DDPM (whose schedule is
            :data:`DEFAULT_DDPM_SCHEDULE`, cosine, unless given).
        prediction: what the network predicts: ``eps``, ``x0``, ``v`` or ``score``; ``None``
            (default) chooses per process (:func:`default_prediction`): ``v`` for the
            variance-preserving ones (ddpm, vp, subvp), ``eps`` for the variance-exploding ones
            (ve, edm, simple_ve). ``v`` stays well-conditioned at the noisiest step of a VP process,
            where an eps-network's ``x_0`` estimate divides its error by ``alpha_T`` (about 0.006
            for DDPM's linear schedule): on the 8x8 digits (1200 steps, DDIM 50 steps) v + cosine
            gave 99 % of samples classified as the class asked for against 92 % for eps + linear,
            whose DDIM samples include some blown-up ones.
        weighting: ``simple``, ``elbo``, ``min_snr``, ``lambda``, ``edm`` or ``hybrid``
            (:mod:`scorekit.losses`); ``weighting_options`` e.g. ``{"min_snr_gamma": 5}`` or
            ``{"hybrid_lambda": 0.001}``.
        precondition: ``None`` (the network's output is the ``prediction``) or ``"edm"``: the
            network is EDM's ``F``, wrapped as ``D = c_skip x^ + c_out F(c_in x^; c_noise)``
            (:class:`scorekit.precondition.EDMPrecond`), which predicts ``x0``; it needs
            ``prediction="x0"`` and ``weighting="edm"``, the weight that gives ``F``'s error
            weight 1. It serves every process; the network's time input is ``c_noise = ln(sigma / alpha) / 4``
            (``time_scale`` 1).
        sigma_data: the data's standard deviation for the ``edm`` preconditioning and weighting
            (``None``: ``weighting_options["sigma_data"]``, else the process's own, else 0.5).
        variance: the reverse-process variance: ``fixed`` (chosen when sampling) or ``learned``
            (Improved DDPM: the network gets a variance head, ``learn_variance=True``, trained by the
            ``hybrid`` weighting, which it requires; discrete processes only). Sample with
            ``ddpm(..., variance="learned")`` on :func:`scorekit.train.checkpoint_denoiser`.
        timesteps: training-time sampler: ``uniform``, ``importance`` (discrete processes) or
            ``lognormal`` (EDM's); ``timesteps_options`` its arguments. ``lognormal`` spends more
            of the training on small noise levels, which fine structure needs: on
            ``eight_gaussians`` (modes of width 0.05) an MLP trained 800 steps spread its samples
            1.5x the true within-mode width with it, 3x with ``uniform``.

    Optimisation:
        steps: optimiser steps in all.
        batch_size: samples per optimiser step (over all processes and micro-batches).
        grad_accum: micro-batches per step (gradient accumulation).
        lr, lr_schedule, warmup_steps, min_lr: see :func:`learning_rate`.
        weight_decay, adam_betas, adam_eps: AdamW's settings.
        grad_clip: clip the gradient norm to this (``None``: no clipping).
        ema_decay, ema_warmup: see :mod:`scorekit.train.ema`.
        label_dropout: probability of replacing a label by "no label" (``None``: 0.1 for
            labelled data with a class-conditional network, else 0).
        mixed_precision: ``no``, ``bf16`` (autocast; CPU or GPU) or ``fp16`` (GPU, with loss
            scaling). Weights, optimiser state and EMA stay float32. Measured on a 2-core Xeon
            with AMX / AVX512-BF16 and one thread: bf16 trains the ``tiny`` U-Net on 32x32 MNIST
            1.3-1.7x faster (its loss followed fp32's within 2 % over 150 steps), but is no
            faster on 8x8 digits, where the layers are too small; hence off by default.

    Machine and outputs:
        seed: the seed every generator is derived from.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        num_threads: torch's CPU threads during training (``None``: leave as is; the command
            line uses 1). On a busy 2-core machine one thread trained the ``tiny`` U-Net 6x
            (8x8 digits) and 2.4x (32x32 MNIST) faster than two. Results may differ in the last
            bits between thread counts, so resume with the same number for bit-exact runs.
        log_every: write a metrics line every this many steps.
        checkpoint_every: save a checkpoint every this many steps (and always at the end).
        keep_checkpoints: keep the newest this many (``None``: all).
        sample_every: write a sample grid every this many steps (0: only at the end).
        sample_num: samples per grid (``None``: 64 images or 2000 points).
        sample_steps, sample_sampler: the sampler for the grids (from the EMA weights, fixed noise);
            ``sample_steps=None`` is 50, or ``T`` of a discrete process with fewer steps; a given
            number above ``T`` is refused, as ``scorekit sample --steps`` refuses it.
    """

    data: str = "digits"
    data_options: dict = field(default_factory=dict)
    model: str = "auto"
    model_options: dict = field(default_factory=dict)
    process: str = "ddpm"
    process_options: dict = field(default_factory=dict)
    prediction: str | None = None
    weighting: str = "simple"
    weighting_options: dict = field(default_factory=dict)
    precondition: str | None = None
    sigma_data: float | None = None
    variance: str = "fixed"
    timesteps: str = "uniform"
    timesteps_options: dict = field(default_factory=dict)
    steps: int = 2000
    batch_size: int = 64
    grad_accum: int = 1
    lr: float = 1e-3
    lr_schedule: str = "constant"
    warmup_steps: int = 100
    min_lr: float = 0.0
    weight_decay: float = 0.0
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-8
    grad_clip: float | None = 1.0
    ema_decay: float = 0.999
    ema_warmup: bool = True
    label_dropout: float | None = None
    mixed_precision: str = "no"
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 3
    sample_every: int = 0
    sample_num: int | None = None
    sample_steps: int | None = None
    sample_sampler: str = "ddim"

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "the training configuration") -> "TrainConfig":
        """Rebuild from :meth:`to_dict` (e.g. a run's ``config.json``); unknown keys are errors."""
        if not isinstance(data, dict):
            raise ScorekitError(f"{source} must be a JSON object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ScorekitError(f"{source} has unknown setting(s) {', '.join(unknown)}")
        data = dict(data)
        if "adam_betas" in data and isinstance(data["adam_betas"], list):
            data["adam_betas"] = tuple(data["adam_betas"])
        return cls(**data)

    def validate(self) -> "TrainConfig":
        """Raise :class:`ScorekitError` naming the first bad setting; returns ``self``."""
        def whole(name, lo, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            if isinstance(v, bool) or not isinstance(v, int) or v < lo:
                raise ScorekitError(f"{name} must be a whole number >= {lo}"
                                    f"{' or None' if allow_none else ''}, got {v!r}")

        def number(name, lo=None, hi=None, *, open_lo=False, open_hi=False, allow_none=False):
            v = getattr(self, name)
            if v is None and allow_none:
                return
            ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
            if ok and lo is not None:
                ok = v > lo if open_lo else v >= lo
            if ok and hi is not None:
                ok = v < hi if open_hi else v <= hi
            if not ok:
                lo_s = "" if lo is None else f"{'>' if open_lo else '>='} {lo}"
                hi_s = "" if hi is None else f"{'<' if open_hi else '<='} {hi}"
                rng = " and ".join(s for s in (lo_s, hi_s) if s)
                raise ScorekitError(f"{name} must be a number {rng}, got {v!r}")

        def choice(name, options):
            v = getattr(self, name)
            if v not in options:
                raise ScorekitError(f"unknown {name} {v!r}; choose one of {', '.join(options)}")

        from ..losses import WEIGHTINGS
        from ..prediction import PREDICTION_TYPES
        from ..samplers import SAMPLERS

        if not isinstance(self.data, str) or not self.data:
            raise ScorekitError(f"data must be a dataset spec such as 'digits', got {self.data!r}")
        for name in ("data_options", "model_options", "process_options", "weighting_options",
                     "timesteps_options"):
            if not isinstance(getattr(self, name), dict):
                raise ScorekitError(f"{name} must be a dict, got {getattr(self, name)!r}")
        if not isinstance(self.model, str):
            raise ScorekitError(f"model must be a preset name, got {self.model!r}")
        choice("process", list(PROCESS_NAMES))
        if self.prediction is not None:
            choice("prediction", PREDICTION_TYPES)
        choice("weighting", WEIGHTINGS)
        choice("variance", VARIANCE_CHOICES)
        _check_precondition(self)
        if (self.variance == "learned") != (self.weighting == "hybrid"):
            raise ScorekitError("a learned variance is trained by the hybrid loss and the hybrid loss needs a "
                                f"learned variance: use variance 'learned' with weighting 'hybrid' (got variance "
                                f"{self.variance!r}, weighting {self.weighting!r})")
        if self.variance == "learned" and self.process not in ("ddpm", "simple_ve"):
            raise ScorekitError(f"a learned variance needs a discrete process (ddpm or simple_ve), got "
                                f"{self.process!r}")
        choice("timesteps", list(TIMESTEP_SAMPLERS))
        self.timesteps_options = check_options(
            self.timesteps_options, option_schema(TIMESTEP_SAMPLERS[self.timesteps], skip=("process",)),
            f"{self.timesteps} timesteps option")
        self.weighting_options = check_options(
            self.weighting_options, option_schema(_losses.diffusion_loss, skip=_LOSS_ARGUMENTS),
            "weighting option")
        resolve_device(self.device)
        # the other option dicts are checked again, with the data, when the run is built; checked
        # here too, a mistake is reported before the data are loaded
        from ..data.dataset import check_data_options, parse_spec
        from ..models import PRESETS, check_model_options
        from ..processes import check_process_options

        check_data_options(parse_spec(self.data)[0], self.data_options)
        check_process_options(PROCESS_NAMES[self.process], self.process_options)
        if self.model in PRESETS:
            check_model_options(PRESETS[self.model]["kind"], self.model_options)
        choice("lr_schedule", LR_SCHEDULES)
        choice("mixed_precision", MIXED_PRECISION)
        choice("sample_sampler", list(SAMPLERS))
        whole("steps", 1)
        whole("batch_size", 1)
        whole("grad_accum", 1)
        whole("warmup_steps", 0)
        whole("seed", 0)
        whole("log_every", 1)
        whole("checkpoint_every", 1)
        whole("keep_checkpoints", 1, allow_none=True)
        whole("sample_every", 0)
        whole("sample_num", 1, allow_none=True)
        whole("sample_steps", 1, allow_none=True)
        whole("num_threads", 1, allow_none=True)
        number("lr", 0, open_lo=True)
        number("min_lr", 0)
        number("weight_decay", 0)
        number("adam_eps", 0, open_lo=True)
        number("grad_clip", 0, open_lo=True, allow_none=True)
        number("ema_decay", 0, 1, open_hi=True)
        number("label_dropout", 0, 1, open_hi=True, allow_none=True)
        betas = self.adam_betas
        if not (isinstance(betas, (tuple, list)) and len(betas) == 2
                and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
            raise ScorekitError(f"adam_betas must be two numbers in [0, 1), got {betas!r}")
        if self.batch_size % self.grad_accum:
            raise ScorekitError(f"batch_size {self.batch_size} must be a multiple of grad_accum "
                                f"{self.grad_accum} (equal micro-batches)",
                                cli=f"--batch-size {self.batch_size} must be a multiple of --grad-accum "
                                    f"{self.grad_accum} (equal micro-batches)")
        if self.mixed_precision == "fp16" and not str(self.device).startswith("cuda"):
            raise ScorekitError("mixed_precision 'fp16' needs a CUDA device; on CPU use 'bf16' or 'no'",
                                cli="--mixed-precision fp16 needs a CUDA device; on CPU use bf16 or no")
        return self


def _check_precondition(cfg: TrainConfig) -> None:
    """The preconditioning settings of a run (part of :meth:`TrainConfig.validate`)."""
    from ..precondition import PRECONDITIONS, check_sigma_data

    if cfg.precondition is not None and cfg.precondition not in PRECONDITIONS:
        raise ScorekitError(f"unknown precondition {cfg.precondition!r}; choose one of "
                            f"{', '.join(PRECONDITIONS)} (or None for none)")
    if cfg.precondition == "edm" and (cfg.prediction, cfg.weighting) != ("x0", "edm"):
        raise ScorekitError(
            "precondition 'edm' makes the network's output D = c_skip x + c_out F an x0 prediction, and the "
            "edm weighting gives F's error weight 1: use prediction 'x0' and weighting 'edm' (got prediction "
            f"{cfg.prediction!r}, weighting {cfg.weighting!r})")
    if cfg.sigma_data is None:
        return
    sigma_data = check_sigma_data(cfg.sigma_data)
    if cfg.precondition is None and cfg.weighting != "edm":
        raise ScorekitError(f"sigma_data {cfg.sigma_data!r} is used only by precondition 'edm' and weighting "
                            f"'edm'; this run has neither")
    other = cfg.weighting_options.get("sigma_data")
    if other is not None and other != sigma_data:
        raise ScorekitError(f"sigma_data {cfg.sigma_data!r} and weighting_options sigma_data {other!r} disagree; "
                            f"give it once")


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


def derive_seed(seed: int, name: str, rank: int = 0) -> int:
    """A 63-bit seed for the generator ``name`` of process ``rank``, from the run's ``seed``
    (SHA-256 of ``"seed/name/rank"``: independent streams, stable across versions)."""
    digest = hashlib.sha256(f"{int(seed)}/{name}/{int(rank)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def _generator(seed: int, name: str, rank: int = 0, device="cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(seed, name, rank))


class DataOrder:
    """Indices of the training data in random order, epoch after epoch, from one generator.

    Epoch ``e`` visits the data in the order of a permutation drawn from ``generator`` when the
    epoch begins; a batch that reaches the end of an epoch continues with the next one. The state
    (epoch, position, current permutation, generator state) is saved with each checkpoint.
    """

    def __init__(self, n: int, generator: torch.Generator):
        self.n = int(n)
        self.generator = generator
        self.epoch = 0
        self.position = 0
        self.permutation = torch.randperm(self.n, generator=generator)

    def next(self, size: int) -> Tensor:
        """The next ``size`` indices (``torch.long``)."""
        parts, need = [], int(size)
        while need > 0:
            if self.position == self.n:
                self.epoch += 1
                self.position = 0
                self.permutation = torch.randperm(self.n, generator=self.generator)
            take = min(need, self.n - self.position)
            parts.append(self.permutation[self.position:self.position + take])
            self.position += take
            need -= take
        return torch.cat(parts)

    def state(self) -> tuple[dict, dict]:
        return ({"data.permutation": self.permutation.clone(),
                 "rng.data": self.generator.get_state()},
                {"epoch": self.epoch, "position": self.position, "size": self.n})

    def load(self, tensors: dict, info: dict) -> None:
        if int(info.get("size", -1)) != self.n:
            raise ScorekitError(f"the checkpoint was trained on {info.get('size')} samples but the "
                                f"data now has {self.n}; resume with the same data")
        self.epoch, self.position = int(info["epoch"]), int(info["position"])
        self.permutation = tensors["data.permutation"].clone().long()
        self.generator.set_state(tensors["rng.data"])


# --- building what a run needs -------------------------------------------------------------------

def build_process(name: str, options: dict | None = None):
    """The forward process ``name`` (see :data:`PROCESS_NAMES`) built with ``options``."""
    from ..processes import process_from_config

    if name not in PROCESS_NAMES:
        raise ScorekitError(f"unknown process {name!r}; choose one of {', '.join(PROCESS_NAMES)}")
    options = dict(options or {})
    if name == "ddpm" and not {"schedule", "betas", "alpha_bar"} & set(options):
        options["schedule"] = DEFAULT_DDPM_SCHEDULE
    return process_from_config({"kind": PROCESS_NAMES[name], **options})


def default_prediction(process) -> str:
    r"""The prediction type a run of ``process`` trains unless told: ``"v"`` if the process is
    variance-preserving at its noisiest time (``alpha^2 + sigma^2 <= 1``), else ``"eps"``.

    The targets' scales decide it: ``v = alpha eps - sigma x_0`` has per-dimension variance
    ``alpha^2 + sigma^2 Var[x_0]``, about 1 on a VP process but up to ``sigma_max^2 Var[x_0]`` on a
    variance-exploding one (``simple_ve``: ``T Var[x_0]``, about 350 on the digits at ``T = 1000``),
    so the loss is dominated by the noisiest steps and the network must output values of size
    ``sigma_max``; ``eps`` has variance 1 at every time on every process.
    """
    t = torch.as_tensor(process.t_max, dtype=torch.float64)
    return "v" if float(process.alpha(t) ** 2 + process.sigma(t) ** 2) <= 1 + 1e-9 else "eps"


def coarse_noise_warning(process, x: Tensor) -> str | None:
    r"""A warning (or ``None``) when the smallest noise level of ``process`` is not small next to
    the spread of the data ``x``: every sampler's last step returns the denoised mean
    ``E[x_0 | x_t]`` at the lowest model time ``t_min``, which averages over all data within about
    ``sigma(t_min) / alpha(t_min)`` of the sample, so detail finer than that is lost whatever the
    network. Warns when that level exceeds a tenth of the data's standard deviation (``simple_ve``:
    ``sigma = 1`` at ``t = 1`` on data in ``[-1, 1]``; every other process starts near 0.01).
    """
    from ..timesteps import edm_sigma

    level = float(edm_sigma(process, process.t_min))
    spread = float(x.float().std())
    if not (spread > 0 and level > 0.1 * spread):
        return None
    return (f"{type(process).__name__}'s smallest noise level sigma/alpha = {level:.3g} is not small next to the "
            f"data's standard deviation {spread:.3g}: samples end at the denoised mean E[x_0 | x_t] at that level "
            f"and lose detail finer than about {level:.2g}, even from an exact model; for sharp samples use a "
            f"process whose smallest level is far below the data's spread (ddpm, vp, ve and edm start near 0.01 "
            f"by default; a DDPM with more steps T starts lower) or data on a larger scale")


def _with_default_prediction(config: TrainConfig) -> TrainConfig:
    if config.prediction is not None:
        return config
    process = build_process(config.process, config.process_options)
    return dataclasses.replace(config, prediction=default_prediction(process))


def resolve_preset(name: str, dataset) -> str:
    """The preset name, with ``"auto"`` meaning ``"tiny"`` for images and ``"mlp"`` for vectors."""
    from ..models import PRESETS

    if name == "auto":
        return "tiny" if dataset.is_image else "mlp"
    if name not in PRESETS:
        raise ScorekitError(f"unknown model preset {name!r}; choose one of auto, {', '.join(PRESETS)}")
    return name


def model_config_for(config: TrainConfig, dataset, process) -> dict:
    """The network configuration of a run: the preset, filled in for the data, then overrides."""
    from ..models import PRESETS, check_model_options

    name = resolve_preset(config.model, dataset)
    cfg = dict(PRESETS[name])
    if cfg["kind"] == "unet":
        if not dataset.is_image:
            raise ScorekitError(f"model {config.model!r} is a U-Net for images, but {dataset.spec} holds "
                                f"{dataset.shape} vectors; use model='mlp'",
                                cli=f"model {config.model!r} is a U-Net for images, but {dataset.spec} "
                                    f"holds {dataset.shape} vectors; use --model mlp")
        cfg["in_channels"] = dataset.shape[0]
        cfg.pop("out_channels", None)
    elif cfg["kind"] == "mlp":
        if dataset.is_image:
            raise ScorekitError(f"model {config.model!r} is an MLP for vectors, but {dataset.spec} holds "
                                f"{dataset.shape} images; use an image preset (tiny, small, base)")
        cfg["dim"] = dataset.shape[0]
    cfg["num_classes"] = dataset.num_classes
    cfg["seed"] = int(config.seed)
    if config.variance == "learned":
        cfg["learn_variance"] = True
    if not process.discrete:
        cfg["time_scale"] = 1000.0 / float(process.t_max)
    cfg.update(config.model_options)
    if config.precondition is not None and "time_scale" not in config.model_options:
        cfg["time_scale"] = 1.0     # the time is c_noise = ln(sigma / alpha) / 4, embedded as in EDM
    kind = cfg.pop("kind")
    return {"kind": kind, **check_model_options(kind, cfg)}


def make_optimizer(net: nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``net``'s parameters with the run's settings; the fused implementation (one
    kernel for all tensors: several times faster for small networks on CPU) where torch has it."""
    kwargs = dict(lr=config.lr, betas=tuple(config.adam_betas), eps=config.adam_eps,
                  weight_decay=config.weight_decay)
    try:
        return torch.optim.AdamW(net.parameters(), fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(net.parameters(), **kwargs)


def _check_data_fits(dataset, net_config: dict) -> None:
    from ..data import check_compatible

    if net_config["kind"] == "unet":
        check_compatible(dataset, channels=net_config["in_channels"],
                         multiple_of=2 ** (len(net_config["channel_mults"]) - 1),
                         num_classes=net_config.get("num_classes"))
    else:
        check_compatible(dataset, dim=net_config["dim"], num_classes=net_config.get("num_classes"))


def _versions() -> dict:
    from .. import __version__

    try:
        import safetensors
        st = safetensors.__version__
    except Exception:  # pragma: no cover - safetensors is a dependency
        st = None
    return {"scorekit": __version__, "torch": torch.__version__, "safetensors": st,
            "python": platform.python_version()}


def settings_changed(saved: TrainConfig, config: TrainConfig) -> dict:
    """``{field: (saved value, new value)}`` for the settings of ``config`` that differ from the
    run's ``saved`` ones and may not change when it resumes (all but :data:`RESUMABLE_FIELDS`)."""
    mine, theirs = config.to_dict(), saved.to_dict()
    return {k: (theirs[k], mine[k]) for k in mine if k not in RESUMABLE_FIELDS and mine[k] != theirs[k]}


# --- the trainer ---------------------------------------------------------------------------------

class _Trainer:
    def __init__(self, config: TrainConfig, out_dir: str, ctx: DistributedContext, *, resume: bool,
                 progress: bool, log):
        self.ctx = ctx
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self.progress = progress and ctx.is_main
        self.log = log if ctx.is_main else None
        self.config, resume_from = self._settle_config(config, resume)
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
        self.process = build_process(cfg.process, cfg.process_options)
        if cfg.sample_steps is not None:
            from ..timesteps import check_step_count

            check_step_count(self.process, cfg.sample_steps, "sample_steps", cli_name="--sample-steps")
        from ..models import build_model

        self.net_config = model_config_for(cfg, self.dataset, self.process) if self.saved_run is None \
            else dict(self.saved_run["model"])
        _check_data_fits(self.dataset, self.net_config)
        self.net = build_model(dict(self.net_config)).to(self.device)
        self.net.train()
        self.conditional = self.net_config.get("num_classes") is not None
        if self.conditional and self.dataset.y is None:
            raise ScorekitError(f"the model is class-conditional but {self.dataset.spec} has no labels")
        self.label_dropout = (0.1 if self.conditional else 0.0) if cfg.label_dropout is None \
            else float(cfg.label_dropout)
        if self.label_dropout > 0 and not self.conditional:
            unlabelled = f"needs labelled data and a class-conditional model; {self.dataset.spec} has none"
            raise ScorekitError(f"label_dropout={cfg.label_dropout} {unlabelled}",
                                cli=f"--label-dropout {cfg.label_dropout} {unlabelled}")
        self.ddp_net = ctx.wrap(self.net)
        self.precondition = self._precondition_config()
        # what the loss trains: the network, or the preconditioned denoiser D around it
        self.loss_net = self.denoising_net(self.ddp_net)
        self.ema = EMA(self.net, cfg.ema_decay, warmup=cfg.ema_warmup)
        self.optimizer = make_optimizer(self.net, cfg)
        try:
            self.timestep_sampler = TIMESTEP_SAMPLERS[cfg.timesteps](self.process, **cfg.timesteps_options)
        except TypeError as err:
            raise ScorekitError(f"bad timesteps_options for {cfg.timesteps!r}: {err}") from None
        self.scaler = torch.amp.GradScaler("cuda") if cfg.mixed_precision == "fp16" else None

        per_rank = cfg.batch_size // ctx.world_size
        if cfg.batch_size % (ctx.world_size * cfg.grad_accum):
            raise ScorekitError(f"batch_size {cfg.batch_size} must be a multiple of world size "
                                f"{ctx.world_size} x grad_accum {cfg.grad_accum}")
        self.per_rank = per_rank
        self.micro = per_rank // cfg.grad_accum

        seed = cfg.seed
        self.order = DataOrder(len(self.dataset), _generator(seed, "data"))
        self.augment_gen = _generator(seed, "augment")
        self.label_gen = _generator(seed, "labels")
        self.noise_gen = _generator(seed, "noise", ctx.rank, device=self.device)
        torch.manual_seed(derive_seed(seed, "torch", ctx.rank))

        self.step = 0
        self.elapsed = 0.0
        self.interval = {"loss": 0.0, "grad_norm": 0.0, "count": 0}
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
    def _settle_config(self, config: TrainConfig | None, resume: bool):
        run_cfg_path = os.path.join(self.out_dir, RUN_CONFIG_FILE)
        exists = os.path.isfile(run_cfg_path) or os.path.isdir(
            os.path.join(self.out_dir, ckpt_io.CHECKPOINTS_DIR))
        self.saved_run = None
        if os.path.exists(self.out_dir) and not os.path.isdir(self.out_dir):
            raise ScorekitError(f"the run folder {self.out_dir!r} is an existing file; give a folder")
        if exists and not resume:
            taken = f"{self.out_dir!r} already holds a training run; continue it with"
            raise ScorekitError(f"{taken} resume=True or choose another out_dir",
                                cli=f"{taken} --resume or choose another --out folder")
        if not exists:
            if config is None:
                raise ScorekitError(f"nothing to resume in {self.out_dir!r} (no run there); give a "
                                    f"training configuration to start one")
            return _with_default_prediction(config.validate()), None
        saved = ckpt_io.read_config(self.out_dir) if os.path.isfile(run_cfg_path) else None
        if saved is None:
            raise ScorekitError(f"{self.out_dir!r} has checkpoints but no {RUN_CONFIG_FILE}; it is not "
                                f"a complete run folder")
        saved_cfg = TrainConfig.from_dict(saved.get("train", {}), run_cfg_path)
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
        return merged.validate(), resume_from

    def _precondition_config(self) -> dict | None:
        """The preconditioning as ``config.json`` records it (``None``: none)."""
        from ..precondition import resolve_sigma_data

        cfg = self.config
        if cfg.precondition is None:
            return None
        sigma_data = cfg.weighting_options.get("sigma_data") if cfg.sigma_data is None else cfg.sigma_data
        return {"kind": cfg.precondition, "sigma_data": resolve_sigma_data(self.process, sigma_data)}

    def denoising_net(self, net):
        """``net`` as the loss and the samplers see it: wrapped by the run's preconditioning."""
        from ..precondition import precondition

        return precondition(net, self.process, self.precondition)

    def _weighting_options(self) -> dict:
        """The loss options; the edm weighting gets the run's ``sigma_data``."""
        options = dict(self.config.weighting_options)
        if self.precondition is not None:
            options["sigma_data"] = self.precondition["sigma_data"]
        elif self.config.sigma_data is not None:
            options["sigma_data"] = self.config.sigma_data
        return options

    def run_config(self) -> dict:
        cfg = self.config
        return {
            "format": ckpt_io.CONFIG_FORMAT,
            "format_version": FORMAT_VERSION,
            "versions": _versions(),
            "train": cfg.to_dict(),
            "model_preset": resolve_preset(cfg.model, self.dataset),
            "model": dict(self.net_config),
            "process": self.process.config(),
            "prediction_type": cfg.prediction,
            "precondition": self.precondition,
            "loss": {"weighting": cfg.weighting, "options": self._weighting_options(),
                     "timesteps": cfg.timesteps, "timesteps_options": dict(cfg.timesteps_options)},
            "data": self.dataset.config(),
            "sample_shape": list(self.dataset.shape),
            "num_classes": self.dataset.num_classes,
            "class_names": list(self.dataset.class_names) if self.dataset.class_names else None,
            "ema": {"decay": cfg.ema_decay, "warmup": cfg.ema_warmup},
            "label_dropout": self.label_dropout,
        }

    def _write_run_config(self) -> None:
        import json
        from ..plotting import write_text

        text = json.dumps(self.run_config(), indent=2, allow_nan=False) + "\n"
        write_text(os.path.join(self.out_dir, RUN_CONFIG_FILE), text)

    # -- checkpoints ------------------------------------------------------------------------------
    def _trainer_state(self) -> tuple[dict, dict]:
        ctx = self.ctx
        opt_tensors, opt_structure = ckpt_io.flatten_optimizer_state(self.optimizer.state_dict())
        tensors = dict(opt_tensors)
        order_tensors, order_info = self.order.state()
        tensors.update(order_tensors)
        tensors["rng.augment"] = self.augment_gen.get_state()
        tensors["rng.labels"] = self.label_gen.get_state()
        for r, state in enumerate(ctx.gather_bytes(self.noise_gen.get_state())):
            tensors[f"rng.noise.rank{r}"] = state
        for r, state in enumerate(ctx.gather_bytes(torch.get_rng_state())):
            tensors[f"rng.torch.rank{r}"] = state
        if self.device.type == "cuda":
            for r, state in enumerate(ctx.gather_bytes(torch.cuda.get_rng_state(self.device))):
                tensors[f"rng.cuda.rank{r}"] = state
        ts_state = self.timestep_sampler.state_dict() if hasattr(self.timestep_sampler, "state_dict") else {}
        ts_json = {}
        for k, v in ts_state.items():
            if isinstance(v, Tensor):
                tensors[f"timesteps.{k}"] = v
            else:
                ts_json[k] = v
        info = {
            "format_version": FORMAT_VERSION,
            "step": self.step,
            "data": order_info,
            "ema": {"decay": self.ema.decay, "warmup": self.ema.warmup, "num_updates": self.ema.num_updates},
            "optimizer": {"type": "AdamW", **opt_structure},
            "lr": self.optimizer.param_groups[0]["lr"],
            "timestep_sampler": {"name": self.config.timesteps, "state": ts_json},
            "grad_scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "metrics_interval": dict(self.interval),
            "elapsed_seconds": self.elapsed,
            "world_size": ctx.world_size,
            "batch_size": self.config.batch_size,
            "grad_accum": self.config.grad_accum,
            "versions": _versions(),
        }
        return tensors, info

    def save(self, *, final: bool = False) -> str:
        """Write a checkpoint (rank 0) and redraw the loss curve: always for the ``final`` one,
        otherwise at most every :data:`PLOT_INTERVAL` seconds (a plot costs about a second)."""
        tensors, info = self._trainer_state()           # collective under DDP: every rank calls
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
        ctx = self.ctx
        info = ckpt_io.read_trainer_info(ckpt_dir)
        tensors = ckpt_io.load_tensors(os.path.join(ckpt_dir, ckpt_io.TRAINER_TENSORS_FILE), "trainer state")
        for module, name in ((self.net, ckpt_io.MODEL_FILE), (self.ema.net, ckpt_io.EMA_FILE)):
            file = os.path.join(ckpt_dir, name)
            state = ckpt_io.load_tensors(file, "weights file")
            ckpt_io.check_state_fits(module, state, file)
            module.load_state_dict(state)
        try:
            self.step = int(info["step"])
            self.ema.num_updates = int(info["ema"]["num_updates"])
            opt_state = ckpt_io.unflatten_optimizer_state(info["optimizer"], tensors)
            self.optimizer.load_state_dict(opt_state)
            self.order.load(tensors, info["data"])
            self.augment_gen.set_state(tensors["rng.augment"])
            self.label_gen.set_state(tensors["rng.labels"])
            ts_state = {k[len("timesteps."):]: v for k, v in tensors.items() if k.startswith("timesteps.")}
            ts_state.update(info.get("timestep_sampler", {}).get("state", {}))
            if hasattr(self.timestep_sampler, "load_state_dict"):
                self.timestep_sampler.load_state_dict(ts_state)
            if self.scaler is not None and info.get("grad_scaler"):
                self.scaler.load_state_dict(info["grad_scaler"])
            self.interval = dict(info.get("metrics_interval", self.interval))
            self.elapsed = float(info.get("elapsed_seconds", 0.0))
        except (KeyError, TypeError, ValueError) as err:
            raise ScorekitError(f"the trainer state in {ckpt_dir} is incomplete or corrupt "
                                f"({type(err).__name__}: {err}); resume from another checkpoint") from None
        saved_world = int(info.get("world_size", 1))
        key = f"rng.noise.rank{ctx.rank}"
        if key in tensors:
            self.noise_gen.set_state(tensors[key])
            torch.set_rng_state(tensors[f"rng.torch.rank{ctx.rank}"])
            if self.device.type == "cuda" and f"rng.cuda.rank{ctx.rank}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.rank{ctx.rank}"], self.device)
        elif self.log:
            self.log(f"note: the checkpoint was written by {saved_world} process(es); process {ctx.rank} "
                     f"starts fresh noise generators, so this run will not repeat an uninterrupted one")
        self.last_checkpoint = ckpt_dir

    # -- one step ---------------------------------------------------------------------------------
    def _global_batch(self) -> tuple[Tensor, Tensor | None]:
        cfg = self.config
        idx = self.order.next(cfg.batch_size)
        x = self.dataset.x[idx]
        x = self.dataset.augment(x, self.augment_gen)
        y = None
        if self.conditional:
            y = self.dataset.y[idx].clone()
            if self.label_dropout > 0:
                drop = torch.rand(y.shape[0], generator=self.label_gen) < self.label_dropout
                y = torch.where(drop, torch.full_like(y, self.net_config["num_classes"]), y)
        return x, y

    def _autocast(self):
        mp = self.config.mixed_precision
        if mp == "no":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if mp == "bf16" else torch.float16
        return torch.autocast(device_type=self.device.type, dtype=dtype)

    def train_step(self) -> tuple[float, float]:
        """One optimiser step; returns ``(loss, grad_norm)`` averaged over the whole batch."""
        cfg, ctx = self.config, self.ctx
        lr = learning_rate(self.step, lr=cfg.lr, warmup_steps=cfg.warmup_steps, total_steps=cfg.steps,
                           schedule=cfg.lr_schedule, min_lr=cfg.min_lr)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        x, y = self._global_batch()
        lo = ctx.rank * self.per_rank
        x, y = x[lo:lo + self.per_rank], (None if y is None else y[lo:lo + self.per_rank])
        self.optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), dtype=torch.float64)
        ts, losses = [], []
        for j in range(cfg.grad_accum):
            xm = x[j * self.micro:(j + 1) * self.micro].to(self.device)
            ym = None if y is None else y[j * self.micro:(j + 1) * self.micro].to(self.device)
            last = j == cfg.grad_accum - 1
            sync = contextlib.nullcontext() if (last or not ctx.distributed) else self.ddp_net.no_sync()
            with sync:
                with self._autocast():
                    out = _losses.diffusion_loss(
                        self.loss_net, self.process, xm, prediction_type=cfg.prediction,
                        weighting=cfg.weighting, generator=self.noise_gen, y=ym,
                        timestep_sampler=self.timestep_sampler, **self._weighting_options())
                scaled = out.loss / cfg.grad_accum
                if self.scaler is not None:
                    scaled = self.scaler.scale(scaled)
                scaled.backward()
            loss_sum += out.loss.detach().to("cpu", torch.float64)
            ts.append(out.t.detach())
            losses.append(out.per_sample.detach())
        loss = float(ctx.all_reduce_sum(loss_sum)) / (cfg.grad_accum * ctx.world_size)
        if ctx.any(not math.isfinite(loss)):
            self._diverged("loss", loss, lr)
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        max_norm = cfg.grad_clip if cfg.grad_clip is not None else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(self.net.parameters(), max_norm))
        if self.scaler is None and ctx.any(not math.isfinite(grad_norm)):
            self._diverged("gradient norm", grad_norm, lr, loss=loss)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.ema.update(self.net)
        if hasattr(self.timestep_sampler, "update"):
            t_all = torch.cat([self._gather(t) for t in ts])
            l_all = torch.cat([self._gather(v.float()) for v in losses])
            self.timestep_sampler.update(t_all.cpu(), l_all.cpu())
        self.step += 1
        return loss, grad_norm

    def _gather(self, t: Tensor) -> Tensor:
        if not self.ctx.distributed:
            return t
        import torch.distributed as dist

        out = [torch.empty_like(t) for _ in range(self.ctx.world_size)]
        dist.all_gather(out, t.contiguous())
        return torch.cat(out)

    def _diverged(self, what: str, value: float, lr: float, *, loss: float | None = None):
        kind = "NaN" if math.isnan(value) else "infinite"
        extra = f", loss {loss:.4g}" if loss is not None else ""
        if self.last_checkpoint:
            where = (f"the last good checkpoint is at {self.last_checkpoint}", "then resume from it")
        else:
            where = ("no checkpoint was saved before it", "then start again")
        stopped = f"{what} became {kind} at step {self.step + 1} (learning rate {lr:.3g}{extra}); {where[0]}."
        raise ScorekitError(
            f"{stopped} Lower the learning rate (lr), clip gradients (grad_clip) or check the data, {where[1]}",
            cli=f"{stopped} Lower the learning rate (--lr), clip gradients (--grad-clip) or check the data, "
                f"{where[1]}")

    # -- outputs ------------------------------------------------------------------------------------
    def _log_row(self, images_per_second: float) -> dict:
        n = max(self.interval["count"], 1)
        row = {"step": self.step, "loss": self.interval["loss"] / n,
               "lr": self.optimizer.param_groups[0]["lr"],
               "grad_norm": self.interval["grad_norm"] / n,
               "ema_decay": self.ema.current_decay(),
               "images_per_second": round(images_per_second, 3),
               "seconds": round(self.elapsed, 3)}
        self.interval = {"loss": 0.0, "grad_norm": 0.0, "count": 0}
        return row

    def sample_grid(self, stop: StopRequest | None = None) -> str | None:
        """Sample from the EMA weights with fixed noise and write the grid (or scatter plot); a
        stop signal (``stop``) abandons the grid (``None``, nothing written)."""
        if not self.ctx.is_main:
            return None
        from ..sampling import sample
        from .checkpoint import LabelledModel

        cfg = self.config
        n = cfg.sample_num or (64 if self.dataset.is_image else 2000)
        shape = (n, *self.dataset.shape)
        x_T = self.process.prior_sample(shape, generator=_generator(cfg.seed, "samples"),
                                        dtype=torch.float32).to(self.device)
        y = None
        if self.conditional:
            y = (torch.arange(n) % self.net_config["num_classes"]).to(self.device)
        model = LabelledModel(self.denoising_net(self.ema.net), y)
        if self.net_config.get("learn_variance"):
            from ..variances import PredictionHead

            model = PredictionHead(model)                   # the grids use the prediction only
        from ..timesteps import default_step_count

        steps = cfg.sample_steps if cfg.sample_steps is not None else default_step_count(self.process)

        def give_up_on_stop(*_):
            if stop is not None and stop.requested:
                raise _GridAbandoned

        try:
            x0 = sample(model, x_T, process=self.process, prediction_type=cfg.prediction,
                        sampler=cfg.sample_sampler, num_steps=steps, callback=give_up_on_stop,
                        generator=_generator(cfg.seed, "sampler", device=self.device))
        except _GridAbandoned:
            return None
        folder = os.path.join(self.out_dir, SAMPLES_DIR)
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{ckpt_io.checkpoint_name(self.step)}.png")
        write_samples(x0, path, data=self.dataset.x,
                      title=f"step {self.step}: {cfg.sample_sampler}, {steps} steps, EMA weights",
                      nrow=self.net_config["num_classes"] if self.conditional else None)
        return path

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
            preset = resolve_preset(cfg.model, self.dataset)
            self.log(f"{cfg.data}: {len(self.dataset)} samples of shape {self.dataset.shape}; model "
                     f"{preset} ({count_parameters(self.net):,} parameters); {cfg.process} "
                     f"{cfg.prediction}-prediction, {cfg.weighting} weighting; {word} step "
                     f"{start_step} of {cfg.steps}; writing to {self.out_dir}")
        warning = coarse_noise_warning(self.process, self.dataset.x) if ctx.is_main and start_step == 0 else None
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
        try:
            end = cfg.steps if stop_at_step is None else min(cfg.steps, int(stop_at_step))
            while self.step < end:
                interrupted = self._stop_signal(stop)
                if interrupted:
                    break
                # A time limit counts optimiser steps only; every process must agree to stop.
                if max_seconds is not None and ctx.any(trained_seconds >= max_seconds):
                    break
                t0 = time.perf_counter()
                loss, grad_norm = self.train_step()
                now = time.perf_counter()
                self.elapsed += now - t0
                trained_seconds += now - t0
                images_since += cfg.batch_size
                self.interval["loss"] += loss
                self.interval["grad_norm"] += grad_norm
                self.interval["count"] += 1
                bar.update(1)
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    ips = images_since / max(now - t_last, 1e-9)
                    row = self._log_row(ips)
                    last_loss = row["loss"]
                    if ctx.is_main:
                        self.metrics.append(row)
                    bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{ips:.0f}", refresh=False)
                    t_last, images_since = time.perf_counter(), 0
                t_out = time.perf_counter()
                if cfg.sample_every and self.step % cfg.sample_every == 0 and self.step < cfg.steps:
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


def _saved_device(out_dir) -> str:
    """The device a run folder's configuration names (cpu if there is none to read)."""
    try:
        return ckpt_io.read_config(os.fspath(out_dir)).get("train", {}).get("device", "cpu")
    except ScorekitError:
        return "cpu"


def train(config: TrainConfig | None, out_dir, *, resume: bool = False, progress: bool = True,
          log=None, stop_at_step: int | None = None, max_seconds: float | None = None) -> TrainResult:
    """Train a diffusion model as ``config`` says, writing the run into ``out_dir``.

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
            trainer = _Trainer(config, out_dir, ctx, resume=resume, progress=progress, log=log)
            if trainer.config.num_threads and trainer.config.num_threads != torch.get_num_threads():
                torch.set_num_threads(int(trainer.config.num_threads))
            if max_seconds is not None and not (float(max_seconds) > 0):
                raise ScorekitError(f"max_seconds must be positive, got {max_seconds}")
            return trainer.run(stop_at_step, max_seconds, stop)
    finally:
        torch.set_num_threads(threads_before)
        torch.set_rng_state(rng_before)
        ctx.close()


__all__ = ["DEFAULT_DDPM_SCHEDULE", "DataOrder", "LR_SCHEDULES", "MIXED_PRECISION", "PROCESS_NAMES",
           "RESUMABLE_FIELDS", "TIMESTEP_SAMPLERS", "TrainConfig", "TrainResult", "build_process",
           "coarse_noise_warning", "default_prediction", "derive_seed", "learning_rate", "make_optimizer",
           "model_config_for", "resolve_preset", "settings_changed", "train", "write_samples"]
