r"""Building blocks of the denoising networks: time embeddings, residual and attention blocks.

A network sees the process time ``t`` only as a number to embed; it knows nothing of
``alpha(t)`` or ``sigma(t)``. Two embeddings are offered:

* sinusoidal (Vaswani et al. 2017), for integer DDPM steps or any time scaled to a range of
  hundreds: ``[sin(t w_k), cos(t w_k)]`` with ``w_k = P^{-k/(d/2)}``, ``P = 10000``, as in
  improved-diffusion / ADM (diffusers' ``freq_shift=0``). Ho et al.'s DDPM code divides by
  ``d/2 - 1`` instead (its lowest frequency is exactly ``1/P``), so DDPM's own weights would need
  that variant; a network trained here is unaffected;
* random Fourier features (Tancik et al. 2020; Song et al. 2021), for continuous time in
  ``[0, 1]`` or a log noise level: ``[sin(2 pi t b_k), cos(2 pi t b_k)]`` with fixed Gaussian
  frequencies ``b_k ~ N(0, s^2)`` drawn from a seed, so a rebuilt network has the same ones.

The blocks follow improved-diffusion (Nichol & Dhariwal 2021): the last layer of every residual
branch starts at zero, so each block starts as the identity and the whole network starts by
predicting exactly zero.

Layers are initialised from an explicit seed (:func:`init_parameters`), never from torch's
global random number generator: ``build_model(config)`` always gives the same weights.
"""
from __future__ import annotations

import contextlib
import math
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..devices import to_device
from ..errors import ScorekitError, reads_are_free

Tensor = torch.Tensor

TIME_EMBEDDINGS = ("sinusoidal", "fourier")
TIME_CONDITIONINGS = ("add", "adagn")


# --------------------------------------------------------------------------- initialisation

def zero_init(module: nn.Module) -> nn.Module:
    """Mark ``module`` to have its parameters set to zero by :func:`init_parameters`."""
    module.zero_init = True
    return module


@torch.no_grad()
def init_parameters(net: nn.Module, generator: torch.Generator) -> None:
    r"""Initialise every layer of ``net`` from ``generator``; zero the layers marked :func:`zero_init`.

    Linear and convolution layers get PyTorch's default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``
    for weight and bias, embeddings ``N(0, 1)``, normalisation layers scale 1 and shift 0.
    Buffers (e.g. Fourier frequencies) are left alone.
    """
    for module in net.modules():
        if isinstance(module, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            fan_in = module.weight[0].numel()
            bound = 1.0 / math.sqrt(fan_in)
            nn.init.uniform_(module.weight, -bound, bound, generator=generator)
            if module.bias is not None:
                nn.init.uniform_(module.bias, -bound, bound, generator=generator)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, 0.0, 1.0, generator=generator)
        elif isinstance(module, (nn.GroupNorm, nn.LayerNorm)) and module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    for module in net.modules():
        if getattr(module, "zero_init", False):
            for p in module.parameters():
                p.zero_()


@contextlib.contextmanager
def global_rng_untouched() -> Iterator[None]:
    """Build layers inside this block: their default initialisation may draw from torch's
    global CPU generator, whose state is restored afterwards (weights then come from
    :func:`init_parameters`)."""
    with torch.random.fork_rng(devices=[]):
        yield


# --------------------------------------------------------------------------- checks

def check_choice(value: str, choices: tuple[str, ...], name: str) -> str:
    if value not in choices:
        raise ScorekitError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")
    return value


def group_count(channels: int, groups: int) -> int:
    """The number of GroupNorm groups for ``channels``: ``groups``, which must divide it."""
    if channels % groups != 0:
        raise ScorekitError(
            f"groups={groups} does not divide {channels} channels; choose groups dividing every "
            f"channel count of the network (base_channels times each channel multiplier)")
    return groups


