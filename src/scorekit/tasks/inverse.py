r"""Linear inverse problems with a diffusion prior: sampling ``p(x | y)`` for ``y = A x + sigma_y n``.

An unconditional denoiser ``D(x_t, t) = E[x_0 | x_t]`` knows the prior ``p(x_0)``. Because the
measurement noise ``n ~ N(0, I)`` is independent of the diffusion's, ``y`` and ``x_t`` are
independent given ``x_0``, and Bayes' rule on the diffused laws gives the conditional score

    grad log p(x_t | y) = grad log p(x_t) + grad log p(y | x_t),
    p(y | x_t) = int N(y; A x_0, sigma_y^2 I) p(x_0 | x_t) dx_0.

Through Tweedie's formula ``E[x_0 | x_t] = (x_t + sigma_t^2 grad log p_t(x_t)) / alpha_t`` a score
correction is an ``x_0`` correction times ``sigma_t^2 / alpha_t``: the denoiser of the posterior is

    E[x_0 | x_t, y] = D(x_t, t) + (sigma_t^2 / alpha_t) grad_{x_t} log p(y | x_t),

the same trick as classifier guidance (:class:`scorekit.guidance.ClassifierGuidance`, with the
measurement's likelihood for the classifier). Every sampler run on that denoiser samples the
posterior; the methods differ only in how they approximate the intractable ``p(y | x_t)``. Each is a
:class:`~scorekit.wrappers.DenoiserWrapper`, so no sampler is touched or copied:

* :class:`DPS` (Chung et al. 2023): ``p(y | x_t) ~ p(y | x_0 = D(x_t))``, a point estimate, with
  the paper's normalised step size.
* :class:`PiGDM` (Song, Vahdat, Mardani & Kautz 2023): ``p(y | x_t) ~ N(A D, r_t^2 A A^T + sigma_y^2 I)``
  with the posterior variance ``r_t^2`` of an isotropic Gaussian prior.
* :class:`MomentMatching` (Boys et al. 2023, "TMPD"; Rozet et al. 2024, "MMPS"):
  ``p(y | x_t) ~ N(A D, A Cov[x_0 | x_t] A^T + sigma_y^2 I)`` with the *true* covariance from the
  second-order Tweedie formula ``Cov[x_0 | x_t] = (sigma_t^2 / alpha_t) dD / dx_t``, applied through
  Jacobian-vector products and conjugate gradients in measurement space. For a Gaussian prior
  ``p(x_0 | x_t)`` is Gaussian with a covariance that does not depend on ``x_t`` and ``D`` is affine, so
  this likelihood and its gradient are exact: with the exact denoiser, the wrapper *is* the
  posterior's denoiser (``tests/test_inverse.py`` checks it pointwise against
  :meth:`scorekit.toy.GaussianMixture.condition_on`), and the only error left is the sampler's
  discretisation.

:class:`Projection` (Song, Shen, Xing & Ermon 2022) changes the state ``x_t`` itself, which a
denoiser cannot; it is a driver that runs any sampler on segments of the grid and projects in
between.

All methods take noisy (``sigma_y > 0``) and noiseless measurements, one per sample (``y`` of batch
``N``, or batch 1 for all), images ``(N, C, H, W)`` and vectors ``(N, D)``, with any
:class:`~scorekit.tasks.operators.LinearOperator`. Randomness comes only from the generator passed
in. :func:`solve_inverse` is the one entry point; :data:`INVERSE_METHODS` lists the methods by name.
"""
from __future__ import annotations

import math

import torch

from ..devices import kept_like, to_device
from ..errors import ScorekitError, check_options, option_schema
from ..wrappers import DenoiserWrapper
from .operators import LinearOperator, conjugate_gradient

Tensor = torch.Tensor


def check_sigma_y(sigma_y) -> float:
    """``sigma_y`` as a float ``>= 0`` (the measurement noise's standard deviation)."""
    given = sigma_y
    try:
        sigma_y = float(sigma_y)
    except (TypeError, ValueError):
        sigma_y = math.nan
    if not math.isfinite(sigma_y) or sigma_y < 0:
        raise ScorekitError(f"the measurement noise sigma_y must be a finite number >= 0, got {given!r}",
                            cli=f"--sigma-y must be a finite number >= 0, got {given!r}")
    return sigma_y


