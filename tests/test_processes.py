"""Forward processes against independent oracles: kernel compositions, Gaussian conditioning,
SDE integrals, autograd, Monte Carlo and diffusers' schedules."""
import math

import numpy as np
import pytest
import torch
from scipy import integrate

from scorekit import DDPM, EDM, VESDE, VPSDE, ScorekitError, SimpleVE, SubVPSDE, beta_schedule
from scorekit.processes import process_from_config

CONTINUOUS = [VPSDE(), SubVPSDE(), VESDE(), EDM(), VPSDE(beta_min=0.5, beta_max=5.0)]
ALL = [DDPM(), DDPM(schedule="cosine", num_steps=200), SimpleVE(1000)] + CONTINUOUS


def interior_times(p, n=7):
    """Times strictly inside the model range (non-integers for discrete processes)."""
    lo, hi = p.t_min, p.t_max
    u = torch.linspace(0.1, 0.9, n, dtype=torch.float64)
    t = lo + (hi - lo) * u
    if p.discrete:
        t = torch.floor(t) + 0.37
    return t


# --- DDPM: closed form = composition of one-step kernels -------------------------------------

@pytest.mark.parametrize("schedule", ["linear", "scaled_linear", "cosine", "sigmoid"])
def test_ddpm_closed_form_equals_kernel_composition(schedule):
    p = DDPM(schedule=schedule)
    betas = p.betas.numpy()
    mean_coef, var = 1.0, 0.0          # x_t | x_0 ~ N(mean_coef x_0, var), built step by step
    for t in range(p.T):
        a_ts, s_ts = p.transition(t, t - 1)
        assert a_ts.item() == pytest.approx(math.sqrt(1 - betas[t]), rel=1e-12)
        assert s_ts.item() ** 2 == pytest.approx(betas[t], rel=1e-9)
        mean_coef = math.sqrt(1 - betas[t]) * mean_coef
        var = (1 - betas[t]) * var + betas[t]
        if t % 97 == 0 or t == p.T - 1:
            assert p.alpha(t).item() == pytest.approx(mean_coef, rel=1e-10)
            assert p.sigma(t).item() ** 2 == pytest.approx(var, rel=1e-10)


def test_ddpm_closed_form_monte_carlo():
    """Run the chain of T kernels and compare sample moments with N(sqrt(ab) x0, (1 - ab) I)."""
    p = DDPM()
    g = torch.Generator().manual_seed(0)
    n = 10000
    x0 = torch.tensor([1.5, -0.7], dtype=torch.float64)
    x = x0.expand(n, 2).clone()
    checks = {10: None, 100: None, 999: None}
    for t in range(p.T):
        b = p.betas[t]
        x = torch.sqrt(1 - b) * x + torch.sqrt(b) * torch.randn(x.shape, generator=g, dtype=torch.float64)
        if t in checks:
            mean, std = p.marginal(x0, t)
            se_mean = std / math.sqrt(n)
            se_var = std ** 2 * math.sqrt(2 / (n - 1))
            assert torch.all((x.mean(0) - mean).abs() < 5 * se_mean)
            assert torch.all((x.var(0) - std ** 2).abs() < 5 * se_var)


def test_simple_ve_kernels_and_posterior():
    p = SimpleVE(50)
    for t in range(1, 51):
        a_ts, s_ts = p.transition(t, t - 1)
        assert a_ts.item() == 1.0 and s_ts.item() == pytest.approx(1.0)
        assert p.sigma(t).item() ** 2 == pytest.approx(t)
        c_x0, c_xt, var = p.posterior_coefficients(t, t - 1)
        assert c_xt.item() == pytest.approx(1 - 1 / t)
        assert c_x0.item() == pytest.approx(1 / t)
        assert var.item() == pytest.approx(1 - 1 / t)


# --- posteriors: Gaussian conditioning of the joint, computed independently -----------------

def joint_by_chain(p: DDPM, s: int, t: int):
    """Mean coefficients and covariance of (x_s, x_t) | x_0 built from the one-step kernels."""
    betas = p.betas.numpy()
    a, v = 1.0, 0.0
    for k in range(s + 1):
        a, v = math.sqrt(1 - betas[k]) * a, (1 - betas[k]) * v + betas[k]
    a_s, v_s = a, v
    cov_st = v_s
    for k in range(s + 1, t + 1):
        a, v = math.sqrt(1 - betas[k]) * a, (1 - betas[k]) * v + betas[k]
        cov_st *= math.sqrt(1 - betas[k])
    return a_s, a, v_s, v, cov_st


