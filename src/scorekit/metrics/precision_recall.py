r"""Improved precision and recall of generated samples (Kynkäänniemi et al. 2019).

Fréchet distance mixes two failures into one number: samples that do not look like the data
(low *fidelity*) and samples that cover only part of it (low *diversity*). Precision and recall
separate them by estimating the support of each distribution in a feature space.

The support of a set of features ``Phi = {phi_1, ..., phi_N}`` is estimated as the union of
balls around its points, each with the radius of its ``k``-th nearest neighbour in the set
(the point itself not counted):

    manifold(Phi) = union_i B(phi_i, NN_k(phi_i, Phi)),

and a point ``phi`` lies on it when ``||phi - phi_i|| <= NN_k(phi_i, Phi)`` for some ``i``
(Kynkäänniemi et al. 2019, eqs. 1-2). For real features ``Phi_r`` and generated ones ``Phi_g``

    precision = (1 / |Phi_g|) sum_{phi in Phi_g} 1[phi in manifold(Phi_r)],
    recall    = (1 / |Phi_r|) sum_{phi in Phi_r} 1[phi in manifold(Phi_g)]:

precision is the share of samples that fall where real data lie, recall the share of real data
that the samples reach. Both lie in ``[0, 1]``. A generator that draws only a few modes, each
faithfully, has high precision and low recall; one that blurs everything the other way round.
The paper uses ``k = 3`` and equal numbers of real and generated points; with unequal numbers
the sparser set has the larger balls, so compare values only at equal set sizes and ``k``.
Distances are Euclidean, computed in float64, block by block so that memory stays
``O(block * N)``.
"""
from __future__ import annotations

import torch

from ..errors import ScorekitError

Tensor = torch.Tensor


def _features(value, name: str) -> Tensor:
    """``value`` as a finite ``(N, D)`` float64 CPU tensor."""
    # a list or array becomes float64 directly (through float32 it would lose digits of the distances)
    t = value.detach() if isinstance(value, Tensor) else torch.as_tensor(value, dtype=torch.float64)
    if t.ndim != 2 or t.shape[0] < 1 or t.shape[1] < 1:
        raise ScorekitError(f"{name} must be features of shape (N, D) with N, D >= 1, got {tuple(t.shape)}")
    t = t.to("cpu", torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise ScorekitError(f"{name} contains NaN or infinite values; check the features it came from")
    return t


def _check_k(k, n: int, name: str) -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ScorekitError(f"k must be a whole number >= 1, got {k!r}")
    if k >= n:
        raise ScorekitError(f"{name} holds {n} points, too few for k = {k} nearest neighbours besides each "
                            f"point itself; give more than {k} points or a smaller k")
    return k


def knn_radii(features, k: int = 3, *, block: int = 1024) -> Tensor:
    r"""``NN_k(phi_i, Phi)`` for every point of ``features`` ``(N, D)``: the distance to its
    ``k``-th nearest neighbour among the other points (a duplicate of a point counts as a
    neighbour at distance 0). Returns ``(N,)`` float64; needs ``N > k``."""
    return _radii(_features(features, "features"), k, block, "features")


def _radii(f: Tensor, k, block: int, name: str) -> Tensor:
    k = _check_k(k, f.shape[0], name)
    radii = []
    for lo in range(0, f.shape[0], int(block)):
        d = torch.cdist(f[lo:lo + int(block)], f)
        # the smallest k + 1 distances of each row: the point itself (0) and its k nearest neighbours
        radii.append(torch.topk(d, k + 1, dim=1, largest=False).values[:, k])
    return torch.cat(radii)


def manifold_coverage(points, reference, k: int = 3, *, block: int = 1024) -> float:
    r"""The share of ``points`` ``(M, D)`` that lie on the ``k``-NN manifold of ``reference``
    ``(N, D)`` (module docstring): ``(1/M) sum_j 1[exists i: ||p_j - r_i|| <= NN_k(r_i)]``."""
    p = _features(points, "points")
    r = _features(reference, "reference")
    if p.shape[1] != r.shape[1]:
        raise ScorekitError(f"points and reference must have the same dimension, got {p.shape[1]} and {r.shape[1]}")
    return _coverage(p, r, k, block, "reference")


def manifold_membership(points, reference, k: int = 3, *, block: int = 1024) -> Tensor:
    r"""Which of ``points`` ``(M, D)`` lie on the ``k``-NN manifold of ``reference`` ``(N, D)``:
    ``(M,)`` bools, ``exists i: ||p_j - r_i|| <= NN_k(r_i)`` (module docstring); their mean is
    :func:`manifold_coverage`."""
    p = _features(points, "points")
    r = _features(reference, "reference")
    if p.shape[1] != r.shape[1]:
        raise ScorekitError(f"points and reference must have the same dimension, got {p.shape[1]} and {r.shape[1]}")
    return _inside(p, r, k, block, "reference")


def _inside(p: Tensor, r: Tensor, k, block: int, name: str) -> Tensor:
    radii = _radii(r, k, block, name)
    inside = []
    for lo in range(0, p.shape[0], int(block)):
        d = torch.cdist(p[lo:lo + int(block)], r)
        inside.append((d <= radii[None, :]).any(dim=1))
    return torch.cat(inside)


def _coverage(p: Tensor, r: Tensor, k, block: int, name: str) -> float:
    return float(_inside(p, r, k, block, name).double().mean())


def precision_recall(real_features, fake_features, k: int = 3, *, block: int = 1024) -> tuple[float, float]:
    r"""Improved ``(precision, recall)`` of generated features against real ones (module
    docstring): precision the share of ``fake_features`` on the ``k``-NN manifold of
    ``real_features``, recall the share of ``real_features`` on that of ``fake_features``.

    Args:
        real_features: ``(N_r, D)`` features of real data (tensor, array or nested list).
        fake_features: ``(N_g, D)`` features of generated samples, from the same extractor.
        k: the neighbour that sets each ball's radius (3 in the paper); each set needs more than
            ``k`` points.
        block: rows of the distance matrix computed at once.

    Identical sets give ``(1, 1)``; sets far apart (further than every radius) ``(0, 0)``.
    """
    real = _features(real_features, "real_features")
    fake = _features(fake_features, "fake_features")
    if real.shape[1] != fake.shape[1]:
        raise ScorekitError(f"real_features and fake_features must have the same dimension, got "
                            f"{real.shape[1]} and {fake.shape[1]}")
    return _coverage(fake, real, k, block, "real_features"), _coverage(real, fake, k, block, "fake_features")


__all__ = ["knn_radii", "manifold_coverage", "manifold_membership", "precision_recall"]