def check_measurement(A, y, x_shape=None) -> tuple:
    """The shape ``(N, ...)`` of the images a measurement ``y`` of ``A`` comes from (``A^+ y``'s shape,
    or ``x_shape`` when given), after checking that ``A`` maps it to ``y``'s shape."""
    if not isinstance(A, LinearOperator):
        raise ScorekitError(f"A must be a scorekit.tasks.operators.LinearOperator (Mask, Downsample, ...), "
                            f"got {type(A).__name__}")
    if not isinstance(y, Tensor) or not y.is_floating_point() or y.ndim < 2:
        got = f"{tuple(y.shape)} of {y.dtype}" if isinstance(y, Tensor) else type(y).__name__
        raise ScorekitError(f"y must be a floating-point tensor of measurements (N, ...), one per sample, "
                            f"got {got}")
    if not bool(torch.isfinite(y).all()):
        raise ScorekitError("y contains NaN or infinite values")
    try:
        shape = tuple(A.pinv(y).shape) if x_shape is None else tuple(x_shape)
        measured = tuple(A.measurement_shape(shape))
    except ScorekitError as err:
        raise ScorekitError(f"y of shape {tuple(y.shape)} is not a measurement of {A!r}: {err}") from None
    except (RuntimeError, ValueError) as err:
        raise ScorekitError(f"y of shape {tuple(y.shape)} is not a measurement of {A!r}: {err}") from None
    if y.shape[0] not in (1, shape[0]):
        raise ScorekitError(f"give one measurement per sample ({shape[0]}) or one for all, got {y.shape[0]}")
    if measured[1:] != tuple(y.shape[1:]):
        raise ScorekitError(f"y of shape {tuple(y.shape)} is not a measurement of {A!r} for samples of shape "
                            f"{shape}: A maps them to {measured}")
    return shape


def _vjp(out: Tensor, x: Tensor, u: Tensor, retain: bool) -> Tensor:
    """``(d out / d x)^T u``, per sample (samples of a batch do not interact)."""
    (grad,) = torch.autograd.grad(out, x, grad_outputs=u.to(out.dtype), retain_graph=retain, allow_unused=True)
    return torch.zeros_like(x) if grad is None else grad


def _cg_tol(tol, dtype) -> float:
    return (1e-10 if dtype == torch.float64 else 1e-5) if tol is None else float(tol)


