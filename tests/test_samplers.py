"""Samplers with exact denoisers: they reproduce known distributions, DDIM solves the
probability-flow ODE at first order, inversion reconstructs, bad input is refused.

One parametrised suite (``test_conformance``) runs every registered sampler on every process."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import scorekit
from scorekit import (DDPM, EDM, SAMPLERS, VESDE, VPSDE, ScorekitError, SimpleVE, SubVPSDE,
                      ddim, ddim_invert, ddpm, make_timesteps)
from scorekit.metrics.distribution import (mode_weight_error, mode_weight_stderr,
                                           sliced_wasserstein, swd_noise_floor)
from scorekit.toy import eight_gaussians, image_mixture, multiscale_2d


def gen(seed):
    return torch.Generator().manual_seed(seed)


_FLOORS = {}


def noise_floor(mixture, n, seed):
    """:func:`swd_noise_floor`, computed once per mixture, sample size and seed (the conformance
    suite asks for the same one some 200 times)."""
    key = (repr(mixture), tuple(mixture.weights.tolist()), tuple(mixture.means.flatten().tolist()),
           tuple(mixture.std_per_dim().flatten().tolist()), n, seed)
    if key not in _FLOORS:
        # 10 repeats: the tolerance floor + 4 std rests on this std, and with 5 (4 degrees of freedom)
        # it would come out below half the true spread for 9% of seeds, 2% with 10
        _FLOORS[key] = swd_noise_floor(mixture, n, repeats=10, generator=gen(seed))
    return _FLOORS[key]


def assert_matches_mixture(x, mixture, seed=123, n_se=4.0):
    """Sliced-Wasserstein distance within n_se standard deviations of the metric's own noise
    floor at this sample size, and every mode weight within n_se multinomial standard errors."""
    n = x.shape[0]
    ref = mixture.sample(n, generator=gen(seed), dtype=torch.float64)
    swd = sliced_wasserstein(x.double(), ref, generator=gen(seed + 1))
    floor_mean, floor_std = noise_floor(mixture, n, seed + 2)
    assert swd < floor_mean + n_se * floor_std, f"SWD {swd:.4g} vs noise floor {floor_mean:.4g} +- {floor_std:.4g}"
    w_err = (scorekit.metrics.distribution.mode_weights(x, mixture) - mixture.weights).abs()
    assert torch.all(w_err < n_se * mode_weight_stderr(mixture, n)), f"mode weights off by {w_err}"


def grid(process, n):
    return make_timesteps(process, n, None if process.discrete else "log_snr")


# --- exact identities --------------------------------------------------------------------------

def test_ddim_eta_one_is_ddpm_with_posterior_variance():
    mix = eight_gaussians()
    p = DDPM()
    x_T = p.prior_sample((64, 2), generator=gen(0), dtype=torch.float64)
    ts = make_timesteps(p, 37, "linspace")
    a = ddim(mix.denoiser(p), p, x_T, ts, eta=1.0, generator=gen(5))
    b = ddpm(mix.denoiser(p), p, x_T, ts, variance="small", generator=gen(5))
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_single_point_data_is_exact_with_small_variance():
    """If the data is one point c, D(x_t, t) = c and every sampler must return c exactly."""
    c = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    denoiser = lambda x, t: c.expand_as(x)
    for p in (DDPM(), VPSDE(), SimpleVE(50), EDM()):
        x_T = p.prior_sample((5, 2), generator=gen(1), dtype=torch.float64)
        for name, fn in SAMPLERS.items():
            out = fn(denoiser, p, x_T, grid(p, 10), generator=gen(2))
            assert torch.allclose(out, c.expand_as(out), atol=1e-9), (name, p)


def test_gaussian_data_ddim_converges_to_exact_transport():
    """Data N(0, s^2) in 1-D: p_t = N(0, std_t^2) with std_t^2 = alpha_t^2 s^2 + sigma_t^2 and the
    probability-flow ODE keeps x_t / std_t constant. DDIM is Euler's method for that ODE, so its
    error must fall like 1/n."""
    s = 0.5
    p = DDPM()
    std = lambda t: math.sqrt(p.alpha(t).item() ** 2 * s ** 2 + p.sigma(t).item() ** 2)
    denoiser = lambda x, t: p.alpha(t).item() * s ** 2 / std(t) ** 2 * x      # E[x0 | x_t]
    x_T = torch.linspace(-2, 2, 9, dtype=torch.float64)[:, None]
    exact = x_T * std(0) / std(999)
    errors = [(ddim(denoiser, p, x_T, torch.linspace(999, 0, n + 1, dtype=torch.float64)) - exact).abs().max().item()
              for n in (111, 333, 999)]
    assert errors[0] / errors[1] == pytest.approx(3, rel=0.15)
    assert errors[1] / errors[2] == pytest.approx(3, rel=0.15)
    assert errors[2] < 5e-3


# --- distributions -------------------------------------------------------------------------------

@pytest.mark.parametrize("variance", ["small", "large"])
@pytest.mark.parametrize("make_mixture,n", [(eight_gaussians, 4000), (multiscale_2d, 4000), (image_mixture, 1000)],
                         ids=["eight_gaussians", "multiscale_2d", "image_mixture"])
def test_ddpm_1000_steps_reproduces_mixture(make_mixture, n, variance):
    mix = make_mixture()
    p = DDPM()
    x_T = p.prior_sample((n,) + mix.event_shape, generator=gen(10), dtype=torch.float64)
    x = scorekit.sample(mix.eps_model(p), x_T, betas=p.betas, sampler="ddpm", num_steps=1000,
                        variance=variance, generator=gen(11))
    assert_matches_mixture(x, mix)


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_1000_steps_reproduces_mixture(eta):
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((4000, 2), generator=gen(20), dtype=torch.float64)
    x = scorekit.sample(mix.eps_model(p), x_T, betas=p.betas, sampler="ddim", num_steps=1000,
                        eta=eta, generator=gen(21))
    assert_matches_mixture(x, mix)


def test_simple_ve_ancestral_sampler_reproduces_mixture():
    """The lectures' x_t = x_0 + sqrt(t) eps with unit-variance steps: its last step returns
    E[x_0 | x_1] (sigma = 1), so it suits data whose scales are well above 1; and its prior
    N(0, T I) ignores the data's own spread, so T must dwarf it."""
    mix = eight_gaussians(radius=8.0, std=4.0)
    p = SimpleVE(2000)
    x_T = p.prior_sample((3000, 2), generator=gen(30), dtype=torch.float64)
    x = ddpm(mix.denoiser(p), p, x_T, make_timesteps(p, 2000), generator=gen(31))
    assert_matches_mixture(x, mix)


