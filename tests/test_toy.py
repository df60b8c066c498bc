"""Tests of the exact Gaussian-mixture oracle (scorekit.toy).

Closed-form quantities are checked against independent computations: autograd of the density,
dense Gaussian conditioning, scipy's multivariate normal, importance sampling. Monte-Carlo
tolerances are a few standard errors of the sample size used, with fixed seeds.
"""
import math

import numpy as np
import pytest
import torch
from scipy import stats

from scorekit.errors import ScorekitError
from scorekit.processes import DDPM, VPSDE
from scorekit.toy import GaussianMixture, eight_gaussians, image_mixture, multiscale_2d

F64 = torch.float64
PAIRS = [(1.0, 0.0), (1.0, 0.01), (0.8, 0.3), (0.3, 1.0), (0.02, 1.0)]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def ms():
    return multiscale_2d()


@pytest.fixture(scope="module")
def img():
    return image_mixture()


def diffused_samples(mixture, alpha, sigma, n, seed=0):
    return mixture.diffused(alpha, sigma).sample(n, generator=gen(seed), dtype=F64)


def random_rotation(d, seed):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=gen(seed), dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def rotated(mixture, Q):
    """The same mixture in rotated coordinates x' = Q x (stored with full covariances)."""
    covs = Q @ mixture.covs() @ Q.T
    return GaussianMixture(mixture.weights, mixture.means @ Q.T, covs)


# --- densities ---------------------------------------------------------------------------------

