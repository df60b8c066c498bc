"""The trainer: exact resumption, atomic checkpoints under SIGKILL, divergence, EMA, learning-rate
schedule, gradient accumulation, label dropout, and that training actually learns a distribution."""
import hashlib
import json
import math
import os
import select
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import scorekit
from scorekit import ScorekitError
from scorekit import losses as losses_module
from scorekit.data import load_dataset
from scorekit.metrics.distribution import (mode_weights, sliced_wasserstein, swd_noise_floor,
                                           within_mode_spread)
from scorekit.train import (EMA, TrainConfig, checkpoint_denoiser, ema_decay, learning_rate,
                            list_checkpoints, load_checkpoint, read_metrics, train)
from scorekit.train import trainer as trainer_module
from scorekit.train.checkpoint import (flatten_optimizer_state, resolve_checkpoint,
                                       unflatten_optimizer_state)
from scorekit.train.state import DataOrder, seeded_generator

WALL_CLOCK = ("seconds", "images_per_second")


def small_2d(**overrides) -> TrainConfig:
    """A few-millisecond-per-step run: a small MLP on 512 points of the two moons."""
    base = dict(data="moons", data_options={"n": 512}, model="mlp",
                model_options={"hidden": 32, "depth": 1}, steps=6, batch_size=16, lr=1e-3,
                warmup_steps=2, log_every=1, checkpoint_every=2, keep_checkpoints=None,
                sample_num=64, sample_steps=4, seed=3)
    base.update(overrides)
    return TrainConfig(**base)


def strip_clock(rows):
    return [{k: v for k, v in r.items() if k not in WALL_CLOCK} for r in rows]


def tensors_of(ckpt_dir):
    return {name: load_file(os.path.join(ckpt_dir, f"{name}.safetensors"))
            for name in ("model", "ema", "trainer")}


# --- data order ----------------------------------------------------------------------------------

def test_data_order_visits_every_sample_once_per_epoch_reshuffled_and_seeded():
    """Sampling without replacement, epoch by epoch: 12 samples drawn in batches of uneven sizes
    that straddle the epoch ends (the draws are concatenated, so batch boundaries do not matter).
    Each consecutive block of 12 indices is a permutation of 0..11 (with replacement, 12 draws
    hold all 12 values with probability 12!/12^12 = 5e-5); consecutive epochs are ordered
    differently (a fixed order, or the same permutation again, has them equal; two independent
    permutations agree with probability 1/12!); the same seed gives the same sequence, another
    seed another one."""
    n, sizes = 12, (5, 9, 3, 12, 7, 4, 8)                          # 48 indices: 4 epochs
    order = DataOrder(n, seeded_generator(3, "data"))
    drawn = torch.cat([order.next(k) for k in sizes])
    assert drawn.dtype == torch.long and drawn.numel() == 4 * n
    assert (order.epoch, order.position) == (3, n)
    epochs = drawn.view(4, n)
    for e in range(4):
        assert sorted(epochs[e].tolist()) == list(range(n)), (e, epochs[e].tolist())
    for e in range(3):
        assert not torch.equal(epochs[e], epochs[e + 1]), e
    again = DataOrder(n, seeded_generator(3, "data"))
    assert torch.equal(torch.cat([again.next(k) for k in reversed(sizes)]), drawn)
    other = DataOrder(n, seeded_generator(4, "data"))
    assert not torch.equal(other.next(4 * n), drawn)


def test_data_order_state_continues_the_same_sequence_across_epochs():
    """The saved state (epoch, position, permutation and the generator's state) put into a
    DataOrder built on a fresh generator continues exactly where the original goes on, also into
    the epochs whose permutations are drawn after the save: saved in the 2nd epoch of 10 samples,
    the next 25 indices cross two epoch ends."""
    n = 10
    order = DataOrder(n, seeded_generator(0, "data"))
    order.next(14)                                                   # epoch 1, position 4
    tensors, info = order.state()
    assert (info["epoch"], info["position"]) == (1, 4)
    resumed = DataOrder(n, seeded_generator(0, "data"))              # its generator has drawn epoch 0 only
    resumed.load(tensors, info)
    assert torch.equal(resumed.next(25), order.next(25))
    assert (resumed.epoch, resumed.position) == (order.epoch, order.position) == (3, 9)


# --- exact resumption ---------------------------------------------------------------------------

def resume_config(**overrides) -> TrainConfig:
    """Every source of randomness at once: data order, flips (flip=True), label dropout (digits
    have labels), dropout layers (global RNG), timesteps and noise, and the importance sampler's
    loss history (5 DDPM steps x history 2: it leaves uniform sampling after a few steps); plus
    gradient accumulation, warm-up and a cosine schedule."""
    base = dict(data="digits", data_options={"flip": True, "stop": 200}, model="tiny",
                model_options={"dropout": 0.1, "base_channels": 8, "groups": 4},
                process_options={"num_steps": 5}, timesteps="importance",
                timesteps_options={"history": 2}, prediction="v", steps=8, batch_size=8,
                grad_accum=2, lr=1e-3, warmup_steps=3, lr_schedule="cosine", ema_decay=0.9,
                label_dropout=0.25, log_every=1, checkpoint_every=3, keep_checkpoints=None,
                sample_num=4, sample_steps=3)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.mark.filterwarnings("ignore:DDPM's smallest noise level")   # a few-step chain, on purpose
def test_resumed_run_equals_uninterrupted_run_bit_for_bit(tmp_path):
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    rng_before = torch.get_rng_state()
    train(resume_config(), straight, progress=False)
    assert torch.equal(torch.get_rng_state(), rng_before)       # the caller's global RNG is untouched

    # run to step 5, then pretend the process died after logging step 5 but while saving its
    # checkpoint: the newest checkpoint is step 3 (checkpoint_every=3), the log has 2 lines too
    # many and a half-written one
    train(resume_config(), stopped, progress=False, stop_at_step=5)
    assert [s for s, _ in list_checkpoints(stopped)] == [3, 5]
    os.rename(os.path.join(stopped, "checkpoints", "step-0000005"),
              os.path.join(stopped, "checkpoints", ".tmp-step-0000005-1"))
    with open(os.path.join(stopped, "metrics.jsonl"), "a") as fh:
        fh.write('{"step": 6, "loss": 0.')
    assert load_checkpoint(stopped).step == 3          # `latest` names a missing folder: newest complete
    train(resume_config(), stopped, progress=False, resume=True)

    a = tensors_of(os.path.join(straight, "checkpoints", "step-0000008"))
    b = tensors_of(os.path.join(stopped, "checkpoints", "step-0000008"))
    for name in ("model", "ema", "trainer"):                # trainer: optimiser moments, RNG states,
        assert a[name].keys() == b[name].keys()            # data permutation, importance history
        different = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not different, f"{name}: {different[:5]}"
    assert a["trainer"]["timesteps.loss_counts"].min() == 2          # importance sampling is active
    assert any(k.startswith("optimizer.state.") for k in a["trainer"])
    ta = json.load(open(os.path.join(straight, "checkpoints", "step-0000008", "trainer.json")))
    tb = json.load(open(os.path.join(stopped, "checkpoints", "step-0000008", "trainer.json")))
    for key in ("step", "data", "ema", "optimizer", "lr", "metrics_interval"):
        assert ta[key] == tb[key]
    rows_a, rows_b = read_metrics(os.path.join(straight, "metrics.jsonl")), \
        read_metrics(os.path.join(stopped, "metrics.jsonl"))
    assert [r["step"] for r in rows_b] == list(range(1, 9))
    assert strip_clock(rows_a) == strip_clock(rows_b)
    assert not [n for n in os.listdir(os.path.join(stopped, "checkpoints")) if n.startswith(".")]


