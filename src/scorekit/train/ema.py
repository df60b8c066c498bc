r"""Exponential moving average (EMA) of a network's weights.

After optimiser step ``k`` (``k = 0, 1, ...``) every floating-point parameter and buffer ``w`` of
the network updates its average ``w_ema``:

    w_ema <- d_k w_ema + (1 - d_k) w,        d_k = min(decay, (1 + k) / (10 + k)),

the warm-up of TensorFlow's ``ExponentialMovingAverage(num_updates=k)`` used by DDPM and score
SDE. Early on ``d_k`` is small (0.1 at ``k = 0``, 0.5 at ``k = 8``), so the average forgets the
random initial weights after a few dozen steps instead of the ``1 / (1 - decay)`` steps a fixed
decay needs -- what a short CPU run requires. With ``warmup=False``, ``d_k = decay`` throughout.

The averaged copy is always kept in float32 (also when the network itself is trained in lower
precision), so that increments ``(1 - d) (w - w_ema)`` far below a bf16 or fp16 rounding step are
not lost. Integer buffers (e.g. counters) are copied, not averaged.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from ..errors import ScorekitError


def ema_decay(step: int, decay: float, *, warmup: bool = True) -> float:
    """The decay ``d_k = min(decay, (1 + k) / (10 + k))`` applied at optimiser step ``k`` (from 0)."""
    if warmup:
        return min(float(decay), (1.0 + step) / (10.0 + step))
    return float(decay)


class EMA:
    """A float32 moving average of ``net``'s weights (see the module docstring for the formula).

    Args:
        net: the network being trained; its current weights start the average.
        decay: the largest decay ``d`` (e.g. 0.999: an average over about 1000 steps).
        warmup: use ``d_k = min(decay, (1 + k) / (10 + k))``; otherwise ``d_k = decay``.

    Attributes:
        net: a copy of the network holding the averaged weights (float32, ``requires_grad=False``,
            in eval mode); sample from it.
        num_updates: how many updates have been applied (the ``k`` of the next update).
    """

    def __init__(self, net: nn.Module, decay: float = 0.999, *, warmup: bool = True):
        decay = float(decay)
        if not 0.0 <= decay < 1.0:
            raise ScorekitError(f"the EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.net = copy.deepcopy(net).float().eval()
        for p in self.net.parameters():
            p.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        return ema_decay(self.num_updates, self.decay, warmup=self.warmup)

    def last_decay(self) -> float:
        """The decay the last update used (before any update, the first one's)."""
        return ema_decay(max(self.num_updates - 1, 0), self.decay, warmup=self.warmup)

    def _pairs(self, net: nn.Module):
        """``(average, current)`` tensor pairs, parameters then buffers, matched by name."""
        mine = dict(self.net.named_parameters())
        mine.update(self.net.named_buffers())
        theirs = dict(net.named_parameters())
        theirs.update(net.named_buffers())
        if mine.keys() != theirs.keys():
            raise ScorekitError("EMA.update got a network with other parameters than the one it "
                                "averages")
        return [(mine[k], theirs[k]) for k in mine]

    @torch.no_grad()
    def update(self, net: nn.Module) -> float:
        """Move the average towards ``net``'s weights; returns the decay used."""
        d = self.current_decay()
        avg_f, cur_f = [], []
        for avg, cur in self._pairs(net):
            if avg.is_floating_point():
                avg_f.append(avg)
                cur_f.append(cur.detach().to(avg.dtype))
            else:
                avg.copy_(cur)
        if avg_f:
            torch._foreach_lerp_(avg_f, cur_f, 1.0 - d)     # avg + (1 - d) (w - avg)
        self.num_updates += 1
        return d

    def state_dict(self) -> dict:
        """The averaged weights (same keys as the network's ``state_dict``)."""
        return self.net.state_dict()

    def load_state_dict(self, state: dict, num_updates: int) -> None:
        """Restore averaged weights and the update count."""
        self.net.load_state_dict(state)
        self.num_updates = int(num_updates)


__all__ = ["EMA", "ema_decay"]
