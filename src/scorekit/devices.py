"""Copying host tensors to the device without making the host wait.

On a GPU the host queues work and runs ahead of it. A copy from ordinary (pageable) host memory
to the device that is not ``non_blocking`` breaks that: PyTorch waits for the device's stream to
finish everything queued before it. One such copy per training or sampling step costs a step's
worth of queueing. :func:`to_device` copies a host tensor from page-locked memory (CUDA) without
waiting; on the CPU, and for a tensor already on the device, it is ``t`` itself.
"""
from __future__ import annotations

import torch

Tensor = torch.Tensor


def to_device(t: Tensor, device) -> Tensor:
    """``t`` on ``device``, copied from the host without waiting for the device's queued work:
    through a page-locked copy of ``t`` to a CUDA device (``t`` may then change at once; a ``t``
    already page-locked is copied as it is and must not), ``non_blocking`` to another accelerator."""
    device = torch.device(device)
    if t.device == device:
        return t
    if t.device.type != "cpu":
        return t.to(device)
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device, non_blocking=device.type != "cpu")


def to_like(t: Tensor, like: Tensor) -> Tensor:
    """``t`` in ``like``'s dtype on ``like``'s device: converted on its own device first (so a host
    tensor crosses in the target dtype), then copied by :func:`to_device` without waiting."""
    return to_device(t.to(like.dtype), like.device)


def kept_like(owner, name: str, like: Tensor) -> Tensor:
    """``owner.<name>`` (a tensor) on ``like``'s device and in its dtype, copied there once and kept
    on ``owner`` while ``owner.<name>`` stays the same tensor: an operator's mask or matrix, a
    measurement, used at every step of a sampler (a copy at every step would make the host wait
    for a GPU each time). ``owner.<name>`` itself stays as it was."""
    value = getattr(owner, name)
    slot = f"_kept_{name}"
    kept = owner.__dict__.get(slot)
    if kept is None or kept[0] is not value or kept[1].device != like.device or kept[1].dtype != like.dtype:
        kept = owner.__dict__[slot] = (value, to_like(value, like))
    return kept[1]


__all__ = ["kept_like", "to_device", "to_like"]
