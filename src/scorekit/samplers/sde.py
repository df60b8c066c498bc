r"""Samplers of the reverse-time SDE (Song et al. 2021, "Score-based generative modeling through
stochastic differential equations", Section 4 and Algorithms 1-5), for any process.

The forward process ``dx = f(t) x dt + g(t) dW`` has the reverse-time SDE (Anderson 1982)

    dx = [f(t) x - g(t)^2 grad log p_t(x)] dt + g(t) dW-bar,        t from t_max down to the data.

Only the shared interface is used: ``f``, ``g^2``, ``alpha``, ``sigma`` and ``transition`` of the
process, and a denoiser ``D(x, t) = E[x_0 | x_t]``, turned into the score by Tweedie's formula

    grad log p_t(x) = (alpha_t D(x, t) - x) / sigma_t^2.

So every sampler here serves every process (DDPM through its continuous embedding, VP, sub-VP,
VE, EDM) and every kind of network (eps, x0, v, score) through :class:`scorekit.Denoiser`.

**The step into the data.** When the next time ``s`` is the data time (``sigma_s = 0``: ``t = -1``
for DDPM, ``-inf`` for the VE SDE, ``0`` for the others), every predictor here returns the
denoised mean ``alpha_s D(x, t) = E[x_0 | x_t]`` instead of a step of its own. That is the exact
mean of the reverse transition ``p(x_0 | x_t)``; the discretised steps are not defined there (the
VE SDE's step to ``t = -inf`` is infinitely long, and ``grad log p_t`` has no limit at
``sigma = 0`` on data with narrow components), and any noise added there would be left in the
samples. The score SDE code base does the same ("noise removal"); the reverse-diffusion mean
``(2 - alpha_t) x + sigma_t^2 score`` would differ from it by ``(1 - alpha_t) (x - D)`` only.
"""
from __future__ import annotations

import math

import torch

from ..errors import ScorekitError, positive_number
from ..processes import GaussianProcess
from ._common import Callback, check_generator, check_start, grid, progress_range, randn_like
from .langevin import _count

Tensor = torch.Tensor

PREDICTORS = ("reverse_diffusion", "euler_maruyama", "ddim", "none")
CORRECTORS = ("langevin", "none")
SNR_NORMS = ("expected", "batch", "sample")


# --- predictor steps as coefficients ------------------------------------------------------------
#
# Every predictor step from t to s is   x_s = c_x x_t + c_x0 D(x_t, t) + c_z z,   z ~ N(0, I),
# with the score written through the denoiser, score = (alpha_t D - x_t) / sigma_t^2.

def _coefficients(process: GaussianProcess, ts: Tensor, predictor: str) -> tuple[list, list, list]:
    """``(c_x, c_x0, c_z)`` of each step ``ts[i] -> ts[i+1]`` as python floats (float64 maths)."""
    t, s = ts[:-1], ts[1:]
    alpha_t, sigma_t = process.alpha(t), process.sigma(t)
    alpha_s, sigma_s = process.alpha(s), process.sigma(s)
    if predictor == "euler_maruyama":
        h = t - s
        f, g2 = process.f(t), process.g2(t)
        r = g2 * h / sigma_t ** 2                            # g^2 dt relative to sigma_t^2
        c_x, c_x0, c_z = 1 - f * h - r, r * alpha_t, (g2 * h).clamp_min(0).sqrt()
    elif predictor == "reverse_diffusion":
        a, G = process.transition(t, s)                      # discrete f_{i+1} = (a - 1) x, G_{i+1} = G
        r = G ** 2 / sigma_t ** 2
        c_x, c_x0, c_z = 2 - a - r, r * alpha_t, G
    elif predictor == "ddim":
        c_x = sigma_s / sigma_t
        c_x0, c_z = alpha_s - alpha_t * c_x, torch.zeros_like(t)
    else:                                                    # "none": time moves on, x stays
        c_x, c_x0, c_z = torch.ones_like(t), torch.zeros_like(t), torch.zeros_like(t)
    # the step into the data returns the denoised mean E[x_0 | x_t] (see the module notes)
    into_data = sigma_s == 0
    c_x = torch.where(into_data, torch.zeros_like(t), c_x)
    c_x0 = torch.where(into_data, alpha_s, c_x0)
    c_z = torch.where(into_data, torch.zeros_like(t), c_z)
    return c_x.tolist(), c_x0.tolist(), c_z.tolist()


