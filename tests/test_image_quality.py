"""PSNR and SSIM (scorekit.metrics.image_quality) against scikit-image's reference implementations
on identical inputs (random images, real digits, colour images, a restored-looking blur), in float64:
both compute the same sums of at most 121 window terms, so agreement to 1e-10 leaves orders of
magnitude for rounding."""
import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from scorekit import ScorekitError
from scorekit.data.dataset import load_dataset
from scorekit.metrics.image_quality import mean_and_stderr, psnr, ssim


def reference_ssim(x, y):
    return np.array([structural_similarity(a.numpy(), b.numpy(), data_range=2.0, channel_axis=0,
                                           gaussian_weights=True, sigma=1.5, use_sample_covariance=False)
                     for a, b in zip(x, y)])


def pairs():
    g = torch.Generator().manual_seed(0)
    digits = load_dataset("digits", size=16, interpolation="bilinear").x[:6].double()
    noisy = (digits + 0.2 * torch.randn(digits.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    blurred = torch.nn.functional.avg_pool2d(digits, 2).repeat_interleave(2, -1).repeat_interleave(2, -2)
    colour = torch.rand(4, 3, 20, 13, generator=g, dtype=torch.float64) * 2 - 1
    colour2 = (colour + 0.3 * torch.randn(colour.shape, generator=g, dtype=torch.float64)).clamp(-1, 1)
    return {"noisy digits": (digits, noisy), "blurred digits": (digits, blurred),
            "colour": (colour, colour2), "identical": (colour, colour.clone())}


@pytest.mark.filterwarnings("ignore:divide by zero")      # scikit-image's PSNR of identical images
@pytest.mark.parametrize("name", sorted(pairs()))
def test_ssim_and_psnr_match_scikit_image(name):
    x, y = pairs()[name]
    np.testing.assert_allclose(ssim(x, y).numpy(), reference_ssim(x, y), rtol=0, atol=1e-10)
    want = np.array([peak_signal_noise_ratio(a.numpy(), b.numpy(), data_range=2.0) for a, b in zip(x, y)])
    got = psnr(x, y).numpy()
    assert np.array_equal(np.isinf(got), np.isinf(want))
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12)


def test_ssim_is_one_for_identical_images_and_falls_with_noise():
    x = pairs()["colour"][0]
    assert torch.allclose(ssim(x, x), torch.ones(4, dtype=torch.float64))
    g = torch.Generator().manual_seed(1)
    scores = [float(ssim(x, x + s * torch.randn(x.shape, generator=g, dtype=torch.float64)).mean())
              for s in (0.05, 0.2, 0.8)]
    assert scores[0] > scores[1] > scores[2]


def test_float32_inputs_and_bad_input():
    x, y = pairs()["noisy digits"]
    np.testing.assert_allclose(ssim(x.float(), y.float()).numpy(), reference_ssim(x, y), atol=1e-5)
    with pytest.raises(ScorekitError, match="one shape"):
        ssim(x, y[:, :, :8])
    with pytest.raises(ScorekitError, match="at least that size"):
        ssim(x[..., :8, :8], y[..., :8, :8])
    with pytest.raises(ScorekitError, match=r"\(N, C, H, W\)"):
        psnr(x[0], y[0])


def test_mean_and_stderr():
    m, s = mean_and_stderr(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m == 2.5 and s == pytest.approx(np.std([1, 2, 3, 4], ddof=1) / 2)
