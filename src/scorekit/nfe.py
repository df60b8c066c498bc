r"""Counting network evaluations (NFE), the cost measure of samplers and likelihoods.

The number of function evaluations counts calls of the network, each on a whole batch: a sampler
with ``NFE = n`` evaluates the network ``n`` times whatever the batch size, so ``n`` is also its
cost per sample. Counting at the network, rather than trusting a sampler's step count, measures
what a sampler really does (a Heun step costs two evaluations, an adaptive solver chooses its own
number) and what a likelihood costs (an ODE solve, an ELBO over a chain)::

    counted, counter = count_network_calls(denoiser)
    x0 = scorekit.sample(counted, x_T, process=process, sampler="ode_heun", num_steps=10)
    counter.calls        # 19 = 2 n - 1: the last step, to sigma = 0, is one Euler step
"""
from __future__ import annotations

from typing import Callable

from .errors import ScorekitError


class NFECounter:
    """A network or denoiser that counts its evaluations in :attr:`calls`.

    ``NFECounter(model)`` is called exactly as ``model`` is, and each call counts one evaluation,
    whatever the batch size; so does each call of ``x0_and_log_variance`` of a learned-variance
    denoiser (:class:`scorekit.variances.LearnedVarianceDenoiser`), which evaluates the network once
    for both of its results. Every other attribute is that of the wrapped ``model``
    (``process``, ``learned_variance``, a module's ``parameters``), so the counter stands in for it
    in any sampler; the wrapped object itself is ``__wrapped__``.

    :func:`scorekit.sample` uses a :class:`~scorekit.prediction.Denoiser` as it is, but builds a
    new one around anything else, so to count inside it wrap the network (``denoiser.model``) or
    let :func:`count_network_calls` do so.
    """

    def __init__(self, model: Callable):
        if not callable(model):
            raise ScorekitError(f"NFECounter counts the calls of a model or denoiser; got "
                                f"{type(model).__name__}, which cannot be called")
        self.__wrapped__ = model
        self.calls = 0

    def reset(self) -> None:
        """Start counting from 0 again."""
        self.calls = 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        return self.__wrapped__(*args, **kwargs)

    def __getattr__(self, name):
        try:
            wrapped = self.__dict__["__wrapped__"]
        except KeyError:                                # not yet set (e.g. while copying)
            raise AttributeError(name) from None
        attr = getattr(wrapped, name)                   # AttributeError as the wrapped one gives it
        if name != "x0_and_log_variance":
            return attr

        def x0_and_log_variance(*args, **kwargs):
            self.calls += 1
            return attr(*args, **kwargs)

        return x0_and_log_variance

    def __repr__(self) -> str:
        return f"NFECounter({self.__wrapped__!r}, calls={self.calls})"


def count_network_calls(model: Callable) -> tuple[Callable, NFECounter]:
    """``(counted, counter)``: ``model`` with every evaluation of its network counted by ``counter``.

    Pass ``counted`` wherever ``model`` would go (:func:`scorekit.sample`,
    :func:`scorekit.likelihood.ode_likelihood`, :func:`scorekit.likelihood.elbo`) and read
    ``counter.calls`` afterwards. A :class:`~scorekit.prediction.Denoiser` (such as
    :func:`scorekit.train.checkpoint_denoiser` returns) is copied with its network wrapped in the
    counter, so the copy is still a ``Denoiser`` with the same process, prediction type and time
    input, and every evaluation counts however the network is reached: ``D(x_t, t)``, and for a
    :class:`~scorekit.variances.LearnedVarianceDenoiser` ``x0_and_log_variance`` too. The denoiser
    given is left as it was; so are wrappers around it (guidance, thresholding), whose copies
    count at the network underneath. Anything else callable (a network ``model(x_t, t)``) is wrapped as it
    is: ``counted is counter``.
    """
    from .wrappers import with_network

    counters = []

    def count(network):
        counters.append(NFECounter(network))
        return counters[-1]

    return with_network(model, count), counters[0]


__all__ = ["NFECounter", "count_network_calls"]