def time_vector(t, batch: int, device) -> Tensor:
    """``t`` as a float32 tensor of shape ``(batch,)``: a number or a 0-d tensor is broadcast."""
    t = torch.as_tensor(t, device=device)
    if t.dtype == torch.bool or t.dtype.is_complex:
        raise ScorekitError(f"time t must be a real number or a tensor of them, got dtype {t.dtype}")
    t = t.to(torch.float32)
    if t.ndim == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise ScorekitError(
            f"time t has shape {tuple(t.shape)}; pass one time per sample, shape ({batch},), or a scalar")
    return t


def label_vector(y, batch: int, num_classes: int | None, device) -> Tensor | None:
    """Class labels as a long tensor ``(batch,)``; ``None``, and the null label ``-1`` of
    :class:`scorekit.conditioning.Condition`, become the "no label" index ``num_classes``.

    Returns ``None`` for an unconditional network (``num_classes is None``) called without labels.
    """
    if num_classes is None:
        if y is not None:
            raise ScorekitError(
                "labels y were given but the network was built without classes (num_classes=None); "
                "build it with num_classes=K to condition on labels, or call it with y=None")
        return None
    if y is None:
        return torch.full((batch,), num_classes, dtype=torch.long, device=device)
    y = torch.as_tensor(y)
    if y.dtype.is_floating_point or y.dtype.is_complex or y.dtype == torch.bool:
        raise ScorekitError(f"labels y must be integers (torch.long), got dtype {y.dtype}")
    if y.shape != (batch,):
        raise ScorekitError(f"labels y have shape {tuple(y.shape)}; pass one label per sample, shape ({batch},)")
    y = y.to(torch.long)
    y = torch.where(y == -1, torch.full_like(y, num_classes), y)      # the null label
    # The range is checked where reading the labels is free: on the CPU, outside torch.compile.
    # Labels already on a GPU are not read back (that would make the host wait for the device at
    # every call): the trainer's labels are in range by construction, and a Denoiser checks the
    # labels it is bound to once (conditioning.check_labels_for). A compiled network called directly
    # with labels out of range gets torch's own index error instead of this message.
    if y.numel() and reads_are_free(y) and not torch.compiler.is_compiling() \
            and (int(y.min()) < 0 or int(y.max()) > num_classes):
        bad = int(y.min()) if int(y.min()) < 0 else int(y.max())
        raise ScorekitError(
            f"label {bad} in y is outside 0..{num_classes}: the network has num_classes={num_classes} "
            f"classes 0..{num_classes - 1}, and {num_classes} (or -1) means 'no label'")
    return to_device(y, device)


# --------------------------------------------------------------------------- time embeddings

