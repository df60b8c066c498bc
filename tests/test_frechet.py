"""Tests of the Fréchet distance (scorekit.metrics.frechet) and of the digit classifier whose
features and probabilities score generated digits (scorekit.metrics.digits_classifier).

Oracles: closed forms (diagonal, commuting and 2x2 covariances), scipy.linalg.sqrtm and a
40-digit mpmath eigen-decomposition, numpy's mean and covariance, the known upward bias of the
plug-in estimate (exact for the means, second-order delta method for the covariances, with
tolerances of a few standard errors of the Monte-Carlo mean), hand-computed scores, and real
MNIST digits for the classifier.
"""
import math
import os

import mpmath
import numpy as np
import pytest
import scipy.linalg
import torch

from scorekit.errors import ScorekitError
from scorekit.metrics import feature_statistics, frechet_distance, frechet_distance_from_features
from scorekit.metrics.digits_classifier import (
    DigitClassifier,
    accuracy,
    class_balance,
    confident_share,
    inception_score,
    load_digit_classifier,
    outlier_images,
    pad_digits,
    random_shift,
    save_digit_classifier,
    train_digit_classifier,
)
from scorekit.metrics.frechet import gaussian_frechet_bias, sqrtm_psd, trace_sqrt_product

F64 = torch.float64
MNIST = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "mnist-test")


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def random_orthogonal(d, g):
    q, r = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def random_spd(d, g, *, cond=10.0):
    q = random_orthogonal(d, g)
    lam = torch.logspace(0, math.log10(cond), d, dtype=F64) * torch.rand(1, generator=g, dtype=F64).add(0.5)
    return (q * lam) @ q.T


def trace_sqrt_tolerance(eigenvalues, norm1, norm2):
    """Rounding bound for float64 ``sum_i sqrt(lambda_i)``, ``lambda_i`` the eigenvalues of
    ``C1^{1/2} C2 C1^{1/2}`` (exact values given): forming ``C1``, ``C2``, the square root and the
    product and ``eigh`` each perturb the matrix by O(d eps ||C1|| ||C2||), so every eigenvalue moves
    by at most ``eta = 4 d eps ||C1|| ||C2||`` (Weyl) and its square root by at most
    ``min(sqrt(eta), eta / sqrt(lambda))`` (``|sqrt x - sqrt y| <= min(sqrt|x - y|, |x - y| / sqrt y)``):
    a zero eigenvalue costs ``sqrt(eta)`` ~ 1e-7, a well-separated one ``eta / sqrt(lambda)`` ~ 1e-15."""
    lam = torch.as_tensor(eigenvalues, dtype=F64).clamp_min(0)
    eta = 4 * lam.numel() * torch.finfo(F64).eps * norm1 * norm2
    return float(torch.minimum(torch.full_like(lam, math.sqrt(eta)), eta / lam.sqrt()).sum())


# --- closed forms ------------------------------------------------------------------------------------

def test_diagonal_covariances_closed_form():
    g = gen(0)
    d = 7
    mu1, mu2 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    a, b = torch.rand(d, generator=g, dtype=F64) * 3, torch.rand(d, generator=g, dtype=F64) * 3
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    got = frechet_distance(mu1, torch.diag(a), mu2, torch.diag(b))
    assert got == pytest.approx(expected, rel=1e-12, abs=1e-14)


def test_commuting_covariances_closed_form():
    g = gen(1)
    d = 9
    q = random_orthogonal(d, g)
    a, b = torch.rand(d, generator=g, dtype=F64) * 2, torch.rand(d, generator=g, dtype=F64) * 5
    a[:3] = 0.0                                        # singular C1: still exact
    c1, c2 = (q * a) @ q.T, (q * b) @ q.T
    mu1, mu2 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    expected = float(((mu1 - mu2) ** 2).sum() + ((a.sqrt() - b.sqrt()) ** 2).sum())
    # C1 C2 = Q diag(a b) Q^T: its three zero eigenvalues are zero only up to rounding, and the
    # square root turns that into ~1e-7 each (trace_sqrt_tolerance); the distance has the trace twice
    tol = trace_sqrt_tolerance(a * b, float(a.max()), float(b.max()))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-12, abs=2 * tol)
    assert trace_sqrt_product(c1, c2) == pytest.approx(float((a * b).sqrt().sum()), rel=1e-12, abs=tol)


