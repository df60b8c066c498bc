"""The classical baselines of the image tasks (scorekit.tasks.baselines) against brute-force or
exact answers: nearest-pixel fill against a brute-force search, the average colour keeps the
observed luma exactly, bicubic upsampling reproduces constant images and matches PyTorch's
bicubic interpolation from its definition."""
import itertools

import pytest
import torch

from scorekit import ScorekitError
from scorekit.tasks.baselines import average_colour, bicubic_upsample, mean_fill, nearest_fill
from scorekit.tasks.operators import Downsample, Greyscale


def _masked(seed=0, n=3, c=2, h=7, w=9):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, c, h, w, generator=g, dtype=torch.float64) * 2 - 1
    mask = (torch.rand(n, 1, h, w, generator=g) < 0.3).double()
    mask[:, :, 0, 0] = 1                    # every sample has a known pixel
    return x, mask


def test_nearest_fill_takes_a_nearest_known_pixel():
    x, mask = _masked()
    y = x * mask
    out = nearest_fill(y, mask)
    n, c, h, w = x.shape
    for i in range(n):
        known = [(r, q) for r, q in itertools.product(range(h), range(w)) if mask[i, 0, r, q] == 1]
        for r, q in itertools.product(range(h), range(w)):
            if mask[i, 0, r, q] == 1:
                assert torch.equal(out[i, :, r, q], x[i, :, r, q])
                continue
            d = min((r - a) ** 2 + (q - b) ** 2 for a, b in known)
            candidates = [x[i, :, a, b] for a, b in known if (r - a) ** 2 + (q - b) ** 2 == d]
            assert any(torch.equal(out[i, :, r, q], v) for v in candidates)


def test_mean_fill_and_errors():
    x, mask = _masked(1)
    m = torch.full(x.shape[1:], 0.25, dtype=torch.float64)
    out = mean_fill(x * mask, mask, m)
    assert torch.equal(out[mask.expand_as(x) == 1], x[mask.expand_as(x) == 1])
    assert bool((out[mask.expand_as(x) == 0] == 0.25).all())
    with pytest.raises(ScorekitError, match="does not fit"):
        mean_fill(x, mask[..., :3], m)
    with pytest.raises(ScorekitError, match="no known pixel"):
        nearest_fill(x, torch.zeros_like(mask))


def test_average_colour_keeps_the_observed_luma():
    g = torch.Generator().manual_seed(2)
    truth = torch.rand(4, 3, 5, 6, generator=g, dtype=torch.float64) * 2 - 1
    mean_image = torch.rand(3, 5, 6, generator=g, dtype=torch.float64) * 2 - 1
    A = Greyscale()
    out = average_colour(A(truth), mean_image)
    torch.testing.assert_close(A(out), A(truth), rtol=0, atol=1e-12)
    # an observed luma equal to the mean image's gives the mean image back
    torch.testing.assert_close(average_colour(A(mean_image[None]), mean_image)[0], mean_image)
    with pytest.raises(ScorekitError, match="one grey channel"):
        average_colour(truth, mean_image)


def test_bicubic_upsampling():
    c = torch.full((2, 3, 4, 4), 0.3, dtype=torch.float64)
    torch.testing.assert_close(bicubic_upsample(c, 4), torch.full((2, 3, 16, 16), 0.3, dtype=torch.float64))
    g = torch.Generator().manual_seed(3)
    y = torch.rand(2, 1, 6, 6, generator=g, dtype=torch.float64) * 2 - 1
    up = bicubic_upsample(y, 2, clip=False)
    # Keys' cubic kernel with a = -0.75 at the half-pixel offsets 1/4 and 3/4 of a factor-2 grid
    def k(s, a=-0.75):
        s = abs(s)
        return (a + 2) * s ** 3 - (a + 3) * s ** 2 + 1 if s <= 1 else (a * s ** 3 - 5 * a * s ** 2 + 8 * a * s - 4 * a
                                                                      if s < 2 else 0.0)
    # output pixel 5 (row and column) sits at input coordinate (5 + 0.5) / 2 - 0.5 = 2.25
    taps = [k(2.25 - j) for j in (1, 2, 3, 4)]
    want = sum(taps[a] * taps[b] * y[0, 0, 1 + a, 1 + b] for a in range(4) for b in range(4))
    assert float(up[0, 0, 5, 5]) == pytest.approx(float(want), abs=1e-12)
    assert bicubic_upsample(y * 5, 2).abs().max() <= 1
    assert Downsample(2)(bicubic_upsample(y, 2)).shape == y.shape
