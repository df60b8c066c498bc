"""The degradations of the trained image-to-image tasks: shapes, ranges, what the mask means, the
measurements against the operators, reproducibility from the generator, and JPEG against Pillow."""
import io

import numpy as np
import pytest
import torch
from PIL import Image

from scorekit import ScorekitError
from scorekit.tasks.degradations import (DEGRADATIONS, build_degradation, check_task_options, degrade_images,
                                         jpeg_roundtrip)
from scorekit.tasks.operators import Downsample, Greyscale


def clean(n=6, c=3, size=16, seed=0):
    """Smooth-ish images in [-1, 1] (a low-resolution pattern upsampled), with the exact ends."""
    g = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.interpolate(torch.rand(n, c, size // 4, size // 4, generator=g) * 2 - 1,
                                        size=(size, size), mode="bilinear", align_corners=False)
    x[:, :, 0, 0], x[:, :, -1, -1] = -1.0, 1.0
    return x


@pytest.mark.parametrize("task", list(DEGRADATIONS))
def test_every_task_gives_the_condition_image_and_mask_in_range_reproducibly(task):
    x = clean()
    d = build_degradation(task)
    a = d(x, torch.Generator().manual_seed(4))
    b = d(x, torch.Generator().manual_seed(4))
    assert a.cond.shape == (6, 4, 16, 16) and d.cond_channels(x.shape[1:]) == 4
    assert torch.equal(a.cond, b.cond) and torch.equal(a.measurement, b.measurement)
    assert float(a.image.min()) >= -1 and float(a.image.max()) <= 1
    assert set(a.mask.unique().tolist()) <= {0.0, 1.0}
    known = a.mask.expand_as(x).bool()
    if task in ("inpaint", "uncrop"):                      # known pixels are the truth; the rest is filled
        assert torch.equal(a.image[known], x[known]) and bool((a.image[~known] == 0).all())
        assert 0 < float(a.mask.mean()) < 1
    else:
        assert bool(known.all())
    assert tuple(a.measurement.shape[1:]) == d.observed_shape(x.shape[1:])
    assert float(d.consistency(x, a).max()) == 0.0         # the truth reproduces its observation
    rebuilt = d.observe(a.measurement, a.mask if d.needs_mask else None)
    assert torch.equal(rebuilt.cond, a.cond)
    assert len(a[1:3]) == 2


@pytest.mark.parametrize("task, factor", [("sr2", 2), ("sr4", 4)])
def test_super_resolution_measures_block_means_and_upsamples_bicubically(task, factor):
    x = clean()
    a = degrade_images(x, task)
    assert torch.equal(a.measurement, Downsample(factor)(x))
    expected = torch.nn.functional.interpolate(a.measurement, scale_factor=factor, mode="bicubic",
                                               align_corners=False).clamp(-1, 1)
    torch.testing.assert_close(a.image, expected, rtol=0, atol=0)
    nearest = degrade_images(x, task, upsample="nearest")
    assert torch.equal(nearest.image, Downsample(factor).pinv(a.measurement))
    # a restoration that only upsamples is consistent (A A^+ = I), a blurred truth is not
    assert float(build_degradation(task).consistency(nearest.image, a).max()) < 1e-6
    with pytest.raises(ScorekitError, match="multiples of 4"):
        degrade_images(clean()[:, :, :14, :14], "sr4")


def test_colorize_measures_luma_and_replicates_it():
    x = clean()
    a = degrade_images(x, "colorize")
    assert torch.equal(a.measurement, Greyscale()(x))
    assert torch.equal(a.image, a.measurement.expand(-1, 3, -1, -1))
    with pytest.raises(ScorekitError, match="RGB images"):
        degrade_images(clean(c=1), "colorize")


@pytest.mark.parametrize("kind", ["box", "boxes", "strokes", "mixed"])
def test_inpainting_masks_hide_some_pixels_and_noise_fill_comes_from_the_generator(kind):
    x = clean(n=8)
    a = degrade_images(x, "inpaint", kind=kind, seed=1)
    assert bool((a.mask.mean(dim=(1, 2, 3)) < 1).all()) and bool((a.mask.mean(dim=(1, 2, 3)) > 0).all())
    if kind == "box":                                      # the centre half is missing, the rest known
        assert bool((a.mask[:, :, 4:12, 4:12] == 0).all()) and float(a.mask.mean()) == 0.75
    noisy = degrade_images(x, "inpaint", kind=kind, fill="noise", seed=1)
    known = noisy.mask.expand_as(x).bool()
    assert torch.equal(noisy.image[known], x[known]) and float(noisy.image[~known].std()) > 0.5


def test_uncrop_hides_a_half_or_a_border():
    x = clean(n=16)
    half = degrade_images(x, "uncrop", kind="half", seed=2)
    assert torch.equal(half.mask.mean(dim=(1, 2, 3)), torch.full((16,), 0.5))
    border = degrade_images(x, "uncrop", kind="border", border=0.25)
    assert bool((border.mask[:, :, 4:12, 4:12] == 1).all()) and float(border.mask.mean()) == 0.25


@pytest.mark.parametrize("channels", [1, 3])
def test_jpeg_round_trip_is_pillows_and_qualities_are_drawn_in_range(channels):
    x = clean(n=5, c=channels)
    pixels = torch.round((x.double() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    got = jpeg_roundtrip(x, 10)
    mode = "L" if channels == 1 else "RGB"
    for i in range(5):
        img = Image.fromarray(pixels[i, 0] if channels == 1 else pixels[i].transpose(1, 2, 0), mode=mode)
        buf = io.BytesIO()
        img.save(buf, format="JPEG", quality=10)
        ref = np.asarray(Image.open(buf).convert(mode)).astype(np.float64) / 127.5 - 1
        ref = ref[None] if channels == 1 else ref.transpose(2, 0, 1)
        assert torch.equal(got[i], torch.from_numpy(ref).float())
    a = degrade_images(x, "jpeg", quality_min=7, quality_max=9, seed=3)
    q = a.params["quality"]
    assert q.shape == (5,) and int(q.min()) >= 7 and int(q.max()) <= 9
    # the range is inclusive at both ends: over 300 draws every quality appears (each is missed
    # with probability (2/3)^300)
    many = degrade_images(clean(n=300, c=channels), "jpeg", quality_min=7, quality_max=9, seed=4)
    assert sorted(torch.unique(many.params["quality"]).tolist()) == [7, 8, 9]
    assert torch.equal(a.measurement, jpeg_roundtrip(x, q))
    assert float((a.image - x).abs().mean()) > 0                      # it did lose something


def test_task_options_are_checked_against_the_constructors():
    assert check_task_options("jpeg", {"quality_min": "3"}) == {"quality_min": 3}
    with pytest.raises(ScorekitError, match="unknown inpaint task option shape; valid: kind, fill"):
        build_degradation("inpaint", {"shape": "box"})
    with pytest.raises(ScorekitError, match="unknown mask kind 'circle'"):
        build_degradation("inpaint", {"kind": "circle"})
    with pytest.raises(ScorekitError, match="unknown task 'deblur'; choose one of sr2, sr4"):
        build_degradation("deblur")
    with pytest.raises(ScorekitError, match=r"in \[-1, 1\]"):
        degrade_images(clean() * 3, "sr2")
    with pytest.raises(ScorekitError, match="mask has shape"):
        build_degradation("inpaint").observe(clean(), torch.ones(8, 8))


@pytest.mark.parametrize("task, kind", [("inpaint", "box"), ("inpaint", "strokes"), ("uncrop", "half"),
                                        ("uncrop", "border")])
@pytest.mark.parametrize("fill", ["zero", "noise"])
def test_masked_observation_carries_nothing_of_the_hidden_pixels(task, kind, fill):
    """observe(y, mask) ignores the pixels of y where the mask is 0 (its docstring): an image with
    the same known pixels and anything else in the hidden ones gives the same condition, image and
    measurement, bit for bit (the same generator for a noise fill), and the hidden pixels of the
    condition image are the fill (0, or the generator's noise), not the truth. Otherwise the
    ground truth to be restored leaks into the model's condition."""
    d = build_degradation(task, {"kind": kind, "fill": fill})
    x = clean(n=4)
    mask = d.masks(4, 16, 16, torch.Generator().manual_seed(5))
    hidden = (1 - mask).expand_as(x).bool()
    assert bool(hidden.any()) and not bool(hidden.all())
    other = torch.where(hidden, -x.flip(0) + 0.5, x)       # other hidden pixels, the same known ones
    assert bool((other != x)[hidden].all())
    a = d.observe(x, mask, generator=torch.Generator().manual_seed(6))
    b = d.observe(other, mask, generator=torch.Generator().manual_seed(6))
    assert torch.equal(a.cond, b.cond) and torch.equal(a.image, b.image)
    assert torch.equal(a.measurement, b.measurement)
    assert bool((a.measurement[hidden] == 0).all()) and torch.equal(a.measurement[~hidden], x[~hidden])
    if fill == "zero":
        assert bool((a.image[hidden] == 0).all())
    else:                                                 # the generator's noise, drawn for the whole image
        noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(6))
        assert torch.equal(a.image[hidden], noise[hidden])
    # degrading the clean images (the mask drawn first, then any fill, from one generator) is
    # observing them whole under that mask
    g = torch.Generator().manual_seed(5)
    whole = d.observe(x, d.masks(4, 16, 16, g), generator=g)
    assert torch.equal(d(x, torch.Generator().manual_seed(5)).cond, whole.cond)


@pytest.mark.parametrize("task, options", [("sr2", {"upsample": "nearest"}), ("inpaint", {"fill": "noise"}),
                                           ("jpeg", {"quality_min": 5, "quality_max": 6})])
def test_a_degraded_batch_is_conditioned_as_the_run_was_trained(task, options):
    """A batch made by ``degrade_images(x, task)`` with the default options, restored by a run
    trained with other options: the condition is built again from its measurement (and mask, and
    JPEG quality) by the run's own degradation -- what that run saw in training -- not taken as the
    defaults built it (bicubic where the run upsampled nearest, zeros where it filled noise)."""
    from scorekit.tasks.restore import TaskModel, observe

    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(0)) * 2 - 1
    mine = build_degradation(task, options)
    model = TaskModel(denoiser=None, degradation=mine, sample_shape=(1, 8, 8))
    given = degrade_images(x, task, seed=1)
    got = observe(model, given, generator=torch.Generator().manual_seed(2))
    want = mine.observe(given.measurement, given.mask if mine.needs_mask else None,
                        generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(got.cond, want.cond, rtol=0, atol=0)
    assert got.params == {**want.params, **given.params}
    torch.testing.assert_close(got.measurement, given.measurement, rtol=0, atol=0)
    if task != "jpeg":                                  # jpeg's condition is its measurement either way
        assert not torch.equal(got.cond, given.cond)


def test_colourisation_makes_a_colour_observation_grey_with_the_training_luma():
    """A colour image given to a colourisation model is made grey by the same luma (BT.601, as
    PIL's convert("L")) that training measured: the condition equals that of its grey measurement,
    and a PIL grey PNG of it lies within one 8-bit level."""
    from scorekit.tasks.operators import Greyscale

    col = build_degradation("colorize")
    rgb = clean(n=4, c=3)
    torch.testing.assert_close(col.observe(rgb).cond, col.observe(Greyscale()(rgb)).cond, rtol=0, atol=0)
    pixels = torch.round((rgb.double() + 1) * 127.5).clamp(0, 255).to(torch.uint8).numpy()
    for i in range(4):
        grey = np.asarray(Image.fromarray(pixels[i].transpose(1, 2, 0), mode="RGB").convert("L"))
        ours = (col.observe(rgb[i:i + 1]).measurement[0, 0].double().numpy() + 1) * 127.5
        assert np.abs(ours - grey).max() <= 1.0 + 1e-6
