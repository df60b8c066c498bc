"""Training objectives: every weighting equals the paper's formula computed by hand, the ELBO terms
add up to the exact KL divergences of Gaussian data, the exact denoiser of a mixture is the minimum,
the weightings are one objective across prediction types, and loss-aware time sampling is unbiased."""
import math

import numpy as np
import pytest
import torch

from scorekit import DDPM, EDM, VESDE, VPSDE, ScorekitError, SimpleVE, SubVPSDE
from scorekit.losses import (WEIGHTINGS, ImportanceTimesteps, LogNormalTimesteps, UniformTimesteps,
                             diffusion_loss, eps_weight, loss_weight)
from scorekit.toy import GaussianMixture, multiscale_2d

from gaussian_elbo import closed_form_terms

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


class FixedTimes:
    """A stub time sampler: the given times, in order, with the given weights (ones by default)."""

    def __init__(self, t, weight=None):
        self.t = torch.as_tensor(t)
        self.weight = torch.ones(self.t.shape, dtype=F64) if weight is None else torch.as_tensor(weight)

    def sample(self, n, generator):
        assert n == self.t.numel()
        return self.t.clone(), self.weight.clone()


def affine_net(x, t, y=None):
    """A tiny deterministic 'network' that ignores t."""
    return 0.6 * x + 0.1


def hand_ddpm(process):
    """alpha_t = 1 - beta_t and alpha_bar_t = prod_{s<=t} alpha_s, straight from the betas (numpy)."""
    betas = process.betas.numpy()
    alphas = 1.0 - betas
    return betas, alphas, np.cumprod(alphas)


def eps_drawn(seed, shape, dtype=F64):
    """The noise diffusion_loss draws: with a stub time sampler it is the generator's first draw."""
    return torch.randn(shape, generator=gen(seed), dtype=dtype)


def batch(n=4, d=3, seed=1):
    return torch.randn(n, d, generator=gen(seed), dtype=F64)


# --- each weighting against hand-computed values ------------------------------------------------
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_simple_is_the_mse_of_the_network_target(kind):
    process = DDPM()
    _, _, ab = hand_ddpm(process)
    t = torch.tensor([0, 10, 500, 999])
    x0 = batch()
    out = diffusion_loss(affine_net, process, x0, prediction_type=kind, generator=gen(7),
                         timestep_sampler=FixedTimes(t))
    eps = eps_drawn(7, x0.shape)
    a = torch.from_numpy(np.sqrt(ab[t.numpy()]))[:, None]
    s = torch.from_numpy(np.sqrt(1 - ab[t.numpy()]))[:, None]
    x_t = a * x0 + s * eps
    target = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[kind]
    want = ((0.6 * x_t + 0.1 - target) ** 2).mean(1)
    torch.testing.assert_close(out.per_sample, want, rtol=1e-12, atol=0)
    torch.testing.assert_close(out.loss, want.mean(), rtol=1e-12, atol=0)
    assert torch.equal(out.t, t) and out.t.dtype == torch.long
    torch.testing.assert_close(out.weight, torch.ones(4, dtype=F64))


@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_min_snr_hand_computed(kind):
    """Hang et al. 2023: min(SNR, g)/SNR on the eps-MSE, min(SNR, g) on x0, min(SNR, g)/(SNR+1) on v."""
    process = DDPM()
    _, _, ab = hand_ddpm(process)
    t = torch.tensor([5, 60, 200, 900])          # SNR from ~3000 down to ~1e-4: both sides of gamma
    gamma = 3.0
    x0 = batch()
    out = diffusion_loss(affine_net, process, x0, prediction_type=kind, weighting="min_snr",
                         min_snr_gamma=gamma, generator=gen(3), timestep_sampler=FixedTimes(t))
    eps = eps_drawn(3, x0.shape)
    abt = ab[t.numpy()]
    snr = torch.from_numpy(abt / (1 - abt))
    assert (snr > gamma).any() and (snr < gamma).any()
    a, s = torch.from_numpy(np.sqrt(abt))[:, None], torch.from_numpy(np.sqrt(1 - abt))[:, None]
    x_t = a * x0 + s * eps
    target = {"eps": eps, "x0": x0, "v": a * eps - s * x0}[kind]
    mse = ((0.6 * x_t + 0.1 - target) ** 2).mean(1)
    m = torch.clamp(snr, max=gamma)
    weight = {"eps": m / snr, "x0": m, "v": m / (snr + 1)}[kind]
    torch.testing.assert_close(out.per_sample, weight * mse, rtol=1e-10, atol=0)


