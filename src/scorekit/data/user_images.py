"""The images a user brings to a command: one file, a folder of files, or an ``.npz``.

``scorekit restore`` and ``scorekit edit`` read their ``--input`` (and ``--with``, ``--mask``)
here, so every command accepts the same inputs and refuses bad ones with the same one-line
messages, each naming the flag (or argument) it came from. Nothing is resized and nothing is
unpickled (``np.load(allow_pickle=False)``); the callers check the sizes against their model.
"""
from __future__ import annotations

import os

import torch

from ..errors import ScorekitError

Tensor = torch.Tensor


def shape_text(shape) -> str:
    """An image shape ``(C, H, W)`` in words, for messages: ``"3 channel(s) of 32x32"``."""
    return f"{shape[0]} channel(s) of {shape[1]}x{shape[2]}" if len(shape) == 3 else str(tuple(shape))


def read_image_file(file: str):
    """One image file as ``(C, H, W)`` uint8: 1 channel for grey images, 3 for the others."""
    import numpy as np
    from PIL import Image

    from .images import _convert, _natural_channels

    try:
        with Image.open(file) as img:
            img.load()
            channels = _natural_channels(img.mode)
            arr = np.asarray(_convert(img, channels))
    except Exception as err:
        raise ScorekitError(f"cannot read the image {file}: {type(err).__name__}: {err}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_images(path, what: str = "the input") -> tuple[Tensor, list[str], Tensor | None]:
    """The images a user brings: ``(x, names, mask)`` with ``x`` ``(N, C, H, W)`` in ``[-1, 1]``.

    ``path`` is one image file (PNG, JPEG, anything Pillow opens), a folder of them (its image
    files, in name order, not its sub-folders) or an ``.npz`` with ``x`` (``(N, C, H, W)`` or
    ``(N, H, W)``; uint8 pixels or floats in ``[-1, 1]``) and optionally ``mask`` (1 = known).
    Grey images have 1 channel, every other image 3 (RGB); all must have one size and channel
    count. Nothing is resized: check the sizes against the model's afterwards
    (:func:`check_images`, or :func:`scorekit.tasks.restore.check_observation`). ``names`` are
    the file names without extension, distinct (:func:`unique_names`: ``a_png`` and ``a_bmp`` for
    ``a.png`` and ``a.bmp``; ``0000``, ... for an ``.npz``); ``mask`` is ``None`` unless the
    ``.npz`` holds one. ``what`` names the input in messages (``"--with"``, ...).
    """
    import numpy as np

    from .dataset import to_tensor
    from .images import image_extensions

    path = os.fspath(path)
    if not os.path.exists(path):
        raise ScorekitError(f"{what} {path!r} does not exist; give an image, a folder of images or an .npz")
    if os.path.isfile(path) and path.lower().endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as data:
                if "x" not in data:
                    raise ScorekitError(f"{path} holds no array 'x' (the images); it has {', '.join(data.files)}")
                x, mask = data["x"], (data["mask"] if "mask" in data.files else None)
        except ScorekitError:
            raise
        except Exception as err:
            raise ScorekitError(f"cannot read {path}: {type(err).__name__}: {err}") from None
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[0] < 1:
            raise ScorekitError(f"{path}: x must be images (N, C, H, W) or (N, H, W), got {x.shape}")
        if x.dtype != np.uint8 and not np.issubdtype(x.dtype, np.floating):
            raise ScorekitError(f"{path}: x must hold uint8 pixels or floats in [-1, 1], got {x.dtype}")
        from ..tasks.degradations import check_clean

        images = check_clean(to_tensor(x), f"the images of {path}")
        if mask is not None:
            if mask.dtype != np.bool_ and not np.issubdtype(mask.dtype, np.integer) \
                    and not np.issubdtype(mask.dtype, np.floating):
                raise ScorekitError(f"{path}: mask must hold numbers, 1 where a pixel is known and 0 where it is to "
                                    f"be filled; got {mask.dtype}")
            mask = torch.as_tensor(mask.astype(np.float32))
        return images, [f"{i:04d}" for i in range(len(images))], mask
    if os.path.isdir(path):
        exts = image_extensions()
        files = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts
                       and os.path.isfile(os.path.join(path, f)))
        if not files:
            raise ScorekitError(f"{what}: the folder {path!r} holds no image files")
    else:
        files = [path]
    pixels = [read_image_file(f) for f in files]
    first = pixels[0].shape
    for f, p in zip(files, pixels):
        if p.shape != first:
            raise ScorekitError(f"the input images differ in size or channels: {files[0]} has {shape_text(first)}, {f} has "
                                f"{shape_text(p.shape)}; give images of one size")
    return to_tensor(np.stack(pixels)), unique_names(files), None


def unique_names(files) -> list[str]:
    """A distinct name for each of ``files``, to write an output per file: its name without the
    extension (``a`` for ``in/a.png``); where two files share that (``a.png`` and ``a.bmp``) the
    extension is kept after an underscore (``a_png``, ``a_bmp``), and a name still taken gets
    ``_2``, ``_3``, ..."""
    from collections import Counter

    parts = [os.path.splitext(os.path.basename(os.fspath(f))) for f in files]
    counts = Counter(stem for stem, _ in parts)
    names, taken = [], set()
    for stem, ext in parts:
        name = stem if counts[stem] == 1 or not ext else f"{stem}_{ext[1:]}"
        base, k = name, 2
        while name in taken:
            name, k = f"{base}_{k}", k + 1
        taken.add(name)
        names.append(name)
    return names


def check_images(x: Tensor, shape, path, what: str = "the input") -> Tensor:
    """``x`` if its images are ``shape`` (channels, height, width); otherwise one message naming
    both sizes."""
    if tuple(x.shape[1:]) != tuple(shape):
        got = "x".join(map(str, x.shape[1:]))
        raise ScorekitError(f"{what} {os.fspath(path)!r} holds images of {got} (channels x height x width) but the "
                            f"model makes {'x'.join(map(str, shape))} images; give images of that size and "
                            f"channel count")
    return x


def read_mask(file, size, what: str = "the mask") -> Tensor:
    """A mask image as ``(1, 1, H, W)``: white (grey >= 128) where a pixel is known, black where it is
    to be filled; its size must be ``size`` ``(H, W)``. A colour image is read through its luma."""
    file = os.fspath(file)
    if not os.path.isfile(file):
        raise ScorekitError(f"{what} {file!r} does not exist; give a PNG, white where a pixel is known")
    mask = read_image_file(file)
    if mask.shape[0] == 3:
        from .dataset import convert_channels

        mask = convert_channels(mask[None], 1)[0]
    if tuple(mask.shape[1:]) != tuple(size):
        raise ScorekitError(f"{what} {file} is {mask.shape[2]}x{mask.shape[1]} (width x height) but the images are "
                            f"{size[1]}x{size[0]}; give a mask of the images' size")
    return torch.from_numpy((mask >= 128).astype("float32"))[None]


__all__ = ["check_images", "read_image_file", "read_images", "read_mask", "shape_text", "unique_names"]