def test_a_run_resumed_inside_a_later_epoch_equals_an_uninterrupted_run(tmp_path):
    """24 points in batches of 8: an epoch every 3 steps. The run stops at step 4 (inside the 2nd
    epoch) and resumes to step 10, which draws the permutations of the 3rd and 4th epochs after
    the resumption; those come from the data generator, which only a restored generator state
    draws as the uninterrupted run does. The checkpoints and the logged metrics must be the same
    bit for bit (a CPU run is deterministic)."""
    cfg = small_2d(data_options={"n": 24}, batch_size=8, steps=10, checkpoint_every=100)
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    train(cfg, straight, progress=False)
    train(cfg, stopped, progress=False, stop_at_step=4)
    info = json.load(open(os.path.join(stopped, "checkpoints", "step-0000004", "trainer.json")))
    assert info["data"] == {"epoch": 1, "position": 8, "size": 24}
    train(cfg, stopped, progress=False, resume=True)
    end = os.path.join("checkpoints", "step-0000010")
    assert json.load(open(os.path.join(straight, end, "trainer.json")))["data"]["epoch"] == 3
    a, b = tensors_of(os.path.join(straight, end)), tensors_of(os.path.join(stopped, end))
    for name in ("model", "ema", "trainer"):
        assert a[name].keys() == b[name].keys()
        different = [k for k in a[name] if not torch.equal(a[name][k], b[name][k])]
        assert not different, f"{name}: {different[:5]}"
    assert strip_clock(read_metrics(os.path.join(straight, "metrics.jsonl"))) == \
        strip_clock(read_metrics(os.path.join(stopped, "metrics.jsonl")))


def test_time_limit_stops_with_a_checkpoint_and_resumes_exactly(tmp_path):
    """``max_seconds`` is checked before each step: a tiny limit allows exactly one step; the run
    saves a checkpoint there and a resumed run ends where an uninterrupted one does."""
    cfg = small_2d(steps=4)
    straight, limited = str(tmp_path / "straight"), str(tmp_path / "limited")
    train(cfg, straight, progress=False)
    first = train(cfg, limited, progress=False, max_seconds=1e-9)
    assert first.step == 1 and first.checkpoint.endswith("step-0000001")
    assert load_checkpoint(limited).step == 1
    train(cfg, limited, progress=False, resume=True)
    a = tensors_of(os.path.join(straight, "checkpoints", "step-0000004"))
    b = tensors_of(os.path.join(limited, "checkpoints", "step-0000004"))
    for name in ("model", "ema"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name])
    with pytest.raises(ScorekitError, match="max_seconds must be positive"):
        train(cfg, str(tmp_path / "bad"), progress=False, max_seconds=0)


def test_a_run_saved_before_the_scaled_betas_keeps_its_own_process(tmp_path):
    """A run of a linear DDPM of T = 100 steps saves the betas it used (beta_start / beta_end), so
    it reloads identically. One saved before the default betas were scaled by 1000 / T names only
    schedule and num_steps, and meant Ho et al.'s 1e-4 .. 0.02: loading it gives those, and so does
    resuming it (it continues its own process, whatever its options mean today)."""
    cfg = small_2d(steps=2, process_options={"schedule": "linear", "num_steps": 100})
    run = str(tmp_path / "run")
    train(cfg, run, progress=False)
    saved = json.load(open(os.path.join(run, "config.json")))["process"]
    assert saved["beta_start"] == pytest.approx(1e-3) and saved["beta_end"] == pytest.approx(0.2)
    assert torch.equal(load_checkpoint(run).process.betas, scorekit.DDPM(num_steps=100).betas)
    for path in [os.path.join(run, "config.json")] + [os.path.join(run, "checkpoints", d, "config.json")
                                                      for d in os.listdir(os.path.join(run, "checkpoints"))]:
        data = json.load(open(path))
        data["process"] = {"kind": "DDPM", "schedule": "linear", "num_steps": 100}      # as written before
        json.dump(data, open(path, "w"))
    old = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)
    torch.testing.assert_close(load_checkpoint(run).process.betas, old, rtol=1e-12, atol=0)
    train(small_2d(steps=4, process_options={"schedule": "linear", "num_steps": 100}), run, progress=False,
          resume=True)
    torch.testing.assert_close(load_checkpoint(run).process.betas, old, rtol=1e-12, atol=0)


def test_resume_refuses_changed_settings_and_fresh_runs_refuse_a_used_folder(tmp_path):
    run = str(tmp_path / "run")
    train(small_2d(steps=2), run, progress=False)
    with pytest.raises(ScorekitError, match="already holds a training run"):
        train(small_2d(steps=2), run, progress=False)
    with pytest.raises(ScorekitError, match=r"cannot resume .* prediction 'v' -> 'x0'"):
        train(small_2d(steps=4, prediction="x0"), run, progress=False, resume=True)
    result = train(None, run, progress=False, resume=True)          # nothing more to do
    assert result.step == 2
    result = train(small_2d(steps=4, lr=5e-4), run, progress=False, resume=True)   # longer, lower lr
    assert result.step == 4 and load_checkpoint(run).config["train"]["lr"] == 5e-4


# --- atomic checkpoints under SIGKILL ------------------------------------------------------------

CHILD = textwrap.dedent("""\
    import sys, time, torch
    torch.set_num_threads(1)
    from scorekit.train import TrainConfig, train
    from scorekit.train import checkpoint as io
    mode, out = sys.argv[1], sys.argv[2]
    real_save, real_latest = io.save_tensors, io.write_latest

    def save_tensors(tensors, path, metadata=None):
        if mode == "mid-file" and "step-0000004" in path and path.endswith("model.safetensors"):
            with open(path, "wb") as fh:                 # half a file, then hang until killed
                fh.write(b"\\x00" * 4096)
                fh.flush()
            print("STALLED", flush=True)
            time.sleep(300)
        return real_save(tensors, path, metadata)

    def write_latest(run_dir, name):
        if mode == "before-latest" and name == "step-0000004":
            print("STALLED", flush=True)                 # the folder is in place, `latest` is not
            time.sleep(300)
        return real_latest(run_dir, name)

    io.save_tensors, io.write_latest = save_tensors, write_latest
    train(TrainConfig(data="moons", data_options={"n": 512}, model="mlp",
                      model_options={"hidden": 32, "depth": 1}, steps=6, batch_size=16,
                      log_every=1, checkpoint_every=2, keep_checkpoints=None, sample_num=64,
                      sample_steps=4, seed=3), out, progress=False)
    """)


