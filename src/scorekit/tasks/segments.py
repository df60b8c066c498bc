r"""Running any sampler on segments of its time grid: the driver of the training-free edits.

SDEdit, ILVR and RePaint change the state *between* steps of an ordinary sampler: SDEdit starts
it part-way down the grid, ILVR and RePaint replace part of the state after a step. None of
them changes a step itself, so none needs a sampler of its own: the driver here calls an
existing sampler (:data:`scorekit.samplers.SAMPLERS`, any of them) on a piece of the grid
``t_i > ... > t_j`` at a time, acts on the state, and goes on. A multistep solver (DPM-Solver++,
UniPC, iPNDM, DEIS) restarts its history at each segment boundary, as after any change of the
state it must; a grid is cut only where the method acts, so a step the method leaves alone is
the sampler's own (:func:`run_acting`).

The pieces every edit shares are here too: the process of a denoiser, the sampler and its
checked options, the grid, the forward marginal ``q(x_t | x_0)`` and transition
``q(x_t | x_s)`` drawn from a passed generator, and the checks of the input images.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..samplers._common import check_start, randn_like
from ..timesteps import DEFAULT_SAMPLE_STEPS, make_timesteps

Tensor = torch.Tensor


def editing_process(denoiser, process: GaussianProcess | None) -> GaussianProcess:
    """The process the denoiser runs on: ``process`` or the denoiser's own (a
    :class:`~scorekit.prediction.Denoiser` and its wrappers know it; a plain function does not)."""
    if not callable(denoiser):
        raise ScorekitError(f"denoiser must be callable as D(x_t, t), got {type(denoiser).__name__}")
    if process is None:
        process = getattr(denoiser, "process", None)
    if not isinstance(process, GaussianProcess):
        raise ScorekitError("give process=... (a scorekit.processes.GaussianProcess) for a denoiser that "
                            "does not carry its own")
    return process


def resolve_sampler(sampler, options: dict | None) -> tuple[Callable, dict]:
    """``(fn, options)``: a sampler name of :data:`~scorekit.samplers.SAMPLERS` with its options
    checked as :func:`scorekit.sample` checks them, or a sampler function with its options as
    given."""
    from ..sampling import _lookup, check_sampler_options

    options = {} if options is None else options
    if not isinstance(options, dict):
        raise ScorekitError(f"sampler_options must be a dict of name: value, got {type(options).__name__}")
    if isinstance(sampler, str):
        return _lookup(sampler), check_sampler_options(sampler, options)
    if not callable(sampler):
        raise ScorekitError(f"sampler must be a name in scorekit.SAMPLERS or a sampler function, got "
                            f"{type(sampler).__name__}")
    return sampler, dict(options)


def sampling_grid(process: GaussianProcess, num_steps: int | None, spacing: str | None, timesteps,
                  t_start: float | None = None) -> Tensor:
    """The grid an edit runs on: ``timesteps`` when given, else ``num_steps`` model times of
    ``spacing`` from ``t_start`` (default ``t_max``) and the data time
    (:func:`~scorekit.timesteps.make_timesteps`). ``num_steps=None`` takes
    :data:`~scorekit.timesteps.DEFAULT_SAMPLE_STEPS`, or as many as a discrete process has from
    ``t_start`` down if those are fewer."""
    from ..samplers._common import grid

    if timesteps is None:
        top = process.t_max if t_start is None else t_start
        available = int(round(top - process.t_min)) + 1 if process.discrete else None
        if num_steps is None:
            num_steps = DEFAULT_SAMPLE_STEPS if available is None else min(DEFAULT_SAMPLE_STEPS, available)
        elif available is not None and isinstance(num_steps, int) and num_steps > available:
            raise ScorekitError(f"num_steps={num_steps} is more than the {available} steps of "
                                f"{type(process).__name__} from t = {top:g} down; give at most {available}")
        timesteps = make_timesteps(process, num_steps, spacing, t_start=t_start)
    return grid(process, timesteps)


def check_images(x, name: str, denoiser=None) -> Tensor:
    """Refuse what is not a finite floating-point batch ``(N, ...)``, or one whose samples are not
    shaped as the denoiser's (when it knows its ``sample_shape``)."""
    x = check_start(x, name)
    shape = None
    if denoiser is not None:               # a run's denoiser knows it through its checkpoint
        shape = getattr(denoiser, "sample_shape", None) or getattr(getattr(denoiser, "checkpoint", None),
                                                                    "sample_shape", None)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        raise ScorekitError(f"{name} has samples of shape {tuple(x.shape[1:])} but the model makes "
                            f"samples of shape {tuple(shape)}")
    return x


