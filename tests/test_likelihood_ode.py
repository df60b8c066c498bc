"""The probability-flow ODE likelihood against closed forms: Gaussian data under VP, VE and DDPM
processes with the exact denoiser (the model's density is then the data's own, blurred by
sigma(t_eps)), a two-component mixture, Hutchinson's estimator against the exact trace with a
tolerance from its own spread, and the dequantised bits/dim of 8-bit data against exact discrete
probabilities and entropy."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from scorekit import DDPM, EDM, VESDE, VPSDE, ScorekitError
from scorekit.likelihood import OdeLikelihood, bits_per_dim, ode_likelihood
from scorekit.toy import GaussianMixture

LN2 = math.log(2)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def diffused_log_prob(mix, process, x, t):
    """Closed-form log p_t(x): the mixture pushed through q(x_t | x_0) at time t."""
    return mix.diffused(process.alpha(t).item(), process.sigma(t).item()).log_prob(x)


def gaussian(D=3, full=False):
    """N(mu, Sigma) as a one-component mixture; with full=True a rotated covariance, so that the
    denoiser's Jacobian has off-diagonal entries."""
    mu = torch.tensor([0.3, -0.2, 0.1][:D], dtype=torch.float64)
    stds = torch.tensor([0.5, 0.3, 0.8][:D], dtype=torch.float64)
    if not full:
        return GaussianMixture([1.0], mu[None], stds=stds[None])
    q, _ = torch.linalg.qr(torch.tensor([[1.0, 0.4, -0.3], [0.2, 1.0, 0.5], [-0.6, 0.1, 1.0]],
                                        dtype=torch.float64)[:D, :D])
    return GaussianMixture([1.0], mu[None], (q @ torch.diag(stds ** 2) @ q.T)[None])


@pytest.mark.parametrize("process", [VPSDE(), VESDE(), DDPM()], ids=["VPSDE", "VESDE", "DDPM"])
def test_gaussian_data_exact_trace_matches_the_closed_form(process):
    mix = gaussian()
    x = mix.sample(16, generator=gen(1), dtype=torch.float64)
    res = ode_likelihood(mix.denoiser(process), process, x, divergence="exact", rtol=1e-6, atol=1e-6)
    D = 3
    assert isinstance(res, OdeLikelihood) and res.t_eps == process.t_min and res.nfe > 0
    # the data's own density, within 0.01 bits/dim (the model's is blurred by sigma(t_min) ~ 0.01)
    true_bpd = -mix.log_prob(x) / (D * LN2)
    assert (res.bits_per_dim - true_bpd).abs().max() < 0.01
    # tighter: eq. (1) exactly, with the true p_T in place of the prior (which differs slightly)
    delta_true = diffused_log_prob(mix, process, x, res.t_eps) - diffused_log_prob(mix, process, res.x_T, process.t_max)
    assert (res.delta_log_prob - delta_true).abs().max() < 1e-3
    assert torch.allclose(res.prior_log_prob, process.prior_log_prob(res.x_T))
    assert torch.allclose(res.log_likelihood, res.prior_log_prob + res.delta_log_prob)
    assert res.mean_bpd == pytest.approx(res.bits_per_dim.mean().item())
    assert res.stderr_bpd == pytest.approx(res.bits_per_dim.std().item() / 4)


def test_two_component_mixture_in_2d_matches_log_prob():
    mix = GaussianMixture([0.3, 0.7], [[-1.0, 0.5], [1.0, -0.5]],
                          [[[0.3, 0.1], [0.1, 0.2]], [[0.1, 0.0], [0.0, 0.4]]])
    p = VPSDE()
    x = mix.sample(32, generator=gen(2), dtype=torch.float64)
    res = ode_likelihood(mix.denoiser(p), p, x, divergence="exact", t_eps=1e-5, rtol=1e-6, atol=1e-6)
    assert (res.bits_per_dim - (-mix.log_prob(x) / (2 * LN2))).abs().max() < 0.01
    delta_true = diffused_log_prob(mix, p, x, 1e-5) - diffused_log_prob(mix, p, res.x_T, p.t_max)
    assert (res.delta_log_prob - delta_true).abs().max() < 1e-3


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_the_exact_trace_within_its_spread(probe):
    """The trajectory does not depend on the probe, so each sample's Hutchinson estimate minus
    its exact value has mean zero; their mean must be within 4 standard errors of zero."""
    mix = gaussian(full=True)
    p = EDM()
    x = mix.sample(64, generator=gen(3), dtype=torch.float64)
    exact = ode_likelihood(mix.denoiser(p), p, x, divergence="exact")
    hutch = ode_likelihood(mix.denoiser(p), p, x, probe=probe, generator=gen(4))
    diff = hutch.log_likelihood - exact.log_likelihood
    se = diff.std().item() / math.sqrt(len(diff))
    assert diff.std() > 1e-3                          # the estimator is noisy here ...
    assert abs(diff.mean().item()) < 4 * se + 1e-3    # ... but unbiased
    assert abs(hutch.mean_bpd - exact.mean_bpd) < 4 * se / (3 * LN2) + 1e-3


