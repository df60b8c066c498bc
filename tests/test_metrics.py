"""Tests of the distribution-error measures (scorekit.metrics.distribution) and of improved
precision and recall (scorekit.metrics.precision_recall).

Exact cases (shifts, replicated sample sets, Gaussian scale errors, nearest-neighbour radii of
points on a line, a brute-force double loop) are checked to rounding; Monte-Carlo cases with
tolerances of a few standard errors and fixed seeds.
"""
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from scorekit.errors import ScorekitError
from scorekit.metrics import (
    knn_radii,
    manifold_coverage,
    mode_weight_error,
    mode_weight_stderr,
    mode_weights,
    precision_recall,
    random_directions,
    sliced_wasserstein,
    swd_noise_floor,
    within_mode_spread,
    within_mode_swd,
)
from scorekit.metrics.distribution import _normal_w2_sq
from scorekit.toy import GaussianMixture, eight_gaussians, image_mixture, multiscale_2d

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


# --- sliced Wasserstein ----------------------------------------------------------------------------

def test_swd_is_zero_for_identical_sets():
    x = torch.randn(300, 5, generator=gen(0), dtype=F64)
    assert sliced_wasserstein(x, x, generator=gen(1)) == 0.0
    assert sliced_wasserstein(x, x[torch.randperm(300, generator=gen(2))], generator=gen(1)) == 0.0
    # the same empirical distribution with twice the samples
    assert sliced_wasserstein(x, torch.cat([x, x]), generator=gen(1)) < 1e-12


def test_swd_of_a_pure_shift_in_1d_is_the_shift():
    x = torch.randn(1000, 1, generator=gen(3), dtype=F64)
    for s in (0.3, -2.0):
        assert sliced_wasserstein(x, x + s, num_projections=7, generator=gen(4)) == pytest.approx(abs(s), rel=1e-12)


def test_swd_of_shifted_independent_gaussians_in_1d():
    """|W2(x, y0 + s) - s| <= W2(x, y0) (triangle inequality): within the noise floor of |s|."""
    n, s = 2000, 1.0
    unit = GaussianMixture([1.0], [[0.0]], stds=1.0)
    x = unit.sample(n, generator=gen(5), dtype=F64)
    y = unit.sample(n, generator=gen(6), dtype=F64) + s
    floor, floor_std = swd_noise_floor(unit, n, repeats=10, num_projections=1, generator=gen(7))
    assert abs(sliced_wasserstein(x, y, num_projections=1, generator=gen(8)) - s) < floor + 4 * floor_std
    assert floor < 0.1 * s                                           # the check is not vacuous


def test_sliced_swd_of_a_shift_vector():
    """For y = x + m, each projection moves by m.u, so SW2^2 = mean_p (m.u_p)^2 ~ |m|^2 / D."""
    D, P = 8, 2000
    x = torch.randn(500, D, generator=gen(9), dtype=F64)
    m = torch.linspace(-1.0, 1.0, D, dtype=F64)
    sw = sliced_wasserstein(x, x + m, num_projections=P, generator=gen(10))
    u = random_directions(P, D, generator=gen(10))                   # the same directions
    assert sw ** 2 == pytest.approx(float(((u @ m) ** 2).mean()), rel=1e-10)
    # (m.u)^2 / |m|^2 ~ Beta(1/2, (D-1)/2): mean 1/D, variance 2 (D-1) / (D^2 (D+2))
    m2 = float(m @ m)
    se = m2 * math.sqrt(2 * (D - 1) / (D ** 2 * (D + 2)) / P)
    assert abs(sw ** 2 - m2 / D) < 4 * se


