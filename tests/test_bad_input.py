"""Malformed input, as a careless or adversarial user gives it, at every place a value enters:
one :class:`ScorekitError` (on the command line: one line, exit status 2, no traceback, no files
left behind) that names the input and the form it must have."""
import os
import re

import pytest
import torch

from cli_helpers import assert_one_line_error, run_main
from scorekit.data import load_dataset
from scorekit.errors import ScorekitError
from scorekit.models import build_model, preset
from scorekit.processes import process_from_config
from scorekit.sampling import sample
from scorekit.train import TrainConfig


def raises(*fragments):
    """pytest.raises(ScorekitError) whose one-line message holds every fragment literally."""
    return pytest.raises(ScorekitError, match="(?s)" + "".join(f"(?=.*{re.escape(f)})" for f in fragments))


POINTS = ["--data", "moons", "--data-option", "n=64", "--model-option", "hidden=16", "--model-option",
          "depth=1", "--batch-size", "8", "--steps", "1", "--no-progress"]
DIGITS = ["--data", "digits", "--data-option", "stop=16", "--model", "tiny", "--model-option",
          "base_channels=8", "--model-option", "groups=4", "--batch-size", "8", "--steps", "1",
          "--no-progress"]


# --- typed KEY=VALUE options --------------------------------------------------------------------

@pytest.mark.parametrize("base,extra,fragments", [
    (DIGITS, ["--model-option", "channel_mults=1,2x"],
     ["unet model option channel_mults=1,2x", "expected a list of whole numbers like [1,2] or 1,2"]),
    (POINTS, ["--model-option", "hidden=abc"], ["mlp model option hidden=abc", "expected a whole number"]),
    (POINTS, ["--model-option", "hidden=2.5"], ["mlp model option hidden=2.5", "expected a whole number"]),
    (POINTS, ["--model-option", "dropout=high"], ["mlp model option dropout=high", "expected a number"]),
    (POINTS, ["--model-option", "learn_variance=maybe"], ["learn_variance=maybe", "expected true or false"]),
    (POINTS, ["--model-option", "norm=3"], ["mlp model option norm=3", "expected text"]),
    (POINTS, ["--model-option", "widht=3"], ["unknown mlp model option widht", "valid: dim, hidden, depth"]),
    (POINTS, ["--model-option", "num_classes=a"], ["num_classes=a", "expected a whole number or null"]),
    (POINTS, ["--data-option", "noise=lots"], ["moons data option noise=lots", "expected a number"]),
    (POINTS, ["--data-option", "seed=[1]"], ["moons data option seed=[1]", "expected a whole number"]),
    (POINTS, ["--data-option", "colour=2"], ["unknown moons data option colour", "valid: n, seed, noise"]),
    (DIGITS, ["--data-option", "flip=yes"], ["digits data option flip=yes", "expected true or false"]),
    (POINTS, ["--process-option", "num_steps=abc"], ["DDPM process option num_steps=abc", "whole number"]),
    (POINTS, ["--process-option", "beta_end=x"], ["DDPM process option beta_end=x", "a number or null"]),
    (POINTS, ["--process-option", "foo=1"], ["unknown DDPM process option foo", "valid: betas, alpha_bar"]),
    (POINTS, ["--process", "vp", "--process-option", "beta_max=NaN"],
     ["VPSDE process option beta_max=nan", "expected a number"]),
])
def test_cli_option_of_the_wrong_form(tmp_path, capsys, base, extra, fragments):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", *base, *extra, "--out", out])
    assert_one_line_error(code, err, *fragments)
    assert not out.exists()


def test_cli_list_option_written_the_natural_way(tmp_path, capsys):
    """``channel_mults=1,2`` is the list [1, 2] (before, int(',') raised a traceback)."""
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", *DIGITS, "--model-option", "channel_mults=1,2",
                                     "--model-option", "attention_resolutions=", "--out", out])
    assert code == 0, err
    from scorekit.train import load_checkpoint

    config = load_checkpoint(out).model_config
    assert config["channel_mults"] == [1, 2] and config["attention_resolutions"] == []


