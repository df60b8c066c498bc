r"""Training objectives: denoising score matching under every weighting of the lectures.

One training step draws a time ``t``, noise ``eps ~ N(0, I)`` and ``x_t = alpha_t x_0 + sigma_t eps``,
asks the network for its prediction and scores it against the matching target. Seen through the
same ``x0_hat`` (``eps - eps_hat = -(alpha / sigma) (x_0 - x0_hat)``), the four targets' squared
errors are one error at different scales, ``||eps - eps_hat||^2 = r(t) ||target - prediction||^2``:

* ``eps``: target ``eps``, ``r = 1``;
* ``x0``: target ``x_0``, ``r = SNR = alpha^2 / sigma^2``;
* ``v``: target ``v = alpha eps - sigma x_0`` (Salimans & Ho 2022), ``r = alpha^2 / (alpha^2 + sigma^2)^2``
  (``alpha^2 = SNR / (SNR + 1)`` for a variance-preserving process);
* ``score``: target ``grad log q(x_t | x_0) = -eps / sigma``, ``r = sigma^2``.

A weighting is a weight ``w_eps(t)`` on ``||eps - eps_hat||^2``; the loss is computed in the
network's own space with the weight ``w_eps(t) r(t)``, so each weighting is the same objective
whatever the network predicts (except ``simple``, defined as weight 1 on the network's own target).
The weightings (``w_x0 = w_eps SNR`` is the weight on ``||x_0 - x0_hat||^2``):

* ``simple`` -- L_simple (Ho et al. 2020): weight 1 on the network's own error, i.e.
  ``w_eps = 1 / r``: ``||eps - eps_hat||^2`` for an eps net, ``||x_0 - x0_hat||^2`` for an x0 net,
  ``||v - v_hat||^2`` for a v net.
* ``elbo`` -- the variational bound, in nats. Discrete: ``w_eps = beta_t^2 / (2 s_t^2 alpha_t (1 - abar_t))``
  with ``alpha_t = 1 - beta_t`` (``= ||mu~ - mu_theta||^2 / (2 s_t^2)``, Ho et al. 2020, eq. 8 and 12);
  continuous: ``w_eps = -1/2 d log SNR / dt = g(t)^2 / (2 sigma(t)^2)``, i.e.
  ``w_x0 = -1/2 d SNR / dt`` (Kingma et al. 2021, VDM eq. 17). Details below.
* ``min_snr`` -- Min-SNR-gamma (Hang et al. 2023): ``w_x0 = min(SNR, gamma)``, so
  ``w_eps = min(SNR, gamma) / SNR`` and, for a VP process, ``min(SNR, gamma) / (SNR + 1)`` on the v error.
* ``lambda`` -- denoising score matching with ``lambda(t)`` (Song et al. 2021, eq. 7):
  ``lambda(t) ||s_theta - grad log q(x_t | x_0)||^2``, so ``w_eps = lambda(t) / sigma^2``; the default
  ``lambda = sigma^2`` is the eps-MSE (``w_eps = 1``) and ``lambda = g(t)^2`` the continuous ELBO
  (up to the factor 1/2 and the mean over dimensions).
* ``edm`` -- EDM (Karras et al. 2022, eq. 8 and table 1): ``w_x0 = (sigma~^2 + sigma_data^2) /
  (sigma~ sigma_data)^2`` on the noise level ``sigma~ = sigma / alpha`` (``= t`` for the
  :class:`~scorekit.processes.EDM` process, where this is exactly the paper's weight; other processes
  use their VE-equivalent noise level), so ``w_eps = 1 + sigma~^2 / sigma_data^2``. On the x0
  prediction of :class:`scorekit.precondition.EDMPrecond` it is weight 1 on EDM's preconditioned
  target ``F``. The weight grows like ``sigma~^2`` at high noise; EDM pairs it with log-normal noise
  levels (:class:`LogNormalTimesteps`), not uniform ones.
* ``hybrid`` -- Improved DDPM's ``L_hybrid = L_simple + lambda L_vlb`` (Nichol & Dhariwal 2021, eq. 16,
  ``lambda = hybrid_lambda = 0.001``) for a network with a variance head (``2 C`` outputs, see
  :mod:`scorekit.variances`; discrete processes only). ``L_simple`` is the ``simple`` error of the
  first ``C`` channels; ``L_vlb`` is the bound's term of the drawn step from
  :func:`scorekit.likelihood.elbo.step_terms` (the KL ``L_t``, or the Gaussian decoder's ``L_0``),
  with the network's learned variance and a stop-gradient on its mean (``x0_pred`` detached), so
  ``L_vlb`` trains only the variance head. As in improved-diffusion, ``L_vlb`` is measured in bits
  per dimension and scaled by the number of steps ``K`` (``K L_t`` estimates ``sum_t L_t`` under
  uniform ``t``): ``per_sample = mean ||target - prediction||^2 + lambda K L_t / (D ln 2)``.

Reduction over the ``D`` dimensions of one sample: the mean for every weighting except ``elbo``,
which sums (so that ``per_sample`` is in nats).

**The ELBO terms.** For a discrete process (DDPM steps ``0 .. T-1``, or :class:`~scorekit.processes.SimpleVE`)
the term of step ``t`` with previous time ``s = t - 1`` is

    L_t = KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t)),   p_theta(x_s | x_t) = N(mu_theta, s_t^2 I),

with ``mu~ = c_x0 x_0 + c_xt x_t`` the posterior mean, ``mu_theta`` the same with ``x0_hat`` in place of
``x_0`` and ``beta~_t`` the posterior variance (Ho et al. 2020, eq. 5-7). Then

    L_t = c_x0^2 ||x_0 - x0_hat||^2 / (2 s_t^2) + D/2 (beta~_t / s_t^2 - 1 - log(beta~_t / s_t^2)),

and ``c_x0^2 sigma_t^2 / alpha_t^2 = beta_t^2 / ((1 - beta_t)(1 - abar_t))`` for DDPM, giving the
table's ``w_eps``. ``elbo_variance`` chooses ``s_t^2``: ``"small"`` is ``beta~_t`` (the second term
vanishes) and ``"large"`` is ``beta_t`` (the transition variance ``sigma_{t|s}^2``). At the first step
(DDPM ``t = 0``, the paper's ``L_0``) there is no KL: the term is the decoder's negative
log-likelihood. Here the decoder is the Gaussian ``N(x_0; mu_theta, s_0^2 I)`` (``mu_theta = x0_hat``
at this step), so

    L_0 = ||x_0 - x0_hat||^2 / (2 s_0^2) + D/2 log(2 pi s_0^2),

a density in nats for continuous data (for 8-bit images improved-diffusion's discretised decoder
gives a probability instead; this loss keeps the Gaussian). ``s_0^2 = beta~_1`` for ``"small"`` (``beta~_0 = 0``;
improved-diffusion's clipping) and ``beta_0`` for ``"large"`` (Ho et al.'s ``sigma_1^2 = beta_1``), as
:func:`scorekit.variances.fixed_variance` and :func:`scorekit.likelihood.elbo` choose them. ``sum_t E[L_t]`` plus the prior term ``KL(q(x_T | x_0) || p(x_T))``, which has
no parameters, bounds ``-log p_theta(x_0)``; a uniform ``t`` makes ``T * mean(per_sample)`` an unbiased
estimate of the sum.

For a continuous process ``per_sample`` is the integrand of the continuous-time diffusion loss
(Kingma et al. 2021, eq. 17): ``L = int_{t_min}^{t_max} E[per_sample | t] dt``, estimated by
``(t_max - t_min) * mean(per_sample)`` under uniform ``t``.

Time sampling: :class:`UniformTimesteps` (the default), :class:`ImportanceTimesteps`
(improved-diffusion's loss-aware sampler) and :class:`LogNormalTimesteps` (EDM's training
distribution of noise levels). A sampler returns ``(t, weight)``; ``loss = mean(weight * per_sample)``.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .errors import ScorekitError, positive_number, reads_are_free
from .precondition import resolve_sigma_data
from .prediction import PREDICTION_TYPES, score_from_eps, to_x0, v_from_x0_eps
from .processes import GaussianProcess, check_process, expand_like
from .variances import fixed_variance, learned_log_variance, split_output

Tensor = torch.Tensor

WEIGHTINGS = ("simple", "elbo", "min_snr", "lambda", "edm", "hybrid")
ELBO_VARIANCES = ("small", "large")

_F64 = torch.float64


class LossOutput(NamedTuple):
    """What :func:`diffusion_loss` returns.

    Attributes:
        loss: scalar ``mean(weight * per_sample)`` to back-propagate.
        per_sample: (N,) the weighted error of each sample at its time (before the time
            sampler's ``weight``); feed it to ``timestep_sampler.update(t, per_sample)``.
        t: (N,) the process times used, exactly as passed to the network (``torch.long`` for
            discrete processes, the data's float dtype otherwise).
        weight: (N,) the time sampler's weights (``1 / (K p_t)`` for importance sampling, ones for
            uniform), in the data's dtype.
    """

    loss: Tensor
    per_sample: Tensor
    t: Tensor
    weight: Tensor


# ---------------------------------------------------------------------------------------------
# Time samplers
# ---------------------------------------------------------------------------------------------

def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ScorekitError("generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)); "
                            f"got {type(generator).__name__}")


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ScorekitError(f"n must be a positive integer, got {n!r}")
    return n


def _training_steps(process: GaussianProcess) -> tuple[int, int]:
    """The integer training times ``first .. last`` of a discrete process (DDPM: ``0 .. T-1``)."""
    return int(round(process.t_min)), int(round(process.t_max))


class UniformTimesteps:
    r"""Uniform training times: integers ``t_min .. t_max`` for a discrete process (``0 .. T-1`` for
    DDPM), ``t ~ U[t_min, t_max]`` for a continuous one. Weights are all one."""

    def __init__(self, process: GaussianProcess):
        self.process = process

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(t, weight)``: ``n`` times (``torch.long`` if discrete, float64 otherwise) and ones."""
        n = _check_n(n)
        _check_generator(generator)
        dev = generator.device
        if self.process.discrete:
            first, last = _training_steps(self.process)
            t = torch.randint(first, last + 1, (n,), generator=generator, device=dev)
        else:
            u = torch.rand(n, generator=generator, dtype=_F64, device=dev)
            t = self.process.t_min + (self.process.t_max - self.process.t_min) * u
        return t, torch.ones(n, dtype=_F64, device=dev)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Nothing to learn."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ScorekitError(f"UniformTimesteps has no state, got keys {sorted(state)}")


class ImportanceTimesteps:
    r"""Loss-aware time sampling for a discrete process (Nichol & Dhariwal 2021, section 3.3).

    Keeps the last ``history`` values of ``L_t`` for each of the ``K`` training steps and draws

        p_t = (1 - u) sqrt(E[L_t^2]) / sum_s sqrt(E[L_s^2]) + u / K,      u = uniform_prob,

    once every step has a full history (uniform before that). Each draw carries the weight
    ``1 / (K p_t)``, so ``mean(weight * L_t)`` stays an unbiased estimate of the uniform average
    ``(1/K) sum_t E[L_t]`` while its variance drops (most for the ELBO, whose terms span orders of
    magnitude).

    Args:
        process: a discrete process (:class:`~scorekit.processes.DDPM`, ``SimpleVE``).
        history: losses remembered per step.
        uniform_prob: the share ``u`` of uniform sampling mixed in, in ``[0, 1]``.
    """

    def __init__(self, process: GaussianProcess, history: int = 10, uniform_prob: float = 0.001):
        if not process.discrete:
            raise ScorekitError(f"ImportanceTimesteps needs a discrete process (DDPM or SimpleVE), got "
                                f"{type(process).__name__}; use UniformTimesteps for continuous time")
        if isinstance(history, bool) or not isinstance(history, int) or history < 1:
            raise ScorekitError(f"history must be a positive integer, got {history!r}")
        if isinstance(uniform_prob, bool) or not isinstance(uniform_prob, (int, float)) \
                or not 0.0 <= uniform_prob <= 1.0:
            raise ScorekitError(f"uniform_prob must be a number in [0, 1], got {uniform_prob!r}")
        self.process = process
        self.history = history
        self.uniform_prob = float(uniform_prob)
        self.first, last = _training_steps(process)
        self.num_steps = last - self.first + 1
        self.loss_history = torch.zeros(self.num_steps, history, dtype=_F64)
        self.loss_counts = torch.zeros(self.num_steps, dtype=torch.long)

    def to(self, device) -> "ImportanceTimesteps":
        """Keep the history on ``device`` (the trainer's), where :meth:`update` and :meth:`sample`
        then work, and where :meth:`load_state_dict` puts a resumed one: a resumed run draws its
        times from probabilities computed on the same device as an uninterrupted one."""
        self.loss_history = self.loss_history.to(device)
        self.loss_counts = self.loss_counts.to(device)
        return self

    def warmed_up(self) -> bool:
        """Whether every step has a full history (until then sampling is uniform)."""
        return bool(torch.all(self.loss_counts == self.history))

    def probabilities(self) -> Tensor:
        """(K,) float64 ``p_t`` for the steps ``t_min .. t_max``, on the device of the history.

        Uniform until every step has a full history, and also while the history holds a non-finite
        loss (possible only on a GPU, where :meth:`update` does not stop to check; the trainer then
        stops at its next check of the loss). Computed without waiting for the device."""
        K = self.num_steps
        w = torch.sqrt(torch.mean(self.loss_history ** 2, dim=1))
        total = w.sum()
        usable = torch.all(self.loss_counts == self.history) & torch.isfinite(total) & (total > 0)
        p = (1 - self.uniform_prob) * w / torch.where(usable, total, 1.0) + self.uniform_prob / K
        return torch.where(usable, p, torch.full_like(p, 1.0 / K))

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """``(t, weight)``: ``n`` steps ``t ~ p`` (``torch.long``) and ``weight = 1 / (K p_t)`` (float64),
        on the generator's device."""
        n = _check_n(n)
        _check_generator(generator)
        p = self.probabilities().to(generator.device)
        index = torch.multinomial(p, n, replacement=True, generator=generator)
        weight = 1.0 / (self.num_steps * p[index])
        return index + self.first, weight

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Record the losses ``L_t`` just observed at steps ``t`` (oldest forgotten first, and in the
        order given among equal steps).

        The history moves to the device of ``losses`` and is updated there in a fixed number of
        tensor operations, with no Python loop over the samples and, off the CPU, no wait for the
        device: each step's row becomes the last ``history`` entries of its old entries followed by
        its new ones. On the CPU ``t`` and ``losses`` are also checked (finite, within range)."""
        losses = torch.as_tensor(losses).detach().reshape(-1)
        device = losses.device
        losses = losses.to(_F64)
        t = torch.as_tensor(t).detach().reshape(-1).to(device)
        if t.numel() != losses.numel():
            raise ScorekitError(f"update needs one loss per time: got {t.numel()} times and "
                                f"{losses.numel()} losses")
        index = torch.round(t.to(_F64)).long() - self.first
        if reads_are_free(losses):
            if not torch.all(torch.isfinite(losses)):
                raise ScorekitError("update got non-finite losses (NaN or inf); the training step diverged "
                                    "— lower the learning rate or check the data")
            if t.numel() and (index.min() < 0 or index.max() >= self.num_steps):
                raise ScorekitError(f"update got times outside the training steps {self.first} .. "
                                    f"{self.first + self.num_steps - 1}")
        self.to(device)
        if not t.numel():
            return
        H, K = self.history, self.num_steps
        sorted_index, order = torch.sort(index, stable=True)        # new losses grouped by step, in order
        sorted_losses = losses[order]
        steps = torch.arange(K, device=device)
        start = torch.searchsorted(sorted_index, steps)              # each step's first new loss
        new_count = torch.searchsorted(sorted_index, steps, right=True) - start
        old_count = self.loss_counts
        total = old_count + new_count                                # entries of old + new, per step
        slot = torch.arange(H, device=device)
        e = (total - H).clamp(min=0)[:, None] + slot[None, :]        # the entry each slot receives
        from_old = e < old_count[:, None]
        old_value = torch.gather(self.loss_history, 1, e.clamp(max=H - 1))
        new_value = sorted_losses[(start[:, None] + e - old_count[:, None]).clamp(0, losses.numel() - 1)]
        value = torch.where(from_old, old_value, new_value)
        self.loss_history = torch.where(slot[None, :] < total[:, None], value, self.loss_history)
        self.loss_counts = total.clamp(max=H)

    def state_dict(self) -> dict:
        """Tensors only, on the CPU: ``loss_history`` (K, history) float64 and ``loss_counts`` (K,) long."""
        return {"loss_history": self.loss_history.detach().cpu().clone(),
                "loss_counts": self.loss_counts.detach().cpu().clone()}

    def load_state_dict(self, state: dict) -> None:
        try:
            hist = torch.as_tensor(state["loss_history"], dtype=_F64)
            counts = torch.as_tensor(state["loss_counts"], dtype=torch.long)
        except (KeyError, TypeError) as err:
            raise ScorekitError(f"ImportanceTimesteps state needs loss_history and loss_counts: {err}") from None
        if hist.shape != self.loss_history.shape or counts.shape != self.loss_counts.shape:
            raise ScorekitError(
                f"ImportanceTimesteps state has shapes {tuple(hist.shape)}, {tuple(counts.shape)} but this "
                f"sampler expects {tuple(self.loss_history.shape)}, {tuple(self.loss_counts.shape)} "
                "(same process and history)")
        self.loss_history = hist.to(self.loss_history.device, copy=True)
        self.loss_counts = counts.to(self.loss_counts.device, copy=True)


class LogNormalTimesteps:
    r"""EDM's training distribution (Karras et al. 2022, table 1): ``ln sigma~ ~ N(p_mean, p_std^2)``
    for the noise level ``sigma~ = sigma / alpha`` (``= t`` for :class:`~scorekit.processes.EDM`).

    The time is ``t = t_from_log_snr(-2 ln sigma~)``, clamped to ``[t_min, t_max]`` (and rounded for
    a discrete process). Weights are all one: the objective is the expectation under this
    distribution, as in EDM, not an importance-corrected uniform average.
    """

    def __init__(self, process: GaussianProcess, p_mean: float = -1.2, p_std: float = 1.2):
        self.process = check_process(process)
        self.p_std = positive_number(p_std, "p_std", "1.2 in EDM")
        try:
            self.p_mean = float(p_mean)
        except (TypeError, ValueError):
            self.p_mean = math.nan
        if not math.isfinite(self.p_mean):
            raise ScorekitError(f"p_mean must be a finite number (-1.2 in EDM), got {p_mean!r}")

    def sample(self, n: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        n = _check_n(n)
        _check_generator(generator)
        z = torch.randn(n, generator=generator, dtype=_F64, device=generator.device)
        log_sigma = self.p_mean + self.p_std * z
        t = self.process.t_from_log_snr(-2 * log_sigma).clamp(self.process.t_min, self.process.t_max)
        if self.process.discrete:
            t = torch.round(t).long()
        return t, torch.ones(n, dtype=_F64, device=generator.device)

    def update(self, t: Tensor, losses: Tensor) -> None:
        """Nothing to learn."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        if state:
            raise ScorekitError(f"LogNormalTimesteps has no state, got keys {sorted(state)}")


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------

def own_error_ratio(process: GaussianProcess, t, prediction_type: str) -> Tensor:
    r"""``r(t) = ||eps - eps_hat||^2 / ||target - prediction||^2`` for the same ``x0_hat`` (float64):
    ``1`` (eps), ``SNR`` (x0), ``alpha^2 / (alpha^2 + sigma^2)^2`` (v), ``sigma^2`` (score)."""
    _check_prediction_type(prediction_type)
    t = torch.as_tensor(t, dtype=_F64)
    alpha2, sigma2 = process.alpha(t) ** 2, process.sigma(t) ** 2
    if prediction_type == "eps":
        return torch.ones_like(alpha2)
    if prediction_type == "x0":
        return alpha2 / sigma2
    if prediction_type == "v":
        return alpha2 / (alpha2 + sigma2) ** 2
    return sigma2


def _previous_time(process: GaussianProcess, t: Tensor) -> Tensor:
    """``s = t - 1`` for a discrete step; the data time ``t_data`` before the first step."""
    first, _ = _training_steps(process)
    return torch.where(t <= first, torch.full_like(t, process.t_data), t - 1)


def elbo_terms(process: GaussianProcess, t, variance: str = "small") -> tuple[Tensor, Tensor]:
    r"""``(w_eps, c)`` with ``L_t = w_eps ||eps - eps_hat||^2 + D c``: the ELBO term per time (float64).

    Discrete processes (module docstring): ``w_eps = c_x0^2 sigma_t^2 / (2 alpha_t^2 s_t^2)``, ``c`` the
    variance-mismatch constant ``(r - 1 - log r) / 2`` with ``r = beta~_t / s_t^2``, and at the first
    step the Gaussian decoder's normaliser ``log(2 pi s_0^2) / 2``. Continuous processes:
    ``w_eps = -1/2 d log SNR / dt = g(t)^2 / (2 sigma(t)^2)`` (since ``d log SNR / dt = 2 f - (d sigma^2/dt) /
    sigma^2 = -g^2 / sigma^2``) and ``c = 0``.
    """
    if variance not in ELBO_VARIANCES:
        raise ScorekitError(f"unknown elbo_variance {variance!r}; choose one of {', '.join(ELBO_VARIANCES)}")
    t = torch.as_tensor(t, dtype=_F64)
    if not process.discrete:
        return process.g2(t) / (2 * process.sigma(t) ** 2), torch.zeros_like(t)

    first, _ = _training_steps(process)
    s = _previous_time(process, t)
    c_x0, _, post_var = process.posterior_coefficients(t, s)
    # the first step: s_0^2 = beta~ of the next step (beta~_0 = 0) for "small", beta_0 for "large"
    model_var = fixed_variance(process, t, s, variance)
    at_first = t <= first

    snr = torch.exp(process.log_snr(t))
    w_eps = c_x0 ** 2 / (2 * model_var * snr)
    ratio = torch.where(at_first, torch.ones_like(model_var), post_var / model_var)
    mismatch = 0.5 * (ratio - 1 - torch.log(ratio))
    decoder = 0.5 * torch.log(2 * math.pi * model_var)
    return w_eps, torch.where(at_first, decoder, mismatch)


def eps_weight(process: GaussianProcess, t, weighting: str, prediction_type: str = "eps", *,
               min_snr_gamma: float = 5.0, elbo_variance: str = "small",
               lambda_fn: Callable[[Tensor], Tensor] | None = None,
               sigma_data: float | None = None) -> Tensor:
    r"""``w_eps(t)``: the weighting's weight on ``||eps - eps_hat||^2`` (float64), per the module's table.

    ``prediction_type`` matters only for ``simple`` (``w_eps = 1 / r(t)``) and ``hybrid`` (the
    weight of its ``L_simple`` part, the same). For ``elbo`` this is the weight of the summed error,
    for the others of the mean.
    """
    _check_weighting(weighting)
    t = torch.as_tensor(t, dtype=_F64)
    if weighting in ("simple", "hybrid"):
        return 1.0 / own_error_ratio(process, t, prediction_type)
    if weighting == "elbo":
        return elbo_terms(process, t, elbo_variance)[0]
    snr = torch.exp(process.log_snr(t))
    if weighting == "min_snr":
        gamma = positive_number(min_snr_gamma, "min_snr_gamma", "5 in the paper")
        return torch.clamp(snr, max=gamma) / snr
    if weighting == "lambda":
        sigma2 = process.sigma(t) ** 2
        if lambda_fn is None:
            return torch.ones_like(sigma2)
        lam = torch.as_tensor(lambda_fn(t), dtype=_F64)
        if lam.shape not in ((), t.shape) or not torch.all(torch.isfinite(lam)) or torch.any(lam < 0):
            raise ScorekitError(f"lambda_fn(t) must return finite non-negative values of shape {tuple(t.shape)}")
        return lam.expand(t.shape) / sigma2
    # edm: w_x0 = (s^2 + sd^2) / (s sd)^2 with s^2 = 1 / SNR, so w_eps = w_x0 / SNR = 1 + s^2 / sd^2
    sd = resolve_sigma_data(process, sigma_data)
    return 1.0 + 1.0 / (snr * sd ** 2)


def loss_weight(process: GaussianProcess, t, weighting: str = "simple", prediction_type: str = "eps",
                **options) -> Tensor:
    r"""The weight on the network's own squared error ``||target - prediction||^2``:
    ``w_eps(t) r(t)`` (exactly 1 for ``simple``). ``options`` as for :func:`eps_weight`."""
    _check_weighting(weighting)
    _check_prediction_type(prediction_type)
    t = torch.as_tensor(t, dtype=_F64)
    if weighting in ("simple", "hybrid"):
        return torch.ones_like(t)
    return eps_weight(process, t, weighting, prediction_type, **options) * own_error_ratio(process, t, prediction_type)


def hybrid_vlb(process: GaussianProcess, x0: Tensor, x_t: Tensor, t, x0_pred: Tensor, raw_variance: Tensor,
               hybrid_lambda: float = 0.001) -> Tensor:
    r"""``lambda K L_t / (D ln 2)`` per sample: the ``L_vlb`` part of the hybrid loss (module docstring).

    ``L_t`` (nats) is :func:`scorekit.likelihood.elbo.step_terms` of the step ``t -> t - 1`` with the
    reverse variance :func:`scorekit.variances.learned_log_variance` of ``raw_variance`` and the
    Gaussian decoder at the first step; pass ``x0_pred`` detached for the paper's stop-gradient.
    """
    from .likelihood.elbo import step_terms

    t = torch.as_tensor(t, dtype=_F64)
    s = _previous_time(process, t)
    log_var = learned_log_variance(raw_variance, process, t, s)
    vlb = step_terms(process, x0, x_t, t, s, x0_pred, log_var, None)
    first, last = _training_steps(process)
    D = x0[0].numel()
    return float(hybrid_lambda) * (last - first + 1) * vlb / (D * math.log(2.0))


# ---------------------------------------------------------------------------------------------
# The noisy batch and the loss
# ---------------------------------------------------------------------------------------------

class NoisyBatch(NamedTuple):
    """A batch carried forward to drawn training times (what :func:`noisy_batch` returns).

    Attributes:
        x_t: ``alpha_t x_0 + sigma_t eps``, shaped and typed like ``x_0``.
        t: (N,) the times as a network sees them: ``torch.long`` steps for a discrete process,
            the data's float dtype otherwise (the convention of
            :meth:`scorekit.prediction.Denoiser.model_time`).
        t64: (N,) the same times in float64, for the process's coefficients.
        eps: the noise, shaped and typed like ``x_0``.
        weight: (N,) the time sampler's weights, float64.
    """

    x_t: Tensor
    t: Tensor
    t64: Tensor
    eps: Tensor
    weight: Tensor


def noisy_batch(process: GaussianProcess, x0: Tensor, *, generator: torch.Generator,
                timestep_sampler=None) -> NoisyBatch:
    r"""Draw ``(t, weight)`` from ``timestep_sampler`` (default :class:`UniformTimesteps`), then
    ``eps ~ N(0, I)`` from ``generator`` -- in that order, the draws of :func:`diffusion_loss` -- and
    form ``x_t = alpha_t x_0 + sigma_t eps``, a sample of ``q(x_t | x_0)``. Every objective that
    trains on noisy data (the denoising loss, a noise-aware classifier) draws through here."""
    _check_generator(generator)
    return NoisyBatch(*_draw_noisy(process, _check_x0(x0), generator, timestep_sampler))


def _draw_noisy(process: GaussianProcess, x0: Tensor, generator: torch.Generator, timestep_sampler):
    """:func:`noisy_batch` on checked inputs: ``(x_t, t, t64, eps, weight)``."""
    n = x0.shape[0]
    sampler = UniformTimesteps(process) if timestep_sampler is None else timestep_sampler
    t, sampler_weight = sampler.sample(n, generator)
    t_net, t64 = _times(process, t, n, x0)
    sampler_weight = torch.as_tensor(sampler_weight).reshape(-1)
    if sampler_weight.numel() != n:
        raise ScorekitError(f"timestep_sampler returned {sampler_weight.numel()} weights for {n} samples")
    eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=x0.device)
    return process.sample_marginal(x0, t64, eps), t_net, t64, eps, sampler_weight


