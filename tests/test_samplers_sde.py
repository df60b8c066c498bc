"""Langevin dynamics, annealed Langevin, the reverse-time SDE and predictor-corrector sampling,
against closed-form Gaussian laws, exact mixture scores and exact step identities.

(Their conformance on every process, from the prior with 250 steps, is in tests/test_samplers.py.)"""
import math

import pytest
import torch
from scipy.optimize import brentq

import scorekit
from scorekit import (DDPM, EDM, SAMPLERS, VESDE, ScorekitError, SimpleVE, annealed_langevin, ddpm, langevin,
                      make_timesteps, pc, reverse_diffusion, reverse_sde)
from scorekit.metrics.distribution import mode_weight_stderr, mode_weights
from scorekit.samplers.sde import langevin_corrector_step
from scorekit.toy import GaussianMixture, eight_gaussians, multiscale_2d


def gen(seed):
    return torch.Generator().manual_seed(seed)


# --- Langevin dynamics ------------------------------------------------------------------------------

def test_langevin_reaches_the_gaussian_law_with_its_known_step_bias():
    r"""Unadjusted Langevin on N(mu, Sigma) is the linear recursion
    x' = x - eta Sigma^{-1} (x - mu) + sqrt(2 eta) z, whose stationary law is exactly Gaussian with
    mean mu and, along each eigenvector of Sigma (eigenvalue lam), variance lam / (1 - eta / (2 lam)):
    the O(eta) bias of Langevin without a Metropolis correction. From a far start, 400 steps shrink
    the initial offset by (1 - eta / lam)^400 < 1e-8. Tolerances: 4 standard errors of a sample
    mean (sqrt(v / n)) and of a Gaussian sample variance (v sqrt(2 / (n - 1)))."""
    n, eta = 20000, 0.05
    th = math.radians(30)
    U = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=torch.float64)
    lam = torch.tensor([1.0, 0.25], dtype=torch.float64)
    mu = torch.tensor([1.0, -2.0], dtype=torch.float64)
    precision = U @ torch.diag(1 / lam) @ U.T
    score = lambda x: -(x - mu) @ precision
    x = langevin(score, torch.full((n, 2), 3.0, dtype=torch.float64), step_size=eta, num_steps=400,
                 generator=gen(0))
    v = lam / (1 - eta / (2 * lam))                                   # the chain's exact stationary variances
    z = (x - mu) @ U                                                  # coordinates along the eigenvectors
    assert torch.all(z.mean(0).abs() < 4 * torch.sqrt(v / n))
    var = z.var(0)
    se = v * math.sqrt(2 / (n - 1))
    assert torch.all((var - v).abs() < 4 * se), (var, v)
    assert abs(z[:, 0] @ z[:, 1] / n) < 4 * math.sqrt(v[0] * v[1] / n)   # uncorrelated along the eigenvectors
    # the bias is resolved: along the narrow direction (eta / (2 lam) = 10%) it is > 4 standard errors
    assert (var[1] - lam[1]).abs() > 4 * se[1]


def test_langevin_callback_and_arguments():
    seen = []
    x = torch.zeros(3, 2)
    langevin(lambda x: -x, x, step_size=0.1, num_steps=4, generator=gen(0),
             callback=lambda k, x, s: seen.append(k))
    assert seen == [0, 1, 2, 3]
    with pytest.raises(ScorekitError, match="step_size"):
        langevin(lambda x: -x, x, step_size=0.0, num_steps=4, generator=gen(0))
    with pytest.raises(ScorekitError, match="num_steps"):
        langevin(lambda x: -x, x, step_size=0.1, num_steps=-1, generator=gen(0))
    with pytest.raises(ScorekitError, match="pass generator="):
        langevin(lambda x: -x, x, step_size=0.1, num_steps=4, generator=None)
    with pytest.raises(ScorekitError, match="strictly decreasing"):
        annealed_langevin(lambda x, s: -x, x, [1.0, 2.0], steps_per_sigma=2, epsilon=0.1, generator=gen(0))
    with pytest.raises(ScorekitError, match="positive"):
        annealed_langevin(lambda x, s: -x, x, [1.0, 0.0], steps_per_sigma=2, epsilon=0.1, generator=gen(0))
    with pytest.raises(ScorekitError, match="epsilon"):
        annealed_langevin(lambda x, s: -x, x, [1.0], steps_per_sigma=2, epsilon=-1, generator=gen(0))
    with pytest.raises(ScorekitError, match="steps_per_sigma"):
        annealed_langevin(lambda x, s: -x, x, [1.0], steps_per_sigma=0, epsilon=0.1, generator=gen(0))


