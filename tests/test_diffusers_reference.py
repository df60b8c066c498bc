"""scorekit's DDPM and DDIM samplers against diffusers' DDPMScheduler and DDIMScheduler.

Both sides get identical inputs: the same exact Gaussian-mixture network (eps, x0 or v, from
:mod:`scorekit.toy`), the same betas, the same ``x_T`` and two generators seeded alike. The whole
trajectory is compared: at every step the state ``x_t`` the model sees, the ``x0_pred`` (diffusers'
``pred_original_sample``), the time, and at the end the sample and the number of random draws
(the generators' states).

Precision. diffusers keeps its tables (``betas``, ``alphas_cumprod``) in float32 while scorekit
keeps them in float64. In float32 that alone gives relative differences of ~1e-5 in ``x_t`` and
~1e-4 in ``x0_pred`` at ``t = 999`` (where ``x0 = (x_t - sigma eps) / alpha`` amplifies rounding
by ``1 / alpha ~ 160``). The reference runs therefore use float64 on both sides: diffusers'
tables are rebuilt in float64 exactly as its constructor builds them (after checking that the
float32 ones agree with scorekit's schedule), and every tensor is compared with

    max |scorekit - diffusers| <= RTOL * max |diffusers|,   RTOL = 1e-5,

per step and per tensor. The observed differences are ~1e-13 (up to ~1e-6 with dynamic
thresholding, whose quantile scorekit takes in float32). One test runs float32 with diffusers'
own float32 tables, at the looser tolerances stated there; the tiny-UNet tests run float32 at
RTOL (observed ~4e-7).

Where the conventions differ, the tests below document the difference instead of forcing
agreement; ``docs/diffusers-conventions.md`` lists them for users.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import scorekit
from scorekit.prediction import Denoiser
from scorekit.toy import GaussianMixture, image_mixture

diffusers = pytest.importorskip("diffusers")
from diffusers import DDIMScheduler, DDPMScheduler  # noqa: E402

F64 = torch.float64
T = 1000
RTOL = 1e-5
SHAPE = (4, 3, 8, 8)

#: diffusers' beta_schedule name -> scorekit's; scaled_linear with Stable Diffusion's range
SCHEDULES = {"linear": "linear", "scaled_linear": "scaled_linear",
             "squaredcos_cap_v2": "cosine", "sigmoid": "sigmoid"}
SCHEDULE_RANGE = {"scaled_linear": {"beta_start": 0.00085, "beta_end": 0.012}}
#: diffusers' prediction_type -> scorekit's
PREDICTIONS = {"epsilon": "eps", "sample": "x0", "v_prediction": "v"}

MIXTURE = image_mixture()                    # 3x8x8, values within about [-1, 1]
_M = MIXTURE
#: the same mixture stretched 2.5 times, so that x0_pred leaves [-1, 1] and clipping bites
WIDE = GaussianMixture(_M.weights, 2.5 * _M.means, stds=2.5 * _M.std_per_dim(),
                       event_shape=_M.event_shape)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: one thread is much faster than two competing ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def make_scheduler(cls, schedule: str = "linear", dtype=F64, **config):
    """A diffusers scheduler for a named schedule, and scorekit's float64 betas for it.

    The scheduler is built by name (``trained_betas`` for DDIM's missing 'sigmoid'); its float32
    betas are checked against :func:`scorekit.beta_schedule`. With ``dtype=float64`` its tables
    are then rebuilt in float64 exactly as diffusers' constructor builds them.
    """
    betas = scorekit.beta_schedule(SCHEDULES[schedule], T, **SCHEDULE_RANGE.get(schedule, {}))
    if cls is DDIMScheduler and schedule == "sigmoid":
        config["trained_betas"] = betas.numpy()           # DDIMScheduler has no 'sigmoid'
    else:
        config.update(beta_schedule=schedule, **SCHEDULE_RANGE.get(schedule, {}))
    sched = cls(num_train_timesteps=T, **config)
    torch.testing.assert_close(sched.betas.double(), betas, rtol=1e-6, atol=0)
    if dtype == F64:
        sched.betas = betas.clone()
        sched.alphas = 1.0 - sched.betas
        sched.alphas_cumprod = torch.cumprod(sched.alphas, dim=0)
        if cls is DDPMScheduler:
            sched.one = torch.tensor(1.0, dtype=F64)
        else:
            sched.final_alpha_cumprod = (torch.tensor(1.0, dtype=F64) if sched.config.set_alpha_to_one
                                         else sched.alphas_cumprod[0])
    else:
        betas = sched.betas.double()                      # scorekit gets diffusers' float32 betas
    return sched, betas


def exact_model(prediction: str, betas, mixture=MIXTURE):
    """The mixture's exact network of diffusers' prediction type for the DDPM schedule ``betas``."""
    process = scorekit.DDPM(betas=betas)
    return {"epsilon": mixture.eps_model, "sample": mixture.x0_model,
            "v_prediction": mixture.v_model}[prediction](process)


def start(seed: int = 0, dtype=F64, shape=SHAPE):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def gen(seed: int = 1234):
    return torch.Generator().manual_seed(seed)


def run_diffusers(sched, model, x_T, generator, **step_kwargs) -> dict:
    """diffusers' sampling loop, recording the state before each step and pred_original_sample."""
    ts, xs, x0s = [], [], []
    x = x_T
    for t in sched.timesteps:
        out = model(x, t)
        out = getattr(out, "sample", out)
        step = sched.step(out, t, x, generator=generator, **step_kwargs)
        ts.append(int(t))
        xs.append(x)
        x0s.append(step.pred_original_sample)
        x = step.prev_sample
    return {"t": ts, "x": xs, "x0": x0s, "out": x, "generator": generator}


def run_scorekit(model, x_T, generator, **kwargs) -> dict:
    """``scorekit.sample`` with a callback recording ``(t, x_t, x0_pred)`` at each step."""
    ts, xs, x0s = [], [], []

    def callback(i, t, x_t, x0_pred):
        assert i == len(ts)
        ts.append(t)
        xs.append(x_t)
        x0s.append(x0_pred)

    out = scorekit.sample(model, x_T, generator=generator, callback=callback, **kwargs)
    assert all(float(t) == int(t) for t in ts)
    return {"t": [int(t) for t in ts], "x": xs, "x0": x0s, "out": out, "generator": generator}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b| / max |b|``: the error relative to the scale of the reference values."""
    assert a.shape == b.shape and a.dtype == b.dtype
    return ((a - b).abs().max() / b.abs().max()).item()


def assert_same_trajectory(sk: dict, df: dict, rtol: float = RTOL, rtol_x0: float | None = None,
                           same_draws: bool = True) -> float:
    """Same times, same ``x_t`` and ``x0_pred`` at every step, same sample, same random draws."""
    rtol_x0 = rtol if rtol_x0 is None else rtol_x0
    assert sk["t"] == df["t"], "the two samplers call the model at different times"
    worst = 0.0
    for i, t in enumerate(df["t"]):
        e_x, e_x0 = rel_err(sk["x"][i], df["x"][i]), rel_err(sk["x0"][i], df["x0"][i])
        assert e_x <= rtol, f"x_t differs at step {i} (t={t}): relative error {e_x:.3g}"
        assert e_x0 <= rtol_x0, f"x0_pred differs at step {i} (t={t}): relative error {e_x0:.3g}"
        worst = max(worst, e_x, e_x0)
    e = rel_err(sk["out"], df["out"])
    assert e <= rtol, f"final samples differ: relative error {e:.3g}"
    if same_draws:
        assert torch.equal(sk["generator"].get_state(), df["generator"].get_state()), \
            "the samplers drew a different amount of noise from their generators"
    return max(worst, e)


def with_end(timesteps, end: int = -1) -> torch.Tensor:
    """A scorekit grid: diffusers' model times followed by the end time."""
    return torch.cat([torch.as_tensor(timesteps, dtype=F64), torch.tensor([float(end)], dtype=F64)])


# ---------------------------------------------------------------------------------------------
# schedules and grids
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_beta_schedules_match_diffusers(schedule):
    """scorekit's named schedules equal diffusers' (to float32 precision, diffusers' dtype)."""
    ours = scorekit.beta_schedule(SCHEDULES[schedule], T, **SCHEDULE_RANGE.get(schedule, {}))
    for cls in (DDPMScheduler, DDIMScheduler):
        if cls is DDIMScheduler and schedule == "sigmoid":
            with pytest.raises(NotImplementedError):      # DDIMScheduler lacks 'sigmoid'
                cls(beta_schedule="sigmoid")
            continue
        theirs = cls(num_train_timesteps=T, beta_schedule=schedule,
                     **SCHEDULE_RANGE.get(schedule, {})).betas
        assert theirs.dtype == torch.float32
        torch.testing.assert_close(theirs.double(), ours, rtol=1e-6, atol=0)


def test_scaled_linear_default_range_differs():
    """diffusers' ``scaled_linear`` defaults to beta 1e-4 .. 0.02, scorekit's to 0.00085 .. 0.012."""
    theirs = DDPMScheduler(beta_schedule="scaled_linear").betas.double()
    assert not torch.allclose(theirs, scorekit.beta_schedule("scaled_linear"), rtol=1e-2)
    torch.testing.assert_close(
        theirs, scorekit.beta_schedule("scaled_linear", beta_start=1e-4, beta_end=0.02), rtol=1e-6, atol=0)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_spacings_match_diffusers_for_every_step_count(spacing):
    """scorekit's grid has diffusers' model times for every n = 1 .. T, except where diffusers'
    'trailing' grid has an extra entry t = -1 (documented in the next test), and 'linspace' with one
    step, which diffusers takes at t = 0 (x_T treated as nearly clean) and scorekit at T - 1."""
    sched = DDPMScheduler(num_train_timesteps=T, timestep_spacing=spacing)
    process = scorekit.DDPM(schedule="linear", num_steps=T)
    extra = []
    for n in range(1, T + 1):
        sched.set_timesteps(n)
        theirs = sched.timesteps.numpy()
        ours = scorekit.make_timesteps(process, n, spacing).numpy()
        assert ours[-1] == -1 and len(ours) == n + 1
        if len(theirs) == n + 1:
            extra.append(n)
            theirs = theirs[:n]
        if n == 1 and spacing == "linspace":
            assert theirs.tolist() == [0] and ours[:-1].tolist() == [T - 1]
            continue
        np.testing.assert_array_equal(ours[:-1], theirs)
    assert extra == ([] if spacing != "trailing" else
                     [n for n in range(1, T + 1) if len(np.arange(T, 0, -T / n)) == n + 1])
    assert (len(extra) > 0) == (spacing == "trailing")


def test_diffusers_trailing_grid_can_call_the_model_at_t_minus_1():
    """For some n (61, 103, 121, ... at T = 1000) ``np.arange(T, 0, -T/n)`` has n + 1 entries and
    diffusers' 'trailing' grid ends with t = -1: its loop then makes an (n+1)-th model call at
    t = -1, where ``alphas_cumprod[-1]`` is alpha_bar at T - 1. scorekit's grid has the n model
    times and ends at -1; its result is diffusers' sample before that extra step."""
    n = 61
    sched, betas = make_scheduler(DDPMScheduler, timestep_spacing="trailing", clip_sample=False)
    sched.set_timesteps(n)
    assert len(sched.timesteps) == n + 1 and sched.timesteps[-1] == -1
    grid = scorekit.make_timesteps(scorekit.DDPM(betas=betas), n, "trailing")
    np.testing.assert_array_equal(grid.numpy(), sched.timesteps.numpy())   # ours: -1 is the end

    model = exact_model("epsilon", betas)
    x_T = start(dtype=F64, shape=(2,) + SHAPE[1:])
    df = run_diffusers(sched, model, x_T, gen())
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddpm", num_steps=n, spacing="trailing")
    assert df["t"][-1] == -1 and len(df["t"]) == n + 1
    assert sk["t"] == df["t"][:n]
    for i in range(n):
        assert rel_err(sk["x"][i], df["x"][i]) <= RTOL
        assert rel_err(sk["x0"][i], df["x0"][i]) <= RTOL
    assert rel_err(sk["out"], df["x"][n]) <= RTOL          # diffusers' state before its extra step
    assert rel_err(sk["out"], df["out"]) > 1e-2            # ... which then spoils it


# ---------------------------------------------------------------------------------------------
# DDPM: DDPMScheduler
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_ddpm_schedules_and_prediction_types(schedule, prediction):
    sched, betas = make_scheduler(DDPMScheduler, schedule, prediction_type=prediction, clip_sample=False)
    sched.set_timesteps(20)                                # 'leading': 950, 900, ..., 0
    model = exact_model(prediction, betas)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen())
    sk = run_scorekit(model, x_T, gen(), betas=betas, prediction_type=PREDICTIONS[prediction],
                      sampler="ddpm", num_steps=20, spacing="leading", variance="small")
    assert_same_trajectory(sk, df)


