r"""Two-dimensional toy datasets, drawn from an explicit ``torch.Generator``.

Every generator returns ``(x, y)``: ``x`` is an ``(n, 2)`` float32 tensor and ``y`` an ``(n,)``
long tensor of labels (which moon, which mixture component) or ``None``. All randomness comes
from ``generator``, so the same seed gives the same points on every machine.

Scaling: each set is scaled so that its points lie roughly within ``[-1, 1]^2``, the range of
image pixels in scorekit:

==================  ==========================================================================
``swiss_roll``      the spiral ``t (cos t, sin t)``, ``t`` in ``[1.5 pi, 4.5 pi]``, divided by
                    ``4.5 pi``: its outer end lies at radius 1
``moons``           the two half circles of radius 1 (spanning ``[-1, 2] x [-0.5, 1]``), centred
                    by ``(0.5, 0.25)`` and divided by 1.5: ``x1`` in ``[-1, 1]``, ``x2`` in
                    ``[-0.5, 0.5]``
``checkerboard``    a 4x4 board of cells of side 0.5 covering exactly ``[-1, 1]^2``
``eight_gaussians`` :func:`scorekit.toy.eight_gaussians` with radius 1 and std 0.05 (half the
                    size of that function's defaults, radius 2 and std 0.1)
``multiscale_2d``   :func:`scorekit.toy.multiscale_2d` divided by 3 (means within
                    ``[-0.84, 0.84]``; component standard deviations from 0.0067 to 0.33)
==================  ==========================================================================

``noise`` arguments are standard deviations of isotropic Gaussian noise added *after* scaling,
i.e. in the units of the returned data. The two mixtures are exact distributions
(:func:`mixture`), so models trained on them can be scored against the true density and score.
"""
from __future__ import annotations

import math

import torch

from ..errors import ScorekitError
from ..toy import GaussianMixture, eight_gaussians as _eight_gaussians, multiscale_2d as _multiscale_2d

Tensor = torch.Tensor
_F64 = torch.float64

#: the factor ``multiscale_2d`` is multiplied by
MULTISCALE_SCALE = 1.0 / 3.0


#: the most points a 2-D set may have (10^8 points are 1.6 GB in float64 while being drawn)
MAX_POINTS = 10 ** 8


def _check_n(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_POINTS:
        raise ScorekitError(f"n (the number of points) must be a positive integer up to "
                            f"{MAX_POINTS:.0e}, got {n!r}")
    return n


def _check_noise(noise) -> float:
    if isinstance(noise, bool) or not isinstance(noise, (int, float)) or not math.isfinite(noise) or noise < 0:
        raise ScorekitError(f"noise must be a finite number >= 0 (a standard deviation), got {noise!r}")
    return float(noise)


def _uniform(n: int, generator, low: float, high: float) -> Tensor:
    return low + (high - low) * torch.rand(n, generator=generator, dtype=_F64)


def swiss_roll(n: int, *, generator: torch.Generator, noise: float = 0.02) -> tuple[Tensor, None]:
    r"""The 2-D Swiss roll:

        t ~ U(1.5 pi, 4.5 pi),   x = t (cos t, sin t) / (4.5 pi) + noise * eps,   eps ~ N(0, I).

    ``t`` is uniform, so points are spread evenly in angle (denser near the centre per unit
    length). Returns ``(x, None)``: the roll has no labels.
    """
    n, noise = _check_n(n), _check_noise(noise)
    t = _uniform(n, generator, 1.5 * math.pi, 4.5 * math.pi)
    x = torch.stack([t * torch.cos(t), t * torch.sin(t)], dim=1) / (4.5 * math.pi)
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=_F64)
    return x.float(), None


