"""EDM's preconditioning (scorekit.precondition): the coefficients against Karras et al. (2022),
Table 1, and the unit-variance conditions that define them; the wrapper against the exact
Gaussian-mixture denoiser; every process through Karras's scaled variables; the loss that gives F
unit weight; and a preconditioned network trained, saved, loaded and sampled end to end."""
import json
import math
import os

import numpy as np
import pytest
import torch

import scorekit
from cli_helpers import assert_one_line_error, run_main
from scorekit import DDPM, EDM, VESDE, VPSDE, ScorekitError, SimpleVE, SubVPSDE
from scorekit.data import load_dataset
from scorekit.losses import diffusion_loss, loss_weight
from scorekit.metrics.distribution import (mode_weight_stderr, mode_weights, sliced_wasserstein,
                                           swd_noise_floor, within_mode_spread)
from scorekit.precondition import EDMPrecond, c_in, c_noise, c_out, c_skip, precondition
from scorekit.toy import eight_gaussians
from scorekit.train import TrainConfig, checkpoint_denoiser, load_checkpoint, read_metrics, train

F64 = torch.float64
SIGMAS = [0.002, 0.03, 0.5, 1.0, 2.7, 80.0]
SIGMA_DATAS = [0.5, 1.3]
# float64 rounding: each coefficient is a handful of operations, each with relative error at most
# 2^-53 = 1.1e-16, so the formulas agree to well under 1e-15 relative; 4e-15 leaves a factor ~4
RTOL_COEF = 4e-15

PROCESSES = {
    "DDPM": DDPM(schedule="cosine"),
    "DDPM-linear": DDPM(schedule="linear"),
    "SimpleVE": SimpleVE(1000),
    "VPSDE": VPSDE(),
    "SubVPSDE": SubVPSDE(),
    "VESDE": VESDE(),
    "EDM": EDM(),
}


def model_times(process, n, seed=0):
    """``n`` times spread over the process's model range: whole steps for a discrete process."""
    u = torch.rand(n, generator=torch.Generator().manual_seed(seed), dtype=F64)
    t = process.t_min + (process.t_max - process.t_min) * u
    return torch.round(t).long() if process.discrete else t


class FixedTimes:
    """A time sampler that returns the given times (and draws nothing from the generator)."""

    def __init__(self, t):
        self.t = t

    def sample(self, n, generator):
        return self.t, torch.ones(n, dtype=F64)


def smooth_net(x, noise, y=None):
    """A fixed nonlinear ``F(x, c_noise)`` standing in for a network."""
    return torch.tanh(x) * (1 + noise[:, None]) + 0.3 * torch.sin(3 * x.flip(1)) - 0.1 * noise[:, None] ** 2


# --- (a) the coefficients ----------------------------------------------------------------------------

@pytest.mark.parametrize("sd", SIGMA_DATAS)
def test_coefficients_are_table_1s(sd):
    """Table 1, column EDM, written here in another algebraic form than the module's."""
    s = torch.tensor(SIGMAS, dtype=F64)
    r = s / sd                                               # the noise level in units of sigma_data
    torch.testing.assert_close(c_skip(s, sd), 1 / (1 + r ** 2), rtol=RTOL_COEF, atol=0)
    torch.testing.assert_close(c_out(s, sd), sd * r / torch.sqrt(1 + r ** 2), rtol=RTOL_COEF, atol=0)
    torch.testing.assert_close(c_in(s, sd), 1 / (sd * torch.sqrt(1 + r ** 2)), rtol=RTOL_COEF, atol=0)
    # ln(sigma) / 4: one rounding of log and an exact division by 4 (atol for ln 1 = 0)
    torch.testing.assert_close(c_noise(s), torch.tensor([0.25 * math.log(v) for v in SIGMAS], dtype=F64),
                               rtol=RTOL_COEF, atol=1e-16)
    # and at a python number, as the docstrings allow
    assert c_skip(0.5, 0.5) == 0.5 and c_out(0.5, 0.5) == pytest.approx(0.5 / math.sqrt(2), rel=1e-15)