@pytest.mark.parametrize("c1, c2", [
    ([[2.0, 0.7], [0.7, 1.0]], [[0.5, -0.3], [-0.3, 3.0]]),
    ([[1.0, 1.0], [1.0, 1.0]], [[2.0, 0.5], [0.5, 0.4]]),       # C1 singular
    ([[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 1.0]]),       # orthogonal supports: C1 C2 = 0
])
def test_two_by_two_closed_form(c1, c2):
    # for a 2x2 matrix with non-negative eigenvalues, tr M^{1/2} = sqrt(tr M + 2 sqrt(det M))
    A, B = np.array(c1), np.array(c2)
    tr_sqrt = math.sqrt(np.trace(A @ B) + 2 * math.sqrt(max(np.linalg.det(A) * np.linalg.det(B), 0.0)))
    # the closed form itself has a sqrt of a cancelling sum: its rounding is of the same kind
    tol = trace_sqrt_tolerance(np.linalg.eigvals(A @ B).real, np.linalg.norm(A, 2), np.linalg.norm(B, 2))
    assert trace_sqrt_product(A, B) == pytest.approx(tr_sqrt, rel=1e-12, abs=2 * tol)
    mu1, mu2 = [0.5, -1.0], [0.0, 2.0]
    expected = 0.25 + 9.0 + np.trace(A) + np.trace(B) - 2 * tr_sqrt
    assert frechet_distance(mu1, A, mu2, B) == pytest.approx(expected, rel=1e-12, abs=4 * tol)


def test_invariant_under_rotation_and_translation_and_symmetric():
    g = gen(2)
    d = 12
    c1, c2 = random_spd(d, g), random_spd(d, g, cond=100)
    mu1, mu2 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    ref = frechet_distance(mu1, c1, mu2, c2)
    q, shift = random_orthogonal(d, g), torch.randn(d, generator=g, dtype=F64)
    rotated = frechet_distance(q @ mu1 + shift, q @ c1 @ q.T, q @ mu2 + shift, q @ c2 @ q.T)
    assert rotated == pytest.approx(ref, rel=1e-10)
    assert frechet_distance(mu2, c2, mu1, c1) == pytest.approx(ref, rel=1e-10)
    # scaling x -> s x multiplies the squared distance by s^2
    assert frechet_distance(3 * mu1, 9 * c1, 3 * mu2, 9 * c2) == pytest.approx(9 * ref, rel=1e-10)


@pytest.mark.parametrize("d", [4, 32, 128])
def test_agrees_with_scipy_sqrtm_on_random_spd(d):
    g = gen(d)
    c1, c2 = random_spd(d, g, cond=50), random_spd(d, g, cond=50)
    mu1, mu2 = torch.randn(d, generator=g, dtype=F64), torch.randn(d, generator=g, dtype=F64)
    A, B = c1.numpy(), c2.numpy()
    root = scipy.linalg.sqrtm(A @ B)
    assert np.abs(np.imag(root)).max() < 1e-8 * np.abs(root).max()
    expected = float(((mu1 - mu2) ** 2).sum()) + np.trace(A) + np.trace(B) - 2 * np.real(np.trace(root))
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-9)


def test_sqrtm_psd_squares_back():
    c = random_spd(10, gen(3), cond=1e4)
    s = sqrtm_psd(c)
    assert torch.allclose(s, s.T, atol=0)
    assert torch.allclose(s @ s, c, rtol=0, atol=1e-12 * float(c.abs().max()))
    assert float(torch.linalg.eigvalsh(s).min()) > 0