def wait_for_line(proc, text, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stdout], [], [], 1.0)
        if ready:
            line = proc.stdout.readline()
            if text in line:
                return True
            if not line and proc.poll() is not None:
                return False
    return False


def test_sigkill_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    mode = "mid-file"
    script = tmp_path / "child.py"
    script.write_text(CHILD)
    run = str(tmp_path / "run")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, str(script), mode, run], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert wait_for_line(proc, "STALLED", 240), proc.stderr.read() if proc.poll() is not None else ""
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    folder = os.path.join(run, "checkpoints")
    names = sorted(os.listdir(folder))
    ckpt = load_checkpoint(run)
    assert ckpt.step == 2                                # the previous checkpoint, fully usable
    assert open(os.path.join(run, "latest")).read().strip() == "checkpoints/step-0000002"
    assert any(n.startswith(".tmp-step-0000004") for n in names)         # the half-written save...
    assert [s for s, _ in list_checkpoints(run)] == [2]                 # ...is not a checkpoint
    x = torch.randn(8, 2)
    assert torch.isfinite(ckpt.ema_net(x, torch.full((8,), 500))).all()

    result = train(None, run, progress=False, resume=True)          # resumes from step 2
    assert result.step == 6
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6]
    assert not [n for n in os.listdir(folder) if n.startswith(".")]  # leftovers cleaned up
    assert [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))] == [1, 2, 3, 4, 5, 6]


class Killed(BaseException):
    """Stands in for SIGKILL inside this process (nothing after it runs, like a kill)."""


def test_death_between_renaming_a_checkpoint_and_updating_latest(tmp_path, monkeypatch):
    from scorekit.train import checkpoint as io

    real = io.write_latest

    def dies_at_step_4(run_dir, name):
        if name == "step-0000004":
            raise Killed
        return real(run_dir, name)

    monkeypatch.setattr(io, "write_latest", dies_at_step_4)
    run = str(tmp_path / "run")
    with pytest.raises(Killed):
        train(small_2d(), run, progress=False)
    monkeypatch.setattr(io, "write_latest", real)
    assert "step-0000004" in os.listdir(os.path.join(run, "checkpoints"))   # complete and in place
    assert load_checkpoint(run).step == 2                # but `latest` still names step 2
    assert train(None, run, progress=False, resume=True).step == 6          # continues from step 2
    assert [s for s, _ in list_checkpoints(run)] == [2, 4, 6]


# --- SIGINT / SIGTERM: stop after the step with a checkpoint -----------------------------------------

def test_a_signal_stops_after_the_step_with_a_checkpoint_and_resume_is_exact(tmp_path, monkeypatch):
    """SIGTERM sent to this process during step 3 (inside the loss): the step is finished, saved,
    and train() raises TrainingInterrupted in Python's terms; resuming equals a straight run."""
    from scorekit.train import TrainingInterrupted

    straight, run = str(tmp_path / "straight"), str(tmp_path / "run")
    train(small_2d(), straight, progress=False)
    real, calls = losses_module.diffusion_loss, []

    def loss_that_signals(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(losses_module, "diffusion_loss", loss_that_signals)
    handlers = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with pytest.raises(TrainingInterrupted) as info:
        train(small_2d(), run, progress=False)
    monkeypatch.setattr(losses_module, "diffusion_loss", real)
    stop = info.value
    assert isinstance(stop, KeyboardInterrupt)
    assert (stop.signum, stop.step, stop.exit_status) == (signal.SIGTERM, 3, 143)
    assert stop.checkpoint == os.path.join(run, "checkpoints", "step-0000003")
    assert "resume=True" in str(stop) and "--" not in str(stop)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == handlers
    assert [s for s, _ in list_checkpoints(run)] == [2, 3] and load_checkpoint(run).step == 3
    assert train(None, run, progress=False, resume=True).step == 6
    a = tensors_of(os.path.join(straight, "checkpoints", "step-0000006"))
    b = tensors_of(os.path.join(run, "checkpoints", "step-0000006"))
    for name in ("model", "ema", "trainer"):
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name


def test_a_signal_during_start_up_stops_before_the_first_step(tmp_path, monkeypatch):
    """SIGINT while the data load: no step is trained and no checkpoint written; resume=True
    then starts the run."""
    from scorekit import data as data_module
    from scorekit.train import TrainingInterrupted

    real = data_module.load_dataset

    def load_and_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(data_module, "load_dataset", load_and_signal)
    run = str(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as info:
        train(small_2d(steps=2), run, progress=False)
    monkeypatch.setattr(data_module, "load_dataset", real)
    assert (info.value.signum, info.value.step, info.value.checkpoint) == (signal.SIGINT, 0, None)
    assert list_checkpoints(run) == [] and read_metrics(os.path.join(run, "metrics.jsonl")) == []
    assert train(None, run, progress=False, resume=True).step == 2


def test_a_signal_while_drawing_a_sample_grid_abandons_it_and_saves_the_step(tmp_path, monkeypatch):
    import scorekit.sampling
    from scorekit.train import TrainingInterrupted

    real, evaluations = scorekit.sampling.sample, []

    def sample_and_signal(*args, callback=None, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)

        def counted(*a):
            evaluations.append(1)
            callback(*a)
        return real(*args, callback=counted, **kwargs)

    monkeypatch.setattr(scorekit.sampling, "sample", sample_and_signal)
    run = str(tmp_path / "run")
    with pytest.raises(TrainingInterrupted) as info:
        train(small_2d(sample_every=2, checkpoint_every=100), run, progress=False)
    assert (info.value.signum, info.value.step) == (signal.SIGINT, 2)
    assert evaluations == [1]                            # given up after the first of 4 steps
    assert not os.path.exists(os.path.join(run, "samples", "step-0000002.png"))
    assert load_checkpoint(run).step == 2


# --- divergence ------------------------------------------------------------------------------------

def poison_loss(monkeypatch, n: int) -> None:
    """Make the ``n``-th call of the diffusion loss (step ``n`` without accumulation) return NaN."""
    real = losses_module.diffusion_loss
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        out = real(*args, **kwargs)
        calls["n"] += 1
        if calls["n"] == n:
            return out._replace(loss=out.loss * float("nan"))
        return out

    monkeypatch.setattr(losses_module, "diffusion_loss", poisoned)


def test_nan_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    poison_loss(monkeypatch, 5)                        # the 5th step's loss is NaN
    run = str(tmp_path / "run")
    with pytest.raises(ScorekitError) as err:
        train(small_2d(steps=8), run, progress=False)
    good = os.path.join(run, "checkpoints", "step-0000004")
    message = str(err.value)
    assert message.startswith("loss became NaN at step 5 (")
    assert f"the last good checkpoint is at {good}" in message
    assert [s for s, _ in list_checkpoints(run)] == [2, 4]          # the bad state was not saved
    ckpt = load_checkpoint(run)
    assert ckpt.step == 4 and all(torch.isfinite(v).all() for v in ckpt.net.state_dict().values())
    assert [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))] == [1, 2, 3, 4]


