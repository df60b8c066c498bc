"""What a piece of code would make a GPU wait for, found on the CPU with the "meta" device.

On a GPU the host queues work and runs ahead; two things make it wait for the queue to drain:

* reading a value back (``.item()``, ``bool()``, a copy to the CPU). On the meta device that
  raises, so running code there proves it reads nothing;
* a copy from ordinary host memory to the device that is not ``non_blocking``: PyTorch waits for
  the device's stream after such a copy. ``torch.tensor(data, device=...)`` of host data makes one
  too. Meta allows these, so :func:`blocking_host_copies` records them: every such copy made
  while it is active, with where in scorekit it was made.

A 0-dimensional CPU tensor combined with a device tensor is passed to the kernel as a number, no
copy; meta accepts it as CUDA does, and it is not recorded.
"""
from __future__ import annotations

import contextlib
import traceback

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

_FACTORIES = (torch.tensor, torch.as_tensor, torch.asarray)


def _where() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if "/scorekit/" in f.filename]
    return " <- ".join(f"{f.filename.split('/scorekit/')[-1]}:{f.lineno}" for f in reversed(frames[-4:]))


def _to_device(device) -> bool:
    return device is not None and torch.device(device).type != "cpu"


class _Copies(TorchDispatchMode):
    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.ops.aten._to_copy.default:
            src, dst = args[0], kwargs.get("device")
            blocking = not kwargs.get("non_blocking", False)
        elif func is torch.ops.aten.copy_.default:
            dst, src = args[0].device, args[1]
            blocking = not (args[2] if len(args) > 2 else kwargs.get("non_blocking", False))
        else:
            return func(*args, **kwargs)
        if blocking and src.device.type == "cpu" and _to_device(dst):
            self.found.append(f"{func}: {tuple(src.shape)} from the host at {_where()}")
        return func(*args, **kwargs)


class _Factories(TorchFunctionMode):
    def __init__(self, found: list):
        super().__init__()
        self.found = found

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _FACTORIES and _to_device(kwargs.get("device")):
            data = args[0] if args else kwargs.get("data")
            if not (isinstance(data, torch.Tensor) and data.device.type != "cpu"):
                self.found.append(f"torch.{func.__name__} of host data onto {kwargs['device']} at {_where()}")
        return func(*args, **kwargs)


@contextlib.contextmanager
def blocking_host_copies():
    """A list that fills with the blocking host-to-device copies made inside the block."""
    found: list[str] = []
    with _Factories(found), _Copies(found):
        yield found


__all__ = ["blocking_host_copies"]