class _Evaluations:
    """The denoiser, counting evaluations and reporting each to the callback."""

    def __init__(self, denoiser, callback: Callback | None):
        self.denoiser, self.callback, self.count = denoiser, callback, 0

    def __call__(self, x: Tensor, t: float) -> Tensor:
        x0 = self.denoiser(x, t)
        if self.callback is not None:
            self.callback(self.count, t, x, x0)
        self.count += 1
        return x0


def _predict(x: Tensor, x0: Tensor, c_x: float, c_x0: float, c_z: float, generator) -> Tensor:
    out = c_x * x + c_x0 * x0
    if c_z > 0:
        out = out + c_z * randn_like(x, generator)
    return out


def _norms(v: Tensor, snr_norm: str) -> Tensor:
    """``||v_n||`` per sample (shaped to broadcast against ``v``), or their batch mean."""
    norm = v.reshape(v.shape[0], -1).norm(dim=1).reshape((-1,) + (1,) * (v.ndim - 1))
    return norm.mean() if snr_norm == "batch" else norm


def langevin_corrector_step(x: Tensor, x0: Tensor, alpha: float, sigma: float, snr: float,
                            alpha_i: float, generator: torch.Generator, snr_norm: str = "expected") -> Tensor:
    r"""One Langevin corrector step at a time with ``(alpha, sigma)`` (Song et al. 2021, Alg. 4/5):

        s = (alpha x0_pred - x) / sigma^2,    z ~ N(0, I),
        eps = 2 alpha_i (snr ||z|| / ||s||)^2,
        x <- x + eps s + sqrt(2 eps) z,

    so that the drift ``eps s`` and the noise ``sqrt(2 eps) z`` have norms in the ratio ``snr``.
    ``snr_norm`` says which norms:

    * ``"expected"``: their expectations, ``||z||^2 -> D`` and ``||s||^2 -> D / sigma^2`` (the
      score's norm when the data's own spread is small beside ``sigma``), which gives
      ``eps = 2 alpha_i snr^2 sigma^2``: NCSN's ``sigma^2`` step-size rule. The step is the same for
      every sample and never unstable: the curvature of ``-log p_t`` is at most ``1 / sigma^2``, so
      ``eps`` times it is at most ``2 snr^2``.
    * ``"batch"``: the means of ``||z_n||`` and ``||s_n||`` over the batch (the score SDE code);
      each sample's step then depends on the others in its batch.
    * ``"sample"``: each sample's own norms (Alg. 4/5 as printed). Fine in high dimension, where
      both norms concentrate; in low dimension ``||s||`` is often near 0, the step
      ``~ ||z||^2 / ||s||`` is heavy-tailed and the state-dependent step size biases the chain
      (its stationary law is ``~ p_t / eps(x)``, not ``p_t``). A sample whose score is exactly zero
      is left where it is.
    """
    score = (alpha * x0 - x) / sigma ** 2
    z = randn_like(x, generator)
    if snr_norm == "expected":
        eps = 2 * alpha_i * (snr * sigma) ** 2
        return x + eps * score + math.sqrt(2 * eps) * z
    score_norm = _norms(score, snr_norm)
    eps = 2 * alpha_i * (snr * _norms(z, snr_norm) / score_norm) ** 2
    eps = torch.where(score_norm > 0, eps, torch.zeros_like(eps))
    return x + eps * score + torch.sqrt(2 * eps) * z


def _run(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *, predictor: str,
         corrector: str, corrector_steps: int, snr: float, snr_norm: str, generator, callback,
         progress, name: str) -> Tensor:
    x = check_start(x_T)
    ts = grid(process, timesteps)
    c_x, c_x0, c_z = _coefficients(process, ts, predictor)
    if any(c > 0 for c in c_z) or (corrector != "none" and corrector_steps > 0):
        generator = check_generator(generator, name)
    evaluate = _Evaluations(denoiser, callback)
    times = ts[:-1].tolist()
    alpha, sigma = process.alpha(ts[:-1]).tolist(), process.sigma(ts[:-1]).tolist()
    # alpha_i of Alg. 5: the per-step signal factor alpha_{t|s}^2 (1 - beta_i for DDPM, 1 if alpha = 1)
    step_alpha = (process.transition(ts[:-1], ts[1:])[0] ** 2).clamp(max=1).tolist()
    for i in progress_range(len(times), progress, name):
        t = times[i]
        if corrector == "langevin":
            for _ in range(corrector_steps):
                x = langevin_corrector_step(x, evaluate(x, t), alpha[i], sigma[i], snr, step_alpha[i],
                                            generator, snr_norm)
        if predictor == "none" and c_x0[i] == 0:
            continue                                          # nothing to evaluate: x carries on to s
        x = _predict(x, evaluate(x, t), c_x[i], c_x0[i], c_z[i], generator)
    return x