def test_a_diverging_learning_rate_is_caught_before_the_step_is_applied(tmp_path):
    run = str(tmp_path / "run")
    with pytest.raises(ScorekitError, match=r"became (NaN|infinite) at step 2 .*"
                                            r"the last good checkpoint is at .*step-0000001"):
        train(small_2d(lr=1e12, warmup_steps=0, grad_clip=None, prediction="x0", checkpoint_every=1),
              run, progress=False)
    assert load_checkpoint(run).step == 1


def test_a_run_stopped_before_its_first_checkpoint_starts_anew(tmp_path, monkeypatch):
    """The loss turns NaN at step 2, before any checkpoint (every 4 steps): the folder keeps only
    the config and an empty log, so the same command -- with a fix, without resume -- starts the
    run anew there, as the error says; once a checkpoint exists a fresh start is refused again."""
    poison_loss(monkeypatch, 2)
    run = str(tmp_path / "run")
    with pytest.raises(ScorekitError, match="no checkpoint was saved before it.*run the command again"):
        train(small_2d(steps=8, checkpoint_every=4), run, progress=False)
    assert list_checkpoints(run) == [] and os.path.isfile(os.path.join(run, "config.json"))
    monkeypatch.undo()
    result = train(small_2d(steps=4, checkpoint_every=4, lr=5e-4), run, progress=False)
    assert result.step == 4 and load_checkpoint(run).config["train"]["lr"] == 5e-4
    assert [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))][0] == 1
    with pytest.raises(ScorekitError, match="already holds a training run"):
        train(small_2d(steps=4, checkpoint_every=4), run, progress=False)


# --- EMA -----------------------------------------------------------------------------------------------

def test_ema_decay_warmup_values():
    assert ema_decay(0, 0.999) == pytest.approx(1 / 10)
    assert ema_decay(8, 0.999) == pytest.approx(9 / 18)
    assert ema_decay(90, 0.999) == pytest.approx(91 / 100)
    assert ema_decay(10 ** 6, 0.999) == 0.999           # (1 + k)/(10 + k) > 0.999 once k > 8991
    assert ema_decay(8991, 0.999) == pytest.approx(8992 / 9001)
    assert ema_decay(0, 0.999, warmup=False) == 0.999


def test_ema_warmup_setting_chooses_the_decay_the_trainer_applies(tmp_path):
    """ema_decay=0.9 for 3 steps, with and without warm-up. The row of step k + 1 of metrics.jsonl
    logs the decay its update used, d_k = min(0.9, (1 + k)/(10 + k)) (0.1, 0.18, 0.25: all below
    0.9) with warm-up, 0.9 without -- as its lr is the rate that step used. The saved averages obey
    the update of step 2 (k = 1) with that decay:
    ema_2 = d_1 ema_1 + (1 - d_1) w_2, from the checkpoints of steps 1 and 2. Tolerance: the
    float32 interpolation rounds a few times (1e-6 relative, 1e-7 absolute); the two decays differ
    by 0.72 x |ema_1 - w_2| (about 1e-3: Adam moves each weight by about lr = 1e-3 per step)."""
    for warmup in (False, True):
        run = str(tmp_path / f"warmup-{warmup}")
        train(small_2d(steps=3, ema_decay=0.9, ema_warmup=warmup, warmup_steps=0, checkpoint_every=1),
              run, progress=False)
        rows = read_metrics(os.path.join(run, "metrics.jsonl"))
        expected = [ema_decay(k, 0.9, warmup=warmup) for k in (0, 1, 2)]
        assert [r["ema_decay"] for r in rows] == pytest.approx(expected)
        assert expected == (pytest.approx([1 / 10, 2 / 11, 3 / 12]) if warmup else [0.9] * 3)
        one = tensors_of(os.path.join(run, "checkpoints", "step-0000001"))
        two = tensors_of(os.path.join(run, "checkpoints", "step-0000002"))
        d = expected[1]                                 # step 2's update
        gap = max((one["ema"][k] - two["model"][k]).abs().max().item() for k in one["ema"])
        assert gap > 1e-4                               # the decay makes a visible difference
        for k in one["ema"]:
            torch.testing.assert_close(two["ema"][k], d * one["ema"][k] + (1 - d) * two["model"][k],
                                       rtol=1e-6, atol=1e-7, msg=lambda m: f"warmup={warmup} {k}: {m}")
        info = json.load(open(os.path.join(run, "checkpoints", "step-0000003", "trainer.json")))
        assert info["ema"] == {"decay": 0.9, "warmup": warmup, "num_updates": 3}


def test_ema_update_matches_hand_computed_averages():
    net = nn.Linear(1, 1, bias=False)
    net.register_buffer("count", torch.tensor(0))
    with torch.no_grad():
        net.weight.fill_(2.0)
    ema = EMA(net, decay=0.5)                 # decays: min(0.5, 1/10) = 0.1, then 2/11, then 0.25 ...
    expected = 2.0
    for k, w in enumerate([4.0, 8.0, -1.0, 3.0]):
        with torch.no_grad():
            net.weight.fill_(w)
            net.count.fill_(k + 1)
        d = min(0.5, (1 + k) / (10 + k))
        expected = d * expected + (1 - d) * w
        assert ema.update(net) == pytest.approx(d)
        assert ema.net.weight.item() == pytest.approx(expected, rel=1e-6)
        assert ema.net.count.item() == k + 1                       # integer buffers are copied
    # by hand: 0.1*2 + 0.9*4 = 3.8; 2/11*3.8 + 9/11*8 = 7.2364; 0.25*7.2364 + 0.75*(-1) = 1.0591;
    # 4/13*1.0591 + 9/13*3 = 2.4028
    assert ema.net.weight.item() == pytest.approx(2.40280, abs=1e-4)
    assert ema.num_updates == 4 and not ema.net.weight.requires_grad


def test_ema_is_kept_in_float32_for_a_bfloat16_network():
    net = nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        net.weight.fill_(1.0)
    net = net.to(torch.bfloat16)
    ema = EMA(net, decay=0.999, warmup=False)
    assert ema.net.weight.dtype == torch.float32
    with torch.no_grad():
        net.weight.fill_(1.0 + 2 ** -7)                 # the next bf16 number after 1
    ema.update(net)
    # 1 + 0.001 * 2^-7 = 1.0000078 is below bf16's resolution at 1 (2^-7) but kept in float32; the
    # update rounds a few times near 1, each by at most half of float32's spacing there (2^-23), so
    # two spacings bound it, 65x below the 7.8e-6 that tells float32 from bf16
    assert ema.net.weight.item() == pytest.approx(1 + 0.001 * 2 ** -7, abs=2 * 2 ** -23)
    assert ema.net.weight.item() != 1.0


# --- learning rate -------------------------------------------------------------------------------------

