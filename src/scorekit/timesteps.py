r"""Which times a sampler visits.

A sampler's time grid is a descending sequence ``t_0 > t_1 > ... > t_{n-1} > t_n`` of ``n + 1``
times: the model is evaluated at ``t_0 .. t_{n-1}`` (``n`` network evaluations for a first-order
sampler) and the last entry is where sampling ends, normally the process's data time
``process.t_data`` (``sigma = 0``).

Spacings for discrete processes with steps ``first .. last`` (DDPM: ``0 .. T-1``, as in diffusers):

* ``linspace``: ``round(linspace(first, last, n))`` in descending order -- both ends included;
  one step is ``last`` (diffusers' one step is ``first``, which treats ``x_T`` as nearly clean).
* ``leading``: ``first + k * (T // n)`` for ``k = 0 .. n-1`` (DDIM paper, diffusers' default). The
  first call is at ``(n-1) (T // n)``, well below ``T - 1`` for small ``n``: ``x_T`` is then treated
  as less noisy than it is.
* ``trailing``: ``round(T - k T / n) - 1`` for ``k = 0 .. n-1`` (Lin et al. 2024): starts at
  ``T - 1``; the default.
* ``quadratic``: ``floor(linspace(0, sqrt(0.8 T), n)^2)`` (DDIM paper, for CIFAR-10): dense at low
  noise; one step is ``last``.

For continuous processes (times in ``[t_min, t_max]``): ``uniform`` in ``t``, ``quadratic`` in
``t``, ``log_snr`` (uniform in ``log(alpha^2 / sigma^2)``) and ``karras`` (Karras et al. 2022,
eq. 5, in EDM's noise level ``sigma / alpha``).

``uniform``, ``log_snr`` and ``karras`` also serve discrete processes, through their continuous
embedding (a DDPM's ``log alpha_bar`` is interpolated between steps): they give fractional times
between ``t_min`` and ``t_max`` (``0`` and ``T - 1`` for DDPM), which a model trained on integer
steps receives as floats.

The noise level of EDM (Karras et al. 2022, sec. 4) for a process ``x_t = alpha_t x_0 + sigma_t eps``
is that of the scaled state ``x_t / alpha_t = x_0 + (sigma_t / alpha_t) eps``: :func:`edm_sigma`
gives it and :func:`t_from_edm_sigma` maps it back to process time through ``log_snr = -2 log(sigma /
alpha)``.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from .errors import ScorekitError
from .processes import GaussianProcess

DISCRETE_SPACINGS = ("linspace", "leading", "trailing", "quadratic", "uniform", "log_snr", "karras")
CONTINUOUS_SPACINGS = ("uniform", "quadratic", "log_snr", "karras")
#: spacings that give fractional times on a discrete process (through its continuous embedding)
FRACTIONAL_SPACINGS = ("uniform", "log_snr", "karras")


def edm_sigma(process: GaussianProcess, t) -> torch.Tensor:
    r"""EDM's noise level of the scaled state ``x_t / alpha_t``: ``sigma_t / alpha_t``
    ``= exp(-log_snr(t) / 2)`` (Karras et al. 2022, eq. 4 with ``s(t) = alpha_t``), float64."""
    t = torch.as_tensor(t, dtype=torch.float64)
    return process.sigma(t) / process.alpha(t)


def t_from_edm_sigma(process: GaussianProcess, sigma) -> torch.Tensor:
    r"""Inverse of :func:`edm_sigma`: the time with ``sigma_t / alpha_t = sigma``, i.e.
    ``process.t_from_log_snr(-2 log sigma)``; ``sigma = 0`` maps to the data time."""
    sigma = torch.as_tensor(sigma, dtype=torch.float64)
    return process.t_from_log_snr(-2.0 * torch.log(sigma))


def uniform_times(t_min: float, t_max: float, num_steps: int) -> np.ndarray:
    """``num_steps`` times evenly spaced in ``t`` from ``t_max`` down to ``t_min`` (float64)."""
    n = _check_num_steps(num_steps)
    if n == 1:
        return np.array([t_max], dtype=np.float64)
    return np.linspace(float(t_max), float(t_min), n, dtype=np.float64)


def log_snr_times(process: GaussianProcess, t_min: float, t_max: float, num_steps: int) -> np.ndarray:
    r"""Times with ``lambda_i = lambda(t_max) + i / (n - 1) (lambda(t_min) - lambda(t_max))``, evenly
    spaced in ``lambda = log(alpha^2 / sigma^2)`` (Lu et al. 2022, DPM-Solver, sec. 3.3), mapped
    back through ``process.t_from_log_snr``; the ends are exactly ``t_max`` and ``t_min``."""
    n = _check_num_steps(num_steps)
    if n == 1:
        return np.array([t_max], dtype=np.float64)
    lam = process.log_snr(torch.tensor([t_max, t_min], dtype=torch.float64))
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    times = process.t_from_log_snr(lam[0] + (lam[1] - lam[0]) * u).cpu().numpy().astype(np.float64)
    times[0], times[-1] = t_max, t_min
    return times


def karras_times(process: GaussianProcess, t_min: float, t_max: float, num_steps: int, *,
                 rho: float = 7.0) -> np.ndarray:
    r"""Karras et al. (2022), eq. 5, in EDM's noise level ``sigma = sigma_t / alpha_t``:

        sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,

    ``i = 0 .. n-1``, with ``sigma_max``, ``sigma_min`` those of ``t_max`` and ``t_min``, mapped to
    process time by :func:`t_from_edm_sigma`; the ends are exactly ``t_max`` and ``t_min``. Larger
    ``rho`` puts more steps at low noise; ``rho = 1`` is uniform in ``sigma``.
    """
    n = _check_num_steps(num_steps)
    rho = float(rho)
    if not (math.isfinite(rho) and rho > 0):
        raise ScorekitError(f"rho must be a positive number, got {rho}")
    if n == 1:
        return np.array([t_max], dtype=np.float64)
    s_max, s_min = edm_sigma(process, torch.tensor([t_max, t_min], dtype=torch.float64)).tolist()
    u = torch.linspace(0.0, 1.0, n, dtype=torch.float64)
    sigmas = (s_max ** (1 / rho) + u * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    times = t_from_edm_sigma(process, sigmas).cpu().numpy().astype(np.float64)
    times[0], times[-1] = t_max, t_min
    return times


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
    if n == 1 and spacing in ("linspace", "quadratic"):
        steps = np.array([T - 1], dtype=np.int64)    # one step starts from the noise, as trailing does
    steps = np.sort(np.unique(steps))[::-1]
    if len(steps) != n:
        raise ScorekitError(f"spacing {spacing!r} gives only {len(steps)} distinct steps out of "
                            f"num_steps={n} with T={T}; use fewer steps or another spacing")
    return steps + int(first)


def continuous_times(t_min: float, t_max: float, num_steps: int, spacing: str = "uniform", *,
                     process: GaussianProcess | None = None, rho: float = 7.0) -> np.ndarray:
    """``num_steps`` times from ``t_max`` down to ``t_min`` (float64), both ends included."""
    n = _check_num_steps(num_steps)
    if spacing in ("log_snr", "karras") and process is None:
        raise ScorekitError(f"spacing {spacing!r} needs the process")
    if spacing == "uniform":
        return uniform_times(t_min, t_max, n)
    if spacing == "log_snr":
        return log_snr_times(process, t_min, t_max, n)
    if spacing == "karras":
        return karras_times(process, t_min, t_max, n, rho=rho)
    if spacing == "quadratic":
        if n == 1:
            return np.array([t_max], dtype=np.float64)
        u = np.linspace(0.0, 1.0, n)
        return (t_min + (t_max - t_min) * (1 - u) ** 2).astype(np.float64)
    raise ScorekitError(f"unknown spacing {spacing!r} for a continuous process; choose one of "
                        f"{', '.join(CONTINUOUS_SPACINGS)}")


def chain_length(process: GaussianProcess) -> int:
    """``T``, the number of steps of a discrete process: its integer times ``t_min .. t_max``."""
    return int(round(process.t_max - process.t_min)) + 1


def make_timesteps(process: GaussianProcess, num_steps: int, spacing: str | None = None, *,
                   t_end: float | None = None, t_start: float | None = None, rho: float = 7.0) -> torch.Tensor:
    """The sampling grid for ``process``: ``num_steps`` model times then the end time.

    ``spacing`` defaults to the process's own :attr:`~scorekit.processes.GaussianProcess.default_spacing`
    (``trailing`` for DDPM, ``uniform`` for the SDEs, ``karras`` for EDM).

    Returns a float64 tensor of length ``num_steps + 1`` (whole numbers for discrete processes,
    except with the fractional spacings ``uniform``, ``log_snr`` and ``karras``). ``t_end``
    defaults to ``process.t_data``; ``rho`` is the exponent of the ``karras`` spacing.
    ``t_start`` (default ``process.t_max``) is the first model time: the grid is the one the
    process would get if its times ended there (for a discrete process, a whole step: the chain
    ``t_min .. t_start``, which has at most ``t_start - t_min + 1`` steps). SDEdit starts there.
    """
    end = process.t_data if t_end is None else float(t_end)
    top = process.t_max if t_start is None else float(t_start)
    if not process.t_min <= top <= process.t_max:
        raise ScorekitError(f"t_start={top} must lie in [{process.t_min}, {process.t_max}]")
    if process.discrete and spacing in FRACTIONAL_SPACINGS:
        times = continuous_times(process.t_min, top, num_steps, spacing, process=process, rho=rho)
    elif process.discrete:
        if not float(top).is_integer():
            raise ScorekitError(f"t_start={top} must be a whole step of {type(process).__name__}")
        T = int(round(top - process.t_min)) + 1
        steps = discrete_steps(T, num_steps, spacing or process.default_spacing,
                               first=int(process.t_min))
        times = steps.astype(np.float64)
    else:
        times = continuous_times(process.t_min, top, num_steps, spacing or process.default_spacing,
                                 process=process, rho=rho)
    if not end < times[-1]:
        raise ScorekitError(f"t_end={end} must be below the last model time {times[-1]}")
    return torch.from_numpy(np.append(times, end))


#: reverse steps of the variational bound of a continuous-time process unless told otherwise
#: (``scorekit nll --elbo-steps``); DDPM's own chain has as many (T = 1000)
DEFAULT_CHAIN_STEPS = 1000


def chain_timesteps(process: GaussianProcess, num_steps: int | None = None) -> torch.Tensor:
    r"""The discrete chain ``t_K > ... > t_1 > data`` whose variational bound
    :func:`scorekit.likelihood.elbo` evaluates and on which :func:`scorekit.variances.analytic_variances`
    estimates its variances, as a grid of :func:`make_timesteps`.

    * A discrete process (DDPM, SimpleVE): with ``num_steps=None`` every step ``t_max, ..., t_min``
      (Ho et al. 2020's whole chain), else ``num_steps`` of them with the ``trailing`` spacing.
    * A continuous process (VP, sub-VP, VE, EDM), which has no chain of its own: ``num_steps``
      (default :data:`DEFAULT_CHAIN_STEPS`) times from ``t_max`` to ``t_min`` uniform in the log-SNR
      ``lambda = log(alpha^2 / sigma^2)``, then the data time. The bound of this chain depends on
      the process only through ``lambda`` at the grid's times (Kingma et al. 2021, VDM, sec. 4), so
      uniform steps in ``lambda`` treat every process alike; with an exact denoiser each step's
      gap to the exact likelihood is ``O(dlambda^2)``, and the bound tightens towards its
      continuous-time limit as ``O(1 / num_steps)``.
    """
    if num_steps is None and process.discrete:
        num_steps = chain_length(process)
    elif num_steps is None:
        num_steps = DEFAULT_CHAIN_STEPS
    return make_timesteps(process, num_steps, None if process.discrete else "log_snr")


def check_timesteps(timesteps) -> torch.Tensor:
    """Validate a sampler grid: 1-D, at least two entries, strictly decreasing, finite model
    times (the end time may be ``-inf``: the data time of the geometric VE SDE)."""
    try:
        ts = torch.as_tensor(timesteps, dtype=torch.float64).cpu()
    except (TypeError, ValueError, RuntimeError):
        raise ScorekitError(f"timesteps must be a 1-D sequence of times, got "
                            f"{type(timesteps).__name__}") from None
    if ts.ndim != 1:
        raise ScorekitError(f"timesteps must be 1-D (model times, then the end time), got shape "
                            f"{tuple(ts.shape)}")
    if ts.numel() < 2:
        raise ScorekitError("timesteps must hold at least two times: a model time and the end time")
    if torch.isnan(ts).any() or not torch.isfinite(ts[:-1]).all() or ts[-1] == math.inf:
        raise ScorekitError("timesteps contain NaN or infinite values (only the end time may be "
                            "-inf)")
    if not torch.all(ts[1:] < ts[:-1]):
        raise ScorekitError("timesteps must be strictly decreasing (from noise towards data)")
    return ts


#: sampler steps of ``scorekit sample`` and of the training run's sample grids unless given
DEFAULT_SAMPLE_STEPS = 50


def default_step_count(process: GaussianProcess) -> int:
    """:data:`DEFAULT_SAMPLE_STEPS`, or a discrete process's ``T`` if it has fewer steps."""
    if process.discrete:
        return min(DEFAULT_SAMPLE_STEPS, chain_length(process))
    return DEFAULT_SAMPLE_STEPS


def check_step_count(process: GaussianProcess, num_steps, name: str = "num_steps",
                     cli_name: str | None = None) -> int:
    """``num_steps`` as an int if a sampler can take that many steps on ``process``: a whole number
    from 1, and for a discrete process at most its ``T`` steps (a grid of distinct steps has no
    more). One rule for every caller (``scorekit sample --steps``, ``train --sample-steps``).
    ``name`` names the value in the message, ``cli_name`` (a flag) in the command line's."""
    n = _check_num_steps(num_steps)
    if process.discrete:
        T = chain_length(process)
        if n > T:
            why = f"is more than the model's {T} diffusion steps ({type(process).__name__} has T = {T}); give at most {T}"
            raise ScorekitError(f"{name} {n} {why}", cli=f"{cli_name} {n} {why}" if cli_name else None)
    return n


def _check_num_steps(num_steps) -> int:
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
        raise ScorekitError(f"num_steps must be a positive integer, got {num_steps!r}")
    return int(num_steps)
