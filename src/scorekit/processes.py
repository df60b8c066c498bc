r"""Forward (noising) processes.

Every Gaussian diffusion of the lectures is one family,

    q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I),

and the processes here differ only in ``alpha(t)``, ``sigma(t)`` and how time is indexed:

==================  =========================  ==========================  ====================
process             alpha(t)                   sigma(t)                    time
==================  =========================  ==========================  ====================
``DDPM``            sqrt(alpha_bar_t)          sqrt(1 - alpha_bar_t)       integers 0 .. T-1
``SimpleVE``        1                          sqrt(t)                     integers 1 .. T
``VPSDE``           exp(-B(t) / 2)             sqrt(1 - exp(-B(t)))        [0, 1]
``SubVPSDE``        exp(-B(t) / 2)             1 - exp(-B(t))              [0, 1]
``VESDE``           1                          s_min (s_max / s_min)^t     [0, 1]
``EDM``             1                          t                           [s_min, s_max]
==================  =========================  ==========================  ====================

with ``B(t) = int_0^t beta(u) du``. Everything else is derived once, in :class:`GaussianProcess`,
from ``alpha`` and ``sigma``:

* the transition ``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)`` for ``s < t`` with
  ``alpha_{t|s} = alpha_t / alpha_s`` and ``sigma_{t|s}^2 = sigma_t^2 - alpha_{t|s}^2 sigma_s^2``;
* the posterior ``q(x_s | x_t, x_0) = N(mu, var)`` with
  ``mu = (alpha_{t|s} sigma_s^2 / sigma_t^2) x_t + (alpha_s sigma_{t|s}^2 / sigma_t^2) x_0`` and
  ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2``;
* the SDE ``dx = f(t) x dt + g(t) dW`` whose marginals these are:
  ``f(t) = d log alpha / dt`` and ``g(t)^2 = d sigma^2 / dt - 2 f(t) sigma^2``.

Each process has a *data time* ``t_data`` at which ``alpha = 1`` and ``sigma = 0`` (``-1`` for
DDPM, ``0`` for most, ``-inf`` for the geometric VE SDE). Samplers end there; models are never
evaluated there.

Schedules are computed in float64; callers cast results to the dtype they work in.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

from .devices import to_like
from .errors import ScorekitError, check_options, option_schema, positive_number, whole_number

Tensor = torch.Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "cosine", "sigmoid")

#: the papers' (beta_start, beta_end) at T = 1000 of the schedules whose defaults scale by 1000 / T
SCALED_DEFAULTS = {"linear": (1e-4, 0.02), "scaled_linear": (0.00085, 0.012), "sigmoid": (1e-4, 0.02)}


def _t64(t) -> Tensor:
    """Time as a float64 tensor (scalars become 0-d tensors)."""
    if isinstance(t, Tensor):
        return t.to(torch.float64)
    return torch.as_tensor(t, dtype=torch.float64)


def expand_like(coef: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-sample coefficient of shape (N,) (or a scalar) to broadcast against x, on x's
    device and in its dtype (a host coefficient is copied there without making the host wait)."""
    coef = to_like(coef, x)
    if coef.ndim == 0:
        return coef
    return coef.reshape(coef.shape + (1,) * (x.ndim - coef.ndim))


