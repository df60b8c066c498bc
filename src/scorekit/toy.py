r"""Gaussian mixtures with exact densities, scores and denoisers: an oracle for tests.

A mixture ``p_0(x) = sum_k w_k N(x; mu_k, Sigma_k)`` stays a mixture under the forward process
``x_t = alpha x_0 + sigma eps``:

    p_t(x) = sum_k w_k N(x; alpha mu_k, C_k),      C_k = alpha^2 Sigma_k + sigma^2 I,

so the score, the posterior mean ``E[x_0 | x_t]`` (Tweedie) and the noise prediction are all in
closed form. They expose sampler error the way real data does: several modes (does the sampler
find each one with the right weight?) at very different scales (does it resolve a component
a hundred times narrower than its neighbour?).

Each covariance is stored by its eigendecomposition ``Sigma_k = U_k diag(lam_k) U_k^T``; then
``C_k = U_k diag(alpha^2 lam_k + sigma^2) U_k^T`` is inverted for any ``alpha, sigma`` at the cost
of a rotation. Diagonal covariances (``U_k = I``) skip the rotation altogether, so image-shaped
mixtures with hundreds of dimensions stay cheap.

Everything is computed in float64; results are cast back to the dtype of the input.

Ready-made mixtures: :func:`eight_gaussians`, :func:`multiscale_2d`, :func:`image_mixture`.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
import torch

from .errors import ScorekitError

Tensor = torch.Tensor

_F64 = torch.float64
_LOG_2PI = math.log(2 * math.pi)
# rows per chunk are chosen so that one (rows, K, D) float64 block stays near this many elements
_CHUNK_ELEMENTS = 1 << 21


def _as64(value, name: str) -> Tensor:
    try:
        if isinstance(value, Tensor):
            return value.detach().to(_F64)
        return torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise ScorekitError(f"{name} must be numeric (a number, sequence or tensor): {err}") from None


class GaussianMixture:
    r"""The mixture ``p(x) = sum_k w_k N(x; mu_k, Sigma_k)`` in ``D`` dimensions.

    Args:
        weights: (K,) positive mixture weights; normalised to sum to one.
        means: (K, D) component means ``mu_k``.
        covs: (K, D, D) symmetric positive-definite covariances ``Sigma_k`` (full).
        variances: diagonal covariances instead of ``covs``: (K, D) per-dimension variances, or a
            scalar / (K,) variance shared by all dimensions (``Sigma_k = v_k I``).
        stds: like ``variances`` but standard deviations (``Sigma_k = diag(s_k^2)``).
        event_shape: the shape of one sample, e.g. ``(3, 8, 8)`` for an image-shaped mixture
            (``prod(event_shape) = D``). Inputs and samples are then ``(N, *event_shape)``;
            without it they are ``(N, D)``. Inputs of shape ``(N, D)`` are always accepted.

    Give exactly one of ``covs``, ``variances`` and ``stds``. Full covariances that happen to be
    diagonal are stored as diagonal ones.

    Attributes:
        weights: (K,) float64 normalised weights ``w_k``.
        means: (K, D) float64 means ``mu_k``.
        eigenvalues: (K, D) float64 ``lam_k``, the eigenvalues of ``Sigma_k`` (its variances
            if diagonal).
        eigenvectors: (K, D, D) float64 ``U_k`` or ``None`` for diagonal covariances.
    """

    def __init__(self, weights, means, covs=None, *, variances=None, stds=None,
                 event_shape: Sequence[int] | None = None):
        w = _as64(weights, "weights")
        mu = _as64(means, "means")
        if w.ndim != 1 or w.numel() == 0:
            raise ScorekitError(f"weights must be a non-empty 1-d sequence (K,), got shape {tuple(w.shape)}")
        K = w.numel()
        if not torch.all(torch.isfinite(w)) or not torch.all(w > 0):
            raise ScorekitError("weights must be finite and positive")
        if mu.ndim != 2 or mu.shape[0] != K or mu.shape[1] == 0:
            raise ScorekitError(f"means must have shape (K, D) = ({K}, D) to match weights, "
                                f"got {tuple(mu.shape)}")
        if not torch.all(torch.isfinite(mu)):
            raise ScorekitError("means must be finite")
        D = mu.shape[1]

        given = [name for name, v in (("covs", covs), ("variances", variances), ("stds", stds))
                 if v is not None]
        if len(given) != 1:
            raise ScorekitError("give exactly one of covs (K, D, D), variances or stds "
                                f"(got {', '.join(given) if given else 'none'})")
        U = None
        if covs is not None:
            S = _as64(covs, "covs")
            if S.shape != (K, D, D):
                raise ScorekitError(f"covs must have shape (K, D, D) = ({K}, {D}, {D}), got {tuple(S.shape)}")
            if not torch.all(torch.isfinite(S)):
                raise ScorekitError("covs must be finite")
            scale = S.abs().amax(dim=(1, 2), keepdim=True).clamp_min(1e-300)
            if torch.any((S - S.transpose(1, 2)).abs() > 1e-10 * scale):
                raise ScorekitError("covs must be symmetric (Sigma_k = Sigma_k^T)")
            S = 0.5 * (S + S.transpose(1, 2))
            off = S - torch.diag_embed(torch.diagonal(S, dim1=1, dim2=2))
            if torch.all(off == 0):
                lam = torch.diagonal(S, dim1=1, dim2=2).clone()
            else:
                lam, U = torch.linalg.eigh(S)
            if not torch.all(lam > 1e-12 * scale.reshape(K, 1)) or not torch.all(lam > 0):
                raise ScorekitError("covs must be positive definite (every eigenvalue > 0)")
        else:
            name = "variances" if variances is not None else "stds"
            v = _as64(variances if variances is not None else stds, name)
            if v.ndim == 0:
                v = v.expand(K, D)
            elif v.ndim == 1 and v.shape[0] == K:
                v = v[:, None].expand(K, D)
            elif v.shape != (K, D):
                raise ScorekitError(f"{name} must be a scalar, (K,) = ({K},) or (K, D) = ({K}, {D}), "
                                    f"got shape {tuple(v.shape)}")
            if not torch.all(torch.isfinite(v)) or not torch.all(v > 0):
                raise ScorekitError(f"{name} must be finite and positive")
            lam = (v if variances is not None else v ** 2).clone()

        if event_shape is None:
            event_shape = (D,)
        try:
            event_shape = tuple(int(s) for s in event_shape)
        except (TypeError, ValueError):
            raise ScorekitError(f"event_shape must be a sequence of integers, got {event_shape!r}") from None
        if math.prod(event_shape) != D or any(s <= 0 for s in event_shape):
            raise ScorekitError(f"event_shape {event_shape} must have prod = D = {D}")

        self.weights = w / w.sum()
        self.log_weights = torch.log(self.weights)
        self.means = mu.clone()
        self.eigenvalues = lam
        self.eigenvectors = U
        self.event_shape = event_shape

    @classmethod
    def _from_eigen(cls, weights, means, eigenvalues, eigenvectors, event_shape) -> "GaussianMixture":
        self = cls.__new__(cls)
        self.weights = weights
        self.log_weights = torch.log(weights)
        self.means = means
        self.eigenvalues = eigenvalues
        self.eigenvectors = eigenvectors
        self.event_shape = event_shape
        return self

    # --- basic properties --------------------------------------------------------------------
    @property
    def num_components(self) -> int:
        return self.weights.numel()

    @property
    def dim(self) -> int:
        return self.means.shape[1]

    @property
    def is_diagonal(self) -> bool:
        return self.eigenvectors is None

    def covs(self) -> Tensor:
        """(K, D, D) dense covariances ``Sigma_k = U_k diag(lam_k) U_k^T`` (float64)."""
        if self.eigenvectors is None:
            return torch.diag_embed(self.eigenvalues)
        U = self.eigenvectors
        return U @ (self.eigenvalues[:, :, None] * U.transpose(1, 2))

    def mean(self) -> Tensor:
        """Mixture mean ``E[x] = sum_k w_k mu_k``, shape ``event_shape`` (float64)."""
        return (self.weights @ self.means).reshape(self.event_shape)

    def covariance(self) -> Tensor:
        """Mixture covariance ``sum_k w_k (Sigma_k + mu_k mu_k^T) - m m^T``, shape (D, D) (float64)."""
        m = self.weights @ self.means
        second = torch.einsum("k,kd,ke->de", self.weights, self.means, self.means)
        if self.eigenvectors is None:
            second = second + torch.diag(self.weights @ self.eigenvalues)
        else:
            second = second + torch.einsum("k,kde->de", self.weights, self.covs())
        return second - torch.outer(m, m)

    def std_per_dim(self) -> Tensor:
        """(K, D) standard deviation of each component along each coordinate axis."""
        if self.eigenvectors is None:
            return self.eigenvalues.sqrt()
        return torch.einsum("kde,ke->kd", self.eigenvectors ** 2, self.eigenvalues).sqrt()

    def __repr__(self) -> str:
        kind = "diagonal" if self.is_diagonal else "full"
        return (f"GaussianMixture(K={self.num_components}, D={self.dim}, "
                f"event_shape={self.event_shape}, {kind} covariances)")

    # --- input handling ----------------------------------------------------------------------
    def _flatten(self, x, name: str = "x") -> tuple[Tensor, torch.dtype, tuple]:
        """``x`` as (N, D) float64, with its original dtype and shape."""
        if not isinstance(x, Tensor):
            x = _as64(x, name)
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        shape = tuple(x.shape)
        if x.ndim < 2 or (shape[1:] != self.event_shape and shape[1:] != (self.dim,)):
            want = f"(N, {', '.join(map(str, self.event_shape))})"
            if self.event_shape != (self.dim,):
                want += f" or (N, {self.dim})"
            raise ScorekitError(f"{name} must have shape {want}, got {shape}")
        return x.to(_F64).reshape(shape[0], self.dim), dtype, shape

    def _coef(self, value, n: int, name: str, device) -> Tensor:
        """alpha or sigma as a float64 0-d tensor or (n,) tensor (one value per sample)."""
        c = _as64(value, name).to(device)
        if c.numel() == 1 or (c.numel() == n and n > 1 and torch.all(c == c.reshape(-1)[0])):
            c = c.reshape(-1)[0]         # one shared value (a sampler step): broadcast, cheaper
        elif c.numel() == n and (c.ndim == 1 or all(s == 1 for s in c.shape[1:])):
            c = c.reshape(n)
        else:
            raise ScorekitError(f"{name} must be a number or have one value per sample "
                                f"(shape ({n},)), got shape {tuple(c.shape)}")
        if not torch.all(torch.isfinite(c)):
            raise ScorekitError(f"{name} must be finite")
        if name == "sigma" and torch.any(c < 0):
            raise ScorekitError("sigma must be non-negative")
        return c

    def _params(self, device):
        mu, lam, U = self.means, self.eigenvalues, self.eigenvectors
        if mu.device != device:
            mu, lam = mu.to(device), lam.to(device)
            U = None if U is None else U.to(device)
        return mu, lam, U

    # --- the core computation ----------------------------------------------------------------
    def _evaluate(self, x, alpha, sigma, want: Sequence[str], mask: Tensor | None = None,
                  compute: torch.dtype = _F64) -> tuple[list[Tensor], torch.dtype, tuple]:
        r"""Compute the requested quantities of ``p_t`` at ``x_t`` (in ``compute``, float64 unless
        asked otherwise), in chunks of rows.

        ``mask`` (N, K) bool restricts, per sample, the components the responsibilities ``r_k``
        run over (the mixture of those components, renormalised); ``"logp"`` is not masked.

        With ``d_k = x - alpha mu_k``, ``z_k = U_k^T d_k`` and ``c_k = alpha^2 lam_k + sigma^2``
        (the eigenvalues of ``C_k``):

        * ``"logp"`` (N, K): ``log w_k - 1/2 (D log 2 pi + sum log c_k + sum z_k^2 / c_k)``;
        * ``"score"`` (N, D): ``-sum_k r_k U_k (z_k / c_k)``;
        * ``"x0"`` (N, D): ``sum_k r_k (mu_k + U_k (alpha lam_k z_k / c_k))``;
        * ``"eps"`` (N, D): ``sum_k r_k U_k (sigma z_k / c_k)`` (= ``-sigma * score``).
        """
        x, dtype, shape = self._flatten(x)
        N = x.shape[0]
        a = self._coef(alpha, N, "alpha", x.device)
        s = self._coef(sigma, N, "sigma", x.device)
        if torch.any((a == 0) & (s == 0)):
            raise ScorekitError("alpha and sigma must not both be zero (the distribution would be a point)")
        mu, lam, U = self._params(x.device)
        log_weights = self.log_weights.to(x.device)
        if compute != _F64:
            x, a, s, mu, lam, log_weights = (v.to(compute) for v in (x, a, s, mu, lam, log_weights))
            U = None if U is None else U.to(compute)
        K, D = mu.shape
        rows = max(1, _CHUNK_ELEMENTS // (K * D))
        outputs: dict[str, list[Tensor]] = {k: [] for k in want}
        for start in range(0, max(N, 1), rows):
            sl = slice(start, min(start + rows, N))
            xc = x[sl]
            ac = a[sl].reshape(-1, 1, 1) if a.ndim else a
            sc = s[sl].reshape(-1, 1, 1) if s.ndim else s
            diff = xc[:, None, :] - ac * mu[None]                       # (n, K, D)
            z = diff if U is None else torch.einsum("nkd,kde->nke", diff, U)
            c = ac ** 2 * lam[None] + sc ** 2                            # (n|1, K, D)
            z_over_c = z / c
            logp = log_weights - 0.5 * (
                D * _LOG_2PI + torch.log(c).sum(-1) + (z * z_over_c).sum(-1))
            logp = logp.expand(xc.shape[0], K)
            if "logp" in outputs:
                outputs["logp"].append(logp)
            if tuple(want) == ("logp",):
                continue
            r = torch.softmax(logp if mask is None else logp.masked_fill(~mask[sl], -math.inf), dim=-1)

            def combine(v):                                  # sum_k r_k U_k v_k
                if U is None:
                    return torch.einsum("nk,nkd->nd", r, v)
                return torch.einsum("nk,nke,kde->nd", r, v, U)

            if "score" in outputs:
                outputs["score"].append(-combine(z_over_c))
            if "x0" in outputs:
                outputs["x0"].append(r @ mu + combine(ac * lam[None] * z_over_c))
            if "eps" in outputs:
                outputs["eps"].append(combine(sc * z_over_c))
        return [torch.cat(outputs[k]) for k in want], dtype, shape

    # --- densities ---------------------------------------------------------------------------
    def component_log_prob(self, x, alpha=1.0, sigma=0.0) -> Tensor:
        r"""(N, K) ``log w_k + log N(x; alpha mu_k, alpha^2 Sigma_k + sigma^2 I)``.

        With the defaults (``alpha = 1``, ``sigma = 0``) this is the clean mixture's
        ``log w_k + log N(x; mu_k, Sigma_k)``; otherwise it is the component of
        ``p_t = sum_k w_k N(alpha mu_k, C_k)`` for ``x_t = alpha x_0 + sigma eps``.
        ``alpha`` and ``sigma`` are numbers or (N,) tensors (one per sample).
        """
        (logp,), dtype, _ = self._evaluate(x, alpha, sigma, ("logp",))
        return logp.to(dtype)

    def log_prob(self, x) -> Tensor:
        r"""(N,) ``log p(x) = logsumexp_k [log w_k + log N(x; mu_k, Sigma_k)]``; differentiable in ``x``."""
        (logp,), dtype, _ = self._evaluate(x, 1.0, 0.0, ("logp",))
        return torch.logsumexp(logp, dim=-1).to(dtype)

    def responsibilities(self, x, alpha=1.0, sigma=0.0) -> Tensor:
        r"""(N, K) posterior component probabilities
        ``r_k(x_t) = w_k N(x_t; alpha mu_k, C_k) / sum_j w_j N(x_t; alpha mu_j, C_j)``."""
        (logp,), dtype, _ = self._evaluate(x, alpha, sigma, ("logp",))
        return torch.softmax(logp, dim=-1).to(dtype)

    def classify(self, x) -> Tensor:
        r"""(N,) index of the most likely component, ``argmax_k w_k N(x; mu_k, Sigma_k)`` (int64)."""
        (logp,), _, _ = self._evaluate(x, 1.0, 0.0, ("logp",))
        return logp.argmax(dim=-1)

    # --- the diffused mixture ----------------------------------------------------------------
    def diffused(self, alpha, sigma) -> "GaussianMixture":
        r"""The law of ``x_t = alpha x_0 + sigma eps``: ``sum_k w_k N(alpha mu_k, alpha^2 Sigma_k + sigma^2 I)``.

        ``alpha`` and ``sigma`` must be scalars. The eigenvectors are shared with this mixture and
        the eigenvalues become ``alpha^2 lam_k + sigma^2``.
        """
        for name, value in (("alpha", alpha), ("sigma", sigma)):
            if _as64(value, name).numel() != 1:
                raise ScorekitError(f"diffused() takes a scalar {name}, got shape "
                                    f"{tuple(_as64(value, name).shape)}")
        a = self._coef(alpha, 1, "alpha", self.means.device)
        s = self._coef(sigma, 1, "sigma", self.means.device)
        if a == 0 and s == 0:
            raise ScorekitError("alpha and sigma must not both be zero (the distribution would be a point)")
        return GaussianMixture._from_eigen(self.weights, a * self.means,
                                           a ** 2 * self.eigenvalues + s ** 2,
                                           self.eigenvectors, self.event_shape)

    def score(self, x_t, alpha=1.0, sigma=0.0) -> Tensor:
        r"""The exact score ``grad_x log p_t(x_t)`` of ``x_t = alpha x_0 + sigma eps``:

            grad log p_t(x) = -sum_k r_k(x) C_k^{-1} (x - alpha mu_k),   C_k = alpha^2 Sigma_k + sigma^2 I.

        ``alpha`` and ``sigma`` are numbers or (N,) tensors (one per sample).
        """
        (out,), dtype, shape = self._evaluate(x_t, alpha, sigma, ("score",))
        return out.reshape(shape).to(dtype)

    def posterior_mean(self, x_t, alpha, sigma) -> Tensor:
        r"""The exact denoiser ``E[x_0 | x_t]`` for ``x_t = alpha x_0 + sigma eps``:

            E[x_0 | x_t] = sum_k r_k(x_t) [mu_k + alpha Sigma_k C_k^{-1} (x_t - alpha mu_k)],

        with ``C_k = alpha^2 Sigma_k + sigma^2 I``. It equals Tweedie's
        ``(x_t + sigma^2 grad log p_t(x_t)) / alpha`` but stays finite as ``alpha -> 0`` (it tends
        to the mixture mean) and returns ``x_t`` at ``alpha = 1, sigma = 0``.
        ``alpha`` and ``sigma`` are numbers or (N,) tensors (one per sample).
        """
        (out,), dtype, shape = self._evaluate(x_t, alpha, sigma, ("x0",))
        return out.reshape(shape).to(dtype)

    def posterior_noise(self, x_t, alpha, sigma) -> Tensor:
        r"""The exact noise prediction ``E[eps | x_t] = (x_t - alpha E[x_0 | x_t]) / sigma``:

            E[eps | x_t] = -sigma grad log p_t(x_t) = sum_k r_k(x_t) sigma C_k^{-1} (x_t - alpha mu_k).
        """
        (out,), dtype, shape = self._evaluate(x_t, alpha, sigma, ("eps",))
        return out.reshape(shape).to(dtype)

    # --- exact "trained networks" ------------------------------------------------------------
    def _model(self, process, kind: str, compute: torch.dtype = _F64) -> Callable[[Tensor, object], Tensor]:
        def model(x_t: Tensor, t) -> Tensor:
            alpha, sigma = process.alpha(t), process.sigma(t)
            (x0, eps), dtype, shape = self._evaluate(x_t, alpha, sigma, ("x0", "eps"), compute=compute)
            if kind == "x0":
                out = x0
            elif kind == "eps":
                out = eps
            else:                                           # v = alpha eps - sigma x0
                N = x0.shape[0]
                a = self._coef(alpha, N, "alpha", x0.device).to(compute)
                s = self._coef(sigma, N, "sigma", x0.device).to(compute)
                a = a[:, None] if a.ndim else a
                s = s[:, None] if s.ndim else s
                out = a * eps - s * x0
            return out.reshape(shape).to(dtype)

        model.__name__ = f"exact_{kind}_model"
        model.__doc__ = f"Exact {kind} prediction of the mixture under the given process."
        return model

    def denoiser(self, process) -> Callable[[Tensor, object], Tensor]:
        r"""``D(x_t, t) = E[x_0 | x_t]`` with ``alpha = process.alpha(t)``, ``sigma = process.sigma(t)``.

        ``t`` is a number, a 0-d tensor or an (N,) tensor (integer steps for discrete processes).
        """
        return self._model(process, "x0")

    def x0_model(self, process, compute: torch.dtype = _F64) -> Callable[[Tensor, object], Tensor]:
        """An exact x0-predicting "network" ``model(x_t, t) = E[x_0 | x_t]`` (same as :meth:`denoiser`).

        ``compute``: the dtype of its arithmetic, float64 by default (the oracle). ``torch.float32``
        computes as a network does, so that autocast reaches its matrix products (the sums over
        components, ``r @ mu`` and ``sum_k r_k U_k v_k``) and nothing else: the model for
        measuring what a sampler makes of a network evaluated in bfloat16."""
        return self._model(process, "x0", compute)

    def eps_model(self, process, compute: torch.dtype = _F64) -> Callable[[Tensor, object], Tensor]:
        r"""An exact eps-predicting "network" ``model(x_t, t) = (x_t - alpha E[x_0|x_t]) / sigma``
        ``= -sigma grad log p_t(x_t)``. ``t`` may be an integer (N,) tensor as diffusers passes it.
        ``compute``: as for :meth:`x0_model`."""
        return self._model(process, "eps", compute)

    def v_model(self, process) -> Callable[[Tensor, object], Tensor]:
        r"""An exact v-predicting "network" ``model(x_t, t) = alpha E[eps|x_t] - sigma E[x_0|x_t]``
        (Salimans & Ho 2022)."""
        return self._model(process, "v")

    # --- conditioning on a linear measurement -------------------------------------------------
    def condition_on(self, A, y, sigma_y: float = 0.0) -> "GaussianMixture":
        r"""The exact posterior ``p(x | y)`` of one linear Gaussian measurement ``y = A x + sigma_y n``.

        Each component is a jointly Gaussian pair ``(x, y)``, so conditioning keeps the mixture form
        (Bishop 2006, sec. 2.3.3; the mixture case e.g. Alspach & Sorenson 1972): with
        ``S_k = A Sigma_k A^T + sigma_y^2 I`` and the gain ``K_k = Sigma_k A^T S_k^+``,

            p(x | y) = sum_k w_k' N(x; mu_k + K_k (y - A mu_k), Sigma_k - K_k A Sigma_k),
            w_k' ∝ w_k N(y; A mu_k, S_k).

        ``A`` is turned into its dense matrix (applied to the basis, in float64) and restricted to
        its range: with the thin SVD ``A = U_r s_r V_r^T`` (rank ``r``, singular values above
        ``max(m, D) eps max s``) the measurement is ``z = U_r^T y`` and ``B = U_r^T A`` has full row
        rank. Then ``B Sigma_k B^T + sigma_y^2 I`` is invertible for every ``sigma_y >= 0`` and gives
        the same gain as the pseudo-inverse above (``A Sigma_k A^T = U_r B Sigma_k B^T U_r^T``). The
        part of ``y`` outside the range of ``A`` is pure noise, the same under every component: it
        changes neither the means nor the weights. For ``sigma_y = 0`` a ``y`` with such a part is
        impossible; it is projected onto the range (as ``A^+`` does), and the weights are densities
        on that ``r``-dimensional range, the same measure for every component.

        For ``sigma_y = 0`` the posterior is degenerate: the covariances have ``r`` zero eigenvalues
        (``x`` is pinned along the measured directions), stored as zeros (rounding clamped). Sampling,
        the moments and the diffused quantities at ``sigma > 0`` are exact; a density at
        ``sigma = 0`` (:meth:`log_prob`) and :meth:`whiten` are not defined there.

        Args:
            A: a linear operator ``A(x)`` on a batch of shape ``(N, *event_shape)`` (a
                :class:`scorekit.tasks.operators.LinearOperator`, or any linear callable), or its
                ``(m, D)`` matrix as a tensor.
            y: the one measurement: ``A``'s output for one sample, with or without the batch axis
                of 1.
            sigma_y: the standard deviation of the measurement noise, ``>= 0``.

        Returns:
            the posterior, a :class:`GaussianMixture` of the same ``event_shape``; components whose
            weight underflows to zero are kept with weight 0.
        """
        from .tasks.inverse import check_sigma_y

        sigma_y = check_sigma_y(sigma_y)
        M = self.measurement_matrix(A)                                   # (m, D)
        yv = _as64(y, "y").reshape(-1)
        if yv.numel() != M.shape[0]:
            raise ScorekitError(f"y must be one measurement of this operator ({M.shape[0]} entries), "
                                f"got {yv.numel()} entries (shape {tuple(_as64(y, 'y').shape)})")
        if not torch.all(torch.isfinite(yv)):
            raise ScorekitError("y must be finite")
        U, s, Vh = torch.linalg.svd(M, full_matrices=True)
        tol = max(M.shape) * torch.finfo(_F64).eps * (float(s.max()) if s.numel() else 0.0)
        r = int((s > tol).sum())
        Ur = U[:, :r]
        B = Ur.T @ M                                                     # (r, D), full row rank
        z = Ur.T @ yv                                                    # (r,)
        Sigma = self.covs()                                              # (K, D, D)
        BS = B @ Sigma                                                   # (K, r, D) = B Sigma_k
        S = BS @ B.T + sigma_y ** 2 * torch.eye(r, dtype=_F64)           # (K, r, r)
        S = 0.5 * (S + S.transpose(1, 2))
        L = torch.linalg.cholesky(S)
        resid = z - self.means @ B.T                                     # (K, r)
        white = torch.linalg.solve_triangular(L, resid[:, :, None], upper=False)[:, :, 0]
        log_lik = -0.5 * (r * _LOG_2PI + (white ** 2).sum(1)) \
            - torch.log(torch.diagonal(L, dim1=1, dim2=2)).sum(1)
        log_w = self.log_weights + log_lik
        weights = torch.softmax(log_w, dim=0)
        gain_t = torch.cholesky_solve(BS, L)                             # S^-1 B Sigma = K^T (K, r, D)
        means = self.means + (BS.transpose(1, 2) @ torch.cholesky_solve(resid[:, :, None], L))[:, :, 0]
        covs = Sigma - BS.transpose(1, 2) @ gain_t
        covs = 0.5 * (covs + covs.transpose(1, 2))
        off = covs - torch.diag_embed(torch.diagonal(covs, dim1=1, dim2=2))
        if sigma_y == 0 and r > 0:
            # B covs = 0: decompose within the null space of B, so the r pinned directions get
            # eigenvalues of exactly zero (rounding would leave ~1e-16, i.e. samples off by ~1e-8)
            null = Vh[r:].T                                              # (D, D - r)
            lam_n, W = torch.linalg.eigh(null.T @ covs @ null)
            K = self.num_components
            lam = torch.cat([torch.zeros(K, r, dtype=_F64), lam_n], dim=1)
            V = torch.cat([Vh[:r].T.expand(K, -1, -1), null @ W], dim=2)
        elif torch.all(off == 0):
            lam, V = torch.diagonal(covs, dim1=1, dim2=2).clone(), None
        else:
            lam, V = torch.linalg.eigh(covs)
        lam = lam.clamp_min(0.0)
        return GaussianMixture._from_eigen(weights, means, lam, V, self.event_shape)

    def measurement_matrix(self, A) -> Tensor:
        """The ``(m, D)`` float64 matrix of a linear operator on samples of this mixture's shape:
        ``A`` applied to the ``D`` basis samples (a tensor is taken as the matrix itself)."""
        D = self.dim
        if isinstance(A, Tensor):
            M = A.detach().to(_F64)
            if M.ndim != 2 or M.shape[1] != D:
                raise ScorekitError(f"a measurement matrix must have shape (m, D) = (m, {D}), got {tuple(M.shape)}")
            return M
        if not callable(A):
            raise ScorekitError(f"A must be a linear operator A(x) or an (m, D) matrix, got {type(A).__name__}")
        basis = torch.eye(D, dtype=_F64).reshape((D,) + self.event_shape)
        out = A(basis)
        if not isinstance(out, Tensor) or out.ndim < 1 or out.shape[0] != D:
            raise ScorekitError(f"A must map a batch of samples of shape (N, {', '.join(map(str, self.event_shape))}) "
                                f"to one measurement per sample")
        return out.reshape(D, -1).T.to(_F64).contiguous()

    # --- sampling ----------------------------------------------------------------------------
    def sample(self, n: int, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32, return_components: bool = False):
        r"""Draw ``n`` exact samples: ``k ~ Categorical(w)``, ``x = mu_k + U_k diag(sqrt(lam_k)) eps``,
        ``eps ~ N(0, I)``.

        Returns ``(n, *event_shape)`` samples of ``dtype`` (and the (n,) component indices if
        ``return_components``). Randomness comes only from ``generator``.
        """
        if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
            raise ScorekitError(f"n must be a non-negative integer, got {n!r}")
        n = int(n)
        mu, lam, U = self._params(torch.device("cpu"))
        if n == 0:
            comp = torch.zeros(0, dtype=torch.long)
        else:
            comp = torch.multinomial(self.weights.cpu(), n, replacement=True, generator=generator)
        eps = torch.randn(n, self.dim, generator=generator, dtype=_F64)
        scaled = eps * lam[comp].sqrt()
        if U is None:
            x = mu[comp] + scaled
        else:
            x = torch.empty_like(scaled)
            for k in range(self.num_components):
                idx = comp == k
                x[idx] = mu[k] + scaled[idx] @ U[k].T
        x = x.reshape((n,) + self.event_shape).to(dtype)
        return (x, comp) if return_components else x

    def whiten(self, x, components) -> Tensor:
        r"""(N, D) float64 ``diag(lam_k)^{-1/2} U_k^T (x - mu_k)`` with ``k = components[i]`` per sample:
        exactly ``N(0, I)`` for samples of component ``k``."""
        x, _, _ = self._flatten(x)
        comp = torch.as_tensor(components, dtype=torch.long, device=x.device).reshape(-1)
        if comp.numel() != x.shape[0]:
            raise ScorekitError(f"components must have one index per sample ({x.shape[0]}), got {comp.numel()}")
        if comp.numel() and (comp.min() < 0 or comp.max() >= self.num_components):
            raise ScorekitError(f"components must lie in 0 .. {self.num_components - 1}")
        mu, lam, U = self._params(x.device)
        d = x - mu[comp]
        if U is not None:
            d = torch.einsum("nd,nde->ne", d, U[comp])
        return d / lam[comp].sqrt()


# ---------------------------------------------------------------------------------------------
# Labelled mixtures: exact class-conditional models and noisy classifiers
# ---------------------------------------------------------------------------------------------

class LabelledMixture:
    r"""A Gaussian mixture whose components carry classes: ``p(x, y) = sum_{k: c_k = y} w_k N(x; mu_k, Sigma_k)``.

    Under the forward process every law stays a mixture, so all of these are exact:

    * the class prior ``p(y) = sum_{k: c_k = y} w_k``;
    * the class-conditional law ``p(x_0 | y)``, the mixture of class ``y``'s components with
      weights ``w_k / p(y)`` (:meth:`class_mixture`), and its denoiser ``E[x_0 | x_t, y]``
      (:meth:`posterior_mean` with labels), the responsibilities renormalised over those components;
    * the noisy classifier ``p(y | x_t) = sum_{k: c_k = y} r_k(x_t)``, the diffused mixture's
      responsibilities summed over the class (:meth:`log_class_posterior`).

    Bayes' rule ties them together: ``grad log p_t(x_t | y) = grad log p_t(x_t) + grad log p(y | x_t)``,
    the identity classifier guidance rests on.

    Args:
        mixture: the :class:`GaussianMixture`.
        classes: (K,) the class ``c_k`` of each component, integers ``0 .. C-1``, each class used.
    """

    def __init__(self, mixture: GaussianMixture, classes):
        if not isinstance(mixture, GaussianMixture):
            raise ScorekitError(f"mixture must be a GaussianMixture, got {type(mixture).__name__}")
        c = torch.as_tensor(np.asarray(classes))
        if c.is_floating_point() or c.ndim != 1 or c.numel() != mixture.num_components:
            raise ScorekitError(f"classes must be {mixture.num_components} integers, one per component, "
                                f"got {tuple(c.shape)} of {c.dtype}")
        c = c.to(torch.long)
        num = int(c.max()) + 1
        if int(c.min()) < 0 or torch.bincount(c, minlength=num).min() == 0:
            raise ScorekitError(f"classes must use every class 0..C-1 at least once, got {c.tolist()}")
        self.mixture = mixture
        self.classes = c
        self.num_classes = num
        self.event_shape = mixture.event_shape

    def __repr__(self) -> str:
        return f"LabelledMixture({self.mixture!r}, classes={self.classes.tolist()})"

    @property
    def class_weights(self) -> Tensor:
        """(C,) float64 ``p(y)``."""
        return torch.zeros(self.num_classes, dtype=_F64).index_add_(0, self.classes, self.mixture.weights)

    def class_mixture(self, y: int) -> GaussianMixture:
        """The law ``p(x_0 | y)``: the class's components with weights ``w_k / p(y)``."""
        y = self._check_class(y)
        idx = torch.nonzero(self.classes == y)[:, 0]
        m = self.mixture
        return GaussianMixture._from_eigen(m.weights[idx] / m.weights[idx].sum(), m.means[idx],
                                           m.eigenvalues[idx],
                                           None if m.eigenvectors is None else m.eigenvectors[idx],
                                           m.event_shape)

    def _check_class(self, y) -> int:
        if isinstance(y, bool) or not isinstance(y, (int, np.integer)) or not 0 <= y < self.num_classes:
            raise ScorekitError(f"class must be an integer in 0..{self.num_classes - 1}, got {y!r}")
        return int(y)

    def _mask(self, labels, n: int, device) -> Tensor | None:
        """(N, K) components of each sample's class; all components for the null label -1."""
        if labels is None:
            return None
        y = torch.as_tensor(labels, device=device).to(torch.long).reshape(-1)
        if y.numel() == 1 and n != 1:
            y = y.expand(n)
        if y.numel() != n:
            raise ScorekitError(f"give one label per sample ({n}), got {y.numel()}")
        if y.numel() and (int(y.min()) < -1 or int(y.max()) >= self.num_classes):
            raise ScorekitError(f"labels must lie in 0..{self.num_classes - 1} (or -1 for none)")
        return (self.classes.to(device)[None, :] == y[:, None]) | (y[:, None] == -1)

    def log_class_posterior(self, x_t, alpha=1.0, sigma=0.0) -> Tensor:
        r"""(N, C) ``log p(y | x_t) = logsumexp_{k: c_k = y} log r_k(x_t)``; differentiable in ``x_t``."""
        logp = self.mixture.component_log_prob(x_t, alpha, sigma).to(_F64)
        log_r = logp - torch.logsumexp(logp, dim=1, keepdim=True)
        out = torch.full((log_r.shape[0], self.num_classes), -math.inf, dtype=_F64, device=log_r.device)
        for y in range(self.num_classes):
            out[:, y] = torch.logsumexp(log_r[:, self.classes.to(log_r.device) == y], dim=1)
        return out.to(x_t.dtype if isinstance(x_t, Tensor) and x_t.is_floating_point() else _F64)

    def posterior_mean(self, x_t, alpha, sigma, labels=None) -> Tensor:
        r"""``E[x_0 | x_t, y]`` per sample (the mixture of class ``y``'s components); label ``-1`` or
        ``labels=None``: the unconditional ``E[x_0 | x_t]``."""
        return self._predict(x_t, alpha, sigma, labels, "x0")

    def posterior_noise(self, x_t, alpha, sigma, labels=None) -> Tensor:
        r"""``E[eps | x_t, y] = (x_t - alpha E[x_0 | x_t, y]) / sigma`` per sample."""
        return self._predict(x_t, alpha, sigma, labels, "eps")

    def _predict(self, x_t, alpha, sigma, labels, kind: str) -> Tensor:
        x, _, _ = self.mixture._flatten(x_t)
        mask = self._mask(labels, x.shape[0], x.device)
        (out,), dtype, shape = self.mixture._evaluate(x_t, alpha, sigma, (kind,), mask)
        return out.reshape(shape).to(dtype)

    def model(self, process, kind: str = "x0") -> Callable[..., Tensor]:
        r"""An exact conditional "network" ``model(x_t, t, y=None)`` predicting ``kind`` (``"x0"``,
        ``"eps"`` or ``"v"``) of ``E[. | x_t, y]``; ``y=None`` or label ``-1`` is the unconditional
        model, as for a network trained with label dropout. ``model.num_classes`` is set."""
        if kind not in ("x0", "eps", "v"):
            raise ScorekitError(f"kind must be 'x0', 'eps' or 'v', got {kind!r}")

        def exact_conditional_model(x_t: Tensor, t, y=None) -> Tensor:
            alpha, sigma = process.alpha(t), process.sigma(t)
            x0 = self._predict(x_t, alpha, sigma, y, "x0").to(_F64)
            if kind == "x0":
                return x0.to(x_t.dtype)
            a = _expand(alpha, x0)
            s = _expand(sigma, x0)
            eps = (x_t.to(_F64) - a * x0) / s
            return (eps if kind == "eps" else a * eps - s * x0).to(x_t.dtype)

        exact_conditional_model.num_classes = self.num_classes
        return exact_conditional_model

    def classifier(self, process) -> Callable[[Tensor, object], Tensor]:
        r"""The exact noise-aware classifier ``classifier(x_t, t) -> log p(y | x_t)`` (N, C), as logits
        (``t`` the process time, as a network takes it); differentiable in ``x_t``."""

        def exact_classifier(x_t: Tensor, t) -> Tensor:
            return self.log_class_posterior(x_t, process.alpha(t), process.sigma(t))

        exact_classifier.num_classes = self.num_classes
        return exact_classifier

    def condition_on(self, A, y, sigma_y: float = 0.0) -> "LabelledMixture":
        r"""The exact posterior ``p(x, class | y)`` of one measurement ``y = A x + sigma_y n``
        (:meth:`GaussianMixture.condition_on`; the components keep their classes, so
        :attr:`class_weights` of the result is ``p(class | y)``)."""
        return LabelledMixture(self.mixture.condition_on(A, y, sigma_y), self.classes)

    def sample(self, n: int, labels=None, *, generator: torch.Generator | None = None,
               dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        r"""``(x, y)``: ``n`` exact draws of ``p(x, y)``, or of ``p(x | y)`` for a given class
        ``labels`` (an int for all, or (n,) labels)."""
        x, comp = self.mixture.sample(n, generator=generator, dtype=dtype, return_components=True)
        if labels is None:
            return x, self.classes[comp]
        y = torch.as_tensor(labels, dtype=torch.long).reshape(-1).expand(n) if n else torch.zeros(0, dtype=torch.long)
        out = torch.empty_like(x)
        for c in torch.unique(y).tolist():
            idx = torch.nonzero(y == c)[:, 0]
            out[idx] = self.class_mixture(int(c)).sample(idx.numel(), generator=generator, dtype=dtype)
        return out, y.clone()


def _expand(value, x: Tensor) -> Tensor:
    """A number, 0-d or (N,) tensor as float64 broadcastable against ``x`` (N, ...)."""
    v = torch.as_tensor(value, dtype=_F64, device=x.device)
    return v.reshape((-1,) + (1,) * (x.ndim - 1)) if v.ndim else v


def labelled_eight_gaussians(num_classes: int = 2, radius: float = 2.0, std: float = 0.1) -> LabelledMixture:
    r""":func:`eight_gaussians` with component ``k`` in class ``k mod num_classes`` (two classes:
    alternate modes; eight: one mode per class)."""
    if num_classes not in (1, 2, 4, 8):
        raise ScorekitError(f"num_classes must divide 8 (1, 2, 4 or 8), got {num_classes!r}")
    return LabelledMixture(eight_gaussians(radius, std), [k % num_classes for k in range(8)])


# ---------------------------------------------------------------------------------------------
# Ready-made mixtures
# ---------------------------------------------------------------------------------------------

def eight_gaussians(radius: float = 2.0, std: float = 0.1) -> GaussianMixture:
    r"""Eight equal-weight isotropic Gaussians, ``N((r cos(2 pi k / 8), r sin(2 pi k / 8)), std^2 I)``."""
    if not radius > 0 or not std > 0:
        raise ScorekitError(f"radius and std must be positive, got {radius}, {std}")
    angles = torch.arange(8, dtype=_F64) * (2 * math.pi / 8)
    means = radius * torch.stack([torch.cos(angles), torch.sin(angles)], dim=1)
    return GaussianMixture(torch.ones(8, dtype=_F64), means, stds=std)


def multiscale_2d() -> GaussianMixture:
    r"""A 2-D mixture with unequal weights and scales a factor 50 apart.

    ==  ======  ============  ==============================================================
    k   w_k     mu_k          Sigma_k
    ==  ======  ============  ==============================================================
    0   0.35    (-1.5, 0)     I (broad)
    1   0.25    (2, 2)        0.05^2 I
    2   0.20    (2.5, -1.5)   0.02^2 I
    3   0.12    (0.5, 2.5)    stds (0.3, 0.03) along axes rotated by 30 degrees (full)
    4   0.08    (-2.5, -2.5)  diag(0.04^2, 0.02^2)
    ==  ======  ============  ==============================================================
    """
    weights = torch.tensor([0.35, 0.25, 0.20, 0.12, 0.08], dtype=_F64)
    means = torch.tensor([[-1.5, 0.0], [2.0, 2.0], [2.5, -1.5], [0.5, 2.5], [-2.5, -2.5]], dtype=_F64)
    th = math.radians(30.0)
    R = torch.tensor([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]], dtype=_F64)
    rotated = R @ torch.diag(torch.tensor([0.3 ** 2, 0.03 ** 2], dtype=_F64)) @ R.T
    covs = torch.stack([
        torch.eye(2, dtype=_F64),
        0.05 ** 2 * torch.eye(2, dtype=_F64),
        0.02 ** 2 * torch.eye(2, dtype=_F64),
        rotated,
        torch.diag(torch.tensor([0.04 ** 2, 0.02 ** 2], dtype=_F64)),
    ])
    return GaussianMixture(weights, means, covs)