def test_annealed_langevin_on_gaussian_data_with_denoising():
    r"""Data N(0, s^2): p_sigma = N(0, v) with v = s^2 + sigma^2, score -x / v. Annealed Langevin
    ends with 200 steps of eta = alpha_L / 2 = epsilon / 2 at sigma_L, i.e. in the chain's exact
    stationary law N(0, v / (1 - eta / (2 v))) (contraction (1 - eta / v)^200 < 1e-3 of the
    previous level's offset). The Tweedie step x + sigma_L^2 score = x s^2 / v then scales the
    variance by (s^2 / v)^2. Tolerance: 4 standard errors of a Gaussian sample variance (1%); the
    step bias eta / (2 v) is 5%, so a step of alpha_L instead of alpha_L / 2 would fail."""
    s, n, epsilon = 1.0, 20000, 0.25
    sigmas = [5.0, 2.0, 1.0, 0.5]
    score = lambda x, sigma: -x / (s ** 2 + sigma ** 2)
    x0 = 10 * torch.rand(n, 1, generator=gen(1), dtype=torch.float64) - 5
    seen = []
    x = annealed_langevin(score, x0, sigmas, steps_per_sigma=200, epsilon=epsilon, generator=gen(2),
                          callback=lambda k, sigma, x, sc: seen.append((k, sigma)))
    v = s ** 2 + sigmas[-1] ** 2
    expected = v / (1 - epsilon / 2 / (2 * v)) * (s ** 2 / v) ** 2
    assert abs(x.var().item() - expected) < 4 * expected * math.sqrt(2 / (n - 1))
    assert abs(x.mean().item()) < 4 * math.sqrt(expected / n)
    assert [k for k, _ in seen] == list(range(4 * 200 + 1)) and seen[-1][1] == sigmas[-1]
    raw = annealed_langevin(score, x0, sigmas, steps_per_sigma=200, epsilon=epsilon, generator=gen(2),
                            denoise=False)
    assert torch.allclose(x, raw * s ** 2 / v, atol=1e-12)          # same chain, then only the Tweedie step


# --- low-density regions: plain Langevin gets mode weights wrong, annealing fixes them ----------------

def two_modes():
    """0.2 N(-5, 1) + 0.8 N(5, 1): between the modes the density falls by exp(-12.5)."""
    return GaussianMixture([0.2, 0.8], [[-5.0], [5.0]], stds=1.0)


def test_plain_langevin_keeps_the_initial_basins_annealing_finds_the_weights():
    r"""Song & Ermon (2019, Section 3.2.2): the score says nothing about the relative mass of two
    modes separated by a low-density region. From uniform points on [-10, 10], plain Langevin
    leaves each chain in the basin where it starts, so the weight of the right mode is the share of
    starting points right of the score's zero x* (found with brentq): (10 - x*) / 20 ~ 0.507, not
    0.8. Annealed Langevin and the reverse SDE recover 0.8. Tolerances: 4 binomial standard
    errors; plain Langevin is > 20 standard errors from the truth. (Annealed Langevin keeps a small
    deficit, 0.772-0.789 over several schedules with 8000 samples: about 1.5 standard errors at
    this sample size; see docs/langevin.md.)"""
    mix = two_modes()
    n = 2000
    x_init = 20 * torch.rand(n, 1, generator=gen(10), dtype=torch.float64) - 10
    se = mode_weight_stderr(mix, n)[1].item()

    plain = langevin(mix.score, x_init, step_size=0.1, num_steps=300, generator=gen(11))
    x_star = brentq(lambda u: mix.score(torch.tensor([[u]], dtype=torch.float64)).item(), -4.0, 4.0)
    basin_share = (10 - x_star) / 20
    w_plain = mode_weights(plain, mix)[1].item()
    assert abs(w_plain - basin_share) < 4 * math.sqrt(basin_share * (1 - basin_share) / n)
    assert abs(w_plain - 0.8) > 20 * se

    sigmas = torch.logspace(math.log10(20), math.log10(0.1), 20, dtype=torch.float64).tolist()
    annealed = annealed_langevin(lambda x, sigma: mix.score(x, 1.0, sigma), x_init, sigmas,
                                 steps_per_sigma=50, epsilon=0.002, generator=gen(12))
    assert abs(mode_weights(annealed, mix)[1].item() - 0.8) < 4 * se

    p = VESDE(0.01, 50.0)
    x_T = p.prior_sample((n, 1), generator=gen(13), dtype=torch.float64)
    sde = reverse_sde(mix.denoiser(p), p, x_T, make_timesteps(p, 200, "log_snr"), generator=gen(14))
    assert abs(mode_weights(sde, mix)[1].item() - 0.8) < 4 * se


