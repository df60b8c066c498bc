r"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased squared MMD between features.

With the cubic polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` on ``d``-dimensional features,
samples ``x_1..x_m`` and ``y_1..y_n``,

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
              - 2/(mn) sum_{i,j} k(x_i, y_j),

an unbiased estimate of ``MMD^2`` (Gretton et al. 2012, Lemma 6): its expectation is zero when
both sets come from one distribution, so unlike the Fréchet distance it has no bias that depends
on the sample size, and it can be negative. KID is reported as the mean of the estimate over
``num_subsets`` random subsets of ``subset_size`` samples from each set, with the standard
deviation over the subsets (the convention of the paper's code and of torch-fidelity / clean-fid).
Everything is computed in float64.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import ScorekitError

Tensor = torch.Tensor
_F64 = torch.float64


def polynomial_kernel(x: Tensor, y: Tensor, *, degree: int = 3, gamma: float | None = None,
                      coef0: float = 1.0) -> Tensor:
    """``(gamma x . y + coef0)^degree`` for every pair of rows, ``gamma = 1 / d`` by default."""
    gamma = 1.0 / x.shape[1] if gamma is None else gamma
    return (gamma * (x @ y.T) + coef0) ** degree


def mmd2_unbiased(x, y, **kernel) -> float:
    """The unbiased ``MMD^2_u`` of the module docstring between feature sets ``x`` (m, d) and ``y``
    (n, d), ``m, n >= 2``, with :func:`polynomial_kernel` (``kernel`` its options)."""
    x, y = _features(x, "x"), _features(y, "y")
    _same_dim(x, y)
    m, n = x.shape[0], y.shape[0]
    kxx, kyy, kxy = polynomial_kernel(x, x, **kernel), polynomial_kernel(y, y, **kernel), \
        polynomial_kernel(x, y, **kernel)
    sxx = (kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1))
    syy = (kyy.sum() - kyy.diagonal().sum()) / (n * (n - 1))
    return float(sxx + syy - 2 * kxy.mean())


@dataclasses.dataclass
class KID:
    """What :func:`kernel_inception_distance` returns."""

    #: the mean of MMD^2_u over the subsets
    mean: float
    #: its standard deviation over the subsets
    std: float
    #: the number of subsets and the samples per set in each
    num_subsets: int
    subset_size: int

    @property
    def stderr(self) -> float:
        """``std / sqrt(num_subsets)`` (the subsets overlap, so this understates the spread of the
        estimate between independent sample sets; the paper's convention reports ``std``)."""
        return self.std / math.sqrt(self.num_subsets)


def kernel_inception_distance(x, y, *, num_subsets: int = 100, subset_size: int = 1000,
                              generator: torch.Generator | None = None, **kernel) -> KID:
    """KID between feature sets ``x`` (e.g. of generated images) and ``y`` (of real ones): the mean
    and standard deviation of :func:`mmd2_unbiased` over ``num_subsets`` pairs of random subsets
    of ``min(subset_size, m, n)`` rows each, drawn without replacement within a subset from
    ``generator``."""
    x, y = _features(x, "x"), _features(y, "y")
    _same_dim(x, y)
    for name, value in (("num_subsets", num_subsets), ("subset_size", subset_size)):
        if isinstance(value, bool) or not isinstance(value, int) or value < (1 if name == "num_subsets" else 2):
            raise ScorekitError(f"{name} must be a whole number >= {1 if name == 'num_subsets' else 2}, "
                                f"got {value!r}")
    size = min(subset_size, x.shape[0], y.shape[0])
    values = []
    for _ in range(num_subsets):
        xi = torch.randperm(x.shape[0], generator=generator)[:size]
        yi = torch.randperm(y.shape[0], generator=generator)[:size]
        values.append(mmd2_unbiased(x[xi], y[yi], **kernel))
    v = torch.tensor(values, dtype=_F64)
    return KID(float(v.mean()), float(v.std()) if num_subsets > 1 else float("nan"), num_subsets, size)


def _features(x, name: str) -> Tensor:
    t = torch.as_tensor(x).detach().to("cpu", _F64)
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 1:
        raise ScorekitError(f"{name} must be features of shape (N, d) with N >= 2, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ScorekitError(f"{name} holds NaN or Inf features")
    return t


def _same_dim(x: Tensor, y: Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise ScorekitError(f"the two feature sets have {x.shape[1]} and {y.shape[1]} dimensions; give "
                            f"features of one extractor")


__all__ = ["KID", "kernel_inception_distance", "mmd2_unbiased", "polynomial_kernel"]
