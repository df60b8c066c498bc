r"""Single-step solvers of the probability-flow ODE in EDM's variables (Karras et al. 2022):
Euler, Euler-ancestral, Heun (Algorithm 1) and the stochastic sampler (Algorithm 2).

The variables. For any process ``x_t = alpha_t x_0 + sigma_t eps`` write

    x^ = x / alpha,        s = sigma / alpha  (EDM's noise level, :func:`scorekit.timesteps.edm_sigma`).

Then ``x^_t = x_0 + s eps`` is a variance-exploding process whose noise level is ``s`` itself, and
the probability-flow ODE ``dx/dt = f(t) x - g(t)^2 / 2 grad log p_t(x)`` (Song et al. 2021,
eq. 13) becomes, with ``f = d log alpha / dt``, ``g^2 = d sigma^2/dt - 2 f sigma^2 = 2 alpha^2 s ds/dt``
and ``grad log p_t(x) = -(x - alpha D(x, t)) / sigma^2``,

    dx^/ds = (x^ - D(alpha x^, t(s))) / s = eps(x, t),                              (*)

which is Karras et al. 2022, eq. 4 with ``s(t) = alpha_t`` and ``sigma(t) = sigma_t / alpha_t``
(their ``dx/dt = (s'/s) x - s^2 sigma' sigma grad log p(x/s; sigma)``), written in ``x^`` where the
``s'/s`` term disappears. ``t(s)`` is ``process.t_from_log_snr(-2 log s)``. Every solver below
steps ``(*)`` on the noise levels ``s_i`` of the given time grid and calls the denoiser at the
grid's times with ``x = alpha x^``, so it serves every process (DDPM through its continuous
embedding, VP, sub-VP, VE, EDM) and every grid.

The last step. The denoiser cannot be evaluated at ``s = 0``; a step that ends there is an Euler
step, ``x^ <- x^ + (0 - s) d = D(x, t)``: the sampler returns the last ``x0_pred``.

Floating point. The equations are stated in ``x^`` but computed in ``x``: ``x^ = x / alpha`` is
huge where ``alpha`` is tiny (``s`` is about 2e4 at ``t = T - 1`` of the cosine DDPM schedule), and
an update ``x^ + (s' - s) d`` of such a value followed by ``x = alpha' x^`` loses all but a few
digits of a float32 state to cancellation. Since the slope is the noise prediction,
``d = (x^ - D) / s = (x - alpha D) / sigma = eps``, the identity ``x^ = D + s eps`` turns every step
into one in ``x`` whose terms stay of the size of the result (:func:`point_at`):

    x^ + (s' - s) eps = D + s' eps,     so    x' = alpha' D + sigma' eps    (sigma' = alpha' s'),

which is DDIM's update; Heun's correction ``(s' - s) (d' - d) / 2`` equals
``(s' - s) (D - D') / (2 s')`` when ``x'`` is the Euler point, a difference of two denoiser outputs.
"""
from __future__ import annotations

import math

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..timesteps import edm_sigma, t_from_edm_sigma
from ._common import Callback, check_generator, check_start, grid, progress_range, randn_like

Tensor = torch.Tensor


def _scaled_grid(process: GaussianProcess, timesteps) -> tuple[list, list, list]:
    """The validated grid as python floats: times ``t_i``, ``alpha_i`` and EDM's ``s_i = sigma_i / alpha_i``."""
    ts = grid(process, timesteps)
    return ts.tolist(), process.alpha(ts).tolist(), edm_sigma(process, ts).tolist()


def noise_prediction(x: Tensor, x0: Tensor, alpha: float, s: float) -> Tensor:
    r"""``eps = (x - alpha x0) / (alpha s) = (x^ - D) / s``: the slope ``dx^/ds`` of (*) at ``x``,
    computed without forming ``x^ = x / alpha``."""
    return (x - alpha * x0) / (alpha * s)


def point_at(x0: Tensor, eps: Tensor, alpha: float, s: float) -> Tensor:
    r"""``alpha (x0 + s eps)``: the state at noise level ``s`` (scale ``alpha``) of the Euler step
    ``x^ + (s - s_i) eps`` from ``x^ = x0 + s_i eps`` (module notes, "Floating point")."""
    return alpha * x0 + (alpha * s) * eps


def _evaluable(process: GaussianProcess, t: float, s: float) -> bool:
    """Whether the denoiser may be called at the end time ``t``: noisy and inside the model's range."""
    return s > 0 and min(process.t_min, process.t_max) - 1e-9 <= t <= process.t_max + 1e-9


