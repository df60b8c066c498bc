"""Malformed input, as a careless or adversarial user gives it, at every place a value enters:
one :class:`ScorekitError` (on the command line: one line, exit status 2, no traceback, no files
left behind) that names the input and the form it must have."""
import math
import os
import re

import pytest
import torch

import scorekit as _sk
from cli_helpers import assert_one_line_error, run_main
from scorekit import losses as _losses
from scorekit import variances as _variances
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
    (DIGITS, ["--model-option", "channel_mults=[]"], ["channel_mults must be a non-empty list", "got []"]),
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
    (lambda: __import__("scorekit.processes", fromlist=["DDPM"]).DDPM(schedule="linear", beta_end="high"),
     ["linear schedule option beta_end=high", "expected a number or null"]),
    (lambda: __import__("scorekit.processes", fromlist=["DDPM"]).DDPM(schedule="linear", beta_stop=0.02),
     ["unknown linear schedule option beta_stop", "valid: beta_start, beta_end, cosine_s, max_beta"]),
    (lambda: __import__("scorekit.train", fromlist=["load_checkpoint"]).load_checkpoint(3),
     ["the checkpoint path must be a folder name (str or os.PathLike), got int"]),
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
    # the processes' own constructors, called directly
    (lambda: _sk.VPSDE(0.1, math.inf), ["beta_max must be a positive finite number", "inf"]),
    (lambda: _sk.SubVPSDE(math.nan, 20.0), ["beta_min must be a positive finite number", "nan"]),
    (lambda: _sk.VESDE(0.01, math.inf), ["sigma_max must be a positive finite number"]),
    (lambda: _sk.EDM(0.002, math.inf), ["sigma_max must be a positive finite number"]),
    (lambda: _sk.VPSDE("slow", 20.0), ["beta_min must be a positive number, got 'slow'"]),
    (lambda: _sk.SimpleVE(2.7), ["num_steps must be a positive whole number, got 2.7"]),
    (lambda: _sk.SimpleVE("x"), ["num_steps must be a positive whole number, got 'x'"]),
    (lambda: _sk.DDPM(num_steps=10.9), ["num_steps must be a positive whole number, got 10.9"]),
    (lambda: _sk.DDPM(betas=[0.1, 0.2], num_steps=5), ["num_steps=5 but the table has 2 steps"]),
    (lambda: _sk.DDPM(alpha_bar=[0.9, 0.5], beta_end=0.2), ["beta_end: options of a named schedule", "alpha_bar"]),
    (lambda: _sk.Denoiser(lambda x, t: x, "ddpm"), ["process must be a forward process", "got str 'ddpm'"]),
    (lambda: _losses.diffusion_loss(lambda x, t, y: x, "ddpm", torch.zeros(2, 2), generator=torch.Generator()),
     ["process must be a forward process", "got str"]),
    (lambda: _losses.LogNormalTimesteps(_sk.EDM(), p_std="wide"), ["p_std must be a positive number, got 'wide'"]),
    (lambda: _losses.LogNormalTimesteps(_sk.EDM(), p_mean=math.inf), ["p_mean must be a finite number"]),
    (lambda: _losses.ImportanceTimesteps(_sk.DDPM(num_steps=4), uniform_prob="x"),
     ["uniform_prob must be a number in [0, 1], got 'x'"]),
    (lambda: _variances.analytic_variance(_sk.DDPM(), 5, 4, 0.5, data_radius=math.nan), ["data_radius"]),
    (lambda: _variances.analytic_variance(_sk.DDPM(), 5, 4, 0.5, data_radius=-2), ["data_radius"]),
    (lambda: _variances.analytic_variances(lambda x, t: x, _sk.DDPM(num_steps=4), torch.zeros(3, 2),
                                           generator=torch.Generator(), batch_size="x"), ["batch_size"]),
])
def test_api_option_of_the_wrong_form(make, fragments):
    with raises(*fragments):
        make()