@pytest.mark.parametrize("sd", SIGMA_DATAS)
def test_the_unit_variance_conditions_that_define_the_coefficients(sd):
    """For x = x_0 + sigma n with E[x_0^2] = sigma_data^2 (per coordinate), E[x_0 n] = 0, E[n^2] = 1,
    in closed form: E[(c_in x)^2] = c_in^2 (sd^2 + sigma^2) = 1, and the effective target
    F_target = (x_0 - c_skip x) / c_out = ((1 - c_skip) x_0 - c_skip sigma n) / c_out has
    E[F_target^2] = ((1 - c_skip)^2 sd^2 + c_skip^2 sigma^2) / c_out^2 = 1. The edm loss weight on
    the x0 error, lambda = (sigma^2 + sd^2) / (sigma sd)^2, is 1 / c_out^2: F's error has weight 1."""
    s = torch.tensor(SIGMAS, dtype=F64)
    one = torch.ones_like(s)
    torch.testing.assert_close(c_in(s, sd) ** 2 * (sd ** 2 + s ** 2), one, rtol=8 * RTOL_COEF, atol=0)
    target_var = ((1 - c_skip(s, sd)) ** 2 * sd ** 2 + c_skip(s, sd) ** 2 * s ** 2) / c_out(s, sd) ** 2
    torch.testing.assert_close(target_var, one, rtol=8 * RTOL_COEF, atol=0)
    # the library's edm weighting on an x0 prediction, on the EDM process where sigma = t
    lam = loss_weight(EDM(), s, "edm", "x0", sigma_data=sd)
    torch.testing.assert_close(lam, (s ** 2 + sd ** 2) / (s * sd) ** 2, rtol=8 * RTOL_COEF, atol=0)
    torch.testing.assert_close(lam * c_out(s, sd) ** 2, one, rtol=8 * RTOL_COEF, atol=0)


@pytest.mark.parametrize("name", ["DDPM", "VPSDE", "EDM"])
def test_the_network_sees_unit_variance_input_for_data_of_std_sigma_data(name):
    """Monte-Carlo through the wrapper itself: Gaussian data of standard deviation sigma_data, noised
    by the process at several times; the recorded network input c_in x_t / alpha has second moment 1.
    Each time's estimate averages N = 20000 squares of N(0, 1) values (variance 2): standard error
    sqrt(2 / N) = 0.01; the bound is 5 standard errors."""
    process, sd, n = PROCESSES[name], 0.7, 20000
    seen = {}

    def recorder(x, noise):
        seen["x"] = x
        return torch.zeros_like(x)

    wrapper = EDMPrecond(recorder, process, sigma_data=sd)
    g = torch.Generator().manual_seed(1)
    for t in model_times(process, 4, seed=2).tolist():
        x0 = sd * torch.randn(n, 1, generator=g, dtype=F64)
        x_t = process.sample_marginal(x0, torch.full((n,), float(t), dtype=F64), generator=g)
        wrapper(x_t, torch.full((n,), t))
        assert abs(seen["x"].pow(2).mean().item() - 1) < 5 * math.sqrt(2 / n), (name, t)


