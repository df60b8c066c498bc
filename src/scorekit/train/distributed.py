"""Data-parallel training set-up: one code path for a single process and for ``torchrun``.

``torchrun --nproc_per_node=P ...`` starts ``P`` processes and sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` in each. :func:`setup` reads them: with
``WORLD_SIZE > 1`` it joins the process group (``gloo`` on CPU, ``nccl`` on CUDA) and the trainer
wraps the network in ``DistributedDataParallel``; without them (or ``WORLD_SIZE=1``) it returns a
context of world size 1 and nothing is wrapped. The trainer never branches on anything else.

How the work is split: every rank draws the *same* global batch -- the data order, flips and
label dropout come from generators seeded identically on every rank -- and trains on its own
contiguous block of ``batch_size / world_size`` samples; ``DistributedDataParallel`` averages
the gradients.

Decisions the processes take together once per step (a stop signal, a time limit) are agreed on
through a CPU process group (``gloo``, made beside ``nccl`` on GPUs): a collective over a CPU
tensor waits for the other processes, not for the GPU, so the device keeps its queue of work. Timesteps, noise and dropout masks come from generators seeded per rank (and
saved per rank in checkpoints), so ranks do not repeat each other's noise. Only rank 0 writes
files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from ..errors import ScorekitError


@dataclass(frozen=True)
class DistributedContext:
    """Where this process stands in a (possibly one-process) data-parallel job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized_here: bool = False
    control_group: object = None        # the CPU (gloo) group of :meth:`agree`; None: the default group

    @property
    def is_main(self) -> bool:
        """Rank 0: the process that writes files and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def wrap(self, net: nn.Module) -> nn.Module:
        """``net`` wrapped in ``DistributedDataParallel`` when ``world_size > 1``, else ``net``."""
        if not self.distributed:
            return net
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(net, device_ids=ids)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` over ranks (in place on a copy); the tensor itself when alone."""
        if not self.distributed:
            return tensor
        out = tensor.detach().clone().to(self.device)
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
        return out.to(tensor.device)

    def agree(self, *values: int) -> tuple[int, ...]:
        """The elementwise largest of every rank's whole numbers ``values``, on every rank: one
        collective over a CPU tensor in :attr:`control_group`, which never waits for the GPU."""
        if not self.distributed:
            return tuple(int(v) for v in values)
        out = torch.tensor([int(v) for v in values], dtype=torch.int64)
        dist.all_reduce(out, op=dist.ReduceOp.MAX, group=self.control_group)
        return tuple(int(v) for v in out.tolist())

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        return bool(self.agree(bool(flag))[0])

    def max(self, value: int) -> int:
        """The largest of every rank's whole number ``value``, on every rank."""
        return self.agree(value)[0]

    def gather_bytes(self, tensor: torch.Tensor) -> list[torch.Tensor]:
        """Every rank's uint8 tensor of the same length (e.g. an RNG state), on every rank."""
        if not self.distributed:
            return [tensor]
        t = tensor.to(self.device)
        out = [torch.empty_like(t) for _ in range(self.world_size)]
        dist.all_gather(out, t)
        return [o.cpu() for o in out]

    def close(self) -> None:
        """Leave the process group if :func:`setup` joined it."""
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise ScorekitError(f"environment variable {name}={value!r} is not a whole number") from None


def resolve_device(device: str | torch.device | None, local_rank: int = 0) -> torch.device:
    """The torch device named by ``device`` (``"cpu"``, ``"cuda"``, ``"cuda:1"``; default: cpu).

    Under ``torchrun`` a bare ``"cuda"`` means ``cuda:LOCAL_RANK``.
    """
    try:
        dev = torch.device(device or "cpu")
    except (RuntimeError, TypeError, ValueError) as err:
        raise ScorekitError(f"unknown device {device!r}: {err}; use cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            missing = f"device {device!r} was asked for but CUDA is not available here; use"
            raise ScorekitError(f"{missing} device='cpu'", cli=f"{missing} --device cpu")
        if dev.index is None:
            dev = torch.device("cuda", local_rank)
        if dev.index >= torch.cuda.device_count():
            raise ScorekitError(f"device {dev} does not exist: this machine has "
                                f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type != "cpu":
        raise ScorekitError(f"device {device!r} is not supported; use cpu or cuda")
    return dev


def setup(device: str | torch.device | None = "cpu") -> DistributedContext:
    """Read ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` and join the process group if needed.

    Returns a :class:`DistributedContext`; call its :meth:`~DistributedContext.close` at the end.
    A process group that the caller already initialised is used as it is.
    """
    world_size = _env_int("WORLD_SIZE", 1)
    rank = _env_int("RANK", 0)
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise ScorekitError(f"bad distributed environment: RANK={rank}, WORLD_SIZE={world_size}")
    dev = resolve_device(device, local_rank)
    if world_size == 1:
        return DistributedContext(device=dev)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    initialized_here = False
    if not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
        initialized_here = True
    return DistributedContext(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                              initialized_here=initialized_here, control_group=control_group())


def control_group():
    """The process group for CPU tensors: the default one when it is ``gloo``, else a new ``gloo``
    group of every rank (a collective call: every rank makes it)."""
    backend = str(dist.get_backend())
    if backend == "gloo" or "cpu:gloo" in backend:      # CPU tensors already go through gloo
        return None
    return dist.new_group(backend="gloo")


def unwrap(net: nn.Module) -> nn.Module:
    """The network inside a ``DistributedDataParallel`` wrapper (or ``net`` itself)."""
    return getattr(net, "module", net) if type(net).__name__ == "DistributedDataParallel" else net


__all__ = ["DistributedContext", "resolve_device", "setup", "unwrap"]