@pytest.mark.parametrize("s,t", [(0, 1), (10, 11), (500, 501), (998, 999), (3, 250), (100, 900)])
def test_ddpm_posterior_is_gaussian_conditioning(s, t):
    p = DDPM()
    a_s, a_t, v_s, v_t, c_st = joint_by_chain(p, s, t)
    # E[x_s | x_t, x_0] = a_s x_0 + c_st / v_t (x_t - a_t x_0); Var = v_s - c_st^2 / v_t
    want_xt = c_st / v_t
    want_x0 = a_s - c_st / v_t * a_t
    want_var = v_s - c_st ** 2 / v_t
    c_x0, c_xt, var = p.posterior_coefficients(t, s)
    assert c_xt.item() == pytest.approx(want_xt, rel=1e-9)
    assert c_x0.item() == pytest.approx(want_x0, rel=1e-9)
    assert var.item() == pytest.approx(want_var, rel=1e-8)
    if t == s + 1:  # Ho et al. eq. 7
        ab, ab_prev, b = p.alpha_bar(t).item(), p.alpha_bar(s).item(), p.betas[t].item()
        assert c_x0.item() == pytest.approx(math.sqrt(ab_prev) * b / (1 - ab), rel=1e-9)
        assert c_xt.item() == pytest.approx(math.sqrt(1 - b) * (1 - ab_prev) / (1 - ab), rel=1e-9)
        assert var.item() == pytest.approx((1 - ab_prev) / (1 - ab) * b, rel=1e-9)


def test_posterior_to_data_time_is_x0():
    for p in ALL:
        t = interior_times(p, 3)[1]
        c_x0, c_xt, var = p.posterior_coefficients(t, p.t_data)
        assert c_x0.item() == pytest.approx(1.0) and abs(c_xt.item()) < 1e-12 and abs(var.item()) < 1e-12


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_posterior_monte_carlo(p):
    """Sample (x_s, x_t) jointly through the transition, regress x_s on x_t: slope and residual
    variance must match the posterior coefficients (with tolerances from the sample size)."""
    g = torch.Generator().manual_seed(1)
    n = 40000
    ts = interior_times(p, 5)
    s, t = ts[1].item(), ts[3].item()
    x0 = 0.8
    x_s = p.sample_marginal(torch.full((n, 1), x0, dtype=torch.float64), s, generator=g)
    a_ts, s_ts = p.transition(t, s)
    x_t = a_ts * x_s + s_ts * torch.randn(x_s.shape, generator=g, dtype=torch.float64)
    # linear regression of x_s on x_t
    xt, xs = x_t[:, 0], x_s[:, 0]
    slope = ((xt - xt.mean()) * (xs - xs.mean())).mean() / xt.var()
    resid = xs - xs.mean() - slope * (xt - xt.mean())
    c_x0, c_xt, var = p.posterior_coefficients(t, s)
    se_slope = math.sqrt(var.item() / (n * xt.var().item()))
    assert abs(slope.item() - c_xt.item()) < 5 * se_slope
    assert abs(resid.var().item() - var.item()) < 5 * var.item() * math.sqrt(2 / n)
    # intercept: E[x_s | x_t] = c_x0 x0 + c_xt x_t
    intercept = xs.mean() - slope * xt.mean()
    assert abs(intercept.item() - c_x0.item() * x0) < 5 * math.sqrt(var.item() / n) + 5 * se_slope * abs(xt.mean().item())


# --- SDE coefficients --------------------------------------------------------------------------

@pytest.mark.parametrize("p", ALL, ids=repr)
def test_sde_coefficients_match_marginals(p):
    """d alpha/dt = f alpha and d sigma^2/dt = 2 f sigma^2 + g^2 (autograd / central differences)."""
    t = interior_times(p).requires_grad_(True)
    alpha, sigma2 = p.alpha(t), p.sigma(t) ** 2

    def grad(y):  # a constant (e.g. alpha = 1) has no graph: its derivative is 0
        return torch.autograd.grad(y.sum(), t, retain_graph=True)[0] if y.requires_grad else torch.zeros_like(t)

    d_alpha, d_sigma2 = grad(alpha), grad(sigma2)
    t = t.detach()
    assert torch.allclose(d_alpha, p.f(t) * alpha.detach(), rtol=1e-9, atol=1e-12)
    assert torch.allclose(d_sigma2, 2 * p.f(t) * sigma2.detach() + p.g2(t), rtol=1e-9, atol=1e-12)
    x = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(p.drift(x, t), p.f(t)[:, None] * x)
    assert torch.allclose(p.diffusion(t) ** 2, p.g2(t))