@pytest.mark.parametrize("changes,fragments", [
    (dict(model="mlp", model_options={"hidden": "wide"}), ["mlp model option hidden=wide"]),
    (dict(process="ve", process_options={"sigma_max": "big"}), ["VESDE process option sigma_max=big"]),
    (dict(data_options={"n": "many"}), ["unknown folder data option n", "valid: size, channels"]),
])
def test_train_config_options_are_checked_before_the_data_are_loaded(tmp_path, changes, fragments):
    """The data folder does not exist: the option error comes first, before any loading."""
    with raises(*fragments):
        TrainConfig(data=f"folder:{tmp_path / 'nowhere'}", **changes).validate()


@pytest.mark.parametrize("command", ["sample", "tune"])
def test_cli_sampler_option_of_the_wrong_form(run, tmp_path, capsys, command):
    argv = {"sample": ["sample", run, "--steps", "3", "--num", "4", "--out", tmp_path / "s.png"],
            "tune": ["tune", run, "--nfe", "3", "--num", "4"]}[command]
    code, _, err = run_main(capsys, [*argv, "--sampler", "unipc", "--order", "2.5", "--no-progress"])
    assert_one_line_error(code, err, "--order 2.5 is not an option of unipc", "choose one of 1, 2, 3")
    assert os.listdir(tmp_path) == []


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


# --- hand-edited entries of config.json, trainer.json and schedules.json --------------------------

BROKEN_ENTRIES = [
    ("config.json", "sample_shape", None, "a list of positive whole numbers"),
    ("config.json", "sample_shape", "abc", "a list of positive whole numbers"),
    ("config.json", "sample_shape", [1, -8, 8], "a list of positive whole numbers"),
    ("config.json", "sample_shape", [1, 8.5, 8], "a list of positive whole numbers"),
    ("config.json", "sample_shape", [], "a list of positive whole numbers"),
    ("config.json", "data", "moons", "an object (the dataset configuration)"),
    ("config.json", "loss", "simple", "an object"),
    ("config.json", "loss", {"options": [1]}, "an object"),
    ("config.json", "train", [1], "an object (the training options)"),
    ("config.json", "class_names", 5, "a list of class names (strings) or null"),
    ("config.json", "label_dropout", "abc", "a number from 0 up to (not including) 1 or null"),
    ("config.json", "label_dropout", True, "a number from 0 up to (not including) 1 or null"),
    ("config.json", "ema", "x", "an object (the EMA settings)"),
    ("config.json", "task", "sr2", "an object with the task's name"),
    ("config.json", "model", {"hidden": 16}, "a model configuration with a 'kind'"),
    ("trainer.json", "data", "x", "an object (the data order"),
    ("trainer.json", "data", {"epoch": "a", "position": 0, "size": 64}, "an object (the data order"),
    ("trainer.json", "ema", [0.999], "an object (the EMA"),
    ("trainer.json", "ema", {"decay": 0.999, "num_updates": "2"}, "an object (the EMA"),
]


@pytest.mark.parametrize("command", ["info", "sample", "guided"])
@pytest.mark.parametrize("name,key,value,form", BROKEN_ENTRIES,
                         ids=[f"{n}-{k}-{v!r}" for n, k, v, _ in BROKEN_ENTRIES])
def test_entries_of_the_wrong_type_are_named(run, tmp_path, capsys, command, name, key, value, form):
    """An entry a user edited into the wrong type: one line naming the file, the entry and the
    form it must have (each of these was a traceback: TypeError, AttributeError)."""
    import json

    ckpt = _copy_checkpoint(run, tmp_path)
    data = json.loads((ckpt / name).read_text())
    data[key] = value
    (ckpt / name).write_text(json.dumps(data))
    out = tmp_path / "s.png"
    argv = {"info": ["info", ckpt],
            "sample": ["sample", ckpt, "--num", "4", "--steps", "2", "--no-progress", "--out", out],
            "guided": ["sample", ckpt, "--class", "0", "--guidance-scale", "2", "--num", "4", "--steps", "2",
                       "--no-progress", "--out", out]}[command]
    code, _, err = run_main(capsys, argv)
    assert_one_line_error(code, err, f"{ckpt / name}: {key!r} must be {form}", "the file is corrupt")
    assert not out.exists()