# --- (b) the exact denoiser ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PROCESSES))
def test_the_ideal_F_of_an_exact_mixture_gives_back_its_exact_denoiser(name):
    """F* = (D*(x^; sigma~) - c_skip x^) / c_out, computed from what F is given (x^ = input / c_in,
    sigma~ = exp(4 c_noise)) with the exact mixture denoiser D*, makes the wrapper return E[x_0 | x_t]
    of the mixture at float64 times (whole steps for a discrete process).

    float64: each step rounds at 2^-53 relative to the magnitudes involved, at most |x^| (up to
    sigma~_max ~ 1e2 for DDPM's cosine end, 80 for EDM); the exp/log round trip of sigma~ moves it by
    about 4 |ln sigma~| 2^-53 relative, which changes D* by less than |x^| times that. 1e-12 |x^|
    leaves a margin of about 100."""
    process = PROCESSES[name]
    mixture = eight_gaussians()
    sd = 0.5

    def ideal_F(x_in, noise, y=None):
        sigma = torch.exp(4 * noise.to(F64))
        x_hat = x_in / c_in(sigma, sd)[:, None]
        d_star = mixture.posterior_mean(x_hat, 1.0, sigma)
        return (d_star - c_skip(sigma, sd)[:, None] * x_hat) / c_out(sigma, sd)[:, None]

    n = 64
    t = model_times(process, n, seed=3)
    x0 = mixture.sample(n, generator=torch.Generator().manual_seed(4), dtype=F64)
    x_t = process.sample_marginal(x0, t.to(F64), generator=torch.Generator().manual_seed(5))
    wrapper = EDMPrecond(ideal_F, process, sigma_data=sd)
    exact = mixture.posterior_mean(x_t, process.alpha(t), process.sigma(t))
    got = wrapper(x_t, t)
    assert got.dtype == F64
    scale = (x_t / process.alpha(t).to(F64)[:, None]).abs().amax(1, keepdim=True)
    assert torch.all((got - exact).abs() <= 1e-12 * scale), (got - exact).abs().max()
    # one time (a python number) for the whole batch, as samplers pass it
    t0 = t[0].item()
    one = mixture.posterior_mean(x_t, process.alpha(t0).item(), process.sigma(t0).item())
    torch.testing.assert_close(wrapper(x_t, t0), one, rtol=0, atol=1e-12 * scale.max().item())
    # without the preconditioning, F* read as an x0 prediction is not the denoiser
    assert (ideal_F(x_t, torch.full((n,), 0.1, dtype=F64)) - exact).abs().max() > 0.1


# --- (c) every process is EDM in scaled variables ----------------------------------------------------

