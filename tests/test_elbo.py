"""DDPM's variational bound in bits/dim: every term against its closed form on Gaussian data, the
bound above the exact NLL and tightening with T, the discretised decoder against scipy, and the
per-step Gaussian pieces against torch.distributions."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from scorekit import DDPM, EDM, VESDE, VPSDE, Denoiser, ScorekitError, SubVPSDE
from scorekit.likelihood import Elbo, SampledElbo, elbo, sampled_elbo
from scorekit.likelihood.elbo import (discretized_gaussian_log_likelihood, gaussian_log_likelihood,
                                      normal_kl, step_terms)
from scorekit.timesteps import DEFAULT_CHAIN_STEPS, chain_timesteps
from scorekit.toy import GaussianMixture
from scorekit.variances import LearnedVarianceDenoiser, fixed_variance

from gaussian_elbo import chain_gap, closed_form_chain_terms, closed_form_terms, gaussian_entropy

F64 = torch.float64
LN2 = math.log(2.0)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gaussian_setup(T, schedule="linear", mu=0.3, s=0.5, D=2):
    process = DDPM(schedule=schedule, num_steps=T)
    data = GaussianMixture([1.0], [[mu] * D], stds=s)
    return process, data


# --- the pieces ------------------------------------------------------------------------------------

def test_step_terms_are_torch_kl_and_log_prob():
    """One reverse step: the KL of the posterior to the model equals torch.distributions' KL of the
    same Gaussians (means and variances built here from the betas), and the step into the data is
    -log N(x_0; x0_pred, S_0) from torch.distributions."""
    process = DDPM(num_steps=50)
    betas = process.betas
    ab = torch.cumprod(1 - betas, 0)
    x0 = torch.randn(5, 3, generator=gen(0), dtype=F64)
    x_t = torch.randn(5, 3, generator=gen(1), dtype=F64)
    x0_pred = torch.randn(5, 3, generator=gen(2), dtype=F64)
    log_var = torch.randn(5, 3, generator=gen(3), dtype=F64) - 6
    for t in (1, 7, 49):
        mean = lambda z: (ab[t - 1].sqrt() * betas[t] * z + (1 - betas[t]).sqrt() * (1 - ab[t - 1]) * x_t) / (1 - ab[t])
        post_var = betas[t] * (1 - ab[t - 1]) / (1 - ab[t])
        q = torch.distributions.Normal(mean(x0), post_var.sqrt())
        p = torch.distributions.Normal(mean(x0_pred), (0.5 * log_var).exp())
        want = torch.distributions.kl_divergence(q, p).sum(1)
        got = step_terms(process, x0, x_t, t, t - 1, x0_pred, log_var)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    want0 = -torch.distributions.Normal(x0_pred, (0.5 * log_var).exp()).log_prob(x0).sum(1)
    torch.testing.assert_close(step_terms(process, x0, x_t, 0, -1, x0_pred, log_var), want0, rtol=1e-12, atol=1e-12)
    # per-sample times mix KL steps and decoder steps
    t = torch.tensor([0, 7, 0, 49, 1])
    mixed = step_terms(process, x0, x_t, t, t - 1, x0_pred, log_var)
    for i, ti in enumerate(t.tolist()):
        one = step_terms(process, x0[i:i + 1], x_t[i:i + 1], ti, ti - 1, x0_pred[i:i + 1], log_var[i:i + 1])
        torch.testing.assert_close(mixed[i:i + 1], one, rtol=1e-12, atol=1e-12)
    assert normal_kl(x0, 0.3, x0, math.log(0.3)).abs().max() < 1e-15
    torch.testing.assert_close(gaussian_log_likelihood(x0, x0_pred, log_var),
                               torch.distributions.Normal(x0_pred, (0.5 * log_var).exp()).log_prob(x0))


def scipy_bin_probability(x, mean, std, bits=8):
    h = 1.0 / (2 ** bits - 1)
    lo = -np.inf if x < -1 + h / 2 else (x - h - mean) / std
    hi = np.inf if x > 1 - h / 2 else (x + h - mean) / std
    # upper-tail form where the interval is above the mean (as accurate as scipy gets)
    return norm.sf(lo) - norm.sf(hi) if lo + hi > 0 else norm.cdf(hi) - norm.cdf(lo)


def test_discretised_decoder_matches_scipy_and_sums_to_one():
    levels = np.arange(256) * 2 / 255 - 1
    pixels = [0, 1, 2, 127, 128, 200, 253, 254, 255]                  # both edges and their neighbours
    for mean, std in [(0.0, 0.3), (-0.97, 0.01), (0.99, 0.002), (0.4, 1.5), (1.4, 0.2), (0.5, 0.003)]:
        x = torch.tensor(levels[pixels], dtype=F64)
        log_p = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean), 2 * math.log(std))
        want = np.array([scipy_bin_probability(v, mean, std) for v in levels[pixels]])
        ok = want > 1e-300
        np.testing.assert_allclose(log_p.exp().numpy(), want, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(log_p.numpy()[ok], np.log(want[ok]), rtol=1e-9, atol=1e-12)
        all_x = torch.tensor(levels, dtype=F64)
        total = discretized_gaussian_log_likelihood(all_x, torch.full_like(all_x, mean), 2 * math.log(std)).exp().sum()
        assert abs(total.item() - 1.0) < 1e-12, (mean, std, total.item())
    # far in a tail, in log space: 30 standard deviations from the mean is still finite and right
    x = torch.tensor([0.0], dtype=F64)
    got = discretized_gaussian_log_likelihood(x, torch.tensor([0.9], dtype=F64), 2 * math.log(0.03)).item()
    a, b = (0.0 - 1 / 255 - 0.9) / 0.03, (0.0 + 1 / 255 - 0.9) / 0.03
    want = norm.logcdf(b) + math.log1p(-math.exp(norm.logcdf(a) - norm.logcdf(b)))
    assert math.isfinite(got) and abs(got - want) < 1e-9 * abs(want)


# --- the bound on Gaussian data ------------------------------------------------------------------

@pytest.mark.parametrize("variance", ["small", "large"])
def test_every_term_matches_its_closed_form(variance):
    """Data N(mu, s^2 I), the exact denoiser E[x_0|x_t], T = 100: each term's batch mean lies within
    4.5 standard errors of its closed form (closed_form_terms), the prior term is exact per sample, and
    the sum agrees too."""
    T, N, D, mu, s = 100, 3000, 2, 0.3, 0.5
    process, data = gaussian_setup(T, mu=mu, s=s, D=D)
    x0 = data.sample(N, generator=gen(0), dtype=F64)
    out = elbo(data.denoiser(process), process, x0, variance=variance, data_bits=None,
               generator=gen(1), batch_steps=25)
    assert isinstance(out, Elbo) and out.terms_bpd.shape == (T,) and out.total_bpd.shape == (N,)
    terms, prior = closed_form_terms(process.betas.numpy(), mu, s, D, variance)
    to_bpd = 1 / (D * LN2)
    se = out.sample_terms_bpd.std(0) / math.sqrt(N)
    z = (out.terms_bpd - torch.from_numpy(terms) * to_bpd).abs() / se
    assert z.max() < 4.5, z.max()
    assert math.isclose(out.decoder_bpd, out.terms_bpd[0].item(), rel_tol=1e-12)
    # the prior term needs no Monte Carlo: per sample, KL(N(sqrt(ab) x, 1 - ab) || N(0, 1))
    ab = torch.cumprod(1 - process.betas, 0)[-1]
    want_prior = 0.5 * (-torch.log(1 - ab) + (1 - ab) + ab * x0 ** 2 - 1).sum(1) * to_bpd
    torch.testing.assert_close(out.sample_prior_bpd, want_prior, rtol=1e-10, atol=1e-12)
    assert abs(out.prior_bpd - prior * to_bpd) < 4 * out.sample_prior_bpd.std().item() / math.sqrt(N)
    total = (terms.sum() + prior) * to_bpd
    assert abs(out.mean_bpd - total) < 4 * out.stderr_bpd
    torch.testing.assert_close(out.total_bpd, out.sample_prior_bpd + out.sample_terms_bpd.sum(1))


def test_stderr_is_the_standard_error_of_the_per_sample_bounds():
    """Elbo.stderr_bpd and SampledElbo.stderr_bpd are documented as the sample standard deviation of
    total_bpd over sqrt(N) (unbiased, as for ode_likelihood): recomputed here from the returned
    per-sample bounds, equal to float64 rounding; a single sample has no standard error (nan)."""
    process, data = gaussian_setup(20)
    x0 = data.sample(9, generator=gen(0), dtype=F64)
    full = elbo(data.denoiser(process), process, x0, data_bits=None, generator=gen(1))
    sampled = sampled_elbo(data.denoiser(process), process, x0, strata=4, variances=("small", "large"),
                           data_bits=None, generator=gen(2))
    for r in (full, *sampled.values()):
        assert r.total_bpd.std().item() > 0
        assert r.stderr_bpd == pytest.approx(r.total_bpd.std(unbiased=True).item() / math.sqrt(9), rel=1e-12)
    assert math.isnan(elbo(data.denoiser(process), process, x0[:1], data_bits=None, generator=gen(1)).stderr_bpd)
    one = sampled_elbo(data.denoiser(process), process, x0[:1], strata=4, data_bits=None, generator=gen(2))
    assert all(math.isnan(r.stderr_bpd) for r in one.values())


def test_the_bound_is_above_the_true_nll_and_tightens_with_T():
    """Cosine schedule, T = 10, 100, 1000, the same data, Ho et al.'s variances beta_t (whose decoder
    variance beta_0 matches data much wider than the first noise level): each bound's closed form is
    above the exact NLL -log N(x; mu, s^2) and decreases to it with T; each Monte-Carlo bound agrees
    with its closed form and is never below the NLL of the same samples; the Monte-Carlo gaps never
    grow beyond their errors, the gap at T = 10 is significant and the one at T = 1000 is not."""
    N, D, mu, s = 4000, 2, 0.3, 0.5
    _, data = gaussian_setup(10, mu=mu, s=s, D=D)
    x0 = data.sample(N, generator=gen(0), dtype=F64)
    nll = (-data.log_prob(x0) / (D * LN2))                                  # per sample, bits/dim
    exact_nll = 0.5 * math.log2(2 * math.pi * math.e * s ** 2)
    closed, gaps = [], []
    for T in (10, 100, 1000):
        process = DDPM(schedule="cosine", num_steps=T)
        terms, prior = closed_form_terms(process.betas.numpy(), mu, s, D, "large")
        closed.append((terms.sum() + prior) / (D * LN2))
        out = elbo(data.denoiser(process), process, x0, variance="large", data_bits=None, generator=gen(T),
                   batch_steps=50)
        gap = out.total_bpd - nll
        gaps.append((gap.mean().item(), gap.std().item() / math.sqrt(N)))
        assert abs(out.mean_bpd - closed[-1]) < 4 * out.stderr_bpd
        assert gap.mean().item() > -3 * gaps[-1][1]
    assert closed[0] > closed[1] > closed[2] > exact_nll
    assert closed[2] - exact_nll < 0.002                                    # nearly tight at T = 1000
    for (g1, e1), (g2, e2) in zip(gaps, gaps[1:]):
        assert g1 - g2 > -3 * math.hypot(e1, e2), gaps
    assert gaps[0][0] > 3 * gaps[0][1] and abs(gaps[2][0]) < 3 * gaps[2][1], gaps   # loose at 10, tight at 1000


CONTINUOUS = [VPSDE(), SubVPSDE(), VESDE(), EDM()]


def chain_closed_form(process, num_steps, mu, s, D, variance="small"):
    """The closed-form terms (nats) of the default chain of a continuous process, and its gap to
    the data's entropy computed the other way (gaussian_elbo.chain_gap)."""
    ts = chain_timesteps(process, num_steps)[:-1].flip(0)               # t_1 < ... < t_K
    alpha, sigma = process.alpha(ts).numpy(), process.sigma(ts).numpy()
    terms, prior, parts = closed_form_chain_terms(alpha, sigma, mu, s, D, variance,
                                                  prior_std=process.prior_std)
    steps, prior_gap = chain_gap(alpha, sigma, mu, s, D, parts, prior_std=process.prior_std)
    return terms, prior, steps, prior_gap


