"""Tests of scorekit.data: every loader on real and made-up files, and every bad input."""
from __future__ import annotations

import gzip
import io
import json
import math
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from scorekit.data import (Dataset, check_compatible, convert_channels, dataset_from_config,
                           load_dataset, read_idx)
from scorekit.errors import ScorekitError
from scorekit.toy import multiscale_2d as toy_multiscale_2d

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
MNIST = SHARED / "mnist-test"
CIFAR_TAR = SHARED / "cifar10-test-jpg.tar.gz"
MNIST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
TOYS = ["swiss_roll", "moons", "checkerboard", "eight_gaussians", "multiscale_2d"]

needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason="no ../shared/data/mnist-test")
needs_cifar = pytest.mark.skipif(not CIFAR_TAR.is_file(), reason="no ../shared/data CIFAR-10 archive")


def raises(match_text: str):
    """pytest.raises(ScorekitError) whose message must contain ``match_text`` literally."""
    import re
    return pytest.raises(ScorekitError, match=re.escape(str(match_text)))


# ---------------------------------------------------------------------------------------------
# Files made up for the tests
# ---------------------------------------------------------------------------------------------

def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    array = np.asarray(array, dtype=np.uint8)
    magic = (0x0800 | array.ndim) if magic is None else magic
    return struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray | None, *, compress=True,
              prefix="t10k") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    suffix = ".gz" if compress else ""
    write = gzip.compress if compress else (lambda b: b)
    (folder / f"{prefix}-images-idx3-ubyte{suffix}").write_bytes(write(idx_bytes(images)))
    if labels is not None:
        (folder / f"{prefix}-labels-idx1-ubyte{suffix}").write_bytes(write(idx_bytes(labels)))
    return folder / f"{prefix}-images-idx3-ubyte{suffix}"


def save_image(path: Path, array: np.ndarray, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(path, **kw)
    return path


def rng_images(n, h, w, c=None, seed=0):
    rs = np.random.RandomState(seed)
    shape = (n, h, w) if c is None else (n, h, w, c)
    return rs.randint(0, 256, size=shape).astype(np.uint8)


def as_unit(a: np.ndarray) -> torch.Tensor:
    """The documented scaling of uint8 pixels: v / 127.5 - 1."""
    return torch.from_numpy(a.astype(np.float64) / 127.5 - 1.0).float()


@pytest.fixture(scope="module")
def cifar_dir(tmp_path_factory) -> Path:
    """A few hundred real CIFAR-10 JPEGs (30 per class), extracted from the shared archive."""
    if not CIFAR_TAR.is_file():
        pytest.skip("no CIFAR-10 archive")
    out = tmp_path_factory.mktemp("cifar")
    taken: dict[str, int] = {}
    with tarfile.open(CIFAR_TAR, "r:gz") as tar:
        for m in tar:
            parts = m.name.split("/")
            if not m.isfile() or len(parts) < 3 or taken.get(parts[-2], 0) >= 30:
                continue
            taken[parts[-2]] = taken.get(parts[-2], 0) + 1
            dest = out / parts[-2] / parts[-1]
            dest.parent.mkdir(exist_ok=True)
            dest.write_bytes(tar.extractfile(m).read())
    return out


@pytest.fixture(scope="module")
def mnist():
    if not MNIST.is_dir():
        pytest.skip("no MNIST")
    return load_dataset(f"mnist:{MNIST}")


# ---------------------------------------------------------------------------------------------
# 2-D toy sets
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TOYS)
def test_toy_shape_determinism_and_config(name):
    a = load_dataset(name, n=3000, seed=7)
    b = load_dataset(name, n=3000, seed=7)
    c = load_dataset(name, n=3000, seed=8)
    assert a.x.shape == (3000, 2) and a.x.dtype == torch.float32 and a.shape == (2,)
    assert torch.equal(a.x, b.x)
    assert not torch.equal(a.x, c.x)
    assert a.x.abs().max() < 2.0                         # "roughly unit range"
    cfg = json.loads(json.dumps(a.config()))
    assert cfg["spec"] == name and cfg["n"] == 3000 and cfg["seed"] == 7
    again = dataset_from_config(cfg)
    assert torch.equal(again.x, a.x)
    if a.y is not None:
        assert torch.equal(again.y, a.y) and a.y.max() < a.num_classes
    assert torch.equal(a.augment(a.x, torch.Generator().manual_seed(0)), a.x)


def test_toy_default_size():
    assert len(load_dataset("checkerboard")) == 20000


