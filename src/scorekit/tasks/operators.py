r"""Linear measurement operators ``y = A x``: what an image task observes of the clean image.

Every training-free task and inverse-problem solver (:mod:`scorekit.tasks`) sees the data through
one small interface, :class:`LinearOperator`:

* :meth:`~LinearOperator.forward` ``A x`` (also ``A(x)``), on a batch ``(N, C, H, W)`` (or
  ``(N, D)`` for vectors), one measurement per sample;
* :meth:`~LinearOperator.adjoint` ``A^T y``, defined by ``<A x, y> = <x, A^T y>`` for the sum of
  products over every entry but the batch;
* :meth:`~LinearOperator.pinv` the Moore-Penrose pseudo-inverse ``A^+ y``: the least-norm ``x``
  among those with the smallest ``||A x - y||``. It satisfies ``A A^+ A = A``,
  ``A^+ A A^+ = A^+`` and both ``A A^+`` and ``A^+ A`` are orthogonal projections (Penrose 1955);
* :meth:`~LinearOperator.project` ``A^+ A x``, the part of ``x`` the measurement sees (for
  :class:`Downsample` the block average: the low-pass image of ILVR), and
  :meth:`~LinearOperator.complement` ``(I - A^+ A) x``, the part it does not see.

Operators with a closed-form pseudo-inverse are given here: :class:`Identity`, :class:`Mask`
(inpainting and uncropping), :class:`Downsample` (super-resolution by block averaging),
:class:`Greyscale` (colourisation), :class:`RandomProjection` (compressed sensing) and
:class:`Compose` of a mask after any of them. Each is tested against its dense matrix
(``tests/test_operators.py``), so a new one is checked the moment it is added to ``OPERATORS``.

Noise is not part of the operator: a noisy measurement is ``y = A x + sigma_y n``
(:func:`measure`), and the solvers take ``sigma_y`` beside ``A``.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..devices import kept_like
from ..errors import ScorekitError, reads_are_free

Tensor = torch.Tensor

#: ITU-R BT.601 luma weights of (R, G, B), the greyscale of Pillow's ``convert("L")``
LUMA_WEIGHTS = (0.299, 0.587, 0.114)


class LinearOperator:
    """``y = A x`` on a batch, with ``A^T`` and ``A^+`` (see the module docstring).

    A subclass writes :meth:`forward`, :meth:`adjoint` and :meth:`pinv` and, when it is not fixed
    by the input, :meth:`measurement_shape`. ``pinv`` defaults to solving the normal equations
    ``A^+ y = A^T (A A^T)^{-1} y`` by conjugate gradients, which is right for an operator of full
    row rank.
    """

    #: a short name for messages and reports
    name = "operator"

    def forward(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def adjoint(self, y: Tensor) -> Tensor:
        raise NotImplementedError

    def pinv(self, y: Tensor) -> Tensor:
        return self.adjoint(conjugate_gradient(lambda v: self.forward(self.adjoint(v)), y))

    def __call__(self, x: Tensor) -> Tensor:
        return self.forward(x)

    def measurement_shape(self, shape: tuple) -> tuple:
        """The shape of ``A x`` for an ``x`` of ``shape`` (batch included)."""
        one = self.forward(torch.zeros((1,) + tuple(shape[1:])))
        return (shape[0],) + tuple(one.shape[1:])

    def project(self, x: Tensor) -> Tensor:
        """``A^+ A x``: the orthogonal projection of ``x`` onto what the measurement sees."""
        return self.pinv(self.forward(x))

    def complement(self, x: Tensor) -> Tensor:
        """``(I - A^+ A) x``: the part of ``x`` in the null space of ``A``."""
        return x - self.project(x)

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class Identity(LinearOperator):
    """``A = I``: denoising (with ``sigma_y > 0``) or unconditional sampling."""

    name = "identity"

    def forward(self, x):
        return x

    def adjoint(self, y):
        return y

    def pinv(self, y):
        return y


class Mask(LinearOperator):
    r"""``A x = m \odot x``: the pixels where ``m = 1`` are known (inpainting, uncropping).

    The measurement keeps the image's shape, with zeros where nothing is known, so ``A`` is a
    diagonal 0/1 matrix: ``A^T = A^+ = A`` and ``A^+ A = A``.

    Args:
        mask: ``1`` (or ``True``) where a pixel is known, ``0`` where it is to be filled; any shape
            that broadcasts against the images, e.g. ``(1, 1, H, W)`` for one mask over all
            channels and samples, or ``(N, 1, H, W)`` for one per sample.
    """

    name = "mask"

    def __init__(self, mask):
        mask = torch.as_tensor(mask)
        if mask.dtype != torch.bool and not bool(((mask == 0) | (mask == 1)).all()):
            raise ScorekitError("a mask holds 1 where a pixel is known and 0 where it is missing; "
                                "this one has other values")
        self.mask = mask.to(torch.float32)

    def _m(self, x: Tensor) -> Tensor:
        try:
            torch.broadcast_shapes(self.mask.shape, x.shape)
        except RuntimeError:
            raise ScorekitError(f"the mask has shape {tuple(self.mask.shape)}, which does not fit images "
                                f"of shape {tuple(x.shape)}") from None
        return kept_like(self, "mask", x)

    def forward(self, x):
        return self._m(x) * x

    adjoint = forward
    pinv = forward

    def __repr__(self):
        return f"Mask(known={float(self.mask.mean()):.3f})"


class Downsample(LinearOperator):
    r"""``A x``: the mean of each ``f x f`` block (super-resolution by a factor ``f``).

    ``A^T y`` repeats each value over its block, divided by ``f^2``; since ``A A^T = I / f^2``,
    ``A^+ y = f^2 A^T y`` is nearest-neighbour upsampling, and ``A^+ A x`` replaces every block by
    its mean: the low-pass filter ``phi_N`` of ILVR (Choi et al. 2021) with ``N = f``.
    """

    name = "downsample"

    def __init__(self, factor: int):
        if isinstance(factor, bool) or not isinstance(factor, int) or factor < 1:
            raise ScorekitError(f"the downsampling factor must be a whole number >= 1, got {factor!r}")
        self.factor = factor

    def _check(self, x: Tensor) -> None:
        if x.ndim != 4 or x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ScorekitError(f"downsampling by {self.factor} needs images (N, C, H, W) whose height "
                                f"and width are multiples of {self.factor}, got {tuple(x.shape)}")

    def forward(self, x):
        self._check(x)
        return F.avg_pool2d(x, self.factor)

    def adjoint(self, y):
        return self.pinv(y) / self.factor ** 2

    def pinv(self, y):
        if y.ndim != 4:
            raise ScorekitError(f"a downsampled measurement is (N, C, h, w), got {tuple(y.shape)}")
        return y.repeat_interleave(self.factor, dim=-2).repeat_interleave(self.factor, dim=-1)

    def __repr__(self):
        return f"Downsample({self.factor})"


class Greyscale(LinearOperator):
    r"""``A x = sum_c w_c x_c``: one grey channel from the colour channels (colourisation).

    With weights ``w`` (default: the luma weights :data:`LUMA_WEIGHTS`), ``A^T y = w y`` and
    ``A A^T = |w|^2``, so ``A^+ y = w y / |w|^2``. On images in ``[-1, 1]`` the grey value of a
    grey pixel ``(g, g, g)`` is ``g`` because the luma weights sum to 1.
    """

    name = "greyscale"

    def __init__(self, weights=LUMA_WEIGHTS):
        self.weights = torch.as_tensor(weights, dtype=torch.float64)
        if self.weights.ndim != 1 or not bool((self.weights.abs().sum() > 0)):
            raise ScorekitError("greyscale weights are one non-zero number per colour channel")

    def _w(self, x: Tensor, channels: int) -> Tensor:
        if channels != self.weights.numel():
            raise ScorekitError(f"greyscale takes images with {self.weights.numel()} channels, got "
                                f"{channels}")
        return kept_like(self, "weights", x).view(1, -1, 1, 1)

    def forward(self, x):
        if x.ndim != 4:
            raise ScorekitError(f"greyscale needs images (N, C, H, W), got {tuple(x.shape)}")
        return (self._w(x, x.shape[1]) * x).sum(dim=1, keepdim=True)

    def adjoint(self, y):
        if y.ndim != 4 or y.shape[1] != 1:
            raise ScorekitError(f"a greyscale measurement is (N, 1, H, W), got {tuple(y.shape)}")
        return self._w(y, self.weights.numel()) * y

    def pinv(self, y):
        return self.adjoint(y) / float((self.weights ** 2).sum())

    def __repr__(self):
        return f"Greyscale({tuple(round(float(w), 4) for w in self.weights)})"


class RandomProjection(LinearOperator):
    r"""``A x = P vec(x)``: ``m`` random linear measurements of the whole image (compressed sensing).

    ``P`` is an ``m x n`` matrix (``n`` the number of entries of one image) with independent
    ``N(0, 1/m)`` entries (Candès & Tao 2006), drawn once from ``seed``; with ``orthonormal=True``
    its rows are made orthonormal (QR), so ``A^+ = A^T``. The pseudo-inverse
    ``A^+ = P^T (P P^T)^{-1}`` is computed once in float64.

    Args:
        shape: the shape of one image, e.g. ``(1, 28, 28)``.
        num_measurements: ``m``, at most ``n``.
        seed: the seed of ``P``.
        orthonormal: orthonormalise the rows.
    """

    name = "projection"

    def __init__(self, shape, num_measurements: int, *, seed: int = 0, orthonormal: bool = False):
        self.shape = tuple(int(s) for s in shape)
        n = math.prod(self.shape)
        if isinstance(num_measurements, bool) or not isinstance(num_measurements, int) \
                or not 1 <= num_measurements <= n:
            raise ScorekitError(f"the number of measurements must be a whole number from 1 to {n} "
                                f"(the entries of one image), got {num_measurements!r}")
        g = torch.Generator().manual_seed(seed)
        P = torch.randn(num_measurements, n, generator=g, dtype=torch.float64) / math.sqrt(num_measurements)
        if orthonormal:
            P = torch.linalg.qr(P.T).Q.T.contiguous()
        self.matrix = P
        self.orthonormal = orthonormal
        self._pinv = P.T if orthonormal else torch.linalg.pinv(P)      # n x m

    def _flat(self, x: Tensor) -> Tensor:
        if tuple(x.shape[1:]) != self.shape:
            raise ScorekitError(f"this projection measures images of shape {self.shape}, got "
                                f"{tuple(x.shape[1:])}")
        return x.reshape(x.shape[0], -1)

    def _check_y(self, y: Tensor) -> None:
        if y.ndim != 2 or y.shape[1] != self.matrix.shape[0]:
            raise ScorekitError(f"a measurement of this projection is (N, {self.matrix.shape[0]}), got "
                                f"{tuple(y.shape)}")

    def forward(self, x):
        return self._flat(x) @ kept_like(self, "matrix", x).T

    def adjoint(self, y):
        self._check_y(y)
        return (y @ kept_like(self, "matrix", y)).reshape((y.shape[0],) + self.shape)

    def pinv(self, y):
        self._check_y(y)
        return (y @ kept_like(self, "_pinv", y).T).reshape((y.shape[0],) + self.shape)

    def __repr__(self):
        return f"RandomProjection({self.shape}, {self.matrix.shape[0]})"


class Compose(LinearOperator):
    r"""``A = M B``: a mask ``M`` applied to the measurement of an operator ``B`` with orthonormal
    rows up to a scale (``B B^T = c I``: :class:`Identity`, :class:`Downsample`,
    :class:`Greyscale`, an orthonormal :class:`RandomProjection`), e.g. a low-resolution image
    with missing pixels.

    Then ``A^+ = B^+ M``: for ``B B^T = c I``, ``B^+ = B^T / c`` and ``A A^T = c M``, whose
    pseudo-inverse is ``M / c``, so ``A^+ = B^T M / c = B^+ M``.
    """

    name = "compose"

    def __init__(self, mask: Mask, inner: LinearOperator):
        if not isinstance(mask, Mask):
            raise ScorekitError("Compose takes a Mask applied after another operator")
        if isinstance(inner, RandomProjection) and not inner.orthonormal:
            raise ScorekitError("Compose needs an operator with orthonormal rows; use "
                                "RandomProjection(..., orthonormal=True)")
        self.mask, self.inner = mask, inner

    def forward(self, x):
        return self.mask.forward(self.inner.forward(x))

    def adjoint(self, y):
        return self.inner.adjoint(self.mask.forward(y))

    def pinv(self, y):
        return self.inner.pinv(self.mask.forward(y))

    def __repr__(self):
        return f"Compose({self.mask!r}, {self.inner!r})"


def conjugate_gradient(matvec, b: Tensor, *, iterations: int = 100, tol: float = 1e-10,
                       check_every: int | None = None) -> Tensor:
    """Solve ``M v = b`` for a symmetric positive (semi-)definite ``M`` given as ``matvec``, each
    sample of the batch on its own (Hestenes & Stiefel 1952). Stops when every residual's norm is
    below ``tol`` times that of ``b``.

    Whether to stop is read every ``check_every`` iterations (default: 1 on the CPU, i.e. before
    every iteration; 8 elsewhere, where each read makes the host wait for a GPU). Between
    checks a converged sample keeps iterating at the level of rounding, its step sizes guarded
    against division by zero, so that the answer is that of the solve checked at every step to
    within ``tol``."""
    if check_every is None:
        check_every = 1 if reads_are_free(b) else 8
    if isinstance(check_every, bool) or not isinstance(check_every, int) or check_every < 1:
        raise ScorekitError(f"check_every must be a whole number >= 1, got {check_every!r}")
    dims = tuple(range(1, b.ndim))
    dot = lambda u, v: (u * v).sum(dim=dims, keepdim=True)   # noqa: E731
    x = torch.zeros_like(b)
    r = b.clone()
    p = r.clone()
    rr = dot(r, r)
    stop = tol ** 2 * dot(b, b)
    for i in range(iterations):
        if i % check_every == 0 and (i or check_every == 1) and bool((rr <= stop).all()):
            break
        Mp = matvec(p)
        step = rr / dot(p, Mp).clamp_min(torch.finfo(b.dtype).tiny)
        x = x + step * p
        r = r - step * Mp
        rr_new = dot(r, r)
        p = r + (rr_new / rr.clamp_min(torch.finfo(b.dtype).tiny)) * p
        rr = rr_new
    return x


def measure(A: LinearOperator, x: Tensor, sigma_y: float = 0.0, *, generator=None) -> Tensor:
    """A measurement ``y = A x + sigma_y n`` with ``n ~ N(0, I)`` drawn from ``generator``."""
    y = A.forward(x)
    if sigma_y:
        if sigma_y < 0:
            raise ScorekitError(f"the measurement noise sigma_y must be >= 0, got {sigma_y}")
        n = torch.randn(y.shape, generator=generator, dtype=y.dtype,
                        device="cpu" if generator is None else generator.device).to(y.device)
        y = y + sigma_y * n
    return y


#: every operator, by name (the conformance tests build each from a small example)
OPERATORS = {cls.name: cls for cls in (Identity, Mask, Downsample, Greyscale, RandomProjection, Compose)}

__all__ = ["LinearOperator", "Identity", "Mask", "Downsample", "Greyscale", "RandomProjection", "Compose",
           "OPERATORS", "LUMA_WEIGHTS", "conjugate_gradient", "measure"]
