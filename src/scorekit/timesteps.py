r"""Which times a sampler visits.

A sampler's time grid is a descending sequence ``t_0 > t_1 > ... > t_{n-1} > t_n`` of ``n + 1``
times: the model is evaluated at ``t_0 .. t_{n-1}`` (``n`` network evaluations for a first-order
sampler) and the last entry is where sampling ends, normally the process's data time
``process.t_data`` (``sigma = 0``).

Spacings for discrete processes with steps ``first .. last`` (DDPM: ``0 .. T-1``, as in diffusers):

* ``linspace``: ``round(linspace(last, first, n))`` -- both ends included.
* ``leading``: ``first + k * (T // n)`` for ``k = 0 .. n-1`` (DDIM paper, diffusers' default). The
  first call is at ``(n-1) (T // n)``, well below ``T - 1`` for small ``n``: ``x_T`` is then treated
  as less noisy than it is.
* ``trailing``: ``round(T - k T / n) - 1`` for ``k = 0 .. n-1`` (Lin et al. 2024): starts at
  ``T - 1``; the default.
* ``quadratic``: ``floor(linspace(0, sqrt(0.8 T), n)^2)`` (DDIM paper, for CIFAR-10): dense at low
  noise.

For continuous processes (times in ``[t_min, t_max]``): ``uniform`` in ``t``, ``quadratic`` in
``t``, and ``log_snr`` (uniform in ``log(alpha^2 / sigma^2)``).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ScorekitError
from .processes import GaussianProcess

DISCRETE_SPACINGS = ("linspace", "leading", "trailing", "quadratic")
CONTINUOUS_SPACINGS = ("uniform", "quadratic", "log_snr")


def discrete_steps(num_train_steps: int, num_steps: int, spacing: str = "trailing", *,
                   first: int = 0) -> np.ndarray:
    """``num_steps`` distinct integer steps in ``first .. first + num_train_steps - 1``, descending."""
    T, n = int(num_train_steps), _check_num_steps(num_steps)
    if n > T:
        raise ScorekitError(f"num_steps={num_steps} is more than the model's {T} training steps")
    if spacing == "linspace":
        steps = np.round(np.linspace(0, T - 1, n)).astype(np.int64)
    elif spacing == "leading":
        steps = np.arange(n, dtype=np.int64) * (T // n)
    elif spacing == "trailing":
        steps = np.round(np.arange(T, 0, -T / n)).astype(np.int64)[:n] - 1
    elif spacing == "quadratic":
        steps = np.floor(np.linspace(0, math.sqrt(T * 0.8), n) ** 2).astype(np.int64)
    else:
        raise ScorekitError(f"unknown spacing {spacing!r} for a discrete process; choose one of "
                            f"{', '.join(DISCRETE_SPACINGS)}")
    steps = np.sort(np.unique(steps))[::-1]
    if len(steps) != n:
        raise ScorekitError(f"spacing {spacing!r} gives only {len(steps)} distinct steps out of "
                            f"num_steps={n} with T={T}; use fewer steps or another spacing")
    return steps + int(first)


def continuous_times(t_min: float, t_max: float, num_steps: int, spacing: str = "uniform", *,
                     process: GaussianProcess | None = None) -> np.ndarray:
    """``num_steps`` times from ``t_max`` down to ``t_min`` (float64), both ends included."""
    n = _check_num_steps(num_steps)
    if n == 1:
        return np.array([t_max], dtype=np.float64)
    u = np.linspace(0.0, 1.0, n)
    if spacing == "uniform":
        times = t_max + (t_min - t_max) * u
    elif spacing == "quadratic":
        times = t_min + (t_max - t_min) * (1 - u) ** 2
    elif spacing == "log_snr":
        if process is None:
            raise ScorekitError("spacing 'log_snr' needs the process")
        lam = process.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
        grid = lam[0] + (lam[1] - lam[0]) * torch.from_numpy(u)
        times = process.t_from_log_snr(grid).numpy()
        times[0], times[-1] = t_max, t_min
    else:
        raise ScorekitError(f"unknown spacing {spacing!r} for a continuous process; choose one of "
                            f"{', '.join(CONTINUOUS_SPACINGS)}")
    return times.astype(np.float64)


def make_timesteps(process: GaussianProcess, num_steps: int, spacing: str | None = None, *,
                   t_end: float | None = None) -> torch.Tensor:
    """The sampling grid for ``process``: ``num_steps`` model times then the end time.

    Returns a float64 tensor of length ``num_steps + 1`` (whole numbers for discrete
    processes). ``t_end`` defaults to ``process.t_data``.
    """
    end = process.t_data if t_end is None else float(t_end)
    if process.discrete:
        T = int(round(process.t_max - process.t_min)) + 1
        steps = discrete_steps(T, num_steps, spacing or "trailing", first=int(process.t_min))
        times = steps.astype(np.float64)
    else:
        times = continuous_times(process.t_min, process.t_max, num_steps, spacing or "uniform",
                                 process=process)
    if not end < times[-1]:
        raise ScorekitError(f"t_end={end} must be below the last model time {times[-1]}")
    return torch.from_numpy(np.append(times, end))


def check_timesteps(timesteps) -> torch.Tensor:
    """Validate a sampler grid: at least two entries, strictly decreasing, no NaN."""
    ts = torch.as_tensor(timesteps, dtype=torch.float64).flatten().cpu()
    if ts.numel() < 2:
        raise ScorekitError("timesteps must hold at least two times: a model time and the end time")
    if torch.isnan(ts).any():
        raise ScorekitError("timesteps contain NaN")
    if not torch.all(ts[1:] < ts[:-1]):
        raise ScorekitError("timesteps must be strictly decreasing (from noise towards data)")
    return ts


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ScorekitError(f"num_steps must be a positive integer, got {num_steps!r}")
    return int(num_steps)
