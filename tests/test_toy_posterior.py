"""GaussianMixture.condition_on: the exact posterior p(x | y) of a linear Gaussian measurement
y = A x + sigma_y n, checked against routes that share none of its algebra: the Schur complement
of the joint covariance of (x, y) and the information (precision) form for one Gaussian,
conditioning on coordinates for a mask, Bayes' rule on a grid for 2-D mixtures, and self-normalised
importance sampling for an image-shaped mixture. All in float64; the grid tolerances come from the
grid's spacing, the Monte-Carlo ones from the estimates' standard errors."""
import math

import numpy as np
import pytest
import torch

from scorekit.errors import ScorekitError
from scorekit.tasks.operators import Downsample, Identity, Mask, RandomProjection
from scorekit.toy import GaussianMixture, LabelledMixture, image_mixture

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def random_gaussian(D, seed, event_shape=None):
    g = gen(seed)
    mu = torch.randn(1, D, generator=g, dtype=F64)
    L = torch.randn(D, D, generator=g, dtype=F64) / math.sqrt(D)
    Sigma = L @ L.T + 0.2 * torch.eye(D, dtype=F64)
    return GaussianMixture([1.0], mu, Sigma[None], event_shape=event_shape), mu[0].numpy(), Sigma.numpy()


def schur_conditioning(mu, Sigma, M, y, sigma_y):
    """x | y from the joint Gaussian of (x, y): [[S, S M^T], [M S, M S M^T + s^2 I]] (numpy)."""
    D, m = len(mu), M.shape[0]
    joint = np.zeros((D + m, D + m))
    joint[:D, :D] = Sigma
    joint[:D, D:] = Sigma @ M.T
    joint[D:, :D] = M @ Sigma
    joint[D:, D:] = M @ Sigma @ M.T + sigma_y ** 2 * np.eye(m)
    Sxy, Syy = joint[:D, D:], joint[D:, D:]
    mean = mu + Sxy @ np.linalg.solve(Syy, y - M @ mu)
    cov = Sigma - Sxy @ np.linalg.solve(Syy, Sxy.T)
    return mean, cov


@pytest.mark.parametrize("sigma_y", [0.0, 0.3])
@pytest.mark.parametrize("m", [1, 3])
def test_gaussian_matches_the_schur_complement_of_the_joint(sigma_y, m):
    D = 5
    prior, mu, Sigma = random_gaussian(D, seed=m)
    A = RandomProjection((D,), m, seed=7)
    M = A.matrix.numpy()
    y = torch.randn(m, generator=gen(11), dtype=F64)
    post = prior.condition_on(A, y, sigma_y)
    mean, cov = schur_conditioning(mu, Sigma, M, y.numpy(), sigma_y)
    np.testing.assert_allclose(post.means[0].numpy(), mean, atol=1e-10)
    np.testing.assert_allclose(post.covs()[0].numpy(), cov, atol=1e-10)
    assert post.weights.tolist() == [1.0]
    if sigma_y > 0:
        # and the information form: P = Sigma^-1 + M^T M / s^2, P m = Sigma^-1 mu + M^T y / s^2
        P = np.linalg.inv(Sigma) + M.T @ M / sigma_y ** 2
        info_mean = np.linalg.solve(P, np.linalg.solve(Sigma, mu) + M.T @ y.numpy() / sigma_y ** 2)
        np.testing.assert_allclose(post.means[0].numpy(), info_mean, atol=1e-10)
        np.testing.assert_allclose(post.covs()[0].numpy(), np.linalg.inv(P), atol=1e-10)
    else:
        # noiseless: the posterior lives on {x: M x = y}; its covariance has m zero eigenvalues
        np.testing.assert_allclose(M @ post.means[0].numpy(), y.numpy(), atol=1e-10)
        np.testing.assert_allclose(M @ post.covs()[0].numpy(), 0.0, atol=1e-10)
        assert int((post.eigenvalues[0] < 1e-12).sum()) == m


