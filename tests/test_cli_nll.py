"""``scorekit nll`` end to end through ``cli.main``: it reports what the library computes on the
same batches, detects 8-bit data, evaluates held-out options, and refuses bad input in one line."""
import io
import json
import sys

import numpy as np
import pytest
import torch

from scorekit.cli import main
from cli_helpers import assert_one_line_error, run_main
from scorekit.data import dataset_from_config
from scorekit.likelihood import ode_likelihood
from scorekit.train import load_checkpoint
from scorekit.train.checkpoint import checkpoint_denoiser

POINTS = ["--data", "moons", "--data-option", "n=64", "--model-option", "hidden=16",
          "--model-option", "depth=1", "--batch-size", "16", "--steps", "3", "--sample-num", "10",
          "--sample-steps", "2", "--no-progress"]


def _train(argv, out):
    stdout, stderr = io.StringIO(), io.StringIO()
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        code = main(["train", *argv, "--out", str(out)])
    finally:
        sys.stdout, sys.stderr = saved
    assert code == 0, stderr.getvalue()
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A 2-D run on moons and an image run on 8-bit 8x8 images stored as uint8 in an npz."""
    root = tmp_path_factory.mktemp("nll")
    images = np.random.RandomState(0).randint(0, 256, size=(16, 1, 8, 8)).astype(np.uint8)
    np.savez(root / "images.npz", x=images)
    image_args = ["--data", f"npz:{root / 'images.npz'}", "--model", "tiny", "--model-option",
                  "base_channels=8", "--model-option", "groups=4", "--batch-size", "4", "--steps", "2",
                  "--sample-num", "2", "--sample-steps", "2", "--no-progress"]
    return {"points": _train(POINTS, root / "points"), "images": _train(image_args, root / "images"),
            "vp": _train([*POINTS, "--process", "vp"], root / "vp"), "root": root}


def test_ode_nll_reports_what_the_library_computes(runs, capsys, tmp_path):
    out = tmp_path / "nll.json"
    code, stdout, err = run_main(capsys, ["nll", runs["points"], "--num", "12", "--batch-size", "8",
                                          "--no-progress", "--seed", "3", "--out", out])
    assert code == 0, err
    assert "12 samples of moons (continuous data, 2 dims, given their labels)" in stdout and "ode: " in stdout
    assert "bits/dim" in stdout and "NFE" in stdout
    report = json.loads(out.read_text())
    r = report["results"]["ode"]
    assert report["num"] == 12 and report["data_bits"] is None and r["batches"] == 2
    assert r["mean_bpd"] == pytest.approx(np.mean(r["bits_per_dim"]))
    assert r["stderr_bpd"] == pytest.approx(np.std(r["bits_per_dim"], ddof=1) / np.sqrt(12))
    # the same numbers from the library, batch by batch with one generator
    ckpt = load_checkpoint(runs["points"])
    data = dataset_from_config(ckpt.data_config)
    assert report["conditional"] and ckpt.num_classes == 2
    x, y = data.x[:12], data.y[:12]
    g = torch.Generator().manual_seed(3)
    expected = torch.cat([ode_likelihood(checkpoint_denoiser(ckpt, y=y[lo:lo + 8]), ckpt.process, x[lo:lo + 8],
                                         generator=g).bits_per_dim for lo in (0, 8)])
    assert np.allclose(r["bits_per_dim"], expected.numpy(), rtol=1e-6, atol=1e-6)
    assert f"{r['mean_bpd']:.4f} +- {r['stderr_bpd']:.4f} bits/dim" in stdout


def test_data_options_select_other_samples_and_both_methods_run(runs, capsys, tmp_path):
    out = tmp_path / "both.json"
    code, stdout, err = run_main(capsys, ["nll", runs["points"], "--num", "4", "--data-option", "seed=1",
                                          "--method", "both", "--divergence", "exact", "--no-progress",
                                          "--out", out])
    assert code == 0, err
    assert "ode: " in stdout and "elbo: " in stdout
    report = json.loads(out.read_text())
    assert report["data"]["seed"] == 1 and set(report["results"]) == {"ode", "elbo"}
    ckpt = load_checkpoint(runs["points"])
    x_default = dataset_from_config(ckpt.data_config).x[:4]
    x_held_out = dataset_from_config({**ckpt.data_config, "seed": 1}).x[:4]
    assert not torch.equal(x_default, x_held_out)
    assert all(np.isfinite(report["results"][m]["bits_per_dim"]).all() for m in ("ode", "elbo"))


def test_8bit_images_are_dequantised(runs, capsys, tmp_path):
    out = tmp_path / "img.json"
    code, stdout, err = run_main(capsys, ["nll", runs["images"], "--num", "3", "--no-progress", "--out", out])
    assert code == 0, err
    assert "(8-bit data, 64 dims)" in stdout
    report = json.loads(out.read_text())
    assert report["data_bits"] == 8
    # the images are uniform on the 256 levels: entropy 8 bits/dim, a floor for any model's
    # expected code length (here the dequantised bound) -- a continuous density has no such floor
    r = report["results"]["ode"]
    assert r["mean_bpd"] > 8 - 4 * r["stderr_bpd"]


@pytest.mark.parametrize("extra,fragments", [
    (["--data", "digits"], ["holds samples of shape (1, 8, 8)", "the model takes (2,)"]),
    (["--data-bits", "8"], ["--data-bits 8", "not on the 256 levels"]),
    (["--data-option", "colour=2"], ["unknown moons data option colour"]),
    (["--divergence", "trace"], ["invalid choice: 'trace'"]),
    (["--method", "elbo", "--variance", "tiny"], ["--variance", "invalid choice: 'tiny'", "analytic"]),
    (["--method", "elbo", "--elbo-steps", "0"], ["--elbo-steps must be from 1"]),
    (["--method", "elbo", "--variance", "learned"], ["--variance learned needs a model trained with --variance learned"]),
    (["--num", "0"], ["--num must be from 1"]),
    (["--t-eps=-5"], ["t_eps=-5.0 must be a time with sigma > 0"]),
    (["--t-eps", "nan"], ["t_eps=nan must be a time with sigma > 0"]),
    (["--method", "elbo", "--rtol", "1e-3", "--t-eps", "0.5"],
     ["--method elbo does not use --rtol, --t-eps; they are for --method ode (or both)"]),
    (["--elbo-steps", "10"], ["--method ode does not use --elbo-steps; it is for --method elbo (or both)"]),
])
def test_bad_input_gives_one_line(runs, capsys, extra, fragments):
    code, _, err = run_main(capsys, ["nll", runs["points"], "--num", "2", "--no-progress", *extra])
    assert_one_line_error(code, err, *fragments)


def test_bad_paths_give_one_line(runs, capsys, tmp_path):
    code, _, err = run_main(capsys, ["nll", tmp_path / "missing"])
    assert_one_line_error(code, err)
    code, _, err = run_main(capsys, ["nll", runs["points"], "--out", tmp_path])
    assert_one_line_error(code, err, "is a folder")
    code, _, err = run_main(capsys, ["nll", runs["points"], "--out", tmp_path / "no" / "x.json"])
    assert_one_line_error(code, err, "does not exist")


def test_help_lists_nll(capsys):
    code, out, _ = run_main(capsys, ["--help"])
    assert code == 0 and "\n    nll " in out
    code, out, _ = run_main(capsys, ["nll", "--help"])
    for flag in ("--data", "--data-option", "--method", "--num", "--batch-size", "--data-bits",
                 "--divergence", "--probe", "--num-probes", "--rtol", "--atol", "--t-eps", "--out"):
        assert flag in out


def test_elbo_of_a_continuous_process_uses_the_documented_chain(runs, capsys, tmp_path):
    """A VP-SDE run: --method elbo evaluates chain_timesteps (1000 steps uniform in log-SNR, or
    --elbo-steps of them), and reports what the library computes on the same batches."""
    from scorekit.likelihood import elbo
    from scorekit.timesteps import DEFAULT_CHAIN_STEPS, chain_timesteps

    ckpt = load_checkpoint(runs["vp"])
    data = dataset_from_config(ckpt.data_config)
    x, y = data.x[:6], data.y[:6]
    for extra, steps in (([], DEFAULT_CHAIN_STEPS), (["--elbo-steps", "20"], 20)):
        out = tmp_path / f"elbo{steps}.json"
        code, stdout, err = run_main(capsys, ["nll", runs["vp"], "--method", "elbo", "--num", "6", "--batch-size",
                                              "4", "--seed", "2", "--no-progress", "--out", out, *extra])
        assert code == 0, err
        assert f"elbo: " in stdout and f"(bound, {steps} steps, variance small); NFE {steps} per batch" in stdout
        report = json.loads(out.read_text())
        assert report["elbo_options"] == {"variance": "small", "steps": steps, "strata": None}
        g = torch.Generator().manual_seed(2)
        grid = chain_timesteps(ckpt.process, steps)
        with torch.no_grad():
            want = torch.cat([elbo(checkpoint_denoiser(ckpt, y=y[lo:lo + 4]), ckpt.process, x[lo:lo + 4],
                                   data_bits=None, timesteps=grid, generator=g).total_bpd for lo in (0, 4)])
        assert np.allclose(report["results"]["elbo"]["bits_per_dim"], want.numpy(), rtol=1e-6, atol=1e-6)


def test_sampled_elbo_reports_what_the_library_computes(runs, capsys, tmp_path):
    """--elbo-strata M: M + 1 network evaluations per batch, the values of
    likelihood.sampled_elbo on the same batches with the same generator; --variance analytic (a
    whole-chain estimate) is refused in one line."""
    from scorekit.likelihood.elbo import sampled_elbo
    from scorekit.timesteps import chain_timesteps

    ckpt = load_checkpoint(runs["vp"])
    data = dataset_from_config(ckpt.data_config)
    x, y = data.x[:6], data.y[:6]
    out = tmp_path / "sampled.json"
    code, stdout, err = run_main(capsys, ["nll", runs["vp"], "--method", "elbo", "--elbo-strata", "7",
                                          "--variance", "large", "--num", "6", "--batch-size", "4", "--seed",
                                          "5", "--no-progress", "--out", out])
    assert code == 0, err
    assert "variance large, sampled in 7 strata); NFE 8 per batch" in stdout
    report = json.loads(out.read_text())
    assert report["elbo_options"]["strata"] == 7
    g = torch.Generator().manual_seed(5)
    grid = chain_timesteps(ckpt.process, None)
    want = torch.cat([sampled_elbo(checkpoint_denoiser(ckpt, y=y[lo:lo + 4]), ckpt.process, x[lo:lo + 4],
                                   strata=7, variances=("large",), data_bits=None, timesteps=grid,
                                   generator=g)["large"].total_bpd for lo in (0, 4)])
    assert np.allclose(report["results"]["elbo"]["bits_per_dim"], want.numpy(), rtol=1e-6, atol=1e-6)
    code, _, err = run_main(capsys, ["nll", runs["vp"], "--method", "elbo", "--elbo-strata", "7", "--variance",
                                     "analytic", "--no-progress"])
    assert_one_line_error(code, err, "--elbo-strata needs --variance small")


def test_both_prints_what_it_could_compute(runs, capsys, tmp_path):
    """--method both: a method that fails is reported in one line beside the other's result (exit 0,
    recorded in the JSON); if both fail the command fails in one line naming both reasons."""
    out = tmp_path / "both.json"
    code, stdout, err = run_main(capsys, ["nll", runs["vp"], "--method", "both", "--variance", "learned",
                                          "--num", "3", "--no-progress", "--out", out])
    assert code == 0, err
    lines = stdout.splitlines()
    assert any(l.startswith("  ode: ") and "bits/dim" in l for l in lines), stdout
    assert [l for l in lines if l.startswith("  elbo: ")] == [
        "  elbo: not computed: --variance learned needs a model trained with --variance learned (this one "
        "has no variance head)"]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ode"} and "variance head" in report["not_computed"]["elbo"]
    code, _, err = run_main(capsys, ["nll", runs["vp"], "--method", "both", "--variance", "learned",
                                     "--t-eps=-5", "--num", "3", "--no-progress"])
    assert_one_line_error(code, err, "--method ode: t_eps=-5.0", "--method elbo: --variance learned needs a model")
