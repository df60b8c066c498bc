"""``scorekit edit``: the library's editing methods on a tiny trained image run (8x8 digits, a
class-conditional model edited through its null label), and every bad input as one line.

The methods' mathematics is proven in test_editing.py; here the command must read the user's
images, pass them through unchanged where the method keeps them (strength 0, RePaint's known
pixels), and write one PNG per input and an .npz."""
import io
import os
import sys

import numpy as np
import pytest
from PIL import Image

from cli_helpers import assert_one_line_error, run_main
from scorekit.cli import main

IMAGES = ["--data", "digits", "--data-option", "stop=64", "--model", "tiny", "--model-option",
          "base_channels=8", "--model-option", "groups=4", "--prediction", "v", "--schedule", "cosine",
          "--batch-size", "8", "--sample-every", "0", "--steps", "2", "--no-progress"]
FAST = ["--steps", "4", "--no-progress"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("edit")
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "stdout", io.StringIO())
    mp.setattr(sys, "stderr", io.StringIO())
    try:
        assert main(["train", *IMAGES, "--out", str(root / "run")]) == 0
    finally:
        mp.undo()
    return str(root / "run")


def _pngs(folder, count, size=8, mode="L", seed=0):
    os.makedirs(folder, exist_ok=True)
    rs = np.random.RandomState(seed)
    for i in range(count):
        shape = (size, size) if mode == "L" else (size, size, 3)
        Image.fromarray(rs.randint(0, 256, shape).astype(np.uint8), mode=mode).save(os.path.join(folder, f"{i}.png"))
    return str(folder)


def test_sdedit_writes_one_png_per_input_and_strength_zero_keeps_them(run, tmp_path, capsys):
    inputs = _pngs(tmp_path / "in", 3)
    code, out, err = run_main(capsys, ["edit", run, "sdedit", "--input", inputs, "--strength", "0.5",
                                       "--num", "2", "--out", tmp_path / "out", *FAST])
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["0000.png", "0001.png", "0002.png", "edits.npz"]
    saved = np.load(tmp_path / "out" / "edits.npz")
    assert saved["input"].shape == (3, 1, 8, 8) and saved["edits"].shape == (6, 1, 8, 8)
    with Image.open(tmp_path / "out" / "0000.png") as img:
        assert img.size[0] > 2 * img.size[1]                    # input | two edits, side by side
    assert "edited 3 image(s) with sdedit, 2 edits each" in out
    code, _, err = run_main(capsys, ["edit", run, "sdedit", "--input", inputs, "--strength", "0",
                                     "--out", tmp_path / "zero", *FAST])
    assert code == 0, err
    saved = np.load(tmp_path / "zero" / "edits.npz")
    assert np.array_equal(saved["edits"], saved["input"])
    pixels = np.stack([np.asarray(Image.open(os.path.join(inputs, f"{i}.png"))) for i in range(3)])
    assert np.array_equal(np.round((saved["input"][:, 0] + 1) * 127.5).astype(np.uint8), pixels)


def test_repaint_keeps_the_white_pixels_of_the_mask(run, tmp_path, capsys):
    inputs = _pngs(tmp_path / "in", 2)
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    code, _, err = run_main(capsys, ["edit", run, "repaint", "--input", inputs, "--mask",
                                     tmp_path / "mask.png", "--resamplings", "2", "--jump-length", "1",
                                     "--out", tmp_path / "out", *FAST])
    assert code == 0, err
    saved = np.load(tmp_path / "out" / "edits.npz")
    assert np.array_equal(saved["edits"][:, :, :4], saved["input"][:, :, :4])
    assert not np.array_equal(saved["edits"][:, :, 4:], saved["input"][:, :, 4:])


