"""Euler, Euler-ancestral, EDM (Heun, churn), iPNDM and DEIS with exact mixture denoisers.

Oracles: scipy's DOP853 solution of the probability-flow ODE (convergence orders), DDIM (exact
identities), the mixture's own samples (distributions), closed-form and quadrature weights
(multistep coefficients), and diffusers' schedulers run on identical inputs.
"""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import quad, solve_ivp

import scorekit
from scorekit import DDPM, EDM, VESDE, VPSDE, ScorekitError, SubVPSDE, make_timesteps
from scorekit.samplers import ddim, deis, edm, edm_heun, euler, euler_ancestral, ipndm
from scorekit.samplers.multistep import multistep_coefficients
from scorekit.sampling import sampler_options
from scorekit.timesteps import edm_sigma, karras_times, log_snr_times, t_from_edm_sigma
from scorekit.toy import GaussianMixture, multiscale_2d

from test_samplers import assert_matches_mixture

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


#: three overlapping 2-D components: a smooth flow, so that errors reach their asymptotic order
#: at a few dozen steps (on multiscale_2d a few trajectories switch modes until far more steps)
SMOOTH = GaussianMixture(torch.tensor([0.5, 0.3, 0.2], dtype=F64),
                         torch.tensor([[-1.0, 0.0], [1.0, 0.5], [0.0, -1.2]], dtype=F64),
                         stds=torch.tensor([[0.6, 0.4], [0.5, 0.5], [0.3, 0.7]], dtype=F64))
END_SIGMA = 0.07          # sigma / alpha where the order measurements stop (not the singular s = 0)


def ode_reference(mix, p, x_T, t_start, t_end):
    r"""DOP853 (rtol = atol = 1e-10) for dx^/ds = (x^ - D(alpha x^, t(s))) / s, x^ = x / alpha,
    s = sigma / alpha (Karras et al. 2022, eq. 4 for a scaled process)."""
    d = mix.denoiser(p)
    shape = x_T.shape

    def rhs(s, y):
        t = t_from_edm_sigma(p, s).item()
        xs = torch.from_numpy(y.reshape(shape))
        return ((xs - d(p.alpha(t).item() * xs, t)) / s).numpy().ravel()

    s0, s1 = edm_sigma(p, t_start).item(), edm_sigma(p, t_end).item()
    sol = solve_ivp(rhs, (s0, s1), x_T.numpy().ravel() / p.alpha(t_start).item(), method="DOP853",
                    rtol=1e-10, atol=1e-10)
    assert sol.success
    return torch.from_numpy(sol.y[:, -1].reshape(shape)) * p.alpha(t_end).item()


@pytest.fixture(scope="module", params=[DDPM(), VPSDE()], ids=["DDPM", "VPSDE"])
def reference(request):
    p = request.param
    t_end = t_from_edm_sigma(p, END_SIGMA).item()
    x_T = p.prior_sample((64, 2), generator=gen(7), dtype=F64)
    return p, t_end, x_T, ode_reference(SMOOTH, p, x_T, p.t_max, t_end)


ORDER_CASES = [  # name, sampler, options, expected order, step counts (model times)
    ("euler", euler, {}, 1, (20, 40, 80)),
    ("edm_heun", edm_heun, {}, 2, (10, 20, 40)),
    ("ipndm", ipndm, {}, 4, (40, 80, 160)),
    ("ipndm-fixed", ipndm, {"coefficients": "fixed"}, 2, (20, 40, 80)),
    ("deis1", deis, {"order": 1}, 1, (20, 40, 80)),
    ("deis2", deis, {"order": 2}, 2, (20, 40, 80)),
    ("deis3", deis, {"order": 3}, 3, (20, 40, 80)),
    ("deis3-rho", deis, {"order": 3, "extrapolate_in": "rho"}, 3, (20, 40, 80)),
    ("deis3-log_rho", deis, {"order": 3, "extrapolate_in": "log_rho"}, 3, (20, 40, 80)),
]


