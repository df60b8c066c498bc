r"""The :class:`Dataset` type, :func:`load_dataset` by name or path, and checks before training.

A dataset is held in memory: ``x`` is a float32 tensor, ``(N, C, H, W)`` images scaled to
``[-1, 1]`` or ``(N, D)`` vectors, with optional labels ``y``. ``load_dataset(spec, **options)``
builds one from a *spec*:

==========================  ====================================================================
spec                        data (options, with defaults)
==========================  ====================================================================
``swiss_roll``              2-D spiral (``n=20000, seed=0, noise=0.02``)
``moons``                   two moons, labels 0/1 (``n=20000, seed=0, noise=0.05``)
``checkerboard``            uniform on a 4x4 checkerboard (``n=20000, seed=0``)
``eight_gaussians``         exact mixture, labels 0..7 (``n=20000, seed=0``)
``multiscale_2d``           exact mixture, labels 0..4 (``n=20000, seed=0``)
``digits``                  scikit-learn's 8x8 digits, labels 0..9 (``size=8,
                            interpolation="nearest", channels=1, flip=False, start=0, stop=None``)
``mnist:PATH``              IDX files (``pad_to=None, channels=1, flip=False, start=0, stop=None``)
``folder:PATH``             image folder or tar archive (``size=None, channels=None, flip=False,
                            skip_corrupt=False, start=0, stop=None, progress=None``)
``npz:PATH``                NumPy arrays ``x`` [, ``y``] (``layout="auto", num_classes=None,
                            channels=None, flip=False, start=0, stop=None, scale=None``)
==========================  ====================================================================

The 2-D sets and their scaling are described in :mod:`scorekit.data.toy2d`, the file formats in
:mod:`scorekit.data.images`. Common options:

* ``start``, ``stop`` -- keep samples ``start .. stop-1`` (in file order), e.g. a held-out split;
* ``channels`` -- 1 or 3: grey to colour repeats the channel, colour to grey uses PIL's ``'L'``
  weights ``(299 R + 587 G + 114 B) / 1000``;
* ``flip`` -- :meth:`Dataset.augment` flips each image horizontally with probability 1/2;
* ``seed`` -- the 2-D sets are drawn from ``torch.Generator().manual_seed(seed)``;
* ``progress`` -- show a loading bar (not part of the data, so not recorded in the config);
* ``scale`` (npz) -- float data in ``[0, scale]`` become ``2 x / scale - 1``: ``scale=255`` for
  0..255 pixel values, ``scale=1`` for ``[0, 1]``. Float data are otherwise taken as they are,
  and images (``(N, C, H, W)``) further than ``IMAGE_LIMIT = 1.5`` outside ``[-1, 1]`` are
  refused with this fix (images in ``[0, 1]`` are accepted: they train, on half the range);
  vectors have no fixed range and are never refused for it. uint8 images are always mapped
  from 0..255 to ``[-1, 1]``.

:meth:`Dataset.config` records the spec (with an absolute path) and every option, so
:func:`dataset_from_config` rebuilds the same data. :func:`check_compatible` checks a dataset
against a network before training.
"""
from __future__ import annotations

import inspect
import math
import os

import numpy as np
import torch

from ..devices import to_device
from ..errors import (ScorekitError, check_options, class_count, class_count_from_labels,
                      option_schema, positive_number)
from ..toy import GaussianMixture
from . import images, toy2d

Tensor = torch.Tensor


def check_finite(x: Tensor, source: str) -> None:
    """Raise ScorekitError naming the first sample of ``x`` that holds a NaN or infinite value."""
    if x.is_floating_point():
        finite = torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
        if not bool(finite.all()):
            i = int((~finite).nonzero()[0, 0])
            kind = "NaN" if bool(torch.isnan(x[i]).any()) else "Inf"
            raise ScorekitError(f"data contains {kind} at index {i} ({source}); remove or fix that "
                                "sample")


#: images must lie in [-1, 1]; values beyond +-IMAGE_LIMIT are refused. The margin admits the
#: overshoot of resampling filters (bicubic and Lanczos ring by well under 25 % of the range)
#: while 0..255 data (any image that is not almost black has values above 2) is far outside.
IMAGE_LIMIT = 1.5