@pytest.mark.parametrize("process", CONTINUOUS, ids=lambda p: type(p).__name__)
def test_continuous_processes_get_the_default_chain_and_its_closed_form(process):
    """A continuous process with no timesteps: elbo evaluates the chain_timesteps grid (1000 steps
    uniform in log-SNR) and, on data N(mu, s^2 I) with the exact denoiser, its Monte-Carlo bound
    lies within 4 standard errors of the closed form of that chain; the prior term is exact."""
    N, D, mu, s = 400, 2, 0.3, 0.5
    data = GaussianMixture([1.0], [[mu] * D], stds=s)
    x0 = data.sample(N, generator=gen(0), dtype=F64)
    out = elbo(data.denoiser(process), process, x0, data_bits=None, generator=gen(1), batch_steps=100)
    grid = chain_timesteps(process)
    assert grid.numel() == DEFAULT_CHAIN_STEPS + 1
    torch.testing.assert_close(out.timesteps, grid[:-1].flip(0), rtol=0, atol=0)
    lam = process.log_snr(grid[:-1])
    torch.testing.assert_close(lam.diff(), torch.full_like(lam[1:], (lam[-1] - lam[0]).item() / (lam.numel() - 1)),
                               rtol=1e-9, atol=1e-9)                        # uniform in log-SNR
    terms, prior, _, _ = chain_closed_form(process, DEFAULT_CHAIN_STEPS, mu, s, D)
    to_bpd = 1 / (D * LN2)
    assert abs(out.mean_bpd - (terms.sum() + prior) * to_bpd) < 4 * out.stderr_bpd
    se = out.sample_prior_bpd.std().item() / math.sqrt(N)
    assert abs(out.prior_bpd - prior * to_bpd) < 4 * se