def test_ilvr_from_an_npz_and_interpolation_between_two_files(run, tmp_path, capsys):
    x = np.random.RandomState(1).randint(0, 256, (2, 1, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    code, _, err = run_main(capsys, ["edit", run, "ilvr", "--input", tmp_path / "x.npz", "--factor", "4",
                                     "--out", tmp_path / "ilvr", *FAST])
    assert code == 0, err
    saved = np.load(tmp_path / "ilvr" / "edits.npz")
    means = lambda a: a.reshape(2, 1, 2, 4, 2, 4).mean(axis=(3, 5))      # noqa: E731
    assert np.abs(means(saved["edits"]) - means(saved["input"])).max() < 1e-5
    a, b = _pngs(tmp_path / "a", 1, seed=2), _pngs(tmp_path / "b", 1, seed=3)
    code, _, err = run_main(capsys, ["edit", run, "interpolate", "--input", os.path.join(a, "0.png"),
                                     "--with", os.path.join(b, "0.png"), "--frames", "3", "--out", tmp_path / "morph",
                                     *FAST])
    assert code == 0, err
    assert np.load(tmp_path / "morph" / "edits.npz")["edits"].shape == (1, 3, 1, 8, 8)
    # pairs of a class-conditional model, each pair with its own label
    a, b = _pngs(tmp_path / "a3", 3, seed=4), _pngs(tmp_path / "b3", 3, seed=5)
    code, _, err = run_main(capsys, ["edit", run, "interpolate", "--input", a, "--with", b, "--class", "1,2,3",
                                     "--out", tmp_path / "morph3", *FAST])
    assert code == 0, err
    assert np.load(tmp_path / "morph3" / "edits.npz")["edits"].shape == (3, 5, 1, 8, 8)


@pytest.mark.parametrize("extra,fragments", [
    (["sdedit", "--input", "BIG"], ["holds images of 1x16x16", "model makes 1x8x8 images"]),
    (["sdedit", "--input", "RGB"], ["holds images of 3x8x8", "channel count"]),
    (["sdedit", "--input", "IN", "--factor", "2"], ["sdedit takes no --factor (for ilvr, dps, pigdm, moment_matching, projection)"]),
    (["repaint", "--input", "IN"], ["repaint needs --mask PNG"]),
    (["repaint", "--input", "IN", "--mask", "BIGMASK"], ["--mask", "is 16x16 (width x height)"]),
    (["interpolate", "--input", "IN"], ["needs --with"]),
    (["interpolate", "--input", "IN", "--with", "IN", "--sampler", "ddpm"], ["decodes with ddim"]),
    (["ilvr", "--input", "IN", "--factor", "3"], ["multiples of 3"]),
    (["sdedit", "--input", "MISSING"], ["--input", "does not exist"]),
    (["sdedit", "--input", "IN", "--strength", "1.5"], ["--strength"]),
])
def test_bad_input_is_one_line(run, tmp_path, capsys, extra, fragments):
    paths = {"IN": _pngs(tmp_path / "in", 2), "BIG": _pngs(tmp_path / "big", 2, size=16),
             "RGB": _pngs(tmp_path / "rgb", 2, mode="RGB"), "MISSING": str(tmp_path / "missing")}
    Image.fromarray(np.zeros((16, 16), np.uint8), mode="L").save(tmp_path / "bigmask.png")
    paths["BIGMASK"] = str(tmp_path / "bigmask.png")
    argv = ["edit", run, *[paths.get(a, a) for a in extra], "--out", tmp_path / "out", *FAST]
    code, _, err = run_main(capsys, argv)
    assert_one_line_error(code, err, *fragments)
    assert not os.path.exists(tmp_path / "out" / "edits.npz")


def test_inverse_solvers_take_measurements_and_match_the_library(run, tmp_path, capsys):
    """dps / pigdm / projection with --operator downsample take the low-resolution images, show
    them through A^+, and return what solve_inverse gives for the same seed; a noiseless projection
    meets the measurement exactly."""
    import torch

    from scorekit.tasks.inverse import solve_inverse
    from scorekit.tasks.operators import Downsample
    from scorekit.train.checkpoint import load_denoiser

    low = _pngs(tmp_path / "low", 2, size=4)
    for method in ("dps", "pigdm", "projection"):
        code, out, err = run_main(capsys, ["edit", run, method, "--operator", "downsample", "--factor", "2",
                                           "--input", low, "--num", "2", "--out", tmp_path / method, *FAST])
        assert code == 0, err
        saved = np.load(tmp_path / method / "edits.npz")
        assert saved["measurement"].shape == (2, 1, 4, 4) and saved["input"].shape == (2, 1, 8, 8)
        assert saved["edits"].shape == (4, 1, 8, 8)
    y = torch.from_numpy(np.load(tmp_path / "dps" / "edits.npz")["measurement"]).repeat_interleave(2, 0)
    D = load_denoiser(run)
    from scorekit.conditioning import NULL_LABEL
    want = solve_inverse(D.with_condition(torch.tensor([NULL_LABEL])), Downsample(2), y, method="dps",
                         sampler="ddpm", num_steps=4, generator=torch.Generator().manual_seed(0)).detach()
    got = torch.from_numpy(np.load(tmp_path / "dps" / "edits.npz")["edits"])
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-5)
    proj = np.load(tmp_path / "projection" / "edits.npz")
    y2 = torch.from_numpy(proj["measurement"]).repeat_interleave(2, 0)
    torch.testing.assert_close(Downsample(2)(torch.from_numpy(proj["edits"])), y2, rtol=0, atol=1e-5)


def test_inverse_solver_with_a_mask_and_bad_solver_input(run, tmp_path, capsys):
    inputs = _pngs(tmp_path / "in", 2)
    mask = np.zeros((8, 8), np.uint8)
    mask[:4] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    code, out, err = run_main(capsys, ["edit", run, "pigdm", "--mask", tmp_path / "mask.png", "--input", inputs,
                                       "--sigma-y", "0.05", "--out", tmp_path / "filled", *FAST])
    assert code == 0, err
    saved = np.load(tmp_path / "filled" / "edits.npz")
    assert saved["mask"].shape == (1, 1, 8, 8) and saved["edits"].shape == (2, 1, 8, 8)
    cases = [
        (["dps", "--operator", "downsample", "--factor", "2", "--input", inputs], "holds images of 1x8x8"),
        (["dps", "--operator", "mask", "--input", inputs], "--operator mask needs --mask"),
        (["dps", "--operator", "greyscale", "--input", inputs], "measures colour images"),
        (["dps", "--factor", "3", "--input", inputs], "--factor 3 does not divide"),
        (["pigdm", "--zeta", "2", "--input", inputs], "pigdm takes no --zeta (for dps)"),
        (["dps", "--sigma-y=-1", "--input", inputs], "--sigma-y must be >= 0"),
        (["sdedit", "--operator", "mask", "--input", inputs], "sdedit takes no --operator"),
    ]
    for argv, fragment in cases:
        out_dir = tmp_path / "never"
        code, _, err = run_main(capsys, ["edit", run, *argv, "--out", out_dir, *FAST])
        assert_one_line_error(code, err, fragment)
        assert not out_dir.exists()


def test_inversion_decodes_under_another_class_as_the_library_does(run, tmp_path, capsys):
    """inversion: DDIM-inverted under --from-class (or the null label), decoded under --class,
    the same numbers as scorekit.tasks.inversion_edit on the run's EMA denoiser; its bad input."""
    import torch

    from scorekit.tasks import inversion_edit
    from scorekit.train.checkpoint import load_denoiser

    inputs = _pngs(tmp_path / "in", 3, seed=6)
    code, out, err = run_main(capsys, ["edit", run, "inversion", "--input", inputs, "--from-class", "1",
                                       "--class", "7,8,9", "--out", tmp_path / "out", *FAST])
    assert code == 0, err
    assert "edited 3 image(s) with inversion" in out
    saved = np.load(tmp_path / "out" / "edits.npz")
    assert saved["edits"].shape == (3, 1, 8, 8)
    D = load_denoiser(run).with_condition(torch.tensor([1, 1, 1]))
    want = inversion_edit(D, torch.from_numpy(saved["input"]), target=torch.tensor([7, 8, 9]), num_steps=4)
    torch.testing.assert_close(torch.from_numpy(saved["edits"]), want.float(), rtol=0, atol=1e-6)
    # the default source: the null label of label dropout
    code, _, err = run_main(capsys, ["edit", run, "inversion", "--input", inputs, "--class", "2",
                                     "--out", tmp_path / "null", *FAST])
    assert code == 0, err
    D = load_denoiser(run).with_condition(torch.tensor([-1, -1, -1]))
    want = inversion_edit(D, torch.from_numpy(saved["input"]), target=2, num_steps=4)
    torch.testing.assert_close(torch.from_numpy(np.load(tmp_path / "null" / "edits.npz")["edits"]), want.float(),
                               rtol=0, atol=1e-6)
    for extra, fragments in [([], ["inversion needs --class"]),
                             (["--class", "2", "--num", "2"], ["inversion is deterministic"]),
                             (["--class", "2", "--sampler", "ddpm"], ["decodes with ddim"]),
                             (["--class", "2", "--from-class", "12"], ["--from-class 12 is outside 0..9"]),
                             (["--strength", "0.3", "--class", "2"], ["inversion takes no --strength"])]:
        code, _, err = run_main(capsys, ["edit", run, "inversion", "--input", inputs, *extra,
                                         "--out", tmp_path / "bad", *FAST])
        assert_one_line_error(code, err, *fragments)
        assert not os.path.exists(tmp_path / "bad" / "edits.npz")
    code, _, err = run_main(capsys, ["edit", run, "sdedit", "--input", inputs, "--from-class", "1",
                                     "--out", tmp_path / "bad", *FAST])
    assert_one_line_error(code, err, "sdedit takes no --from-class (for inversion)")


def test_inversion_refuses_a_model_without_labels(tmp_path, capsys):
    x = np.random.RandomState(7).randint(0, 256, (16, 1, 8, 8)).astype(np.uint8)
    np.savez(tmp_path / "x.npz", x=x)
    argv = ["train", *IMAGES, "--out", str(tmp_path / "run")]
    argv[argv.index("digits")] = f"npz:{tmp_path / 'x.npz'}"
    argv[argv.index("stop=64")] = "stop=16"
    code, _, err = run_main(capsys, argv)
    assert code == 0, err
    code, _, err = run_main(capsys, ["edit", tmp_path / "run", "inversion", "--input", tmp_path / "x.npz",
                                     "--class", "1", "--out", tmp_path / "out", *FAST])
    assert_one_line_error(code, err, "trained without labels", "labelled data")
    assert not os.path.exists(tmp_path / "out" / "edits.npz")


def test_an_out_folder_inside_a_file_is_refused_before_editing(run, tmp_path, capsys, monkeypatch):
    from scorekit.tasks import editing

    def never(*args, **kwargs):
        raise AssertionError("edited before refusing --out")

    monkeypatch.setattr(editing, "edit", never)
    (tmp_path / "file.txt").write_text("x")
    inputs = _pngs(tmp_path / "in", 1)
    for out in (tmp_path / "file.txt" / "sub", tmp_path / "file.txt" / "sub" / "deeper"):
        code, _, err = run_main(capsys, ["edit", run, "sdedit", "--input", inputs, "--out", out, *FAST])
        assert_one_line_error(code, err, "lies inside", "file.txt', which is a file")
    code, _, err = run_main(capsys, ["edit", run, "sdedit", "--input", inputs, "--out", tmp_path / "file.txt", *FAST])
    assert_one_line_error(code, err, "is a file; give a folder")
    assert (tmp_path / "file.txt").read_text() == "x"


def test_a_failed_write_leaves_out_as_it_was(run, tmp_path, capsys, monkeypatch):
    import errno

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    inputs = _pngs(tmp_path / "in", 3)
    dest = tmp_path / "out"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    argv = ["edit", run, "sdedit", "--input", inputs, "--out", dest, *FAST]
    monkeypatch.setattr(np, "savez", full)
    code, _, err = run_main(capsys, argv)
    assert_one_line_error(code, err, "cannot write", "edits.npz", "the disk is full", "--out is as it was")
    assert os.listdir(dest) == ["notes.txt"] and (dest / "notes.txt").read_text() == "mine"
    monkeypatch.undo()
    code, _, err = run_main(capsys, argv)
    assert code == 0, err
    assert sorted(os.listdir(dest)) == ["0000.png", "0001.png", "0002.png", "edits.npz", "notes.txt"]