@pytest.mark.parametrize("written,expected", [
    ("1,2", (1, 2)), ("[1, 2]", (1, 2)), ([1, 2], (1, 2)), ((1, 2, 2), (1, 2, 2)), (4, (4,)),
])
def test_api_list_option_forms(written, expected):
    net = build_model(preset("tiny", channel_mults=written, attention_resolutions=[], base_channels=8,
                             groups=4))
    assert tuple(net.config()["channel_mults"]) == expected


@pytest.mark.parametrize("make,fragments", [
    (lambda: build_model(preset("tiny", channel_mults="1,a")), ["channel_mults=1,a", "list of whole numbers"]),
    (lambda: build_model({"kind": "mlp", "hidden": "64x"}), ["mlp model option hidden=64x", "whole number"]),
    (lambda: build_model({"kind": "mlp", "hidden": True}), ["mlp model option hidden=True", "whole number"]),
    (lambda: load_dataset("moons", n="many"), ["moons data option n=many", "whole number"]),
    (lambda: load_dataset("moons", n=2.5), ["moons data option n=2.5", "whole number"]),
    (lambda: load_dataset("moons", n=1e100), ["n (the number of points) must be a positive integer up to 1e+08"]),
    (lambda: load_dataset("digits", stop=[3]), ["digits data option stop=[3]", "whole number or null"]),
    (lambda: process_from_config({"kind": "EDM", "sigma_data": "half"}), ["EDM process option sigma_data=half"]),
    (lambda: process_from_config({"kind": "DDPM", "schedule": "cosine", "cosine_s": "x"}),
     ["DDPM process option cosine_s=x", "expected a number"]),
    (lambda: TrainConfig(weighting="min_snr", weighting_options={"min_snr_gamma": "five"}).validate(),
     ["weighting option min_snr_gamma=five", "expected a number"]),
    (lambda: TrainConfig(weighting_options={"gamma": 5}).validate(),
     ["unknown weighting option gamma", "valid: min_snr_gamma, elbo_variance"]),
    (lambda: TrainConfig(timesteps="lognormal", timesteps_options={"p_mean": "x"}).validate(),
     ["lognormal timesteps option p_mean=x", "expected a number"]),
    (lambda: TrainConfig(timesteps="importance", timesteps_options={"histroy": 3}).validate(),
     ["unknown importance timesteps option histroy", "valid: history, uniform_prob"]),
    (lambda: sample(lambda x, t: x, torch.zeros(2, 2), betas=torch.full((10,), 0.1), eta="a"),
     ["ddim sampler option eta=a", "expected a number"]),
    (lambda: sample(lambda x, t: x, torch.zeros(2, 2), betas=torch.full((10,), 0.1), sampler="unipc",
                    order=2.5), ["unipc sampler option order=2.5", "expected a whole number"]),
    (lambda: sample(lambda x, t: x, torch.zeros(2, 2), betas=torch.full((10,), 0.1), clip="a"),
     ["clip", "positive number", "'a'"]),
    (lambda: sample(lambda x, t: x, torch.zeros(2, 2), betas=torch.full((10,), 0.1), threshold="a"),
     ["threshold percentile", "positive number", "'a'"]),
])
def test_api_option_of_the_wrong_form(make, fragments):
    with raises(*fragments):
        make()


def test_cli_sampler_option_of_the_wrong_form(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", *POINTS, "--checkpoint-every", "1", "--out", out])
    assert code == 0, err
    code, _, err = run_main(capsys, ["sample", out, "--sampler", "unipc", "--order", "2.5", "--steps", "3",
                                     "--num", "4", "--no-progress", "--out", tmp_path / "s.png"])
    assert_one_line_error(code, err, "unipc sampler option order=2.5", "expected a whole number")
    assert not (tmp_path / "s.png").exists() and not (tmp_path / "s.npz").exists()


# --- checkpoint folders -------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A 2-step 2-D run with one checkpoint, trained through the command line."""
    import io
    import sys

    from scorekit.cli import main

    out = tmp_path_factory.mktemp("bad-input") / "run"
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "stdout", io.StringIO())
    mp.setattr(sys, "stderr", io.StringIO())
    try:
        code = main(["train", *POINTS, "--steps", "2", "--checkpoint-every", "2", "--sample-every", "0",
                     "--out", str(out)])
    finally:
        mp.undo()
    assert code == 0
    return str(out)


def _copy_checkpoint(run, tmp_path):
    import shutil

    from scorekit.train import resolve_checkpoint

    target = tmp_path / "ckpt"
    shutil.copytree(resolve_checkpoint(run), target)
    return target


