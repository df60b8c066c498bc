r"""Readers for image data: scikit-learn's digits, MNIST IDX files, image folders, NumPy files.

Each reader returns :class:`RawData`: the images as an ``(N, C, H, W)`` NumPy array -- ``uint8``
(0..255) as stored in the files, or float for data that are already numbers -- with labels.
:func:`scorekit.data.load_dataset` turns it into a :class:`scorekit.data.Dataset` (subset, channel
conversion, scaling to ``[-1, 1]``). Every problem with a file raises
:class:`~scorekit.errors.ScorekitError` naming the file.
"""
from __future__ import annotations

import gzip
import io
import os
import re
import tarfile
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import ScorekitError, class_count, class_count_from_labels

#: show a progress bar when loading more image files than this
PROGRESS_MIN_FILES = 300

#: grey-level PIL modes (everything else is converted to RGB when channels follow the files)
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


@dataclass
class RawData:
    """Data as read from files, before scaling.

    Attributes:
        x: ``(N, C, H, W)`` images, ``uint8`` (0..255) or float (taken as they are); or ``(N, D)``
            float vectors.
        y: ``(N,)`` int64 labels or ``None``.
        num_classes: the number of classes (labels lie in ``0 .. num_classes - 1``) or ``None``.
        class_names: the name of each class (image folders) or ``None``.
        skipped: the number of unreadable files skipped (image folders with ``skip_corrupt``).
    """

    x: np.ndarray
    y: np.ndarray | None = None
    num_classes: int | None = None
    class_names: tuple[str, ...] | None = None
    skipped: int = 0


# ---------------------------------------------------------------------------------------------
# scikit-learn's digits
# ---------------------------------------------------------------------------------------------

INTERPOLATIONS = ("nearest", "bilinear")