DDPM_GRIDS = [(s, n, v) for s in ("leading", "linspace") for n in (10, 50, 7, 30)
              for v in ("small", "large")] + [("leading", 1000, "small")]


@pytest.mark.parametrize("spacing,n,variance", DDPM_GRIDS)
def test_ddpm_respaced(spacing, n, variance):
    """diffusers respaces DDPM to the chosen model times exactly as scorekit does (any spacing).

    ('trailing' ends at t = T/n - 1 > 0, where diffusers adds noise to the final sample; see
    :func:`test_ddpm_trailing_final_step_adds_noise_in_diffusers`.)
    """
    sched, betas = make_scheduler(DDPMScheduler, timestep_spacing=spacing, clip_sample=False,
                                  variance_type={"small": "fixed_small", "large": "fixed_large"}[variance])
    sched.set_timesteps(n)
    model = exact_model("epsilon", betas)
    x_T = start(seed=n, shape=SHAPE if n < T else (2,) + SHAPE[1:])
    df = run_diffusers(sched, model, x_T, gen(n))
    sk = run_scorekit(model, x_T, gen(n), betas=betas, sampler="ddpm", num_steps=n, spacing=spacing,
                      variance=variance)
    assert df["t"][-1] == 0
    assert_same_trajectory(sk, df)