def test_lambda_weighting_hand_computed():
    """Song et al. 2021: lambda(t) E||s_theta - grad log q(x_t|x_0)||^2, grad log q = -eps / sigma; the
    default lambda = sigma^2 is the eps-MSE; lambda = g^2 = beta(t) for the VP SDE."""
    process = VPSDE(beta_min=0.1, beta_max=20.0)
    t = torch.tensor([0.01, 0.2, 0.5, 0.95], dtype=F64)
    B = 0.1 * t + 0.5 * 19.9 * t ** 2
    alpha, sigma = torch.exp(-B / 2)[:, None], torch.sqrt(1 - torch.exp(-B))[:, None]
    x0 = batch()
    eps = eps_drawn(4, x0.shape)
    x_t = alpha * x0 + sigma * eps
    score_err2 = ((0.6 * x_t + 0.1 + eps / sigma) ** 2).mean(1)
    out = diffusion_loss(affine_net, process, x0, prediction_type="score", weighting="lambda",
                         generator=gen(4), timestep_sampler=FixedTimes(t))
    torch.testing.assert_close(out.per_sample, sigma[:, 0] ** 2 * score_err2, rtol=1e-10, atol=0)
    out = diffusion_loss(affine_net, process, x0, prediction_type="score", weighting="lambda",
                         lambda_fn=lambda tt: 0.1 + tt * 19.9, generator=gen(4),
                         timestep_sampler=FixedTimes(t))
    torch.testing.assert_close(out.per_sample, (0.1 + t * 19.9) * score_err2, rtol=1e-10, atol=0)
    # the default on an eps net is plain L_simple
    eps_net = lambda x, tt, y: 0.3 * x
    a = diffusion_loss(eps_net, process, x0, weighting="lambda", generator=gen(4), timestep_sampler=FixedTimes(t))
    b = diffusion_loss(eps_net, process, x0, weighting="simple", generator=gen(4), timestep_sampler=FixedTimes(t))
    torch.testing.assert_close(a.per_sample, b.per_sample, rtol=1e-12, atol=0)


def test_edm_weighting_hand_computed():
    """Karras et al. 2022: lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2 on the x0-MSE."""
    process = EDM(sigma_data=0.5)
    sig = torch.tensor([0.002, 0.1, 1.0, 40.0], dtype=F64)
    x0 = batch()
    eps = eps_drawn(5, x0.shape)
    x_t = x0 + sig[:, None] * eps
    mse = ((0.6 * x_t + 0.1 - x0) ** 2).mean(1)
    out = diffusion_loss(affine_net, process, x0, prediction_type="x0", weighting="edm",
                         generator=gen(5), timestep_sampler=FixedTimes(sig))
    want = (sig ** 2 + 0.25) / (sig * 0.5) ** 2 * mse
    torch.testing.assert_close(out.per_sample, want, rtol=1e-10, atol=0)
    # an explicit sigma_data overrides the process's
    out = diffusion_loss(affine_net, process, x0, prediction_type="x0", weighting="edm", sigma_data=1.0,
                         generator=gen(5), timestep_sampler=FixedTimes(sig))
    torch.testing.assert_close(out.per_sample, (sig ** 2 + 1) / sig ** 2 * mse, rtol=1e-10, atol=0)


# --- the ELBO ------------------------------------------------------------------------------------
def gaussian_kl(m1, v1, m2, v2):
    """KL(N(m1, v1 I) || N(m2, v2 I)) summed over the last dimension."""
    return (0.5 * (torch.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1)).sum(-1)


