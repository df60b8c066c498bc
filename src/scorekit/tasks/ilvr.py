r"""ILVR (Choi et al. 2021): iterative latent variable refinement towards a reference's low frequencies.

An unconditional sampler is steered so that its sample shares a low-pass image with a
reference ``y``: after every reverse step ``t -> s`` of any sampler (Choi et al. 2021, Alg. 1)

    y_s ~ q(y_s | y) = N(alpha_s y, sigma_s^2 I),
    x_s <- x_s - phi_N(x_s) + phi_N(y_s),

where ``phi_N`` is the low-pass filter of factor ``N``: the mean of every ``N x N`` block,
spread back over the block (:meth:`scorekit.tasks.operators.Downsample.project`, the paper's
down- and up-sampling by ``N``). The high frequencies come from the model, the low ones from the
reference at the same noise level. Any :class:`~scorekit.tasks.operators.LinearOperator` may
stand in for ``Downsample(N)``: its projection ``A^+ A`` is then ``phi`` (greyscale: the sample
takes the reference's luminance; a mask: its pixels).

The last step's convention: the last step ends at the data time, where ``q(y_0 | y)`` is ``y``
itself (``sigma = 0``), so when the conditioning range reaches the end, the sample's low-pass
image is the reference's, ``phi_N(x_0) = phi_N(y)``, to float rounding (``phi`` is an
orthogonal projection, ``phi(x - phi x + phi y) = phi y``).

The conditioning range (the paper's Fig. 6: conditioning from step 1000 down to a step ``t_c``
keeps less of the reference the larger ``t_c``) is ``condition_range = (lo, hi)``, fractions of
the model's time range (:func:`~scorekit.tasks.segments.fraction_of`; the data time is 0): the
refinement follows every step that ends at a time whose fraction lies in ``[lo, hi]``. The
sampler runs uninterrupted across the steps outside it (:func:`~scorekit.tasks.segments.run_acting`),
so a range that holds no step is plain sampling, bit for bit.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..samplers._common import check_generator
from .operators import Downsample, LinearOperator
from .segments import (SegmentRunner, check_fraction, check_images, editing_process, fraction_of, noised,
                       run_acting, sampling_grid)

Tensor = torch.Tensor

#: the low-pass factor of ILVR when no operator is given
DEFAULT_FACTOR = 4


def low_pass(factor: int | None, operator: LinearOperator | None) -> LinearOperator:
    """The operator whose projection is ILVR's ``phi``: ``Downsample(factor)`` or ``operator``."""
    if operator is not None:
        if factor is not None:
            raise ScorekitError("give either factor (block-mean low-pass) or operator, not both")
        if not isinstance(operator, LinearOperator):
            raise ScorekitError(f"operator must be a scorekit.tasks.LinearOperator, got {type(operator).__name__}")
        return operator
    return Downsample(DEFAULT_FACTOR if factor is None else factor)


def check_range(condition_range) -> tuple[float, float]:
    """``(lo, hi)``, two fractions with ``lo <= hi``."""
    try:
        lo, hi = condition_range
    except (TypeError, ValueError):
        raise ScorekitError(f"condition_range must be two fractions (lo, hi), got {condition_range!r}") from None
    lo, hi = check_fraction(lo, "condition_range's lo"), check_fraction(hi, "condition_range's hi")
    if lo > hi:
        raise ScorekitError(f"condition_range ({lo:g}, {hi:g}) must have lo <= hi")
    return lo, hi


def ilvr(denoiser, reference: Tensor, /, *, factor: int | None = None, operator: LinearOperator | None = None,
         condition_range: Sequence[float] = (0.0, 1.0), process: GaussianProcess | None = None,
         sampler: str | Callable = "ddpm", num_steps: int | None = None, spacing: str | None = None,
         timesteps=None, sampler_options: dict | None = None,
         generator: torch.Generator | None = None) -> Tensor:
    r"""ILVR: sample the model with each sample's low frequencies taken from its reference (see
    the module docstring).

    Args:
        denoiser: ``D(x_t, t) = E[x_0 | x_t]`` of an unconditional model.
        reference: ``(N, C, H, W)``, one reference per sample.
        factor: ``N`` of ``phi_N`` (default 4; height and width must be multiples of it).
        operator: a :class:`~scorekit.tasks.operators.LinearOperator` whose ``project`` is ``phi``
            instead of ``Downsample(factor)``.
        condition_range: ``(lo, hi)`` fractions of the time range where the refinement follows
            a step (default ``(0, 1)``: every step).
        process, sampler, num_steps, spacing, timesteps, sampler_options: as
            :func:`~scorekit.tasks.sdedit.sdedit` (the grid runs from ``t_max``).
        generator: the source of the start ``x_T``, the sampler's noise and the reference's.

    Returns:
        ``(N, ...)`` samples, shaped and typed like ``reference``.
    """
    process = editing_process(denoiser, process)
    reference = check_images(reference, "reference", denoiser)
    phi = low_pass(factor, operator)
    phi.project(reference[:1])                            # refuses a reference the filter cannot take
    lo, hi = check_range(condition_range)
    generator = check_generator(generator, "ilvr")
    ts = sampling_grid(process, num_steps, spacing, timesteps)
    act = [lo <= fraction_of(process, s) <= hi for s in ts[1:].tolist()]
    run = SegmentRunner(denoiser, process, sampler, sampler_options, generator)
    times = ts.tolist()

    def refine(x: Tensor, k: int) -> Tensor:
        y_s = noised(process, reference, times[k], generator)
        return x - phi.project(x) + phi.project(y_s)

    with torch.no_grad():
        x = process.prior_sample(reference.shape, generator=generator, dtype=reference.dtype,
                                 device=reference.device)
        return run_acting(run, x, ts, act, refine)


__all__ = ["DEFAULT_FACTOR", "check_range", "ilvr", "low_pass"]
