"""Reverse variances: learned (Improved DDPM's interpolation, the hybrid loss and its gradients,
sampling) and Analytic-DPM (against the closed-form optimum on Gaussian data, and no worse ELBO than
beta_t or beta~_t)."""
import math

import numpy as np
import pytest
import torch

from scorekit import DDPM, Denoiser, ScorekitError, ddpm, make_timesteps
from scorekit.likelihood import elbo
from scorekit.losses import diffusion_loss
from scorekit.models import MLP
from scorekit.toy import GaussianMixture, eight_gaussians
from scorekit.variances import (LearnedVarianceDenoiser, analytic_variances, fixed_variance,
                                variance_bounds)

F64 = torch.float64
LN2 = math.log(2.0)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def hand_tables(process):
    """beta~_t (clipped to beta~_1 at t = 0), beta_t and c_x0 of each step t -> t - 1, from the betas."""
    betas = process.betas.numpy()
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post = betas * (1 - ab_prev) / (1 - ab)
    post[0] = post[1]
    return post, betas, np.sqrt(ab_prev) * betas / (1 - ab), ab


class ConstantHead:
    """A 'network' with a variance head: the exact eps of a mixture, then a constant raw output r."""

    def __init__(self, mixture, process, r):
        self.eps = mixture.eps_model(process)
        self.r = r

    def __call__(self, x, t, y=None):
        return torch.cat([self.eps(x, t), torch.full_like(x, self.r)], dim=1)


# --- learned variances ------------------------------------------------------------------------------

