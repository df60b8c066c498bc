"""``scorekit tune`` and ``scorekit sample --spacing tuned`` end to end through ``cli.main`` on a
tiny trained 2-D run, and every bad input: exit status 2, one line on standard error."""
import io
import json
import os
import sys

import numpy as np
import pytest
import torch

import scorekit
from scorekit.cli import main
from cli_helpers import assert_one_line_error, run_main
from scorekit.schedule_tuning import SCHEDULES_FILE, load_tuned
from scorekit.train import load_checkpoint
from scorekit.train.checkpoint import checkpoint_denoiser

TRAIN = ["train", "--data", "moons", "--data-option", "n=256", "--model", "mlp", "--model-option",
         "hidden=32", "--model-option", "depth=1", "--batch-size", "16", "--steps", "8",
         "--log-every", "4", "--sample-num", "20", "--sample-steps", "3", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-D MLP trained for 8 steps through the command line."""
    folder = tmp_path_factory.mktemp("tune") / "moons"
    patch = pytest.MonkeyPatch()
    out, err = io.StringIO(), io.StringIO()
    patch.setattr(sys, "stdout", out)
    patch.setattr(sys, "stderr", err)
    try:
        code = main([*TRAIN, "--out", str(folder)])
    finally:
        patch.undo()
    assert code == 0, err.getvalue()
    return str(folder)


def test_help_lists_tune_and_the_tuned_spacing(capsys):
    code, out, _ = run_main(capsys, ["--help"])
    assert code == 0 and "\n    tune " in out
    code, out, _ = run_main(capsys, ["tune", "--help"])
    assert code == 0
    for needle in ("RUN_OR_CKPT", "--sampler", "--nfe", "--num", "--seed", "--max-evals", "examples:",
                   "schedules.json"):
        assert needle in out, needle
    code, out, _ = run_main(capsys, ["sample", "--help"])
    assert code == 0 and "--spacing" in out and ",tuned}" in out and "'scorekit tune' saved" in out
    assert "--schedule" not in out                  # deprecated here: train's beta schedule


def test_tune_then_sample_with_the_tuned_grid(run, capsys, tmp_path):
    code, out, err = run_main(capsys, ["tune", run, "--sampler", "ddim", "--nfe", "4", "--num", "32",
                                       "--max-evals", "25", "--seed", "3", "--no-progress"])
    assert code == 0, err
    ckpt = load_checkpoint(run)
    file = os.path.join(ckpt.path, SCHEDULES_FILE)
    saved = json.loads(open(file).read())["schedules"]["ddim nfe=4 eta=0.0"]
    tuned = load_tuned(run, "ddim", 4)
    assert tuned.num_samples == 32 and tuned.steps == 4 and 0 < tuned.evaluations <= 25
    assert tuned.error_tuned <= tuned.error_default
    assert f"default grid {saved['error_default']:.4g}, tuned {saved['error_tuned']:.4g}" in out
    assert "tuned ddim at NFE 4 (4 steps) on 32 samples" in out and file in out
    assert f"use it: scorekit sample {run} --sampler ddim --steps 4 --spacing tuned" in out
    ts = tuned.timesteps
    assert ts[0] == ckpt.process.t_max and ts[-1] == ckpt.process.t_data
    assert torch.all(ts[1:] < ts[:-1]) and ts[:-1].min() >= ckpt.process.t_min
    # on so short a run the search may keep the default grid itself: to see that --spacing tuned
    # samples on the saved grid, move one of its times (a grid no other spacing gives)
    moved = ts.clone()
    moved[2] = 0.5 * (ts[1] + ts[2])
    data = json.loads(open(file).read())
    data["schedules"]["ddim nfe=4 eta=0.0"]["timesteps"] = moved.tolist()
    with open(file, "w") as fh:
        json.dump(data, fh)
    ts = load_tuned(run, "ddim", 4).timesteps
    assert torch.equal(ts, moved) and not torch.equal(ts, tuned.default_timesteps)

    code, out, err = run_main(capsys, ["sample", run, "--steps", "4", "--spacing", "tuned", "--num", "24",
                                       "--seed", "5", "--out", tmp_path / "tuned.png", "--no-progress"])
    assert code == 0 and err == "", err
    assert "NFE 4 per sample" in out
    got = np.load(tmp_path / "tuned.npz")["x"]
    # the same samples from the library on the saved grid
    d = checkpoint_denoiser(ckpt)
    x_T = ckpt.process.prior_sample((24, 2), generator=torch.Generator().manual_seed(5))
    expected = scorekit.sample(d.model, x_T, process=ckpt.process, prediction_type=d.prediction_type,
                               sampler="ddim", timesteps=ts)
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    code, _, err = run_main(capsys, ["sample", run, "--steps", "4", "--num", "24", "--seed", "5",
                                     "--out", tmp_path / "default.png", "--no-progress"])
    assert code == 0, err
    assert not np.allclose(np.load(tmp_path / "default.npz")["x"], got)

    # the deprecated --schedule: the same samples, and one line on stderr naming --spacing
    code, out, err = run_main(capsys, ["sample", run, "--steps", "4", "--schedule", "tuned", "--num", "24",
                                       "--seed", "5", "--out", tmp_path / "old.png", "--no-progress"])
    assert code == 0, err
    assert err.splitlines() == ["scorekit sample: warning: --schedule tuned is deprecated and will be removed "
                                "('scorekit train --schedule' is the beta schedule); use --spacing tuned"]
    np.testing.assert_array_equal(np.load(tmp_path / "old.npz")["x"], got)


def test_the_deprecated_schedule_default_is_the_default_grid(run, capsys, tmp_path):
    argv = ["sample", run, "--steps", "3", "--num", "6", "--no-progress"]
    code, _, err = run_main(capsys, [*argv, "--out", tmp_path / "plain.png"])
    assert code == 0 and err == "", err
    code, _, err = run_main(capsys, [*argv, "--schedule", "default", "--out", tmp_path / "old.png"])
    assert code == 0, err
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("scorekit sample: warning: --schedule default is deprecated")
    assert "--spacing" in lines[0]
    np.testing.assert_array_equal(np.load(tmp_path / "old.npz")["x"], np.load(tmp_path / "plain.npz")["x"])


@pytest.mark.parametrize("argv, fragments", [
    (["tune", "{run}", "--sampler", "ddpm", "--nfe", "4", "--num", "8"], ["ddpm", "stochastic"]),
    (["tune", "{run}", "--sampler", "ddim", "--eta", "1", "--nfe", "4", "--num", "8"], ["stochastic"]),
    (["tune", "{run}", "--sampler", "no_such", "--nfe", "4"], ["--sampler", "no_such"]),
    (["tune", "{run}", "--nfe", "0"], ["--nfe", "0"]),
    (["tune", "{run}", "--sampler", "ode_adaptive", "--nfe", "10", "--num", "8"],
     ["ode_adaptive chooses its own steps", "not by a grid"]),
    (["tune", "{run}", "--sampler", "unipc", "--variant", "taylor", "--nfe", "4", "--num", "8"],
     ["--variant taylor is not an option of unipc"]),
    (["tune", "{run}"], ["--nfe"]),
    (["tune", "{run}/nowhere", "--nfe", "4"], ["does not exist"]),
    (["sample", "{run}", "--steps", "7", "--spacing", "tuned", "--out", "{tmp}/x.png"],
     ["no tuned schedule for ddim at NFE 7", "scorekit tune", "--sampler ddim --nfe 7"]),
    (["sample", "{run}", "--sampler", "ode_adaptive", "--spacing", "tuned", "--out", "{tmp}/x.png"],
     ["ode_adaptive chooses its own steps", "drop --spacing"]),
    (["sample", "{run}", "--steps", "4", "--schedule", "tuned", "--spacing", "linspace",
      "--out", "{tmp}/x.png"], ["--spacing linspace", "--spacing tuned", "--schedule tuned"]),
    (["sample", "{run}", "--steps", "4", "--schedule", "karras", "--out", "{tmp}/x.png"],
     ["--schedule", "invalid choice"]),
])
def test_bad_input_is_one_line_and_exit_2(run, capsys, tmp_path, argv, fragments):
    argv = [a.format(run=run, tmp=tmp_path) for a in argv]
    code, _, err = run_main(capsys, [*argv, "--no-progress"])
    assert_one_line_error(code, err, *fragments)
    assert not os.path.exists(tmp_path / "x.png")
