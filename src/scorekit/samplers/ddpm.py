"""Ancestral sampling (Ho et al. 2020, Algorithm 2), for any process and any step sub-sequence."""
from __future__ import annotations

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ._common import Callback, check_generator, check_start, grid, progress_range, randn_like

Tensor = torch.Tensor

VARIANCES = ("small", "large")


def ddpm(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
         variance: str = "small", generator: torch.Generator | None = None,
         callback: Callback | None = None, progress: bool = False) -> Tensor:
    r"""Ancestral sampling: ``x_s ~ N(mu~(x_t, x0_pred), var I)`` from ``t`` to the next time ``s``.

    The mean is the posterior mean of ``q(x_s | x_t, x_0)`` at ``x_0 = D(x_t, t)``,

        mu~ = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x0_pred,

    which for DDPM with ``s = t - 1`` and an eps-model equals Algorithm 2's
    ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)``. The variance is

    * ``"small"``: the posterior variance ``beta~ = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (exact
      when the data is a single point), or
    * ``"large"``: the forward step variance ``beta = sigma_{t|s}^2`` (exact when the data is
      ``N(0, I)``); ``1 - alpha_bar_t / alpha_bar_s`` for DDPM.

    No noise is added on the final step to the data time (``z = 0`` at ``t = 1`` in Algorithm 2).
    For the simple variance-exploding process the step is ``x_{t-1} = (1 - 1/t) x_t + x0_pred / t
    + sqrt(1 - 1/t) z``.

    Args:
        denoiser: ``D(x_t, t) -> x0_pred`` (see :class:`scorekit.prediction.Denoiser`).
        process: the forward process.
        x_T: the start, shape ``(N, ...)``.
        timesteps: descending grid ending at the end time (see :mod:`scorekit.timesteps`).
        variance: ``"small"`` (``beta~_t``) or ``"large"`` (``beta_t``).
        generator: the source of the noise (required).
        callback: ``callback(i, t, x_t, x0_pred)`` after each network evaluation.
        progress: show a progress bar.
    """
    if variance not in VARIANCES:
        raise ScorekitError(f"unknown variance {variance!r}; choose 'small' (beta~_t) or 'large' (beta_t)")
    x = check_start(x_T)
    generator = check_generator(generator, "ddpm")
    ts = grid(process, timesteps)
    t, s = ts[:-1], ts[1:]
    c_x0, c_xt, var = process.posterior_coefficients(t, s)
    if variance == "large":
        var = process.transition(t, s)[1] ** 2
    std = torch.where(s > process.t_data, var.sqrt(), torch.zeros_like(var))   # no noise into the data
    c_x0, c_xt, std = c_x0.tolist(), c_xt.tolist(), std.tolist()   # python floats: x's dtype decides
    times = t.tolist()
    for i in progress_range(len(times), progress, "ddpm"):
        x0 = denoiser(x, times[i])
        if callback is not None:
            callback(i, times[i], x, x0)
        x_next = c_x0[i] * x0 + c_xt[i] * x
        if std[i] > 0:
            x_next = x_next + std[i] * randn_like(x, generator)
        x = x_next
    return x