def test_rademacher_probes_are_exact_for_a_diagonal_jacobian():
    """e^T J e = sum_j J_jj e_j^2 = tr J when J is diagonal and e_j = +-1."""
    mix = gaussian()
    p = VPSDE()
    x = mix.sample(8, generator=gen(5), dtype=torch.float64)
    exact = ode_likelihood(mix.denoiser(p), p, x, divergence="exact")
    hutch = ode_likelihood(mix.denoiser(p), p, x, generator=gen(6), num_probes=2)
    assert (hutch.log_likelihood - exact.log_likelihood).abs().max() < 1e-4


def test_dequantised_8bit_bits_per_dim():
    r"""8-bit data drawn from the discretisation Q of the model's own density (a diagonal
    Gaussian p, the exact denoiser's p_{t_eps}): z ~ p, k = floor((z + 1) 256 / 2), x = 2k/255 - 1.

    With bins of width w = 2/256 in z, Q(k) = prod_d [Phi(b_hi) - Phi(b_lo)] exactly, and for a
    Gaussian E_u[-log p(z)] over a bin with centre c is 1/2 log(2 pi v) + ((c - m)^2 + w^2/12) / (2 v)
    per dimension. So (1) each sample's bpd, -(log p(z) + D log w) / (D ln 2), must average to its
    expectation over u; (2) it bounds the exact -log2 Q(k) / D from above (Jensen); (3) the mean
    over samples estimates H(Q)/D plus the exact Jensen gap, and is above H(Q)/D. (The tail mass
    of p outside [-1, 1] is below 1e-6 and ignored.)"""
    D, N, bits = 2, 256, 8
    p = VPSDE()
    t_eps = 1e-4
    m0, s0 = torch.tensor([0.1, -0.15]), torch.tensor([0.2, 0.15])
    mix = GaussianMixture([1.0], m0[None], stds=s0[None])
    alpha, sigma = p.alpha(t_eps).item(), p.sigma(t_eps).item()
    m, v = (alpha * m0).double().numpy(), (alpha ** 2 * s0 ** 2 + sigma ** 2).double().numpy()
    w = 2 / 256
    z = torch.from_numpy(m + np.sqrt(v) * np.random.RandomState(7).randn(N, D))
    k = torch.clamp(torch.floor((z + 1) / w), 0, 255)
    x = 2 * k / 255 - 1

    res = ode_likelihood(mix.denoiser(p), p, x, divergence="exact", data_bits=bits, t_eps=t_eps,
                         generator=gen(8), rtol=1e-6, atol=1e-6)

    def expected_nats(k):                               # E_u[-log p(z)] per sample, summed over d
        c = -1 + (k.numpy() + 0.5) * w
        return torch.from_numpy((0.5 * np.log(2 * np.pi * v) + ((c - m) ** 2 + w ** 2 / 12) / (2 * v)).sum(-1))

    def log_q(k):                                       # log Q(k) of each sample
        lo, hi = (-1 + k.numpy() * w - m) / np.sqrt(v), (-1 + (k.numpy() + 1) * w - m) / np.sqrt(v)
        return torch.from_numpy(np.log(norm.cdf(hi) - norm.cdf(lo)).sum(-1))

    expected_bpd = (expected_nats(k) - D * math.log(w)) / (D * LN2)       # -log2 w = 7
    assert torch.allclose(res.bits_per_dim, -res.log_likelihood / (D * LN2) + 7)
    # (1) unbiased around the closed-form expectation over the dequantisation noise
    r = res.bits_per_dim - expected_bpd
    assert abs(r.mean().item()) < 4 * r.std().item() / math.sqrt(N) + 1e-4
    # (2) an upper bound on the exact discrete code length of these samples
    gap = res.bits_per_dim - (-log_q(k) / (D * LN2))
    assert gap.mean().item() > -4 * r.std().item() / math.sqrt(N)
    # (3) against the entropy of Q, summed exactly over the 256 levels of each dimension
    levels = torch.arange(256, dtype=torch.float64)
    entropy, expected_mean = 0.0, 0.0
    for d in range(D):
        lo, hi = (-1 + levels.numpy() * w - m[d]) / np.sqrt(v[d]), (-1 + (levels.numpy() + 1) * w - m[d]) / np.sqrt(v[d])
        q = norm.cdf(hi) - norm.cdf(lo)
        c = -1 + (levels.numpy() + 0.5) * w
        e_nats = 0.5 * np.log(2 * np.pi * v[d]) + ((c - m[d]) ** 2 + w ** 2 / 12) / (2 * v[d])
        entropy += -(q * np.log2(q)).sum()
        expected_mean += (q * (e_nats - math.log(w)) / LN2).sum()
    entropy, expected_mean = entropy / D, expected_mean / D
    assert 0 < expected_mean - entropy < 1e-3           # the exact Jensen gap: tiny, positive
    assert abs(res.mean_bpd - expected_mean) < 4 * res.stderr_bpd
    assert res.mean_bpd > entropy - 4 * res.stderr_bpd


