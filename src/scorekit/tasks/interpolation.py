r"""Editing through DDIM's latents: interpolation between two images, and inversion editing.

Deterministic DDIM (Song et al. 2021, eq. 12 with ``eta = 0``) is a discretised probability-flow
ODE, a bijection between data and the prior's latents ``x_T``; :func:`scorekit.samplers.ddim_invert`
runs it backwards. Two edits follow (Song et al. 2021, sec. 5.3 and 5.4):

* **Interpolation.** Invert two images ``x^a, x^b`` to ``z^a, z^b``, interpolate the latents
  spherically (Shoemake 1985; the latents of a Gaussian prior lie near a sphere of radius
  ``prior_std sqrt(d)``, which linear interpolation would leave through its middle),

      slerp(z^a, z^b; w) = sin((1 - w) theta) / sin(theta) z^a + sin(w theta) / sin(theta) z^b,
      cos(theta) = <z^a, z^b> / (|z^a| |z^b|),

  and decode each with DDIM. At ``w = 0`` and ``w = 1`` slerp returns ``z^a`` and ``z^b``
  exactly, and with an exact denoiser DDIM decodes them back to the images up to the
  inversion's discretisation error, which falls with the steps (``O(1 / n)``).
* **Inversion editing.** Invert under one condition (the denoiser bound to ``source``, e.g. a
  class) and decode under another (``target``): the latent keeps what the two conditions share
  (a mixture's position within its mode, an image's layout), the decoder puts it in the target.
  For a class-conditional denoiser this is ``denoiser.with_condition(target)``.
"""
from __future__ import annotations

from typing import Sequence

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..samplers.ddim import ddim, ddim_invert
from .segments import check_images, check_same_shape, editing_process, sampling_grid

Tensor = torch.Tensor

#: the interpolation weights when none are given
DEFAULT_WEIGHTS = (0.0, 0.25, 0.5, 0.75, 1.0)


def slerp(z0: Tensor, z1: Tensor, weight: float) -> Tensor:
    r"""Spherical interpolation of each sample's flattened latents (see the module docstring).

    The angle ``theta`` is each pair's own; where the two are (nearly) parallel
    (``sin theta < 1e-6``) it is the linear interpolation ``(1 - w) z0 + w z1``. The
    coefficients are computed in float64; ``weight = 0`` returns ``z0`` and ``weight = 1`` ``z1``,
    bit for bit (their coefficients are exactly 1 and 0).
    """
    if z0.shape != z1.shape:
        raise ScorekitError(f"slerp takes latents of one shape, got {tuple(z0.shape)} and {tuple(z1.shape)}")
    w = float(weight)
    a, b = z0.reshape(z0.shape[0], -1).double(), z1.reshape(z1.shape[0], -1).double()
    cos = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(torch.finfo(torch.float64).tiny)
    theta = torch.arccos(cos.clamp(-1.0, 1.0))
    sin = torch.sin(theta)
    linear = sin < 1e-6
    safe = torch.where(linear, torch.ones_like(sin), sin)
    c0 = torch.where(linear, torch.full_like(sin, 1 - w), torch.sin((1 - w) * theta) / safe)
    c1 = torch.where(linear, torch.full_like(sin, w), torch.sin(w * theta) / safe)
    if w == 0.0:
        c0, c1 = torch.ones_like(c0), torch.zeros_like(c1)
    elif w == 1.0:
        c0, c1 = torch.zeros_like(c0), torch.ones_like(c1)
    shape = (-1,) + (1,) * (z0.ndim - 1)
    c0, c1 = c0.to(z0.dtype).reshape(shape), c1.to(z0.dtype).reshape(shape)
    return c0 * z0 + c1 * z1


def _check_weights(weights) -> list[float]:
    try:
        ws = [float(w) for w in weights]
    except (TypeError, ValueError):
        raise ScorekitError(f"weights must be a list of numbers in [0, 1], got {weights!r}") from None
    if not ws or not all(0.0 <= w <= 1.0 for w in ws):
        raise ScorekitError(f"weights must be a non-empty list of numbers in [0, 1], got {weights!r}")
    return ws


