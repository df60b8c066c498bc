r"""Wrappers that change a denoiser's prediction: clipping and dynamic thresholding of ``x0_pred``.

Each takes a denoiser ``D(x_t, t) -> x0_pred`` and returns another, so every sampler gets them
without code of its own. Samplers then derive ``eps_pred`` from the changed ``x0_pred``.
"""
from __future__ import annotations

import torch

from .errors import ScorekitError, positive_number

Tensor = torch.Tensor


def clip_x0(denoiser, limit: float = 1.0):
    """``D'(x_t, t) = clamp(D(x_t, t), -limit, limit)`` (DDPM's clipping to the data range)."""
    limit = positive_number(limit, "the clipping limit clip", "e.g. 1 for images in [-1, 1]")

    def clipped(x: Tensor, t) -> Tensor:
        return denoiser(x, t).clamp(-limit, limit)

    return clipped


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_value: float = 1.0) -> Tensor:
    r"""Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3), per sample:

        s = clamp(quantile(|x0|, percentile), 1, max_value),   x0 <- clamp(x0, -s, s) / s.
    """
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat.abs()
    if flat.dtype not in (torch.float32, torch.float64):   # quantile needs float32 or float64
        flat = flat.float()
    s = torch.quantile(flat, percentile, dim=1)
    s = s.clamp(min=1.0, max=max_value).to(x0.dtype).reshape((-1,) + (1,) * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def threshold_x0(denoiser, percentile: float = 0.995, max_value: float = 1.0):
    """A denoiser whose ``x0_pred`` is dynamically thresholded (see :func:`dynamic_threshold`)."""
    percentile = positive_number(percentile, "the threshold percentile", "e.g. 0.995")
    max_value = positive_number(max_value, "the threshold max_value", "e.g. 1")
    if not 0 < percentile <= 1:
        raise ScorekitError(f"the threshold percentile must lie in (0, 1], got {percentile}")
    if not max_value >= 1:
        raise ScorekitError(f"the threshold max_value must be >= 1, got {max_value}")

    def thresholded(x: Tensor, t) -> Tensor:
        return dynamic_threshold(denoiser(x, t), percentile, max_value)

    return thresholded
