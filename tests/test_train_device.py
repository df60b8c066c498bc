"""The trainer's GPU settings, exercised on a CPU: torch.compile, the deferred host reads of the
loss and gradient norm, mixed precision ``auto``, where the data live, channels-last layout and
deterministic kernels. A CPU run with the defaults stays bit-identical to what it was."""
import json
import os
import sys

import pytest
import torch

from scorekit import ScorekitError
from scorekit.cli import main
from scorekit.train import TrainConfig, list_checkpoints, load_checkpoint, read_metrics, train
from scorekit.train import trainer as trainer_module
from scorekit.train.config import resolve_compile, resolve_mixed_precision, settings_changed

sys.path.insert(0, os.path.dirname(__file__))
from test_train import (poison_loss, small_2d, spy_on_the_trained_network, strip_clock,  # noqa: E402
                        tensors_of)


def images(**overrides) -> TrainConfig:
    """A tiny U-Net on 8x8 digits: four-dimensional batches for the channels-last layout."""
    base = dict(data="digits", data_options={"stop": 64}, model="tiny",
                model_options={"base_channels": 8, "groups": 4}, process_options={"num_steps": 20},
                steps=4, batch_size=8, warmup_steps=1, log_every=1, checkpoint_every=2,
                keep_checkpoints=None, sample_num=4, sample_steps=2, seed=5)
    base.update(overrides)
    return TrainConfig(**base)


def losses_of(run):
    return [r["loss"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))]


def same_checkpoints(a, b, steps):
    for step in steps:
        ta = tensors_of(os.path.join(a, "checkpoints", f"step-{step:07d}"))
        tb = tensors_of(os.path.join(b, "checkpoints", f"step-{step:07d}"))
        for name in ta:
            assert ta[name].keys() == tb[name].keys()
            assert all(torch.equal(ta[name][k], tb[name][k]) for k in ta[name]), (step, name)


def compile_works() -> str | None:
    """``None`` if torch.compile (inductor) runs here, else the reason it does not."""
    try:
        f = torch.compile(lambda x: torch.sin(x) * 2)
        f(torch.ones(3))
        return None
    except Exception as err:    # no C compiler, an unsupported platform, ...
        return f"torch.compile does not work on this machine ({type(err).__name__}: {err})"


# --- torch.compile ---------------------------------------------------------------------------------

def test_compiled_training_matches_eager_and_saves_plain_checkpoints(tmp_path):
    """compile='yes' on a CPU (inductor): the run trains, logs the compilation time, writes
    checkpoints that load_checkpoint reads with the network's own tensor names, and its losses
    follow the eager run's. Tolerance: the compiled kernels may fuse and reorder the float32 sums
    of the forward and backward passes, which moves results by a few float32 rounding steps
    (relative 1e-7 each); over 6 AdamW steps of a small MLP these stay far below 1e-4 relative
    (measured: the logged losses agreed to every printed digit, gradient norms to 1e-7)."""
    reason = compile_works()
    if reason:
        pytest.skip(reason)
    lines = []
    eager, compiled = str(tmp_path / "eager"), str(tmp_path / "compiled")
    train(small_2d(compile="no"), eager, progress=False)
    train(small_2d(compile="yes"), compiled, progress=False, log=lines.append)
    assert any(line.startswith("torch.compile: the first step took") for line in lines), lines
    assert losses_of(compiled) == pytest.approx(losses_of(eager), rel=1e-4)
    ckpt = load_checkpoint(compiled)
    names = set(ckpt.net.state_dict())
    assert not [n for n in names if "_orig_mod" in n]
    assert names == set(load_checkpoint(eager).net.state_dict())
    for k, v in ckpt.net.state_dict().items():
        torch.testing.assert_close(v, load_checkpoint(eager).net.state_dict()[k], rtol=1e-3, atol=1e-5)
    saved = json.load(open(os.path.join(compiled, "config.json")))
    assert saved["train"]["compile"] == "yes"


def test_compile_auto_means_cuda_only_and_the_machine_settings_may_change_on_resume():
    assert resolve_compile("auto", "cpu") is False and resolve_compile("auto", "cuda") is True
    assert resolve_compile("yes", "cpu") is True and resolve_compile("no", "cuda") is False
    assert settings_changed(small_2d(steps=2), small_2d(steps=4, compile="no", channels_last=True,
                                                         deterministic=True)) == {}
    with pytest.raises(ScorekitError, match="unknown compile 'fast'"):
        small_2d(compile="fast").validate()
    with pytest.raises(ScorekitError, match="channels_last must be True or False"):
        small_2d(channels_last="yes").validate()