@pytest.mark.parametrize("alpha,sigma", PAIRS)
def test_log_prob_matches_scipy_full_covariance(ms, alpha, sigma):
    x = diffused_samples(ms, alpha, sigma, 50)
    covs = alpha ** 2 * ms.covs() + sigma ** 2 * torch.eye(2, dtype=F64)
    expected = np.stack([
        math.log(w) + stats.multivariate_normal(alpha * m.numpy(), c.numpy()).logpdf(x.numpy())
        for w, m, c in zip(ms.weights.tolist(), ms.means, covs)], axis=1)
    comp = ms.component_log_prob(x, alpha, sigma)
    np.testing.assert_allclose(comp.numpy(), expected, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(ms.diffused(alpha, sigma).log_prob(x).numpy(),
                               np.logaddexp.reduce(expected, axis=1), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("alpha,sigma", [(1.0, 0.0), (0.7, 0.1)])
def test_log_prob_matches_independent_normal_image(img, alpha, sigma):
    x = diffused_samples(img, alpha, sigma, 20)
    std = torch.sqrt(alpha ** 2 * img.eigenvalues + sigma ** 2)                  # (K, D)
    comp = torch.distributions.Normal(alpha * img.means, std).log_prob(x.reshape(20, 1, -1)).sum(-1)
    expected = torch.logsumexp(comp + torch.log(img.weights), dim=1)
    torch.testing.assert_close(img.diffused(alpha, sigma).log_prob(x), expected, rtol=1e-12, atol=1e-9)


def test_log_prob_integrates_to_one(ms):
    # A Riemann sum of a Gaussian on a lattice of spacing h errs by ~exp(-2 pi^2 s^2 / h^2):
    # negligible here for the narrowest scale s = 0.02.
    for mixture, half, h in [(eight_gaussians(), 3.0, 0.02), (ms, 7.5, 0.02)]:
        g = torch.arange(-half, half + h / 2, h, dtype=F64)
        xx, yy = torch.meshgrid(g, g, indexing="ij")
        pts = torch.stack([xx.flatten(), yy.flatten()], dim=1)
        total = mixture.log_prob(pts).exp().sum().item() * h * h
        assert abs(total - 1.0) < 1e-6


# --- score, posterior mean, noise ----------------------------------------------------------------

@pytest.mark.parametrize("name", ["multiscale", "image"])
@pytest.mark.parametrize("alpha,sigma", PAIRS)
def test_score_equals_autograd_of_diffused_log_prob(ms, img, name, alpha, sigma):
    mixture = ms if name == "multiscale" else img
    x = diffused_samples(mixture, alpha, sigma, 64).requires_grad_(True)
    (grad,) = torch.autograd.grad(mixture.diffused(alpha, sigma).log_prob(x).sum(), x)
    score = mixture.score(x.detach(), alpha, sigma)
    assert score.shape == x.shape and score.dtype == F64
    torch.testing.assert_close(score, grad, rtol=1e-9, atol=1e-9 * grad.abs().max().item())


@pytest.mark.parametrize("name", ["multiscale", "image"])
@pytest.mark.parametrize("alpha,sigma", [p for p in PAIRS if p[1] > 0])
def test_tweedie_and_noise_prediction(ms, img, name, alpha, sigma):
    mixture = ms if name == "multiscale" else img
    x = diffused_samples(mixture, alpha, sigma, 64, seed=1)
    score = mixture.score(x, alpha, sigma)
    x0 = mixture.posterior_mean(x, alpha, sigma)
    eps = mixture.posterior_noise(x, alpha, sigma)
    scale = x.abs().max().item() + 1.0
    # Tweedie: E[x0 | x_t] = (x_t + sigma^2 score) / alpha; and E[eps | x_t] = -sigma score
    torch.testing.assert_close(x0, (x + sigma ** 2 * score) / alpha, rtol=1e-9, atol=1e-9 * scale / alpha)
    torch.testing.assert_close(eps, -sigma * score, rtol=1e-9, atol=1e-9 * scale)
    torch.testing.assert_close(alpha * x0 + sigma * eps, x, rtol=1e-9, atol=1e-9 * scale)


@pytest.mark.parametrize("full", [False, True])
def test_posterior_mean_single_gaussian_dense_conditioning(full):
    D = 3
    g = gen(3)
    mu = torch.randn(1, D, generator=g, dtype=F64)
    if full:
        A = torch.randn(D, D, generator=g, dtype=F64)
        Sigma = A @ A.T + 0.1 * torch.eye(D, dtype=F64)
        mixture = GaussianMixture([1.0], mu, Sigma[None])
    else:
        var = torch.tensor([0.5, 0.01, 2.0], dtype=F64)
        Sigma = torch.diag(var)
        mixture = GaussianMixture([1.0], mu, variances=var[None])
    assert mixture.is_diagonal == (not full)
    alpha, sigma = 0.6, 0.5
    x = torch.randn(10, D, generator=g, dtype=F64)
    # x0 | x_t ~ N(m, P^-1), P = Sigma^-1 + alpha^2 / sigma^2 I, P m = Sigma^-1 mu + alpha / sigma^2 x_t
    Si = torch.linalg.inv(Sigma)
    P = Si + alpha ** 2 / sigma ** 2 * torch.eye(D, dtype=F64)
    rhs = (Si @ mu[0])[None] + alpha / sigma ** 2 * x
    expected = torch.linalg.solve(P, rhs.T).T
    torch.testing.assert_close(mixture.posterior_mean(x, alpha, sigma), expected, rtol=1e-10, atol=1e-10)
    # and the score is -C^{-1} (x - alpha mu), C = alpha^2 Sigma + sigma^2 I
    C = alpha ** 2 * Sigma + sigma ** 2 * torch.eye(D, dtype=F64)
    torch.testing.assert_close(mixture.score(x, alpha, sigma),
                               -torch.linalg.solve(C, (x - alpha * mu).T).T, rtol=1e-10, atol=1e-10)


def test_posterior_mean_matches_importance_sampling(ms):
    """E[x0 | x_t] = sum_i w_i x0_i / sum_i w_i with x0_i ~ p_0 and w_i = N(x_t; alpha x0_i, sigma^2 I)."""
    alpha, sigma, n = 0.8, 0.5, 200_000
    x0 = ms.sample(n, generator=gen(5), dtype=F64)
    xt = diffused_samples(ms, alpha, sigma, 6, seed=6)
    exact = ms.posterior_mean(xt, alpha, sigma)
    for i in range(xt.shape[0]):
        logw = -((xt[i] - alpha * x0) ** 2).sum(1) / (2 * sigma ** 2)
        w = torch.softmax(logw, 0)
        est = w @ x0
        ess = 1.0 / (w ** 2).sum()
        se = torch.sqrt((w[:, None] ** 2 * (x0 - est) ** 2).sum(0))       # self-normalised IS
        assert ess > 2000                                                  # not vacuous
        assert torch.all(se < 0.03)
        assert torch.all((est - exact[i]).abs() < 5 * se), (est, exact[i], se)


def test_posterior_mean_limits(ms, img):
    for mixture in (ms, img):
        x = mixture.sample(32, generator=gen(7), dtype=F64)
        # no noise: the denoiser is the identity
        torch.testing.assert_close(mixture.posterior_mean(x, 1.0, 0.0), x, rtol=0, atol=1e-12)
        # no signal: E[x0 | x_t] is the mixture mean
        m = mixture.mean().expand_as(x)
        torch.testing.assert_close(mixture.posterior_mean(x, 0.0, 1.0), m, rtol=0, atol=1e-12)
        torch.testing.assert_close(mixture.posterior_mean(x, 1e-9, 1.0), m, rtol=0, atol=1e-7)


@pytest.mark.parametrize("name", ["multiscale", "image"])
def test_per_sample_alpha_sigma_match_scalar_calls(ms, img, name):
    mixture = ms if name == "multiscale" else img
    n = 5
    alphas = torch.tensor([1.0, 0.9, 0.5, 0.1, 0.0], dtype=F64)
    sigmas = torch.tensor([0.0, 0.05, 0.5, 1.0, 2.0], dtype=F64)
    x = torch.cat([diffused_samples(mixture, a.item(), s.item(), 1, seed=i)
                   for i, (a, s) in enumerate(zip(alphas, sigmas))])
    for method in ("score", "posterior_mean", "posterior_noise", "component_log_prob",
                   "responsibilities"):
        if method in ("score", "posterior_noise"):
            ok = sigmas > 0          # score at sigma = 0 is fine too, but keep magnitudes tame
        else:
            ok = torch.ones(n, dtype=torch.bool)
        batched = getattr(mixture, method)(x[ok], alphas[ok], sigmas[ok])
        single = torch.cat([getattr(mixture, method)(x[i:i + 1], alphas[i].item(), sigmas[i])
                            for i in range(n) if ok[i]])
        torch.testing.assert_close(batched, single, rtol=1e-12, atol=1e-12)


def test_rotation_equivariance_full_vs_diagonal_path():
    """A rotated diagonal mixture uses the full-covariance path; results must rotate along."""
    img = image_mixture(shape=(2, 4, 4))          # D = 32 keeps the dense eigendecomposition cheap
    Q = random_rotation(img.dim, seed=8)
    rot = rotated(img, Q)
    assert img.is_diagonal and not rot.is_diagonal
    alpha, sigma = 0.9, 0.05
    x = diffused_samples(img, alpha, sigma, 16).reshape(16, -1)
    xr = x @ Q.T
    torch.testing.assert_close(rot.component_log_prob(xr, alpha, sigma),
                               img.component_log_prob(x, alpha, sigma), rtol=1e-9, atol=1e-8)
    torch.testing.assert_close(rot.score(xr, alpha, sigma), img.score(x, alpha, sigma) @ Q.T,
                               rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(rot.posterior_mean(xr, alpha, sigma),
                               img.posterior_mean(x, alpha, sigma) @ Q.T, rtol=1e-9, atol=1e-9)


# --- exact "networks" under a process --------------------------------------------------------------

@pytest.mark.parametrize("process", [DDPM(), VPSDE()], ids=["DDPM", "VPSDE"])
def test_models_under_a_process(img, process):
    n = 6
    if process.discrete:
        t = torch.tensor([0, 10, 100, 400, 700, 999])                   # integer steps as diffusers passes
    else:
        t = torch.tensor([1e-3, 0.01, 0.1, 0.4, 0.7, 1.0])
    alpha, sigma = process.alpha(t), process.sigma(t)
    x0_true = img.sample(n, generator=gen(9), dtype=F64)
    xt = (alpha.reshape(-1, 1, 1, 1) * x0_true
          + sigma.reshape(-1, 1, 1, 1) * torch.randn(x0_true.shape, generator=gen(10), dtype=F64))
    x0 = img.x0_model(process)(xt, t)
    eps = img.eps_model(process)(xt, t)
    v = img.v_model(process)(xt, t)
    torch.testing.assert_close(img.denoiser(process)(xt, t), x0, rtol=0, atol=0)
    torch.testing.assert_close(x0, img.posterior_mean(xt, alpha, sigma), rtol=1e-12, atol=1e-12)
    a, s = alpha.reshape(-1, 1, 1, 1), sigma.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(eps, (xt - a * x0) / s, rtol=1e-7, atol=1e-7)
    torch.testing.assert_close(v, a * eps - s * x0, rtol=1e-12, atol=1e-12)
    # a scalar t matches the per-sample call; float32 in, float32 out
    xt32 = xt.float()
    out = img.eps_model(process)(xt32[2:3], t[2])
    assert out.dtype == torch.float32 and out.shape == (1, 3, 8, 8)
    torch.testing.assert_close(out, eps[2:3].float(), rtol=1e-5, atol=1e-5)
    assert process.discrete or img.denoiser(process)(xt, 0.5).shape == xt.shape


# --- sampling ------------------------------------------------------------------------------------

def test_sample_moments_match_mean_and_covariance(ms):
    n = 200_000
    x, comp = ms.sample(n, generator=gen(11), dtype=F64, return_components=True)
    assert x.shape == (n, 2)
    freq = torch.bincount(comp, minlength=5).double() / n
    assert torch.all((freq - ms.weights).abs() < 5 * torch.sqrt(ms.weights * (1 - ms.weights) / n))
    mean, cov = ms.mean(), ms.covariance()
    assert torch.all((x.mean(0) - mean).abs() < 5 * torch.sqrt(torch.diagonal(cov) / n))
    d = x - mean
    prod = d[:, :, None] * d[:, None, :]
    se = prod.std(0) / math.sqrt(n)
    assert torch.all((prod.mean(0) - cov).abs() < 5 * se)
    # each component's whitened samples are N(0, I)
    z = ms.whiten(x, comp)
    assert torch.all(z.mean(0).abs() < 5 / math.sqrt(n))
    assert torch.all((z.var(0) - 1).abs() < 5 * math.sqrt(2 / n))


def test_sample_moments_random_full_covariances():
    # random 3-D covariances: eigenvector matrices that are not symmetric (unlike 2-D reflections)
    g = gen(17)
    A = torch.randn(2, 3, 3, generator=g, dtype=F64)
    covs = A @ A.transpose(1, 2) + 0.05 * torch.eye(3, dtype=F64)
    mixture = GaussianMixture([0.3, 0.7], torch.randn(2, 3, generator=g, dtype=F64) * 3, covs)
    n = 100_000
    x, comp = mixture.sample(n, generator=gen(18), dtype=F64, return_components=True)
    for k in range(2):
        xk = x[comp == k]
        d = xk - mixture.means[k]
        prod = d[:, :, None] * d[:, None, :]
        se = prod.std(0) / math.sqrt(xk.shape[0])
        assert torch.all((prod.mean(0) - covs[k]).abs() < 5 * se)
        z = mixture.whiten(xk, torch.full((xk.shape[0],), k))
        zz = z[:, :, None] * z[:, None, :]
        assert torch.all((zz.mean(0) - torch.eye(3, dtype=F64)).abs() < 5 * zz.std(0) / math.sqrt(xk.shape[0]))


def test_image_sample_moments(img):
    n = 20_000
    x, comp = img.sample(n, generator=gen(12), dtype=F64, return_components=True)
    assert x.shape == (n, 3, 8, 8)
    x = x.reshape(n, -1)
    var = torch.diagonal(img.covariance())
    assert torch.all((x.mean(0) - img.mean().reshape(-1)).abs() < 5 * torch.sqrt(var / n))
    d2 = (x - img.mean().reshape(-1)) ** 2
    assert torch.all((d2.mean(0) - var).abs() < 5 * d2.std(0) / math.sqrt(n))
    z = img.whiten(x, comp)                       # within components: exact N(0, 1) per dimension
    for k in range(img.num_components):
        zk = z[comp == k]
        m = zk.shape[0]
        assert torch.all(zk.mean(0).abs() < 5 / math.sqrt(m))
        assert torch.all((zk.var(0) - 1).abs() < 5 * math.sqrt(2 / m))


def test_diffused_is_the_law_of_x_t(ms):
    alpha, sigma, n = 0.7, 0.4, 100_000
    x0 = ms.sample(n, generator=gen(13), dtype=F64)
    xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=gen(14), dtype=F64)
    pt = ms.diffused(alpha, sigma)
    cov = pt.covariance()
    torch.testing.assert_close(cov, alpha ** 2 * ms.covariance() + sigma ** 2 * torch.eye(2, dtype=F64))
    assert torch.all((xt.mean(0) - pt.mean()).abs() < 5 * torch.sqrt(torch.diagonal(cov) / n))
    d = xt - pt.mean()
    prod = d[:, :, None] * d[:, None, :]
    assert torch.all((prod.mean(0) - cov).abs() < 5 * prod.std(0) / math.sqrt(n))


def test_sample_options(img):
    a = img.sample(4, generator=gen(1))
    b = img.sample(4, generator=gen(1))
    assert a.dtype == torch.float32 and torch.equal(a, b)
    x, comp = img.sample(3, generator=gen(2), dtype=F64, return_components=True)
    assert x.dtype == F64 and comp.shape == (3,) and comp.dtype == torch.long
    assert img.sample(0).shape == (0, 3, 8, 8)
    # flat (N, D) inputs are accepted too, outputs keep the input's shape
    assert img.score(x.reshape(3, -1), 1.0, 0.1).shape == (3, 192)


def test_classify_recovers_components():
    mixture = eight_gaussians()
    x, comp = mixture.sample(2000, generator=gen(15), return_components=True)
    assert torch.equal(mixture.classify(x), comp)
    r = mixture.responsibilities(x)
    torch.testing.assert_close(r.sum(1), torch.ones(2000))


# --- ready-made mixtures -------------------------------------------------------------------------

def test_ready_made_mixtures():
    eg = eight_gaussians(radius=3.0, std=0.2)
    torch.testing.assert_close(eg.means.norm(dim=1), torch.full((8,), 3.0, dtype=F64))
    torch.testing.assert_close(eg.weights, torch.full((8,), 1 / 8, dtype=F64))
    ms = multiscale_2d()
    s = ms.eigenvalues.sqrt()
    assert s.max() >= 1.0 and s.min() <= 0.02 and not ms.is_diagonal
    assert len(set(ms.weights.tolist())) == ms.num_components
    a, b, c = image_mixture(), image_mixture(), image_mixture(seed=1)
    assert torch.equal(a.means, b.means) and torch.equal(a.eigenvalues, b.eigenvalues)
    assert not torch.equal(a.means, c.means)
    assert a.event_shape == (3, 8, 8) and a.is_diagonal
    std = a.std_per_dim()
    assert std.min() < 0.006 and std.max() > 0.25
    assert len(set(a.weights.tolist())) == a.num_components
    x = a.sample(2000, generator=gen(16))
    assert (x.abs() > 1).float().mean() < 0.02
    assert image_mixture(num_components=6, shape=(1, 4, 4)).means.shape == (6, 16)


# --- user errors ---------------------------------------------------------------------------------

BAD = [
    (lambda: GaussianMixture([1.0, -1.0], [[0.0], [1.0]], stds=1.0), "weights"),
    (lambda: GaussianMixture([[1.0]], [[0.0]], stds=1.0), "weights"),
    (lambda: GaussianMixture([1.0, 1.0], [[0.0, 0.0]], stds=1.0), "means"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]]), "covs"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(2)[None], stds=1.0), "exactly one"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], torch.eye(3)[None]), "covs"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 0.5], [0.4, 1.0]]])), "symmetric"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], torch.tensor([[[1.0, 2.0], [2.0, 1.0]]])), "positive definite"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], variances=[[1.0, 0.0]]), "variances"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], variances=[1.0, 2.0, 3.0]), "variances"),
    (lambda: GaussianMixture([1.0], [[0.0, 0.0]], stds=-1.0), "stds"),
    (lambda: GaussianMixture([1.0], [[0.0] * 6], stds=1.0, event_shape=(2, 2)), "event_shape"),
    (lambda: eight_gaussians().log_prob(torch.zeros(3, 3)), "x"),
    (lambda: eight_gaussians().log_prob(torch.zeros(2)), "x"),
    (lambda: eight_gaussians().score(torch.zeros(3, 2), torch.ones(2), 0.1), "alpha"),
    (lambda: eight_gaussians().score(torch.zeros(3, 2), 1.0, -0.1), "sigma"),
    (lambda: eight_gaussians().score(torch.zeros(3, 2), 0.0, 0.0), "both be zero"),
    (lambda: eight_gaussians().posterior_mean(torch.zeros(3, 2), float("nan"), 0.1), "alpha"),
    (lambda: eight_gaussians().diffused(torch.ones(2), 0.1), "alpha"),
    (lambda: eight_gaussians().sample(-1), "n"),
    (lambda: eight_gaussians().whiten(torch.zeros(3, 2), [0, 1]), "components"),
    (lambda: eight_gaussians().whiten(torch.zeros(2, 2), [0, 8]), "components"),
    (lambda: eight_gaussians(std=0.0), "std"),
    (lambda: image_mixture(num_components=0), "num_components"),
]


@pytest.mark.parametrize("make,match", BAD)
def test_bad_inputs_raise_scorekit_error(make, match):
    with pytest.raises(ScorekitError, match=match):
        make()


def test_correlated_gaussian_is_well_conditioned_and_reproducible():
    """``S = A A^T + 0.1 I``: every eigenvalue is at least 0.1 (A A^T is positive semi-definite),
    the same seed gives the same law, and another seed another one."""
    from scorekit.toy import correlated_gaussian

    mix = correlated_gaussian(6, seed=3)
    cov = mix.covs()[0]
    assert float(torch.linalg.eigvalsh(cov).min()) >= 0.1 - 1e-12
    again = correlated_gaussian(6, seed=3)
    assert torch.equal(again.mean(), mix.mean())
    assert not torch.equal(correlated_gaussian(6, seed=4).mean(), mix.mean())
    with pytest.raises(ScorekitError):
        correlated_gaussian(0)
