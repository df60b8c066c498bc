"""``scorekit train / sample / info`` end to end through ``cli.main``, and every bad input: exit
status 2, one line on standard error, no traceback, no partial files."""
import json
import os
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from scorekit.cli import main
from cli_helpers import assert_one_line_error, run_main
from scorekit.train import list_checkpoints, load_checkpoint, read_metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

POINTS = ["--data", "moons", "--data-option", "n=256", "--model-option", "hidden=32",
          "--model-option", "depth=1", "--batch-size", "16", "--checkpoint-every", "3",
          "--log-every", "1", "--sample-num", "50", "--sample-steps", "4", "--no-progress"]
IMAGES = ["--data", "digits", "--data-option", "stop=64", "--model", "tiny", "--model-option",
          "base_channels=8", "--model-option", "groups=4", "--prediction", "v", "--schedule",
          "cosine", "--batch-size", "8", "--sample-num", "10", "--sample-steps", "3", "--no-progress"]


def listing(folder):
    return sorted(os.listdir(folder))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-D run (6 steps) and an image run (4 steps) trained through the command line."""
    root = tmp_path_factory.mktemp("cli")
    capture = pytest.MonkeyPatch()
    import io
    import sys

    results = {}
    for name, argv in (("points", POINTS + ["--steps", "6"]), ("images", IMAGES + ["--steps", "4"])):
        out, err = io.StringIO(), io.StringIO()
        capture.setattr(sys, "stdout", out)
        capture.setattr(sys, "stderr", err)
        try:
            code = main(["train", *argv, "--out", str(root / name)])
        finally:
            capture.undo()
        results[name] = {"code": code, "run": str(root / name), "stdout": out.getvalue(),
                         "stderr": err.getvalue()}
    results["root"] = root
    return results


# --- help ------------------------------------------------------------------------------------------

def test_help_lists_every_command(capsys):
    code, out, _ = run_main(capsys, ["--help"])
    assert code == 0
    for command in ("demo", "train", "sample", "info"):
        assert f"\n    {command} " in out
    assert "scorekit train --data digits" in out


@pytest.mark.parametrize("command, needles", [
    ("train", ["--data", "--model", "--process", "--prediction", "--weighting", "--steps",
               "--batch-size", "--lr", "--ema", "--out", "--resume", "--seed", "--device",
               "--sample-every", "--checkpoint-every", "--threads", "--grad-accum", "--grad-clip",
               "--mixed-precision", "--label-dropout", "examples:", "metrics.jsonl", "loss.png"]),
    ("sample", ["RUN_OR_CKPT", "--sampler", "--eta", "--variance", "--steps", "--num", "--seed",
                "--batch-size", "--out", "--no-ema", "examples:", ".npz", "NFE"]),
    ("info", ["RUN_OR_CKPT", "examples:"]),
])
def test_command_help(capsys, command, needles):
    code, out, _ = run_main(capsys, [command, "--help"])
    assert code == 0
    for needle in needles:
        assert needle in out, needle


# --- end to end ------------------------------------------------------------------------------------

def test_train_writes_a_complete_run(runs):
    for name, steps, sample_ext in (("points", 6, ".png"), ("images", 4, ".png")):
        r = runs[name]
        assert r["code"] == 0, r["stderr"]
        run = r["run"]
        assert f"trained to step {steps}" in r["stdout"]
        assert "Traceback" not in r["stderr"]
        assert listing(run) == ["checkpoints", "config.json", "latest", "loss.png", "metrics.jsonl",
                                "samples"]
        assert load_checkpoint(run).step == steps
        with open(os.path.join(run, "samples", f"step-{steps:07d}{sample_ext}"), "rb") as fh:
            assert fh.read(8) == PNG_MAGIC
        assert [row["step"] for row in read_metrics(os.path.join(run, "metrics.jsonl"))][-1] == steps
    cfg = json.load(open(os.path.join(runs["images"]["run"], "config.json")))
    assert cfg["prediction_type"] == "v" and cfg["process"]["schedule"] == "cosine"
    assert cfg["model"]["base_channels"] == 8 and cfg["model"]["num_classes"] == 10
    assert cfg["train"]["num_threads"] == 1                   # the command line's default


def test_sample_writes_grid_and_npz_and_reports_nfe(runs, capsys, tmp_path):
    out = tmp_path / "digits.png"
    code, stdout, err = run_main(capsys, ["sample", runs["images"]["run"], "--steps", "4", "--num",
                                          "12", "--batch-size", "5", "--out", out, "--no-progress"])
    assert code == 0, err
    assert "NFE 4 per sample" in stdout and "sampled 12 in" in stdout
    assert out.read_bytes()[:8] == PNG_MAGIC
    saved = np.load(tmp_path / "digits.npz")
    assert saved["x"].shape == (12, 1, 8, 8) and saved["x"].dtype == np.float32
    assert saved["y"].tolist() == [i % 10 for i in range(12)]     # classes in turn
    # deterministic DDIM: the batch size does not change the samples
    code, _, err = run_main(capsys, ["sample", runs["images"]["run"], "--steps", "4", "--num", "12",
                                     "--batch-size", "12", "--out", tmp_path / "again.png",
                                     "--no-progress"])
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "again.npz")["x"], saved["x"], atol=1e-5)


def test_sample_any_sampler_with_its_options_and_raw_weights(runs, capsys, tmp_path):
    ckpt = os.path.join(runs["points"]["run"], "checkpoints", "step-0000003")
    code, stdout, err = run_main(capsys, ["sample", ckpt, "--sampler", "ddpm", "--variance", "large",
                                          "--steps", "5", "--num", "40", "--no-ema", "--class", "1",
                                          "--out", tmp_path / "p.png", "--no-progress"])
    assert code == 0, err
    assert "from step 3" in stdout and "NFE 5" in stdout
    saved = np.load(tmp_path / "p.npz")
    assert saved["x"].shape == (40, 2) and set(saved["y"].tolist()) == {1}
    code, _, err = run_main(capsys, ["sample", runs["points"]["run"], "--sampler", "ddim", "--eta", "1",
                                     "--steps", "5", "--num", "40", "--out", tmp_path / "q.png",
                                     "--no-progress"])
    assert code == 0, err
    assert not np.allclose(np.load(tmp_path / "q.npz")["x"], saved["x"])
    code, _, err = run_main(capsys, ["sample", runs["points"]["run"], "--unconditional", "--steps", "3",
                                     "--num", "10", "--out", tmp_path / "u.png", "--no-progress"])
    assert code == 0, err
    assert "y" not in np.load(tmp_path / "u.npz")                # sampled without labels


def test_sample_with_analytic_variances_uses_the_library_estimate(runs, capsys, tmp_path):
    """--sampler ddpm --variance analytic: the samples are ddpm's with analytic_variances estimated on
    the run's data (100 samples per step, seed + 2) for the same grid, with --class on that class."""
    from scorekit import analytic_variances, ddpm, make_timesteps
    from scorekit.data import dataset_from_config
    from scorekit.train.checkpoint import checkpoint_denoiser

    ckpt = load_checkpoint(runs["points"]["run"])
    data = dataset_from_config(ckpt.data_config)
    grid = make_timesteps(ckpt.process, 6)
    for extra, y, x in (([], torch.arange(10) % 2, data.x), (["--class", "1"], torch.ones(10, dtype=torch.long),
                                                            data.x[data.y == 1])):
        out = tmp_path / f"a{len(extra)}.png"
        code, stdout, err = run_main(capsys, ["sample", runs["points"]["run"], "--sampler", "ddpm", "--variance",
                                              "analytic", "--steps", "6", "--num", "10", "--seed", "4",
                                              "--out", out, "--no-progress", *extra])
        assert code == 0, err
        assert "NFE 6 per sample" in stdout
        labels = None if not extra else torch.ones(100, dtype=torch.long)
        table = analytic_variances(checkpoint_denoiser(ckpt, y=labels), ckpt.process, x, num_samples=100,
                                   timesteps=grid, generator=torch.Generator().manual_seed(6))
        x_T = ckpt.process.prior_sample((10, 2), generator=torch.Generator().manual_seed(4))
        with torch.no_grad():
            want = ddpm(checkpoint_denoiser(ckpt, y=y), ckpt.process, x_T, grid, variance=table,
                        generator=torch.Generator().manual_seed(5))
        np.testing.assert_allclose(np.load(out.with_suffix(".npz"))["x"], want.numpy(), rtol=1e-5, atol=1e-6)


