"""The Inception Score on constructed class probabilities, where its value is known."""
import math

import pytest
import torch

from scorekit import ScorekitError
from scorekit.metrics.inception_score import inception_score


def test_confident_and_evenly_covered_classes_score_the_number_of_classes():
    probs = torch.eye(10).repeat(30, 1)                 # each sample one class, all classes equally
    got = inception_score(probs, splits=3)
    assert got.mean == pytest.approx(10, rel=1e-12) and got.std == pytest.approx(0, abs=1e-12)


def test_identical_predictions_score_one():
    probs = torch.softmax(torch.randn(1, 7, generator=torch.Generator().manual_seed(0)), 1).repeat(50, 1)
    assert inception_score(probs, splits=5).mean == pytest.approx(1.0, abs=1e-12)


def test_one_class_only_scores_one_and_half_confidence_in_between():
    assert inception_score(torch.eye(4)[[2] * 20], splits=1).mean == pytest.approx(1.0)
    # two classes, each sample p = (0.75, 0.25) or (0.25, 0.75) in equal numbers: the marginal is
    # uniform and KL = log 2 - H(0.75), so IS = 2 exp(-H(0.75))
    p = torch.tensor([[0.75, 0.25], [0.25, 0.75]]).repeat(10, 1)
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert inception_score(p, splits=2).mean == pytest.approx(2 * math.exp(-h), rel=1e-12)


def test_splits_use_their_own_marginal():
    """Two splits, each of one class only: each split scores 1 although all samples together
    cover two classes evenly (score 2)."""
    p = torch.eye(2)[[0] * 10 + [1] * 10]
    assert inception_score(p, splits=2).mean == pytest.approx(1.0)
    assert inception_score(p, splits=1).mean == pytest.approx(2.0)


def test_mean_and_std_over_splits_as_the_reference_code_reports_them():
    """Salimans et al.'s inception_score: each split's exp(mean KL(p(y|x) || p(y))) with numpy,
    then the mean and np.std (population deviation, ddof 0) of the split scores."""
    import numpy as np

    logits = 3 * torch.randn(200, 6, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    probs = torch.softmax(logits, 1)
    scores = []
    for part in np.array_split(probs.numpy(), 10):
        py = part.mean(0, keepdims=True)
        scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
    got = inception_score(probs, splits=10)
    assert got.mean == pytest.approx(np.mean(scores), rel=1e-12)
    assert got.std == pytest.approx(np.std(scores), rel=1e-9)
    assert got.stderr == pytest.approx(np.std(scores, ddof=1) / math.sqrt(10), rel=1e-9)
    assert math.isnan(inception_score(probs, splits=1).stderr)


@pytest.mark.parametrize("probs,splits,message", [
    (torch.ones(4, 1), 1, "K >= 2"),
    (torch.full((4, 2), 0.7), 1, "rows summing to 1"),
    (torch.eye(2), 3, "splits must be a whole number from 1 to the number of samples"),
])
def test_bad_input(probs, splits, message):
    with pytest.raises(ScorekitError, match=message):
        inception_score(probs, splits=splits)
