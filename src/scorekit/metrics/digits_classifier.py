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

The network is :class:`scorekit.metrics.feature_nets.ImageClassifier` with the settings above, and
its training loop and folder format are that module's, which trains such networks (for digits
and for colour images) as the feature networks of the evaluation metrics.

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

import math
from typing import Callable

import torch

from ..errors import ScorekitError
from .feature_nets import (CONFIG_FILE, WEIGHTS_FILE, ImageClassifier, accuracy, outlier_images,  # noqa: F401
                           random_shift, read_classifier_folder, save_classifier, train_image_classifier)

Tensor = torch.Tensor

KIND = "digit_classifier"

#: the image side the network works at; smaller images are padded with -1 (the background)
IMAGE_SIZE = 32


def pad_digits(x: Tensor, size: int = IMAGE_SIZE) -> Tensor:
    """Centre ``(N, 1, H, W)`` images on a ``size x size`` canvas filled with -1 (the background
    of images in ``[-1, 1]``); an odd remainder goes to the bottom / right, as in
    :func:`scorekit.data.images.pad_images`. Images already ``size x size`` are returned as they are."""
    from .feature_nets import pad_to

    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[1] != 1:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ScorekitError(f"digit images must be a tensor (N, 1, H, W), got {shape}")
    H, W = x.shape[-2:]
    if H > size or W > size:
        raise ScorekitError(f"digit images must be at most {size}x{size} (e.g. MNIST's 28x28), got {H}x{W}")
    return pad_to(x, (size, size))


class DigitClassifier(ImageClassifier):
    """The CNN of the module docstring (:class:`scorekit.metrics.feature_nets.ImageClassifier`
    with one greyscale channel, three stages of one convolution, no BatchNorm, a 32x32 canvas):
    ``forward(x)`` gives logits, :meth:`features` the 128-d penultimate pre-activations,
    :meth:`predict_proba` the class probabilities. It takes greyscale images of any size up to
    32x32 and pads them (:func:`pad_digits`).

    Args:
        num_classes: number of classes (10 for digits).
        channels: channels of the three convolution blocks.
        feature_dim: size of the penultimate (feature) layer.
        seed: the initial weights come from ``torch.Generator().manual_seed(seed)`` (the
            trainer re-initialises them from its own generator).
    """

    kind = KIND

    def __init__(self, *, num_classes: int = 10, channels=(32, 64, 64), feature_dim: int = 128,
                 seed: int = 0):
        channels = tuple(int(c) for c in channels)
        if len(channels) != 3 or min(channels) < 1 or int(num_classes) < 2 or int(feature_dim) < 1:
            raise ScorekitError(f"a digit classifier needs three positive channel counts, num_classes >= 2 "
                                f"and feature_dim >= 1; got channels={channels}, num_classes={num_classes}, "
                                f"feature_dim={feature_dim}")
        super().__init__(in_channels=1, canvas=IMAGE_SIZE, num_classes=num_classes, widths=channels,
                         feature_dim=feature_dim, seed=seed)
        self.channels = channels

    def config(self) -> dict:
        """The architecture as a JSON dict; ``DigitClassifier(**config)`` rebuilds it (minus ``kind``)."""
        return {"kind": KIND, "num_classes": self.num_classes, "channels": list(self.channels),
                "feature_dim": self.feature_dim}

    def prepare(self, x: Tensor) -> Tensor:
        """Greyscale images of at most 32x32 padded to 32x32 (:func:`pad_digits`)."""
        return pad_digits(x)


# --- training ---------------------------------------------------------------------------------------

def train_digit_classifier(x: Tensor, y: Tensor, *, epochs: int, generator: torch.Generator,
                           batch_size: int = 64, lr: float = 2e-3, max_shift: int = 2,
                           num_classes: int = 10, weight_decay: float = 1e-4,
                           outlier_share: float = 0.25, outlier_weight: float = 0.5,
                           log: Callable[[str], None] | None = None) -> DigitClassifier:
    r"""Fit a :class:`DigitClassifier` to images ``x`` (N, 1, 28 or 32, 28 or 32) in ``[-1, 1]``
    with labels ``y``, minimising the cross-entropy with AdamW
    (:func:`scorekit.metrics.feature_nets.train_image_classifier`).

    Every epoch visits the images in a fresh random order, in batches of ``batch_size``, each
    image padded to 32x32 and shifted by up to ``max_shift`` pixels (:func:`random_shift`), plus
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
    net = DigitClassifier(num_classes=num_classes)
    return train_image_classifier(net, x, y, epochs=epochs, generator=generator, batch_size=batch_size,
                                  lr=lr, weight_decay=weight_decay, max_shift=max_shift,
                                  outlier_share=outlier_share, outlier_weight=outlier_weight, log=log)


# --- saving and loading -----------------------------------------------------------------------------

def save_digit_classifier(net: DigitClassifier, path) -> str:
    """Write ``net`` to the folder ``path``: ``config.json`` (architecture and ``net.info``) and
    ``model.safetensors`` (the weights). The folder is written under a temporary name and renamed
    into place, replacing an older one, so a reader never sees half of it. Returns ``path``."""
    return save_classifier(net, path)


def load_digit_classifier(path) -> DigitClassifier:
    """Read a folder written by :func:`save_digit_classifier` (evaluation mode, on the CPU).
    A missing or corrupt folder raises :class:`ScorekitError` naming the file."""
    return read_classifier_folder(path, kinds=(KIND,), what="digit classifier",
                                  hint="train the classifier first (train_digit_classifier, then "
                                       "save_digit_classifier), or save it again")[0]


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
