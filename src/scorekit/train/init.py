"""Start a run from another run's weights (``TrainConfig.init_from``, ``scorekit train --init-from``).

The new network takes the source run's EMA weights (the weights that sample), tensor by tensor.
The two networks must be the same preset with the same settings, with one exception: a network
that concatenates a condition image (or vector) to ``x_t`` at its input (``cond_channels > 0``,
an image-to-image task of :mod:`scorekit.tasks`) may start from one that takes fewer or no
condition channels. Its input layer then has more input channels than the source's; the source's
weights fill the first ones (``x_t``, then the source's condition channels) and the new ones start
at zero. With those zeros the new network at step 0 *is* the source network, whatever the
condition:

    f_new([x_t, cond], t) = W_x x_t + W_c cond + b = W_x x_t + b = f_source(x_t, t)   (W_c = 0),

so a task model starts from an unconditional prior's denoiser and training only has to learn how
to use the condition (the zero-initialised new input of ControlNet's "zero convolutions", Zhang,
Rao & Agrawala 2023, applied to the input layer itself).

The source must also train the same thing: the same forward process and the same prediction
target (the weights mean ``eps``, ``x0``, ``v`` or the score of one process); anything else is
refused with the setting that differs. Files are read as safetensors through
:func:`scorekit.train.checkpoint.load_checkpoint`; nothing is unpickled.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import ScorekitError

#: names of the input layers that may grow by the condition's channels (UNet, MLP)
INPUT_LAYERS = ("conv_in.", "linear_in.")


def _grown_input(name: str, have: tuple, want: tuple, extra: int) -> bool:
    """Whether tensor ``name`` is an input layer's weight whose input dimension (dim 1) grew by
    exactly ``extra`` condition channels, the other dimensions unchanged."""
    return (name.startswith(INPUT_LAYERS) and name.endswith("weight") and extra > 0 and len(have) == len(want) >= 2
            and have[0] == want[0] and have[2:] == want[2:] and want[1] - have[1] == extra)


def initial_state(net: nn.Module, net_config: dict, source: str, *, process_config: dict,
                  prediction: str) -> tuple[dict, dict]:
    """The state dict that starts ``net`` (built from ``net_config``) from the run or checkpoint
    ``source``, and a record of what was done (``{"checkpoint", "step", "zeroed"}``).

    ``process_config`` and ``prediction`` are the new run's; the source must have the same.
    Raises :class:`ScorekitError` naming the first setting or tensor that does not match."""
    from .checkpoint import load_checkpoint

    ckpt = load_checkpoint(source)
    where = f"init_from {source!r} ({ckpt.path})"
    if ckpt.objective != "diffusion":
        raise ScorekitError(f"{where} is a {ckpt.objective} run; a diffusion run can only start from another "
                            f"diffusion run's weights")
    if ckpt.prediction_type != prediction:
        raise ScorekitError(f"{where} predicts {ckpt.prediction_type!r} but this run predicts {prediction!r}; "
                            f"its weights would mean something else (give the same prediction)")
    if ckpt.process.config() != process_config:
        raise ScorekitError(f"{where} was trained with another forward process ({ckpt.process.config()}) than "
                            f"this run's ({process_config}); give the same process and options")
    # the seed only draws the initial weights (and persistent buffers), all of which are copied
    theirs = {k: v for k, v in ckpt.model_config.items() if k != "seed"}
    mine = {k: v for k, v in net_config.items() if k != "seed"}
    extra = int(mine.pop("cond_channels", 0) or 0) - int(theirs.pop("cond_channels", 0) or 0)
    if mine != theirs or extra < 0:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        what = ", ".join(f"{k} {theirs.get(k)!r} there, {mine.get(k)!r} here" for k in differ) or \
            "cond_channels: the source takes more condition channels than this network"
        raise ScorekitError(f"{where} has another network than this run ({what}); start from a run of the same "
                            f"model preset and options")

    source_state = ckpt.ema_net.state_dict()
    state, zeroed = {}, []
    for name, want in net.state_dict().items():
        have = source_state.get(name)
        if have is None:
            raise ScorekitError(f"{where} lacks tensor {name!r} of this run's network")
        if tuple(have.shape) == tuple(want.shape):
            state[name] = have.to(want.dtype).clone()
        elif _grown_input(name, tuple(have.shape), tuple(want.shape), extra):
            grown = torch.zeros(want.shape, dtype=want.dtype)
            grown[:, :have.shape[1]] = have
            state[name] = grown
            zeroed.append(name)
        else:
            raise ScorekitError(f"{where}: tensor {name!r} has shape {tuple(have.shape)} there but "
                                f"{tuple(want.shape)} here")
    if extra and not zeroed:
        raise ScorekitError(f"{where}: this network takes {extra} more condition channel(s), but no input layer "
                            f"({', '.join(INPUT_LAYERS)}) grew to take them")
    return state, {"checkpoint": ckpt.path, "step": int(ckpt.step), "zeroed": zeroed}


def init_from(net: nn.Module, net_config: dict, source: str, *, process_config: dict, prediction: str) -> dict:
    """Load the weights of ``source`` into ``net`` in place (:func:`initial_state`); returns the record."""
    state, record = initial_state(net, net_config, source, process_config=process_config, prediction=prediction)
    net.load_state_dict(state)
    return record


__all__ = ["INPUT_LAYERS", "init_from", "initial_state"]