@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_trailing_final_step_adds_noise_in_diffusers(variance):
    """diffusers adds noise whenever t > 0, also on the last step (to the data) when the grid
    ends above 0, as 'trailing' does (t = T/n - 1): one extra draw z, scaled by the variance
    floor sqrt(1e-20) = 1e-10 for fixed_small and by sqrt(1 - alpha_bar_t) for fixed_large.
    scorekit adds no noise on the step to the data. Everything before is identical, and z is
    exactly the next draw of scorekit's generator."""
    n = 10
    sched, betas = make_scheduler(DDPMScheduler, timestep_spacing="trailing", clip_sample=False,
                                  variance_type={"small": "fixed_small", "large": "fixed_large"}[variance])
    sched.set_timesteps(n)
    model = exact_model("epsilon", betas)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen())
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddpm", num_steps=n, spacing="trailing",
                      variance=variance)
    t_last = df["t"][-1]
    assert t_last == T // n - 1 == 99
    z = torch.randn(SHAPE, generator=sk["generator"], dtype=F64)    # diffusers' extra draw
    assert torch.equal(sk["generator"].get_state(), df["generator"].get_state())
    scale = 1e-10 if variance == "small" else (1 - sched.alphas_cumprod[t_last]).sqrt().item()
    if variance == "large":
        assert scale > 0.1
    assert_same_trajectory({**sk, "out": sk["out"] + scale * z}, df, same_draws=False)
    if variance == "large":
        assert rel_err(sk["out"], df["out"]) > 0.1