@pytest.mark.parametrize("process", CONTINUOUS, ids=lambda p: type(p).__name__)
def test_the_continuous_chain_bound_converges_to_the_exact_nll(process):
    """The closed-form bound of the default chain minus the data's entropy (the exact expected NLL)
    equals the sum of the chain's Gaussian KLs (an independent formula; float64 sums of 10^3 terms of
    size <= 10 agree to 1e-9), so it is an upper bound; it falls with the number of steps towards
    the prior's and decoder's KL, its continuous-time limit, at first order: each step's KL is
    O(dlambda^2), so the excess is c / N + O(1 / N^2) and doubling N halves it up to a relative
    O(1 / N) (below 1e-2 at N >= 1000)."""
    D, mu, s = 2, 0.3, 0.5
    H = gaussian_entropy(s, D)
    excess = []
    for n in (10, 100, 1000, 2000, 4000):
        terms, prior, steps, prior_gap = chain_closed_form(process, n, mu, s, D)
        gap = terms.sum() + prior - H
        assert gap == pytest.approx(steps.sum() + prior_gap, abs=1e-9)
        assert (steps >= 0).all() and prior_gap >= 0
        excess.append(gap - (steps[0] + prior_gap))                  # above the continuous-time limit
    assert all(a > b > 0 for a, b in zip(excess, excess[1:])), excess
    assert excess[3] / excess[2] == pytest.approx(0.5, abs=0.01)
    assert excess[4] / excess[3] == pytest.approx(0.5, abs=0.01)


