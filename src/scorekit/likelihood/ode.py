r"""Exact log-likelihood through the probability-flow ODE (Song et al. 2021, appendix D.2;
Chen et al. 2018 and Grathwohl et al. 2019, FFJORD).

The probability-flow ODE ``dx/dt = v(x, t)`` (see :mod:`scorekit.samplers.ode`) moves ``p_t`` along
its solutions, and by the continuity equation ``d log p_t(x_t) / dt = -div v(x_t, t)``. Integrating
from ``t_eps`` to ``T = process.t_max``:

    log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^{T} div v(x_t, t) dt,                    (1)

with ``x_T`` the end of the solution started at ``x``. ``x`` and the log-density change
``delta = int div v dt`` are integrated together as one ODE by ``scipy.integrate.solve_ivp``
(RK45), in the log-SNR ``lambda`` instead of ``t`` (``delta = int div_x (dx/dlambda) dlambda``
by the change of variables), where the right-hand side is smooth and not stiff for every process
(see :func:`scorekit.samplers.ode.log_snr_flow_coefficients`).
``log p_T`` is the process's prior ``N(0, prior_std^2 I)``, which is what the model samples from.

**The divergence.** With Tweedie's score, ``dx/dlambda = c_x x + c_x0 D(x, t)`` with
``c_x = -(sigma^2 f / g^2 + 1/2)`` and ``c_x0 = alpha / 2`` (``v = a x - b D`` in ``t``, with
``a = f + g^2 / (2 sigma^2)``, ``b = g^2 alpha / (2 sigma^2)``, divided by ``dlambda/dt = -g^2 / sigma^2``), so

    div_x (dx/dlambda) = c_x dim + c_x0 tr(dD/dx).

``divergence="exact"`` computes the trace with one backward pass per dimension (for small
dimensions). ``divergence="hutchinson"`` uses ``tr(J) = E[e^T J e]`` for probes with ``E[e e^T] = I``
(Hutchinson 1989): one vector-Jacobian product per probe, Rademacher (``+-1``) or Gaussian,
averaged over ``num_probes``. The probes are drawn once per solve (fixed along the trajectory, as
in FFJORD), so the ODE stays deterministic and, because the trajectory ``x_t`` does not depend on
them, the estimate of ``log p`` is unbiased. Rademacher probes have the smaller variance
``2 sum_{i != j} J_ij^2`` (Gaussian: ``2 ||J||_F^2``), and none at all for a diagonal Jacobian.

**Where the integral starts.** The ODE is singular at the data (``sigma = 0``) and a network is
trained only down to ``process.t_min``, so the integral starts at ``t_eps`` (default
``process.t_min``) and (1) is the exact log-density of ``x`` under ``p_{t_eps}``, the model's
density of ``alpha x_0 + sigma eps`` at that time; for data whose finest scale is well above
``sigma(t_eps)`` this is the data density (Song et al. use ``t_eps = 1e-5`` for the VP SDE).

**Bits per dimension.** For continuous data ``bpd = -log p(x) / (D ln 2)``. For ``b``-bit data
(``data_bits=b``, ``L = 2^b`` levels ``x = 2 k / (L - 1) - 1``, ``k = 0 .. L-1``, as images scaled to
``[-1, 1]``) uniform dequantisation (Theis et al. 2016; Ho et al. 2020 and Song et al. 2021 use
the same) turns the discrete ``k`` into the continuous ``y = (k + u) / L`` on ``[0, 1]`` with
``u ~ U[0, 1)``, i.e. ``k / L`` plus noise uniform on ``[0, 1/L)``; the bins tile ``[0, 1]``. The
model density is on ``z = 2 y - 1``, where each bin has width ``w = 2 / L``. The model's probability
of ``k`` is ``P(k) = int_bin p(z) dz = w^D E_u[p(z)]``, so by Jensen's inequality

    -log2 P(k) <= E_u[-log2 p(z)] - D log2 w,
    bpd = -(log p(z) + D log(2 / L)) / (D ln 2) = -log p(z) / (D ln 2) + b - 1,

an upper bound (in expectation over ``u``) on the model's discrete negative log-likelihood of the
``b``-bit data, in bits per dimension: the usual figure for 8-bit images (``b - 1 = 7``). The
estimate of one sample uses one draw of ``u``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import ScorekitError, positive_number
from ..processes import GaussianProcess
from ..samplers.ode import LogSNRSpan

Tensor = torch.Tensor

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")


@dataclass
class OdeLikelihood:
    """The result of :func:`ode_likelihood` (per-sample tensors are float64 of shape (N,)).

    Attributes:
        log_likelihood: ``log p_{t_eps}(x)`` in nats, of the continuous density (at the
            dequantised point when ``data_bits`` is given) = ``prior_log_prob + delta_log_prob``.
        bits_per_dim: per sample (the dequantised bound for discrete data, module notes).
        mean_bpd: the mean of ``bits_per_dim``.
        stderr_bpd: its standard error over the samples, ``std / sqrt(N)`` (NaN for one sample).
        nfe: network evaluations of the solve (each with its divergence).
        prior_log_prob: ``log p_T(x_T)`` under the process's prior.
        delta_log_prob: ``int_{t_eps}^{T} div v(x_t, t) dt``.
        x_T: the end of the ODE, the latent code of each sample.
        t_eps: the time the integral started at.
        data_bits: the bit depth used for dequantisation, or None.
    """

    log_likelihood: Tensor
    bits_per_dim: Tensor
    mean_bpd: float
    stderr_bpd: float
    nfe: int
    prior_log_prob: Tensor
    delta_log_prob: Tensor
    x_T: Tensor
    t_eps: float
    data_bits: int | None = None


def is_quantized(x: Tensor, data_bits: int) -> bool:
    """Whether every value of ``x`` lies on the ``2^b`` levels ``2 k / (2^b - 1) - 1`` of ``[-1, 1]``
    (within 1e-3 of a level spacing, for float32 data)."""
    levels = 2 ** _check_bits(data_bits)
    scaled = (x.detach().to(torch.float64) + 1) * 0.5 * (levels - 1)
    k = torch.round(scaled)
    if x.numel() == 0:
        return True
    return bool((scaled - k).abs().max() <= 1e-3 and k.min() >= 0 and k.max() <= levels - 1)


def dequantize(x: Tensor, data_bits: int, generator: torch.Generator) -> Tensor:
    r"""Uniform dequantisation of ``b``-bit data in ``[-1, 1]``: ``x = 2 k / (L - 1) - 1`` becomes
    ``z = 2 (k + u) / L - 1`` with ``u ~ U[0, 1)`` per coordinate, ``L = 2^b`` (module notes).

    Raises ScorekitError if ``x`` is not on the ``L`` levels (within 1e-3 of a level spacing).
    """
    bits = _check_bits(data_bits)
    levels = 2 ** bits
    k = torch.round((x.detach().to(torch.float64) + 1) * 0.5 * (levels - 1))
    if not is_quantized(x, bits):
        raise ScorekitError(
            f"data_bits={bits}: the data are not on the {levels} levels 2k/{levels - 1} - 1 of "
            f"{bits}-bit values in [-1, 1]; give the right bit depth, or data_bits=None for the "
            "continuous density")
    u = torch.rand(x.shape, generator=generator, dtype=torch.float64).to(x.device)
    return (2 * (k + u) / levels - 1).to(x.dtype)


def bits_per_dim(log_likelihood: Tensor, dim: int, data_bits: int | None = None) -> Tensor:
    r"""``-log p / (D ln 2)``, plus ``b - 1`` for ``b``-bit data dequantised to ``[-1, 1]`` (the log
    of the bin width ``2 / 2^b`` per dimension; module notes)."""
    bpd = -log_likelihood / (dim * math.log(2))
    return bpd if data_bits is None else bpd + (_check_bits(data_bits) - 1)


def ode_likelihood(denoiser, process: GaussianProcess, x: Tensor, *, divergence: str = "hutchinson",
                   probe: str = "rademacher", num_probes: int = 1, rtol: float = 1e-5,
                   atol: float = 1e-5, t_eps: float | None = None, data_bits: int | None = None,
                   generator: torch.Generator | None = None, progress: bool = False) -> OdeLikelihood:
    r"""Log-likelihood of ``x`` through the probability-flow ODE, eq. (1) of the module:
    ``log p_{t_eps}(x) = log p_T(x_T) + int_{t_eps}^T div v(x_t, t) dt``.

    The batch is one ODE system solved by SciPy's RK45 with a shared step size (the number of
    evaluations is that of the hardest sample); split large data into batches.

    Args:
        denoiser: ``D(x_t, t) -> x0_pred``, differentiable in ``x_t`` (not under ``torch.no_grad``)
            and treating samples independently (no batch statistics).
        process: the forward process.
        x: data ``(N, ...)``; with ``data_bits`` on the ``2^b`` levels of ``[-1, 1]``.
        divergence: ``"hutchinson"`` (unbiased estimate, one backward pass per probe) or
            ``"exact"`` (one backward pass per dimension).
        probe: ``"rademacher"`` or ``"gaussian"`` probes for Hutchinson's estimator.
        num_probes: probes averaged per evaluation (>= 1).
        rtol, atol: the solver's tolerances.
        t_eps: the start time (default ``process.t_min``); needs ``sigma(t_eps) > 0``.
        data_bits: dequantise ``b``-bit data and report the discrete bits/dim bound.
        generator: the source of the dequantisation noise (drawn first) and of the probes;
            required for either.
        progress: show a progress bar over the time interval.
    """
    x = _check_data(x)
    if divergence not in DIVERGENCES:
        raise ScorekitError(f"unknown divergence {divergence!r}; choose one of {', '.join(DIVERGENCES)}")
    if probe not in PROBES:
        raise ScorekitError(f"unknown probe {probe!r}; choose one of {', '.join(PROBES)}")
    if isinstance(num_probes, bool) or not isinstance(num_probes, (int, np.integer)) or num_probes < 1:
        raise ScorekitError(f"num_probes must be a positive integer, got {num_probes!r}")
    rtol, atol = positive_number(rtol, "rtol"), positive_number(atol, "atol")
    t_start = _check_t_eps(process, t_eps)
    t_end = float(process.t_max)
    needs_noise = divergence == "hutchinson" or data_bits is not None
    if needs_noise and not isinstance(generator, torch.Generator):
        what = "Hutchinson probes" if divergence == "hutchinson" else "dequantisation noise"
        raise ScorekitError(f"ode_likelihood draws {what}: pass generator=torch.Generator().manual_seed(seed)")

    z = x if data_bits is None else dequantize(x, data_bits, generator)
    shape, dtype, device = z.shape, z.dtype, z.device
    n, dim = shape[0], z[0].numel()
    probes = None
    if divergence == "hutchinson":
        draw = (num_probes, *shape)
        if probe == "rademacher":
            probes = torch.randint(0, 2, draw, generator=generator, dtype=torch.int64).to(dtype) * 2 - 1
        else:
            probes = torch.randn(draw, generator=generator, dtype=dtype)
        probes = probes.to(device)

    nfe = 0
    span = LogSNRSpan(process, t_start, t_end, desc="ode likelihood", progress=progress)

    def rhs(lam, y):
        nonlocal nfe
        t, c_x, c_x0 = span.coefficients(lam)
        xt = torch.from_numpy(y[: n * dim]).reshape(shape).to(dtype=dtype, device=device)
        with torch.enable_grad():
            xt.requires_grad_(True)
            x0_pred = denoiser(xt, t)
            trace = _jacobian_trace(x0_pred, xt, probes)
        nfe += 1
        velocity = c_x * xt.detach() + c_x0 * x0_pred.detach()
        div = c_x * dim + c_x0 * trace
        span.advance(lam)
        return np.concatenate([velocity.to(torch.float64).cpu().numpy().ravel(),
                               div.to(torch.float64).cpu().numpy()])

    from scipy.integrate import solve_ivp

    y0 = np.concatenate([z.detach().to(torch.float64).cpu().numpy().ravel(), np.zeros(n)])
    try:
        sol = solve_ivp(rhs, (span.start, span.end), y0, method="RK45", rtol=rtol, atol=atol)
    finally:
        span.close()
    if sol.status != 0:
        raise ScorekitError(f"the likelihood ODE solve failed: {sol.message}; try looser rtol/atol")
    y_end = torch.from_numpy(np.ascontiguousarray(sol.y[:, -1]))
    x_T = y_end[: n * dim].reshape(shape)
    delta = y_end[n * dim:]
    prior = process.prior_log_prob(x_T).to(torch.float64)
    log_likelihood = prior + delta
    bpd = bits_per_dim(log_likelihood, dim, data_bits)
    stderr = bpd.std().item() / math.sqrt(n) if n > 1 else float("nan")
    return OdeLikelihood(log_likelihood=log_likelihood, bits_per_dim=bpd, mean_bpd=bpd.mean().item(),
                         stderr_bpd=stderr, nfe=nfe, prior_log_prob=prior, delta_log_prob=delta,
                         x_T=x_T.to(dtype), t_eps=t_start,
                         data_bits=None if data_bits is None else _check_bits(data_bits))


def _jacobian_trace(out: Tensor, x: Tensor, probes: Tensor | None) -> Tensor:
    r"""Per-sample ``tr(d out / d x)``: exactly (one backward pass per dimension) when ``probes``
    is None, else Hutchinson's ``mean_e e^T (d out / d x) e`` over the probes ``(P, *x.shape)``."""
    if not out.requires_grad:
        raise ScorekitError("the likelihood needs the denoiser's gradient with respect to x_t, but its "
                            "output does not depend on x_t through autograd (is it run under "
                            "torch.no_grad, or does it detach its input?)")
    n = x.shape[0]
    flat = out.reshape(n, -1)
    if probes is None:
        trace = torch.zeros(n, dtype=torch.float64, device=x.device)
        dim = flat.shape[1]
        for j in range(dim):
            (grad,) = torch.autograd.grad(flat[:, j].sum(), x, retain_graph=j < dim - 1, allow_unused=True)
            if grad is not None:
                trace += grad.reshape(n, -1)[:, j].to(torch.float64)
        return trace
    total = torch.zeros(n, dtype=torch.float64, device=x.device)
    for p, e in enumerate(probes):
        (grad,) = torch.autograd.grad((out * e).sum(), x, retain_graph=p < len(probes) - 1, allow_unused=True)
        if grad is not None:
            total += (grad * e).reshape(n, -1).sum(1).to(torch.float64)
    return total / len(probes)


