"""``torch.compile`` pays off only if the network is traced once, as one graph: a graph break splits
it into pieces with Python between them (and a read of a value back to the host), and a guard
that fails at every call (a time passed as a changing Python number, a tensor whose dtype or shape
changes from step to step) recompiles the network at every step, which on a GPU costs seconds to
minutes each time. These tests count what dynamo does, on the CPU, with its counting backend
(``CompileCounter``: one count per graph compiled, no kernels generated):

* every U-Net variant (labels, a condition image, learned variance, attention, the noise-aware
  classifier) traces as one graph, ``fullgraph=True``;
* every fixed-step sampler, on a DDPM schedule and on other processes, compiles the network
  once for a whole run, and classifier-free guidance compiles it once too;
* the training loop compiles the network it trains once, across steps, checkpoints and sample
  grids, for the training set-ups that call the network differently.
"""
import os
import sys

import pytest
import torch
import torch._dynamo as dynamo
from torch._dynamo.testing import CompileCounter

import scorekit
from scorekit import EDM, VPSDE, SimpleVE
from scorekit.models import build_model, preset
from scorekit.samplers import SAMPLERS
from scorekit.train import TrainConfig, train

sys.path.insert(0, os.path.dirname(__file__))
from test_models import perturbed   # noqa: E402

BETAS = torch.linspace(1e-4, 0.02, 1000)
FIXED_STEP = sorted(s for s in SAMPLERS if s != "ode_adaptive")     # ode_adaptive runs SciPy's solver


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    dynamo.reset()
    yield
    dynamo.reset()


def _tiny_unet(**overrides):
    cfg = preset("tiny", in_channels=1)
    cfg.update(base_channels=8, groups=4, **overrides)
    return build_model(cfg).eval()


def _counted(net):
    counter = CompileCounter()
    return torch.compile(net, backend=counter), counter


@pytest.mark.parametrize("variant", ["plain", "labels", "cond", "learned_variance", "classifier"])
def test_every_unet_variant_is_one_graph(variant):
    """``fullgraph=True`` raises at the first graph break; the count says it is one graph. The
    compiled network computes what the network does: its outputs, at the first times and at
    others, equal the eager ones. The weights are perturbed first (``perturbed``): an untrained
    U-Net's zero-initialised output layer makes every output exactly 0, which any compiled graph
    would match; perturbed, the outputs are non-zero and depend on the time, the label and the
    condition image, which is checked. Tolerance: ``CompileCounter`` runs the traced graph
    eagerly, the same operations as the network, so float32's default ``assert_close``
    tolerances (1.3e-6 relative, 1e-5 absolute) are generous; the perturbed outputs move by
    more than 1e-2 (asserted) when the time, label or condition changes."""
    gen = torch.Generator().manual_seed(0)
    x, t = torch.randn(3, 1, 8, 8, generator=gen), torch.randint(0, 1000, (3,), generator=gen)
    t2 = torch.randint(0, 1000, (3,), generator=gen)
    kwargs, other = {}, {}
    if variant == "classifier":
        net = build_model(preset("classifier-tiny", in_channels=1)).eval()
    elif variant == "labels":
        net = _tiny_unet(num_classes=10)
        kwargs["y"] = torch.tensor([0, 9, 10])                 # 10: the null label
        other["y"] = torch.tensor([10, 3, 4])
    elif variant == "cond":
        net = _tiny_unet(cond_channels=1)
        kwargs["cond"] = torch.randn(3, 1, 8, 8, generator=gen)
        other["cond"] = torch.randn(3, 1, 8, 8, generator=gen)
    elif variant == "learned_variance":
        net = _tiny_unet(learn_variance=True)
    else:
        net = _tiny_unet()
    perturbed(net)
    counter = CompileCounter()
    compiled = torch.compile(net, backend=counter, fullgraph=True)
    with torch.no_grad():
        expected, expected_t2 = net(x, t, **kwargs), net(x, t2, **kwargs)
        out = compiled(x, t, **kwargs)
        out_t2 = compiled(x, t2, **kwargs)                          # other times: no new graph
        assert expected.abs().min() > 0
        assert (expected - expected_t2).abs().max() > 1e-2
        if other:
            expected_other = net(x, t, **other)
            assert (expected - expected_other).abs().amax(dim=tuple(range(1, expected.ndim))).min() > 1e-2
            torch.testing.assert_close(compiled(x, t, **other), expected_other)
    assert counter.frame_count == 1
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(out_t2, expected_t2)