@pytest.mark.parametrize("n,m", [(6, 4), (37, 23), (10, 1)])
def test_unequal_sizes_equal_replicated_equal_sizes(n, m):
    """The exact empirical W2 for N != M equals that of copies replicated to lcm(N, M) samples."""
    x = torch.randn(n, 3, generator=gen(n), dtype=F64)
    y = torch.randn(m, 3, generator=gen(m + 100), dtype=F64) + 0.5
    L = n * m // math.gcd(n, m)
    got = sliced_wasserstein(x, y, num_projections=16, generator=gen(11))
    want = sliced_wasserstein(x.repeat(L // n, 1), y.repeat(L // m, 1), num_projections=16, generator=gen(11))
    assert got == pytest.approx(want, rel=1e-12)


def test_1d_w2_matches_scipy_quantile_integral():
    x = torch.tensor([[0.3], [-1.2], [2.0], [0.1]], dtype=F64)
    y = torch.tensor([[1.0], [-0.5], [0.4]], dtype=F64)
    qx = lambda u: np.quantile(x.numpy()[:, 0], u, method="inverted_cdf")
    qy = lambda u: np.quantile(y.numpy()[:, 0], u, method="inverted_cdf")
    cuts = sorted(set([i / 4 for i in range(5)] + [j / 3 for j in range(4)]))
    w2sq = sum(integrate.quad(lambda u: (qx(u) - qy(u)) ** 2, a, b)[0] for a, b in zip(cuts[:-1], cuts[1:]))
    assert sliced_wasserstein(x, y, num_projections=3, generator=gen(0)) == pytest.approx(math.sqrt(w2sq), rel=1e-8)


def test_noise_floor_shrinks_with_n():
    # One Gaussian: SW2 between two samples of size n falls like 1/sqrt(n).
    unit = GaussianMixture([1.0], [[0.0, 0.0]], stds=1.0)
    a, _ = swd_noise_floor(unit, 250, repeats=16, num_projections=32, generator=gen(12))
    b, _ = swd_noise_floor(unit, 1000, repeats=16, num_projections=32, generator=gen(13))
    assert 1.6 < a / b < 2.5
    # Well-separated modes: the floor is dominated by moving the multinomial imbalance of the mode
    # weights, O(n^{-1/2}) mass, across the distance between modes, so W2^2 ~ n^{-1/2} and
    # SW2 ~ n^{-1/4}: a factor sqrt(2), not 2, for four times the samples.
    sep = eight_gaussians(std=0.02)
    a, _ = swd_noise_floor(sep, 250, repeats=16, num_projections=32, generator=gen(14))
    b, _ = swd_noise_floor(sep, 1000, repeats=16, num_projections=32, generator=gen(15))
    assert 1.15 < a / b < 1.75


def test_swd_detects_a_wrong_distribution():
    n = 1000
    exact = eight_gaussians()
    wrong = eight_gaussians(radius=2.6)
    floor, floor_std = swd_noise_floor(exact, n, repeats=8, num_projections=64, generator=gen(16))
    x = exact.sample(n, generator=gen(17), dtype=F64)
    y = wrong.sample(n, generator=gen(18), dtype=F64)
    assert sliced_wasserstein(x, y, num_projections=64, generator=gen(19)) > floor + 5 * floor_std


# --- mode weights ------------------------------------------------------------------------------------

@pytest.mark.parametrize("make", [eight_gaussians, multiscale_2d, image_mixture])
def test_mode_weights_of_exact_samples(make):
    mixture = make()
    n = 4000
    x = mixture.sample(n, generator=gen(20))
    w = mode_weights(x, mixture)
    se = mode_weight_stderr(mixture, n)
    assert w.shape == (mixture.num_components,) and float(w.sum()) == pytest.approx(1.0)
    assert torch.all((w - mixture.weights).abs() < 4 * se)
    assert mode_weight_error(x, mixture) == pytest.approx(float((w - mixture.weights).abs().max()))
    torch.testing.assert_close(se, torch.sqrt(mixture.weights * (1 - mixture.weights) / n))


def test_mode_weight_error_detects_a_missing_mode():
    mixture = multiscale_2d()
    n = 4000
    x, comp = mixture.sample(n, generator=gen(21), return_components=True)
    kept = x[comp != 1]                                          # a sampler that misses mode 1
    assert mode_weights(kept, mixture)[1] == 0
    assert mode_weight_error(kept, mixture) > 10 * float(mode_weight_stderr(mixture, kept.shape[0]).max())


# --- within-mode error --------------------------------------------------------------------------------

def test_normal_w2_matches_numerical_integral():
    z = torch.tensor([[-0.7], [0.2], [1.9], [0.4], [-2.5]], dtype=F64)
    zs = np.sort(z.numpy()[:, 0])
    n = len(zs)
    total = sum(integrate.quad(lambda u: (zs[i] - stats.norm.ppf(u)) ** 2, i / n, (i + 1) / n)[0]
                for i in range(n))
    assert float(_normal_w2_sq(z)[0]) == pytest.approx(total, rel=1e-7)


def _scaled(mixture, x, comp, factor):
    """Samples whose deviations from their own component mean are multiplied by ``factor``."""
    flat = x.reshape(x.shape[0], -1).to(F64)
    return mixture.means[comp] + factor * (flat - mixture.means[comp])


@pytest.mark.parametrize("make,n", [(eight_gaussians, 4000), (multiscale_2d, 4000), (image_mixture, 2000)])
def test_within_mode_spread(make, n):
    mixture = make()
    x, comp = mixture.sample(n, generator=gen(22), dtype=F64, return_components=True)
    # s_k^2 averages D sample variances of n_k samples, so s has standard error ~ 1 / sqrt(2 n D)
    se = 1 / math.sqrt(2 * n * mixture.dim)
    assert abs(within_mode_spread(x, mixture) - 1.0) < 4 * se
    assert abs(within_mode_spread(_scaled(mixture, x, comp, 0.5), mixture) - 0.5) < 4 * 0.5 * se
    per = within_mode_spread(x, mixture, per_component=True)
    assert per.shape == (mixture.num_components,) and torch.all(torch.isfinite(per))
    # a pure shift within a component is not a spread error (when it moves no sample to
    # another component, as in these well-separated mixtures)
    if make is not multiscale_2d:
        shifted = _scaled(mixture, x, comp, 1.0) + 0.1 * mixture.std_per_dim()[comp]
        assert torch.equal(mixture.classify(shifted), mixture.classify(x))
        assert abs(within_mode_spread(shifted, mixture) - within_mode_spread(x, mixture)) < 1e-12


@pytest.mark.parametrize("make,n", [(eight_gaussians, 4000), (image_mixture, 2000)])
@pytest.mark.parametrize("projections", [None, 32])
def test_within_mode_swd(make, n, projections):
    mixture = make()
    x, comp = mixture.sample(n, generator=gen(23), dtype=F64, return_components=True)
    exact = within_mode_swd(x, mixture, num_projections=projections, generator=gen(24))
    # exact samples: the empirical-vs-normal W2 of n_k samples, well below any visible error
    assert exact < 0.1
    # a scale error s in every whitened direction gives W = |s - 1|; by the triangle inequality
    # the empirical value differs from that by at most s times the exact samples' value
    for s in (0.5, 1.5):
        got = within_mode_swd(_scaled(mixture, x, comp, s), mixture, num_projections=projections,
                              generator=gen(24))
        assert abs(got - abs(s - 1)) <= s * exact + 1e-9
    per = within_mode_swd(x, mixture, per_component=True)
    assert per.shape == (mixture.num_components,) and torch.all(per > 0)


def test_within_mode_swd_sees_fine_scale_error_swd_misses():
    """Halving the spread along the image components' narrowest dimensions (std < 0.02) is
    invisible to SWD at this sample size, but not to the within-mode measure."""
    mixture = image_mixture()
    n = 1000
    x = mixture.sample(n, generator=gen(25), dtype=F64)
    x2, comp = mixture.sample(n, generator=gen(26), dtype=F64, return_components=True)
    narrow = (mixture.std_per_dim() < 0.02).to(F64)[comp]
    y = mixture.means[comp] + (1 - 0.5 * narrow) * (x2.reshape(n, -1) - mixture.means[comp])
    floor, floor_std = swd_noise_floor(mixture, n, repeats=4, num_projections=64, generator=gen(27))
    assert sliced_wasserstein(x, y, num_projections=64, generator=gen(28)) < floor + 2 * floor_std
    ref = torch.tensor([within_mode_swd(mixture.sample(n, generator=gen(30 + i), dtype=F64), mixture)
                        for i in range(4)])
    assert within_mode_swd(y, mixture) > ref.mean() + 10 * ref.std()


# --- improved precision and recall -------------------------------------------------------------------

def test_knn_radii_of_points_on_a_line():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]])
    assert knn_radii(x, 1).tolist() == [1.0, 1.0, 2.0, 3.0]
    assert knn_radii(x, 2).tolist() == [3.0, 2.0, 3.0, 5.0]
    assert knn_radii(x, 3, block=3).tolist() == [6.0, 5.0, 3.0, 6.0]
    # a duplicate is a neighbour at distance 0
    assert knn_radii(torch.tensor([[0.0], [0.0], [2.0]]), 1).tolist() == [0.0, 0.0, 2.0]


