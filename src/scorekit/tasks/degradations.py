r"""Degradations: what a trained image-to-image model (SR3, Palette) is conditioned on.

A conditional diffusion model for a task learns ``E[x_0 | x_t, c]`` with ``c`` a degraded view of
the clean image ``x_0``, concatenated to ``x_t`` at the network's input (SR3: Saharia et al.
2021, "Image Super-Resolution via Iterative Refinement"; Palette: Saharia et al. 2022, "Palette:
Image-to-Image Diffusion Models"). Nothing about a task is learnt from paired data: each
:class:`Degradation` turns a clean batch into its degraded view on the fly, so any image dataset
trains every task.

A degradation maps ``x_0`` ``(N, C, H, W)`` in ``[-1, 1]`` and a ``torch.Generator`` (the only
source of its randomness) to a :class:`Degraded`:

* ``image`` ``(N, C, H, W)``: what the network sees of the observation, at the model's resolution;
* ``mask`` ``(N, 1, H, W)``: 1 where a pixel is known, 0 where it is to be made up;
* ``cond = [image, mask]`` ``(N, C + 1, H, W)``: the condition image
  (:class:`scorekit.conditioning.Condition` ``image``), whose channels the network takes as
  ``cond_channels = C + 1``;
* ``measurement``: the low-level observation ``y`` (a low-resolution image, a grey image, the
  known pixels, a decoded JPEG), from which :meth:`Degradation.observe` rebuilds the condition,
  and against which :meth:`Degradation.consistency` measures a restoration.

The tasks (:data:`DEGRADATIONS`):

* ``sr2``, ``sr4``: super-resolution. ``y = A x_0``, the mean of each ``f x f`` block
  (:class:`scorekit.tasks.operators.Downsample`, ``f = 2, 4``). The network sees ``y`` upsampled
  back to ``H x W`` by bicubic interpolation, as SR3 does (clipped to ``[-1, 1]``, where bicubic
  overshoots at edges); ``upsample="nearest"`` gives the pseudo-inverse ``A^+ y`` instead (each
  value repeated over its block). Every pixel is observed through ``A``: the mask is all ones.
* ``colorize``: ``y = sum_c w_c x_c`` with the luma weights
  (:class:`scorekit.tasks.operators.Greyscale`; colour images only), replicated to the ``C``
  channels. The mask is all ones.
* ``inpaint``: the known pixels ``y = m * x_0`` (:class:`scorekit.tasks.operators.Mask`) for a
  mask drawn per sample: ``box`` (a centred square of half the image's side, Palette's centre
  mask), ``boxes`` (1 to 3 rectangles of random size and place), ``strokes`` (free-form brush
  strokes: random walks drawn with a round brush, after Yu et al. 2019) or ``mixed`` (one of the
  three, drawn per sample). The unknown pixels of ``image`` are filled with ``0`` (``fill="zero"``,
  the default: the mask channel already tells the network which pixels are unknown, so a
  constant fill carries no false information and keeps the condition a function of ``(y, m)``)
  or with standard Gaussian noise (``fill="noise"``, as Palette fills them).
* ``uncrop``: inpainting with the unknown part at the edge: ``half`` (one half of the image, on a
  side drawn per sample), ``border`` (a frame of ``border`` times the side on every side) or
  ``mixed``.
* ``jpeg``: JPEG compression artefacts (Palette's JPEG restoration): each sample is encoded by
  Pillow at a quality drawn uniformly from ``quality_min .. quality_max`` (5 to 30 by default) and
  decoded (:func:`jpeg_roundtrip`); 1- and 3-channel images. Not linear: its consistency is the
  re-encoding of a restoration at the same quality. The mask is all ones.

:func:`degrade_images` degrades a user's clean images (test inputs whose truth is known);
:func:`build_degradation` builds one by name with its options checked against its constructor
(``errors.check_options``), as every option of scorekit is.
"""
from __future__ import annotations

import dataclasses
import io
import math

import torch

from ..conditioning import Condition
from ..errors import ScorekitError, check_options, option_schema
from .baselines import bicubic_upsample
from .operators import Downsample, Greyscale, Mask

Tensor = torch.Tensor