def test_learning_rate_warmup_then_constant_or_cosine():
    warm = [learning_rate(k, lr=1e-3, warmup_steps=4, total_steps=14) for k in range(6)]
    assert warm == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3, 1e-3, 1e-3])
    cos = {k: learning_rate(k, lr=1e-3, warmup_steps=4, total_steps=14, schedule="cosine", min_lr=1e-4)
           for k in (0, 3, 4, 9, 14, 20)}
    assert cos[0] == pytest.approx(2.5e-4) and cos[3] == pytest.approx(1e-3)
    assert cos[4] == pytest.approx(1e-3)                            # p = 0
    assert cos[9] == pytest.approx(1e-4 + 0.5 * 9e-4)               # p = 1/2: half way
    assert cos[14] == pytest.approx(1e-4) and cos[20] == pytest.approx(1e-4)
    assert learning_rate(6, lr=1.0, warmup_steps=0, total_steps=12, schedule="cosine") == \
        pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert learning_rate(0, lr=1.0, warmup_steps=0) == 1.0
    with pytest.raises(ScorekitError, match="lr_schedule"):
        learning_rate(0, lr=1.0, schedule="linear")


def test_the_trainer_uses_and_logs_the_scheduled_learning_rate(tmp_path):
    run = str(tmp_path / "run")
    cfg = small_2d(steps=8, warmup_steps=3, lr_schedule="cosine", min_lr=1e-5, checkpoint_every=8)
    train(cfg, run, progress=False)
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    expected = [learning_rate(k, lr=cfg.lr, warmup_steps=3, total_steps=8, schedule="cosine",
                              min_lr=1e-5) for k in range(8)]
    assert [r["lr"] for r in rows] == pytest.approx(expected)       # row k+1 is the step-k rate
    info = json.load(open(os.path.join(run, "checkpoints", "step-0000008", "trainer.json")))
    assert info["optimizer"]["param_groups"][0]["lr"] == pytest.approx(expected[-1])


# --- gradient accumulation -----------------------------------------------------------------------------

def per_sample_deterministic_loss(real):
    """The real loss computed sample by sample, each with noise and time seeded by the sample's own
    bytes: the same samples then give the same per-sample losses however the batch is split."""
    def loss(net, process, x0, *, generator, y=None, **kwargs):
        outs = []
        for i in range(x0.shape[0]):
            seed = int.from_bytes(hashlib.sha256(x0[i].numpy().tobytes()).digest()[:7], "little")
            outs.append(real(net, process, x0[i:i + 1], generator=torch.Generator().manual_seed(seed),
                             y=None if y is None else y[i:i + 1], **kwargs))
        cat = lambda name: torch.cat([getattr(o, name) for o in outs])
        return losses_module.LossOutput(loss=torch.stack([o.loss for o in outs]).mean(),
                                        per_sample=cat("per_sample"), t=cat("t"), weight=cat("weight"))
    return loss


def test_two_micro_batches_equal_one_batch_of_twice_the_size(tmp_path, monkeypatch):
    monkeypatch.setattr(losses_module, "diffusion_loss",
                        per_sample_deterministic_loss(losses_module.diffusion_loss))
    runs = {}
    for accum in (1, 2):
        run = str(tmp_path / f"accum{accum}")
        # no clipping and no warm-up, so that the logged gradient norm is the raw one
        train(small_2d(steps=4, batch_size=8, grad_accum=accum, grad_clip=None, warmup_steps=0,
                       checkpoint_every=4), run, progress=False)
        runs[accum] = (tensors_of(os.path.join(run, "checkpoints", "step-0000004")),
                       read_metrics(os.path.join(run, "metrics.jsonl")))
    (one, rows1), (two, rows2) = runs[1], runs[2]
    for name in ("model", "ema"):
        for k in one[name]:
            torch.testing.assert_close(two[name][k], one[name][k], rtol=1e-5, atol=1e-6)
    for r1, r2 in zip(rows1, rows2):
        # Adam's update hardly depends on the gradient's scale, so the loss and the gradient norm
        # are what would reveal a missing 1/grad_accum
        assert r2["loss"] == pytest.approx(r1["loss"], rel=1e-5)
        assert r2["grad_norm"] == pytest.approx(r1["grad_norm"], rel=1e-4)
    assert rows1[0]["grad_norm"] > 0


def spy_on_the_trained_network(monkeypatch, watch):
    """Call ``watch(net, optimizer)`` with the network the trainer trains and its optimiser, once
    they are built (through ``make_optimizer``, which receives that network)."""
    real = trainer_module.make_optimizer

    def make_and_watch(net, config):
        optimizer = real(net, config)
        watch(net, optimizer)
        return optimizer

    monkeypatch.setattr(trainer_module, "make_optimizer", make_and_watch)


def test_gradient_clipping_scales_the_gradient_adamw_receives_and_logs_the_norm_before(tmp_path, monkeypatch):
    """grad_clip=c with the semantics of clip_grad_norm_: the optimiser receives g min(1, c / (|g|
    + 1e-6)), g the accumulated gradient of all parameters and |g| its 2-norm, and metrics.jsonl
    logs |g|, the norm before clipping. Recorded per step: g when backward has accumulated it into
    each parameter, and what AdamW sees when it steps. c = 1e-3 is hundreds of times below the
    run's gradient norms (0.6-1.9; asserted at least 10x), so a missing clip would hand AdamW a
    gradient that many times too large. (Comparing weights would hardly show it: Adam's step is
    nearly invariant to the gradient's scale.) Tolerances: the trainer's norm is a float32 sum over
    about 5700 entries, here summed in float64 (1e-5 relative covers the float32 rounding); the
    factor inherits that, and the scaling adds one float32 multiplication."""
    clip = 1e-3
    accumulated, seen = [], []

    def watch(net, optimizer):
        params = list(net.parameters())
        current = {}
        for i, p in enumerate(params):
            p.register_post_accumulate_grad_hook(lambda p, i=i: current.__setitem__(i, p.grad.detach().clone()))

        def before_step(opt, args, kwargs):
            accumulated.append([current[i] for i in range(len(params))])
            seen.append([p.grad.detach().clone() for p in params])

        optimizer.register_step_pre_hook(before_step)

    spy_on_the_trained_network(monkeypatch, watch)
    run = str(tmp_path / "run")
    train(small_2d(steps=3, grad_clip=clip, checkpoint_every=3), run, progress=False)
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert len(accumulated) == len(seen) == len(rows) == 3
    for row, raw, given in zip(rows, accumulated, seen):
        norm = torch.linalg.vector_norm(torch.stack([g.double().norm() for g in raw])).item()
        assert norm > 10 * clip
        assert row["grad_norm"] == pytest.approx(norm, rel=1e-5)
        factor = min(1.0, clip / (norm + 1e-6))
        for g, h in zip(raw, given):
            torch.testing.assert_close(h, g * factor, rtol=1e-5, atol=0)
        total = torch.linalg.vector_norm(torch.stack([h.double().norm() for h in given])).item()
        assert total == pytest.approx(norm * factor, rel=1e-5) and total <= clip


# --- labels ----------------------------------------------------------------------------------------------