def test_precision_recall_of_identical_sets_is_one():
    x = torch.randn(300, 8, generator=gen(0))
    assert precision_recall(x, x) == (1.0, 1.0)
    assert precision_recall(x, x[torch.randperm(300, generator=gen(1))], k=5) == (1.0, 1.0)


def test_precision_recall_of_far_apart_sets_is_zero():
    real = torch.randn(200, 4, generator=gen(0))
    fake = torch.randn(150, 4, generator=gen(1)) + 100.0
    assert precision_recall(real, fake) == (0.0, 0.0)


def test_a_subset_lies_on_the_manifold_of_the_whole():
    real = torch.randn(400, 2, generator=gen(0), dtype=F64)
    half = real[real[:, 0] < 0]                       # only half of the data: faithful, not diverse
    precision, recall = precision_recall(real, half)
    assert precision == 1.0
    assert recall < 0.8
    assert manifold_coverage(half, real) == 1.0


def test_mode_dropping_lowers_recall_not_precision():
    g = gen(3)
    centres = torch.tensor([[-10.0, 0.0], [10.0, 0.0]], dtype=F64)
    real = torch.cat([centres[0] + torch.randn(500, 2, generator=g, dtype=F64),
                      centres[1] + torch.randn(500, 2, generator=g, dtype=F64)])
    fake = centres[0] + torch.randn(1000, 2, generator=g, dtype=F64)   # one mode, twice as dense
    precision, recall = precision_recall(real, fake)
    assert precision > 0.95
    assert 0.4 < recall < 0.55                         # the first mode, less its sparse tail


