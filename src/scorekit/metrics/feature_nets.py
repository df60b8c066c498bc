r"""Feature networks that scorekit trains itself, so that FID, KID, the Inception Score and
precision/recall work offline on digits (scikit-learn's 8x8 digits, MNIST) and on CIFAR-10.

The Inception network of FID was trained on ImageNet; on 28x28 digits or 32x32 CIFAR images its
features say little and its weights must be fetched. Here a small CNN, trained on a labelled
dataset, plays its part: its penultimate layer gives the features ``f(x)`` of the Fréchet distance
and KID, ``softmax`` of its logits the class probabilities ``p(y | x)`` of the Inception Score.

:func:`trained_feature_network` (kind, data, cache folder) returns such a network as a
:class:`~scorekit.metrics.features.FeatureExtractor`, training it the first time and loading it
from the cache afterwards; :func:`load_feature_network` reads a folder it wrote.

**The network** (:class:`ImageClassifier`), for ``(N, C, H, W)`` images in ``[-1, 1]``:

    images padded with -1 to the canvas (H, W rounded up to a multiple of 2^stages)
    per stage s = 1..S:  n x [conv 3x3, width_s (-> BatchNorm) -> ReLU] -> max-pool 2
    flatten -> linear -> feature_dim      the features f(x) (before the ReLU)
    ReLU -> linear -> num_classes         the logits; softmax gives p(y | x)

The features are taken before the ReLU: after it, units that are zero on every image ("dead"
units) and images that switch every unit off (noise, once the network has learnt to reject it)
would collapse onto one point, and the Fréchet distance could not tell them apart.

==========  ==========  ===========  =========  ========  ======================================
kind        widths      convs/stage  BatchNorm  features  augmentation
==========  ==========  ===========  =========  ========  ======================================
digits      16, 32, 64  1            yes        128       shifts by up to 2 pixels (1 for images
                                                          under 16x16)
cifar10     16, 32, 64  2            yes        256       random crops (shifts by up to 4 pixels,
                                                          black padding), horizontal flips
==========  ==========  ===========  =========  ========  ======================================

The ``digits`` kind is :class:`~scorekit.metrics.digits_classifier.DigitClassifier`'s layout
with BatchNorm and narrower first stages, which reaches the same accuracy in fewer steps and a
third of the multiply-adds. MNIST's 28x28 digits are padded to 32x32, scikit-learn's 8x8 digits
stay 8x8 (three poolings leave 1x1). A trained network takes exactly the image shape
``(C, H, W)`` it was trained on and refuses any other.

**Training** (:func:`train_image_classifier`, shared with the digit classifier): AdamW on the
cross-entropy, batches in a fresh random order every epoch, the learning rate decaying from
``lr`` to 0 along a half cosine over all steps, ``lr_k = lr (1 + cos(pi k / K)) / 2``. Each batch
also holds ``round(outlier_share * batch_size)`` images that belong to no class
(:func:`outlier_images`: white and smooth noise), trained towards the uniform distribution
(Outlier Exposure, Hendrycks et al. 2019), so that the network does not assign noise to a class
with near certainty and "confidently classified" keeps its meaning for a poor generator:

    loss = mean_images CE(y, p(. | x))  +  outlier_weight * mean_outliers (1/K) sum_y -log p(y | x)

=======  =====  =====  ============  =======  =======  ========================================
kind     batch  lr     weight decay  outlier  outlier  default epochs
                                     share    weight
=======  =====  =====  ============  =======  =======  ========================================
digits   64     3e-3   1e-4          0.25     0.5      ``max(4, ceil(1000 / steps per epoch))``
cifar10  64     2e-3   5e-4          0.25     0.5      20
=======  =====  =====  ============  =======  =======  ========================================

The default epochs of the digits kind give at least 1,000 optimiser steps: 8 epochs on 8,000
MNIST digits, 44 on scikit-learn's 1,438 training digits (:meth:`Recipe.default_epochs`). The
CIFAR-10 default is a modest CPU budget; more epochs give a more accurate network.

**The split and the cache.** :func:`heldout_split` holds out ``heldout_share`` of every class
(stratified, from a permutation drawn from ``torch.Generator().manual_seed(seed)``; the same
generator then trains the network on the rest), and the accuracy is measured on the held-out part. The
network is saved atomically to ``cache_dir/<kind>-<key>``, ``key`` the first 12 hex digits of the
SHA-256 of the kind, the recipe (architecture and training settings; the number of epochs, not
the rule that chose it), the seed,
the held-out share and the data's content (:func:`data_hash`: the image tensor's bytes and the
labels, so changed data train a new network). The folder holds ``config.json`` (the architecture,
the recipe and ``info``) and ``model.safetensors``; nothing is pickled.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import shutil
import time
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..data.dataset import IMAGE_LIMIT
from ..errors import ScorekitError, write_error
from ..plotting import fsync_path, write_json
from .features import ClassifierFeatures

Tensor = torch.Tensor

#: the kinds of feature network :func:`trained_feature_network` trains
FEATURE_KINDS = ("digits", "cifar10")

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
#: the version of the folder format; newer folders are refused
FORMAT = 1
#: ``model.kind`` of an :class:`ImageClassifier` in ``config.json``
KIND = "image_classifier"


# --- the network ----------------------------------------------------------------------------------------

def _side_pair(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in pair):
        raise ScorekitError(f"{name} must be a positive side or a pair (H, W), got {value!r}")
    return int(pair[0]), int(pair[1])


def pad_to(x: Tensor, size: tuple[int, int]) -> Tensor:
    """Centre ``(N, C, H, W)`` images on an ``size = (H', W')`` canvas filled with -1 (the
    background of images in ``[-1, 1]``); an odd remainder goes to the bottom / right, as in
    :func:`scorekit.data.images.pad_images`. Images already of that size are returned as they are."""
    H, W = x.shape[-2:]
    Hc, Wc = size
    if (H, W) == (Hc, Wc):
        return x
    top, left = (Hc - H) // 2, (Wc - W) // 2
    return F.pad(x, (left, Wc - W - left, top, Hc - H - top), value=-1.0)


class ImageClassifier(nn.Module):
    """The CNN of the module docstring: ``forward(x)`` gives logits, :meth:`features` the
    penultimate pre-activations, :meth:`predict_proba` the class probabilities.

    Args:
        in_channels: channels ``C`` of the images.
        image_size: the side ``H`` (or ``(H, W)``) of the images it takes; any other size is
            refused. ``None`` takes any size up to the canvas (and pads it).
        canvas: the side the images are padded to, a multiple of ``2 ** len(widths)``; by default
            ``image_size`` rounded up to one.
        num_classes: number of classes ``K``.
        widths: channels of the convolutions of each stage (one max-pool per stage).
        convs_per_stage: 3x3 convolutions per stage.
        batch_norm: BatchNorm after each convolution (then the convolution has no bias).
        feature_dim: size of the penultimate (feature) layer.
        seed: the initial weights come from ``torch.Generator().manual_seed(seed)`` (the
            trainer re-initialises them from its own generator).
    """

    kind = KIND

    def __init__(self, *, in_channels: int = 1, image_size=None, canvas=None, num_classes: int = 10,
                 widths=(32, 64, 64), convs_per_stage: int = 1, batch_norm: bool = False,
                 feature_dim: int = 128, seed: int = 0):
        super().__init__()
        from ..models.layers import global_rng_untouched, init_parameters

        widths = tuple(int(c) for c in widths)
        if (not widths or min(widths) < 1 or int(num_classes) < 2 or int(feature_dim) < 1
                or int(in_channels) < 1 or int(convs_per_stage) < 1):
            raise ScorekitError(f"an image classifier needs positive widths, in_channels, convs_per_stage "
                                f"and feature_dim, and num_classes >= 2; got widths={widths}, "
                                f"in_channels={in_channels}, convs_per_stage={convs_per_stage}, "
                                f"feature_dim={feature_dim}, num_classes={num_classes}")
        self.in_channels = int(in_channels)
        self.image_size = _side_pair(image_size, "image_size")
        step = 2 ** len(widths)
        canvas = _side_pair(canvas, "canvas")
        if canvas is None:
            if self.image_size is None:
                raise ScorekitError("give image_size or canvas: the side the network works at")
            canvas = tuple(step * math.ceil(s / step) for s in self.image_size)
        if any(c % step for c in canvas) or (self.image_size is not None and any(
                s > c for s, c in zip(self.image_size, canvas))):
            raise ScorekitError(f"canvas {canvas} must be a multiple of {step} (2 ** stages) on each side "
                                f"and hold the images ({self.image_size})")
        self.canvas = canvas
        self.num_classes = int(num_classes)
        self.widths = widths
        self.convs_per_stage = int(convs_per_stage)
        self.batch_norm = bool(batch_norm)
        self.feature_dim = int(feature_dim)
        with global_rng_untouched():
            layers, c_in = [], self.in_channels
            for width in widths:
                for _ in range(self.convs_per_stage):
                    layers.append(nn.Conv2d(c_in, width, 3, padding=1, bias=not self.batch_norm))
                    if self.batch_norm:
                        layers.append(nn.BatchNorm2d(width))
                    layers.append(nn.ReLU())
                    c_in = width
                layers.append(nn.MaxPool2d(2))
            self.conv = nn.Sequential(*layers)
            self.fc = nn.Linear(c_in * (canvas[0] // step) * (canvas[1] // step), self.feature_dim)
            self.head = nn.Linear(self.feature_dim, self.num_classes)
        init_parameters(self, torch.Generator().manual_seed(int(seed)))
        #: information about how the network was trained (saved with it)
        self.info: dict = {}

    def config(self) -> dict:
        """The architecture as a JSON dict; ``ImageClassifier(**config)`` rebuilds it (minus ``kind``)."""
        return {"kind": KIND, "in_channels": self.in_channels,
                "image_size": None if self.image_size is None else list(self.image_size),
                "canvas": list(self.canvas), "num_classes": self.num_classes, "widths": list(self.widths),
                "convs_per_stage": self.convs_per_stage, "batch_norm": self.batch_norm,
                "feature_dim": self.feature_dim}

    @property
    def input_shape(self) -> tuple[int, int, int] | None:
        """``(C, H, W)`` of the images the network takes, or ``None`` when it pads any size."""
        return None if self.image_size is None else (self.in_channels, *self.image_size)

    def prepare(self, x: Tensor) -> Tensor:
        """Check that ``x`` has the network's image shape and pad it to the canvas."""
        shape = tuple(x.shape[1:]) if isinstance(x, Tensor) and x.ndim == 4 else None
        want = self.input_shape
        if want is not None and shape != want:
            got = shape if shape is not None else (tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__)
            raise ScorekitError(f"this {self.num_classes}-class image classifier takes images of shape "
                                f"(C, H, W) = {want}, the shape it was trained on, got {got}; load or "
                                f"resize the images to {want} or train a network on images of this shape")
        if want is None and (shape is None or shape[0] != self.in_channels
                             or shape[1] > self.canvas[0] or shape[2] > self.canvas[1]):
            got = shape if shape is not None else (tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__)
            raise ScorekitError(f"this image classifier takes images ({self.in_channels}, H, W) of at most "
                                f"{self.canvas[0]}x{self.canvas[1]}, got {got}")
        return pad_to(x, self.canvas)

    def canvas_features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Features and logits of images already padded to the canvas (what training uses)."""
        f = self.fc(self.conv(x).flatten(1))
        return f, self.head(F.relu(f))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The features ``f(x)`` ``(N, feature_dim)`` and the logits ``(N, num_classes)`` of one
        batch, from one pass (with gradients, on the network's device)."""
        return self.canvas_features_and_logits(self.prepare(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of ``(N, C, H, W)`` images in ``[-1, 1]``."""
        return self.features_and_logits(x)[1]

    @torch.no_grad()
    def _batched(self, fn: Callable[[Tensor], Tensor], x: Tensor, batch_size: int) -> Tensor:
        was_training = self.training
        self.eval()
        try:
            device = next(self.parameters()).device
            out = [fn(x[i:i + batch_size].to(device, torch.float32)).cpu()
                   for i in range(0, x.shape[0], int(batch_size))]
        finally:
            self.train(was_training)
        return torch.cat(out)

    def features(self, x: Tensor, *, batch_size: int = 500) -> Tensor:
        """The ``(N, feature_dim)`` penultimate pre-activations ``f(x)`` (before the ReLU), float32,
        no gradient, in evaluation mode and batches of ``batch_size``."""
        return self._batched(lambda b: self.features_and_logits(b)[0], x, batch_size)

    def predict_proba(self, x: Tensor, *, batch_size: int = 500) -> Tensor:
        """Class probabilities ``p(y|x) = softmax(logits)``, ``(N, num_classes)`` float32."""
        return self._batched(lambda b: torch.softmax(self(b), dim=1), x, batch_size)

    def predict(self, x: Tensor, *, batch_size: int = 500) -> Tensor:
        """The most probable class of each image, ``(N,)`` long."""
        return self.predict_proba(x, batch_size=batch_size).argmax(dim=1)


def accuracy(net: ImageClassifier, x: Tensor, y: Tensor) -> float:
    """The share of images ``x`` whose most probable class is the label ``y``."""
    return float((net.predict(x) == y.long().cpu()).double().mean())


# --- augmentation and outliers -----------------------------------------------------------------------

def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    r"""Translate each image of ``(N, C, H, W)`` by its own ``(dy, dx)``, each uniform on
    ``{-max_shift .. max_shift}`` (drawn from ``generator``); pixels shifted in are -1. This is
    the random crop of images padded by ``max_shift`` on each side."""
    if max_shift <= 0:
        return x
    n, _, H, W = x.shape
    s = int(max_shift)
    xp = F.pad(x, (s, s, s, s), value=-1.0)
    off = torch.randint(0, 2 * s + 1, (n, 2), generator=generator)
    rows = off[:, 0:1] + torch.arange(H)                       # (N, H) rows of the padded image
    cols = off[:, 1:2] + torch.arange(W)                       # (N, W)
    idx = torch.arange(n)[:, None, None]
    out = xp.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]   # (N, H, W, C)
    return out.permute(0, 3, 1, 2).contiguous()


def random_flip(x: Tensor, generator: torch.Generator) -> Tensor:
    """Flip each image of ``(N, C, H, W)`` horizontally with probability 1/2 (from ``generator``)."""
    flip = torch.randint(0, 2, (x.shape[0],), generator=generator).bool().reshape(-1, 1, 1, 1)
    return torch.where(flip, x.flip(-1), x)


def outlier_images(n: int, generator: torch.Generator, size=32, channels: int = 1) -> Tensor:
    r"""``n`` images ``(n, channels, H, W)`` in ``[-1, 1]`` (``size`` = ``H`` or ``(H, W)``) that
    belong to no class: the first half white noise ``N(0, 1)``, the rest smooth blobs --
    ``N(0, 1)`` on a 4x4 or 8x8 grid, bilinearly enlarged, times ``U(1, 3)`` plus ``U(-1, 0.5)``
    -- all clipped to ``[-1, 1]``."""
    H, W = _side_pair(size, "size")
    n_white = n // 2
    white = torch.randn(n_white, channels, H, W, generator=generator)
    parts = [white]
    for k, m in ((4, (n - n_white) // 2), (8, n - n_white - (n - n_white) // 2)):
        coarse = torch.randn(m, channels, k, k, generator=generator)
        blobs = F.interpolate(coarse, size=(H, W), mode="bilinear", align_corners=False)
        scale = 1 + 2 * torch.rand(m, 1, 1, 1, generator=generator)
        shift = -1 + 1.5 * torch.rand(m, 1, 1, 1, generator=generator)
        parts.append(blobs * scale + shift)
    return torch.cat(parts).clamp(-1, 1)


# --- training ---------------------------------------------------------------------------------------------

def check_training_data(x, y, num_classes: int, channels: int | None = None) -> tuple[Tensor, Tensor]:
    """``(x, y)`` as float32 images and long labels, after checking shapes, labels and range (the
    margin of :data:`scorekit.data.dataset.IMAGE_LIMIT` around ``[-1, 1]`` admits what resampled
    datasets hold)."""
    if (not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point()
            or (channels is not None and x.shape[1] != channels)):
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        what = "images (N, C, H, W)" if channels is None else f"images (N, {channels}, H, W)"
        raise ScorekitError(f"x must be a float tensor of {what} in [-1, 1], got {shape}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ScorekitError(f"y must be an integer tensor of {x.shape[0]} labels, got {shape}")
    if x.shape[0] < 2:
        raise ScorekitError(f"need at least 2 training images, got {x.shape[0]}")
    y = y.long()
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ScorekitError(f"labels must lie in 0 .. {num_classes - 1}, found {int(y.min())} .. {int(y.max())}")
    if float(x.min()) < -IMAGE_LIMIT or float(x.max()) > IMAGE_LIMIT:
        raise ScorekitError(f"images must be scaled to [-1, 1], found values in "
                            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return x.float(), y


def train_image_classifier(net: ImageClassifier, x: Tensor, y: Tensor, *, epochs: int,
                           generator: torch.Generator, batch_size: int = 64, lr: float = 2e-3,
                           weight_decay: float = 1e-4, max_shift: int = 2, flip: bool = False,
                           outlier_share: float = 0.25, outlier_weight: float = 0.5,
                           log: Callable[[str], None] | None = None,
                           progress: bool = False) -> ImageClassifier:
    r"""Fit ``net`` to images ``x`` ``(N, C, H, W)`` in ``[-1, 1]`` with labels ``y`` (the recipe
    of the module docstring), on the network's device.

    The weights are first re-initialised from ``generator``. Every epoch visits the images in a
    fresh random order, in batches of ``batch_size``; each image is padded to the canvas, shifted
    by up to ``max_shift`` pixels (:func:`random_shift`) and, with ``flip``, flipped horizontally
    with probability 1/2 (:func:`random_flip`); ``round(outlier_share * batch_size)``
    :func:`outlier_images` join each batch. The initial weights, the order, the augmentation and
    the outliers all come from ``generator``: the same generator state and data give the same
    network. ``log`` receives one line per epoch (loss, accuracy on the training batches);
    ``progress`` shows a bar over the optimiser steps. Returns ``net`` in evaluation mode.
    """
    from tqdm.auto import tqdm

    from ..models.layers import init_parameters

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ScorekitError(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not 0 <= outlier_share or not 0 <= outlier_weight:
        raise ScorekitError(f"outlier_share and outlier_weight must be >= 0, got {outlier_share}, {outlier_weight}")
    if not isinstance(generator, torch.Generator):
        raise ScorekitError("training a classifier needs generator=torch.Generator() (its only source of randomness)")
    x, y = check_training_data(x, y, net.num_classes, net.in_channels)
    x = net.prepare(x)
    init_parameters(net, generator)
    device = next(net.parameters()).device
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    n_out = round(outlier_share * batch_size)
    k = 0
    bar = tqdm(total=total, desc="training classifier", unit="step", disable=not progress, leave=False)
    try:
        for epoch in range(epochs):
            order = torch.randperm(n, generator=generator)
            loss_sum, correct = 0.0, 0
            for i in range(0, n, batch_size):
                idx = order[i:i + batch_size]
                xb = random_shift(x[idx], max_shift, generator)
                if flip:
                    xb = random_flip(xb, generator)
                if n_out:
                    xb = torch.cat([xb, outlier_images(n_out, generator, net.canvas, net.in_channels)])
                for group in opt.param_groups:
                    group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * k / total))
                yb = y[idx].to(device)
                logits_all = net.canvas_features_and_logits(xb.to(device))[1]
                logits = logits_all[:idx.numel()]
                loss = F.cross_entropy(logits, yb)
                if n_out:
                    loss = loss - outlier_weight * torch.log_softmax(logits_all[idx.numel():], dim=1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                k += 1
                loss_sum += float(loss.detach()) * idx.numel()
                correct += int((logits.argmax(1) == yb).sum())
                bar.update(1)
            if log is not None:
                log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss_sum / n:.4f}, "
                    f"training accuracy {correct / n:.4f}")
    finally:
        bar.close()
    net.eval()
    net.info = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_shift": max_shift, "flip": flip,
                "weight_decay": weight_decay, "outlier_share": outlier_share,
                "outlier_weight": outlier_weight, "num_train": n}
    return net


# --- saving and loading -----------------------------------------------------------------------------------

def _write_weights(state: dict, path: str) -> None:
    from safetensors.torch import save_file

    save_file(state, path)


def save_classifier(net: ImageClassifier, path, *, extra: dict | None = None,
                    replace: bool = True) -> str:
    """Write ``net`` to the folder ``path``: ``config.json`` (``format``, the architecture
    ``model``, ``net.info`` and the entries of ``extra``) and ``model.safetensors`` (the weights).

    The folder is written under a hidden temporary name, flushed and renamed into place, so a
    reader never sees half of it, and an error on the way leaves no folder behind. With
    ``replace`` an older folder at ``path`` is replaced; without, an existing folder is kept (and
    the new one discarded). Returns ``path`` (absolute)."""
    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
    try:
        os.makedirs(parent, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        _write_weights(state, os.path.join(tmp, WEIGHTS_FILE))
        write_json(os.path.join(tmp, CONFIG_FILE),
                   {"format": FORMAT, "model": net.config(), "info": net.info, **(extra or {})})
        fsync_path(os.path.join(tmp, WEIGHTS_FILE))
        fsync_path(tmp)
        old = None
        if os.path.exists(path):
            if not replace:
                shutil.rmtree(tmp, ignore_errors=True)
                return path
            old = os.path.join(parent, f".{name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        try:
            os.rename(tmp, path)
        except OSError:
            if replace or not os.path.isdir(path):
                raise
            shutil.rmtree(tmp, ignore_errors=True)        # another process saved it meanwhile
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        fsync_path(parent)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_error(err, f"the classifier folder {path}")
        if failure is None:
            raise
        raise failure from None
    return path


def _model_classes() -> dict:
    from .digits_classifier import KIND as DIGIT_KIND, DigitClassifier

    return {KIND: ImageClassifier, DIGIT_KIND: DigitClassifier}


def read_classifier_folder(path, *, kinds=None, what: str = "classifier",
                           hint: str = "save it again") -> tuple[ImageClassifier, dict]:
    """Read a folder written by :func:`save_classifier`: ``(network, config.json's content)``, the
    network in evaluation mode on the CPU with ``info`` restored. ``kinds`` limits the accepted
    ``model.kind`` values. A missing or corrupt file raises :class:`ScorekitError` naming it and
    ``hint`` (how to make the folder again)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            raise ScorekitError(f"{p} does not exist; {hint}")
    classes = _model_classes()
    try:
        with open(config_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        if not isinstance(saved, dict):
            raise TypeError("not a JSON object")
        if int(saved.get("format", FORMAT)) > FORMAT:
            raise ScorekitError(f"{config_path} has format {saved['format']}, newer than this scorekit "
                                f"reads ({FORMAT}); update scorekit")
        config = dict(saved["model"])
        kind = config.pop("kind", None)
        if kind not in classes or (kinds is not None and kind not in kinds):
            raise KeyError(f"kind {kind!r}")
        net = classes[kind](**config)
    except (OSError, ValueError, KeyError, TypeError) as err:
        if isinstance(err, ScorekitError):
            raise
        raise ScorekitError(f"{config_path} is not a {what} configuration "
                            f"({type(err).__name__}: {err}); {hint}") from None
    try:
        net.load_state_dict(load_file(weights_path))
    except (OSError, SafetensorError, RuntimeError) as err:
        raise ScorekitError(f"{weights_path} does not hold this {what}'s weights "
                            f"({type(err).__name__}: {' '.join(str(err).split())}); {hint}") from None
    net.info = dict(saved.get("info") or {})
    return net.eval(), saved


# --- the feature networks: recipes, the split, the cache ------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Recipe:
    """Architecture and training settings of one kind of feature network (module docstring).

    ``min_epochs`` and ``min_steps`` make the default number of epochs,
    ``max(min_epochs, ceil(min_steps / steps_per_epoch))``; ``max_shift_small`` is the shift of
    images smaller than 16x16."""

    widths: tuple
    convs_per_stage: int
    batch_norm: bool
    feature_dim: int
    batch_size: int
    lr: float
    weight_decay: float
    max_shift: int
    max_shift_small: int
    flip: bool
    outlier_share: float
    outlier_weight: float
    min_epochs: int
    min_steps: int

    def default_epochs(self, num_train: int) -> int:
        return max(self.min_epochs, math.ceil(self.min_steps / math.ceil(num_train / self.batch_size)))

    def shift(self, image_size: tuple[int, int]) -> int:
        return self.max_shift_small if min(image_size) < 16 else self.max_shift


RECIPES = {
    "digits": Recipe(widths=(16, 32, 64), convs_per_stage=1, batch_norm=True, feature_dim=128,
                     batch_size=64, lr=3e-3, weight_decay=1e-4, max_shift=2, max_shift_small=1, flip=False,
                     outlier_share=0.25, outlier_weight=0.5, min_epochs=4, min_steps=1000),
    "cifar10": Recipe(widths=(16, 32, 64), convs_per_stage=2, batch_norm=True, feature_dim=256,
                      batch_size=64, lr=2e-3, weight_decay=5e-4, max_shift=4, max_shift_small=2, flip=True,
                      outlier_share=0.25, outlier_weight=0.5, min_epochs=20, min_steps=0),
}


def _check_kind(kind) -> str:
    if kind not in FEATURE_KINDS:
        raise ScorekitError(f"unknown feature network kind {kind!r}; choose one of {', '.join(FEATURE_KINDS)}",
                            cli=f"unknown --features {kind!r}; choose one of {', '.join(FEATURE_KINDS)}")
    return kind


def data_hash(data) -> str:
    """The SHA-256 (hex) of a dataset's content (:func:`scorekit.evaluation.data_hash` of its
    images as float32 and its labels as int64, with the number of classes): not the spec, so
    changed files give another hash and the same images loaded from elsewhere the same one."""
    from ..evaluation import data_hash as content_hash

    y = None if data.y is None else data.y.to(torch.int64)
    return content_hash(data.x.to(torch.float32), y, num_classes=data.num_classes if y is not None else None)


def heldout_split(labels: Tensor, heldout_share: float,
                  generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""``(train, heldout)`` index tensors (sorted, disjoint, together every index) that hold out
    ``floor(heldout_share * n_c + 1/2)`` images of every class ``c`` with ``n_c`` images: the
    first ones of that class in a permutation of all images drawn from ``generator``."""
    labels = torch.as_tensor(labels).long().cpu()
    perm = torch.randperm(labels.numel(), generator=generator)
    held = []
    for c in torch.unique(labels).tolist():
        members = perm[labels[perm] == c]
        held.append(members[:int(math.floor(heldout_share * members.numel() + 0.5))])
    is_held = torch.zeros(labels.numel(), dtype=torch.bool)
    is_held[torch.cat(held)] = True
    return (~is_held).nonzero().flatten(), is_held.nonzero().flatten()


def _check_data(data, heldout_share) -> None:
    spec = getattr(data, "spec", type(data).__name__)
    x = getattr(data, "x", None)
    if not isinstance(x, Tensor) or not hasattr(data, "y"):
        raise ScorekitError(f"data must be a scorekit Dataset (scorekit.data.load_dataset(...)), got "
                            f"{type(data).__name__}")
    if x.ndim != 4:
        raise ScorekitError(f"{spec} holds {tuple(x.shape[1:])} vectors; a feature network needs images "
                            f"(N, C, H, W)")
    if data.y is None:
        raise ScorekitError(f"{spec} has no labels; a feature network is trained as a classifier, so it "
                            f"needs labelled images (digits, mnist:PATH, or folder:PATH with one "
                            f"sub-folder per class)")
    if isinstance(heldout_share, bool) or not isinstance(heldout_share, (int, float)) \
            or not 0 < heldout_share < 1:
        raise ScorekitError(f"heldout_share must be a number between 0 and 1 (e.g. 0.2), got {heldout_share!r}")


def _extractor(net: ImageClassifier, saved: dict, path: str) -> ClassifierFeatures:
    feature = saved.get("feature_network")
    if not isinstance(feature, dict) or feature.get("kind") not in FEATURE_KINDS:
        raise ScorekitError(f"{os.path.join(path, CONFIG_FILE)} is not a feature network (it records "
                            f"no feature kind); make one with trained_feature_network")
    info = {**net.info, **feature}
    return ClassifierFeatures(net, name=f"{feature['kind']}-classifier", info=info, path=path)


def load_feature_network(path) -> ClassifierFeatures:
    """The feature network in the folder ``path`` (written by :func:`trained_feature_network`:
    ``config.json`` and ``model.safetensors``), as a :class:`FeatureExtractor` with its ``info``.
    A missing or corrupt file raises :class:`ScorekitError` naming it."""
    path = os.path.abspath(os.fspath(path))
    hint = "delete the folder and train the feature network again (trained_feature_network)"
    net, saved = read_classifier_folder(path, kinds=(KIND,), what="feature network", hint=hint)
    return _extractor(net, saved, path)


def trained_feature_network(kind: str, data, cache_dir, *, seed: int = 0, epochs: int | None = None,
                            heldout_share: float = 0.2, progress: bool = True,
                            log: Callable[[str], None] | None = None) -> ClassifierFeatures:
    r"""The feature network of ``kind`` (one of :data:`FEATURE_KINDS`) trained on ``data``, from
    ``cache_dir`` when it was trained before with the same data and settings, else trained now
    and saved there.

    Args:
        kind: ``"digits"`` (greyscale digits: scikit-learn's 8x8 digits, MNIST) or ``"cifar10"``
            (colour images); chooses the recipe of the module docstring.
        data: a labelled :class:`scorekit.data.Dataset` of images; the network takes exactly its
            image shape ``(C, H, W)``.
        cache_dir: the folder of cached networks; this one is ``cache_dir/<kind>-<key>``.
        seed: seeds the held-out split, the initial weights and the training.
        epochs: passes over the training part; ``None`` takes the kind's default
            (:meth:`Recipe.default_epochs`).
        heldout_share: the share of every class held out to measure the accuracy.
        progress: show a progress bar over the training steps.
        log: receives a line on what happens (loaded, or training, epochs, accuracy).

    Returns a :class:`ClassifierFeatures` named ``"<kind>-classifier"`` whose ``info`` holds
    ``kind``, ``heldout_accuracy``, ``heldout_accuracy_per_class``, ``num_train``,
    ``num_heldout``, ``heldout_share``, ``epochs``, ``seed``, ``data_spec``, ``data_hash``,
    ``train_seconds``, ``image_shape``, ``num_classes``, ``feature_dim``, ``parameters``,
    ``key``, ``recipe`` and whether this call ``loaded`` it from the cache.
    """
    kind = _check_kind(kind)
    _check_data(data, heldout_share)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ScorekitError(f"seed must be a whole number >= 0, got {seed!r}")
    recipe = RECIPES[kind]
    x, y = check_training_data(data.x, data.y, int(data.num_classes))
    image_shape = tuple(x.shape[1:])
    generator = torch.Generator().manual_seed(seed)
    train_idx, held_idx = heldout_split(y, float(heldout_share), generator)
    if train_idx.numel() < 2 or held_idx.numel() < 1:
        raise ScorekitError(f"{data.spec}: {len(y)} images with heldout_share={heldout_share} leave "
                            f"{train_idx.numel()} for training and {held_idx.numel()} held out; use "
                            f"more images or another share")
    if epochs is None:
        epochs = recipe.default_epochs(train_idx.numel())
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ScorekitError(f"epochs must be a whole number >= 1 (or None for the default), got {epochs!r}")
    max_shift = recipe.shift(image_shape[1:])
    content = data_hash(data)
    trained_with = {k: v for k, v in dataclasses.asdict(recipe).items() if k not in ("min_epochs", "min_steps")}
    settings = {"format": FORMAT, "kind": kind, "recipe": trained_with, "epochs": epochs,
                "max_shift": max_shift, "seed": seed, "heldout_share": float(heldout_share),
                "data_hash": content}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    folder = os.path.join(os.path.abspath(os.fspath(cache_dir)), f"{kind}-{key}")
    say = log if log is not None else (lambda line: None)
    if os.path.isdir(folder):
        extractor = load_feature_network(folder)
        extractor.info["loaded"] = True
        say(f"{kind} feature network: loaded from {folder} (held-out accuracy "
            f"{extractor.info.get('heldout_accuracy', float('nan')):.4f})")
        return extractor

    net = ImageClassifier(in_channels=image_shape[0], image_size=image_shape[1:],
                          num_classes=int(data.num_classes), widths=recipe.widths,
                          convs_per_stage=recipe.convs_per_stage, batch_norm=recipe.batch_norm,
                          feature_dim=recipe.feature_dim)
    say(f"{kind} feature network: training on {train_idx.numel()} images of {data.spec} for {epochs} "
        f"epochs ({held_idx.numel()} held out)")
    t0 = time.perf_counter()
    train_image_classifier(net, x[train_idx], y[train_idx], epochs=epochs, generator=generator,
                           batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay,
                           max_shift=max_shift, flip=recipe.flip, outlier_share=recipe.outlier_share,
                           outlier_weight=recipe.outlier_weight, log=log, progress=progress)
    seconds = time.perf_counter() - t0
    predicted = net.predict(x[held_idx])
    right = (predicted == y[held_idx]).double()
    per_class = [float(right[y[held_idx] == c].mean()) if bool((y[held_idx] == c).any()) else None
                 for c in range(int(data.num_classes))]
    feature = {"kind": kind, "heldout_accuracy": float(right.mean()), "heldout_accuracy_per_class": per_class,
               "num_train": int(train_idx.numel()), "num_heldout": int(held_idx.numel()),
               "heldout_share": float(heldout_share), "epochs": epochs, "seed": seed,
               "data_spec": data.spec, "data_hash": content, "train_seconds": round(seconds, 2),
               "image_shape": list(image_shape), "num_classes": int(data.num_classes),
               "feature_dim": net.feature_dim, "parameters": sum(p.numel() for p in net.parameters()),
               "key": key, "recipe": settings["recipe"]}
    save_classifier(net, folder, extra={"feature_network": feature}, replace=False)
    say(f"{kind} feature network: held-out accuracy {feature['heldout_accuracy']:.4f} after "
        f"{seconds:.1f} s; saved to {folder}")
    extractor = load_feature_network(folder)
    extractor.info["loaded"] = False
    return extractor


__all__ = ["FEATURE_KINDS", "ImageClassifier", "Recipe", "RECIPES", "accuracy",
           "data_hash", "heldout_split", "load_feature_network", "outlier_images", "pad_to",
           "random_flip", "random_shift", "read_classifier_folder", "save_classifier",
           "train_image_classifier", "trained_feature_network"]