@pytest.mark.parametrize("name", ["DDPM", "DDPM-linear", "VPSDE", "SubVPSDE"])
def test_a_process_with_alpha_below_one_is_the_edm_wrapper_in_scaled_variables(name):
    """D_process(x_t, t) = D_EDM(x_t / alpha_t; sigma~_t), sigma~ = sigma / alpha, for any F: the
    wrapper on the EDM process at the noise level sigma~ of the scaled state, and a reference written
    here from Table 1 with sigma~ from alpha_bar (DDPM: sqrt((1 - alpha_bar) / alpha_bar)) or from
    alpha and sigma directly. F sees the same input and time in all three. float64; the only
    difference is the rounding of sigma~ by different routes (a few 2^-53), amplified at most
    ~|x^| / sigma_data through c_skip, c_out: rtol 1e-12 leaves a wide margin."""
    process, edm, sd = PROCESSES[name], EDM(), 0.8
    n = 32
    t = model_times(process, n, seed=6)
    x0 = eight_gaussians().sample(n, generator=torch.Generator().manual_seed(7), dtype=F64)
    x_t = process.sample_marginal(x0, t.to(F64), generator=torch.Generator().manual_seed(8))
    if isinstance(process, DDPM):
        ab = process.alpha_bar_table[t]
        alpha, s = ab.sqrt(), ((1 - ab) / ab).sqrt()
    else:
        alpha = process.alpha(t)
        s = process.sigma(t) / alpha
    x_hat = x_t / alpha[:, None]
    seen = []

    def F(x, noise, y=None):
        seen.append((x, noise))
        return smooth_net(x, noise)

    got = EDMPrecond(F, process, sd)(x_t, t)
    in_edm = EDMPrecond(F, edm, sd)(x_hat, s)
    ref_in, ref_noise = x_hat / torch.sqrt(s ** 2 + sd ** 2)[:, None], torch.log(s) / 4
    reference = (sd ** 2 / (s ** 2 + sd ** 2))[:, None] * x_hat \
        + (s * sd / torch.sqrt(s ** 2 + sd ** 2))[:, None] * smooth_net(ref_in, ref_noise)
    torch.testing.assert_close(got, reference, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(in_edm, reference, rtol=1e-12, atol=1e-12)
    for x, noise in seen:
        torch.testing.assert_close(x, ref_in, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(noise, ref_noise, rtol=1e-12, atol=1e-12)
    # and it differs from the wrapper that forgets the scaling (x_t itself at sigma_t)
    unscaled = EDMPrecond(F, edm, sd)(x_t, process.sigma(t))
    assert (unscaled - reference).abs().max() > 0.1


def test_sigma_data_defaults_and_bad_settings():
    assert EDMPrecond(smooth_net, EDM(sigma_data=0.7)).sigma_data == 0.7     # the process's own
    assert EDMPrecond(smooth_net, VPSDE()).sigma_data == 0.5                 # EDM's value
    assert EDMPrecond(smooth_net, EDM(sigma_data=0.7), sigma_data=0.2).sigma_data == 0.2
    for bad in (0.0, -1.0, float("nan"), "x"):
        with pytest.raises(ScorekitError, match="sigma_data"):
            EDMPrecond(smooth_net, VPSDE(), sigma_data=bad)
    with pytest.raises(ScorekitError, match="sigma_data"):
        EDM(sigma_data=0.0)
    with pytest.raises(ScorekitError, match="shape"):
        EDMPrecond(lambda x, c: torch.cat([x, x], 1), VPSDE())(torch.zeros(3, 2), 0.5)
    with pytest.raises(ScorekitError, match="kind"):
        precondition(smooth_net, VPSDE(), {"kind": "vp"})
    with pytest.raises(ScorekitError, match="unknown setting"):
        precondition(smooth_net, VPSDE(), {"kind": "edm", "sigma": 1})
    assert precondition(smooth_net, VPSDE(), None) is smooth_net
    wrapped = precondition(smooth_net, VPSDE(), {"kind": "edm", "sigma_data": 0.3})
    assert isinstance(wrapped, EDMPrecond) and wrapped.config() == {"kind": "edm", "sigma_data": 0.3}


# --- the loss -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(PROCESSES))
def test_the_edm_loss_on_the_wrapper_is_the_unweighted_error_of_F(name):
    """diffusion_loss(EDMPrecond(F), x0 prediction, edm weighting) per sample equals
    mean_d (F(c_in x^; c_noise) - F_target)^2 with F_target = ((1 - c_skip) x_0 - c_skip sigma~ eps) / c_out,
    computed here from the same draws: weight exactly 1 on F, on every process.

    float64: the loss forms x_0 - D, which cancels when D is near x_0: the relative rounding error
    grows like |x_0| / |x_0 - D| ~ |x_0| / c_out <= 2 / sigma~_min (sigma~_min ~ 2e-3 at EDM's
    sigma_min): under 1e3 * 2^-53 ~ 1e-13; rtol 1e-10."""
    process, sd, n = PROCESSES[name], 0.6, 48
    t = model_times(process, n, seed=9)
    x0 = eight_gaussians().sample(n, generator=torch.Generator().manual_seed(10), dtype=F64)
    net = EDMPrecond(smooth_net, process, sd)
    g = torch.Generator().manual_seed(11)
    eps = torch.randn(x0.shape, generator=torch.Generator().manual_seed(11), dtype=F64)
    out = diffusion_loss(net, process, x0, prediction_type="x0", weighting="edm", generator=g,
                         timestep_sampler=FixedTimes(t), sigma_data=sd)
    s = (process.sigma(t) / process.alpha(t))[:, None]
    x_hat = x0 + s * eps
    target = ((1 - c_skip(s, sd)) * x0 - c_skip(s, sd) * s * eps) / c_out(s, sd)
    f = smooth_net(c_in(s, sd) * x_hat, c_noise(s[:, 0]))
    torch.testing.assert_close(out.per_sample, (f - target).pow(2).mean(1), rtol=1e-10, atol=0)


# --- training settings -------------------------------------------------------------------------------

def test_train_config_checks_the_preconditioning_settings():
    ok = dict(precondition="edm", prediction="x0", weighting="edm")
    TrainConfig(**ok).validate()
    TrainConfig(**ok, sigma_data=1.2, weighting_options={"sigma_data": 1.2}).validate()
    TrainConfig(weighting="edm", sigma_data=1.2).validate()
    for bad, fragment in [(dict(precondition="vp"), "unknown precondition"),
                          (dict(precondition="edm"), "prediction 'x0' and weighting 'edm'"),
                          (dict(ok, prediction="eps"), "got prediction 'eps'"),
                          (dict(ok, weighting="simple"), "weighting 'simple'"),
                          (dict(ok, sigma_data=0), "sigma_data"),
                          (dict(ok, sigma_data=1.0, weighting_options={"sigma_data": 0.5}), "disagree"),
                          (dict(sigma_data=1.0), "only by precondition 'edm' and weighting 'edm'")]:
        with pytest.raises(ScorekitError, match=fragment.replace("(", r"\(")):
            TrainConfig(**bad).validate()


def _data_std(mixture) -> float:
    """The root-mean-square coordinate of the mixture: sqrt(mean_d (Cov_dd + mean_d^2))."""
    return float(torch.sqrt((torch.diagonal(mixture.covariance()) + mixture.mean() ** 2).mean()))


@pytest.mark.slow
def test_a_preconditioned_mlp_learns_eight_gaussians(tmp_path):
    """An MLP trained 800 steps with --precondition edm on the EDM process (log-normal noise levels,
    sigma_data the data's own RMS 1.415), saved, loaded back through checkpoint_denoiser and sampled
    with edm_heun (20 Karras steps) from its EMA weights, against the exact mixture denoiser with the
    same sampler and noise. At n = 2000 samples:
    * SWD to fresh data within 4 floor_std of the exact sampler's (floor_std: the spread of the SWD
      between two exact sample sets of this size, measured here);
    * mode weights within 0.05 of 1/8 (the sampling error alone is 0.0074: this allows for model error);
    * within-mode spread below 2 (exact: 1.0; this run 1.6-1.7; the same run stopped at 400 or 600
      steps gives 2.8 and 2.3, a ring without modes 3), which the SWD alone cannot see;
    * the raw network F read as an x0 prediction, i.e. without the wrapper, fails the SWD bound."""
    mixture = load_dataset("eight_gaussians", n=10).mixture
    sd = _data_std(mixture)
    run = str(tmp_path / "run")
    cfg = TrainConfig(data="eight_gaussians", data_options={"n": 4000}, model="mlp",
                      model_options={"hidden": 128, "depth": 2, "num_classes": None}, process="edm",
                      precondition="edm", prediction="x0", weighting="edm", sigma_data=sd,
                      timesteps="lognormal", steps=800, batch_size=128, lr=3e-3, warmup_steps=50,
                      lr_schedule="cosine", ema_decay=0.99, checkpoint_every=800, log_every=50,
                      sample_num=10, sample_steps=2, seed=0)
    train(cfg, run, progress=False)
    ckpt = load_checkpoint(run)
    assert ckpt.config["precondition"] == {"kind": "edm", "sigma_data": sd}
    assert ckpt.model_config["time_scale"] == 1.0
    d = checkpoint_denoiser(ckpt)
    n = 2000
    x_T = ckpt.process.prior_sample((n, 2), generator=torch.Generator().manual_seed(1))
    reference = mixture.sample(n, generator=torch.Generator().manual_seed(2))
    floor_mean, floor_std = swd_noise_floor(mixture, n, repeats=8, generator=torch.Generator().manual_seed(5))
    swd = lambda x: sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(4))
    kwargs = dict(process=ckpt.process, prediction_type="x0", sampler="edm_heun", num_steps=20,
                  spacing="karras")
    with torch.no_grad():
        trained = scorekit.sample(d.model, x_T, **kwargs)
        exact = scorekit.sample(mixture.x0_model(ckpt.process), x_T.double(), **kwargs)
        raw = scorekit.sample(lambda x, t: ckpt.ema_net(x, t), x_T, **kwargs)
    bound = swd(exact) + 4 * floor_std
    assert swd(trained) < bound, (swd(trained), swd(exact), floor_std)
    assert (mode_weights(trained, mixture) - 1 / 8).abs().max() < 0.05
    assert mode_weight_stderr(mixture, n).max() < 0.008
    assert within_mode_spread(trained, mixture) < 2.0
    assert not swd(raw) < bound, swd(raw)
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert rows[-1]["loss"] < rows[0]["loss"]


# --- the command line ----------------------------------------------------------------------------------

POINTS = ["--data", "eight_gaussians", "--data-option", "n=256", "--model-option", "hidden=16",
          "--model-option", "depth=1", "--batch-size", "16", "--steps", "3", "--checkpoint-every", "3",
          "--sample-num", "20", "--sample-steps", "3", "--no-progress"]


def test_command_line_round_trip(tmp_path, capsys):
    """train --precondition edm (DDPM, the default process) records the wrapper in config.json;
    sample, info and load_checkpoint + checkpoint_denoiser rebuild it; bad combinations are one line."""
    run = tmp_path / "run"
    code, out, err = run_main(capsys, ["train", *POINTS, "--precondition", "edm", "--sigma-data", "1.4",
                                       "--out", run])
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["precondition"] == {"kind": "edm", "sigma_data": 1.4}
    assert config["prediction_type"] == "x0" and config["loss"]["weighting"] == "edm"
    assert config["loss"]["options"]["sigma_data"] == 1.4
    assert config["train"]["precondition"] == "edm" and config["model"]["time_scale"] == 1.0

    code, out, err = run_main(capsys, ["info", run])
    assert code == 0, err
    assert "prediction: x0 (EDM preconditioning, sigma_data 1.4)" in out

    code, out, err = run_main(capsys, ["sample", run, "--sampler", "edm_heun", "--steps", "4", "--num", "8",
                                       "--out", tmp_path / "s.png", "--no-progress"])
    assert code == 0, err
    samples = np.load(tmp_path / "s.npz")["x"]
    assert samples.shape == (8, 2) and np.isfinite(samples).all()

    ckpt = load_checkpoint(run)
    d = checkpoint_denoiser(ckpt)
    x, t = torch.randn(5, 2, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 10, 200, 500, 999])
    y = torch.full((5,), ckpt.num_classes)                             # "no label"
    with torch.no_grad():
        expected = EDMPrecond(ckpt.ema_net, ckpt.process, 1.4)(x, t, y)
        torch.testing.assert_close(d(x, t), expected, rtol=0, atol=0)
        assert not torch.allclose(d(x, t), ckpt.ema_net(x, t, y))

    # resuming keeps the preconditioning, and changing it is refused
    code, out, err = run_main(capsys, ["train", "--out", run, "--resume", "--steps", "4", "--no-progress"])
    assert code == 0, err
    code, out, err = run_main(capsys, ["train", "--out", run, "--resume", "--sigma-data", "0.5", "--no-progress"])
    assert_one_line_error(code, err, "cannot --resume", "--sigma-data 1.4 -> 0.5")

    for argv, fragment in [(["--precondition", "edm", "--prediction", "v"], "prediction 'x0' and weighting 'edm'"),
                           (["--precondition", "edm", "--weighting", "simple"], "weighting 'simple'"),
                           (["--sigma-data", "0.7"], "only by precondition 'edm'"),
                           (["--precondition", "edm", "--sigma-data", "0"], "--sigma-data")]:
        out_dir = tmp_path / "bad"
        code, out, err = run_main(capsys, ["train", *POINTS, *argv, "--out", out_dir])
        assert_one_line_error(code, err, fragment)
        assert not out_dir.exists()