PROCESSES = [DDPM(), DDPM(schedule="cosine"), VPSDE(), SubVPSDE(), VESDE(), EDM()]
CONFIGS = [("ddpm", {"variance": "small"}), ("ddpm", {"variance": "large"}),
           ("ddim", {"eta": 0.0}), ("ddim", {"eta": 0.5}), ("ddim", {"eta": 1.0})]
# score-based samplers
CONFIGS += [("reverse_sde", {}), ("reverse_diffusion", {}),
            ("pc", {"predictor": "reverse_diffusion", "corrector": "langevin"}),
            ("pc", {"predictor": "ddim", "corrector": "langevin"})]
# probability-flow ODE samplers
CONFIGS += [("ode_euler", {}), ("ode_heun", {}), ("ode_adaptive", {})]
# fast solvers: DPM-Solver++ and UniPC
CONFIGS += [("dpmpp_2m", {}), ("dpmpp_3m", {}), ("dpmpp_2s", {}), ("dpmpp_3s", {}), ("dpmpp_2m_sde", {}),
            ("dpmpp_3m_sde", {}), ("unipc", {"order": 2}), ("unipc", {"order": 3, "variant": "bh1"})]
# fast solvers: EDM, iPNDM / DEIS, Euler
CONFIGS += [("euler", {}), ("euler_ancestral", {}), ("edm_heun", {}), ("edm", {}), ("ipndm", {}), ("deis", {})]