CLIP_CONFIGS = {
    # name: (diffusers config, scorekit options)
    "clip": ({"clip_sample": True}, {"clip": 1.0}),
    "clip_range_1.5": ({"clip_sample": True, "clip_sample_range": 1.5}, {"clip": 1.5}),
    "threshold": ({"thresholding": True, "dynamic_thresholding_ratio": 0.995, "sample_max_value": 2.0},
                  {"threshold": 0.995, "threshold_max": 2.0}),
    "threshold_0.9": ({"thresholding": True, "dynamic_thresholding_ratio": 0.9, "sample_max_value": 1.3},
                      {"threshold": 0.9, "threshold_max": 1.3}),
}


def assert_clipping_bites(df: dict, model_x0, name: str) -> None:
    """The comparison could fail: clipping / thresholding changed x0_pred at some steps (and
    dynamic thresholding used a threshold s strictly between 1 and its maximum)."""
    changed, inner = 0, 0
    dcfg, _ = CLIP_CONFIGS[name]
    for t, x, x0 in zip(df["t"], df["x"], df["x0"]):
        raw = model_x0(x, torch.tensor(t))
        changed += int(not torch.allclose(raw, x0))
        if dcfg.get("thresholding"):
            s = torch.quantile(raw.reshape(raw.shape[0], -1).abs(), dcfg["dynamic_thresholding_ratio"], dim=1)
            inner += int(((s > 1.01) & (s < dcfg["sample_max_value"] - 0.01)).any())
    assert changed >= 3
    if dcfg.get("thresholding"):
        assert inner >= 1