def test_batch_steps_only_changes_the_batching():
    process, data = gaussian_setup(30)
    x0 = data.sample(20, generator=gen(0), dtype=F64)
    d = Denoiser(data.eps_model(process), process, "eps")
    one = elbo(d, process, x0, data_bits=None, generator=gen(5))
    many = elbo(d, process, x0, data_bits=None, generator=gen(5), batch_steps=7)
    torch.testing.assert_close(one.sample_terms_bpd, many.sample_terms_bpd, rtol=1e-10, atol=1e-12)


def test_explicit_variances_and_shorter_chains():
    """A (T,) tensor equal to the small table reproduces variance="small"; a strided grid gives one
    term per step of the grid, the decoder at its first step and the prior at its last."""
    from scorekit.variances import fixed_variance

    process, data = gaussian_setup(40)
    x0 = data.sample(50, generator=gen(0), dtype=F64)
    den = data.denoiser(process)
    t = torch.arange(40, dtype=F64)
    table = fixed_variance(process, t, torch.cat([torch.tensor([-1.0], dtype=F64), t[:-1]]), "small")
    a = elbo(den, process, x0, variance="small", data_bits=None, generator=gen(2))
    b = elbo(den, process, x0, variance=table, data_bits=None, generator=gen(2))
    torch.testing.assert_close(a.sample_terms_bpd, b.sample_terms_bpd, rtol=0, atol=0)
    short = elbo(den, process, x0, data_bits=None, generator=gen(2), timesteps=[39, 29, 19, 9, -1])
    assert short.terms_bpd.shape == (4,) and short.timesteps.tolist() == [9.0, 19.0, 29.0, 39.0]