def interpolate(denoiser, x: Tensor, /, *, other: Tensor, weights: Sequence[float] = DEFAULT_WEIGHTS,
                process: GaussianProcess | None = None, num_steps: int | None = None,
                spacing: str | None = None, timesteps=None, fixed_point_iters: int = 0,
                return_latents: bool = False):
    r"""Interpolate between ``x[i]`` and ``other[i]`` through their DDIM latents (see the module
    docstring).

    Args:
        denoiser: ``D(x_t, t) = E[x_0 | x_t]``.
        x, other: ``(N, ...)`` the two ends, one pair per sample.
        weights: the interpolation weights ``w`` (0: ``x``, 1: ``other``).
        process, num_steps, spacing, timesteps: the grid of inversion and decoding (as
            :func:`scorekit.invert` and :func:`scorekit.sample` with ``sampler="ddim"``).
        fixed_point_iters: refinement of each inversion step
            (:func:`~scorekit.samplers.ddim_invert`).
        return_latents: also return the interpolated latents.

    Returns:
        ``(N, K, ...)``: for each pair the decoded images at the ``K`` weights (and the latents of
        that shape, with ``return_latents``).
    """
    process = editing_process(denoiser, process)
    x = check_images(x, "x", denoiser)
    other = check_same_shape(other, x, "other", "x")
    ws = _check_weights(weights)
    ts = sampling_grid(process, num_steps, spacing, timesteps)
    with torch.no_grad():                  # batches of N, so a condition bound per sample fits each
        za, zb = (ddim_invert(denoiser, process, end, ts, fixed_point_iters=fixed_point_iters) for end in (x, other))
        latents = torch.stack([slerp(za, zb, w) for w in ws], dim=1)            # (N, K, ...)
        out = torch.stack([ddim(denoiser, process, latents[:, k], ts) for k in range(len(ws))], dim=1)
    return (out, latents) if return_latents else out


def inversion_edit(denoiser, x: Tensor, /, *, target, source=None, process: GaussianProcess | None = None,
                   num_steps: int | None = None, spacing: str | None = None, timesteps=None,
                   fixed_point_iters: int = 0) -> Tensor:
    r"""Invert ``x`` with DDIM under ``source`` and decode under ``target`` (see the module docstring).

    Args:
        denoiser: a conditional denoiser (:class:`~scorekit.prediction.Denoiser` of a
            class-conditional network, or a wrapper of one).
        x: ``(N, ...)`` the images.
        target: the condition to decode under: class labels ``(N,)`` (or one for all) or a
            :class:`~scorekit.conditioning.Condition`.
        source: the condition ``x`` is inverted under (default: the one the denoiser is bound
            to); ``-1`` is the null label, the unconditional model of label dropout.
        process, num_steps, spacing, timesteps, fixed_point_iters: as :func:`interpolate`.

    Returns:
        ``(N, ...)`` the edited images.
    """
    from ..conditioning import as_condition

    process = editing_process(denoiser, process)
    x = check_images(x, "x", denoiser)
    if not hasattr(denoiser, "with_condition"):
        raise ScorekitError("inversion editing needs a denoiser that takes a condition (a scorekit.Denoiser of "
                            "a class-conditional network); a plain function D(x_t, t) takes none")
    ts = sampling_grid(process, num_steps, spacing, timesteps)

    def bound(condition):
        condition = as_condition(condition)
        return denoiser.with_condition(None if condition is None else condition.for_batch(x.shape[0]))

    source_denoiser = denoiser if source is None else bound(source)
    with torch.no_grad():
        z = ddim_invert(source_denoiser, process, x, ts, fixed_point_iters=fixed_point_iters)
        return ddim(bound(target), process, z, ts)


__all__ = ["DEFAULT_WEIGHTS", "interpolate", "inversion_edit", "slerp"]