def test_swiss_roll_lies_on_the_spiral_with_uniform_angle():
    n = 20000
    x = load_dataset("swiss_roll", n=n, noise=0.0).x.double()
    # noise-free points satisfy x = t (cos t, sin t) / (4.5 pi) with t = 4.5 pi |x|
    t = 4.5 * math.pi * x.norm(dim=1)
    on_curve = t[:, None] * torch.stack([torch.cos(t), torch.sin(t)], 1) / (4.5 * math.pi)
    assert torch.allclose(on_curve, x, atol=1e-5)
    assert t.min() >= 1.5 * math.pi - 1e-4 and t.max() <= 4.5 * math.pi + 1e-4
    u = (t - 1.5 * math.pi) / (3 * math.pi)              # U(0, 1): mean 1/2, sd 1/sqrt(12 n)
    assert abs(u.mean().item() - 0.5) < 4 / math.sqrt(12 * n)
    # the same seed draws the same t, so the noise is the difference: sd 0.1 per coordinate
    noisy = load_dataset("swiss_roll", n=n, noise=0.1).x.double()
    sd = (noisy - x).std().item()
    assert abs(sd - 0.1) < 0.1 * 4 / math.sqrt(2 * 2 * n)


def test_moons_lie_on_two_half_circles():
    n = 10001
    d = load_dataset("moons", n=n, noise=0.0)
    x, y = d.x.double(), d.y
    m = 1.5 * x + torch.tensor([0.5, 0.25], dtype=torch.float64)   # undo the documented scaling
    upper, lower = m[y == 0], m[y == 1]
    assert (y == 0).sum() == 5001 and (y == 1).sum() == 5000 and torch.equal(y[:4], torch.tensor([0, 1, 0, 1]))
    assert torch.allclose(upper.norm(dim=1), torch.ones(len(upper), dtype=torch.float64), atol=1e-5)
    assert upper[:, 1].min() > -1e-5                       # sin theta >= 0
    centre = torch.tensor([1.0, 0.5], dtype=torch.float64)
    assert torch.allclose((lower - centre).norm(dim=1), torch.ones(len(lower), dtype=torch.float64), atol=1e-5)
    assert (lower[:, 1] - 0.5).max() < 1e-5
    assert x[:, 0].min() >= -1 - 1e-6 and x[:, 0].max() <= 1 + 1e-6
    assert x[:, 1].min() >= -0.5 - 1e-6 and x[:, 1].max() <= 0.5 + 1e-6
    theta = torch.atan2(upper[:, 1], upper[:, 0])            # U(0, pi)
    assert abs(theta.mean().item() - math.pi / 2) < 4 * math.pi / math.sqrt(12 * len(upper))
    assert d.num_classes == 2


def test_checkerboard_fills_the_dark_cells_uniformly():
    n = 40000
    x = load_dataset("checkerboard", n=n, seed=3).x.double()
    assert x.min() >= -1 and x.max() <= 1
    cell = torch.floor((x + 1) / 0.5).long()                 # (col, row) in 0..3
    assert torch.all((cell[:, 0] + cell[:, 1]) % 2 == 0)
    counts = torch.bincount(cell[:, 1] * 4 + cell[:, 0], minlength=16)
    dark = [r * 4 + c for r in range(4) for c in range(4) if (r + c) % 2 == 0]
    sd = math.sqrt(n * (1 / 8) * (7 / 8))
    assert torch.all((counts[dark].double() - n / 8).abs() < 4 * sd)
    frac = (x + 1) / 0.5 - cell                             # position inside the cell: U(0, 1)^2
    assert torch.all((frac.mean(0) - 0.5).abs() < 4 / math.sqrt(12 * n))


def test_eight_gaussians_is_its_documented_mixture():
    d = load_dataset("eight_gaussians", n=16000, seed=1)
    k = torch.arange(8, dtype=torch.float64) * 2 * math.pi / 8
    means = torch.stack([torch.cos(k), torch.sin(k)], 1)      # radius 1
    assert torch.allclose(d.mixture.means, means, atol=1e-12)
    assert torch.allclose(d.mixture.eigenvalues, torch.full((8, 2), 0.05 ** 2, dtype=torch.float64))
    z = (d.x.double() - means[d.y]) / 0.05                  # N(0, I) given the label
    n = len(z)
    assert torch.all(z.mean(0).abs() < 4 / math.sqrt(n))
    assert torch.all((z.var(0) - 1).abs() < 4 * math.sqrt(2 / n))
    counts = torch.bincount(d.y, minlength=8).double()
    assert torch.all((counts - n / 8).abs() < 4 * math.sqrt(n / 8 * 7 / 8))


