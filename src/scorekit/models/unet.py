r"""The U-Net of DDPM (Ho et al. 2020) and improved-diffusion (Nichol & Dhariwal 2021).

``net(x_t, t, y=None, cond=None)`` maps a batch of noisy images ``(N, C, H, W)``, their process
times ``t``, optional class labels ``y`` and, for a network built with ``cond_channels > 0``, a
condition image ``cond`` ``(N, cond_channels, H, W)`` to a tensor of the same shape as ``x_t``
(``out_channels`` may differ). Layout, from the input:

* the condition image concatenated to ``x_t`` along the channels, ``[x_t, cond]`` (SR3, Saharia
  et al. 2021; Palette, Saharia et al. 2022), when there is one;
* a 3x3 convolution to ``base_channels``;
* for each level ``i`` (resolution ``image_size / 2^i``), ``num_res_blocks`` residual blocks with
  ``base_channels * channel_mults[i]`` channels, each followed by self-attention when the level's
  resolution is in ``attention_resolutions``; a strided-convolution downsampling between levels;
* a middle of residual block, attention, residual block;
* the mirror image going up, with ``num_res_blocks + 1`` residual blocks per level, each taking
  the matching skip connection concatenated to its input, and nearest + convolution upsampling;
* GroupNorm, SiLU and a 3x3 convolution (starting at zero) to ``out_channels``.

The time ``t`` is embedded (sinusoidal or random Fourier features, then a two-layer MLP to
``4 * base_channels``); a class embedding with ``num_classes + 1`` rows (the last one meaning "no
label", used when ``y`` is ``None``) is added to it. Every residual block receives the sum.
"""
from __future__ import annotations

import contextlib
from typing import Sequence

import torch
from torch import nn

from ..errors import ScorekitError, class_count
from .layers import (TIME_CONDITIONINGS, TIME_EMBEDDINGS, AttentionBlock, Downsample, ResBlock,
                     TimeEmbedding, Upsample, check_choice, cond_channel_count, global_rng_untouched,
                     init_parameters, label_vector, time_vector, with_condition_image, zero_init)

Tensor = torch.Tensor

COMPUTE_DTYPES = ("float32", "bfloat16")


class _Stage(nn.ModuleList):
    """Layers applied in order; residual blocks also receive the embedding."""

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        for layer in self:
            h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
        return h