def diffusion_loss(net: Callable, process: GaussianProcess, x0: Tensor, *, prediction_type: str = "eps",
                   weighting: str = "simple", generator: torch.Generator, y: Tensor | None = None,
                   timestep_sampler=None, min_snr_gamma: float = 5.0, elbo_variance: str = "small",
                   lambda_fn: Callable[[Tensor], Tensor] | None = None,
                   sigma_data: float | None = None, hybrid_lambda: float = 0.001) -> LossOutput:
    r"""The weighted denoising loss of ``net`` on the batch ``x0``.

    Draws ``(t, weight)`` from ``timestep_sampler`` (default :class:`UniformTimesteps`; for the EDM
    process that is uniform in ``sigma`` on ``[sigma_min, sigma_max]``, and EDM's own choice is
    :class:`LogNormalTimesteps`), then
    ``eps ~ N(0, I)`` from ``generator`` (in that order), forms ``x_t = alpha_t x_0 + sigma_t eps``,
    calls ``net(x_t, t, y)`` and returns

        per_sample_i = w(t_i) * reduce(||target_i - net_i||^2) (+ D c(t_i) for elbo),
        loss = mean_i(weight_i * per_sample_i),

    with the target and the weight ``w = w_eps r`` of the prediction type and weighting in the
    module's tables, ``reduce`` the mean over dimensions (the sum for ``elbo``); ``hybrid`` adds
    its ``lambda K L_t / (D ln 2)`` (module docstring).

    Args:
        net: ``net(x_t, t, y) -> Tensor`` shaped like ``x_t``; ``t`` is an (N,) ``torch.long`` tensor
            of steps for a discrete process, a float tensor of the data's dtype otherwise.
        process: the forward process.
        x0: (N, ...) clean data. On the CPU it is checked to be finite, and the times drawn to lie
            in the training range; on a GPU these checks of values are left out, so that a
            training step never waits for the device.
        prediction_type: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.
        weighting: ``"simple"``, ``"elbo"``, ``"min_snr"``, ``"lambda"`` or ``"edm"``.
        generator: the only source of randomness.
        y: optional (N,) class labels, passed on to ``net``.
        timestep_sampler: an object with ``sample(n, generator) -> (t, weight)``.
        min_snr_gamma: ``gamma`` of ``min_snr`` (> 0).
        elbo_variance: ``"small"`` (``beta~_t``) or ``"large"`` (``beta_t``) reverse variance for the
            discrete ``elbo``.
        lambda_fn: ``lambda(t)`` of the ``lambda`` weighting, called on the (N,) float64 times;
            default ``sigma(t)^2``.
        sigma_data: the data's standard deviation for ``edm``; default ``process.sigma_data`` when
            the process has one, else 0.5.
        hybrid_lambda: ``lambda`` of ``hybrid`` (0.001 in the paper).
    """
    check_process(process)
    _check_prediction_type(prediction_type)
    _check_weighting(weighting)
    _check_generator(generator)
    options = dict(min_snr_gamma=positive_number(min_snr_gamma, "min_snr_gamma", "5 in the paper"),
                   elbo_variance=elbo_variance, lambda_fn=lambda_fn, sigma_data=sigma_data)
    if elbo_variance not in ELBO_VARIANCES:
        raise ScorekitError(f"unknown elbo_variance {elbo_variance!r}; choose one of {', '.join(ELBO_VARIANCES)}")
    if weighting == "hybrid":
        if not process.discrete:
            raise ScorekitError(f"the hybrid loss sums the discrete bound's terms; {type(process).__name__} is "
                                f"continuous: use process DDPM (or SimpleVE)")
        if not (isinstance(hybrid_lambda, (int, float)) and not isinstance(hybrid_lambda, bool)
                and math.isfinite(hybrid_lambda) and hybrid_lambda >= 0):
            raise ScorekitError(f"hybrid_lambda must be a non-negative number (0.001 in the paper), got {hybrid_lambda!r}")
    x0 = _check_x0(x0)
    n = x0.shape[0]
    if y is not None and (not isinstance(y, Tensor) or y.shape != (n,)):
        raise ScorekitError(f"y must be an (N,) = ({n},) tensor of class labels, got "
                            f"{tuple(y.shape) if isinstance(y, Tensor) else type(y).__name__}")
    x_t, t_net, t64, eps, sampler_weight = _draw_noisy(process, x0, generator, timestep_sampler)

    if weighting == "hybrid":
        out, raw_variance = split_output(net(x_t, t_net, y), x_t)
    else:
        out = _output(net(x_t, t_net, y), x_t)
    alpha = expand_like(process.alpha(t64), x0)
    sigma = expand_like(process.sigma(t64), x0)
    if prediction_type == "eps":
        target = eps
    elif prediction_type == "x0":
        target = x0
    elif prediction_type == "v":
        target = v_from_x0_eps(x0, eps, alpha, sigma)
    else:
        target = score_from_eps(eps, sigma)

    sq = (out - target).pow(2).reshape(n, -1)
    w = loss_weight(process, t64, weighting, prediction_type, **options)
    if weighting == "elbo":
        const = elbo_terms(process, t64, elbo_variance)[1] * sq.shape[1]
        per_sample = w.to(sq) * sq.sum(1) + const.to(sq)
    elif weighting == "hybrid":
        per_sample = sq.mean(1) + hybrid_vlb(process, x0, x_t, t64, to_x0(out.detach(), prediction_type, x_t,
                                                                          alpha, sigma),
                                             raw_variance, hybrid_lambda).to(sq)
    else:
        per_sample = w.to(sq) * sq.mean(1)
    sampler_weight = sampler_weight.to(per_sample)
    return LossOutput(loss=(sampler_weight * per_sample).mean(), per_sample=per_sample, t=t_net,
                      weight=sampler_weight)