def test_every_sampler_is_in_the_conformance_suite():
    assert {name for name, _ in CONFIGS} == set(SAMPLERS)


def test_every_sampler_option_has_its_values_listed():
    """scorekit.samplers.options lists the values of every option of every registered sampler (the
    command line's help and checks come from it), and each default is among them."""
    from scorekit.samplers.options import option_values
    from scorekit.sampling import sampler_options

    for name in SAMPLERS:
        for option, default in sampler_options(name).items():
            values = option_values(option, name)
            assert isinstance(values, str) or default in values, (name, option, values)


def _listed_choices():
    from scorekit.samplers.options import option_values
    from scorekit.sampling import sampler_options

    return [(name, option, option_values(option, name)) for name in SAMPLERS for option in sampler_options(name)
            if isinstance(option_values(option, name), tuple) and option != "variance"]   # variances: test_variances


@pytest.mark.parametrize("name,option,values", _listed_choices(), ids=lambda v: str(v))
def test_listed_option_values_are_the_ones_the_sampler_accepts(name, option, values):
    """Each listed value runs (a grid that ends at t = 0, where sigma > 0, so that every option
    applies), and a value outside the list is refused."""
    process, mix = DDPM(num_steps=20), eight_gaussians()
    x_T = process.prior_sample((4, 2), generator=gen(0), dtype=torch.float64)
    ts = make_timesteps(process, 4, t_end=0.0)
    for value in values:
        x = SAMPLERS[name](mix.denoiser(process), process, x_T, ts, generator=gen(1), **{option: value})
        assert torch.isfinite(x).all()
    outside = max(values) + 1 if isinstance(values[0], int) else "bogus"
    with pytest.raises(ScorekitError, match=option):
        SAMPLERS[name](mix.denoiser(process), process, x_T, ts, generator=gen(1), **{option: outside})


@pytest.mark.parametrize("name,options", CONFIGS, ids=[f"{n}-{o}" for n, o in CONFIGS])
@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_conformance(process, name, options):
    """Every sampler on every process, from the process's prior, 250 steps, exact denoiser of a
    multi-scale 2-D mixture: the samples match the mixture. (The simple VE process, whose unit
    steps need data of a larger scale, has its own test above.)"""
    mix = multiscale_2d()
    x_T = process.prior_sample((2000, 2), generator=gen(40), dtype=torch.float64)
    x = SAMPLERS[name](mix.denoiser(process), process, x_T, grid(process, 250), generator=gen(41), **options)
    assert_matches_mixture(x, mix)


# --- float32 against float64 ------------------------------------------------------------------------

def draws_noise(name, options):
    """Whether a sampler configuration is stochastic: it refuses to run without a generator."""
    p = DDPM()
    try:
        SAMPLERS[name](lambda x, t: torch.zeros_like(x), p, torch.zeros(1, 1), grid(p, 2), **options)
    except ScorekitError as err:
        if "draws random noise" in str(err):
            return True
        raise
    return False


# the deterministic configurations of the suite, and the noise-free forms of the stochastic samplers
DETERMINISTIC = [(n, o) for n, o in CONFIGS + [("euler_ancestral", {"eta": 0.0}), ("edm", {"s_churn": 0.0}),
                                                ("dpmpp_2m_sde", {"eta": 0.0}), ("dpmpp_3m_sde", {"eta": 0.0})]
                 if not draws_noise(n, o)]
F32_EPS = torch.finfo(torch.float32).eps        # u = 2^-23: float32 rounds relatively by at most u / 2


def float32_rounding(denoiser, generator):
    """The denoiser in float64 with float32-sized perturbations of its input and output: each value
    times ``1 + u (xi + zeta)``, ``xi`` per element and ``zeta`` per sample (a coefficient's rounding
    moves a whole sample along one direction), both uniform on [-1, 1]."""
    def jitter(v):
        per_sample = (v.shape[0],) + (1,) * (v.ndim - 1)
        xi = 2 * torch.rand(v.shape, generator=generator, dtype=v.dtype) - 1
        zeta = 2 * torch.rand(per_sample, generator=generator, dtype=v.dtype) - 1
        return v * (1 + F32_EPS * (xi + zeta))
    return lambda x, t: jitter(denoiser(jitter(x), t))