def _tuned(run, tmp_path, damage):
    """A copy of the run's checkpoint whose schedules.json holds ddim's 3-step grid under its key,
    then ``damage(entry, schedules)``: the folder and the key."""
    import json

    from scorekit.schedule_tuning import SCHEDULES_FILE, TunedSchedule, save_tuned
    from scorekit.timesteps import make_timesteps
    from scorekit.train import load_checkpoint

    ckpt = _copy_checkpoint(run, tmp_path)
    grid = make_timesteps(load_checkpoint(ckpt).process, 3)
    tuned = TunedSchedule(timesteps=grid, sampler="ddim", nfe=3, error_default=0.2, error_tuned=0.1)
    file = save_tuned(ckpt, tuned)
    data = json.loads((ckpt / SCHEDULES_FILE).read_text())
    damage(data["schedules"][tuned.key], data["schedules"], tuned.key)
    (ckpt / SCHEDULES_FILE).write_text(json.dumps(data))
    return ckpt, file, tuned.key


def _set(**changes):
    return lambda entry, schedules, key: entry.update(changes)


BROKEN_SCHEDULES = {
    "intact": (lambda entry, schedules, key: None, None),
    "not-an-object": (lambda entry, schedules, key: schedules.__setitem__(key, [1, 2]), "must be an object"),
    "one-step-grid": (lambda entry, schedules, key: entry.update(timesteps=entry["timesteps"][-2:], steps=1),
                      "holds 1 model time(s), on which ddim makes 1 network evaluations, not 3"),
    "not-to-the-data": (lambda entry, schedules, key: entry.update(timesteps=entry["timesteps"][:-1] + [-0.5]),
                        "runs from t = 999 to -0.5, not from t_max = 999 to the data time -1"),
    "not-from-t_max": (lambda entry, schedules, key: entry.update(timesteps=[900.0] + entry["timesteps"][1:]),
                       "runs from t = 900 to -1"),
    "steps-disagree": (lambda entry, schedules, key: entry.update(timesteps=entry["timesteps"][-2:]),
                       "'steps' is 3 but 'timesteps' holds 1 model time(s)"),
    "increasing": (lambda entry, schedules, key: entry.update(timesteps=entry["timesteps"][::-1]),
                   "'timesteps': timesteps must be strictly decreasing"),
    "not-numbers": (_set(timesteps="abc"), "'timesteps' must be a list of numbers (times), got 'abc'"),
    "a-string-time": (lambda entry, schedules, key: entry["timesteps"].__setitem__(1, "5"),
                      "'timesteps' must be a list of numbers"),
    "nan": (lambda entry, schedules, key: entry["timesteps"].__setitem__(1, float("nan")),
            "'timesteps': timesteps contain NaN"),
    "other-nfe": (_set(nfe=4), "holds the grid of 'ddim nfe=4"),
    "nfe-not-whole": (_set(nfe=3.5), "'nfe' must be a positive whole number, got 3.5"),
    "unknown-sampler": (_set(sampler="nope"), "unknown sampler 'nope'"),
    "default-grid": (_set(default_timesteps=[1, 2]), "'default_timesteps': timesteps must be strictly decreasing"),
}


@pytest.mark.parametrize("case", list(BROKEN_SCHEDULES))
def test_a_hand_edited_tuned_schedule_is_checked(run, tmp_path, capsys, case):
    """scorekit sample --spacing tuned: a schedules.json entry that is not a grid of this sampler's
    NFE is refused with one line naming the file and the entry (a 1-step grid kept under
    'ddim nfe=3' was sampled on while 3 steps were reported)."""
    damage, fragment = BROKEN_SCHEDULES[case]
    ckpt, file, key = _tuned(run, tmp_path, damage)
    out = tmp_path / "s.png"
    code, _, err = run_main(capsys, ["sample", ckpt, "--sampler", "ddim", "--steps", "3", "--spacing", "tuned",
                                     "--num", "4", "--no-progress", "--out", out])
    if fragment is None:
        assert code == 0 and out.exists(), err
        return
    assert_one_line_error(code, err, f"{file}: the tuned schedule {key!r}", fragment, "run scorekit tune again")
    assert not out.exists()


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
    with raises("class 1000000000000 is outside the model's classes 0..1"):
        checkpoint_denoiser(ckpt, y=torch.full((4,), 10 ** 12))
    d = checkpoint_denoiser(ckpt)
    with raises("class 2 is outside the model's classes 0..1"):
        sample(d, torch.zeros(4, 2), condition=2, num_steps=2)
    with raises("label 3 in y is outside 0..2"):       # the network's own check, for direct calls
        d.model(torch.zeros(4, 2), torch.zeros(4), torch.full((4,), 3))
    code, _, err = run_main(capsys, ["sample", run, "--class", "2", "--out", tmp_path / "s.png"])
    assert_one_line_error(code, err, "--class 2 is outside 0..1")
    assert os.listdir(tmp_path) == []