CKPT_FILES = ["config.json", "model.safetensors", "ema.safetensors", "trainer.json"]


@pytest.mark.parametrize("damage", ["missing", "garbage", "empty"])
@pytest.mark.parametrize("name", CKPT_FILES)
def test_each_broken_checkpoint_file_is_named(run, tmp_path, capsys, name, damage):
    """A checkpoint folder with one file missing or unreadable: the message names that file (a
    folder without config.json was said to have no model.safetensors)."""
    if (name, damage) == ("trainer.json", "missing"):
        pytest.skip("loading for sampling needs no trainer state (resuming skips such a checkpoint)")
    ckpt = _copy_checkpoint(run, tmp_path)
    if damage == "missing":
        os.remove(ckpt / name)
    else:
        (ckpt / name).write_bytes(b"" if damage == "empty" else b"{garbage\x00")
    code, _, err = run_main(capsys, ["info", ckpt])
    assert_one_line_error(code, err, str(ckpt / name) if damage != "missing" else name)
    if damage == "missing":
        assert "missing" in err or "has no" in err


def test_broken_trainer_tensors_are_named_on_resume(run, tmp_path, capsys):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    ckpt = folder / "checkpoints" / "step-0000002"
    (ckpt / "trainer.safetensors").write_bytes(b"\x00" * 16)
    code, _, err = run_main(capsys, ["train", "--resume", "--steps", "3", "--no-progress", "--out", folder])
    assert_one_line_error(code, err, str(ckpt / "trainer.safetensors"), "cannot be read")


@pytest.mark.parametrize("name", ["config.json", "trainer.json"])
def test_checkpoint_from_a_newer_format_is_refused(run, tmp_path, capsys, name):
    import json

    from scorekit.train.checkpoint import FORMAT_VERSION

    ckpt = _copy_checkpoint(run, tmp_path)
    data = json.loads((ckpt / name).read_text())
    data["format_version"] = FORMAT_VERSION + 2
    (ckpt / name).write_text(json.dumps(data))
    code, _, err = run_main(capsys, ["info", ckpt])
    assert_one_line_error(code, err, str(ckpt / name), f"was written by a newer scorekit (format "
                          f"{FORMAT_VERSION + 2}; this one reads up to {FORMAT_VERSION}); upgrade scorekit")


def test_resuming_a_run_from_a_newer_format_is_refused(run, tmp_path, capsys):
    import json
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(run, folder)
    data = json.loads((folder / "config.json").read_text())
    data["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(data))
    code, _, err = run_main(capsys, ["train", "--resume", "--steps", "3", "--no-progress", "--out", folder])
    assert_one_line_error(code, err, "newer scorekit (format 99;")


def _no_such_cuda():
    return "cuda:7" if torch.cuda.device_count() < 8 else "cuda:99"


@pytest.mark.parametrize("device,fragment", [
    ("banana", "unknown device 'banana'"),
    ("cuda:-1", "unknown device 'cuda:-1'"),
    (["cpu"], "unknown device ['cpu']"),
    ("mps", "device 'mps' is not supported"),
    (None, "CUDA"),                                      # replaced by a CUDA device this machine lacks
])
def test_load_checkpoint_checks_the_device(run, device, fragment):
    from scorekit.train import load_checkpoint

    if device is None:
        device = _no_such_cuda()
    with raises(fragment):
        load_checkpoint(run, device=device)


@pytest.mark.parametrize("command", ["sample", "tune", "train"])
def test_cli_device_is_checked_by_every_command(run, tmp_path, capsys, command):
    argv = {"sample": ["sample", run, "--out", tmp_path / "s.png"],
            "tune": ["tune", run, "--nfe", "3"],
            "train": ["train", *POINTS, "--out", tmp_path / "new"]}[command]
    code, _, err = run_main(capsys, [*argv, "--device", _no_such_cuda()])
    assert_one_line_error(code, err, _no_such_cuda())
    assert os.listdir(tmp_path) == []


def test_train_config_device_is_checked():
    with raises("unknown device ['cpu']"):
        TrainConfig(device=["cpu"]).validate()
    with raises(_no_such_cuda()):
        TrainConfig(device=_no_such_cuda()).validate()


# --- class labels ----------------------------------------------------------------------------------

def _npz(tmp_path, y, n=None, name="d.npz"):
    import numpy as np

    y = np.asarray(y, dtype=np.int64)
    x = np.random.default_rng(0).uniform(-1, 1, size=(len(y) if n is None else n, 2)).astype(np.float32)
    path = tmp_path / name
    np.savez(path, x=x, y=y)
    return path


@pytest.mark.parametrize("labels", [[0, 10 ** 12], [0, 10 ** 9], [0, 1, 2, 256]])
def test_sparse_labels_in_npz_are_refused(tmp_path, labels):
    """Labels {0, 10^9} would make a 10^9-row class embedding; labels above the number of samples
    are refused with the fix (renumber, or an explicit num_classes)."""
    path = _npz(tmp_path, labels)
    with raises(f"the largest label is {max(labels)} but there are only {len(labels)} samples",
                "numpy.unique(y, return_inverse=True)[1]", "num_classes=K"):
        load_dataset(f"npz:{path}")


def test_sparse_labels_in_npz_are_refused_on_the_command_line(tmp_path, capsys):
    path = _npz(tmp_path, [0, 10 ** 12] * 8)
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", "--data", f"npz:{path}", "--steps", "1", "--no-progress",
                                     "--out", out])
    assert_one_line_error(code, err, "the largest label is 1000000000000 but there are only 16 samples")
    assert not out.exists()