class UNet(nn.Module):
    """A U-Net denoising network for images ``(N, C, H, W)``.

    Args:
        in_channels: channels of the images.
        out_channels: channels of the output (default ``in_channels``, or ``2 * in_channels`` with
            ``learn_variance``).
        learn_variance: also output a variance head: ``2 * in_channels`` channels, the prediction
            then the raw variance output of Nichol & Dhariwal (2021), see :mod:`scorekit.variances`.
        cond_channels: channels of a condition image ``cond`` concatenated to the input (0: none);
            the output keeps ``in_channels`` (the data's).
        base_channels: channels of the first level; level ``i`` has ``base_channels * channel_mults[i]``.
        channel_mults: one multiplier per level; ``len(channel_mults) - 1`` downsamplings, so
            height and width must be multiples of ``2 ** (len(channel_mults) - 1)``.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attention_resolutions: feature-map sizes in pixels (relative to ``image_size``) at which
            self-attention follows each residual block; each must be ``image_size / 2^i`` for a level ``i``.
        dropout: dropout probability inside the residual blocks.
        num_heads: attention heads.
        time_embedding: ``"sinusoidal"`` (for integer DDPM steps, or time scaled to hundreds by
            ``time_scale``) or ``"fourier"`` (random Fourier features, for ``t`` in about ``[0, 1]``).
        time_conditioning: ``"add"`` (embedding added to the features) or ``"adagn"`` (adaptive
            group norm: ``GN(h) (1 + scale) + shift``).
        num_classes: number of classes for class-conditional networks, else ``None``.
        image_size: the nominal image size that ``attention_resolutions`` refers to. Other input
            sizes work too; attention then stays at the same levels.
        groups: GroupNorm groups; must divide every channel count.
        time_scale: the embedding sees ``time_scale * t``.
        fourier_scale: standard deviation of the random Fourier frequencies.
        seed: seed of the initial weights and of the Fourier frequencies.
        compute_dtype: ``"float32"``, or ``"bfloat16"`` to run the layers under
            ``torch.autocast`` in bfloat16 (parameters, time embedding and output stay float32).
            On CPUs with bfloat16 matrix units this trains about 1.5-2x faster with the same loss
            curve; outputs differ from float32 by about 1% (relative).
    """

    kind = "unet"

    def __init__(self, in_channels: int = 3, out_channels: int | None = None, *, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), dropout: float = 0.0, num_heads: int = 1,
                 time_embedding: str = "sinusoidal", time_conditioning: str = "add",
                 num_classes: int | None = None, image_size: int = 32, groups: int = 32,
                 time_scale: float = 1.0, fourier_scale: float = 16.0, seed: int = 0,
                 compute_dtype: str = "float32", learn_variance: bool = False, cond_channels: int = 0):
        super().__init__()
        check_choice(compute_dtype, COMPUTE_DTYPES, "compute_dtype")
        self.cond_channels = cond_channel_count(cond_channels)
        channel_mults, attention_resolutions, levels = check_layout(
            in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions, dropout=dropout,
            num_heads=num_heads, time_embedding=time_embedding, time_conditioning=time_conditioning,
            image_size=image_size, groups=groups)
        if out_channels is not None and int(out_channels) < 1:
            raise ScorekitError(f"out_channels must be a positive integer or None, got {out_channels}")
        num_classes = class_count(num_classes)

        self.in_channels = int(in_channels)
        self.learn_variance = bool(learn_variance)
        default_out = 2 * self.in_channels if self.learn_variance else self.in_channels
        self.out_channels = int(out_channels) if out_channels is not None else default_out
        if self.learn_variance and self.out_channels != default_out:
            raise ScorekitError(f"learn_variance needs out_channels = 2 x in_channels = {default_out}, got "
                                f"{out_channels}; leave out_channels unset")
        self.num_classes = int(num_classes) if num_classes is not None else None
        self.downsamplings = len(channel_mults) - 1
        self.compute_dtype = compute_dtype
        self._config = dict(
            kind=self.kind, in_channels=self.in_channels, out_channels=self.out_channels,
            base_channels=int(base_channels), channel_mults=list(channel_mults),
            num_res_blocks=int(num_res_blocks), attention_resolutions=list(attention_resolutions),
            dropout=float(dropout), num_heads=int(num_heads), time_embedding=time_embedding,
            time_conditioning=time_conditioning, num_classes=self.num_classes,
            image_size=int(image_size), groups=int(groups), time_scale=float(time_scale),
            fourier_scale=float(fourier_scale), seed=int(seed), compute_dtype=compute_dtype)
        if self.learn_variance:
            self._config["learn_variance"] = True
        if self.cond_channels:
            self._config["cond_channels"] = self.cond_channels

        emb_dim = 4 * base_channels
        block = dict(emb_dim=emb_dim, dropout=dropout, groups=groups, conditioning=time_conditioning)
        with global_rng_untouched():
            self.time_embed = TimeEmbedding(time_embedding, base_channels, emb_dim, time_scale=time_scale,
                                            fourier_scale=fourier_scale, seed=seed)
            self.class_embed = nn.Embedding(self.num_classes + 1, emb_dim) if self.num_classes else None
            self.conv_in, self.down, skips = encoder(self.in_channels + self.cond_channels, base_channels, channel_mults, num_res_blocks,
                                                     attention_resolutions, levels, num_heads, block)
            ch = skips[-1]
            self.middle = middle(ch, num_heads, block)

            self.up = nn.ModuleList()
            for level, mult in reversed(list(enumerate(channel_mults))):
                for i in range(num_res_blocks + 1):
                    stage = _Stage([ResBlock(ch + skips.pop(), base_channels * mult, **block)])
                    ch = base_channels * mult
                    if levels[level] in attention_resolutions:
                        stage.append(AttentionBlock(ch, num_heads, groups))
                    if level > 0 and i == num_res_blocks:
                        stage.append(Upsample(ch))
                    self.up.append(stage)

            self.norm_out = nn.GroupNorm(groups, ch)
            self.conv_out = zero_init(nn.Conv2d(ch, self.out_channels, 3, padding=1))
        init_parameters(self, torch.Generator().manual_seed(int(seed)))

    def config(self) -> dict:
        """Everything needed to rebuild this network with :func:`scorekit.models.build_model`."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def check_input(self, x: Tensor) -> None:
        """Raise :class:`ScorekitError` unless ``x`` is ``(N, in_channels, H, W)`` with ``H`` and ``W``
        multiples of ``2 ** downsamplings``."""
        check_images(x, self.in_channels, self.downsamplings, "the U-Net")

    def embedding(self, t, batch: int, y=None, device=None) -> Tensor:
        """The vector every residual block receives: time embedding plus class embedding."""
        emb = self.time_embed(time_vector(t, batch, device))
        labels = label_vector(y, batch, self.num_classes, device)
        if labels is not None:
            emb = emb + self.class_embed(labels)
        return emb

    def forward(self, x: Tensor, t, y=None, cond=None) -> Tensor:
        self.check_input(x)
        emb = self.embedding(t, x.shape[0], y, x.device)
        inputs = with_condition_image(x, cond, self.cond_channels, "the U-Net")
        with compute_autocast(self.compute_dtype, x.device):
            h = self.conv_in(inputs)
            skips = [h]
            for stage in self.down:
                h = stage(h, emb)
                skips.append(h)
            h = self.middle(h, emb)
            for stage in self.up:
                h = stage(torch.cat([h, skips.pop()], dim=1), emb)
            out = self.conv_out(nn.functional.silu(self.norm_out(h)))
        return out.to(x.dtype)


# --- pieces shared with the encoder-only networks (scorekit.models.classifier) ---------------------------

def check_layout(*, in_channels, base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout,
                 num_heads, time_embedding, time_conditioning, image_size, groups):
    """Check the layout arguments of a U-Net (or its encoder); returns ``(channel_mults,
    attention_resolutions, levels)``, ``levels`` the nominal resolution of each level."""
    check_choice(time_embedding, TIME_EMBEDDINGS, "time_embedding")
    check_choice(time_conditioning, TIME_CONDITIONINGS, "time_conditioning")
    channel_mults = tuple(int(m) for m in channel_mults)
    attention_resolutions = tuple(int(r) for r in attention_resolutions)
    for name, value in (("in_channels", in_channels), ("base_channels", base_channels),
                        ("num_res_blocks", num_res_blocks), ("image_size", image_size),
                        ("groups", groups), ("num_heads", num_heads)):
        if int(value) < 1:
            raise ScorekitError(f"{name} must be a positive integer, got {value}")
    if not channel_mults or min(channel_mults) < 1:
        raise ScorekitError(
            f"channel_mults must be a non-empty list of positive integers, got {list(channel_mults)}")
    if not 0.0 <= dropout < 1.0:
        raise ScorekitError(f"dropout must be in [0, 1), got {dropout}")
    levels = [image_size // 2 ** i for i in range(len(channel_mults))]
    unused = [r for r in attention_resolutions if r not in levels]
    if unused:
        raise ScorekitError(
            f"attention_resolutions {list(attention_resolutions)}: {unused} is not the resolution of "
            f"any level; with image_size={image_size} and {len(channel_mults)} levels the resolutions "
            f"are {levels}")
    return channel_mults, attention_resolutions, levels


def encoder(in_channels: int, base_channels: int, channel_mults, num_res_blocks: int, attention_resolutions,
            levels, num_heads: int, block: dict) -> tuple[nn.Module, nn.ModuleList, list[int]]:
    """``(conv_in, down, skips)``: the input convolution and the way down of a U-Net -- per level
    ``num_res_blocks`` residual blocks (``block`` their keyword arguments), each followed by
    attention at the levels in ``attention_resolutions``, and a downsampling between levels --
    with the channels of each stage's output (the skip connections; ``skips[-1]`` the last)."""
    conv_in = nn.Conv2d(in_channels, base_channels, 3, padding=1)
    ch, skips = base_channels, [base_channels]
    down = nn.ModuleList()
    for level, mult in enumerate(channel_mults):
        for _ in range(num_res_blocks):
            stage = _Stage([ResBlock(ch, base_channels * mult, **block)])
            ch = base_channels * mult
            if levels[level] in attention_resolutions:
                stage.append(AttentionBlock(ch, num_heads, block["groups"]))
            down.append(stage)
            skips.append(ch)
        if level < len(channel_mults) - 1:
            down.append(_Stage([Downsample(ch)]))
            skips.append(ch)
    return conv_in, down, skips