def check_image_range(x: Tensor, source: str) -> None:
    """Refuse images far outside ``[-1, 1]`` (e.g. floats in 0..255), naming the fix."""
    lo, hi = float(x.min()), float(x.max())
    if -IMAGE_LIMIT <= lo and hi <= IMAGE_LIMIT:
        return
    problem = f"{source}: images must be scaled to [-1, 1], but their values lie in [{lo:.4g}, {hi:.4g}]"
    if lo >= 0 and hi <= 255:
        pixels = "they look like 0..255 pixel values"
        raise ScorekitError(f"{problem}; {pixels}: load an npz file with scale=255, or compute "
                            f"x / 127.5 - 1",
                            cli=f"{problem}; {pixels}: give --data-option scale=255 (npz:PATH), or "
                                f"store x / 127.5 - 1")
    raise ScorekitError(f"{problem}; rescale them (x -> 2 (x - min) / (max - min) - 1)")


class Dataset:
    r"""Samples held in memory, with optional labels and augmentation.

    Attributes:
        x: float32 ``(N, C, H, W)`` images in ``[-1, 1]`` or ``(N, D)`` vectors.
        y: ``(N,)`` long labels in ``0 .. num_classes - 1``, or ``None``.
        num_classes: the number of classes, or ``None`` without labels. (A network conditioned
            on labels reserves the value ``num_classes`` for "no label".)
        class_names: names of the classes (image folders: the sub-folder names), or ``None``.
        spec: the spec this dataset was loaded from (``"moons"``, ``"mnist:/abs/path"``, ...).
        options: every option of the data pipeline, defaults included.
        flip: whether :meth:`augment` flips images horizontally.
        skipped: unreadable files skipped while loading (``skip_corrupt=True``).
        mixture: the exact distribution of ``x`` (:class:`scorekit.toy.GaussianMixture`) for the
            mixture toy sets, else ``None``.
    """

    def __init__(self, x: Tensor, y: Tensor | None = None, *, num_classes: int | None = None,
                 class_names=None, spec: str = "tensor", options: dict | None = None,
                 flip: bool = False, skipped: int = 0, mixture: GaussianMixture | None = None):
        if not isinstance(x, Tensor) or not x.is_floating_point() or x.ndim not in (2, 4):
            what = f"a {x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
            raise ScorekitError(f"{spec}: data must be a float tensor shaped (N, D) or (N, C, H, W), "
                                f"got {what}")
        if x.shape[0] == 0:
            raise ScorekitError(f"{spec}: the dataset is empty (0 samples)")
        x = x.to(torch.float32).contiguous()
        check_finite(x, spec)
        if x.ndim == 4:
            check_image_range(x, spec)
        if y is not None:
            y = torch.as_tensor(y)
            if y.shape != (x.shape[0],) or y.is_floating_point() or y.dtype == torch.bool:
                raise ScorekitError(f"{spec}: labels must be an integer tensor of shape ({x.shape[0]},), "
                                    f"got {y.dtype} {tuple(y.shape)}")
            y = y.long()
            if num_classes is None:
                num_classes = class_count_from_labels(int(y.max()), x.shape[0], spec)
            num_classes = class_count(num_classes, f"{spec}: num_classes")
            if int(y.min()) < 0 or int(y.max()) >= num_classes:
                raise ScorekitError(f"{spec}: labels must lie in 0 .. {num_classes - 1}, found "
                                    f"{int(y.min())} .. {int(y.max())}")
        elif num_classes is not None:
            raise ScorekitError(f"{spec}: num_classes={num_classes} given without labels")
        if flip and x.ndim != 4:
            raise ScorekitError(f"{spec}: flip=True needs images (N, C, H, W); these data are "
                                f"{tuple(x.shape)} vectors")
        self.x = x
        self.y = y
        self.num_classes = None if num_classes is None else int(num_classes)
        self.class_names = None if class_names is None else tuple(class_names)
        self.spec = spec
        self.options = dict(options or {})
        self.flip = bool(flip)
        self.skipped = int(skipped)
        self.mixture = mixture

    @property
    def shape(self) -> tuple[int, ...]:
        """The shape of one sample: ``(C, H, W)`` or ``(D,)``."""
        return tuple(self.x.shape[1:])

    @property
    def is_image(self) -> bool:
        return self.x.ndim == 4

    def __len__(self) -> int:
        return self.x.shape[0]

    def __repr__(self) -> str:
        labels = f", {self.num_classes} classes" if self.num_classes is not None else ""
        return f"Dataset({self.spec!r}, {len(self)} x {self.shape}{labels})"

    def config(self) -> dict:
        """A JSON-serialisable dict ``{"spec": ..., **options}`` from which
        :func:`dataset_from_config` (``load_dataset(**config)``) rebuilds this data pipeline."""
        return {"spec": self.spec, **self.options}

    def augment(self, x: Tensor, generator: torch.Generator) -> Tensor:
        r"""Flip each image of the batch ``x`` horizontally with probability 1/2 (independently,
        from ``generator``) when the dataset has ``flip``; otherwise return ``x`` unchanged."""
        if not self.flip:
            return x
        flip = torch.randint(0, 2, (x.shape[0],), generator=generator, device=generator.device)
        flip = to_device(flip.to(torch.bool), x.device).reshape(-1, *([1] * (x.ndim - 1)))
        return torch.where(flip, x.flip(-1), x)