# --- scorekit.sample: schedules, start, and NaN/Inf in the sampler's state -------------------------

BETAS = torch.linspace(1e-4, 0.02, 100, dtype=torch.float64)


def zeros(x, t):
    return torch.zeros_like(x)


@pytest.mark.parametrize("kwargs,fragments", [
    (dict(betas=BETAS.reshape(2, 50)), ["betas must be 1-D (one number per step), got shape (2, 50)"]),
    (dict(betas="abc"), ["betas must be a 1-D sequence of numbers", "str"]),
    (dict(alpha_bar=torch.rand(3, 3)), ["alpha_bar must be 1-D", "(3, 3)"]),
    (dict(betas=BETAS, timesteps=torch.tensor([[99.0, 50.0], [10.0, -1.0]])), ["timesteps must be 1-D", "(2, 2)"]),
    (dict(betas=BETAS, timesteps="abc"), ["timesteps must be a 1-D sequence of times, got str"]),
    (dict(betas=BETAS, timesteps=[99.0, float("inf"), -1.0]), ["timesteps contain NaN or infinite values"]),
    (dict(betas=BETAS, timesteps=[99.0, float("nan"), -1.0]), ["timesteps contain NaN or infinite values"]),
    (dict(betas=BETAS, timesteps=[99.0, 50.0, float("-inf")]), ["end time -inf is before the data time -1"]),
    (dict(betas=BETAS, timesteps=[50.0, 99.0, -1.0]), ["strictly decreasing"]),
    (dict(betas=BETAS, timesteps=[150.0, 50.0, -1.0]), ["model times must lie in [0.0, 99.0]"]),
    (dict(process="ddpm"), ["process must be a scorekit.processes.GaussianProcess", "str"]),
    (dict(betas=BETAS, check_finite="yes"), ["check_finite must be True or False"]),
    (dict(betas=BETAS, callback=3), ["callback must be a function or None, got int"]),
    (dict(betas=BETAS, time_input="1000 t"), ["time_input must be a function or None, got str"]),
])
def test_sample_schedule_arguments(kwargs, fragments):
    with raises(*fragments):
        sample(zeros, torch.zeros(4, 2), num_steps=5, **kwargs)


@pytest.mark.parametrize("x_T,fragments", [
    (torch.zeros(0, 2), ["x_T must have shape (N, ...) with a batch dimension and N >= 1, got (0, 2)"]),
    (torch.zeros(4), ["x_T must have shape (N, ...)", "(4,)"]),
    (torch.zeros(4, 2, dtype=torch.long), ["x_T must be a floating-point tensor, got torch.int64"]),
    ([[0.0, 1.0]], ["x_T must be a torch.Tensor, got list"]),
    (torch.full((2, 2), float("nan")), ["x_T contains NaN or infinite values"]),
])
def test_sample_start_is_checked(x_T, fragments):
    with raises(*fragments):
        sample(zeros, x_T, betas=BETAS, num_steps=5)


def _nan_after(calls: int, value=float("nan")):
    """A model whose output becomes ``value`` from its ``calls``-th call on (counting from 0)."""
    seen = []

    def model(x, t):
        seen.append(1)
        return torch.full_like(x, value) if len(seen) > calls else torch.zeros_like(x)

    return model


def _samplers():
    from scorekit.samplers import SAMPLERS

    return list(SAMPLERS)


@pytest.mark.parametrize("sampler", _samplers())
def test_every_sampler_names_the_evaluation_where_the_model_output_went_non_finite(sampler):
    """Conformance over the registry: a model returning NaN from its 4th call on (evaluation 3)
    gave all-NaN samples without a word; now one error names evaluation 3 and its time."""
    from scorekit.processes import VPSDE

    with raises(f"sampler {sampler!r}: the model output holds NaN at network evaluation 3 (t = ",
                "from a finite state x_t", "check_finite=False"):
        sample(_nan_after(3), torch.zeros(4, 2), process=VPSDE(), sampler=sampler, num_steps=6,
               generator=torch.Generator().manual_seed(0))


