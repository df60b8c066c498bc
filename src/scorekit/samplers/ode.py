r"""Probability-flow ODE samplers: Euler, Heun and an adaptive Runge-Kutta solver.

Every process of :mod:`scorekit.processes` has the probability-flow ODE (Song et al. 2021, eq. 13)

    dx/dt = f(t) x - g(t)^2 / 2 * score(x, t),

whose solutions carry ``p_T`` to ``p_0`` with the same marginals as the SDE. The score comes from
the denoiser by Tweedie's formula, ``score = (alpha_t x0_pred - x) / sigma_t^2``, so

    dx/dt = (f + g^2 / (2 sigma^2)) x - g^2 alpha / (2 sigma^2) x0_pred            (1)

written with ``f``, ``g2``, ``alpha`` and ``sigma`` of the process only (no branch on its kind).

**The end point.** At the data time ``sigma = 0`` and (1) is singular: for variance-preserving
processes ``sigma ~ sqrt(t - t_data)``, so one Euler step in ``t`` onto the data lands about halfway
between ``x_t`` and ``x0_pred`` whatever the step size; for the geometric VE SDE the data time is
``-inf``. A step that ends where ``sigma = 0`` therefore returns ``x0_pred`` of its start point.
This is the exact limit of the DDIM / exponential-integrator step ``x_s = alpha_s x0_pred +
sigma_s eps_pred`` at ``sigma_s = 0`` and coincides with Euler's step in EDM's variable ``sigma``
(``x + (0 - sigma)(x - x0_pred) / sigma = x0_pred``); the model is never evaluated at ``sigma = 0``.
A grid that ends at a time with ``sigma > 0`` is integrated to that time like any other step.

* :func:`ode_euler` -- Euler's method on the given grid, one evaluation per step.
* :func:`ode_heun` -- Heun's second-order method (Karras et al. 2022, Algorithm 1 without
  churn) on the given grid: two evaluations per step, one for a final step to ``sigma = 0``.
* :func:`ode_adaptive` -- SciPy's adaptive Runge-Kutta solvers from the grid's first time to its
  end, integrating in the log-SNR, where the ODE is smooth and not stiff for every process
  (:func:`log_snr_flow_coefficients`); :func:`solve_probability_flow` gives the same with its
  evaluation count.

Why SciPy and not torchdiffeq: ``scipy.integrate.solve_ivp`` is already installed (scikit-learn
depends on it), is widely used and tested, offers RK45 (Dormand-Prince 5(4)) and DOP853 (8th order)
with dense error control, and is the oracle our tests use. torchdiffeq would add a dependency;
its advantages -- GPU-resident state and adjoint back-propagation through the solve -- matter for
training through an ODE, not for sampling or likelihood evaluation, where the cost is the network
evaluations. The price is a host copy of the state per evaluation, small next to a network call.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

from ..errors import ScorekitError, positive_number
from ..processes import GaussianProcess
from ._common import Callback, check_start, grid, progress_range

Tensor = torch.Tensor

#: the explicit Runge-Kutta methods of ``scipy.integrate.solve_ivp`` that :func:`ode_adaptive` accepts
ADAPTIVE_METHODS = ("RK45", "DOP853", "RK23")


def flow_coefficients(process: GaussianProcess, t) -> tuple[float, float]:
    r"""``(a, b)`` with ``dx/dt = a x - b x0_pred``, eq. (1) of the module:
    ``a = f + g^2 / (2 sigma^2)`` and ``b = g^2 alpha / (2 sigma^2)`` (Song et al. 2021, eq. 13
    with Tweedie's score ``(alpha x0_pred - x) / sigma^2``), as python floats (float64 maths)."""
    t = torch.as_tensor(t, dtype=torch.float64)
    f, g2 = process.f(t).item(), process.g2(t).item()
    alpha, sigma = process.alpha(t).item(), process.sigma(t).item()
    scale = g2 / (2.0 * sigma ** 2)
    return f + scale, scale * alpha


def probability_flow(denoiser, process: GaussianProcess, x: Tensor, t: float) -> tuple[Tensor, Tensor]:
    r"""``(dx/dt, x0_pred)`` at ``(x, t)``: the probability-flow velocity (module eq. 1) from one
    denoiser evaluation ``x0_pred = D(x, t)``."""
    x0_pred = denoiser(x, t)
    a, b = flow_coefficients(process, t)
    return a * x - b * x0_pred, x0_pred


def log_snr_flow_coefficients(process: GaussianProcess, log_snr: float) -> tuple[float, float, float]:
    r"""``(t, c_x, c_x0)`` with ``dx/dlambda = c_x x + c_x0 x0_pred``: the probability-flow ODE
    (module eq. 1) with the log-SNR ``lambda = log(alpha^2 / sigma^2)`` as the independent variable.

    Since ``dlambda/dt = 2 f - (d sigma^2/dt) / sigma^2 = -g^2 / sigma^2``, dividing eq. 1 by it gives

        dx/dlambda = -(sigma^2 f / g^2 + 1/2) x + (alpha / 2) x0_pred,   t = t(lambda),

    where ``-sigma^2 f / g^2 = d log alpha / dlambda`` (Lu et al. 2022, DPM-Solver, eq. 3-4 in the
    denoiser form). Both coefficients are smooth functions of ``lambda`` for every process (for
    DDPM the piecewise-constant slope of ``log alpha_bar`` cancels between ``f`` and ``g^2``), and
    they are bounded (``c_x`` lies in ``[-1/2, 0]`` for the processes here), so the ODE is neither
    discontinuous nor stiff near the data in this variable.
    """
    t = process.t_from_log_snr(torch.tensor(float(log_snr), dtype=torch.float64))
    f, g2 = process.f(t).item(), process.g2(t).item()
    alpha, sigma = process.alpha(t).item(), process.sigma(t).item()
    return t.item(), -(sigma ** 2 * f / g2 + 0.5), 0.5 * alpha


class LogSNRSpan:
    """The span of an adaptive probability-flow solve in the log-SNR, from ``t_start`` to ``t_end``:
    its end points ``start`` / ``end``, the flow coefficients at a log-SNR on it, and a progress
    bar over the share of the span covered (shared by the ODE sampler and the ODE likelihood)."""

    def __init__(self, process: GaussianProcess, t_start: float, t_end: float, *, desc: str, progress: bool):
        self.process, self.t_start = process, t_start
        self.start, self.end = (process.log_snr(torch.tensor(t, dtype=torch.float64)).item()
                                for t in (t_start, t_end))
        self.bar = tqdm(total=1000, desc=desc, disable=not progress, leave=False)
        self._done = 0

    def coefficients(self, log_snr: float) -> tuple[float, float, float]:
        """``log_snr_flow_coefficients`` at ``log_snr``; at the start, the given ``t_start``
        rather than its round trip through ``t_from_log_snr``."""
        t, c_x, c_x0 = log_snr_flow_coefficients(self.process, log_snr)
        return (self.t_start if log_snr == self.start else t), c_x, c_x0

    def advance(self, log_snr: float) -> None:
        """Move the progress bar to ``log_snr`` (never back: the solver tries steps it rejects)."""
        now = int(1000 * min(1.0, abs(log_snr - self.start) / abs(self.end - self.start)))
        if now > self._done:
            self.bar.update(now - self._done)
            self._done = now

    def close(self) -> None:
        self.bar.close()


def _is_data_time(process: GaussianProcess, t: float) -> bool:
    return process.sigma(torch.tensor(t, dtype=torch.float64)).item() == 0.0


def ode_euler(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
              generator: torch.Generator | None = None, callback: Callback | None = None,
              progress: bool = False) -> Tensor:
    r"""Euler's method for the probability-flow ODE on the grid ``t_0 > ... > t_n``:

        x_{i+1} = x_i + (t_{i+1} - t_i) v(x_i, t_i),   v = (f + g^2/(2 sigma^2)) x - g^2 alpha/(2 sigma^2) D(x, t)

    (Song et al. 2021, eq. 13). A step onto a time with ``sigma = 0`` returns ``D(x_i, t_i)``
    (see the module notes). First order in the step size; deterministic (``generator`` unused).
    ``callback(i, t, x_t, x0_pred)`` after each of the ``n`` network evaluations.
    """
    x = check_start(x_T)
    times = grid(process, timesteps).tolist()
    last_is_data = _is_data_time(process, times[-1])
    for i in progress_range(len(times) - 1, progress, "ode euler"):
        v, x0_pred = probability_flow(denoiser, process, x, times[i])
        if callback is not None:
            callback(i, times[i], x, x0_pred)
        if i == len(times) - 2 and last_is_data:
            return x0_pred
        x = x + (times[i + 1] - times[i]) * v
    return x


def ode_heun(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    r"""Heun's method (explicit trapezoidal rule) for the probability-flow ODE on the grid:

        x~ = x_i + h v(x_i, t_i),   x_{i+1} = x_i + h/2 (v(x_i, t_i) + v(x~, t_{i+1})),   h = t_{i+1} - t_i

    (Karras et al. 2022, Algorithm 1 with no churn; ``v`` as in :func:`ode_euler`). A step onto a
    time with ``sigma = 0`` returns ``D(x_i, t_i)`` and costs one evaluation, because the velocity
    cannot be evaluated there (module notes); every other step costs two, so a grid of ``n`` model
    times ending at the data uses ``2n - 1`` evaluations. Second order where the coefficients are
    smooth (for DDPM, ``f`` and ``g^2`` jump by ``beta_{t+1} - beta_t`` at each integer step, a
    small first-order term). ``callback(i, t, x_t, x0_pred)`` fires at every evaluation, ``i``
    counting evaluations.
    """
    x = check_start(x_T)
    times = grid(process, timesteps).tolist()
    last_is_data = _is_data_time(process, times[-1])
    evaluations = 0

    def evaluate(x, t):
        nonlocal evaluations
        v, x0_pred = probability_flow(denoiser, process, x, t)
        if callback is not None:
            callback(evaluations, t, x, x0_pred)
        evaluations += 1
        return v, x0_pred

    for i in progress_range(len(times) - 1, progress, "ode heun"):
        v, x0_pred = evaluate(x, times[i])
        if i == len(times) - 2 and last_is_data:
            return x0_pred
        h = times[i + 1] - times[i]
        x_euler = x + h * v
        v_next, _ = evaluate(x_euler, times[i + 1])
        x = x + 0.5 * h * (v + v_next)
    return x


@dataclass
class OdeSolution:
    """The result of :func:`solve_probability_flow`.

    Attributes:
        x: the state at ``t_end`` (or ``x0_pred`` there, with ``denoise_end``), shaped like ``x_T``.
        nfe: network evaluations, including the final denoising one.
        num_steps: accepted solver steps.
        t_end: the time the ODE was integrated to.
    """

    x: Tensor
    nfe: int
    num_steps: int
    t_end: float


def solve_probability_flow(denoiser, process: GaussianProcess, x_T: Tensor, t_start: float,
                           t_end: float, *, rtol: float = 1e-5, atol: float = 1e-5,
                           method: str = "RK45", denoise_end: bool = False,
                           callback: Callback | None = None, progress: bool = False) -> OdeSolution:
    r"""Solve the probability-flow ODE (module eq. 1) from ``x_T`` at ``t_start`` to ``t_end``
    with ``scipy.integrate.solve_ivp`` and report the number of network evaluations.

    The solver integrates in the log-SNR ``lambda`` (:func:`log_snr_flow_coefficients`) rather
    than in ``t``: there the right-hand side is smooth for every process. In ``t``, DDPM's ``f`` and
    ``g^2`` jump at every integer step; Runge-Kutta error estimates do not see such kinks, and a
    solve in ``t`` stalled at an error of ~1e-3 whatever the tolerance (Gaussian data, 999 -> 0).

    The whole batch is one ODE system of ``N * D`` unknowns in float64: the solver's step size and
    error control are shared by all samples (the error norm is the RMS over every coordinate), so
    a sample's result depends on its batch mates within the tolerance, and the number of
    evaluations is that of the hardest sample. The denoiser is called in ``x_T``'s dtype and device.

    Args:
        t_start, t_end: times with ``sigma > 0`` (the ODE is singular at ``sigma = 0``).
        rtol, atol: the solver's relative and absolute tolerances (per coordinate).
        method: ``"RK45"`` (Dormand-Prince 5(4)), ``"DOP853"`` (order 8) or ``"RK23"``.
        denoise_end: return ``D(x(t_end), t_end)`` instead of ``x(t_end)`` (one more evaluation).
        callback: ``callback(i, t, x_t, x0_pred)`` at every evaluation, ``i`` counting them.
        progress: show a progress bar over the time interval.
    """
    x = check_start(x_T)
    rtol, atol = positive_number(rtol, "rtol"), positive_number(atol, "atol")
    if method not in ADAPTIVE_METHODS:
        raise ScorekitError(f"unknown ODE method {method!r}; choose one of {', '.join(ADAPTIVE_METHODS)}")
    t_start, t_end = float(t_start), float(t_end)
    for name, t in (("t_start", t_start), ("t_end", t_end)):
        if not math.isfinite(t) or _is_data_time(process, t):
            raise ScorekitError(f"{name}={t} must be a finite time with sigma > 0 (the probability-flow "
                                "ODE is singular at the data)")
    from scipy.integrate import solve_ivp

    shape, dtype, device = x.shape, x.dtype, x.device
    nfe = 0
    span = LogSNRSpan(process, t_start, t_end, desc=f"ode {method}", progress=progress)

    def rhs(lam, y):
        nonlocal nfe
        t, c_x, c_x0 = span.coefficients(lam)
        xt = torch.from_numpy(y).reshape(shape).to(dtype=dtype, device=device)
        x0_pred = denoiser(xt, t)
        if callback is not None:
            callback(nfe, t, xt, x0_pred)
        nfe += 1
        span.advance(lam)
        return (c_x * xt + c_x0 * x0_pred).detach().to(torch.float64).cpu().numpy().ravel()

    try:
        with torch.no_grad():
            y0 = x.detach().to(torch.float64).cpu().numpy().ravel()
            if t_start == t_end:
                y_end, steps = y0, 0
            else:
                sol = solve_ivp(rhs, (span.start, span.end), y0, method=method, rtol=rtol, atol=atol)
                if sol.status != 0:
                    raise ScorekitError(f"the ODE solver ({method}) failed: {sol.message}; try looser "
                                        "rtol/atol or another method")
                y_end, steps = sol.y[:, -1], int(sol.t.size - 1)
            out = torch.from_numpy(np.ascontiguousarray(y_end)).reshape(shape).to(dtype=dtype, device=device)
            if denoise_end:
                x0_pred = denoiser(out, t_end)
                if callback is not None:
                    callback(nfe, t_end, out, x0_pred)
                nfe += 1
                out = x0_pred
    finally:
        span.close()
    return OdeSolution(x=out, nfe=nfe, num_steps=steps, t_end=t_end)


def ode_adaptive(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, rtol: float = 1e-5,
                 atol: float = 1e-5, method: str = "RK45", generator: torch.Generator | None = None,
                 callback: Callback | None = None, progress: bool = False) -> Tensor:
    r"""The probability-flow ODE (Song et al. 2021, eq. 13) solved by an adaptive Runge-Kutta method
    (``scipy.integrate.solve_ivp``) from the grid's first time ``t_0`` to its end.

    Only the grid's first time and its end time matter; the solver picks its own steps (so
    ``num_steps`` of :func:`scorekit.sample` does not set the cost). If the end time has
    ``sigma = 0`` (the data), the ODE is integrated down to the process's lowest model time
    ``t_min`` and the result is ``D(x(t_min), t_min)`` (the singular end point, see the module
    notes). Otherwise it integrates to the end time itself.

    The whole batch is one ODE system with a shared step size (see
    :func:`solve_probability_flow`, which also returns the evaluation count). The number of network
    evaluations (NFE) is not fixed: ``callback(i, t, x_t, x0_pred)`` fires at every evaluation
    (``i`` counting them), so counting its calls gives the NFE.

    Args:
        rtol, atol: relative and absolute tolerances of the solver.
        method: ``"RK45"`` (default), ``"DOP853"`` or ``"RK23"``.
    """
    times = grid(process, timesteps).tolist()
    if _is_data_time(process, times[-1]):
        t_end, denoise_end = min(times[-2], float(process.t_min)), True
    else:
        t_end, denoise_end = times[-1], False
    return solve_probability_flow(denoiser, process, x_T, times[0], t_end, rtol=rtol, atol=atol,
                                  method=method, denoise_end=denoise_end, callback=callback,
                                  progress=progress).x


__all__ = ["ADAPTIVE_METHODS", "LogSNRSpan", "OdeSolution", "flow_coefficients", "log_snr_flow_coefficients",
           "ode_adaptive", "ode_euler", "ode_heun", "probability_flow", "solve_probability_flow"]
