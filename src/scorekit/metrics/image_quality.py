r"""Full-reference image quality: PSNR and SSIM of a restored image against the truth.

Both take batches ``(N, C, H, W)`` in the library's ``[-1, 1]`` convention (``data_range = 2``)
and return one value per image, so that a benchmark can report a mean with its standard error.

* **PSNR** ``= 10 log10(L^2 / MSE)`` with ``L`` the data range and the MSE over every pixel and
  channel of the image (``inf`` for identical images).
* **SSIM** (Wang, Bovik, Sheikh & Simoncelli 2004, eq. 13): for local statistics under a Gaussian
  window ``w`` (``sigma = 1.5``, truncated at 3.5 sigma: 11 x 11),

      SSIM(x, y) = (2 mu_x mu_y + C1)(2 sigma_xy + C2) / ((mu_x^2 + mu_y^2 + C1)(sigma_x^2 + sigma_y^2 + C2)),

  ``C1 = (K1 L)^2``, ``C2 = (K2 L)^2``, ``K1 = 0.01``, ``K2 = 0.03``, the (biased) local moments
  ``mu_x = w * x``, ``sigma_x^2 = w * x^2 - mu_x^2``, ``sigma_xy = w * (x y) - mu_x mu_y``; the
  map's mean over the positions where the window lies inside the image, then over channels. These
  are the paper's settings and scikit-image's ``structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=2)``, which the tests compare against.

PSNR rewards the posterior mean (the blur that minimises the squared error); SSIM less so; neither
measures realism, for which :mod:`scorekit.evaluation` compares feature distributions.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..errors import ScorekitError

Tensor = torch.Tensor

#: the width of [-1, 1], the library's image range
DATA_RANGE = 2.0


def _pair(x: Tensor, y: Tensor, what: str) -> tuple[Tensor, Tensor]:
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if x.shape != y.shape:
        raise ScorekitError(f"{what} compares images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.ndim != 4:
        raise ScorekitError(f"{what} takes batches of images (N, C, H, W), got shape {tuple(x.shape)}")
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    return x.to(dtype), y.to(dtype)


def psnr(x: Tensor, y: Tensor, *, data_range: float = DATA_RANGE) -> Tensor:
    """``(N,)`` peak signal-to-noise ratio in dB, ``10 log10(data_range^2 / MSE)`` per image."""
    x, y = _pair(x, y, "psnr")
    mse = ((x - y) ** 2).flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)


def gaussian_window(sigma: float = 1.5, truncate: float = 3.5, dtype=torch.float64) -> Tensor:
    """The normalised 1-D Gaussian of radius ``int(truncate sigma + 0.5)`` (scipy's convention)."""
    radius = int(truncate * sigma + 0.5)
    r = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (r / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def ssim(x: Tensor, y: Tensor, *, data_range: float = DATA_RANGE, sigma: float = 1.5, truncate: float = 3.5,
         k1: float = 0.01, k2: float = 0.03) -> Tensor:
    """``(N,)`` structural similarity of each image pair (see the module docstring)."""
    x, y = _pair(x, y, "ssim")
    w = gaussian_window(sigma, truncate, x.dtype)
    size = w.numel()
    if min(x.shape[-2:]) < size:
        raise ScorekitError(f"ssim's {size} x {size} window needs images of at least that size, got "
                            f"{tuple(x.shape[-2:])}; pass a smaller sigma")
    C = x.shape[1]
    kh = w.view(1, 1, size, 1).repeat(C, 1, 1, 1)
    kw = w.view(1, 1, 1, size).repeat(C, 1, 1, 1)

    def blur(v: Tensor) -> Tensor:                 # separable, only where the window fits
        return F.conv2d(F.conv2d(v, kh, groups=C), kw, groups=C)

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x ** 2
    var_y = blur(y * y) - mu_y ** 2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return s.mean(dim=(1, 2, 3))


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    """The mean of per-image values and its standard error ``std / sqrt(N)`` (NaN for one)."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = v.numel()
    return float(v.mean()), (float(v.std(unbiased=True)) / math.sqrt(n) if n > 1 else float("nan"))


__all__ = ["DATA_RANGE", "gaussian_window", "mean_and_stderr", "psnr", "ssim"]
