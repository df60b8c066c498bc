r"""The FID Inception network: Inception-v3 as the TensorFlow FID graph of 2015-12-05 lays it out.

FID (Heusel et al. 2017) and the Inception Score (Salimans et al. 2016) are defined with one
particular network, the TensorFlow graph ``inception-2015-12-05``. Its PyTorch port,
``pt_inception-2015-12-05-6726825d.pth`` (released with pytorch-fid), is what published PyTorch
FID numbers use; torchvision's own Inception-v3 has other weights and differs in three pooling
layers, and gives other numbers. :class:`FIDInceptionV3` rebuilds the graph's layout with
torchvision's module names, so the port's tensors load under their own names:

    Conv2d_1a_3x3 (3 -> 32, stride 2), Conv2d_2a_3x3 (32), Conv2d_2b_3x3 (64, padding 1),
    max-pool 3/2, Conv2d_3b_1x1 (80), Conv2d_4a_3x3 (192), max-pool 3/2,
    Mixed_5b, Mixed_5c, Mixed_5d     InceptionA (pool features 32, 64, 64)    -> 35x35x288
    Mixed_6a                         InceptionB (grid reduction)              -> 17x17x768
    Mixed_6b .. Mixed_6e             InceptionC (7x7 channels 128, 160, 160, 192)
    Mixed_7a                         InceptionD (grid reduction)              ->  8x8x1280
    Mixed_7b, Mixed_7c               InceptionE                               ->  8x8x2048
    adaptive average pool -> the 2048-d pool features;  fc: Linear(2048, 1008) -> the logits

Every convolution is a ``BasicConv2d``: ``conv`` (no bias), ``bn`` (BatchNorm, eps = 0.001),
ReLU. The TensorFlow graph differs from torchvision's Inception-v3 in the pool branches: its
average pools leave the zero padding out of the average (``count_include_pad=False``, in
Mixed_5*, Mixed_6b..6e and Mixed_7b), and Mixed_7c's pool branch takes a 3x3 *max* pool.

**Input.** :class:`InceptionFeatures` takes images ``(N, 1 or 3, H, W)`` in ``[-1, 1]`` and feeds
the network what the standard FID code feeds it for the same images saved as PNG files
(:func:`inception_input`):

1. quantise to the 8-bit pixels a PNG of the image holds (as :func:`scorekit.plotting.image_grid`
   writes them): ``u = clamp(round((x + 1) * 127.5), 0, 255)``, rounding half to even, in float64;
2. greyscale images: the one channel repeated three times;
3. resize ``u`` (as float32) to 299x299, bilinear without antialiasing, ``align_corners=False``
   (pytorch-fid's ``F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=False)``);
   an image already 299x299 is unchanged;
4. scale to the network's range ``[-1, 1]``: ``2 u / 255 - 1``.

**Outputs.** ``features``: the 2048-d pool features (FID, KID). ``probabilities``: the softmax
over all 1008 logits of ``fc`` -- the graph's 1008 classes, of which 1000 are ImageNet's -- as
pytorch-fid's network and the original Inception Score code compute it.

**Weights.** scorekit reads them from a safetensors file only (:meth:`InceptionFeatures.from_file`);
``docs/evaluation.md`` ("The FID Inception network") says where the ``.pth`` file comes from and how to convert
it once.
"""
from __future__ import annotations

import os

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ScorekitError
from .features import FeatureExtractor

Tensor = torch.Tensor

#: the side of the network's input images
INPUT_SIZE = 299
#: size of the pool features and number of logits
FEATURE_DIM = 2048
NUM_LOGITS = 1008

#: how to convert the released ``.pth`` file once (shown by errors and in docs/evaluation.md)
CONVERSION_SNIPPET = """\
import torch
from safetensors.torch import save_file
state = torch.load("pt_inception-2015-12-05-6726825d.pth", map_location="cpu", weights_only=True)
state = {name: tensor.contiguous() for name, tensor in state.items()}
save_file(state, "pt_inception-2015-12-05.safetensors")"""


class BasicConv2d(nn.Module):
    """Convolution without bias, BatchNorm (eps = 0.001), ReLU."""

    def __init__(self, c_in: int, c_out: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool(x: Tensor) -> Tensor:
    """3x3 average pool, stride 1, the zero padding left out of each average (TensorFlow's)."""
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class InceptionA(nn.Module):
    """Mixed_5b..5d: 1x1 | 1x1 -> 5x5 | 1x1 -> 3x3 -> 3x3 | avg-pool -> 1x1 (64+64+96+pool)."""

    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, 1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, 1)

    def forward(self, x: Tensor) -> Tensor:
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg_pool(x))], 1)


