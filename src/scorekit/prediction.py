r"""What a network predicts, and what a sampler needs.

With ``x_t = alpha x_0 + sigma eps`` a network may predict the noise ``eps``, the clean data
``x_0``, the velocity ``v = alpha eps - sigma x_0`` (Salimans & Ho 2022) or the score
``grad log p_t(x_t)``. For the optimal predictors all four carry the same information, related by
Tweedie's formula

    E[x_0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha,   E[eps | x_t] = -sigma grad log p_t(x_t).

Every conversion is written once here. :class:`Denoiser` turns a network ``model(x_t, t)`` of any
prediction type into the function ``D(x_t, t) = x0_pred`` that every sampler uses.
"""
from __future__ import annotations

import copy
from typing import Callable

import torch

from .devices import to_device
from .errors import ScorekitError
from .processes import GaussianProcess, check_process, expand_like

Tensor = torch.Tensor

PREDICTION_TYPES = ("eps", "x0", "v", "score")

_BOUND = object()      # "the condition the denoiser is bound to"


def network_tensor(out):
    """The tensor a network returned: ``out`` itself, or the ``.sample`` field of the output object
    a diffusers model returns (or the first item of a tuple); anything else as it is."""
    if not isinstance(out, Tensor):
        out = getattr(out, "sample", out)
        if isinstance(out, (tuple, list)):
            out = out[0]
    return out


