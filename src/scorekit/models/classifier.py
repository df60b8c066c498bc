r"""Noise-aware classifiers ``p_phi(y | x_t, t)``: ``net(x_t, t) -> logits (N, num_classes)``.

Classifier guidance (Dhariwal & Nichol 2021, section 4) steers a diffusion model with the gradient
of a classifier of *noisy* data: sampling ``p(x_t | y)`` uses the score

    grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p_t(y | x_t),

and ``p_t(y | x_t) = E[p(y | x_0) | x_t]`` must be learnt at every noise level, so the classifier
sees the time ``t`` as the denoising networks do (integer DDPM steps, or a continuous time scaled
by ``time_scale``). :class:`scorekit.train.objectives.ClassifierObjective` trains one by
cross-entropy on ``x_t = alpha(t) x_0 + sigma(t) eps``.

* :class:`UNetClassifier` for images ``(N, C, H, W)``: the encoder half of
  :class:`~scorekit.models.unet.UNet` (its way down and its middle: time-embedded residual blocks,
  attention where asked, downsampling), then GroupNorm, SiLU, the mean over the pixels and a
  linear layer to the logits -- the "encoder with a pooled head" of Dhariwal & Nichol, with average
  pooling.
* :class:`MLPClassifier` for vectors ``(N, D)``: the residual blocks of
  :class:`~scorekit.models.mlp.MLP`, then LayerNorm, SiLU and a linear layer to the logits.

The last layer starts at zero, so an untrained classifier says ``p(y | x_t) = 1 / num_classes``.
``net.config()`` has ``kind`` ``"unet_classifier"`` or ``"mlp_classifier"`` for
:func:`scorekit.models.build_model`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScorekitError, class_count
from .layers import TimeEmbedding, check_choice, global_rng_untouched, init_parameters, time_vector, zero_init
from .mlp import MLPBlock, _norm, check_vectors
from .mlp import check_layout as check_mlp_layout
from .unet import COMPUTE_DTYPES, check_images, compute_autocast, encoder, middle
from .unet import check_layout as check_unet_layout

Tensor = torch.Tensor


def _classes(num_classes) -> int:
    """``num_classes`` of a classifier: a whole number of at least 2."""
    count = class_count(num_classes)
    if count is None or count < 2:
        raise ScorekitError(f"a classifier needs num_classes >= 2 (the classes it tells apart), got {num_classes!r}")
    return count


class UNetClassifier(nn.Module):
    """The encoder of a U-Net with a pooled linear head: ``net(x_t, t) -> (N, num_classes)`` logits.

    Args:
        in_channels: channels of the images.
        num_classes: the number of classes ``K`` (at least 2).
        base_channels, channel_mults, num_res_blocks, attention_resolutions, dropout, num_heads,
        time_embedding, time_conditioning, image_size, groups, time_scale, fourier_scale, seed,
        compute_dtype: as for :class:`~scorekit.models.unet.UNet` (the same way down and middle).
    """

    kind = "unet_classifier"

    def __init__(self, in_channels: int = 3, num_classes: int = 10, *, base_channels: int = 64,
                 channel_mults: Sequence[int] = (1, 2, 2), num_res_blocks: int = 2,
                 attention_resolutions: Sequence[int] = (16,), dropout: float = 0.0, num_heads: int = 1,
                 time_embedding: str = "sinusoidal", time_conditioning: str = "add", image_size: int = 32,
                 groups: int = 32, time_scale: float = 1.0, fourier_scale: float = 16.0, seed: int = 0,
                 compute_dtype: str = "float32"):
        super().__init__()
        check_choice(compute_dtype, COMPUTE_DTYPES, "compute_dtype")
        channel_mults, attention_resolutions, levels = check_unet_layout(
            in_channels=in_channels, base_channels=base_channels, channel_mults=channel_mults,
            num_res_blocks=num_res_blocks, attention_resolutions=attention_resolutions, dropout=dropout,
            num_heads=num_heads, time_embedding=time_embedding, time_conditioning=time_conditioning,
            image_size=image_size, groups=groups)
        self.in_channels = int(in_channels)
        self.num_classes = _classes(num_classes)
        self.downsamplings = len(channel_mults) - 1
        self.compute_dtype = compute_dtype
        self._config = dict(
            kind=self.kind, in_channels=self.in_channels, num_classes=self.num_classes,
            base_channels=int(base_channels), channel_mults=list(channel_mults),
            num_res_blocks=int(num_res_blocks), attention_resolutions=list(attention_resolutions),
            dropout=float(dropout), num_heads=int(num_heads), time_embedding=time_embedding,
            time_conditioning=time_conditioning, image_size=int(image_size), groups=int(groups),
            time_scale=float(time_scale), fourier_scale=float(fourier_scale), seed=int(seed),
            compute_dtype=compute_dtype)

        emb_dim = 4 * base_channels
        block = dict(emb_dim=emb_dim, dropout=dropout, groups=groups, conditioning=time_conditioning)
        with global_rng_untouched():
            self.time_embed = TimeEmbedding(time_embedding, base_channels, emb_dim, time_scale=time_scale,
                                            fourier_scale=fourier_scale, seed=seed)
            self.conv_in, self.down, skips = encoder(self.in_channels, base_channels, channel_mults, num_res_blocks,
                                                     attention_resolutions, levels, num_heads, block)
            ch = skips[-1]
            self.middle = middle(ch, num_heads, block)
            self.norm_out = nn.GroupNorm(groups, ch)
            self.head = zero_init(nn.Linear(ch, self.num_classes))
        init_parameters(self, torch.Generator().manual_seed(int(seed)))

    def config(self) -> dict:
        """Everything needed to rebuild this network with :func:`scorekit.models.build_model`."""
        return {k: (list(v) if isinstance(v, list) else v) for k, v in self._config.items()}

    def forward(self, x: Tensor, t) -> Tensor:
        """``(N, num_classes)`` logits of ``p(y | x_t, t)`` (float32, or ``x``'s dtype)."""
        check_images(x, self.in_channels, self.downsamplings, "the U-Net classifier")
        emb = self.time_embed(time_vector(t, x.shape[0], x.device))
        with compute_autocast(self.compute_dtype, x.device):
            h = self.conv_in(x)
            for stage in self.down:
                h = stage(h, emb)
            h = self.middle(h, emb)
            h = F.silu(self.norm_out(h)).mean(dim=(2, 3))
            out = self.head(h)
        return out.to(x.dtype)


class MLPClassifier(nn.Module):
    """A residual MLP with a linear head: ``net(x_t, t) -> (N, num_classes)`` logits for ``(N, dim)`` data.

    Args:
        dim: data dimension ``D``.
        num_classes: the number of classes ``K`` (at least 2).
        hidden, depth, time_embedding, time_dim, norm, dropout, time_scale, fourier_scale, seed: as
            for :class:`~scorekit.models.mlp.MLP` (the same blocks).
    """

    kind = "mlp_classifier"

    def __init__(self, dim: int = 2, num_classes: int = 2, hidden: int = 128, depth: int = 3, *,
                 time_embedding: str = "sinusoidal", time_dim: int | None = None, norm: str = "layer",
                 dropout: float = 0.0, time_scale: float = 1.0, fourier_scale: float = 16.0, seed: int = 0):
        super().__init__()
        time_dim = check_mlp_layout(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim,
                                    time_embedding=time_embedding, norm=norm, dropout=dropout)
        self.dim = int(dim)
        self.num_classes = _classes(num_classes)
        self._config = dict(kind=self.kind, dim=self.dim, num_classes=self.num_classes, hidden=int(hidden),
                            depth=int(depth), time_embedding=time_embedding, time_dim=int(time_dim), norm=norm,
                            dropout=float(dropout), time_scale=float(time_scale),
                            fourier_scale=float(fourier_scale), seed=int(seed))
        with global_rng_untouched():
            self.time_embed = TimeEmbedding(time_embedding, time_dim, hidden, time_scale=time_scale,
                                            fourier_scale=fourier_scale, seed=seed)
            self.linear_in = nn.Linear(self.dim, hidden)
            self.blocks = nn.ModuleList(MLPBlock(hidden, norm, dropout) for _ in range(depth))
            self.norm_out = _norm(norm, hidden)
            self.head = zero_init(nn.Linear(hidden, self.num_classes))
        init_parameters(self, torch.Generator().manual_seed(int(seed)))

    def config(self) -> dict:
        """Everything needed to rebuild this network with :func:`scorekit.models.build_model`."""
        return dict(self._config)

    def forward(self, x: Tensor, t) -> Tensor:
        """``(N, num_classes)`` logits of ``p(y | x_t, t)``."""
        check_vectors(x, self.dim, "the MLP classifier")
        emb = self.time_embed(time_vector(t, x.shape[0], x.device))
        h = self.linear_in(x)
        for block in self.blocks:
            h = block(h, emb)
        return self.head(F.silu(self.norm_out(h)))


__all__ = ["MLPClassifier", "UNetClassifier"]