def _mlp():
    return build_model(dict(kind="mlp", dim=2, hidden=16, depth=2, time_embedding="sinusoidal")).eval()


@pytest.mark.parametrize("sampler", FIXED_STEP)
def test_a_sampler_run_compiles_the_network_once_on_a_ddpm_schedule(sampler):
    """Integer DDPM steps at every evaluation, one dtype and one shape: one compilation for the
    whole run. ``edm`` alone evaluates a discrete-time network between its integer steps, at the
    raised noise levels of its churn, with a float time, which compiles once more (the documented
    "new time dtype")."""
    compiled, counter = _counted(_mlp())
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        scorekit.sample(compiled, torch.randn(4, 2, generator=generator), betas=BETAS, sampler=sampler,
                        num_steps=6, generator=generator)
    assert counter.frame_count == (2 if sampler == "edm" else 1)


OTHER_PROCESSES = [VPSDE(), EDM(), SimpleVE()]


@pytest.mark.parametrize("sampler, process", [
    (s, p) for p in OTHER_PROCESSES for s in FIXED_STEP
    if s != "ddpm" and not (s == "reverse_diffusion" and isinstance(p, EDM))],      # these need a DDPM schedule
    ids=lambda v: v if isinstance(v, str) else type(v).__name__)
def test_a_sampler_run_compiles_the_network_once_on_other_processes(sampler, process):
    """The same with continuous times in ``(0, 1]`` (VP; VE and sub-VP pass times alike), with
    EDM's times (the noise level) and on the discrete ``simple_ve`` (where ``edm`` compiles twice,
    as on DDPM)."""
    compiled, counter = _counted(_mlp())
    generator = torch.Generator().manual_seed(0)
    x_T = process.prior_sample((4, 2), generator=generator)
    with torch.no_grad():
        scorekit.sample(compiled, x_T, process=process, sampler=sampler, num_steps=6, generator=generator)
    assert counter.frame_count == (2 if sampler == "edm" and process.discrete else 1)


@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_classifier_free_guidance_compiles_the_network_once(sampler):
    """Guidance evaluates the conditional and the unconditional model in one call of twice the
    batch, the same call at every step."""
    compiled, counter = _counted(_tiny_unet(num_classes=10))
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        scorekit.sample(compiled, torch.randn(2, 1, 8, 8, generator=generator), betas=BETAS, sampler=sampler,
                        num_steps=5, generator=generator, condition=torch.tensor([3, 7]), guidance_scale=2.0)
    assert counter.frame_count == 1


TRAINING_SETUPS = {
    "labels, bf16, channels-last": dict(label_dropout=0.1, mixed_precision="bf16", channels_last=True),
    "elbo, importance sampling": dict(weighting="elbo", timesteps="importance"),
    "learned variance, hybrid loss": dict(variance="learned", weighting="hybrid"),
    "edm, accumulated gradients": dict(process="edm", grad_accum=2),
    "task sr2": dict(task="sr2"),
    "noise-aware classifier": dict(objective="classifier"),
}


@pytest.mark.parametrize("setup", list(TRAINING_SETUPS))
def test_training_compiles_the_network_once(setup, tmp_path, monkeypatch):
    """``compile="yes"``: one compilation across 6 steps, a checkpoint and a sample grid in
    between (they use the EMA copy, which is not compiled, and must not change what the
    compiled network is called with)."""
    counters = []
    real_compile = torch.compile

    def counted_compile(module, **kwargs):
        counters.append(CompileCounter())
        return real_compile(module, backend=counters[-1])

    monkeypatch.setattr(torch, "compile", counted_compile)
    model_options = {"base_channels": 8, "groups": 4}
    grid = {} if setup == "noise-aware classifier" else dict(sample_every=3, sample_num=4, sample_steps=2)
    config = TrainConfig(steps=6, batch_size=8, compile="yes", log_every=2, checkpoint_every=3,
                         model_options=model_options, **grid, **TRAINING_SETUPS[setup])
    train(config, tmp_path / "run", progress=False, log=lambda *a: None)
    assert [c.frame_count for c in counters] == [1]