def test_labels_reach_the_network_with_dropout_to_the_no_label_index(tmp_path, monkeypatch):
    seen = []
    real = losses_module.diffusion_loss

    def spy(net, process, x0, *, y=None, **kwargs):
        seen.append(y.clone())
        return real(net, process, x0, y=y, **kwargs)

    monkeypatch.setattr(losses_module, "diffusion_loss", spy)
    # the moons have labels 0/1, so the MLP becomes class-conditional with "no label" = 2
    train(small_2d(steps=25, batch_size=64, label_dropout=0.3, checkpoint_every=25), str(tmp_path / "r"),
          progress=False)
    y = torch.cat(seen)
    n = y.numel()
    dropped = (y == 2).sum().item()
    # binomial(1600, 0.3): mean 480, sd sqrt(1600 * 0.3 * 0.7) = 18.3; allow 4 sd
    assert abs(dropped - 0.3 * n) < 4 * math.sqrt(n * 0.3 * 0.7)
    assert set(y.unique().tolist()) == {0, 1, 2}
    ckpt = load_checkpoint(str(tmp_path / "r"))
    assert ckpt.num_classes == 2 and ckpt.config["label_dropout"] == 0.3


# --- checkpoints -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    run = str(tmp_path_factory.mktemp("trained") / "run")
    train(small_2d(steps=6, keep_checkpoints=2), run, progress=False)
    return run


def test_run_folder_layout_and_keep_last_k(trained_run):
    assert [s for s, _ in list_checkpoints(trained_run)] == [4, 6]          # keep_checkpoints=2
    assert open(os.path.join(trained_run, "latest")).read().strip() == "checkpoints/step-0000006"
    for name in ("config.json", "model.safetensors", "ema.safetensors", "trainer.safetensors",
                 "trainer.json"):
        assert os.path.isfile(os.path.join(trained_run, "checkpoints", "step-0000006", name))
    for name in ("config.json", "metrics.jsonl", "loss.png", "samples/step-0000006.png"):
        assert os.path.isfile(os.path.join(trained_run, name))
    cfg = json.load(open(os.path.join(trained_run, "config.json")))
    assert cfg["model"]["kind"] == "mlp" and cfg["process"]["kind"] == "DDPM"
    assert cfg["data"]["spec"] == "moons" and cfg["sample_shape"] == [2]
    # the run records the prediction type chosen for its process (default_prediction: v for DDPM)
    # and the mixed precision "auto" chose for its device (no on a CPU)
    assert TrainConfig.from_dict(cfg["train"]) == small_2d(steps=6, keep_checkpoints=2, prediction="v",
                                                           mixed_precision="no")
    assert cfg["model"]["num_classes"] == 2 and cfg["label_dropout"] == 0.1   # labelled: default 0.1


def test_load_checkpoint_gives_networks_process_and_sampler_inputs(trained_run):
    ckpt = load_checkpoint(trained_run)
    same = load_checkpoint(os.path.join(trained_run, "checkpoints", "step-0000006"))
    assert ckpt.step == same.step == 6 and ckpt.prediction_type == "v"              # the default
    assert ckpt.process.config()["schedule"] == "cosine"
    assert isinstance(ckpt.process, scorekit.DDPM) and ckpt.data_config["spec"] == "moons"
    weights = load_file(os.path.join(ckpt.path, "ema.safetensors"))
    for k, v in ckpt.ema_net.state_dict().items():
        assert torch.equal(v, weights[k])
    d = checkpoint_denoiser(ckpt, y=torch.zeros(5, dtype=torch.long))
    x_T = ckpt.process.prior_sample((5, 2), generator=torch.Generator().manual_seed(0))
    x = scorekit.sample(d.model, x_T, process=d.process, prediction_type=d.prediction_type,
                        num_steps=5)
    assert x.shape == (5, 2) and torch.isfinite(x).all()


def test_load_checkpoint_rejects_bad_folders_and_foreign_weights(trained_run, tmp_path):
    import shutil

    with pytest.raises(ScorekitError, match="does not exist"):
        load_checkpoint(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ScorekitError, match="not a scorekit run or checkpoint folder"):
        load_checkpoint(str(tmp_path / "empty"))
    bad = str(tmp_path / "bad")
    shutil.copytree(os.path.join(trained_run, "checkpoints", "step-0000006"), bad)
    w = load_file(os.path.join(bad, "model.safetensors"))
    w["linear_in.weight"] = torch.zeros(32, 3)                     # a network for 3-D data
    save_file(w, os.path.join(bad, "model.safetensors"))
    with pytest.raises(ScorekitError, match=r"'linear_in.weight' has shape \(32, 3\) in the file but "
                                            r"\(32, 2\) in the model"):
        load_checkpoint(bad)
    del w["linear_in.weight"]
    save_file(w, os.path.join(bad, "model.safetensors"))
    with pytest.raises(ScorekitError, match="'linear_in.weight' is missing"):
        load_checkpoint(bad)
    with open(os.path.join(bad, "model.safetensors"), "wb") as fh:
        fh.write(b"not safetensors")
    with pytest.raises(ScorekitError, match="cannot be read"):
        load_checkpoint(bad)
    with open(os.path.join(bad, "config.json"), "w") as fh:
        fh.write('{"format": "scorekit.run", "model": ')
    with pytest.raises(ScorekitError, match="config.json is corrupt"):
        load_checkpoint(bad)
    os.remove(os.path.join(bad, "config.json"))
    assert resolve_checkpoint(bad) == str(bad)          # a checkpoint folder, with a file missing
    with pytest.raises(ScorekitError, match="has no config.json"):
        load_checkpoint(bad)


def test_optimizer_state_round_trips_through_safetensors_and_json():
    net = nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 1))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, betas=(0.8, 0.95))
    net(torch.randn(5, 3)).sum().backward()
    opt.step()
    tensors, structure = flatten_optimizer_state(opt.state_dict())
    structure = json.loads(json.dumps(structure))                 # through JSON
    restored = unflatten_optimizer_state(structure, tensors)
    opt2 = torch.optim.AdamW(net.parameters(), lr=1.0)
    opt2.load_state_dict(restored)
    assert opt2.param_groups[0]["betas"] == (0.8, 0.95) and opt2.param_groups[0]["lr"] == 1e-3
    for i, slots in opt.state_dict()["state"].items():
        for key, value in slots.items():
            assert torch.equal(opt2.state_dict()["state"][i][key], value)


# --- learning -------------------------------------------------------------------------------------------