def load_digits(*, size: int = 8, interpolation: str = "nearest") -> RawData:
    r"""scikit-learn's bundled digits: 1,797 greyscale 8x8 images with labels 0..9.

    The pixel values ``v`` in ``0..16`` become ``x = v / 8 - 1`` in ``[-1, 1]`` (float32,
    shape ``(1797, 1, 8, 8)``). ``size`` resizes to ``size x size`` with ``interpolation``:

    * ``"nearest"`` -- each output pixel takes the value of the input pixel its centre falls in
      (``torch.nn.functional.interpolate(mode="nearest-exact")``); for ``size = 16`` every pixel
      becomes a 2x2 block, so the values stay on the grid ``v / 8 - 1``;
    * ``"bilinear"`` -- bilinear interpolation between pixel centres with edges clamped
      (``mode="bilinear", align_corners=False``; antialiased when shrinking); for ``size = 16`` an
      output pixel is ``3/4`` of its nearest input pixel plus ``1/4`` of the next one along each
      axis.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise ScorekitError(f"digits: size must be a positive integer (e.g. 8 or 16), got {size!r}")
    if interpolation not in INTERPOLATIONS:
        raise ScorekitError(f"digits: interpolation must be one of {', '.join(INTERPOLATIONS)}, "
                            f"got {interpolation!r}")
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    v = torch.as_tensor(np.asarray(bunch.images, dtype=np.float64))[:, None]     # (N, 1, 8, 8)
    x = v / 8.0 - 1.0
    if size != 8:
        if interpolation == "nearest":
            x = F.interpolate(x, size=(size, size), mode="nearest-exact")
        else:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=size < 8)
    return RawData(x.float().numpy(), np.asarray(bunch.target, dtype=np.int64), 10)


# ---------------------------------------------------------------------------------------------
# IDX files (MNIST)
# ---------------------------------------------------------------------------------------------

IDX_IMAGES_MAGIC = 2051     # 0x00000803: unsigned bytes, 3 dimensions (N, rows, cols)
IDX_LABELS_MAGIC = 2049     # 0x00000801: unsigned bytes, 1 dimension (N,)
_IDX_KIND = {IDX_IMAGES_MAGIC: "images", IDX_LABELS_MAGIC: "labels"}


def _read_bytes(path: str) -> bytes:
    """The contents of ``path``, decompressed if it is gzip (by its magic bytes, not its name)."""
    try:
        with open(path, "rb") as fh:
            data = fh.read()
    except OSError as err:
        raise ScorekitError(f"cannot read {path}: {err.strerror or err}") from None
    if data[:2] == b"\x1f\x8b":
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as err:
            raise ScorekitError(f"{path} is a corrupt or truncated gzip file ({err}); "
                                "download it again") from None
    return data


def read_idx(path, *, magic: int | None = None) -> np.ndarray:
    r"""Read an IDX file (plain or gzip) of unsigned bytes into a ``uint8`` array.

    Layout: a big-endian header -- the magic number ``0x0000TTDD`` (``TT = 0x08`` for unsigned
    bytes, ``DD`` the number of dimensions), then one 32-bit size per dimension -- followed by
    exactly ``prod(sizes)`` bytes of data. ``magic`` (e.g. :data:`IDX_IMAGES_MAGIC` = 2051 or
    :data:`IDX_LABELS_MAGIC` = 2049) is checked when given.
    """
    path = os.fspath(path)
    data = _read_bytes(path)
    if len(data) < 4:
        raise ScorekitError(f"{path} is too short to be an IDX file ({len(data)} bytes)")
    found = int.from_bytes(data[:4], "big")
    if data[0] != 0 or data[1] != 0 or data[2] != 0x08 or data[3] == 0:
        raise ScorekitError(f"{path} is not an IDX file of unsigned bytes (magic number {found} = "
                            f"0x{found:08x}; expected 0x000008DD, e.g. {IDX_IMAGES_MAGIC} for images "
                            f"or {IDX_LABELS_MAGIC} for labels)")
    if magic is not None and found != magic:
        want, got = _IDX_KIND.get(magic, f"magic {magic}"), _IDX_KIND.get(found)
        hint = f" -- this is an IDX {got} file; did you swap images and labels?" if got else ""
        raise ScorekitError(f"{path}: wrong magic number {found}, expected {magic} for an "
                            f"IDX {want} file{hint}")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise ScorekitError(f"{path} is truncated: its header needs {header} bytes, the file has "
                            f"{len(data)}")
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    expected = header + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        what = "truncated" if len(data) < expected else "longer than its header says"
        raise ScorekitError(f"{path} is {what}: a {'x'.join(map(str, shape))} IDX array needs "
                            f"{expected} bytes, the file has {len(data)}; download it again")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape).copy()


_IMAGES_NAME = re.compile(r"images[-.]idx3-ubyte(\.gz)?$")
_LABELS_NAME = re.compile(r"labels[-.]idx1-ubyte(\.gz)?$")


def _labels_file_for(images_path: str) -> str | None:
    """The labels file beside an images file (``...-images-idx3-ubyte`` -> ``...-labels-idx1-ubyte``)."""
    folder, name = os.path.split(images_path)
    m = _IMAGES_NAME.search(name)
    if m is None:
        return None
    stem = name[:m.start()] + "labels" + name[m.start() + 6: m.start() + 7] + "idx1-ubyte"
    for candidate in (stem + ".gz", stem):
        if os.path.isfile(os.path.join(folder, candidate)):
            return os.path.join(folder, candidate)
    return None


def find_idx_files(path) -> tuple[str, str | None]:
    """``(images file, labels file or None)`` for a folder holding one IDX images file (and its
    labels), or for the path of an images file itself."""
    path = os.fspath(path)
    if os.path.isdir(path):
        images = sorted(f for f in os.listdir(path) if _IMAGES_NAME.search(f))
        if not images:
            raise ScorekitError(f"mnist: no IDX images file (like t10k-images-idx3-ubyte.gz) in "
                                f"folder {path}")
        stems = {_IMAGES_NAME.sub("", f) for f in images}
        if len(stems) > 1:
            raise ScorekitError(f"mnist: folder {path} holds several IDX images files "
                                f"({', '.join(images)}); give the path of one of them")
        images_path = os.path.join(path, images[0])          # prefer the .gz-less sort order
    elif os.path.isfile(path):
        images_path = path
    else:
        raise ScorekitError(f"mnist: no such file or folder: {path}")
    return images_path, _labels_file_for(images_path)


def load_idx_images(path) -> RawData:
    r"""MNIST-style IDX images (magic 2051, ``(N, H, W)`` uint8) and, when present beside them,
    labels (magic 2049, ``(N,)``), as ``(N, 1, H, W)`` uint8.

    ``path`` is a folder holding one ``*-images-idx3-ubyte[.gz]`` file (with its
    ``*-labels-idx1-ubyte[.gz]``), or the images file itself. ``num_classes`` is
    ``max(10, largest label + 1)``.
    """
    images_path, labels_path = find_idx_files(path)
    images = read_idx(images_path, magic=IDX_IMAGES_MAGIC)
    if images.shape[0] == 0:
        raise ScorekitError(f"{images_path} holds no images")
    labels, num_classes = None, None
    if labels_path is not None:
        labels = read_idx(labels_path, magic=IDX_LABELS_MAGIC).astype(np.int64)
        if labels.shape[0] != images.shape[0]:
            raise ScorekitError(f"{labels_path} holds {labels.shape[0]} labels but {images_path} "
                                f"holds {images.shape[0]} images; the files do not belong together")
        num_classes = max(10, int(labels.max()) + 1)
    return RawData(images[:, None], labels, num_classes)


def pad_images(x: np.ndarray, size: int, fill) -> np.ndarray:
    """Pad ``(N, C, H, W)`` images with ``fill`` to ``size x size``, centred (an odd remainder
    goes to the bottom / right)."""
    H, W = x.shape[-2:]
    if size < H or size < W:
        raise ScorekitError(f"pad_to={size} is smaller than the images ({H}x{W}); "
                            f"give pad_to >= {max(H, W)}")
    top, left = (size - H) // 2, (size - W) // 2
    out = np.full(x.shape[:-2] + (size, size), fill, dtype=x.dtype)
    out[..., top:top + H, left:left + W] = x
    return out


# ---------------------------------------------------------------------------------------------
# Image folders (and tar archives of them)
# ---------------------------------------------------------------------------------------------

def image_extensions() -> frozenset[str]:
    """File extensions (lower case, with the dot) of every format PIL can open."""
    from PIL import Image

    Image.init()
    return frozenset(ext.lower() for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


@dataclass
class _Entry:
    parts: tuple[str, ...]              # path relative to the root, split into components
    name: str                           # shown in messages
    read: Callable[[], object]          # returns a path or a file object PIL can open


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _folder_entries(root: str, exts) -> list[_Entry]:
    entries = []
    for folder, dirs, files in os.walk(root, followlinks=True):
        dirs[:] = [d for d in dirs if not _hidden(d)]
        rel = os.path.relpath(folder, root)
        rel_parts = () if rel == os.curdir else tuple(rel.split(os.sep))
        for f in files:
            if _hidden(f) or os.path.splitext(f)[1].lower() not in exts:
                continue
            full = os.path.join(folder, f)
            entries.append(_Entry(rel_parts + (f,), full, lambda full=full: full))
    return entries


def _tar_entries(archive: str, exts) -> list[_Entry]:
    """Every image file of a tar archive (read into memory, nothing written to disk). A single
    folder that wraps everything in the archive is taken as its root."""
    entries = []
    try:
        with tarfile.open(archive, "r:*") as tar:
            for member in tar:
                parts = tuple(p for p in member.name.split("/") if p not in ("", "."))
                if (not member.isfile() or not parts or any(_hidden(p) for p in parts)
                        or os.path.splitext(parts[-1])[1].lower() not in exts):
                    continue
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                entries.append(_Entry(parts, f"{archive}:{member.name}",
                                      lambda data=data: io.BytesIO(data)))
    except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
        raise ScorekitError(f"cannot read archive {archive}: {err}; it is corrupt or truncated") from None
    tops = {e.parts[0] for e in entries}
    if len(tops) == 1 and all(len(e.parts) > 1 for e in entries):
        for e in entries:
            e.parts = e.parts[1:]
    return entries


def _natural_channels(mode: str) -> int:
    return 1 if mode in GREY_MODES else 3


def _convert(img, channels: int):
    """A PIL image in mode ``'L'`` (channels 1) or ``'RGB'`` (channels 3), by PIL's conversion;
    16-bit grey keeps its top 8 bits (PIL would clip it to 255): modes ``I;16*`` and ``I``, which
    Pillow gives 16-bit PGM files (and 16-bit PNG files before Pillow 10.3), its values in
    ``0..65535``. Floating-point pixels (mode ``F``) and 32-bit values beyond 16 bits have no known
    range and are refused."""
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    if img.mode == mode:
        return img
    if img.mode == "F":
        raise ValueError("its pixels are floating-point numbers (mode F), which have no standard range; "
                         "save it as an 8- or 16-bit image")
    if img.mode.startswith("I;16") or img.mode == "I":
        a = np.asarray(img)
        if a.size and (int(a.min()) < 0 or int(a.max()) > 65535):
            raise ValueError(f"its 32-bit integer pixels run {int(a.min())}..{int(a.max())}, beyond 16 bits, "
                             f"which have no standard range; save it as an 8- or 16-bit image")
        grey = Image.fromarray((a.astype(np.uint32) >> 8).astype(np.uint8))
        return grey if channels == 1 else grey.convert("RGB")
    return img.convert(mode)


def _resize_crop(img, size: int):
    """Resize so the shorter side is ``size`` (bicubic, antialiased when shrinking), then crop
    the central ``size x size`` square."""
    from PIL import Image

    w, h = img.size
    if (w, h) == (size, size):
        return img
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), Image.Resampling.BICUBIC)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def load_image_folder(path, *, size: int | None = None, channels: int | None = None,
                      skip_corrupt: bool = False, progress: bool | None = None) -> RawData:
    r"""Every image PIL can open under ``path`` (recursively), as ``(N, C, H, W)`` uint8.

    Layout: class sub-folders (``path/<class>/.../<file>``) become labels -- the sorted folder
    names map to ``0 .. K-1`` (``class_names``); images directly in ``path`` (a flat folder) have
    no labels. Hidden files and folders (names starting with ``.``) are ignored, and so are
    sub-folders without images. ``path`` may also be a tar archive (``.tar``, ``.tar.gz``,
    ``.tgz``), read in memory; a single folder wrapping the whole archive is its root. Images are
    ordered by their path, so the order does not depend on the file system.

    Args:
        size: resize each image so its shorter side is ``size`` (PIL's bicubic filter, which
            also antialiases when shrinking), then crop the central ``size x size`` square.
            Without it every image must have the same size. Images are converted to
            ``channels`` first, then resized.
        channels: 1 or 3, converting with PIL's ``'L'`` (``L = (299 R + 587 G + 114 B) / 1000``)
            or ``'RGB'`` conversion; ``None`` keeps the files' own (grey modes -> 1, others -> 3;
            alpha is dropped), which must then agree.
        skip_corrupt: skip files that cannot be decoded (counted in ``skipped``, with a warning)
            instead of raising an error naming the file.
        progress: show a progress bar (``None``: when there are more than
            :data:`PROGRESS_MIN_FILES` files).
    """
    from PIL import Image
    from tqdm.auto import tqdm

    path = os.fspath(path)
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 1):
        raise ScorekitError(f"folder: size must be a positive integer or None, got {size!r}")
    if channels not in (None, 1, 3) or isinstance(channels, bool):
        raise ScorekitError(f"folder: channels must be 1, 3 or None (keep the files' own), got {channels!r}")
    exts = image_extensions()
    if os.path.isdir(path):
        entries = _folder_entries(path, exts)
    elif os.path.isfile(path):
        if not tarfile.is_tarfile(path):
            raise ScorekitError(f"folder: {path} is a file, not a folder or a tar archive of images")
        entries = _tar_entries(path, exts)
    else:
        raise ScorekitError(f"folder: no such folder: {path}")
    if not entries:
        raise ScorekitError(f"folder: {path} holds no image files (looked for .png, .jpg and every "
                            "other format PIL opens, in it and its sub-folders); check the path")
    entries.sort(key=lambda e: e.parts)

    flat = [e for e in entries if len(e.parts) == 1]
    if flat and len(flat) != len(entries):
        nested = next(e for e in entries if len(e.parts) > 1)
        raise ScorekitError(f"folder: {path} holds images both directly in it (e.g. {flat[0].name}) "
                            f"and in sub-folders (e.g. {nested.name}); put every image in a class "
                            "sub-folder, or all of them in one flat folder")
    class_names = None if flat else tuple(sorted({e.parts[0] for e in entries}))
    class_index = {c: i for i, c in enumerate(class_names or ())}

    show = len(entries) > PROGRESS_MIN_FILES if progress is None else bool(progress)
    arrays, labels, skipped, first_skipped = [], [], 0, None
    first = None                        # (name, size, channels) of the first image kept
    for e in tqdm(entries, desc=f"loading {os.path.basename(path.rstrip(os.sep)) or path}",
                  unit="img", disable=not show, leave=False, dynamic_ncols=True):
        try:
            with Image.open(e.read()) as img:
                img.load()
                own = _natural_channels(img.mode)
                c = channels or own
                out = _convert(img, c)
                if size is not None:
                    out = _resize_crop(out, size)
                a = np.asarray(out).reshape(out.size[1], out.size[0], c)
        except Exception as err:                            # PIL raises many exception types
            if not skip_corrupt:
                raise ScorekitError(f"cannot read image {e.name}: {err}; delete or replace the file, "
                                    "or pass skip_corrupt=True to skip unreadable files") from None
            skipped += 1
            first_skipped = first_skipped or e.name
            continue
        if first is None:
            first = (e.name, a.shape[:2], own)
        else:
            if a.shape[:2] != first[1]:
                (h0, w0), (h1, w1) = first[1], a.shape[:2]
                raise ScorekitError(f"folder: images of different sizes in {path}: {first[0]} is "
                                    f"{w0}x{h0}, {e.name} is {w1}x{h1} (width x height); pass size=N to "
                                    "resize and centre-crop every image to N x N")
            if channels is None and own != first[2]:
                kinds = {1: "greyscale", 3: "colour"}
                raise ScorekitError(f"folder: {path} mixes {kinds[first[2]]} and {kinds[own]} images "
                                    f"({first[0]} and {e.name}); pass channels=1 or channels=3 to "
                                    "convert them all")
        arrays.append(a)
        if class_names is not None:
            labels.append(class_index[e.parts[0]])
    if skipped:
        warnings.warn(f"skipped {skipped} unreadable image file(s) in {path} (first: {first_skipped})",
                      stacklevel=2)
    if not arrays:
        raise ScorekitError(f"folder: none of the {len(entries)} image files in {path} could be read "
                            f"(first: {first_skipped})")
    x = np.stack(arrays).transpose(0, 3, 1, 2)
    y = None if class_names is None else np.asarray(labels, dtype=np.int64)
    return RawData(np.ascontiguousarray(x), y, None if class_names is None else len(class_names),
                   class_names, skipped)


# ---------------------------------------------------------------------------------------------
# NumPy files
# ---------------------------------------------------------------------------------------------

LAYOUTS = ("auto", "NCHW", "NHWC")


def _image_layout(shape: Sequence[int], layout: str, path: str) -> str:
    if layout != "auto":
        return layout
    first, last = shape[1] in (1, 3), shape[3] in (1, 3)
    if first and not last:
        return "NCHW"
    if last and not first:
        return "NHWC"
    raise ScorekitError(f"{path}: cannot tell the channel axis of images shaped {tuple(shape)}; "
                        "pass layout='NCHW' or layout='NHWC'")


def load_npz(path, *, layout: str = "auto", num_classes: int | None = None) -> RawData:
    r"""Arrays from a NumPy ``.npz`` (or ``.npy``) file, never unpickling objects.

    The data are the array named ``x`` (else the first array that is not ``y``); labels the
    optional integer array ``y`` of shape ``(N,)``.

    * ``uint8`` images ``(N, H, W)``, ``(N, C, H, W)`` or ``(N, H, W, C)`` (``C`` = 1 or 3; the
      channel axis is found from the shape, or given by ``layout``) are returned as
      ``(N, C, H, W)`` uint8 (scaled to ``[-1, 1]`` later).
    * float arrays are taken as they are (no scaling): ``(N, D)`` vectors, ``(N, C, H, W)``
      images (any ``C``, e.g. 4 latent channels), ``(N, H, W, C)`` ones whose last axis is 1 or 3
      and whose second is neither (or with ``layout='NHWC'``), or ``(N, H, W)`` greyscale images
      (given a channel axis).

    ``num_classes`` defaults to ``largest label + 1``; labels must then be class indices, with
    ``largest label + 1`` at most the number of samples (or 256): labels such as {0, 10^9} are
    refused (renumber them, or give ``num_classes``, at most
    :data:`scorekit.errors.MAX_CLASSES`), never renumbered behind the user's back.
    """
    path = os.fspath(path)
    if layout not in LAYOUTS:
        raise ScorekitError(f"npz: layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if not os.path.isfile(path):
        raise ScorekitError(f"npz: no such file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if isinstance(loaded, np.lib.npyio.NpzFile):
            with loaded:
                names = list(loaded.files)
                if not names:
                    raise ScorekitError(f"{path} holds no arrays")
                key = "x" if "x" in names else next((n for n in names if n != "y"), None)
                if key is None:
                    raise ScorekitError(f"{path} holds only labels 'y'; store the data as 'x'")
                x = loaded[key]
                y = loaded["y"] if "y" in names else None
        else:
            key, x, y = "array", loaded, None
    except ScorekitError:
        raise
    except ValueError as err:
        if "Object arrays" in str(err):
            raise ScorekitError(f"{path} holds Python objects (pickled arrays), which scorekit never "
                                "loads; save plain numeric arrays") from None
        raise ScorekitError(f"cannot read {path} as a NumPy .npz/.npy file: {err}") from None
    except (OSError, EOFError, zlib.error, KeyError) as err:
        raise ScorekitError(f"cannot read {path} as a NumPy .npz/.npy file: {err}") from None
    except Exception as err:                                    # zipfile.BadZipFile and kin
        raise ScorekitError(f"cannot read {path} as a NumPy .npz/.npy file: {err}") from None

    if x.ndim < 2 or x.shape[0] == 0:
        raise ScorekitError(f"{path}: array {key!r} must hold N >= 1 samples shaped (N, D), (N, H, W), "
                            f"(N, C, H, W) or (N, H, W, C); got shape {x.shape}")
    if x.dtype == np.uint8:
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim == 4:
            if _image_layout(x.shape, layout, path) == "NHWC":
                x = x.transpose(0, 3, 1, 2)
        else:
            raise ScorekitError(f"{path}: uint8 array {key!r} must be images shaped (N, H, W), "
                                f"(N, C, H, W) or (N, H, W, C); got shape {x.shape}")
        if x.shape[1] not in (1, 3):
            raise ScorekitError(f"{path}: images must have 1 or 3 channels, got {x.shape[1]} "
                                f"(shape {x.shape}, layout {layout})")
    elif np.issubdtype(x.dtype, np.floating):
        if x.ndim == 3:
            x = x[:, None]
        elif x.ndim > 4:
            raise ScorekitError(f"{path}: float array {key!r} must be shaped (N, D), (N, H, W) or "
                                f"(N, C, H, W); got shape {x.shape}")
        elif x.ndim == 4 and (layout == "NHWC" or layout == "auto" and x.shape[3] in (1, 3)
                                and x.shape[1] not in (1, 3)):
            x = x.transpose(0, 3, 1, 2)        # a last axis of 1 or 3 and a first of neither: NHWC
    else:
        raise ScorekitError(f"{path}: array {key!r} has dtype {x.dtype}; store images as uint8 "
                            "(0..255) or data as float")
    x = np.ascontiguousarray(x)

    if y is not None:
        if not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
            raise ScorekitError(f"{path}: labels 'y' must be a 1-d integer array, got dtype {y.dtype} "
                                f"shape {y.shape}")
        if y.shape[0] != x.shape[0]:
            raise ScorekitError(f"{path}: {y.shape[0]} labels 'y' for {x.shape[0]} samples in {key!r}")
        if y.min() < 0:
            raise ScorekitError(f"{path}: labels 'y' must be >= 0, found {int(y.min())}")
        if int(y.max()) > np.iinfo(np.int64).max:            # uint64 beyond int64 would wrap
            raise ScorekitError(f"{path}: labels 'y' must be class indices, found {int(y.max())}")
        y = y.astype(np.int64)
        largest = int(y.max())
        if num_classes is None:
            num_classes = class_count_from_labels(largest, x.shape[0], path)
        elif class_count(num_classes, "npz: num_classes") <= largest:
            raise ScorekitError(f"npz: num_classes={num_classes!r} must be an integer above the "
                                f"largest label in {path} ({largest})")
    elif num_classes is not None:
        raise ScorekitError(f"npz: num_classes={num_classes!r} given but {path} holds no labels 'y'")
    return RawData(x, y, num_classes)


__all__ = ["RawData", "load_digits", "read_idx", "find_idx_files", "load_idx_images", "pad_images",
           "load_image_folder", "load_npz", "image_extensions", "IDX_IMAGES_MAGIC", "IDX_LABELS_MAGIC"]
