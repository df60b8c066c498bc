"""Time grids: the documented spacings, diffusers' grids where they coincide, and bad requests."""
import numpy as np
import pytest
import torch

from scorekit import DDPM, EDM, VPSDE, ScorekitError, SimpleVE, SubVPSDE, make_timesteps
from scorekit.timesteps import check_timesteps, discrete_steps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 10, 30, 50, 999, 1000])
def test_discrete_spacings_match_diffusers(spacing, n):
    from diffusers import DDIMScheduler
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(n)
    if n == 1 and spacing == "linspace":            # diffusers' one step is t = 0 (test_one_step_...)
        assert ref.timesteps.tolist() == [0] and discrete_steps(1000, 1, spacing).tolist() == [999]
        return
    assert discrete_steps(1000, n, spacing).tolist() == ref.timesteps.tolist()


def test_documented_formulas():
    assert discrete_steps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert discrete_steps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert discrete_steps(1000, 5, "linspace").tolist() == [999, 749, 500, 250, 0]
    q = discrete_steps(1000, 10, "quadratic")
    assert q[0] == int(np.sqrt(800) ** 2) and q[-1] == 0 and np.all(np.diff(q[::-1]) > 0)


@pytest.mark.parametrize("process", [VPSDE(), EDM(), SubVPSDE()], ids=repr)
def test_continuous_quadratic_grid_is_dense_near_the_data(process):
    """The continuous ``quadratic`` spacing is DDIM's quadratic one (the discrete spacing above:
    steps ``(linspace(0, sqrt(c), n))^2``) on [t_min, t_max]: the k-th time from the data end is
    t_min + (t_max - t_min) (k / (n - 1))^2, k = 0 .. n - 1, by hand; so the gaps grow away from the
    data (dense at low noise) and the ends are exactly t_max and t_min. Float64 rounding: 1e-12."""
    n = 9
    ts = make_timesteps(process, n, "quadratic")
    assert len(ts) == n + 1 and ts[-1] == process.t_data
    k = torch.arange(n - 1, -1, -1, dtype=torch.float64)
    want = process.t_min + (process.t_max - process.t_min) * (k / (n - 1)) ** 2
    torch.testing.assert_close(ts[:-1], want, rtol=1e-12, atol=1e-12)
    assert ts[0] == process.t_max and ts[-2] == pytest.approx(process.t_min, rel=1e-12)
    gaps = ts[:-2] - ts[1:-1]                      # from the noisiest step down to the data
    assert torch.all(gaps[:-1] > gaps[1:])


def test_full_grid_is_every_step():
    for spacing in ("linspace", "leading", "trailing"):
        ts = make_timesteps(DDPM(), 1000, spacing)
        assert ts.tolist() == list(range(999, -2, -1))


def test_grids_end_at_data_time():
    assert make_timesteps(DDPM(), 4)[-1] == -1
    assert make_timesteps(SimpleVE(100), 100).tolist() == list(range(100, -1, -1))
    ts = make_timesteps(VPSDE(), 5)
    assert ts[0] == 1.0 and ts[-2] == pytest.approx(1e-3) and ts[-1] == 0
    ts = make_timesteps(EDM(), 6, "log_snr")
    assert ts[0] == 80 and ts[-2] == pytest.approx(0.002) and ts[-1] == 0
    ratios = ts[1:-1] / ts[:-2]          # uniform in log-SNR = geometric in sigma for EDM
    assert torch.allclose(ratios, ratios[0].expand_as(ratios))
    assert make_timesteps(DDPM(), 3, t_end=0)[-1] == 0


@pytest.mark.parametrize("call,msg", [
    (lambda: make_timesteps(DDPM(), 1001), "more than the model's 1000 training steps"),
    (lambda: make_timesteps(DDPM(), 0), "positive integer"),
    (lambda: make_timesteps(DDPM(), 2.5), "positive integer"),
    (lambda: make_timesteps(DDPM(), 10, "cubic"), "unknown spacing 'cubic'"),
    (lambda: make_timesteps(VPSDE(), 10, "leading"), "unknown spacing 'leading'"),
    (lambda: make_timesteps(DDPM(), 900, "quadratic"), "distinct steps"),
    (lambda: check_timesteps([5.0]), "at least two"),
    (lambda: check_timesteps([5.0, 7.0, -1.0]), "strictly decreasing"),
    (lambda: check_timesteps([5.0, float("nan")]), "NaN"),
])
def test_bad_requests(call, msg):
    with pytest.raises(ScorekitError, match=msg):
        call()


# --- fractional spacings: karras, log_snr and uniform on every process ---------------------------

from scorekit import VESDE  # noqa: E402
from scorekit.timesteps import (CONTINUOUS_SPACINGS, DISCRETE_SPACINGS, edm_sigma,  # noqa: E402
                                t_from_edm_sigma)

