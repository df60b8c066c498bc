"""DPM-Solver++ (2M, 3M, 2S, 3S, SDE) and UniPC against independent oracles.

* the phi-type weights ``psi_k`` against numerical quadrature;
* first-order steps against DDIM (eta = 0 and eta = 1, same noise);
* single-step solvers exact when ``x0_pred`` is a polynomial in lambda of degree < order
  (the exact solution by quadrature);
* the measured convergence order against a DOP853 solution of the probability-flow ODE
  (rtol 1e-11) on an exact Gaussian mixture;
* diffusers' DPMSolverMultistep/Singlestep and UniPCMultistep schedulers on identical inputs;
* eps-, x0- and v-prediction give the same samples; the SDE solvers reproduce a mixture.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

import scorekit.sampling

from scorekit import DDPM, EDM, SAMPLERS, VESDE, Denoiser, ScorekitError, ddim, make_timesteps
from scorekit.samplers.dpm_solver import (exponential_step, nodes, psi, step_groups,
                                          taylor_derivatives)
from scorekit.toy import eight_gaussians, image_mixture, multiscale_2d
from test_samplers import assert_matches_mixture

F64 = torch.float64
FAST = ["dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpmpp_3s", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def lam_grid(process, t_start, t_end, n):
    """``n`` steps uniform in lambda from ``t_start`` to ``t_end`` (both exact)."""
    lam = torch.linspace(process.log_snr(t_start).item(), process.log_snr(t_end).item(), n + 1, dtype=F64)
    ts = process.t_from_log_snr(lam)
    ts[0], ts[-1] = t_start, t_end
    return ts


# --- the weights and single steps ---------------------------------------------------------------

@pytest.mark.parametrize("k", [0, 1, 2, 3])
def test_psi_matches_quadrature(k):
    """psi_k(h) = int_0^h e^{-u} (h - u)^k / k! du to 1e-11 relative, from h = 1e-6 to 40."""
    for h in (1e-6, 1e-3, 0.1, 1.0, 1.99, 2.01, 7.0, 40.0):
        ref, _ = quad(lambda u: math.exp(-u) * (h - u) ** k / math.factorial(k), 0, h,
                      epsabs=0, epsrel=1e-13, limit=200)
        assert psi(k, h) == pytest.approx(ref, rel=1e-11, abs=0), (k, h)


def test_first_order_steps_are_ddim():
    """With only x0_pred, the ODE step is DDIM (eta = 0) and the SDE step (eta = 1) is the
    ancestral step with the posterior variance, DDIM with eta = 1, for the same noise."""
    mix, p = eight_gaussians(), DDPM()
    x = p.prior_sample((16, 2), generator=gen(0), dtype=F64) * 0.3
    s, t = nodes(p, [600.0, 450.0])
    x0 = mix.denoiser(p)(x, s.t)
    ode = exponential_step(x, s, t, [x0])
    torch.testing.assert_close(ode, ddim(mix.denoiser(p), p, x, [600.0, 450.0]), rtol=1e-12, atol=1e-12)
    sde = exponential_step(x, s, t, [x0], eta=1.0, noise=torch.randn(x.shape, generator=gen(3), dtype=F64))
    ref = ddim(mix.denoiser(p), p, x, [600.0, 450.0], eta=1.0, generator=gen(3))
    torch.testing.assert_close(sde, ref, rtol=1e-12, atol=1e-12)


def test_taylor_derivatives_of_a_quadratic():
    lams = [0.7, 0.2, -0.6]
    f = lambda lam: torch.tensor([1.5 - 2 * lam + 0.8 * lam ** 2], dtype=F64)
    d = taylor_derivatives(lams, [f(v) for v in lams])
    assert [v.item() for v in d] == pytest.approx([f(0.7).item(), -2 + 1.6 * 0.7, 1.6], rel=1e-13)


@pytest.mark.parametrize("name,degree", [("dpmpp_2s", 1), ("dpmpp_3s", 2)])
def test_single_step_exact_for_polynomial_x0(name, degree):
    """If x0_pred = c(lambda) is a polynomial of degree < order (whatever x), every step of a
    single-step solver integrates it exactly: x_end = (sigma_e / sigma_0) x_T
    + sigma_e int_{lambda_0}^{lambda_e} e^lambda c(lambda) dlambda (scipy quad)."""
    p = DDPM()
    coef = torch.tensor([[0.3, -1.0], [0.25, 0.4], [0.05, -0.03]], dtype=F64)[:degree + 1]
    c = lambda lam: sum(coef[j] * lam ** j for j in range(degree + 1))
    half_lam = lambda t: 0.5 * p.log_snr(t).item()
    denoiser = lambda x, t: c(half_lam(t)).expand_as(x)
    ts = lam_grid(p, 999.0, 10.0, 12)                 # 12 model times, end at sigma > 0
    x_T = p.prior_sample((3, 2), generator=gen(1), dtype=F64)
    out = SAMPLERS[name](denoiser, p, x_T, ts)
    l0, le = half_lam(999.0), half_lam(10.0)
    sig0, sige = p.sigma(999.0).item(), p.sigma(10.0).item()
    integral = torch.tensor([quad(lambda lam: math.exp(lam - le) * c(lam)[d].item(), l0, le,
                                  epsabs=0, epsrel=1e-13)[0] for d in range(2)], dtype=F64)
    exact = sige / sig0 * x_T + sige * math.exp(le) * integral
    torch.testing.assert_close(out, exact, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
def test_step_weights_match_quadrature(eta):
    """exponential_step with the Taylor derivatives of a quadratic x0(lambda) and no noise equals
    (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t c int_{lambda_s}^{lambda_t} e^{-c (lambda_t - lambda)}
    x0(lambda) dlambda, c = 1 + eta (scipy quad), for short and long steps."""
    p = DDPM()
    coef = (0.4, -1.3, 0.7)
    x0 = lambda lam: coef[0] + coef[1] * lam + coef[2] * lam ** 2
    x_s = torch.tensor([[0.9]], dtype=F64)
    for t_s, t_t in ((500.0, 480.0), (700.0, 100.0), (999.0, 0.0)):
        s, t = nodes(p, [t_s, t_t])
        derivs = [torch.tensor([[x0(s.lam)]], dtype=F64), torch.tensor([[coef[1] + 2 * coef[2] * s.lam]], dtype=F64),
                  torch.tensor([[2 * coef[2]]], dtype=F64)]
        c, h = 1 + eta, t.lam - s.lam
        out = exponential_step(x_s, s, t, derivs, eta=eta, noise=torch.zeros_like(x_s))
        integral = quad(lambda lam: math.exp(-c * (t.lam - lam)) * x0(lam), s.lam, t.lam, epsabs=0, epsrel=1e-13)[0]
        exact = t.sigma / s.sigma * math.exp(-eta * h) * 0.9 + t.alpha * c * integral
        assert out.item() == pytest.approx(exact, rel=1e-11), (t_s, t_t)


@pytest.mark.parametrize("eta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_keeps_the_marginal_of_a_point_mass(name, eta):
    """Data = one point c (D = c): from x_s ~ N(alpha_s c, sigma_s^2) every SDE step gives exactly
    N(alpha_t c, sigma_t^2), for every eta: the shrunk state keeps variance sigma_t^2 e^{-2 eta h}
    and the noise adds sigma_t^2 (1 - e^{-2 eta h}) (eta = 1 alone would not tell the noise's
    eta-dependence apart from e.g. 1 - e^{-2 h}). 20000 samples over 30 steps to t = 100: the
    standardised samples have mean 0 and variance 1 within 5 standard errors."""
    p, c, n = DDPM(), 0.7, 20000
    ts = make_timesteps(p, 30)
    ts[-1] = 100.0
    ts = ts[ts >= 100.0]
    x_T = p.alpha(ts[0]).item() * c + p.sigma(ts[0]).item() * torch.randn(n, 1, generator=gen(11), dtype=F64)
    out = SAMPLERS[name](lambda x, t: torch.full_like(x, c), p, x_T, ts, eta=eta, generator=gen(12))
    z = (out - p.alpha(100.0).item() * c) / p.sigma(100.0).item()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1) < 5 * math.sqrt(2 / n)


# --- convergence order against the probability-flow ODE ------------------------------------------

S_END = 0.08      # end of the grid: sigma / alpha = 0.08, well away from the singular data end


def ode_reference(mix, x_start: torch.Tensor, s_start: float, s_end: float) -> torch.Tensor:
    r"""The probability-flow ODE in ``y = x / alpha``, ``s = sigma / alpha`` (Song et al. 2021, eq. 14):
    ``dy/ds = (y - E[x0 | x0 + s eps = y]) / s``, the same for every process. DOP853, rtol 1e-11."""
    shape = x_start.shape

    def rhs(s, y):
        y = torch.from_numpy(y.reshape(shape))
        return ((y - mix.posterior_mean(y, 1.0, s)) / s).numpy().ravel()

    sol = solve_ivp(rhs, (s_start, s_end), x_start.numpy().ravel(), method="DOP853", rtol=1e-11, atol=1e-11)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].reshape(shape))


ORDER_CASES = [
    ("dpmpp_2m", {}, 2), ("dpmpp_2m", {"variant": "taylor"}, 2), ("dpmpp_2m", {"variant": "midpoint"}, 2),
    ("dpmpp_3m", {}, 3),
    ("dpmpp_2s", {}, 2), ("dpmpp_3s", {}, 3),
    # UniPC-p converges at order p + 1 (Zhao et al. 2023, Cor. 3.3)
    ("unipc", {"order": 1}, 2), ("unipc", {"order": 2, "variant": "bh1"}, 3), ("unipc", {"order": 2}, 3),
    ("unipc", {"order": 3}, 4),
]
# every configuration on DDPM; each solver's default on EDM (sigma(t) = t, alpha = 1)
ORDER_CASES = [("DDPM",) + case for case in ORDER_CASES] + [("EDM",) + case for case in ORDER_CASES if not case[1]]


@pytest.fixture(scope="module")
def order_problem():
    """Eight Gaussians of std 0.3, 16 starts; a DDPM and an EDM version of the same ODE."""
    mix = eight_gaussians(std=0.3)
    out = {}
    for process, t_start in ((DDPM(), 999.0), (EDM(), 80.0)):
        t_end = float(process.t_from_log_snr(torch.tensor(-2 * math.log(S_END), dtype=F64)))
        x_T = process.prior_sample((16, 2), generator=gen(7), dtype=F64)
        a0, a1 = process.alpha(t_start).item(), process.alpha(t_end).item()
        s0 = (process.sigma(t_start) / process.alpha(t_start)).item()
        s1 = (process.sigma(t_end) / process.alpha(t_end)).item()
        out[type(process).__name__] = (mix, process, x_T, t_start, t_end,
                                       a1 * ode_reference(mix, x_T / a0, s0, s1))
    return out


def warmup_grid(process, t_start, t_end, n):
    """``lam_grid`` with two extra nodes ``h^2`` and ``2 h^2`` after the start (``h`` the step in
    lambda). A multistep solver's first two steps (DDIM and second order) then have local errors
    O(h^4) and O(h^6): its exact order shows instead of the lower order of its warm-up, which is
    invisible at practical step counts only because ``x0_pred`` barely moves at the start."""
    ts = lam_grid(process, t_start, t_end, n)
    lam = 0.5 * process.log_snr(ts)
    h = (lam[1] - lam[0]).item()
    extra = process.t_from_log_snr(2 * (lam[0] + torch.tensor([h ** 2, 2 * h ** 2], dtype=F64)))
    return torch.cat([ts[:1], extra, ts[1:]])


@pytest.mark.parametrize("process_name,name,options,order", ORDER_CASES,
                         ids=[f"{p}-{n}-{o}" for p, n, o, _ in ORDER_CASES])
def test_convergence_order(order_problem, process_name, name, options, order):
    """RMSE to the ODE solution on grids uniform in lambda, halving the step: the least-squares
    slope of log(error) against log(steps) within 0.3 of the theoretical order, and the errors
    fall. Multistep solvers: 24, 48, 96 steps (+ two short warm-up steps, see ``warmup_grid``);
    UniPC 48, 96, 192, and UniPC-3 24 .. 192 (its slope between single halvings wanders from 4.7
    to 3.1 on this problem);
    single-step: 96, 192, 384 (divisible by 2 and 3, so every step has the full order; a step
    spans 2 or 3 grid intervals, so the asymptotic range starts later)."""
    mix, p, x_T, t0, t1, exact = order_problem[process_name]
    single = name in ("dpmpp_2s", "dpmpp_3s")
    if single:
        levels = (96, 192, 384)
    elif name == "unipc":
        levels = (24, 48, 96, 192) if order == 4 else (48, 96, 192)
    else:
        levels = (24, 48, 96)
    errors = []
    for n in levels:
        ts = lam_grid(p, t0, t1, n) if single else warmup_grid(p, t0, t1, n)
        out = SAMPLERS[name](mix.denoiser(p), p, x_T, ts, **options)
        errors.append((out - exact).pow(2).mean().sqrt().item())
    slope = -np.polyfit(np.log(levels), np.log(errors), 1)[0]
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert abs(slope - order) < 0.3, (errors, slope)


# --- the defaults ----------------------------------------------------------------------------------------

def flow_to_the_data(mix, process, x_T: torch.Tensor) -> torch.Tensor:
    r"""The exact flow map from ``x_T`` at ``t_max`` to sigma = 0: ``dy/ds = E[eps | y]`` in
    ``y = x / alpha``, ``s = sigma / alpha`` (finite at ``s = 0``), DOP853 at rtol 1e-10."""
    shape = x_T.shape
    rhs = lambda s, y: mix.posterior_noise(torch.from_numpy(y.reshape(shape)), 1.0, s).numpy().ravel()
    s_T = (process.sigma(process.t_max) / process.alpha(process.t_max)).item()
    sol = solve_ivp(rhs, (s_T, 0.0), (x_T / process.alpha(process.t_max)).numpy().ravel(), method="DOP853",
                    rtol=1e-10, atol=1e-10)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].reshape(shape))


def test_dpmpp_2m_default_weight_is_the_more_accurate_one():
    """The default ``variant`` of DPM-Solver++(2M) lands closer to the exact flow map than the other
    weight (the evidence across problems, grids and NFE is in BENCHMARKS.md, "Sampler defaults";
    here one of its cells: eight Gaussians, DDPM linear, 10 steps uniform in log-SNR). Verdict on
    the paired per-sample difference of squared errors, beyond 3 of its standard errors (256
    samples; the measured difference there is about 90 standard errors)."""
    mix, p = eight_gaussians(), DDPM()
    x_T = p.prior_sample((256, 2), generator=gen(31), dtype=F64)
    exact = flow_to_the_data(mix, p, x_T)
    ts = make_timesteps(p, 10, "log_snr")
    default = scorekit.sampling.sampler_options("dpmpp_2m")["variant"]
    other = {"taylor": "midpoint", "midpoint": "taylor"}[default]
    error = lambda **o: (SAMPLERS["dpmpp_2m"](mix.denoiser(p), p, x_T, ts, **o) - exact).pow(2).sum(1)
    d = error() - error(variant=other)
    assert d.mean() + 3 * d.std() / math.sqrt(d.numel()) < 0, (default, d.mean().item(), d.std().item())


def test_dpmpp_2m_sde_without_noise_is_dpmpp_2m_with_its_defaults():
    mix, p = eight_gaussians(), DDPM()
    x_T = p.prior_sample((16, 2), generator=gen(32), dtype=F64)
    ts = make_timesteps(p, 10, "log_snr")
    torch.testing.assert_close(SAMPLERS["dpmpp_2m_sde"](mix.denoiser(p), p, x_T, ts, eta=0.0),
                               SAMPLERS["dpmpp_2m"](mix.denoiser(p), p, x_T, ts), rtol=0, atol=0)


# --- the end, the number of calls, prediction types --------------------------------------------------

@pytest.mark.parametrize("process", [DDPM(), VESDE(), EDM()], ids=repr)
@pytest.mark.parametrize("name", FAST)
def test_step_to_the_data_returns_the_last_x0_pred(process, name):
    """sigma = 0 at the end: the limit of every step is alpha_data x0_pred of the last call."""
    mix = multiscale_2d()
    x_T = process.prior_sample((8, 2), generator=gen(2), dtype=F64)
    seen = []
    out = SAMPLERS[name](mix.denoiser(process), process, x_T, make_timesteps(process, 9, None if process.discrete
                         else "log_snr"), generator=gen(3), callback=lambda i, t, x, x0: seen.append((i, x0)))
    assert [i for i, _ in seen] == list(range(9))
    assert torch.equal(out, seen[-1][1])


@pytest.mark.parametrize("name", FAST)
def test_one_model_call_per_model_time(name):
    p = DDPM()
    for n in (1, 2, 3, 4, 5, 6, 7):
        calls = []
        SAMPLERS[name](lambda x, t: calls.append(t) or torch.zeros_like(x), p, torch.zeros(2, 3, dtype=F64),
                       make_timesteps(p, n), generator=gen(0))
        assert calls == make_timesteps(p, n)[:-1].tolist()


def test_unipc_final_corrector_adds_one_call_at_the_end():
    mix, p = eight_gaussians(std=0.3), DDPM()
    ts = lam_grid(p, 999.0, 20.0, 10)
    x_T = p.prior_sample((8, 2), generator=gen(4), dtype=F64)
    calls = []
    d = mix.denoiser(p)
    SAMPLERS["unipc"](lambda x, t: calls.append(t) or d(x, t), p, x_T, ts, final_corrector=1)
    assert calls == ts.tolist()
    with pytest.raises(ScorekitError, match="final_corrector"):
        SAMPLERS["unipc"](d, p, x_T, ts, final_corrector=2)


@pytest.mark.parametrize("name", FAST)
def test_eps_x0_v_models_give_the_same_samples(name):
    mix, p = image_mixture(), DDPM()
    x_T = p.prior_sample((4, 3, 8, 8), generator=gen(5), dtype=F64)
    ts = make_timesteps(p, 12)
    outs = [SAMPLERS[name](Denoiser(model(p), p, kind), p, x_T, ts, generator=gen(6))
            for model, kind in ((mix.eps_model, "eps"), (mix.x0_model, "x0"), (mix.v_model, "v"))]
    for out in outs[1:]:
        torch.testing.assert_close(out, outs[0], rtol=1e-9, atol=1e-9)


# --- SDE solvers ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["dpmpp_2m_sde", "dpmpp_3m_sde"])
def test_sde_solvers_reproduce_the_mixture(name):
    """50 model calls from DDPM's prior: sliced Wasserstein within the noise floor and every mode
    weight within 4 standard errors; the same seed gives the same samples."""
    mix, p = multiscale_2d(), DDPM()
    x_T = p.prior_sample((4000, 2), generator=gen(8), dtype=F64)
    ts = make_timesteps(p, 50)
    x = SAMPLERS[name](mix.denoiser(p), p, x_T, ts, generator=gen(9))
    assert_matches_mixture(x, mix)
    again = SAMPLERS[name](mix.denoiser(p), p, x_T[:64], ts, generator=gen(9))
    assert torch.equal(again, SAMPLERS[name](mix.denoiser(p), p, x_T[:64], ts, generator=gen(9)))
    assert not torch.equal(again, SAMPLERS[name](mix.denoiser(p), p, x_T[:64], ts, generator=gen(10)))


# --- bad input -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,options,msg", [
    ("dpmpp_2m", {"variant": "heun"}, "variant must be one of taylor, midpoint"),
    ("dpmpp_3s", {"variant": "euler"}, "variant must be one of"),
    ("dpmpp_2m_sde", {"eta": -1.0}, "eta must be >= 0"),
    ("unipc", {"order": 4}, "order must be one of 1, 2, 3"),
    ("unipc", {"variant": "bh3"}, "variant must be one of bh1, bh2"),
])
def test_bad_options_are_named(name, options, msg):
    p = DDPM()
    with pytest.raises(ScorekitError, match=msg):
        SAMPLERS[name](lambda x, t: x, p, torch.zeros(2, 2), make_timesteps(p, 5), generator=gen(0), **options)


def test_sde_needs_a_generator():
    p = DDPM()
    with pytest.raises(ScorekitError, match="pass generator="):
        SAMPLERS["dpmpp_2m_sde"](lambda x, t: x, p, torch.zeros(2, 2), make_timesteps(p, 5))


# --- diffusers on identical inputs -------------------------------------------------------------------

T = 1000


def diffusers_scheduler(cls, timesteps=None, num_steps=None, end_sigma_zero=True, **config):
    """A diffusers scheduler over DDPM's linear betas with float64 tables: ``alphas_cumprod`` and,
    after set_timesteps (which rounds them to float32), its ``sigmas``."""
    sched = cls(num_train_timesteps=T, beta_schedule="linear", prediction_type="epsilon", **config)
    p = DDPM()
    sched.alphas_cumprod = p.alpha_bar_table.clone()
    if timesteps is not None:
        sched.set_timesteps(timesteps=[int(t) for t in timesteps])
    else:
        sched.set_timesteps(num_steps)
    ab = p.alpha_bar_table[sched.timesteps.long()]
    last = torch.zeros(1, dtype=F64) if end_sigma_zero else ((1 - p.alpha_bar_table[:1]) / p.alpha_bar_table[:1]).sqrt()
    assert torch.allclose(sched.sigmas.double(), torch.cat([((1 - ab) / ab).sqrt(), last]), rtol=1e-6)
    sched.sigmas = torch.cat([((1 - ab) / ab).sqrt(), last])
    return sched, p


def run_diffusers(sched, model, x_T):
    xs, x = [], x_T
    for t in sched.timesteps:
        xs.append(x)
        x = sched.step(model(x, t), t, x).prev_sample
    return xs, x


def run_ours(name, p, model, x_T, ts, **options):
    xs = []
    out = SAMPLERS[name](Denoiser(model, p, "eps"), p, x_T, ts, callback=lambda i, t, x, x0: xs.append(x),
                         **options)
    return xs, out


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_same(ours, theirs, rtol):
    """Same model inputs at every call and the same sample, to ``rtol`` of the values' scale."""
    assert len(ours[0]) == len(theirs[0])
    for i, (a, b) in enumerate(zip(ours[0], theirs[0])):
        assert rel_err(a, b) <= rtol, f"call {i}: {rel_err(a, b):.3g}"
    assert rel_err(ours[1], theirs[1]) <= rtol, rel_err(ours[1], theirs[1])


MIXTURE = image_mixture()
SHAPE = (4, 3, 8, 8)


@pytest.fixture(scope="module")
def diffusers():
    return pytest.importorskip("diffusers")


# diffusers' DPMSolverMultistepScheduler rounds the state to float32 before each update ("sample =
# sample.to(torch.float32)"); everything else runs in float64 here. Agreement is therefore to
# float32 rounding of x_t, amplified a little along the trajectory (observed below 1e-6).
MULTISTEP_RTOL = 1e-6


@pytest.mark.parametrize("solver_type,variant", [("heun", "taylor"), ("midpoint", "midpoint")])
@pytest.mark.parametrize("n", [6, 20])
def test_dpmpp_2m_matches_diffusers(diffusers, solver_type, variant, n):
    ts = make_timesteps(DDPM(), n)               # trailing; the data (t = -1) at the end
    sched, p = diffusers_scheduler(diffusers.DPMSolverMultistepScheduler, ts[:-1], algorithm_type="dpmsolver++",
                                   solver_order=2, solver_type=solver_type)
    model = MIXTURE.eps_model(p)
    x_T = torch.randn(SHAPE, generator=gen(n), dtype=F64)
    assert_same(run_ours("dpmpp_2m", p, model, x_T, ts, variant=variant), run_diffusers(sched, model, x_T),
                MULTISTEP_RTOL)


@pytest.mark.parametrize("solver_type,variant", [("heun", "taylor"), ("midpoint", "midpoint")])
@pytest.mark.parametrize("n", [6, 20])
def test_dpmpp_2m_sde_matches_diffusers(diffusers, solver_type, variant, n):
    """SDE-DPM-Solver++(2M), eta = 1, against diffusers' algorithm_type="sde-dpmsolver++" on the
    same noise: ours draws one N(0, I) per step that does not end at the data from its generator;
    the same draws go to diffusers' step() as variance_noise (zeros on the step to the data, where
    diffusers multiplies it by sigma_t = 0). diffusers writes the midpoint weight of D1 = h x0' as
    (1 - e^{-2h}) / 2 = psi_0(c h) / 2 and the heun one as (1 - e^{-2h}) / (-2h) + 1 = psi_1(c h) / (c h),
    c = 2: the second-order terms are checked at every step, not only the eta = 0 ODE weights.
    Tolerance as for the ODE solver: diffusers rounds the state and the noise to float32."""
    ts = make_timesteps(DDPM(), n)
    sched, p = diffusers_scheduler(diffusers.DPMSolverMultistepScheduler, ts[:-1], algorithm_type="sde-dpmsolver++",
                                   solver_order=2, solver_type=solver_type)
    model = MIXTURE.eps_model(p)
    x_T = torch.randn(SHAPE, generator=gen(n), dtype=F64)
    noise_gen = gen(100 + n)
    noises = [torch.randn(SHAPE, generator=noise_gen, dtype=F64) for _ in range(n - 1)]
    noises.append(torch.zeros(SHAPE, dtype=F64))
    xs, x = [], x_T
    for t, z in zip(sched.timesteps, noises):
        xs.append(x)
        x = sched.step(model(x, t), t, x, variance_noise=z).prev_sample
    assert_same(run_ours("dpmpp_2m_sde", p, model, x_T, ts, variant=variant, generator=gen(100 + n)), (xs, x),
                MULTISTEP_RTOL)


def test_dpmpp_3m_differs_from_diffusers_by_half_the_second_difference(diffusers):
    """diffusers' (and k-diffusion's) third-order multistep update is

        x_t = (sigma_t/sigma_s) x_s - alpha_t phi_1 x0 + alpha_t phi_2 D1 - alpha_t phi_3 D2

    with D1 = h x0' and D2 = h^2 [0,1,2] = h^2 x0'' / 2 (second divided difference), while
    -alpha_t phi_3 = alpha_t psi_2(h) / h^2 is the weight of h^2 x0''. So their step is ours with
    x0'' halved: checked step by step on their trajectory (agreement to float32 rounding). Ours
    with the full x0'' converges at order 3 (test_convergence_order); theirs misses
    alpha_t psi_2(h) x0'' / 2 = O(h^3) per step."""
    ts = make_timesteps(DDPM(), 10)
    sched, p = diffusers_scheduler(diffusers.DPMSolverMultistepScheduler, ts[:-1], algorithm_type="dpmsolver++",
                                   solver_order=3, solver_type="heun")     # heun: Taylor weights at order 2
    model = MIXTURE.eps_model(p)
    x_T = torch.randn(SHAPE, generator=gen(1), dtype=F64)
    xs, out = run_diffusers(sched, model, x_T)
    xs.append(out)
    grid_nodes = nodes(p, ts)
    d = Denoiser(model, p, "eps")
    x0s = [d(x, float(t)) for x, t in zip(xs, ts[:-1].tolist())]
    differences = []
    for i in range(10):
        k = min(3, i + 1, 10 - i)   # warm-up; lower order for the last two steps (10 < 15 steps)
        derivs = taylor_derivatives([grid_nodes[i - j].lam for j in range(k)], [x0s[i - j] for j in range(k)])
        ours = exponential_step(xs[i], grid_nodes[i], grid_nodes[i + 1], derivs)
        if k == 3:
            halved = exponential_step(xs[i], grid_nodes[i], grid_nodes[i + 1], derivs[:2] + [derivs[2] / 2])
            assert rel_err(halved, xs[i + 1]) <= MULTISTEP_RTOL, i
            differences.append(rel_err(ours, xs[i + 1]) / max(rel_err(halved, xs[i + 1]), 1e-16))
        else:
            assert rel_err(ours, xs[i + 1]) <= MULTISTEP_RTOL, i
    assert min(differences) > 10, differences
    # and the whole run agrees where the orders are 1 and 2: the first two model inputs
    ours = run_ours("dpmpp_3m", p, model, x_T, ts)
    assert rel_err(ours[0][2], xs[2]) <= MULTISTEP_RTOL


@pytest.mark.parametrize("order,name", [(2, "dpmpp_2s"), (3, "dpmpp_3s")])
@pytest.mark.parametrize("n", [7, 12])
def test_dpmpp_single_step_matches_diffusers(diffusers, order, name, n):
    """DPMSolverSinglestepScheduler with solver_type='heun' (exact Taylor weights) and our grouping
    of the model times: identical to float64 rounding."""
    ts = make_timesteps(DDPM(), n)
    sched, p = diffusers_scheduler(diffusers.DPMSolverSinglestepScheduler, ts[:-1], algorithm_type="dpmsolver++",
                                   solver_order=order, solver_type="heun")
    model = MIXTURE.eps_model(p)
    x_T = torch.randn(SHAPE, generator=gen(n), dtype=F64)
    assert_same(run_ours(name, p, model, x_T, ts), run_diffusers(sched, model, x_T), 1e-10)


@pytest.mark.parametrize("order", [2, 3])
def test_single_step_grouping_is_diffusers_order_list(diffusers, order):
    sched = diffusers.DPMSolverSinglestepScheduler(solver_order=order, lower_order_final=True)
    for n in range(1, 40):
        ours = [j + 1 for size in step_groups(n, order, True) for j in range(size)]
        assert ours == sched.get_order_list(n), n


# UniPCMultistepScheduler builds its weight systems in float32 (torch.tensor of python floats),
# so the agreement is to float32 rounding of rho.
UNIPC_RTOL = 1e-6


@pytest.mark.parametrize("variant", ["bh1", "bh2"])
@pytest.mark.parametrize("order", [1, 2, 3])
def test_unipc_matches_diffusers(diffusers, order, variant):
    """UniPCMultistepScheduler (trailing grid, lower_order_final, ending at the data): the same
    orders per step as ours (warm-up; the last step is x0_pred; order <= 2 before it).

    With bh1 diffusers' last step to sigma = 0 returns NaN (B(h) = -h = -inf times a zero weight);
    every model input before it agrees, and our last step is the limit x0_pred."""
    n = 12
    sched, p = diffusers_scheduler(diffusers.UniPCMultistepScheduler, num_steps=n, solver_order=order,
                                   solver_type=variant, timestep_spacing="trailing")
    ts = make_timesteps(p, n)
    assert sched.timesteps.tolist() == ts[:-1].tolist()
    model = MIXTURE.eps_model(p)
    x_T = torch.randn(SHAPE, generator=gen(order), dtype=F64)
    ours = run_ours("unipc", p, model, x_T, ts, order=order, variant=variant)
    theirs = run_diffusers(sched, model, x_T)
    if variant == "bh1":
        assert torch.isnan(theirs[1]).all()
        theirs = (theirs[0], Denoiser(model, p, "eps")(theirs[0][-1], float(ts[-2])))
    assert_same(ours, theirs, UNIPC_RTOL)
