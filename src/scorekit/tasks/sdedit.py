r"""SDEdit (Meng et al. 2022): edit an image by noising it part-way and denoising it again.

A guide ``y`` (a stroke painting, a rough edit of a photo) is noised to a time ``t_0`` with the
process's own marginal and then denoised from ``t_0`` by any sampler of the unconditional model:

    x_{t_0} ~ q(x_{t_0} | y) = N(alpha_{t_0} y, sigma_{t_0}^2 I),      x_0 ~ p_theta(x_0 | x_{t_0}).

``t_0`` trades faithfulness to the guide (small ``t_0``: the output stays close to ``y``) for
realism (large ``t_0``: the output is a sample of the model that only keeps ``y``'s coarse
layout, since noise of standard deviation ``sigma_{t_0}`` erases every detail finer than
that). With an exact denoiser and an exact reverse sampler the output's law given the guide is

    p(x_0 | y) = E_{x_{t_0} ~ q(. | y)} [ p(x_0 | x_{t_0}) ],

the posterior of the data given the noised guide, averaged over the noise (Meng et al. 2022,
sec. 3). For Gaussian data ``N(m, S)`` it is Gaussian, with mean ``m + K alpha (y - m)`` and
covariance ``S - K alpha S + sigma^2 K K^T``, ``K = alpha S (alpha^2 S + sigma^2 I)^{-1}``
(at ``t_0``): the oracle of ``tests/test_editing.py``.

The dial is ``strength`` in ``[0, 1]``, a fraction of the process's model times:
``t_0 = t_min + strength (t_max - t_min)`` (a whole step for a discrete process), or ``t0``, a
process time itself (a step of a DDPM). Strength ``0`` returns the guide; strength ``1`` starts
from the prior ``N(0, prior_std^2 I)`` instead of the noised guide, so it is the unconditional
model, bit for bit the sampler run from ``process.prior_sample`` on the same generator.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..processes import GaussianProcess
from ..errors import ScorekitError
from ..samplers._common import check_generator
from .segments import (SegmentRunner, check_fraction, check_images, editing_process, noised, sampling_grid,
                       time_at)

Tensor = torch.Tensor

#: the strength of SDEdit when neither ``strength`` nor ``t0`` is given
DEFAULT_STRENGTH = 0.5


def sdedit_start(process: GaussianProcess, strength: float | None, t0: float | None, timesteps=None
                 ) -> float | None:
    """``t_0`` of SDEdit from ``strength`` (a fraction) or ``t0`` (a process time), or the first
    time of an explicit grid; ``None`` where the edit returns the guide (strength ``0``)."""
    if strength is not None and t0 is not None:
        raise ScorekitError("give either strength (a fraction of the time range) or t0 (a process time), "
                            "not both")
    if t0 is not None:
        if isinstance(t0, bool) or not isinstance(t0, (int, float)):
            raise ScorekitError(f"t0 must be a process time (a number), got {t0!r}")
        t0 = float(t0)
        if t0 <= process.t_data:
            return None
        if not process.t_min <= t0 <= process.t_max:
            raise ScorekitError(f"t0={t0:g} must lie in [{process.t_min:g}, {process.t_max:g}] (the model's "
                                f"times), or be the data time {process.t_data:g} (no edit)")
        return t0
    if strength is None:
        if timesteps is not None:
            return float(torch.as_tensor(timesteps, dtype=torch.float64).reshape(-1)[0])
        strength = DEFAULT_STRENGTH
    strength = check_fraction(strength, "strength")
    return None if strength == 0 else time_at(process, strength)


def sdedit(denoiser, guide: Tensor, /, *, strength: float | None = None, t0: float | None = None,
           process: GaussianProcess | None = None, sampler: str | Callable = "ddpm",
           num_steps: int | None = None, spacing: str | None = None, timesteps=None,
           sampler_options: dict | None = None, generator: torch.Generator | None = None) -> Tensor:
    r"""SDEdit: noise each guide to ``t_0`` and denoise it with ``sampler`` (see the module docstring).

    Args:
        denoiser: ``D(x_t, t) = E[x_0 | x_t]`` of an unconditional model (a
            :class:`~scorekit.prediction.Denoiser`, a wrapper, or a plain function with ``process``).
        guide: ``(N, ...)`` one guide per sample (repeat a guide for several edits of it).
        strength: ``t_0`` as a fraction of the model's time range, in ``[0, 1]`` (default 0.5);
            ``0`` returns the guide, ``1`` is the unconditional model.
        t0: ``t_0`` as a process time instead (e.g. DDPM step 400).
        process: the forward process (default: the denoiser's).
        sampler: a name in :data:`~scorekit.samplers.SAMPLERS` (default ``"ddpm"``, the ancestral
            sampler, as the paper's reverse SDE) or a sampler function.
        num_steps: network evaluations from ``t_0`` to the data (default 50, or the steps a
            discrete process has below ``t_0`` if fewer), spaced by ``spacing`` on
            ``[t_min, t_0]`` (:func:`~scorekit.timesteps.make_timesteps` with ``t_start=t_0``).
        timesteps: an explicit grid from ``t_0`` instead (its first time is ``t_0``).
        sampler_options: the sampler's own options (``{"eta": 0.5}``), checked as
            :func:`scorekit.sample` checks them.
        generator: the source of every random draw (required unless ``strength`` is 0).

    Returns:
        The edits ``(N, ...)``, shaped and typed like ``guide``.
    """
    process = editing_process(denoiser, process)
    guide = check_images(guide, "guide", denoiser)
    start = sdedit_start(process, strength, t0, timesteps)
    if start is None:
        return guide.clone()
    generator = check_generator(generator, "sdedit")
    ts = sampling_grid(process, num_steps, spacing, timesteps, t_start=start)
    if abs(ts[0].item() - start) > 1e-9 * max(1.0, abs(start)):
        raise ScorekitError(f"the grid starts at t = {ts[0].item():g} but t0 = {start:g}; give either "
                            f"timesteps starting at t0 or no timesteps")
    run = SegmentRunner(denoiser, process, sampler, sampler_options, generator)
    with torch.no_grad():
        if start >= process.t_max:
            x = process.prior_sample(guide.shape, generator=generator, dtype=guide.dtype, device=guide.device)
        else:
            x = noised(process, guide, start, generator)
        return run(x, ts)


__all__ = ["DEFAULT_STRENGTH", "sdedit", "sdedit_start"]