def test_noiseless_mask_is_conditioning_on_the_known_pixels():
    """A mask keeps the image's shape, so A has zero rows and A Sigma A^T is singular: the
    pseudo-inverse must give x_h | x_o by partitioning Sigma (Schur complement on coordinates)."""
    prior, mu, Sigma = random_gaussian(16, seed=3, event_shape=(1, 4, 4))
    mask = (torch.rand(1, 1, 4, 4, generator=gen(2)) < 0.5).double()
    o = mask.reshape(-1).bool().numpy()
    h = ~o
    x_true = prior.sample(1, generator=gen(4), dtype=F64)
    y = Mask(mask)(x_true)
    post = prior.condition_on(Mask(mask), y)
    x_o = x_true.reshape(-1).numpy()[o]
    mean_h = mu[h] + Sigma[np.ix_(h, o)] @ np.linalg.solve(Sigma[np.ix_(o, o)], x_o - mu[o])
    cov_h = Sigma[np.ix_(h, h)] - Sigma[np.ix_(h, o)] @ np.linalg.solve(Sigma[np.ix_(o, o)], Sigma[np.ix_(o, h)])
    got_mean, got_cov = post.means[0].numpy(), post.covs()[0].numpy()
    np.testing.assert_allclose(got_mean[o], x_o, atol=1e-10)
    np.testing.assert_allclose(got_mean[h], mean_h, atol=1e-10)
    np.testing.assert_allclose(got_cov[np.ix_(h, h)], cov_h, atol=1e-10)
    np.testing.assert_allclose(got_cov[o], 0.0, atol=1e-10)
    # samples meet the measurement exactly and keep the image shape
    xs = post.sample(50, generator=gen(5), dtype=F64)
    assert xs.shape == (50, 1, 4, 4)
    torch.testing.assert_close(Mask(mask)(xs), y.expand(50, 1, 4, 4), atol=1e-9, rtol=0)


def mixture_2d():
    weights = [0.5, 0.3, 0.2]
    means = [[-1.0, 0.5], [1.0, -0.5], [0.3, 1.5]]
    covs = torch.tensor([[[0.3, 0.1], [0.1, 0.2]], [[0.2, -0.05], [-0.05, 0.4]], [[0.1, 0.0], [0.0, 0.05]]],
                        dtype=F64)
    return GaussianMixture(weights, means, covs)


def grid_moments(log_density, lo=-5.0, hi=5.0, n=801):
    """Normalised weights, mean and covariance of a 2-D density on a grid (float64)."""
    u = torch.linspace(lo, hi, n, dtype=F64)
    X = torch.stack(torch.meshgrid(u, u, indexing="ij"), dim=-1).reshape(-1, 2)
    logp = log_density(X)
    p = torch.softmax(logp, 0)
    mean = p @ X
    cov = (p[:, None] * (X - mean)).T @ (X - mean)
    return X, p, mean, cov


@pytest.mark.parametrize("direction", [(1.0, 0.0), (0.6, 0.8), (1.0, -2.0)])
def test_mixture_matches_bayes_on_a_grid(direction):
    prior = mixture_2d()
    M = torch.tensor([direction], dtype=F64)
    y, sigma_y = torch.tensor([0.2], dtype=F64), 0.4
    post = prior.condition_on(M, y, sigma_y)

    def log_joint(X):
        return prior.log_prob(X) - 0.5 * ((X @ M.T - y) ** 2).sum(1) / sigma_y ** 2

    X, p, mean, cov = grid_moments(log_joint)
    # Riemann sums of smooth densities on a grid of spacing 0.0125: errors far below 1e-6
    torch.testing.assert_close(post.mean().reshape(2), mean, atol=1e-6, rtol=0)
    torch.testing.assert_close(post.covariance(), cov, atol=1e-6, rtol=0)
    # the posterior weight of component k: its share of the joint density
    comp = prior.component_log_prob(X) - 0.5 * ((X @ M.T - y) ** 2) / sigma_y ** 2
    shares = torch.softmax(comp.reshape(-1), 0).reshape(comp.shape).sum(0)
    torch.testing.assert_close(post.weights, shares, atol=1e-6, rtol=0)
    # and the posterior's density is the normalised product prior x likelihood
    torch.testing.assert_close(torch.softmax(post.log_prob(X), 0), p, atol=1e-9, rtol=1e-6)


def test_noiseless_mixture_matches_bayes_on_a_line():
    """y = x_1 exactly: p(x_2 | x_1 = y) ∝ p(y, x_2), a 1-D grid over x_2."""
    prior = mixture_2d()
    y = 0.1
    post = prior.condition_on(torch.tensor([[1.0, 0.0]], dtype=F64), torch.tensor([y]))
    u = torch.linspace(-6, 6, 4001, dtype=F64)
    X = torch.stack([torch.full_like(u, y), u], 1)
    comp = prior.component_log_prob(X)
    p = torch.softmax(torch.logsumexp(comp, 1), 0)
    shares = torch.softmax(comp.reshape(-1), 0).reshape(comp.shape).sum(0)
    torch.testing.assert_close(post.weights, shares, atol=1e-8, rtol=0)
    torch.testing.assert_close(post.mean().reshape(2), torch.stack([torch.tensor(y, dtype=F64), p @ u]),
                               atol=1e-8, rtol=0)
    var = p @ (u - p @ u) ** 2
    torch.testing.assert_close(post.covariance()[1, 1], var, atol=1e-8, rtol=0)
    assert post.covariance()[0].abs().max() < 1e-12