def test_precision_recall_match_a_brute_force_loop():
    g = gen(4)
    real = torch.randn(37, 3, generator=g, dtype=F64)
    fake = 0.7 * torch.randn(29, 3, generator=g, dtype=F64) + 0.3

    def coverage(points, ref, k):
        radii = [sorted(float((r - q).norm()) for q in ref)[k] for r in ref]
        return sum(any(float((p - r).norm()) <= rad for r, rad in zip(ref, radii)) for p in points) / len(points)

    for k in (1, 3, 5):
        want = (coverage(fake, real, k), coverage(real, fake, k))
        assert precision_recall(real, fake, k) == pytest.approx(want, abs=0)
        assert precision_recall(real.numpy(), fake.tolist(), k, block=4) == pytest.approx(want, abs=0)


def test_lists_of_features_are_read_in_float64():
    """A point 1.0000000015 from a ball of radius 1.000000001 lies outside it; read through float32
    (as torch.as_tensor reads Python floats) both would round to 1 and the point would be inside.
    KID of lists equals KID of the same float64 tensors exactly."""
    from scorekit.metrics import manifold_membership, mmd2_unbiased

    reference = [[0.0], [1.000000001]]
    assert manifold_membership([[-1.0000000015]], reference, 1).tolist() == [False]
    assert manifold_membership(torch.tensor([[-1.0000000015]], dtype=torch.float32), reference, 1).tolist() == [True]
    g = gen(5)
    x, y = torch.randn(6, 3, generator=g, dtype=F64), torch.randn(5, 3, generator=g, dtype=F64)
    assert mmd2_unbiased(x.tolist(), y.tolist()) == mmd2_unbiased(x, y)


