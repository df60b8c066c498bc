r"""Fréchet distance between Gaussians fitted to features (the "FID" formula).

For ``N(mu_1, C_1)`` and ``N(mu_2, C_2)`` the squared 2-Wasserstein distance is (Dowson & Landau
1982; Heusel et al. 2017, eq. 6)

    d^2 = ||mu_1 - mu_2||^2 + tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2}).

FID is this distance between Gaussians fitted to Inception features of real and generated
images; here any feature extractor can be used (e.g. :mod:`scorekit.metrics.digits_classifier`
for MNIST-like digits).

**How the trace of the square root is computed.** ``C_1 C_2`` is not symmetric, and the usual
``scipy.linalg.sqrtm(C_1 @ C_2)`` goes through a complex Schur decomposition: for nearly singular
covariances (fewer samples than feature dimensions, or features that are constant on the data)
it returns a square root with spurious imaginary parts, loses accuracy, or warns and needs an
``eps * I`` offset added by hand. Only the trace of the square root is needed, and it is a
function of the eigenvalues alone. With ``S = C_1^{1/2}`` (the symmetric square root, from the
eigendecomposition of ``C_1``),

    C_1 C_2 = S (S C_2) and  S C_2 S = (S C_2) S

are products of the same two factors in either order, so they have the same eigenvalues; and
``M = S C_2 S`` is symmetric positive semi-definite. Hence

    tr (C_1 C_2)^{1/2} = sum_i sqrt(lambda_i(M)),

with the eigenvalues of a symmetric matrix from ``eigh`` -- real by construction, accurate to
rounding relative to ``||M||``, and clamped at zero where rounding makes a zero eigenvalue
slightly negative. Everything is computed in float64.
"""
from __future__ import annotations


import numpy as np
import torch

from ..errors import ScorekitError

Tensor = torch.Tensor
_F64 = torch.float64