@pytest.mark.parametrize("name", list(CLIP_CONFIGS))
@pytest.mark.parametrize("variance", ["small", "large"])
def test_ddpm_clipping_and_thresholding(name, variance):
    """clip_sample <-> clip=clip_sample_range; thresholding <-> threshold=ratio, threshold_max=sample_max_value."""
    dcfg, skopt = CLIP_CONFIGS[name]
    sched, betas = make_scheduler(DDPMScheduler, variance_type="fixed_" + variance, **dcfg)
    sched.set_timesteps(30)
    model = exact_model("epsilon", betas, WIDE)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen())
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddpm", num_steps=30, spacing="leading",
                      variance=variance, **skopt)
    assert_same_trajectory(sk, df)
    assert_clipping_bites(df, WIDE.x0_model(scorekit.DDPM(betas=betas)), name)


def test_ddpm_with_diffusers_defaults():
    """DDPMScheduler() as it comes (linear, clip_sample=True, 'leading', fixed_small, epsilon)
    is scorekit's ddpm with spacing='leading' and clip=1.0."""
    sched = DDPMScheduler()
    sched.set_timesteps(25)
    betas = sched.betas.double()
    # float64 tables, as in make_scheduler
    sched.betas, sched.alphas = betas, 1 - betas
    sched.alphas_cumprod, sched.one = torch.cumprod(sched.alphas, 0), torch.tensor(1.0, dtype=F64)
    model = exact_model("epsilon", betas, WIDE)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen())
    sk = run_scorekit(model, x_T, gen(), betas=betas, prediction_type="eps", sampler="ddpm",
                      num_steps=25, spacing="leading", clip=1.0)
    assert_same_trajectory(sk, df)
    assert any((x0.abs() == 1).any() for x0 in df["x0"])       # clipping was active