class PosteriorGuidance(DenoiserWrapper):
    r"""The base of the likelihood-guided wrappers:

        x0' = x0 + (sigma_t^2 / alpha_t) g,    g ~ grad_{x_t} log p(y | x_t),

    where a subclass writes :meth:`guidance` (``g``), given ``x_t`` (requiring its gradient) and
    ``x0 = D(x_t)`` still attached to it, so that vector-Jacobian products through the denoiser cost a
    backward pass and no further network evaluation.

    Args:
        denoiser: the prior's denoiser (a :class:`~scorekit.prediction.Denoiser`, possibly wrapped).
        A: the measurement operator.
        y: the measurements, ``(N, ...)`` (one per sample) or ``(1, ...)`` (one for all). Only their
            part in ``A``'s range counts: ``y`` is kept as ``A A^+ y``, so values ``A`` cannot
            produce (the pixels a :class:`~scorekit.tasks.operators.Mask` hides) are dropped; they
            carry nothing about ``x``, and in DPS's ``||y - A D||`` they would shrink every step.
        sigma_y: the measurement noise's standard deviation, ``>= 0``.
    """

    #: the name in :data:`INVERSE_METHODS`
    name = "guidance"

    def __init__(self, denoiser, A: LinearOperator, y: Tensor, *, sigma_y: float = 0.0):
        super().__init__(denoiser)
        self.sigma_y = check_sigma_y(sigma_y)
        check_measurement(A, y)
        with torch.no_grad():
            self.A, self.y = A, A(A.pinv(y.detach()))

    def _measurement(self, x_t: Tensor) -> Tensor:
        n = x_t.shape[0]
        if self.y.shape[0] not in (1, n):
            raise ScorekitError(f"{self.name}: {self.y.shape[0]} measurements for a batch of {n} samples; "
                                f"give one measurement per sample or one for all")
        return kept_like(self, "y", x_t).expand((n,) + tuple(self.y.shape[1:]))

    def guidance(self, x: Tensor, x0: Tensor, y: Tensor, alpha, sigma) -> Tensor:
        """``g ~ grad_{x_t} log p(y | x_t)`` (``alpha``, ``sigma``: numbers, or tensors like ``x``)."""
        raise NotImplementedError

    def apply(self, x_t, t, condition, predict):
        y = self._measurement(x_t)
        alpha, sigma = self.coefficients(x_t, t)
        with torch.enable_grad():
            x = x_t.detach().requires_grad_(True)
            x0 = predict(x, t, condition)
            g = self.guidance(x, x0, y, alpha, sigma)
        return (x0.detach() + (sigma ** 2 / alpha) * g.detach()).to(x_t.dtype)

    def solve(self, x_T: Tensor, timesteps, *, sampler: str = "ddim", generator=None,
              **sampler_options) -> Tensor:
        """Run ``sampler`` on this denoiser from ``x_T`` over ``timesteps`` (:func:`scorekit.sample`)."""
        from ..sampling import sample

        return sample(self, x_T, timesteps=timesteps, sampler=sampler, generator=generator, **sampler_options)

    def __repr__(self):
        return f"{type(self).__name__}({self.inner!r}, {self.A!r}, sigma_y={self.sigma_y})"


class DPS(PosteriorGuidance):
    r"""Diffusion posterior sampling (Chung, Kim, Mccann, Klasky & Ye 2023, Algorithm 1).

    DPS replaces ``p(y | x_t)`` by ``p(y | x_0 = D(x_t))``, ``D`` the denoiser's point estimate, so
    ``grad log p(y | x_t) ~ -(1 / sigma_y^2) grad_{x_t} ||y - A D(x_t)||^2`` (their eq. 16), and
    sets the step size to ``zeta_t = zeta / ||y - A D(x_t)||`` (their Appendix C.2), which also
    serves noiseless measurements. As the official code does, ``zeta_t grad ||r||^2 = 2 zeta grad ||r||``
    is taken as ``zeta grad ||r||`` (the 2 absorbed into ``zeta``), per sample:

        g = -zeta grad_{x_t} ||y - A D(x_t)||,    x0' = D + (sigma_t^2 / alpha_t) g.

    *How the paper's update maps onto a denoiser.* The paper adds ``-zeta_i grad ||r||^2`` to the
    state ``x_{i-1}`` after an ancestral DDPM step of 1000; here the same gradient is a correction
    of the score, and a sampler turns a score correction ``delta`` into a state change of its own step
    size (for the ancestral DDPM step ``beta_i / sqrt(1 - beta_i) delta``). The paper's step
    ``zeta'`` on a 1000-step DDPM is therefore ``zeta ~ zeta' sqrt(1 - beta_i) / beta_i`` here, a
    time-dependent factor; the score form keeps one ``zeta`` meaningful for every sampler and step
    count. DPS is not exact even for a Gaussian prior (it ignores the spread of ``p(x_0 | x_t)``);
    ``BENCHMARKS.md`` records how far it is.

    Args:
        zeta: the step size ``zeta > 0`` (score units, see above).
    """

    name = "dps"

    def __init__(self, denoiser, A, y, *, sigma_y: float = 0.0, zeta: float = 10.0):
        super().__init__(denoiser, A, y, sigma_y=sigma_y)
        self.zeta = float(zeta)
        if not (math.isfinite(self.zeta) and self.zeta > 0):
            raise ScorekitError(f"the DPS step size zeta must be a positive number, got {zeta!r}")

    def guidance(self, x, x0, y, alpha, sigma):
        r = (y - self.A(x0)).flatten(1)
        norm = (r.square().sum(1) + torch.finfo(r.dtype).tiny).sqrt()
        return -self.zeta * _vjp(norm.sum(), x, torch.ones((), dtype=norm.dtype, device=norm.device), False)


