r"""Reverse-process variances: fixed (``beta~``, ``beta``), learned (Improved DDPM) and analytic
(Analytic-DPM).

The reverse step from time ``t`` to the earlier time ``s`` is ``p(x_s | x_t) = N(mu_theta, Sigma)``
with ``mu_theta`` the posterior mean of ``q(x_s | x_t, x_0)`` at ``x_0 = x0_pred``. Every choice of
``Sigma`` here lies between the two variances of Ho et al. (2020, sec. 3.2), in the notation of
:mod:`scorekit.processes` (DDPM with ``s = t - 1`` in brackets):

* ``small`` -- the posterior variance ``sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (``beta~_t``), optimal
  when the data is a single point;
* ``large`` -- the transition variance ``sigma_{t|s}^2`` (``beta_t``), optimal for data ``N(0, I)``.

The first step (into the data, ``s = t_data``) has ``beta~ = 0``; as in improved-diffusion its
"small" variance is ``beta~`` of the next step (``beta~_1``, Ho et al.'s ``t = 2``), while "large"
keeps Ho et al.'s ``sigma_1^2 = beta_1`` (our ``beta_0``) there (:func:`fixed_variance`). On a
shorter grid ``t_K > ... > t_2 > t_1 > data`` the next step is the grid's own, ``t_2 -> t_1``, as
improved-diffusion clips a respaced chain (:func:`data_step_variance`; the ELBO and
:func:`analytic_variances` use it): ``beta~_1`` of the whole chain would give a decoder at ``t_1``
far narrower than ``x_0 | x_{t_1}``. For continuous data whose spread exceeds the first noise
level, the "large" ``sigma_{t_1}^2`` is the decoder's optimal variance and ``beta~`` about half of it.

**Learned variances** (Nichol & Dhariwal 2021, eq. 15). The network returns ``2 C`` channels: its
prediction, then a raw output ``r`` per dimension, mapped to ``v = (r + 1) / 2`` (so ``r = -1`` is
``beta~`` and ``r = 1`` is ``beta``; ``r`` is not clamped, as in the paper) and

    log Sigma = v log beta_t + (1 - v) log beta~_t,

with ``beta~_t`` clipped at the first step as above (:func:`learned_log_variance`).
:class:`LearnedVarianceDenoiser` wraps such a network.

**Analytic-DPM** (Bao et al. 2022, Theorem 1 and eq. 8-9): the reverse variance minimising the
KL between the forward and reverse chains, for a Markov reverse step ``n -> n - 1``,

    sigma*_n^2 = lambda_n^2 + (sqrt(beta-bar_n / alpha_n) - sqrt(beta-bar_{n-1} - lambda_n^2))^2
                 (1 - beta-bar_n E||grad log q_n(x_n)||^2 / d),

estimated with ``Gamma_n = E ||eps_theta(x_n, n)||^2 / d`` (``beta-bar_n E||grad log q_n||^2 / d =
Gamma_n`` for the optimal eps-model) as ``lambda_n^2 + (...)^2 (1 - Gamma_n)``. The symbols in ours:
``alpha_n`` (one step) is ``alpha_{t|s}^2``, ``beta-bar_n = sigma_t^2``, ``beta-bar_{n-1} = sigma_s^2``,
and for DDPM ``lambda_n^2 = beta~_t``. The bracket simplifies to
``sigma_t / alpha_{t|s} - alpha_{t|s} sigma_s^2 / sigma_t = sigma_{t|s}^2 / (alpha_{t|s} sigma_t)``, so

    sigma*^2 = beta~_t + c_x0^2 (sigma_t^2 / alpha_t^2) (1 - Gamma_t),      c_x0 = alpha_s sigma_{t|s}^2 / sigma_t^2,

where ``(sigma_t^2 / alpha_t^2)(1 - Gamma_t)`` is the mean posterior variance ``E Var[x_0 | x_t] / d``
(law of total variance; ``c_x0`` is the posterior-mean coefficient of ``x_0``). Bao et al. (Theorem 2)
bound it: the posterior variance lies in ``[0, ((b - a) / 2)^2]`` for data in ``[a, b]^d``, so

    beta~_t <= sigma*^2 <= beta~_t + c_x0^2 data_radius^2,

and the estimate is clipped to that range (``data_radius = 1`` for images in ``[-1, 1]``; ``None``
uses the distribution-free upper bound ``Gamma = 0``). The same formula holds for any pair ``s < t``
of a shorter trajectory (their sec. 4). As in their code, the first step into the data keeps the
"small" decoder variance: ``beta~`` of the grid's next step (``beta~_1`` for the whole chain).

A learned variance interpolates, at every step of any grid, between the bounds of that step;
at the step into the data its lower end is the process's own clip (``beta~_1`` for DDPM), also on
a shorter grid, where :func:`data_step_variance` serves the fixed and analytic variances.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .errors import ScorekitError, positive_number, whole_number
from .prediction import PREDICTION_TYPES, Denoiser, network_tensor, to_x0
from .processes import GaussianProcess, expand_like

Tensor = torch.Tensor

_F64 = torch.float64

#: the reverse variances a string may name (a tensor of variances is also accepted where noted)
VARIANCES = ("small", "large", "learned", "analytic")
FIXED_VARIANCES = ("small", "large")


def _t64(t, device=None) -> Tensor:
    return torch.as_tensor(t, dtype=_F64, device=device)


def variance_bounds(process: GaussianProcess, t, s, *, data_step: float | None = None) -> tuple[Tensor, Tensor]:
    r"""``(beta~, beta)`` of the reverse step ``t -> s`` (float64; any broadcastable shapes).

    ``beta~ = sigma_{t|s}^2 sigma_s^2 / sigma_t^2`` (posterior variance) and ``beta = sigma_{t|s}^2``
    (transition variance). Where ``s`` is the data time ``beta~`` is 0 and is replaced by
    ``data_step``: the "small" variance of the step into the data, which a grid gives
    (:func:`data_step_variance`). Without one: for a discrete process ``beta~`` of the step from
    ``t_min + 1`` to ``t_min`` (DDPM: ``beta~_1``; with a single step, ``beta_0``), as
    improved-diffusion's ``posterior_log_variance_clipped``; for a continuous one ``sigma(t_min)^2``,
    the variance of the step from ``t_min`` into the data.
    """
    t, s = _t64(t), _t64(s)
    _, _, small = process.posterior_coefficients(t, s)
    large = process.transition(t, s)[1] ** 2
    if data_step is None:
        first = float(process.t_min)
        if process.discrete and process.t_max > first:
            _, _, clip = process.posterior_coefficients(_t64(first + 1.0), _t64(first))
        else:
            clip = process.transition(_t64(first), _t64(process.t_data))[1] ** 2
        data_step = clip.item()
    small = torch.where(s <= process.t_data, float(data_step), small)  # a number: no copy to small's device
    return small, large


def data_step_variance(process: GaussianProcess, t_all: Tensor, s_all: Tensor) -> float | None:
    r"""The "small" variance of the step ``t_1 -> data`` of a grid of reverse steps ``t_all -> s_all``
    (ascending, entry 0 the step into the data, as :func:`scorekit.likelihood.elbo` takes them):
    ``beta~`` of the grid's next step ``t_2 -> t_1``, as improved-diffusion clips a respaced chain's
    posterior variance (``posterior_log_variance_clipped``). For the whole DDPM chain it is
    ``beta~_1``; ``None`` (the rule of :func:`variance_bounds`) for a grid of one step."""
    if t_all.numel() < 2:
        return None
    return process.posterior_coefficients(_t64(t_all[1]), _t64(s_all[1]))[2].item()


def fixed_variance(process: GaussianProcess, t, s, kind: str, *, data_step: float | None = None) -> Tensor:
    """The fixed reverse variance ``"small"`` (``beta~``, clipped to ``beta~`` of the next step at
    the first step: ``data_step``, see :func:`variance_bounds`) or ``"large"`` (``beta``, at every
    step: Ho et al.'s convention) of the step ``t -> s`` (float64)."""
    if kind not in FIXED_VARIANCES:
        raise ScorekitError(f"unknown fixed variance {kind!r}; choose 'small' (beta~_t) or 'large' (beta_t)")
    small, large = variance_bounds(process, t, s, data_step=data_step)
    return small if kind == "small" else large


def learned_log_variance(raw: Tensor, process: GaussianProcess, t, s) -> Tensor:
    r"""``log Sigma = v log beta + (1 - v) log beta~`` with ``v = (raw + 1) / 2`` (Nichol & Dhariwal
    2021, eq. 15), in ``raw``'s dtype and shape. ``t`` and ``s`` are numbers or (N,) tensors."""
    small, large = variance_bounds(process, t, s)
    log_small = expand_like(torch.log(small), raw) if small.ndim else torch.log(small).item()
    log_large = expand_like(torch.log(large), raw) if large.ndim else torch.log(large).item()
    frac = (raw + 1) / 2
    return frac * log_large + (1 - frac) * log_small


class PredictionHead(nn.Module):
    """``model(x_t, t, *args)`` restricted to the first ``C`` of its ``2 C`` output channels (dim 1):
    the prediction of a learned-variance network, which every sampler and loss can use as is."""

    def __init__(self, model: Callable):
        super().__init__()
        self.model = model

    def forward(self, x_t: Tensor, t, *args, **kwargs):
        return split_output(self.model(x_t, t, *args, **kwargs), x_t)[0]


def split_output(out, x_t: Tensor) -> tuple[Tensor, Tensor]:
    """``(prediction, raw variance output)``: the two halves of a ``(N, 2 C, ...)`` network output."""
    out = network_tensor(out)                      # diffusers models return an output object
    want = (x_t.shape[0], 2 * x_t.shape[1], *x_t.shape[2:])
    if not isinstance(out, Tensor) or tuple(out.shape) != want:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ScorekitError(
            f"a learned-variance network must return 2 x the input's channels, shape {want}, got {got}; "
            f"build it with learn_variance=True")
    c = x_t.shape[1]
    return out[:, :c], out[:, c:]


class LearnedVarianceDenoiser(Denoiser):
    r"""A :class:`~scorekit.prediction.Denoiser` for a network with a variance head (``2 C`` outputs).

    ``D(x_t, t)`` is the ``x0_pred`` of the first ``C`` channels, so it serves every sampler as any
    denoiser does; ``self.model`` is that first half (:class:`PredictionHead`) and
    ``self.network`` the whole network. The reverse variance comes from
    :meth:`x0_and_log_variance`, which the ``ddpm`` sampler (``variance="learned"``) and
    :func:`scorekit.likelihood.elbo` (``variance="learned"``) call once per step instead of ``D``:

        x0_pred, log_Sigma = denoiser.x0_and_log_variance(x_t, t, s)

    with ``log Sigma`` per dimension from :func:`learned_log_variance` for the step ``t -> s``.
    """

    learned_variance = True

    def __init__(self, model: Callable[..., Tensor], process: GaussianProcess,
                 prediction_type: str = "eps", *, time_input: Callable[[Tensor], Tensor] | None = None,
                 condition=None, num_classes: int | None = None):
        # the classes of ``model`` are found through PredictionHead.model
        super().__init__(PredictionHead(model), process, prediction_type, time_input=time_input,
                         condition=condition, num_classes=num_classes)
        self.network = model

    def predict_with_log_variance(self, x_t: Tensor, t, s, condition=None) -> tuple[Tensor, Tensor]:
        """``(x0_pred, log Sigma)`` under ``condition`` for the reverse step ``t -> s``, from one
        network evaluation."""
        out = self.call_network(self.network, x_t, t, condition)
        pred, raw = split_output(out, x_t)
        alpha, sigma = self.coefficients(x_t, t)
        x0 = to_x0(pred, self.prediction_type, x_t, alpha, sigma)
        return x0, learned_log_variance(raw, self.process, t, s)

    def x0_and_log_variance(self, x_t: Tensor, t, s) -> tuple[Tensor, Tensor]:
        """``(x0_pred, log Sigma)`` under the bound condition for the reverse step ``t -> s``."""
        return self.predict_with_log_variance(x_t, t, s, self.condition)


# ---------------------------------------------------------------------------------------------
# Analytic-DPM
# ---------------------------------------------------------------------------------------------

def require_variance_head(denoiser) -> None:
    """Raise :class:`ScorekitError` unless ``denoiser`` has a variance head, which
    ``variance="learned"`` (in the DDPM sampler and the ELBO) needs."""
    if not hasattr(denoiser, "x0_and_log_variance"):
        raise ScorekitError("variance='learned' needs a denoiser with a variance head "
                            "(scorekit.variances.LearnedVarianceDenoiser, or checkpoint_denoiser of a model "
                            "trained with variance='learned')",
                            cli="--variance learned needs a model trained with --variance learned (this "
                                "one has no variance head)")


def analytic_variance(process: GaussianProcess, t, s, gamma, *, data_radius: float | None = 1.0,
                      data_step: float | None = None) -> Tensor:
    r"""Bao et al. (2022) eq. 8-9 for the steps ``t -> s`` given ``Gamma_t = E||eps_theta||^2 / d``
    (float64): ``beta~ + c_x0^2 (sigma_t^2 / alpha_t^2)(1 - Gamma_t)``, the posterior-variance factor
    clipped to ``[0, data_radius^2]`` (Theorem 2; no upper clip if ``data_radius`` is None); the
    first step into the data keeps ``beta~`` of the next step (``data_step``; module docstring)."""
    if data_radius is not None:
        data_radius = positive_number(data_radius, "data_radius", "1 for images in [-1, 1], or None for no upper clip")
    t, s, gamma = _t64(t), _t64(s), _t64(gamma)
    c_x0, _, _ = process.posterior_coefficients(t, s)
    small, _ = variance_bounds(process, t, s, data_step=data_step)
    var_x0 = torch.exp(-process.log_snr(t)) * (1 - gamma)        # E Var[x_0 | x_t] / d
    var_x0 = var_x0.clamp_min(0.0) if data_radius is None else var_x0.clamp(0.0, float(data_radius) ** 2)
    return torch.where(s <= process.t_data, small, small + c_x0 ** 2 * var_x0)


def _as_denoiser(model, process: GaussianProcess, prediction_type: str):
    if isinstance(model, Denoiser):
        return model
    if not callable(model):
        raise ScorekitError("the model must be a Denoiser or a callable model(x_t, t)")
    if prediction_type not in PREDICTION_TYPES:
        raise ScorekitError(f"unknown prediction_type {prediction_type!r}; choose one of {', '.join(PREDICTION_TYPES)}")
    return Denoiser(model, process, prediction_type)


def _grid_pairs(process: GaussianProcess, timesteps) -> tuple[Tensor, Tensor]:
    """(t, s) pairs of the reverse steps, ascending; ``timesteps=None`` is the process's default
    chain (:func:`scorekit.timesteps.chain_timesteps`)."""
    from .samplers._common import grid
    from .timesteps import chain_timesteps

    ts = grid(process, chain_timesteps(process) if timesteps is None else timesteps)
    if ts[-1] != process.t_data:
        raise ScorekitError(f"timesteps must end at the data time {process.t_data}, got {ts[-1].item()}")
    return ts[:-1].flip(0), ts[1:].flip(0)


def analytic_variances(denoiser_or_eps_model, process: GaussianProcess, data: Tensor, *, num_samples: int = 100,
                       generator: torch.Generator, progress: bool = False, timesteps=None,
                       prediction_type: str = "x0", batch_size: int | None = None,
                       data_radius: float | None = 1.0) -> Tensor:
    r"""Analytic-DPM reverse variances (Bao et al. 2022; module docstring) estimated by Monte Carlo.

    For each reverse step ``t -> s``, ``Gamma_t = mean ||eps_theta(x_t, t)||^2 / d`` over
    ``num_samples`` pairs ``(x_0, eps)``: ``x_0`` drawn from the rows of ``data`` (without
    replacement when there are enough, else with), ``x_t = alpha_t x_0 + sigma_t eps`` -- one
    network evaluation per sample and step -- then :func:`analytic_variance`.

    Args:
        denoiser_or_eps_model: a :class:`~scorekit.prediction.Denoiser` (its ``x0_pred`` is turned
            into ``eps = (x_t - alpha x0_pred) / sigma``), or a callable ``model(x_t, t)`` predicting
            ``prediction_type`` (``"x0"``: a plain denoiser; ``"eps"``: an eps-model).
        process: the forward process.
        data: (M, ...) training data.
        num_samples: Monte-Carlo samples per step.
        generator: the source of the data indices and noise (required).
        timesteps: a descending grid ending at the data time for a shorter trajectory; default
            :func:`scorekit.timesteps.chain_timesteps` (DDPM: the whole chain ``T-1, ..., 0, data``;
            a continuous process: 1000 steps uniform in log-SNR).
        batch_size: samples per network call (default ``num_samples``).
        data_radius: half the width of the data range for the upper clip (1 for ``[-1, 1]``).

    Returns:
        (K,) float64 variances, one per reverse step in ascending time order (entry 0 is the step
        into the data; for the whole chain the ``(T,)`` table is indexed by the DDPM step ``t``),
        the order ``elbo(variance=...)`` and ``ddpm(variance=...)`` take.
    """
    if not isinstance(generator, torch.Generator):
        raise ScorekitError("analytic_variances draws random samples: pass generator=torch.Generator().manual_seed(seed)")
    if not isinstance(data, Tensor) or not data.is_floating_point() or data.ndim < 2 or data.shape[0] < 1:
        raise ScorekitError("data must be a floating-point tensor (M, ...) of training samples")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ScorekitError(f"num_samples must be a positive integer, got {num_samples!r}")
    batch_size = num_samples if batch_size is None else whole_number(batch_size, "batch_size")
    denoiser = _as_denoiser(denoiser_or_eps_model, process, prediction_type)
    t_all, s_all = _grid_pairs(process, timesteps)
    M = data.shape[0]
    dev = generator.device
    if num_samples <= M:
        index = torch.randperm(M, generator=generator, device=dev)[:num_samples]
    else:
        index = torch.randint(0, M, (num_samples,), generator=generator, device=dev)
    x0_all = data[index.to(data.device)]
    from .samplers._common import progress_range

    gamma = torch.zeros(t_all.numel(), dtype=_F64)
    d = x0_all[0].numel()
    order = list(range(t_all.numel()))[::-1]                     # noisiest step first
    for k in progress_range(len(order), progress, "analytic variances"):
        i = order[k]
        t = float(t_all[i])
        if t <= process.t_data:
            continue
        alpha, sigma = process.alpha(t).item(), process.sigma(t).item()
        total = 0.0
        for lo in range(0, num_samples, batch_size):
            x0 = x0_all[lo:lo + batch_size]
            eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=dev).to(x0.device)
            x_t = alpha * x0 + sigma * eps
            with torch.no_grad():
                x0_pred = denoiser(x_t, t)
            eps_pred = (x_t.to(_F64) - alpha * x0_pred.to(_F64)) / sigma
            total += float(eps_pred.pow(2).sum())
        gamma[i] = total / (num_samples * d)
    return analytic_variance(process, t_all, s_all, gamma, data_radius=data_radius,
                             data_step=data_step_variance(process, t_all, s_all))


__all__ = ["FIXED_VARIANCES", "LearnedVarianceDenoiser", "PredictionHead", "VARIANCES", "analytic_variance",
           "analytic_variances", "data_step_variance", "fixed_variance", "learned_log_variance", "require_variance_head", "split_output",
           "variance_bounds"]
