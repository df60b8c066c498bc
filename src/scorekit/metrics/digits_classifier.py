r"""A small CNN that classifies greyscale digits, and the scores computed from its outputs.

It plays for MNIST-like digits the part the Inception network plays for ImageNet-like images in
FID and the Inception Score: its 128-d penultimate layer gives the features for the Fréchet
distance (:mod:`scorekit.metrics.frechet`), its class probabilities ``p(y|x)`` the confident
share, the Inception-Score analogue and the class balance of generated digits.

The network (188,234 parameters, about 7.5 M multiply-adds per image, so it trains in a
minute or two on one CPU thread):

    input (N, 1, 32, 32) in [-1, 1]   (28x28 images are first padded to 32x32 with -1)
    conv 3x3, 32  -> ReLU -> max-pool 2      32x32 -> 16x16
    conv 3x3, 64  -> ReLU -> max-pool 2      16x16 ->  8x8
    conv 3x3, 64  -> ReLU -> max-pool 2       8x8  ->  4x4
    linear 1024 -> 128                       the features f(x) (before the ReLU)
    ReLU -> linear 128 -> 10                 the logits; softmax gives p(y|x)

The features are taken before the ReLU: after it, units that are zero on every digit ("dead"
units) and images that switch every unit off (noise, once the network has learnt to reject it)
would all collapse onto the same point, and the Fréchet distance could not tell them apart.

:func:`train_digit_classifier` fits it with AdamW and a cosine learning-rate decay on images
shifted at random by up to two pixels. A classifier trained on digits alone assigns noise to some
digit with near certainty, which would make "confidently recognised" meaningless for a poorly
trained generator; so each batch also holds images that are not digits (:func:`outlier_images`:
white and smooth noise), trained towards the uniform distribution over the classes (Outlier
Exposure, Hendrycks et al. 2019). All randomness (initial weights, batch order, shifts, outliers)
comes from the ``generator`` passed in. :func:`save_digit_classifier` writes a folder with
``config.json`` and ``model.safetensors``; :func:`load_digit_classifier` reads it back.

Scores of a set of samples, from their class probabilities ``p(y|x_n)``, ``n = 1..N``:

* :func:`confident_share`: the share with ``max_y p(y|x_n) > threshold``;
* :func:`inception_score`: ``exp( (1/N) sum_n KL(p(y|x_n) || p_hat(y)) )`` with the marginal
  ``p_hat(y) = (1/N) sum_n p(y|x_n)`` (Salimans et al. 2016); between 1 and the number of
  classes, which it reaches when every sample is classified with certainty and the classes are
  equally frequent;
* :func:`class_balance`: counts of the predicted classes, the ratio of the largest to the
  smallest count, and ``KL(q || uniform) = log K + sum_y q_y log q_y`` of their frequencies ``q``.
"""
from __future__ import annotations

import json
import math
import os
import shutil
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import ScorekitError

Tensor = torch.Tensor

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
KIND = "digit_classifier"

#: the image side the network works at; smaller images are padded with -1 (the background)
IMAGE_SIZE = 32