def check_same_shape(x: Tensor, like: Tensor, name: str, like_name: str) -> Tensor:
    """``x`` checked as images of exactly ``like``'s shape (one per sample of ``like``)."""
    x = check_start(x, name)
    if x.shape != like.shape:
        raise ScorekitError(f"{name} has shape {tuple(x.shape)} but {like_name} has shape "
                            f"{tuple(like.shape)}; give one per sample, of the same size")
    return x


def check_fraction(value, name: str) -> float:
    """A number in ``[0, 1]``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) <= 1.0:
        raise ScorekitError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def time_at(process: GaussianProcess, fraction: float) -> float:
    r"""The process time a fraction ``f`` of the way up its model times:
    ``t = t_min + f (t_max - t_min)``, rounded to a whole step for a discrete process."""
    t = process.t_min + fraction * (process.t_max - process.t_min)
    return float(math.floor(t + 0.5)) if process.discrete else float(t)


def fraction_of(process: GaussianProcess, t: float) -> float:
    """The inverse of :func:`time_at`, ``(t - t_min) / (t_max - t_min)``, clamped to ``[0, 1]``
    (the data time, below ``t_min``, is 0)."""
    span = process.t_max - process.t_min
    return min(1.0, max(0.0, (float(t) - process.t_min) / span)) if span > 0 else 0.0


def scalars(process: GaussianProcess, t: float) -> tuple[float, float]:
    """``(alpha_t, sigma_t)`` as Python numbers (so the state's dtype decides the precision)."""
    t = torch.tensor(float(t), dtype=torch.float64)
    return process.alpha(t).item(), process.sigma(t).item()


def noised(process: GaussianProcess, x0: Tensor, t: float, generator: torch.Generator) -> Tensor:
    r"""A draw of ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``; at the data time (``sigma_t = 0``)
    ``x_0`` itself, exactly, and nothing is drawn."""
    if t <= process.t_data:
        return x0.clone()
    alpha, sigma = scalars(process, t)
    if sigma == 0:
        return alpha * x0
    return alpha * x0 + sigma * randn_like(x0, generator)


def renoised(process: GaussianProcess, x_s: Tensor, s: float, t: float, generator: torch.Generator) -> Tensor:
    r"""A draw of the forward transition ``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)``,
    ``s < t``, with ``alpha_{t|s} = alpha_t / alpha_s`` and
    ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``."""
    a, sd = process.transition(torch.tensor(float(t), dtype=torch.float64),
                               torch.tensor(float(s), dtype=torch.float64))
    return a.item() * x_s + sd.item() * randn_like(x_s, generator)


class SegmentRunner:
    """One sampler, with its options and generator, run on one piece of a grid at a time."""

    def __init__(self, denoiser, process: GaussianProcess, sampler, sampler_options: dict | None,
                 generator: torch.Generator | None):
        self.denoiser, self.process = denoiser, process
        self.fn, self.options = resolve_sampler(sampler, sampler_options)
        self.generator = generator

    def __call__(self, x: Tensor, ts: Tensor) -> Tensor:
        """The sampler from ``x`` at ``ts[0]`` down the grid ``ts`` (model times, then the end)."""
        return self.fn(self.denoiser, self.process, x, ts, generator=self.generator, **self.options)


def run_acting(run: SegmentRunner, x: Tensor, ts: Tensor, act_after, hook) -> Tensor:
    r"""Sample down the grid ``ts`` (``n`` model times, then the end) and call
    ``x <- hook(x, k)`` on the state at ``ts[k]`` after every step ``i`` (``t_i -> t_{i+1}``,
    ``k = i + 1``) with ``act_after[i]``.

    The grid is cut only after those steps: the steps between two of them run as one call of
    the sampler, so where the method never acts this is the sampler itself, bit for bit.
    """
    n = len(ts) - 1
    start = 0
    for i in range(n):
        if act_after[i] or i == n - 1:
            x = run(x, ts[start:i + 2])
            if act_after[i]:
                x = hook(x, i + 1)
            start = i + 1
    return x


__all__ = ["SegmentRunner", "check_fraction", "check_images", "check_same_shape", "editing_process",
           "fraction_of", "noised", "renoised", "resolve_sampler", "run_acting",
           "sampling_grid", "scalars", "time_at"]
