r"""The base of every denoiser wrapper: ``D'(x_t, t, c) = apply(x_t, t, c, D)``.

A wrapper takes a denoiser and is one: samplers call ``D'(x_t, t)`` and never know it is there.
Wrappers compose (``ClipX0(ClassifierFreeGuidance(D, 3))``), and each passes through what the
denoiser it wraps offers:

* the bound condition (``D'.condition``) and :meth:`DenoiserWrapper.with_condition`, which rebinds
  the innermost denoiser and keeps every wrapper around it;
* :meth:`predict` under any condition, so an outer wrapper (guidance) can evaluate the inner
  ones under the null condition;
* a learned variance: when the wrapped denoiser has ``x0_and_log_variance`` (a network with a
  variance head, :class:`scorekit.variances.LearnedVarianceDenoiser`), so does the wrapper; its
  ``x0`` goes through :meth:`apply` like any other, and the log-variance of the wrapped denoiser
  is kept (:meth:`log_variance` chooses which, for a wrapper that evaluates a doubled batch);
* every other attribute (``process``, ``prediction_type``, ``num_classes``, ``model_time``, ...).

A subclass implements :meth:`apply`, which receives ``predict(x_t, t, condition) -> x0`` of the
wrapped denoiser and may call it once, on any batch and condition.
"""
from __future__ import annotations

import copy

import torch

from .errors import ScorekitError

Tensor = torch.Tensor

_VARIANCE_METHODS = ("x0_and_log_variance", "predict_with_log_variance")
_NONE = object()


class DenoiserWrapper:
    """A denoiser made from another one (see the module docstring)."""

    def __init__(self, denoiser):
        self.inner = denoiser

    # --- what subclasses change ----------------------------------------------------------------
    def apply(self, x_t: Tensor, t, condition, predict) -> Tensor:
        """``x0`` of this wrapper, given ``predict(x_t, t, condition)`` of the wrapped denoiser."""
        return predict(x_t, t, condition)

    def log_variance(self, log_var: Tensor, batch: int) -> Tensor:
        """The log-variance to return for a batch of ``batch`` samples, given the one the wrapped
        denoiser returned in :meth:`apply`'s call (which may have covered a larger batch)."""
        return log_var[:batch]

    # --- the denoiser interface ------------------------------------------------------------------
    def predict(self, x_t: Tensor, t, condition=None) -> Tensor:
        """``x0`` under ``condition`` (not the bound one)."""
        return self.apply(x_t, t, condition, predictor(self.inner))

    @property
    def condition(self):
        """The bound condition: this wrapper's own (see :meth:`with_condition`) or the one the
        wrapped denoiser is bound to (``None`` for a plain function)."""
        own = self.__dict__.get("own_condition", _NONE)
        return getattr(self.inner, "condition", None) if own is _NONE else own

    def __call__(self, x_t: Tensor, t) -> Tensor:
        return self.predict(x_t, t, self.condition)

    def with_condition(self, condition) -> "DenoiserWrapper":
        """This wrapper around the wrapped denoiser bound to ``condition``; a wrapper that uses the
        condition itself while its inner network takes none (classifier guidance of an
        unconditional model) keeps it as its own (:meth:`binds_condition_itself`)."""
        from .conditioning import as_condition

        bound = copy.copy(self)
        if self.binds_condition_itself():
            bound.own_condition = as_condition(condition)
        else:
            bound.inner = self.inner.with_condition(condition)
        return bound

    def binds_condition_itself(self) -> bool:
        """Whether :meth:`with_condition` keeps the condition here instead of passing it inward."""
        return False

    def _predict_with_log_variance(self, x_t: Tensor, t, s, condition=None) -> tuple[Tensor, Tensor]:
        held = {}
        inner = getattr(self.inner, "predict_with_log_variance", None)
        if inner is None:                     # a denoiser with only the bound-condition method
            bound = self.inner.x0_and_log_variance

            def inner(x, time, s_, cond):
                if cond is not None and cond is not self.condition:
                    raise ScorekitError("this denoiser's x0_and_log_variance takes no other condition")
                return bound(x, time, s_)

        def predict(x, time, cond):
            x0, held["log_var"] = inner(x, time, s, cond)
            return x0

        x0 = self.apply(x_t, t, condition, predict)
        return x0, self.log_variance(held["log_var"], x_t.shape[0])

    def __getattr__(self, name):
        if name.startswith("__") or name == "inner":
            raise AttributeError(name)
        if name not in _VARIANCE_METHODS:
            return getattr(self.inner, name)           # AttributeError as the inner one gives it
        if not hasattr(self.inner, "predict_with_log_variance"):
            getattr(self.inner, "x0_and_log_variance")     # AttributeError: no variance head
        if name == "predict_with_log_variance":
            return self._predict_with_log_variance
        return lambda x_t, t, s: self._predict_with_log_variance(x_t, t, s, self.condition)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.inner!r})"


def predictor(denoiser):
    """``predict(x_t, t, condition)`` of a denoiser; a plain function ``D(x_t, t)`` serves only
    ``condition=None`` (it takes no condition)."""
    predict = getattr(denoiser, "predict", None)
    if predict is not None:
        return predict

    def plain(x_t, t, condition):
        if condition is not None:
            raise ScorekitError("the denoiser is a plain function D(x_t, t), which takes no condition; "
                                "wrap a conditional network in scorekit.Denoiser to condition it")
        return denoiser(x_t, t)

    return plain


def unwrap(denoiser):
    """The innermost denoiser under any number of wrappers."""
    while isinstance(denoiser, DenoiserWrapper):
        denoiser = denoiser.inner
    return denoiser


def with_network(model, fn):
    """``model`` with its network replaced by ``fn(network)``; ``model`` itself is left as it was.

    A :class:`~scorekit.prediction.Denoiser` is copied with ``fn`` applied to its network (``model``;
    for a learned-variance denoiser the whole network ``network``, whose prediction half becomes
    the new ``model``); wrappers around it are copied around the new one. Anything else callable (a
    network ``model(x_t, t)``) is the network: the result is ``fn(model)``. The one way to reach
    the network under everything a sampler calls (counting its calls, compiling it, evaluating it
    in another precision).
    """
    from .prediction import Denoiser

    if isinstance(model, DenoiserWrapper):
        out = copy.copy(model)
        out.inner = with_network(model.inner, fn)
        return out
    if not isinstance(model, Denoiser):
        return fn(model)
    out = copy.copy(model)
    if getattr(model, "learned_variance", False):      # model.model is the prediction half of network
        from .variances import PredictionHead

        out.network = fn(model.network)
        out.model = PredictionHead(out.network)
    else:
        out.model = fn(model.model)
    return out


def twice(t, batch: int):
    """The time argument for a batch of ``2 batch`` made of two copies of a batch at ``t``."""
    if isinstance(t, Tensor) and t.ndim and t.shape[0] == batch:
        return torch.cat([t, t])
    return t


__all__ = ["DenoiserWrapper", "predictor", "twice", "unwrap", "with_network"]