def image_mixture(num_components: int = 4, shape: Sequence[int] = (3, 8, 8), seed: int = 0) -> GaussianMixture:
    r"""An image-shaped mixture with diagonal covariances at very different scales.

    Parameters come from ``numpy.random.RandomState(seed)`` (identical on every machine):

    * weights ``w_k`` proportional to ``1, 2, ..., K`` in a random order (unequal);
    * means: a low-resolution pattern (each 2x2 block of pixels shares a value ``U(-0.5, 0.5)``)
      plus per-pixel ``U(-0.1, 0.1)``, so values stay roughly within ``[-1, 1]`` with the noise;
    * standard deviations, per dimension, log-uniform on ``[0.005, 0.3]`` for even ``k`` (some
      dimensions extremely narrow, others broad) and on ``[0.1, 0.3]`` for odd ``k`` (broad).
    """
    K = int(num_components)
    if K < 1:
        raise ScorekitError(f"num_components must be a positive integer, got {num_components!r}")
    try:
        shape = tuple(int(s) for s in shape)
    except (TypeError, ValueError):
        raise ScorekitError(f"shape must be a sequence of integers, got {shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ScorekitError(f"shape must be non-empty with positive sizes, got {shape}")
    rs = np.random.RandomState(seed)
    D = math.prod(shape)
    weights = rs.permutation(np.arange(1, K + 1)).astype(np.float64)
    # low-resolution pattern: halve the last two axes (when they are even), then repeat
    coarse_shape = list(shape)
    for ax in range(max(0, len(shape) - 2), len(shape)):
        if shape[ax] % 2 == 0:
            coarse_shape[ax] = shape[ax] // 2
    coarse = rs.uniform(-0.5, 0.5, size=(K, *coarse_shape))
    for ax, (full, small) in enumerate(zip(shape, coarse_shape)):
        if full != small:
            coarse = np.repeat(coarse, 2, axis=ax + 1)
    means = coarse.reshape(K, D) + rs.uniform(-0.1, 0.1, size=(K, D))
    lo = np.where(np.arange(K) % 2 == 0, math.log(0.005), math.log(0.1))[:, None]
    hi = math.log(0.3)
    stds = np.exp(lo + (hi - lo) * rs.uniform(0.0, 1.0, size=(K, D)))
    return GaussianMixture(weights, means, stds=stds, event_shape=shape)


def correlated_gaussian(dim: int, seed: int = 0) -> GaussianMixture:
    r"""One Gaussian ``N(m, S)`` in ``dim`` dimensions with strong correlations between coordinates:
    ``S = A A^T + 0.1 I`` with ``A_ij ~ N(0, 1 / dim)`` and ``m ~ N(0, 0.25 I)``, drawn in that order
    in float64 from ``torch.Generator().manual_seed(seed)``. The ``0.1 I`` keeps ``S`` well
    conditioned (eigenvalues from 0.1 to about 4), so closed-form posteriors stay accurate."""
    dim = int(dim)
    if dim < 1:
        raise ScorekitError(f"dim must be a positive integer, got {dim!r}")
    g = torch.Generator().manual_seed(int(seed))
    A = torch.randn(dim, dim, generator=g, dtype=torch.float64) / math.sqrt(dim)
    S = A @ A.T + 0.1 * torch.eye(dim, dtype=torch.float64)
    m = 0.5 * torch.randn(dim, generator=g, dtype=torch.float64)
    return GaussianMixture([1.0], m[None], S[None])


__all__ = ["GaussianMixture", "LabelledMixture", "correlated_gaussian", "eight_gaussians", "image_mixture",
           "labelled_eight_gaussians", "multiscale_2d"]