def test_multiscale_2d_is_scorekit_toy_divided_by_three():
    d = load_dataset("multiscale_2d", n=20000, seed=2)
    base = toy_multiscale_2d()
    assert torch.allclose(d.mixture.means, base.means / 3, atol=1e-12)
    assert torch.allclose(d.mixture.covs(), base.covs() / 9, atol=1e-12)
    # Monte Carlo: the sample mean of x/... equals the mixture mean within 4 standard errors
    n = len(d)
    mean, cov = d.mixture.mean(), d.mixture.covariance()
    se = (cov.diagonal() / n).sqrt()
    assert torch.all((d.x.double().mean(0) - mean).abs() < 4 * se)
    assert torch.allclose(d.mixture.mean(), base.mean() / 3, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits
# ---------------------------------------------------------------------------------------------

def test_digits_values_labels_and_range():
    from sklearn.datasets import load_digits as sk
    ref = sk()
    d = load_dataset("digits")
    assert d.x.shape == (1797, 1, 8, 8) and d.num_classes == 10
    assert torch.equal(d.y, torch.as_tensor(ref.target, dtype=torch.long))
    assert torch.equal((d.x[:, 0].double() + 1) * 8, torch.as_tensor(ref.images, dtype=torch.float64))
    assert d.x.min() == -1 and d.x.max() == 1


def test_digits_upscaling_nearest_and_bilinear():
    base = load_dataset("digits").x.double()
    near = load_dataset("digits", size=16).x.double()
    assert near.shape == (1797, 1, 16, 16)
    assert torch.equal(near, base.repeat_interleave(2, -1).repeat_interleave(2, -2))
    # bilinear 2x, edge-clamped: out[2i] = 3/4 v[i] + 1/4 v[i-1], out[2i+1] = 3/4 v[i] + 1/4 v[i+1]
    v = base[:20, 0].numpy()

    def up(a, axis):
        a = np.moveaxis(a, axis, -1)
        prev = np.concatenate([a[..., :1], a[..., :-1]], -1)
        nxt = np.concatenate([a[..., 1:], a[..., -1:]], -1)
        out = np.empty(a.shape[:-1] + (2 * a.shape[-1],))
        out[..., 0::2] = 0.75 * a + 0.25 * prev
        out[..., 1::2] = 0.75 * a + 0.25 * nxt
        return np.moveaxis(out, -1, axis)

    expect = up(up(v, -1), -2)
    bil = load_dataset("digits", size=16, interpolation="bilinear", stop=20).x[:, 0].double().numpy()
    assert np.allclose(bil, expect, atol=1e-6)


def test_digits_three_channels_and_subset():
    d = load_dataset("digits", channels=3, start=100, stop=150)
    base = load_dataset("digits")
    assert d.x.shape == (50, 3, 8, 8)
    assert torch.equal(d.x, base.x[100:150].expand(-1, 3, -1, -1))
    assert torch.equal(d.y, base.y[100:150])


# ---------------------------------------------------------------------------------------------
# MNIST IDX
# ---------------------------------------------------------------------------------------------

@needs_mnist
def test_real_mnist_labels_shapes_and_values(mnist):
    assert mnist.x.shape == (10000, 1, 28, 28) and mnist.num_classes == 10
    assert torch.bincount(mnist.y).tolist() == MNIST_COUNTS
    assert mnist.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]      # the well-known first labels
    assert mnist.x.min() == -1 and mnist.x.max() == 1
    v = (mnist.x + 1) * 127.5                                            # back to 0..255
    assert torch.allclose(v, v.round(), atol=1e-4)
    assert (mnist.x[:, :, :2] == -1).float().mean() > 0.99                  # dark border rows


@needs_mnist
def test_real_mnist_padding_and_split(mnist):
    pad = load_dataset(f"mnist:{MNIST / 't10k-images-idx3-ubyte.gz'}", pad_to=32, start=8000)
    assert pad.x.shape == (2000, 1, 32, 32)
    assert torch.equal(pad.x[:, :, 2:30, 2:30], mnist.x[8000:])
    border = pad.x.clone()
    border[:, :, 2:30, 2:30] = 0
    assert torch.all((border == 0) | (border == -1)) and (border == -1).sum() == 2000 * (32 * 32 - 28 * 28)
    assert torch.equal(pad.y, mnist.y[8000:]) and pad.num_classes == 10
    assert pad.config()["start"] == 8000 and pad.config()["spec"] == f"mnist:{MNIST / 't10k-images-idx3-ubyte.gz'}"


@pytest.mark.parametrize("compress", [True, False])
def test_made_up_idx_files_are_read_exactly(tmp_path, compress):
    images = rng_images(5, 6, 4, seed=1)
    labels = np.array([3, 0, 9, 12, 1], dtype=np.uint8)
    path = write_idx(tmp_path / "m", images, labels, compress=compress)
    assert np.array_equal(read_idx(path, magic=2051), images)
    d = load_dataset(f"mnist:{tmp_path / 'm'}")
    assert d.x.shape == (5, 1, 6, 4)
    assert torch.equal(d.x[:, 0], as_unit(images))
    assert d.y.tolist() == [3, 0, 9, 12, 1] and d.num_classes == 13
    d3 = load_dataset(f"mnist:{path}", channels=3, pad_to=8)
    assert d3.x.shape == (5, 3, 8, 8) and torch.equal(d3.x[:, 1, 1:7, 2:6], as_unit(images))
    # an odd remainder goes to the bottom / right: 6x4 in 9x9 -> rows 1..6, columns 2..5
    d9 = load_dataset(f"mnist:{path}", pad_to=9)
    inner = torch.full((5, 9, 9), -1.0)
    inner[:, 1:7, 2:6] = as_unit(images)
    assert torch.equal(d9.x[:, 0], inner)


