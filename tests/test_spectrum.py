"""Radially averaged power spectra (scorekit.spectrum): white noise is flat at its variance,
Parseval holds, a cosine lands in its own bin, and the spectrum of x_t under a forward process is
alpha_t^2 P_0 + sigma_t^2. Monte-Carlo tolerances come from the number of frequencies per bin and
of noisy images: the standard error sigma^2 sqrt(2 / (m n)) of a white-noise bin mean (and its
extension with the signal-noise cross term, checked against repeated draws), with every bin
within 5 standard errors and the sum of squared z-scores inside its chi-square distribution's
central 1 - 2e-6 (the z-scores of different bins are independent: disjoint frequencies)."""
import math

import pytest
import torch
from scipy.stats import chi2

from scorekit import DDPM, EDM, VPSDE, ScorekitError
from scorekit.data.dataset import load_dataset
from scorekit.spectrum import (band_loss_time, forward_spectrum, radial_bins, radial_power_spectrum,
                               spectrum_stderr)

#: largest |z| of one bin, and the chi-square tail probability on each side
Z_MAX = 5.0
TAIL = 1e-6


def gen(seed):
    return torch.Generator().manual_seed(seed)


def assert_matches(measured, expected, stderr):
    """Every |z| < Z_MAX and sum z^2 inside the central 1 - 2 TAIL of chi-square(number of z)."""
    z = ((measured - expected) / stderr).flatten()
    assert z.abs().max() < Z_MAX, z
    stat, dof = float((z ** 2).sum()), z.numel()
    assert chi2.ppf(TAIL, dof) < stat < chi2.ppf(1 - TAIL, dof), (stat, dof)


@pytest.fixture(scope="module")
def digits32():
    """1,797 real images of 32x32 (scikit-learn's digits, bilinear upsampling)."""
    return load_dataset("digits", size=32, interpolation="bilinear").x


# --- the bins --------------------------------------------------------------------------------

@pytest.mark.parametrize("h,w", [(32, 32), (8, 8), (7, 12), (1, 5)])
def test_bins_cover_every_frequency_once_and_keep_k0_alone(h, w):
    bins = radial_bins(h, w)
    assert int(bins.counts.sum()) == h * w and int(bins.index.min()) == 0
    assert torch.equal(torch.bincount(bins.index.flatten()), bins.counts)
    assert bins.centres[0] == 0 and int(bins.counts[0]) == 1 and int(bins.index[0, 0]) == 0
    assert torch.all(bins.centres[1:] > bins.centres[:-1])
    ky, kx = torch.fft.fftfreq(h, dtype=torch.float64), torch.fft.fftfreq(w, dtype=torch.float64)
    radius = torch.sqrt(ky[:, None] ** 2 + kx[None, :] ** 2)
    # every frequency is within half a bin width of its bin's centre
    dk = 1 / min(size for size in (h, w) if size > 1)
    assert torch.all((radius - bins.centres[bins.index]).abs() <= dk / 2 + 1e-12)


def test_square_grid_bins_are_the_rounded_radius_and_none_is_empty():
    bins = radial_bins(32, 32)
    assert bins.centres.numel() == 24                       # round(32 sqrt(1/2)) = 23, plus k = 0
    assert torch.allclose(bins.centres, torch.arange(24, dtype=torch.float64) / 32)
    fine = radial_bins(32, 32, num_bins=100)                 # too fine: empty bins are dropped
    assert 24 < fine.centres.numel() < 100 and bool((fine.counts > 0).all())
    assert int(fine.counts.sum()) == 32 * 32


# --- white noise, Parseval, a cosine ------------------------------------------------------------

@pytest.mark.parametrize("std,shape", [(0.7, (400, 3, 32, 32)), (2.0, (3000, 1, 8, 8)),
                                       (1.0, (500, 2, 9, 14))])
def test_white_noise_is_flat_at_its_variance(std, shape):
    x = std * torch.randn(shape, generator=gen(1), dtype=torch.float64)
    spectrum = radial_power_spectrum(x)
    counts = radial_bins(*shape[2:]).counts.double()
    n = shape[0] * shape[1]
    # the bin mean of m frequencies (m/2 conjugate pairs of exponentials, or real chi^2_1 terms)
    # over n independent (image, channel) pairs has variance 2 s^4 / (m n)
    stderr = std ** 2 * torch.sqrt(2 / (counts * n))
    assert_matches(spectrum.power, torch.full_like(spectrum.power, std ** 2), stderr)
    assert torch.allclose(spectrum_stderr(torch.zeros(counts.numel()), counts, n, alpha=0.0, sigma=std)[0],
                          stderr, rtol=1e-12)


@pytest.mark.parametrize("shape,num_bins", [((5, 3, 32, 32), None), ((4, 2, 7, 12), None),
                                            ((3, 1, 16, 16), 5), ((2, 1, 1, 9), None)])