def euler(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
          generator: torch.Generator | None = None, callback: Callback | None = None,
          progress: bool = False) -> Tensor:
    r"""Euler's method for the probability-flow ODE ``dx^/ds = (x^ - D) / s`` (module docstring):

        x^_{i+1} = x^_i + (s_{i+1} - s_i) (x^_i - D(x_i, t_i)) / s_i,     x^ = x / alpha, s = sigma / alpha.

    First order; identical to deterministic DDIM (``ddim`` with ``eta = 0``), since both give
    ``x_{i+1} = alpha_{i+1} x0_pred + sigma_{i+1} eps_pred``. One network evaluation per model time.
    """
    x = check_start(x_T)
    times, alpha, s = _scaled_grid(process, timesteps)
    for i in progress_range(len(times) - 1, progress, "euler"):
        x0 = denoiser(x, times[i])
        if callback is not None:
            callback(i, times[i], x, x0)
        x = point_at(x0, noise_prediction(x, x0, alpha[i], s[i]), alpha[i + 1], s[i + 1])
    return x


def euler_ancestral(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, eta: float = 1.0,
                    generator: torch.Generator | None = None, callback: Callback | None = None,
                    progress: bool = False) -> Tensor:
    r"""Euler-ancestral sampling (k-diffusion's ``sample_euler_ancestral``) in EDM's variables:
    an Euler step down to ``s_down``, then fresh noise back up to ``s_{i+1}``:

        s_up = min(s_{i+1}, eta sqrt(s_{i+1}^2 (s_i^2 - s_{i+1}^2) / s_i^2)),   s_down = sqrt(s_{i+1}^2 - s_up^2),
        x^_{i+1} = x^_i + (s_down - s_i) (x^_i - D(x_i, t_i)) / s_i + s_up z,    z ~ N(0, I).

    ``s_up^2`` (for ``eta = 1``) is the variance of the posterior ``q(x^_{i+1} | x^_i, x_0)`` of the
    variance-exploding process ``x^ = x_0 + s eps``, which is that of the original process divided
    by ``alpha_{i+1}^2``; so for ``eta <= 1`` this sampler coincides with DDIM of the same ``eta``
    (and ``eta = 1`` is the ancestral DDPM step with the posterior variance). ``eta = 0`` is
    :func:`euler`. The last step to ``s = 0`` adds no noise and returns ``x0_pred``.
    """
    eta = float(eta)
    if not eta >= 0 or not math.isfinite(eta):
        raise ScorekitError(f"eta must be a finite number >= 0, got {eta}")
    x = check_start(x_T)
    times, alpha, s = _scaled_grid(process, timesteps)
    if eta > 0 and any(v > 0 for v in s[1:]):
        generator = check_generator(generator, "euler_ancestral with eta > 0")
    for i in progress_range(len(times) - 1, progress, "euler_ancestral"):
        x0 = denoiser(x, times[i])
        if callback is not None:
            callback(i, times[i], x, x0)
        s_next = s[i + 1]
        s_up = min(s_next, eta * math.sqrt(max(s_next ** 2 * (s[i] ** 2 - s_next ** 2) / s[i] ** 2, 0.0)))
        s_down = math.sqrt(max(s_next ** 2 - s_up ** 2, 0.0))
        eps = noise_prediction(x, x0, alpha[i], s[i])
        x = point_at(x0, eps, alpha[i + 1], s_down)
        if s_up > 0:
            x = x + (alpha[i + 1] * s_up) * randn_like(x, generator)
    return x