def _check_data(x) -> Tensor:
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise ScorekitError(f"x must be a floating-point torch.Tensor, got "
                            f"{x.dtype if isinstance(x, Tensor) else type(x).__name__}")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ScorekitError(f"x must have shape (N, ...) with N >= 1 samples, got {tuple(x.shape)}")
    if not torch.isfinite(x).all():
        raise ScorekitError("x contains NaN or infinite values")
    return x


def _check_bits(data_bits) -> int:
    if isinstance(data_bits, bool) or not isinstance(data_bits, (int, np.integer)) or not 1 <= data_bits <= 16:
        raise ScorekitError(f"data_bits must be a whole number from 1 to 16 (8 for 8-bit images), "
                            f"or None for continuous data; got {data_bits!r}")
    return int(data_bits)


def _check_t_eps(process: GaussianProcess, t_eps) -> float:
    try:
        t = float(process.t_min if t_eps is None else t_eps)
    except (TypeError, ValueError):
        t = math.nan
    # sigma is read only at a finite time inside the range (a NaN time would index DDPM's table)
    if not (math.isfinite(t) and process.t_data < t < process.t_max
            and process.sigma(torch.tensor(t, dtype=torch.float64)).item() > 0):
        raise ScorekitError(f"t_eps={t_eps} must be a time with sigma > 0 between the data time "
                            f"{process.t_data} and t_max={process.t_max} (default: t_min={process.t_min})")
    return t


__all__ = ["DIVERGENCES", "OdeLikelihood", "PROBES", "bits_per_dim", "dequantize", "is_quantized",
           "ode_likelihood"]