@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
def test_ddpm_elbo_term_is_the_kl_per_sample(variance, kind):
    """per_sample = KL(q(x_{t-1}|x_t,x_0) || N(mu_theta, s_t^2)) with Ho et al.'s eq. 7 (posterior) and
    eq. 11 (mu_theta from eps_theta), for any network; at t = 0 the Gaussian decoder's NLL with
    s_0^2 = beta~_1 (improved-diffusion's clipping) for "small", beta_0 (Ho et al.) for "large"."""
    process = DDPM(schedule="linear", num_steps=100, beta_start=1e-3, beta_end=0.1)
    betas, alphas, ab = hand_ddpm(process)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post_var = betas * (1 - ab_prev) / (1 - ab)
    model_var = post_var.copy() if variance == "small" else betas.copy()
    if variance == "small":
        model_var[0] = post_var[1]
    t = torch.tensor([0, 1, 2, 30, 99, 0, 50, 98])
    x0 = torch.randn(8, 5, generator=gen(2), dtype=F64)
    seen = {}

    def eps_net(x, tt, y):                        # an imperfect noise prediction
        return 0.8 * x - 0.2 * torch.sin(3 * x)

    def net(x, tt, y):                            # the same prediction in the requested space
        seen["x_t"] = x
        a = torch.from_numpy(np.sqrt(ab[tt.numpy()]))[:, None]
        s = torch.from_numpy(np.sqrt(1 - ab[tt.numpy()]))[:, None]
        e = eps_net(x, tt, y)
        x0_hat = (x - s * e) / a
        return {"eps": e, "x0": x0_hat, "v": a * e - s * x0_hat}[kind]

    out = diffusion_loss(net, process, x0, prediction_type=kind, weighting="elbo", elbo_variance=variance,
                         generator=gen(11), timestep_sampler=FixedTimes(t))
    x_t, tn = seen["x_t"], t.numpy()
    c = lambda arr: torch.from_numpy(arr[tn])[:, None]
    # posterior mean, Ho et al. eq. 7
    mu_tilde = c(np.sqrt(ab_prev) * betas / (1 - ab)) * x0 + c(np.sqrt(alphas) * (1 - ab_prev) / (1 - ab)) * x_t
    # model mean, Ho et al. eq. 11
    mu_theta = (x_t - c(betas / np.sqrt(1 - ab)) * eps_net(x_t, t, None)) / c(np.sqrt(alphas))
    want = gaussian_kl(mu_tilde, c(post_var), mu_theta, c(model_var))
    first = t == 0
    nll0 = (0.5 * (x0 - mu_theta) ** 2 / c(model_var) + 0.5 * torch.log(2 * math.pi * c(model_var))).sum(1)
    want = torch.where(first, nll0, want)
    torch.testing.assert_close(out.per_sample, want, rtol=1e-9, atol=1e-12)
    # and Ho et al.'s eq. 12 weight on the eps error, written out
    w = betas ** 2 / (2 * model_var * alphas * (1 - ab))
    torch.testing.assert_close(eps_weight(process, torch.arange(100), "elbo", elbo_variance=variance),
                               torch.from_numpy(w), rtol=1e-10, atol=0)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_elbo_sums_to_the_closed_form_kls_of_gaussian_data(variance):
    """Data N(mu, s^2 I), the exact denoiser: the Monte-Carlo mean of per_sample at each of the T
    steps, summed over t, equals sum_t E[KL_t] (+ the decoder term) in closed form; with the prior
    KL it bounds the exact -log p(x_0) = D/2 log(2 pi e s^2) from above."""
    T, D, mu, s = 1000, 2, 0.3, 0.5
    process = DDPM(num_steps=T)
    betas, _, ab = hand_ddpm(process)
    data = GaussianMixture([1.0], [[mu] * D], stds=s)
    eps_model = data.eps_model(process)
    net = lambda x, t, y: eps_model(x, t)
    # the terms of small t vary most (weight ~ 1 / (2 (t + 1))): give them more samples
    counts = torch.clamp(20000 // (torch.arange(T) + 1), min=40)
    t = torch.arange(T).repeat_interleave(counts)
    x0 = data.sample(t.numel(), generator=gen(0), dtype=F64)
    out = diffusion_loss(net, process, x0, weighting="elbo", elbo_variance=variance, generator=gen(1),
                         timestep_sampler=FixedTimes(t))
    per_t = torch.split(out.per_sample, counts.tolist())
    means = torch.stack([p.mean() for p in per_t])
    variances = torch.stack([p.var() for p in per_t]) / counts
    total, se = means.sum().item(), variances.sum().sqrt().item()
    want_terms, _ = closed_form_terms(betas, mu, s, D, variance)
    want = want_terms.sum()
    assert abs(total - want) < 4 * se, (total, want, se)
    assert se < 0.02 * want
    # the t = 0 term alone (a decoder NLL, not a KL)
    assert abs(means[0].item() - want_terms[0]) < 4 * variances[0].sqrt().item()
    # an upper bound on the exact negative log-likelihood
    var_T = ab[-1] * s ** 2 + 1 - ab[-1]
    prior_kl = D * 0.5 * (-math.log(var_T) + var_T + ab[-1] * mu ** 2 - 1)
    nll = D * 0.5 * math.log(2 * math.pi * math.e * s ** 2)
    assert want + prior_kl > nll
    assert total + prior_kl > nll - 4 * se


def test_continuous_elbo_weight_is_minus_half_dlogsnr_dt():
    """VDM eq. 17 in eps form: w_eps = -1/2 d log SNR / dt, checked by central differences."""
    for process in (VPSDE(), SubVPSDE(), VESDE(), EDM()):
        t = torch.linspace(process.t_min, process.t_max, 23, dtype=F64)[1:-1]
        h = 1e-6 * (process.t_max - process.t_min)
        dlam = (process.log_snr(t + h) - process.log_snr(t - h)) / (2 * h)
        torch.testing.assert_close(eps_weight(process, t, "elbo"), -0.5 * dlam, rtol=1e-6, atol=0)


@pytest.mark.parametrize("process", [VPSDE(), EDM()], ids=["VPSDE", "EDM"])
def test_continuous_elbo_integrates_to_the_closed_form(process):
    """For data N(mu, s^2 I_D) and the exact denoiser, E||x_0 - x0_hat||^2 = D s^2 / (1 + SNR s^2), so
    int -1/2 SNR'(t) E||x_0 - x0_hat||^2 dt = D/2 log((1 + SNR(t_min) s^2) / (1 + SNR(t_max) s^2)),
    whatever the schedule. Times are drawn uniformly in log-SNR with importance weights, which also
    checks that the sampler's weights enter the loss."""
    D, n, mu, s = 3, 20000, -0.4, 0.7
    data = GaussianMixture([1.0], [[mu] * D], stds=s)
    x0_model = data.x0_model(process)
    net = lambda x, t, y: x0_model(x, t)
    lam_hi, lam_lo = process.log_snr(process.t_min).item(), process.log_snr(process.t_max).item()
    lam = lam_lo + (lam_hi - lam_lo) * torch.rand(n, generator=gen(20), dtype=F64)
    t = process.t_from_log_snr(lam).clamp(process.t_min, process.t_max)
    h = 1e-7 * t
    dlam = (process.log_snr(t + h) - process.log_snr(t - h)) / (2 * h)
    # uniform on [t_min, t_max] has density 1/(t_max - t_min); ours is |dlam/dt| / (lam_hi - lam_lo)
    iw = (lam_hi - lam_lo) / ((process.t_max - process.t_min) * dlam.abs())
    x0 = data.sample(n, generator=gen(21), dtype=F64)
    out = diffusion_loss(net, process, x0, prediction_type="x0", weighting="elbo", generator=gen(22),
                         timestep_sampler=FixedTimes(t, iw))
    span = process.t_max - process.t_min
    estimate = span * out.loss.item()
    se = span * (out.weight * out.per_sample).std().item() / math.sqrt(n)
    want = D / 2 * math.log((1 + math.exp(lam_hi) * s ** 2) / (1 + math.exp(lam_lo) * s ** 2))
    assert abs(estimate - want) < 4 * se, (estimate, want, se)
    assert se < 0.02 * want


def test_simple_ve_elbo_uses_its_own_posterior():
    """SimpleVE: q(x_{t-1}|x_t,x_0) = N((1 - 1/t) x_t + x_0 / t, (1 - 1/t) I) and q(x_t|x_{t-1}) has
    variance 1; steps are 1..T with the decoder at t = 1 (s_1^2 = beta~_2 = 1/2 for "small", 1 for "large")."""
    process = SimpleVE(num_steps=50)
    t = torch.tensor([1, 2, 7, 50])
    x0 = batch()
    seen = {}

    def net(x, tt, y):
        seen["x_t"] = x
        return 0.5 * x

    for variance in ("small", "large"):
        out = diffusion_loss(net, process, x0, prediction_type="x0", weighting="elbo", elbo_variance=variance,
                             generator=gen(6), timestep_sampler=FixedTimes(t))
        tt = t.to(F64)[:, None]
        x_t = seen["x_t"]
        post_mean = (1 - 1 / tt) * x_t + x0 / tt
        model_mean = (1 - 1 / tt) * x_t + 0.5 * x_t / tt
        post_var = 1 - 1 / tt
        model_var = post_var if variance == "small" else torch.ones_like(tt)
        if variance == "small":                    # beta~_1 = 0: clipped to beta~_2 = 1/2
            model_var = torch.where(tt == 1, torch.full_like(tt, 0.5), model_var)
        kl = gaussian_kl(post_mean, post_var.clamp_min(1e-300), model_mean, model_var)
        nll = (0.5 * (x0 - model_mean) ** 2 / model_var + 0.5 * torch.log(2 * math.pi * model_var)).sum(1)
        want = torch.where(t == 1, nll, kl)
        torch.testing.assert_close(out.per_sample, want, rtol=1e-10, atol=1e-12)


# --- consistency across prediction types ------------------------------------------------------
def spaces_of(x0_net, process):
    """One x0 prediction f(x_t, t), seen by networks of each type (conversions written by hand)."""
    def make(kind):
        def net(x, t, y):
            t = t.to(F64)
            a = process.alpha(t).to(x.dtype)[:, None]
            s = process.sigma(t).to(x.dtype)[:, None]
            f = x0_net(x, t)
            e = (x - a * f) / s
            return {"x0": f, "eps": e, "v": a * e - s * f, "score": -e / s}[kind]
        return net
    return make


@pytest.mark.parametrize("weighting", ["elbo", "min_snr", "lambda", "edm"])
@pytest.mark.parametrize("process", [DDPM(), VPSDE(), EDM(), VESDE()], ids=["DDPM", "VPSDE", "EDM", "VESDE"])
def test_weightings_are_one_objective_across_prediction_types(weighting, process):
    """The same underlying error costs the same under eps, x0, v and score networks; L_simple does not
    have this property (so the comparison can fail)."""
    x0_net = lambda x, t: 0.7 * torch.tanh(x) + 0.05
    make = spaces_of(x0_net, process)
    x0 = torch.randn(64, 3, generator=gen(9), dtype=F64)
    losses = {}
    for kind in ("eps", "x0", "v", "score"):
        losses[kind] = diffusion_loss(make(kind), process, x0, prediction_type=kind, weighting=weighting,
                                      min_snr_gamma=2.0, generator=gen(10)).per_sample
    for kind in ("x0", "v", "score"):
        torch.testing.assert_close(losses[kind], losses["eps"], rtol=1e-7, atol=1e-12)
    simple = {k: diffusion_loss(make(k), process, x0, prediction_type=k, generator=gen(10)).per_sample
              for k in ("eps", "x0")}
    assert not torch.allclose(simple["eps"], simple["x0"], rtol=1e-3)


@pytest.mark.parametrize("process", [DDPM(), VPSDE()], ids=["DDPM", "VPSDE"])
@pytest.mark.parametrize("kind", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["simple", "min_snr"])
def test_exact_mixture_denoiser_is_the_minimum(process, kind, weighting):
    """The exact E[target | x_t] of a Gaussian mixture attains the irreducible loss: adding any
    constant delta to its output raises the expected loss by exactly E[w(t)] mean(delta^2) (the
    cross term has mean zero), measured with common random numbers and a tolerance of 4 standard
    errors of the cross term."""
    mixture = multiscale_2d()
    model = {"eps": mixture.eps_model, "x0": mixture.x0_model, "v": mixture.v_model}[kind](process)
    exact = lambda x, t, y: model(x, t)
    delta = torch.tensor([0.05, -0.03], dtype=F64)
    perturbed = lambda x, t, y: model(x, t) + delta
    n = 4000
    x0 = mixture.sample(n, generator=gen(30), dtype=F64)
    a = diffusion_loss(exact, process, x0, prediction_type=kind, weighting=weighting, generator=gen(31))
    b = diffusion_loss(perturbed, process, x0, prediction_type=kind, weighting=weighting, generator=gen(31))
    assert torch.equal(a.t, b.t)
    diff = b.per_sample - a.per_sample
    # per sample: w (mean(delta^2) + 2 mean(delta * (out - target))); the second part has mean zero
    w = loss_weight(process, a.t.to(F64), weighting, kind)
    excess = w * (delta ** 2).mean()
    cross = diff - excess
    se = cross.std() / math.sqrt(n)
    assert abs(cross.mean()) < 4 * se, (cross.mean(), se)
    assert b.loss > a.loss
    # the exact models of every type carry the same x0_hat: under min_snr their losses coincide
    if weighting == "min_snr" and kind != "eps":
        ref = diffusion_loss(lambda x, t, y: mixture.eps_model(process)(x, t), process, x0,
                             weighting="min_snr", generator=gen(31))
        torch.testing.assert_close(a.per_sample, ref.per_sample, rtol=1e-6, atol=1e-9)


# --- time samplers --------------------------------------------------------------------------
def test_uniform_times():
    t, w = UniformTimesteps(DDPM(num_steps=10)).sample(20000, gen(0))
    assert t.dtype == torch.long and t.min() == 0 and t.max() == 9 and torch.all(w == 1)
    counts = torch.bincount(t, minlength=10).to(F64)
    chi2 = ((counts - 2000) ** 2 / 2000).sum()
    assert chi2 < 27.9                       # 99.9% quantile of chi^2 with 9 degrees of freedom
    t, _ = UniformTimesteps(SimpleVE(5)).sample(1000, gen(1))
    assert set(t.tolist()) == {1, 2, 3, 4, 5}
    process = EDM()
    t, _ = UniformTimesteps(process).sample(20000, gen(2))
    assert t.dtype == F64 and t.min() >= process.t_min and t.max() <= process.t_max
    mid, half = (process.t_min + process.t_max) / 2, (process.t_max - process.t_min) / 2
    assert abs(t.mean() - mid) < 4 * half / math.sqrt(3 * 20000)


def test_lognormal_times_follow_edm():
    n = 20000
    t, w = LogNormalTimesteps(EDM(), p_mean=-1.2, p_std=1.2).sample(n, gen(3))
    log_t = torch.log(t)
    assert abs(log_t.mean() + 1.2) < 4 * 1.2 / math.sqrt(n)
    assert abs(log_t.std() - 1.2) < 4 * 1.2 / math.sqrt(2 * n)
    assert torch.all(w == 1)
    # on a VP process, sigma / alpha is log-normal
    process = VPSDE()
    t, _ = LogNormalTimesteps(process, p_mean=0.0, p_std=0.5).sample(n, gen(4))
    log_ratio = torch.log(process.sigma(t) / process.alpha(t))
    assert abs(log_ratio.mean()) < 4 * 0.5 / math.sqrt(n) + 1e-3


def warm(sampler, means, rounds, seed=0):
    """Feed every step `rounds` losses L = m_t (1 + 0.5 xi), xi ~ N(0, 1)."""
    g = gen(seed)
    K = means.numel()
    for _ in range(rounds):
        t = torch.arange(K)
        sampler.update(t, means * (1 + 0.5 * torch.randn(K, generator=g, dtype=F64)))


def test_importance_sampler_is_uniform_until_warm_and_then_follows_the_second_moment():
    K, H, u = 20, 4, 0.01
    sampler = ImportanceTimesteps(DDPM(num_steps=K), history=H, uniform_prob=u)
    means = torch.linspace(0.1, 3.0, K, dtype=F64)
    warm(sampler, means, H - 1)
    sampler.update(torch.arange(K - 1), means[:-1])            # all but the last step full
    assert not sampler.warmed_up()
    torch.testing.assert_close(sampler.probabilities(), torch.full((K,), 1 / K, dtype=F64))
    sampler.update(torch.tensor([K - 1]), means[-1:])
    assert sampler.warmed_up()
    # p_t = (1 - u) sqrt(mean L^2) / sum + u / K from the stored history
    hist = sampler.state_dict()["loss_history"]
    root = hist.pow(2).mean(1).sqrt()
    torch.testing.assert_close(sampler.probabilities(), (1 - u) * root / root.sum() + u / K)
    # a new loss pushes out the oldest one
    before = hist[3].clone()
    sampler.update(torch.tensor([3]), torch.tensor([9.0], dtype=F64))
    after = sampler.state_dict()["loss_history"][3]
    torch.testing.assert_close(after, torch.cat([before[1:], torch.tensor([9.0], dtype=F64)]))


def test_importance_sampling_is_unbiased_and_concentrates():
    """E_t[L_t] under uniform t estimated two ways: the importance-weighted mean and the uniform
    mean. Both agree with the exact value within 4 standard errors; the importance estimate has
    the smaller standard error and draws high-loss steps more often."""
    K, n = 100, 20000
    process = DDPM(num_steps=K)
    means = torch.exp(-torch.arange(K, dtype=F64) / 10)          # losses span four decades
    exact = means.mean().item()
    sampler = ImportanceTimesteps(process, history=10, uniform_prob=0.001)
    warm(sampler, means, 10, seed=1)
    g = gen(2)
    t, w = sampler.sample(n, g)
    L = means[t] * (1 + 0.5 * torch.randn(n, generator=g, dtype=F64))
    est, se = (w * L).mean().item(), (w * L).std().item() / math.sqrt(n)
    assert abs(est - exact) < 4 * se
    tu, wu = UniformTimesteps(process).sample(n, g)
    Lu = means[tu] * (1 + 0.5 * torch.randn(n, generator=g, dtype=F64))
    est_u, se_u = Lu.mean().item(), Lu.std().item() / math.sqrt(n)
    assert abs(est_u - exact) < 4 * se_u
    assert se < 0.5 * se_u
    # the ten highest-loss steps hold ~63% of the probability (vs 10% uniformly)
    share = (t < 10).double().mean().item()
    p10 = sampler.probabilities()[:10].sum().item()
    assert p10 > 0.5 and abs(share - p10) < 4 * math.sqrt(p10 * (1 - p10) / n)
    torch.testing.assert_close(w, 1 / (K * sampler.probabilities()[t]))


def _sequential_update(hist, counts, t, losses, first):
    """The importance sampler's update one loss at a time, as Nichol & Dhariwal keep it: a full
    row forgets its oldest entry and appends the new one."""
    hist, counts = hist.clone(), counts.clone()
    H = hist.shape[1]
    for k, loss in zip((t - first).tolist(), losses.tolist()):
        c = int(counts[k])
        if c == H:
            hist[k, :-1] = hist[k, 1:].clone()
            hist[k, -1] = loss
        else:
            hist[k, c] = loss
            counts[k] = c + 1
    return hist, counts


@pytest.mark.parametrize("history", [1, 3, 10])
def test_importance_sampler_update_equals_one_loss_at_a_time(history):
    """The vectorised update (no loop over samples, so that a GPU never waits) leaves exactly the
    history of the sequential rule: batches with repeated steps, a step seen more often in one
    batch than it remembers, rows partly and fully warm, empty batches."""
    process = DDPM(num_steps=12)
    sampler = ImportanceTimesteps(process, history=history)
    hist, counts = sampler.loss_history.clone(), sampler.loss_counts.clone()
    g = gen(11)
    for n in [5, 0, 1, 40, 7, 64, 3, 25]:
        low = 0 if n != 40 else 8                              # a batch crowded onto steps 8..11
        t = torch.randint(low, 12, (n,), generator=g)
        losses = torch.rand(n, generator=g, dtype=torch.float32) * 3
        sampler.update(t, losses)
        hist, counts = _sequential_update(hist, counts, t, losses.double(), first=0)
        assert torch.equal(sampler.loss_history, hist) and torch.equal(sampler.loss_counts, counts)
    assert sampler.warmed_up() == bool((counts == history).all())


def test_importance_state_stays_on_the_device_it_is_given_through_a_resume():
    a = ImportanceTimesteps(DDPM(num_steps=6), history=2)
    a.update(torch.arange(6).repeat(2), torch.linspace(1, 2, 12, dtype=F64))
    b = ImportanceTimesteps(DDPM(num_steps=6), history=2).to("meta")
    b.load_state_dict(a.state_dict())
    assert b.loss_history.device.type == b.loss_counts.device.type == "meta"
    assert b.probabilities().device.type == "meta"
    assert a.to("cpu") is a and a.state_dict()["loss_history"].device.type == "cpu"


def test_importance_probabilities_fall_back_to_uniform_on_a_non_finite_history():
    """Off the CPU update() does not stop to check the losses; a non-finite entry must then give
    uniform draws (the trainer stops at its next check), never NaN probabilities."""
    K = 6
    sampler = ImportanceTimesteps(DDPM(num_steps=K), history=1)
    sampler.update(torch.arange(K), torch.linspace(1, 2, K, dtype=F64))
    assert sampler.probabilities()[-1] > sampler.probabilities()[0]
    sampler.loss_history[2, 0] = float("nan")
    torch.testing.assert_close(sampler.probabilities(), torch.full((K,), 1 / K, dtype=F64))
    t, w = sampler.sample(50, gen(1))
    assert torch.all(w == 1.0) and t.min() >= 0 and t.max() < K


def test_importance_sampler_state_resumes_exactly():
    process = DDPM(num_steps=30)
    a = ImportanceTimesteps(process, history=3)
    warm(a, torch.rand(30, generator=gen(5), dtype=F64) + 0.1, 3)
    b = ImportanceTimesteps(process, history=3)
    state = a.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    b.load_state_dict(state)
    ta, wa = a.sample(50, gen(6))
    tb, wb = b.sample(50, gen(6))
    assert torch.equal(ta, tb) and torch.equal(wa, wb)
    with pytest.raises(ScorekitError, match="shapes"):
        ImportanceTimesteps(process, history=4).load_state_dict(state)


def test_importance_sampler_drives_the_loss():
    """loss = mean(weight * per_sample), and update() accepts the loss's own output."""
    process = DDPM(num_steps=20)
    sampler = ImportanceTimesteps(process, history=2)
    net = torch.nn.Linear(2, 2).double()
    g = gen(7)
    for _ in range(25):
        x0 = torch.randn(16, 2, generator=g, dtype=F64)
        out = diffusion_loss(lambda x, t, y: net(x), process, x0, weighting="elbo", generator=g,
                             timestep_sampler=sampler)
        sampler.update(out.t, out.per_sample)
    assert sampler.warmed_up()
    torch.testing.assert_close(out.loss, (out.weight * out.per_sample).mean())
    assert not torch.all(out.weight == 1)
    out.loss.backward()
    assert net.weight.grad is not None and torch.all(torch.isfinite(net.weight.grad))


# --- determinism, plumbing, errors ------------------------------------------------------------
def test_determinism_labels_and_no_global_rng():
    process = VPSDE()
    x0 = batch(8, 4)
    y = torch.arange(8) % 3
    seen = {}

    def net(x, t, labels):
        seen["y"] = labels
        return 0.5 * x + 0.01 * t[:, None]

    state = torch.get_rng_state()
    a = diffusion_loss(net, process, x0, weighting="min_snr", generator=gen(1), y=y)
    b = diffusion_loss(net, process, x0, weighting="min_snr", generator=gen(1), y=y)
    c = diffusion_loss(net, process, x0, weighting="min_snr", generator=gen(2), y=y)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a.per_sample, b.per_sample) and torch.equal(a.t, b.t)
    assert not torch.equal(a.t, c.t)
    assert seen["y"] is y
    x32 = x0.float()
    d = diffusion_loss(net, process, x32, generator=gen(1))
    assert d.t.dtype == torch.float32 and d.loss.dtype == torch.float32 and d.per_sample.shape == (8,)


