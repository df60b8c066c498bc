r"""Feature extractors: the networks whose outputs the evaluation metrics compare.

FID and KID compare two sets of images through the features ``f(x)`` of a fixed network, the
Inception Score and precision/recall through its class probabilities ``p(y | x)``. Every such
network is offered through one interface, :class:`FeatureExtractor`:

* ``name``: a short string that names the network (caches record it beside the features);
* ``features(images, *, batch_size, device, progress)``: ``(N, d)`` float64 on the CPU;
* ``probabilities(images, ...)``: ``(N, K)`` float64 on the CPU, ``softmax`` of the network's
  logits, for the extractors that have a classification head (``has_probabilities``);
* ``features_and_probabilities(images, ...)``: both from one pass over the images;
* ``weights_hash``: the SHA-256 of the network's weights (:func:`state_hash`), so that a cache of
  features is used only with the weights that made it.

Images are ``(N, C, H, W)`` tensors in scorekit's ``[-1, 1]`` convention, on any device; they are
moved to the network's device one batch at a time, and the network runs under
``torch.no_grad()`` in evaluation mode (its former mode is restored afterwards). A progress bar
(``tqdm.auto``) counts the images when ``progress=True``.

Ready-made extractors: :class:`ModuleExtractor` wraps any ``nn.Module`` that maps images to
features (or to ``(features, logits)``); :class:`ClassifierFeatures` any image classifier with a ``features_and_logits`` method, such
as the feature networks scorekit trains (:mod:`scorekit.metrics.feature_nets`);
:class:`DigitFeatures` the digit classifier of :mod:`scorekit.metrics.digits_classifier` (128-d
features, 10 classes);
:class:`scorekit.metrics.inception.InceptionFeatures` the FID Inception network (2048-d features,
1008 classes).
"""
from __future__ import annotations

import hashlib
from typing import Callable

import torch
from torch import nn

from ..errors import ScorekitError

Tensor = torch.Tensor

#: images per batch when none is given
DEFAULT_BATCH_SIZE = 50