ALL_PROCESSES = [DDPM(), DDPM(schedule="cosine"), SimpleVE(100), VPSDE(), SubVPSDE(), VESDE(), EDM()]
IDS = [repr(p) for p in ALL_PROCESSES]


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
@pytest.mark.parametrize("rho", [1.0, 3.0, 7.0])
def test_karras_grid(process, rho):
    """Karras et al. 2022, eq. 5 in sigma / alpha: the ends are sigma / alpha at t_max and t_min
    (for DDPM t = T-1 and 0), the interior follows the formula to rounding, times decrease."""
    n = 12
    ts = make_timesteps(process, n, "karras", rho=rho)
    assert len(ts) == n + 1 and ts[-1] == process.t_data
    assert ts[0] == process.t_max and ts[-2] == process.t_min
    assert torch.all(ts[1:] < ts[:-1])
    s = edm_sigma(process, ts[:-1])
    s_max, s_min = edm_sigma(process, torch.tensor([process.t_max, process.t_min], dtype=torch.float64))
    i = torch.arange(n, dtype=torch.float64)
    want = (s_max ** (1 / rho) + i / (n - 1) * (s_min ** (1 / rho) - s_max ** (1 / rho))) ** rho
    # (the ends are exact by construction, checked above; at the ends the formula itself rounds)
    torch.testing.assert_close(s[1:-1], want[1:-1], rtol=1e-10, atol=0)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # numpy 2 notices inside diffusers
def test_karras_grid_of_ddpm_matches_diffusers():
    """EulerDiscreteScheduler(use_karras_sigmas=True) builds the same sigmas from its float32
    tables (which lose ~1e-4 of 1 - alpha_bar to cancellation near t = 0)."""
    from diffusers import EulerDiscreteScheduler
    ref = EulerDiscreteScheduler(num_train_timesteps=1000, use_karras_sigmas=True)
    ref.set_timesteps(10)
    ours = edm_sigma(DDPM(), make_timesteps(DDPM(), 10, "karras"))
    torch.testing.assert_close(ours, ref.sigmas.double(), rtol=1e-4, atol=0)


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_log_snr_grid_is_uniform_in_log_snr(process):
    n = 9
    ts = make_timesteps(process, n, "log_snr")
    lam = process.log_snr(ts[:-1])
    lam_max, lam_min = process.log_snr(torch.tensor([process.t_min, process.t_max], dtype=torch.float64))
    want = lam_min + torch.arange(n, dtype=torch.float64) / (n - 1) * (lam_max - lam_min)
    torch.testing.assert_close(lam, want, rtol=0, atol=1e-10)
    assert ts[0] == process.t_max and ts[-2] == process.t_min and ts[-1] == process.t_data


@pytest.mark.parametrize("process", ALL_PROCESSES, ids=IDS)
def test_times_round_trip_through_log_snr(process):
    """t_from_log_snr inverts log_snr, and t_from_edm_sigma inverts edm_sigma = exp(-log_snr / 2)."""
    t = torch.linspace(process.t_min, process.t_max, 257, dtype=torch.float64)
    torch.testing.assert_close(process.t_from_log_snr(process.log_snr(t)), t, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(t_from_edm_sigma(process, edm_sigma(process, t)), t, rtol=1e-12, atol=1e-9)
    torch.testing.assert_close(edm_sigma(process, t), torch.exp(-process.log_snr(t) / 2), rtol=1e-12, atol=0)


def test_uniform_spacing_of_discrete_process_is_fractional_linspace():
    ts = make_timesteps(DDPM(), 7, "uniform")
    torch.testing.assert_close(ts[:-1], torch.linspace(999, 0, 7, dtype=torch.float64), rtol=0, atol=1e-12)
    assert ts[-1] == -1
    assert make_timesteps(DDPM(), 1, "karras").tolist() == [999.0, -1.0]


@pytest.mark.parametrize("spacing", ["linspace", "trailing", "quadratic", "uniform", "log_snr", "karras"])
def test_one_step_starts_from_the_noise(spacing):
    """A one-step grid evaluates the model at t_max, where x_T ~ N(0, I) lives; a step from t = 0
    would return the noise nearly unchanged. ('leading' is documented to start low.)"""
    assert make_timesteps(DDPM(), 1, spacing).tolist() == [999.0, -1.0]


def test_existing_defaults_unchanged_and_cli_offers_new_spacings():
    assert make_timesteps(DDPM(), 10).tolist() == list(range(999, 0, -100)) + [-1]
    assert make_timesteps(VPSDE(), 3).tolist() == [1.0, pytest.approx(0.5005), pytest.approx(1e-3), 0.0]
    for name in ("karras", "log_snr", "uniform"):
        assert name in DISCRETE_SPACINGS
    assert "karras" in CONTINUOUS_SPACINGS


@pytest.mark.parametrize("rho", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_rho(rho):
    with pytest.raises(ScorekitError, match="rho must be a positive number"):
        make_timesteps(DDPM(), 10, "karras", rho=rho)


def test_one_step_count_rule_for_every_command():
    """check_step_count: a discrete process takes at most its T steps (DDPM and SimpleVE alike), a
    continuous one any positive number; the message names the caller's option."""
    from scorekit import VPSDE, SimpleVE
    from scorekit.timesteps import check_step_count

    assert check_step_count(DDPM(num_steps=50), 50) == 50
    assert check_step_count(SimpleVE(num_steps=7), 7) == 7
    assert check_step_count(VPSDE(), 100000) == 100000
    for process, n in ((DDPM(num_steps=50), 51), (SimpleVE(num_steps=7), 8)):
        with pytest.raises(ScorekitError, match=f"--steps {n} is more than the model's {n - 1} diffusion steps"):
            check_step_count(process, n, "--steps")
    with pytest.raises(ScorekitError, match="positive integer"):
        check_step_count(VPSDE(), 0)