@dataclasses.dataclass
class Degraded:
    """A degraded batch (see the module docstring).

    Attributes:
        image: ``(N, C, H, W)`` the observation at the model's resolution.
        mask: ``(N, 1, H, W)`` 1 where a pixel is known.
        measurement: the low-level observation ``y`` (shape per task).
        task: the degradation's name.
        params: what was drawn per sample besides the mask (``quality`` of ``jpeg``), so that
            :meth:`Degradation.consistency` measures another image in the same way.
    """

    image: Tensor
    mask: Tensor
    measurement: Tensor
    task: str
    params: dict = dataclasses.field(default_factory=dict)

    @property
    def cond(self) -> Tensor:
        """``[image, mask]`` ``(N, C + 1, H, W)``: what the network is conditioned on."""
        return torch.cat([self.image, self.mask.to(self.image)], dim=1)

    def condition(self) -> Condition:
        """The :class:`~scorekit.conditioning.Condition` of :attr:`cond`."""
        return Condition(image=self.cond)

    def __len__(self) -> int:
        return self.image.shape[0]

    def __getitem__(self, index) -> "Degraded":
        params = {k: v[index] for k, v in self.params.items()}
        return Degraded(self.image[index], self.mask[index], self.measurement[index], self.task, params)


def check_clean(x0, what: str = "the clean images") -> Tensor:
    """``x0`` as float ``(N, C, H, W)`` images in ``[-1, 1]``, or a :class:`ScorekitError`."""
    if not isinstance(x0, Tensor) or x0.ndim != 4 or not x0.is_floating_point():
        got = f"{tuple(x0.shape)} {x0.dtype}" if isinstance(x0, Tensor) else type(x0).__name__
        raise ScorekitError(f"{what} must be a float tensor of images (N, C, H, W) in [-1, 1], got {got}")
    if x0.numel() and not bool(torch.isfinite(x0).all()):
        raise ScorekitError(f"{what} hold NaN or infinite values")
    if x0.numel() and (float(x0.min()) < -1 - 1e-4 or float(x0.max()) > 1 + 1e-4):
        raise ScorekitError(f"{what} range over [{float(x0.min()):.3g}, {float(x0.max()):.3g}]; images are in "
                            f"[-1, 1] (v / 127.5 - 1 for 0..255 pixels)")
    return x0


def _ones_mask(x: Tensor) -> Tensor:
    return torch.ones((x.shape[0], 1, *x.shape[2:]), dtype=x.dtype, device=x.device)


def _uniform(n: int, generator: torch.Generator) -> Tensor:
    """``n`` uniform numbers in ``[0, 1)`` from ``generator`` (on the CPU)."""
    return torch.rand(n, generator=generator, dtype=torch.float64)


class Degradation:
    """The base of every degradation (see the module docstring).

    A subclass sets :attr:`name` and writes :meth:`degrade` (clean images to a :class:`Degraded`),
    :meth:`observe` (a user's observation to the same) and :meth:`measure` (the measurement of
    another image, with the draws of a :class:`Degraded`); its constructor's keyword arguments are
    its options.
    """

    name = ""
    #: whether an observation needs a mask from the user (inpaint, uncrop)
    needs_mask = False

    def __call__(self, x0: Tensor, generator: torch.Generator) -> Degraded:
        return self.degrade(x0, generator)

    # -- what a subclass writes -----------------------------------------------------------------
    def degrade(self, x0: Tensor, generator: torch.Generator) -> Degraded:
        raise NotImplementedError

    def observe(self, y: Tensor, mask: Tensor | None = None, *, generator: torch.Generator | None = None
                ) -> Degraded:
        """The condition of an observation ``y`` a user brings (shape :meth:`observed_shape`)."""
        raise NotImplementedError

    def measure(self, x: Tensor, degraded: Degraded) -> Tensor:
        """The measurement of ``x`` made as ``degraded``'s was (same mask, same quality)."""
        raise NotImplementedError

    # -- shapes ---------------------------------------------------------------------------------
    def check_shape(self, shape) -> None:
        """Raise :class:`ScorekitError` unless the task applies to images of ``shape`` ``(C, H, W)``."""
        if len(shape) != 3:
            raise ScorekitError(f"task {self.name!r} degrades images (C, H, W); the data are {tuple(shape)} "
                                f"vectors")

    def cond_channels(self, shape) -> int:
        """The channels of the condition for images of ``shape`` ``(C, H, W)``: ``C + 1``."""
        self.check_shape(shape)
        return int(shape[0]) + 1

    def observed_shape(self, shape) -> tuple:
        """The shape ``(C, h, w)`` of one observation of an image of ``shape`` (the same by default)."""
        return tuple(shape)

    def observation_shapes(self, shape) -> list[tuple]:
        """Every shape of one observation that :meth:`observe` takes for images of ``shape``."""
        return [self.observed_shape(shape)]

    # -- consistency ------------------------------------------------------------------------------
    def consistency(self, x: Tensor, degraded: Degraded) -> Tensor:
        r"""``(N,)`` root-mean-square of ``measure(x) - y``: how far a restoration ``x`` is from
        reproducing the observation (0 for the truth of a linear degradation)."""
        diff = self.measure(x, degraded) - degraded.measurement.to(x)
        return diff.reshape(diff.shape[0], -1).pow(2).mean(1).sqrt()

    def __repr__(self) -> str:
        options = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({options})"


