"""``scorekit eval`` end to end through ``cli.main``: it scores a file of samples and a run with
what the library computes, caches and reuses the feature network and the reference statistics,
writes JSON, and refuses bad input in one line without writing anything."""
import json
import os

import numpy as np
import pytest
import torch

from cli_helpers import assert_one_line_error, run_main
from scorekit.data import load_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Samples as .npz: real digits (float in [-1, 1], with labels) and uint8 noise."""
    root = tmp_path_factory.mktemp("eval")
    digits = load_dataset("digits")
    np.savez(root / "real.npz", x=digits.x[:300].numpy(), y=digits.y[:300].numpy())
    noise = np.random.RandomState(0).randint(0, 256, size=(300, 1, 8, 8)).astype(np.uint8)
    np.savez(root / "noise.npz", x=noise)
    np.savez(root / "points.npz", x=np.zeros((20, 2), np.float32))
    np.savez(root / "big.npz", x=np.full((20, 1, 8, 8), 200.0, np.float32))
    return root


@pytest.mark.parametrize("extra, fragments", [
    (["--metrics", "fid,fad"], ["--metrics", "'fad'"]),
    (["--steps", "10"], ["--steps", "sample a run"]),
    (["--eta", "0.5"], ["--eta", "sample a run"]),
    (["--inception-weights", "w.safetensors"], ["--inception-weights goes with --features inception"]),
    (["--features", "inception"], ["--inception-weights"]),
    (["--features", "no-such-net"], ["--features 'no-such-net'"]),
])
def test_bad_flags_give_one_line(files, capsys, extra, fragments):
    code, out, err = run_main(capsys, ["eval", files / "real.npz", "--ref", "digits", "--no-progress",
                                       "--cache", files / "cache", *extra])
    assert_one_line_error(code, err, *fragments)


def test_bad_sources_give_one_line(files, capsys, tmp_path):
    cases = [
        ([tmp_path / "missing.npz", "--ref", "digits"], ["does not exist"]),
        ([files / "real.npz"], ["give --ref"]),
        ([files / "points.npz", "--ref", "digits"], ["vectors, not images"]),
        ([files / "big.npz", "--ref", "digits"], ["[-1, 1]"]),
        ([files / "real.npz", "--ref", "moons"], ["vectors, not images"]),
        ([files / "real.npz", "--ref", "digits", "--features-data", "moons", "--features", "digits"],
         ["moons", "needs images"]),
        ([files / "real.npz", "--ref", "digits", "--features-data", f"npz:{files / 'noise.npz'}"],
         ["no labels"]),
        ([files / "real.npz", "--ref", "digits", "--features-epochs", "2", "--features", "inception"],
         ["--features-epochs goes with"]),
    ]
    for argv, fragments in cases:
        code, out, err = run_main(capsys, ["eval", *argv, "--no-progress", "--cache", tmp_path / "c"])
        assert_one_line_error(code, err, *fragments)
    (tmp_path / "note.txt").write_text("x")
    code, out, err = run_main(capsys, ["eval", tmp_path / "note.txt", "--ref", "digits"])
    assert_one_line_error(code, err, "not an .npz")
    out_dir = tmp_path / "no-such-folder" / "s.json"
    code, out, err = run_main(capsys, ["eval", files / "real.npz", "--ref", "digits", "--out", out_dir])
    assert_one_line_error(code, err, "does not exist")


def _scores(path):
    return {k: v["value"] for k, v in json.load(open(path))["metrics"].items()}


@pytest.fixture(scope="module")
def scored(files):
    """One eval of the real digits with a quickly trained digits feature network (cached in
    files/cache), and a second of the noise that reads both caches back."""
    import io
    import sys

    from scorekit.cli import main

    outs = []
    for name in ("real", "noise"):
        argv = ["eval", str(files / f"{name}.npz"), "--ref", "digits", "--features", "digits",
                "--features-epochs", "2", "--cache", str(files / "cache"), "--no-progress",
                "--kid-subsets", "10", "--fid-bootstrap", "3", "--out", str(files / f"{name}.json")]
        if name == "real":
            argv.append("--per-class")
        stdout, stderr = io.StringIO(), io.StringIO()
        saved = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = stdout, stderr
        try:
            code = main(argv)
        finally:
            sys.stdout, sys.stderr = saved
        assert code == 0, stderr.getvalue()
        outs.append(stdout.getvalue())
    return outs


def test_eval_of_a_samples_file_is_what_the_library_computes(files, scored):
    from scorekit.evaluation import ReferenceStatistics, evaluate
    from scorekit.metrics import load_feature_network

    first, second = scored
    assert "training on" in first and "reference statistics: computed" in first
    assert "loaded from" in second and "reference statistics: read from" in second
    for text in ("FID", "KID", "IS", "precision", "recall", "std. error", "held-out accuracy"):
        assert text in first
    folders = os.listdir(files / "cache" / "features")
    assert len(folders) == 1
    net = load_feature_network(files / "cache" / "features" / folders[0])
    stats_files = [f for f in os.listdir(files / "cache" / "reference") if f.endswith(".safetensors")]
    stats = ReferenceStatistics.load(files / "cache" / "reference" / stats_files[0], extractor=net)
    data = np.load(files / "real.npz")
    report = evaluate(torch.from_numpy(data["x"]), stats, net, kid_subsets=10, fid_bootstrap=3,
                      sample_labels=torch.from_numpy(data["y"]), per_class=True)
    written = json.load(open(files / "real.json"))
    assert written["metrics"]["fid"]["value"] == pytest.approx(report.scores["fid"].value, rel=1e-9)
    assert written["metrics"]["kid"]["value"] == pytest.approx(report.scores["kid"].value, rel=1e-9)
    assert set(written["per_class"]) == {*(str(c) for c in range(10)), "mean"}
    assert written["extractor"]["info"]["heldout_accuracy"] > 0.5
    assert written["reference"]["num"] == 1797 and written["samples"]["num"] == 300


def test_real_digits_score_far_better_than_noise(files, scored):
    real, noise = _scores(files / "real.json"), _scores(files / "noise.json")
    assert real["fid"] < noise["fid"] / 10
    assert real["precision"] > 0.5 > noise["precision"]
    assert real["is"] > 1.5 * noise["is"]             # a 2-epoch network: about 2.5 against 1.04


def test_saved_reference_statistics_work_and_other_networks_are_refused(files, scored, capsys, tmp_path):
    stats = [f for f in os.listdir(files / "cache" / "reference") if f.endswith(".safetensors")][0]
    path = files / "cache" / "reference" / stats
    code, out, err = run_main(capsys, ["eval", files / "real.npz", "--ref", path, "--features-epochs", "2",
                                       "--features", "digits", "--features-data", "digits",
                                       "--cache", files / "cache", "--metrics", "fid", "--no-progress"])
    assert code == 0, err
    assert "statistics" in out
    code, out, err = run_main(capsys, ["eval", files / "real.npz", "--ref", path, "--features-epochs", "1",
                                       "--features", "digits", "--features-data", "digits",
                                       "--features-data-option", "stop=1000",
                                       "--cache", tmp_path / "other", "--metrics", "fid", "--no-progress"])
    assert_one_line_error(code, err, "computed with the feature extractor", "compute the reference again")
    assert os.listdir(tmp_path / "other" / "features")        # the network was trained and cached whole


def test_eval_samples_a_run(files, scored, capsys, tmp_path):
    """A tiny class-conditional run on the digits: eval samples it with the given sampler and scores
    the samples against the run's own data, per class too."""
    from scorekit.cli import main

    run = tmp_path / "run"
    code = main(["train", "--data", "digits", "--data-option", "stop=64", "--model", "tiny", "--model-option",
                 "base_channels=8", "--model-option", "groups=4", "--batch-size", "8", "--steps", "2",
                 "--sample-num", "4", "--sample-steps", "2", "--no-progress", "--out", str(run)])
    capsys.readouterr()
    assert code == 0
    code, out, err = run_main(capsys, ["eval", run, "--num", "40", "--steps", "3", "--features-epochs", "2",
                                       "--cache", files / "cache", "--metrics", "fid,pr", "--per-class",
                                       "--no-progress", "--out", tmp_path / "s.json"])
    assert code == 0, err
    assert "40 samples of" in out and "ddim (3 steps" in out
    written = json.load(open(tmp_path / "s.json"))
    assert written["samples"]["nfe"] == 3 and written["samples"]["steps"] == 3
    assert written["reference"]["num"] == 64 and "per_class" in written


def test_a_cache_that_cannot_be_a_folder_is_refused_before_any_work(files, capsys, tmp_path, monkeypatch):
    """A file as --cache, a --cache inside a file, or a file where its sub-folder goes: one line
    before the feature network is trained, the file left as it was."""
    from scorekit.metrics import feature_nets

    def never(*args, **kwargs):
        raise AssertionError("trained before refusing --cache")

    monkeypatch.setattr(feature_nets, "train_image_classifier", never)
    (tmp_path / "file.txt").write_text("x")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "features").write_text("x")
    for cache, fragments in ((tmp_path / "file.txt", ["--cache", "file.txt' is a file"]),
                             (tmp_path / "file.txt" / "sub", ["lies inside", "file.txt', which is a file"]),
                             (tmp_path / "cache", ["holds a file 'features'"])):
        code, out, err = run_main(capsys, ["eval", files / "noise.npz", "--ref", "digits", "--features", "digits",
                                           "--features-epochs", "1", "--cache", cache, "--no-progress"])
        assert_one_line_error(code, err, *fragments)
    assert (tmp_path / "file.txt").read_text() == "x" and os.listdir(tmp_path / "cache") == ["features"]
