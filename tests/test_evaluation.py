"""scorekit.evaluation: scores against their definitions on Gaussian 'images' whose features are
their pixels, the standard errors against the spread of independent repetitions, the reference
cache (read back, refused for another extractor, corrupt files named), and per-class scores."""
import json
import math
import os

import pytest
import torch
from torch import nn

from scorekit import ScorekitError
from scorekit.evaluation import (EvalReport, ReferenceStatistics, Score, data_hash, evaluate, parse_metrics,
                                 reference_cache_path, reference_statistics)
from scorekit.metrics import (ModuleExtractor, frechet_distance_from_features, inception_score,
                              kernel_inception_distance, precision_recall)
from scorekit.metrics.frechet import gaussian_frechet_bias

SCALE = 0.2          # pixel std: N(0, SCALE^2) stays inside [-1, 1] (5 sigma) so clamping never acts


def gen(seed):
    return torch.Generator().manual_seed(seed)


def images(n, seed, shift=0.0, side=2):
    return SCALE * torch.randn(n, 1, side, side, generator=gen(seed)) + shift


class WithLogits(nn.Module):
    """Features = pixels; logits = a fixed linear map of them (so probabilities exist)."""

    def __init__(self, dim=4, classes=3):
        super().__init__()
        self.head = nn.Linear(dim, classes)
        with torch.no_grad():
            self.head.weight.copy_(torch.randn(classes, dim, generator=gen(99)) * 5)
            self.head.bias.zero_()

    def forward(self, x):
        f = x.flatten(1)
        return f, self.head(f)


def pixels(name="pixels"):
    return ModuleExtractor(nn.Flatten(), name=name)


def test_scores_equal_the_metric_functions_on_the_same_features():
    """With features = pixels, every score is the metric function on the pixels (the
    reference implementation on identical inputs; equal set sizes, so precision and recall use
    the whole reference)."""
    x, r = images(300, 0, 0.05), images(300, 1)
    ext = ModuleExtractor(WithLogits(), name="pix+logits", logits=True)
    report = evaluate(x, r, ext, fid_bootstrap=0, kid_subsets=20, kid_subset_size=200, seed=3)
    fx, fr = x.flatten(1).double(), r.flatten(1).double()
    assert report.scores["fid"].value == pytest.approx(frechet_distance_from_features(fx, fr), rel=1e-6)
    kid = kernel_inception_distance(fx, fr, num_subsets=20, subset_size=200, generator=gen(3))
    assert report.scores["kid"].value == pytest.approx(kid.mean, rel=1e-5, abs=1e-12)
    assert report.scores["kid"].std == pytest.approx(kid.std, rel=1e-5)
    assert report.scores["kid"].stderr > 0
    _, probs = ext.features_and_probabilities(x)
    assert report.scores["is"].value == pytest.approx(inception_score(probs, splits=10).mean, rel=1e-9)
    p, rec = precision_recall(fr, fx)
    assert report.scores["precision"].value == p and report.scores["recall"].value == rec
    assert 0.3 < p < 1 and 0.3 < rec < 1
    assert report.num_samples == 300 and report.num_reference == 300
    assert set(report.scores) == {"fid", "kid", "is", "precision", "recall"}


def test_same_distribution_gives_kid_zero_and_fid_at_its_bias():
    """Samples and reference from one Gaussian: KID is unbiased (|mean| within 4 standard errors
    of 0 over repetitions), FID sits at the closed-form small-sample bias of
    gaussian_frechet_bias (within 4 standard errors of the repetitions)."""
    kids, fids = [], []
    for i in range(30):
        rep = evaluate(images(200, 2 * i), images(300, 2 * i + 1), pixels(), metrics="fid,kid",
                       fid_bootstrap=0, kid_subsets=1, kid_subset_size=200, seed=i)
        kids.append(rep.scores["kid"].value)
        fids.append(rep.scores["fid"].value)
    kids, fids = torch.tensor(kids, dtype=torch.float64), torch.tensor(fids, dtype=torch.float64)
    assert abs(float(kids.mean())) < 4 * float(kids.std()) / math.sqrt(len(kids))
    bias = gaussian_frechet_bias(4, 200, 300, variance=SCALE ** 2)
    assert abs(float(fids.mean()) - bias) < 4 * float(fids.std()) / math.sqrt(len(fids)) + 0.1 * bias


