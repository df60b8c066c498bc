"""Sampling fast on a GPU, tested on the CPU: the deferred NaN/Inf check (no host synchronisation
per step), ``compile=`` (torch.compile once per network) and ``precision="bf16"`` (the network
under bfloat16 autocast, the sampler in float32), on exact Gaussian mixtures."""
import os
import sys

import pytest
import torch

import scorekit
from scorekit import DDPM, VPSDE, Denoiser, ScorekitError
from scorekit.acceleration import Autocast, compiled, prepare_network
from scorekit.nfe import count_network_calls
from scorekit.samplers import SAMPLERS
from scorekit.samplers._common import FiniteStates
from scorekit.toy import eight_gaussians, image_mixture

sys.path.insert(0, os.path.dirname(__file__))
from device_probe import blocking_host_copies   # noqa: E402

BETAS = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
MIX = eight_gaussians()
U = 2.0 ** -8                        # bfloat16's unit roundoff (8 significant bits)


def _nan_after(calls: int, value: float = float("nan")):
    seen = []

    def model(x, t):
        seen.append(1)
        return torch.full_like(x, value) if len(seen) > calls else torch.zeros_like(x)

    return model


def _zeros(x, t):
    return torch.zeros_like(x)


@pytest.fixture
def deferred(monkeypatch):
    """Checks deferred to the end of the sampler, as on a GPU."""
    monkeypatch.setattr(scorekit.sampling, "defer_finite_checks", lambda x_T, sampler: True)


def _error(fn) -> str:
    with pytest.raises(ScorekitError) as info:
        fn()
    return str(info.value)


@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "ode_adaptive"])
def test_a_deferred_check_raises_the_error_of_the_immediate_one(sampler, monkeypatch):
    """Every sampler: a model returning NaN from evaluation 3 on gives the same message whether
    the check reads each value at once (the CPU) or once at the end (a GPU)."""
    def run():
        return scorekit.sample(_nan_after(3), torch.zeros(4, 2), process=VPSDE(), sampler=sampler,
                               num_steps=6, generator=torch.Generator().manual_seed(0))

    immediate = _error(run)
    monkeypatch.setattr(scorekit.sampling, "defer_finite_checks", lambda x_T, s: True)
    assert _error(run) == immediate
    assert "the model output holds NaN at network evaluation 3 (t = " in immediate


def test_a_deferred_check_names_a_diverging_step_and_the_final_state(deferred):
    def poison(i, t, x, x0):
        if i == 1:
            x.fill_(float("nan"))

    message = _error(lambda: scorekit.sample(_zeros, torch.zeros(4, 2), betas=BETAS, num_steps=10,
                                             callback=poison))
    assert ("the state x_t became NaN in the step after network evaluation 1 (t = 89), before "
            "evaluation 2 (t = 79), although every model output so far was finite") in message
    d = FiniteStates(_zeros, "ddim", deferred=True)
    d(torch.zeros(2, 2), 0.5)
    d.check_state(torch.tensor([[0.0, float("inf")], [0.0, 0.0]]))          # queued, not raised
    with pytest.raises(ScorekitError, match=r"became Inf in the step after network evaluation 0 "
                                            r"\(t = 0.5\) \(the final state\)"):
        d.finish()
    d.finish()                                                              # nothing left queued


def test_a_deferred_check_of_finite_values_changes_nothing(monkeypatch):
    """Large finite values (whose float32 sum overflows) pass; the samples are those of the
    immediate check, bit for bit; the learned log-variance is checked as well."""
    big = torch.full((4, 2), 3e38)
    d = FiniteStates(lambda x, t: x, "ddim", deferred=True)
    assert d(big, 0.5) is big
    d.finish(big)
    process = DDPM(betas=BETAS)
    x_T = process.prior_sample((16, 2), generator=torch.Generator().manual_seed(0))

    def run():
        return scorekit.sample(MIX.x0_model(process), x_T, process=process, prediction_type="x0",
                               sampler="ddpm", num_steps=20, generator=torch.Generator().manual_seed(1))

    ref = run()
    monkeypatch.setattr(scorekit.sampling, "defer_finite_checks", lambda x_T, sampler: True)
    assert torch.equal(run(), ref)

    class WithVariance:
        def x0_and_log_variance(self, x, t, s):
            return torch.zeros_like(x), torch.full_like(x, float("nan"))

    d = FiniteStates(WithVariance(), "ddpm", deferred=True)
    d.x0_and_log_variance(torch.zeros(2, 2), 5, 4)
    with pytest.raises(ScorekitError, match=r"the model log-variance holds NaN at network evaluation 0 \(t = 5\)"):
        d.finish()


