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
         ["labelled"]),
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