class GaussianProcess:
    r"""A diffusion with marginals ``q(x_t | x_0) = N(alpha(t) x_0, sigma(t)^2 I)``.

    Subclasses implement :meth:`log_alpha`, :meth:`sigma`, :meth:`f`, :meth:`g2` and
    :meth:`t_from_log_snr`; everything else follows from them.

    Attributes:
        t_data: the time at which ``x_t = x_0`` (``sigma = 0``); samplers end here.
        t_min, t_max: the range of times at which a model is evaluated.
        prior_std: the prior at ``t_max`` is ``N(0, prior_std^2 I)``.
        discrete: whether the process is indexed by integer steps (models take integer ``t``).
        default_spacing: the sampling grid :func:`scorekit.timesteps.make_timesteps` uses when
            none is named: ``"trailing"`` for DDPM's steps, ``"uniform"`` in ``t`` for the SDEs
            (the VE SDE's ``t`` is already uniform in ``log sigma``), ``"karras"`` for EDM, whose
            time is ``sigma`` itself (uniform in ``sigma`` spends nearly every step at high noise).
    """

    t_data: float = 0.0
    t_min: float = 0.0
    t_max: float = 1.0
    prior_std: float = 1.0
    discrete: bool = False
    default_spacing: str = "uniform"

    # --- what each process defines -------------------------------------------------------
    def log_alpha(self, t) -> Tensor:
        raise NotImplementedError

    def sigma(self, t) -> Tensor:
        raise NotImplementedError

    def f(self, t) -> Tensor:
        """Drift coefficient ``f(t) = d log alpha(t) / dt``."""
        raise NotImplementedError

    def g2(self, t) -> Tensor:
        """Squared diffusion coefficient ``g(t)^2 = d sigma^2/dt - 2 f(t) sigma(t)^2``."""
        raise NotImplementedError

    def t_from_log_snr(self, log_snr) -> Tensor:
        """Inverse of :meth:`log_snr`: the time whose ``log(alpha^2 / sigma^2)`` is given."""
        raise NotImplementedError

    def config(self) -> dict:
        """A JSON-serialisable description; :func:`process_from_config` rebuilds the process."""
        raise NotImplementedError

    # --- derived ---------------------------------------------------------------------------
    def alpha(self, t) -> Tensor:
        """Signal scale ``alpha(t)`` of ``x_t = alpha(t) x_0 + sigma(t) eps``."""
        return torch.exp(self.log_alpha(t))

    def log_snr(self, t) -> Tensor:
        """``lambda(t) = log(alpha(t)^2 / sigma(t)^2)``, decreasing in ``t``."""
        return 2.0 * (self.log_alpha(t) - torch.log(self.sigma(t)))

    def marginal(self, x0: Tensor, t) -> tuple[Tensor, Tensor]:
        """Mean and standard deviation of ``q(x_t | x_0) = N(alpha_t x_0, sigma_t^2 I)``."""
        t = _t64(t)
        return expand_like(self.alpha(t), x0) * x0, expand_like(self.sigma(t), x0)

    def sample_marginal(self, x0: Tensor, t, noise: Tensor | None = None, *,
                        generator: torch.Generator | None = None) -> Tensor:
        """Draw ``x_t = alpha_t x_0 + sigma_t eps`` with ``eps ~ N(0, I)`` (or the given noise)."""
        if noise is None:
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
        mean, std = self.marginal(x0, t)
        return mean + std * noise

    def marginal_log_prob(self, x_t: Tensor, x0: Tensor, t) -> Tensor:
        """``log q(x_t | x_0)`` summed over all but the first (batch) dimension."""
        mean, std = self.marginal(x0, t)
        return _gaussian_log_prob(x_t, mean, std)

    def transition(self, t, s) -> tuple[Tensor, Tensor]:
        """``(alpha_{t|s}, sigma_{t|s})`` of ``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)``, s < t."""
        t, s = _t64(t), _t64(s)
        alpha_ts = torch.exp(self.log_alpha(t) - self.log_alpha(s))
        var = self.sigma(t) ** 2 - alpha_ts ** 2 * self.sigma(s) ** 2
        return alpha_ts, torch.sqrt(var.clamp_min(0.0))

    def posterior_coefficients(self, t, s) -> tuple[Tensor, Tensor, Tensor]:
        r"""Coefficients of ``q(x_s | x_t, x_0) = N(c_x0 x_0 + c_xt x_t, var I)`` for ``s < t``.

        ``c_xt = alpha_{t|s} sigma_s^2 / sigma_t^2``, ``c_x0 = alpha_s sigma_{t|s}^2 / sigma_t^2``,
        ``var = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (Kingma et al. 2021, eq. 22-23; for DDPM
        these are Ho et al. 2020, eq. 7: ``mu~_t`` and ``beta~_t``).
        """
        t, s = _t64(t), _t64(s)
        alpha_ts, sigma_ts = self.transition(t, s)
        sigma_t2, sigma_s2 = self.sigma(t) ** 2, self.sigma(s) ** 2
        c_xt = alpha_ts * sigma_s2 / sigma_t2
        c_x0 = self.alpha(s) * sigma_ts ** 2 / sigma_t2
        var = sigma_ts ** 2 * sigma_s2 / sigma_t2
        return c_x0, c_xt, var

    def posterior(self, x_t: Tensor, x0: Tensor, t, s) -> tuple[Tensor, Tensor]:
        """Mean and variance of ``q(x_s | x_t, x_0)`` (see :meth:`posterior_coefficients`)."""
        c_x0, c_xt, var = self.posterior_coefficients(t, s)
        mean = expand_like(c_x0, x0) * x0 + expand_like(c_xt, x_t) * x_t
        return mean, expand_like(var, x_t)

    def drift(self, x: Tensor, t) -> Tensor:
        """SDE drift ``f(x, t) = f(t) x``."""
        return expand_like(self.f(_t64(t)), x) * x

    def diffusion(self, t) -> Tensor:
        """SDE diffusion coefficient ``g(t)``."""
        return torch.sqrt(self.g2(_t64(t)))

    def prior_sample(self, shape: Sequence[int], *, generator: torch.Generator | None = None,
                     dtype: torch.dtype = torch.float32, device=None) -> Tensor:
        """Draw ``x_T ~ N(0, prior_std^2 I)``."""
        return self.prior_std * torch.randn(tuple(shape), generator=generator, dtype=dtype, device=device)

    def prior_log_prob(self, x: Tensor) -> Tensor:
        """``log N(x; 0, prior_std^2 I)`` summed over all but the batch dimension."""
        return _gaussian_log_prob(x, torch.zeros_like(x), torch.full_like(x, self.prior_std))

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items() if k != "kind"
                         and not isinstance(v, list))
        return f"{type(self).__name__}({args})"