class InceptionB(nn.Module):
    """Mixed_6a, a grid reduction: 3x3/2 | 1x1 -> 3x3 -> 3x3/2 | max-pool 3/2 (384+96+c_in)."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        return torch.cat([self.branch3x3(x), b3, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):
    """Mixed_6b..6e: factorised 7x7 convolutions (1x7 and 7x1), 4 x 192 = 768 channels out."""

    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        row, col = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **row)
        self.branch7x7_3 = BasicConv2d(c7, 192, **col)
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **row)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **col)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **row)
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        d = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3,
                      self.branch7x7dbl_4, self.branch7x7dbl_5):
            d = layer(d)
        return torch.cat([self.branch1x1(x), b7, d, self.branch_pool(_avg_pool(x))], 1)


class InceptionD(nn.Module):
    """Mixed_7a, a grid reduction: 1x1 -> 3x3/2 | 1x1 -> 1x7 -> 7x1 -> 3x3/2 | max-pool 3/2."""

    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        b3 = self.branch3x3_2(self.branch3x3_1(x))
        b7 = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([b3, b7, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):
    """Mixed_7b / Mixed_7c: 1x1 | 1x1 -> (1x3, 3x1) | 1x1 -> 3x3 -> (1x3, 3x1) | pool -> 1x1
    (320 + 768 + 768 + 192 = 2048). The pool is a 3x3 average pool (without the padding) in
    Mixed_7b and a 3x3 max pool in Mixed_7c (``pool="max"``), as in the TensorFlow graph."""

    def __init__(self, c_in: int, pool: str = "avg"):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, 1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, 1)

    def forward(self, x: Tensor) -> Tensor:
        s = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(s), self.branch3x3_2b(s)], 1)
        d = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(d), self.branch3x3dbl_3b(d)], 1)
        pooled = (F.max_pool2d(x, kernel_size=3, stride=1, padding=1) if self.pool == "max"
                  else _avg_pool(x))
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The network of the module docstring. ``forward(x)`` takes the prepared input
    (:func:`inception_input`: ``(N, 3, 299, 299)`` in ``[-1, 1]``) and returns the pool features
    ``(N, 2048)`` and the logits ``(N, 1008)``. Built with PyTorch's default initialisation,
    drawn without touching torch's global generator; load real weights with
    :meth:`InceptionFeatures.from_file`."""

    def __init__(self):
        super().__init__()
        from ..models.layers import global_rng_untouched

        with global_rng_untouched():
            self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
            self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
            self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
            self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
            self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
            self.Mixed_5b = InceptionA(192, pool_features=32)
            self.Mixed_5c = InceptionA(256, pool_features=64)
            self.Mixed_5d = InceptionA(288, pool_features=64)
            self.Mixed_6a = InceptionB(288)
            self.Mixed_6b = InceptionC(768, channels_7x7=128)
            self.Mixed_6c = InceptionC(768, channels_7x7=160)
            self.Mixed_6d = InceptionC(768, channels_7x7=160)
            self.Mixed_6e = InceptionC(768, channels_7x7=192)
            self.Mixed_7a = InceptionD(768)
            self.Mixed_7b = InceptionE(1280, pool="avg")
            self.Mixed_7c = InceptionE(2048, pool="max")
            self.fc = nn.Linear(FEATURE_DIM, NUM_LOGITS)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b,
                      self.Mixed_6c, self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b,
                      self.Mixed_7c):
            x = block(x)
        pool = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return pool, self.fc(pool)


# --- the input ---------------------------------------------------------------------------------------

def quantize_uint8(images: Tensor) -> Tensor:
    """Images in ``[-1, 1]`` -> the uint8 pixels a PNG of them holds:
    ``clamp(round((x + 1) * 127.5), 0, 255)`` in float64, half to even (as
    :func:`scorekit.plotting.image_grid` writes them). Same shape and device (on a device without
    float64 the pixels are computed on the CPU)."""
    if images.device.type == "mps":
        return quantize_uint8(images.cpu()).to(images.device)
    return torch.round((images.to(torch.float64) + 1.0) * 127.5).clamp_(0, 255).to(torch.uint8)


def inception_input(pixels: Tensor) -> Tensor:
    """Steps 2-4 of the module docstring: uint8 pixels ``(N, 1 or 3, H, W)`` -> the network's
    float32 input ``(N, 3, 299, 299)``: channels repeated for greyscale, bilinear resize
    (``align_corners=False``, no antialiasing), ``2 u / 255 - 1``."""
    x = pixels.to(torch.float32)
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
    return 2 * x / 255 - 1


# --- the extractor -----------------------------------------------------------------------------------