def reverse_sde(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
                generator: torch.Generator | None = None, callback: Callback | None = None,
                progress: bool = False) -> Tensor:
    r"""Euler-Maruyama for the reverse-time SDE (Song et al. 2021, eq. 6; Alg. "EulerMaruyamaPredictor"):

        x_s = x_t - [f(t) x_t - g(t)^2 score(x_t, t)] h + g(t) sqrt(h) z,     h = t - s > 0,
        score(x_t, t) = (alpha_t D(x_t, t) - x_t) / sigma_t^2,                z ~ N(0, I),

    with ``f`` and ``g^2`` taken at the start ``t`` of each step (first order, strong order 1/2).
    The step into the data returns ``E[x_0 | x_t] = D(x_t, t)`` (see the module notes). One
    network evaluation per model time. Accurate only where ``g(t)^2 h << sigma_t^2``: a grid
    uniform in log-SNR gives that; the uniform DDPM grid with few steps does not near ``t = 0``.

    Args:
        denoiser: ``D(x_t, t) -> x0_pred``.
        process: the forward process.
        x_T: the start, shape ``(N, ...)``.
        timesteps: descending grid ending at the end time (see :mod:`scorekit.timesteps`).
        generator: the source of the noise (required).
        callback: ``callback(i, t, x_t, x0_pred)`` after each network evaluation.
        progress: show a progress bar.
    """
    return _run(denoiser, process, x_T, timesteps, predictor="euler_maruyama", corrector="none",
                corrector_steps=0, snr=0.0, snr_norm="expected", generator=generator,
                callback=callback, progress=progress, name="reverse_sde")


def reverse_diffusion(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
                      generator: torch.Generator | None = None, callback: Callback | None = None,
                      progress: bool = False) -> Tensor:
    r"""The reverse-diffusion predictor (Song et al. 2021, eq. 46-47), for any process.

    The grid step ``s -> t`` of the forward process is ``x_t = x_s + f_i(x_s) + G_i z`` with,
    from ``q(x_t | x_s) = N(alpha_{t|s} x_s, sigma_{t|s}^2 I)``,

        f_i(x) = (alpha_{t|s} - 1) x,        G_i = sigma_{t|s}.

    Its reverse, with the forward drift evaluated at the later point, is

        x_s = x_t - f_i(x_t) + G_i^2 score(x_t, t) + G_i z
            = (2 - alpha_{t|s}) x_t + sigma_{t|s}^2 score(x_t, t) + sigma_{t|s} z.

    For ``alpha = 1`` (VE, EDM, the simple VE process) this is exactly DDPM's ancestral step with
    the "large" variance ``sigma_{t|s}^2``. For variance-preserving processes the ancestral step is
    ``(x_t + sigma_{t|s}^2 score) / alpha_{t|s} + sigma_{t|s} z`` (Ho et al. 2020, Alg. 2), and the
    two differ by ``-(1 - a)/a [(1 - a) x_t + sigma_{t|s}^2 score]`` (``a = alpha_{t|s}``), which is
    ``O(beta^2)`` per step (Song et al. 2021, Appendix E). The step into the data returns
    ``E[x_0 | x_t]`` (see the module notes). One network evaluation per model time.

    Args: as :func:`reverse_sde`.
    """
    return _run(denoiser, process, x_T, timesteps, predictor="reverse_diffusion", corrector="none",
                corrector_steps=0, snr=0.0, snr_norm="expected", generator=generator,
                callback=callback, progress=progress, name="reverse_diffusion")


