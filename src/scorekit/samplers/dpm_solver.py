r"""DPM-Solver++ (Lu et al. 2022b): exponential integrators for the data-prediction diffusion ODE/SDE.

Time is measured in half the log-SNR, ``lambda = log(alpha / sigma)`` (``process.log_snr`` is
``log(alpha^2 / sigma^2)``, twice this). With ``x0(lambda) = D(x_lambda, t(lambda))`` the
probability-flow ODE has the exact solution (Lu et al. 2022b, eq. 8)

    x_t = (sigma_t / sigma_s) x_s + sigma_t int_{lambda_s}^{lambda_t} e^lambda x0(lambda) dlambda.

Expanding ``x0`` in a Taylor series about ``lambda_s`` and integrating each term exactly gives,
with ``h = lambda_t - lambda_s``,

    x_t = (sigma_t / sigma_s) x_s + alpha_t sum_k psi_k(h) x0^(k)(lambda_s),
    psi_k(h) = int_0^h e^{-u} (h - u)^k / k! du     (psi_0 = 1 - e^{-h}, psi_1 = h - 1 + e^{-h}, ...);

the first-order truncation, ``psi_0`` alone, is DDIM.
The solvers differ in how they estimate the derivatives ``x0^(k)``: from earlier model calls
(multistep, Alg. 2) or from extra calls inside the step (single-step, Alg. 1).

The SDE variants (Lu et al. 2022b, appendix on SDE solvers; Gonzalez et al. 2023, "SEEDS") solve
the reverse SDE family with extra noise ``eta`` (``eta = 1``: the reverse-time SDE of the forward
process). With ``c = 1 + eta`` the exact step is

    x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t sum_k c^{-k} psi_k(c h) x0^(k)(lambda_s)
          + sigma_t sqrt(1 - e^{-2 eta h}) z,

``z ~ N(0, I)``, i.e. ``c int_{lambda_s}^{lambda_t} e^{-c (lambda_t - lambda)} x0(lambda) dlambda``
for the data term; ``eta = 0`` is the ODE step. For a point mass at ``x_0`` it keeps the marginal
``N(alpha_t x_0, sigma_t^2 I)`` exactly, and its first-order step is DDPM's ancestral step.

The end of sampling (``sigma = 0``, ``lambda = +inf``). There ``psi_0 = 1`` and
``sigma_t / sigma_s = 0``, while every ``psi_k`` with ``k >= 1`` grows like ``h^k``: a polynomial in
``lambda`` cannot be extrapolated to ``lambda = +inf``. The only finite limit is

    x_data = alpha_data x0_pred(last model time),

so the last model call is at the last model time of the grid and the step from there to the data
returns its ``x0_pred``. (At ``sigma_min`` = 0.01, DDPM's ``t = 0``, this is the end the
probability-flow ODE reaches up to O(sigma_min^2 / s^2) on components of width ``s``; ending the grid
lower, e.g. a Karras grid to ``sigma_min = 0.002`` for EDM, moves it closer.) A grid whose end time
has ``sigma > 0`` gets an ordinary full-order step instead.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..errors import ScorekitError
from ..processes import GaussianProcess
from ._common import Callback, check_generator, check_start, grid, progress_range, randn_like

Tensor = torch.Tensor


# ---------------------------------------------------------------------------------------------
# shared mathematics (also used by UniPC)
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Node:
    """One grid time with its schedule values: ``lam = log(alpha / sigma)`` (``+inf`` at the data)."""
    t: float
    alpha: float
    sigma: float
    lam: float


def nodes(process: GaussianProcess, timesteps) -> list[Node]:
    """The validated grid as :class:`Node` s (float64 schedule values as python floats)."""
    ts = grid(process, timesteps)
    alpha, sigma = process.alpha(ts), process.sigma(ts)
    lam = torch.where(sigma > 0, torch.log(alpha) - torch.log(sigma), torch.full_like(sigma, math.inf))
    return [Node(*v) for v in zip(ts.tolist(), alpha.tolist(), sigma.tolist(), lam.tolist())]


def psi(k: int, h: float) -> float:
    r"""``psi_k(h) = int_0^h e^{-u} (h - u)^k / k! du = (-1)^{k+1} (e^{-h} - sum_{j<=k} (-h)^j / j!)``
    ``= sum_{j>k} (-1)^{j-k-1} h^j / j!`` (``psi_0 = 1 - e^{-h}``, ``psi_1 = h - 1 + e^{-h}``,
    ``psi_k = h^k / k! - psi_{k-1}``; ``h^{k+1} phi_{k+1}(-h)`` in exponential-integrator notation).

    The alternating series for ``h <= 2`` (no cancellation at small ``h``), the closed form above.
    """
    if k == 0:
        return -math.expm1(-h)
    if h > 2:
        partial = sum((-h) ** j / math.factorial(j) for j in range(k + 1))
        return (-1) ** (k + 1) * (math.exp(-h) - partial)
    term = h ** (k + 1) / math.factorial(k + 1)
    total, j = 0.0, k + 1
    while abs(term) > 1e-18 * abs(total) or total == 0.0:
        total += term
        j += 1
        term *= -h / j
        if term == 0.0:
            break
    return total


def taylor_derivatives(lams: list[float], x0s: list[Tensor]) -> list[Tensor]:
    r"""``[x0, x0', x0'', ...]`` at ``lams[0]`` of the polynomial in ``lambda`` through the points
    ``(lams[j], x0s[j])`` (Newton's divided differences; up to three points).

    Two points: ``x0' = [0,1]``. Three: ``x0' = [0,1] + [0,1,2] (l0 - l1)``, ``x0'' = 2 [0,1,2]``,
    with ``[0,1] = (x0_0 - x0_1) / (l0 - l1)`` and ``[0,1,2] = ([0,1] - [1,2]) / (l0 - l2)``.
    """
    if len(lams) == 1:
        return [x0s[0]]
    d01 = (x0s[0] - x0s[1]) / (lams[0] - lams[1])
    if len(lams) == 2:
        return [x0s[0], d01]
    d12 = (x0s[1] - x0s[2]) / (lams[1] - lams[2])
    d012 = (d01 - d12) / (lams[0] - lams[2])
    return [x0s[0], d01 + (lams[0] - lams[1]) * d012, 2 * d012]


def exponential_step(x: Tensor, s: Node, t: Node, derivatives: list[Tensor], *, eta: float = 0.0,
                     noise: Tensor | None = None, midpoint: bool = False) -> Tensor:
    r"""One data-prediction exponential-integrator step from ``s`` to ``t``:

        x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t sum_k c^{-k} psi_k(c h) x0^(k)
              + sigma_t sqrt(1 - e^{-2 eta h}) z,      c = 1 + eta,  h = lambda_t - lambda_s,

    with ``derivatives = [x0, x0', ...]`` at ``lambda_s``. ``midpoint`` replaces the first-derivative
    weight ``psi_1(c h) / c`` by ``psi_0(c h) h / 2`` (equal to O(h^2)): DPM-Solver++ Alg. 1 and 2 as
    printed, ``D = x0 + (h / 2) x0'``. At the data (``sigma_t = 0``) the limit ``alpha_t x0`` is returned.
    """
    if t.sigma == 0:
        return t.alpha * derivatives[0]
    h = t.lam - s.lam
    c = 1.0 + eta
    out = (t.sigma / s.sigma * math.exp(-eta * h)) * x + (t.alpha * psi(0, c * h)) * derivatives[0]
    for k, d in enumerate(derivatives[1:], start=1):
        weight = psi(0, c * h) * h / 2 if (midpoint and k == 1) else psi(k, c * h) / c ** k
        out = out + (t.alpha * weight) * d
    if eta > 0:
        out = out + (t.sigma * math.sqrt(-math.expm1(-2 * eta * h))) * noise
    return out


#: the ``variant`` option of the DPM-Solver++ samplers
DPM_VARIANTS = ("taylor", "midpoint")


def _check_choice(name: str, value, choices) -> None:
    if value not in choices:
        raise ScorekitError(f"{name} must be one of {', '.join(map(str, choices))}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# multistep: DPM-Solver++(2M), (3M) and their SDE variants
# ---------------------------------------------------------------------------------------------

def _multistep(denoiser, process, x_T, timesteps, *, order: int, eta: float, variant: str,
               generator, callback, progress, name: str, lower_final: int = 1) -> Tensor:
    r"""DPM-Solver++ multistep (Lu et al. 2022b, Alg. 2, generalised to order 3 and to ``eta``).

    Step ``i`` (``t_i -> t_{i+1}``) uses the model calls at ``t_i, t_{i-1}, ..., t_{i-k+1}`` with
    ``k = min(order, i + 1)`` (warm-up with lower orders; no extra calls).

    Final steps. The step to the data is the limit ``x0_pred`` (module docstring). The step
    before it uses at most order 2 (``lower_final``; affects order 3 only). Measured on
    ``multiscale_2d`` (DDPM linear, RMSE to the ODE solution at 5-20 calls, trailing / log-SNR /
    Karras grids) this was better or equal in most cases: 3M at 5 calls on a Karras grid 1.30 vs
    2.09, at 20 calls on a trailing grid 0.047 vs 0.061. Grids that end at ``sigma > 0`` keep the
    full order on every step (the order is then measurable).
    """
    _check_choice("variant", variant, DPM_VARIANTS)
    x = check_start(x_T)
    if eta > 0:
        generator = check_generator(generator, f"{name} (eta > 0)")
    grid_nodes = nodes(process, timesteps)
    lams, x0s = [], []
    for i in progress_range(len(grid_nodes) - 1, progress, name):
        s, t = grid_nodes[i], grid_nodes[i + 1]
        x0 = denoiser(x, s.t)
        if callback is not None:
            callback(i, s.t, x, x0)
        lams, x0s = ([s.lam] + lams)[:order], ([x0] + x0s)[:order]
        k = order
        if lower_final and grid_nodes[-1].sigma == 0 and i == len(grid_nodes) - 3:
            k = min(order, 2)       # the step before the step to the data
        noise = randn_like(x, generator) if (eta > 0 and t.sigma > 0) else None
        x = exponential_step(x, s, t, taylor_derivatives(lams[:k], x0s[:k]), eta=eta, noise=noise,
                             midpoint=variant == "midpoint" and len(lams[:k]) == 2)
    return x


def dpmpp_2m(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, variant: str = "midpoint",
             generator: torch.Generator | None = None, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    r"""DPM-Solver++(2M) (Lu et al. 2022b, Alg. 2): second-order multistep, one model call per step,

        x_t = (sigma_t / sigma_s) x_s + alpha_t [psi_0(h) x0_s + w(h) (x0_s - x0_r) / (lambda_s - lambda_r)]

    (``r`` the previous model time; the first step is DDIM). ``variant="midpoint"`` (default) is
    Alg. 2 as printed, ``w(h) = (1 - e^{-h}) h / 2`` (diffusers' and k-diffusion's default);
    ``"taylor"`` is ``w(h) = psi_1(h) = h - 1 + e^{-h}`` (diffusers' ``solver_type="heun"``), the
    exact weight for a linear ``x0(lambda)``. Both are second order; the midpoint weight is the
    smaller (``h^2/2 - h^3/4`` against ``h^2/2 - h^3/6``, and ``h / 2`` against ``h - 1`` for long
    steps), so it extrapolates the slope of ``x0_pred`` less far over the long steps of a low-NFE
    grid, where ``x0_pred(lambda)`` bends as it settles on the data. The default is chosen on
    measurements across problems, grids and NFE, confirmed on fresh batches (BENCHMARKS.md,
    "Sampler defaults"); for 2S and 3S the Taylor weight was the better one and stays their default.
    The step to the data returns the last ``x0_pred`` (see the module docstring).

    Args:
        denoiser: ``D(x_t, t) -> x0_pred``.
        process: the forward process.
        x_T: the start, shape ``(N, ...)``.
        timesteps: descending grid of model times followed by the end time; one model call per
            model time (``NFE = len(timesteps) - 1``).
        variant: ``"taylor"`` or ``"midpoint"``.
        generator: unused (deterministic).
        callback: ``callback(i, t, x_t, x0_pred)`` after each network evaluation.
        progress: show a progress bar.
    """
    return _multistep(denoiser, process, x_T, timesteps, order=2, eta=0.0, variant=variant,
                      generator=generator, callback=callback, progress=progress, name="dpmpp_2m")


def dpmpp_3m(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
             generator: torch.Generator | None = None, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    r"""DPM-Solver++(3M): third-order multistep, one model call per step,

        x_t = (sigma_t / sigma_s) x_s + alpha_t [psi_0(h) x0 + psi_1(h) x0' + psi_2(h) x0''],

    ``x0'`` and ``x0''`` at ``lambda_s`` from the quadratic in ``lambda`` through the last three
    ``x0_pred`` (warm-up: DDIM, then 2M). Note: diffusers' and k-diffusion's 3M weight the second
    divided difference ``D2 = h^2 [0,1,2]`` (``= h^2 x0'' / 2``) by ``psi_2(h) / h^2``, half of the
    Taylor weight: their step misses ``alpha_t psi_2(h) x0'' / 2 = O(h^3)``, a second-order
    method; here the weight is exact (and the measured convergence order is 3). The step to the data returns the last
    ``x0_pred``. Arguments as :func:`dpmpp_2m`.
    """
    return _multistep(denoiser, process, x_T, timesteps, order=3, eta=0.0, variant="taylor",
                      generator=generator, callback=callback, progress=progress, name="dpmpp_3m")


def dpmpp_2m_sde(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, eta: float = 1.0,
                 variant: str = "midpoint", generator: torch.Generator | None = None,
                 callback: Callback | None = None, progress: bool = False) -> Tensor:
    r"""SDE-DPM-Solver++(2M) (Lu et al. 2022b, appendix; Gonzalez et al. 2023): with ``c = 1 + eta``,

        x_t = (sigma_t / sigma_s) e^{-eta h} x_s + alpha_t [psi_0(c h) x0_s + psi_1(c h) / c x0']
              + sigma_t sqrt(1 - e^{-2 eta h}) z,

    ``x0'`` the divided difference of the last two ``x0_pred`` in ``lambda``. ``eta = 1`` is the
    reverse-time SDE, ``eta = 0`` :func:`dpmpp_2m`; its first step is DDPM's ancestral step.
    ``variant="midpoint"`` (default, as for :func:`dpmpp_2m`, and diffusers' and k-diffusion's)
    uses the weight ``psi_0(c h) h / 2`` instead of ``psi_1(c h) / c`` (``"taylor"``). Noise is
    drawn once per step that does not end at the data.
    The step to the data returns the last ``x0_pred``.

    Args: as :func:`dpmpp_2m`, plus ``eta >= 0`` and a required ``generator``.
    """
    eta = _check_eta(eta)
    return _multistep(denoiser, process, x_T, timesteps, order=2, eta=eta, variant=variant,
                      generator=generator, callback=callback, progress=progress, name="dpmpp_2m_sde")


def dpmpp_3m_sde(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, eta: float = 1.0,
                 generator: torch.Generator | None = None, callback: Callback | None = None,
                 progress: bool = False) -> Tensor:
    r"""SDE-DPM-Solver++(3M): :func:`dpmpp_2m_sde` with the quadratic term
    ``alpha_t psi_2(c h) / c^2 x0''`` of the last three ``x0_pred`` (exact Taylor weights, see
    :func:`dpmpp_3m`). Args: as :func:`dpmpp_2m_sde`."""
    eta = _check_eta(eta)
    return _multistep(denoiser, process, x_T, timesteps, order=3, eta=eta, variant="taylor",
                      generator=generator, callback=callback, progress=progress, name="dpmpp_3m_sde")


def _check_eta(eta) -> float:
    eta = float(eta)
    if not eta >= 0:
        raise ScorekitError(f"eta must be >= 0, got {eta}")
    return eta


# ---------------------------------------------------------------------------------------------
# single-step: DPM-Solver++(2S), (3S)
# ---------------------------------------------------------------------------------------------

def step_groups(num_model_times: int, order: int, ends_at_data: bool) -> list[int]:
    """How a single-step solver groups the grid's model times into steps: the sizes, in order.

    A step of size ``k`` starts at a model time, calls the model at it and at the next ``k - 1``
    model times (its intermediate points) and lands on the model time after them (or the end).
    Steps of the full ``order`` come first and one shorter step takes the remainder. When the grid
    ends at the data, the last model time is a step of its own: its ``x0_pred`` is the sample.
    (These are diffusers' ``DPMSolverSinglestepScheduler`` orders with ``lower_order_final``.
    Putting the shorter step first instead was neither better nor worse at 5-20 calls on
    ``multiscale_2d``.) The shorter step has a lower order: for the full convergence order on a
    grid that ends at ``sigma > 0`` give a number of model times divisible by the order.
    """
    m = num_model_times - 1 if ends_at_data else num_model_times
    sizes = [order] * (m // order) + ([m % order] if m % order else [])
    return sizes + [1] if ends_at_data else sizes


def _singlestep(denoiser, process, x_T, timesteps, *, order: int, variant: str, callback, progress,
                name: str) -> Tensor:
    r"""DPM-Solver++ single-step (Lu et al. 2022b, Alg. 1; order 3: Lu et al. 2022a, Alg. 2 in the
    data-prediction form).

    A step from ``s`` over intermediate model times ``s_1 (, s_2)`` to ``t`` (see :func:`step_groups`):

    * ``u_1``: DDIM from ``s`` to ``s_1``; ``x0_1 = D(u_1, s_1)``;
    * order 2: ``x_t`` from ``x0_s`` and the slope ``(x0_1 - x0_s) / (lambda_1 - lambda_s)``;
    * order 3: ``u_2`` from ``s`` to ``s_2`` with that slope (second order), ``x0_2 = D(u_2, s_2)``,
      then ``x_t`` with ``x0'``, ``x0''`` of the quadratic through the three ``x0_pred``.

    Each update is :func:`exponential_step` with exact Taylor weights (``variant="midpoint"``: the
    printed Alg. 1 weight for the order-2 update and for ``u_2``).
    """
    _check_choice("variant", variant, DPM_VARIANTS)
    x = check_start(x_T)
    grid_nodes = nodes(process, timesteps)
    sizes = step_groups(len(grid_nodes) - 1, order, grid_nodes[-1].sigma == 0)
    calls = iter(progress_range(len(grid_nodes) - 1, progress, name))
    start = 0
    for size in sizes:
        s, t = grid_nodes[start], grid_nodes[start + size]
        lams, x0s, u = [], [], x
        for j in range(size):
            node = grid_nodes[start + j]
            i = next(calls)
            if j > 0:   # the intermediate point, from s with the model calls so far
                u = exponential_step(x, s, node, taylor_derivatives(lams, x0s),
                                     midpoint=variant == "midpoint" and j == 2)
            x0 = denoiser(u, node.t)
            if callback is not None:
                callback(i, node.t, u, x0)
            lams.append(node.lam)
            x0s.append(x0)
        x = exponential_step(x, s, t, taylor_derivatives(lams, x0s),
                             midpoint=variant == "midpoint" and size == 2)
        start += size
    for _ in calls:         # closes the progress bar
        pass
    return x


def dpmpp_2s(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, variant: str = "taylor",
             generator: torch.Generator | None = None, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    r"""DPM-Solver++(2S) (Lu et al. 2022b, Alg. 1): second-order single-step, two model calls per step.

    NFE. The grid lists *model times*; consecutive pairs form one step (:func:`step_groups`): a
    step from ``t_j`` calls the model at ``t_j`` and at its intermediate point ``t_{j+1}`` (where
    ``u = DDIM(x, t_j -> t_{j+1})``) and lands at ``t_{j+2}``:

        x_{t_{j+2}} = (sigma_t / sigma_s) x_s + alpha_t [psi_0(h) x0_s + psi_1(h) (x0_u - x0_s) / (r h)],

    ``r h = lambda_{j+1} - lambda_j``. So ``n`` model times give exactly ``n`` model calls for any
    ``n``, and any grid (e.g. uniform in log-SNR) sets the intermediate points too; a grid of
    ``n`` model times has about ``n / 2`` steps. When the grid ends at the data, the last model
    time is a step of its own that returns its ``x0_pred``; an odd remainder is one DDIM step.
    ``variant="midpoint"`` is Alg. 1's printed weight ``D = x0_s + (x0_u - x0_s) / (2 r)``.

    Args: as :func:`dpmpp_2m` (``generator`` unused).
    """
    return _singlestep(denoiser, process, x_T, timesteps, order=2, variant=variant, callback=callback,
                       progress=progress, name="dpmpp_2s")


def dpmpp_3s(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, variant: str = "taylor",
             generator: torch.Generator | None = None, callback: Callback | None = None,
             progress: bool = False) -> Tensor:
    r"""DPM-Solver++(3S): third-order single-step, three model calls per step (Lu et al. 2022a,
    Alg. 2 with data prediction). Triples of consecutive model times form one step (see
    :func:`dpmpp_2s` for how the grid sets the NFE and the intermediate points, and
    :func:`_singlestep` for the update). The remainder is one 2S or DDIM step before the last
    model time. Args: as :func:`dpmpp_2m` (``generator`` unused)."""
    return _singlestep(denoiser, process, x_T, timesteps, order=3, variant=variant, callback=callback,
                       progress=progress, name="dpmpp_3s")