# --- super-resolution --------------------------------------------------------------------------

UPSAMPLINGS = ("bicubic", "nearest")


class _Linear(Degradation):
    """A degradation that observes every pixel through a fixed linear ``operator`` (``y = A x_0``)."""

    operator = None

    def degrade(self, x0, generator):
        x0 = check_clean(x0)
        self.check_shape(x0.shape[1:])
        return self.observe(self.operator(x0))

    def measure(self, x, degraded):
        return self.operator(x)


class SuperResolution(_Linear):
    r"""``y = A x_0``, block means of ``factor x factor`` pixels (:class:`~scorekit.tasks.operators.Downsample`);
    the network sees ``y`` upsampled to the model's size (module docstring).

    Args:
        upsample: ``"bicubic"`` (SR3's choice, clipped to ``[-1, 1]``) or ``"nearest"`` (the
            pseudo-inverse ``A^+ y``).
    """

    factor = 1

    def __init__(self, *, upsample: str = "bicubic"):
        if upsample not in UPSAMPLINGS:
            raise ScorekitError(f"unknown upsampling {upsample!r} of task {self.name!r}; choose one of "
                                f"{', '.join(UPSAMPLINGS)}")
        self.upsample = upsample

    @property
    def operator(self) -> Downsample:
        return Downsample(self.factor)

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        if shape[1] % self.factor or shape[2] % self.factor:
            raise ScorekitError(f"task {self.name!r} downsamples by {self.factor}: the images' height and width "
                                f"must be multiples of {self.factor}, got {shape[1]}x{shape[2]}")

    def observed_shape(self, shape) -> tuple:
        self.check_shape(shape)
        return (shape[0], shape[1] // self.factor, shape[2] // self.factor)

    def upsampled(self, y: Tensor) -> Tensor:
        """``y`` ``(N, C, h, w)`` at ``factor`` times its size: bicubic (clipped) or ``A^+ y``."""
        if self.upsample == "nearest":
            return self.operator.pinv(y)
        return bicubic_upsample(y, self.factor)

    def observe(self, y, mask=None, *, generator=None):
        _no_mask(self, mask)
        if y.ndim != 4:
            raise ScorekitError(f"a low-resolution observation of task {self.name!r} is (N, C, h, w), got "
                                f"{tuple(y.shape)}")
        image = self.upsampled(y)
        return Degraded(image, _ones_mask(image), y, self.name)


class SuperResolution2(SuperResolution):
    __doc__ = SuperResolution.__doc__
    name = "sr2"
    factor = 2


class SuperResolution4(SuperResolution):
    __doc__ = SuperResolution.__doc__
    name = "sr4"
    factor = 4


# --- colourisation -------------------------------------------------------------------------------

class Colorize(_Linear):
    r"""``y = sum_c w_c x_c``, the luma of a colour image (:class:`~scorekit.tasks.operators.Greyscale`),
    replicated to the image's channels; the mask is all ones."""

    name = "colorize"
    operator = Greyscale()

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        if shape[0] != 3:
            raise ScorekitError(f"task 'colorize' restores the colours of RGB images; the images have "
                                f"{shape[0]} channel(s)")

    def observed_shape(self, shape) -> tuple:
        self.check_shape(shape)
        return (1, shape[1], shape[2])

    def observation_shapes(self, shape) -> list[tuple]:
        """A grey image, or a colour one (made grey)."""
        return [self.observed_shape(shape), tuple(shape)]

    def observe(self, y, mask=None, *, generator=None):
        """A grey observation ``(N, 1, H, W)`` (a colour one ``(N, 3, H, W)`` is made grey first)."""
        _no_mask(self, mask)
        if y.ndim == 4 and y.shape[1] == 3:
            y = self.operator(y)
        if y.ndim != 4 or y.shape[1] != 1:
            raise ScorekitError(f"a grey observation of task 'colorize' is (N, 1, H, W), got {tuple(y.shape)}")
        image = y.expand(-1, 3, -1, -1).contiguous()
        return Degraded(image, _ones_mask(image), y, self.name)


# --- inpainting and uncropping -------------------------------------------------------------------

FILLS = ("zero", "noise")
INPAINT_MASKS = ("box", "boxes", "strokes", "mixed")
UNCROP_MASKS = ("half", "border", "mixed")


class _Masked(Degradation):
    """A degradation that keeps the pixels of a mask drawn per sample (inpaint, uncrop)."""

    needs_mask = True
    kinds: tuple = ()

    def __init__(self, kind: str, fill: str):
        if kind not in self.kinds:
            raise ScorekitError(f"unknown mask kind {kind!r} of task {self.name!r}; choose one of "
                                f"{', '.join(self.kinds)}")
        if fill not in FILLS:
            raise ScorekitError(f"unknown fill {fill!r} of task {self.name!r}; choose one of {', '.join(FILLS)}")
        self.kind, self.fill = kind, fill

    def masks(self, n: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """``(n, 1, H, W)`` float masks, 1 = known, drawn from ``generator``."""
        kinds = [k for k in self.kinds if k != "mixed"]
        if self.kind == "mixed":
            picks = (_uniform(n, generator) * len(kinds)).long().clamp_max(len(kinds) - 1).tolist()
        else:
            picks = [kinds.index(self.kind)] * n
        out = torch.empty(n, 1, height, width)
        for i, k in enumerate(picks):
            out[i, 0] = self.one_mask(kinds[k], height, width, generator)
        return out

    def one_mask(self, kind: str, height: int, width: int, generator: torch.Generator) -> Tensor:
        raise NotImplementedError

    def degrade(self, x0, generator):
        x0 = check_clean(x0)
        self.check_shape(x0.shape[1:])
        n, _, h, w = x0.shape
        mask = self.masks(n, h, w, generator).to(device=x0.device, dtype=x0.dtype)
        return self.observe(mask * x0, mask, generator=generator)

    def observe(self, y, mask=None, *, generator=None):
        """Known pixels ``y`` ``(N, C, H, W)`` and their ``mask`` ``(N or 1, 1, H, W)`` (1 = known; the
        pixels of ``y`` where it is 0 are ignored)."""
        if mask is None:
            raise ScorekitError(f"task {self.name!r} needs the mask of the known pixels (1 = known, 0 = to fill)",
                                cli=f"task {self.name!r} needs --mask PNG (white = known pixel, black = to "
                                    f"fill), or --degrade to draw masks for clean images")
        mask = check_mask(mask, y.shape)
        measurement = mask * y
        if self.fill == "noise":
            if generator is None:
                raise ScorekitError(f"task {self.name!r} fills unknown pixels with noise: give a generator")
            noise = torch.randn(y.shape, generator=generator, dtype=y.dtype).to(y.device)
            image = measurement + (1 - mask) * noise
        else:
            image = measurement
        return Degraded(image, mask.expand(y.shape[0], -1, -1, -1).contiguous(), measurement, self.name)

    def measure(self, x, degraded):
        return Mask(degraded.mask.to(x))(x)


def check_mask(mask, shape) -> Tensor:
    """A mask of known pixels (1 known, 0 to fill) for images of ``shape`` ``(N, C, H, W)``, as an
    ``(N or 1, 1, H, W)`` float tensor; any other size is refused naming both."""
    mask = torch.as_tensor(mask)
    if mask.ndim == 2:
        mask = mask[None, None]
    elif mask.ndim == 3:
        mask = mask[:, None]
    n, _, h, w = shape
    if mask.ndim != 4 or mask.shape[1] != 1 or mask.shape[0] not in (1, n) or tuple(mask.shape[2:]) != (h, w):
        raise ScorekitError(f"the mask has shape {tuple(mask.shape)} ({'x'.join(map(str, mask.shape[-2:]))}) but "
                            f"the images are {h}x{w}: give one mask (H, W) = ({h}, {w}) or one per image "
                            f"({n}, 1, {h}, {w})")
    mask = mask.to(torch.float32)
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ScorekitError("a mask holds 1 where a pixel is known and 0 where it is to be filled; this one has "
                            "other values")
    return mask


def _box(height: int, width: int, top: int, left: int, h: int, w: int) -> Tensor:
    """1 everywhere but in the rectangle of size ``h x w`` at ``(top, left)``."""
    m = torch.ones(height, width)
    m[top:top + h, left:left + w] = 0
    return m


def _draw_int(generator: torch.Generator, lo: int, hi: int) -> int:
    """A whole number uniform in ``lo .. hi`` (inclusive)."""
    return int(torch.randint(lo, hi + 1, (1,), generator=generator))


class Inpaint(_Masked):
    r"""Inpainting: ``y = m * x_0`` with a mask drawn per sample (module docstring).

    Args:
        kind: ``"box"``, ``"boxes"``, ``"strokes"`` or ``"mixed"``.
        fill: the unknown pixels of the condition: ``"zero"`` or ``"noise"`` (standard Gaussian).
    """

    name = "inpaint"
    kinds = INPAINT_MASKS

    def __init__(self, *, kind: str = "mixed", fill: str = "zero"):
        super().__init__(kind, fill)

    def one_mask(self, kind, height, width, generator):
        if kind == "box":                                   # Palette's centre mask: half the side
            h, w = max(1, height // 2), max(1, width // 2)
            return _box(height, width, (height - h) // 2, (width - w) // 2, h, w)
        if kind == "boxes":
            m = torch.ones(height, width)
            for _ in range(_draw_int(generator, 1, 3)):
                h = _draw_int(generator, max(1, height // 8), max(1, height // 2))
                w = _draw_int(generator, max(1, width // 8), max(1, width // 2))
                m = m * _box(height, width, _draw_int(generator, 0, height - h), _draw_int(generator, 0, width - w), h, w)
            return m
        return _strokes(height, width, generator)


def _strokes(height: int, width: int, generator: torch.Generator) -> Tensor:
    r"""Free-form strokes (after Yu et al. 2019, "Free-Form Image Inpainting with Gated Convolution"):
    1 to 3 random walks of 2 to 5 segments, each segment of a random direction and a length up to
    half the image's side, painted with a round brush of radius ``side / 16`` to ``side / 8``."""
    side = min(height, width)
    yy, xx = torch.meshgrid(torch.arange(height, dtype=torch.float64), torch.arange(width, dtype=torch.float64),
                            indexing="ij")
    hole = torch.zeros(height, width, dtype=torch.bool)
    for _ in range(_draw_int(generator, 1, 3)):
        radius = max(0.5, side / 16 + float(_uniform(1, generator)) * side / 16)
        y, x = float(_uniform(1, generator)) * (height - 1), float(_uniform(1, generator)) * (width - 1)
        for _ in range(_draw_int(generator, 2, 5)):
            angle = float(_uniform(1, generator)) * 2 * math.pi
            length = (0.2 + 0.8 * float(_uniform(1, generator))) * side / 2
            y2 = min(max(y + length * math.sin(angle), 0.0), height - 1.0)
            x2 = min(max(x + length * math.cos(angle), 0.0), width - 1.0)
            s = torch.linspace(0, 1, max(2, int(length * 2) + 1), dtype=torch.float64)[:, None, None]
            py, px = y + (y2 - y) * s, x + (x2 - x) * s              # points along the segment
            hole |= ((yy - py) ** 2 + (xx - px) ** 2 <= radius ** 2).any(dim=0)
            y, x = y2, x2
    return (~hole).to(torch.float32)


class Uncrop(_Masked):
    r"""Uncropping (outpainting): ``y = m * x_0`` with the unknown part at the edge (module docstring).

    Args:
        kind: ``"half"`` (one half, on a random side), ``"border"`` (a frame on every side) or
            ``"mixed"`` (either, drawn per sample).
        border: the frame's width as a fraction of the side (``"border"``), in ``(0, 0.5)``.
        fill: the unknown pixels of the condition: ``"zero"`` or ``"noise"``.
    """

    name = "uncrop"
    kinds = UNCROP_MASKS

    def __init__(self, *, kind: str = "half", border: float = 0.25, fill: str = "zero"):
        super().__init__(kind, fill)
        if not 0 < float(border) < 0.5:
            raise ScorekitError(f"border of task 'uncrop' is the frame's width as a fraction of the side, in "
                                f"(0, 0.5); got {border}")
        self.border = float(border)

    def one_mask(self, kind, height, width, generator):
        if kind == "half":
            side = _draw_int(generator, 0, 3)               # left, right, top, bottom unknown
            h, w = height // 2, width // 2
            return [_box(height, width, 0, 0, height, w), _box(height, width, 0, width - w, height, w),
                    _box(height, width, 0, 0, h, width), _box(height, width, height - h, 0, h, width)][side]
        by, bx = max(1, round(self.border * height)), max(1, round(self.border * width))
        m = torch.zeros(height, width)
        m[by:height - by, bx:width - bx] = 1
        return m


# --- JPEG --------------------------------------------------------------------------------------

def jpeg_roundtrip(x: Tensor, quality) -> Tensor:
    r"""Images ``(N, C, H, W)`` in ``[-1, 1]`` (C = 1 or 3) encoded as JPEG by Pillow at ``quality``
    (one whole number 1..95, or one per image) and decoded again, in ``[-1, 1]``.

    The pixels are first quantised as a PNG holds them (``clamp(round((x + 1) 127.5), 0, 255)``),
    encoded with Pillow's defaults for that quality (4:2:0 chroma subsampling for RGB) and decoded
    to ``v / 127.5 - 1``.
    """
    import numpy as np
    from PIL import Image

    from ..data.dataset import to_tensor
    from ..metrics.inception import quantize_uint8

    if x.ndim != 4 or x.shape[1] not in (1, 3):
        raise ScorekitError(f"JPEG takes images (N, C, H, W) with 1 or 3 channels, got {tuple(x.shape)}")
    n = x.shape[0]
    qualities = torch.as_tensor(quality).reshape(-1)
    if qualities.numel() == 1:
        qualities = qualities.expand(n)
    if qualities.numel() != n:
        raise ScorekitError(f"give one JPEG quality, or one per image ({n}), got {qualities.numel()}")
    pixels = quantize_uint8(x.detach().cpu()).numpy()
    mode = "L" if x.shape[1] == 1 else "RGB"
    out = np.empty_like(pixels)
    for i in range(n):
        q = int(qualities[i])
        if not 1 <= q <= 95:
            raise ScorekitError(f"JPEG quality must be from 1 to 95, got {q}")
        img = Image.fromarray(pixels[i, 0] if mode == "L" else pixels[i].transpose(1, 2, 0), mode=mode)
        buffer = io.BytesIO()
        img.save(buffer, format="JPEG", quality=q)
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert(mode))
        out[i] = decoded[None] if mode == "L" else decoded.transpose(2, 0, 1)
    return to_tensor(out).to(device=x.device, dtype=x.dtype)


class JPEG(Degradation):
    r"""JPEG artefacts: each image encoded and decoded by Pillow at a quality drawn uniformly from
    ``quality_min .. quality_max`` (:func:`jpeg_roundtrip`); the mask is all ones.

    Args:
        quality_min, quality_max: the range of qualities (1..95), both included.
    """

    name = "jpeg"

    def __init__(self, *, quality_min: int = 5, quality_max: int = 30):
        if not (isinstance(quality_min, int) and isinstance(quality_max, int)
                and 1 <= quality_min <= quality_max <= 95):
            raise ScorekitError(f"task 'jpeg' needs whole qualities 1 <= quality_min <= quality_max <= 95, got "
                                f"{quality_min!r} and {quality_max!r}")
        self.quality_min, self.quality_max = quality_min, quality_max

    def check_shape(self, shape) -> None:
        super().check_shape(shape)
        if shape[0] not in (1, 3):
            raise ScorekitError(f"task 'jpeg' encodes grey or RGB images; these have {shape[0]} channels")

    def degrade(self, x0, generator):
        x0 = check_clean(x0)
        self.check_shape(x0.shape[1:])
        quality = torch.randint(self.quality_min, self.quality_max + 1, (x0.shape[0],), generator=generator)
        degraded = self.observe(jpeg_roundtrip(x0, quality))
        degraded.params["quality"] = quality
        return degraded

    def observe(self, y, mask=None, *, generator=None):
        """A decoded JPEG ``y`` ``(N, C, H, W)`` in ``[-1, 1]``."""
        _no_mask(self, mask)
        return Degraded(y, _ones_mask(y), y, self.name)

    def measure(self, x, degraded):
        quality = degraded.params.get("quality")
        if quality is None:
            raise ScorekitError("the JPEG quality of this observation is unknown (it was not degraded here); "
                                "its consistency cannot be measured")
        return jpeg_roundtrip(x.clamp(-1, 1), quality)


def _no_mask(degradation: Degradation, mask) -> None:
    if mask is not None:
        raise ScorekitError(f"a mask applies to tasks inpaint and uncrop; task {degradation.name!r} observes "
                            f"every pixel", cli=f"--mask applies to tasks inpaint and uncrop; task "
                                                f"{degradation.name!r} observes every pixel")


#: every degradation, by name (``TrainConfig.task``, ``scorekit train --task``)
DEGRADATIONS = {cls.name: cls for cls in (SuperResolution2, SuperResolution4, Colorize, Inpaint, Uncrop, JPEG)}


def check_task_options(task: str, options: dict | None) -> dict:
    """The options of task ``task`` checked against its constructor and converted (``"5"`` -> 5)."""
    if task not in DEGRADATIONS:
        raise ScorekitError(f"unknown task {task!r}; choose one of {', '.join(DEGRADATIONS)}")
    return check_options(dict(options or {}), option_schema(DEGRADATIONS[task]), f"{task} task option")


def build_degradation(task, options: dict | None = None) -> Degradation:
    """The degradation ``task`` (a name in :data:`DEGRADATIONS`, or a :class:`Degradation`) with ``options``."""
    if isinstance(task, Degradation):
        if options:
            raise ScorekitError("give options to a degradation by name, not with a built one")
        return task
    options = check_task_options(task, options)
    return DEGRADATIONS[task](**options)


def degrade_images(x0: Tensor, task, *, generator: torch.Generator | None = None, seed: int | None = None,
                   **options) -> Degraded:
    """Degrade a user's clean images ``x0`` ``(N, C, H, W)`` in ``[-1, 1]`` by ``task`` (a name and its
    options, or a :class:`Degradation`): test inputs whose truth is known. The draws (masks, JPEG
    qualities) come from ``generator``, or from a new one seeded with ``seed`` (default 0)."""
    if generator is not None and seed is not None:
        raise ScorekitError("give either a generator or a seed, not both")
    if generator is None:
        generator = torch.Generator().manual_seed(0 if seed is None else int(seed))
    return build_degradation(task, options)(check_clean(x0), generator)


__all__ = ["DEGRADATIONS", "Colorize", "Degradation", "Degraded", "Inpaint", "JPEG", "SuperResolution",
           "SuperResolution2", "SuperResolution4", "Uncrop", "build_degradation", "check_clean", "check_mask",
           "check_task_options", "degrade_images", "jpeg_roundtrip"]
