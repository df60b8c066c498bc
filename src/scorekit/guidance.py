r"""Guidance: steering a denoiser towards a condition ``c`` (a class, later an image or a text).

Both methods are denoiser wrappers (:class:`~scorekit.wrappers.DenoiserWrapper`): every sampler
serves them unchanged, and they compose with clipping and thresholding
(:mod:`scorekit.thresholding`, re-exported here).

**Classifier-free guidance** (Ho & Salimans 2022). A network trained with condition dropout
estimates both ``D(x_t, t, c) = E[x_0 | x_t, c]`` and the unconditional
``D(x_t, t, null) = E[x_0 | x_t]``. With guidance weight ``w``

    D_w(x_t, t, c) = D(x_t, t, null) + w (D(x_t, t, c) - D(x_t, t, null)),

so ``w = 1`` is the plain conditional model and ``w = 0`` the unconditional one. In score terms
``grad log p_w = grad log p(x_t) + w grad log p(c | x_t)``: the implicit classifier's gradient
scaled by ``w``, the density ``p(x_t) p(c | x_t)^w``. *Prediction space*: the combination is
taken on ``x0_pred``; because ``eps``, ``v`` and the score are affine in ``x0_pred`` with the same
coefficients for both passes (same ``x_t``, same ``t``) and the weights ``1 - w`` and ``w`` sum to
one, the guided prediction is the same in every space (``tests/test_guidance.py`` checks it). It
stops being the same once something non-affine acts on the two passes: clipping or thresholding
(applied here after the combination, to the guided ``x0_pred``) and the guidance rescale below.

*Other conventions*: diffusers' ``guidance_scale`` is this ``w`` (``noise_uncond +
guidance_scale (noise_cond - noise_uncond)``); the paper writes
``(1 + w') eps(c) - w' eps(null)``, so its ``w'`` is ``w - 1`` here (paper ``w' = 0`` is ``w = 1``).

Options: a *guidance interval* (Kynkäänniemi et al. 2024) applies guidance only while the noise
level ``sigma / alpha = exp(-log_snr / 2)`` lies in ``(lo, hi]``, the plain conditional model
elsewhere (one network pass, not two); *guidance rescale* (Lin et al. 2024, sec. 3.4) with factor
``phi`` matches the guided prediction's per-sample standard deviation to the conditional one's,

    g' = phi g std(d_c) / std(g) + (1 - phi) g,

in a chosen prediction space (``"eps"`` by default, as diffusers does; ``"v"`` as in the paper,
whose models predict ``v``; or ``"x0"``), where the two differ.

**Classifier guidance** (Dhariwal & Nichol 2021). A noise-aware classifier ``p_phi(y | x_t, t)``
adds ``s grad_x log p_phi(y | x_t, t)`` to the score. Through Tweedie's formula
``x0 = (x_t + sigma^2 score) / alpha`` this is

    x0_s = x0 + s (sigma(t)^2 / alpha(t)) grad_x log p_phi(y | x_t, t)

(``eps_s = eps - s sigma grad log p``, Dhariwal & Nichol's eq. 14), for every process: ``alpha``
and ``sigma`` are the process's. At ``s = 1`` with the exact classifier of the data, Bayes' rule
``grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t)`` makes it the exact conditional
denoiser. The gradient is taken through the classifier only, never through the diffusion network.
"""
from __future__ import annotations

import math

import torch

from .conditioning import Condition, NULL_LABEL
from .errors import ScorekitError
from .prediction import PREDICTION_TYPES, convert
from .thresholding import ClipX0, ThresholdX0, clip_x0, dynamic_threshold, threshold_x0
from .wrappers import DenoiserWrapper, twice

Tensor = torch.Tensor


def _finite(value, name: str, cli_name: str | None = None) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ScorekitError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise ScorekitError(f"{name} must be a finite number, got {value!r}",
                            cli=f"{cli_name} must be a finite number, got {value!r}" if cli_name else None)
    return number


def _require_condition(condition, what: str) -> Condition:
    if condition is None:
        raise ScorekitError(f"{what} needs a condition: bind the denoiser to one, e.g. "
                            f"denoiser.with_condition(labels), or pass condition= to scorekit.sample",
                            cli=f"{what} needs a class: give --class")
    return condition


def noise_level(process, t) -> Tensor:
    """``sigma(t) / alpha(t) = exp(-log_snr(t) / 2)``, the noise level of EDM's variables."""
    return torch.exp(-0.5 * process.log_snr(t))


