r"""Likelihood of a dataset batch by batch: :func:`nll_batches`.

Both estimates of ``-log p(x)`` in bits per dimension -- the exact probability-flow ODE
likelihood (:func:`~scorekit.likelihood.ode_likelihood`) and the variational bound
(:func:`~scorekit.likelihood.elbo`) -- are per-sample, so a dataset is evaluated in batches of
bounded memory and the per-sample values are gathered; the mean's standard error is
``std / sqrt(N)`` over the samples. Network evaluations are counted per batch
(:func:`scorekit.nfe.count_network_calls`).
"""
from __future__ import annotations

import dataclasses
import math
import time

import torch

from ..errors import ScorekitError

Tensor = torch.Tensor

#: the estimates :func:`nll_batches` computes
NLL_METHODS = ("ode", "elbo")


@dataclasses.dataclass
class BatchedNll:
    """What :func:`nll_batches` returns."""

    #: ``(N,)`` float64 bits per dimension of every sample
    bits_per_dim: Tensor
    #: network evaluations of each batch
    calls: list[int]
    #: wall time, in seconds
    seconds: float

    @property
    def mean(self) -> float:
        return self.bits_per_dim.mean().item()

    @property
    def stderr(self) -> float:
        """The standard error of :attr:`mean`, ``std / sqrt(N)`` (NaN for one sample)."""
        n = self.bits_per_dim.numel()
        return self.bits_per_dim.std().item() / math.sqrt(n) if n > 1 else float("nan")

    @property
    def nfe_per_batch(self) -> float:
        return sum(self.calls) / max(len(self.calls), 1)


def nll_batches(denoiser, x: Tensor, *, method: str = "ode", batch_size: int = 256, condition=None,
                generator: torch.Generator | None = None, progress: bool = False, **options) -> BatchedNll:
    """Bits per dimension of every sample of ``x`` under ``denoiser``, batch by batch.

    Args:
        denoiser: a :class:`~scorekit.prediction.Denoiser` (e.g. :func:`scorekit.load_denoiser`);
            its process is the model's.
        x: the data ``(N, ...)`` in the model's scale.
        method: ``"ode"`` (:func:`~scorekit.likelihood.ode_likelihood`) or ``"elbo"``
            (:func:`~scorekit.likelihood.elbo`).
        batch_size: the most samples per batch.
        condition: per-sample condition (labels ``(N,)`` or a
            :class:`~scorekit.conditioning.Condition`): the likelihood ``-log p(x | c)``.
        generator: given to every batch in turn (Hutchinson probes, the ELBO's dequantisation).
        progress: a progress bar over the samples.
        **options: the chosen method's options (``divergence``, ``rtol``, ``data_bits``, ...;
            ``variance``, ``timesteps``, ``data_bits`` for the ELBO). For the ELBO, ``strata=M``
            estimates the whole chain's bound from ``M + 1`` network evaluations per sample instead
            of one per step (:func:`~scorekit.likelihood.elbo.sampled_elbo`: unbiased, its sampling
            noise included in the standard error); ``variance`` is then ``small``, ``large`` or
            ``learned``.
    """
    from tqdm.auto import tqdm

    from ..conditioning import as_condition
    from ..nfe import count_network_calls
    from .elbo import elbo, sampled_elbo
    from .ode import ode_likelihood

    if method not in NLL_METHODS:
        raise ScorekitError(f"unknown likelihood method {method!r}; choose one of {', '.join(NLL_METHODS)}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ScorekitError(f"batch_size must be a positive whole number, got {batch_size!r}")
    strata = options.pop("strata", None) if method == "elbo" else None
    if strata is not None:
        variance = options.pop("variance", "small")
        if not isinstance(variance, str):
            raise ScorekitError("the sampled ELBO (strata=) takes a variance by name: small, large or learned")
    num = x.shape[0]
    condition = as_condition(condition)
    if condition is not None:
        condition = condition.for_batch(num)
    values, calls, start = [], [], time.perf_counter()
    bar = tqdm(total=num, desc=f"nll {method}", disable=not progress, leave=False)
    try:
        for lo in range(0, num, batch_size):
            hi = min(lo + batch_size, num)
            d = denoiser if condition is None else denoiser.with_condition(condition[lo:hi])
            d, counter = count_network_calls(d)
            if method == "ode":
                values.append(ode_likelihood(d, d.process, x[lo:hi], generator=generator, **options).bits_per_dim)
            elif strata is not None:
                est = sampled_elbo(d, d.process, x[lo:hi], strata=strata, variances=(variance,),
                                   generator=generator, **options)
                values.append(est[variance].total_bpd)
            else:
                with torch.no_grad():
                    values.append(elbo(d, d.process, x[lo:hi], generator=generator, **options).total_bpd)
            calls.append(counter.calls)
            bar.update(hi - lo)
    finally:
        bar.close()
    return BatchedNll(torch.cat(values).to(torch.float64), calls, time.perf_counter() - start)


__all__ = ["BatchedNll", "NLL_METHODS", "nll_batches"]