def state_hash(module: nn.Module) -> str:
    """The SHA-256 (hex) of ``module.state_dict()``: every tensor's name, dtype, shape and bytes,
    in the order of the sorted names. BatchNorm's ``num_batches_tracked`` counters are left out:
    they never change what a network in evaluation mode computes."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        if key.endswith("num_batches_tracked") or not isinstance(value, Tensor):
            continue
        t = value.detach().to("cpu").contiguous().reshape(-1)
        digest.update(f"{key}\0{t.dtype}\0{tuple(value.shape)}\0".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _module_device(module: nn.Module) -> torch.device:
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    return torch.device("cpu")


def _module_float_dtype(module: nn.Module) -> torch.dtype:
    for t in module.parameters():
        if t.is_floating_point():
            return t.dtype
    return torch.float32


def _check_images(images) -> Tensor:
    if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[0] < 1:
        shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
        raise ScorekitError(f"images must be a tensor (N, C, H, W) with N >= 1 in [-1, 1], got {shape}")
    if not images.is_floating_point():
        raise ScorekitError(f"images must be a float tensor in [-1, 1], got {images.dtype}; "
                            f"map uint8 pixels v to v / 127.5 - 1 first")
    return images


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScorekitError(f"batch_size must be a whole number >= 1, got {batch_size!r}")
    return batch_size


class FeatureExtractor:
    """The interface every feature extractor offers (see the module docstring).

    A subclass sets ``name`` and ``module`` (the ``nn.Module`` that holds the weights) and writes
    :meth:`_forward`, which maps one batch already on the network's device to its features
    ``(B, ...)`` or to ``(features, logits)``; ``has_probabilities`` says whether it gives logits.
    :meth:`_prepare` may first change a batch (e.g. quantise it) before it is moved; a floating
    batch is cast to the network's floating dtype on the way.
    Batching, the device, evaluation mode, ``no_grad``, the progress bar and the float64 results
    are this class's work.
    """

    name: str = ""
    module: nn.Module
    has_probabilities: bool = False

    # --- what a subclass writes ----------------------------------------------------------------

    def _forward(self, batch: Tensor):  # pragma: no cover - the interface
        raise NotImplementedError

    def _prepare(self, batch: Tensor) -> Tensor:
        """A batch of the caller's images (still where the caller keeps them) before it is moved
        to the network's device (as it is by default; a floating batch is then cast to the
        network's floating dtype)."""
        return batch

    # --- the interface ------------------------------------------------------------------------

    @property
    def weights_hash(self) -> str:
        """SHA-256 of the network's weights (:func:`state_hash`)."""
        return state_hash(self.module)

    def features(self, images: Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE, device=None,
                 progress: bool = False) -> Tensor:
        """The ``(N, d)`` features of ``images`` ``(N, C, H, W)`` in ``[-1, 1]``, float64 on the CPU.

        Args:
            batch_size: images per network call.
            device: where the network runs; by default where its weights are. A device given
                moves the network there (it stays there).
            progress: show a progress bar.
        """
        return self._run(images, batch_size, device, progress, want_probabilities=False)[0]

    def probabilities(self, images: Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE, device=None,
                      progress: bool = False) -> Tensor:
        """Class probabilities ``p(y | x) = softmax(logits)``, ``(N, K)`` float64 on the CPU (the
        softmax is taken in float64). Arguments as for :meth:`features`."""
        self._need_probabilities()
        return self._run(images, batch_size, device, progress, want_probabilities=True)[1]

    def features_and_probabilities(self, images: Tensor, *, batch_size: int = DEFAULT_BATCH_SIZE,
                                   device=None, progress: bool = False) -> tuple[Tensor, Tensor]:
        """``(features(images), probabilities(images))`` from one pass over the images."""
        self._need_probabilities()
        return self._run(images, batch_size, device, progress, want_probabilities=True)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"

    # --- the shared loop ----------------------------------------------------------------------

    def _need_probabilities(self) -> None:
        if not self.has_probabilities:
            raise ScorekitError(f"feature extractor {self.name!r} gives features only, no class "
                                f"probabilities; use one whose network also returns logits "
                                f"(ModuleExtractor(..., logits=True) for a module returning (features, logits))")

    def _run(self, images, batch_size, device, progress, want_probabilities: bool):
        from tqdm.auto import tqdm

        images = _check_images(images)
        batch_size = _check_batch_size(batch_size)
        module = self.module
        if device is not None:
            module.to(device)
        device = _module_device(module)
        dtype = _module_float_dtype(module)
        n = images.shape[0]
        feats, probs = [], []
        was_training = module.training
        module.eval()
        bar = tqdm(total=n, desc=f"{self.name} features", unit="image", disable=not progress,
                   leave=False)
        try:
            with torch.no_grad():
                for start in range(0, n, batch_size):
                    batch = images[start:start + batch_size]
                    if not bool(torch.isfinite(batch).all()):
                        raise ScorekitError(f"images {start} .. {start + batch.shape[0] - 1} contain NaN "
                                            f"or infinite values; check the samples before measuring them")
                    batch = self._prepare(batch)
                    batch = batch.to(device, dtype) if batch.is_floating_point() else batch.to(device)
                    out = self._forward(batch)
                    f, logits = out if isinstance(out, (tuple, list)) else (out, None)
                    feats.append(self._checked(f, batch.shape[0], "features").to("cpu", torch.float64))
                    if want_probabilities:
                        logits = self._checked(logits, batch.shape[0], "logits")
                        probs.append(torch.softmax(logits.to("cpu", torch.float64), dim=1))
                    bar.update(batch.shape[0])
        finally:
            bar.close()
            module.train(was_training)
        return torch.cat(feats), (torch.cat(probs) if want_probabilities else None)

    def _checked(self, out, n: int, what: str) -> Tensor:
        if not isinstance(out, Tensor) or out.ndim < 2 or out.shape[0] != n:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ScorekitError(f"feature extractor {self.name!r}: the network's {what} must be a "
                                f"tensor ({n}, ...) for a batch of {n} images, got {shape}")
        return out.flatten(1)