def test_rank_deficient_statistics_against_40_digit_reference():
    # fewer samples than dimensions, as with few generated images and wide features: the
    # covariances are singular, C1 C2 has many zero eigenvalues
    g = gen(4)
    d = 16
    f1 = torch.randn(6, d, generator=g, dtype=F64)
    f2 = torch.randn(9, d, generator=g, dtype=F64) + 0.5
    mu1, c1 = feature_statistics(f1)
    mu2, c2 = feature_statistics(f2)
    mpmath.mp.dps = 40

    def mp_cov(f):
        rows = [[mpmath.mpf(v) for v in r] for r in f.tolist()]
        n = len(rows)
        mean = [sum(r[j] for r in rows) / n for j in range(d)]
        centred = mpmath.matrix([[r[j] - mean[j] for j in range(d)] for r in rows])
        return centred.T * centred / (n - 1), mean

    (C1, m1), (C2, m2) = mp_cov(f1), mp_cov(f2)
    eig = mpmath.eig(C1 * C2, left=False, right=False)
    tr_sqrt = sum(mpmath.sqrt(mpmath.re(e)) for e in eig if mpmath.re(e) > 0)
    ref = sum((a - b) ** 2 for a, b in zip(m1, m2)) + sum(C1[i, i] + C2[i, i] for i in range(d)) - 2 * tr_sqrt
    got = frechet_distance(mu1, c1, mu2, c2)
    # float64 covariances are singular only up to rounding; each of the many zero eigenvalues of
    # C1 C2 moves its square root by up to ~1e-7 (trace_sqrt_tolerance), the oracle is exact
    tol = trace_sqrt_tolerance([float(mpmath.re(e)) for e in eig],
                               float(torch.linalg.matrix_norm(c1, 2)), float(torch.linalg.matrix_norm(c2, 2)))
    assert got == pytest.approx(float(ref), rel=1e-12, abs=2 * tol)


def test_zero_for_identical_statistics():
    g = gen(5)
    for c in (random_spd(20, g, cond=1e6), torch.zeros(20, 20, dtype=F64)):
        mu = torch.randn(20, generator=g, dtype=F64)
        assert abs(frechet_distance(mu, c, mu, c)) <= 1e-10 * (1 + float(torch.trace(c)))
    f = torch.randn(15, 40, generator=g)                 # singular sample covariance, float32 input
    assert frechet_distance_from_features(f, f) <= 1e-10 * float(feature_statistics(f)[1].trace())
    assert frechet_distance_from_features(f, f[torch.randperm(15, generator=g)]) <= 1e-9 * 40


