"""What every sampler shares: input checks, the step loop with its progress bar, the callback."""
from __future__ import annotations

import math
from typing import Callable, Iterator

import torch
from tqdm.auto import tqdm

from ..wrappers import DenoiserWrapper
from ..errors import ScorekitError, reads_are_free
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
    if x.ndim < 2 or x.shape[0] == 0:
        raise ScorekitError(f"{name} must have shape (N, ...) with a batch dimension and N >= 1, got "
                            f"{tuple(x.shape)}")
    # (read on the CPU only: on a GPU the sampler's deferred finite checks report a bad start)
    if reads_are_free(x) and not torch.isfinite(x).all():
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


def _time(t) -> str:
    t = torch.as_tensor(t, dtype=torch.float64)
    if t.numel() == 1:
        return f"t = {t.item():g}"
    return f"t = {t.min().item():g} .. {t.max().item():g}"


def _non_finite(x: Tensor) -> str | None:
    """``None`` if every value of ``x`` is finite, else ``"NaN"`` or ``"Inf"``.

    A finite sum proves every term finite (NaN and Inf propagate through a sum, ``Inf - Inf`` is
    NaN), and a sum is an order of magnitude cheaper than ``isfinite(x).all()`` on a CPU; only a
    non-finite sum (NaN or Inf present, or finite terms whose sum overflows) looks at each value.
    """
    if math.isfinite(x.sum().item()) or bool(torch.isfinite(x).all()):
        return None
    return "NaN" if bool(torch.isnan(x).any()) else "Inf"


class FiniteStates(DenoiserWrapper):
    r"""The denoiser ``D`` that a sampler calls, watched for NaN and Inf.

    Every network evaluation of every sampler passes through a denoiser, so this is the one place
    that sees each state: before evaluation ``k`` it checks the state ``x_t`` (which the previous
    step made), after it the model's ``x0_pred``. The first non-finite value raises
    :class:`ScorekitError` naming the evaluation ``k`` (counted from 0), its time, and whether the
    model output or the sampler's own step was the first to go non-finite. The cost is two sums
    per evaluation (of the state and of the output; see :func:`_non_finite`).
    Other attributes (``process``, ``x0_and_log_variance``) are those of the wrapped denoiser
    (:class:`~scorekit.wrappers.DenoiserWrapper`).

    ``deferred=True`` keeps the host out of the step loop, for devices that run asynchronously
    (a GPU): each check then only queues ``max |x|`` on the device (NaN propagates through a
    maximum, Inf stays Inf, and a maximum cannot overflow), and :meth:`finish` reads all of them in
    one transfer at the end and raises the same error, for the first evaluation that failed, as
    the immediate check would have. The sampler then runs to its end on non-finite values (and a
    callback sees them) before the error is raised.
    """

    def __init__(self, denoiser, sampler: str, *, deferred: bool = False):
        super().__init__(denoiser)
        self.sampler = sampler
        self.evaluations = 0
        self.last_time = None
        self.deferred = bool(deferred)
        self._pending: list[tuple[Tensor, Callable[[str], None]]] = []

    @property
    def denoiser(self):
        return self.inner

    def _fail(self, what: str) -> None:
        raise ScorekitError(f"sampler {self.sampler!r}: {what}; pass check_finite=False to let it "
                            f"run on")

    def _watch(self, x: Tensor, report: Callable[[str], None]) -> None:
        """``report("NaN" or "Inf")`` when ``x`` is not finite: now, or (deferred) in :meth:`finish`."""
        if self.deferred:
            self._pending.append((torch.linalg.vector_norm(x.detach(), math.inf), report))
            return
        kind = _non_finite(x)
        if kind is not None:
            report(kind)

    def finish(self, x: Tensor | None = None) -> None:
        """Check the final state ``x`` (if given), then raise for the first non-finite value that
        a deferred check queued (one transfer from the device); nothing is left queued."""
        if x is not None:
            self.check_state(x)
        pending, self._pending = self._pending, []
        if not pending:
            return
        peaks = torch.stack([peak.to(torch.float32) for peak, _ in pending]).cpu().tolist()
        for peak, (_, report) in zip(peaks, pending):
            if not math.isfinite(peak):
                report("NaN" if math.isnan(peak) else "Inf")

    def check_state(self, x: Tensor, t=None) -> None:
        """Refuse a non-finite state (before evaluation ``self.evaluations`` at ``t``, or, with
        ``t=None``, the final one)."""
        evaluations, last_time = self.evaluations, self.last_time

        def report(kind: str) -> None:
            before = (f"became {kind} in the step after network evaluation {evaluations - 1} "
                      f"({_time(last_time)})" if evaluations else f"holds {kind} at the start")
            where = f", before evaluation {evaluations} ({_time(t)})" if t is not None else \
                " (the final state)"
            self._fail(f"the state x_t {before}{where}, although every model output so far was finite: "
                       f"the sampler's step diverged (try more steps or another sampler)")

        self._watch(x, report)

    def _check_output(self, out: Tensor, t, what: str = "output", evaluation: int | None = None) -> None:
        evaluation = self.evaluations if evaluation is None else evaluation

        def report(kind: str) -> None:
            self._fail(f"the model {what} holds {kind} at network evaluation {evaluation} "
                       f"({_time(t)}) from a finite state x_t: the model itself returns non-finite "
                       f"values (check its weights and inputs)")

        self._watch(out, report)

    def apply(self, x_t: Tensor, t, condition, predict) -> Tensor:
        self.check_state(x_t, t)
        x0 = predict(x_t, t, condition)
        self._check_output(x0, t)
        self.evaluations += 1
        self.last_time = t
        return x0

    def log_variance(self, log_var: Tensor, batch: int) -> Tensor:
        self._check_output(log_var, self.last_time, "log-variance", self.evaluations - 1)
        return log_var[:batch]
