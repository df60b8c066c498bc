"""Probability-flow ODE samplers against a high-accuracy solution of the same ODE (SciPy's DOP853
at rtol 1e-10, written in DDIM's variables, independently of the samplers' own form): Euler
converges at order 1, Heun at order 2, the adaptive solver to its tolerance; exact identities;
evaluation counts; bad input."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import scorekit
from scorekit import EDM, VPSDE, DDPM, SAMPLERS, ScorekitError, ddim, make_timesteps
from scorekit.samplers.ode import (flow_coefficients, ode_adaptive, ode_euler, ode_heun,
                                   solve_probability_flow)
from scorekit.toy import eight_gaussians, multiscale_2d


def gen(seed):
    return torch.Generator().manual_seed(seed)


def reference_flow(mix, p, x_T, t_start, t_end):
    r"""The probability-flow ODE in ``xb = x / alpha``, ``sb = sigma / alpha``:
    ``dxb/dsb = eps(alpha xb, t(sb))`` (Song et al. 2021, eq. 14), solved by DOP853 at rtol 1e-10
    from ``t_start`` to ``t_end`` (both with sigma > 0)."""
    model = mix.eps_model(p)
    shape = x_T.shape
    t_of = lambda sb: p.t_from_log_snr(torch.tensor(-2 * math.log(sb), dtype=torch.float64))

    def rhs(sb, y):
        t = t_of(sb)
        x = torch.from_numpy(p.alpha(t).item() * y.reshape(shape))
        return model(x, t.item()).numpy().ravel()

    sb = lambda t: (p.sigma(t) / p.alpha(t)).item()
    y0 = x_T.numpy().ravel() / p.alpha(t_start).item()
    sol = solve_ivp(rhs, (sb(t_start), sb(t_end)), y0, method="DOP853", rtol=1e-10, atol=1e-10)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].reshape(shape) * p.alpha(t_end).item())


def log_snr_grid(p, n):
    """n steps from t_max to t_min, uniform in log-SNR, ending at t_min (sigma > 0: no final jump)."""
    return make_timesteps(p, n + 1, "log_snr")[:-1]


def rmse(a, b):
    return (a - b).pow(2).mean().sqrt().item()


def fitted_order(steps, errors):
    """Minus the slope of log(error) against log(steps), least squares."""
    return -np.polyfit(np.log(steps), np.log(errors), 1)[0]


PROCESS_IDS = ["VPSDE", "EDM"]


@pytest.fixture(scope="module", params=[VPSDE(), EDM()], ids=PROCESS_IDS)
def problem(request):
    p = request.param
    mix = eight_gaussians()
    x_T = p.prior_sample((64, 2), generator=gen(1), dtype=torch.float64)
    exact = reference_flow(mix, p, x_T, p.t_max, p.t_min)
    return p, mix, x_T, exact


def test_euler_converges_at_first_order(problem):
    p, mix, x_T, exact = problem
    steps = [40, 80, 160, 320]
    errors = [rmse(ode_euler(mix.denoiser(p), p, x_T, log_snr_grid(p, n)), exact) for n in steps]
    order = fitted_order(steps, errors)
    assert 0.9 < order < 1.1, (errors, order)


def test_heun_converges_at_second_order(problem):
    p, mix, x_T, exact = problem
    steps = [80, 160, 320]       # (at 20-40 steps the observed order is still ~1.75 on VPSDE)
    errors = [rmse(ode_heun(mix.denoiser(p), p, x_T, log_snr_grid(p, n)), exact) for n in steps]
    order = fitted_order(steps, errors)
    assert 1.8 < order < 2.2, (errors, order)
    assert errors[-1] < 1e-4


@pytest.mark.parametrize("method", ["RK45", "DOP853"])
def test_adaptive_matches_the_reference_to_its_tolerance(problem, method):
    p, mix, x_T, exact = problem
    errors = {}
    for tol in (1e-4, 1e-7):
        out = ode_adaptive(mix.denoiser(p), p, x_T, log_snr_grid(p, 3), rtol=tol, atol=tol, method=method)
        errors[tol] = rmse(out, exact)
    # the global error of a tolerance-controlled solve is of the order of the tolerance
    assert errors[1e-4] < 10 * 1e-4 and errors[1e-7] < 10 * 1e-7, errors
    assert errors[1e-7] < errors[1e-4]


def test_adaptive_to_the_data_ends_with_the_denoiser():
    """Ending at the data, ode_adaptive integrates to the lowest model time and returns D there."""
    mix = eight_gaussians()
    p = VPSDE()
    x_T = p.prior_sample((16, 2), generator=gen(2), dtype=torch.float64)
    ts = make_timesteps(p, 10, "log_snr")
    assert ts[-1] == p.t_data and ts[-2] == p.t_min
    out = ode_adaptive(mix.denoiser(p), p, x_T, ts, rtol=1e-8, atol=1e-8)
    expected = mix.denoiser(p)(reference_flow(mix, p, x_T, p.t_max, p.t_min), p.t_min)
    assert rmse(out, expected) < 1e-6


# --- exact identities -----------------------------------------------------------------------------

def test_flow_coefficients_give_the_score_form():
    """a x - b D = f x - g^2/2 * score with Tweedie's score, against the mixture's exact score."""
    mix = multiscale_2d()
    x = mix.sample(32, generator=gen(3), dtype=torch.float64) * 1.3
    for p, t in ((DDPM(), 417.3), (VPSDE(), 0.31), (EDM(), 2.5)):
        alpha, sigma = p.alpha(t).item(), p.sigma(t).item()
        a, b = flow_coefficients(p, t)
        velocity = a * x - b * mix.denoiser(p)(x, t)
        score = mix.score(x, alpha, sigma)
        expected = p.f(torch.tensor(t)).item() * x - 0.5 * p.g2(torch.tensor(t)).item() * score
        assert torch.allclose(velocity, expected, rtol=1e-8, atol=1e-8), p


def test_euler_on_edm_is_ddim():
    """With alpha = 1 and sigma = t, DDIM's step x0 + sigma_s (x - x0) / sigma_t is Euler's step
    in t; so is the last step onto sigma = 0."""
    mix = multiscale_2d()
    p = EDM()
    x_T = p.prior_sample((64, 2), generator=gen(4), dtype=torch.float64)
    ts = make_timesteps(p, 30, "log_snr")
    a = ode_euler(mix.denoiser(p), p, x_T, ts)
    b = ddim(mix.denoiser(p), p, x_T, ts)
    assert torch.allclose(a, b, rtol=1e-10, atol=1e-10)


def test_gaussian_data_transport_is_exact_in_the_limit():
    """Data N(0, s^2 I): the ODE keeps x_t / std_t constant with std_t^2 = alpha^2 s^2 + sigma^2."""
    s = 0.5
    p = DDPM()
    mix = scorekit.toy.GaussianMixture([1.0], [[0.0, 0.0]], stds=s)
    std = lambda t: math.sqrt(p.alpha(t).item() ** 2 * s ** 2 + p.sigma(t).item() ** 2)
    x_T = torch.linspace(-2, 2, 18, dtype=torch.float64).reshape(9, 2)
    exact = x_T * std(0.0) / std(999.0)
    lam = p.log_snr(torch.tensor([999.0, 0.0], dtype=torch.float64))
    ts = p.t_from_log_snr(torch.linspace(lam[0].item(), lam[1].item(), 101, dtype=torch.float64))
    ts[0], ts[-1] = 999.0, 0.0
    heun = ode_heun(mix.denoiser(p), p, x_T, ts)
    euler = ode_euler(mix.denoiser(p), p, x_T, ts)
    # DDPM's log alpha_bar is piecewise linear in t: Heun gains less than order 2 here
    # (measured: Euler 8.2e-3, Heun 2.2e-4 at 100 steps)
    heun_error, euler_error = (heun - exact).abs().max(), (euler - exact).abs().max()
    assert heun_error < 5e-4 and heun_error < euler_error / 10 and euler_error < 2e-2


# --- evaluation counts, callbacks, dtypes ----------------------------------------------------------

def test_evaluation_counts():
    mix = eight_gaussians()
    p = VPSDE()
    x_T = p.prior_sample((8, 2), generator=gen(5))
    to_data = make_timesteps(p, 10, "log_snr")
    not_data = log_snr_grid(p, 10)
    calls = []
    cb = lambda i, t, x, x0: calls.append((i, t))
    for fn, ts, nfe in ((ode_euler, to_data, 10), (ode_euler, not_data, 10),
                        (ode_heun, to_data, 19), (ode_heun, not_data, 20)):
        calls.clear()
        out = fn(mix.denoiser(p), p, x_T, ts, callback=cb, progress=True)
        assert [i for i, _ in calls] == list(range(nfe)), fn.__name__
        assert out.dtype == torch.float32 and out.shape == x_T.shape
    calls.clear()
    sol = solve_probability_flow(mix.denoiser(p), p, x_T, p.t_max, p.t_min, denoise_end=True, callback=cb)
    assert sol.nfe == len(calls) and [i for i, _ in calls] == list(range(sol.nfe)) and sol.num_steps > 0
    assert calls[-1][1] == p.t_min
    calls.clear()
    out = ode_adaptive(mix.denoiser(p), p, x_T, to_data, callback=cb, progress=True)
    assert len(calls) == sol.nfe and torch.equal(out, sol.x)


def test_samplers_run_through_sample_with_their_options():
    mix = eight_gaussians()
    p = DDPM()
    x_T = p.prior_sample((8, 2), generator=gen(6))
    for name in ("ode_euler", "ode_heun"):
        assert SAMPLERS[name] is getattr(scorekit.samplers, name)
        x = scorekit.sample(mix.eps_model(p), x_T, process=p, sampler=name, num_steps=20, spacing="linspace")
        assert torch.isfinite(x).all()
    x = scorekit.sample(mix.eps_model(p), x_T, process=p, sampler="ode_adaptive", spacing="linspace",
                        num_steps=2, rtol=1e-4, atol=1e-4, method="DOP853")
    assert torch.isfinite(x).all()
    assert scorekit.sampling.sampler_options("ode_adaptive") == {"rtol": 1e-5, "atol": 1e-5, "method": "RK45"}


@pytest.mark.parametrize("options,msg", [
    (dict(method="Radau"), "unknown ODE method 'Radau'"),
    (dict(rtol=-1.0), "rtol must be a positive"),
    (dict(atol=0.0), "atol must be a positive"),
])
def test_bad_options_are_named(options, msg):
    p = VPSDE()
    with pytest.raises(ScorekitError, match=msg):
        ode_adaptive(lambda x, t: x, p, torch.zeros(2, 2), make_timesteps(p, 3), **options)


def test_bad_times_are_refused():
    p = VPSDE()
    with pytest.raises(ScorekitError, match="sigma > 0"):
        solve_probability_flow(lambda x, t: x, p, torch.zeros(2, 2), 1.0, 0.0)
    with pytest.raises(ScorekitError, match="model times must lie in"):
        ode_heun(lambda x, t: x, p, torch.zeros(2, 2), torch.tensor([2.0, 0.0]))