@pytest.mark.parametrize("variance", ["small", "large"])
def test_a_strided_grid_is_the_chain_of_its_own_steps(variance):
    """The bound of a strided grid of T = 1000 (10 steps, trailing) is the closed form of the chain
    of its own steps: each step's KL, the prior, and a decoder at its first step t_1 = 99 whose
    "small" variance is beta~ of the grid's next step 199 -> 99 (improved-diffusion's clip of a
    respaced chain; beta~_1 of the whole chain would be ~100x too narrow for x_0 | x_99)."""
    N, D, mu, s = 2000, 2, 0.3, 0.5
    process, data = gaussian_setup(1000, mu=mu, s=s, D=D)
    x0 = data.sample(N, generator=gen(0), dtype=F64)
    grid = torch.arange(999, -1, -100, dtype=F64).tolist() + [-1]
    out = elbo(data.denoiser(process), process, x0, variance=variance, data_bits=None, generator=gen(1),
               timesteps=grid, batch_steps=10)
    ts = torch.tensor(grid[:-1][::-1], dtype=F64)
    terms, prior, _ = closed_form_chain_terms(process.alpha(ts).numpy(), process.sigma(ts).numpy(), mu, s, D,
                                              variance)
    to_bpd = 1 / (D * LN2)
    se = out.sample_terms_bpd.std(0) / math.sqrt(N)
    z = (out.terms_bpd - torch.from_numpy(terms) * to_bpd).abs() / se
    assert z.max() < 4.5, z
    assert abs(out.mean_bpd - (terms.sum() + prior) * to_bpd) < 4 * out.stderr_bpd