class ModuleExtractor(FeatureExtractor):
    """Any ``nn.Module`` that maps images to features, as a :class:`FeatureExtractor`.

    Args:
        module: maps a batch ``(B, C, H, W)`` to features ``(B, d)`` (trailing axes are flattened,
            so ``(B, d, 1, 1)`` is fine), or with ``logits=True`` to ``(features, logits)``.
        name: recorded in caches with :attr:`weights_hash`; give each network (and each
            ``transform``) its own name.
        transform: applied to each batch on the network's device before ``module`` (e.g. a
            resize or a normalisation); the images are in ``[-1, 1]``.
        logits: ``module`` returns ``(features, logits)``; the extractor then also gives
            :meth:`probabilities` (``softmax`` of the logits).
    """

    def __init__(self, module: nn.Module, *, name: str,
                 transform: Callable[[Tensor], Tensor] | None = None, logits: bool = False):
        if not isinstance(module, nn.Module):
            raise ScorekitError(f"module must be a torch.nn.Module, got {type(module).__name__}")
        if not isinstance(name, str) or not name.strip():
            raise ScorekitError(f"name must be a non-empty string naming the network, got {name!r}")
        if transform is not None and not callable(transform):
            raise ScorekitError(f"transform must be a function of a batch of images, got {type(transform).__name__}")
        self.module = module
        self.name = name
        self.transform = transform
        self.has_probabilities = bool(logits)

    def _forward(self, batch: Tensor):
        if self.transform is not None:
            batch = self.transform(batch)
        out = self.module(batch)
        pair = isinstance(out, (tuple, list))
        if pair != self.has_probabilities or (pair and len(out) != 2):
            got = f"a {type(out).__name__} of {len(out)}" if pair else type(out).__name__
            raise ScorekitError(f"feature extractor {self.name!r}: the module returned {got}; with "
                                f"logits={self.has_probabilities} it must return "
                                + ("a pair (features, logits)" if self.has_probabilities else
                                   "a features tensor (pass logits=True for a module returning "
                                   "(features, logits))"))
        return tuple(out) if pair else out


class ClassifierFeatures(FeatureExtractor):
    """An image classifier with a ``features_and_logits(batch)`` method (the penultimate
    pre-activations and the logits of one batch), such as
    :class:`scorekit.metrics.feature_nets.ImageClassifier`, as a :class:`FeatureExtractor`:
    its features as features, ``softmax`` of its logits as probabilities.

    Args:
        classifier: the network.
        name: recorded in caches with :attr:`weights_hash`.
        info: how the network was trained (kept as :attr:`info`).
        path: the folder it was read from, if any (kept as :attr:`path`).
    """

    has_probabilities = True

    def __init__(self, classifier: nn.Module, *, name: str, info: dict | None = None,
                 path: str | None = None):
        if not isinstance(classifier, nn.Module) or not callable(getattr(classifier, "features_and_logits", None)):
            raise ScorekitError(f"classifier must be a network with a features_and_logits method "
                                f"(e.g. an ImageClassifier), got {type(classifier).__name__}")
        self.module = classifier
        self.name = name
        self.info = dict(info or {})
        self.path = path

    @property
    def feature_dim(self) -> int:
        """The length ``d`` of the features."""
        return int(self.module.feature_dim)

    def _forward(self, batch: Tensor):
        return self.module.features_and_logits(batch)


class DigitFeatures(ClassifierFeatures):
    """The digit classifier (:class:`scorekit.metrics.digits_classifier.DigitClassifier`) as a
    :class:`FeatureExtractor`: its 128-d penultimate pre-activations as features, ``softmax`` of
    its 10 logits as probabilities. Images are greyscale ``(N, 1, 28 or 32, 28 or 32)`` in
    ``[-1, 1]`` (28x28 images are padded by the classifier, :func:`pad_digits`).

    Args:
        classifier: a ``DigitClassifier``, or the folder :func:`save_digit_classifier` wrote.
        name: recorded in caches with :attr:`weights_hash`.
    """

    def __init__(self, classifier, *, name: str = "digit_classifier"):
        from .digits_classifier import DigitClassifier, load_digit_classifier

        path = None
        if not isinstance(classifier, DigitClassifier):
            path = classifier
            classifier = load_digit_classifier(classifier)
        super().__init__(classifier, name=name, info=classifier.info, path=path)


__all__ = ["ClassifierFeatures", "DigitFeatures", "FeatureExtractor", "ModuleExtractor", "state_hash"]