def test_deterministic_configurations_cover_every_sampler():
    assert {name for name, _ in DETERMINISTIC} == set(SAMPLERS) - {"ddpm", "reverse_sde", "reverse_diffusion", "pc"}


@pytest.mark.parametrize("name,options", DETERMINISTIC, ids=[f"{n}-{o}" for n, o in DETERMINISTIC])
@pytest.mark.parametrize("process", PROCESSES, ids=repr)
def test_float32_stays_within_rounding_of_float64(process, name, options):
    """From the same x_T (float32 values), a deterministic sampler run in float32 stays within a small
    multiple of the problem's own sensitivity to float32 rounding of its float64 result. The
    cosine DDPM schedule starts where alpha = 5e-5 (EDM's noise level sigma / alpha = 2e4).

    The tolerance. The sensitivity is measured, not assumed: the same sampler in float64 with the
    denoiser's input and output perturbed by float32-sized relative amounts (``float32_rounding``)
    moves the result by ``delta``; this is ``u`` times the condition of the problem (the flow's
    Lipschitz growth from each step to the data, the data scale, the number of steps), measured
    on the trajectory itself. A float32 run rounds the same quantities plus the few terms of each
    update (some 5-10 roundings per evaluation of at most u / 2 each, against two injected
    perturbations of up to u), and one random draw estimates the size of such an accumulation only
    to within a factor of about 2: a sampler whose float32 arithmetic is stable stays within
    20 ``delta``. A form that cancels large terms does not: an update of ``x / alpha`` ~ 1e4 that
    lands at a noise level ~ 10 keeps ~1e3 u of relative error. The floor ``u max|x_0|`` is the
    rounding of the result itself."""
    mix = image_mixture()
    ts = grid(process, 20)
    x_T = process.prior_sample((64,) + mix.event_shape, generator=gen(70), dtype=torch.float32)
    run = lambda x, denoiser: SAMPLERS[name](denoiser, process, x, ts, **options)
    exact = run(x_T.double(), mix.denoiser(process))
    delta = (run(x_T.double(), float32_rounding(mix.denoiser(process), gen(71))) - exact).abs().max().item()
    tolerance = 20 * max(delta, F32_EPS * exact.abs().max().item())
    error = (run(x_T, mix.denoiser(process)).double() - exact).abs().max().item()
    assert error <= tolerance, f"float32 differs from float64 by {error:.3g}; rounding sensitivity {delta:.3g}"


# --- DDIM as an ODE solver -------------------------------------------------------------------------

def ode_solution(mix, p: DDPM, x_T: np.ndarray, t_start: float, t_end: float) -> np.ndarray:
    r"""High-accuracy probability-flow ODE in DDIM's variables: with xb = x / alpha and
    sb = sigma / alpha, dxb/dsb = eps(alpha xb, t(sb)) (Song et al. 2021, eq. 14)."""
    model = mix.eps_model(p)
    shape = x_T.shape

    def rhs(sb, y):
        t = p.t_from_log_snr(torch.tensor(-2 * math.log(sb), dtype=torch.float64))
        a = p.alpha(t).item()
        x = torch.from_numpy(a * y.reshape(shape))
        return model(x, t).numpy().ravel()

    sb0 = (p.sigma(t_start) / p.alpha(t_start)).item()
    sb1 = max((p.sigma(t_end) / p.alpha(t_end)).item(), 1e-7)    # the data (sigma = 0): stop 1e-7 short
    y0 = x_T.ravel() / p.alpha(t_start).item()
    sol = solve_ivp(rhs, (sb0, sb1), y0, method="DOP853", rtol=1e-10, atol=1e-10)
    assert sol.success
    return sol.y[:, -1].reshape(shape) * p.alpha(p.t_from_log_snr(torch.tensor(-2 * math.log(sb1)))).item()