def test_feature_statistics_match_numpy():
    f = torch.randn(50, 6, generator=gen(6)) * 3 + 1
    mu, cov = feature_statistics(f)
    assert mu.dtype == F64 and cov.dtype == F64
    a = f.double().numpy()
    np.testing.assert_allclose(mu.numpy(), a.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(cov.numpy(), np.cov(a, rowvar=False), rtol=1e-12)   # 1/(N-1)


def test_bad_inputs_raise_scorekit_error():
    eye = torch.eye(3, dtype=F64)
    with pytest.raises(ScorekitError, match="cov2"):
        frechet_distance(torch.zeros(3), eye, torch.zeros(3), torch.eye(4))
    with pytest.raises(ScorekitError, match="mu1"):
        frechet_distance(torch.zeros(3, 1), eye, torch.zeros(3), eye)
    with pytest.raises(ScorekitError, match="NaN"):
        frechet_distance(torch.tensor([0.0, float("nan"), 0.0]), eye, torch.zeros(3), eye)
    with pytest.raises(ScorekitError, match="at least 2"):
        feature_statistics(torch.zeros(1, 3))
    with pytest.raises(ScorekitError, match="same dimension"):
        frechet_distance_from_features(torch.randn(5, 3), torch.randn(5, 4))


# --- Monte Carlo: the plug-in estimate converges to the closed form with its known bias ----------------

def test_same_gaussian_bias_matches_leading_order_formula():
    # two samples of one isotropic Gaussian: true distance 0, E[estimate] = gaussian_frechet_bias
    g = gen(7)
    d, s, R = 8, 2.0, 120
    for n in (300, 1200):
        vals = torch.tensor([frechet_distance_from_features(
            math.sqrt(s) * torch.randn(n, d, generator=g, dtype=F64) + 1.0,
            math.sqrt(s) * torch.randn(n, d, generator=g, dtype=F64) + 1.0) for _ in range(R)])
        expected = gaussian_frechet_bias(d, n, n, s)
        se = float(vals.std()) / math.sqrt(R)
        # corrections are O(D^3 / n^2): below 2% of the bias here
        assert abs(float(vals.mean()) - expected) < 4 * se + 0.02 * expected, (n, float(vals.mean()), expected, se)
        assert 4 * se < 0.3 * expected          # the test resolves the bias


def _delta_method_bias(c1, c2, n1, n2):
    r"""Second-order bias ``E[d^2(S_1, S_2)] - d^2(C_1, C_2)`` of the trace term for 2x2 sample
    covariances ``S_i`` (Wishart, ``Cov(S_ij, S_kl) = (C_ik C_jl + C_il C_jk) / (n - 1)``), from
    the Hessian of the closed form ``tr C1 + tr C2 - 2 sqrt(tr(C1 C2) + 2 sqrt(det C1 det C2))``."""
    def closed(theta):
        a, b, c, d, e, f = theta
        s1 = torch.stack([torch.stack([a, b]), torch.stack([b, c])])
        s2 = torch.stack([torch.stack([d, e]), torch.stack([e, f])])
        return (torch.trace(s1) + torch.trace(s2)
                - 2 * torch.sqrt(torch.trace(s1 @ s2) + 2 * torch.sqrt(torch.det(s1) * torch.det(s2))))

    theta = torch.tensor([c1[0, 0], c1[0, 1], c1[1, 1], c2[0, 0], c2[0, 1], c2[1, 1]], dtype=F64)
    H = torch.autograd.functional.hessian(closed, theta)
    idx = [(0, 0), (0, 1), (1, 1)]

    def wishart_cov(C, n):
        return torch.tensor([[(C[i, k] * C[j, l] + C[i, l] * C[j, k]) / (n - 1) for k, l in idx]
                             for i, j in idx], dtype=F64)

    return 0.5 * float((H[:3, :3] * wishart_cov(c1, n1)).sum() + (H[3:, 3:] * wishart_cov(c2, n2)).sum())


def test_estimate_converges_to_closed_form_with_known_bias():
    g = gen(8)
    c1 = torch.tensor([[1.0, 0.6], [0.6, 0.8]], dtype=F64)
    c2 = torch.tensor([[0.5, -0.2], [-0.2, 1.5]], dtype=F64)      # does not commute with c1
    mu1, mu2 = torch.zeros(2, dtype=F64), torch.tensor([0.3, -0.2], dtype=F64)
    exact = frechet_distance(mu1, c1, mu2, c2)
    l1, l2 = torch.linalg.cholesky(c1), torch.linalg.cholesky(c2)
    R = 800
    for n in (100, 400):
        vals = torch.tensor([frechet_distance_from_features(
            mu1 + torch.randn(n, 2, generator=g, dtype=F64) @ l1.T,
            mu2 + torch.randn(n, 2, generator=g, dtype=F64) @ l2.T) for _ in range(R)])
        # E||m1 - m2||^2 = ||mu1 - mu2||^2 + tr C1 / n + tr C2 / n exactly; the covariance part
        # to second order
        bias = float(torch.trace(c1) + torch.trace(c2)) / n + _delta_method_bias(c1, c2, n, n)
        se = float(vals.std()) / math.sqrt(R)
        err = float(vals.mean()) - exact
        assert abs(err - bias) < 4 * se + 0.05 * bias, (n, err, bias, se)
        assert bias > 5 * se                     # the bias is resolved, not hidden in the noise


# --- the digit classifier -------------------------------------------------------------------------------

def _mnist(start, stop):
    if not os.path.isdir(MNIST):
        pytest.skip(f"MNIST test set not found at {MNIST}")
    from scorekit.data import load_dataset

    return load_dataset(f"mnist:{MNIST}", pad_to=32, start=start, stop=stop)


def test_pad_digits_matches_dataset_padding_and_features_agree():
    from scorekit.data.images import pad_images

    x28 = torch.rand(4, 1, 28, 28, generator=gen(9)) * 2 - 1
    x32 = pad_digits(x28)
    np.testing.assert_array_equal(x32.numpy(), pad_images(x28.numpy(), 32, -1.0))
    net = DigitClassifier(seed=3)
    assert torch.equal(net.features(x28), net.features(x32))
    assert net.features(x28).shape == (4, 128)
    p = net.predict_proba(x28)
    assert p.shape == (4, 10) and torch.allclose(p.sum(1), torch.ones(4))
    with pytest.raises(ScorekitError, match="at most 32x32"):
        pad_digits(torch.zeros(1, 1, 40, 40))


def test_random_shift_moves_each_image_by_at_most_the_shift_uniformly():
    n, s = 5000, 2
    x = -torch.ones(n, 1, 12, 12)
    x[:, 0, 5, 7] = 1.0                                      # one bright pixel
    out = random_shift(x, s, gen(10))
    pos = (out[:, 0] == 1.0).flatten(1).float().argmax(1)
    dy, dx = pos // 12 - 5, pos % 12 - 7
    assert int(dy.abs().max()) == s and int(dx.abs().max()) == s
    assert bool((out == 1.0).flatten(1).sum(1).eq(1).all())  # the pixel survives, nothing else lit
    counts = torch.bincount((dy + s) * (2 * s + 1) + (dx + s), minlength=25).double()
    expected = n / 25
    assert float((counts - expected).abs().max()) < 4 * math.sqrt(expected * (1 - 1 / 25))
    assert torch.equal(random_shift(x, s, gen(10)), out)     # reproducible from the generator
    assert torch.equal(random_shift(x, 0, gen(10)), x)


def test_outlier_images_are_reproducible_images_in_range():
    a, b = outlier_images(10, gen(14)), outlier_images(10, gen(14))
    assert a.shape == (10, 1, 32, 32) and torch.equal(a, b)
    assert float(a.min()) >= -1 and float(a.max()) <= 1
    white, smooth = a[:5], a[5:]
    # white noise varies from pixel to pixel; the smooth blobs change slowly
    def roughness(x):
        return float((x[..., 1:] - x[..., :-1]).abs().mean())
    assert roughness(white) > 5 * roughness(smooth)


def test_classifier_learns_mnist_and_is_reproducible(tmp_path):
    train_set, held_out = _mnist(0, 2000), _mnist(8000, 9000)
    net = train_digit_classifier(train_set.x, train_set.y, epochs=2, batch_size=32, lr=3e-3,
                                 generator=gen(11))
    acc = accuracy(net, held_out.x, held_out.y)
    assert acc > 0.9, acc                                    # chance is 0.1; about 0.96 here
    # trained with outliers, it does not take noise for a digit (without: most noise images
    # are "recognised" with confidence > 0.9)
    noise = torch.randn(500, 1, 32, 32, generator=gen(13)).clamp(-1, 1)
    assert confident_share(net.predict_proba(noise)) < 0.05
    assert confident_share(net.predict_proba(held_out.x)) > 0.6
    # its features put real digits near held-out digits and noise far away; the features are
    # taken before the ReLU, so rejected images (all units off after it) still differ
    f_held, f_real = net.features(held_out.x[:500]), net.features(train_set.x[:500])
    f_noise, f_faint = net.features(noise), net.features(0.3 * noise)
    assert frechet_distance_from_features(f_real, f_held) < 0.1 * frechet_distance_from_features(f_noise, f_held)
    assert frechet_distance_from_features(f_noise, f_faint) > 1.0
    # same generator state, same data: the same network, bit for bit
    small = train_digit_classifier(train_set.x[:200], train_set.y[:200], epochs=1, generator=gen(12))
    again = train_digit_classifier(train_set.x[:200], train_set.y[:200], epochs=1, generator=gen(12))
    for (k, a), (_, b) in zip(small.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k
    # saving and loading keeps weights, features and info
    net.info["heldout_accuracy"] = acc
    folder = save_digit_classifier(net, tmp_path / "clf")
    loaded = load_digit_classifier(folder)
    x = held_out.x[:50]
    assert torch.equal(loaded.features(x), net.features(x))
    assert torch.equal(loaded.predict_proba(x), net.predict_proba(x))
    assert loaded.info["heldout_accuracy"] == acc and loaded.info["num_train"] == 2000
    save_digit_classifier(loaded, folder)                    # overwriting an existing folder works
    assert sorted(os.listdir(tmp_path)) == ["clf"]


def test_load_digit_classifier_errors_name_the_file(tmp_path):
    with pytest.raises(ScorekitError, match="config.json"):
        load_digit_classifier(tmp_path / "missing")
    folder = save_digit_classifier(DigitClassifier(), tmp_path / "clf")
    with open(os.path.join(folder, "model.safetensors"), "wb") as fh:
        fh.write(b"not a safetensors file")
    with pytest.raises(ScorekitError, match="model.safetensors"):
        load_digit_classifier(folder)
    with pytest.raises(ScorekitError, match="epochs"):
        train_digit_classifier(torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long), epochs=0,
                               generator=gen())
    with pytest.raises(ScorekitError, match=r"\[-1, 1\]"):
        train_digit_classifier(torch.full((4, 1, 28, 28), 255.0), torch.zeros(4, dtype=torch.long),
                               epochs=1, generator=gen())


# --- scores from class probabilities ----------------------------------------------------------------------

def test_inception_score_closed_forms():
    eye = torch.eye(10)
    assert inception_score(eye.repeat(3, 1)) == pytest.approx(10.0, rel=1e-12)   # certain and balanced
    assert inception_score(eye[:5].repeat(2, 1)) == pytest.approx(5.0, rel=1e-12)  # 5 classes only
    assert inception_score(torch.full((7, 10), 0.1)) == pytest.approx(1.0, rel=1e-12)
    assert inception_score(eye[[3, 3, 3]]) == pytest.approx(1.0, rel=1e-12)       # one class only
    # by hand: p(y|x) = (1, 0) and (1/2, 1/2); marginal (3/4, 1/4)
    kl1 = math.log(1 / 0.75)
    kl2 = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert inception_score([[1.0, 0.0], [0.5, 0.5]]) == pytest.approx(math.exp((kl1 + kl2) / 2), rel=1e-12)


def test_confident_share_and_class_balance_by_hand():
    p = torch.tensor([[0.95, 0.05], [0.9, 0.1], [0.2, 0.8], [0.01, 0.99]])
    assert confident_share(p) == 0.5                 # 0.95 and 0.99 exceed 0.9; 0.9 does not
    assert confident_share(p, threshold=0.5) == 1.0
    bal = class_balance(torch.tensor([0, 0, 0, 1, 2, 2]), num_classes=3)
    assert bal["counts"] == [3, 1, 2]
    assert bal["max_min_ratio"] == 3.0
    q = np.array([3, 1, 2]) / 6
    assert bal["kl_to_uniform"] == pytest.approx(math.log(3) + float((q * np.log(q)).sum()), rel=1e-12)
    assert class_balance(torch.arange(10).repeat(4))["kl_to_uniform"] == pytest.approx(0.0, abs=1e-15)
    missing = class_balance(torch.tensor([0, 1]), num_classes=3)
    assert missing["max_min_ratio"] == float("inf")
    with pytest.raises(ScorekitError, match="rows summing to 1"):
        inception_score(torch.tensor([[0.5, 0.6]]))