# --- no host synchronisation per step ----------------------------------------------------------------

def test_deferred_host_reads_give_the_same_metrics_and_checkpoints(tmp_path, monkeypatch):
    """``_sync_each_step`` False is the GPU's way on a CPU: the loss, gradient norm and metrics stay
    tensors until a log step, a checkpoint or a sample grid. Read per step (a CPU run) or once per
    logging interval (a GPU run), the logged means are the
    same floats: the float64 tensor sums round as Python's float sums did. A checkpoint inside a
    logging interval (3 and 6 with log_every=4) keeps the interval's partial sums either way."""
    cfg = small_2d(steps=8, log_every=4, checkpoint_every=3, objective="classifier", model="auto",
                   model_options={})
    each = str(tmp_path / "each")
    train(cfg, each, progress=False)
    monkeypatch.setattr(trainer_module, "_sync_each_step", lambda device: False)
    later = str(tmp_path / "later")
    train(cfg, later, progress=False, stop_at_step=3)
    train(cfg, later, progress=False, resume=True)
    rows = read_metrics(os.path.join(each, "metrics.jsonl"))
    assert [r["step"] for r in rows] == [4, 8] and "accuracy" in rows[0]
    assert strip_clock(rows) == strip_clock(read_metrics(os.path.join(later, "metrics.jsonl")))
    same_checkpoints(each, later, [3, 6, 8])
    for step in (3, 6):
        info = [json.load(open(os.path.join(run, "checkpoints", f"step-{step:07d}", "trainer.json")))
                for run in (each, later)]
        assert info[0]["metrics_interval"] == info[1]["metrics_interval"]


@pytest.mark.parametrize("mode", ["each step", "deferred"])
def test_divergence_is_reported_alike_and_never_saved(tmp_path, monkeypatch, mode):
    """A NaN loss at step 5 stops the run with the same message whether it is seen at once (CPU)
    or at the next log step or checkpoint (GPU, here step 6): checkpoints 2 and 4 only."""
    if mode == "deferred":
        monkeypatch.setattr(trainer_module, "_sync_each_step", lambda device: False)
    poison_loss(monkeypatch, 5)
    run = str(tmp_path / "run")
    with pytest.raises(ScorekitError) as err:
        train(small_2d(steps=8, log_every=3, checkpoint_every=2), run, progress=False)
    good = os.path.join(run, "checkpoints", "step-0000004")
    assert str(err.value).startswith("loss became NaN at step 5 (learning rate 0.001); the last good "
                                     f"checkpoint is at {good}.")
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]
    assert [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))] == [3]


def test_a_diverging_gradient_norm_names_the_same_step_when_deferred(tmp_path, monkeypatch):
    """Diverging at step 2, seen there (CPU) or at the checkpoint of step 3 (GPU): one message."""
    cfg = small_2d(lr=1e12, warmup_steps=0, grad_clip=None, prediction="x0", log_every=5, checkpoint_every=3)
    messages = []
    for sync in (True, False):
        monkeypatch.setattr(trainer_module, "_sync_each_step", lambda device, sync=sync: sync)
        run = str(tmp_path / f"sync{sync}")
        with pytest.raises(ScorekitError) as err:
            train(cfg, run, progress=False)
        messages.append(str(err.value))
        assert list_checkpoints(run) == []
    assert messages[0] == messages[1] and "at step 2 " in messages[0], messages


# --- mixed precision auto ----------------------------------------------------------------------------

def test_mixed_precision_auto_is_recorded_resolved_and_kept_on_resume(tmp_path, monkeypatch):
    run = str(tmp_path / "run")
    assert TrainConfig().mixed_precision == "auto"
    train(small_2d(steps=2), run, progress=False)
    assert json.load(open(os.path.join(run, "config.json")))["train"]["mixed_precision"] == "no"   # CPU
    train(small_2d(steps=3), run, progress=False, resume=True)          # auto: the run's own value
    with pytest.raises(ScorekitError, match=r"mixed_precision 'no' -> 'bf16'"):
        train(small_2d(steps=4, mixed_precision="bf16"), run, progress=False, resume=True)
    # a run started on a GPU records bf16; auto keeps it wherever the run continues
    saved = small_2d(mixed_precision="bf16")
    assert settings_changed(saved, small_2d(mixed_precision="auto")) == {}
    assert settings_changed(saved, small_2d(mixed_precision="no")) == {"mixed_precision": ("bf16", "no")}
    assert resolve_mixed_precision("auto", "cpu") == "no"
    # a configuration saved before "auto" existed compares equal to today's default (benchmark caches)
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in ("compile", "channels_last", "deterministic")}
    assert TrainConfig.from_dict({**old, "mixed_precision": "no"}).as_recorded() == TrainConfig().as_recorded()
    assert TrainConfig().matches_recorded({**old, "mixed_precision": "no"})
    assert not TrainConfig().matches_recorded({**old, "mixed_precision": "no", "lr": 0.5})
    assert not TrainConfig(lr=0.5).matches_recorded({**old, "mixed_precision": "no"})
    assert not TrainConfig().matches_recorded(None)
    assert resolve_mixed_precision("fp16", "cpu") == "fp16"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_mixed_precision("auto", "cuda:0") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_mixed_precision("auto", "cuda:0") == "no"