def test_learned_log_variance_interpolates_between_beta_tilde_and_beta():
    """r = -1 gives beta~_t, r = 1 beta_t, r = 0 their geometric mean (Nichol & Dhariwal eq. 15 with
    v = (r + 1) / 2); at t = 0 the lower end is beta~_1 and the upper beta_0."""
    process = DDPM(num_steps=50)
    post, betas, _, _ = hand_tables(process)
    data = GaussianMixture([1.0], [[0.0, 0.0]], stds=0.5)
    x = torch.randn(3, 2, generator=gen(0), dtype=F64)
    for r, want in ((-1.0, post), (1.0, betas), (0.0, np.sqrt(post * betas))):
        d = LearnedVarianceDenoiser(ConstantHead(data, process, r), process, "eps")
        for t in (0, 1, 17, 49):
            x0, log_var = d.x0_and_log_variance(x, t, t - 1)
            torch.testing.assert_close(log_var, torch.full_like(x, math.log(want[t])), rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(x0, data.denoiser(process)(x, t), rtol=1e-10, atol=1e-12)
            torch.testing.assert_close(d(x, t), x0)                # D(x_t, t) is the first half's x0_pred
    with pytest.raises(ScorekitError, match="learn_variance"):
        LearnedVarianceDenoiser(data.eps_model(process), process, "eps").x0_and_log_variance(x, 3, 2)


def test_elbo_with_learned_variances_at_the_ends_equals_the_fixed_ones():
    """The same x_t noise: a variance head stuck at r = -1 gives exactly the "small" bound; at r = 1
    the "large" one (Ho et al.'s beta_t, beta_0 in the decoder too)."""
    process = DDPM(schedule="cosine", num_steps=30)
    data = GaussianMixture([0.5, 0.5], [[-0.6, 0.2], [0.5, -0.3]], stds=0.3)
    x0 = data.sample(64, generator=gen(0), dtype=F64)
    for r, kind in ((-1.0, "small"), (1.0, "large")):
        learned = LearnedVarianceDenoiser(ConstantHead(data, process, r), process, "eps")
        a = elbo(learned, process, x0, variance="learned", data_bits=None, generator=gen(3), batch_steps=4)
        b = elbo(data.denoiser(process), process, x0, variance=kind, data_bits=None, generator=gen(3))
        torch.testing.assert_close(a.sample_terms_bpd, b.sample_terms_bpd, rtol=1e-9, atol=1e-10)


def test_ddpm_sampling_with_learned_and_explicit_variances():
    """Same noise: learned variances with r = -1 sample exactly like variance="small", an explicit
    table equal to beta_t exactly like "large"; learned variances on a strided grid run, and the
    samples of the exact mixture model have the mixture's mean and spread (within MC error)."""
    process = DDPM(num_steps=100)
    data = eight_gaussians()
    x_T = process.prior_sample((2000, 2), generator=gen(0), dtype=F64)
    full = make_timesteps(process, 100)
    stuck = LearnedVarianceDenoiser(ConstantHead(data, process, -1.0), process, "eps")
    a = ddpm(stuck, process, x_T, full, variance="learned", generator=gen(1))
    b = ddpm(data.denoiser(process), process, x_T, full, variance="small", generator=gen(1))
    torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    table = process.betas.clone()
    c = ddpm(data.denoiser(process), process, x_T, full, variance=table, generator=gen(1))
    d = ddpm(data.denoiser(process), process, x_T, full, variance="large", generator=gen(1))
    torch.testing.assert_close(c, d, rtol=1e-10, atol=1e-10)   # betas vs 1 - ab_t / ab_{t-1}: rounding
    mid = LearnedVarianceDenoiser(ConstantHead(data, process, 0.0), process, "eps")
    x = ddpm(mid, process, x_T, make_timesteps(process, 25), variance="learned", generator=gen(2))
    std = data.covariance().diagonal().sqrt()
    assert torch.all((x.mean(0) - data.mean()).abs() < 4 * std / math.sqrt(2000))
    assert torch.all((x.std(0) / std - 1).abs() < 0.1)
    with pytest.raises(ScorekitError, match="variance head"):
        ddpm(data.denoiser(process), process, x_T, full, variance="learned", generator=gen(1))
    with pytest.raises(ScorekitError, match="100 finite"):
        ddpm(data.denoiser(process), process, x_T, full, variance=torch.ones(7), generator=gen(1))


def hybrid_net(pred, raw):
    """A 'network' whose two halves are given leaf tensors (so their gradients can be read)."""
    return lambda x, t, y=None: torch.cat([pred, raw], dim=1)


def test_hybrid_loss_gradients_reach_the_variance_head_but_not_the_mean_through_l_vlb():
    """d L_hybrid / d(prediction) = d L_simple / d(prediction) exactly (the stop-gradient of eq. 16),
    and the variance head gets a non-zero gradient, which L_simple alone would not give it."""
    process = DDPM(num_steps=50)
    x0 = torch.randn(6, 3, generator=gen(0), dtype=F64)
    t = torch.tensor([0, 1, 5, 20, 49, 30])

    class Fixed:
        def sample(self, n, generator):
            return t.clone(), torch.ones(n, dtype=F64)

    pred = (0.3 * torch.randn(6, 3, generator=gen(1), dtype=F64)).requires_grad_()
    raw = (0.5 * torch.randn(6, 3, generator=gen(2), dtype=F64)).requires_grad_()
    out = diffusion_loss(hybrid_net(pred, raw), process, x0, weighting="hybrid", generator=gen(3),
                         timestep_sampler=Fixed())
    out.loss.backward()
    pred_simple = pred.detach().clone().requires_grad_()
    simple = diffusion_loss(lambda x, tt, y=None: pred_simple, process, x0, weighting="simple", generator=gen(3),
                            timestep_sampler=Fixed())
    simple.loss.backward()
    torch.testing.assert_close(pred.grad, pred_simple.grad, rtol=0, atol=0)
    assert raw.grad is not None and raw.grad.abs().min() > 0
    kl_steps = t > 0                                              # L_vlb = KL > 0 there (not the decoder)
    assert torch.all(out.per_sample[kl_steps] > simple.per_sample[kl_steps])


@pytest.mark.parametrize("k", [0, 1, 9, 39])
def test_hybrid_l_vlb_equals_the_elbo_term_on_the_same_inputs(k):
    """With the same x_t (the generator's first draw in both), the hybrid loss minus its L_simple part
    is lambda K L_k / (D ln 2), with L_k the elbo()'s term of step k in bits/dim (chain k -> k-1 -> data)."""
    process = DDPM(schedule="cosine", num_steps=40)
    data = GaussianMixture([0.5, 0.5], [[-0.6, 0.2], [0.5, -0.3]], stds=0.3)
    x0 = data.sample(32, generator=gen(0), dtype=F64)
    eps_model = data.eps_model(process)
    eps_fixed = torch.randn(x0.shape, generator=gen(7), dtype=F64)
    net = lambda x, t, y=None: torch.cat([0.9 * eps_model(x, t), torch.tanh(x - 0.2) - 0.1 * eps_fixed], dim=1)

    class Fixed:
        def sample(self, n, generator):
            return torch.full((n,), k), torch.ones(n, dtype=F64)

    out = diffusion_loss(net, process, x0, weighting="hybrid", generator=gen(5), timestep_sampler=Fixed(),
                         hybrid_lambda=0.01)
    eps = torch.randn(x0.shape, generator=gen(5), dtype=F64)
    x_t = process.sample_marginal(x0, k, eps)
    l_simple = (net(x_t, torch.full((32,), k))[:, :2] - eps).pow(2).mean(1)
    grid = [k, k - 1, -1] if k > 0 else [0, -1]
    bound = elbo(LearnedVarianceDenoiser(net, process, "eps"), process, x0, variance="learned", data_bits=None,
                 generator=gen(5), timesteps=grid)
    term = bound.sample_terms_bpd[:, -1]                           # the noisiest step: k -> k - 1
    torch.testing.assert_close(out.per_sample - l_simple, 0.01 * 40 * term, rtol=1e-9, atol=1e-12)


def test_a_tiny_model_learns_variances_between_beta_tilde_and_beta():
    """A variance head (a small MLP) beside the exact mean of 2-D Gaussian data N(mu, s^2 I), trained
    with the hybrid loss (lambda = 0.001): on the steps where beta_t and beta~_t differ most (log ratio
    > 0.3) its interpolation fraction v moves from its start 1/2 to the closed-form optimum
    v* = log(sigma*^2 / beta~) / log(beta / beta~), sigma*^2 = beta~ + c_x0^2 Var[x_0 | x_t], and stays
    within [beta~_t, beta_t] (v* lies there for this data)."""
    T, s = 20, 0.5
    process = DDPM(schedule="cosine", num_steps=T)
    data = GaussianMixture([1.0], [[0.2, -0.1]], stds=s)
    head = MLP(2, hidden=32, depth=1, seed=0)
    eps = data.eps_model(process)
    net = lambda x, t, y=None: torch.cat([eps(x, t).to(x.dtype), head(x, t)], dim=1)
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    post, betas, c_x0, ab = hand_tables(process)
    optimum = post + c_x0 ** 2 * s ** 2 * (1 - ab) / (ab * s ** 2 + 1 - ab)
    ratio = np.log(betas / post)
    v_star = np.log(optimum / post) / ratio
    steps = np.flatnonzero(ratio > 0.3)
    steps = steps[steps > 0]                                      # KL steps (the decoder's optimum differs)
    assert len(steps) >= 4 and np.all((v_star[steps] > 0) & (v_star[steps] < 1))

    def fraction():
        d = LearnedVarianceDenoiser(net, process, "eps")
        x = data.sample(256, generator=gen(99))
        with torch.no_grad():
            lv = np.array([d.x0_and_log_variance(process.sample_marginal(x, t, generator=gen(t)), t, t - 1)[1]
                           .mean().item() for t in range(T)])
        return (lv - np.log(post)) / ratio

    g = gen(0)
    start = fraction()
    for _ in range(150):
        x = data.sample(128, generator=g)
        loss = diffusion_loss(net, process, x, weighting="hybrid", generator=g).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    end = fraction()
    np.testing.assert_allclose(start, 0.5, atol=1e-4)             # the zero-initialised head: v = 1/2 (float32)
    assert np.all((end[steps] > -0.1) & (end[steps] < 1.1)), end[steps]
    assert np.abs(end - v_star)[steps].max() < 0.25, (end[steps], v_star[steps])
    assert np.abs(end - v_star)[steps].mean() < 0.5 * np.abs(start - v_star)[steps].mean()


# --- Analytic-DPM ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction_type", ["eps", "x0"])
def test_analytic_variances_match_the_closed_form_optimum(prediction_type):
    """Gaussian data N(mu, s^2 I): Bao et al.'s sigma*^2 = beta~ + c_x0^2 (1 - ab)/ab (1 - Gamma) with the
    exact model equals beta~ + c_x0^2 Var[x_0 | x_t], Var = s^2 (1 - ab) / (ab s^2 + 1 - ab), within the
    Monte-Carlo error of Gamma (std Gamma sqrt(2 / (n d)) for Gaussian eps_theta); the decoder keeps beta~_1."""
    T, s, D, n = 50, 0.5, 3, 4000
    process = DDPM(schedule="linear", num_steps=T)
    data = GaussianMixture([1.0], [[0.3, -0.2, 0.1]], stds=s)
    train = data.sample(20000, generator=gen(0), dtype=F64)
    model = data.eps_model(process) if prediction_type == "eps" else data.denoiser(process)
    got = analytic_variances(model, process, train, num_samples=n, generator=gen(1), prediction_type=prediction_type)
    post, betas, c_x0, ab = hand_tables(process)
    var_x0 = s ** 2 * (1 - ab) / (ab * s ** 2 + 1 - ab)
    want = post + c_x0 ** 2 * var_x0
    want[0] = post[0]
    gamma = 1 - var_x0 * ab / (1 - ab)                              # the exact E||eps_theta||^2 / d
    tol = 5 * c_x0 ** 2 * (1 - ab) / ab * gamma * math.sqrt(2 / (n * D))
    assert got.shape == (T,)
    assert np.all(np.abs(got.numpy() - want)[1:] < tol[1:] + 1e-15)
    assert got[0].item() == pytest.approx(post[0], rel=1e-12)
    assert np.all(got.numpy() >= post - 1e-15)
    # a shorter trajectory: the same formula for each pair of its times, in ascending order
    grid = make_timesteps(process, 5)
    short = analytic_variances(model, process, train, num_samples=n, generator=gen(2), timesteps=grid,
                               prediction_type=prediction_type)
    ts = grid[:-1].flip(0).numpy()
    assert short.shape == (5,)
    i, j = int(ts[2]), int(ts[1])                                   # the step ts[2] -> ts[1]
    ab_s = ab[j]
    c = math.sqrt(ab_s) * (1 - ab[i] / ab_s) / (1 - ab[i])
    small = (1 - ab[i] / ab_s) * (1 - ab_s) / (1 - ab[i])
    want_ij = small + c ** 2 * var_x0[i]
    assert abs(short[2].item() - want_ij) < 5 * c ** 2 * (1 - ab[i]) / ab[i] * gamma[i] * math.sqrt(2 / (n * D))
    # its decoder keeps beta~ of its own next step ts[1] -> ts[0], not beta~_1 of the whole chain
    i, j = int(ts[1]), int(ts[0])
    assert short[0].item() == pytest.approx((1 - ab[i] / ab[j]) * (1 - ab[j]) / (1 - ab[i]), rel=1e-12)


def test_analytic_variances_give_an_elbo_no_worse_than_beta_or_beta_tilde():
    """A fixed model -- the exact eps of a two-component mixture in 4-D -- and the same x_t noise for
    all three: the bound with Analytic-DPM variances (estimated on separate training samples) is no
    worse than with beta_t or beta~_t (paired differences within 3 standard errors, if positive), and
    it is better than beta~_t by a wide margin."""
    T = 50
    process = DDPM(schedule="linear", num_steps=T)
    data = GaussianMixture([0.4, 0.6], [[-0.5, 0.3, 0.0, 0.2], [0.4, -0.2, 0.3, -0.4]], stds=0.25)
    model = data.eps_model(process)
    den = Denoiser(model, process, "eps")
    train = data.sample(5000, generator=gen(0), dtype=F64)
    table = analytic_variances(den, process, train, num_samples=2000, generator=gen(1))
    x0 = data.sample(1000, generator=gen(2), dtype=F64)
    bounds = {k: elbo(den, process, x0, variance=v, data_bits=None, generator=gen(3), batch_steps=10)
              for k, v in (("analytic", table), ("small", "small"), ("large", "large"))}
    for other in ("small", "large"):
        diff = bounds["analytic"].total_bpd - bounds[other].total_bpd
        assert diff.mean() < 3 * diff.std() / math.sqrt(diff.numel()), (other, diff.mean())
    assert bounds["small"].mean_bpd - bounds["analytic"].mean_bpd > 0.1
    # each KL term too, not just the sum (the decoder steps use the same variance for "small"), up
    # to the table's own Monte-Carlo error: Gamma from n = 2000 samples of d = 4 dimensions has error
    # ~sqrt(2 / (n d)) (Gamma <= ~1), so the variance dS = c_x0^2 (sigma^2 / alpha^2) dGamma; a
    # variance off its optimum by a factor 1 + e costs ~e^2 / 4 nats per dimension, which at the
    # noisiest steps (where 1 - Gamma is below that error) can exceed what beta~ loses
    per_step = bounds["analytic"].terms_bpd - bounds["small"].terms_bpd
    se = (bounds["analytic"].sample_terms_bpd - bounds["small"].sample_terms_bpd).std(0) / math.sqrt(1000)
    t = torch.arange(1, T, dtype=F64)
    c_x0, _, small = process.posterior_coefficients(t, t - 1)
    rel = c_x0 ** 2 * torch.exp(-process.log_snr(t)) * math.sqrt(2 / (2000 * 4)) / small
    mc = (3 * rel) ** 2 / (4 * math.log(2))
    assert torch.all(per_step[1:] < 3 * se[1:] + mc + 1e-12), (per_step[1:] - 3 * se[1:] - mc).max()
    # the "analytic" option estimates Gamma on the evaluated batch itself: close to the table's bound
    self_est = elbo(den, process, x0, variance="analytic", data_bits=None, generator=gen(3), batch_steps=10)
    assert abs(self_est.mean_bpd - bounds["analytic"].mean_bpd) < 0.01


def test_analytic_variance_clips_the_posterior_variance_factor_to_the_data_range():
    """Bao et al. (2022), Theorem 2: Var[x_0 | x_t] / d lies in [0, R^2] for data in [-R, R]^d, so the
    factor (sigma_t^2 / alpha_t^2)(1 - Gamma_t) of sigma*^2 = beta~ + c_x0^2 (sigma_t^2 / alpha_t^2)(1 - Gamma_t)
    is clipped there. By hand from the betas (hand_tables) on the whole chain t -> t - 1:
    Gamma > 1 (an eps-model that overshoots) makes the factor negative: clipped to 0, sigma*^2 = beta~;
    Gamma very negative makes it huge: clipped to R^2, sigma*^2 = beta~ + c_x0^2 R^2 for R = 1 and 0.5;
    data_radius=None keeps the huge factor (no upper clip) but still the lower one; a Gamma inside the
    range (per step, the Gamma that makes the factor 1/2) is left alone. The step into the data keeps
    beta~_1 throughout. Float64: rtol 1e-12."""
    from scorekit.variances import analytic_variance

    T = 50
    process = DDPM(schedule="linear", num_steps=T)
    post, _, c_x0, ab = hand_tables(process)
    t = torch.arange(T, dtype=F64)
    factor = lambda gamma: (1 - ab) / ab * (1 - gamma)

    def check(gamma, want, **kw):
        got = analytic_variance(process, t, t - 1, torch.as_tensor(gamma, dtype=F64).expand(T), **kw).numpy()
        np.testing.assert_allclose(got[1:], want[1:], rtol=1e-12, atol=0)
        assert got[0] == pytest.approx(post[0], rel=1e-12)

    assert np.all(factor(1.5)[1:] < 0)
    check(1.5, post)
    check(1.5, post, data_radius=None)
    huge = -1e4
    for radius in (1.0, 0.5):
        assert np.all(factor(huge)[1:] > radius ** 2)
        check(huge, post + c_x0 ** 2 * radius ** 2, data_radius=radius)
    check(huge, post + c_x0 ** 2 * factor(huge), data_radius=None)
    inside = 1 - 0.5 * ab / (1 - ab)                      # factor 1/2 at every step
    np.testing.assert_allclose(factor(inside)[1:], 0.5, rtol=1e-9)   # 1 - Gamma ~ ab: cancellation
    check(inside, post + c_x0 ** 2 * factor(inside))


def test_analytic_variances_refuse_bad_input():
    process = DDPM(num_steps=10)
    data = torch.zeros(5, 2)
    den = lambda x, t: x
    with pytest.raises(ScorekitError, match="generator"):
        analytic_variances(den, process, data, generator=None)
    with pytest.raises(ScorekitError, match="num_samples"):
        analytic_variances(den, process, data, num_samples=0, generator=gen(0))
    with pytest.raises(ScorekitError, match="data must be"):
        analytic_variances(den, process, torch.zeros(5), generator=gen(0))
    with pytest.raises(ScorekitError, match="prediction_type"):
        analytic_variances(den, process, data, generator=gen(0), prediction_type="noise")


def test_variance_bounds_are_the_posterior_and_transition_variances():
    process = DDPM(num_steps=30)
    post, betas, _, _ = hand_tables(process)
    t = torch.arange(30, dtype=F64)
    small, large = variance_bounds(process, t, t - 1)
    np.testing.assert_allclose(small.numpy(), post, rtol=1e-12)
    np.testing.assert_allclose(large.numpy(), betas, rtol=1e-12)
    np.testing.assert_allclose(fixed_variance(process, t, t - 1, "large").numpy(), betas, rtol=1e-12)


def test_ddpm_takes_the_shared_variance_names_and_points_analytic_to_its_table():
    """ddpm accepts the names of scorekit.variances.VARIANCES (the list elbo and the command line use);
    "analytic" needs training data, so the sampler names the function that estimates the table, and
    that table on the same grid samples."""
    from scorekit.variances import VARIANCES

    process = DDPM(num_steps=20)
    mix = GaussianMixture([0.5, 0.5], [[-1.0], [1.0]], stds=0.3)
    x_T = process.prior_sample((6, 1), generator=gen(0), dtype=torch.float64)
    grid = make_timesteps(process, 5)
    with pytest.raises(ScorekitError, match="analytic_variances"):
        ddpm(mix.denoiser(process), process, x_T, grid, variance="analytic", generator=gen(1))
    with pytest.raises(ScorekitError, match=", ".join(VARIANCES)):
        ddpm(mix.denoiser(process), process, x_T, grid, variance="medium", generator=gen(1))
    table = analytic_variances(mix.denoiser(process), process, mix.sample(200, generator=gen(2), dtype=torch.float64),
                               generator=gen(3), timesteps=grid)
    assert torch.isfinite(ddpm(mix.denoiser(process), process, x_T, grid, variance=table, generator=gen(1))).all()