# ---------------------------------------------------------------------------------------------
# Option checks and conversions shared by the builders
# ---------------------------------------------------------------------------------------------

def _int_option(value, name: str, where: str, *, minimum: int = 0, allow_none: bool = False):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ScorekitError(f"{where}: {name} must be an integer >= {minimum}"
                            f"{' or None' if allow_none else ''}, got {value!r}")
    return int(value)


def _channels_option(value, where: str, allow_none: bool = True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or value not in (1, 3):
        raise ScorekitError(f"{where}: channels must be 1 or 3{' (or None: keep the data own)' if allow_none else ''}, "
                            f"got {value!r}")
    return int(value)


def _subset(raw: images.RawData, start, stop, where: str) -> images.RawData:
    n = raw.x.shape[0]
    start = _int_option(start, "start", where)
    stop = _int_option(stop, "stop", where, allow_none=True)
    stop = n if stop is None else stop
    if not start < stop <= n:
        raise ScorekitError(f"{where}: need 0 <= start < stop <= {n} (the number of samples), "
                            f"got start={start}, stop={stop}")
    if (start, stop) == (0, n):
        return raw
    y = None if raw.y is None else raw.y[start:stop]
    return images.RawData(raw.x[start:stop], y, raw.num_classes, raw.class_names, raw.skipped)


def convert_channels(x: np.ndarray, channels: int | None) -> np.ndarray:
    r"""``(N, C, H, W)`` images with ``channels`` channels: 1 -> 3 repeats the grey channel;
    3 -> 1 is PIL's ``'L'`` conversion, ``L = R 299/1000 + G 587/1000 + B 114/1000`` (for uint8
    exactly PIL's rounding ``(19595 R + 38470 G + 7471 B + 2^15) >> 16``)."""
    C = x.shape[1]
    if channels is None or channels == C:
        return x
    if C == 1 and channels == 3:
        return np.repeat(x, 3, axis=1)
    if C == 3 and channels == 1:
        r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]
        if x.dtype == np.uint8:
            r, g, b = (c.astype(np.uint32) for c in (r, g, b))
            return ((19595 * r + 38470 * g + 7471 * b + 0x8000) >> 16).astype(np.uint8)
        return (0.299 * r + 0.587 * g + 0.114 * b).astype(x.dtype)
    raise ScorekitError(f"cannot convert images with {C} channels to {channels}")


#: ``v / 127.5 - 1`` for every uint8 value ``v``, computed in float64 and rounded once to float32
_UINT8_TO_UNIT = (np.arange(256, dtype=np.float64) / 127.5 - 1.0).astype(np.float32)


def to_tensor(x: np.ndarray) -> Tensor:
    r"""uint8 ``v`` in 0..255 -> ``v / 127.5 - 1`` in ``[-1, 1]``; float data are taken as they are."""
    if x.dtype == np.uint8:
        return torch.from_numpy(_UINT8_TO_UNIT[x])
    return torch.from_numpy(np.array(x, dtype=np.float32))