def test_training_learns_eight_gaussians_nearly_as_well_as_the_exact_denoiser(tmp_path):
    """An MLP trained for 800 steps (v-prediction, DDPM cosine schedule, EDM's log-normal training
    times) and sampled with DDIM and DDPM (50 steps) from its EMA weights, against the exact
    mixture denoiser sampled from the same noise with the same sampler.

    Tolerances, at n = 2000 samples:
    * sliced-Wasserstein distance to fresh data within ``4 floor_std`` (about 0.06) of the exact
      denoiser's: ``floor_std`` is the spread of the SWD between two exact sample sets of this size
      (the metric's own resolution, measured here);
    * within-mode spread (samples assigned to their nearest mode and whitened by it: 1 is exact)
      below 1.8. The SWD alone cannot tell a ring from eight modes of width 0.05 on it (a model
      that learnt only the ring scores about 0.09, within the tolerance, but spreads 3x); the
      exact sampler gives 0.7-0.8 at 50 steps, this run about 1.5 (1.25-1.5 over seeds 0-2), the
      same run stopped at 600 steps 2.2;
    * mode weights within 0.05 of 1/8 (4.5 multinomial standard deviations);
    * and the test can fail: a network that outputs zeros lands 0.3+ away."""
    run = str(tmp_path / "run")
    cfg = TrainConfig(data="eight_gaussians", model="mlp",
                      model_options={"hidden": 128, "depth": 2, "num_classes": None},
                      process_options={"schedule": "cosine"}, prediction="v", timesteps="lognormal",
                      steps=800, batch_size=128, lr=3e-3, warmup_steps=50, lr_schedule="cosine",
                      ema_decay=0.99, checkpoint_every=800, log_every=50, sample_num=500,
                      sample_steps=20, seed=0)
    train(cfg, run, progress=False)
    ckpt = load_checkpoint(run)
    mixture = load_dataset("eight_gaussians", n=10).mixture
    n = 2000
    x_T = ckpt.process.prior_sample((n, 2), generator=torch.Generator().manual_seed(1))
    reference = mixture.sample(n, generator=torch.Generator().manual_seed(2))
    floor_mean, floor_std = swd_noise_floor(mixture, n, repeats=8, generator=torch.Generator().manual_seed(5))
    assert 0.03 < floor_mean < 0.1 and 0.005 < floor_std < 0.03
    d = checkpoint_denoiser(ckpt)
    swd = lambda x: sliced_wasserstein(x, reference, generator=torch.Generator().manual_seed(4))
    for sampler in ("ddim", "ddpm"):
        kwargs = dict(process=ckpt.process, sampler=sampler, num_steps=50)
        trained = scorekit.sample(d.model, x_T, prediction_type="v",
                                  generator=torch.Generator().manual_seed(3), **kwargs)
        exact = scorekit.sample(mixture.eps_model(ckpt.process), x_T.double(), prediction_type="eps",
                                generator=torch.Generator().manual_seed(3), **kwargs)
        assert swd(trained) < swd(exact) + 4 * floor_std, (sampler, swd(trained), swd(exact), floor_std)
        assert within_mode_spread(trained, mixture) < 1.8, sampler
        assert (mode_weights(trained, mixture) - 1 / 8).abs().max() < 0.05, sampler
    untrained = scorekit.sample(lambda x, t: torch.zeros_like(x), x_T, prediction_type="v",
                                process=ckpt.process, num_steps=50)
    assert swd(untrained) > 0.3
    rows = read_metrics(os.path.join(run, "metrics.jsonl"))
    assert rows[-1]["loss"] < rows[0]["loss"]


# --- data parallel (torchrun) ---------------------------------------------------------------------------

DDP_CHILD = textwrap.dedent("""\
    import os, sys, torch
    torch.set_num_threads(1)
    from scorekit.train import TrainConfig, TrainingInterrupted, train
    try:
        result = train(TrainConfig(data="moons", data_options={"n": 256}, model="mlp",
                                   model_options={"hidden": 16, "depth": 1}, steps=int(sys.argv[2]),
                                   batch_size=16, grad_accum=2, checkpoint_every=int(sys.argv[3]),
                                   log_every=1, sample_num=32, sample_steps=3), sys.argv[1], progress=False,
                       max_seconds=float(sys.argv[4]) if len(sys.argv) > 4 else None)
    except TrainingInterrupted as stop:
        print("STOPPED", stop.signal_name, stop.step, flush=True)
        sys.exit(stop.exit_status)
    print("RANK", os.environ["RANK"], result.step, result.loss, flush=True)
    """)


def torchrun_command(tmp_path, run, steps, checkpoint_every, port, max_seconds=None):
    """Two CPU processes training DDP_CHILD's run into ``run``."""
    script = tmp_path / "ddp.py"
    script.write_text(DDP_CHILD)
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    return [torchrun, "--nproc_per_node=2", f"--master_port={port}", str(script), run, str(steps),
            str(checkpoint_every), *([] if max_seconds is None else [str(max_seconds)])]


@pytest.mark.skipif(not os.environ.get("SCOREKIT_TEST_DDP"),
                    reason="starts two torchrun processes (about 20 s on a busy 2-core machine); "
                           "set SCOREKIT_TEST_DDP=1 to run")
def test_torchrun_two_processes_train_one_model(tmp_path):
    run = str(tmp_path / "run")
    proc = subprocess.run(torchrun_command(tmp_path, run, 4, 2, 29547), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line.split() for line in proc.stdout.splitlines() if line.startswith("RANK"))
    assert [l[1] for l in lines] == ["0", "1"]
    assert lines[0][2:] == lines[1][2:]                 # same step and the same all-reduced loss
    ckpt = load_checkpoint(run)
    assert ckpt.step == 4 and ckpt.trainer["world_size"] == 2
    trainer_tensors = load_file(os.path.join(ckpt.path, "trainer.safetensors"))
    assert {"rng.noise.rank0", "rng.noise.rank1", "rng.torch.rank1"} <= set(trainer_tensors)
    assert not torch.equal(trainer_tensors["rng.noise.rank0"], trainer_tensors["rng.noise.rank1"])
    assert [r["step"] for r in read_metrics(os.path.join(run, "metrics.jsonl"))] == [1, 2, 3, 4]


@pytest.mark.skipif(not os.environ.get("SCOREKIT_TEST_DDP"),
                    reason="starts two torchrun processes; set SCOREKIT_TEST_DDP=1 to run")