def middle(ch: int, num_heads: int, block: dict) -> _Stage:
    """The middle of a U-Net: residual block, attention, residual block."""
    return _Stage([ResBlock(ch, ch, **block), AttentionBlock(ch, num_heads, block["groups"]),
                   ResBlock(ch, ch, **block)])


def check_images(x: Tensor, in_channels: int, downsamplings: int, what: str) -> None:
    """Raise :class:`ScorekitError` unless ``x`` is ``(N, in_channels, H, W)`` with ``H`` and ``W``
    multiples of ``2 ** downsamplings`` (``what`` names the network in the message)."""
    if not isinstance(x, Tensor) or x.ndim != 4:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ScorekitError(f"{what} takes images of shape (N, C, H, W); got {shape}")
    if x.shape[1] != in_channels:
        raise ScorekitError(
            f"input has {x.shape[1]} channels but {what} was built with in_channels={in_channels}; "
            f"build it with in_channels={x.shape[1]} or convert the images")
    multiple = 2 ** downsamplings
    h, w = x.shape[-2:]
    if h % multiple or w % multiple:
        raise ScorekitError(
            f"input size {h}x{w} is not a multiple of {multiple}: {what} downsamples "
            f"{downsamplings} times; pad or crop the images to a multiple of {multiple} "
            f"(e.g. {-(-h // multiple) * multiple}x{-(-w // multiple) * multiple})")


def compute_autocast(compute_dtype: str, device: torch.device):
    """``torch.autocast`` in bfloat16 for ``compute_dtype="bfloat16"``, else a no-op context."""
    if compute_dtype == "bfloat16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
