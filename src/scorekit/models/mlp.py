r"""A residual MLP denoising network for low-dimensional data ``(N, D)``.

``net(x_t, t, y=None, cond=None)`` embeds ``t`` (sinusoidal or random Fourier features, then
``Linear -> SiLU -> Linear`` to ``hidden``), adds a class embedding when the network is
class-conditional, and runs ``depth`` residual blocks

    h <- h + W_2 SiLU(W_1 norm(h) + U SiLU(emb)),

with ``W_2`` starting at zero, between an input projection ``D -> hidden`` (``D + D_c -> hidden``
for a network built with ``cond_channels = D_c``, whose input is ``[x_t, cond]``, the condition
vector concatenated as SR3 and Palette concatenate their condition image) and an output layer
``norm, SiLU, hidden -> D`` that also starts at zero (so the untrained network outputs zero).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ScorekitError, class_count
from .layers import (TIME_EMBEDDINGS, TimeEmbedding, check_choice, cond_channel_count, global_rng_untouched,
                     init_parameters, label_vector, time_vector, with_condition_image, zero_init)

Tensor = torch.Tensor

NORMS = ("layer", "none")


def _norm(kind: str, dim: int) -> nn.Module:
    return nn.LayerNorm(dim) if kind == "layer" else nn.Identity()


class MLPBlock(nn.Module):
    """``h + W_2 dropout(SiLU(W_1 norm(h) + U SiLU(emb)))`` with ``W_2`` zero at the start."""

    def __init__(self, hidden: int, norm: str = "layer", dropout: float = 0.0):
        super().__init__()
        self.norm = _norm(norm, hidden)
        self.linear1 = nn.Linear(hidden, hidden)
        self.emb_proj = nn.Linear(hidden, hidden)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = zero_init(nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, emb: Tensor) -> Tensor:
        r = self.linear1(self.norm(h)) + self.emb_proj(F.silu(emb))
        return h + self.linear2(self.dropout(F.silu(r)))


class MLP(nn.Module):
    """A residual MLP for data of shape ``(N, dim)``.

    Args:
        dim: data dimension ``D``.
        hidden: width of the residual stream.
        depth: number of residual blocks.
        time_embedding: ``"sinusoidal"`` or ``"fourier"`` (see :mod:`scorekit.models.layers`).
        time_dim: size of the fixed time embedding fed to the time MLP (default ``hidden``).
        num_classes: number of classes for a class-conditional network, else ``None``.
        norm: ``"layer"`` (LayerNorm at the start of each block) or ``"none"``.
        dropout: dropout probability inside the blocks.
        time_scale: the embedding sees ``time_scale * t``.
        fourier_scale: standard deviation of the random Fourier frequencies.
        seed: seed of the initial weights and of the Fourier frequencies.
        learn_variance: output ``2 * dim`` values: the prediction, then the raw variance output of
            Nichol & Dhariwal (2021), see :mod:`scorekit.variances`.
        cond_channels: size ``D_c`` of a condition vector ``cond`` ``(N, D_c)`` concatenated to the
            input (0: none); the output keeps ``dim`` values.
    """

    kind = "mlp"

    def __init__(self, dim: int = 2, hidden: int = 256, depth: int = 4, *, time_embedding: str = "sinusoidal",
                 time_dim: int | None = None, num_classes: int | None = None, norm: str = "layer",
                 dropout: float = 0.0, time_scale: float = 1.0, fourier_scale: float = 16.0, seed: int = 0,
                 learn_variance: bool = False, cond_channels: int = 0):
        super().__init__()
        self.cond_channels = cond_channel_count(cond_channels)
        time_dim = check_layout(dim=dim, hidden=hidden, depth=depth, time_dim=time_dim,
                                time_embedding=time_embedding, norm=norm, dropout=dropout)
        num_classes = class_count(num_classes)
        self.dim = int(dim)
        self.num_classes = int(num_classes) if num_classes is not None else None
        self._config = dict(kind=self.kind, dim=self.dim, hidden=int(hidden), depth=int(depth),
                            time_embedding=time_embedding, time_dim=int(time_dim),
                            num_classes=self.num_classes, norm=norm, dropout=float(dropout),
                            time_scale=float(time_scale), fourier_scale=float(fourier_scale), seed=int(seed))
        self.learn_variance = bool(learn_variance)
        if self.learn_variance:
            self._config["learn_variance"] = True
        if self.cond_channels:
            self._config["cond_channels"] = self.cond_channels
        with global_rng_untouched():
            self.time_embed = TimeEmbedding(time_embedding, time_dim, hidden, time_scale=time_scale,
                                            fourier_scale=fourier_scale, seed=seed)
            self.class_embed = nn.Embedding(self.num_classes + 1, hidden) if self.num_classes else None
            self.linear_in = nn.Linear(self.dim + self.cond_channels, hidden)
            self.blocks = nn.ModuleList(MLPBlock(hidden, norm, dropout) for _ in range(depth))
            self.norm_out = _norm(norm, hidden)
            self.linear_out = zero_init(nn.Linear(hidden, 2 * self.dim if self.learn_variance else self.dim))
        init_parameters(self, torch.Generator().manual_seed(int(seed)))

    def config(self) -> dict:
        """Everything needed to rebuild this network with :func:`scorekit.models.build_model`."""
        return dict(self._config)

    def forward(self, x: Tensor, t, y=None, cond=None) -> Tensor:
        check_vectors(x, self.dim, "the MLP")
        emb = self.time_embed(time_vector(t, x.shape[0], x.device))
        labels = label_vector(y, x.shape[0], self.num_classes, x.device)
        if labels is not None:
            emb = emb + self.class_embed(labels)
        h = self.linear_in(with_condition_image(x, cond, self.cond_channels, "the MLP"))
        for block in self.blocks:
            h = block(h, emb)
        return self.linear_out(F.silu(self.norm_out(h)))


def check_layout(*, dim, hidden, depth, time_dim, time_embedding, norm, dropout) -> int:
    """Check the layout arguments of a residual MLP; returns ``time_dim`` (``hidden`` if ``None``)."""
    check_choice(time_embedding, TIME_EMBEDDINGS, "time_embedding")
    check_choice(norm, NORMS, "norm")
    time_dim = hidden if time_dim is None else time_dim
    for name, value in (("dim", dim), ("hidden", hidden), ("depth", depth), ("time_dim", time_dim)):
        if int(value) < 1:
            raise ScorekitError(f"{name} must be a positive integer, got {value}")
    if not 0.0 <= dropout < 1.0:
        raise ScorekitError(f"dropout must be in [0, 1), got {dropout}")
    return time_dim


def check_vectors(x: Tensor, dim: int, what: str) -> None:
    """Raise :class:`ScorekitError` unless ``x`` is ``(N, dim)`` (``what`` names the network)."""
    if not isinstance(x, Tensor) or x.ndim != 2 or x.shape[1] != dim:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ScorekitError(
            f"{what} was built for data of shape (N, {dim}); got {shape}. "
            f"Build it with dim equal to the data dimension")
