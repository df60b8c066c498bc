r"""Kernel Inception Distance (Bińkowski et al. 2018): the unbiased squared MMD between features.

With the cubic polynomial kernel ``k(x, y) = (x . y / d + 1)^3`` on ``d``-dimensional features,
samples ``x_1..x_m`` and ``y_1..y_n``,

    MMD^2_u = 1/(m(m-1)) sum_{i != j} k(x_i, x_j) + 1/(n(n-1)) sum_{i != j} k(y_i, y_j)
              - 2/(mn) sum_{i,j} k(x_i, y_j),

an unbiased estimate of ``MMD^2`` (Gretton et al. 2012, Lemma 6): its expectation is zero when
both sets come from one distribution, so unlike the Fréchet distance it has no bias that depends
on the sample size, and it can be negative. KID is reported as the mean of the estimate over
``num_subsets`` random subsets of ``subset_size`` samples from each set, with the population
standard deviation over the subsets (ddof 0: the convention of the paper's code and of
torch-fidelity). Everything is computed in float64.
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
    return _kernel_of(x @ y.T, x.shape[1], degree=degree, gamma=gamma, coef0=coef0)


def _kernel_of(dots: Tensor, dim: int, *, degree: int = 3, gamma: float | None = None,
               coef0: float = 1.0) -> Tensor:
    """The polynomial kernel of inner products ``dots`` of ``dim``-dimensional features."""
    gamma = 1.0 / dim if gamma is None else gamma
    return (gamma * dots + coef0) ** degree


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
    #: its standard deviation over the subsets: the population deviation (``np.std``, ddof 0),
    #: as the paper's code and torch-fidelity report the ``±``
    std: float
    #: the number of subsets and the samples per set in each
    num_subsets: int
    subset_size: int

    @property
    def stderr(self) -> float:
        """The standard error of the mean over the subsets for these two sets, ``std / sqrt(num_subsets
        - 1)`` (the unbiased variance over ``num_subsets``). It leaves out the sets' own noise, which
        :func:`mmd2_jackknife` estimates; :func:`scorekit.evaluate` reports both together."""
        return self.std / math.sqrt(self.num_subsets - 1) if self.num_subsets > 1 else float("nan")


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
    return KID(float(v.mean()), float(v.std(unbiased=False)) if num_subsets > 1 else float("nan"), num_subsets, size)


def _block_sums(a: Tensor, b: Tensor, ia: Tensor, ib: Tensor, blocks: int, chunk: int, **kernel) -> Tensor:
    """``S[p, q] = sum_{i in block p of a, j in block q of b} k(a_i, b_j)`` (``blocks x blocks``),
    the kernel evaluated ``chunk`` rows at a time."""
    onehot_b = torch.nn.functional.one_hot(ib, blocks).to(_F64)
    out = torch.zeros(blocks, blocks, dtype=_F64)
    for start in range(0, a.shape[0], chunk):
        k = polynomial_kernel(a[start:start + chunk], b, **kernel) @ onehot_b
        out.index_add_(0, ia[start:start + chunk], k)
    return out


def mmd2_jackknife(x, y, *, blocks: int = 10, generator: torch.Generator | None = None,
                   chunk: int = 1024, **kernel) -> tuple[float, float]:
    r"""``(MMD^2_u, its standard error)`` on the whole sets ``x`` (m, d) and ``y`` (n, d), the error
    by the delete-a-group jackknife (Efron & Tibshirani 1993, ch. 11): the rows of each set are
    dealt at random (``generator``) into ``blocks`` groups, ``theta_(b)`` is ``MMD^2_u`` with
    group ``b`` of both sets left out, and

        se^2 = (B - 1) / B  sum_b (theta_(b) - mean_b theta_(b))^2.

    Every ``theta_(b)`` follows from the ``B x B`` sums of the kernel between groups, so the
    kernel is evaluated once (``chunk`` rows at a time: memory ``chunk x max(m, n)``)."""
    x, y = _features(x, "x"), _features(y, "y")
    _same_dim(x, y)
    m, n = x.shape[0], y.shape[0]
    if isinstance(blocks, bool) or not isinstance(blocks, int) or not 2 <= blocks <= min(m, n) // 2:
        raise ScorekitError(f"blocks must be a whole number from 2 to half the smaller set ({min(m, n) // 2}), "
                            f"got {blocks!r}")
    ix = torch.randperm(m, generator=generator) % blocks
    iy = torch.randperm(n, generator=generator) % blocks
    sxx = _block_sums(x, x, ix, ix, blocks, chunk, **kernel)
    syy = _block_sums(y, y, iy, iy, blocks, chunk, **kernel)
    sxy = _block_sums(x, y, ix, iy, blocks, chunk, **kernel)
    dxx = torch.zeros(blocks, dtype=_F64).index_add_(0, ix, _kernel_of((x * x).sum(1), x.shape[1], **kernel))
    dyy = torch.zeros(blocks, dtype=_F64).index_add_(0, iy, _kernel_of((y * y).sum(1), y.shape[1], **kernel))
    sxx = sxx - torch.diag(dxx)                                  # i != j
    syy = syy - torch.diag(dyy)
    cm = torch.bincount(ix, minlength=blocks).to(_F64)
    cn = torch.bincount(iy, minlength=blocks).to(_F64)

    def left_out(s: Tensor) -> Tensor:
        return s.sum() - s.sum(0) - s.sum(1) + s.diagonal()

    def theta(txx, tyy, txy, mm, nn):
        return txx / (mm * (mm - 1)) + tyy / (nn * (nn - 1)) - 2 * txy / (mm * nn)

    full = float(theta(sxx.sum(), syy.sum(), sxy.sum(), m, n))
    parts = theta(left_out(sxx), left_out(syy), left_out(sxy), m - cm, n - cn)
    se = math.sqrt((blocks - 1) / blocks * float(((parts - parts.mean()) ** 2).sum()))
    return full, se


def _features(x, name: str) -> Tensor:
    # a list or array becomes float64 directly (through float32 it would lose digits)
    t = (x.detach() if isinstance(x, Tensor) else torch.as_tensor(x, dtype=_F64)).to("cpu", _F64)
    if t.ndim != 2 or t.shape[0] < 2 or t.shape[1] < 1:
        raise ScorekitError(f"{name} must be features of shape (N, d) with N >= 2, got {tuple(t.shape)}")
    if not torch.isfinite(t).all():
        raise ScorekitError(f"{name} holds NaN or Inf features")
    return t


def _same_dim(x: Tensor, y: Tensor) -> None:
    if x.shape[1] != y.shape[1]:
        raise ScorekitError(f"the two feature sets have {x.shape[1]} and {y.shape[1]} dimensions; give "
                            f"features of one extractor")


__all__ = ["KID", "kernel_inception_distance", "mmd2_jackknife", "mmd2_unbiased", "polynomial_kernel"]
