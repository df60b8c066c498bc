r"""Tuned time steps: the grid on which a deterministic sampler comes closest to the exact ODE.

A deterministic sampler approximates the probability-flow ODE (Song et al. 2021, eq. 13)

    dx/dt = f(t) x - g(t)^2 / 2 * score(x, t),   score = (alpha_t x0_pred - x) / sigma_t^2,

and at a small number of network evaluations (NFE) where it places its steps matters as much as
its order. :func:`tune_timesteps` chooses them for one model, sampler and NFE: it solves the ODE
once to high accuracy from a batch of noise ``x_T`` (:func:`probability_flow_reference`) and
minimises the sampler's mean squared error to that solution over the grids

    lambda_i = lambda_max + (lambda_min - lambda_max) * (w_0 + ... + w_{i-1}),   w = softmax(0, theta),
    t_i = t(lambda_i),   i = 0 .. n-1,   then the end time t_data,

with ``lambda = log(alpha^2 / sigma^2)`` the log-SNR, ``lambda_max = lambda(t_max)`` (the first
model time is always ``t_max``) and ``lambda_min = lambda(t_min)``. With ``free_last`` (the
default) ``w`` has one entry more than there are gaps, the share of the log-SNR range left unused
below the last model time, so the last model time is free within ``[t_min, t_max]`` (the default
grid of a discrete DDPM ends well above ``t_min``). Every ``theta`` gives a valid grid: descending,
inside the model's range, starting at ``t_max``, ending at the data time.

Why a derivative-free optimiser (Nelder & Mead 1965, :func:`scipy.optimize.minimize`): samplers
turn the schedule into python floats before their step loop, a discrete DDPM maps log-SNR to time
by table interpolation, and a trained network may take integer times, so the error is not a
differentiable function of ``theta`` in torch. With one parameter per step (4 to ~20 here) and a
batch of 64-256 samples a few hundred sampler runs suffice; the objective is ``log(error)`` so
its tolerance is relative. Tuning starts from the sampler's default grid
(:func:`scorekit.timesteps.make_timesteps`), the log-SNR-uniform grid, or the better of the two.

The mean squared error rewards outputs near the conditional mean: at very low NFE the best
grid (like the default DDPM grid) may make its last model call well above ``t_min`` and denoise
from there, which shrinks components narrower than the noise level left; ``free_last=False``
keeps the last model time at ``t_min``.

Tuned grids are saved beside the checkpoint, in ``schedules.json`` of the checkpoint folder
(:func:`save_tuned`, :func:`load_tuned`), one entry per sampler, NFE and non-default options.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from .errors import ScorekitError, write_error
from .processes import GaussianProcess
from .samplers import SAMPLERS
from .samplers._common import check_start
from .sampling import check_sampler_options, sampler_options
from .timesteps import chain_length, check_timesteps, make_timesteps

Tensor = torch.Tensor

SCHEDULES_FILE = "schedules.json"
SCHEDULES_FORMAT = "scorekit.schedules"
INITS = ("default", "log_snr", "best")
DEFAULT_MAX_EVALS = 300



# --- the tuned grid -------------------------------------------------------------------------------

@dataclass
class TunedSchedule:
    """A grid tuned for one sampler at one NFE.

    Attributes:
        timesteps: the tuned grid (float64): ``steps`` model times, then the end time.
        sampler: the sampler's name in :data:`scorekit.samplers.SAMPLERS`.
        nfe: network evaluations per sample on this grid.
        error_default: the error on the sampler's default grid (``make_timesteps``).
        error_tuned: the error on the tuned grid (never above ``error_default``).
        options: the sampler's options that differ from its defaults.
        default_timesteps: the default grid the errors are compared with.
        error_init: the error of the grid the optimiser started from.
        init: ``"default"`` or ``"log_snr"``: where it started.
        evaluations: sampler runs the optimiser made.
        num_samples: the size of the batch of ``x_T`` it was tuned on.
        metric: the error measured (``"mse"``: mean squared error to the ODE solution).
        seconds: time the tuning took.
    """

    timesteps: Tensor
    sampler: str
    nfe: int
    error_default: float
    error_tuned: float
    options: dict = field(default_factory=dict)
    default_timesteps: Tensor | None = None
    error_init: float | None = None
    init: str = "default"
    evaluations: int = 0
    num_samples: int = 0
    metric: str = "mse"
    seconds: float = 0.0

    @property
    def steps(self) -> int:
        """The number of model times of the grid."""
        return int(self.timesteps.numel()) - 1

    @property
    def key(self) -> str:
        """The name of this grid in ``schedules.json``."""
        return schedule_key(self.sampler, self.nfe, _with_defaults(self.sampler, self.options))

    def to_json(self) -> dict:
        return {
            "sampler": self.sampler, "nfe": self.nfe, "steps": self.steps, "options": self.options,
            "timesteps": _encode_times(self.timesteps),
            "default_timesteps": None if self.default_timesteps is None
            else _encode_times(self.default_timesteps),
            "error_default": _encode_float(self.error_default),
            "error_tuned": _encode_float(self.error_tuned),
            "error_init": _encode_float(self.error_init), "init": self.init, "evaluations": self.evaluations,
            "num_samples": self.num_samples, "metric": self.metric, "seconds": self.seconds,
        }

    @classmethod
    def from_json(cls, entry: dict, source: str = SCHEDULES_FILE, key: str | None = None) -> "TunedSchedule":
        """The grid of one entry of ``schedules.json`` (``key`` its name there), checked: an object
        naming a known sampler, its options and NFE, whose grids are strictly decreasing finite times
        (the end time may be ``-inf``), ``steps`` model times then the end time."""
        what = f"{source}: the tuned schedule {key!r}" if key is not None else f"{source}: a tuned schedule"
        if not isinstance(entry, dict):
            raise ScorekitError(f"{what} must be an object (sampler, nfe, timesteps, ...), got "
                                f"{type(entry).__name__}; {_RETUNE}")
        try:
            default = entry.get("default_timesteps")
            schedule = cls(
                timesteps=_decode_grid(entry["timesteps"], "timesteps", what), sampler=str(entry["sampler"]),
                nfe=int(entry["nfe"]), error_default=float(entry["error_default"]),
                error_tuned=float(entry["error_tuned"]), options=dict(entry.get("options", {})),
                default_timesteps=None if default is None else _decode_grid(default, "default_timesteps", what),
                error_init=None if entry.get("error_init") is None else float(entry["error_init"]),
                init=str(entry.get("init", "default")),
                evaluations=int(entry.get("evaluations", 0)),
                num_samples=int(entry.get("num_samples", 0)), metric=str(entry.get("metric", "mse")),
                seconds=float(entry.get("seconds", 0.0)))
        except (KeyError, TypeError, ValueError) as err:
            raise ScorekitError(f"{what} is corrupt ({type(err).__name__}: {err}); {_RETUNE}") from None
        if not isinstance(entry["sampler"], str) or entry["sampler"] not in SAMPLERS:
            raise ScorekitError(f"{what}: unknown sampler {entry['sampler']!r}; {_RETUNE}")
        if isinstance(entry["nfe"], bool) or not isinstance(entry["nfe"], int) or entry["nfe"] < 1:
            raise ScorekitError(f"{what}: 'nfe' must be a positive whole number, got {entry['nfe']!r}; {_RETUNE}")
        steps = entry.get("steps", schedule.steps)
        if steps != schedule.steps:
            raise ScorekitError(f"{what}: 'steps' is {steps!r} but 'timesteps' holds {schedule.steps} model "
                                f"time(s) and the end time; {_RETUNE}")
        try:
            schedule.key
        except ScorekitError as err:
            raise ScorekitError(f"{what}: 'options': {err}; {_RETUNE}") from None
        return schedule


_RETUNE = "the file is corrupt: run scorekit tune again"


def _decode_grid(values, name: str, what: str) -> Tensor:
    """A grid of ``schedules.json``: a list of numbers (the end time may be the string "-inf"),
    strictly decreasing and finite but for that end time."""
    from .train.checkpoint import short_repr

    if not isinstance(values, list) or not all(v == "-inf" or (isinstance(v, (int, float)) and not isinstance(v, bool))
                                               for v in values):
        raise ScorekitError(f"{what}: {name!r} must be a list of numbers (times), got "
                            f"{short_repr(values)}; {_RETUNE}")
    try:
        return check_timesteps(_decode_times(values))
    except ScorekitError as err:
        raise ScorekitError(f"{what}: {name!r}: {err}; {_RETUNE}") from None


def _encode_times(ts: Tensor) -> list:
    """JSON has no infinities: the VE SDE's data time -inf is written as the string "-inf"."""
    return [v if math.isfinite(v) else repr(v) for v in ts.tolist()]


