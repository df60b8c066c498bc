"""``scorekit train --task`` then ``scorekit restore``, end to end on the built-in digits, and the
inputs a restoration refuses: one line each, exit status 2, no files written."""
import os

import numpy as np
import pytest
import torch
from PIL import Image

from cli_helpers import assert_one_line_error, run_main
from scorekit.data import load_dataset

TINY = ["--data", "digits", "--data-option", "stop=64", "--model-option", "base_channels=8",
        "--model-option", "groups=4", "--steps", "3", "--batch-size", "8", "--sample-num", "4",
        "--sample-steps", "2", "--diffusion-steps", "20", "--no-progress"]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny runs trained through the command line: sr2 (also with nearest upsampling), inpaint and
    a plain generative one."""
    root = tmp_path_factory.mktemp("runs")
    out = {}
    from scorekit.cli import main

    for name, extra in (("sr2", ["--task", "sr2"]), ("inpaint", ["--task", "inpaint", "--task-option", "kind=box"]),
                        ("plain", []), ("sr2-nearest", ["--task", "sr2", "--task-option", "upsample=nearest"])):
        folder = str(root / name)
        assert main(["train", *TINY, *extra, "--out", folder]) == 0
        out[name] = folder
    return out


def digits_png(folder, n=3, size=8, channels=1):
    """The first ``n`` digits, block-averaged to ``size`` pixels, as PNG files; returns the folder."""
    os.makedirs(folder, exist_ok=True)
    x = load_dataset("digits", stop=n).x
    x = torch.nn.functional.avg_pool2d(x, 8 // size) if size < 8 else x
    pixels = torch.round((x + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    for i in range(n):
        img = Image.fromarray(pixels[i, 0], mode="L")
        (img.convert("RGB") if channels == 3 else img).save(os.path.join(folder, f"digit{i}.png"))
    return folder


def test_train_sr2_then_restore_low_resolution_pngs_and_degraded_clean_images(runs, tmp_path, capsys):
    code, out, err = run_main(capsys, ["info", runs["sr2"]])
    assert code == 0 and "task:" in out and "sr2" in out and "cond_channels 2" in out
    low = digits_png(str(tmp_path / "low"), n=3, size=4)
    dest = tmp_path / "restored"
    code, out, err = run_main(capsys, ["restore", runs["sr2"], "--input", low, "--out", dest, "--num-samples", "2",
                                       "--steps", "3", "--no-progress"])
    assert code == 0, err
    assert "restored 3 input(s) x 2 sample(s) by sr2" in out
    assert sorted(os.listdir(dest)) == ["digit0.png", "digit1.png", "digit2.png", "restored.npz"]
    data = np.load(dest / "restored.npz")
    assert data["x"].shape == (3, 2, 1, 8, 8) and data["measurement"].shape == (3, 1, 4, 4)
    assert "truth" not in data.files
    # each PNG: input | 2 samples, each 8x8 enlarged to 64 pixels, 1-pixel padding
    assert Image.open(dest / "digit0.png").size == (3 * 8 * 8 + 4 * 8, 8 * 8 + 2 * 8)

    clean = tmp_path / "clean.npz"
    np.savez(clean, x=load_dataset("digits", stop=2).x.numpy())
    code, out, err = run_main(capsys, ["restore", runs["sr2"], "--input", clean, "--degrade", "--out",
                                       tmp_path / "check", "--steps", "2", "--sampler", "ddpm", "--no-progress"])
    assert code == 0, err
    data = np.load(tmp_path / "check" / "restored.npz")
    assert data["x"].shape == (2, 1, 1, 8, 8)
    truth = torch.from_numpy(data["truth"])
    assert torch.equal(torch.nn.functional.avg_pool2d(truth, 2), torch.from_numpy(data["measurement"]))


def test_train_inpaint_then_restore_a_png_with_its_mask(runs, tmp_path, capsys):
    images = digits_png(str(tmp_path / "in"), n=2)
    mask = np.full((8, 8), 255, dtype=np.uint8)
    mask[2:6, 2:6] = 0                                    # black: to fill
    Image.fromarray(mask, mode="L").save(tmp_path / "mask.png")
    dest = tmp_path / "filled"
    code, out, err = run_main(capsys, ["restore", runs["inpaint"], "--input", images, "--mask", tmp_path / "mask.png",
                                       "--out", dest, "--steps", "2", "--seed", "3", "--no-progress"])
    assert code == 0, err
    data = np.load(dest / "restored.npz")
    assert data["x"].shape == (2, 1, 1, 8, 8)
    assert data["mask"][:, 0, 2:6, 2:6].max() == 0 and data["mask"].sum() == 2 * (64 - 16)
    x = load_dataset("digits", stop=2).x.numpy()
    known = data["mask"].astype(bool)
    # the known pixels as given (the PNG holds them to the nearest of 256 levels)
    np.testing.assert_allclose(data["input"][known], x[known], rtol=0, atol=0.5 / 127.5 + 1e-6)


def _bad(capsys, tmp_path, argv, *fragments):
    dest = tmp_path / "never"
    code, out, err = run_main(capsys, ["restore", *argv, "--out", dest, "--steps", "2", "--no-progress"])
    assert_one_line_error(code, err, *fragments)
    assert not dest.exists()


def test_a_mask_of_another_size_is_refused(runs, tmp_path, capsys):
    Image.fromarray(np.full((6, 6), 255, dtype=np.uint8), mode="L").save(tmp_path / "small.png")
    _bad(capsys, tmp_path, [runs["inpaint"], "--input", digits_png(str(tmp_path / "in")), "--mask",
                            tmp_path / "small.png"], "is 6x6 (width x height) but the images are 8x8")
    _bad(capsys, tmp_path, [runs["inpaint"], "--input", digits_png(str(tmp_path / "in"))], "needs --mask PNG")
    _bad(capsys, tmp_path, [runs["sr2"], "--input", digits_png(str(tmp_path / "low"), size=4), "--mask",
                            tmp_path / "small.png"], "--mask applies to tasks inpaint and uncrop")


def test_inputs_of_another_size_or_channel_count_are_refused_naming_both(runs, tmp_path, capsys):
    _bad(capsys, tmp_path, [runs["sr2"], "--input", digits_png(str(tmp_path / "full"))],
         "1 channel(s) of 8x8", "1 channel(s) of 4x4", "--degrade")
    _bad(capsys, tmp_path, [runs["inpaint"], "--input", digits_png(str(tmp_path / "rgb"), channels=3), "--degrade"],
         "3 channel(s) of 8x8", "1 channel(s) of 8x8")
    _bad(capsys, tmp_path, [runs["sr2"], "--input", digits_png(str(tmp_path / "low4"), size=4), "--degrade"],
         "clean images of 1 channel(s) of 8x8")


def test_a_run_without_a_task_and_unreadable_images_are_refused(runs, tmp_path, capsys):
    _bad(capsys, tmp_path, [runs["plain"], "--input", digits_png(str(tmp_path / "in")), "--degrade"],
         "is not a task model", "--task")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    _bad(capsys, tmp_path, [runs["sr2"], "--input", broken], "cannot read the image", "broken.png")
    _bad(capsys, tmp_path, [runs["sr2"], "--input", tmp_path / "missing"], "does not exist")


def test_the_library_restores_any_observation_with_any_sampler_reproducibly(runs):
    from scorekit import ScorekitError, load_denoiser
    from scorekit.tasks import degrade_images
    from scorekit.tasks.restore import load_task_model, restore

    x = load_dataset("digits", stop=3).x
    degraded = degrade_images(x, "sr2", seed=0)
    a = restore(runs["sr2"], degraded, num_samples=2, sampler="ddpm", steps=3,
                generator=torch.Generator().manual_seed(5))
    b = restore(runs["sr2"], degraded.measurement, num_samples=2, sampler="ddpm", steps=3,
                generator=torch.Generator().manual_seed(5))
    assert a.shape == (3, 2, 1, 8, 8) and torch.equal(a, b)
    plain = load_denoiser(runs["sr2"])
    del plain.checkpoint                                   # a denoiser that does not know its task
    with pytest.raises(ScorekitError, match="needs task="):
        restore(plain, degraded)
    model = load_task_model(plain, task="sr2", sample_shape=(1, 8, 8))
    torch.testing.assert_close(restore(model, degraded, num_samples=2, sampler="ddpm", steps=3,
                                       generator=torch.Generator().manual_seed(5)), a)
    with pytest.raises(ScorekitError, match="trained for task 'sr2', not 'inpaint'"):
        restore(runs["sr2"], degraded, task="inpaint")


def _failing_savez(*args, **kwargs):
    import errno

    raise OSError(errno.ENOSPC, "No space left on device")


def _listing(folder):
    """Every file under ``folder`` (hidden ones too) with its bytes."""
    return {os.path.relpath(os.path.join(d, f), folder): open(os.path.join(d, f), "rb").read()
            for d, _, fs in os.walk(folder) for f in fs}


def test_a_failed_write_leaves_out_as_it_was(runs, tmp_path, capsys, monkeypatch):
    """The PNGs and restored.npz are written all or nothing: when the last write fails (a full
    disk), the PNGs written before it are gone, and the files that were in --out stay as they were."""
    low = digits_png(str(tmp_path / "low"), n=3, size=4)
    dest = tmp_path / "restored"
    dest.mkdir()
    (dest / "notes.txt").write_text("mine")
    (dest / "digit0.png").write_bytes(b"an older restoration")
    before = _listing(dest)
    def argv(out):
        return ["restore", runs["sr2"], "--input", low, "--out", out, "--steps", "2", "--no-progress"]

    monkeypatch.setattr(np, "savez", _failing_savez)
    code, out, err = run_main(capsys, argv(dest))
    assert_one_line_error(code, err, "cannot write", "restored.npz", "the disk is full", "--out is as it was")
    assert _listing(dest) == before and sorted(os.listdir(dest)) == ["digit0.png", "notes.txt"]
    code, out, err = run_main(capsys, argv(tmp_path / "new"))
    assert_one_line_error(code, err, "cannot write", "the disk is full", "nothing was written")
    assert not (tmp_path / "new").exists()
    monkeypatch.undo()
    # a folder where restored.npz goes: refused, nothing written beside it
    (tmp_path / "blocked" / "restored.npz").mkdir(parents=True)
    code, out, err = run_main(capsys, argv(tmp_path / "blocked"))
    assert_one_line_error(code, err, "holds a folder 'restored.npz'")
    assert os.listdir(tmp_path / "blocked") == ["restored.npz"] and not os.listdir(tmp_path / "blocked" / "restored.npz")
    # and with nothing in the way the same command writes everything, replacing the older PNG
    code, out, err = run_main(capsys, argv(dest))
    assert code == 0, err
    assert sorted(os.listdir(dest)) == ["digit0.png", "digit1.png", "digit2.png", "notes.txt", "restored.npz"]
    assert (dest / "notes.txt").read_text() == "mine" and (dest / "digit0.png").read_bytes()[:4] == b"\x89PNG"


def test_inputs_that_share_a_name_get_an_output_each(runs, tmp_path, capsys):
    folder = tmp_path / "same"
    folder.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8), mode="L").save(folder / "a.png")
    Image.fromarray(np.full((4, 4), 255, np.uint8), mode="L").save(folder / "a.bmp")
    Image.fromarray(np.full((4, 4), 128, np.uint8), mode="L").save(folder / "b.png")
    code, out, err = run_main(capsys, ["restore", runs["sr2"], "--input", folder, "--out", tmp_path / "out",
                                       "--steps", "2", "--no-progress"])
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "out")) == ["a_bmp.png", "a_png.png", "b.png", "restored.npz"]
    for name, grey in (("a_bmp", 255), ("a_png", 0)):                 # each input in its own PNG
        with Image.open(tmp_path / "out" / f"{name}.png") as img:
            assert np.asarray(img.convert("L"))[20, 20] == grey
    from scorekit.data.user_images import unique_names

    assert unique_names(["d/a.png", "d/a.bmp", "d/a_png.jpg", "e/c.png"]) == ["a_png", "a_bmp", "a_png_2", "c"]
    assert unique_names(["x/a.png", "y/a.png"]) == ["a_png", "a_png_2"]


def test_an_npz_mask_that_is_not_numbers_is_refused(runs, tmp_path, capsys):
    x = load_dataset("digits", stop=2).x.numpy()
    np.savez(tmp_path / "text.npz", x=x, mask=np.array(["a", "b"]))
    _bad(capsys, tmp_path, [runs["inpaint"], "--input", tmp_path / "text.npz"], "text.npz: mask must hold numbers",
         "<U1")


def test_an_out_folder_inside_a_file_is_refused_before_restoring(runs, tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    low = digits_png(str(tmp_path / "low"), n=1, size=4)
    for out in (tmp_path / "file.txt" / "sub", tmp_path / "file.txt" / "sub" / "deeper"):
        code, _, err = run_main(capsys, ["restore", runs["sr2"], "--input", low, "--out", out, "--no-progress"])
        assert_one_line_error(code, err, "lies inside", "file.txt', which is a file")
    assert (tmp_path / "file.txt").read_text() == "x"


def test_restore_conditions_on_the_runs_own_task_options(runs):
    """A run trained with upsample=nearest restores with it: its task model's degradation has the
    recorded option, and a low-resolution input becomes the block-constant image (A^+ y) it was
    trained on, not a bicubic one."""
    from scorekit.tasks.restore import load_task_model, observe

    model = load_task_model(runs["sr2-nearest"])
    assert model.degradation.upsample == "nearest"
    low = torch.rand(2, *model.observation_shapes[0], generator=torch.Generator().manual_seed(0)) * 2 - 1
    image = observe(model, low).image
    torch.testing.assert_close(image, low.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1),
                               rtol=0, atol=0)