def test_deferred_checks_only_off_the_cpu():
    cpu = torch.zeros(2, 2)
    assert not scorekit.sampling.defer_finite_checks(cpu, "ddim")
    meta = torch.empty(2, 2, device="meta")
    assert scorekit.sampling.defer_finite_checks(meta, "ddim")
    assert not scorekit.sampling.defer_finite_checks(meta, "ode_adaptive")   # its solver runs on the host


# --- compile -----------------------------------------------------------------------------------

class Net(torch.nn.Module):
    """A small eps-network (random weights): something for torch.compile to compile."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(torch.nn.Linear(3, 32), torch.nn.SiLU(), torch.nn.Linear(32, 2))

    def forward(self, x, t):
        return self.body(torch.cat([x, t.to(x.dtype)[:, None] / 100], dim=1))


def test_compile_compiles_once_and_batches_reuse_it():
    """``aot_eager`` traces and replays the same operations, so the samples are identical; the
    compiled network is kept on the network, so a second call and every batch reuse it."""
    net = Net()
    process = DDPM(betas=BETAS)
    x_T = process.prior_sample((10, 2), generator=torch.Generator().manual_seed(0))
    ref = scorekit.sample(net, x_T, process=process, num_steps=10)
    out = scorekit.sample(net, x_T, process=process, num_steps=10, compile="aot_eager")
    assert torch.equal(out, ref)
    made = net.__dict__["_scorekit_compiled"]["aot_eager"]
    assert compiled(net, "aot_eager") is made
    assert "_scorekit_compiled" not in dict(net.named_modules()) and set(net.state_dict()) == \
        {"body.0.weight", "body.0.bias", "body.2.weight", "body.2.bias"}
    denoiser = Denoiser(net, process)
    result = scorekit.sample_batches(denoiser, x_T, batch_size=4, process=process, num_steps=10,
                                     compile="aot_eager")
    assert torch.equal(result.x, ref) and result.calls == [10, 10, 10]
    assert len(result.batch_seconds) == 3 and result.samples_per_second > 0
    assert result.calls_per_second == pytest.approx(30 / result.seconds)
    assert denoiser.model is net                                  # the denoiser given is unchanged


class Scaled:
    """A model whose network is a bound method: every instance shares the function ``predict``."""

    def __init__(self, factor):
        self.factor = factor

    def predict(self, x, t):
        return self.factor * x


def test_compiled_bound_methods_of_two_objects_stay_apart_and_a_compiled_network_copies():
    """A bound method's ``__dict__`` is its function's, shared by every instance of the class: the
    compiled code is kept on the object, so the second object is not run through the first one's.
    A network compiled for sampling can still be deep-copied (as EMA does): the copy starts
    without the compiled code, which wraps the original."""
    import copy

    a, b = Scaled(1.0), Scaled(-5.0)
    x, t = torch.ones(2, 2), torch.zeros(2)
    assert compiled(a.predict, "aot_eager") is not compiled(b.predict, "aot_eager")
    assert torch.equal(compiled(b.predict, "aot_eager")(x, t), b.predict(x, t))
    assert compiled(a.predict, "aot_eager") is compiled(a.predict, "aot_eager")     # kept on a
    net = Net()
    process = DDPM(betas=BETAS)
    x_T = process.prior_sample((4, 2), generator=torch.Generator().manual_seed(0))
    out = scorekit.sample(net, x_T, process=process, num_steps=5, compile="aot_eager")
    twin = copy.deepcopy(net)
    assert "aot_eager" not in twin.__dict__.get("_scorekit_compiled", {})
    assert torch.equal(scorekit.sample(twin, x_T, process=process, num_steps=5), out)


def test_compile_with_inductor_matches_to_rounding():
    net = Net()
    process = DDPM(betas=BETAS)
    x_T = process.prior_sample((8, 2), generator=torch.Generator().manual_seed(0))
    ref = scorekit.sample(net, x_T, process=process, num_steps=5)
    out = scorekit.sample(net, x_T, process=process, num_steps=5, compile=True)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_bad_compile_and_precision_values_are_refused():
    with pytest.raises(ScorekitError, match="compile must be True, False or a torch.compile backend"):
        scorekit.sample(_zeros, torch.zeros(2, 2), betas=BETAS, compile="fastest")
    with pytest.raises(ScorekitError, match="precision must be one of fp32, bf16, got 'fp16'"):
        scorekit.sample(_zeros, torch.zeros(2, 2), betas=BETAS, precision="fp16")


# --- precision ---------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler,steps", [("ddim", 50), ("dpmpp_2m", 20)])
def test_bf16_changes_samples_by_what_bfloat16_rounding_allows(sampler, steps):
    r"""bf16 against fp32 on the exact mixture ``image_mixture`` computed in float32, so that
    autocast reaches its matrix products (the sums over components) and nothing else.

    Tolerance. bfloat16 keeps 8 significant bits: rounding an input of a product errs by at most
    ``u = 2^-8`` relative, and with float32 accumulation each network output (a weighted sum of
    such products) errs by at most about ``u`` relative to its size. A sampler step mixes the
    state and the output with coefficients that keep the state's scale, so ``n`` steps with no
    contraction at all add at most ``n u`` relative: the upper bound. The last step of both
    samplers into the data returns the last ``x0_pred`` itself, whose rounding error alone is of
    order ``u`` (a quarter of it on average for random rounding of a sum): so the mean relative
    change is at least ``u / 16`` if autocast reached the network at all. Measured: about
    ``0.5 u`` (BENCHMARKS.md, "Sampling in bf16"). fp32 is the default, bit for bit, and the
    state stays float32.
    """
    mix = image_mixture()
    process = DDPM()
    model = Denoiser(mix.eps_model(process, torch.float32), process, "eps")
    x_T = process.prior_sample((200, *mix.event_shape), generator=torch.Generator().manual_seed(0))
    kwargs = dict(process=process, sampler=sampler, num_steps=steps)
    default = scorekit.sample(model, x_T, **kwargs)
    assert torch.equal(scorekit.sample(model, x_T, precision="fp32", **kwargs), default)
    bf16 = scorekit.sample(model, x_T, precision="bf16", **kwargs)
    assert bf16.dtype == torch.float32
    relative = ((bf16 - default).abs().mean() / default.abs().mean()).item()
    assert U / 16 < relative < steps * U


def test_autocast_wraps_the_network_under_wrappers_and_counters():
    """prepare_network reaches the network under guidance wrappers and a learned-variance head;
    the NFE is counted as before and the denoiser given is left as it was."""
    process = DDPM(betas=BETAS)
    denoiser = Denoiser(MIX.eps_model(process, torch.float32), process)
    bf16 = prepare_network(scorekit.thresholding.clip_x0(denoiser, 3.0), precision="bf16")
    assert isinstance(bf16.inner.model, Autocast) and denoiser.model is not bf16.inner.model
    assert prepare_network(denoiser) is denoiser
    counted, counter = count_network_calls(bf16)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    assert counted(x, 50).dtype == torch.float32 and counter.calls == 1
    result = scorekit.sample_batches(denoiser, x, batch_size=3, num_steps=4, precision="bf16")
    assert result.calls == [4, 4] and result.x.dtype == torch.float32


# --- the command line ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def moons_run(tmp_path_factory):
    from cli_helpers import main_quietly

    out = tmp_path_factory.mktemp("speed") / "run"
    assert main_quietly(["train", "--data", "moons", "--data-option", "n=64", "--model-option", "hidden=16",
                         "--model-option", "depth=1", "--batch-size", "8", "--steps", "2", "--sample-every",
                         "0", "--no-progress", "--out", out]) == 0
    return str(out)


def test_cli_sample_compiles_evaluates_in_bf16_and_reports_throughput(moons_run, tmp_path, capsys, monkeypatch):
    """--compile (with the backend that replays the same operations, so the samples are the
    plain ones) and --precision bf16 (samples within bfloat16's rounding of fp32); every run
    prints samples/s and network calls/s."""
    import numpy as np

    from cli_helpers import run_main

    monkeypatch.setattr(scorekit.acceleration, "DEFAULT_BACKEND", "aot_eager")

    def run(name, *flags):
        out = tmp_path / f"{name}.png"
        code, stdout, err = run_main(capsys, ["sample", moons_run, "--steps", "5", "--num", "12", "--batch-size",
                                              "5", "--no-progress", "--out", out, *flags])
        assert code == 0, err
        return np.load(tmp_path / f"{name}.npz")["x"], stdout

    plain, out = run("plain")
    assert "throughput: " in out and " samples/s, " in out and " network calls/s (--batch-size 5, --precision fp32)" in out
    fast, out = run("compiled", "--compile")
    np.testing.assert_array_equal(fast, plain)
    assert "--compile); after the first batch, which compiled the network: " in out
    bf16, out = run("bf16", "--precision", "bf16")
    assert "--precision bf16" in out and not np.array_equal(bf16, plain)
    np.testing.assert_allclose(bf16, plain, atol=0.1)


# --- no value read back in the step loop ------------------------------------------------------------------
# On the "meta" device tensors have shapes but no values, and reading one raises: a sampler that
# runs there queues only tensor operations, so on a GPU it never makes the host wait per step. The
# other wait, a blocking copy from the host to the device, is recorded by
# device_probe.blocking_host_copies.

@pytest.mark.parametrize("sampler", [s for s in SAMPLERS if s != "ode_adaptive"])
def test_every_fixed_step_sampler_reads_no_value_from_the_device(sampler, monkeypatch):
    from scorekit.models import build_model, preset

    with torch.device("meta"):
        net = build_model(preset("tiny", in_channels=1, out_channels=1, image_size=8))
    x_T = torch.empty(3, 1, 8, 8, device="meta")
    finished = []
    # the deferred finite checks are queued at every evaluation and read once, at the end
    monkeypatch.setattr(FiniteStates, "finish", lambda self, x=None: finished.append(len(self._pending)))
    with blocking_host_copies() as copies:
        out = scorekit.sample(net, x_T, process=DDPM(), sampler=sampler, num_steps=4,
                              generator=torch.Generator().manual_seed(0))
    assert out.device.type == "meta" and out.shape == x_T.shape
    assert copies == []
    assert len(finished) == 1 and finished[0] >= 4              # one state and one output check per call


@pytest.mark.parametrize("guidance", ["cfg", "cfg rescaled, image and labels", "cfg interval"])
@pytest.mark.parametrize("sampler", ["ddim", "dpmpp_2m", "ddpm"])
def test_guided_sampling_reads_no_value_per_step(guidance, sampler, monkeypatch):
    """Classifier-free guidance on the meta device. The labels are checked once per call, when the
    denoiser is bound to them (a read of the device, left out here); nothing in the step loop
    reads. (Classifier guidance reads its labels once too, at its first evaluation.)"""
    import scorekit.conditioning as conditioning
    from scorekit.conditioning import Condition
    from scorekit.models import build_model, preset

    monkeypatch.setattr(conditioning, "check_labels_for", lambda *a, **k: None)
    monkeypatch.setattr(FiniteStates, "finish", lambda self, x=None: None)
    image = guidance.startswith("cfg rescaled")
    with torch.device("meta"):
        net = build_model(preset("tiny", in_channels=1, out_channels=1, image_size=8, num_classes=10,
                                 cond_channels=2 if image else 0))
    x_T = torch.empty(4, 1, 8, 8, device="meta")
    labels = torch.empty(4, dtype=torch.long, device="meta")
    kwargs = {"cfg": dict(guidance_scale=3.0),
              "cfg rescaled, image and labels": dict(guidance_scale=2.0, guidance_rescale=0.7),
              "cfg interval": dict(guidance_scale=2.0, guidance_interval=(100, 800))}[guidance]
    condition = Condition(labels=labels, image=torch.empty(4, 2, 8, 8, device="meta")) if image else labels
    with blocking_host_copies() as copies:
        out = scorekit.sample(net, x_T, process=DDPM(), sampler=sampler, num_steps=4, condition=condition,
                              generator=torch.Generator().manual_seed(0), **kwargs)
    assert out.device.type == "meta"
    assert copies == []


def test_labels_on_the_cpu_are_still_checked_when_a_condition_is_made():
    from scorekit.conditioning import Condition

    with pytest.raises(ScorekitError, match="label -3 is negative; labels are 0..K-1, or -1"):
        Condition(labels=torch.tensor([2, -3]))
    assert Condition(labels=torch.empty(2, dtype=torch.long, device="meta")).labels.device.type == "meta"