def expected_tensors(net: nn.Module | None = None) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor a weights file must hold (BatchNorm's
    ``num_batches_tracked`` counters may be there or not)."""
    net = FIDInceptionV3() if net is None else net
    return {k: tuple(v.shape) for k, v in net.state_dict().items()
            if not k.endswith("num_batches_tracked")}


def _listed(names, limit: int = 4) -> str:
    names = list(names)
    more = f" and {len(names) - limit} more" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


class InceptionFeatures(FeatureExtractor):
    """The FID Inception network as a :class:`~scorekit.metrics.features.FeatureExtractor`:
    ``features`` the 2048-d pool features, ``probabilities`` the softmax of the 1008 logits, of
    images ``(N, 1 or 3, H, W)`` in ``[-1, 1]`` prepared as the module docstring says.

    Build it with :meth:`from_file` (the released weights, converted to safetensors once);
    ``InceptionFeatures(net)`` wraps a :class:`FIDInceptionV3` whose weights are already loaded.
    """

    name = "fid_inception_v3"
    has_probabilities = True

    def __init__(self, net: FIDInceptionV3):
        if not isinstance(net, FIDInceptionV3):
            raise ScorekitError(f"InceptionFeatures wraps a FIDInceptionV3 network, got {type(net).__name__}; "
                                f"load the weights with InceptionFeatures.from_file(path)")
        self.module = net

    @classmethod
    def from_file(cls, path) -> "InceptionFeatures":
        """Read the network's weights from a safetensors file holding exactly the tensors of
        :func:`expected_tensors` under their names (float tensors of any precision, stored as
        float32). Nothing is unpickled: a ``.pth`` / ``.pt`` file is refused with the one-time
        conversion to safetensors (``docs/evaluation.md``, "The FID Inception network"). A file with missing,
        unexpected or mis-shaped tensors is refused, naming some of each."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        path = os.fspath(path)
        if path.lower().endswith((".pth", ".pt", ".pkl", ".ckpt")):
            raise ScorekitError(
                f"{path} is a pickled PyTorch file, which scorekit does not load; convert it once "
                f"to safetensors (on any machine with torch and safetensors) and pass the "
                f".safetensors file:\n{CONVERSION_SNIPPET}")
        if not os.path.isfile(path):
            raise ScorekitError(f"{path} does not exist; the FID Inception weights are "
                                f"pt_inception-2015-12-05-6726825d.pth from the pytorch-fid releases, "
                                f"converted once to safetensors (docs/evaluation.md, 'The FID Inception network')")
        try:
            state = load_file(path)
        except (OSError, SafetensorError, ValueError) as err:
            raise ScorekitError(f"{path} is not a safetensors file ({type(err).__name__}: {err}); "
                                f"convert the .pth weights with:\n{CONVERSION_SNIPPET}") from None
        net = FIDInceptionV3()
        want = expected_tensors(net)
        optional = {k for k in net.state_dict() if k.endswith("num_batches_tracked")}
        missing = [k for k in want if k not in state]
        unexpected = [k for k in state if k not in want and k not in optional]
        misshaped = [f"{k} {tuple(state[k].shape)} (expected {want[k]})"
                     for k in want if k in state and tuple(state[k].shape) != want[k]]
        not_float = [k for k in want if k in state and not state[k].is_floating_point()]
        if missing or unexpected or misshaped or not_float:
            problems = []
            if missing:
                problems.append(f"{len(missing)} missing ({_listed(missing)})")
            if unexpected:
                problems.append(f"{len(unexpected)} unexpected ({_listed(unexpected)})")
            if misshaped:
                problems.append(f"{len(misshaped)} of the wrong shape ({_listed(misshaped, 3)})")
            if not_float:
                problems.append(f"{len(not_float)} not floating-point ({_listed(not_float)})")
            raise ScorekitError(f"{path} does not hold the FID Inception weights "
                                f"({len(want)} tensors named as in pytorch-fid's port): "
                                + "; ".join(problems))
        state = {k: (v.to(torch.float32) if v.is_floating_point() else v) for k, v in state.items()}
        net.load_state_dict(state, strict=False)
        return cls(net.eval())

    def _prepare(self, batch: Tensor) -> Tensor:
        if batch.shape[1] not in (1, 3):
            raise ScorekitError(f"the Inception network takes greyscale or RGB images (N, 1 or 3, H, W), "
                                f"got {batch.shape[1]} channels")
        return quantize_uint8(batch)

    def _forward(self, batch: Tensor):
        return self.module(inception_input(batch).to(self.module.fc.weight.dtype))


__all__ = ["FIDInceptionV3", "InceptionFeatures", "expected_tensors", "inception_input",
           "quantize_uint8", "CONVERSION_SNIPPET"]