def test_idx_images_without_labels(tmp_path):
    path = write_idx(tmp_path, rng_images(3, 4, 4), None)
    d = load_dataset(f"mnist:{path}")
    assert d.y is None and d.num_classes is None and len(d) == 3


def test_idx_bad_files(tmp_path):
    images, labels = rng_images(4, 5, 5), np.arange(4, dtype=np.uint8)
    good = idx_bytes(images)
    # truncated (plain)
    f = tmp_path / "trunc" / "x-images-idx3-ubyte"
    f.parent.mkdir()
    f.write_bytes(good[:-7])
    with raises(str(f)) as err:
        load_dataset(f"mnist:{f.parent}")
    assert "truncated" in str(err.value)
    f.write_bytes(good[:-1])                              # one byte short
    with raises("is truncated"):
        load_dataset(f"mnist:{f}")
    f.write_bytes(good + b"\0")                           # one byte too many
    with raises("longer than its header says"):
        load_dataset(f"mnist:{f}")
    # truncated gzip stream
    g = tmp_path / "gz" / "x-images-idx3-ubyte.gz"
    g.parent.mkdir()
    g.write_bytes(gzip.compress(good)[:-20])
    with raises(str(g)):
        load_dataset(f"mnist:{g}")
    # header cut short
    h = tmp_path / "hdr-images-idx3-ubyte"
    h.write_bytes(good[:9])
    with raises(str(h)):
        load_dataset(f"mnist:{h}")
    # wrong magic: a labels file given as images
    w = tmp_path / "w" / "y-images-idx3-ubyte"
    w.parent.mkdir()
    w.write_bytes(idx_bytes(labels))
    with raises(str(w)) as err:
        load_dataset(f"mnist:{w}")
    assert "magic" in str(err.value) and "2051" in str(err.value)
    # not an IDX file at all
    n = tmp_path / "n" / "z-images-idx3-ubyte"
    n.parent.mkdir()
    n.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    with raises(str(n)):
        load_dataset(f"mnist:{n}")
    # label count does not match
    write_idx(tmp_path / "count", images, np.arange(3, dtype=np.uint8))
    with raises("3 labels") as err:
        load_dataset(f"mnist:{tmp_path / 'count'}")
    assert "labels-idx1-ubyte" in str(err.value)
    # missing path and a folder without IDX files
    with raises(str(tmp_path / "nope")):
        load_dataset(f"mnist:{tmp_path / 'nope'}")
    (tmp_path / "empty").mkdir()
    with raises(str(tmp_path / "empty")):
        load_dataset(f"mnist:{tmp_path / 'empty'}")
    # two image sets in one folder: ambiguous
    write_idx(tmp_path / "two", images, labels, prefix="train")
    write_idx(tmp_path / "two", images, labels, prefix="t10k")
    with raises("several IDX images files"):
        load_dataset(f"mnist:{tmp_path / 'two'}")
    # pad_to smaller than the images
    write_idx(tmp_path / "ok", images, labels)
    with raises("pad_to=4"):
        load_dataset(f"mnist:{tmp_path / 'ok'}", pad_to=4)


# ---------------------------------------------------------------------------------------------
# Image folders
# ---------------------------------------------------------------------------------------------

@needs_cifar
def test_real_cifar_folder(cifar_dir):
    d = load_dataset(f"folder:{cifar_dir}")
    assert d.x.shape == (300, 3, 32, 32) and d.num_classes == 10
    assert d.class_names == ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                             "horse", "ship", "truck")
    assert torch.bincount(d.y).tolist() == [30] * 10
    assert d.x.min() >= -1 and d.x.max() <= 1 and d.x.min() < -0.9 and d.x.max() > 0.9
    # sorted by class, then file name; pixels exactly PIL's decoding, scaled v / 127.5 - 1
    first = sorted((cifar_dir / "airplane").iterdir())[0]
    assert torch.equal(d.x[0], as_unit(np.asarray(Image.open(first).convert("RGB"))).permute(2, 0, 1))
    last = sorted((cifar_dir / "truck").iterdir())[-1]
    assert torch.equal(d.x[-1], as_unit(np.asarray(Image.open(last).convert("RGB"))).permute(2, 0, 1))
    grey = load_dataset(f"folder:{cifar_dir}", channels=1, size=16, stop=40)
    assert grey.x.shape == (40, 1, 16, 16)
    ref = Image.open(first).convert("L").resize((16, 16), Image.Resampling.BICUBIC)
    assert torch.equal(grey.x[0, 0], as_unit(np.asarray(ref)))