# --- exact identities of the steps --------------------------------------------------------------------

@pytest.mark.parametrize("process", [VESDE(), EDM(), SimpleVE(100)], ids=repr)
def test_reverse_diffusion_is_ancestral_large_variance_when_alpha_is_one(process):
    """With alpha = 1 the reverse-diffusion step x + sigma_{t|s}^2 score + sigma_{t|s} z is DDPM's
    ancestral step with the variance sigma_{t|s}^2: a whole run agrees on identical noise."""
    mix = eight_gaussians()
    x_T = process.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    ts = make_timesteps(process, 40)
    a = reverse_diffusion(mix.denoiser(process), process, x_T, ts, generator=gen(1))
    b = ddpm(mix.denoiser(process), process, x_T, ts, variance="large", generator=gen(1))
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_reverse_diffusion_on_ddpm_is_the_ancestral_step_to_first_order():
    r"""On DDPM (one step t -> s = t - 1, a = sqrt(1 - beta_t), G^2 = beta_t) in score form, Ho et
    al.'s ancestral step with the large variance is (x + beta s) / a + sqrt(beta) z and Song et
    al.'s reverse diffusion is (2 - a) x + beta s + sqrt(beta) z. On identical noise they differ by
    exactly -((1 - a) / a) ((1 - a) x + beta s), which is O(beta^2 |x| + beta^2 |s|)."""
    mix = multiscale_2d()
    p = DDPM()
    d = mix.denoiser(p)
    for t in (999, 500, 50, 1):
        x = p.sample_marginal(mix.sample(256, generator=gen(t), dtype=torch.float64), t, generator=gen(t + 1))
        ts = torch.tensor([t, t - 1], dtype=torch.float64)
        rd = reverse_diffusion(d, p, x, ts, generator=gen(7))
        anc = ddpm(d, p, x, ts, variance="large", generator=gen(7))
        z = torch.randn(x.shape, generator=gen(7), dtype=torch.float64)      # the noise both drew
        beta = p.betas[t].item()
        a = math.sqrt(1 - beta)
        score = mix.score(x, p.alpha(t).item(), p.sigma(t).item())           # the exact score
        assert torch.allclose(anc, (x + beta * score) / a + math.sqrt(beta) * z, atol=1e-10)
        assert torch.allclose(rd, (2 - a) * x + beta * score + math.sqrt(beta) * z, atol=1e-10)
        assert torch.allclose(rd - anc, -((1 - a) / a) * ((1 - a) * x + beta * score), atol=1e-10)
    # into the data (t = 0 -> -1) both return E[x_0 | x_t]
    x = p.sample_marginal(mix.sample(64, generator=gen(3), dtype=torch.float64), 0, generator=gen(4))
    ts = torch.tensor([0.0, -1.0], dtype=torch.float64)
    exact = mix.posterior_mean(x, p.alpha(0.0).item(), p.sigma(0.0).item())
    for out in (reverse_diffusion(d, p, x, ts, generator=gen(5)),
                ddpm(d, p, x, ts, variance="large", generator=gen(5))):
        assert torch.allclose(out, exact, atol=1e-12)