def test_parseval_the_mean_over_frequencies_is_the_mean_square(shape, num_bins):
    x = torch.rand(shape, generator=gen(2), dtype=torch.float64) ** 3 + 0.3    # non-zero mean, not white
    spectrum = radial_power_spectrum(x, num_bins=num_bins)
    counts = radial_bins(*shape[2:], num_bins=num_bins).counts
    mean_over_frequencies = float((spectrum.power * counts).sum() / counts.sum())
    assert mean_over_frequencies == pytest.approx(float((x ** 2).mean()), rel=1e-12)
    # the k = 0 bin is the squared mean brightness, sqrt(H W) mean(x) per image and channel
    h, w = shape[2:]
    if num_bins is None:
        assert float(spectrum.power[0]) == pytest.approx(float((h * w * x.mean(dim=(2, 3)) ** 2).mean()),
                                                         rel=1e-12)


@pytest.mark.parametrize("h,w,a,b", [(32, 32, 3, 0), (32, 32, 5, 5), (32, 32, 0, 11), (32, 32, 16, 0),
                                     (32, 32, 16, 16), (24, 40, 4, 7), (9, 14, 2, 3)])
def test_a_cosine_puts_its_power_in_the_bin_of_its_frequency(h, w, a, b):
    m, n = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64),
                          indexing="ij")
    x = torch.cos(2 * math.pi * (a * m / h + b * n / w))[None, None]
    spectrum = radial_power_spectrum(x)
    bins = radial_bins(h, w)
    radius = math.hypot(a / h, b / w)
    j = int(torch.argmin((bins.centres - radius).abs()))
    assert j == round(radius * min(h, w))
    total = (spectrum.power * bins.counts).sum()
    assert float(spectrum.power[j] * bins.counts[j]) == pytest.approx(float(total), rel=1e-12)
    assert float(total) == pytest.approx(float((x ** 2).sum()), rel=1e-12)
    others = torch.cat([spectrum.power[:j], spectrum.power[j + 1:]])
    assert float(others.abs().max()) < 1e-20 * float(total)


def test_float32_images_give_a_float64_spectrum_close_to_the_float64_one(digits32):
    x = digits32[:64]
    s32, s64 = radial_power_spectrum(x), radial_power_spectrum(x.double())
    assert s32.power.dtype == torch.float64 and s32.frequency.dtype == torch.float64
    assert torch.allclose(s32.power, s64.power, rtol=1e-12, atol=0)


def test_chunks_do_not_change_the_result(monkeypatch, digits32):
    import scorekit.spectrum as spectrum
    whole = radial_power_spectrum(digits32[:100].double())
    monkeypatch.setattr(spectrum, "CHUNK", 7)
    assert torch.allclose(radial_power_spectrum(digits32[:100].double()).power, whole.power, rtol=1e-13)


# --- the forward process ------------------------------------------------------------------------

@pytest.mark.parametrize("process", [DDPM(), DDPM(schedule="cosine")], ids=["linear", "cosine"])
def test_the_spectrum_of_x_t_is_alpha2_p0_plus_sigma2(process, digits32):
    x0 = digits32.double()
    p0 = radial_power_spectrum(x0)
    counts = radial_bins(32, 32).counts
    times = [0, 50, 200, 500, 999]
    predicted = forward_spectrum(process, times, p0)
    measured = torch.stack([radial_power_spectrum(process.sample_marginal(x0, t, generator=gen(10 + i))).power
                            for i, t in enumerate(times)])
    stderr = spectrum_stderr(p0, counts, x0.shape[0] * x0.shape[1], alpha=process.alpha(predicted.t),
                             sigma=process.sigma(predicted.t))
    assert_matches(measured, predicted.power, stderr)
    # the formula, written out
    alpha, sigma = float(process.alpha(200)), float(process.sigma(200))
    assert torch.allclose(predicted.power[2], alpha ** 2 * p0.power + sigma ** 2, rtol=1e-14)
    assert torch.allclose(predicted.snr[2], alpha ** 2 * p0.power / sigma ** 2, rtol=1e-14)


def test_the_standard_error_matches_repeated_draws(digits32):
    """The cross term 2 alpha sigma Re(F(x_0) conj F(eps)) included: the variance of the measured
    bin means over R independent draws of the noise, against the formula. A variance estimated
    from R draws has relative standard error sqrt(2 / (R - 1)) for Gaussian bin means (near
    enough here: n = 300 (image, channel) pairs per mean); allowed: 5 of them."""
    x0 = torch.nn.functional.avg_pool2d(digits32[:300].double(), 4)         # 8x8, keeps it fast
    p0 = radial_power_spectrum(x0)
    counts = radial_bins(8, 8).counts
    alpha, sigma = 0.6, 0.5
    repeats = 1000
    g = gen(3)
    draws = torch.stack([radial_power_spectrum(alpha * x0 + sigma * torch.randn(x0.shape, generator=g,
                                                                                dtype=torch.float64)).power
                         for _ in range(repeats)])
    predicted = spectrum_stderr(p0, counts, x0.shape[0], alpha=alpha, sigma=sigma)[0] ** 2
    allowed = 5 * math.sqrt(2 / (repeats - 1))
    ratio = draws.var(dim=0) / predicted
    assert torch.all((ratio - 1).abs() < allowed), ratio
    # the noise term alone (white noise's 2 sigma^4 / (m n)) would fail: the cross term matters
    alone = draws.var(dim=0) / (2 * sigma ** 4 / (counts * x0.shape[0]))
    assert float((alone - 1).abs().max()) > allowed