@pytest.mark.parametrize("p", CONTINUOUS, ids=repr)
def test_transition_equals_integrated_sde(p):
    """For dx = f x dt + g dW: alpha_{t|s} = exp(int_s^t f), sigma_{t|s}^2 = int_s^t exp(2 int_u^t f) g^2 du."""
    s, t = interior_times(p, 5)[[1, 3]].tolist()
    F = lambda a, b: integrate.quad(lambda u: p.f(u).item(), a, b, epsabs=1e-13, epsrel=1e-12)[0]
    want_alpha = math.exp(F(s, t))
    want_var = integrate.quad(lambda u: math.exp(2 * F(u, t)) * p.g2(u).item(), s, t,
                              epsabs=1e-13, epsrel=1e-11)[0]
    a_ts, s_ts = p.transition(t, s)
    assert a_ts.item() == pytest.approx(want_alpha, rel=1e-8)
    assert s_ts.item() ** 2 == pytest.approx(want_var, rel=1e-7)


def test_vp_sde_is_the_limit_of_linear_ddpm():
    """DDPM with linear betas (1e-4 .. 0.02, T = 1000) ~ VP SDE with beta_min = 0.1, beta_max = 20."""
    d, c = DDPM(), VPSDE(0.1, 20.0)
    t = torch.arange(0, 1000, 37, dtype=torch.float64)
    assert torch.allclose(d.alpha(t), c.alpha((t + 1) / 1000), atol=2e-3)


@pytest.mark.parametrize("T", [50, 100, 250, 1000])
def test_linear_ddpm_of_any_length_discretises_the_same_vp_sde(T):
    """The default linear betas of a T-step chain are score SDE's beta_min / T .. beta_max / T
    (0.1 and 20; Ho et al.'s 1e-4 .. 0.02 at T = 1000), so alpha(t) follows the VP SDE's at
    (t + 1) / T -- to O(1 / T) (sum of beta^2 / 2 in log alpha_bar) -- and the chain ends near N(0, I)."""
    d, c = DDPM(num_steps=T), VPSDE(0.1, 20.0)
    torch.testing.assert_close(d.betas, torch.linspace(0.1 / T, 20.0 / T, T, dtype=torch.float64),
                               rtol=1e-12, atol=0)
    t = torch.arange(0, T, dtype=torch.float64)
    assert torch.allclose(d.alpha(t), c.alpha((t + 1) / T), atol=2.0 / T)
    assert d.alpha_bar_table[-1] < 1e-3
    # diffusers' values for every T, when asked for
    assert DDPM(num_steps=T, beta_start=1e-4, beta_end=0.02).betas[-1].item() == pytest.approx(0.02)


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_log_snr_inverse(p):
    t = interior_times(p)
    lam = p.log_snr(t)
    assert torch.all(lam[1:] < lam[:-1]), "log-SNR must decrease in t"
    assert torch.allclose(p.t_from_log_snr(lam), t, rtol=1e-9, atol=1e-9)
    assert torch.allclose(lam, torch.log(p.alpha(t) ** 2 / p.sigma(t) ** 2))


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_infinite_log_snr_is_the_data_time(p):
    """lambda = +inf (sigma = 0) maps to the data time, and a huge lambda just short of it."""
    lam = torch.tensor([math.inf, 800.0], dtype=torch.float64)
    t = p.t_from_log_snr(lam)
    assert t[0].item() == p.t_data
    assert torch.isfinite(t[1]) or p.t_data == -math.inf


