"""The objective interface of the trainer (scorekit.train.objectives): the default diffusion
objective is diffusion_loss with the run's settings, a new objective plugs into train() and
resumes exactly, and the run records which objective it trained."""
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from scorekit import ScorekitError
from scorekit.data import load_dataset
from scorekit.losses import UniformTimesteps, diffusion_loss, noisy_batch
from scorekit.models import build_model
from scorekit.train import (OBJECTIVES, DiffusionObjective, Objective, TrainConfig, load_checkpoint,
                            read_metrics, train)
from scorekit.train.config import build_process, model_config_for
from scorekit.train.objectives import Batch, ObjectiveOutput


def small_2d(**overrides) -> TrainConfig:
    base = dict(data="moons", data_options={"n": 256}, model="mlp", model_options={"hidden": 16, "depth": 1},
                steps=4, batch_size=16, warmup_steps=1, log_every=1, checkpoint_every=2, keep_checkpoints=None,
                sample_num=16, sample_steps=2, seed=1)
    base.update(overrides)
    return TrainConfig(**base)


def test_the_diffusion_objective_is_diffusion_loss_with_the_run_settings():
    """Same draws, same numbers: the objective adds nothing to scorekit.losses.diffusion_loss but the
    run's settings (here min_snr with gamma 2 on an x0 network, labels kept)."""
    config = DiffusionObjective.complete_config(small_2d(weighting="min_snr", weighting_options={"min_snr_gamma": 2},
                                                         prediction="x0", label_dropout=0.0).validate())
    dataset = load_dataset("moons", n=64)
    process = build_process("ddpm", {})
    net_config = model_config_for(config, dataset, process)
    net = build_model(net_config)
    sampler = UniformTimesteps(process)
    objective = DiffusionObjective(config, process=process, dataset=dataset, net_config=net_config,
                                   timestep_sampler=sampler)
    assert objective.uses_labels and objective.prediction_type == "x0" and objective.name == "diffusion"
    batch = objective.prepare(Batch(dataset.x[:32], dataset.y[:32]), torch.Generator().manual_seed(5))
    assert torch.equal(batch.y, dataset.y[:32])                  # label_dropout=0: labels untouched
    out = objective.loss(objective.training_net(net), batch, torch.Generator().manual_seed(7))
    ref = diffusion_loss(net, process, dataset.x[:32], prediction_type="x0", weighting="min_snr", min_snr_gamma=2,
                         y=dataset.y[:32], generator=torch.Generator().manual_seed(7), timestep_sampler=sampler)
    assert isinstance(out, ObjectiveOutput) and out.metrics == {}
    assert torch.equal(out.loss, ref.loss) and torch.equal(out.per_sample, ref.per_sample)
    assert torch.equal(out.t, ref.t)
    assert OBJECTIVES["diffusion"] is DiffusionObjective


class EpsRegression(Objective):
    """A new objective: the plain eps-MSE of an unconditional network, written against the interface
    alone, with a metric of its own."""

    name = "eps_regression"

    def loss(self, net, batch, generator):
        noisy = noisy_batch(self.process, batch.x, generator=generator, timestep_sampler=self.timestep_sampler)
        error = net(noisy.x_t, noisy.t) - noisy.eps
        per_sample = error.pow(2).mean(1)
        return ObjectiveOutput(per_sample.mean(), per_sample, noisy.t, {"abs_error": error.abs().mean(1)})


def tensors_of(ckpt_dir):
    return {name: load_file(os.path.join(ckpt_dir, f"{name}.safetensors")) for name in ("model", "ema", "trainer")}


def test_a_new_objective_trains_is_recorded_and_resumes_exactly(tmp_path):
    cfg = small_2d(model_options={"hidden": 16, "depth": 1, "num_classes": None})
    straight, stopped = str(tmp_path / "straight"), str(tmp_path / "stopped")
    train(cfg, straight, progress=False, objective=EpsRegression)
    train(cfg, stopped, progress=False, objective=EpsRegression, stop_at_step=2)
    with pytest.raises(ScorekitError, match=r"unknown objective 'eps_regression'; choose one of diffusion, classifier "
                                            r"\(or pass an Objective subclass to train\(objective=\.\.\.\)\)"):
        train(None, stopped, progress=False, resume=True)                  # the class is needed to resume
    with pytest.raises(ScorekitError, match="holds a run of objective 'eps_regression', not 'diffusion'"):
        train(None, stopped, progress=False, resume=True, objective="diffusion")
    train(None, stopped, progress=False, resume=True, objective=EpsRegression)
    a = tensors_of(os.path.join(straight, "checkpoints", "step-0000004"))
    b = tensors_of(os.path.join(stopped, "checkpoints", "step-0000004"))
    for name in ("model", "ema", "trainer"):
        assert a[name].keys() == b[name].keys()
        assert all(torch.equal(a[name][k], b[name][k]) for k in a[name]), name
    rows_a = read_metrics(os.path.join(straight, "metrics.jsonl"))
    rows_b = read_metrics(os.path.join(stopped, "metrics.jsonl"))
    assert [r["abs_error"] for r in rows_a] == [r["abs_error"] for r in rows_b]
    assert all(0 < r["abs_error"] < 2 for r in rows_a)
    saved = json.load(open(os.path.join(straight, "config.json")))
    assert saved["objective"] == "eps_regression" and saved["train"]["objective"] == "eps_regression"
    assert saved["prediction_type"] is None
    assert not os.path.exists(os.path.join(straight, "samples"))        # it draws no samples
    assert load_checkpoint(straight).objective == "eps_regression"


def test_the_objective_is_a_setting_of_the_run(tmp_path):
    """A diffusion run records objective 'diffusion'; the objective cannot change on resume, a
    config and an objective= that disagree are refused, and an unknown name is named."""
    run = str(tmp_path / "run")
    train(small_2d(steps=2), run, progress=False)
    saved = json.load(open(os.path.join(run, "config.json")))
    assert saved["objective"] == "diffusion" and saved["train"]["objective"] == "diffusion"
    assert load_checkpoint(run).objective == "diffusion"
    with pytest.raises(ScorekitError, match=r"cannot resume .* objective 'diffusion' -> 'classifier'"):
        train(small_2d(steps=4, objective="classifier", model="auto"), run, progress=False, resume=True)
    with pytest.raises(ScorekitError, match="unknown objective 'denoise'; choose one of diffusion, classifier"):
        small_2d(objective="denoise").validate()
    with pytest.raises(ScorekitError, match="unknown objective 'denoise'"):
        train(small_2d(), str(tmp_path / "other"), progress=False, objective="denoise")
    with pytest.raises(ScorekitError, match=r"config.objective 'classifier' and objective='diffusion' disagree"):
        train(small_2d(objective="classifier"), str(tmp_path / "other"), progress=False, objective="diffusion")
    with pytest.raises(ScorekitError, match="objective must be a name"):
        train(small_2d(), str(tmp_path / "other"), progress=False, objective=object())