def test_snr_is_inf_at_the_data_time():
    p0 = torch.tensor([1.0, 0.01], dtype=torch.float64)
    spectrum = forward_spectrum(DDPM(), [-1, 0], p0)
    assert torch.isinf(spectrum.snr[0]).all() and torch.equal(spectrum.power[0], p0)
    assert torch.isfinite(spectrum.snr[1]).all()


@pytest.mark.parametrize("process", [DDPM(), DDPM(schedule="cosine"), VPSDE(), EDM()],
                         ids=["ddpm-linear", "ddpm-cosine", "vp", "edm"])
def test_a_band_is_lost_when_its_snr_falls_to_one(process):
    # a power law |k|^-2 like natural images', from strong to weak
    k = torch.arange(1, 23, dtype=torch.float64) / 32
    p0 = 0.01 * k ** -2.0
    times = band_loss_time(process, p0)
    assert torch.isfinite(times).all()
    assert torch.all(times[1:] < times[:-1])                # the high frequencies are lost first
    inside = times >= process.t_min
    snr = forward_spectrum(process, times[inside], p0[inside]).snr.diagonal()
    assert torch.allclose(snr, torch.ones_like(snr), rtol=1e-9)
    # another threshold: SNR 10 is reached earlier
    assert torch.all(band_loss_time(process, p0, snr=10.0) < times)


def test_the_noise_level_of_loss_is_the_band_amplitude():
    """sigma / alpha at the crossing is sqrt(P_0) whatever the process; on EDM (alpha = 1,
    t = sigma) the time itself."""
    p0 = torch.tensor([100.0, 1.0, 0.04, 1e-4], dtype=torch.float64)
    assert torch.allclose(band_loss_time(EDM(sigma_min=1e-3), p0), p0.sqrt(), rtol=1e-12)
    process = VPSDE()
    t = band_loss_time(process, p0)
    assert torch.allclose(process.sigma(t) / process.alpha(t), p0.sqrt(), rtol=1e-9)


def test_bands_never_lost_and_lost_at_once():
    process = DDPM()                                        # SNR at t = 999 is 4.0e-5
    times = band_loss_time(process, torch.tensor([1e6, 1e-6, 0.0]))
    assert math.isinf(times[0]) and times[0] > 0
    assert process.t_data < float(times[1]) < process.t_min      # below SNR 1 before the first step
    assert float(times[2]) == process.t_data


# --- bad input ----------------------------------------------------------------------------------

@pytest.mark.parametrize("images,fragment", [
    (torch.zeros(3, 32, 32), "must be shaped (N, C, H, W)"),
    (torch.zeros(2, 1, 3, 32, 32), "must be shaped (N, C, H, W)"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "real floating-point tensor, got torch.uint8"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.long), "real floating-point tensor"),
    (torch.zeros(2, 3, 8, 8, dtype=torch.complex64), "real floating-point tensor"),
    (torch.zeros(0, 3, 8, 8), "at least one pixel"),
    (torch.full((2, 1, 4, 4), float("nan")), "NaN or infinite"),
    ([[[[0.0]]]], "must be a torch tensor"),
])
def test_bad_images_are_refused(images, fragment):
    with pytest.raises(ScorekitError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        radial_power_spectrum(images)


@pytest.mark.parametrize("call,fragment", [
    (lambda: radial_power_spectrum(torch.zeros(1, 1, 4, 4), num_bins=0), "num_bins must be a positive"),
    (lambda: radial_power_spectrum(torch.zeros(1, 1, 4, 4), num_bins=2.5), "num_bins must be a positive"),
    (lambda: radial_bins(0, 4), "height must be a positive"),
    (lambda: forward_spectrum(DDPM(), 10, torch.ones(2, 3)), "power0 must be a number or a 1-D"),
    (lambda: forward_spectrum(DDPM(), 10, []), "one finite, non-negative power per band"),
    (lambda: forward_spectrum(DDPM(), 10, torch.tensor([1.0, -1.0])), "non-negative"),
    (lambda: forward_spectrum(DDPM(), 10, "loud"), "power0 must be"),
    (lambda: forward_spectrum(DDPM(), [[1, 2]], torch.ones(2)), "t must be a number or a 1-D"),
    (lambda: forward_spectrum("ddpm", 10, torch.ones(2)), "process must be a scorekit GaussianProcess"),
    (lambda: band_loss_time(DDPM(), torch.ones(2), snr=0), "snr must be a positive"),
    (lambda: spectrum_stderr(torch.ones(2), [1, 2, 3], 10, alpha=1, sigma=1), "counts must hold one"),
    (lambda: spectrum_stderr(torch.ones(2), [1, 2], 0, alpha=1, sigma=1), "num_samples must be a positive"),
])
def test_bad_arguments_are_refused(call, fragment):
    with pytest.raises(ScorekitError, match=fragment):
        call()
