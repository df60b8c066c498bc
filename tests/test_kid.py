"""Kernel Inception Distance: the unbiased MMD^2 estimate against a brute-force double loop, and its
unbiasedness (mean zero over many draws of two samples of one distribution)."""
import math

import pytest
import torch

from scorekit import ScorekitError
from scorekit.metrics.kid import kernel_inception_distance, mmd2_jackknife, mmd2_unbiased


def gen(seed):
    return torch.Generator().manual_seed(seed)


def brute_force_mmd2(x, y):
    d = len(x[0])
    k = lambda a, b: (sum(a[i] * b[i] for i in range(d)) / d + 1.0) ** 3
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_mmd2_equals_the_double_loop():
    x = torch.randn(7, 3, generator=gen(0), dtype=torch.float64)
    y = torch.randn(5, 3, generator=gen(1), dtype=torch.float64) + 0.5
    expected = brute_force_mmd2(x.tolist(), y.tolist())
    assert mmd2_unbiased(x, y) == pytest.approx(expected, rel=1e-12, abs=1e-12)


def test_mmd2_is_unbiased():
    """Two independent samples of N(0, I): the estimates average to zero within 4 standard errors,
    while a shifted distribution gives a clearly positive value."""
    values = torch.tensor([mmd2_unbiased(torch.randn(20, 4, generator=gen(2 * i)),
                                         torch.randn(20, 4, generator=gen(2 * i + 1))) for i in range(400)],
                          dtype=torch.float64)
    assert abs(values.mean()) < 4 * values.std() / math.sqrt(len(values))
    shifted = mmd2_unbiased(torch.randn(200, 4, generator=gen(5)), torch.randn(200, 4, generator=gen(6)) + 1)
    assert shifted > 10 * values.std() / math.sqrt(len(values))


def test_kid_over_subsets():
    x, y = torch.randn(60, 3, generator=gen(7)), torch.randn(50, 3, generator=gen(8)) + 0.3
    kid = kernel_inception_distance(x, y, num_subsets=20, subset_size=30, generator=gen(9))
    assert kid.subset_size == 30 and kid.num_subsets == 20 and kid.std > 0
    assert kid.mean == pytest.approx(mmd2_unbiased(x, y), abs=4 * kid.std)
    whole = kernel_inception_distance(x, y, num_subsets=3, subset_size=1000, generator=gen(9))
    assert whole.subset_size == 50


def test_kid_mean_std_and_stderr_over_the_subsets():
    """The subsets by hand (each a random 30 of each set, drawn as documented), their MMD^2_u with
    numpy's statistics: KID's mean, its std the population deviation np.std (ddof 0, as the paper's
    code and torch-fidelity report it), its stderr the standard error of the mean,
    np.std(ddof=1) / sqrt(S) (not std itself, the spread of one subset's estimate)."""
    import numpy as np

    x, y = torch.randn(60, 3, generator=gen(7)), torch.randn(50, 3, generator=gen(8)) + 0.3
    for subsets in (4, 25):
        kid = kernel_inception_distance(x, y, num_subsets=subsets, subset_size=30, generator=gen(10))
        g, values = gen(10), []
        for _ in range(subsets):
            xi, yi = torch.randperm(60, generator=g)[:30], torch.randperm(50, generator=g)[:30]
            values.append(mmd2_unbiased(x[xi].double(), y[yi].double()))
        assert kid.mean == pytest.approx(np.mean(values), rel=1e-12)
        assert kid.std == pytest.approx(np.std(values), rel=1e-12)
        assert kid.stderr == pytest.approx(np.std(values, ddof=1) / math.sqrt(subsets), rel=1e-12)


@pytest.mark.parametrize("args,message", [
    ((torch.zeros(1, 3), torch.zeros(4, 3)), "N >= 2"),
    ((torch.zeros(4, 3), torch.zeros(4, 2)), "3 and 2 dimensions"),
    ((torch.full((4, 3), float("nan")), torch.zeros(4, 3)), "NaN or Inf"),
])
def test_bad_features_are_refused(args, message):
    with pytest.raises(ScorekitError, match=message):
        kernel_inception_distance(*args)


def test_jackknife_estimate_is_the_whole_set_mmd2():
    x = torch.randn(60, 3, generator=gen(10), dtype=torch.float64)
    y = torch.randn(45, 3, generator=gen(11), dtype=torch.float64) + 0.3
    value, se = mmd2_jackknife(x, y, blocks=5, generator=gen(12), chunk=7)
    assert value == pytest.approx(mmd2_unbiased(x, y), rel=1e-10, abs=1e-12)
    assert se > 0


def test_jackknife_leave_out_values_match_direct_computation():
    """Each leave-one-group-out value from the block sums equals MMD^2_u recomputed without
    that group (checked through the jackknife formula on directly computed values)."""
    x = torch.randn(30, 2, generator=gen(13), dtype=torch.float64)
    y = torch.randn(24, 2, generator=gen(14), dtype=torch.float64) + 0.5
    blocks = 3
    g = gen(15)
    ix = torch.randperm(30, generator=g) % blocks
    iy = torch.randperm(24, generator=g) % blocks
    parts = torch.tensor([mmd2_unbiased(x[ix != b], y[iy != b]) for b in range(blocks)], dtype=torch.float64)
    expected = math.sqrt((blocks - 1) / blocks * float(((parts - parts.mean()) ** 2).sum()))
    _, se = mmd2_jackknife(x, y, blocks=blocks, generator=gen(15))
    assert se == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("shift", [0.0, 0.4])
def test_jackknife_stderr_matches_the_spread_between_independent_sets(shift):
    """The jackknife standard error agrees with the standard deviation of MMD^2_u over independent
    pairs of sets, at MMD = 0 and above it, within a factor 1.6 (40 repetitions: the spread's own
    relative error is ~11%; the jackknife's with 10 groups ~25%, so the mean of 10 is compared)."""
    values, ses = [], []
    for i in range(40):
        x = torch.randn(200, 4, generator=gen(100 + 2 * i), dtype=torch.float64) + shift
        y = torch.randn(250, 4, generator=gen(101 + 2 * i), dtype=torch.float64)
        v, se = mmd2_jackknife(x, y, generator=gen(i))
        values.append(v)
        ses.append(se)
    spread = float(torch.tensor(values).std())
    mean_se = sum(ses[:10]) / 10
    assert spread / 1.6 < mean_se < spread * 1.6