class PiGDM(PosteriorGuidance):
    r"""Pseudoinverse-guided diffusion (Song, Vahdat, Mardani & Kautz 2023, eqs. 5-8).

    ``p(x_0 | x_t)`` is taken to be ``N(D(x_t), r_t^2 I)`` with the posterior variance of a prior
    ``N(0, v I)`` (``v`` the data variance; ``v = 1`` in the paper):

        r_t^2 = v sigma_t^2 / (alpha_t^2 v + sigma_t^2),
        p(y | x_t) ~ N(A D(x_t), r_t^2 A A^T + sigma_y^2 I),
        g = (dD/dx_t)^T A^T (r_t^2 A A^T + sigma_y^2 I)^{-1} (y - A D(x_t)),

    the covariance held fixed in the gradient and ``(dD/dx_t)^T`` applied as one vector-Jacobian
    product. Noiseless, ``A^T (r_t^2 A A^T)^{-1} = A^+ / r_t^2`` (``A^+ = A^T (A A^T)^+``) uses the
    operator's pseudo-inverse; noisy, the system is solved by conjugate gradients in measurement
    space (:func:`~scorekit.tasks.operators.conjugate_gradient`). For data ``N(0, v I)`` every
    approximation is exact (``p(x_0 | x_t)`` is then that Gaussian), so with the exact denoiser this
    is the posterior's denoiser.

    Args:
        data_variance: ``v``, the prior's per-coordinate variance (1 for data scaled to unit variance).
        cg_iterations: the most conjugate-gradient iterations (noisy measurements).
        cg_tol: their relative tolerance (default ``1e-10`` in float64, ``1e-5`` otherwise).
    """

    name = "pigdm"

    def __init__(self, denoiser, A, y, *, sigma_y: float = 0.0, data_variance: float = 1.0,
                 cg_iterations: int = 50, cg_tol: float | None = None):
        super().__init__(denoiser, A, y, sigma_y=sigma_y)
        self.data_variance = float(data_variance)
        if not (math.isfinite(self.data_variance) and self.data_variance > 0):
            raise ScorekitError(f"data_variance must be a positive number, got {data_variance!r}")
        self.cg_iterations, self.cg_tol = _check_cg(cg_iterations, cg_tol)

    def guidance(self, x, x0, y, alpha, sigma):
        v = self.data_variance
        r2 = v * sigma ** 2 / (alpha ** 2 * v + sigma ** 2)
        resid = (y - self.A(x0)).detach()
        if self.sigma_y == 0:
            u = self.A.pinv(resid) / r2
        else:
            w = conjugate_gradient(lambda z: self.A(r2 * self.A.adjoint(z)) + self.sigma_y ** 2 * z, resid,
                                   iterations=self.cg_iterations, tol=_cg_tol(self.cg_tol, resid.dtype))
            u = self.A.adjoint(w)
        return _vjp(x0, x, u, False)