def pad_digits(x: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """Centre ``(N, 1, H, W)`` images on a ``size x size`` canvas filled with -1 (the background
    of images in ``[-1, 1]``); an odd remainder goes to the bottom / right, as in
    :func:`scorekit.data.images.pad_images`. Images already ``size x size`` are returned as they are."""
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ScorekitError(f"digit images must be a tensor (N, 1, H, W), got {shape}")
    H, W = x.shape[-2:]
    if H > size or W > size:
        raise ScorekitError(f"digit images must be at most {size}x{size} (e.g. MNIST's 28x28), got {H}x{W}")
    if (H, W) == (size, size):
        return x
    top, left = (size - H) // 2, (size - W) // 2
    return F.pad(x, (left, size - W - left, top, size - H - top), value=-1.0)


class DigitClassifier(nn.Module):
    """The CNN of the module docstring: ``forward(x)`` gives logits, :meth:`features` the 128-d
    penultimate pre-activations, :meth:`predict_proba` the class probabilities.

    Args:
        num_classes: number of classes (10 for digits).
        channels: channels of the three convolution blocks.
        feature_dim: size of the penultimate (feature) layer.
        seed: the initial weights come from ``torch.Generator().manual_seed(seed)`` (the
            trainer re-initialises them from its own generator).
    """

    def __init__(self, *, num_classes: int = 10, channels=(32, 64, 64), feature_dim: int = 128,
                 seed: int = 0):
        super().__init__()
        from ..models.layers import global_rng_untouched, init_parameters

        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1 or int(num_classes) < 2 or int(feature_dim) < 1:
            raise ScorekitError(f"a digit classifier needs three positive channel counts, num_classes >= 2 "
                                f"and feature_dim >= 1; got channels={channels}, num_classes={num_classes}, "
                                f"feature_dim={feature_dim}")
        self.num_classes = int(num_classes)
        self.channels = channels
        self.feature_dim = int(feature_dim)
        with global_rng_untouched():
            c1, c2, c3 = channels
            self.conv = nn.Sequential(
                nn.Conv2d(1, c1, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(c1, c2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            )
            side = IMAGE_SIZE // 8
            self.fc = nn.Linear(c3 * side * side, self.feature_dim)
            self.head = nn.Linear(self.feature_dim, self.num_classes)
        init_parameters(self, torch.Generator().manual_seed(int(seed)))
        #: information about how the network was trained (saved with it)
        self.info: dict = {}

    def config(self) -> dict:
        """The architecture as a JSON dict; ``DigitClassifier(**config)`` rebuilds it (minus ``kind``)."""
        return {"kind": KIND, "num_classes": self.num_classes, "channels": list(self.channels),
                "feature_dim": self.feature_dim}

    def _features(self, x: Tensor) -> Tensor:
        x = pad_digits(x)
        return self.fc(self.conv(x).flatten(1))

    def features_and_logits(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """The features ``f(x)`` ``(N, feature_dim)`` and the logits ``(N, num_classes)`` of one
        batch, from one pass (with gradients, on the network's device)."""
        f = self._features(x)
        return f, self.head(F.relu(f))

    def forward(self, x: Tensor) -> Tensor:
        """Logits ``(N, num_classes)`` of ``(N, 1, 28 or 32, 28 or 32)`` images in ``[-1, 1]``."""
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
        return self._batched(self._features, x, batch_size)

    def predict_proba(self, x: Tensor, *, batch_size: int = 500) -> Tensor:
        """Class probabilities ``p(y|x) = softmax(logits)``, ``(N, num_classes)`` float32."""
        return self._batched(lambda b: torch.softmax(self(b), dim=1), x, batch_size)

    def predict(self, x: Tensor, *, batch_size: int = 500) -> Tensor:
        """The most probable class of each image, ``(N,)`` long."""
        return self.predict_proba(x, batch_size=batch_size).argmax(dim=1)


# --- training ---------------------------------------------------------------------------------------

def random_shift(x: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    r"""Translate each image of ``(N, C, H, W)`` by its own ``(dy, dx)``, each uniform on
    ``{-max_shift .. max_shift}`` (drawn from ``generator``); pixels shifted in are -1."""
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


def outlier_images(n: int, generator: torch.Generator, size: int = IMAGE_SIZE) -> Tensor:
    r"""``n`` greyscale ``size x size`` images in ``[-1, 1]`` that are not digits: the first half
    white noise ``N(0, 1)``, the rest smooth blobs -- ``N(0, 1)`` on a 4x4 or 8x8 grid, bilinearly
    enlarged, times ``U(1, 3)`` plus ``U(-1, 0.5)`` -- all clipped to ``[-1, 1]``."""
    n_white = n // 2
    white = torch.randn(n_white, 1, size, size, generator=generator)
    parts = [white]
    for k, m in ((4, (n - n_white) // 2), (8, n - n_white - (n - n_white) // 2)):
        coarse = torch.randn(m, 1, k, k, generator=generator)
        blobs = F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
        scale = 1 + 2 * torch.rand(m, 1, 1, 1, generator=generator)
        shift = -1 + 1.5 * torch.rand(m, 1, 1, 1, generator=generator)
        parts.append(blobs * scale + shift)
    return torch.cat(parts).clamp(-1, 1)


def _check_training_data(x, y, num_classes: int) -> tuple[Tensor, Tensor]:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ScorekitError(f"x must be a float tensor of greyscale images (N, 1, H, W) in [-1, 1], got {shape}")
    if not isinstance(y, Tensor) or y.shape != (x.shape[0],) or y.is_floating_point():
        shape = tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__
        raise ScorekitError(f"y must be an integer tensor of {x.shape[0]} labels, got {shape}")
    if x.shape[0] < 2:
        raise ScorekitError(f"need at least 2 training images, got {x.shape[0]}")
    y = y.long()
    if int(y.min()) < 0 or int(y.max()) >= num_classes:
        raise ScorekitError(f"labels must lie in 0 .. {num_classes - 1}, found {int(y.min())} .. {int(y.max())}")
    if float(x.min()) < -1.0 - 1e-6 or float(x.max()) > 1.0 + 1e-6:
        raise ScorekitError(f"images must be scaled to [-1, 1], found values in "
                            f"[{float(x.min()):.3g}, {float(x.max()):.3g}]")
    return pad_digits(x.float()), y


def train_digit_classifier(x: Tensor, y: Tensor, *, epochs: int, generator: torch.Generator,
                           batch_size: int = 64, lr: float = 2e-3, max_shift: int = 2,
                           num_classes: int = 10, weight_decay: float = 1e-4,
                           outlier_share: float = 0.25, outlier_weight: float = 0.5,
                           log: Callable[[str], None] | None = None) -> DigitClassifier:
    r"""Fit a :class:`DigitClassifier` to images ``x`` (N, 1, 28 or 32, 28 or 32) in ``[-1, 1]``
    with labels ``y``, minimising the cross-entropy with AdamW.

    Every epoch visits the images in a fresh random order, in batches of ``batch_size``, each
    image shifted by up to ``max_shift`` pixels (:func:`random_shift`), plus
    ``round(outlier_share * batch_size)`` :func:`outlier_images`. The loss is

        mean_digits CE(y, p(.|x))  +  outlier_weight * mean_outliers (1/K) sum_y -log p(y|x),

    the second term the cross-entropy to the uniform distribution over the ``K`` classes. The
    learning rate decays from ``lr`` to 0 along a half cosine over all steps,
    ``lr_k = lr (1 + cos(pi k / K_steps)) / 2``.
    The initial weights, the order and the shifts all come from ``generator``; the same generator
    state and data give the same network. ``log`` receives one line per epoch (loss, accuracy on
    the training batches). Returns the network in evaluation mode, with ``info`` recording the
    settings.
    """
    from ..models.layers import init_parameters

    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ScorekitError(f"epochs must be a whole number >= 1, got {epochs!r}")
    if not 0 <= outlier_share or not 0 <= outlier_weight:
        raise ScorekitError(f"outlier_share and outlier_weight must be >= 0, got {outlier_share}, {outlier_weight}")
    if not isinstance(generator, torch.Generator):
        raise ScorekitError("train_digit_classifier needs generator=torch.Generator() (its only source of randomness)")
    x, y = _check_training_data(x, y, int(num_classes))
    net = DigitClassifier(num_classes=num_classes)
    init_parameters(net, generator)
    net.train()
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    n = x.shape[0]
    per_epoch = math.ceil(n / batch_size)
    total = epochs * per_epoch
    k = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=generator)
        loss_sum, correct = 0.0, 0
        for i in range(0, n, batch_size):
            idx = order[i:i + batch_size]
            xb = random_shift(x[idx], max_shift, generator)
            n_out = round(outlier_share * batch_size)
            if n_out:
                xb = torch.cat([xb, outlier_images(n_out, generator)])
            for group in opt.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * k / total))
            out = net(xb)
            logits = out[:idx.numel()]
            loss = F.cross_entropy(logits, y[idx])
            if n_out:
                loss = loss - outlier_weight * torch.log_softmax(out[idx.numel():], dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            k += 1
            loss_sum += float(loss.detach()) * idx.numel()
            correct += int((logits.argmax(1) == y[idx]).sum())
        if log is not None:
            log(f"classifier epoch {epoch + 1}/{epochs}: loss {loss_sum / n:.4f}, "
                f"training accuracy {correct / n:.4f}")
    net.eval()
    net.info = {"epochs": epochs, "batch_size": batch_size, "lr": lr, "max_shift": max_shift,
                "weight_decay": weight_decay, "outlier_share": outlier_share,
                "outlier_weight": outlier_weight, "num_train": n}
    return net


def accuracy(net: DigitClassifier, x: Tensor, y: Tensor) -> float:
    """The share of images ``x`` whose most probable class is the label ``y``."""
    return float((net.predict(x) == y.long().cpu()).double().mean())


# --- saving and loading -----------------------------------------------------------------------------

def save_digit_classifier(net: DigitClassifier, path) -> str:
    """Write ``net`` to the folder ``path``: ``config.json`` (architecture and ``net.info``) and
    ``model.safetensors`` (the weights). The folder is written under a temporary name and renamed
    into place, replacing an older one, so a reader never sees half of it. Returns ``path``."""
    from safetensors.torch import save_file

    path = os.path.abspath(os.fspath(path))
    parent, name = os.path.split(path)
    os.makedirs(parent, exist_ok=True)
    tmp = os.path.join(parent, f".{name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    try:
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        save_file(state, os.path.join(tmp, WEIGHTS_FILE))
        with open(os.path.join(tmp, CONFIG_FILE), "w", encoding="utf-8") as fh:
            json.dump({"model": net.config(), "info": net.info}, fh, indent=2, allow_nan=False)
            fh.write("\n")
        old = None
        if os.path.exists(path):
            old = os.path.join(parent, f".{name}.{os.getpid()}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.rename(path, old)
        os.rename(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def load_digit_classifier(path) -> DigitClassifier:
    """Read a folder written by :func:`save_digit_classifier` (evaluation mode, on the CPU).
    A missing or corrupt folder raises :class:`ScorekitError` naming the file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = os.fspath(path)
    config_path = os.path.join(path, CONFIG_FILE)
    weights_path = os.path.join(path, WEIGHTS_FILE)
    for p in (config_path, weights_path):
        if not os.path.isfile(p):
            raise ScorekitError(f"{p} does not exist; train the classifier first "
                                f"(train_digit_classifier, then save_digit_classifier)")
    try:
        with open(config_path, encoding="utf-8") as fh:
            saved = json.load(fh)
        config = dict(saved["model"])
        if config.pop("kind", None) != KIND:
            raise KeyError("kind")
        net = DigitClassifier(**config)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ScorekitError(f"{config_path} is not a digit classifier configuration "
                            f"({type(err).__name__}: {err}); save it again") from None
    try:
        state = load_file(weights_path)
        net.load_state_dict(state)
    except (OSError, SafetensorError, RuntimeError) as err:
        raise ScorekitError(f"{weights_path} does not hold this classifier's weights "
                            f"({type(err).__name__}: {err}); save it again") from None
    net.info = dict(saved.get("info") or {})
    return net.eval()


# --- scores of generated digits ------------------------------------------------------------------------

def _probs(probs) -> Tensor:
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    if p.ndim != 2 or p.shape[0] < 1 or p.shape[1] < 2:
        raise ScorekitError(f"probs must be class probabilities (N, K) with K >= 2, got shape {tuple(p.shape)}")
    if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ScorekitError("probs must be non-negative with rows summing to 1 (e.g. predict_proba's output)")
    return p


def confident_share(probs, threshold: float = 0.9) -> float:
    """The share of samples whose most probable class has probability above ``threshold``."""
    p = _probs(probs)
    return float((p.max(dim=1).values > threshold).double().mean())


def inception_score(probs) -> float:
    r"""``exp( (1/N) sum_n KL(p(y|x_n) || p_hat(y)) )``, ``p_hat = (1/N) sum_n p(y|x_n)``, in
    float64 (``0 log 0 = 0``), over all samples at once (not in splits; see
    :func:`scorekit.metrics.inception_score.inception_score` for the split form)."""
    from .inception_score import inception_score as split_score

    return split_score(_probs(probs), splits=1).mean


def class_balance(labels, num_classes: int = 10) -> dict:
    r"""How evenly ``labels`` (N,) (e.g. predicted classes) cover ``0 .. num_classes - 1``:
    ``counts`` per class, ``max_min_ratio`` = largest / smallest count (``inf`` if a class is
    missing) and ``kl_to_uniform`` = ``KL(q || uniform) = log K + sum_y q_y log q_y`` of the
    frequencies ``q`` (0 for a perfectly even set, ``log K`` when one class takes everything)."""
    labels = torch.as_tensor(labels).detach().cpu()
    if labels.ndim != 1 or labels.numel() == 0 or labels.is_floating_point():
        raise ScorekitError(f"labels must be a non-empty integer vector (N,), got {labels.dtype} {tuple(labels.shape)}")
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ScorekitError(f"labels must lie in 0 .. {num_classes - 1}")
    counts = torch.bincount(labels.long(), minlength=num_classes)
    q = counts.double() / counts.sum()
    kl = math.log(num_classes) + float(torch.special.xlogy(q, q).sum())
    lo, hi = int(counts.min()), int(counts.max())
    return {"counts": counts.tolist(), "max_min_ratio": (hi / lo) if lo > 0 else float("inf"),
            "kl_to_uniform": max(kl, 0.0)}


__all__ = ["DigitClassifier", "accuracy", "class_balance", "confident_share", "inception_score",
           "load_digit_classifier", "outlier_images", "pad_digits", "random_shift",
           "save_digit_classifier", "train_digit_classifier"]