def test_torchrun_processes_stop_together_at_the_time_limit(tmp_path):
    """Each process measures its own training time, yet both stop after the same step (a process
    that stopped alone would leave the other waiting in its gradient all-reduce for ever)."""
    run = str(tmp_path / "run")
    proc = subprocess.run(torchrun_command(tmp_path, run, 10 ** 6, 10 ** 6, 29549, max_seconds=2.0),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = sorted(line.split() for line in proc.stdout.splitlines() if line.startswith("RANK"))
    assert [l[1] for l in lines] == ["0", "1"] and lines[0][2:] == lines[1][2:]
    step = int(lines[0][2])
    assert 0 < step < 10 ** 6 and load_checkpoint(run).step == step


@pytest.mark.skipif(not os.environ.get("SCOREKIT_TEST_DDP"),
                    reason="starts two torchrun processes; set SCOREKIT_TEST_DDP=1 to run")
def test_torchrun_processes_stop_together_on_sigterm_with_one_checkpoint(tmp_path):
    """SIGTERM to torchrun reaches both processes; they agree on the step, rank 0 saves it."""
    run = str(tmp_path / "run")
    proc = subprocess.Popen(torchrun_command(tmp_path, run, 10 ** 6, 10 ** 6, 29548),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if r["step"] >= 3]:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    stopped = sorted(line.split() for line in out.splitlines() if line.startswith("STOPPED"))
    assert len(stopped) == 2 and stopped[0] == stopped[1] and stopped[0][1] == "SIGTERM", out + err[-3000:]
    step = int(stopped[0][2])
    assert load_checkpoint(run).step == step and [s for s, _ in list_checkpoints(run)] == [step]
    assert not [n for n in os.listdir(os.path.join(run, "checkpoints")) if n.startswith(".")]


# --- learned variances (Improved DDPM) ------------------------------------------------------------

@pytest.mark.filterwarnings("ignore:DDPM's smallest noise level")   # a few-step chain, on purpose
def test_learned_variance_run_round_trips_and_samples_with_its_variances(tmp_path):
    """variance="learned" + the hybrid loss: the network gets a variance head, the checkpoint's
    denoiser is a LearnedVarianceDenoiser whose (x0_pred, log variance) equal those computed from the
    saved EMA weights by hand, its .model is the prediction half (so scorekit.sample works), and
    ddpm(variance="learned") and the ELBO with the learned variances run on it."""
    from scorekit.likelihood import elbo
    from scorekit.variances import LearnedVarianceDenoiser, learned_log_variance

    config = small_2d(variance="learned", weighting="hybrid", process_options={"num_steps": 20})
    result = scorekit.train.train(config, tmp_path / "run", progress=False)
    ckpt = scorekit.train.load_checkpoint(result.out_dir)
    assert ckpt.model_config["learn_variance"] is True and ckpt.train_config["variance"] == "learned"
    d = checkpoint_denoiser(ckpt)
    assert isinstance(d, LearnedVarianceDenoiser)
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        x0, log_var = d.x0_and_log_variance(x, 7, 6)
        raw = ckpt.ema_net(x, torch.full((5,), 7))
        alpha, sigma = ckpt.process.alpha(7).item(), ckpt.process.sigma(7).item()
        v = raw[:, :2]                                                      # v-prediction (the default)
        torch.testing.assert_close(x0, alpha * x - sigma * v)
        torch.testing.assert_close(log_var, learned_log_variance(raw[:, 2:], ckpt.process, 7, 6))
        torch.testing.assert_close(d(x, 7), x0)
        assert d.model(x, torch.full((5,), 7)).shape == (5, 2)
    gen = torch.Generator().manual_seed(1)
    x_T = ckpt.process.prior_sample((64, 2), generator=gen)
    samples = scorekit.ddpm(d, ckpt.process, x_T, scorekit.make_timesteps(ckpt.process, 10),
                            variance="learned", generator=gen)
    assert torch.isfinite(samples).all()
    assert torch.isfinite(scorekit.sample(d.model, x_T, process=ckpt.process, prediction_type="v",
                                          num_steps=5)).all()
    bound = elbo(d, ckpt.process, load_dataset("moons", n=32).x, variance="learned", data_bits=None,
                 generator=gen, batch_steps=20)
    assert math.isfinite(bound.mean_bpd)


def test_learned_variance_settings_are_checked_and_the_cli_flag_sets_the_hybrid_loss(tmp_path, capsys):
    from scorekit.cli import main

    with pytest.raises(ScorekitError, match="hybrid"):
        small_2d(variance="learned").validate()
    with pytest.raises(ScorekitError, match="hybrid"):
        small_2d(weighting="hybrid").validate()
    with pytest.raises(ScorekitError, match="discrete process"):
        small_2d(variance="learned", weighting="hybrid", process="vp").validate()
    code = main(["train", "--data", "moons", "--data-option", "n=64", "--model-option", "hidden=16",
                 "--model-option", "depth=1", "--diffusion-steps", "10", "--steps", "2", "--batch-size", "8",
                 "--sample-num", "8", "--sample-steps", "2", "--no-progress", "--variance", "learned",
                 "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    saved = json.load(open(tmp_path / "cli" / "config.json"))
    assert saved["train"]["variance"] == "learned" and saved["train"]["weighting"] == "hybrid"
    assert saved["model"]["learn_variance"] is True


# --- defaults per process ------------------------------------------------------------------------

def test_default_prediction_keeps_the_target_at_unit_scale_on_every_process():
    """default_prediction's target has per-dimension variance between Var[x_0] and 1 at every time of
    every process, for data of variance 1/3 (uniform on [-1, 1]): Var[eps] = 1 and
    Var[v] = alpha^2 + sigma^2 / 3 (eps independent of x_0), where v on a variance-exploding process
    would reach 1 + sigma_max^2 / 3 (834 for ve, 334 for simple_ve)."""
    from scorekit import DDPM, EDM, VESDE, VPSDE, SimpleVE, SubVPSDE
    from scorekit.train.trainer import default_prediction

    var_x0 = 1 / 3
    for process in (DDPM(), DDPM(schedule="cosine"), VPSDE(), SubVPSDE(), VESDE(), EDM(), SimpleVE()):
        pred = default_prediction(process)
        t = torch.linspace(process.t_min, process.t_max, 200, dtype=torch.float64)
        alpha, sigma = process.alpha(t), process.sigma(t)
        var = torch.ones_like(t) if pred == "eps" else alpha ** 2 + sigma ** 2 * var_x0
        assert var.min() >= var_x0 - 1e-9 and var.max() <= 1 + 1e-9, (process, pred, var.min(), var.max())
        v_var = (alpha ** 2 + sigma ** 2 * var_x0).max().item()
        assert pred == "v" or v_var > 300, (process, v_var)       # eps only where v would explode


def test_coarse_noise_warning_names_the_blur_an_exact_model_shows():
    """The exact denoiser of eight 2-D Gaussians (std 0.05) sampled by ddpm over the whole chain:
    on DDPM the samples keep the modes' width (mean distance to the nearest centre within 20 % of the
    data's, 0.05 sqrt(pi/2) = 0.063), on simple_ve (sigma = 1 at t = 1) they end at E[x_0 | x_1]
    and spread over several times that; coarse_noise_warning warns for simple_ve only."""
    from scorekit import DDPM, EDM, VESDE, VPSDE, SimpleVE, SubVPSDE, ddpm, make_timesteps
    from scorekit.data.toy2d import eight_gaussians_mixture
    from scorekit.train.trainer import coarse_noise_warning

    mix = eight_gaussians_mixture()
    data = mix.sample(2000, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    width = 0.05 * math.sqrt(math.pi / 2)

    def spread(x):
        return torch.cdist(x, mix.means).min(1).values.mean().item()

    for process, blurred in ((DDPM(), False), (SimpleVE(), True)):
        x_T = process.prior_sample((2000, 2), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
        x = ddpm(mix.denoiser(process), process, x_T, make_timesteps(process, 1000),
                 generator=torch.Generator().manual_seed(2))
        assert (spread(x) > 3 * width) if blurred else (abs(spread(x) / width - 1) < 0.2), (process, spread(x))
    for process in (DDPM(), DDPM(schedule="cosine"), VPSDE(), SubVPSDE(), VESDE(), EDM()):
        assert coarse_noise_warning(process, data) is None, process
    message = coarse_noise_warning(SimpleVE(), data)
    assert message and "smallest noise level sigma/alpha = 1" in message and "E[x_0 | x_t]" in message