def test_bits_per_dim_units():
    ll = torch.tensor([-10.0, 5.0], dtype=torch.float64)
    assert torch.allclose(bits_per_dim(ll, 4), -ll / (4 * LN2))
    assert torch.allclose(bits_per_dim(ll, 4, 8), -ll / (4 * LN2) + 7)


def test_results_are_reproducible_from_the_generator():
    mix = gaussian(full=True)
    p = VPSDE()
    x = torch.round(mix.sample(4, generator=gen(9), dtype=torch.float64).clamp(-1, 1) * 127.5 + 127.5) / 127.5 - 1
    run = lambda: ode_likelihood(mix.denoiser(p), p, x, data_bits=8, generator=gen(10), progress=True).bits_per_dim
    assert torch.equal(run(), run())


@pytest.mark.parametrize("kwargs,msg", [
    (dict(divergence="trace"), "unknown divergence 'trace'"),
    (dict(probe="uniform", generator=gen(0)), "unknown probe 'uniform'"),
    (dict(num_probes=0, generator=gen(0)), "num_probes must be a positive integer"),
    (dict(), "pass generator="),
    (dict(divergence="exact", data_bits=8), "pass generator="),
    (dict(divergence="exact", data_bits=8, generator=gen(0)), "not on the 256 levels"),
    (dict(divergence="exact", data_bits=0, generator=gen(0)), "data_bits must be a whole number"),
    (dict(divergence="exact", t_eps=0.0), "t_eps=0.0 must be a time with sigma > 0"),
    (dict(divergence="exact", rtol=0), "rtol must be a positive"),
])
def test_bad_arguments_are_named(kwargs, msg):
    mix = gaussian()
    x = torch.full((2, 3), 0.123, dtype=torch.float64)
    with pytest.raises(ScorekitError, match=msg):
        ode_likelihood(mix.denoiser(VPSDE()), VPSDE(), x, **kwargs)


@pytest.mark.parametrize("t_eps", [math.nan, "soon", math.inf])
def test_a_time_that_is_not_a_number_is_named_on_a_discrete_process(t_eps):
    """DDPM reads sigma from a table: a NaN time must be refused before it indexes it."""
    mix, p = gaussian(), DDPM()
    with pytest.raises(ScorekitError, match="must be a time with sigma > 0"):
        ode_likelihood(mix.denoiser(p), p, torch.zeros(2, 3, dtype=torch.float64), divergence="exact", t_eps=t_eps)


def test_a_denoiser_without_gradients_is_refused():
    p = VPSDE()
    with pytest.raises(ScorekitError, match="gradient with respect to x_t"):
        ode_likelihood(lambda x, t: x.detach() * 0.5, p, torch.zeros(2, 3), divergence="exact")
