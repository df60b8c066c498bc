r"""Wrappers that keep ``x0_pred`` in the data range: clipping and dynamic thresholding.

Each takes a denoiser ``D(x_t, t) -> x0_pred`` and returns another
(:class:`~scorekit.wrappers.DenoiserWrapper`), so every sampler gets them without code of its own;
samplers then derive ``eps_pred`` from the changed ``x0_pred``. Large guidance weights push
``x0_pred`` far outside the data range, which is where thresholding matters (Saharia et al. 2022).
"""
from __future__ import annotations

import torch

from .errors import ScorekitError, positive_number
from .wrappers import DenoiserWrapper

Tensor = torch.Tensor


class ClipX0(DenoiserWrapper):
    """``D'(x_t, t) = clamp(D(x_t, t), -limit, limit)`` (DDPM's clipping to the data range)."""

    def __init__(self, denoiser, limit: float = 1.0):
        super().__init__(denoiser)
        self.limit = positive_number(limit, "the clipping limit clip", "e.g. 1 for images in [-1, 1]")

    def apply(self, x_t, t, condition, predict):
        return predict(x_t, t, condition).clamp(-self.limit, self.limit)


def clip_x0(denoiser, limit: float = 1.0) -> ClipX0:
    """``D'(x_t, t) = clamp(D(x_t, t), -limit, limit)``; see :class:`ClipX0`."""
    return ClipX0(denoiser, limit)


def dynamic_threshold(x0: Tensor, percentile: float = 0.995, max_value: float | None = None) -> Tensor:
    r"""Imagen's dynamic thresholding (Saharia et al. 2022, sec. 2.3), per sample:

        s = max(quantile(|x0|, percentile), 1),   x0 <- clamp(x0, -s, s) / s,

    with ``s`` capped at ``max_value`` when one is given (diffusers' ``sample_max_value``). Imagen
    sets no cap; a cap of 1 makes ``s = 1`` always, the static clip to ``[-1, 1]``.
    """
    flat = x0.reshape(x0.shape[0], -1)
    flat = flat.abs()
    if flat.dtype not in (torch.float32, torch.float64):   # quantile needs float32 or float64
        flat = flat.float()
    s = torch.quantile(flat, percentile, dim=1)
    s = s.clamp(min=1.0, max=max_value).to(x0.dtype).reshape((-1,) + (1,) * (x0.ndim - 1))
    return torch.maximum(torch.minimum(x0, s), -s) / s


class ThresholdX0(DenoiserWrapper):
    """A denoiser whose ``x0_pred`` is dynamically thresholded (see :func:`dynamic_threshold`;
    ``max_value=None``: no cap on the threshold, as in Imagen)."""

    def __init__(self, denoiser, percentile: float = 0.995, max_value: float | None = None):
        super().__init__(denoiser)
        percentile = positive_number(percentile, "the threshold percentile", "e.g. 0.995")
        if not 0 < percentile <= 1:
            raise ScorekitError(f"the threshold percentile must lie in (0, 1], got {percentile}")
        if max_value is not None:
            max_value = positive_number(max_value, "the threshold max_value", "e.g. 2, or None for no cap")
            if not max_value >= 1:
                raise ScorekitError(f"the threshold max_value must be >= 1, got {max_value}")
        self.percentile, self.max_value = percentile, max_value

    def apply(self, x_t, t, condition, predict):
        return dynamic_threshold(predict(x_t, t, condition), self.percentile, self.max_value)


def threshold_x0(denoiser, percentile: float = 0.995, max_value: float | None = None) -> ThresholdX0:
    """A denoiser whose ``x0_pred`` is dynamically thresholded; see :class:`ThresholdX0`."""
    return ThresholdX0(denoiser, percentile, max_value)


__all__ = ["ClipX0", "ThresholdX0", "clip_x0", "dynamic_threshold", "threshold_x0"]
