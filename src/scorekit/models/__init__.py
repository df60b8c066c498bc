"""Denoising networks: ``net(x_t, t, y=None, cond=None) -> Tensor`` shaped like ``x_t``.

A network embeds the process time ``t`` it is given (integer DDPM steps, or continuous time)
and knows nothing of diffusion mathematics; :class:`scorekit.Denoiser` combines it with a
process and a prediction type. ``y`` holds optional class labels, where the value
``num_classes`` means "no label" (the same as ``y=None``). ``cond`` is a condition image (or
vector) concatenated to ``x_t`` at the input of a network built with ``cond_channels > 0``.

* :class:`UNet` for images ``(N, C, H, W)`` and :class:`MLP` for low-dimensional data ``(N, D)``;
* noise-aware classifiers ``net(x_t, t) -> (N, num_classes)`` logits for classifier guidance,
  :class:`UNetClassifier` and :class:`MLPClassifier` (:mod:`scorekit.models.classifier`; their
  kinds are listed in :data:`CLASSIFIER_KINDS`);
* ``net.config()`` is a JSON dict with a ``"kind"`` key, and :func:`build_model` rebuilds the
  network from it, with the same initial weights (they come from the config's ``seed``);
* :data:`PRESETS` names ready-made configurations; :func:`preset` fills in the data's channels.
"""
from __future__ import annotations

import copy

from torch import nn

from ..errors import ScorekitError, check_options, option_schema
from .classifier import MLPClassifier, UNetClassifier
from .layers import sinusoidal_embedding
from .mlp import MLP
from .unet import UNet

#: the network class for each ``config["kind"]``
MODELS = {"unet": UNet, "mlp": MLP, "unet_classifier": UNetClassifier, "mlp_classifier": MLPClassifier}
#: the kinds that map ``(x_t, t)`` to class logits rather than to a tensor shaped like ``x_t``
CLASSIFIER_KINDS = ("unet_classifier", "mlp_classifier")
#: the kinds that take images ``(N, C, H, W)`` (``in_channels``); the others take vectors ``(N, D)`` (``dim``)
IMAGE_KINDS = ("unet", "unet_classifier")

#: ready-made configurations; override ``in_channels`` (and ``num_classes``) for your data. The
#: U-Nets take any image size that is a multiple of 4 ("tiny", "small") or 8 ("base"):
#: ``image_size`` only names the nominal size that ``attention_resolutions`` refers to, so keep it
#: (attention then stays at the lowest level, 7x7 for 28-pixel MNIST, 2x2 for 8x8 digits).
PRESETS = {
    # ~0.41 M parameters: 8x8 digits or 28/32-pixel MNIST on a CPU in minutes
    "tiny": dict(kind="unet", in_channels=1, base_channels=16, channel_mults=[1, 2, 2], num_res_blocks=2,
                 attention_resolutions=[8], dropout=0.0, num_heads=1, groups=8, image_size=32),
    # ~1.6 M parameters: the size of diffusers' UNet2DModel with block_out_channels (32, 64, 64)
    "small": dict(kind="unet", in_channels=1, base_channels=32, channel_mults=[1, 2, 2], num_res_blocks=2,
                  attention_resolutions=[8], dropout=0.0, num_heads=1, groups=8, image_size=32),
    # ~35.7 M parameters: the DDPM CIFAR-10 network (Ho et al. 2020)
    "base": dict(kind="unet", in_channels=3, base_channels=128, channel_mults=[1, 2, 2, 2], num_res_blocks=2,
                 attention_resolutions=[16], dropout=0.1, num_heads=1, groups=32, image_size=32),
    # ~0.92 M parameters: 2-D toy data
    "mlp": dict(kind="mlp", dim=2, hidden=256, depth=4, time_embedding="sinusoidal"),
    # noise-aware classifiers (objective "classifier"): the encoder of "tiny" with a pooled head,
    # for 8x8 digits or 28/32-pixel MNIST; and a residual MLP for 2-D toy data
    "classifier-tiny": dict(kind="unet_classifier", in_channels=1, num_classes=10, base_channels=16,
                            channel_mults=[1, 2, 2], num_res_blocks=2, attention_resolutions=[8], dropout=0.0,
                            num_heads=1, groups=8, image_size=32),
    "classifier-mlp": dict(kind="mlp_classifier", dim=2, num_classes=2, hidden=128, depth=3,
                           time_embedding="sinusoidal"),
}


def build_model(config: dict) -> nn.Module:
    """The network described by ``config`` (a dict from ``net.config()`` or :data:`PRESETS`)."""
    if not isinstance(config, dict) or "kind" not in config:
        raise ScorekitError(
            f"a model config must be a dict with a 'kind' key ({', '.join(MODELS)}); got {config!r}")
    options = dict(config)
    kind = options.pop("kind")
    if kind not in MODELS:
        raise ScorekitError(f"unknown model kind {kind!r} in the model config; choose one of {', '.join(MODELS)}")
    return MODELS[kind](**check_model_options(kind, options))


def check_model_options(kind: str, options: dict) -> dict:
    """The options of a ``kind`` network (``"unet"``, ``"mlp"``, ...) checked against its constructor's
    signature and converted to the types it expects (e.g. ``"1,2"`` -> ``[1, 2]``)."""
    return check_options(options, option_schema(MODELS[kind]), f"{kind} model option")


def preset(name: str, **overrides) -> dict:
    """The config of preset ``name`` with ``overrides`` (e.g. ``in_channels=3, num_classes=10``)."""
    if name not in PRESETS:
        raise ScorekitError(f"unknown model preset {name!r}; choose one of {', '.join(PRESETS)}")
    return {**copy.deepcopy(PRESETS[name]), **overrides}


def count_parameters(net: nn.Module) -> int:
    """The number of trainable parameters of ``net``."""
    return sum(p.numel() for p in net.parameters() if p.requires_grad)


# options that leave the layout of the network as it is: a network built from a preset with
# these overridden is still described by the preset's name
_DATA_OPTIONS = {"in_channels", "out_channels", "dim", "num_classes", "dropout", "seed", "time_scale",
                 "fourier_scale", "time_embedding", "compute_dtype", "learn_variance", "cond_channels"}


def preset_name(net: nn.Module) -> str | None:
    """The name of the preset whose layout ``net`` has, or ``None``."""
    config = net.config() if hasattr(net, "config") else {}
    for name, spec in PRESETS.items():
        if all(config.get(k) == v for k, v in spec.items() if k not in _DATA_OPTIONS):
            return name
    return None


def describe(net: nn.Module) -> str:
    """A one-line summary, e.g. ``"UNet tiny: 408,641 parameters"``."""
    name = preset_name(net)
    label = type(net).__name__ + (f" {name}" if name and name != getattr(net, "kind", None) else "")
    return f"{label}: {count_parameters(net):,} parameters"


__all__ = ["CLASSIFIER_KINDS", "IMAGE_KINDS", "MLP", "MLPClassifier", "MODELS", "PRESETS", "UNet", "UNetClassifier",
           "build_model", "check_model_options", "count_parameters", "describe", "preset",
           "preset_name", "sinusoidal_embedding"]
