"""Measurement operators (scorekit.tasks.operators) against their dense matrices.

Each operator in OPERATORS is built on a small example and turned into its dense matrix by
applying it to the basis images. The adjoint must be the transpose, the pseudo-inverse must equal
numpy's SVD pseudo-inverse of the matrix, and the Penrose conditions must hold. All in float64: the
matrices here have condition numbers below 1e3, so 1e-9 relative to the entries' size leaves
orders of magnitude for any BLAS's rounding."""
import numpy as np
import pytest
import torch

from scorekit import ScorekitError
from scorekit.tasks.operators import (OPERATORS, Compose, Downsample, Greyscale, Identity, LinearOperator, Mask,
                                      RandomProjection, conjugate_gradient, measure)

SHAPE = (3, 4, 6)          # one image: C, H, W
TOL = 1e-9


def _mask(shape=SHAPE, seed=0, per_sample=None):
    g = torch.Generator().manual_seed(seed)
    size = (per_sample or 1, 1) + shape[1:]
    return (torch.rand(size, generator=g) < 0.6).double()


EXAMPLES = {
    "identity": lambda: Identity(),
    "mask": lambda: Mask(_mask()),
    "downsample": lambda: Downsample(2),
    "greyscale": lambda: Greyscale(),
    "projection": lambda: RandomProjection(SHAPE, 30, seed=3),
    "compose": lambda: Compose(Mask(_mask((1, 2, 3), seed=1)), Downsample(2)),
}
EXAMPLES_EXTRA = {
    "projection-orthonormal": lambda: RandomProjection(SHAPE, 50, seed=4, orthonormal=True),
    "compose-greyscale": lambda: Compose(Mask(_mask((1, 4, 6), seed=2)), Greyscale()),
    "compose-projection": lambda: Compose(Mask(torch.tensor([1., 0.] * 10)),
                                          RandomProjection(SHAPE, 20, seed=5, orthonormal=True)),
    "downsample-1": lambda: Downsample(1),
}


def test_every_operator_has_an_example():
    assert set(EXAMPLES) == set(OPERATORS)


def dense(A, shape=SHAPE):
    """The matrix of A (rows: measurement entries, columns: image entries) and the measurement shape."""
    n = int(np.prod(shape))
    basis = torch.eye(n, dtype=torch.float64).reshape((n,) + shape)
    Y = A.forward(basis)
    return Y.reshape(n, -1).T.numpy(), tuple(Y.shape[1:])


def dense_of(fn, in_shape):
    n = int(np.prod(in_shape))
    basis = torch.eye(n, dtype=torch.float64).reshape((n,) + tuple(in_shape))
    return fn(basis).reshape(n, -1).T.numpy()


ALL = {**EXAMPLES, **EXAMPLES_EXTRA}


@pytest.mark.parametrize("name", sorted(ALL))
def test_adjoint_and_pseudo_inverse_match_the_matrix(name):
    A = ALL[name]()
    M, y_shape = dense(A)
    At = dense_of(A.adjoint, y_shape)
    Ap = dense_of(A.pinv, y_shape)
    scale = max(1.0, np.abs(M).max())
    np.testing.assert_allclose(At, M.T, atol=TOL * scale)
    np.testing.assert_allclose(Ap, np.linalg.pinv(M, rcond=1e-10), atol=TOL * max(1.0, np.abs(Ap).max()))
    # Penrose: A A+ A = A, A+ A A+ = A+, and both products symmetric
    np.testing.assert_allclose(M @ Ap @ M, M, atol=TOL * scale)
    np.testing.assert_allclose(Ap @ M @ Ap, Ap, atol=TOL * max(1.0, np.abs(Ap).max()))
    np.testing.assert_allclose(M @ Ap, (M @ Ap).T, atol=TOL)
    np.testing.assert_allclose(Ap @ M, (Ap @ M).T, atol=TOL)


@pytest.mark.parametrize("name", sorted(ALL))
def test_inner_products_and_projections(name):
    """<A x, y> = <x, A^T y> on random batches, and project / complement split x orthogonally."""
    A = ALL[name]()
    g = torch.Generator().manual_seed(7)
    x = torch.randn((5,) + SHAPE, generator=g, dtype=torch.float64)
    y = torch.randn(A.forward(x).shape, generator=g, dtype=torch.float64)
    lhs = (A.forward(x) * y).flatten(1).sum(1)
    rhs = (x * A.adjoint(y)).flatten(1).sum(1)
    torch.testing.assert_close(lhs, rhs, rtol=1e-12, atol=1e-12)
    p, q = A.project(x), A.complement(x)
    torch.testing.assert_close(p + q, x)
    torch.testing.assert_close((p * q).flatten(1).sum(1), torch.zeros(5, dtype=torch.float64),
                               atol=1e-10, rtol=0)
    torch.testing.assert_close(A.forward(q), torch.zeros_like(A.forward(x)), atol=1e-10, rtol=0)
    assert A.measurement_shape((5,) + SHAPE) == tuple(A.forward(x).shape)