def moons(n: int, *, generator: torch.Generator, noise: float = 0.05) -> tuple[Tensor, Tensor]:
    r"""Two interleaved half circles ("two moons"), labelled 0 (upper) and 1 (lower):

        theta ~ U(0, pi),
        upper (y = 0): m = (cos theta, sin theta),
        lower (y = 1): m = (1 - cos theta, 1/2 - sin theta),
        x = (m - (1/2, 1/4)) / 1.5 + noise * eps,   eps ~ N(0, I).

    Labels alternate (``y_i = i mod 2``), so the upper moon has ``ceil(n / 2)`` points.
    """
    n, noise = _check_n(n), _check_noise(noise)
    y = torch.arange(n) % 2
    theta = _uniform(n, generator, 0.0, math.pi)
    upper = torch.stack([torch.cos(theta), torch.sin(theta)], dim=1)
    lower = torch.stack([1.0 - torch.cos(theta), 0.5 - torch.sin(theta)], dim=1)
    m = torch.where((y == 1)[:, None], lower, upper)
    x = (m - torch.tensor([0.5, 0.25], dtype=_F64)) / 1.5
    x = x + noise * torch.randn(n, 2, generator=generator, dtype=_F64)
    return x.float(), y


def checkerboard(n: int, *, generator: torch.Generator) -> tuple[Tensor, None]:
    r"""Uniform on the 8 dark cells of a 4x4 checkerboard covering ``[-1, 1]^2``:

        c ~ U{0, ..., 7},  row = floor(c / 2),  col = 2 (c mod 2) + (row mod 2),
        x = -1 + 0.5 (col + u_1, row + u_2),   u ~ U(0, 1)^2,

    so a cell ``(row, col)`` is dark exactly when ``row + col`` is even. The density is 1/2
    on the dark cells (total area 2) and 0 elsewhere. Returns ``(x, None)``.
    """
    n = _check_n(n)
    c = torch.randint(0, 8, (n,), generator=generator)
    row = c // 2
    col = 2 * (c % 2) + row % 2
    u = torch.rand(n, 2, generator=generator, dtype=_F64)
    x = -1.0 + 0.5 * (torch.stack([col, row], dim=1).to(_F64) + u)
    return x.float(), None


def eight_gaussians_mixture() -> GaussianMixture:
    r"""The exact distribution of :func:`eight_gaussians`:
    ``(1/8) sum_k N((cos(2 pi k / 8), sin(2 pi k / 8)), 0.05^2 I)``."""
    return _eight_gaussians(radius=1.0, std=0.05)


def multiscale_2d_mixture() -> GaussianMixture:
    r"""The exact distribution of :func:`multiscale_2d`: :func:`scorekit.toy.multiscale_2d` scaled
    by ``c = 1/3``, i.e. ``sum_k w_k N(c mu_k, c^2 Sigma_k)``."""
    base = _multiscale_2d()
    c = MULTISCALE_SCALE
    return GaussianMixture(base.weights, c * base.means, covs=c * c * base.covs())


def _mixture_sample(mix: GaussianMixture, n: int, generator) -> tuple[Tensor, Tensor]:
    x, k = mix.sample(_check_n(n), generator=generator, return_components=True)
    return x.float(), k.long()


def eight_gaussians(n: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Exact samples of :func:`eight_gaussians_mixture` (radius 1, std 0.05), labelled by
    component ``k`` (the mode at angle ``2 pi k / 8``)."""
    return _mixture_sample(eight_gaussians_mixture(), n, generator)


def multiscale_2d(n: int, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    r"""Exact samples of :func:`multiscale_2d_mixture` (``scorekit.toy.multiscale_2d`` divided
    by 3), labelled by component ``k``."""
    return _mixture_sample(multiscale_2d_mixture(), n, generator)


#: the toy sets by name: ``fn(n, *, generator, ...) -> (x, y or None)``
TOYS = {
    "swiss_roll": swiss_roll,
    "moons": moons,
    "checkerboard": checkerboard,
    "eight_gaussians": eight_gaussians,
    "multiscale_2d": multiscale_2d,
}

#: number of labels of the labelled toy sets
TOY_NUM_CLASSES = {"moons": 2, "eight_gaussians": 8, "multiscale_2d": 5}

#: the exact distributions of the mixture toy sets
MIXTURES = {
    "eight_gaussians": eight_gaussians_mixture,
    "multiscale_2d": multiscale_2d_mixture,
}


def mixture(name: str) -> GaussianMixture | None:
    """The exact distribution of toy set ``name`` if it is a Gaussian mixture, else ``None``."""
    fn = MIXTURES.get(name)
    return None if fn is None else fn()


__all__ = ["swiss_roll", "moons", "checkerboard", "eight_gaussians", "multiscale_2d",
           "eight_gaussians_mixture", "multiscale_2d_mixture", "mixture", "TOYS", "MULTISCALE_SCALE"]