# ---------------------------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------------------------

def _check_prediction_type(kind) -> None:
    if kind not in PREDICTION_TYPES:
        raise ScorekitError(f"unknown prediction_type {kind!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def _check_weighting(weighting) -> None:
    if weighting not in WEIGHTINGS:
        raise ScorekitError(f"unknown weighting {weighting!r}; choose one of {', '.join(WEIGHTINGS)}")


def _check_x0(x0) -> Tensor:
    if not isinstance(x0, Tensor) or not x0.is_floating_point():
        raise ScorekitError(f"x0 must be a floating-point tensor, got "
                            f"{x0.dtype if isinstance(x0, Tensor) else type(x0).__name__}")
    if x0.ndim < 2 or x0.shape[0] == 0 or x0[0].numel() == 0:
        raise ScorekitError(f"x0 must be a non-empty batch (N, C, H, W) or (N, D), got shape {tuple(x0.shape)}")
    if reads_are_free(x0) and not torch.all(torch.isfinite(x0)):
        raise ScorekitError("x0 contains NaN or infinite values; check the data (images must be scaled to [-1, 1])")
    return x0


def _times(process: GaussianProcess, t, n: int, x0: Tensor) -> tuple[Tensor, Tensor]:
    """The times as the network sees them, and the same values in float64 for the coefficients."""
    t = torch.as_tensor(t).reshape(-1).to(x0.device)
    if t.numel() != n:
        raise ScorekitError(f"timestep_sampler returned {t.numel()} times for {n} samples")
    t64 = t.to(_F64)
    check = reads_are_free(t64)
    if check and (not torch.all(torch.isfinite(t64)) or torch.any(t64 < process.t_min - 1e-9)
                  or torch.any(t64 > process.t_max + 1e-9)):
        raise ScorekitError(f"timestep_sampler returned times outside the process's training range "
                            f"[{process.t_min}, {process.t_max}]")
    if process.discrete:
        t_net = torch.round(t64).long()
        if check and torch.any((t64 - t_net).abs() > 1e-6):
            raise ScorekitError("timestep_sampler returned non-integer times for a discrete process")
    else:
        t_net = t64.to(x0.dtype)
    return t_net, t_net.to(_F64)


def _output(out, x_t: Tensor) -> Tensor:
    if not isinstance(out, Tensor):
        out = getattr(out, "sample", out)          # diffusers models return an output object
        if isinstance(out, (tuple, list)):
            out = out[0]
    if not isinstance(out, Tensor) or out.shape != x_t.shape:
        got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ScorekitError(f"network output has shape {got} but x_t has shape {tuple(x_t.shape)}; "
                            "net(x_t, t, y) must return a prediction shaped like x_t")
    return out


__all__ = ["ELBO_VARIANCES", "WEIGHTINGS", "ImportanceTimesteps", "LogNormalTimesteps", "LossOutput",
           "NoisyBatch", "UniformTimesteps", "diffusion_loss", "elbo_terms", "eps_weight", "hybrid_vlb",
           "loss_weight", "noisy_batch", "own_error_ratio"]