def test_predictor_corrector_options_compose():
    """pc without a corrector is its predictor alone (same noise, same result); pc with the
    reverse-diffusion predictor and one Langevin step per time evaluates the network
    steps * (1 + corrector_steps) times; with predictor 'none' it is steps * corrector_steps + 1."""
    mix = eight_gaussians()
    p = VESDE()
    x_T = p.prior_sample((32, 2), generator=gen(0), dtype=torch.float64)
    ts = make_timesteps(p, 20, "log_snr")
    d = mix.denoiser(p)
    for predictor, alone in (("reverse_diffusion", reverse_diffusion), ("euler_maruyama", reverse_sde)):
        a = pc(d, p, x_T, ts, predictor=predictor, corrector="none", generator=gen(1))
        assert torch.equal(a, alone(d, p, x_T, ts, generator=gen(1)))
    a = pc(d, p, x_T, ts, predictor="ddim", corrector="none")
    assert torch.allclose(a, scorekit.ddim(d, p, x_T, ts), atol=1e-10)
    for options, nfe in (({"corrector_steps": 1}, 40), ({"corrector_steps": 3}, 80),
                         ({"predictor": "none", "corrector_steps": 2}, 41)):
        seen = []
        pc(d, p, x_T, ts, generator=gen(2), callback=lambda i, t, x, x0: seen.append(i), **options)
        assert seen == list(range(nfe)), options


def test_langevin_corrector_rules_agree_with_the_formula():
    """One corrector step, on identical noise, against eps = 2 alpha_i (snr ||z|| / ||s||)^2 with
    the norms per sample, batch-averaged, and replaced by their expectations (eps = 2 snr^2 sigma^2)."""
    mix = eight_gaussians()
    p = VESDE()
    t = 0.3
    alpha, sigma = p.alpha(t).item(), p.sigma(t).item()
    x = p.sample_marginal(mix.sample(16, generator=gen(0), dtype=torch.float64), t, generator=gen(1))
    x0 = mix.denoiser(p)(x, t)
    s = mix.score(x, alpha, sigma)
    z = torch.randn(x.shape, generator=gen(2), dtype=torch.float64)
    zn, sn = z.norm(dim=1, keepdim=True), s.norm(dim=1, keepdim=True)
    for rule, eps in (("sample", 2 * 0.9 * (0.2 * zn / sn) ** 2),
                      ("batch", 2 * 0.9 * (0.2 * zn.mean() / sn.mean()) ** 2),
                      ("expected", torch.tensor(2 * 0.9 * (0.2 * sigma) ** 2, dtype=torch.float64))):
        out = langevin_corrector_step(x, x0, alpha, sigma, 0.2, 0.9, gen(2), rule)
        assert torch.allclose(out, x + eps * s + torch.sqrt(2 * eps) * z, atol=1e-10), rule


# --- reproducibility and bad input ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["reverse_sde", "reverse_diffusion", "pc"])
def test_same_seed_same_samples(name):
    mix = eight_gaussians()
    p = DDPM()
    run = lambda seed: scorekit.sample(mix.eps_model(p), p.prior_sample((16, 2), generator=gen(3)), betas=p.betas,
                                       sampler=name, num_steps=20, generator=gen(seed))
    assert torch.equal(run(4), run(4))
    assert not torch.equal(run(4), run(5))


@pytest.mark.parametrize("kwargs,msg", [
    (dict(sampler="pc", snr=-0.1), "snr must be a positive"),
    (dict(sampler="pc", snr=0.0), "snr must be a positive"),
    (dict(sampler="pc", predictor="heun"), "unknown predictor 'heun'"),
    (dict(sampler="pc", corrector="ald"), "unknown corrector 'ald'"),
    (dict(sampler="pc", corrector_steps=-1), "corrector_steps must be an integer"),
    (dict(sampler="pc", corrector_steps=1.5), "pc sampler option corrector_steps=1.5: expected a whole number"),
    (dict(sampler="pc", snr_norm="max"), "unknown snr_norm 'max'"),
    (dict(sampler="pc", predictor="none", corrector="none"), "needs a corrector"),
    (dict(sampler="reverse_sde", snr=0.1), "has no option snr"),
])
def test_bad_options_are_named(kwargs, msg):
    with pytest.raises(ScorekitError, match=msg):
        scorekit.sample(lambda x, t: torch.zeros_like(x), torch.zeros(2, 3), betas=DDPM().betas,
                        num_steps=10, generator=gen(0), **kwargs)


@pytest.mark.parametrize("name", ["reverse_sde", "reverse_diffusion", "pc"])
def test_noise_needs_a_generator(name):
    with pytest.raises(ScorekitError, match="pass generator="):
        SAMPLERS[name](lambda x, t: torch.zeros_like(x), DDPM(), torch.zeros(2, 3), make_timesteps(DDPM(), 10))