def test_flat_and_class_folders(tmp_path):
    imgs = rng_images(6, 8, 6, 3)                          # 8 rows, 6 columns
    flat = tmp_path / "flat"
    for i in range(3):
        save_image(flat / f"{i}.png", imgs[i])
    (flat / "README.txt").write_text("not an image")
    save_image(flat / ".hidden.png", imgs[5])
    d = load_dataset(f"folder:{flat}")
    assert d.y is None and d.num_classes is None and d.class_names is None
    assert torch.equal(d.x, as_unit(imgs[:3]).permute(0, 3, 1, 2))

    classes = tmp_path / "classes"
    save_image(classes / "zebra" / "a.png", imgs[0])
    save_image(classes / "ant" / "deep" / "er" / "b.png", imgs[1])
    save_image(classes / "ant" / "c.png", imgs[2])
    (classes / "empty").mkdir()
    d = load_dataset(f"folder:{classes}")
    assert d.class_names == ("ant", "zebra") and d.num_classes == 2
    assert d.y.tolist() == [0, 0, 1]
    # order: ant/c.png sorts before ant/deep/er/b.png ("c.png" < "deep")
    assert torch.equal(d.x, as_unit(imgs[[2, 1, 0]]).permute(0, 3, 1, 2))


def test_folder_channels(tmp_path):
    grey = rng_images(2, 6, 6, seed=3)
    colour = rng_images(2, 6, 6, 3, seed=4)
    g = tmp_path / "grey"
    save_image(g / "a.png", grey[0])
    save_image(g / "b.png", grey[1])
    d = load_dataset(f"folder:{g}")
    assert d.x.shape == (2, 1, 6, 6) and torch.equal(d.x[:, 0], as_unit(grey))
    d3 = load_dataset(f"folder:{g}", channels=3)
    assert torch.equal(d3.x, d.x.expand(-1, 3, -1, -1))

    mixed = tmp_path / "mixed"
    save_image(mixed / "a.png", grey[0])
    save_image(mixed / "b.png", colour[0])
    with raises(str(mixed / "a.png")) as err:
        load_dataset(f"folder:{mixed}")
    assert str(mixed / "b.png") in str(err.value) and "channels=" in str(err.value)
    one = load_dataset(f"folder:{mixed}", channels=1)
    ref = np.asarray(Image.fromarray(colour[0]).convert("L"))
    assert torch.equal(one.x[1, 0], as_unit(ref)) and torch.equal(one.x[0, 0], as_unit(grey[0]))
    with raises("channels"):
        load_dataset(f"folder:{mixed}", channels=2)


def test_folder_resize_and_centre_crop(tmp_path):
    wide = np.zeros((20, 40, 3), dtype=np.uint8)
    wide[:, :, 0] = np.arange(40)[None, :] * 5            # a ramp along the width
    save_image(tmp_path / "f" / "wide.png", wide)
    d = load_dataset(f"folder:{tmp_path / 'f'}", size=20)
    assert d.x.shape == (1, 3, 20, 20)
    assert torch.equal(d.x[0].permute(1, 2, 0), as_unit(wide[:, 10:30]))      # central 20 columns
    small = load_dataset(f"folder:{tmp_path / 'f'}", size=10)
    assert small.x.shape == (1, 3, 10, 10)


def test_folder_mixed_sizes_and_empty(tmp_path):
    f = tmp_path / "sizes"
    save_image(f / "a.png", rng_images(1, 32, 32, 3)[0])
    save_image(f / "b.png", rng_images(1, 28, 30, 3)[0])
    with raises("32x32") as err:
        load_dataset(f"folder:{f}")
    assert "30x28" in str(err.value) and str(f / "b.png") in str(err.value) and "size=" in str(err.value)
    assert load_dataset(f"folder:{f}", size=16).x.shape == (2, 3, 16, 16)

    (tmp_path / "empty").mkdir()
    with raises(str(tmp_path / "empty")) as err:
        load_dataset(f"folder:{tmp_path / 'empty'}")
    assert "no image files" in str(err.value)
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "a.txt").write_text("x")
    with raises("no image files"):
        load_dataset(f"folder:{tmp_path / 'text'}")
    with raises(str(tmp_path / "missing")):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    both = tmp_path / "both"
    save_image(both / "top.png", rng_images(1, 4, 4, 3)[0])
    save_image(both / "cls" / "in.png", rng_images(1, 4, 4, 3)[0])
    with raises(str(both / "top.png")):
        load_dataset(f"folder:{both}")