@pytest.mark.parametrize("p", [VPSDE(), SubVPSDE(), VPSDE(beta_min=0.5, beta_max=5.0)], ids=repr)
def test_log_snr_inverse_near_the_data(p):
    """Below t_min, where alpha^2 -> 1 and 1 - alpha^2 -> 0: lambda ~ -log B is well conditioned
    (a relative error e in B gives ~e in t), so t comes back to near rounding."""
    t = torch.logspace(-12, -3, 10, dtype=torch.float64)
    assert torch.allclose(p.t_from_log_snr(p.log_snr(t)), t, rtol=1e-9, atol=0)


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_data_time_and_prior(p):
    assert p.alpha(p.t_data).item() == pytest.approx(1.0)
    assert p.sigma(p.t_data).item() == pytest.approx(0.0, abs=1e-12)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    want = torch.distributions.Normal(0.0, p.prior_std).log_prob(x).sum((1, 2))
    assert torch.allclose(p.prior_log_prob(x), want)
    g = torch.Generator().manual_seed(0)
    z = p.prior_sample((20000, 1), generator=g, dtype=torch.float64)
    assert abs(z.std().item() / p.prior_std - 1) < 5 * math.sqrt(1 / (2 * 20000))
    # the marginal at t_max is close to the prior for data of unit scale (except the
    # sub-VP SDE and the low-noise VP SDE, whose sigma(t_max) stays below 1)
    if not isinstance(p, SubVPSDE) and p.sigma(p.t_max) > 0.99 * p.prior_std:
        assert p.alpha(p.t_max) / p.sigma(p.t_max) < 0.1


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_marginal_log_prob(p):
    t = interior_times(p, 4)
    x0 = torch.randn(4, 3, dtype=torch.float64)
    x_t = p.sample_marginal(x0, t, generator=torch.Generator().manual_seed(3))
    want = torch.distributions.Normal(p.alpha(t)[:, None] * x0, p.sigma(t)[:, None]).log_prob(x_t).sum(1)
    assert torch.allclose(p.marginal_log_prob(x_t, x0, t), want)


# --- schedules ---------------------------------------------------------------------------------

@pytest.mark.parametrize("ours,theirs", [("linear", "linear"), ("scaled_linear", "scaled_linear"),
                                         ("cosine", "squaredcos_cap_v2"), ("sigmoid", "sigmoid")])
def test_beta_schedules_match_diffusers(ours, theirs):
    from diffusers import DDPMScheduler
    kw = {"beta_start": 0.00085, "beta_end": 0.012} if ours == "scaled_linear" else {}
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=theirs, **kw).betas.double()
    assert torch.allclose(beta_schedule(ours, 1000), ref, rtol=1e-5, atol=1e-8)


def test_cosine_alpha_bar_formula():
    T, s = 1000, 0.008
    p = DDPM(schedule="cosine", num_steps=T)
    t = torch.arange(T, dtype=torch.float64)
    h = lambda u: torch.cos((u / T + s) / (1 + s) * math.pi / 2) ** 2
    want = h(t + 1) / h(torch.zeros((), dtype=torch.float64))
    ok = torch.cumprod(p.betas < 0.999, 0).bool()   # after the first clipped beta the formula no longer holds
    assert torch.allclose(p.alpha_bar_table[ok], want[ok], rtol=1e-10)


def test_alpha_bar_and_betas_constructors_agree():
    p = DDPM(schedule="cosine", num_steps=300)
    q = DDPM(alpha_bar=p.alpha_bar_table)
    assert torch.allclose(q.betas, p.betas, rtol=1e-9, atol=1e-15)
    r = DDPM(betas=p.betas.tolist())
    assert torch.equal(r.alpha_bar_table, p.alpha_bar_table)


def test_ddpm_interpolates_between_steps():
    p = DDPM()
    assert torch.allclose(p.log_alpha_bar(torch.tensor(10.5)),
                          0.5 * (p.log_alpha_bar(10) + p.log_alpha_bar(11)))
    assert p.alpha_bar(-1).item() == 1.0


@pytest.mark.parametrize("p", ALL, ids=repr)
def test_config_round_trip(p):
    q = process_from_config(p.config())
    t = interior_times(p)
    assert type(q) is type(p)
    assert torch.equal(q.alpha(t), p.alpha(t)) and torch.equal(q.sigma(t), p.sigma(t))


@pytest.mark.parametrize("make,msg", [
    (lambda: DDPM(schedule="exponential"), "unknown beta schedule"),
    (lambda: DDPM(betas=[0.1, 1.2]), "beta"),
    (lambda: DDPM(betas=[]), "non-empty"),
    (lambda: DDPM(betas=[0.0, 0.1]), "beta_0"),
    (lambda: DDPM(alpha_bar=[0.5, 0.9]), "non-increasing"),
    (lambda: DDPM(betas=[0.1], alpha_bar=[0.9]), "only one"),
    (lambda: VPSDE(beta_min=-1), "beta_min"),
    (lambda: VESDE(sigma_min=1, sigma_max=0.5), "sigma_min"),
    (lambda: SimpleVE(0), "num_steps"),
    (lambda: process_from_config({"kind": "Nope"}), "unknown process"),
    (lambda: process_from_config({"kind": "VPSDE", "beta_mid": 3}), "unknown VPSDE process option beta_mid; valid: beta_min, beta_max"),
])
def test_bad_arguments(make, msg):
    with pytest.raises(ScorekitError, match=msg):
        make()
