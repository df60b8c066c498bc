r"""Radially averaged power spectra of images, and what a forward process does to them.

**The measured spectrum.** For an image ``x`` of ``H x W`` pixels (one channel) the orthonormal
discrete Fourier transform is

    F(x)(k) = (H W)^{-1/2} sum_{m, n} x[m, n] exp(-2 pi i (k_y m + k_x n)),

with ``k_y`` on the multiples of ``1/H`` and ``k_x`` on those of ``1/W`` in ``[-1/2, 1/2)``
(``torch.fft.fftfreq``), so ``|k|`` is in cycles per pixel and runs from 0 to ``sqrt(1/2) ~ 0.707``.
The orthonormal scaling (``norm="ortho"``) makes the transform unitary: Parseval reads
``sum_k |F(x)(k)|^2 = sum_pixels x^2``, so the mean of ``|F|^2`` over all ``H W`` frequencies is
the mean squared pixel value, and white noise of variance ``s^2`` has ``E|F(k)|^2 = s^2`` at every
``k``: a flat spectrum at the height of its variance. :func:`radial_power_spectrum` averages
``|F(x)(k)|^2`` over the images, the channels and the frequencies of each radial bin of ``|k|``.

The image mean is **not** removed. The mean brightness is the ``k = 0`` coefficient,
``F(0) = sqrt(H W) mean(x)``, a part of the signal like any other: the forward process scales it
by ``alpha_t`` as it scales every frequency, the closed form below holds with it, and Parseval
stays exact. It does not leak into other bins, because the bins are centred on multiples of the
bin width ``dk`` (bin ``j`` holds the frequencies with ``round(|k| / dk) = j``), so the first bin,
``|k| < dk / 2``, holds ``k = 0`` alone at the default width ``dk = 1 / min(H, W)``. Subtract the
mean from the images first to study only the fluctuations.

**The forward process.** Under ``x_t = alpha_t x_0 + sigma_t eps`` with ``eps ~ N(0, I)``
independent of ``x_0``, the transform is linear, ``F(x_t) = alpha_t F(x_0) + sigma_t F(eps)``, and
the cross term has mean zero, so

    E|F(x_t)(k)|^2 = alpha_t^2 P_0(k) + sigma_t^2,        SNR_t(k) = alpha_t^2 P_0(k) / sigma_t^2,

with ``P_0(k) = E|F(x_0)(k)|^2`` (:func:`forward_spectrum`). Natural images have power falling
roughly like ``|k|^-2`` (Field 1987; van der Schaaf & van Hateren 1996) while the noise is flat,
so the noise floor ``sigma_t^2`` rises over the high frequencies first: band ``k`` is "lost" when
``SNR_t(k) = 1``, i.e. when the log-SNR of the process reaches ``lambda(t) = -log P_0(k)``, or
equivalently when the noise-to-signal scale ``sigma_t / alpha_t`` reaches the band's amplitude
``sqrt(P_0(k))`` (:func:`band_loss_time`). Diffusion thus generates coarse structure first and
fine detail last, an approximate autoregression over frequency (Rissanen, Heinonen & Solin 2023,
"Generative Modelling With Inverse Heat Dissipation", ICLR; Dieleman 2024, "Diffusion is
spectral autoregression", https://sander.ai/2024/09/02/spectral-autoregression.html).

**Monte-Carlo error.** Given the images, the estimate of ``E|F(x_t)|^2`` in a bin of ``m``
frequencies from ``n`` independent (image, channel) pairs of Gaussian noise has variance
``sigma_t^2 (2 sigma_t^2 + 4 alpha_t^2 P_0) / (m n)`` (:func:`spectrum_stderr`): the real
transform pairs ``k`` with ``-k`` (``F(-k)`` is the conjugate of ``F(k)``), and the identical
``|F|^2`` of the two members of a pair make up exactly for the larger variance of the
self-conjugate frequencies, whose coefficient is real.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from .errors import ScorekitError, positive_number
from .processes import GaussianProcess

Tensor = torch.Tensor

#: images transformed at once by :func:`radial_power_spectrum` (bounds its memory: a chunk of
#: 32x32 RGB images takes 1024 * 3 * 32 * 32 * 16 bytes = 50 MB of complex128)
CHUNK = 1024


class RadialBins(NamedTuple):
    """The radial bins of an ``H x W`` frequency grid.

    Attributes:
        index: ``(H, W)`` long tensor, the bin ``0 .. B-1`` of each frequency, in the order of
            ``torch.fft.fft2``'s output (every frequency is in one bin).
        centres: ``(B,)`` float64, the bin centres ``j dk`` in cycles per pixel.
        counts: ``(B,)`` long, how many frequencies of the grid each bin holds.
    """

    index: Tensor
    centres: Tensor
    counts: Tensor


class RadialSpectrum(NamedTuple):
    """A radially averaged power spectrum: bin centres ``frequency`` (cycles per pixel) and the
    mean of ``|F|^2`` in each bin, ``power`` (both float64, shape ``(B,)``)."""

    frequency: Tensor
    power: Tensor


class ForwardSpectrum(NamedTuple):
    """The closed-form spectrum of ``x_t`` (see :func:`forward_spectrum`); ``(T, B)`` tensors for
    ``T`` times and ``B`` bins, float64."""

    t: Tensor
    power: Tensor
    snr: Tensor


def radial_bins(height: int, width: int, *, num_bins: int | None = None,
                device=None) -> RadialBins:
    r"""Bins of ``|k|`` (cycles per pixel) on the ``height x width`` grid of ``torch.fft.fft2``.

    Bin ``j`` holds the frequencies with ``round(|k| / dk) = j``, centred at ``j dk``. By default
    ``dk = 1 / min(H, W)``, the spacing of the coarser axis (of the longer one for a single row or
    column), which puts ``k = 0`` alone in bin 0 and leaves no bin up to ``|k|_max`` (``sqrt(1/2)``
    for even sizes) empty on a square grid.
    ``num_bins`` sets ``dk = |k|_max / (num_bins - 1/2)`` instead, so that the last bin is centred
    ``dk / 2`` below the largest frequency. Bins that hold no frequency of the grid (only possible
    with a ``num_bins`` larger than the default) are left out, so ``centres`` may be shorter than
    ``num_bins``.
    """
    for name, size in (("height", height), ("width", width)):
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ScorekitError(f"{name} must be a positive whole number, got {size!r}")
    ky = torch.fft.fftfreq(height, dtype=torch.float64, device=device)
    kx = torch.fft.fftfreq(width, dtype=torch.float64, device=device)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    k_max = float(radius.max())
    if num_bins is None:
        dk = 1.0 / min([size for size in (height, width) if size > 1] or [1])
        num_bins = int(round(k_max / dk)) + 1
    else:
        if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
            raise ScorekitError(f"num_bins must be a positive whole number (or None for one bin per "
                                f"1 / min(H, W) cycles per pixel), got {num_bins!r}")
        dk = k_max / (num_bins - 0.5) if k_max > 0 else 1.0
    index = torch.floor(radius / dk + 0.5).long().clamp(max=num_bins - 1)
    counts = torch.bincount(index.flatten(), minlength=num_bins)
    kept = torch.nonzero(counts).flatten()
    renumber = torch.full((num_bins,), -1, dtype=torch.long, device=index.device)
    renumber[kept] = torch.arange(kept.numel(), device=index.device)
    return RadialBins(renumber[index], kept.to(torch.float64) * dk, counts[kept])


def _check_images(images) -> Tensor:
    if not isinstance(images, Tensor):
        raise ScorekitError(f"images must be a torch tensor shaped (N, C, H, W), got "
                            f"{type(images).__name__}")
    if images.ndim != 4:
        raise ScorekitError(f"images must be shaped (N, C, H, W), got a tensor of shape "
                            f"{tuple(images.shape)}; add the missing axes with images[None] or "
                            "images[:, None]")
    if not images.is_floating_point():
        raise ScorekitError(f"images must be a real floating-point tensor, got {images.dtype}; "
                            "convert with images.float() (e.g. x / 127.5 - 1 for 0..255 pixels)")
    if images.numel() == 0:
        raise ScorekitError(f"images must hold at least one pixel, got shape {tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ScorekitError("images contain NaN or infinite values")
    return images


def radial_power_spectrum(images: Tensor, *, num_bins: int | None = None) -> RadialSpectrum:
    r"""The radially averaged power spectrum of ``(N, C, H, W)`` images.

    ``power[j]`` is the mean of ``|F(x)(k)|^2`` over the ``N`` images, the ``C`` channels and the
    frequencies ``k`` of bin ``j`` (:func:`radial_bins`), with the orthonormal 2-D transform
    (``torch.fft.fft2(x, norm="ortho")``) of each channel, computed in float64; the mean is not
    removed (see the module notes). Returns ``RadialSpectrum(frequency, power)``, float64 on the
    images' device. With ``counts = radial_bins(H, W, num_bins=num_bins).counts`` (frequencies per
    bin), Parseval makes ``(power * counts).sum() / counts.sum()`` the mean squared pixel value;
    white noise of variance ``s^2`` gives ``power = s^2`` in every bin.
    """
    images = _check_images(images)
    n, c, h, w = images.shape
    bins = radial_bins(h, w, num_bins=num_bins, device=images.device)
    total = torch.zeros(h, w, dtype=torch.float64, device=images.device)
    for chunk in images.split(CHUNK):
        coeffs = torch.fft.fft2(chunk.to(torch.float64), norm="ortho")
        total += (coeffs.real ** 2 + coeffs.imag ** 2).sum(dim=(0, 1))
    per_bin = torch.zeros(bins.counts.numel(), dtype=torch.float64, device=images.device)
    per_bin.index_add_(0, bins.index.flatten(), total.flatten())
    return RadialSpectrum(bins.centres, per_bin / (bins.counts.to(torch.float64) * n * c))


def _numbers(values, name: str) -> Tensor:
    """A number or a 1-D sequence of numbers (times, scales) as a float64 ``(T,)`` tensor."""
    try:
        out = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ScorekitError(f"{name} must be a number or a 1-D sequence of numbers, got "
                            f"{type(values).__name__}") from None
    if out.ndim > 1:
        raise ScorekitError(f"{name} must be a number or a 1-D sequence of numbers, got shape "
                            f"{tuple(out.shape)}")
    return out.reshape(-1)


def _clean_power(power0) -> Tensor:
    """The clean spectrum (a :class:`RadialSpectrum` or its ``power``) as float64 ``(B,)``."""
    p = _numbers(getattr(power0, "power", power0), "power0")
    if p.numel() == 0 or not bool(torch.isfinite(p).all()) or bool((p < 0).any()):
        raise ScorekitError("power0 must hold one finite, non-negative power per band")
    return p


def _check_process(process) -> None:
    if not isinstance(process, GaussianProcess):
        raise ScorekitError(f"process must be a scorekit GaussianProcess (e.g. scorekit.DDPM()), got "
                            f"{type(process).__name__}")


def forward_spectrum(process: GaussianProcess, t, power0) -> ForwardSpectrum:
    r"""The closed-form spectrum of ``x_t = alpha_t x_0 + sigma_t eps`` and its SNR per band.

    ``power[i, j] = alpha(t_i)^2 P_0[j] + sigma(t_i)^2`` and
    ``snr[i, j] = alpha(t_i)^2 P_0[j] / sigma(t_i)^2`` for the clean spectrum ``power0`` (a
    :class:`RadialSpectrum` or its ``power``; ``(B,)``) at the times ``t`` (a number or a
    sequence; ``(T,)``). The expectation is over the noise: by linearity of the transform and
    independence of ``eps``, whose orthonormal spectrum is flat at 1 (module notes). ``snr`` is
    ``inf`` where ``sigma(t) = 0`` (the data time).
    """
    _check_process(process)
    p0 = _clean_power(power0)
    times = _numbers(t, "t")
    alpha2 = (process.alpha(times) ** 2)[:, None]
    sigma2 = (process.sigma(times) ** 2)[:, None]
    power = alpha2 * p0 + sigma2
    snr = torch.where(sigma2 > 0, alpha2 * p0 / sigma2, torch.full_like(power, math.inf))
    return ForwardSpectrum(times, power, snr)


def band_loss_time(process: GaussianProcess, power0, *, snr: float = 1.0) -> Tensor:
    r"""For each band, the time at which its SNR ``alpha_t^2 P_0(k) / sigma_t^2`` falls to ``snr``.

    That is the time whose log-SNR is ``lambda(t) = log(snr) - log P_0(k)``
    (``process.t_from_log_snr``); with ``snr = 1``, the time at which the noise-to-signal scale
    ``sigma_t / alpha_t`` reaches the band's amplitude ``sqrt(P_0(k))``. The SNR of every band
    falls monotonically in ``t``, so the band stays masked by the noise from then on. ``inf``
    marks a band whose SNR is still above ``snr`` at ``process.t_max`` (not lost within the
    process); a band below it already at ``process.t_min`` gets a time before ``t_min`` (between
    ``t_data`` and ``t_min``), and a band of zero power gets ``t_data``. Returns float64 ``(B,)``.
    """
    _check_process(process)
    p0 = _clean_power(power0)
    threshold = positive_number(snr, "snr", "e.g. 1")
    target = math.log(threshold) - torch.log(p0)
    times = process.t_from_log_snr(target).to(torch.float64)
    never = process.log_snr(_numbers(process.t_max, "t_max")) > target
    return torch.where(never, torch.full_like(times, math.inf), times)


def spectrum_stderr(power0, counts, num_samples: int, *, alpha, sigma) -> Tensor:
    r"""Standard error of a measured spectrum of ``alpha x_0 + sigma eps`` about
    ``alpha^2 P_0 + sigma^2``, the noise drawn once per image.

    For fixed clean images whose bin means are ``power0`` (``P_0``), ``num_samples`` (image,
    channel) pairs and Gaussian ``eps``, the measured bin mean differs from
    ``alpha^2 P_0 + sigma^2`` by ``sigma^2 (mean_bin |F(eps)|^2 - 1) +
    2 alpha sigma mean_bin Re(F(x_0) conj F(eps))``, of mean zero and variance
    ``sigma^2 (2 sigma^2 + 4 alpha^2 P_0) / (m n)`` for a bin of ``m = counts`` frequencies and
    ``n = num_samples`` (module notes). With ``alpha = 0`` it is the error of a white-noise
    spectrum, ``sigma^2 sqrt(2 / (m n))``. ``alpha`` and ``sigma`` are numbers or ``(T,)``
    sequences (e.g. ``process.alpha(t)``); returns float64 ``(T, B)`` (``T = 1`` for numbers).
    """
    p0 = _clean_power(power0)
    m = torch.as_tensor(counts, dtype=torch.float64)
    if m.shape != p0.shape or bool((m < 1).any()):
        raise ScorekitError(f"counts must hold one positive count per band ({p0.numel()}), got "
                            f"shape {tuple(m.shape)}")
    n = positive_number(num_samples, "num_samples")
    alpha2 = (_numbers(alpha, "alpha") ** 2)[:, None]
    sigma2 = (_numbers(sigma, "sigma") ** 2)[:, None]
    return torch.sqrt(sigma2 * (2 * sigma2 + 4 * alpha2 * p0) / (m * n))