def test_fid_bootstrap_stderr_matches_the_spread_of_independent_sets():
    """The bootstrap standard error of FID estimates the standard deviation of FID between
    independent sample sets: the two agree within a factor 1.6 (the spread's own relative error
    at 40 repetitions is ~11%, the bootstrap's at 20 replicates ~16%)."""
    shift = 0.1
    reference = images(400, 1000)
    ref_stats = reference_statistics(reference, pixels())
    fids = [evaluate(images(300, i, shift), ref_stats, pixels(), metrics="fid", fid_bootstrap=0).scores["fid"].value
            for i in range(40)]
    spread = float(torch.tensor(fids).std())
    boot = evaluate(images(300, 5000, shift), ref_stats, pixels(), metrics="fid", fid_bootstrap=20)
    # the repetitions above keep the reference fixed, the bootstrap resamples it too: compare with
    # repetitions that redraw both
    both = [evaluate(images(300, i, shift), images(400, 2000 + i), pixels(), metrics="fid",
                     fid_bootstrap=0).scores["fid"].value for i in range(40)]
    spread_both = float(torch.tensor(both).std())
    assert spread <= spread_both * 1.3
    assert spread_both / 1.6 < boot.scores["fid"].stderr < spread_both * 1.6


@pytest.mark.parametrize("shift", [0.0, 0.05])
def test_kid_stderr_matches_the_spread_of_independent_sets(shift):
    """KID is the mean over S random subsets; its standard error must cover both the sets' own
    noise (the jackknife of MMD^2_u on the whole sets, which the subset mean estimates) and the
    subsets' (std^2 / S). With small subsets (25 of 400 points, S = 10) the second dominates: over 60
    pairs of independent sets (the spread's relative error ~9%) the reported error is within a
    factor 1.4 of the spread, at KID = 0 and above."""
    values, errors = [], []
    for i in range(60):
        rep = evaluate(images(400, 2 * i, shift), images(400, 2 * i + 1), pixels(), metrics="kid",
                       kid_subsets=10, kid_subset_size=25, seed=i)
        values.append(rep.scores["kid"].value)
        errors.append(rep.scores["kid"].stderr)
    ratio = float(torch.tensor(values).std() / torch.tensor(errors).mean())
    assert 1 / 1.4 < ratio < 1.4, ratio


def test_precision_recall_find_a_missing_mode_and_far_samples():
    """Samples covering half of a two-mode reference: precision ~1, recall ~1/2; samples far
    away: both 0. Recall's standard error is binomial over the 300 samples; precision's, averaged
    over two reference subsets, at most the binomial one (a share a_i in [0, 1] with mean p has
    variance <= p (1 - p))."""
    ref = torch.cat([images(300, 1, -0.5), images(300, 2, 0.5)])
    half = images(300, 3, -0.5)
    rep = evaluate(half, ref, pixels(), metrics="pr")
    p, r = rep.scores["precision"], rep.scores["recall"]
    assert p.value > 0.9 and 0.35 < r.value < 0.6
    assert r.stderr == pytest.approx(math.sqrt(r.value * (1 - r.value) / 300))
    assert 0 < p.stderr <= math.sqrt(p.value * (1 - p.value) / 299)
    far = evaluate(images(300, 4, 0.9) + 5, ref, pixels(), metrics="pr")
    assert far.scores["precision"].value == 0 and far.scores["recall"].value == 0