def test_eight_bit_images_under_a_uniform_decoder_limit():
    """8-bit data: bits/dim of any model lie above 0; with the exact denoiser of the data's Gaussian
    fit the bound is finite and the decoder term is the discretised one (checked against a direct
    per-pixel scipy computation of its first step)."""
    process = DDPM(schedule="cosine", num_steps=20)
    k = torch.randint(0, 256, (6, 1, 4, 4), generator=gen(0))
    x0 = (2 * k / 255 - 1).to(F64)
    fit = GaussianMixture([1.0], [[0.0] * 16], stds=0.6)
    den = lambda x, t: fit.denoiser(process)(x.reshape(x.shape[0], -1), t).reshape(x.shape)
    out = elbo(den, process, x0, generator=gen(1))
    assert torch.isfinite(out.total_bpd).all() and (out.total_bpd > 0).all()
    # redo the decoder term by hand: same noise (the last draw of the generator), scipy bins
    g = gen(1)
    for _ in range(19):
        torch.randn(x0.shape, generator=g, dtype=F64)
    eps = torch.randn(x0.shape, generator=g, dtype=F64)
    ab0 = (1 - process.betas[0]).item()
    x1 = math.sqrt(ab0) * x0 + math.sqrt(1 - ab0) * eps
    mean = den(x1, 0).numpy()
    ab = torch.cumprod(1 - process.betas, 0)
    S0 = (process.betas[1] * (1 - ab[0]) / (1 - ab[1])).item()
    p = np.vectorize(lambda v, m: scipy_bin_probability(v, m, math.sqrt(S0)))(x0.numpy(), mean)
    want = -np.log(p).reshape(6, -1).sum(1) / (16 * LN2)
    np.testing.assert_allclose(out.sample_terms_bpd[:, 0].numpy(), want, rtol=1e-8)


# --- the stratified estimate --------------------------------------------------------------------------

class ConstantHead:
    """A 'network' with a variance head: the exact eps of a mixture, then a constant raw output r."""

    def __init__(self, mixture, process, r):
        self.eps = mixture.eps_model(process)
        self.r = r
        self.calls = 0

    def __call__(self, x, t, y=None):
        self.calls += 1
        return torch.cat([self.eps(x, t), torch.full_like(x, self.r)], dim=1)


@pytest.mark.parametrize("strata", [9, [1, 40, 80, 98, 99, 100]])
def test_sampled_elbo_is_unbiased_for_the_whole_chain(strata):
    """Data N(mu, s^2 I), the exact denoiser, T = 100: the stratified estimate's mean lies within 4.5
    standard errors of the whole chain's closed form, for both fixed variances from the same draws, and
    so does each stratum's share; its prior term is the exact one of elbo. Single-step strata (the
    explicit edges end with two) are exact steps."""
    T, N, D, mu, s = 100, 3000, 2, 0.3, 0.5
    process, data = gaussian_setup(T, schedule="cosine", mu=mu, s=s, D=D)
    x0 = data.sample(N, generator=gen(0), dtype=F64)
    out = sampled_elbo(data.denoiser(process), process, x0, strata=strata, variances=("small", "large"),
                       data_bits=None, generator=gen(1), batch_size=700)
    assert list(out) == ["small", "large"]
    to_bpd = 1 / (D * LN2)
    full = elbo(data.denoiser(process), process, x0[:5], data_bits=None, generator=gen(2))
    for variance, r in out.items():
        assert isinstance(r, SampledElbo) and r.total_bpd.shape == (N,)
        terms, prior = closed_form_terms(process.betas.numpy(), mu, s, D, variance)
        assert abs(r.mean_bpd - (terms.sum() + prior) * to_bpd) < 4.5 * r.stderr_bpd
        edges = r.edges.tolist()
        assert edges[0] == 1 and edges[-1] == T and r.strata_bpd.shape == (len(edges) - 1,)
        want = torch.tensor([terms[a:b].sum() * to_bpd for a, b in zip(edges[:-1], edges[1:])], dtype=F64)
        se = r.sample_strata_bpd.std(0) / math.sqrt(N)
        assert ((r.strata_bpd - want).abs() <= 4.5 * se + 1e-12).all()
        decoder = r.total_bpd - r.sample_prior_bpd - r.sample_strata_bpd.sum(1)
        assert abs(decoder.mean().item() - r.decoder_bpd) < 1e-10
        assert abs(r.decoder_bpd - terms[0] * to_bpd) < 4.5 * r.stderr_bpd
        torch.testing.assert_close(r.sample_prior_bpd[:5], full.sample_prior_bpd)


