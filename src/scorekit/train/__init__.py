"""Training: the loop, the weights' moving average, checkpoints, metrics and data parallelism.

* :func:`train` / :class:`TrainResult` -- :mod:`scorekit.train.trainer` (the loop);
* :class:`TrainConfig` -- :mod:`scorekit.train.config`; the run's random state and resume state --
  :mod:`scorekit.train.state`;
* :class:`Objective`, :class:`DiffusionObjective`, :class:`ClassifierObjective` --
  :mod:`scorekit.train.objectives` (what a run minimises: a denoiser, or a noise-aware classifier);
* :class:`EMA` -- :mod:`scorekit.train.ema`;
* :func:`load_checkpoint`, :class:`Checkpoint`, :func:`checkpoint_denoiser` --
  :mod:`scorekit.train.checkpoint` (safetensors + JSON, written atomically);
* :class:`MetricsLog`, :func:`plot_loss_curve` -- :mod:`scorekit.train.logging`;
* :func:`setup` for ``torchrun`` -- :mod:`scorekit.train.distributed`;
* :class:`TrainingInterrupted` (a stop on SIGINT / SIGTERM, with a checkpoint) --
  :mod:`scorekit.train.interrupt`.
"""
from .checkpoint import Checkpoint, checkpoint_denoiser, list_checkpoints, load_checkpoint, resolve_checkpoint
from .distributed import DistributedContext, setup
from .ema import EMA, ema_decay
from .interrupt import TrainingInterrupted
from .logging import MetricsLog, plot_loss_curve, read_metrics
from .objectives import OBJECTIVES, ClassifierObjective, DiffusionObjective, Objective
from .trainer import (PROCESS_NAMES, TIMESTEP_SAMPLERS, TrainConfig, TrainResult, build_process,
                      learning_rate, train, write_samples)

__all__ = [
    "Checkpoint", "ClassifierObjective", "DiffusionObjective", "DistributedContext", "EMA", "MetricsLog",
    "OBJECTIVES", "Objective", "PROCESS_NAMES", "TIMESTEP_SAMPLERS", "TrainConfig", "TrainResult",
    "TrainingInterrupted", "build_process", "checkpoint_denoiser", "ema_decay", "learning_rate",
    "list_checkpoints", "load_checkpoint", "plot_loss_curve", "read_metrics", "resolve_checkpoint", "setup",
    "train", "write_samples",
]