def test_ddim_converges_to_the_ode_at_first_order():
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((128, 2), generator=gen(50), dtype=torch.float64)
    exact = torch.from_numpy(ode_solution(mix, p, x_T.numpy(), 999.0, 0.0))
    errors = {}
    for n in (333, 999, 2997):      # grids 999 -> 0 with n equal steps (thirds for 2997)
        ts = torch.linspace(999, 0, n + 1, dtype=torch.float64)
        out = ddim(mix.denoiser(p), p, x_T, ts)
        errors[n] = (out - exact).pow(2).mean().sqrt().item()
    for a, b in ((333, 999), (999, 2997)):
        order = math.log(errors[a] / errors[b]) / math.log(b / a)
        assert 0.8 < order < 1.25, (errors, order)
    assert errors[999] < 3e-3


def test_ddim_1000_steps_matches_ode_to_data():
    """The full 1000-step DDIM (its last step jumps from t = 0 to the data) against the ODE
    solved all the way to sigma = 0, on a mixture whose narrowest scale (0.1) is well above
    sigma at t = 0 (0.01)."""
    mix = eight_gaussians()
    p = DDPM()
    x_T = p.prior_sample((128, 2), generator=gen(51), dtype=torch.float64)
    exact = ode_solution(mix, p, x_T.numpy(), 999.0, -1.0)
    out = scorekit.sample(mix.eps_model(p), x_T, betas=p.betas, sampler="ddim", num_steps=1000)
    rmse = np.sqrt(((out.numpy() - exact) ** 2).mean())
    assert rmse < 5e-3


# --- inversion ---------------------------------------------------------------------------------------

def test_invert_maps_gaussian_data_along_the_exact_flow_at_first_order():
    """scorekit.invert on data N(mu, s^2 I) with the exact eps-model: the probability-flow map is linear,
    x_T = alpha_T mu + sqrt(alpha_T^2 s^2 + sigma_T^2) / s (x_0 - mu), and the latents converge to it
    at DDIM's first order, as does the round trip through scorekit.sample(sampler="ddim") on the same
    grid: the error is c / n + O(1 / n^2), so doubling n halves it up to a relative O(1 / n) (within
    0.02 of 1/2 for n >= 50 on the log-SNR grid, whose steps are all of the same size)."""
    mu, s = 0.3, 0.5
    mix, p = scorekit.toy.GaussianMixture([1.0], [[mu, mu]], stds=s), DDPM()
    x0 = mix.sample(256, generator=gen(0), dtype=torch.float64)
    a_T, s_T = p.alpha(p.t_max).item(), p.sigma(p.t_max).item()
    exact = a_T * mu + math.sqrt(a_T ** 2 * s ** 2 + s_T ** 2) / s * (x0 - mu)
    flow, trip = [], []
    for n in (50, 100, 200, 400):
        x_T = scorekit.invert(mix.eps_model(p), x0, betas=p.betas, num_steps=n, spacing="log_snr")
        back = scorekit.sample(mix.eps_model(p), x_T, betas=p.betas, sampler="ddim", num_steps=n, spacing="log_snr")
        flow.append((x_T - exact).pow(2).mean().sqrt().item())
        trip.append((back - x0).pow(2).mean().sqrt().item())
    for errors in (flow, trip):
        for e1, e2 in zip(errors, errors[1:]):
            assert e2 / e1 == pytest.approx(0.5, abs=0.02), errors
    # the same as ddim_invert on the grid sample would use; refined steps invert sampling exactly
    ts = make_timesteps(p, 30)
    d = scorekit.Denoiser(mix.eps_model(p), p, "eps")
    torch.testing.assert_close(scorekit.invert(mix.eps_model(p), x0, process=p, num_steps=30),
                               ddim_invert(d, p, x0, ts), rtol=0, atol=0)
    x_T = scorekit.invert(mix.eps_model(p), x0, process=p, num_steps=30, fixed_point_iters=50)
    back = scorekit.sample(mix.eps_model(p), x_T, process=p, sampler="ddim", num_steps=30)
    assert (back - x0).abs().max().item() < 1e-8