@pytest.mark.parametrize("spacing", ["log_snr", "karras"])
@pytest.mark.parametrize("name,sampler,options,order,steps", ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_convergence_order(reference, spacing, name, sampler, options, order, steps):
    """Error against the DOP853 solution falls like n^-order. The grids (fractional times on DDPM)
    run from t_max to the time where sigma / alpha = 0.07. iPNDM's fixed equal-step weights are
    second order on a non-uniform grid (their error in the step size ratio is O(h)); the variable
    weights give order 4, approached from below because the warm-up steps (orders 1-3) sit at high
    noise where eps barely changes."""
    p, t_end, x_T, exact = reference
    make = log_snr_times if spacing == "log_snr" else karras_times
    errors = []
    for n in steps:
        ts = torch.from_numpy(make(p, t_end, p.t_max, n + 1))      # n model times, then t_end
        out = sampler(SMOOTH.denoiser(p), p, x_T, ts, **options)
        errors.append((out - exact).pow(2).mean().sqrt().item())
    slope = math.log(errors[-2] / errors[-1]) / math.log(steps[-1] / steps[-2])
    low = order - 0.3 if name != "ipndm" else 3.5
    assert low < slope < order + 0.3, (errors, slope)


# --- exact identities ----------------------------------------------------------------------------

IDENTITY_GRIDS = [(DDPM(), "trailing"), (DDPM(), "karras"), (VPSDE(), "log_snr"), (SubVPSDE(), "uniform"),
                  (VESDE(), "log_snr"), (EDM(), "karras")]


@pytest.mark.parametrize("process,spacing", IDENTITY_GRIDS, ids=[f"{type(p).__name__}-{s}" for p, s in IDENTITY_GRIDS])
def test_euler_is_ddim_and_euler_ancestral_is_ddim_with_noise(process, spacing):
    """x^ + (s' - s)(x^ - x0)/s = x0 + s' eps: Euler in (x/alpha, sigma/alpha) is DDIM(eta = 0); and
    k-diffusion's s_up^2 = s'^2 (s^2 - s'^2) / s^2 is DDIM's posterior variance over alpha'^2, so
    Euler-ancestral with eta <= 1 is DDIM with that eta, noise draw for noise draw."""
    mix = multiscale_2d()
    d = mix.denoiser(process)
    x_T = process.prior_sample((64, 2), generator=gen(1), dtype=F64)
    ts = make_timesteps(process, 12, spacing)
    torch.testing.assert_close(euler(d, process, x_T, ts), ddim(d, process, x_T, ts), rtol=1e-10, atol=1e-10)
    for eta in (0.5, 1.0):
        a = euler_ancestral(d, process, x_T, ts, eta=eta, generator=gen(2))
        b = ddim(d, process, x_T, ts, eta=eta, generator=gen(2))
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(euler_ancestral(d, process, x_T, ts, eta=0.0), euler(d, process, x_T, ts),
                               rtol=1e-12, atol=1e-12)


def test_edm_without_churn_is_edm_heun_and_counts_evaluations():
    mix = multiscale_2d()
    for p, spacing in ((DDPM(), "karras"), (EDM(), "log_snr")):
        d = mix.denoiser(p)
        x_T = p.prior_sample((32, 2), generator=gen(3), dtype=F64)
        ts = make_timesteps(p, 9, spacing)
        calls = []
        a = edm_heun(d, p, x_T, ts, callback=lambda i, t, x, x0: calls.append((i, t)))
        b = edm(d, p, x_T, ts, s_churn=0.0)
        assert torch.equal(a, b)
        assert [i for i, _ in calls] == list(range(2 * 9 - 1))         # Algorithm 1: 2n - 1 calls
        # with churn, raised levels are visited and the result differs
        c = edm(d, p, x_T, ts, s_churn=40.0, generator=gen(4))
        assert not torch.allclose(a, c)


def test_churn_raises_the_noise_level_and_clamps_to_the_model_range():
    """gamma = min(S_churn / n, sqrt 2 - 1) within [S_tmin, S_tmax]: the evaluation times are the
    raised levels s (1 + gamma), mapped back to process time and clamped at t_max."""
    p = DDPM()
    n = 10
    ts = make_timesteps(p, n, "karras")
    seen = []
    edm(lambda x, t: torch.zeros_like(x), p, torch.zeros(2, 2, dtype=F64), ts, s_churn=2.0,
        s_tmin=0.05, s_tmax=50.0, generator=gen(0), callback=lambda i, t, x, x0: seen.append(t))
    first_stage = seen[0::2]
    s = edm_sigma(p, ts[:-1])
    for i in range(n):
        expected = s[i] * 1.2 if 0.05 <= s[i] <= 50.0 else s[i]
        assert edm_sigma(p, first_stage[i]).item() == pytest.approx(expected.item(), rel=1e-9)
    seen.clear()
    edm(lambda x, t: torch.zeros_like(x), p, torch.zeros(2, 2, dtype=F64), ts, s_churn=40.0,
        s_tmax=1000.0, generator=gen(0), callback=lambda i, t, x, x0: seen.append(t))
    assert seen[0] == p.t_max                      # 157 * 1.41 lies beyond t_max: clamped


# --- distributions ----------------------------------------------------------------------------------

@pytest.mark.parametrize("name,sampler,options", [
    ("euler_ancestral", euler_ancestral, {}),
    ("edm-churn", edm, {"s_churn": 40.0}),
])
def test_stochastic_samplers_reproduce_mixture(name, sampler, options):
    """At 100 model times (log-SNR grid) the samples match the multi-scale mixture (SWD within the
    noise floor, mode weights within 4 standard errors); the same seed gives the same samples."""
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((2000, 2), generator=gen(20), dtype=F64)
    ts = make_timesteps(p, 100, "log_snr")
    x = sampler(mix.denoiser(p), p, x_T, ts, generator=gen(21), **options)
    assert_matches_mixture(x, mix)
    again = sampler(mix.denoiser(p), p, x_T[:50], ts, generator=gen(21), **options)
    assert torch.equal(again, sampler(mix.denoiser(p), p, x_T[:50], ts, generator=gen(21), **options))


def test_deterministic_solvers_reproduce_mixture_at_low_nfe():
    """30 network evaluations on the log-SNR grid reproduce the multi-scale mixture. (At 20 the
    mode weights of 2000 samples are still 2.5 (DEIS) to 4.5 (iPNDM) standard errors off, at 10
    about 8 to 15; Euler / DDIM needs far more.)"""
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((2000, 2), generator=gen(30), dtype=F64)
    ts = make_timesteps(p, 30, "log_snr")
    for sampler in (ipndm, deis):
        assert_matches_mixture(sampler(mix.denoiser(p), p, x_T, ts), mix)


# --- multistep coefficients ---------------------------------------------------------------------------

def test_rho_coefficients_are_variable_step_adams_bashforth():
    """u = s: AB2 on a variable grid, c0 = h (1 + h / (2 h')), c1 = -h^2 / (2 h') (h = s_{i+1} - s_i,
    h' = s_i - s_{i-1}); and the weights of each step sum to h (a constant eps is integrated exactly)."""
    p = DDPM()
    ts = make_timesteps(p, 8, "karras")
    s = edm_sigma(p, ts).tolist()
    for order in (1, 2, 3, 4):
        for i, c in enumerate(multistep_coefficients(p, ts, order, "rho")):
            assert len(c) == min(order, i + 1) and sum(c) == pytest.approx(s[i + 1] - s[i], rel=1e-12)
    coef = multistep_coefficients(p, ts, 2, "rho")
    for i in range(1, len(s) - 1):
        h, h_prev = s[i + 1] - s[i], s[i] - s[i - 1]
        assert coef[i] == pytest.approx([h * (1 + h / (2 * h_prev)), -h * h / (2 * h_prev)], rel=1e-12)


def test_log_rho_coefficients_match_diffusers_closed_form():
    """diffusers' DEISMultistepScheduler integrates the Lagrange polynomials in log(rho) over rho in
    closed form (its ind_fn); our Gauss-Legendre weights agree to rounding."""
    p = DDPM()
    ts = make_timesteps(p, 10, "trailing", t_end=0)
    s = edm_sigma(p, ts).numpy()
    L = np.log

    def ind2(t, b, c):
        return t * (-L(c) + L(t) - 1) / (L(b) - L(c))

    def ind3(t, b, c, d):
        num = t * (L(c) * (L(d) - L(t) + 1) - L(d) * L(t) + L(d) + L(t) ** 2 - 2 * L(t) + 2)
        return num / ((L(b) - L(c)) * (L(b) - L(d)))

    c2 = multistep_coefficients(p, ts, 2, "log_rho")
    c3 = multistep_coefficients(p, ts, 3, "log_rho")
    for i in range(2, len(s) - 1):
        r, r0, r1, r2 = s[i + 1], s[i], s[i - 1], s[i - 2]
        assert c2[i] == pytest.approx([ind2(r, r0, r1) - ind2(r0, r0, r1), ind2(r, r1, r0) - ind2(r0, r1, r0)], rel=1e-10)
        want = [ind3(r, r0, r1, r2) - ind3(r0, r0, r1, r2), ind3(r, r1, r2, r0) - ind3(r0, r1, r2, r0),
                ind3(r, r2, r0, r1) - ind3(r0, r2, r0, r1)]
        assert c3[i] == pytest.approx(want, rel=1e-9)


def test_time_coefficients_match_adaptive_quadrature():
    """DEIS tAB weights C_ij = int_{t_i}^{t_{i+1}} l_ij(tau) (ds/dtau) dtau on a VP SDE, with
    s = sqrt(exp(B) - 1), ds/dt = beta(t) exp(B) / (2 s), by scipy's adaptive quadrature in t."""
    p = VPSDE()
    ts = make_timesteps(p, 7, "log_snr").numpy()
    coef = multistep_coefficients(p, torch.from_numpy(ts), 3, "t")

    def ds_dt(t):
        B = p.integrated_beta(t).item()
        return p.beta(t).item() * math.exp(B) / (2 * math.sqrt(math.expm1(B)))

    for i in range(2, len(ts) - 2):                  # (the step into the data extrapolates in s)
        nodes = ts[[i, i - 1, i - 2]]
        for j in range(3):
            others = [nodes[m] for m in range(3) if m != j]
            lag = lambda t: np.prod([(t - o) / (nodes[j] - o) for o in others])
            want = quad(lambda t: lag(t) * ds_dt(t), ts[i], ts[i + 1], epsabs=0, epsrel=1e-12, limit=200)[0]
            assert coef[i][j] == pytest.approx(want, rel=1e-9, abs=1e-12)


# --- diffusers on identical inputs --------------------------------------------------------------------

diffusers = pytest.importorskip("diffusers")


def _diffusers_run(sched, mix, x, generator=None, scaled_start=True):
    """diffusers' loop with the mixture's exact eps at the scheduler's own current sigma."""
    for i, t in enumerate(sched.timesteps):          # step i is taken from sched.sigmas[i]
        x_in = sched.scale_model_input(x, t)
        sigma = sched.sigmas[i].item()
        alpha = 1 / math.sqrt(1 + sigma ** 2)
        eps = mix.posterior_noise(x_in, alpha, sigma * alpha)
        kwargs = {"generator": generator} if generator is not None else {}
        x = sched.step(eps, t, x, **kwargs).prev_sample
    return x


def _scheduler(cls, n, **config):
    sched = cls(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02, **config)
    sched.set_timesteps(n)
    sched.sigmas = sched.sigmas.to(F64)      # its float32 grid values, computed with in float64
    return sched


def _grid_from_sigmas(p, sigmas, end):
    """Our time grid visiting exactly the given sigma / alpha values, then ``end``."""
    return torch.cat([t_from_edm_sigma(p, sigmas), torch.tensor([end], dtype=F64)])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # numpy 2 notices inside diffusers
def test_euler_and_euler_ancestral_match_diffusers():
    """EulerDiscreteScheduler / EulerAncestralDiscreteScheduler with 'trailing' steps: the same
    grid (sigmas at t = 999, 899, ..., 99, then 0; ours from make_timesteps to float32 rounding of
    diffusers' tables), the same steps, and for the ancestral one the same noise from generators
    seeded alike (diffusers also draws on the last step, where the noise is multiplied by 0).
    Their step() computes in float32 whatever the sample's dtype (it upcasts to float32), so the
    agreement is to float32 rounding."""
    from diffusers import EulerAncestralDiscreteScheduler, EulerDiscreteScheduler
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((64, 2), generator=gen(5), dtype=F64)
    for cls, sampler in ((EulerDiscreteScheduler, euler), (EulerAncestralDiscreteScheduler, euler_ancestral)):
        sched = _scheduler(cls, 10, timestep_spacing="trailing")
        ours_grid = make_timesteps(p, 10, "trailing")
        torch.testing.assert_close(edm_sigma(p, ours_grid), sched.sigmas, rtol=2e-6, atol=0)
        ts = _grid_from_sigmas(p, sched.sigmas[:-1], p.t_data)
        expected = _diffusers_run(sched, mix, x_T / p.alpha(ts[0]).item(), generator=gen(6))
        got = sampler(mix.denoiser(p), p, x_T, ts, generator=gen(6))
        torch.testing.assert_close(got, expected.to(F64), rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # numpy 2 notices inside diffusers
def test_edm_heun_matches_diffusers_heun_with_karras_sigmas():
    """HeunDiscreteScheduler(use_karras_sigmas=True) is Algorithm 1 on the Karras grid from
    sigma(t = 999) to sigma(t = 0), then 0: our karras grid has the same sigmas (to float32
    rounding), and on diffusers' exact sigma values the trajectories agree to rounding. (diffusers
    calls the model at times from its own log-sigma interpolation; the exact eps here is a function
    of sigma, so that convention does not enter.)"""
    from diffusers import HeunDiscreteScheduler
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((64, 2), generator=gen(8), dtype=F64)
    sched = _scheduler(HeunDiscreteScheduler, 8, use_karras_sigmas=True)
    sigmas = torch.cat([sched.sigmas[:1], sched.sigmas[1:-1:2]])       # undo its repeat_interleave
    # (diffusers' float32 alpha_bar loses ~1e-4 of 1 - alpha_bar to cancellation near t = 0)
    torch.testing.assert_close(edm_sigma(p, make_timesteps(p, 8, "karras"))[:-1], sigmas, rtol=1e-4, atol=0)
    ts = _grid_from_sigmas(p, sigmas, p.t_data)
    expected = _diffusers_run(sched, mix, x_T / p.alpha(ts[0]).item())
    torch.testing.assert_close(edm_heun(mix.denoiser(p), p, x_T, ts), expected, rtol=1e-9, atol=1e-9)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # numpy 2 notices inside diffusers
def test_deis_log_rho_matches_diffusers_deis():
    """DEISMultistepScheduler (solver_order=3; its default is 2; 'logrho') with 20 steps: model at
    t = 999, 949, ..., 50 and
    its last step to sigma(t = 0), returning the noisy state there (not x0). With the same end
    time our deis(extrapolate_in='log_rho') agrees to rounding. Below 15 steps diffusers lowers the
    order of its last two steps (lower_order_final); ours keeps the full order."""
    from diffusers import DEISMultistepScheduler
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((64, 2), generator=gen(9), dtype=F64)
    sched = _scheduler(DEISMultistepScheduler, 20, solver_order=3)
    ts = t_from_edm_sigma(p, sched.sigmas)
    assert ts[-1].item() == pytest.approx(0.0, abs=1e-3) and sched.timesteps[0] == 999
    expected = _diffusers_run(sched, mix, x_T)
    got = deis(mix.denoiser(p), p, x_T, ts, order=3, extrapolate_in="log_rho")
    torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-9)


# --- interface and bad input --------------------------------------------------------------------------

def test_options_reach_the_command_line_and_sample():
    assert sampler_options("deis") == {"order": 3, "extrapolate_in": "t"}
    assert sampler_options("edm") == {"s_churn": 40.0, "s_tmin": 0.05, "s_tmax": 50.0, "s_noise": 1.0}
    mix = multiscale_2d()
    p = DDPM()
    x_T = p.prior_sample((8, 2), generator=gen(0))
    out = scorekit.sample(mix.eps_model(p), x_T, betas=p.betas, sampler="deis", num_steps=10,
                          spacing="karras", order=2.0)          # the CLI passes numbers as floats
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("call,msg", [
    (lambda d, p, x, ts: ipndm(d, p, x, ts, order=5), "order must be an integer from 1 to 4"),
    (lambda d, p, x, ts: deis(d, p, x, ts, order=2.5), "order must be an integer from 1 to 3"),
    (lambda d, p, x, ts: deis(d, p, x, ts, order=0), "order must be an integer"),
    (lambda d, p, x, ts: deis(d, p, x, ts, extrapolate_in="x"), "unknown extrapolate_in 'x'"),
    (lambda d, p, x, ts: ipndm(d, p, x, ts, coefficients="exact"), "unknown coefficients 'exact'"),
    (lambda d, p, x, ts: euler_ancestral(d, p, x, ts, eta=-1.0, generator=gen(0)), "eta must be"),
    (lambda d, p, x, ts: euler_ancestral(d, p, x, ts), "pass generator="),
    (lambda d, p, x, ts: edm(d, p, x, ts), "pass generator="),
    (lambda d, p, x, ts: edm(d, p, x, ts, s_churn=-1.0), "s_churn must be"),
    (lambda d, p, x, ts: edm(d, p, x, ts, s_tmin=2.0, s_tmax=1.0), "s_tmin <= s_tmax"),
    (lambda d, p, x, ts: euler(d, p, x, torch.tensor([1500.0, -1.0])), "model times must lie in"),
])
def test_bad_input_is_named(call, msg):
    p = DDPM()
    with pytest.raises(ScorekitError, match=msg):
        call(lambda x, t: torch.zeros_like(x), p, torch.zeros(2, 3), make_timesteps(p, 10, "karras"))