def test_adaptive_sampler_reports_its_own_steps(runs, capsys, tmp_path):
    """ode_adaptive without --steps: the summary says the steps were adaptive and gives the NFE the
    solver made, which is not the default step count."""
    code, stdout, err = run_main(capsys, ["sample", runs["points"]["run"], "--sampler", "ode_adaptive", "--num", "8",
                                          "--rtol", "1e-3", "--atol", "1e-3", "--out", tmp_path / "o.png",
                                          "--no-progress"])
    assert code == 0, err
    assert "with ode_adaptive (adaptive steps, NFE " in stdout and "50 steps" not in stdout


@pytest.mark.parametrize("command", ["sample", "tune"])
def test_sampler_option_help_lists_values_defaults_and_samplers(capsys, command):
    """Every --OPTION of a sampler says what values it takes, which samplers use it and their defaults
    (generated from scorekit.samplers.options and the samplers' signatures)."""
    code, out, _ = run_main(capsys, [command, "--help"])
    assert code == 0
    text = " ".join(out.split())
    assert "see its documentation" not in text
    for needle in ("--eta ETA a number >= 0 (0: deterministic), for ddim (default 0.0), dpmpp_2m_sde (default 1.0)",
                   "--method METHOD one of RK45, DOP853, RK23, for ode_adaptive (default RK45)",
                   "one of taylor, midpoint, for dpmpp_2m (default midpoint)", "one of bh1, bh2, for unipc (default bh2)",
                   "--order ORDER one of 1, 2, 3, for unipc (default 2), deis (default 3); one of 1, 2, 3, 4, "
                   "for ipndm (default 4)"):
        assert needle in text, needle