def test_bf16_on_a_cpu_computes_the_network_in_bfloat16_and_keeps_float32_weights(tmp_path, monkeypatch):
    """mixed_precision="bf16" runs the loss under torch.autocast on the CPU too: every Linear layer
    of the trained network returns bfloat16 (autocast's rule for linear layers), while with "no" it
    returns float32; the weights and their gradients stay float32 in both (autocast casts copies
    for the computation). The bf16 run therefore trains differently from the float32 one: with the
    same seed, other losses from step 2 on (at step 1 the zero-initialised output layer makes the
    network output exactly 0 in either precision) and other weights (bf16 keeps 8 significant
    bits; a deterministic CPU run repeated in the same precision differs by exactly 0)."""
    seen = {}

    def watch(net, optimizer):
        layers = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
        assert layers
        for layer in layers:
            layer.register_forward_hook(lambda m, args, out: seen[mode].add(out.dtype))

        def before_step(opt, args, kwargs):
            seen[mode].update(f"param {p.dtype}, grad {p.grad.dtype}" for p in net.parameters())

        optimizer.register_step_pre_hook(before_step)

    spy_on_the_trained_network(monkeypatch, watch)
    runs = {}
    for mode in ("no", "bf16"):
        seen[mode] = set()
        run = str(tmp_path / mode)
        train(small_2d(steps=3, mixed_precision=mode, checkpoint_every=3), run, progress=False)
        runs[mode] = (tensors_of(os.path.join(run, "checkpoints", "step-0000003")), losses_of(run))
    assert seen["no"] == {torch.float32, "param torch.float32, grad torch.float32"}
    assert seen["bf16"] == {torch.bfloat16, "param torch.float32, grad torch.float32"}
    (full, full_losses), (half, half_losses) = runs["no"], runs["bf16"]
    assert all(a != b for a, b in zip(full_losses[1:], half_losses[1:]))   # (step 1: both output 0)
    assert all(half["model"][k].dtype == torch.float32 for k in half["model"])
    assert any(not torch.equal(full["model"][k], half["model"][k]) for k in full["model"])


# --- data placement ----------------------------------------------------------------------------------

def test_data_stay_the_datasets_own_tensors_on_a_cpu():
    from scorekit.data import load_dataset

    data = load_dataset("digits", stop=16, progress=False)
    x, y, placement = trainer_module.place_data(data, torch.device("cpu"))
    assert placement == "host" and x is data.x and y is data.y


# --- channels-last and deterministic kernels ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:DDPM's smallest noise level")   # a few-step chain, on purpose
def test_channels_last_trains_the_same_images_and_resumes_exactly(tmp_path):
    """NHWC weights and batches: the same maths with other summation orders in the convolutions,
    so the losses agree to float32 rounding grown over 4 AdamW steps (rel 1e-4); the checkpoints
    are ordinary ones, and a stopped channels-last run resumes bit for bit."""
    plain, nhwc, stopped = str(tmp_path / "plain"), str(tmp_path / "nhwc"), str(tmp_path / "stopped")
    train(images(), plain, progress=False)
    train(images(channels_last=True), nhwc, progress=False)
    assert losses_of(nhwc) == pytest.approx(losses_of(plain), rel=1e-4)
    assert load_checkpoint(nhwc).net.state_dict().keys() == load_checkpoint(plain).net.state_dict().keys()
    train(images(channels_last=True), stopped, progress=False, stop_at_step=2)
    train(images(channels_last=True), stopped, progress=False, resume=True)
    same_checkpoints(nhwc, stopped, [4])
    assert strip_clock(read_metrics(os.path.join(nhwc, "metrics.jsonl"))) == \
        strip_clock(read_metrics(os.path.join(stopped, "metrics.jsonl")))