class MomentMatching(PosteriorGuidance):
    r"""The Gaussian likelihood with the true posterior covariance (Boys, Girolami, Pidstrigach,
    Reich, Mosca & Akyildiz 2023, "Tweedie moment projected diffusions"; Rozet, Andry, Lanusse &
    Louppe 2024, "moment matching posterior sampling").

    The second-order Tweedie formula gives the covariance of ``p(x_0 | x_t)`` from the denoiser's
    Jacobian ``J = dD/dx_t``:

        Cov[x_0 | x_t] = (sigma_t^2 / alpha_t) J     (= sigma_t^2 / alpha_t^2 (I + sigma_t^2 grad^2 log p_t)),

    and ``p(y | x_t) ~ N(A D, S)``, ``S = A Cov[x_0 | x_t] A^T + sigma_y^2 I``, with gradient (the
    covariance held fixed)

        g = J^T A^T S^{-1} (y - A D(x_t)).

    ``S^{-1}`` is applied by conjugate gradients in measurement space; each product
    ``S w = (sigma_t^2 / alpha_t) A J A^T w + sigma_y^2 w`` is one Jacobian-vector product, and the
    final ``J^T`` one vector-Jacobian product, all backward passes through the one network
    evaluation. For a Gaussian prior ``p(x_0 | x_t)`` is Gaussian with a covariance independent of
    ``x_t``, so ``N(A D, S)`` *is* ``p(y | x_t)`` and ``g`` its exact gradient: with the exact
    denoiser this wrapper is the posterior's denoiser, noisy or noiseless (where ``S`` is singular
    for operators with zero rows, e.g. a mask: the residual is first projected onto the range of
    ``A`` by ``A A^+``, as a pseudo-inverse would, and conjugate gradients stay in that range). Beyond
    Gaussians it is an approximation; its cost is one network evaluation plus up to
    ``cg_iterations + 1`` backward passes a step.

    Args:
        jacobian: ``"jvp"``: ``J u`` as a Jacobian-vector product (a double backward pass);
            ``"vjp"``: ``J^T u`` instead (one backward pass, cheaper), right when ``J`` is symmetric,
            as it is for an exact denoiser (``J = (I + sigma^2 grad^2 log p_t) / alpha``), and the
            choice of Rozet et al.
        cg_iterations: the most conjugate-gradient iterations.
        cg_tol: their relative tolerance (default ``1e-10`` in float64, ``1e-5`` otherwise).
    """

    name = "moment_matching"

    def __init__(self, denoiser, A, y, *, sigma_y: float = 0.0, jacobian: str = "jvp",
                 cg_iterations: int = 50, cg_tol: float | None = None):
        super().__init__(denoiser, A, y, sigma_y=sigma_y)
        if jacobian not in ("jvp", "vjp"):
            raise ScorekitError(f"jacobian must be 'jvp' or 'vjp', got {jacobian!r}")
        self.jacobian = jacobian
        self.cg_iterations, self.cg_tol = _check_cg(cg_iterations, cg_tol)

    def guidance(self, x, x0, y, alpha, sigma):
        if self.jacobian == "jvp":
            dummy = torch.zeros_like(x0, requires_grad=True)
            (jt_dummy,) = torch.autograd.grad(x0, x, grad_outputs=dummy, create_graph=True)

            def jac(u):                                   # J u: d/d(dummy) of <J^T dummy, u>
                (ju,) = torch.autograd.grad(jt_dummy, dummy, grad_outputs=u, retain_graph=True,
                                            allow_unused=True)
                return torch.zeros_like(u) if ju is None else ju
        else:
            def jac(u):                                   # J^T u = J u for a symmetric J
                return _vjp(x0, x, u, True)

        scale = sigma ** 2 / alpha
        resid = (y - self.A(x0)).detach()
        if self.sigma_y == 0:              # S is singular where A has no rank: stay in its range
            resid = self.A(self.A.pinv(resid))

        def S(w):
            return self.A(scale * jac(self.A.adjoint(w))) + self.sigma_y ** 2 * w

        w = conjugate_gradient(S, resid, iterations=self.cg_iterations, tol=_cg_tol(self.cg_tol, resid.dtype))
        return _vjp(x0, x, self.A.adjoint(w), False)


def _check_cg(iterations, tol):
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
        raise ScorekitError(f"cg_iterations must be a whole number >= 1, got {iterations!r}")
    if tol is not None and not (math.isfinite(float(tol)) and float(tol) > 0):
        raise ScorekitError(f"cg_tol must be a positive number, got {tol!r}")
    return iterations, tol