def cond_channel_count(value) -> int:
    """``cond_channels`` checked: a whole number >= 0 (0: the network takes no condition image)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ScorekitError(f"cond_channels must be a whole number >= 0 (0: no condition image), got {value!r}")
    return value


def with_condition_image(x: Tensor, cond, cond_channels: int, what: str) -> Tensor:
    r"""``[x, cond]`` along the channels (dim 1): the input of a network conditioned on an image by
    concatenation (SR3, Saharia et al. 2021; Palette, Saharia et al. 2022); ``x`` itself for a
    network without one (``cond_channels = 0``).

    ``cond`` must be ``(N, cond_channels, H, W)`` beside images ``x`` ``(N, C, H, W)``, or
    ``(N, cond_channels)`` beside vectors ``(N, D)``; anything else (a missing condition, another
    channel count or size, a condition for a network that takes none) raises
    :class:`ScorekitError` naming the shapes.
    """
    if not cond_channels:
        if cond is not None:
            raise ScorekitError(f"a condition image (cond) was given but {what} was built without one "
                                f"(cond_channels=0); build it with cond_channels=C_c or call it with cond=None")
        return x
    want = (x.shape[0], cond_channels, *x.shape[2:])
    layout = "(N, C_c, H, W)" if x.ndim == 4 else "(N, C_c)"
    if cond is None:
        raise ScorekitError(f"{what} is conditioned on an image with cond_channels={cond_channels}: call it with "
                            f"cond= of shape {layout} = {want} (e.g. the degraded image and its mask of a "
                            f"scorekit task, scorekit.tasks.degradations)")
    if not isinstance(cond, Tensor) or tuple(cond.shape) != want:
        got = tuple(cond.shape) if isinstance(cond, Tensor) else type(cond).__name__
        raise ScorekitError(f"the condition image (cond) of {what} must have shape {layout} = {want} "
                            f"(cond_channels={cond_channels}, the size of x_t), got {got}")
    return torch.cat([x, cond.to(device=x.device, dtype=x.dtype)], dim=1)


def sinusoidal_embedding(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    r"""The Transformer / DDPM position embedding of the values ``t`` (shape ``(N,)``).

    ``e(t) = [sin(t w_0), ..., sin(t w_{h-1}), cos(t w_0), ..., cos(t w_{h-1})]`` with
    ``h = dim // 2`` and ``w_k = max_period^{-k/h}``; a zero column is appended when ``dim`` is
    odd. Returns ``(N, dim)`` float32.
    """
    half = dim // 2
    k = torch.arange(half, dtype=torch.float32, device=t.device)
    w = torch.exp(-math.log(max_period) * k / half)
    angle = t.to(torch.float32)[:, None] * w[None, :]
    emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


class SinusoidalEmbedding(nn.Module):
    """:func:`sinusoidal_embedding` of ``time_scale * t`` as a module."""

    def __init__(self, dim: int, max_period: float = 10000.0, time_scale: float = 1.0):
        super().__init__()
        self.dim, self.max_period, self.time_scale = dim, max_period, time_scale

    def forward(self, t: Tensor) -> Tensor:
        return sinusoidal_embedding(self.time_scale * t, self.dim, self.max_period)


class FourierFeatures(nn.Module):
    r"""Random Fourier features ``[sin(2 pi t b_k), cos(2 pi t b_k)]``, ``b_k ~ N(0, scale^2)``.

    The ``dim // 2`` frequencies ``b`` are a fixed buffer (saved in the state dict) drawn from
    ``torch.Generator().manual_seed(seed)``, so the same seed always gives the same features.
    ``t`` is multiplied by ``time_scale`` first.
    """

    def __init__(self, dim: int, scale: float = 16.0, seed: int = 0, time_scale: float = 1.0):
        super().__init__()
        if dim < 2:
            raise ScorekitError(f"Fourier feature dimension must be at least 2, got {dim}")
        self.dim, self.time_scale = dim, time_scale
        generator = torch.Generator().manual_seed(int(seed))
        self.register_buffer("frequencies", scale * torch.randn(dim // 2, generator=generator))

    def forward(self, t: Tensor) -> Tensor:
        angle = (2 * math.pi) * (self.time_scale * t.to(torch.float32))[:, None] * self.frequencies[None, :]
        emb = torch.cat([torch.sin(angle), torch.cos(angle)], dim=1)
        if self.dim % 2:
            emb = F.pad(emb, (0, 1))
        return emb


class TimeEmbedding(nn.Module):
    """``t -> Linear -> SiLU -> Linear``: a learned vector of size ``out_dim`` from an embedding of ``t``.

    ``kind`` is ``"sinusoidal"`` or ``"fourier"``; ``dim`` is the size of that fixed embedding.
    """

    def __init__(self, kind: str, dim: int, out_dim: int, *, time_scale: float = 1.0,
                 fourier_scale: float = 16.0, seed: int = 0):
        super().__init__()
        check_choice(kind, TIME_EMBEDDINGS, "time_embedding")
        if kind == "sinusoidal":
            self.features = SinusoidalEmbedding(dim, time_scale=time_scale)
        else:
            self.features = FourierFeatures(dim, fourier_scale, seed, time_scale)
        self.mlp = nn.Sequential(nn.Linear(dim, out_dim), nn.SiLU(), nn.Linear(out_dim, out_dim))

    def forward(self, t: Tensor) -> Tensor:
        return self.mlp(self.features(t))


# --------------------------------------------------------------------------- image blocks

class ResBlock(nn.Module):
    r"""Residual block ``x + F(x, emb)`` (Ho et al. 2020; Nichol & Dhariwal 2021).

    ``h = conv(SiLU(GN(x)))``; the time/class embedding enters either by addition,
    ``h = h + W SiLU(emb)`` (``conditioning="add"``), or by adaptive group norm,
    ``GN(h) (1 + s) + b`` with ``(s, b) = W SiLU(emb)`` (``"adagn"``); then
    ``h = conv(dropout(SiLU(.)))`` with the last convolution starting at zero. The skip path is a
    1x1 convolution when the channel count changes.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, *, dropout: float = 0.0,
                 groups: int = 32, conditioning: str = "add"):
        super().__init__()
        self.conditioning = check_choice(conditioning, TIME_CONDITIONINGS, "time_conditioning")
        self.norm1 = nn.GroupNorm(group_count(in_ch, groups), in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        factor = 2 if conditioning == "adagn" else 1
        self.emb_proj = nn.Linear(emb_dim, factor * out_ch)
        self.norm2 = nn.GroupNorm(group_count(out_ch, groups), out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = zero_init(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Identity() if in_ch == out_ch else nn.Conv2d(in_ch, out_ch, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        e = self.emb_proj(F.silu(emb))[:, :, None, None].to(h.dtype)
        if self.conditioning == "add":
            h = self.norm2(h + e)
        else:
            scale, shift = e.chunk(2, dim=1)
            h = torch.addcmul(shift, self.norm2(h), 1 + scale)
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    r"""Multi-head self-attention over the pixels, with a residual connection.

    ``x + W_o softmax(Q K^T / sqrt(d)) V`` where ``Q, K, V`` are a 1x1 convolution of ``GN(x)``
    split into ``num_heads`` heads of ``d = C / num_heads`` channels; ``W_o`` starts at zero.
    The product is computed by ``torch.nn.functional.scaled_dot_product_attention``.

    Its fused kernels (flash attention, memory-efficient attention) need each head's ``d``
    channels adjacent in memory, which the convolution's ``(N, C, H, W)`` output is not: PyTorch
    then falls back to its math kernel (``Q K^T`` materialised). :attr:`fused_layout` says when
    ``Q, K, V`` are copied into that layout first: ``"auto"`` (the default) off the CPU, where
    the fused kernels run on tensor cores; on a CPU the math kernel is as fast at these sizes and
    the results stay as they were. ``True`` / ``False`` force it (``benchmarks/attention_layout.py``
    measures both).
    """

    #: ``"auto"``, ``True`` or ``False``: whether Q, K, V are laid out for the fused kernels
    fused_layout = "auto"

    def __init__(self, channels: int, num_heads: int = 1, groups: int = 32):
        super().__init__()
        if num_heads < 1 or channels % num_heads:
            raise ScorekitError(
                f"num_heads={num_heads} does not divide {channels} channels; choose a divisor of "
                f"every channel count that has attention")
        self.num_heads = num_heads
        self.norm = nn.GroupNorm(group_count(channels, groups), channels)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = zero_init(nn.Conv2d(channels, channels, 1))

    def attend(self, x: Tensor) -> Tensor:
        """``softmax(Q K^T / sqrt(d)) V`` for all heads, before the output projection."""
        n, c, hgt, wid = x.shape
        heads, d = self.num_heads, c // self.num_heads
        qkv = self.qkv(self.norm(x)).reshape(n, 3, heads, d, hgt * wid)
        q, k, v = (qkv[:, i].transpose(-1, -2) for i in range(3))       # (n, heads, L, d)
        fused = self.fused_layout if isinstance(self.fused_layout, bool) else x.device.type != "cpu"
        if fused and q.stride(-1) != 1:                 # channels-last input: already adjacent
            q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
        out = F.scaled_dot_product_attention(q, k, v)                     # (n, heads, L, d)
        return out.transpose(-1, -2).reshape(n, c, hgt, wid)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.proj(self.attend(x))


class Downsample(nn.Module):
    """Halve height and width with a 3x3 convolution of stride 2."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double height and width: nearest-neighbour repetition, then a 3x3 convolution."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