def _finish(raw: images.RawData, where: str, *, start, stop, channels, pad_to=None) -> dict:
    raw = _subset(raw, start, stop, where)
    x = raw.x
    if channels is not None and x.ndim != 4:
        raise ScorekitError(f"{where}: channels={channels} applies to images; these data are "
                            f"{x.shape[1:]} vectors")
    if pad_to is not None:
        x = images.pad_images(x, pad_to, 0 if x.dtype == np.uint8 else -1.0)
    x = convert_channels(x, channels)
    return dict(x=to_tensor(x), y=None if raw.y is None else torch.from_numpy(raw.y),
                num_classes=raw.num_classes, class_names=raw.class_names, skipped=raw.skipped)


def _toy(name: str, n, seed, **options) -> dict:
    seed = _int_option(seed, "seed", name)
    x, y = toy2d.TOYS[name](n, generator=torch.Generator().manual_seed(seed), **options)
    return dict(x=x, y=y, num_classes=toy2d.TOY_NUM_CLASSES.get(name) if y is not None else None,
                mixture=toy2d.mixture(name))


# ---------------------------------------------------------------------------------------------
# The builders: one per spec, with every option and its default in the signature
# ---------------------------------------------------------------------------------------------

def _swiss_roll(*, n: int = 20000, seed: int = 0, noise: float = 0.02) -> dict:
    return _toy("swiss_roll", n, seed, noise=noise)


def _moons(*, n: int = 20000, seed: int = 0, noise: float = 0.05) -> dict:
    return _toy("moons", n, seed, noise=noise)


def _checkerboard(*, n: int = 20000, seed: int = 0) -> dict:
    return _toy("checkerboard", n, seed)


def _eight_gaussians(*, n: int = 20000, seed: int = 0) -> dict:
    return _toy("eight_gaussians", n, seed)


def _multiscale_2d(*, n: int = 20000, seed: int = 0) -> dict:
    return _toy("multiscale_2d", n, seed)


def _digits(*, size: int = 8, interpolation: str = "nearest", channels: int = 1,
            flip: bool = False, start: int = 0, stop: int | None = None) -> dict:
    channels = _channels_option(channels, "digits", allow_none=False)
    raw = images.load_digits(size=size, interpolation=interpolation)
    return _finish(raw, "digits", start=start, stop=stop, channels=channels)


def _mnist(path: str, *, pad_to: int | None = None, channels: int = 1, flip: bool = False,
           start: int = 0, stop: int | None = None) -> dict:
    where = f"mnist:{path}"
    channels = _channels_option(channels, where, allow_none=False)
    pad_to = _int_option(pad_to, "pad_to", where, minimum=1, allow_none=True)
    raw = images.load_idx_images(path)
    return _finish(raw, where, start=start, stop=stop, channels=channels, pad_to=pad_to)


def _folder(path: str, *, size: int | None = None, channels: int | None = None, flip: bool = False,
            skip_corrupt: bool = False, start: int = 0, stop: int | None = None,
            progress: bool | None = None) -> dict:
    where = f"folder:{path}"
    channels = _channels_option(channels, where)
    size = _int_option(size, "size", where, minimum=1, allow_none=True)
    raw = images.load_image_folder(path, size=size, channels=channels,
                                   skip_corrupt=bool(skip_corrupt), progress=progress)
    return _finish(raw, where, start=start, stop=stop, channels=None)


def _npz(path: str, *, layout: str = "auto", num_classes: int | None = None,
         channels: int | None = None, flip: bool = False, start: int = 0,
         stop: int | None = None, scale: float | None = None) -> dict:
    where = f"npz:{path}"
    channels = _channels_option(channels, where)
    raw = images.load_npz(path, layout=layout, num_classes=num_classes)
    if scale is not None:
        raw = images.RawData(_rescale(raw.x, scale, where), raw.y, raw.num_classes, raw.class_names,
                             raw.skipped)
    return _finish(raw, where, start=start, stop=stop, channels=channels)


