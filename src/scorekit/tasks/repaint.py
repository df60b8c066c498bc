r"""RePaint (Lugmayr et al. 2022): inpainting with an unconditional model by replacement and resampling.

The known pixels (mask ``m = 1``) of the original ``x_0`` are put back after every reverse step
``t -> s`` of any sampler, at the step's noise level (Lugmayr et al. 2022, Alg. 1):

    x_s^known ~ q(x_s | x_0) = N(alpha_s x_0, sigma_s^2 I),
    x_s^unknown = the sampler's step from x_t,
    x_s = m * x_s^known + (1 - m) * x_s^unknown.

Replacement alone is not exact: the unknown pixels at ``s`` were made from an ``x_t`` whose
known half was drawn independently of them, so they follow the data only loosely and do not
harmonise with the known pixels. RePaint's *resampling* lets them catch up: after stepping down
``j`` steps (the jump length), the whole state is noised back up by the forward transition
``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)`` and the ``j`` steps are taken again; each
block of ``j`` steps is taken ``r`` times in all (``resamplings``; ``r = 1`` is replacement
alone), with the paper's schedule (the official code's ``get_schedule_jump``: the blocks end at
the ``j``-th, ``2 j``-th, ... model time counted from the data, and the block at the top of the
grid, from which no jump of ``j`` steps fits, is taken once). On an exact Gaussian prior the
unknown pixels' law approaches the conditional ``p(x_unknown | x_known)`` as ``r`` grows
(``tests/test_editing.py``, ``benchmarks/editing_gaussian.py``).

The last step ends at the data time, where ``q(x_0 | x_0)`` is ``x_0`` itself: the known pixels of
the result are the original's, exactly.
"""
from __future__ import annotations

from typing import Callable

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..samplers._common import check_generator
from .operators import Mask
from .segments import (SegmentRunner, check_images, editing_process, noised, renoised, sampling_grid)

Tensor = torch.Tensor


def repaint_schedule(num_model_times: int, jump_length: int, resamplings: int) -> list[int]:
    """The grid indices RePaint visits, from ``0`` (the first model time) to ``n`` (the end):
    a step down where the index grows by one, a re-noising step up where it falls by one.

    It is the official ``get_schedule_jump(t_T=n, jump_length=j, jump_n_sample=r)`` with the time
    label ``t`` (``n - 1`` at the first model time, ``-1`` at the end) written as the index
    ``n - 1 - t``: after arriving at labels ``0, j, 2 j, ... < n - j`` the state jumps ``j`` steps
    up, ``r - 1`` times at each.
    """
    n, j, r = num_model_times, jump_length, resamplings
    jumps = {t: r - 1 for t in range(0, n - j, j)}
    t, labels = n, []
    while t >= 1:
        t -= 1
        labels.append(t)
        if jumps.get(t, 0) > 0:
            jumps[t] -= 1
            for _ in range(j):
                t += 1
                labels.append(t)
    labels.append(-1)
    return [n - 1 - label for label in labels]


def known_mask(mask, x: Tensor) -> Tensor:
    """The mask as a boolean tensor that broadcasts to ``x``'s shape without changing it."""
    if isinstance(mask, Mask):
        mask = mask.mask
    if not isinstance(mask, Tensor):
        try:
            mask = torch.as_tensor(mask)
        except (TypeError, ValueError, RuntimeError):
            raise ScorekitError(f"mask must be a tensor of 0 and 1 or a scorekit.tasks.Mask, got "
                                f"{type(mask).__name__}") from None
    if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
        raise ScorekitError("a mask holds 1 where a pixel is known and 0 where it is missing; this one has "
                            "other values")
    try:
        fits = torch.broadcast_shapes(mask.shape, x.shape) == x.shape
    except RuntimeError:
        fits = False
    if not fits:
        raise ScorekitError(f"the mask has shape {tuple(mask.shape)}, which does not fit images of shape "
                            f"{tuple(x.shape)} (give (N, ...) or (1, ...) of the images' size, 1 = known)")
    return mask.to(device=x.device).bool()


def repaint(denoiser, original: Tensor, /, *, mask: Tensor | Mask, resamplings: int = 10,
            jump_length: int = 10, process: GaussianProcess | None = None, sampler: str | Callable = "ddpm",
            num_steps: int | None = None, spacing: str | None = None, timesteps=None,
            sampler_options: dict | None = None, generator: torch.Generator | None = None) -> Tensor:
    r"""RePaint: fill the pixels where ``mask`` is 0 (see the module docstring).

    Args:
        denoiser: ``D(x_t, t) = E[x_0 | x_t]`` of an unconditional model.
        original: ``(N, ...)`` the images; only their known pixels are read.
        mask: 1 where a pixel is known, 0 where it is to be filled: a tensor broadcasting to
            ``original`` (``(N, ...)``, one per sample, or ``(1, ...)``) or a
            :class:`~scorekit.tasks.operators.Mask`.
        resamplings: ``r``, how many times each block of steps is taken (1: replacement alone;
            the paper: 10).
        jump_length: ``j``, the steps of a block (the paper: 10); at most ``num_steps - 1`` when
            ``r > 1``.
        process, sampler, num_steps, spacing, timesteps, sampler_options: as
            :func:`~scorekit.tasks.sdedit.sdedit` (the grid runs from ``t_max``). Each step is one
            call of the sampler; about ``r`` times ``num_steps`` network evaluations in all.
        generator: the source of the start, the sampler's noise, the known pixels' noise and
            the re-noising.

    Returns:
        ``(N, ...)`` inpainted images, shaped and typed like ``original``.
    """
    process = editing_process(denoiser, process)
    original = check_images(original, "original", denoiser)
    known = known_mask(mask, original)
    for name, value in (("resamplings", resamplings), ("jump_length", jump_length)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ScorekitError(f"{name} must be a whole number >= 1, got {value!r}")
    generator = check_generator(generator, "repaint")
    ts = sampling_grid(process, num_steps, spacing, timesteps)
    n = len(ts) - 1
    if resamplings > 1 and jump_length > n - 1:
        raise ScorekitError(f"jump_length={jump_length} leaves no room for a jump on a grid of {n} model "
                            f"times; give at most {n - 1} (or more steps)")
    run = SegmentRunner(denoiser, process, sampler, sampler_options, generator)
    times = ts.tolist()
    path = repaint_schedule(n, jump_length, resamplings)
    with torch.no_grad():
        x = process.prior_sample(original.shape, generator=generator, dtype=original.dtype,
                                 device=original.device)
        for a, b in zip(path[:-1], path[1:]):
            if b == a + 1:                                   # a reverse step, then the known pixels
                x = run(x, ts[a:b + 1])
                x = torch.where(known, noised(process, original, times[b], generator), x)
            else:                                            # re-noise one step up
                x = renoised(process, x, times[a], times[b], generator)
        return x


__all__ = ["known_mask", "repaint", "repaint_schedule"]