# ---------------------------------------------------------------------------------------------
# DDIM: DDIMScheduler
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction", list(PREDICTIONS))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
def test_ddim_schedules_and_prediction_types(schedule, prediction):
    sched, betas = make_scheduler(DDIMScheduler, schedule, prediction_type=prediction, clip_sample=False)
    sched.set_timesteps(20)
    model = exact_model(prediction, betas)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen(), eta=0.0)
    sk = run_scorekit(model, x_T, gen(), betas=betas, prediction_type=PREDICTIONS[prediction],
                      sampler="ddim", num_steps=20, spacing="leading", eta=0.0)
    assert_same_trajectory(sk, df)


# grids spaced evenly by T // n, where diffusers' DDIM steps to the next model time
DDIM_GRIDS = [("leading", n) for n in (10, 50, 7, 30)] + [("trailing", 10), ("trailing", 50)]


@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("spacing,n", DDIM_GRIDS)
def test_ddim_eta_and_grids(spacing, n, eta):
    prediction = "v_prediction" if spacing == "trailing" else "epsilon"
    sched, betas = make_scheduler(DDIMScheduler, timestep_spacing=spacing, clip_sample=False,
                                  prediction_type=prediction)
    sched.set_timesteps(n)
    assert np.all(-np.diff(sched.timesteps.numpy()) == T // n)
    model = exact_model(prediction, betas)
    x_T = start(seed=n)
    df = run_diffusers(sched, model, x_T, gen(n), eta=eta)
    sk = run_scorekit(model, x_T, gen(n), betas=betas, sampler="ddim", num_steps=n, spacing=spacing,
                      eta=eta, prediction_type=PREDICTIONS[prediction])
    # diffusers draws on every step when eta > 0, also the last one (to the data, noise std 0),
    # which scorekit skips: one draw more, after the last one that matters
    assert_same_trajectory(sk, df, same_draws=eta == 0)
    if eta > 0:
        torch.randn(SHAPE, generator=sk["generator"], dtype=F64)
        assert torch.equal(sk["generator"].get_state(), df["generator"].get_state())


def test_ddim_1000_steps_eta_1():
    """All three spacings give 999 .. 0 at n = T; DDIM with eta = 1 is then ancestral sampling."""
    sched, betas = make_scheduler(DDIMScheduler, "squaredcos_cap_v2", timestep_spacing="trailing",
                                  clip_sample=False, prediction_type="sample")
    sched.set_timesteps(T)
    model = exact_model("sample", betas)
    x_T = start(seed=3, shape=(2,) + SHAPE[1:])
    df = run_diffusers(sched, model, x_T, gen(3), eta=1.0)
    sk = run_scorekit(model, x_T, gen(3), betas=betas, prediction_type="x0", sampler="ddim",
                      num_steps=T, eta=1.0)
    assert_same_trajectory(sk, df, same_draws=False)


@pytest.mark.parametrize("eta", [0.0, 1.0])
@pytest.mark.parametrize("name", ["clip", "threshold", "threshold_0.9"])
def test_ddim_clipping_and_thresholding(name, eta):
    """scorekit derives eps from the clipped x0: diffusers' use_clipped_model_output=True."""
    dcfg, skopt = CLIP_CONFIGS[name]
    sched, betas = make_scheduler(DDIMScheduler, **dcfg)
    sched.set_timesteps(30)
    model = exact_model("epsilon", betas, WIDE)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen(), eta=eta, use_clipped_model_output=True)
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddim", num_steps=30, spacing="leading",
                      eta=eta, **skopt)
    assert_same_trajectory(sk, df, same_draws=eta == 0)
    assert_clipping_bites(df, WIDE.x0_model(scorekit.DDPM(betas=betas)), name)