def test_ddim_invert_is_not_a_sampler_and_says_where_it_is():
    x = torch.zeros(2, 2)
    with pytest.raises(ScorekitError, match=r"not a sampler; use scorekit.invert\(model, x0"):
        scorekit.sample(lambda x, t: x, x, process=DDPM(), sampler="ddim_invert")


def test_ddim_inversion_reconstructs():
    mix = eight_gaussians()
    p = DDPM()
    x0 = mix.sample(64, generator=gen(60), dtype=torch.float64)
    d = mix.denoiser(p)
    errors = {}
    for n in (20, 100, 500):
        ts = make_timesteps(p, n, "linspace")
        x_T = ddim_invert(d, p, x0, ts)
        errors[n] = (ddim(d, p, x_T, ts) - x0).abs().max().item()
    assert errors[500] < errors[100] < errors[20]
    assert errors[500] < 0.02
    ts = make_timesteps(p, 100, "linspace")
    x_T = ddim_invert(d, p, x0, ts, fixed_point_iters=30)
    assert (ddim(d, p, x_T, ts) - x0).abs().max().item() < 1e-6
    # the inverted noise looks like the prior
    x_T = ddim_invert(d, p, mix.sample(4000, generator=gen(61), dtype=torch.float64), make_timesteps(p, 100))
    assert abs(x_T.mean().item()) < 5 / math.sqrt(8000) and abs(x_T.std().item() - 1) < 0.05


def test_callback_and_progress():
    mix = eight_gaussians()
    p = DDPM()
    seen = []
    x_T = p.prior_sample((8, 2), generator=gen(0))
    out = scorekit.sample(mix.eps_model(p), x_T, betas=p.betas, num_steps=5, progress=True,
                          callback=lambda i, t, x, x0: seen.append((i, t, x.shape, x0.shape)))
    assert [s[0] for s in seen] == list(range(5)) and [s[1] for s in seen] == [999, 799, 599, 399, 199]
    assert out.dtype == torch.float32 and out.shape == (8, 2)


def test_same_seed_same_samples():
    mix = eight_gaussians()
    p = DDPM()
    run = lambda: scorekit.sample(mix.eps_model(p), p.prior_sample((16, 2), generator=gen(3)), betas=p.betas,
                                  sampler="ddpm", num_steps=50, generator=gen(4))
    assert torch.equal(run(), run())


def test_clipping_and_thresholding_bound_x0_pred():
    p = DDPM()
    seen = []
    model = lambda x, t: -5 * x        # an eps-model whose x0_pred is far outside [-1, 1]
    x_T = p.prior_sample((4, 3, 4, 4), generator=gen(0))
    cb = lambda i, t, x, x0: seen.append(x0.abs().max().item())
    scorekit.sample(model, x_T, betas=p.betas, num_steps=5, clip=1.0, callback=cb)
    assert max(seen) <= 1.0
    seen.clear()
    scorekit.sample(model, x_T, betas=p.betas, num_steps=5, threshold=0.9, threshold_max=3.0, callback=cb)
    assert max(seen) <= 1.0 + 1e-6


def test_dynamic_thresholding_is_imagens_uncapped_by_default():
    """Saharia et al. (2022) sec. 2.3 by hand: s = max(P-quantile of |x0|, 1) per sample, x0 clamped to
    [-s, s] and divided by s, with no cap on s unless threshold_max is given; so a sample inside
    [-1, 1] is untouched and one far outside is shrunk, not just clipped."""
    from scorekit.thresholding import dynamic_threshold

    x0 = torch.stack([torch.linspace(-0.8, 0.9, 200, dtype=torch.float64),      # inside: s = 1
                      torch.linspace(-4.0, 4.0, 200, dtype=torch.float64)])     # outside: s ~ 3.96
    got = dynamic_threshold(x0, 0.995)
    s = np.maximum(np.quantile(np.abs(x0.numpy()), 0.995, axis=1), 1.0)[:, None]
    want = np.clip(x0.numpy(), -s, s) / s
    assert s[1, 0] > 3.9
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(got[0], x0[0], rtol=0, atol=0)
    assert not torch.allclose(got[1], x0[1].clamp(-1, 1))         # not the static clip
    capped = dynamic_threshold(x0, 0.995, max_value=2.0)
    np.testing.assert_allclose(capped[1].numpy(), np.clip(x0[1].numpy(), -2, 2) / 2, rtol=1e-12)
    torch.testing.assert_close(dynamic_threshold(x0, 0.995, max_value=1.0), x0.clamp(-1, 1))