def x0_from_eps(x_t: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``x_0 = (x_t - sigma eps) / alpha``."""
    return (x_t - sigma * eps) / alpha


def eps_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``eps = (x_t - alpha x_0) / sigma``."""
    return (x_t - alpha * x0) / sigma


def v_from_x0_eps(x0: Tensor, eps: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``v = alpha eps - sigma x_0``."""
    return alpha * eps - sigma * x0


def x0_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``x_0 = (alpha x_t - sigma v) / (alpha^2 + sigma^2)`` (``alpha x_t - sigma v`` when VP)."""
    return (alpha * x_t - sigma * v) / (alpha ** 2 + sigma ** 2)


def eps_from_v(x_t: Tensor, v: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``eps = (sigma x_t + alpha v) / (alpha^2 + sigma^2)``."""
    return (sigma * x_t + alpha * v) / (alpha ** 2 + sigma ** 2)


def score_from_eps(eps: Tensor, sigma: Tensor) -> Tensor:
    """``grad log p_t(x_t) = -eps / sigma``."""
    return -eps / sigma


def eps_from_score(score: Tensor, sigma: Tensor) -> Tensor:
    """``eps = -sigma grad log p_t(x_t)``."""
    return -sigma * score


def x0_from_score(x_t: Tensor, score: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """Tweedie's formula: ``E[x_0 | x_t] = (x_t + sigma^2 grad log p_t(x_t)) / alpha``."""
    return (x_t + sigma ** 2 * score) / alpha


def score_from_x0(x_t: Tensor, x0: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """``grad log p_t(x_t) = (alpha x_0 - x_t) / sigma^2``."""
    return (alpha * x0 - x_t) / sigma ** 2


def _check_type(kind: str) -> None:
    if kind not in PREDICTION_TYPES:
        raise ScorekitError(f"unknown prediction type {kind!r}; choose one of {', '.join(PREDICTION_TYPES)}")


def to_x0(output: Tensor, kind: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The ``x_0`` prediction implied by a network output of the given kind."""
    _check_type(kind)
    if kind == "x0":
        return output
    if kind == "eps":
        return x0_from_eps(x_t, output, alpha, sigma)
    if kind == "v":
        return x0_from_v(x_t, output, alpha, sigma)
    return x0_from_score(x_t, output, alpha, sigma)


def from_x0(x0: Tensor, kind: str, x_t: Tensor, alpha: Tensor, sigma: Tensor) -> Tensor:
    """The network output of the given kind that corresponds to the prediction ``x0``."""
    _check_type(kind)
    if kind == "x0":
        return x0
    eps = eps_from_x0(x_t, x0, alpha, sigma)
    if kind == "eps":
        return eps
    if kind == "v":
        return v_from_x0_eps(x0, eps, alpha, sigma)
    return score_from_eps(eps, sigma)


def convert(output: Tensor, source: str, target: str, x_t: Tensor, alpha, sigma) -> Tensor:
    """Convert a prediction between any two of ``eps``, ``x0``, ``v`` and ``score``.

    ``alpha`` and ``sigma`` may be numbers or per-sample tensors of shape ``(N,)``.
    """
    alpha, sigma = _broadcast_coefficient(alpha, x_t), _broadcast_coefficient(sigma, x_t)
    if source == target:
        _check_type(source)
        return output
    return from_x0(to_x0(output, source, x_t, alpha, sigma), target, x_t, alpha, sigma)


def _broadcast_coefficient(c, x_t: Tensor):
    """``c`` ready to multiply ``x_t``: a tensor reshaped to broadcast on ``x_t``'s device and dtype;
    a number kept a number, rounded to ``x_t``'s dtype as that tensor would be, so that no host
    value is copied to the device (a copy that would make the host wait for a GPU)."""
    if isinstance(c, Tensor):
        return expand_like(c.to(torch.float64), x_t)
    return torch.tensor(c, dtype=torch.float64).to(x_t.dtype).item()


class Denoiser:
    r"""``D(x_t, t) = x0_pred``: a network of any prediction type, seen as a denoiser.

    A conditional network estimates ``E[x_0 | x_t, c]``; the denoiser is then *bound* to a
    condition ``c`` (:class:`scorekit.conditioning.Condition`, or class labels), and samplers,
    which only ever call ``D(x_t, t)``, serve it unchanged. :meth:`predict` evaluates the
    network under any other condition (guidance evaluates the null condition beside ``c``).

    Args:
        model: ``model(x_t, t) -> Tensor`` of the same shape as ``x_t``, or for a conditional
            network ``model(x_t, t, y=labels)`` (the keyword arguments of
            :meth:`Condition.network_kwargs`). ``t`` is passed as a tensor of shape ``(N,)``:
            integer (``torch.long``) when the process is discrete and the time is a whole number
            (the DDPM / diffusers convention ``0 .. T-1``), float otherwise. ``time_input``
            overrides this.
        process: the forward process the model was trained with.
        prediction_type: what the model predicts: ``"eps"``, ``"x0"``, ``"v"`` or ``"score"``.
        time_input: optional ``fn(t: Tensor(N,) float64) -> Tensor`` mapping process time to the
            model's time input (e.g. ``lambda t: 1000 * t`` or a noise-level embedding).
        condition: the condition ``D`` is bound to (``None``: call the network without one).
        num_classes: the network's number of classes (default: its ``num_classes`` attribute,
            looked up through wrappers); ``None`` for an unconditional network.
        cond_channels: the channels of the condition image the network takes (``cond`` of
            :class:`~scorekit.conditioning.Condition`; default: its ``cond_channels`` attribute,
            looked up through wrappers); 0 for none, ``None`` when unknown (nothing is checked).
    """

    def __init__(self, model: Callable[..., Tensor], process: GaussianProcess,
                 prediction_type: str = "eps", *, time_input: Callable[[Tensor], Tensor] | None = None,
                 condition=None, num_classes: int | None = None, cond_channels: int | None = None):
        from .conditioning import as_condition, model_cond_channels, model_num_classes

        _check_type(prediction_type)
        if not callable(model):
            raise ScorekitError("model must be callable as model(x_t, t)")
        self.model = model
        self.process = check_process(process)
        self.prediction_type = prediction_type
        self.time_input = time_input
        self.num_classes = num_classes if num_classes is not None else model_num_classes(model)
        self.cond_channels = cond_channels if cond_channels is not None else model_cond_channels(model)
        self.condition = as_condition(condition)
        self._check_condition(self.condition)

    @property
    def conditional(self) -> bool:
        """Whether the network takes class labels (it was trained with classes)."""
        return self.num_classes is not None

    def _check_condition(self, condition) -> None:
        from .conditioning import check_image_for, check_labels_for

        check_labels_for(condition, self.num_classes)
        check_image_for(condition, self.cond_channels)

    def with_condition(self, condition) -> "Denoiser":
        """The same denoiser bound to ``condition`` (a :class:`~scorekit.conditioning.Condition`,
        class labels, or ``None``)."""
        from .conditioning import as_condition

        condition = as_condition(condition)
        self._check_condition(condition)
        bound = copy.copy(self)
        bound.condition = condition
        return bound

    def model_time(self, t, batch: int, device) -> Tensor:
        """The time ``t`` (a number, or a tensor of shape ``()`` or ``(batch,)``) as the network
        takes it on ``device``: ``time_input(t)`` of float64 times if given; else ``torch.long``
        steps when the process is discrete and every time is a whole number, float32 otherwise.

        Whether the times are whole is read where that costs nothing: from a number, from an
        integer dtype, or from a tensor still on the CPU (checked before it moves to ``device``).
        Only float times already on a GPU are read back there, one wait per call; callers in a
        step loop pass numbers or CPU tensors."""
        if isinstance(t, (int, float)) and self.time_input is None:     # one time for the batch
            whole = self.process.discrete and float(t).is_integer()
            return torch.full((batch,), t, dtype=torch.long if whole else torch.float32, device=device)
        t = t if isinstance(t, Tensor) else torch.as_tensor(t, dtype=torch.float64)    # a list: in full precision
        if self.time_input is not None or not self.process.discrete:
            whole = False
        elif not t.is_floating_point():
            whole = True
        else:                                   # on the CPU, before the copy: no wait for a GPU
            whole = bool(torch.all(t == torch.round(t)))
        t = to_device(t.to(torch.long if whole else torch.float64), device)
        t = t.expand(batch) if t.ndim == 0 else t
        if self.time_input is not None:
            return self.time_input(t)
        return t if whole else t.to(torch.float32)

    def call_network(self, model, x_t: Tensor, t, condition) -> Tensor:
        """``model(x_t, t_model, **condition)``: one network call with the condition for the batch."""
        time = self.model_time(t, x_t.shape[0], x_t.device)
        if condition is None:
            return model(x_t, time)
        return model(x_t, time, **condition.on(x_t.shape[0], x_t.device).network_kwargs())

    def output(self, x_t: Tensor, t, condition=_BOUND) -> Tensor:
        """The raw network output at ``(x_t, t)`` under ``condition`` (default: the bound one),
        with its shape checked."""
        condition = self.condition if condition is _BOUND else condition
        out = network_tensor(self.call_network(self.model, x_t, t, condition))
        if not isinstance(out, Tensor) or out.shape != x_t.shape:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ScorekitError(
                f"model output has shape {got} but x_t has shape {tuple(x_t.shape)}; the model must "
                f"return a {self.prediction_type!r} prediction of the same shape as its input")
        return out

    def coefficients(self, x_t: Tensor, t):
        """``(alpha(t), sigma(t))``: numbers for one time, else tensors broadcast like ``x_t``."""
        if isinstance(t, (int, float)):                      # one time for the batch
            return self.process.alpha(t).item(), self.process.sigma(t).item()
        return expand_like(self.process.alpha(t), x_t), expand_like(self.process.sigma(t), x_t)

    def predict(self, x_t: Tensor, t, condition=None) -> Tensor:
        """``E[x_0 | x_t, condition]``: the network's prediction under ``condition`` (not the bound
        one; ``None`` calls the network without a condition), converted to ``x0``."""
        alpha, sigma = self.coefficients(x_t, t)
        return to_x0(self.output(x_t, t, condition), self.prediction_type, x_t, alpha, sigma)

    def __call__(self, x_t: Tensor, t) -> Tensor:
        return self.predict(x_t, t, self.condition)