def test_image_mixture_matches_importance_sampling():
    """E[x | y] = sum_i w_i x_i / sum_i w_i, x_i ~ p, w_i = N(y; A x_i, sigma_y^2 I), and the
    posterior component weights as the weighted share of each component's draws."""
    prior = image_mixture(num_components=3, shape=(1, 4, 4), seed=1)
    A, sigma_y, n = Downsample(2), 0.15, 400_000
    x_true = prior.sample(1, generator=gen(1), dtype=F64)
    y = A(x_true) + sigma_y * torch.randn(1, 1, 2, 2, generator=gen(2), dtype=F64)
    post = prior.condition_on(A, y, sigma_y)
    xs, comp = prior.sample(n, generator=gen(3), dtype=F64, return_components=True)
    logw = -0.5 * ((A(xs) - y) ** 2).sum((1, 2, 3)) / sigma_y ** 2
    w = torch.softmax(logw, 0)
    assert 1.0 / (w ** 2).sum() > 5000                                      # not vacuous
    flat = xs.reshape(n, -1)
    est = w @ flat
    se = torch.sqrt((w[:, None] ** 2 * (flat - est) ** 2).sum(0))
    exact = post.mean().reshape(-1)
    assert torch.all((est - exact).abs() < 5 * se + 1e-12), ((est - exact) / se)
    onehot = torch.nn.functional.one_hot(comp, 3).to(F64)
    est_w = w @ onehot
    se_w = torch.sqrt((w[:, None] ** 2 * (onehot - est_w) ** 2).sum(0))
    assert torch.all((est_w - post.weights).abs() < 5 * se_w + 1e-12), (est_w, post.weights, se_w)


def test_labelled_mixture_class_posterior():
    prior = mixture_2d()
    labelled = LabelledMixture(prior, [0, 1, 0])
    M, y = torch.tensor([[0.6, 0.8]], dtype=F64), torch.tensor([0.4])
    post = labelled.condition_on(M, y, 0.2)
    w = prior.condition_on(M, y, 0.2).weights
    torch.testing.assert_close(post.class_weights, torch.stack([w[0] + w[2], w[1]]))
    assert post.classes.tolist() == [0, 1, 0]


def test_identity_without_noise_pins_every_coordinate_and_zero_rank_keeps_the_prior():
    prior = image_mixture(num_components=2, shape=(1, 2, 2), seed=0)
    x = prior.sample(1, generator=gen(0), dtype=F64)
    post = prior.condition_on(Identity(), x)
    torch.testing.assert_close(post.means, x.reshape(1, -1).expand(2, -1), atol=1e-12, rtol=0)
    assert post.eigenvalues.abs().max() < 1e-12
    nothing = prior.condition_on(Mask(torch.zeros(1, 1, 2, 2)), torch.zeros(1, 1, 2, 2))
    torch.testing.assert_close(nothing.weights, prior.weights)
    torch.testing.assert_close(nothing.means, prior.means)
    torch.testing.assert_close(nothing.covs(), prior.covs())


@pytest.mark.parametrize("make,match", [
    (lambda p: p.condition_on(Downsample(2), torch.zeros(1, 1, 4, 4)), "one measurement"),
    (lambda p: p.condition_on(Downsample(2), torch.zeros(1, 1, 2, 2), sigma_y=-0.1), "sigma_y"),
    (lambda p: p.condition_on(Downsample(2), torch.zeros(1, 1, 2, 2), sigma_y="x"), "sigma_y"),
    (lambda p: p.condition_on("A", torch.zeros(4)), "linear operator"),
    (lambda p: p.condition_on(torch.zeros(3, 5), torch.zeros(3)), "matrix"),
    (lambda p: p.condition_on(Downsample(2), torch.full((4,), math.nan)), "finite"),
])
def test_bad_inputs(make, match):
    with pytest.raises(ScorekitError, match=match):
        make(image_mixture(num_components=2, shape=(1, 4, 4)))