@pytest.mark.parametrize("n_ref", [100, 350, 1500])
def test_precision_recall_stderrs_follow_their_formulas(n_ref):
    """Documented standard errors, by hand from the manifolds (metrics.precision_recall on each
    reference subset): precision's std(a) / sqrt(n), a_i the share of the subsets whose manifold
    holds sample i (disjoint subsets of 100: all of the reference when it is no larger, else
    floor(n_ref / 100) of them, at most 10); recall's sqrt(r (1 - r) / n) over the n = 100 samples."""
    from scorekit.metrics import manifold_membership

    n = 100
    samples, reference = images(n, 0, 0.1), images(n_ref, 1)
    rep = evaluate(samples, reference, pixels(), metrics="pr", seed=4)
    p, r = rep.scores["precision"], rep.scores["recall"]
    assert 0 < p.value < 1 and 0 < r.value < 1
    order = torch.randperm(n_ref, generator=gen(4)) if n_ref > n else torch.arange(n_ref)
    parts = [reference.flatten(1)[order[i * n:(i + 1) * n]] for i in range(max(1, min(n_ref // n, 10)))]
    held = torch.stack([manifold_membership(samples.flatten(1), part) for part in parts]).double().mean(0)
    assert p.value == pytest.approx(float(held.mean()), rel=1e-12)
    assert p.stderr == pytest.approx(float(held.std()) / math.sqrt(n), rel=1e-12)
    if len(parts) == 1:                                          # one subset: binomial
        assert p.stderr == pytest.approx(math.sqrt(p.value * (1 - p.value) / (n - 1)), rel=1e-12)
    assert r.stderr == pytest.approx(math.sqrt(r.value * (1 - r.value) / n), rel=1e-12)


def test_reference_subsets_for_precision_recall_are_disjoint_and_sized_like_the_samples(monkeypatch):
    """Precision tests the samples against each reference subset's manifold, recall each subset
    against the samples' manifold: three disjoint subsets of 100 from 350 reference points."""
    import scorekit.metrics as metrics

    calls = []
    real_membership = metrics.manifold_membership

    def spy(points, reference, k=3):
        calls.append((points.clone(), reference.clone()))
        return real_membership(points, reference, k)

    monkeypatch.setattr(metrics, "manifold_membership", spy)
    evaluate(images(100, 0), images(350, 1), pixels(), metrics="pr")
    assert len(calls) == 6
    samples = calls[0][0]
    parts = [reference for _, reference in calls[:3]]
    assert all(torch.equal(points, samples) for points, _ in calls[:3])
    assert all(torch.equal(points, part) and torch.equal(reference, samples)
               for (points, reference), part in zip(calls[3:], parts))
    assert [part.shape[0] for part in parts] == [100, 100, 100]
    assert torch.unique(torch.cat(parts), dim=0).shape[0] == 300


def test_precision_recall_stderrs_match_the_spread_of_new_samples():
    """Standard errors for new draws of the samples, the reference fixed: 60 repetitions of 200
    samples (the spread's own relative error ~9%), against a reference of 200 points and of 1000
    (five subsets). Precision's error follows each sample's share of the subsets whose manifold
    holds it; recall's is binomial over the samples, which build its manifold (testing five times
    as many reference points does not divide it by sqrt(5)). Each within a factor 1.6 of the spread."""
    from scorekit.evaluation import _pr

    D, n = 4, 200
    g = torch.Generator().manual_seed(0)
    for multiple in (1, 5):
        real = torch.randn(n * multiple, D, generator=g, dtype=torch.float64)
        values, errors = [], []
        for rep in range(60):
            fake = 1.1 * torch.randn(n, D, generator=g, dtype=torch.float64) + 0.2
            scores = _pr(fake, real, 3, torch.Generator().manual_seed(rep))
            values.append([s.value for s in scores])
            errors.append([s.stderr for s in scores])
        ratio = torch.tensor(values).std(0) / torch.tensor(errors).mean(0)
        assert torch.all((ratio > 1 / 1.6) & (ratio < 1.6)), (multiple, ratio)


def test_is_stderr_is_the_split_deviation_over_root_splits():
    ext = ModuleExtractor(WithLogits(), name="pix+logits", logits=True)
    x = images(500, 7)
    rep = evaluate(x, images(100, 8), ext, metrics="is")
    _, probs = ext.features_and_probabilities(x)
    ref = inception_score(probs, splits=10)
    assert rep.scores["is"].value == pytest.approx(ref.mean)
    # ref.std is the population deviation (ddof 0); the mean's error uses the unbiased variance
    assert rep.scores["is"].stderr == pytest.approx(ref.std * math.sqrt(10 / 9) / math.sqrt(10))
    assert rep.scores["is"].std == pytest.approx(ref.std)


def test_per_class_scores_see_swapped_labels_that_the_overall_scores_miss():
    """Two classes at -0.5 and +0.5. Samples right, but labelled the wrong way round: the overall
    FID is unchanged, the per-class FID is large; labelled right, per-class FID is small."""
    ref = torch.cat([images(300, 1, -0.5), images(300, 2, 0.5)])
    ref_y = torch.tensor([0] * 300 + [1] * 300)
    stats = reference_statistics(ref, pixels(), labels=ref_y)
    x = torch.cat([images(200, 3, -0.5), images(200, 4, 0.5)])
    right = torch.tensor([0] * 200 + [1] * 200)
    good = evaluate(x, stats, pixels(), metrics="fid,kid", sample_labels=right, per_class=True)
    bad = evaluate(x, stats, pixels(), metrics="fid,kid", sample_labels=1 - right, per_class=True)
    assert good.scores["fid"].value == pytest.approx(bad.scores["fid"].value)
    assert bad.per_class["mean"]["fid"].value > 10 * good.per_class["mean"]["fid"].value
    assert set(good.per_class) == {0, 1, "mean"}
    assert good.per_class["mean"]["fid"].value == pytest.approx(
        (good.per_class[0]["fid"].value + good.per_class[1]["fid"].value) / 2)


def test_the_mean_over_classes_has_the_standard_error_of_a_mean_of_independent_scores():
    """Each class is scored on its own samples and reference images, so the K per-class scores are
    independent: their mean has value sum_k v_k / K and standard error sqrt(sum_k e_k^2) / K,
    computed here from the per-class scores the report returns, for every metric in the mean."""
    ref = torch.cat([images(150, 1, -0.5), images(150, 2, 0.5), images(150, 5, 0.0)])
    ref_y = torch.tensor([0] * 150 + [1] * 150 + [2] * 150)
    x = torch.cat([images(100, 3, -0.5), images(100, 4, 0.5), images(100, 6, 0.1)])
    y = torch.tensor([0] * 100 + [1] * 100 + [2] * 100)
    rep = evaluate(x, reference_statistics(ref, pixels(), labels=ref_y), pixels(), metrics="fid,kid,pr",
                   sample_labels=y, per_class=True, fid_bootstrap=5, kid_subsets=5, kid_subset_size=50)
    mean = rep.per_class["mean"]
    assert set(mean) == {"fid", "kid", "precision", "recall"}
    for key, score in mean.items():
        parts = [rep.per_class[c][key] for c in (0, 1, 2)]
        assert all(math.isfinite(s.stderr) and s.stderr > 0 for s in parts), key
        assert score.value == pytest.approx(sum(s.value for s in parts) / 3, rel=1e-12, abs=1e-15), key
        assert score.stderr == pytest.approx(math.sqrt(sum(s.stderr ** 2 for s in parts)) / 3, rel=1e-12), key


def test_class_accuracy_counts_samples_the_extractor_puts_in_their_class():
    ext = ModuleExtractor(WithLogits(classes=2), name="two", logits=True)
    ref = images(200, 1)
    _, probs = ext.features_and_probabilities(ref)
    stats = reference_statistics(ref, ext, labels=probs.argmax(1))
    x = images(300, 2)
    _, p = ext.features_and_probabilities(x)
    truth = p.argmax(1)
    labels = truth.clone()
    labels[:60] = 1 - labels[:60]                               # 60 of 300 asked for the other class
    rep = evaluate(x, stats, ext, metrics="fid", sample_labels=labels)
    assert rep.scores["class_accuracy"].value == pytest.approx(0.8)
    # a share of the 300 samples: the binomial standard error sqrt(a (1 - a) / n)
    assert rep.scores["class_accuracy"].stderr == pytest.approx(math.sqrt(0.8 * 0.2 / 300), rel=1e-9)


def test_samples_outside_the_pixel_range_are_scored_as_their_clamped_values():
    """docs/evaluation.md: "evaluate clamps samples to [-1, 1], as saving them as images would".
    Samples with a third of their pixels beyond +-1 get exactly the report of the clamped samples
    (same seed, so the same subsets and replicates), for every metric and through the class
    probabilities too (class accuracy, IS); the unclamped pixels would give other features."""
    ext = ModuleExtractor(WithLogits(), name="pix+logits", logits=True)
    ref = images(200, 1)
    ref_y = ext.features_and_probabilities(ref)[1].argmax(1)
    stats = reference_statistics(ref, ext, labels=ref_y)
    x = images(200, 2) * 6                                         # std 1.2: ~40% of pixels outside
    outside = (x.abs() > 1).double().mean().item()
    assert outside > 0.3
    y = ext.features_and_probabilities(x.clamp(-1, 1))[1].argmax(1)
    run = lambda s: evaluate(s, stats, ext, sample_labels=y, fid_bootstrap=3, kid_subsets=5,
                             kid_subset_size=100, seed=4).to_dict()
    clamped = run(x.clamp(-1, 1))
    assert run(x)["metrics"] == clamped["metrics"]
    assert set(clamped["metrics"]) == {"fid", "kid", "is", "precision", "recall", "class_accuracy"}
    assert not torch.equal(ext.features(x), ext.features(x.clamp(-1, 1)))


def test_reference_statistics_are_cached_and_read_back(tmp_path):
    calls = []
    ext = pixels()
    original = ext.features

    def counting(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    ext.features = counting
    ref, y = images(50, 0), torch.arange(50) % 3
    a = reference_statistics(ref, ext, labels=y, data="test", cache_dir=tmp_path)
    b = reference_statistics(ref, ext, labels=y, data="test", cache_dir=tmp_path)
    assert len(calls) == 1
    assert torch.equal(a.features, b.features) and torch.equal(b.labels, y)
    path = reference_cache_path(ext, data_hash(ref, y), tmp_path)
    assert os.path.isfile(path) and os.path.isfile(path[:-len(".safetensors")] + ".json")
    meta = json.load(open(path[:-len(".safetensors")] + ".json"))
    assert meta["extractor"] == "pixels" and meta["weights_hash"] == ext.weights_hash and meta["num"] == 50
    # other data: another key, computed again
    reference_statistics(ref + 0.01, ext, labels=y, cache_dir=tmp_path)
    assert len(calls) == 2


def test_a_cache_of_another_extractor_is_refused(tmp_path):
    ref = images(40, 0)
    stats = reference_statistics(ref, pixels("net-a"))
    path = stats.save(tmp_path / "ref.safetensors")
    with pytest.raises(ScorekitError, match="computed with the feature extractor 'net-a'"):
        ReferenceStatistics.load(path, extractor=pixels("net-b"))
    with pytest.raises(ScorekitError, match="not with 'net-b'"):
        evaluate(images(40, 1), stats, pixels("net-b"))
    other_weights = ModuleExtractor(nn.Sequential(nn.Flatten(), nn.Linear(4, 4)), name="net-a")
    with pytest.raises(ScorekitError, match="weights"):
        ReferenceStatistics.load(path, extractor=other_weights)
    assert ReferenceStatistics.load(path, extractor=pixels("net-a")).meta["num"] == 40


def test_corrupt_or_missing_statistics_are_named(tmp_path):
    stats = reference_statistics(images(20, 0), pixels())
    path = stats.save(tmp_path / "ref")
    open(path, "wb").write(b"not safetensors")
    with pytest.raises(ScorekitError, match="not readable.*delete them"):
        ReferenceStatistics.load(path)
    with pytest.raises(ScorekitError, match="does not exist"):
        ReferenceStatistics.load(tmp_path / "missing.safetensors")


def test_bad_input_gives_one_clear_error():
    ref = images(30, 0)
    with pytest.raises(ScorekitError, match="unknown metric 'fad'"):
        evaluate(images(30, 1), ref, pixels(), metrics="fid,fad")
    with pytest.raises(ScorekitError, match="shape"):
        evaluate(images(30, 1, side=3), ref, pixels())
    with pytest.raises(ScorekitError, match="class probabilities"):
        evaluate(images(30, 1), ref, pixels(), metrics="is")
    with pytest.raises(ScorekitError, match="per-class scores need labels"):
        evaluate(images(30, 1), ref, pixels(), metrics="fid", per_class=True, sample_labels=torch.zeros(30))
    with pytest.raises(ScorekitError, match="images"):
        evaluate(torch.zeros(30, 4), ref, pixels())
    assert parse_metrics("FID, kid") == ("fid", "kid")


def test_report_table_and_json():
    rep = EvalReport({"fid": Score(12.345, 0.5), "kid": Score(1e-4, 2e-5, 2e-4)}, None, 10, 20,
                     {"name": "x", "weights_hash": "0" * 64, "info": {}}, {})
    text = rep.table()
    assert "FID" in text and "12.35" in text and "lower is better" in text
    d = rep.to_dict()
    assert d["metrics"]["kid"] == {"value": 1e-4, "stderr": 2e-5, "std": 2e-4}
    assert json.loads(json.dumps(d, allow_nan=False)) == d