def test_default_steps_fit_a_short_chain(capsys, tmp_path):
    """A DDPM of T = 10 steps: train's sample grids and sample itself default to 10 steps (50 is more
    than the chain has), while a given count above T is refused by both alike (test above)."""
    run = tmp_path / "t10"
    code, _, err = run_main(capsys, ["train", "--data", "moons", "--data-option", "n=64", "--model-option",
                                     "hidden=16", "--model-option", "depth=1", "--steps", "2", "--diffusion-steps",
                                     "10", "--sample-num", "5", "--no-progress", "--out", run])
    assert code == 0, err
    code, out, err = run_main(capsys, ["sample", run, "--num", "5", "--out", tmp_path / "s.png", "--no-progress"])
    assert code == 0, err
    assert "with ddim (10 steps, NFE 10 per sample)" in out


def test_simple_ve_trains_eps_from_unit_loss_and_warns_of_its_coarsest_detail(capsys, tmp_path):
    """--process simple_ve without --prediction trains eps (a unit-variance target: an untrained
    network's loss is about 1, where v's would be about 1 + T Var[x_0] / 2 ~ 100 on moons) and warns
    in one line why its samples lose detail; --prediction v is still taken when asked for."""
    run = tmp_path / "sve"
    code, _, err = run_main(capsys, ["train", "--data", "moons", "--data-option", "n=64", "--model-option",
                                     "hidden=16", "--model-option", "depth=1", "--steps", "2", "--log-every", "1",
                                     "--process", "simple_ve", "--no-progress", "--out", run])
    assert code == 0, err
    warnings = [l for l in err.splitlines() if "warning:" in l]
    assert len(warnings) == 1 and "SimpleVE's smallest noise level sigma/alpha = 1" in warnings[0], err
    assert load_checkpoint(str(run)).prediction_type == "eps"
    first = read_metrics(os.path.join(run, "metrics.jsonl"))[0]["loss"]
    assert first < 3, first
    code, _, err = run_main(capsys, ["train", "--data", "moons", "--data-option", "n=64", "--steps", "1",
                                     "--process", "simple_ve", "--prediction", "v", "--no-progress",
                                     "--out", tmp_path / "v"])
    assert code == 0 and load_checkpoint(str(tmp_path / "v")).prediction_type == "v"


def train_on_pets(capsys, tmp_path, *extra):
    """A one-step run on an image folder of 8x8 colour images in the classes cat and dog."""
    from PIL import Image

    rng = np.random.RandomState(0)
    for name in ("cat", "dog"):
        (tmp_path / "pets" / name).mkdir(parents=True)
        for i in range(4):
            Image.fromarray(rng.randint(0, 256, (8, 8, 3)).astype(np.uint8)).save(tmp_path / "pets" / name / f"{i}.png")
    run = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", "--data", f"folder:{tmp_path / 'pets'}", "--model", "tiny",
                                     "--model-option", "base_channels=8", "--model-option", "groups=4",
                                     "--batch-size", "4", "--steps", "1", "--sample-num", "2", "--sample-steps", "2",
                                     "--no-progress", "--out", run, *extra])
    assert code == 0, err
    return run