def test_labels_that_are_class_indices_are_kept(tmp_path):
    ds = load_dataset(f"npz:{_npz(tmp_path, [0, 1, 1, 3])}")
    assert ds.num_classes == 4 and ds.y.tolist() == [0, 1, 1, 3]
    ds = load_dataset(f"npz:{_npz(tmp_path, [0, 7], name='e.npz')}")
    assert ds.num_classes == 8                         # a few samples of a few classes
    ds = load_dataset(f"npz:{_npz(tmp_path, [0, 999], name='f.npz')}", num_classes=1000)
    assert ds.num_classes == 1000                      # explicit: the user says there are 1000


@pytest.mark.parametrize("make,fragments", [
    (lambda p: load_dataset(f"npz:{p}", num_classes=10 ** 12), ["num_classes must be a whole number from 1 to 100,000"]),
    (lambda p: load_dataset(f"npz:{p}", num_classes=0), ["num_classes must be a whole number from 1 to 100,000"]),
    (lambda p: build_model({"kind": "mlp", "num_classes": 10 ** 12}), ["num_classes must be a whole number from 1 to"]),
    (lambda p: build_model(preset("tiny", num_classes=10 ** 9)), ["num_classes must be a whole number from 1 to"]),
    (lambda p: __import__("scorekit.data", fromlist=["Dataset"]).Dataset(
        torch.zeros(2, 2), torch.tensor([0, 10 ** 9])), ["the largest label is 1000000000 but there are only 2"]),
    (lambda p: __import__("scorekit.data", fromlist=["Dataset"]).Dataset(
        torch.zeros(2, 2), torch.tensor([0, 1]), num_classes=10 ** 12), ["num_classes must be a whole number"]),
])
def test_class_counts_are_bounded(tmp_path, make, fragments):
    path = _npz(tmp_path, [0, 1, 1])
    with raises(*fragments):
        make(path)


def test_cli_class_count_option_is_bounded(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", *POINTS, "--model-option", f"num_classes={10 ** 12}",
                                     "--out", out])
    assert_one_line_error(code, err, "num_classes must be a whole number from 1 to 100,000")
    assert not out.exists()


def test_labels_given_to_a_checkpoint_model_are_checked(run, tmp_path, capsys):
    from scorekit.train import checkpoint_denoiser, load_checkpoint

    ckpt = load_checkpoint(run)
    assert ckpt.num_classes == 2                        # moons: two labelled moons
    d = checkpoint_denoiser(ckpt, y=torch.full((4,), 10 ** 12))
    with raises("label 1000000000000 in y is outside 0..2"):
        sample(d.model, torch.zeros(4, 2), process=d.process, prediction_type=d.prediction_type, num_steps=2)
    code, _, err = run_main(capsys, ["sample", run, "--class", "2", "--out", tmp_path / "s.png"])
    assert_one_line_error(code, err, "--class 2 is outside 0..1")
    assert os.listdir(tmp_path) == []