def test_images_reduce_over_all_dimensions():
    x0 = torch.rand(3, 1, 4, 4, generator=gen(0), dtype=F64) * 2 - 1
    t = torch.tensor([3, 30, 300])
    process = DDPM()
    flat = diffusion_loss(lambda x, tt, y: 0.5 * x, process, x0.reshape(3, 16), weighting="elbo",
                          generator=gen(1), timestep_sampler=FixedTimes(t))
    img = diffusion_loss(lambda x, tt, y: 0.5 * x, process, x0, weighting="elbo",
                         generator=gen(1), timestep_sampler=FixedTimes(t))
    torch.testing.assert_close(img.per_sample, flat.per_sample, rtol=1e-12, atol=0)


def test_bad_inputs_are_refused():
    process = DDPM(num_steps=10)
    x0 = batch()
    net = lambda x, t, y: x
    call = lambda **kw: diffusion_loss(kw.pop("net", net), kw.pop("process", process), kw.pop("x0", x0),
                                       generator=kw.pop("generator", gen(0)), **kw)
    with pytest.raises(ScorekitError, match="weighting"):
        call(weighting="snr")
    with pytest.raises(ScorekitError, match="prediction_type"):
        call(prediction_type="noise")
    for gamma in (0, -1.0, float("nan"), "five"):
        with pytest.raises(ScorekitError, match="min_snr_gamma"):
            call(weighting="min_snr", min_snr_gamma=gamma)
    bad = x0.clone()
    bad[1, 2] = float("nan")
    with pytest.raises(ScorekitError, match="x0 contains NaN"):
        call(x0=bad)
    with pytest.raises(ScorekitError, match="x0"):
        call(x0=torch.arange(4))
    with pytest.raises(ScorekitError, match="elbo_variance"):
        call(weighting="elbo", elbo_variance="medium")
    with pytest.raises(ScorekitError, match="network output has shape"):
        call(net=lambda x, t, y: x[:, :1])
    with pytest.raises(ScorekitError, match="generator"):
        call(generator=None)
    with pytest.raises(ScorekitError, match="outside"):
        call(timestep_sampler=FixedTimes(torch.tensor([0, 1, 2, 10])))
    with pytest.raises(ScorekitError, match="sigma_data"):
        call(weighting="edm", sigma_data=0.0)
    with pytest.raises(ScorekitError, match="lambda_fn"):
        call(weighting="lambda", lambda_fn=lambda t: -t)
    with pytest.raises(ScorekitError, match="y must be"):
        call(y=torch.zeros(3, dtype=torch.long))
    with pytest.raises(ScorekitError, match="discrete process"):
        ImportanceTimesteps(VPSDE())
    with pytest.raises(ScorekitError, match="non-finite"):
        ImportanceTimesteps(process).update(torch.tensor([1]), torch.tensor([float("nan")]))
    with pytest.raises(ScorekitError, match="history"):
        ImportanceTimesteps(process, history=0)
    assert set(WEIGHTINGS) == {"simple", "elbo", "min_snr", "lambda", "edm", "hybrid"}