def test_no_progress_hides_the_data_loading_bar(capsys, tmp_path, monkeypatch):
    """With a loading bar for every folder (PROGRESS_MIN_FILES = 0), --no-progress hides it in train
    (which still logs its one line), nll and sample --variance analytic (which reload the run's data)."""
    from scorekit.data import images

    monkeypatch.setattr(images, "PROGRESS_MIN_FILES", 0)
    run = train_on_pets(capsys, tmp_path)
    code, _, err = run_main(capsys, ["train", "--out", run, "--resume", "--steps", "2", "--no-progress"])
    assert code == 0 and len(err.splitlines()) == 1 and "loading" not in err, err
    code, _, err = run_main(capsys, ["nll", run, "--num", "2", "--no-progress"])
    assert code == 0 and err == "", err
    code, _, err = run_main(capsys, ["sample", run, "--sampler", "ddpm", "--variance", "analytic", "--steps", "2",
                                     "--num", "2", "--out", tmp_path / "s.png", "--no-progress"])
    assert code == 0 and err == "", err
    code, _, err = run_main(capsys, ["nll", run, "--num", "2"])
    assert code == 0 and "loading pets" in err        # the bar itself is there without the flag


def test_classes_by_name(capsys, tmp_path):
    """A run on an image folder stores its sub-folders as class names: info lists them, --class takes
    a name or a comma-separated list (sampled in turn), and a wrong name lists the valid ones."""
    run = train_on_pets(capsys, tmp_path)
    code, out, err = run_main(capsys, ["info", run])
    assert code == 0 and "classes:    0 cat, 1 dog" in out, out
    for spec, want in (("dog", [1, 1, 1, 1, 1]), ("dog,cat", [1, 0, 1, 0, 1]), ("0,dog", [0, 1, 0, 1, 0])):
        code, _, err = run_main(capsys, ["sample", run, "--class", spec, "--steps", "2", "--num", "5",
                                         "--out", tmp_path / "s.png", "--no-progress"])
        assert code == 0, err
        assert np.load(tmp_path / "s.npz")["y"].tolist() == want
    code, _, err = run_main(capsys, ["sample", run, "--class", "cta", "--out", tmp_path / "s.png", "--no-progress"])
    assert_one_line_error(code, err, "--class 'cta' is not a class of this model", "its classes are: 0 cat, 1 dog")


def test_every_variance_name_is_accepted_by_sample_and_nll(capsys):
    """One list of reverse-variance names (scorekit.variances.VARIANCES) for both commands' help and
    checks."""
    from scorekit.variances import VARIANCES

    for command in ("sample", "nll"):
        code, out, _ = run_main(capsys, [command, "--help"])
        assert code == 0
        help_text = " ".join(out.split())
        assert ", ".join(VARIANCES) in help_text or "{" + ",".join(VARIANCES) + "}" in help_text, command


def test_info_describes_the_run(runs, capsys):
    code, out, err = run_main(capsys, ["info", runs["images"]["run"]])
    assert code == 0, err
    for needle in ("checkpoint:", "step-0000004", "unet preset tiny", "parameters", "DDPM(schedule='cosine'",
                   "prediction: v", "digits", "64 samples of shape (1, 8, 8)", "10 classes",
                   "EMA:", "decay 0.999", "4 updates", "model.safetensors", "ema.safetensors",
                   "kB", "last loss:"):
        assert needle in out, needle
    code, out, _ = run_main(capsys, ["info", os.path.join(runs["points"]["run"], "checkpoints",
                                                          "step-0000003")])
    assert code == 0 and "mlp preset mlp" in out and "(step 3)" in out


def test_train_resume_continues_through_the_command_line(runs, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["points"]["run"], run)
    code, out, err = run_main(capsys, ["train", "--out", run, "--resume", "--steps", "9",
                                       "--no-progress"])
    assert code == 0, err
    assert "resuming at step 6 of 9" in err and "trained to step 9" in out
    assert [s for s, _ in list_checkpoints(str(run))] == [3, 6, 9]
    assert [r["step"] for r in read_metrics(str(run / "metrics.jsonl"))] == list(range(1, 10))
    code, out, err = run_main(capsys, ["train", "--out", run, "--resume", "--no-progress"])
    assert code == 0 and "already at step 9: nothing to train" in out
    code, _, err = run_main(capsys, ["train", "--out", run, "--resume", "--prediction", "x0"])
    assert_one_line_error(code, err, "cannot --resume", "--prediction 'v' -> 'x0'",
                          "only --checkpoint-every", "--lr", "--steps", "--warmup")
    assert "lr_schedule" not in err and "warmup_steps" not in err and "out_dir" not in err
    code, _, err = run_main(capsys, ["train", *POINTS, "--steps", "2", "--out", run])
    assert_one_line_error(code, err, "already holds a training run", "--resume")


