"""Denoising diffusion implicit models (Song, Meng & Ermon 2021): sampling and inversion."""
from __future__ import annotations

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ._common import Callback, check_generator, check_start, coef, randn_like, steps

Tensor = torch.Tensor


def ddim(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, eta: float = 0.0,
         generator: torch.Generator | None = None, callback: Callback | None = None,
         progress: bool = False) -> Tensor:
    r"""DDIM (Song et al. 2021, eq. 12), written for any ``alpha``, ``sigma``:

        x_s = alpha_s x0_pred + sqrt(sigma_s^2 - c^2) eps_pred + c z,
        eps_pred = (x_t - alpha_t x0_pred) / sigma_t,
        c = eta sqrt(sigma_{t|s}^2 sigma_s^2 / sigma_t^2)   (eta times the posterior std).

    ``eta = 0`` is the deterministic DDIM map, a first-order solver of the probability-flow ODE;
    ``eta = 1`` gives exactly the ancestral step with the posterior variance ``beta~``. Values above
    1 are allowed while ``c <= sigma_s``. A clipped or thresholded ``x0_pred`` (see
    :mod:`scorekit.guidance`) also changes ``eps_pred``, keeping the two consistent.

    Args:
        denoiser: ``D(x_t, t) -> x0_pred``.
        process: the forward process.
        x_T: the start, shape ``(N, ...)``.
        timesteps: descending grid ending at the end time (see :mod:`scorekit.timesteps`).
        eta: the stochasticity, ``>= 0``.
        generator: the source of the noise (required when ``eta > 0``).
        callback: ``callback(i, t, x_t, x0_pred)`` after each network evaluation.
        progress: show a progress bar.
    """
    eta = float(eta)
    if not eta >= 0:
        raise ScorekitError(f"eta must be >= 0, got {eta}")
    x = check_start(x_T)
    if eta > 0:
        generator = check_generator(generator, "ddim with eta > 0")
    for i, t, s in steps(process, timesteps, progress=progress, desc="ddim"):
        x0 = denoiser(x, t)
        if callback is not None:
            callback(i, t, x, x0)
        alpha_t, sigma_t = process.alpha(t), process.sigma(t)
        alpha_s, sigma_s = process.alpha(s), process.sigma(s)
        eps = (x - coef(alpha_t, x) * x0) / coef(sigma_t, x)
        c = torch.zeros((), dtype=torch.float64)
        if eta > 0 and sigma_s > 0:
            c = eta * process.posterior_coefficients(t, s)[2].sqrt()
            if c > sigma_s * (1 + 1e-12):
                raise ScorekitError(f"eta={eta} is too large for the step {t} -> {s}: the noise "
                                    f"std {c.item():.4g} exceeds sigma_s={sigma_s.item():.4g}")
        x_next = coef(alpha_s, x) * x0 + coef((sigma_s ** 2 - c ** 2).clamp_min(0).sqrt(), x) * eps
        if c > 0:
            x_next = x_next + coef(c, x) * randn_like(x, generator)
        x = x_next
    return x


def ddim_invert(denoiser, process: GaussianProcess, x0: Tensor, timesteps, *,
                fixed_point_iters: int = 0, callback: Callback | None = None,
                progress: bool = False) -> Tensor:
    r"""Run the deterministic DDIM map backwards: data ``x_0`` to noise ``x_T``.

    ``timesteps`` is the same descending grid that sampling uses (model times, then the end
    time); inversion walks it from the end back to ``t_0``. Each step from ``a`` to ``b > a``

        x_b / alpha_b = x_a / alpha_a + (sigma_b / alpha_b - sigma_a / alpha_a) eps

    is the DDIM step solved for the other end. The standard inversion takes ``eps`` at the
    current point, ``eps(x_a, a)``. From the data (``sigma_a = 0``, where no model is evaluated)
    it takes ``eps(alpha_b x_a, b)``. With ``fixed_point_iters = k > 0`` each step is refined by
    ``k`` fixed-point iterations ``x_b <- alpha_b (x_a / alpha_a + (...) eps(x_b, b))``, which
    converge to the exact inverse of the sampling step, so DDIM sampling from the returned
    ``x_T`` reproduces ``x_0`` up to the iteration's tolerance.
    """
    x = check_start(x0, "x0")
    if int(fixed_point_iters) < 0:
        raise ScorekitError(f"fixed_point_iters must be >= 0, got {fixed_point_iters}")
    for i, a, b in steps(process, timesteps, progress=progress, desc="ddim inversion", reverse=True):
        alpha_a, sigma_a = process.alpha(a), process.sigma(a)
        alpha_b, sigma_b = process.alpha(b), process.sigma(b)
        scaled = x / coef(alpha_a, x)
        gap = coef(sigma_b / alpha_b - sigma_a / alpha_a, x)
        if sigma_a > 0:
            x_eval, t_eval = x, a
        else:
            x_eval, t_eval = coef(alpha_b, x) * scaled, b
        for k in range(int(fixed_point_iters) + 1):
            x0_pred = denoiser(x_eval, t_eval)
            alpha_e, sigma_e = process.alpha(t_eval), process.sigma(t_eval)
            eps = (x_eval - coef(alpha_e, x) * x0_pred) / coef(sigma_e, x)
            x_b = coef(alpha_b, x) * (scaled + gap * eps)
            x_eval, t_eval = x_b, b
        if callback is not None:
            callback(i, b, x_b, x0_pred)
        x = x_b
    return x