def test_the_message_gives_the_time_of_the_evaluation():
    with raises("the model output holds Inf at network evaluation 2 (t = 79)"):
        sample(_nan_after(2, float("inf")), torch.zeros(4, 2), betas=BETAS, num_steps=10)  # 99, 89, 79, ...


def test_a_state_that_diverges_in_a_step_is_reported_as_such():
    """The state goes non-finite between evaluations (here poisoned by the callback after
    evaluation 1, at t = 89) while every model output was finite."""
    def poison(i, t, x, x0):
        if i == 1:
            x.fill_(float("nan"))

    with raises("the state x_t became NaN in the step after network evaluation 1 (t = 89), before "
                "evaluation 2 (t = 79), although every model output so far was finite"):
        sample(zeros, torch.zeros(4, 2), betas=BETAS, num_steps=10, callback=poison)


def test_a_non_finite_final_state_is_reported():
    from scorekit.samplers._common import FiniteStates

    d = FiniteStates(zeros, "ddim")
    d(torch.zeros(2, 2), 0.5)
    with raises("the state x_t became Inf in the step after network evaluation 0 (t = 0.5) (the final state)"):
        d.check_state(torch.tensor([[0.0, float("inf")], [0.0, 0.0]]))


def test_check_finite_false_lets_the_sampler_run_on():
    x = sample(_nan_after(0), torch.zeros(4, 2), betas=BETAS, num_steps=5, check_finite=False)
    assert torch.isnan(x).all()


def test_large_finite_states_are_not_mistaken_for_overflow():
    """A sum of finite float32 values can overflow to Inf: the check then looks at each value."""
    from scorekit.samplers._common import FiniteStates

    big = torch.full((4, 2), 3e38)
    assert not torch.isfinite(big.sum()) and torch.isfinite(big).all()
    d = FiniteStates(lambda x, t: x, "ddim")
    assert d(big, 0.5) is big


def test_learned_variance_evaluations_are_checked_too():
    from scorekit.samplers._common import FiniteStates

    class WithVariance:
        def x0_and_log_variance(self, x, t, s):
            return torch.zeros_like(x), torch.full_like(x, float("nan"))

    d = FiniteStates(WithVariance(), "ddpm")
    with raises("the model log-variance holds NaN at network evaluation 0 (t = 5)"):
        d.x0_and_log_variance(torch.zeros(2, 2), 5, 4)
    assert not hasattr(FiniteStates(zeros, "ddpm"), "x0_and_log_variance")