def edm_heun(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    r"""Karras et al. (2022), Algorithm 1: Heun's second-order method for ``dx^/ds = (x^ - D) / s``:

        d_i = (x^_i - D(x_i, t_i)) / s_i,                  x'  = x^_i + (s_{i+1} - s_i) d_i,
        d'  = (x' - D(alpha_{i+1} x', t_{i+1})) / s_{i+1},   x^_{i+1} = x^_i + (s_{i+1} - s_i) (d_i + d') / 2.

    The correction needs the denoiser at ``t_{i+1}``; on the step into the data (``s = 0``) it is
    skipped and the step is Euler's (Algorithm 1, line 7), returning ``x0_pred``. It is skipped
    too when the end time lies outside the model's range. ``2 n - 1`` network evaluations for
    ``n`` model times ending at the data.
    """
    return _heun(denoiser, process, x_T, timesteps, gammas=None, s_noise=1.0, generator=None,
                 callback=callback, progress=progress, desc="edm_heun")


def edm(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, s_churn: float = 40.0,
        s_tmin: float = 0.05, s_tmax: float = 50.0, s_noise: float = 1.0,
        generator: torch.Generator | None = None, callback: Callback | None = None,
        progress: bool = False) -> Tensor:
    r"""Karras et al. (2022), Algorithm 2: Heun's method with "churn" -- before each step the noise
    level is raised from ``s_i`` to ``s^_i = (1 + gamma_i) s_i`` by adding fresh noise, then the ODE
    is solved from ``s^_i`` to ``s_{i+1}`` as in :func:`edm_heun`:

        gamma_i = min(s_churn / n, sqrt(2) - 1)  if s_tmin <= s_i <= s_tmax,  else 0,
        x^ <- x^_i + sqrt(s^_i^2 - s_i^2) s_noise z,    z ~ N(0, I),

    with ``n`` the number of model times and every noise level in EDM's units ``s = sigma / alpha``.
    The raised level is mapped back to process time by ``t^_i = process.t_from_log_snr(-2 log s^_i)``,
    clamped to the model's range ``[t_min, t_max]``; when clamped, the noise added is that of the
    clamped level (``s^_i = sigma / alpha`` at ``t_max``), so ``x^`` stays consistent with its time.

    Defaults: ``s_churn = 40``, ``s_tmin = 0.05``, ``s_tmax = 50`` are the paper's ImageNet-64
    settings (Table 5); ``s_noise = 1`` because its 1.003 compensates a trained network's error,
    which an exact denoiser does not have. ``s_churn = 0`` gives exactly :func:`edm_heun`.
    """
    s_churn, s_tmin, s_tmax, s_noise = float(s_churn), float(s_tmin), float(s_tmax), float(s_noise)
    if not (s_churn >= 0 and math.isfinite(s_churn)):
        raise ScorekitError(f"s_churn must be a finite number >= 0, got {s_churn}")
    if not s_noise >= 0:
        raise ScorekitError(f"s_noise must be >= 0, got {s_noise}")
    if not s_tmin <= s_tmax:
        raise ScorekitError(f"need s_tmin <= s_tmax, got {s_tmin} and {s_tmax}")
    ts = grid(process, timesteps)
    n = len(ts) - 1
    s = edm_sigma(process, ts[:-1])
    inside = (s >= s_tmin) & (s <= s_tmax)
    gammas = inside.to(torch.float64) * min(s_churn / n, math.sqrt(2) - 1)
    if bool((gammas > 0).any()):
        generator = check_generator(generator, "edm with s_churn > 0")
    return _heun(denoiser, process, x_T, ts, gammas=gammas, s_noise=s_noise, generator=generator,
                 callback=callback, progress=progress, desc="edm")


def _heun(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, gammas: Tensor | None,
          s_noise: float, generator, callback: Callback | None, progress: bool, desc: str) -> Tensor:
    """Algorithm 2 of Karras et al. (2022) in EDM's variables; no churn where ``gammas`` is 0 or None."""
    x = check_start(x_T)
    times, alpha, s = _scaled_grid(process, timesteps)
    n = len(times) - 1
    # raised noise levels s^_i and their times t^_i (clamped to the model's range)
    t_hat, alpha_hat, s_hat = list(times[:-1]), list(alpha[:-1]), list(s[:-1])
    if gammas is not None and bool((gammas > 0).any()):
        lo, hi = sorted((process.t_min, process.t_max))
        raised = torch.tensor(s[:-1], dtype=torch.float64) * (1 + gammas)
        t_raised = t_from_edm_sigma(process, raised).clamp(lo, hi)
        for i in gammas.nonzero().flatten().tolist():
            t_hat[i] = max(float(t_raised[i]), times[i])
            alpha_hat[i] = process.alpha(t_hat[i]).item()
            s_hat[i] = edm_sigma(process, t_hat[i]).item()
    correct_last = _evaluable(process, times[-1], s[-1])
    evals = 0
    for i in progress_range(n, progress, desc):
        if s_hat[i] > s[i]:                      # churn: raise the noise level from s_i to s^_i
            noise = (alpha_hat[i] * math.sqrt(s_hat[i] ** 2 - s[i] ** 2) * s_noise) * randn_like(x, generator)
            x = (alpha_hat[i] / alpha[i]) * x + noise
        x0 = denoiser(x, t_hat[i])
        if callback is not None:
            callback(evals, t_hat[i], x, x0)
        evals += 1
        eps = noise_prediction(x, x0, alpha_hat[i], s_hat[i])
        x = point_at(x0, eps, alpha[i + 1], s[i + 1])        # Euler step to s_{i+1}
        if i < n - 1 or correct_last:            # Heun's correction with the slope at s_{i+1}
            x0_next = denoiser(x, times[i + 1])
            if callback is not None:
                callback(evals, times[i + 1], x, x0_next)
            evals += 1
            # (s_{i+1} - s^_i) (d' - d) / 2 with d' - d = (x0 - x0_next) / s_{i+1}, times alpha_{i+1}
            x = x + (alpha[i + 1] * (s[i + 1] - s_hat[i]) / (2 * s[i + 1])) * (x0 - x0_next)
        # else: into the data (s = 0), Euler: x = alpha x0_pred
    return x