class Projection:
    r"""The projection method of Song, Shen, Xing & Ermon (2022, "Solving inverse problems in medical
    imaging with score-based generative models", eq. 8), for any operator with a pseudo-inverse.

    Before each model evaluation the state is pulled towards a noised measurement in the range of
    ``A``:

        y_t = alpha_t y + sigma_t A eps,   eps ~ N(0, I)      (a draw of A x_t given y, noiseless),
        x_t <- x_t + lambda A^+ (y_t - A x_t),

    which for ``lambda = 1`` replaces the measured part ``A^+ A x_t`` by ``A^+ y_t`` and keeps the
    rest (the paper's ``T^{-1}[lambda Lambda P^{-1}(Lambda) y_t + (1 - lambda) Lambda T x_t +
    (I - Lambda) T x_t]`` with ``T`` orthogonal; ``A^+`` makes it work for any ``A``). After the
    last step the same projection at the data time (``alpha = 1``, ``sigma = 0``) makes a noiseless
    measurement hold exactly at ``lambda = 1``.

    A denoiser cannot change the sampler's state, so this is a driver: it runs the sampler on
    segments of ``every`` steps of the grid (:func:`scorekit.sample` with that part of the grid)
    and projects between them. A multistep sampler restarts its history at each segment (first
    order at ``every = 1``), and a sampler whose step depends on the number of steps (EDM's churn)
    sees the segment's. The method treats a noisy ``y`` as if it were exact (it is made for
    noiseless measurements); it is not exact even for a Gaussian prior.

    Args:
        denoiser, A, y, sigma_y: as for :class:`PosteriorGuidance`.
        strength: ``lambda`` in ``[0, 1]``.
        every: project every this many steps.
    """

    name = "projection"

    def __init__(self, denoiser, A: LinearOperator, y: Tensor, *, sigma_y: float = 0.0, strength: float = 1.0,
                 every: int = 1):
        self.sigma_y = check_sigma_y(sigma_y)
        check_measurement(A, y)
        self.denoiser, self.A, self.y = denoiser, A, y.detach()
        self.strength = float(strength)
        if not 0 <= self.strength <= 1:
            raise ScorekitError(f"the projection strength lambda must lie in [0, 1], got {strength!r}")
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ScorekitError(f"every must be a whole number >= 1, got {every!r}")
        self.every = every

    def project(self, x: Tensor, t, generator) -> Tensor:
        """``x + lambda A^+ (alpha_t y + sigma_t A eps - A x)``."""
        process = self.denoiser.process
        alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
        y_t = alpha * kept_like(self, "y", x)
        if sigma > 0:
            # drawn where the generator is: on x's device (as the samplers draw) no copy is made
            eps = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
            y_t = y_t + sigma * self.A(to_device(eps, x.device))
        return x + self.strength * self.A.pinv(y_t - self.A(x))

    def solve(self, x_T: Tensor, timesteps, *, sampler: str = "ddim", generator=None,
              **sampler_options) -> Tensor:
        from ..samplers._common import check_generator
        from ..sampling import sample
        from ..timesteps import check_timesteps

        generator = check_generator(generator, "the projection method")
        ts = check_timesteps(timesteps)
        if self.y.shape[0] not in (1, x_T.shape[0]):
            raise ScorekitError(f"projection: {self.y.shape[0]} measurements for a batch of {x_T.shape[0]} "
                                f"samples; give one measurement per sample or one for all")
        x = x_T
        n = ts.numel() - 1
        for start in range(0, n, self.every):
            stop = min(start + self.every, n)
            x = self.project(x, ts[start].item(), generator)
            x = sample(self.denoiser, x, timesteps=ts[start:stop + 1], sampler=sampler, generator=generator,
                       **sampler_options)
        return self.project(x, ts[-1].item(), generator)

    def __repr__(self):
        return f"Projection({self.denoiser!r}, {self.A!r}, strength={self.strength}, every={self.every})"


#: every method by name: a class built as ``cls(denoiser, A, y, sigma_y=..., **options)`` with a
#: ``solve(x_T, timesteps, sampler=..., generator=..., **sampler_options)`` method
INVERSE_METHODS = {cls.name: cls for cls in (DPS, PiGDM, MomentMatching, Projection)}

_COMMON = {"denoiser", "A", "y", "sigma_y"}