def test_train_max_minutes_stops_with_a_checkpoint(runs, capsys, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(runs["points"]["run"], run)
    code, out, err = run_main(capsys, ["train", "--out", run, "--resume", "--steps", "9",
                                       "--max-minutes", "1e-9", "--no-progress"])
    assert code == 0, err
    assert "stopped at step 7 of 9 after --max-minutes" in out
    assert [s for s, _ in list_checkpoints(str(run))][-1] == 7
    code, _, err = run_main(capsys, ["train", "--out", run, "--resume", "--max-minutes", "0"])
    assert code == 2 and "--max-minutes" in err


# --- bad inputs ---------------------------------------------------------------------------------------

@pytest.fixture
def bad_checkpoints(runs, tmp_path):
    """Copies of a checkpoint made bad in one way each."""
    src = os.path.join(runs["points"]["run"], "checkpoints", "step-0000006")
    made = {}
    foreign = tmp_path / "foreign"                    # an image network's weights, 2-D config
    shutil.copytree(src, foreign)
    img = os.path.join(runs["images"]["run"], "checkpoints", "step-0000004")
    shutil.copy(os.path.join(img, "model.safetensors"), foreign / "model.safetensors")
    made["foreign"] = foreign
    reshaped = tmp_path / "reshaped"                  # the same names, one shape changed
    shutil.copytree(src, reshaped)
    w = load_file(str(reshaped / "ema.safetensors"))
    w["linear_out.weight"] = torch.zeros(3, 32)
    save_file(w, str(reshaped / "ema.safetensors"))
    made["reshaped"] = reshaped
    corrupt = tmp_path / "corrupt"
    shutil.copytree(src, corrupt)
    (corrupt / "config.json").write_text('{"format": "scorekit.run", "model": {')
    made["corrupt"] = corrupt
    (tmp_path / "empty").mkdir()
    made["empty"] = tmp_path / "empty"
    made["file"] = tmp_path / "file.txt"
    made["file"].write_text("hello")
    return made


@pytest.mark.parametrize("which, fragments", [
    ("missing", ["does not exist"]),
    ("empty", ["is not a scorekit run or checkpoint folder"]),
    ("file", ["is a file"]),
    ("foreign", ["model.safetensors does not fit the model", "weights belong to another model"]),
    ("reshaped", ["ema.safetensors does not fit the model", "'linear_out.weight' has shape (3, 32)"]),
    ("corrupt", ["config.json", "is corrupt"]),
])
@pytest.mark.parametrize("command", ["sample", "info"])
def test_bad_checkpoints_give_one_line(capsys, tmp_path, bad_checkpoints, which, fragments, command):
    path = bad_checkpoints.get(which, tmp_path / "missing")
    out_png = tmp_path / "out.png"
    argv = [command, path] + (["--out", out_png, "--no-progress"] if command == "sample" else [])
    before = listing(tmp_path)
    code, _, err = run_main(capsys, argv)
    assert_one_line_error(code, err, *fragments)
    assert listing(tmp_path) == before                 # nothing written, no temporary files


@pytest.mark.parametrize("extra, fragments", [
    (["--sampler", "heunish"], ["invalid choice: 'heunish'"]),
    (["--sampler", "ddim_invert"], ["ddim_invert maps data to noise, so it is not a sampler", "scorekit.invert"]),
    (["--sampler", "ddpm", "--eta", "0.5"], ["sampler 'ddpm' has no option --eta", "--variance"]),
    (["--sampler", "ddpm", "--variance", "huge"], ["variance"]),
    (["--class", "2"], ["--class 2 is outside 0..1"]),
    (["--steps", "2000"], ["--steps 2000 is more than the model's 1000 diffusion steps"]),
    (["--sampler", "ode_adaptive", "--steps", "20"], ["ode_adaptive chooses its own steps", "drop --steps"]),
    (["--sampler", "ode_adaptive", "--spacing", "karras"], ["ode_adaptive chooses its own steps", "drop --spacing"]),
    (["--sampler", "unipc", "--variant", "midpoint"], ["--variant midpoint is not an option of unipc",
                                                        "choose one of bh1, bh2"]),
    (["--sampler", "deis", "--order", "4"], ["--order 4 is not an option of deis", "choose one of 1, 2, 3"]),
    (["--steps", "0"], ["--steps must be from 1"]),
    (["--out", "{tmp}/samples.jpg"], ["must name a .png file"]),
    (["--out", "{tmp}/no/such/folder/s.png"], ["does not exist"]),
])
def test_bad_sample_options_give_one_line_and_no_files(capsys, tmp_path, runs, extra, fragments):
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["sample", runs["points"]["run"], "--out", tmp_path / "s.png", "--num", "8",
            "--no-progress"] + extra
    code, _, err = run_main(capsys, argv)
    assert_one_line_error(code, err, *fragments)
    assert listing(tmp_path) == []


def write_npz(path, x, y=None):
    arrays = {"x": x} if y is None else {"x": x, "y": y}
    np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("make, extra, fragments", [
    (lambda d: write_npz(d / "nan.npz", np.where(np.arange(64 * 2).reshape(64, 2) == 77, np.nan,
                                                  0.5).astype(np.float32)),
     ["--model", "mlp"], ["NaN at index 38", "nan.npz"]),
    (lambda d: write_npz(d / "odd.npz", np.zeros((16, 1, 30, 30), np.float32)),
     ["--model", "tiny"], ["30x30", "multiple"]),
    (lambda d: write_npz(d / "grey.npz", np.zeros((16, 1, 8, 8), np.float32)),
     ["--model", "tiny", "--model-option", "in_channels=3"], ["1 channel", "takes 3"]),
    (lambda d: write_npz(d / "points.npz", np.zeros((16, 2), np.float32)),
     ["--model", "tiny"], ["U-Net for images", "--model mlp"]),
    (lambda d: d / "absent.npz", [], ["absent.npz"]),
    (None, ["--data", "nonsense"], ["unknown dataset 'nonsense'"]),
    (None, ["--data", "moons", "--batch-size", "10", "--grad-accum", "3"], ["--batch-size 10 must be a multiple of --grad-accum 3"]),
    (None, ["--data", "moons", "--model", "mlp", "--model-option", "depth=0"], ["depth"]),
    (None, ["--data", "moons", "--lr", "-1"], ["--lr must be a positive"]),
    (None, ["--data", "moons", "--sample-steps", "5000"],
     ["--sample-steps", "5000 is more than the model's 1000 diffusion steps"]),
    (None, ["--data", "moons", "--process", "simple_ve", "--diffusion-steps", "10", "--sample-steps", "11"],
     ["--sample-steps", "11 is more than the model's 10 diffusion steps"]),
    (None, ["--data", "moons", "--mixed-precision", "fp16"], ["fp16", "CUDA"]),
    (None, ["--data", "moons", "--device", "cuda"], ["CUDA is not available"]),
])
def test_bad_training_inputs_give_one_line_and_no_run_folder(capsys, tmp_path, make, extra, fragments):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    argv = ["train", "--steps", "2", "--out", tmp_path / "run", "--no-progress"]
    if make is not None:
        argv += ["--data", f"npz:{make(data_dir)}"]
    code, _, err = run_main(capsys, argv + extra)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "run").exists()


def test_training_that_diverges_reports_the_last_good_checkpoint(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, err = run_main(capsys, ["train", "--data", "moons", "--data-option", "n=64",
                                     "--model-option", "hidden=16", "--model-option", "depth=1",
                                     "--lr", "1e12", "--warmup", "0", "--grad-clip", "0",
                                     "--prediction", "x0", "--checkpoint-every", "1", "--steps", "5",
                                     "--out", run, "--no-progress"])
    # the run had started (its first line says so); the error is one line after it
    assert code == 2 and "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("scorekit train: moons")
    assert lines[1].startswith("scorekit: error: gradient norm became infinite at step 2")
    assert "the last good checkpoint is at" in lines[1] and "step-0000001" in lines[1]
    assert load_checkpoint(str(run)).step == 1


def test_out_that_is_a_file(capsys, tmp_path):
    target = tmp_path / "taken"
    target.write_text("x")
    code, _, err = run_main(capsys, ["train", "--data", "moons", "--out", target, "--no-progress"])
    assert_one_line_error(code, err, "is an existing file")
    assert target.read_text() == "x"