def _encode_float(value):
    """A number for JSON: infinities (a sampler that diverged) become the strings "inf"/"-inf"."""
    if value is None:
        return None
    return float(value) if math.isfinite(value) else repr(float(value))


def _decode_times(values) -> Tensor:
    return torch.tensor([float(v) for v in values], dtype=torch.float64)


def schedule_key(sampler: str, nfe: int, options: dict | None = None) -> str:
    """``"ddim nfe=10 eta=0.0"``: the sampler, the NFE and the given ``options`` (sorted).

    :class:`TunedSchedule` and :func:`load_tuned` key a grid by every option of its sampler,
    defaults included, so that a grid tuned under one default (say ``dpmpp_2m``'s ``variant``) is
    never taken for a run under another default after an upgrade: that run finds no grid and is
    asked to tune one."""
    extra = "".join(f" {k}={options[k]}" for k in sorted(options or {}))
    return f"{sampler} nfe={int(nfe)}{extra}"


# --- sampler look-up and NFE ----------------------------------------------------------------------

def _sampler(name: str):
    if not isinstance(name, str) or name not in SAMPLERS:
        raise ScorekitError(f"unknown sampler {name!r}; choose one of {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def _options(name: str, options: dict) -> dict:
    """The options that differ from the sampler's defaults (unknown names are refused)."""
    _sampler(name)
    defaults = sampler_options(name)
    return {k: v for k, v in check_sampler_options(name, options).items() if v != defaults[k]}


def _with_defaults(name: str, options: dict) -> dict:
    """Every keyword option of sampler ``name``: its defaults, updated by ``options``."""
    return {**sampler_options(name), **_options(name, options)}


def _check_nfe(nfe) -> int:
    if isinstance(nfe, bool) or not isinstance(nfe, (int, np.integer)) or nfe < 1:
        raise ScorekitError(f"nfe must be a positive whole number of network evaluations, got {nfe!r}")
    return int(nfe)


def count_nfe(sampler: str, process: GaussianProcess, steps: int, **options) -> int:
    """Network evaluations ``sampler`` makes on the default grid of ``steps`` model times.

    Counted, not assumed: the sampler runs once on one point with a denoiser that returns zeros
    and counts its calls (a single-step second-order solver makes about two per step).
    """
    fn = _sampler(sampler)
    calls = 0

    def zero_denoiser(x, t):
        nonlocal calls
        calls += 1
        return torch.zeros_like(x)

    x = torch.zeros(1, 1, dtype=torch.float64)
    with torch.no_grad():
        fn(zero_denoiser, process, x, make_timesteps(process, steps),
           generator=torch.Generator().manual_seed(0), **options)
    return calls


def steps_for_nfe(sampler: str, process: GaussianProcess, nfe: int, **options) -> int:
    """The number of model times on which ``sampler`` makes exactly ``nfe`` network evaluations.

    ``nfe`` for first-order and multistep samplers, about ``nfe / order`` for single-step
    higher-order ones. Raises :class:`ScorekitError` naming the nearest reachable NFEs if none.
    """
    from .samplers.options import ADAPTIVE_SAMPLERS

    if sampler in ADAPTIVE_SAMPLERS:
        raise ScorekitError(f"{sampler} chooses its own steps, so its NFE is set by its tolerances, not by a "
                            f"grid; choose a sampler with a fixed grid (e.g. ddim, ode_heun, unipc)")
    nfe = _check_nfe(nfe)
    hi = nfe
    if process.discrete:
        hi = min(hi, chain_length(process))
    counts = {}

    def calls(n):
        if n not in counts:
            counts[n] = count_nfe(sampler, process, n, **options)
        return counts[n]

    lo = 1                     # calls(n) is non-decreasing in n: bisect for calls(n) >= nfe
    while lo < hi:
        mid = (lo + hi) // 2
        if calls(mid) < nfe:
            lo = mid + 1
        else:
            hi = mid
    if calls(lo) == nfe:
        return lo
    below = calls(lo - 1) if lo > 1 else None
    near = [str(c) for c in (below, calls(lo)) if c is not None and c != nfe]
    raise ScorekitError(f"no grid gives {sampler} exactly nfe={nfe} network evaluations; the nearest "
                        f"are {' and '.join(near)}; choose one of those")


# --- the reference: the probability-flow ODE solved to high accuracy ------------------------------

def probability_flow_reference(denoiser, process: GaussianProcess, x_T: Tensor, *,
                               rtol: float | None = None, atol: float | None = None,
                               method: str = "DOP853") -> Tensor:
    r"""The probability-flow ODE from ``x_T`` at ``t_max`` to the data, solved to high accuracy.

    :func:`scorekit.samplers.ode.solve_probability_flow` (scipy's adaptive Runge-Kutta in log-SNR
    time, where the right-hand side is smooth for every process) from ``t_max`` to ``t_min``, the
    last time a model is evaluated, finished with the denoising step every sampler ends with,
    ``x_0 = D(x_{t_min}, t_min)``: the limit of any convergent sampler on grids from ``t_max`` to
    ``t_min`` (the end point of ``SAMPLERS["ode_adaptive"]``); the ODE itself is singular at
    ``sigma = 0``, where no model is defined.

    The tolerances default to 1e-7 for a float64 ``x_T`` and 1e-5 otherwise: a float32 network's
    rounding (~1e-7 relative per call) is indistinguishable from truncation error to a solver
    asked for 1e-7, which then takes tiny steps (measured on a small trained MLP: 3111
    evaluations at 1e-7, 1359 at 1e-5, the results 1e-4 apart).
    """
    from .samplers.ode import solve_probability_flow

    x_T = check_start(x_T)
    tol = 1e-7 if x_T.dtype == torch.float64 else 1e-5
    rtol, atol = tol if rtol is None else float(rtol), tol if atol is None else float(atol)
    with torch.no_grad():
        solution = solve_probability_flow(denoiser, process, x_T, float(process.t_max),
                                          float(process.t_min), rtol=rtol, atol=atol, method=method,
                                          denoise_end=True)
    return solution.x


class LogSNRGrid:
    r"""The grids of the module docstring as a function of ``theta``: ``n`` model times from
    ``t_max`` down, spaced by the shares ``w = softmax(0, theta)`` of the log-SNR range
    ``[lambda(t_max), lambda(t_min)]``, then the data time.

    With ``free_last`` there are ``n`` shares (``n - 1`` gaps and the unused rest below the last
    model time), otherwise ``n - 1`` (the last model time is ``t_min``); the first logit is fixed at
    0 (softmax is unchanged by a common shift), so ``dim`` is one less than the number of shares.
    """

    #: the smallest share :meth:`params` uses for a zero gap (its logit must be finite)
    MIN_SHARE = 1e-12

    def __init__(self, process: GaussianProcess, steps: int, *, free_last: bool = True):
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ScorekitError(f"steps must be a positive integer, got {steps!r}")
        self.process, self.steps, self.free_last = process, int(steps), bool(free_last)
        self.shares = 0 if self.steps == 1 else self.steps - 1 + int(self.free_last)
        self.dim = max(self.shares - 1, 0)
        lam = process.log_snr(torch.tensor([process.t_max, process.t_min], dtype=torch.float64))
        self.lambda_max, self.lambda_min = float(lam[0]), float(lam[1])   # lambda_max < lambda_min

    def timesteps(self, theta) -> Tensor:
        """The float64 grid (``n`` model times, then the data time) for the parameters ``theta``."""
        p = self.process
        if self.shares == 0:
            model = torch.tensor([float(p.t_max)], dtype=torch.float64)
        else:
            logits = torch.cat([torch.zeros(1, dtype=torch.float64),
                                torch.as_tensor(np.asarray(theta, dtype=np.float64)).reshape(-1)])
            if logits.numel() != self.shares:
                raise ScorekitError(f"theta must have {self.dim} entries, got {logits.numel() - 1}")
            w = torch.softmax(logits, dim=0)
            cumulative = torch.cumsum(w, dim=0)[: self.steps - 1]
            lam = self.lambda_max + (self.lambda_min - self.lambda_max) * cumulative
            inner = p.t_from_log_snr(lam).to(torch.float64).clamp(float(p.t_min), float(p.t_max))
            model = torch.cat([torch.tensor([float(p.t_max)], dtype=torch.float64), inner])
            if not self.free_last:
                model[-1] = float(p.t_min)
        return torch.cat([model, torch.tensor([float(p.t_data)], dtype=torch.float64)])

    def params(self, timesteps) -> np.ndarray:
        """The ``theta`` whose grid is ``timesteps`` (a grid starting at ``t_max``; with
        ``free_last=False`` its last model time must be ``t_min``)."""
        ts = check_timesteps(timesteps)
        if ts.numel() != self.steps + 1:
            raise ScorekitError(f"the grid has {ts.numel() - 1} model times, not {self.steps}")
        if self.shares == 0:
            return np.zeros(0)
        lam = self.process.log_snr(ts[:-1].clamp(float(self.process.t_min), float(self.process.t_max)))
        lam = torch.cat([torch.tensor([self.lambda_max], dtype=torch.float64), lam[1:].to(torch.float64)])
        if self.free_last:
            lam = torch.cat([lam, torch.tensor([self.lambda_min], dtype=torch.float64)])
        else:
            lam[-1] = self.lambda_min
        w = lam.diff() / (self.lambda_min - self.lambda_max)
        w = w.clamp_min(self.MIN_SHARE)
        logits = torch.log(w) - torch.log(w[0])
        return logits[1:].numpy().astype(np.float64)


def log_snr_timesteps(process: GaussianProcess, steps: int) -> Tensor:
    """Model times uniform in log-SNR from ``t_max`` to ``t_min``, then the data time."""
    grid = LogSNRGrid(process, steps, free_last=False)
    return grid.timesteps(np.zeros(grid.dim))


# --- tuning ---------------------------------------------------------------------------------------

def mean_squared_error(x: Tensor, reference: Tensor) -> float:
    """``mean((x - reference)^2)`` over every element, in float64."""
    return float((x.detach().to(torch.float64) - reference.detach().to(torch.float64)).pow(2).mean())


def tune_timesteps(denoiser, process: GaussianProcess, sampler: str, nfe: int, x_T: Tensor, *,
                   reference: Tensor | None = None, init: str = "best",
                   max_evals: int = DEFAULT_MAX_EVALS, free_last: bool = True,
                   metric: Callable[[Tensor, Tensor], float] | None = None,
                   generator: torch.Generator | None = None, progress: bool = False,
                   **sampler_options) -> TunedSchedule:
    r"""Choose the time steps on which ``sampler`` with ``nfe`` network evaluations comes closest
    to the probability-flow ODE from ``x_T`` (see the module docstring for the method).

    Args:
        denoiser: ``D(x_t, t) -> x0_pred``.
        process: the forward process.
        sampler: a deterministic sampler in :data:`scorekit.samplers.SAMPLERS` (e.g. ``"ddim"``).
        nfe: network evaluations per sample; a single-step solver of order ``k`` gets a grid of
            about ``nfe / k`` steps (:func:`steps_for_nfe`).
        x_T: the batch of noise to tune on, shape ``(N, ...)`` (64-256 samples are plenty).
        reference: the ODE solution from ``x_T`` if already known (default:
            :func:`probability_flow_reference`).
        init: start from the sampler's ``"default"`` grid, the ``"log_snr"``-uniform grid, or the
            ``"best"`` of the two.
        max_evals: the most sampler runs the optimiser may make.
        free_last: let the last model time move within ``[t_min, t_max]`` (else it is ``t_min``).
        metric: ``metric(x0, reference) -> float`` to minimise (default: mean squared error).
        generator: passed to the sampler (a deterministic sampler draws nothing from it).
        progress: show a progress bar.
        **sampler_options: the sampler's own options (e.g. ``order`` of a multistep solver).

    Returns:
        A :class:`TunedSchedule` with the tuned grid and the errors on the default and tuned grids.
    """
    from scipy.optimize import minimize
    from tqdm.auto import tqdm

    started = time.perf_counter()
    fn = _sampler(sampler)
    options = _options(sampler, sampler_options)
    sampler_options = check_sampler_options(sampler, sampler_options)   # converted, as sample() uses them
    nfe = _check_nfe(nfe)
    if init not in INITS:
        raise ScorekitError(f"unknown init {init!r}; choose one of {', '.join(INITS)}")
    if isinstance(max_evals, bool) or not isinstance(max_evals, (int, np.integer)) or max_evals < 0:
        raise ScorekitError(f"max_evals must be a non-negative whole number, got {max_evals!r}")
    if not isinstance(process, GaussianProcess):
        raise ScorekitError(f"process must be a scorekit GaussianProcess, got {type(process).__name__}")
    x_T = check_start(x_T)
    steps = steps_for_nfe(sampler, process, nfe, **sampler_options)
    default = make_timesteps(process, steps)
    run_generator = generator if generator is not None else torch.Generator(device=x_T.device)

    def run(ts: Tensor, x: Tensor, gen: torch.Generator) -> Tensor:
        with torch.no_grad():
            return fn(denoiser, process, x, ts, generator=gen, **sampler_options)

    _check_deterministic(sampler, run, default, x_T)    # the whole batch: a denoiser may fix it
    if reference is None:
        reference = probability_flow_reference(denoiser, process, x_T)
    elif not isinstance(reference, Tensor) or reference.shape != x_T.shape:
        raise ScorekitError(f"reference must be a tensor shaped like x_T {tuple(x_T.shape)}, got "
                            f"{tuple(reference.shape) if isinstance(reference, Tensor) else type(reference).__name__}")
    measure = metric or mean_squared_error

    def error_of(ts: Tensor) -> float:
        try:
            out = run(ts, x_T, run_generator)
        except ScorekitError:              # a grid the sampler refuses counts as infinitely bad
            return math.inf
        if not torch.isfinite(out).all():
            return math.inf
        err = float(measure(out, reference))
        return err if math.isfinite(err) else math.inf

    grid = LogSNRGrid(process, steps, free_last=free_last)
    start_grids = {"default": default}
    if init in ("log_snr", "best"):
        start_grids["log_snr"] = log_snr_timesteps(process, steps)
    start_errors = {name: error_of(ts) for name, ts in start_grids.items()}
    error_default = start_errors["default"]
    if init == "best":
        init = min(start_grids, key=start_errors.get)
    error_init = start_errors[init]
    best = {"error": error_init, "timesteps": start_grids[init],
            "theta": grid.params(start_grids[init])}
    evaluations = 0
    bar = tqdm(total=max_evals, desc=f"tuning {sampler} at NFE {nfe}", disable=not progress,
               leave=False)

    def objective(theta: np.ndarray) -> float:
        nonlocal evaluations
        evaluations += 1
        bar.update(1)
        ts = grid.timesteps(theta)
        if not torch.all(ts[1:] < ts[:-1]):
            return math.inf
        err = error_of(ts)
        if err < best["error"]:
            best.update(error=err, timesteps=ts, theta=np.array(theta, dtype=np.float64))
            bar.set_postfix(error=f"{err:.4g}")
        return math.log(err) if err > 0 else -math.inf

    try:
        if grid.dim > 0 and max_evals > 0 and error_init > 0:
            # Nelder-Mead from the start grid, restarted (at most twice) from its best point with a
            # fresh simplex while that still helps (a collapsed simplex is the method's usual stall)
            for _ in range(3):
                remaining = max_evals - evaluations
                if remaining <= grid.dim + 1:
                    break
                before = best["error"]
                x0 = best["theta"]
                simplex = np.vstack([x0] + [x0 + 0.5 * e for e in np.eye(grid.dim)])
                minimize(objective, x0, method="Nelder-Mead",
                         options={"maxfev": remaining, "initial_simplex": simplex,
                                  "xatol": 1e-3, "fatol": 1e-4, "adaptive": grid.dim > 4})
                if best["error"] > before * (1 - 1e-3):
                    break
    finally:
        bar.close()

    tuned, error_tuned = best["timesteps"], best["error"]
    if error_default <= error_tuned:                 # never hand back a grid worse than the default
        tuned, error_tuned = default, error_default
    return TunedSchedule(timesteps=tuned, sampler=sampler, nfe=nfe, error_default=error_default,
                         error_tuned=error_tuned, options=options, default_timesteps=default,
                         error_init=error_init, init=init, evaluations=evaluations,
                         num_samples=int(x_T.shape[0]),
                         metric="mse" if metric is None else getattr(metric, "__name__", "custom"),
                         seconds=time.perf_counter() - started)


def _check_deterministic(sampler: str, run, timesteps: Tensor, x: Tensor) -> None:
    """Refuse a sampler whose output depends on its random generator (it has no single answer
    to compare with the ODE)."""
    a = run(timesteps, x, torch.Generator(device=x.device).manual_seed(0))
    b = run(timesteps, x, torch.Generator(device=x.device).manual_seed(1))
    if not torch.equal(a, b):
        raise ScorekitError(f"sampler {sampler!r} is stochastic with these options (it draws random "
                            f"noise); time steps can be tuned only for a deterministic sampler, such "
                            f"as ddim with eta 0")


# --- saving beside the checkpoint ---------------------------------------------------------------------

def schedules_path(path) -> str:
    """The ``schedules.json`` meant by ``path``: an explicit ``.json`` file, or the file in the
    checkpoint folder of a run folder (its newest checkpoint) or checkpoint folder."""
    from .train.checkpoint import resolve_checkpoint

    path = os.fspath(path)
    if path.lower().endswith(".json"):
        return path
    return os.path.join(resolve_checkpoint(path), SCHEDULES_FILE)


def _read_schedules(file: str) -> dict:
    from .train.checkpoint import read_json

    if not os.path.isfile(file):
        return {}
    data = read_json(file, "the tuned schedules")
    if not isinstance(data, dict) or data.get("format") != SCHEDULES_FORMAT \
            or not isinstance(data.get("schedules"), dict):
        raise ScorekitError(f"{file} is not a scorekit schedules file (expected a JSON object with "
                            f"\"format\": \"{SCHEDULES_FORMAT}\"); remove it and run scorekit tune again")
    return data["schedules"]


def save_tuned(path_or_run_dir, schedule: TunedSchedule) -> str:
    """Add ``schedule`` to ``schedules.json`` beside the checkpoint (see :func:`schedules_path`),
    replacing an entry with the same sampler, NFE and options. Written atomically: a temporary
    file flushed to disk, then ``os.replace``. Returns the file's path."""
    from .train.checkpoint import fsync_path, write_json

    file = schedules_path(path_or_run_dir)
    folder = os.path.dirname(os.path.abspath(file))
    if not os.path.isdir(folder):
        raise ScorekitError(f"the folder of {file!r} does not exist")
    schedules = _read_schedules(file)
    schedules[schedule.key] = schedule.to_json()
    tmp = os.path.join(folder, f".{os.path.basename(file)}.{os.getpid()}.tmp")
    try:
        write_json(tmp, {"format": SCHEDULES_FORMAT, "schedules": schedules})
        os.replace(tmp, file)
    except OSError as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        raise write_error(err, file) from None
    fsync_path(folder)
    return file


def load_tuned(run_dir, sampler: str, nfe: int, **options) -> TunedSchedule:
    """The grid :func:`save_tuned` stored for ``sampler`` at ``nfe`` with these options."""
    file = schedules_path(run_dir)
    _check_nfe(nfe)
    key = schedule_key(sampler, nfe, _with_defaults(sampler, options))
    entry = _read_schedules(file).get(key)
    if entry is None:
        opts = _options(sampler, options)
        flags = "".join(f" --{k.replace('_', '-')} {v}" for k, v in sorted(opts.items()))
        where = os.path.dirname(file) or "."
        missing = f"no tuned schedule for {sampler} at NFE {nfe}"
        args = "".join(f", {k}={v!r}" for k, v in sorted(opts.items()))
        raise ScorekitError(f"{missing}{' with ' + args[2:] if opts else ''} in {where}; tune one first: "
                            f"save_tuned({where!r}, tune_timesteps(denoiser, process, {sampler!r}, {nfe}, "
                            f"x_T{args}))",
                            cli=f"{missing}{' with' + flags if flags else ''} in {where}; run 'scorekit "
                                f"tune {where} --sampler {sampler} --nfe {nfe}{flags}' first")
    schedule = TunedSchedule.from_json(entry, file, key)
    if schedule.key != key:
        raise ScorekitError(f"{file}: the tuned schedule {key!r} holds the grid of {schedule.key!r}; {_RETUNE}")
    return schedule


def load_tuned_for_steps(run_dir, process: GaussianProcess, sampler: str, steps: int,
                         **options) -> TunedSchedule:
    """The saved grid of ``steps`` model times for ``sampler`` (its NFE is counted first), checked
    against ``process``: it starts at ``t_max``, ends at the data time and stays in
    ``[t_min, t_max]`` in between, as :func:`tune_timesteps` makes every grid."""
    options = check_sampler_options(sampler, options)
    nfe = count_nfe(sampler, process, steps, **options)
    schedule = load_tuned(run_dir, sampler, nfe, **options)
    made = nfe if schedule.steps == steps else count_nfe(sampler, process, schedule.steps, **options)
    if made != nfe:
        raise ScorekitError(f"{schedules_path(run_dir)}: the tuned schedule {schedule.key!r} holds {schedule.steps} "
                            f"model time(s), on which {sampler} makes {made} network evaluations, not {nfe}; "
                            f"{_RETUNE}")
    ts = schedule.timesteps
    if ts[0].item() != float(process.t_max) or ts[-1].item() != float(process.t_data) \
            or bool((ts[:-1] < float(process.t_min)).any()):
        raise ScorekitError(f"{schedules_path(run_dir)}: the tuned schedule {schedule.key!r} runs from "
                            f"t = {ts[0].item():g} to {ts[-1].item():g}, not from t_max = {process.t_max:g} "
                            f"to the data time {process.t_data:g} within [t_min, t_max]; {_RETUNE}")
    return schedule


__all__ = ["DEFAULT_MAX_EVALS", "INITS", "LogSNRGrid", "SCHEDULES_FILE", "TunedSchedule",
           "count_nfe", "load_tuned", "load_tuned_for_steps", "log_snr_timesteps",
           "mean_squared_error", "probability_flow_reference", "save_tuned", "schedule_key",
           "schedules_path", "steps_for_nfe", "tune_timesteps"]