class ClassifierFreeGuidance(DenoiserWrapper):
    r"""``D_w = D(null) + w (D(c) - D(null))`` (see the module docstring), from one network call on
    the doubled batch ``[x_t, x_t]`` with conditions ``[c, null]``.

    Args:
        denoiser: a denoiser of a conditional network trained with condition dropout, bound to the
            condition ``c`` (or bound later with :meth:`with_condition`).
        scale: the guidance weight ``w`` (``1``: conditional, ``0``: unconditional; diffusers'
            ``guidance_scale``).
        interval: ``(lo, hi)``: guide only where the noise level ``sigma / alpha`` lies in
            ``(lo, hi]``; elsewhere the conditional model alone (Kynkäänniemi et al. 2024).
        rescale: ``phi`` in ``[0, 1]`` of guidance rescale (Lin et al. 2024); 0 turns it off.
        rescale_space: the prediction space of the rescale: ``"eps"``, ``"v"`` or ``"x0"``.
    """

    def __init__(self, denoiser, scale: float, *, interval: tuple[float, float] | None = None,
                 rescale: float = 0.0, rescale_space: str = "eps"):
        super().__init__(denoiser)
        if not (getattr(denoiser, "conditional", False) or getattr(denoiser, "cond_channels", None)):
            raise ScorekitError("classifier-free guidance needs a conditional model (one trained with "
                                "classes and label dropout); this model is unconditional",
                                cli="--guidance-scale needs a class-conditional model (trained with "
                                    "--label-dropout); this model is unconditional")
        self.scale = _finite(scale, "the guidance scale", cli_name="--guidance-scale")
        if interval is not None:
            try:
                lo, hi = (float(v) for v in interval)
            except (TypeError, ValueError):
                raise ScorekitError(f"the guidance interval must be two noise levels (lo, hi), got "
                                    f"{interval!r}") from None
            if not (0 <= lo < hi) or math.isnan(hi):
                raise ScorekitError(f"the guidance interval (lo, hi) needs 0 <= lo < hi, got ({lo}, {hi})",
                                    cli=f"--guidance-interval LO,HI needs 0 <= LO < HI, got {lo},{hi}")
            interval = (lo, hi)
        self.interval = interval
        self.rescale = _finite(rescale, "the guidance rescale", cli_name="--guidance-rescale")
        if not 0 <= self.rescale <= 1:
            raise ScorekitError(f"the guidance rescale phi must lie in [0, 1], got {rescale}",
                                cli=f"--guidance-rescale must lie in [0, 1], got {rescale}")
        if rescale_space not in PREDICTION_TYPES or rescale_space == "score":
            raise ScorekitError(f"the rescale space must be 'eps', 'v' or 'x0', got {rescale_space!r}")
        self.rescale_space = rescale_space

    def _inside(self, t, batch: int, device):
        """Where guidance applies: True, False, or an (N,) mask for per-sample times."""
        if self.interval is None:
            return True
        lo, hi = self.interval
        level = noise_level(self.process, t)
        inside = (level > lo) & (level <= hi)
        if inside.ndim == 0:
            return bool(inside)
        return inside.to(device).expand(batch)

    def apply(self, x_t, t, condition, predict):
        condition = _require_condition(condition, "classifier-free guidance")
        n = x_t.shape[0]
        inside = self._inside(t, n, x_t.device)
        if self.scale == 1 or inside is False:
            return predict(x_t, t, condition)
        if self.scale == 0 and inside is True:
            return predict(x_t, t, condition.null())
        both = predict(torch.cat([x_t, x_t]), twice(t, n), self._with_null(condition.for_batch(n)))
        d_c, d_u = both[:n], both[n:]
        guided = d_u + self.scale * (d_c - d_u)
        if self.rescale:
            guided = self._rescaled(guided, d_c, x_t, t)
        if inside is not True:
            guided = torch.where(inside.reshape((-1,) + (1,) * (x_t.ndim - 1)), guided, d_c)
        return guided

    def _with_null(self, cond):
        """``cond`` followed by its null condition, made once per condition (a sampler passes the
        same bound condition at every step), so that the wrappers inside see the same tensors at
        every step."""
        made = getattr(self, "_pair", None)
        if made is None or made[0] is not cond:
            made = self._pair = (cond, cond.cat(cond.null()))
        return made[1]

    def _rescaled(self, guided: Tensor, d_c: Tensor, x_t: Tensor, t) -> Tensor:
        alpha, sigma = self.coefficients(x_t, t)
        space = self.rescale_space                    # convert returns its input for "x0"
        g = convert(guided, "x0", space, x_t, alpha, sigma)
        c = convert(d_c, "x0", space, x_t, alpha, sigma)
        dims = tuple(range(1, x_t.ndim))
        ratio = c.std(dim=dims, keepdim=True) / g.std(dim=dims, keepdim=True).clamp_min(1e-12)
        g = self.rescale * g * ratio + (1 - self.rescale) * g
        return convert(g, space, "x0", x_t, alpha, sigma).to(guided.dtype)