def test_downsample_is_block_mean_and_nearest_upsampling():
    x = torch.arange(16.).reshape(1, 1, 4, 4)
    A = Downsample(2)
    y = A(x)
    assert y.tolist() == [[[[2.5, 4.5], [10.5, 12.5]]]]
    up = A.pinv(y)
    assert up[0, 0, :2, :2].unique().tolist() == [2.5]
    torch.testing.assert_close(A.project(x), up)
    torch.testing.assert_close(A(A.project(x)), y)          # the low-pass image keeps the measurement


def test_greyscale_matches_pillow_luma():
    from PIL import Image
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (8, 8, 3), generator=g, dtype=torch.uint8)
    grey_pil = np.asarray(Image.fromarray(rgb.numpy(), "RGB").convert("L"), dtype=np.float64)
    grey = Greyscale()(rgb.permute(2, 0, 1)[None].double())[0, 0].numpy()
    assert np.abs(grey - grey_pil).max() <= 0.5 + 1e-9     # Pillow rounds to whole levels


def test_mask_keeps_known_pixels_and_refuses_bad_input():
    m = torch.zeros(1, 1, 4, 4)
    m[..., :2, :] = 1
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(Mask(m)(x)[..., :2, :], x[..., :2, :])
    assert Mask(m)(x)[..., 2:, :].abs().max() == 0
    with pytest.raises(ScorekitError, match="mask"):
        Mask(torch.full((1, 1, 4, 4), 0.5))
    with pytest.raises(ScorekitError, match="other values"):           # an 8-bit image of a mask: 0 / 255
        Mask((255 * m).to(torch.uint8))
    torch.testing.assert_close(Mask(m.to(torch.uint8))(x), Mask(m.bool())(x))
    with pytest.raises(ScorekitError, match="does not fit"):
        Mask(torch.ones(1, 1, 5, 5))(x)
    with pytest.raises(ScorekitError, match="multiples of 3"):
        Downsample(3)(x)
    with pytest.raises(ScorekitError, match="3 channels, got 1"):
        Greyscale()(torch.zeros(1, 1, 4, 4))
    with pytest.raises(ScorekitError, match="shape"):
        RandomProjection((1, 4, 4), 3)(x)
    with pytest.raises(ScorekitError, match="from 1 to 16"):
        RandomProjection((1, 4, 4), 17)
    with pytest.raises(ScorekitError, match="whole number"):
        Downsample(0)


def test_conjugate_gradient_solves_each_sample():
    g = torch.Generator().manual_seed(1)
    B = torch.randn(6, 6, generator=g, dtype=torch.float64)
    M = B @ B.T + 0.5 * torch.eye(6, dtype=torch.float64)
    b = torch.randn(4, 6, generator=g, dtype=torch.float64)
    v = conjugate_gradient(lambda u: u @ M, b)
    torch.testing.assert_close(v @ M, b, atol=1e-8, rtol=0)


@pytest.mark.parametrize("check_every", [1, 3, 8])
def test_conjugate_gradient_checked_every_few_iterations_gives_the_same_solve(check_every):
    """On a GPU the stopping test is read every 8 iterations: the extra iterations of a converged
    sample must not move it (nor divide by zero), on an exactly solvable system too."""
    g = torch.Generator().manual_seed(2)
    B = torch.randn(5, 5, generator=g, dtype=torch.float64)
    M = B @ B.T + 0.5 * torch.eye(5, dtype=torch.float64)
    b = torch.randn(3, 5, generator=g, dtype=torch.float64)
    b[1] = 0.0                                      # converged from the start: r = 0, p = 0
    calls = []

    def matvec(u):
        calls.append(1)
        return u @ M

    v = conjugate_gradient(matvec, b, check_every=check_every)
    torch.testing.assert_close(v @ M, b, atol=1e-8, rtol=0)
    assert torch.equal(v[1], torch.zeros(5, dtype=torch.float64))
    reference = conjugate_gradient(lambda u: u @ M, b, check_every=1)
    torch.testing.assert_close(v, reference, atol=1e-9, rtol=0)
    assert len(calls) % check_every == 0 and len(calls) <= 5 + check_every   # 5 unknowns: CG's n steps
    with pytest.raises(ScorekitError, match="check_every must be a whole number >= 1, got 0"):
        conjugate_gradient(matvec, b, check_every=0)


def test_default_pinv_by_conjugate_gradient_matches_the_closed_form():
    """An operator that gives only forward and adjoint gets the pseudo-inverse through CG."""
    P = RandomProjection(SHAPE, 25, seed=9)

    class Plain(LinearOperator):                      # without a pinv of its own
        forward = staticmethod(P.forward)
        adjoint = staticmethod(P.adjoint)

    y = torch.randn(3, 25, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    torch.testing.assert_close(Plain().pinv(y), P.pinv(y), atol=1e-8, rtol=0)


def test_measure_adds_noise_of_the_given_size():
    A = Downsample(2)
    x = torch.zeros(2000, 1, 4, 4, dtype=torch.float64)
    y = measure(A, x, 0.3, generator=torch.Generator().manual_seed(0))
    n = y.numel()
    # the sample std of n normals is within 5 standard errors (0.3 / sqrt(2n)) of 0.3
    assert abs(float(y.std()) - 0.3) < 5 * 0.3 / np.sqrt(2 * n)
    assert torch.equal(measure(A, x), A(x))
