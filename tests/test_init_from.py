"""``TrainConfig.init_from`` / ``scorekit train --init-from``: a run starts from another run's EMA
weights. A task model started from an unconditional run is, at step 0, exactly that run's
denoiser whatever its condition; it records where it started, resumes bit for bit, and refuses a
source that does not fit."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from scorekit import ScorekitError
from scorekit.conditioning import Condition
from scorekit.models import build_model
from scorekit.train import TrainConfig, load_checkpoint, train
from scorekit.train.init import initial_state

from cli_helpers import assert_one_line_error, run_main

NET = {"base_channels": 8, "groups": 4, "num_classes": None}      # unconditional, as a prior is


def config(**overrides) -> TrainConfig:
    base = dict(data="digits", data_options={"stop": 64}, model="tiny", model_options=dict(NET),
                process_options={"num_steps": 10}, steps=4, batch_size=8, lr=3e-3, warmup_steps=1,
                ema_decay=0.5, log_every=1, checkpoint_every=2, keep_checkpoints=None, sample_num=4,
                sample_steps=3)
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def prior(tmp_path_factory) -> str:
    """An unconditional 8x8 digits run, trained a few steps so that its EMA weights differ from
    any fresh initialisation."""
    import warnings

    out = str(tmp_path_factory.mktemp("prior") / "run")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "DDPM's smallest noise level")   # a 10-step chain, on purpose
        train(config(), out, progress=False)
    return out


def test_a_task_model_started_from_an_unconditional_run_is_that_runs_denoiser(prior):
    """The new input channels start at zero, so ``f_new([x_t, cond], t) = f_source(x_t, t)`` for
    any ``cond``. Exact in real arithmetic; in float32 the convolution may sum its terms in another
    order once the zero channels are there, so the check allows a few float32 roundings of the
    output's scale (no training step could come that close: the two networks would differ at the
    scale of the learning rate)."""
    source = load_checkpoint(prior)
    net_config = {**source.model_config, "cond_channels": 2}          # inpaint: [A^+ y, mask]
    net = build_model(dict(net_config))
    state, record = initial_state(net, net_config, prior, process_config=source.process.config(),
                                  prediction=source.prediction_type)
    assert record["zeroed"] == ["conv_in.weight"] and record["step"] == 4
    net.load_state_dict(state)
    net.eval()
    g = torch.Generator().manual_seed(0)
    x_t = torch.randn(16, 1, 8, 8, generator=g)
    t = torch.randint(0, 10, (16,), generator=g)
    with torch.no_grad():
        want = source.ema_net(x_t, t)
        for cond in (torch.zeros(16, 2, 8, 8), 5 * torch.randn(16, 2, 8, 8, generator=g)):
            got = net(x_t, t, cond=cond)
            scale = float(want.abs().max())
            assert torch.allclose(got, want, rtol=0, atol=64 * torch.finfo(torch.float32).eps * scale)
    # every other tensor is copied exactly; the new channels are zero, the old ones the source's
    ema = source.ema_net.state_dict()
    for name, tensor in state.items():
        if name == "conv_in.weight":
            assert torch.equal(tensor[:, :1], ema[name]) and not tensor[:, 1:].any()
        else:
            assert torch.equal(tensor, ema[name]), name


@pytest.mark.filterwarnings("ignore:DDPM's smallest noise level")   # a few-step chain, on purpose
def test_a_run_started_from_another_records_it_and_resumes_bit_for_bit(prior, tmp_path):
    cfg = config(task="inpaint", task_options={"kind": "mixed"}, init_from=prior, steps=4, seed=3)
    whole, stopped = str(tmp_path / "whole"), str(tmp_path / "stopped")
    train(cfg, whole, progress=False)
    train(cfg, stopped, progress=False, stop_at_step=2)
    train(None, stopped, progress=False, resume=True)
    run_config = json.loads(open(os.path.join(whole, "config.json"), encoding="utf-8").read())
    assert run_config["train"]["init_from"] == prior
    assert run_config["init_from"]["step"] == 4 and run_config["init_from"]["zeroed"] == ["conv_in.weight"]
    assert json.loads(open(os.path.join(stopped, "config.json"), encoding="utf-8").read())["init_from"] == \
        run_config["init_from"]                                         # kept when resumed
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(os.path.join(whole, "checkpoints", "step-0000004", name))
        b = load_file(os.path.join(stopped, "checkpoints", "step-0000004", name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # the first checkpoint is two steps from the source, not from a random network: its weights
    # outside the input layer lie closer to the source's EMA than a fresh run's do
    fresh = str(tmp_path / "fresh")
    train(config(task="inpaint", task_options={"kind": "mixed"}, steps=2, seed=3), fresh, progress=False)
    src = load_checkpoint(prior).ema_net.state_dict()

    def distance(run):
        w = load_file(os.path.join(run, "checkpoints", "step-0000002", "model.safetensors"))
        return sum(float((w[k] - src[k]).square().sum()) for k in src if k != "conv_in.weight")
    assert distance(stopped) < 0.1 * distance(fresh)


@pytest.mark.parametrize("overrides, message", [
    ({"model_options": {**NET, "base_channels": 16}}, "another network"),
    ({"prediction": "eps"}, "predicts 'v'"),
    ({"process_options": {"num_steps": 20}}, "another forward process"),
])
def test_a_source_that_does_not_fit_is_refused(prior, tmp_path, overrides, message):
    out = tmp_path / "run"
    with pytest.raises(ScorekitError, match=message):
        train(config(init_from=prior, **overrides), str(out), progress=False)
    assert not (out / "checkpoints").exists()


def test_init_from_must_name_a_run(tmp_path):
    with pytest.raises(ScorekitError, match="init_from must be the path"):
        config(init_from=3).validate()
    with pytest.raises(ScorekitError, match="does not exist"):
        train(config(init_from=str(tmp_path / "missing")), str(tmp_path / "run"), progress=False)


def test_the_command_line_starts_a_task_model_from_a_run(prior, tmp_path, capsys):
    out = tmp_path / "inpaint"
    args = ["train", "--data", "digits", "--data-option", "stop=64", "--model", "tiny",
            "--model-option", "base_channels=8", "--model-option", "groups=4", "--diffusion-steps", "10",
            "--steps", "2", "--batch-size", "8", "--sample-num", "4", "--sample-steps", "3",
            "--task", "inpaint", "--no-progress"]
    code, _, err = run_main(capsys, args + ["--init-from", prior, "--out", out])
    assert code == 0, err
    assert "initialised from" in err
    assert load_checkpoint(out).train_config["init_from"] == prior
    code, _, err = run_main(capsys, args + ["--init-from", tmp_path / "missing", "--out", tmp_path / "bad"])
    assert_one_line_error(code, err, "does not exist")
    assert not (tmp_path / "bad" / "checkpoints").exists()
