r"""Langevin dynamics on a score function: plain (unadjusted) and annealed (Song & Ermon 2019).

These work on any score function, not on a process and denoiser: ``score(x)`` for
:func:`langevin` (e.g. the exact ``mixture.score`` of :mod:`scorekit.toy`) and a noise-conditional
``score(x, sigma)`` for :func:`annealed_langevin` (e.g. ``lambda x, s: mixture.score(x, 1.0, s)``,
the score of the data convolved with ``N(0, sigma^2 I)``). The predictor-corrector sampler over
the shared sampler interface is :func:`scorekit.samplers.sde.pc`.

Why annealing: plain Langevin dynamics only sees the score, the *gradient* of ``log p``. Between
well-separated modes the density is tiny and the score carries no information about the relative
weights of the modes, so a chain stays in the basin where it started and the mode weights come
from the initialisation, not from ``p``. Noise-perturbed densities ``p_sigma`` with large
``sigma`` fill the low-density regions; annealing ``sigma`` down lets the chains settle into the
modes in the right proportions before the modes separate.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..errors import ScorekitError, positive_number
from ._common import check_generator, check_start, progress_range, randn_like

Tensor = torch.Tensor


def _count(value, name: str, minimum: int) -> int:
    """A whole number ``>= minimum`` (``3.0`` is accepted: command-line options arrive as floats)."""
    try:
        whole = not isinstance(value, bool) and float(value).is_integer() and int(value) >= minimum
    except (TypeError, ValueError, OverflowError):
        whole = False
    if not whole:
        raise ScorekitError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def langevin_step(score_value: Tensor, x: Tensor, step_size: float, generator: torch.Generator) -> Tensor:
    r"""One step of unadjusted Langevin dynamics, ``x + eta score + sqrt(2 eta) z``, ``z ~ N(0, I)``."""
    return x + step_size * score_value + math.sqrt(2.0 * step_size) * randn_like(x, generator)


def langevin(score: Callable[[Tensor], Tensor], x: Tensor, *, step_size: float, num_steps: int,
             generator: torch.Generator, callback: Callable[[int, Tensor, Tensor], None] | None = None,
             progress: bool = False) -> Tensor:
    r"""Unadjusted Langevin dynamics (Song & Ermon 2019, eq. 1 with ``epsilon = 2 eta``):

        x_{k+1} = x_k + eta grad log p(x_k) + sqrt(2 eta) z_k,      z_k ~ N(0, I).

    As ``eta -> 0`` and ``num_steps -> inf`` the law of ``x_k`` tends to ``p``. At a fixed
    ``eta`` the chain has an ``O(eta)`` bias (there is no Metropolis correction): on a Gaussian
    ``N(mu, s^2)`` its stationary law is ``N(mu, s^2 / (1 - eta / (2 s^2)))``. Its mixing between
    separated modes is exponentially slow; see the module notes and :func:`annealed_langevin`.

    Args:
        score: ``score(x) -> grad_x log p(x)``, shaped like ``x``.
        x: the initial points, shape ``(N, ...)``.
        step_size: ``eta > 0``.
        num_steps: the number of steps (score evaluations), ``>= 0``.
        generator: the source of the noise (required).
        callback: ``callback(k, x_k, score(x_k))`` after each score evaluation.
        progress: show a progress bar.
    """
    x = check_start(x, "x")
    eta = positive_number(step_size, "step_size")
    n = _count(num_steps, "num_steps", 0)
    generator = check_generator(generator, "langevin")
    for k in progress_range(n, progress, "langevin"):
        s = score(x)
        if callback is not None:
            callback(k, x, s)
        x = langevin_step(s, x, eta, generator)
    return x


def annealed_langevin(score: Callable[[Tensor, float], Tensor], x: Tensor, sigmas: Sequence[float], *,
                      steps_per_sigma: int, epsilon: float, generator: torch.Generator,
                      denoise: bool = True,
                      callback: Callable[[int, float, Tensor, Tensor], None] | None = None,
                      progress: bool = False) -> Tensor:
    r"""Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

    For each noise level ``sigma_1 > sigma_2 > ... > sigma_L`` in turn, with the step size

        alpha_i = epsilon sigma_i^2 / sigma_L^2,

    run ``T = steps_per_sigma`` Langevin steps on the noise-perturbed density
    ``p_{sigma_i} = p * N(0, sigma_i^2 I)``:

        x <- x + (alpha_i / 2) s(x, sigma_i) + sqrt(alpha_i) z,      z ~ N(0, I),

    i.e. :func:`langevin` with ``eta = alpha_i / 2``. The schedule keeps the "signal-to-noise
    ratio" ``alpha_i s / (2 sqrt(alpha_i) z)`` of each step independent of ``i`` (the paper's
    argument: ``||s(x, sigma)|| ~ 1 / sigma``). The chain ends distributed approximately as
    ``p_{sigma_L}``, the data blurred by ``N(0, sigma_L^2 I)``.

    With ``denoise=True`` (the default) one more score evaluation maps the result to Tweedie's
    posterior mean ``E[x_0 | x] = x + sigma_L^2 s(x, sigma_L)`` (Efron 2011; used for NCSN by
    Song & Ermon 2020 and Jolicoeur-Martineau et al. 2021). It removes the ``N(0, sigma_L^2 I)``
    blur of the last level, so samples are no longer visibly noisy; the price is that it returns
    a conditional mean, slightly under-dispersed on scales near ``sigma_L``.

    Args:
        score: noise-conditional score ``score(x, sigma) -> grad_x log p_sigma(x)``; ``sigma`` is
            a python float.
        x: the initial points, shape ``(N, ...)`` (Song & Ermon use uniform noise).
        sigmas: the noise levels, strictly decreasing and positive (e.g. geometric).
        steps_per_sigma: ``T >= 1``, the Langevin steps per noise level.
        epsilon: ``> 0``, the step size at the last level ``sigma_L``.
        generator: the source of the noise (required).
        denoise: finish with the Tweedie step ``x + sigma_L^2 s(x, sigma_L)``.
        callback: ``callback(k, sigma, x, s)`` after each score evaluation (``k = 0, 1, ...``,
            ``L T`` of them, plus one with ``denoise``).
        progress: show a progress bar.
    """
    x = check_start(x, "x")
    try:
        sig = torch.as_tensor(sigmas, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError):
        raise ScorekitError(f"sigmas must be a sequence of numbers, got {sigmas!r}") from None
    if sig.numel() == 0 or not torch.all(torch.isfinite(sig)) or not torch.all(sig > 0):
        raise ScorekitError("sigmas must be a non-empty sequence of positive finite noise levels")
    if not torch.all(sig[1:] < sig[:-1]):
        raise ScorekitError("sigmas must be strictly decreasing (from the largest noise level down)")
    T = _count(steps_per_sigma, "steps_per_sigma", 1)
    eps = positive_number(epsilon, "epsilon")
    generator = check_generator(generator, "annealed_langevin")
    levels = sig.tolist()
    sigma_L = levels[-1]
    k = 0
    for i in progress_range(len(levels), progress, "annealed langevin"):
        alpha_i = eps * levels[i] ** 2 / sigma_L ** 2
        for _ in range(T):
            s = score(x, levels[i])
            if callback is not None:
                callback(k, levels[i], x, s)
            x = langevin_step(s, x, alpha_i / 2, generator)
            k += 1
    if denoise:
        s = score(x, sigma_L)
        if callback is not None:
            callback(k, sigma_L, x, s)
        x = x + sigma_L ** 2 * s
    return x