def test_sixteen_bit_grey_keeps_its_top_eight_bits_and_float_pixels_are_refused(tmp_path):
    """16-bit grey comes as mode I;16 (PNG, TIFF with Pillow >= 10.3) or I (PGM, and PNG on older
    Pillow); both keep the top 8 bits, v >> 8, so 0, 16384, 32768, 65535 read as levels 0, 64,
    128, 255 -- not PIL's clip to 255. Mode F (float TIFF) has no standard range: refused,
    naming the file. A hand-written binary PGM (P5, maxval 65535, big-endian) is the oracle."""
    values = np.array([[0, 16384, 32768, 65535]], dtype=">u2")
    f = tmp_path / "g"
    f.mkdir()
    (f / "a.pgm").write_bytes(b"P5\n4 1\n65535\n" + values.tobytes())
    with Image.open(f / "a.pgm") as img:
        assert img.mode in ("I", "I;16", "I;16B")
    d = load_dataset(f"folder:{f}")
    assert torch.equal(d.x[0, 0, 0], as_unit(np.array([0, 64, 128, 255], dtype=np.uint8)))
    Image.fromarray(values.astype(np.int32), mode="I").save(f / "a.pgm")    # the same, as mode I
    with Image.open(f / "a.pgm") as img:
        assert img.mode == "I"
    assert torch.equal(load_dataset(f"folder:{f}").x, d.x)
    t = tmp_path / "t"
    t.mkdir()
    Image.fromarray(np.array([[0.0, 0.25, 0.5, 1.0]], dtype=np.float32), mode="F").save(t / "f.tif")
    with raises(str(t / "f.tif")) as err:
        load_dataset(f"folder:{t}")
    assert "floating-point" in str(err.value)


