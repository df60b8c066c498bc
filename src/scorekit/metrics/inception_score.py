r"""The Inception Score (Salimans et al. 2016) of class probabilities, with its split deviation.

For a classifier's probabilities ``p(y | x_n)`` of ``N`` samples,

    IS = exp( (1/N) sum_n KL(p(y | x_n) || p_hat(y)) ),   p_hat(y) = (1/N) sum_n p(y | x_n),

which is high when each sample is confidently one class (low entropy of ``p(y | x)``) and the
classes are evenly covered (high entropy of ``p_hat``); it lies in ``[1, K]``. As in the paper's
code, the samples are cut into ``splits`` consecutive equal parts, the score is computed on each
(with that part's own marginal) and the mean and standard deviation over the parts are reported.
Computed in float64, with ``0 log 0 = 0``.
"""
from __future__ import annotations

import dataclasses
import math

import torch

from ..errors import ScorekitError

Tensor = torch.Tensor


@dataclasses.dataclass
class InceptionScore:
    """What :func:`inception_score` returns: the mean and standard deviation over the splits (the
    population deviation, ``np.std``, as Salimans et al.'s code reports the ``±``)."""

    mean: float
    std: float
    splits: int

    @property
    def stderr(self) -> float:
        """The standard error of the mean over the splits, ``std / sqrt(splits - 1)`` (the unbiased
        variance over ``splits``); NaN for one split."""
        return self.std / math.sqrt(self.splits - 1) if self.splits > 1 else float("nan")


def _score(p: Tensor) -> float:
    marginal = p.mean(dim=0, keepdim=True)
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal)).sum(dim=1)
    return float(torch.exp(kl.mean()))


def inception_score(probs, *, splits: int = 10) -> InceptionScore:
    """The Inception Score of class probabilities ``probs`` (N, K) over ``splits`` parts (module
    docstring); ``splits=1`` scores all samples at once."""
    p = torch.as_tensor(probs).detach().to("cpu", torch.float64)
    if p.ndim != 2 or p.shape[1] < 2:
        raise ScorekitError(f"probs must be class probabilities (N, K) with K >= 2, got shape {tuple(p.shape)}")
    if bool((p < 0).any()) or not torch.allclose(p.sum(1), torch.ones(p.shape[0], dtype=p.dtype), atol=1e-4):
        raise ScorekitError("probs must be non-negative with rows summing to 1 (softmax of the logits)")
    if isinstance(splits, bool) or not isinstance(splits, int) or not 1 <= splits <= p.shape[0]:
        raise ScorekitError(f"splits must be a whole number from 1 to the number of samples ({p.shape[0]}), "
                            f"got {splits!r}")
    scores = torch.tensor([_score(part) for part in torch.tensor_split(p, splits)], dtype=torch.float64)
    return InceptionScore(float(scores.mean()), float(scores.std(unbiased=False)), splits)


__all__ = ["InceptionScore", "inception_score"]