def _gaussian_log_prob(x: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    z = (x - mean) / std
    log_p = -0.5 * z ** 2 - torch.log(std) - 0.5 * math.log(2 * math.pi)
    log_p = log_p.expand(x.shape)
    return log_p.reshape(x.shape[0], -1).sum(1) if x.ndim > 1 else log_p


# ---------------------------------------------------------------------------------------------
# Discrete DDPM
# ---------------------------------------------------------------------------------------------

def beta_schedule(name: str, num_steps: int = 1000, *, beta_start: float | None = None,
                  beta_end: float | None = None, cosine_s: float = 0.008,
                  max_beta: float = 0.999) -> Tensor:
    r"""A named table ``beta_0 .. beta_{T-1}`` (float64), as in the papers and diffusers.

    * ``linear`` (Ho et al. 2020): ``beta_t`` evenly spaced from ``beta_start = 1e-4`` to
      ``beta_end = 0.02``.
    * ``scaled_linear`` (latent diffusion): ``sqrt(beta_t)`` evenly spaced from
      ``sqrt(0.00085)`` to ``sqrt(0.012)``.
    * ``cosine`` (Nichol & Dhariwal 2021, eq. 17): ``alpha_bar(t) = h(t) / h(0)`` with
      ``h(t) = cos^2(pi/2 (t/T + s) / (1 + s))``, ``beta_t = 1 - alpha_bar(t+1) / alpha_bar(t)``
      clipped at ``max_beta``.
    * ``sigmoid`` (GeoDiff): ``beta_t = sigmoid(u_t) (beta_end - beta_start) + beta_start``,
      ``u_t`` evenly spaced on ``[-6, 6]``, with ``linear``'s defaults.

    The defaults of ``linear``, ``scaled_linear`` and ``sigmoid`` are the papers' values for
    ``T = 1000``. For another ``T`` they are scaled by ``1000 / T`` (Nichol & Dhariwal 2021's
    extension of the linear schedule to any number of steps; score SDE's ``beta_min / T ..
    beta_max / T``), so that every ``T`` discretises the same VP SDE and ends near ``N(0, I)``
    (unscaled, ``T = 100`` would end at ``alpha_bar = 0.36``, and samplers starting from
    ``N(0, I)`` would miss the data). diffusers keeps the ``T = 1000`` values for every ``T``:
    give ``beta_start`` and ``beta_end`` to get them (given values are used as they are). Every
    schedule is capped at ``max_beta``.
    """
    T = whole_number(num_steps, "num_steps")
    if name in SCALED_DEFAULTS:
        b0, b1 = scaled_beta_range(name, T, beta_start, beta_end)
    if name == "linear":
        betas = np.linspace(b0, b1, T, dtype=np.float64)
    elif name == "scaled_linear":
        betas = np.linspace(b0 ** 0.5, b1 ** 0.5, T, dtype=np.float64) ** 2
    elif name == "cosine":
        steps = np.arange(T + 1, dtype=np.float64) / T
        h = np.cos((steps + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
        betas = np.minimum(1 - h[1:] / h[:-1], max_beta)
    elif name == "sigmoid":
        u = np.linspace(-6, 6, T, dtype=np.float64)
        betas = 1 / (1 + np.exp(-u)) * (b1 - b0) + b0
    else:
        raise ScorekitError(f"unknown beta schedule {name!r}; choose one of {', '.join(BETA_SCHEDULES)}")
    if name != "cosine":
        betas = np.minimum(betas, max_beta)             # the scaled defaults of a short chain (T < 50)
    return torch.from_numpy(betas)


def scaled_beta_range(name: str, num_steps: int, beta_start=None, beta_end=None) -> tuple[float, float]:
    """``(beta_start, beta_end)`` of schedule ``name`` (a key of :data:`SCALED_DEFAULTS`) for
    ``num_steps`` steps: the given values, else the papers' ``T = 1000`` ones times ``1000 / T``."""
    start, end = SCALED_DEFAULTS[name]
    scale = 1000 / num_steps
    return (start * scale if beta_start is None else beta_start,
            end * scale if beta_end is None else beta_end)


def unscaled_ddpm_config(config: dict) -> dict:
    """A saved DDPM process config as it was meant when written: configs saved before the default
    betas scaled by ``1000 / T`` name a scaled schedule of ``T != 1000`` steps without
    ``beta_start`` / ``beta_end`` (a DDPM saves the values it used since), and meant the ``T = 1000``
    values; those are filled in. Every other config is returned as it is."""
    name, steps = config.get("schedule"), config.get("num_steps", 1000)
    if config.get("kind") != "DDPM" or name not in SCALED_DEFAULTS or steps == 1000:
        return config
    start, end = SCALED_DEFAULTS[name]
    return {"beta_start": start, "beta_end": end, **config}


def schedule_table(values, name: str) -> Tensor:
    """A DDPM schedule (``betas`` or ``alpha_bar``: one number per step) as a float64 1-D tensor."""
    try:
        table = torch.as_tensor(values, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise ScorekitError(f"{name} must be a 1-D sequence of numbers (one per step), got "
                            f"{type(values).__name__}") from None
    if table.ndim != 1:
        raise ScorekitError(f"{name} must be 1-D (one number per step), got shape {tuple(table.shape)}")
    return table


class DDPM(GaussianProcess):
    r"""Discrete variance-preserving diffusion (Ho et al. 2020) with ``T`` steps.

    ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)`` and
    ``q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)`` with
    ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``.

    Steps are numbered ``0 .. T-1`` as in diffusers (the paper's ``1 .. T``); ``t = -1`` is the
    data (``alpha_bar = 1``). Between integers, ``log alpha_bar`` is interpolated linearly, which
    makes the process a continuous-time SDE with ``g(t)^2 = -log(1 - beta_t)`` on ``(t-1, t]``
    (close to ``beta_t``), so continuous-time samplers apply to discrete models unchanged.
    """

    discrete = True
    default_spacing = "trailing"
    t_data = -1.0
    t_min = 0.0
    prior_std = 1.0

    def __init__(self, betas=None, *, alpha_bar=None, schedule: str | None = None,
                 num_steps: int | None = None, **schedule_kwargs):
        given = sum(v is not None for v in (betas, alpha_bar, schedule))
        if given > 1:
            raise ScorekitError("give only one of betas, alpha_bar or schedule")
        if given == 0:
            schedule = "linear"
        if schedule is None and schedule_kwargs:
            raise ScorekitError(f"{', '.join(sorted(schedule_kwargs))}: options of a named schedule, but the "
                                f"schedule is given as a table ({'betas' if betas is not None else 'alpha_bar'})")
        if schedule is not None:
            schedule_kwargs = check_options(schedule_kwargs, option_schema(
                beta_schedule, skip=("name", "num_steps")), f"{schedule} schedule option")
            T = 1000 if num_steps is None else num_steps
            betas = beta_schedule(schedule, T, **schedule_kwargs)
            if schedule in SCALED_DEFAULTS and T != 1000:        # saved explicitly: the values used
                schedule_kwargs["beta_start"], schedule_kwargs["beta_end"] = scaled_beta_range(
                    schedule, T, schedule_kwargs.get("beta_start"), schedule_kwargs.get("beta_end"))
        elif alpha_bar is not None:
            ab = schedule_table(alpha_bar, "alpha_bar")
            if ab.numel() == 0 or not torch.all((ab > 0) & (ab <= 1)):
                raise ScorekitError("alpha_bar must be a non-empty sequence of values in (0, 1]")
            if torch.any(ab[1:] > ab[:-1]):
                raise ScorekitError("alpha_bar must be non-increasing in t")
            prev = torch.cat([torch.ones(1, dtype=torch.float64), ab[:-1]])
            betas = 1 - ab / prev
        betas = schedule_table(betas, "betas")
        if betas.numel() == 0 or not torch.all(torch.isfinite(betas)):
            raise ScorekitError("betas must be a non-empty sequence of finite numbers")
        if not torch.all((betas >= 0) & (betas < 1)):
            raise ScorekitError("every beta_t must lie in [0, 1)")
        if betas[0] <= 0:
            raise ScorekitError("beta_0 must be positive (otherwise x_0 is not noised at t = 0)")
        if schedule is None and num_steps is not None and whole_number(num_steps, "num_steps") != betas.numel():
            raise ScorekitError(f"num_steps={num_steps!r} but the table has {betas.numel()} steps "
                                f"(num_steps may be left out: the table gives it)")
        self.schedule = schedule
        self.schedule_kwargs = dict(schedule_kwargs)
        self.betas = betas
        self.num_steps = betas.numel()
        self.t_max = float(self.num_steps - 1)
        self.log_alpha_bar_table = torch.cumsum(torch.log1p(-betas), 0)
        # log alpha_bar on the grid t = -1, 0, ..., T-1, for interpolation
        self._grid_log_ab = torch.cat([torch.zeros(1, dtype=torch.float64), self.log_alpha_bar_table])

    @property
    def T(self) -> int:
        return self.num_steps

    @property
    def alpha_bar_table(self) -> Tensor:
        """``alpha_bar_t`` for ``t = 0 .. T-1`` (float64)."""
        return torch.exp(self.log_alpha_bar_table)

    def log_alpha_bar(self, t) -> Tensor:
        """``log alpha_bar(t)``; exact at integers, linearly interpolated between them."""
        if isinstance(t, (int, float)) and float(t).is_integer() and -1 <= t < self.num_steps:
            return self._grid_log_ab[int(t) + 1]          # a whole step: a table look-up
        t = _t64(t)
        u = (t + 1).clamp(0, self.num_steps)        # position on the grid -1 .. T-1
        lo = torch.floor(u).clamp(max=self.num_steps - 1)
        w = u - lo
        lo = lo.long()
        g = self._on_device("grid_log_ab", self._grid_log_ab, t.device)
        return g[lo] * (1 - w) + g[lo + 1] * w

    def _on_device(self, name: str, table: Tensor, device: torch.device) -> Tensor:
        """``table`` on ``device``, copied there once (a copy at every call would make the host
        wait for a GPU each time); the table itself on its own device."""
        if device == table.device:
            return table
        cache = self.__dict__.setdefault("_device_tables", {})
        if (name, device) not in cache:
            cache[(name, device)] = table.to(device)
        return cache[(name, device)]

    def alpha_bar(self, t) -> Tensor:
        return torch.exp(self.log_alpha_bar(t))

    def log_alpha(self, t) -> Tensor:
        return 0.5 * self.log_alpha_bar(t)

    def sigma(self, t) -> Tensor:
        return torch.sqrt(-torch.expm1(self.log_alpha_bar(t)))

    def _segment_slope(self, t) -> Tensor:
        """``d log alpha_bar / dt`` on the segment ``(ceil(t) - 1, ceil(t)]`` (= log(1 - beta))."""
        t = _t64(t)
        k = torch.ceil(t).clamp(0, self.num_steps - 1).long()
        return torch.log1p(-self._on_device("betas", self.betas, t.device))[k]

    def f(self, t) -> Tensor:
        return 0.5 * self._segment_slope(t)

    def g2(self, t) -> Tensor:
        return -self._segment_slope(t)

    def t_from_log_snr(self, log_snr) -> Tensor:
        lam = _t64(log_snr)
        log_ab = torch.nn.functional.logsigmoid(lam)     # alpha_bar = sigmoid(lambda)
        grid = self._grid_log_ab.cpu().numpy()           # decreasing
        times = np.arange(-1, self.num_steps, dtype=np.float64)
        out = np.interp(-log_ab.cpu().numpy(), -grid, times)
        return torch.as_tensor(out, dtype=torch.float64, device=lam.device)

    def config(self) -> dict:
        if self.schedule is not None:
            return {"kind": "DDPM", "schedule": self.schedule, "num_steps": self.num_steps,
                    **self.schedule_kwargs}
        return {"kind": "DDPM", "betas": self.betas.tolist()}


class SimpleVE(GaussianProcess):
    r"""The lectures' simple variance-exploding process: Brownian motion started at the data.

    ``q(x_t | x_{t-1}) = N(x_{t-1}, I)``, so ``x_t = x_0 + sqrt(t) eps`` (``alpha = 1``,
    ``sigma^2 = t``), with steps ``t = 1 .. T`` and the data at ``t = 0``. The posterior is
    ``q(x_{t-1} | x_t, x_0) = N((1 - 1/t) x_t + (1/t) x_0, (1 - 1/t) I)``. In continuous time it is
    the SDE ``dx = dW`` (``f = 0``, ``g = 1``). The prior is ``N(0, T I)``.
    """

    discrete = True
    default_spacing = "trailing"
    t_data = 0.0
    t_min = 1.0

    def __init__(self, num_steps: int = 1000):
        self.num_steps = whole_number(num_steps, "num_steps")
        self.t_max = float(self.num_steps)
        self.prior_std = math.sqrt(self.num_steps)

    def log_alpha(self, t) -> Tensor:
        return torch.zeros_like(_t64(t))

    def sigma(self, t) -> Tensor:
        return torch.sqrt(_t64(t).clamp_min(0))

    def f(self, t) -> Tensor:
        return torch.zeros_like(_t64(t))

    def g2(self, t) -> Tensor:
        return torch.ones_like(_t64(t))

    def t_from_log_snr(self, log_snr) -> Tensor:
        return torch.exp(-_t64(log_snr))

    def config(self) -> dict:
        return {"kind": "SimpleVE", "num_steps": self.num_steps}


# ---------------------------------------------------------------------------------------------
# Continuous time (Song et al. 2021; Karras et al. 2022)
# ---------------------------------------------------------------------------------------------

class VPSDE(GaussianProcess):
    r"""Variance-preserving SDE ``dx = -1/2 beta(t) x dt + sqrt(beta(t)) dW``, ``t in [0, 1]``.

    ``beta(t) = beta_min + t (beta_max - beta_min)``, ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``,
    ``alpha(t) = exp(-B(t)/2)``, ``sigma(t)^2 = 1 - exp(-B(t))``. The continuous limit of DDPM
    with linear betas when ``beta_min = T beta_0`` and ``beta_max = T beta_{T-1}``.
    """

    t_data = 0.0
    t_min = 1e-3
    t_max = 1.0

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0):
        beta_min = positive_number(beta_min, "beta_min", "0.1 in Song et al.")
        beta_max = positive_number(beta_max, "beta_max", "20 in Song et al.")
        if not beta_min <= beta_max:
            raise ScorekitError(f"need 0 < beta_min <= beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def beta(self, t) -> Tensor:
        return self.beta_min + _t64(t) * (self.beta_max - self.beta_min)

    def integrated_beta(self, t) -> Tensor:
        """``B(t) = int_0^t beta(u) du``."""
        t = _t64(t)
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t ** 2

    def _t_from_integrated_beta(self, B: Tensor) -> Tensor:
        db = self.beta_max - self.beta_min
        if db == 0:
            return B / self.beta_min
        # solve beta_min t + db t^2 / 2 = B; rationalised root for accuracy at small B
        return 2 * B / (self.beta_min + torch.sqrt(self.beta_min ** 2 + 2 * db * B))

    def log_alpha(self, t) -> Tensor:
        return -0.5 * self.integrated_beta(t)

    def sigma(self, t) -> Tensor:
        return torch.sqrt(-torch.expm1(-self.integrated_beta(t)))

    def f(self, t) -> Tensor:
        return -0.5 * self.beta(t)

    def g2(self, t) -> Tensor:
        return self.beta(t)

    def t_from_log_snr(self, log_snr) -> Tensor:
        # alpha^2 = sigmoid(lambda) => B = -log sigmoid(lambda) = softplus(-lambda)
        return self._t_from_integrated_beta(torch.nn.functional.softplus(-_t64(log_snr)))

    def config(self) -> dict:
        return {"kind": "VPSDE", "beta_min": self.beta_min, "beta_max": self.beta_max}


class SubVPSDE(VPSDE):
    r"""Sub-VP SDE (Song et al. 2021, eq. 29):
    ``dx = -1/2 beta(t) x dt + sqrt(beta(t) (1 - exp(-2 B(t)))) dW``.

    Same ``alpha(t)`` as the VP SDE but ``sigma(t) = 1 - exp(-B(t))``, always below the VP
    ``sigma``.
    """

    def sigma(self, t) -> Tensor:
        return -torch.expm1(-self.integrated_beta(t))

    def g2(self, t) -> Tensor:
        return self.beta(t) * -torch.expm1(-2 * self.integrated_beta(t))

    def t_from_log_snr(self, log_snr) -> Tensor:
        # u = alpha^2 = e^-B solves (1 - u)^2 = q u with q = e^-lambda; its root in (0, 1] is
        # u = 1 / (1 + (q + sqrt(q (q + 4))) / 2), so B = log1p((q + sqrt(q) sqrt(q + 4)) / 2):
        # exact to rounding as B -> 0 and B = 0 at lambda = +inf (sqrt(q) sqrt(q + 4) cannot overflow)
        q = torch.exp(-_t64(log_snr))
        return self._t_from_integrated_beta(torch.log1p(0.5 * (q + torch.sqrt(q) * torch.sqrt(q + 4))))

    def config(self) -> dict:
        return {"kind": "SubVPSDE", "beta_min": self.beta_min, "beta_max": self.beta_max}


class VESDE(GaussianProcess):
    r"""Variance-exploding SDE of NCSN / score SDE: ``dx = sqrt(d sigma^2 / dt) dW``, ``t in [0, 1]``.

    ``alpha = 1``, ``sigma(t) = sigma_min (sigma_max / sigma_min)^t`` (geometric noise levels),
    ``g(t)^2 = 2 sigma(t)^2 log(sigma_max / sigma_min)``. As in Song et al. the marginal standard
    deviation is taken to be ``sigma(t)`` itself, so ``sigma -> 0`` only as ``t -> -inf``: the data
    time is ``-inf`` and the last sampling step is a jump to the denoised estimate.
    """

    t_data = -math.inf
    t_min = 0.0
    t_max = 1.0

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 50.0):
        sigma_min = positive_number(sigma_min, "sigma_min", "0.01 in Song et al.")
        sigma_max = positive_number(sigma_max, "sigma_max", "50 in Song et al. for CIFAR-10")
        if not sigma_min < sigma_max:
            raise ScorekitError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.prior_std = self.sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def log_alpha(self, t) -> Tensor:
        return torch.zeros_like(_t64(t))

    def sigma(self, t) -> Tensor:
        return self.sigma_min * torch.exp(_t64(t) * self._log_ratio)

    def f(self, t) -> Tensor:
        return torch.zeros_like(_t64(t))

    def g2(self, t) -> Tensor:
        return 2 * self.sigma(t) ** 2 * self._log_ratio

    def t_from_log_snr(self, log_snr) -> Tensor:
        return (-0.5 * _t64(log_snr) - math.log(self.sigma_min)) / self._log_ratio

    def config(self) -> dict:
        return {"kind": "VESDE", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max}


class EDM(GaussianProcess):
    r"""Karras et al. (2022): time is the noise level, ``alpha = 1`` and ``sigma(t) = t``.

    The probability-flow ODE is ``dx/dsigma = (x - D(x; sigma)) / sigma``; the SDE has ``f = 0``,
    ``g(t)^2 = 2 t``. Models are evaluated on ``[sigma_min, sigma_max]``; the data is at 0.

    ``sigma_data`` (0.5, EDM's value) is the data's standard deviation assumed by EDM's
    preconditioning (:class:`scorekit.precondition.EDMPrecond`) and by the ``edm`` loss weighting
    when they are not given one of their own; the process itself does not use it.
    """

    t_data = 0.0
    default_spacing = "karras"      # EDM's own grid (Karras et al. 2022, eq. 5, rho = 7)

    def __init__(self, sigma_min: float = 0.002, sigma_max: float = 80.0, sigma_data: float = 0.5):
        sigma_min = positive_number(sigma_min, "sigma_min", "0.002 in EDM")
        sigma_max = positive_number(sigma_max, "sigma_max", "80 in EDM")
        if not sigma_min < sigma_max:
            raise ScorekitError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.sigma_data = positive_number(sigma_data, "sigma_data", "0.5 in EDM")
        self.t_min, self.t_max = self.sigma_min, self.sigma_max
        self.prior_std = self.sigma_max

    def log_alpha(self, t) -> Tensor:
        return torch.zeros_like(_t64(t))

    def sigma(self, t) -> Tensor:
        return _t64(t).clone()

    def f(self, t) -> Tensor:
        return torch.zeros_like(_t64(t))

    def g2(self, t) -> Tensor:
        return 2 * _t64(t)

    def t_from_log_snr(self, log_snr) -> Tensor:
        return torch.exp(-0.5 * _t64(log_snr))

    def config(self) -> dict:
        return {"kind": "EDM", "sigma_min": self.sigma_min, "sigma_max": self.sigma_max,
                "sigma_data": self.sigma_data}


PROCESSES = {cls.__name__: cls for cls in (DDPM, SimpleVE, VPSDE, SubVPSDE, VESDE, EDM)}


def check_process(process, what: str = "process") -> GaussianProcess:
    """``process`` if it is a :class:`GaussianProcess` (``DDPM()``, ``VPSDE()``, ...); otherwise a
    :class:`ScorekitError` that says what was given."""
    if not isinstance(process, GaussianProcess):
        raise ScorekitError(f"{what} must be a forward process such as scorekit.DDPM() or scorekit.VPSDE(), "
                            f"got {type(process).__name__} {process!r}"[:300])
    return process


def process_from_config(config: dict) -> GaussianProcess:
    """Rebuild a process from :meth:`GaussianProcess.config`."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind not in PROCESSES:
        raise ScorekitError(f"unknown process kind {kind!r}; choose one of {', '.join(PROCESSES)}")
    return PROCESSES[kind](**check_process_options(kind, config))


def check_process_options(kind: str, options: dict) -> dict:
    """The constructor arguments of process ``kind`` (a key of :data:`PROCESSES`) checked against
    its signature and converted to the types it expects."""
    # DDPM passes its other keywords on to beta_schedule (whose `name` is DDPM's `schedule`)
    extra = (beta_schedule,) if kind == "DDPM" else ()
    return check_options(options, option_schema(PROCESSES[kind], *extra, skip=("name",)),
                         f"{kind} process option")