def _rescale(x: np.ndarray, scale, where: str) -> np.ndarray:
    r"""Float data in ``[0, scale]`` mapped to ``[-1, 1]``: ``x' = 2 x / scale - 1`` (in float64,
    rounded once to float32); ``scale=255`` for 0..255 pixel values, ``scale=1`` for ``[0, 1]``."""
    scale = positive_number(scale, f"{where}: scale", "255 for 0..255 pixel values, 1 for [0, 1]")
    if x.dtype == np.uint8:
        raise ScorekitError(f"{where}: scale applies to float arrays; uint8 images are mapped from "
                            f"0..255 to [-1, 1] already (drop scale={scale:g})")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0 or hi > scale:
        raise ScorekitError(f"{where}: scale={scale:g} maps [0, {scale:g}] to [-1, 1], but the values "
                            f"lie in [{lo:.4g}, {hi:.4g}]; give the scale that bounds the data")
    return (x.astype(np.float64) * (2.0 / scale) - 1.0).astype(np.float32)


#: every spec name and the function that builds it (names with a path are used as "name:PATH")
DATASETS = {
    "swiss_roll": _swiss_roll,
    "moons": _moons,
    "checkerboard": _checkerboard,
    "eight_gaussians": _eight_gaussians,
    "multiscale_2d": _multiscale_2d,
    "digits": _digits,
    "mnist": _mnist,
    "folder": _folder,
    "npz": _npz,
}

#: the specs that read a path: ``"mnist:PATH"``, ``"folder:PATH"``, ``"npz:PATH"``
PATH_KINDS = ("mnist", "folder", "npz")

#: options that change how data are loaded but not the data, so they are not recorded
_NOT_RECORDED = ("progress",)


def parse_spec(spec) -> tuple[str, str | None]:
    """``(kind, absolute path or None)`` of a spec such as ``"moons"`` or ``"mnist:data/mnist"``."""
    if isinstance(spec, os.PathLike):
        spec = os.fspath(spec)
    if not isinstance(spec, str) or not spec:
        raise ScorekitError(f"the dataset spec must be a non-empty string such as 'moons' or "
                            f"'mnist:PATH', got {spec!r}")
    names = ", ".join(k for k in DATASETS if k not in PATH_KINDS)
    kinds = ", ".join(f"{k}:PATH" for k in PATH_KINDS)
    kind, sep, path = spec.partition(":")
    if not sep:
        if spec in PATH_KINDS:
            raise ScorekitError(f"the dataset spec {spec!r} needs a path: '{spec}:PATH'")
        if spec in DATASETS:
            return spec, None
        hint = ""
        if os.path.exists(spec):
            guess = "npz" if spec.endswith((".npz", ".npy")) else "folder"
            if "idx3-ubyte" in spec or (os.path.isdir(spec) and any(
                    "idx3-ubyte" in f for f in os.listdir(spec))):
                guess = "mnist"
            hint = f"; for the path {spec!r} write '{guess}:{spec}'"
        raise ScorekitError(f"unknown dataset {spec!r}; choose one of {names}, or {kinds}{hint}")
    if kind not in PATH_KINDS:
        raise ScorekitError(f"unknown dataset kind {kind!r} in {spec!r}; use {kinds} or one of {names}")
    if not path:
        raise ScorekitError(f"the dataset spec {spec!r} needs a path after '{kind}:'")
    return kind, os.path.abspath(os.path.expanduser(path))


def check_data_options(kind: str, options: dict) -> dict:
    """The options of the dataset ``kind`` (a spec without its path) checked against its builder's
    signature and converted to the types it expects; ``progress`` is dropped where unused."""
    schema = option_schema(DATASETS[kind], skip=("path",))
    if "progress" not in schema:
        options = {k: v for k, v in options.items() if k != "progress"}   # every spec accepts it
    return check_options(options, schema, f"{kind} data option")


def load_dataset(spec, **options) -> Dataset:
    """Load the dataset named by ``spec`` (see the module docs for specs and options).

    Unknown options, bad values and bad files raise :class:`~scorekit.errors.ScorekitError`.
    """
    kind, path = parse_spec(spec)
    builder = DATASETS[kind]
    options = check_data_options(kind, options)
    bound = inspect.signature(builder).bind(*([path] if path is not None else []), **options)
    bound.apply_defaults()
    recorded = {k: v for k, v in bound.arguments.items() if k != "path" and k not in _NOT_RECORDED}
    flip = recorded.get("flip", False)
    if not isinstance(flip, bool):
        raise ScorekitError(f"{kind}: flip must be True or False, got {flip!r}")
    parts = builder(**bound.arguments)
    where = kind if path is None else f"{kind}:{path}"
    return Dataset(**parts, spec=where, options=recorded, flip=flip)