def inverse_method_options(method: str) -> dict:
    """The options a method takes, with their defaults."""
    import inspect

    return {k: p.default for k, p in inspect.signature(_method(method)).parameters.items()
            if p.kind == p.KEYWORD_ONLY and k not in _COMMON}


def _method(method: str):
    if method not in INVERSE_METHODS:
        raise ScorekitError(f"unknown inverse-problem method {method!r}; choose one of {', '.join(INVERSE_METHODS)}")
    return INVERSE_METHODS[method]


def inverse_solver(denoiser, A: LinearOperator, y: Tensor, *, method: str = "moment_matching",
                   sigma_y: float = 0.0, **options):
    """The solver ``method`` for ``y = A x + sigma_y n`` on ``denoiser``, its ``options`` checked
    against the signature of its class (:func:`scorekit.errors.check_options`)."""
    cls = _method(method)
    options = check_options(options, option_schema(cls, skip=_COMMON), f"{method} option")
    return cls(denoiser, A, y, sigma_y=sigma_y, **options)


def solve_inverse(model, A: LinearOperator, y: Tensor, *, method: str = "moment_matching",
                  sigma_y: float = 0.0, process=None, prediction_type: str = "eps", sampler: str = "ddim",
                  num_steps: int = 50, spacing: str | None = None, timesteps=None, x_T: Tensor | None = None,
                  generator: torch.Generator | None = None, options: dict | None = None,
                  sampler_options: dict | None = None) -> Tensor:
    r"""Samples of ``p(x | y)`` for ``y = A x + sigma_y n``, one per measurement, with a diffusion prior.

    Args:
        model: the prior: a :class:`~scorekit.prediction.Denoiser` (e.g. :func:`scorekit.load_denoiser`
            of a run), or a network with ``process`` and ``prediction_type``, as :func:`scorekit.sample`
            takes it.
        A: the measurement operator (:mod:`scorekit.tasks.operators`).
        y: the measurements ``(N, ...)``, one per sample (repeat one to draw several samples of its
            posterior); the samples have the shape of ``A^+ y``. With ``x_T``, a ``y`` of batch 1
            serves every sample.
        method: a name in :data:`INVERSE_METHODS`: ``"moment_matching"`` (exact for Gaussian priors),
            ``"pigdm"``, ``"dps"``, ``"projection"``.
        sigma_y: the measurement noise's standard deviation (``0``: noiseless).
        process, prediction_type: as for :func:`scorekit.sample`.
        sampler, num_steps, spacing, timesteps: the sampler and its grid, as for :func:`scorekit.sample`.
        x_T: the start (default: the process's prior, drawn from ``generator``).
        generator: the only source of randomness.
        options: the method's options (e.g. ``{"zeta": 0.5}`` for DPS; :func:`inverse_method_options`).
        sampler_options: the sampler's options (e.g. ``{"eta": 1.0}`` for DDIM).

    Returns:
        the samples, shaped like ``A^+ y`` (or ``x_T``).
    """
    from ..sampling import _model_denoiser, check_sampler_options
    from ..samplers._common import check_generator
    from ..timesteps import make_timesteps

    sigma_y = check_sigma_y(sigma_y)
    shape = check_measurement(A, y, None if x_T is None else x_T.shape)
    sampler_options = check_sampler_options(sampler, dict(sampler_options or {}))
    denoiser, process = _model_denoiser(model, None, None, process, prediction_type, None)
    solver = inverse_solver(denoiser, A, y, method=method, sigma_y=sigma_y, **dict(options or {}))
    if x_T is None:
        generator = check_generator(generator, "solve_inverse without x_T")
        x_T = process.prior_sample(shape, generator=generator, dtype=y.dtype, device=y.device)
    if timesteps is None:
        timesteps = make_timesteps(process, num_steps, spacing)
    return solver.solve(x_T, timesteps, sampler=sampler, generator=generator, **sampler_options)


__all__ = ["DPS", "INVERSE_METHODS", "MomentMatching", "PiGDM", "PosteriorGuidance", "Projection",
           "check_measurement", "check_sigma_y", "inverse_method_options", "inverse_solver", "solve_inverse"]