def pc(denoiser, process: GaussianProcess, x_T: Tensor, timesteps, *,
       predictor: str = "reverse_diffusion", corrector: str = "langevin", corrector_steps: int = 1,
       snr: float = 0.16, snr_norm: str = "expected", generator: torch.Generator | None = None,
       callback: Callback | None = None, progress: bool = False) -> Tensor:
    r"""Predictor-corrector sampling (Song et al. 2021, Alg. 1-3).

    At each model time ``t_i`` of the grid: ``corrector_steps`` Langevin steps on ``p_{t_i}``

        s = (alpha_t D(x, t) - x) / sigma_t^2,   z ~ N(0, I),   eps = 2 alpha_i (snr ||z|| / ||s||)^2,
        x <- x + eps s + sqrt(2 eps) z                                          (Alg. 4/5)

    (the norms as ``snr_norm`` says, see below), then one predictor step to ``t_{i+1}``:

    * ``"reverse_diffusion"``: :func:`reverse_diffusion`'s step (eq. 47);
    * ``"euler_maruyama"``: :func:`reverse_sde`'s step;
    * ``"ddim"``: the deterministic DDIM step ``x_s = alpha_s D + sigma_s (x_t - alpha_t D) / sigma_t``
      (Euler for the probability-flow ODE), making the sampler's noise that of the corrector only;
    * ``"none"``: ``x`` moves on to ``t_{i+1}`` unchanged, so the sampler is annealed Langevin
      dynamics (NCSN, Song & Ermon 2019) over the grid's noise levels, with no evaluation, except
      that the step into the data still returns ``E[x_0 | x_t]`` (NCSN's denoising step).

    The step into the data returns ``E[x_0 | x_t]`` for every predictor (see the module notes).

    ``snr`` is the ratio ``||eps s|| / ||sqrt(2 eps) z||`` of each corrector step's drift to its
    noise. The default 0.16 is the value Song et al. used for VE SDEs on CIFAR-10; with it every
    process here reproduces the exact mixtures of :mod:`scorekit.toy` at 250 steps.

    ``snr_norm`` chooses the norms of the step-size rule (see :func:`langevin_corrector_step`):
    ``"expected"`` (default) replaces them by their expectations, ``||z||^2 = D`` and
    ``||s||^2 = D / sigma_t^2``, so ``eps = 2 alpha_i snr^2 sigma_t^2`` for every sample: stable in
    any dimension and independent of the batch. ``"batch"`` uses batch means of the norms (the
    score SDE code). ``"sample"`` uses each sample's norms as Alg. 4/5 is printed; it is sound only
    in high dimension: in 2-D it throws samples far away (at 250 steps the sliced Wasserstein
    distance to the mixture was 1.4-3.1 against a noise floor of 0.14) because ``||s||`` is often
    near zero. ``alpha_i`` of
    Alg. 5 is the per-step signal factor ``alpha_{t_i | t_{i+1}}^2`` of the grid: ``1`` whenever
    ``alpha = 1`` (VE, EDM; Alg. 4), ``1 - beta_i`` for DDPM with consecutive steps (Alg. 5), and
    ``alpha_t^2`` on the last step. Alg. 5 uses it to shrink the step slightly where the process
    shrinks the signal; with fine grids it is close to 1 throughout.

    Network evaluations per sample (NFE): ``steps * (1 + corrector_steps)`` for ``steps`` model
    times (``steps * corrector_steps + 1`` with ``predictor="none"``); ``callback`` fires once per
    evaluation, numbered ``0 .. NFE - 1``.

    Args:
        denoiser, process, x_T, timesteps, generator, callback, progress: as :func:`reverse_sde`.
        predictor: ``"reverse_diffusion"``, ``"euler_maruyama"``, ``"ddim"`` or ``"none"``.
        corrector: ``"langevin"`` or ``"none"``.
        corrector_steps: Langevin steps per model time, ``>= 0``.
        snr: the corrector's target signal-to-noise ratio, ``> 0``.
        snr_norm: ``"expected"``, ``"batch"`` or ``"sample"``: the norms in the step-size rule.
    """
    if predictor not in PREDICTORS:
        raise ScorekitError(f"unknown predictor {predictor!r}; choose one of {', '.join(PREDICTORS)}")
    if corrector not in CORRECTORS:
        raise ScorekitError(f"unknown corrector {corrector!r}; choose one of {', '.join(CORRECTORS)}")
    corrector_steps = _count(corrector_steps, "corrector_steps", 0)
    snr = positive_number(snr, "snr", "e.g. 0.16")
    if snr_norm not in SNR_NORMS:
        raise ScorekitError(f"unknown snr_norm {snr_norm!r}; choose one of {', '.join(SNR_NORMS)}")
    if predictor == "none" and (corrector == "none" or corrector_steps == 0):
        raise ScorekitError("predictor='none' needs a corrector: use corrector='langevin' with "
                            "corrector_steps >= 1")
    return _run(denoiser, process, x_T, timesteps, predictor=predictor, corrector=corrector,
                corrector_steps=corrector_steps, snr=snr, snr_norm=snr_norm, generator=generator,
                callback=callback, progress=progress, name="pc")