def dataset_from_config(config: dict, *, progress: bool | None = None) -> Dataset:
    """Rebuild a dataset from :meth:`Dataset.config` (e.g. a checkpoint's ``config.json``)."""
    if not isinstance(config, dict) or "spec" not in config:
        raise ScorekitError(f"a dataset config must be a dict with a 'spec' key, got {config!r}")
    options = {k: v for k, v in config.items() if k != "spec"}
    if progress is not None:
        options["progress"] = progress
    return load_dataset(config["spec"], **options)


# ---------------------------------------------------------------------------------------------
# Checks before training
# ---------------------------------------------------------------------------------------------

def check_compatible(dataset: Dataset, *, channels: int | None = None, image_size=None,
                     multiple_of: int | None = None, dim: int | None = None,
                     num_classes: int | None = None) -> None:
    r"""Raise ScorekitError if ``dataset`` cannot train a network with these properties.

    Args:
        channels: the network's input channels ``C``.
        image_size: the network's ``H`` (or ``(H, W)``).
        multiple_of: ``H`` and ``W`` must be multiples of it, e.g. ``2 ** levels`` for a U-Net
            that halves the resolution ``levels`` times.
        dim: the length ``D`` of a vector network's input (data ``(N, D)``).
        num_classes: the number of classes of a label-conditioned network: the data must have
            labels, all below it.

    Also checks that every value is finite.
    """
    name = dataset.spec
    image_args = [a for a, v in (("channels", channels), ("image_size", image_size),
                                 ("multiple_of", multiple_of)) if v is not None]
    if image_args and not dataset.is_image:
        raise ScorekitError(f"{name} holds {dataset.shape} vectors, but the network takes images "
                            f"({', '.join(image_args)} given); use a vector network (e.g. the 'mlp' "
                            "preset) for these data")
    if dim is not None and dataset.is_image:
        raise ScorekitError(f"{name} holds {dataset.shape} images, but the network takes vectors of "
                            f"length {dim}; use an image network (e.g. a U-Net preset)")
    if dim is not None and dataset.shape != (dim,):
        raise ScorekitError(f"{name} holds vectors of length {dataset.shape[0]}, but the network takes "
                            f"length {dim}; build the network with dim={dataset.shape[0]}")
    if dataset.is_image:
        C, H, W = dataset.shape
        if channels is not None and channels != C:
            raise ScorekitError(f"{name} has {C} channel(s), but the network takes {channels}; load the "
                                f"data with channels={channels} or build the network with {C} input "
                                "channel(s)")
        if image_size is not None:
            want = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            if want != (H, W):
                raise ScorekitError(f"{name} has {H}x{W} images, but the network takes "
                                    f"{want[0]}x{want[1]}; resize or pad the data (size=..., pad_to=...) "
                                    f"or build the network for {H}x{W}")
        if multiple_of is not None:
            if isinstance(multiple_of, bool) or not isinstance(multiple_of, int) or multiple_of < 1:
                raise ScorekitError(f"multiple_of must be a positive integer, got {multiple_of!r}")
            if H % multiple_of or W % multiple_of:
                up = multiple_of * math.ceil(max(H, W) / multiple_of)
                raise ScorekitError(f"{name} has {H}x{W} images, but the network needs sizes that are "
                                    f"multiples of {multiple_of} (a U-Net halving the resolution n times "
                                    f"needs multiples of 2**n); pad the data to {up}x{up} (e.g. "
                                    f"pad_to={up} for MNIST) or resize it (size={up}), or use a network "
                                    "with fewer levels")
    if num_classes is not None:
        if dataset.y is None:
            raise ScorekitError(f"the network is conditioned on {num_classes} classes, but {name} has "
                                "no labels; train without class conditioning or use labelled data")
        if dataset.num_classes > num_classes:
            raise ScorekitError(f"{name} has {dataset.num_classes} classes, but the network takes "
                                f"{num_classes}; build the network with num_classes="
                                f"{dataset.num_classes}")
    check_finite(dataset.x, name)


__all__ = ["Dataset", "load_dataset", "dataset_from_config", "check_compatible", "check_finite",
           "check_data_options", "check_image_range", "IMAGE_LIMIT",
           "convert_channels", "parse_spec", "DATASETS", "PATH_KINDS"]
