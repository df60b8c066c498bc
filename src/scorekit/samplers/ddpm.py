"""Ancestral sampling (Ho et al. 2020, Algorithm 2), for any process and any step sub-sequence."""
from __future__ import annotations

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..variances import VARIANCES
from ._common import Callback, check_generator, check_start, grid, progress_range, randn_like

Tensor = torch.Tensor


def ddpm(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
         variance: str | Tensor = "small", generator: torch.Generator | None = None,
         callback: Callback | None = None, progress: bool = False) -> Tensor:
    r"""Ancestral sampling: ``x_s ~ N(mu~(x_t, x0_pred), var I)`` from ``t`` to the next time ``s``.

    The mean is the posterior mean of ``q(x_s | x_t, x_0)`` at ``x_0 = D(x_t, t)``,

        mu~ = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x0_pred,

    which for DDPM with ``s = t - 1`` and an eps-model equals Algorithm 2's
    ``(x_t - beta_t / sqrt(1 - alpha_bar_t) eps) / sqrt(alpha_t)``. The variance is

    * ``"small"``: the posterior variance ``beta~ = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (exact
      when the data is a single point), or
    * ``"large"``: the forward step variance ``beta = sigma_{t|s}^2`` (exact when the data is
      ``N(0, I)``); ``1 - alpha_bar_t / alpha_bar_s`` for DDPM;
    * ``"learned"``: the network's own, per dimension, between the two (Nichol & Dhariwal 2021,
      eq. 15; :mod:`scorekit.variances`). The denoiser must have a variance head: it is asked
      ``x0_pred, log_var = denoiser.x0_and_log_variance(x_t, t, s)`` once per step instead of
      ``denoiser(x_t, t)`` (:class:`scorekit.variances.LearnedVarianceDenoiser`);
    * a tensor of one variance per step, in ascending time (entry 0 is the step into the data; for
      the whole DDPM chain, the ``(T,)`` table indexed by ``t``), e.g. Analytic-DPM's
      :func:`scorekit.variances.analytic_variances` for the same grid. The name ``"analytic"``
      (accepted by :func:`scorekit.likelihood.elbo`, which estimates it on the evaluated data) asks
      for that table: it needs training data, which a sampler does not have
      (``scorekit sample --variance analytic`` computes it from the run's data).

    No noise is added on the final step to the data time (``z = 0`` at ``t = 1`` in Algorithm 2).
    For the simple variance-exploding process the step is ``x_{t-1} = (1 - 1/t) x_t + x0_pred / t
    + sqrt(1 - 1/t) z``.

    Args:
        denoiser: ``D(x_t, t) -> x0_pred`` (see :class:`scorekit.prediction.Denoiser`).
        process: the forward process.
        x_T: the start, shape ``(N, ...)``.
        timesteps: descending grid ending at the end time (see :mod:`scorekit.timesteps`).
        variance: ``"small"`` (``beta~_t``), ``"large"`` (``beta_t``), ``"learned"`` or a tensor
            (``"analytic"``: see above).
        generator: the source of the noise (required).
        callback: ``callback(i, t, x_t, x0_pred)`` after each network evaluation.
        progress: show a progress bar.
    """
    learned = isinstance(variance, str) and variance == "learned"
    if isinstance(variance, str) and variance not in VARIANCES:
        raise ScorekitError(f"unknown variance {variance!r}; choose one of {', '.join(VARIANCES)} or give a "
                            f"tensor of per-step variances")
    if isinstance(variance, str) and variance == "analytic":
        raise ScorekitError("variance='analytic' is estimated from training data: pass the table "
                            "variance=scorekit.analytic_variances(denoiser, process, data, timesteps=timesteps, "
                            "generator=g) for the same grid")
    if learned:
        from ..variances import require_variance_head

        require_variance_head(denoiser)
    x = check_start(x_T)
    generator = check_generator(generator, "ddpm")
    ts = grid(process, timesteps)
    t, s = ts[:-1], ts[1:]
    c_x0, c_xt, var = process.posterior_coefficients(t, s)
    if isinstance(variance, str) and variance == "large":
        var = process.transition(t, s)[1] ** 2
    elif not isinstance(variance, str):
        var = torch.as_tensor(variance, dtype=torch.float64).detach().cpu().reshape(-1)
        if var.numel() != t.numel() or not torch.all(torch.isfinite(var) & (var >= 0)):
            raise ScorekitError(f"variance must hold {t.numel()} finite non-negative values, one per step of "
                                f"the grid in ascending time; got {var.numel()}")
        var = var.flip(0)                                   # the grid runs in descending time
    noisy = (s > process.t_data).tolist()                   # no noise into the data
    std = torch.where(s > process.t_data, var.sqrt(), torch.zeros_like(var))
    c_x0, c_xt, std = c_x0.tolist(), c_xt.tolist(), std.tolist()   # python floats: x's dtype decides
    times, ends = t.tolist(), s.tolist()
    for i in progress_range(len(times), progress, "ddpm"):
        if learned:
            x0, log_var = denoiser.x0_and_log_variance(x, times[i], ends[i])
        else:
            x0 = denoiser(x, times[i])
        if callback is not None:
            callback(i, times[i], x, x0)
        x_next = c_x0[i] * x0 + c_xt[i] * x
        if learned and noisy[i]:
            x_next = x_next + torch.exp(0.5 * log_var).to(x.dtype) * randn_like(x, generator)
        elif std[i] > 0:
            x_next = x_next + std[i] * randn_like(x, generator)
        x = x_next
    return x