def test_folder_corrupt_files(tmp_path):
    f = tmp_path / "c"
    imgs = rng_images(3, 8, 8, 3)
    for i in range(3):
        save_image(f / f"{i}.png", imgs[i])
    buf = io.BytesIO()
    Image.fromarray(rng_images(1, 64, 64, 3)[0]).save(buf, format="JPEG")
    (f / "3.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])      # truncated JPEG
    with raises(str(f / "3.jpg")) as err:
        load_dataset(f"folder:{f}")
    assert "skip_corrupt" in str(err.value)
    (f / "3.jpg").unlink()
    (f / "2b.png").write_bytes(b"this is not a PNG")
    with raises(str(f / "2b.png")):
        load_dataset(f"folder:{f}")
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        d = load_dataset(f"folder:{f}", skip_corrupt=True)
    assert d.skipped == 1 and len(d) == 3 and torch.equal(d.x, as_unit(imgs).permute(0, 3, 1, 2))
    with pytest.warns(UserWarning, match="skipped 1 unreadable"):
        again = dataset_from_config(json.loads(json.dumps(d.config())))
    assert torch.equal(again.x, d.x)


def test_folder_tar_archive_matches_folder(tmp_path, capsys):
    src = tmp_path / "src" / "wrap"
    imgs = rng_images(4, 8, 8, 3, seed=5)
    for i, cls in enumerate(["b", "a", "b", "a"]):
        save_image(src / cls / f"{i}.png", imgs[i])
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(src, arcname="wrap")
    from_dir = load_dataset(f"folder:{src}")
    from_tar = load_dataset(f"folder:{archive}", progress=True)
    assert "loading" in capsys.readouterr().err                 # the progress bar was shown
    assert from_tar.class_names == ("a", "b") == from_dir.class_names
    assert torch.equal(from_tar.x, from_dir.x) and torch.equal(from_tar.y, from_dir.y)
    assert "progress" not in from_tar.config()
    bad = tmp_path / "bad.tar.gz"
    bad.write_bytes(archive.read_bytes()[:-40])
    with raises(str(bad)):
        load_dataset(f"folder:{bad}")
    plain = tmp_path / "plain.bin"
    plain.write_bytes(b"abc")
    with raises(str(plain)):
        load_dataset(f"folder:{plain}")


# ---------------------------------------------------------------------------------------------
# NumPy files
# ---------------------------------------------------------------------------------------------

def test_npz_uint8_layouts_and_labels(tmp_path):
    nhwc = rng_images(5, 6, 7, 3, seed=9)
    np.savez(tmp_path / "hwc.npz", x=nhwc, y=np.array([0, 2, 1, 2, 0]))
    np.savez(tmp_path / "chw.npz", images=nhwc.transpose(0, 3, 1, 2))
    a = load_dataset(f"npz:{tmp_path / 'hwc.npz'}")
    b = load_dataset(f"npz:{tmp_path / 'chw.npz'}")
    assert a.x.shape == (5, 3, 6, 7) and torch.equal(a.x, b.x)
    assert torch.equal(a.x, as_unit(nhwc).permute(0, 3, 1, 2))
    assert a.y.tolist() == [0, 2, 1, 2, 0] and a.num_classes == 3 and b.y is None
    assert load_dataset(f"npz:{tmp_path / 'hwc.npz'}", num_classes=10).num_classes == 10
    np.savez(tmp_path / "hw.npz", x=nhwc[..., 0])
    grey = load_dataset(f"npz:{tmp_path / 'hw.npz'}")
    assert grey.x.shape == (5, 1, 6, 7) and grey.x[0, 0, 0, 0] == nhwc[0, 0, 0, 0] / 127.5 - 1
    np.savez(tmp_path / "ext.npz", x=np.array([[[[0, 255], [51, 128]]]], dtype=np.uint8))
    assert load_dataset(f"npz:{tmp_path / 'ext.npz'}").x.flatten().tolist() == pytest.approx(
        [-1.0, 1.0, 51 / 127.5 - 1, 128 / 127.5 - 1])
    # an ambiguous channel axis needs layout=
    np.savez(tmp_path / "amb.npz", x=rng_images(2, 3, 4, 3))
    with raises("layout="):
        load_dataset(f"npz:{tmp_path / 'amb.npz'}")
    assert load_dataset(f"npz:{tmp_path / 'amb.npz'}", layout="NHWC").x.shape == (2, 3, 3, 4)


def test_npz_float_taken_as_is_and_npy(tmp_path):
    pts = np.random.RandomState(0).randn(50, 3).astype(np.float64) * 5
    np.savez(tmp_path / "pts.npz", pts)                       # unnamed: arr_0
    d = load_dataset(f"npz:{tmp_path / 'pts.npz'}")
    assert d.x.shape == (50, 3) and torch.allclose(d.x.double(), torch.from_numpy(pts), atol=1e-5)
    np.save(tmp_path / "pts.npy", pts)
    assert torch.equal(load_dataset(f"npz:{tmp_path / 'pts.npy'}").x, d.x)
    with raises("channels"):
        load_dataset(f"npz:{tmp_path / 'pts.npz'}", channels=3)


def test_npz_float_images_find_their_channel_axis_like_uint8_ones(tmp_path):
    """Float (N, H, W, 3) images load as (N, 3, H, W), as uint8 ones do; (N, C, H, W) with any C
    (4 latent channels) stays as it is."""
    x = np.random.RandomState(1).uniform(-1, 1, (4, 5, 6, 3)).astype(np.float32)
    np.savez(tmp_path / "hwc.npz", x=x)
    d = load_dataset(f"npz:{tmp_path / 'hwc.npz'}")
    assert d.x.shape == (4, 3, 5, 6) and torch.equal(d.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    latents = np.zeros((2, 4, 8, 8), dtype=np.float32)
    np.savez(tmp_path / "latents.npz", x=latents)
    assert load_dataset(f"npz:{tmp_path / 'latents.npz'}").x.shape == (2, 4, 8, 8)


def test_npz_bad_inputs(tmp_path):
    x = np.zeros((6, 2), dtype=np.float32)
    x[3, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x)
    with raises("data contains NaN at index 3") as err:
        load_dataset(f"npz:{tmp_path / 'nan.npz'}")
    assert str(tmp_path / "nan.npz") in str(err.value)
    x[3, 1] = 0
    x[5, 0] = -np.inf
    np.savez(tmp_path / "inf.npz", x=x)
    with raises("data contains Inf at index 5"):
        load_dataset(f"npz:{tmp_path / 'inf.npz'}")
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    with raises(str(tmp_path / "obj.npz")) as err:
        load_dataset(f"npz:{tmp_path / 'obj.npz'}")
    assert "objects" in str(err.value)
    np.savez(tmp_path / "int.npz", x=np.zeros((3, 4), dtype=np.int64))
    with raises("uint8"):
        load_dataset(f"npz:{tmp_path / 'int.npz'}")
    np.savez(tmp_path / "ny.npz", x=np.zeros((3, 4), dtype=np.float32), y=np.zeros(2, dtype=np.int64))
    with raises("2 labels"):
        load_dataset(f"npz:{tmp_path / 'ny.npz'}")
    np.savez(tmp_path / "fy.npz", x=np.zeros((3, 4), dtype=np.float32), y=np.zeros(3))
    with raises("integer"):
        load_dataset(f"npz:{tmp_path / 'fy.npz'}")
    np.savez(tmp_path / "uy.npz", x=np.zeros((3, 4), dtype=np.float32),
             y=np.array([0, 1, 2 ** 64 - 1], dtype=np.uint64))          # would wrap to -1 as int64
    with raises(f"found {2 ** 64 - 1}"):
        load_dataset(f"npz:{tmp_path / 'uy.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not numpy at all")
    with raises(str(tmp_path / "junk.npz")):
        load_dataset(f"npz:{tmp_path / 'junk.npz'}")
    with raises(str(tmp_path / "missing.npz")):
        load_dataset(f"npz:{tmp_path / 'missing.npz'}")
    np.savez(tmp_path / "four.npz", x=np.zeros((2, 4, 5, 5), dtype=np.uint8))
    with raises("1 or 3 channels"):
        load_dataset(f"npz:{tmp_path / 'four.npz'}", layout="NCHW")


# ---------------------------------------------------------------------------------------------
# Specs, options, config, augmentation, checks
# ---------------------------------------------------------------------------------------------

def test_bad_specs_and_options(tmp_path):
    with raises("'nonsense'"):
        load_dataset("nonsense")
    with raises("mnist:PATH"):
        load_dataset("mnist")
    with raises("'zip'"):
        load_dataset("zip:foo")
    (tmp_path / "a.npz").write_bytes(b"")
    with raises(f"npz:{tmp_path / 'a.npz'}"):
        load_dataset(str(tmp_path / "a.npz"))
    with raises("colour"):
        load_dataset("moons", colour=3)
    with raises("n (the number of points)"):
        load_dataset("moons", n=0)
    with raises("noise"):
        load_dataset("swiss_roll", noise=-1.0)
    with raises("seed"):
        load_dataset("checkerboard", seed=-1)
    with raises("unknown moons data option flip"):
        load_dataset("moons", flip=True)
    with raises("flip=True needs images"):
        Dataset(torch.zeros(3, 2), flip=True)
    with raises("flip=yes: expected true or false"):
        load_dataset("digits", flip="yes")
    with raises("start < stop <= 1797"):
        load_dataset("digits", start=10, stop=5000)
    with raises("interpolation"):
        load_dataset("digits", size=16, interpolation="cubic")
    with raises("channels"):
        load_dataset("digits", channels=2)
    with raises("'spec'"):
        dataset_from_config({"n": 3})


def test_channel_conversion_matches_pil_exactly():
    rgb = rng_images(1, 128, 128, 3, seed=11)[0]          # enough pixels to test the rounding
    ours = convert_channels(rgb.transpose(2, 0, 1)[None], 1)[0, 0]
    assert np.array_equal(ours, np.asarray(Image.fromarray(rgb).convert("L")))
    f = rgb.transpose(2, 0, 1)[None].astype(np.float32)
    grey = convert_channels(f, 1)[0, 0]
    assert np.allclose(grey, 0.299 * f[0, 0] + 0.587 * f[0, 1] + 0.114 * f[0, 2])


def test_augment_flips_half_the_images_exactly():
    n = 20000
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).reshape(1, 2, 3, 4).expand(n, -1, -1, -1) / 24
    d = Dataset(x.contiguous(), flip=True)
    out = d.augment(d.x, torch.Generator().manual_seed(0))
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    same = (out == x).flatten(1).all(1)
    assert torch.all(flipped ^ same)                          # each image: exactly one of the two
    assert abs(flipped.double().mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)
    again = d.augment(d.x, torch.Generator().manual_seed(0))
    assert torch.equal(out, again)
    other = d.augment(d.x, torch.Generator().manual_seed(1))
    assert not torch.equal(out, other)
    plain = Dataset(x.contiguous())
    assert plain.augment(plain.x, torch.Generator()) is plain.x
    dig = load_dataset("digits", flip=True, stop=10)
    assert dig.flip and dig.config()["flip"] is True


@needs_mnist
def test_check_compatible(mnist):
    with raises("28x28") as err:
        check_compatible(mnist, multiple_of=8)
    assert "pad_to=32" in str(err.value)
    check_compatible(mnist, channels=1, image_size=28, multiple_of=4, num_classes=10)
    with raises("load the data with channels=3"):
        check_compatible(mnist, channels=3)
    with raises("32x32"):
        check_compatible(mnist, image_size=32)
    with raises("use an image network"):
        check_compatible(mnist, dim=2)
    with raises("num_classes=10"):
        check_compatible(mnist, num_classes=5)
    moons = load_dataset("moons", n=100)
    check_compatible(moons, dim=2, num_classes=2)
    with raises("vectors"):
        check_compatible(moons, channels=1)
    with raises("dim=2"):
        check_compatible(moons, dim=3)
    roll = load_dataset("swiss_roll", n=100)
    with raises("no labels"):
        check_compatible(roll, dim=2, num_classes=3)
    roll.x[17, 0] = float("nan")                            # data spoilt after loading
    with raises("data contains NaN at index 17"):
        check_compatible(roll, dim=2)


def test_dataset_validation():
    with raises("NaN at index 1"):
        Dataset(torch.tensor([[0.0], [float("nan")]]))
    with raises("float tensor"):
        Dataset(torch.zeros(3, 4, 4))
    with raises("empty"):
        Dataset(torch.zeros(0, 2))
    with raises("labels must lie in 0 .. 1"):
        Dataset(torch.zeros(3, 2), torch.tensor([0, 1, 2]), num_classes=2)
    d = Dataset(torch.zeros(3, 2), torch.tensor([0, 4, 2]))
    assert d.num_classes == 5 and len(d) == 3 and d.shape == (2,)