def test_ddim_default_keeps_unclipped_eps():
    """With clip_sample=True diffusers' DDIM by default (use_clipped_model_output=False, also in
    DDIMPipeline) clips x0 but keeps the network's eps; scorekit's clip makes eps consistent with
    the clipped x0. The steps differ by exactly sqrt(1 - alpha_bar_prev) (eps_raw - eps_clipped)."""
    sched, betas = make_scheduler(DDIMScheduler, clip_sample=True)
    sched.set_timesteps(20)
    model = exact_model("epsilon", betas, WIDE)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen())
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddim", num_steps=20, spacing="leading",
                      clip=1.0)
    t, s = df["t"][0], df["t"][1]
    ab_t, ab_s = sched.alphas_cumprod[t], sched.alphas_cumprod[s]
    x_t, x0 = df["x"][0], df["x0"][0]
    assert rel_err(sk["x0"][0], x0) <= RTOL and (x0.abs() == 1).any()
    eps_raw = model(x_t, torch.tensor(t))
    eps_clipped = (x_t - ab_t.sqrt() * x0) / (1 - ab_t).sqrt()
    assert rel_err(df["x"][1] - sk["x"][1], (1 - ab_s).sqrt() * (eps_raw - eps_clipped)) <= 1e-8
    assert rel_err(sk["out"], df["out"]) > 1e-2


@pytest.mark.parametrize("eta", [0.0, 0.5])
def test_ddim_stable_diffusion_config(eta):
    """Stable Diffusion's scheduler: scaled_linear, steps_offset=1, set_alpha_to_one=False.
    Model times 981, 961, ..., 1, and the last step ends at alpha_bar_0 (t = 0), not the data:
    scorekit's grid is diffusers' timesteps followed by the end time 0."""
    sched, betas = make_scheduler(DDIMScheduler, "scaled_linear", clip_sample=False, steps_offset=1,
                                  set_alpha_to_one=False)
    sched.set_timesteps(50)
    assert sched.timesteps[0] == 981 and sched.timesteps[-1] == 1
    model = exact_model("epsilon", betas)
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen(), eta=eta)
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddim", timesteps=with_end(sched.timesteps, 0),
                      eta=eta)
    assert_same_trajectory(sk, df)


@pytest.mark.parametrize("spacing,n", [("trailing", 7), ("linspace", 10)])
def test_ddim_steps_to_t_minus_T_over_n(spacing, n):
    """diffusers' DDIM steps from t to t - T // n whatever the grid. On grids not spaced evenly by
    T // n (trailing with n not dividing T, linspace) each step lands where the next model call is
    not: every diffusers step is scorekit's one-step DDIM from t to t - T // n (or to the data
    when that is negative; to t = 0 itself, alpha_bar_0, when it is exactly 0), but the
    trajectories differ."""
    sched, betas = make_scheduler(DDIMScheduler, timestep_spacing=spacing, clip_sample=False)
    sched.set_timesteps(n)
    process = scorekit.DDPM(betas=betas)
    grid = scorekit.make_timesteps(process, n, spacing)
    np.testing.assert_array_equal(grid[:-1].numpy(), sched.timesteps.numpy())   # same model times
    model = exact_model("epsilon", betas)
    denoiser = Denoiser(model, process, "eps")
    x_T = start()
    df = run_diffusers(sched, model, x_T, gen(), eta=0.0)
    targets = [t - T // n for t in df["t"]]
    assert targets[:-1] != df["t"][1:]                      # lands off the grid
    for i, (t, prev) in enumerate(zip(df["t"], targets)):
        one_step = scorekit.ddim(denoiser, process, df["x"][i], [t, max(prev, -1)])
        nxt = df["x"][i + 1] if i + 1 < len(df["x"]) else df["out"]
        assert rel_err(one_step, nxt) <= RTOL
    if spacing == "trailing":
        assert targets[-1] == 0                             # ends at sigma_0 = sqrt(beta_0), not data
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler="ddim", num_steps=n, spacing=spacing)
    assert sk["t"] == df["t"]
    assert rel_err(sk["out"], df["out"]) > 1e-3


