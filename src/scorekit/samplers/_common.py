"""What every sampler shares: input checks, the step loop with its progress bar, the callback."""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ..timesteps import check_timesteps

Tensor = torch.Tensor

#: ``callback(i, t, x_t, x0_pred)``: called once per network evaluation of a sampler.
Callback = Callable[[int, float, Tensor, Tensor], None]


def check_start(x: Tensor, name: str = "x_T") -> Tensor:
    """Refuse a start point that is not a finite floating-point tensor with a batch dimension."""
    if not isinstance(x, Tensor):
        raise ScorekitError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise ScorekitError(f"{name} must be a floating-point tensor, got {x.dtype}")
    if x.ndim < 2:
        raise ScorekitError(f"{name} must have shape (N, ...) with a batch dimension, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ScorekitError(f"{name} contains NaN or infinite values")
    return x


def grid(process: GaussianProcess, timesteps) -> Tensor:
    """The validated float64 grid: descending, model times inside the process's range, and an
    end time no earlier than the data time."""
    ts = check_timesteps(timesteps)
    if ts[0] > process.t_max + 1e-9 or ts[:-1].min() < min(process.t_min, process.t_max) - 1e-9:
        raise ScorekitError(
            f"model times must lie in [{process.t_min}, {process.t_max}] for {type(process).__name__}; "
            f"got {ts[0].item()} .. {ts[-2].item()}")
    if ts[-1] < process.t_data:
        raise ScorekitError(f"the end time {ts[-1].item()} is before the data time {process.t_data}")
    return ts


def progress_range(n: int, progress: bool, desc: str) -> Iterator[int]:
    """``range(n)`` with a progress bar when asked for."""
    bar = tqdm(total=n, desc=desc, disable=not progress, leave=False)
    try:
        for i in range(n):
            yield i
            bar.update(1)
    finally:
        bar.close()


def check_generator(generator, sampler: str) -> torch.Generator:
    """Stochastic samplers draw noise only from an explicit generator (never torch's global one)."""
    if not isinstance(generator, torch.Generator):
        raise ScorekitError(f"{sampler} draws random noise: pass generator=torch.Generator().manual_seed(seed)")
    return generator


def randn_like(x: Tensor, generator: torch.Generator) -> Tensor:
    """Standard normal noise shaped like ``x``, drawn only from the given generator."""
    return torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
