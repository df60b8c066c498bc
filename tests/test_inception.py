"""Tests of the FID Inception network (scorekit.metrics.inception) with synthetic weights: its
tensor names and shapes (those of pytorch-fid's port of the TensorFlow graph), loading from
safetensors, the forward pass at 299x299 and through the resize, the input quantisation and
resize against hand-written references, and the refusal of unusable weight files."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from scorekit.errors import ScorekitError
from scorekit.metrics import FeatureExtractor, FIDInceptionV3, InceptionFeatures
from scorekit.metrics.inception import CONVERSION_SNIPPET, expected_tensors, inception_input, quantize_uint8
from scorekit.plotting import _grid_array

EVALUATION_DOC = os.path.join(os.path.dirname(__file__), "..", "docs", "evaluation.md")

#: a few tensors of pytorch-fid's pt_inception-2015-12-05 state dict, with their shapes
KEY_TENSORS = {
    "Conv2d_1a_3x3.conv.weight": (32, 3, 3, 3),
    "Conv2d_1a_3x3.bn.running_var": (32,),
    "Conv2d_2b_3x3.conv.weight": (64, 32, 3, 3),
    "Conv2d_4a_3x3.conv.weight": (192, 80, 3, 3),
    "Mixed_5b.branch1x1.conv.weight": (64, 192, 1, 1),
    "Mixed_5b.branch5x5_2.conv.weight": (64, 48, 5, 5),
    "Mixed_5b.branch_pool.conv.weight": (32, 192, 1, 1),
    "Mixed_5d.branch_pool.bn.running_mean": (64,),
    "Mixed_6a.branch3x3.conv.weight": (384, 288, 3, 3),
    "Mixed_6b.branch7x7_2.conv.weight": (128, 128, 1, 7),
    "Mixed_6e.branch7x7dbl_4.conv.weight": (192, 192, 7, 1),
    "Mixed_7a.branch3x3_2.conv.weight": (320, 192, 3, 3),
    "Mixed_7a.branch7x7x3_4.conv.weight": (192, 192, 3, 3),
    "Mixed_7b.branch3x3_2a.conv.weight": (384, 384, 1, 3),
    "Mixed_7b.branch3x3dbl_1.conv.weight": (448, 1280, 1, 1),
    "Mixed_7c.branch3x3dbl_3b.conv.weight": (384, 384, 3, 1),
    "Mixed_7c.branch_pool.conv.weight": (192, 2048, 1, 1),
    "Mixed_7c.branch_pool.bn.bias": (192,),
    "fc.weight": (1008, 2048),
    "fc.bias": (1008,),
}


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A safetensors file of synthetic weights (random BatchNorm statistics included) and its state."""
    net = FIDInceptionV3()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, t in net.state_dict().items():
            if name.endswith("running_mean") or name.endswith(".bias"):
                t.copy_(0.1 * torch.randn(t.shape, generator=g))
            elif name.endswith("running_var") or name.endswith("bn.weight"):
                t.copy_(0.5 + torch.rand(t.shape, generator=g))
    state = {k: v.contiguous() for k, v in expected_tensors_state(net).items()}
    path = tmp_path_factory.mktemp("inception") / "weights.safetensors"
    save_file(state, str(path))
    return path, state


def expected_tensors_state(net):
    return {k: v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}


def test_tensor_names_and_shapes():
    shapes = expected_tensors()
    assert len(shapes) == 472                     # 94 conv + BatchNorm blocks (5 tensors each), fc
    for name, shape in KEY_TENSORS.items():
        assert shapes[name] == shape, name
    assert sum(math.prod(s) for n, s in shapes.items() if not n.endswith(("running_mean", "running_var"))) \
        == 23_850_960
    assert not any(".conv.bias" in n for n in shapes)
    assert list(dict.fromkeys(n.split(".")[0] for n in shapes)) == [
        "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
        "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
        "Mixed_7a", "Mixed_7b", "Mixed_7c", "fc"]
    net = FIDInceptionV3()
    assert all(m.eps == 0.001 for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_loads_and_runs_at_299_and_through_the_resize(weights):
    path, state = weights
    ex = InceptionFeatures.from_file(path)
    assert isinstance(ex, FeatureExtractor) and ex.has_probabilities
    loaded = ex.module.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())
    g = torch.Generator().manual_seed(1)
    for side in (299, 32):
        x = torch.rand(2, 3, side, side, generator=g) * 2 - 1
        f, p = ex.features_and_probabilities(x, batch_size=2)
        assert f.shape == (2, 2048) and p.shape == (2, 1008)
        assert f.dtype == p.dtype == torch.float64 and bool(torch.isfinite(f).all())
        assert torch.allclose(p.sum(1), torch.ones(2, dtype=torch.float64))
        with torch.no_grad():
            pool, logits = ex.module(inception_input(quantize_uint8(x)))
        assert torch.allclose(f, pool.double(), rtol=1e-5, atol=1e-6)
        assert torch.allclose(p, torch.softmax(logits.double(), 1), rtol=1e-5, atol=1e-9)
    assert ex.weights_hash == InceptionFeatures.from_file(path).weights_hash