def test_sampled_elbo_shares_one_network_call_per_stratum_and_batch():
    """M strata cost M + 1 calls per batch whatever the variances; a learned head stuck at r = 1 gives
    exactly the "large" estimate; one variance alone gives the same numbers as inside a tuple."""
    process = DDPM(schedule="cosine", num_steps=40)
    data = GaussianMixture([0.5, 0.5], [[-0.6, 0.2], [0.5, -0.3]], stds=0.3)
    x0 = data.sample(50, generator=gen(0), dtype=F64)
    head = ConstantHead(data, process, 1.0)
    learned = LearnedVarianceDenoiser(head, process, "eps")
    both = sampled_elbo(learned, process, x0, strata=6, variances=("learned", "large", "small"), data_bits=None,
                        generator=gen(4), batch_size=20)
    assert head.calls == 7 * 3
    torch.testing.assert_close(both["learned"].total_bpd, both["large"].total_bpd, rtol=1e-9, atol=1e-10)
    alone = sampled_elbo(data.denoiser(process), process, x0, strata=6, variances=("small",), data_bits=None,
                         generator=gen(4))
    torch.testing.assert_close(alone["small"].total_bpd, both["small"].total_bpd, rtol=1e-9, atol=1e-10)
    table = fixed_variance(process, both["small"].timesteps, both["small"].timesteps - 1, "small")
    named = sampled_elbo(data.denoiser(process), process, x0, strata=6, variances={"mine": table},
                         data_bits=None, generator=gen(4))
    torch.testing.assert_close(named["mine"].total_bpd, both["small"].total_bpd, rtol=1e-9, atol=1e-10)


def test_sampled_elbo_refuses_bad_inputs():
    process, data = gaussian_setup(10)
    den = data.denoiser(process)
    x = data.sample(4, generator=gen(0), dtype=F64)
    with pytest.raises(ScorekitError, match="generator"):
        sampled_elbo(den, process, x, data_bits=None)
    for strata, match in ((0, "between 1"), (10, "between 1"), ([0, 5, 10], "from 1"), ([1, 5, 5, 10], "strictly"),
                          ("many", "number of strata")):
        with pytest.raises(ScorekitError, match=match):
            sampled_elbo(den, process, x, strata=strata, data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="variance head"):
        sampled_elbo(den, process, x, strata=3, variances=("learned",), data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="analytic"):
        sampled_elbo(den, process, x, strata=3, variances=("analytic",), data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="non-empty"):
        sampled_elbo(den, process, x, strata=3, variances="small", data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="batch_size"):
        sampled_elbo(den, process, x, strata=3, data_bits=None, generator=gen(0), batch_size=0)


def test_bad_inputs_are_refused():
    process, data = gaussian_setup(10)
    den = data.denoiser(process)
    x = data.sample(4, generator=gen(0), dtype=F64)
    with pytest.raises(ScorekitError, match="generator"):
        elbo(den, process, x, data_bits=None)
    with pytest.raises(ScorekitError, match="levels"):
        elbo(den, process, x.clamp(-1, 1), generator=gen(0))
    with pytest.raises(ScorekitError, match=r"\[-1, 1\]"):
        elbo(den, process, 3 * torch.ones(2, 2, dtype=F64), generator=gen(0))
    with pytest.raises(ScorekitError, match="unknown variance"):
        elbo(den, process, x, variance="medium", data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="10 reverse"):
        elbo(den, process, x, variance=torch.ones(3), data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="variance head"):
        elbo(den, process, x, variance="learned", data_bits=None, generator=gen(0))
    with pytest.raises(ScorekitError, match="batch_steps"):
        elbo(den, process, x, data_bits=None, generator=gen(0), batch_steps=0)
