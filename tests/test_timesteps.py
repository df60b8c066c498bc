"""Time grids: the documented spacings, diffusers' grids where they coincide, and bad requests."""
import numpy as np
import pytest
import torch

from scorekit import DDPM, EDM, VPSDE, ScorekitError, SimpleVE, make_timesteps
from scorekit.timesteps import check_timesteps, discrete_steps


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("n", [1, 7, 10, 30, 50, 999, 1000])
def test_discrete_spacings_match_diffusers(spacing, n):
    from diffusers import DDIMScheduler
    ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing=spacing)
    ref.set_timesteps(n)
    assert discrete_steps(1000, n, spacing).tolist() == ref.timesteps.tolist()


def test_documented_formulas():
    assert discrete_steps(1000, 10, "trailing").tolist() == list(range(999, 0, -100))
    assert discrete_steps(1000, 10, "leading").tolist() == list(range(900, -1, -100))
    assert discrete_steps(1000, 5, "linspace").tolist() == [999, 749, 500, 250, 0]
    q = discrete_steps(1000, 10, "quadratic")
    assert q[0] == int(np.sqrt(800) ** 2) and q[-1] == 0 and np.all(np.diff(q[::-1]) > 0)


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