class ClassifierGuidance(DenoiserWrapper):
    r"""``x0_s = x0 + s (sigma^2 / alpha) grad_x log p_phi(y | x_t, t)`` (see the module docstring).

    Args:
        denoiser: the diffusion model's denoiser, bound to the labels ``y`` to steer towards (or
            bound later). An unconditional network is evaluated without a condition; a
            conditional one with it (guidance on top of a conditional model, as ADM does).
        classifier: ``classifier(x_t, t) -> logits (N, K)``, noise-aware, taking the time input
            the denoiser's network takes (:meth:`Denoiser.model_time`), e.g. a network trained
            with ``objective="classifier"`` or :meth:`scorekit.toy.LabelledMixture.classifier`.
        scale: the classifier scale ``s``; 0 leaves the denoiser as it is.
    """

    def __init__(self, denoiser, classifier, scale: float = 1.0):
        super().__init__(denoiser)
        if not callable(classifier):
            raise ScorekitError(f"the classifier must be callable as classifier(x_t, t) -> logits, "
                                f"got {type(classifier).__name__}")
        self.classifier = classifier
        self.scale = _finite(scale, "the classifier scale", cli_name="--classifier-scale")
        process = getattr(classifier, "process", None)
        if process is not None and process.config() != self.process.config():
            raise ScorekitError(f"the classifier was trained on noisy data of another process ({process!r}) "
                                f"than the model's ({self.process!r}); train it with the model's process")
        classes = getattr(classifier, "num_classes", None)
        if classes is not None and getattr(denoiser, "conditional", False) and denoiser.num_classes != classes:
            raise ScorekitError(f"the classifier has {classes} classes but the model has "
                                f"{denoiser.num_classes}")
        self.classifier_classes = classes

    def binds_condition_itself(self) -> bool:
        return not getattr(self.inner, "conditional", False)   # an unconditional network takes no labels

    @staticmethod
    def check_classes(labels: Tensor, k: int) -> None:
        """Refuse a label (other than the null one) outside the classifier's classes ``0 .. k-1``.
        It reads the labels: made once per labels, not at every step."""
        keep = labels != NULL_LABEL
        if bool(keep.any()) and int(labels[keep].max()) >= k:
            raise ScorekitError(f"class {int(labels[keep].max())} is outside the classifier's classes 0..{k - 1}")

    def log_prob_gradient(self, x_t: Tensor, t, labels: Tensor) -> Tensor:
        r"""``grad_x log p_phi(y | x_t, t)`` per sample (zero where ``y`` is the null label)."""
        shape = getattr(self.classifier, "sample_shape", None)
        if shape is not None and tuple(x_t.shape[1:]) != tuple(shape):
            raise ScorekitError(f"the classifier was trained on samples of shape {tuple(shape)} but the "
                                f"model draws {tuple(x_t.shape[1:])}")
        keep = labels != NULL_LABEL
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            logits = self.classifier(x, self.model_time(t, x.shape[0], x.device))
            if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
                got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                raise ScorekitError(f"the classifier must return logits of shape (N, classes) = "
                                    f"({x.shape[0]}, K), got {got}")
            k = logits.shape[1]
            checked = getattr(self, "_labels_checked", None)            # once per labels: it reads the device
            if checked is None or checked[0] is not labels or checked[1] != k:
                self.check_classes(labels, k)
                self._labels_checked = (labels, k)
            log_p = torch.log_softmax(logits, dim=1)
            picked = log_p.gather(1, labels.clamp_min(0).to(logits.device)[:, None])[:, 0]
            (grad,) = torch.autograd.grad((picked * keep.to(picked.dtype)).sum(), x)
        return grad.to(x_t.dtype)

    def apply(self, x_t, t, condition, predict):
        condition = _require_condition(condition, "classifier guidance")
        if condition.labels is None:
            raise ScorekitError("classifier guidance needs class labels in the condition")
        n = x_t.shape[0]
        labels = condition.on(n, x_t.device).labels     # the same tensor at every step: checked once
        x0 = predict(x_t, t, None if self.binds_condition_itself() else condition)
        if self.scale == 0:
            return x0
        alpha, sigma = self.coefficients(x_t, t)
        grad = self.log_prob_gradient(x_t, t, labels)
        return x0 + self.scale * (sigma ** 2 / alpha) * grad


def guided(denoiser, *, guidance_scale: float | None = None, guidance_interval=None,
           guidance_rescale: float = 0.0, classifier=None, classifier_scale: float = 1.0,
           clip: float | None = None, threshold: float | None = None, threshold_max: float | None = None):
    """``denoiser`` with the guidance and range wrappers that the arguments ask for, in the one
    order that makes sense: classifier guidance, then classifier-free guidance (which evaluates the
    inner ones under both conditions), then clipping or thresholding of the final ``x0_pred``."""
    if clip is not None and threshold is not None:
        raise ScorekitError("use either clip or threshold, not both",
                            cli="use either --clip or --threshold, not both")
    if classifier is not None:
        denoiser = ClassifierGuidance(denoiser, classifier, classifier_scale)
    if guidance_scale is not None:
        denoiser = ClassifierFreeGuidance(denoiser, guidance_scale, interval=guidance_interval,
                                          rescale=guidance_rescale)
    elif guidance_interval is not None or guidance_rescale:
        raise ScorekitError("a guidance interval or rescale needs a guidance scale",
                            cli="--guidance-interval and --guidance-rescale need --guidance-scale")
    if clip is not None:
        denoiser = ClipX0(denoiser, clip)
    if threshold is not None:
        denoiser = ThresholdX0(denoiser, threshold, threshold_max)
    return denoiser


__all__ = ["ClassifierFreeGuidance", "ClassifierGuidance", "ClipX0", "ThresholdX0", "clip_x0",
           "dynamic_threshold", "guided", "noise_level", "threshold_x0"]