def test_cli_sample_reports_non_finite_states(run, tmp_path, capsys):
    """A checkpoint whose weights give NaN: one line naming the evaluation, no files written;
    --allow-nonfinite writes the samples (with the warning)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = _copy_checkpoint(run, tmp_path / "c")
    for name in ("model.safetensors", "ema.safetensors"):
        state = load_file(folder / name)
        last = [k for k in state if k.startswith("linear_out") and k.endswith("bias")][0]
        state[last] = torch.full_like(state[last], 1e38)      # finite weights, overflowing output
        save_file(state, folder / name)
    out = tmp_path / "s.png"
    code, _, err = run_main(capsys, ["sample", folder, "--steps", "3", "--num", "4", "--no-progress",
                                     "--sampler", "ddim", "--out", out])
    assert_one_line_error(code, err, "sampler 'ddim'", "network evaluation", "check_finite=False")
    assert not out.exists() and not out.with_suffix(".npz").exists()
    code, _, err = run_main(capsys, ["sample", folder, "--steps", "3", "--num", "4", "--no-progress",
                                     "--sampler", "ddim", "--allow-nonfinite", "--out", out])
    assert code == 0 and "hold NaN or Inf values" in err
    shutil.rmtree(tmp_path / "c")


# --- the range of image data ----------------------------------------------------------------------

def _float_images(tmp_path, lo, hi, name="f.npz", dtype="float32"):
    import numpy as np

    x = np.random.default_rng(1).uniform(lo, hi, size=(6, 1, 8, 8)).astype(dtype)
    np.savez(tmp_path / name, x=x)
    return tmp_path / name, x


def test_float_images_in_0_255_are_refused_with_the_fix(tmp_path):
    """Float images in 0..255 were trained on unscaled (a loss of about 1e4)."""
    path, _ = _float_images(tmp_path, 0, 255)
    with raises(f"npz:{path}: images must be scaled to [-1, 1], but their values lie in [",
                "they look like 0..255 pixel values: load an npz file with scale=255") as err:
        load_dataset(f"npz:{path}")
    assert "--data-option" not in str(err.value)            # Python callers are told the argument


def test_float_images_in_0_255_are_refused_on_the_command_line(tmp_path, capsys):
    path, _ = _float_images(tmp_path, 0, 255)
    out = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", "--data", f"npz:{path}", "--steps", "1", "--no-progress",
                                     "--out", out])
    assert_one_line_error(code, err, "images must be scaled to [-1, 1]", "--data-option scale=255")
    assert "load an npz file with" not in err               # the command line is told the flag
    assert not out.exists()


@pytest.mark.parametrize("scale,lo,hi", [(255, 0, 255), (1, 0, 1), ("255", 0, 255)])
def test_scale_maps_float_data_to_the_unit_range(tmp_path, scale, lo, hi):
    """``scale=s``: ``2 x / s - 1`` computed in float64 and rounded once, so it equals NumPy's
    float64 formula rounded to float32 exactly."""
    import numpy as np

    path, x = _float_images(tmp_path, lo, hi)
    ds = load_dataset(f"npz:{path}", scale=scale)
    expected = (x.astype(np.float64) * 2 / float(scale) - 1).astype(np.float32)
    assert torch.equal(ds.x, torch.from_numpy(expected))
    assert ds.options["scale"] == float(scale)          # recorded: the run's data can be rebuilt


def test_images_in_the_unit_interval_are_accepted_as_they_are(tmp_path):
    """[0, 1] images are off-convention but train (on half the range): taken as they are."""
    path, x = _float_images(tmp_path, 0, 1)
    assert torch.equal(load_dataset(f"npz:{path}").x, torch.from_numpy(x))


@pytest.mark.parametrize("make,fragments", [
    (lambda p: load_dataset(f"npz:{p}", scale=100), ["scale=100 maps [0, 100] to [-1, 1], but the values lie in"]),
    (lambda p: load_dataset(f"npz:{p}", scale=0), ["scale must be a positive finite number"]),
    (lambda p: load_dataset(f"npz:{p}", scale="bright"), ["npz data option scale=bright", "expected a number or null"]),
    (lambda p: __import__("scorekit.data", fromlist=["Dataset"]).Dataset(torch.full((2, 1, 4, 4), 200.0)),
     ["tensor: images must be scaled to [-1, 1], but their values lie in [200, 200]", "x / 127.5 - 1"]),
    (lambda p: __import__("scorekit.data", fromlist=["Dataset"]).Dataset(torch.full((2, 1, 4, 4), -3.0)),
     ["values lie in [-3, -3]", "rescale them"]),
])
def test_bad_scales_and_ranges(tmp_path, make, fragments):
    path, _ = _float_images(tmp_path, 0, 255)
    with raises(*fragments):
        make(path)


def test_scale_is_refused_for_uint8_images_which_are_scaled_already(tmp_path):
    import numpy as np

    np.savez(tmp_path / "u8.npz", x=np.full((2, 1, 4, 4), 255, dtype=np.uint8))
    assert load_dataset(f"npz:{tmp_path / 'u8.npz'}").x.max().item() == 1.0
    with raises("scale applies to float arrays; uint8 images are mapped from 0..255 to [-1, 1] already"):
        load_dataset(f"npz:{tmp_path / 'u8.npz'}", scale=255)


def test_vectors_have_no_fixed_range(tmp_path):
    import numpy as np

    np.savez(tmp_path / "v.npz", x=np.full((4, 3), 1e4, dtype=np.float32))
    assert load_dataset(f"npz:{tmp_path / 'v.npz'}").x.max().item() == 1e4