# --- bad input ---------------------------------------------------------------------------------------

def _model(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("kwargs,msg", [
    (dict(sampler="ddim", eta=-0.5), "eta must be >= 0"),
    (dict(num_steps=1001), "more than the model's 1000 training steps"),
    (dict(spacing="cubic"), "unknown spacing 'cubic'"),
    (dict(sampler="heun"), "unknown sampler 'heun'"),
    (dict(sampler="ddim", variance="small"), "has no option variance"),
    (dict(sampler="ddpm"), "pass generator="),
    (dict(sampler="ddpm", variance="medium", generator=torch.Generator()), "unknown variance 'medium'"),
    (dict(prediction_type="epsilon"), "unknown prediction type"),
    (dict(betas=None), "give the model's schedule"),
    (dict(betas=[0.1, 2.0]), "beta"),
    (dict(clip=1.0, threshold=0.99), "either clip or threshold"),
])
def test_bad_arguments_are_named(kwargs, msg):
    args = dict(betas=DDPM().betas, num_steps=10)
    args.update(kwargs)
    with pytest.raises(ScorekitError, match=msg):
        scorekit.sample(_model, torch.zeros(2, 3), **args)


def test_bad_start_and_model_output():
    p = DDPM()
    x = torch.zeros(2, 3)
    x[0, 1] = float("nan")
    with pytest.raises(ScorekitError, match="x_T contains NaN"):
        scorekit.sample(_model, x, betas=p.betas)
    with pytest.raises(ScorekitError, match="model output has shape"):
        scorekit.sample(lambda x, t: x[:, :2], torch.zeros(2, 3), betas=p.betas)
    with pytest.raises(ScorekitError, match="batch dimension"):
        scorekit.sample(_model, torch.zeros(3), betas=p.betas)
    with pytest.raises(ScorekitError, match="model times must lie in"):
        ddim(_model, p, torch.zeros(2, 3), torch.tensor([1500.0, -1.0]))
    with pytest.raises(ScorekitError, match="too large"):
        ddim(lambda x, t: x, p, torch.zeros(2, 3), make_timesteps(p, 10), eta=3.0, generator=gen(0))



@pytest.mark.parametrize("process", [VPSDE(), SubVPSDE(), VESDE(), EDM()], ids=repr)
@pytest.mark.parametrize("sampler", ["ddim", "euler", "edm_heun", "dpmpp_2m", "unipc"])
def test_default_grid_of_a_continuous_process_is_as_good_as_its_best(process, sampler):
    """With no spacing named, a continuous process's own grid (``default_spacing``) is within 1.5x
    the best of the uniform, log-SNR and Karras grids at 20 steps, by the sliced-Wasserstein
    distance of an exact denoiser's samples to the mixture (same noise, reference and projections
    for every grid; the best grids sit at the metric's noise floor, about 0.1 here, so 1.5x is
    about three of its standard deviations). Uniform steps in EDM's time sigma put 19 of 20 steps
    above sigma = 4 and land an order of magnitude off."""
    mix = eight_gaussians()
    x_T = process.prior_sample((2000, 2), generator=gen(0), dtype=torch.float64)
    ref = mix.sample(2000, generator=gen(1), dtype=torch.float64)

    def distance(spacing):
        x = SAMPLERS[sampler](mix.denoiser(process), process, x_T, make_timesteps(process, 20, spacing),
                              generator=gen(2))
        return sliced_wasserstein(x, ref, generator=gen(3))

    best = min(distance(s) for s in ("uniform", "log_snr", "karras"))
    assert distance(None) <= 1.5 * best, (process.default_spacing, distance(None), best)
