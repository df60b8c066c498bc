r"""Classical answers to the image tasks, to measure diffusion restorations against.

Each is what a regression-style method without a learned prior gives, in the library's
``[-1, 1]`` convention:

* :func:`bicubic_upsample`: super-resolution by bicubic interpolation (Keys 1981, PyTorch's
  ``a = -0.75``; half-pixel centres, so it fits :class:`~scorekit.tasks.operators.Downsample`'s
  blocks).
* :func:`mean_fill` and :func:`nearest_fill`: inpainting and uncropping by the per-pixel mean of
  training images, or by the value of the nearest known pixel (Euclidean distance, ties broken by
  scipy's distance transform).
* :func:`average_colour`: colourisation by the training images' mean colour moved to the observed
  luma: ``x_c = g + (m_c - sum_k w_k m_k)`` for the grey image ``g``, the mean image ``m`` and the
  luma weights ``w`` (which sum to 1), so ``Greyscale(x) = g`` exactly.
* JPEG restoration's baseline is the decoded JPEG itself.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScorekitError
from .operators import LUMA_WEIGHTS

Tensor = torch.Tensor


def _images(x: Tensor, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4:
        raise ScorekitError(f"{name} must be a batch of images (N, C, H, W), got "
                            f"{tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
    return x


def bicubic_upsample(y: Tensor, factor: int, *, clip: bool = True) -> Tensor:
    """``y`` enlarged ``factor`` times by bicubic interpolation, clipped to ``[-1, 1]``."""
    y = _images(y, "the low-resolution images")
    if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
        raise ScorekitError(f"the upsampling factor must be a whole number >= 1, got {factor!r}")
    out = F.interpolate(y, scale_factor=factor, mode="bicubic", align_corners=False)
    return out.clamp(-1, 1) if clip else out


def _known(mask: Tensor, x: Tensor) -> Tensor:
    """The mask as a bool tensor of ``x``'s shape (1 = known)."""
    try:
        return torch.broadcast_to(torch.as_tensor(mask, device=x.device) > 0.5, x.shape)
    except RuntimeError:
        raise ScorekitError(f"the mask has shape {tuple(torch.as_tensor(mask).shape)}, which does not fit "
                            f"images of shape {tuple(x.shape)}") from None


def mean_fill(y: Tensor, mask: Tensor, mean_image: Tensor) -> Tensor:
    """The known pixels of ``y``, and the mean image's values where ``mask`` is 0."""
    y = _images(y, "the masked images")
    known = _known(mask, y)
    mean_image = torch.as_tensor(mean_image, dtype=y.dtype, device=y.device)
    return torch.where(known, y, torch.broadcast_to(mean_image, y.shape))


def nearest_fill(y: Tensor, mask: Tensor) -> Tensor:
    """Each unknown pixel takes the value of the nearest known pixel of its image (per channel,
    with one mask over the channels of a sample)."""
    from scipy.ndimage import distance_transform_edt

    y = _images(y, "the masked images")
    known = _known(mask, y)
    if not bool((known.all(dim=1) == known.any(dim=1)).all()):
        raise ScorekitError("nearest_fill needs one mask for all channels of a sample")
    out = y.clone()
    for i in range(y.shape[0]):
        k = known[i, 0].cpu().numpy()
        if not k.any():
            raise ScorekitError(f"sample {i} has no known pixel to fill from")
        if k.all():
            continue
        _, (rows, cols) = distance_transform_edt(~k, return_indices=True)
        idx = torch.as_tensor(rows * k.shape[1] + cols, device=y.device).flatten()
        out[i] = y[i].flatten(1)[:, idx].reshape(y[i].shape)
    return out


def average_colour(grey: Tensor, mean_image: Tensor, weights=LUMA_WEIGHTS) -> Tensor:
    """The mean colour image moved to the observed luma: ``g + (m_c - sum_k w_k m_k)``."""
    grey = _images(grey, "the greyscale images")
    if grey.shape[1] != 1:
        raise ScorekitError(f"average_colour takes one grey channel, got {grey.shape[1]}")
    m = torch.as_tensor(mean_image, dtype=grey.dtype, device=grey.device)
    w = torch.as_tensor(np.asarray(weights, dtype=np.float64), dtype=grey.dtype, device=grey.device)
    if m.ndim == 3:
        m = m[None]
    if m.ndim != 4 or m.shape[1] != w.numel():
        raise ScorekitError(f"the mean image must have {w.numel()} channels, got shape {tuple(m.shape)}")
    luma = (w.view(1, -1, 1, 1) * m).sum(1, keepdim=True)
    return grey + (m - luma)


__all__ = ["average_colour", "bicubic_upsample", "mean_fill", "nearest_fill"]