def test_quantisation_is_a_pngs():
    # nearest pixel value; 0 gives 127.5, the one tie a float can hit, which goes to 128 (even);
    # out-of-range values clip
    x = torch.tensor([-1.5, -1.0, 0.49 / 127.5 - 1, 0.51 / 127.5 - 1, 0.0, 254.6 / 127.5 - 1, 1.0, 2.0],
                     dtype=torch.float64)
    assert quantize_uint8(x).tolist() == [0, 0, 0, 1, 128, 255, 255, 255]
    img = torch.rand(2, 3, 5, 4, generator=torch.Generator().manual_seed(2)) * 2.2 - 1.1
    grid, _ = _grid_array(img[:1], nrow=1, padding=0, pad_value=1.0)   # what image_grid writes
    assert np.array_equal(quantize_uint8(img[:1])[0].permute(1, 2, 0).numpy(), grid)
    assert quantize_uint8(img).dtype == torch.uint8


def bilinear_reference(u: np.ndarray, out: int) -> np.ndarray:
    """Bilinear resize of one channel (H, W) without antialiasing, half-pixel centres
    (align_corners=False): source coordinate (i + 0.5) * H / out - 0.5, clamped at 0."""
    def axis(n_in):
        src = np.maximum((np.arange(out) + 0.5) * n_in / out - 0.5, 0.0)
        i0 = np.floor(src).astype(int)
        i1 = np.minimum(i0 + 1, n_in - 1)
        return i0, i1, src - i0
    (r0, r1, wr), (c0, c1, wc) = axis(u.shape[0]), axis(u.shape[1])
    top = u[r0][:, c0] * (1 - wc) + u[r0][:, c1] * wc
    bottom = u[r1][:, c0] * (1 - wc) + u[r1][:, c1] * wc
    return top * (1 - wr)[:, None] + bottom * wr[:, None]


def test_resize_and_scaling_match_a_hand_written_reference():
    pixels = torch.tensor([[[[0, 255, 17], [128, 3, 250]]]], dtype=torch.uint8)   # (1, 1, 2, 3)
    x = inception_input(pixels)
    assert x.shape == (1, 3, 299, 299) and x.dtype == torch.float32
    want = 2 * bilinear_reference(pixels[0, 0].double().numpy(), 299) / 255 - 1
    for c in range(3):                                     # greyscale repeated to three channels
        assert np.allclose(x[0, c].double().numpy(), want, rtol=0, atol=1e-6)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    # an image already 299x299 is only rescaled
    big = torch.randint(0, 256, (1, 3, 299, 299), dtype=torch.uint8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(inception_input(big), 2 * big.float() / 255 - 1, rtol=0, atol=1e-6)


def test_bad_files_are_refused(weights, tmp_path):
    path, state = weights
    pth = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    pth.write_bytes(b"not read")
    with pytest.raises(ScorekitError, match="pickled PyTorch file") as err:
        InceptionFeatures.from_file(pth)
    assert CONVERSION_SNIPPET in str(err.value)
    with pytest.raises(ScorekitError, match="does not exist.*pt_inception-2015-12-05-6726825d.pth"):
        InceptionFeatures.from_file(tmp_path / "absent.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x80\x04junk" * 10)
    with pytest.raises(ScorekitError, match="is not a safetensors file"):
        InceptionFeatures.from_file(junk)
    bad = dict(state)
    del bad["Mixed_6c.branch7x7_1.conv.weight"], bad["fc.bias"]
    bad["AuxLogits.fc.weight"] = torch.zeros(1000, 768)
    bad["fc.weight"] = torch.zeros(1000, 2048)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ScorekitError) as err:
        InceptionFeatures.from_file(tmp_path / "bad.safetensors")
    message = str(err.value)
    for part in ("does not hold the FID Inception weights", "2 missing (Mixed_6c.branch7x7_1.conv.weight, fc.bias)",
                 "1 unexpected (AuxLogits.fc.weight)", "fc.weight (1000, 2048) (expected (1008, 2048))"):
        assert part in message


def test_conversion_snippet_works_and_is_documented(weights, tmp_path):
    """The snippet of docs/evaluation.md turns a .pth state dict (BatchNorm counters included) into a file
    from_file reads; the counters are accepted."""
    _, state = weights
    full = dict(state)
    full["Conv2d_1a_3x3.bn.num_batches_tracked"] = torch.tensor(0)
    torch.save(full, tmp_path / "pt_inception-2015-12-05-6726825d.pth")
    subprocess.run([sys.executable, "-c", CONVERSION_SNIPPET], cwd=tmp_path, check=True)
    ex = InceptionFeatures.from_file(tmp_path / "pt_inception-2015-12-05.safetensors")
    assert torch.equal(ex.module.fc.weight, state["fc.weight"])
    with open(EVALUATION_DOC, encoding="utf-8") as fh:
        assert CONVERSION_SNIPPET in fh.read()


def test_wraps_only_a_loaded_network():
    with pytest.raises(ScorekitError, match="InceptionFeatures.from_file"):
        InceptionFeatures(torch.nn.Linear(2, 2))