def _as_f64(value, name: str, ndim: int) -> Tensor:
    """``value`` (tensor, array or nested list) as a finite float64 CPU tensor with ``ndim`` axes."""
    if isinstance(value, Tensor):
        t = value.detach().to("cpu", _F64)
    else:
        try:
            t = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as err:
            raise ScorekitError(f"{name} must be a numeric array: {err}") from None
    if t.ndim != ndim:
        want = "a vector (D,)" if ndim == 1 else "a matrix (D, D)" if ndim == 2 else f"{ndim} axes"
        raise ScorekitError(f"{name} must be {want}, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ScorekitError(f"{name} contains NaN or infinite values; check the features it came from")
    return t


def sqrtm_psd(matrix) -> Tensor:
    r"""The symmetric positive semi-definite square root ``S = V diag(sqrt(max(l, 0))) V^T`` of a
    symmetric matrix ``A = V diag(l) V^T`` (``S S = A`` for positive semi-definite ``A``), float64.

    The input is symmetrised first, ``(A + A^T) / 2``; eigenvalues that rounding made slightly
    negative are set to zero.
    """
    a = _as_f64(matrix, "matrix", 2)
    a = 0.5 * (a + a.T)
    lam, vec = torch.linalg.eigh(a)
    return (vec * lam.clamp_min(0).sqrt()) @ vec.T


def trace_sqrt_product(cov1, cov2) -> float:
    r"""``tr (C_1 C_2)^{1/2}`` for symmetric positive semi-definite ``C_1``, ``C_2``, computed as
    ``sum_i sqrt(lambda_i(C_1^{1/2} C_2 C_1^{1/2}))`` (see the module docstring for why)."""
    c1 = _as_f64(cov1, "cov1", 2)
    c2 = _as_f64(cov2, "cov2", 2)
    if c1.shape != c2.shape or c1.shape[0] != c1.shape[1]:
        raise ScorekitError(f"cov1 and cov2 must be square matrices of the same size, got "
                            f"{tuple(c1.shape)} and {tuple(c2.shape)}")
    s = sqrtm_psd(c1)
    m = s @ (0.5 * (c2 + c2.T)) @ s
    lam = torch.linalg.eigvalsh(0.5 * (m + m.T))
    return float(lam.clamp_min(0).sqrt().sum())


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    r"""Squared Fréchet (2-Wasserstein) distance between ``N(mu1, cov1)`` and ``N(mu2, cov2)``:

        ||mu_1 - mu_2||^2 + tr(C_1) + tr(C_2) - 2 tr (C_1 C_2)^{1/2}

    in float64 (:func:`trace_sqrt_product` for the last term). Means are ``(D,)``, covariances
    ``(D, D)`` symmetric positive semi-definite (singular ones are fine); tensors, arrays or
    lists. The result is a python float ``>= 0`` (a rounding error below zero is returned as 0).

    This is "FID" when the statistics are those of Inception features; call it "FD" with other
    features, whose values are on another scale.
    """
    m1 = _as_f64(mu1, "mu1", 1)
    m2 = _as_f64(mu2, "mu2", 1)
    c1 = _as_f64(cov1, "cov1", 2)
    c2 = _as_f64(cov2, "cov2", 2)
    d = m1.shape[0]
    for name, c in (("cov1", c1), ("cov2", c2)):
        if c.shape != (d, d):
            raise ScorekitError(f"{name} must be ({d}, {d}) to match the means, got {tuple(c.shape)}")
    if m2.shape != (d,):
        raise ScorekitError(f"mu1 and mu2 must have the same length, got {d} and {m2.shape[0]}")
    mean_term = float(((m1 - m2) ** 2).sum())
    trace_term = float(torch.trace(c1) + torch.trace(c2)) - 2.0 * trace_sqrt_product(c1, c2)
    return max(mean_term + trace_term, 0.0)


def feature_statistics(features) -> tuple[Tensor, Tensor]:
    r"""``(mu, cov)`` of ``(N, D)`` features in float64: the sample mean
    ``mu = (1/N) sum_n f_n`` and the unbiased sample covariance
    ``cov = (1/(N-1)) sum_n (f_n - mu)(f_n - mu)^T`` (as ``numpy.cov`` and the usual FID code)."""
    f = _as_f64(features, "features", 2)
    n = f.shape[0]
    if n < 2:
        raise ScorekitError(f"features must hold at least 2 samples to estimate a covariance, got {n}")
    mu = f.mean(dim=0)
    centred = f - mu
    cov = centred.T @ centred / (n - 1)
    return mu, cov


def frechet_distance_from_features(features1, features2) -> float:
    r""":func:`frechet_distance` between Gaussians fitted (:func:`feature_statistics`) to two sets
    of ``(N_1, D)`` and ``(N_2, D)`` features.

    The estimate is biased upwards: even for two samples of one distribution its expectation is
    about ``tr(C) (1/N_1 + 1/N_2)`` from the means plus a term of order ``D tr(C) / N`` from the
    covariances. Compare values only at equal sample sizes.
    """
    mu1, cov1 = feature_statistics(features1)
    mu2, cov2 = feature_statistics(features2)
    if mu1.shape != mu2.shape:
        raise ScorekitError(f"the two feature sets must have the same dimension, got {mu1.shape[0]} "
                            f"and {mu2.shape[0]}")
    return frechet_distance(mu1, cov1, mu2, cov2)


def gaussian_frechet_bias(dim: int, n1: int, n2: int, variance: float = 1.0) -> float:
    r"""Leading-order expectation of :func:`frechet_distance_from_features` between two independent
    samples of sizes ``n1``, ``n2`` from the *same* isotropic Gaussian ``N(mu, s I_D)`` (its true
    distance is 0):

        s D (1/n_1 + 1/n_2)  +  s D (D + 1) / 4 (1/(n_1 - 1) + 1/(n_2 - 1)),

    the first term exactly ``E||m_1 - m_2||^2``; the second from the second-order expansion of the
    trace term about ``C_1 = C_2 = s I``, ``tr(C_1 + C_2 - 2 (C_1 C_2)^{1/2}) ~ ||C_1 - C_2||_F^2 / (4 s)``,
    with ``E||S - s I||_F^2 = s^2 D (D + 1) / (n - 1)`` for a Gaussian sample covariance ``S``.
    Corrections are of order ``D^3 / n^2``. A quick way to see the noise level of the metric.
    """
    if dim < 1 or n1 < 2 or n2 < 2 or not variance > 0:
        raise ScorekitError(f"need dim >= 1, n1, n2 >= 2 and variance > 0, got {dim}, {n1}, {n2}, {variance}")
    mean_part = variance * dim * (1.0 / n1 + 1.0 / n2)
    cov_part = variance * dim * (dim + 1) / 4.0 * (1.0 / (n1 - 1) + 1.0 / (n2 - 1))
    return mean_part + cov_part


__all__ = ["feature_statistics", "frechet_distance", "frechet_distance_from_features",
           "gaussian_frechet_bias", "sqrtm_psd", "trace_sqrt_product"]
