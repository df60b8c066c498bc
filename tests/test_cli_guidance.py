"""``scorekit sample`` with classifier-free and classifier guidance, and ``train --objective classifier``.

The exact identities of guidance are proven in test_guidance.py on labelled mixtures; here the
command line must pass them through unchanged: w = 1 is the conditional model and w = 0 the
unconditional one (the same samples as --class and --unconditional, from the same seed), a
classifier scale of 0 leaves the model as it is, and every bad combination is one clear line."""
import io
import os
import sys

import numpy as np
import pytest

from cli_helpers import assert_one_line_error, run_main
from scorekit.cli import main

SMALL = ["--data-option", "n=64", "--model-option", "hidden=16", "--model-option", "depth=1",
         "--batch-size", "8", "--steps", "2", "--checkpoint-every", "2", "--sample-every", "0", "--no-progress"]


def _train(out, *args):
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "stdout", io.StringIO())
    mp.setattr(sys, "stderr", io.StringIO())
    try:
        code = main(["train", *args, *SMALL, "--out", str(out)])
    finally:
        mp.undo()
    assert code == 0
    return str(out)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A class-conditional 2-D model, a classifier of the same data and process, one of another
    process, and an unconditional model."""
    root = tmp_path_factory.mktemp("guidance")
    return {
        "model": _train(root / "model", "--data", "moons"),
        "classifier": _train(root / "clf", "--data", "moons", "--objective", "classifier"),
        "vp_classifier": _train(root / "clf-vp", "--data", "moons", "--objective", "classifier",
                                "--process", "vp"),
        "unconditional": _train(root / "uncond", "--data", "swiss_roll"),
        "no_dropout": _train(root / "no-dropout", "--data", "moons", "--label-dropout", "0"),
    }


def samples(capsys, tmp_path, name, *args):
    out = tmp_path / f"{name}.png"
    code, stdout, err = run_main(capsys, ["sample", *args, "--num", "12", "--seed", "3", "--no-progress",
                                          "--out", out])
    assert code == 0, err
    return np.load(tmp_path / f"{name}.npz")["x"], stdout


def test_cfg_weight_one_is_the_conditional_model_and_zero_the_unconditional(runs, tmp_path, capsys):
    model = runs["model"]
    cond, _ = samples(capsys, tmp_path, "c", model, "--class", "1")
    uncond, _ = samples(capsys, tmp_path, "u", model, "--unconditional")
    w1, out = samples(capsys, tmp_path, "w1", model, "--class", "1", "--guidance-scale", "1")
    w0, _ = samples(capsys, tmp_path, "w0", model, "--class", "1", "--guidance-scale", "0")
    w3, out3 = samples(capsys, tmp_path, "w3", model, "--class", "1", "--guidance-scale", "3")
    np.testing.assert_allclose(w1, cond, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(w0, uncond, rtol=1e-5, atol=1e-6)
    assert "NFE 50 per sample, each on the conditional and unconditional batch together" in out3
    assert (np.load(tmp_path / "w3.npz")["y"] == 1).all()


def test_cfg_options_thresholding_and_other_samplers(runs, tmp_path, capsys):
    x, out = samples(capsys, tmp_path, "opts", runs["model"], "--class", "0", "--guidance-scale", "4",
                     "--guidance-interval", "0.1,5", "--guidance-rescale", "0.7", "--threshold", "0.99",
                     "--threshold-max", "3", "--sampler", "dpmpp_2m", "--steps", "8")
    assert np.isfinite(x).all() and "NFE 8 per sample" in out


def test_classifier_guidance(runs, tmp_path, capsys):
    model, clf = runs["model"], runs["classifier"]
    plain, _ = samples(capsys, tmp_path, "plain", model, "--class", "1")
    zero, _ = samples(capsys, tmp_path, "zero", model, "--class", "1", "--classifier", clf,
                      "--classifier-scale", "0")
    np.testing.assert_allclose(zero, plain, rtol=1e-5, atol=1e-6)
    guided, out = samples(capsys, tmp_path, "cg", model, "--class", "1", "--classifier", clf,
                          "--classifier-scale", "20")
    assert "50 classifier gradients" in out and np.isfinite(guided).all()


def test_classifier_guidance_of_an_unconditional_model_takes_the_classifiers_classes(runs, tmp_path, capsys):
    # the swiss roll has no labels, the moons classifier two classes: the shapes agree (2-D points)
    x, out = samples(capsys, tmp_path, "u-cg", runs["unconditional"], "--classifier", runs["classifier"],
                     "--class", "1", "--sampler", "ddim", "--steps", "5")
    assert "classifier gradients" in out
    code, _, err = run_main(capsys, ["sample", runs["unconditional"], "--classifier", runs["classifier"],
                                     "--class", "2", "--out", tmp_path / "x.png"])
    assert_one_line_error(code, err, "--class 2 is outside 0..1")


@pytest.mark.parametrize("args,fragments", [
    (["--class", "1", "--guidance-scale", "nan"], ["--guidance-scale must be a finite number"]),
    (["--class", "1", "--classifier-scale", "inf", "--classifier", "CLF"], ["--classifier-scale must be a finite"]),
    (["--class", "3", "--guidance-scale", "2"], ["--class 3 is outside 0..1"]),
    (["--unconditional", "--guidance-scale", "2"], ["guidance steers towards a class"]),
    (["--class", "1", "--classifier-scale", "2"], ["--classifier-scale needs --classifier RUN"]),
    (["--class", "1", "--classifier", "MODEL"], ["not a noise-aware classifier", "--objective classifier"]),
    (["--class", "1", "--classifier", "VP"], ["another process"]),
    (["--class", "1", "--guidance-interval", "3,1", "--guidance-scale", "2"], ["--guidance-interval LO,HI needs 0 <= LO < HI"]),
    (["--class", "1", "--guidance-rescale", "0.5"], ["--guidance-interval and --guidance-rescale need --guidance-scale"]),
    (["--class", "1", "--guidance-scale", "2", "--clip", "1", "--threshold", "0.9"], ["either --clip or --threshold"]),
])
def test_bad_guidance_is_one_line(runs, tmp_path, capsys, args, fragments):
    names = {"CLF": runs["classifier"], "MODEL": runs["model"], "VP": runs["vp_classifier"]}
    args = [names.get(a, a) for a in args]
    code, _, err = run_main(capsys, ["sample", runs["model"], *args, "--out", tmp_path / "x.png"])
    assert_one_line_error(code, err, *fragments)
    assert os.listdir(tmp_path) == []


def test_cfg_on_an_unconditional_model_is_refused(runs, tmp_path, capsys):
    code, _, err = run_main(capsys, ["sample", runs["unconditional"], "--guidance-scale", "2",
                                     "--out", tmp_path / "x.png"])
    assert_one_line_error(code, err, "--guidance-scale needs a class-conditional model")


def test_a_classifier_run_is_described_and_refused_as_a_model(runs, tmp_path, capsys):
    code, out, err = run_main(capsys, ["info", runs["classifier"]])
    assert code == 0, err
    assert "objective:  classifier (a noise-aware classifier" in out and "prediction:" not in out
    code, _, err = run_main(capsys, ["sample", runs["classifier"], "--out", tmp_path / "x.png"])
    assert_one_line_error(code, err, "noise-aware classifier", "not a denoiser")


def test_guidance_of_a_model_trained_without_label_dropout_warns(runs, tmp_path, capsys):
    code, _, err = run_main(capsys, ["sample", runs["no_dropout"], "--class", "1", "--guidance-scale", "2",
                                     "--num", "4", "--no-progress", "--out", tmp_path / "x.png"])
    assert code == 0
    assert "warning: this model was trained with --label-dropout 0" in err