def test_points_on_a_ball_boundary_lie_on_the_manifold():
    """The balls are closed: a point at exactly NN_k(phi_i) from phi_i is on the manifold
    (``||phi - phi_i|| <= NN_k``, Kynkaanniemi et al. eq. 1). Integer lattice points, so every squared
    distance is an integer and many points sit exactly on a sphere: the oracle decides membership
    in exact integer arithmetic, d^2 <= r^2 (float64 sqrt of equal integers is equal, so the
    comparison in the library is exact too)."""
    g = gen(5)
    lattice = torch.cartesian_prod(torch.arange(-2, 9), torch.arange(-2, 9))
    real = lattice[torch.randperm(len(lattice), generator=g)[:25]]
    fake = lattice[torch.randperm(len(lattice), generator=g)[:40]]

    def coverage(points, ref, k):
        d2 = ((points[:, None, :] - ref[None, :, :]) ** 2).sum(-1)          # exact integers
        r2 = ((ref[:, None, :] - ref[None, :, :]) ** 2).sum(-1).sort(1).values[:, k]
        inside = (d2 <= r2[None, :]).any(1)
        on_boundary_only = inside & ~(d2 < r2[None, :]).any(1)
        return inside.double().mean().item(), int(on_boundary_only.sum())

    boundary_points = 0
    for k in (1, 3):
        (p, p_edge), (r, r_edge) = coverage(fake, real, k), coverage(real, fake, k)
        boundary_points += p_edge + r_edge
        assert precision_recall(real.double(), fake.double(), k) == (p, r)
        assert manifold_coverage(fake.double(), real.double(), k) == p
    assert boundary_points > 0          # points only a closed ball admits are present


def test_precision_recall_bad_inputs():
    x = torch.zeros(5, 3)
    with pytest.raises(ScorekitError, match="same dimension"):
        precision_recall(x, torch.zeros(5, 2))
    with pytest.raises(ScorekitError, match="fake_features holds 3 points, too few for k = 3"):
        precision_recall(x, torch.zeros(3, 3))
    with pytest.raises(ScorekitError, match="k must be a whole number"):
        precision_recall(x, x, k=0)
    with pytest.raises(ScorekitError, match="NaN"):
        precision_recall(x, torch.full((5, 3), float("nan")))
    with pytest.raises(ScorekitError, match=r"shape \(N, D\)"):
        knn_radii(torch.zeros(5))


# --- user errors ---------------------------------------------------------------------------------------

def test_bad_inputs_raise_scorekit_error():
    x = torch.zeros(4, 2)
    with pytest.raises(ScorekitError, match="dimension"):
        sliced_wasserstein(x, torch.zeros(4, 3))
    with pytest.raises(ScorekitError, match="num_projections"):
        sliced_wasserstein(x, x, num_projections=0)
    with pytest.raises(ScorekitError, match="y"):
        sliced_wasserstein(x, torch.zeros(0, 2))
    with pytest.raises(ScorekitError, match="repeats"):
        swd_noise_floor(eight_gaussians(), 10, repeats=1)
    with pytest.raises(ScorekitError, match="n"):
        mode_weight_stderr(eight_gaussians(), 0)
    with pytest.raises(ScorekitError, match="x"):
        mode_weights(torch.zeros(4, 3), eight_gaussians())
