r"""What defines a training run: :class:`TrainConfig`, its checks, and what is built from it.

:class:`TrainConfig` holds every setting of a run and is stored in the run's ``config.json``;
:meth:`TrainConfig.validate` names the first bad one. The helpers here turn the settings into the
pieces of a run without training anything: the forward process (:func:`build_process`), the
prediction type a process trains by default (:func:`default_prediction`), the network
configuration for the data (:func:`model_config_for`), and the comparison a resumed run makes
with the settings it was started with (:func:`settings_changed`).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import torch

from ..errors import ScorekitError, check_options, option_schema
from .distributed import resolve_device

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
#: ``TrainConfig.mixed_precision``; ``auto`` is resolved when a run starts (:func:`resolve_mixed_precision`)
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
#: ``TrainConfig.compile``: ``torch.compile`` the network the loss calls (``auto``: on CUDA only)
COMPILE_CHOICES = ("auto", "yes", "no")

#: fields of TrainConfig that choose how the kernels compute (compilation, memory layout, deterministic
#: algorithms), not what: a resumed run may change them
KERNEL_FIELDS = ("compile", "channels_last", "deterministic")

#: fields of TrainConfig that a resumed run may change: the length and learning-rate schedule
#: (e.g. a lower rate after a divergence), the outputs and how the machine computes (device,
#: threads, compilation, memory layout, deterministic kernels); the rest defines what is trained
RESUMABLE_FIELDS = ("steps", "lr", "lr_schedule", "warmup_steps", "min_lr", "grad_clip",
                    "log_every", "checkpoint_every", "keep_checkpoints", "sample_every",
                    "sample_num", "sample_steps", "sample_sampler", "num_threads", "device",
                    *KERNEL_FIELDS)

#: the arguments of the loss that a run sets itself (the rest are its ``weighting_options``)
_LOSS_ARGUMENTS = ("net", "process", "x0", "prediction_type", "weighting", "generator", "y",
                   "timestep_sampler")


@dataclass
class TrainConfig:
    """Everything that defines a training run (stored in the run's ``config.json``).

    Objective:
        objective: what the run trains (:mod:`scorekit.train.objectives`): ``"diffusion"`` (the
            default: a denoising network, by the loss of :func:`scorekit.losses.diffusion_loss`) or
            ``"classifier"`` (a noise-aware classifier ``p_phi(y | x_t, t)`` for classifier
            guidance, by cross-entropy on labelled data; it has no prediction type, weighting,
            preconditioning, learned variance, label dropout or sample grids, logs the batch
            accuracy, and its ``model`` is a classifier preset: ``auto`` is ``classifier-tiny`` for
            images, ``classifier-mlp`` for vectors). The process and time sampler are those of a
            diffusion run.

    Task (a trained image-to-image model, :mod:`scorekit.tasks.degradations`):
        task: ``None`` (a generative model) or a degradation in
            :data:`scorekit.tasks.degradations.DEGRADATIONS` (``sr2``, ``sr4``, ``colorize``,
            ``inpaint``, ``uncrop``, ``jpeg``): the network is conditioned on the degraded view
            ``[y, mask]`` of each clean training image, drawn on the fly from the run's ``degrade``
            generator and concatenated to ``x_t`` at its input (SR3, Saharia et al. 2021; Palette,
            Saharia et al. 2022), so it learns ``E[x_0 | x_t, y]``; images only. The network is not
            class-conditional unless ``model_options`` give ``num_classes``.
        task_options: the degradation's options (e.g. ``{"kind": "strokes"}`` for inpaint,
            ``{"quality_min": 10}`` for jpeg), checked against its constructor.
        cond_dropout: probability of replacing a sample's condition image by the null one (zeros),
            which trains the unconditional model beside the conditional one for classifier-free
            guidance on the image (``guidance_scale``); 0 by default (a restoration model has no
            use for it otherwise).
        init_from: a run folder or checkpoint whose EMA weights start the network instead of a
            random initialisation (:mod:`scorekit.train.init`): the same model preset and options,
            forward process and prediction; a task model may start from an unconditional run, its
            new condition channels at zero, so that at step 0 it is that run's denoiser. Only a new
            run reads it; a resumed run continues from its own checkpoint.

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
        mixed_precision: ``auto`` (the default), ``no``, ``bf16`` (autocast; CPU or GPU) or ``fp16``
            (GPU, with loss scaling). Weights, optimiser state and EMA stay float32. ``auto`` is
            ``bf16`` on a CUDA device that supports it (:func:`torch.cuda.is_bf16_supported`) and
            ``no`` elsewhere; a new run records the resolved value in ``config.json``, and
            ``auto`` on resume keeps the run's recorded value, so a run started on a GPU keeps
            bf16 when it continues on another device. Measured on a 2-core Xeon with AMX /
            AVX512-BF16 and one thread: bf16 trains the ``tiny`` U-Net on 32x32 MNIST 1.3-1.7x
            faster (its loss followed fp32's within 2 % over 150 steps), but is no faster on 8x8
            digits, where the layers are too small; hence ``no`` on a CPU.

    Machine and outputs:
        seed: the seed every generator is derived from.
        device: ``cpu``, ``cuda`` or ``cuda:N``.
        compile: ``auto`` (the default: ``yes`` on CUDA, ``no`` on a CPU), ``yes`` or ``no``:
            :func:`torch.compile` the network the loss calls (not the EMA copy; checkpoints keep
            the network's own tensor names). It changes how the sums are ordered in the kernels,
            not the maths, so a run may resume with another value; the first step's extra
            seconds (the compilation) are logged. Dropout masks inside a compiled network come
            from the compiler's own random stream, not torch's global generator.
        channels_last: keep an image network's weights and the batches in
            :data:`torch.channels_last` layout (faster convolutions on tensor-core GPUs); the
            same maths, other rounding.
        deterministic: use only deterministic kernels
            (``torch.use_deterministic_algorithms(True)``, cuDNN without benchmarking,
            ``CUBLAS_WORKSPACE_CONFIG`` set if unset) during the run, so that a GPU run repeats
            itself bit for bit; an operation with no deterministic kernel raises. Restored
            afterwards. A CPU run is deterministic either way.
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
    mixed_precision: str = "auto"
    seed: int = 0
    device: str = "cpu"
    num_threads: int | None = None
    compile: str = "auto"
    channels_last: bool = False
    deterministic: bool = False
    log_every: int = 10
    checkpoint_every: int = 500
    keep_checkpoints: int | None = 3
    sample_every: int = 0
    sample_num: int | None = None
    sample_steps: int | None = None
    sample_sampler: str = "ddim"
    objective: str = "diffusion"
    task: str | None = None
    task_options: dict = field(default_factory=dict)
    cond_dropout: float = 0.0
    init_from: str | None = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["adam_betas"] = list(self.adam_betas)
        return d

    def as_recorded(self) -> dict:
        """:meth:`to_dict` with ``mixed_precision="auto"`` resolved for ``device``, as a new run
        records it in ``config.json``: what to compare when asking whether a run was trained with
        these settings."""
        return dataclasses.replace(
            self, mixed_precision=resolve_mixed_precision(self.mixed_precision, self.device)).to_dict()

    def matches_recorded(self, recorded) -> bool:
        """Whether ``recorded`` (a configuration an earlier run wrote: :meth:`to_dict` or
        :meth:`as_recorded`, perhaps before some options existed) describes these settings. It is
        read back through :meth:`from_dict`, so options added since compare at their defaults and
        ``"auto"`` settings as they resolve; what a cache of trained runs asks before reusing one."""
        if not isinstance(recorded, dict):
            return False
        return TrainConfig.from_dict(recorded).as_recorded() == self.as_recorded()

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

    def validate(self, objectives: dict | None = None) -> "TrainConfig":
        """Raise :class:`ScorekitError` naming the first bad setting; returns ``self``.

        ``objectives`` maps the objective names this run may name to their classes (default
        :data:`scorekit.train.objectives.OBJECTIVES`); the named one checks its own settings
        (``Objective.check_config``)."""
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
        from .objectives import OBJECTIVES

        if not isinstance(self.data, str) or not self.data:
            raise ScorekitError(f"data must be a dataset spec such as 'digits', got {self.data!r}")
        for name in ("data_options", "model_options", "process_options", "weighting_options",
                     "timesteps_options", "task_options"):
            if not isinstance(getattr(self, name), dict):
                raise ScorekitError(f"{name} must be a dict, got {getattr(self, name)!r}")
        if not isinstance(self.model, str):
            raise ScorekitError(f"model must be a preset name, got {self.model!r}")
        choice("process", list(PROCESS_NAMES))
        if self.prediction is not None:
            choice("prediction", PREDICTION_TYPES)
        choice("weighting", WEIGHTINGS)
        choice("variance", VARIANCE_CHOICES)
        known = OBJECTIVES if objectives is None else objectives
        if not isinstance(self.objective, str) or self.objective not in known:
            raise ScorekitError(f"unknown objective {self.objective!r}; choose one of {', '.join(known)} (or "
                                f"pass an Objective subclass to train(objective=...))")
        known[self.objective].check_config(self)    # the objective's own settings, e.g. preconditioning
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
        choice("compile", COMPILE_CHOICES)
        for name in ("channels_last", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ScorekitError(f"{name} must be True or False, got {getattr(self, name)!r}")
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
        number("cond_dropout", 0, 1, open_hi=True)
        if self.init_from is not None and not (isinstance(self.init_from, str) and self.init_from):
            raise ScorekitError(f"init_from must be the path of a run folder or checkpoint, got {self.init_from!r}")
        self._check_task()
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

    def _check_task(self) -> None:
        """The task, its options and the condition dropout that only a task has."""
        from ..tasks.degradations import check_task_options

        if self.task is None:
            if self.task_options:
                raise ScorekitError(f"task_options={self.task_options!r} needs a task (task='sr2', 'inpaint', ...)",
                                    cli="--task-option needs --task (sr2, inpaint, ...)")
            if self.cond_dropout:
                raise ScorekitError(f"cond_dropout={self.cond_dropout!r} needs a task (task='sr2', 'inpaint', ...)",
                                    cli="--cond-dropout needs --task (sr2, inpaint, ...)")
            return
        if not isinstance(self.task, str):
            raise ScorekitError(f"task must be the name of a degradation such as 'sr2', got {self.task!r}")
        self.task_options = check_task_options(self.task, self.task_options)


def check_diffusion_settings(cfg: TrainConfig) -> None:
    """The settings only a diffusion run has: preconditioning and learned variances (part of
    :meth:`TrainConfig.validate` through ``DiffusionObjective.check_config``)."""
    _check_precondition(cfg)
    if (cfg.variance == "learned") != (cfg.weighting == "hybrid"):
        raise ScorekitError("a learned variance is trained by the hybrid loss and the hybrid loss needs a "
                            f"learned variance: use variance 'learned' with weighting 'hybrid' (got variance "
                            f"{cfg.variance!r}, weighting {cfg.weighting!r})")
    if cfg.variance == "learned" and cfg.process not in ("ddpm", "simple_ve"):
        raise ScorekitError(f"a learned variance needs a discrete process (ddpm or simple_ve), got "
                            f"{cfg.process!r}")


def _check_precondition(cfg: TrainConfig) -> None:
    """The preconditioning settings of a run."""
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


#: the presets ``model="auto"`` picks: ``(images, vectors)`` for a denoising network and a classifier
AUTO_PRESETS = {False: ("tiny", "mlp"), True: ("classifier-tiny", "classifier-mlp")}


def resolve_preset(name: str, dataset, *, classifier: bool = False) -> str:
    """The preset name, with ``"auto"`` meaning ``"tiny"`` for images and ``"mlp"`` for vectors
    (``"classifier-tiny"`` and ``"classifier-mlp"`` for a ``classifier``)."""
    from ..models import PRESETS

    if name == "auto":
        images, vectors = AUTO_PRESETS[bool(classifier)]
        return images if dataset.is_image else vectors
    if name not in PRESETS:
        raise ScorekitError(f"unknown model preset {name!r}; choose one of auto, {', '.join(PRESETS)}")
    return name


def model_config_for(config: TrainConfig, dataset, process, *, classifier: bool = False) -> dict:
    """The network configuration of a run: the preset, filled in for the data, then overrides.

    ``classifier`` asks for a noise-aware classifier (:data:`scorekit.models.CLASSIFIER_KINDS`,
    ``num_classes`` outputs) instead of a denoising network (``num_classes`` conditioning labels).
    """
    from ..models import CLASSIFIER_KINDS, IMAGE_KINDS, PRESETS, check_model_options

    name = resolve_preset(config.model, dataset, classifier=classifier)
    cfg = dict(PRESETS[name])
    images, vectors = AUTO_PRESETS[bool(classifier)]
    if (cfg["kind"] in CLASSIFIER_KINDS) != bool(classifier):
        others = ", ".join(n for n, p in PRESETS.items() if (p["kind"] in CLASSIFIER_KINDS) == bool(classifier))
        if classifier:
            raise ScorekitError(f"objective 'classifier' trains a noise-aware classifier, but model {config.model!r} "
                                f"is a denoising network; choose one of auto, {others}")
        raise ScorekitError(f"model {config.model!r} is a noise-aware classifier (it outputs class logits); a "
                            f"diffusion run trains a denoising network: choose one of auto, {others}, or train the "
                            f"classifier with objective='classifier'",
                            cli=f"--model {config.model} is a noise-aware classifier (it outputs class logits); "
                                f"scorekit train trains a denoising network: choose --model auto, {others}")
    if cfg["kind"] in IMAGE_KINDS:
        if not dataset.is_image:
            raise ScorekitError(f"model {config.model!r} is a U-Net for images, but {dataset.spec} holds "
                                f"{dataset.shape} vectors; use model={vectors!r}",
                                cli=f"model {config.model!r} is a U-Net for images, but {dataset.spec} "
                                    f"holds {dataset.shape} vectors; use --model {vectors}")
        cfg["in_channels"] = dataset.shape[0]
        cfg.pop("out_channels", None)
    else:
        if dataset.is_image:
            image_presets = ", ".join(n for n, p in PRESETS.items() if p["kind"] in IMAGE_KINDS
                                      and (p["kind"] in CLASSIFIER_KINDS) == bool(classifier))
            raise ScorekitError(f"model {config.model!r} is an MLP for vectors, but {dataset.spec} holds "
                                f"{dataset.shape} images; use an image preset ({image_presets})")
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


def resolve_mixed_precision(value: str, device) -> str:
    """``TrainConfig.mixed_precision`` with ``"auto"`` resolved for ``device``: ``"bf16"`` on a CUDA
    device that supports it, ``"no"`` elsewhere; any other value as it is."""
    if value != "auto":
        return value
    device = torch.device(device)
    if device.type == "cuda" and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "no"


def resolve_compile(value: str, device) -> bool:
    """Whether ``TrainConfig.compile`` asks for :func:`torch.compile` on ``device`` (``auto``: CUDA)."""
    return value == "yes" or (value == "auto" and torch.device(device).type == "cuda")


def settings_changed(saved: TrainConfig, config: TrainConfig) -> dict:
    """``{field: (saved value, new value)}`` for the settings of ``config`` that differ from the
    run's ``saved`` ones and may not change when it resumes (all but :data:`RESUMABLE_FIELDS`).
    ``mixed_precision="auto"`` means the run's own value here."""
    if config.mixed_precision == "auto":
        config = dataclasses.replace(config, mixed_precision=saved.mixed_precision)
    mine, theirs = config.to_dict(), saved.to_dict()
    return {k: (theirs[k], mine[k]) for k in mine if k not in RESUMABLE_FIELDS and mine[k] != theirs[k]}




__all__ = ["AUTO_PRESETS", "COMPILE_CHOICES", "DEFAULT_DDPM_SCHEDULE", "KERNEL_FIELDS", "LR_SCHEDULES", "MIXED_PRECISION", "PROCESS_NAMES",
           "RESUMABLE_FIELDS", "TIMESTEP_SAMPLERS", "VARIANCE_CHOICES", "TrainConfig", "build_process",
           "check_diffusion_settings", "coarse_noise_warning", "default_prediction", "model_config_for",
           "resolve_compile", "resolve_mixed_precision", "resolve_preset", "settings_changed"]