# ---------------------------------------------------------------------------------------------
# float32, with diffusers' own float32 tables
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_float32_with_diffusers_float32_tables(sampler):
    """In float32 with diffusers' float32 alphas_cumprod (scorekit: the same betas in float64)
    the two agree to 3e-5 relative in x_t and the samples, and to 5e-4 in x0_pred, whose
    eps -> x0 conversion amplifies float32 rounding by 1 / sqrt(alpha_bar_999) ~ 160.
    (Observed at 50 steps: ~2e-6 and ~4e-5; over 1000 steps up to ~7e-5 and ~2e-4.)"""
    cls = DDPMScheduler if sampler == "ddpm" else DDIMScheduler
    sched, betas = make_scheduler(cls, dtype=torch.float32, clip_sample=False, timestep_spacing="trailing")
    sched.set_timesteps(50)
    model = exact_model("epsilon", betas)
    x_T = start(dtype=torch.float32)
    extra = {"eta": 0.5} if sampler == "ddim" else {}
    df = run_diffusers(sched, model, x_T, gen(), **extra)
    sk = run_scorekit(model, x_T, gen(), betas=betas, sampler=sampler, num_steps=50, spacing="trailing", **extra)
    assert sk["out"].dtype == torch.float32
    assert_same_trajectory(sk, df, rtol=3e-5, rtol_x0=5e-4, same_draws=False)


# ---------------------------------------------------------------------------------------------
# a diffusers UNet2DModel as the model
# ---------------------------------------------------------------------------------------------

def tiny_unet():
    from diffusers import UNet2DModel

    torch.manual_seed(0)                                   # random initialisation of the weights
    return UNet2DModel(sample_size=8, in_channels=3, out_channels=3, block_out_channels=(8, 16),
                       layers_per_block=1, norm_num_groups=4,
                       down_block_types=("DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D")).eval()


def test_unet2dmodel_plugs_into_scorekit_sample():
    """A diffusers UNet2DModel goes straight into scorekit.sample and gives diffusers' DDIM
    trajectory (float32, diffusers' own float32 tables)."""
    unet = tiny_unet()
    sched = DDIMScheduler(clip_sample=False)
    sched.set_timesteps(10)
    x_T = start(dtype=torch.float32, shape=(2, 3, 8, 8))
    with torch.no_grad():
        df = run_diffusers(sched, unet, x_T, gen(), eta=0.0)
    sk = run_scorekit(unet, x_T, gen(), betas=sched.betas, prediction_type="eps", sampler="ddim",
                      num_steps=10, spacing="leading")
    assert sk["out"].dtype == torch.float32
    assert_same_trajectory(sk, df)
    assert rel_err(sk["out"], x_T) > 0.1                   # the UNet did something


def test_ddim_pipeline_with_one_generator():
    """DDIMPipeline draws x_T from its generator, then the step noise from the same generator:
    scorekit reproduces it by drawing x_T from the generator and passing the generator on.
    (x0-prediction keeps this random UNet's images mostly inside the pipeline's [0, 1] clamp.)"""
    from diffusers import DDIMPipeline

    unet = tiny_unet()
    pipe = DDIMPipeline(unet=unet, scheduler=DDIMScheduler(clip_sample=False, prediction_type="sample"))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, generator=gen(7), eta=0.5, num_inference_steps=10, output_type="pt").images
    g = gen(7)
    x_T = torch.randn((2, 3, 8, 8), generator=g)
    x = scorekit.sample(unet, x_T, betas=pipe.scheduler.betas, prediction_type="x0", sampler="ddim",
                        num_steps=10, spacing="leading", eta=0.5, generator=g)
    ours = (x / 2 + 0.5).clamp(0, 1)
    assert images.shape == ours.shape
    assert (ours - images).abs().max() <= RTOL            # images lie in [0, 1]
    assert ((images > 0) & (images < 1)).float().mean() > 0.9 and images.std() > 0.05
