"""Prediction conversions: they invert each other and agree with Tweedie's formula on Gaussian data."""
import itertools

import pytest
import torch

from scorekit import DDPM, EDM, VPSDE, Denoiser, ScorekitError
from scorekit.prediction import PREDICTION_TYPES, convert, to_x0

KINDS = PREDICTION_TYPES


def random_state(seed=0, n=6, shape=(3, 4)):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    eps = torch.randn((n,) + shape, generator=g, dtype=torch.float64)
    alpha = torch.rand(n, generator=g, dtype=torch.float64) * 2 + 0.05    # not only VP
    sigma = torch.rand(n, generator=g, dtype=torch.float64) * 3 + 0.05
    x_t = alpha[:, None, None] * x0 + sigma[:, None, None] * eps
    return x0, eps, x_t, alpha, sigma


def truth(kind, x0, eps, alpha, sigma):
    a, s = alpha[:, None, None], sigma[:, None, None]
    return {"x0": x0, "eps": eps, "v": a * eps - s * x0, "score": -eps / s}[kind]


@pytest.mark.parametrize("source,target", list(itertools.product(KINDS, KINDS)))
def test_conversions_are_exact_and_invert(source, target):
    x0, eps, x_t, alpha, sigma = random_state()
    out = convert(truth(source, x0, eps, alpha, sigma), source, target, x_t, alpha, sigma)
    assert torch.allclose(out, truth(target, x0, eps, alpha, sigma), rtol=1e-10, atol=1e-10)
    back = convert(out, target, source, x_t, alpha, sigma)
    assert torch.allclose(back, truth(source, x0, eps, alpha, sigma), rtol=1e-10, atol=1e-10)


def test_tweedie_on_gaussian_data():
    """Data N(mu, s^2): p_t = N(alpha mu, alpha^2 s^2 + sigma^2), so the exact score is known and
    E[x0 | x_t] = mu + alpha s^2 / (alpha^2 s^2 + sigma^2) (x_t - alpha mu) by Gaussian conditioning."""
    mu, s = 0.7, 0.4
    alpha, sigma = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    x_t = torch.linspace(-3, 3, 11, dtype=torch.float64)[:, None]
    var_t = alpha ** 2 * s ** 2 + sigma ** 2
    score = -(x_t - alpha * mu) / var_t
    posterior_mean = mu + alpha * s ** 2 / var_t * (x_t - alpha * mu)
    assert torch.allclose(to_x0(score, "score", x_t, alpha, sigma), posterior_mean)
    # and a Monte-Carlo check of E[x0 | x_t] near one x_t value
    g = torch.Generator().manual_seed(0)
    x0 = mu + s * torch.randn(2_000_000, generator=g, dtype=torch.float64)
    xt = alpha * x0 + sigma * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    near = (xt - 1.0).abs() < 0.01
    cond_std = (s ** 2 - alpha ** 2 * s ** 4 / var_t).sqrt()
    want = mu + alpha * s ** 2 / var_t * (1.0 - alpha * mu)
    assert abs(x0[near].mean() - want) < 5 * cond_std / near.sum().sqrt() + 0.01 * alpha * s ** 2 / var_t


def test_denoiser_passes_diffusers_style_integer_times():
    seen = {}

    def model(x, t):
        seen["t"] = t
        return torch.zeros_like(x)

    d = Denoiser(model, DDPM(), "eps")
    x = torch.randn(4, 2)
    x0 = d(x, 999)
    assert seen["t"].dtype == torch.long and seen["t"].tolist() == [999] * 4
    assert torch.allclose(x0, x / DDPM().alpha(999).float())
    d(x, 10.5)
    assert seen["t"].dtype == torch.float32 and seen["t"][0].item() == 10.5
    Denoiser(model, VPSDE(), "eps")(x, 0.5)
    assert seen["t"].dtype == torch.float32
    Denoiser(model, EDM(), "x0", time_input=lambda t: t.log() / 4)(x, 2.0)
    assert torch.allclose(seen["t"], torch.full((4,), 2.0).log().double() / 4)


def test_denoiser_accepts_output_objects():
    class Out:
        def __init__(self, sample):
            self.sample = sample

    d = Denoiser(lambda x, t: Out(2 * x), EDM(), "x0")
    x = torch.randn(3, 2)
    assert torch.equal(d(x, 1.0), 2 * x)


@pytest.mark.parametrize("bad", [lambda x, t: x[:, :1], lambda x, t: x.flatten(), lambda x, t: "x"])
def test_wrong_model_output_is_named(bad):
    with pytest.raises(ScorekitError, match="model output has shape"):
        Denoiser(bad, DDPM(), "eps")(torch.randn(4, 2), 10)


def test_unknown_prediction_type():
    with pytest.raises(ScorekitError, match="unknown prediction type 'epsilon'"):
        Denoiser(lambda x, t: x, DDPM(), "epsilon")