@pytest.mark.filterwarnings("ignore:DDPM's smallest noise level")   # a few-step chain, on purpose
def test_deterministic_kernels_run_resume_bit_for_bit_and_are_restored(tmp_path):
    before = torch.are_deterministic_algorithms_enabled()
    env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    train(images(deterministic=True), straight, progress=False)
    train(images(deterministic=True), stopped, progress=False, stop_at_step=3)
    train(images(deterministic=True), stopped, progress=False, resume=True)
    same_checkpoints(straight, stopped, [4])
    assert strip_clock(read_metrics(os.path.join(straight, "metrics.jsonl"))) == \
        strip_clock(read_metrics(os.path.join(stopped, "metrics.jsonl")))
    assert torch.are_deterministic_algorithms_enabled() == before
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") == env
    # and the same bits as without: a CPU run is deterministic either way
    plain = str(tmp_path / "plain")
    train(images(), plain, progress=False)
    same_checkpoints(straight, plain, [2, 4])


# --- the command line ------------------------------------------------------------------------------------

def test_cli_flags_set_the_fields(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["train", "--data", "moons", "--data-option", "n=128", "--model-option", "hidden=16",
            "--model-option", "depth=1", "--batch-size", "16", "--steps", "2", "--sample-num", "8",
            "--sample-steps", "2", "--no-progress", "--compile", "no", "--channels-last", "--deterministic",
            "--out", run]
    assert main([str(a) for a in argv]) == 0, capsys.readouterr().err
    saved = json.load(open(run / "config.json"))["train"]
    assert (saved["compile"], saved["channels_last"], saved["deterministic"]) == ("no", True, True)
    assert saved["mixed_precision"] == "no"
    # resumable: a resumed run may turn them off
    assert main(["train", "--out", str(run), "--resume", "--steps", "3", "--no-channels-last",
                 "--no-deterministic", "--compile", "auto", "--no-progress"]) == 0, capsys.readouterr().err
    saved = json.load(open(run / "config.json"))["train"]
    assert (saved["compile"], saved["channels_last"], saved["deterministic"]) == ("auto", False, False)
    _, err = capsys.readouterr()
    assert "Traceback" not in err



# --- no value read back in a training step ----------------------------------------------------------------
# On the "meta" device tensors have shapes but no values: reading one (bool(), int(), .item(),
# .tolist(), a copy to the CPU) raises. A step's arithmetic that runs there therefore never makes
# the host wait for the device on a GPU either. The other wait, a blocking copy from the host to
# the device, is recorded by device_probe.blocking_host_copies.

META_CASES = {
    "v, simple, labels": dict(process="ddpm", prediction="v", weighting="simple", classes=10),
    "eps, elbo, importance": dict(process="ddpm", prediction="eps", weighting="elbo", importance=True),
    "eps, min_snr, VP": dict(process="vp", prediction="eps", weighting="min_snr"),
    "x0, edm, EDM lognormal": dict(process="edm", prediction="x0", weighting="edm", lognormal=True),
    "hybrid, learned variance": dict(process="ddpm", prediction="eps", weighting="hybrid", learned=True),
    "task condition image": dict(process="ddpm", prediction="v", weighting="simple", cond=2),
}


class _DrawnOnDevice:
    """A timestep sampler whose draws are on the device, as the trainer's are: it draws with a
    generator on the training device, which meta has not. The first step's draws are made on the
    CPU and moved there without blocking; later steps reuse them, and an importance sampler still
    computes its probabilities (on the device) at every draw."""

    def __init__(self, inner, device):
        self.inner, self.device, self.drawn = inner, device, None

    def sample(self, n, generator):
        if self.drawn is None:
            t, w = self.inner.sample(n, generator)
            self.drawn = (t.to(self.device, non_blocking=True), w.to(self.device, non_blocking=True))
        elif hasattr(self.inner, "probabilities"):
            assert self.inner.probabilities().device == self.device
        return self.drawn

    def update(self, t, losses):
        self.inner.update(t, losses)


@pytest.mark.parametrize("case", list(META_CASES))
def test_a_training_step_reads_no_value_from_the_device(case):
    """Two steps (loss, backward, clipping, EMA, importance update): neither reads a value, and
    the second copies nothing from the host without ``non_blocking`` (the first moves the DDPM
    tables and the importance history to the device, once)."""
    from device_probe import blocking_host_copies

    from scorekit.losses import ImportanceTimesteps, LogNormalTimesteps, UniformTimesteps, diffusion_loss
    from scorekit.models import build_model, preset
    from scorekit.train.config import build_process
    from scorekit.train.ema import EMA

    c = META_CASES[case]
    process = build_process(c["process"], {"num_steps": 20} if c["process"] == "ddpm" else {})
    inner = ImportanceTimesteps(process, history=2) if c.get("importance") else \
        LogNormalTimesteps(process) if c.get("lognormal") else UniformTimesteps(process)
    sampler = _DrawnOnDevice(inner, torch.device("meta"))
    with torch.device("meta"):
        net = build_model(preset("tiny", in_channels=1, out_channels=2 if c.get("learned") else 1, image_size=8,
                                 num_classes=c.get("classes"), cond_channels=c.get("cond", 0)))
    ema = EMA(net, 0.999)
    x0 = torch.empty(6, 1, 8, 8, device="meta")
    y = torch.empty(6, dtype=torch.long, device="meta") if c.get("classes") else None
    cond = torch.empty(6, c["cond"], 8, 8, device="meta") if c.get("cond") else None

    def call(x, t, labels):
        return net(x, t, labels) if cond is None else net(x, t, labels, cond=cond)

    def step():
        out = diffusion_loss(call, process, x0, prediction_type=c["prediction"], weighting=c["weighting"],
                             generator=torch.Generator().manual_seed(0), y=y, timestep_sampler=sampler)
        assert out.loss.device.type == "meta" and out.loss.shape == ()
        out.loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        assert grad_norm.device.type == "meta"
        ema.update(net)
        if isinstance(inner, ImportanceTimesteps):
            sampler.update(out.t, out.per_sample.float())

    step()
    with blocking_host_copies() as copies:
        step()
    assert copies == []


def test_a_classifier_training_step_reads_no_value_from_the_device():
    """The noise-aware classifier's objective (cross-entropy on noisy images, accuracy metric)."""
    from scorekit.data import load_dataset
    from scorekit.models import build_model, preset
    from scorekit.processes import DDPM
    from scorekit.train.objectives import OBJECTIVES, Batch

    from device_probe import blocking_host_copies

    from scorekit.losses import UniformTimesteps

    config = TrainConfig(data="digits", objective="classifier", model="classifier-tiny").validate()
    with torch.device("meta"):
        net = build_model(preset("classifier-tiny", image_size=8))
    process = DDPM(num_steps=20)
    objective = OBJECTIVES["classifier"](config, process=process, dataset=load_dataset("digits", stop=8),
                                         net_config=net.config(),
                                         timestep_sampler=_DrawnOnDevice(UniformTimesteps(process), torch.device("meta")))
    batch = Batch(torch.empty(5, 1, 8, 8, device="meta"), torch.empty(5, dtype=torch.long, device="meta"))

    def step():
        out = objective.loss(net, batch, torch.Generator().manual_seed(0))
        out.loss.backward()
        assert out.loss.device.type == "meta" and out.metrics["accuracy"].device.type == "meta"

    step()
    with blocking_host_copies() as copies:
        step()
    assert copies == []


def test_a_batch_gathered_on_the_device_is_prepared_without_reading_it():
    """Data on the GPU: flips and label dropout are drawn on the CPU and applied on the device."""
    from scorekit.data import load_dataset
    from scorekit.processes import DDPM
    from scorekit.train.objectives import OBJECTIVES, Batch

    data = load_dataset("digits", stop=32, flip=True)
    config = TrainConfig(data="digits", label_dropout=0.2, model="tiny").validate()
    objective = OBJECTIVES["diffusion"](config, process=DDPM(num_steps=20), dataset=data,
                                        net_config={"kind": "unet", "num_classes": 10}, timestep_sampler=None)
    from device_probe import blocking_host_copies

    g = torch.Generator().manual_seed(0)
    with blocking_host_copies() as copies:
        x = data.augment(torch.empty(8, 1, 8, 8, device="meta"), g)
        batch = objective.attach_condition(objective.prepare(Batch(x, torch.empty(8, dtype=torch.long, device="meta")),
                                                             g), g)
    assert batch.x.device.type == batch.y.device.type == "meta" and batch.cond is None
    assert copies == []


def test_checks_of_values_still_run_on_the_cpu():
    """What the device path leaves out is still refused where reading costs nothing."""
    from scorekit.losses import diffusion_loss
    from scorekit.models.layers import label_vector
    from scorekit.processes import DDPM

    x0 = torch.zeros(3, 2)
    x0[1, 0] = float("nan")
    with pytest.raises(ScorekitError, match="NaN or infinite"):
        diffusion_loss(lambda x, t, y: x, DDPM(num_steps=10), x0, generator=torch.Generator())
    with pytest.raises(ScorekitError, match="label 12 in y is outside 0..10"):
        label_vector(torch.tensor([0, 12]), 2, 10, "cpu")
    assert label_vector(torch.empty(2, dtype=torch.long, device="meta"), 2, 10, "meta").device.type == "meta"
