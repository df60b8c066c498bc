r"""DDPM's variational bound, term by term, in bits per dimension.

For a discrete chain ``t_K > ... > t_1 > data`` (DDPM: all steps ``T-1, ..., 0``; a continuous
process: by default 1000 steps uniform in log-SNR, :func:`scorekit.timesteps.chain_timesteps`) the
negative log likelihood is bounded by (Ho et al. 2020, eq. 5; Nichol & Dhariwal 2021, eq. 4-6)

    -log p(x_0) <= L_T + sum_{t > t_1} L_{t} + L_0,

* ``L_T = KL(q(x_T | x_0) || p(x_T))``, the prior term (no parameters; ``p(x_T) = N(0, prior_std^2 I)``);
* ``L_t = KL(q(x_s | x_t, x_0) || p_theta(x_s | x_t))`` for each reverse step ``t -> s``, with
  ``x_t ~ q(x_t | x_0)`` drawn once per step and sample, ``q(x_s | x_t, x_0) = N(mu~, beta~ I)`` the
  posterior (:meth:`~scorekit.processes.GaussianProcess.posterior`) and
  ``p_theta = N(mu~(x_t, x0_pred), Sigma)`` -- a KL between Gaussians, per dimension
  ``1/2 (log Sigma - log beta~ + beta~ / Sigma + (mu~ - mu_theta)^2 / Sigma - 1)``;
* ``L_0 = -log p_theta(x_0 | x_1)``, the decoder at the step into the data, whose mean is
  ``x0_pred``. For ``b``-bit data in ``[-1, 1]`` (bins of width ``2 / (2^b - 1)``) it is the
  discretised Gaussian of Ho et al. eq. 13: the Gaussian probability of each value's bin,
  ``Phi((x + h - mu) / std) - Phi((x - h - mu) / std)`` with ``h`` half a bin, the lowest and highest
  bins extended to ``-inf`` and ``+inf`` -- a probability, computed in log space with
  ``log Phi`` (:func:`torch.special.log_ndtr`). For continuous data (``data_bits=None``) it is the
  Gaussian density ``N(x_0; x0_pred, Sigma)``.

Every term is evaluated exactly at every step (no Monte-Carlo over ``t``); only ``x_t`` is random.
Units: a term in nats summed over the ``D`` dimensions of a sample becomes bits per dimension by
dividing by ``D ln 2``. For discrete data the total is then the number of bits per dimension of a
code for the 8-bit values; for continuous data it is ``-log2`` of a density (of the data in the
scale given) per dimension, which may be negative.

The reverse variance ``Sigma`` (:mod:`scorekit.variances`): ``"small"`` (``beta~``), ``"large"``
(``beta``), ``"learned"`` (the network's variance head), ``"analytic"`` (Analytic-DPM with
``Gamma_t`` estimated on the evaluated batch itself, from the same network evaluations; pass
:func:`scorekit.variances.analytic_variances` of training data for an estimate independent of the
evaluated data) or a tensor of one variance per reverse step.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..devices import to_device, to_like
from ..errors import ScorekitError, reads_are_free
from ..processes import GaussianProcess, expand_like
from ..variances import (_grid_pairs, analytic_variance, data_step_variance, fixed_variance,
                         require_variance_head)

Tensor = torch.Tensor

_F64 = torch.float64
_LOG2 = math.log(2.0)


@dataclass
class Elbo:
    r"""The bound of :func:`elbo`, in bits per dimension (nats / (D ln 2)).

    Attributes:
        total_bpd: (N,) the bound for each sample, ``prior + sum of terms``.
        mean_bpd: its mean over the samples.
        stderr_bpd: the standard error of that mean (sample standard deviation / sqrt(N)).
        terms_bpd: (K,) the mean over samples of each reverse-step term, in ascending time:
            entry 0 is the decoder ``L_0``, entry ``i`` the KL of the step from
            ``timesteps[i]`` (for the whole DDPM chain ``K = T`` and entry ``t`` is step ``t``).
        prior_bpd: the mean prior term ``L_T``.
        decoder_bpd: the mean decoder term ``L_0`` (``= terms_bpd[0]``).
        sample_terms_bpd: (N, K) each sample's terms.
        sample_prior_bpd: (N,) each sample's prior term.
        timesteps: (K,) the model times of the reverse steps, ascending.
        dims: ``D``, the dimensions per sample.
        data_bits: bits of the discretised data, or ``None`` for a continuous density.
    """

    total_bpd: Tensor
    mean_bpd: float
    stderr_bpd: float
    terms_bpd: Tensor
    prior_bpd: float
    decoder_bpd: float
    sample_terms_bpd: Tensor
    sample_prior_bpd: Tensor
    timesteps: Tensor
    dims: int
    data_bits: int | None


# ---------------------------------------------------------------------------------------------
# Per-dimension pieces
# ---------------------------------------------------------------------------------------------

def _like(value, like: Tensor) -> Tensor:
    """``value`` (a number or a tensor) as a tensor of ``like``'s dtype on its device: a number is
    filled in there and a host tensor copied without waiting (neither makes the host wait for a GPU)."""
    if isinstance(value, Tensor):
        return to_like(value, like)
    return torch.full((), float(value), dtype=like.dtype, device=like.device)


def normal_kl(mean_q: Tensor, var_q, mean_p: Tensor, log_var_p) -> Tensor:
    r"""``KL(N(mean_q, var_q) || N(mean_p, exp(log_var_p)))`` per dimension (broadcast):
    ``1/2 (log_var_p - log var_q + (var_q + (mean_q - mean_p)^2) / var_p - 1)``."""
    var_q, log_var_p = _like(var_q, mean_q), _like(log_var_p, mean_q)
    return 0.5 * (log_var_p - torch.log(var_q) + (var_q + (mean_q - mean_p) ** 2) * torch.exp(-log_var_p) - 1.0)


def gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var) -> Tensor:
    """``log N(x; mean, exp(log_var))`` per dimension."""
    log_var = torch.as_tensor(log_var, dtype=x.dtype, device=x.device)
    return -0.5 * (math.log(2 * math.pi) + log_var + (x - mean) ** 2 * torch.exp(-log_var))


def _log1mexp(d: Tensor) -> Tensor:
    """``log(1 - exp(d))`` for ``d <= 0``, accurate on both sides of ``-ln 2`` (Maechler 2012)."""
    return torch.where(d > -_LOG2, torch.log(-torch.expm1(d)), torch.log1p(-torch.exp(d)))


def log_normal_cdf_difference(a: Tensor, b: Tensor) -> Tensor:
    r"""``log(Phi(b) - Phi(a))`` for ``a < b`` without cancellation: from the lower tail when the
    interval lies mostly below 0, from the upper tail ``Phi(-a) - Phi(-b)`` otherwise."""
    upper = (a + b) > 0
    hi = torch.where(upper, -a, b)
    lo = torch.where(upper, -b, a)
    log_hi, log_lo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return log_hi + _log1mexp((log_lo - log_hi).clamp(max=0.0))


def discretized_gaussian_log_likelihood(x: Tensor, mean: Tensor, log_var, bits: int = 8) -> Tensor:
    r"""``log P(x)`` per dimension for ``bits``-bit data in ``[-1, 1]`` under ``N(mean, exp(log_var))``
    (Ho et al. 2020, eq. 13): the probability of the bin ``[x - h, x + h]``, ``h = 1 / (2^bits - 1)``,
    with the edge bins extended to ``-inf`` (at ``x = -1``) and ``+inf`` (at ``x = 1``). The
    probabilities of the ``2^bits`` values sum to one."""
    log_var = torch.as_tensor(log_var, dtype=x.dtype, device=x.device)
    h = 1.0 / (2 ** int(bits) - 1)
    inv_std = torch.exp(-0.5 * log_var)
    a = (x - h - mean) * inv_std
    b = (x + h - mean) * inv_std
    lowest = x < -1 + h / 2
    highest = x > 1 - h / 2
    middle = log_normal_cdf_difference(torch.where(lowest | highest, torch.zeros_like(a) - 1, a),
                                       torch.where(lowest | highest, torch.zeros_like(b) + 1, b))
    return torch.where(lowest, torch.special.log_ndtr(b), torch.where(highest, torch.special.log_ndtr(-a), middle))


# ---------------------------------------------------------------------------------------------
# One reverse step
# ---------------------------------------------------------------------------------------------

def step_terms(process: GaussianProcess, x0: Tensor, x_t: Tensor, t, s, x0_pred: Tensor, log_var,
               data_bits: int | None = None) -> Tensor:
    r"""The bound's term of the reverse step ``t -> s`` for each sample, in nats (float64, (N,)).

    ``KL(q(x_s | x_t, x_0) || N(mu~(x_t, x0_pred), exp(log_var)))`` summed over dimensions, or,
    where ``s`` is the data time, the decoder's ``-log p(x_0 | x_t)`` (discretised for
    ``data_bits``, a Gaussian density for ``None``). ``t``, ``s`` are numbers or (N,) tensors;
    ``log_var`` broadcasts against ``x_t`` (a number, (N,) per sample, or per dimension).
    Differentiable in ``x0_pred`` and ``log_var``.
    """
    t, s = torch.as_tensor(t, dtype=_F64), torch.as_tensor(s, dtype=_F64)
    x0, x_t, x0_pred = x0.to(_F64), x_t.to(_F64), x0_pred.to(_F64)
    log_var = torch.as_tensor(log_var, dtype=_F64, device=x_t.device)
    if log_var.ndim == 1 and x_t.ndim > 1 and log_var.shape[0] == x_t.shape[0]:
        log_var = expand_like(log_var, x_t)
    first = s <= process.t_data
    c_x0, c_xt, var_q = process.posterior_coefficients(t, s)
    c_x0, c_xt = expand_like(c_x0, x_t), expand_like(c_xt, x_t)
    mean_q = c_x0 * x0 + c_xt * x_t
    mean_p = c_x0 * x0_pred + c_xt * x_t
    n = x_t.shape[0]
    # Terms no sample needs are skipped where finding that out is free (times on the CPU); times on
    # a GPU are not read back (that would make the host wait for the device): both are computed.
    known = reads_are_free(first)
    kl = torch.zeros(n, dtype=_F64, device=x_t.device)
    if not known or not bool(first.all()):
        safe_var_q = expand_like(torch.where(first, torch.ones_like(var_q), var_q), x_t)
        kl = normal_kl(mean_q, safe_var_q, mean_p, log_var).reshape(n, -1).sum(1)
    if known and not bool(first.any()):
        return kl
    if data_bits is None:
        log_p = gaussian_log_likelihood(x0, mean_p, log_var)
    else:
        log_p = discretized_gaussian_log_likelihood(x0, mean_p, log_var, data_bits)
    decoder = -log_p.reshape(n, -1).sum(1)
    first = first.to(x_t.device).expand(n) if first.ndim == 0 else first.to(x_t.device)
    return torch.where(first, decoder, kl)


def prior_term(process: GaussianProcess, x0: Tensor, t) -> Tensor:
    """``KL(q(x_t | x_0) || N(0, prior_std^2 I))`` per sample in nats (float64, (N,))."""
    x0 = x0.to(_F64)
    mean, std = process.marginal(x0, torch.as_tensor(t, dtype=_F64))
    log_var_p = 2 * math.log(process.prior_std)
    return normal_kl(mean, std ** 2, torch.zeros_like(mean), log_var_p).reshape(x0.shape[0], -1).sum(1)


# ---------------------------------------------------------------------------------------------
# The bound
# ---------------------------------------------------------------------------------------------

def _check_data(x0, data_bits) -> Tensor:
    if not isinstance(x0, Tensor) or not x0.is_floating_point() or x0.ndim < 2 or x0.shape[0] < 1:
        raise ScorekitError("x0 must be a floating-point batch (N, C, H, W) or (N, D) of data")
    if not torch.isfinite(x0).all():
        raise ScorekitError("x0 contains NaN or infinite values")
    if data_bits is None:
        return x0
    if isinstance(data_bits, bool) or not isinstance(data_bits, int) or not 1 <= data_bits <= 16:
        raise ScorekitError(f"data_bits must be a whole number of bits (8 for images) or None for "
                            f"continuous data, got {data_bits!r}")
    levels = 2 ** data_bits - 1
    if x0.min() < -1 - 1e-6 or x0.max() > 1 + 1e-6:
        raise ScorekitError(f"{data_bits}-bit data must lie in [-1, 1]; got values in "
                            f"[{x0.min().item():.4g}, {x0.max().item():.4g}] (scale images as 2 x / {levels} - 1, "
                            f"or pass data_bits=None for continuous data)")
    k = (x0.to(_F64) + 1) * levels / 2
    if (k - torch.round(k)).abs().max() > 1e-3:
        raise ScorekitError(f"x0 does not lie on the {2 ** data_bits} levels of {data_bits}-bit data "
                            f"(2 k / {levels} - 1); pass data_bits=None for continuous data")
    return x0


def _variance_table(variance, process, t_all, s_all, data_step: float | None) -> Tensor | str:
    if isinstance(variance, str):
        if variance in ("small", "large"):
            return fixed_variance(process, t_all, s_all, variance, data_step=data_step)
        if variance in ("learned", "analytic"):
            return variance
        raise ScorekitError(f"unknown variance {variance!r}; choose small, large, learned, analytic "
                            f"or give a tensor of {t_all.numel()} variances")
    table = torch.as_tensor(variance, dtype=_F64).detach().cpu().reshape(-1)
    if table.numel() != t_all.numel():
        raise ScorekitError(f"variance has {table.numel()} values but the chain has {t_all.numel()} reverse "
                            f"steps; give one variance per step in ascending time (see analytic_variances)")
    if not torch.all(torch.isfinite(table) & (table > 0)):
        raise ScorekitError("every reverse variance must be a positive finite number")
    return table


def elbo(denoiser, process: GaussianProcess, x0: Tensor, *, variance="small", data_bits: int | None = 8,
         timesteps=None, generator: torch.Generator | None = None, progress: bool = False,
         batch_steps: int = 1) -> Elbo:
    r"""The variational bound on ``-log p(x_0)`` of each sample, term by term (module docstring).

    Args:
        denoiser: ``D(x_t, t) -> x0_pred`` (e.g. :class:`scorekit.Denoiser`); for
            ``variance="learned"`` a :class:`scorekit.variances.LearnedVarianceDenoiser`.
        process: the forward process (DDPM: integer steps ``0 .. T-1``).
        x0: (N, ...) data; for ``data_bits = b`` on the levels ``2 k / (2^b - 1) - 1``.
        variance: ``"small"``, ``"large"``, ``"learned"``, ``"analytic"`` or a (K,) tensor of
            variances, one per reverse step in ascending time (entry 0 the decoder's).
        data_bits: bits of discretised data (8 for images), ``None`` for continuous data.
        timesteps: a descending grid ending at the data time, for the bound of a shorter chain
            (e.g. ``[999, 899, ..., 99, -1]``); default :func:`scorekit.timesteps.chain_timesteps`:
            for a discrete process every step ``T-1, ..., 0``, then the data; for a continuous one
            1000 steps uniform in log-SNR from ``t_max`` to ``t_min``, then the data.
        generator: the source of ``x_t`` (required). One ``N(0, I)`` draw shaped like ``x0`` per
            reverse step, noisiest step first, whatever ``batch_steps`` is -- so the same seed gives
            the same ``x_t`` for every ``variance``.
        progress: show a progress bar.
        batch_steps: reverse steps per network call (the denoiser then gets ``batch_steps * N``
            samples and ``t`` as a float64 tensor of their times); 1 calls it once per step with
            ``t`` a number, like a sampler.

    Returns:
        :class:`Elbo`. One network evaluation per step and sample.
    """
    from ..samplers._common import progress_range

    x0 = _check_data(x0, data_bits)
    if not isinstance(generator, torch.Generator):
        raise ScorekitError("elbo draws x_t ~ q(x_t | x_0): pass generator=torch.Generator().manual_seed(seed)")
    if isinstance(batch_steps, bool) or not isinstance(batch_steps, int) or batch_steps < 1:
        raise ScorekitError(f"batch_steps must be a positive integer, got {batch_steps!r}")
    t_all, s_all = _grid_pairs(process, timesteps)
    K = t_all.numel()
    data_step = data_step_variance(process, t_all, s_all)
    table = _variance_table(variance, process, t_all, s_all, data_step)
    mode = table if isinstance(table, str) else "table"
    if mode == "learned":
        require_variance_head(denoiser)
    N, D = x0.shape[0], x0[0].numel()
    dev = x0.device
    terms = torch.zeros(N, K, dtype=_F64, device=dev)
    order = list(range(K))[::-1]                                # noisiest step first
    chunks = [order[i:i + batch_steps] for i in range(0, K, batch_steps)]
    with torch.no_grad():
        prior = prior_term(process, x0, t_all[-1].item())
        for c in progress_range(len(chunks), progress, "elbo"):
            idx = chunks[c]
            xs, ts, ss = [], [], []
            for i in idx:
                t = t_all[i].item()
                eps = torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device)
                eps = to_device(eps, dev)
                xs.append(process.alpha(t).item() * x0 + process.sigma(t).item() * eps)
                ts.append(torch.full((N,), t, dtype=_F64))
                ss.append(torch.full((N,), s_all[i].item(), dtype=_F64))
            # the network's times from the CPU (Denoiser.model_time reads them there), the terms' on dev
            t_host, s_host = torch.cat(ts), torch.cat(ss)
            x_t, t_vec, s_vec = torch.cat(xs), to_device(t_host, dev), to_device(s_host, dev)
            x0_rep = x0.repeat((len(idx),) + (1,) * (x0.ndim - 1))
            t_arg = t_all[idx[0]].item() if len(idx) == 1 else t_host
            s_arg = s_all[idx[0]].item() if len(idx) == 1 else s_host
            if mode == "learned":
                x0_pred, log_var = denoiser.x0_and_log_variance(x_t, t_arg, s_arg)
            else:
                x0_pred = denoiser(x_t, t_arg)
                if mode == "analytic":
                    var = torch.empty(len(idx), dtype=_F64)
                    for j, i in enumerate(idx):
                        t = t_all[i].item()
                        sl = slice(j * N, (j + 1) * N)
                        eps_pred = (x_t[sl].to(_F64) - process.alpha(t).item() * x0_pred[sl].to(_F64)) \
                            / process.sigma(t).item()
                        gamma = eps_pred.pow(2).mean()
                        var[j] = analytic_variance(process, t_all[i], s_all[i], gamma, data_step=data_step)
                else:
                    var = table[idx]
                log_var = to_device(torch.log(var), dev).repeat_interleave(N)
            if not isinstance(x0_pred, Tensor) or x0_pred.shape != x_t.shape:
                raise ScorekitError(f"the denoiser returned {getattr(x0_pred, 'shape', type(x0_pred))} for x_t of "
                                    f"shape {tuple(x_t.shape)}")
            term = step_terms(process, x0_rep, x_t, t_vec, s_vec, x0_pred, log_var, data_bits)
            for j, i in enumerate(idx):
                terms[:, i] = term[j * N:(j + 1) * N]
    to_bpd = 1.0 / (D * _LOG2)
    terms_bpd = terms * to_bpd
    prior_bpd = prior * to_bpd
    total = prior_bpd + terms_bpd.sum(1)
    stderr = float(total.std(unbiased=True) / math.sqrt(N)) if N > 1 else float("nan")
    return Elbo(total_bpd=total, mean_bpd=float(total.mean()), stderr_bpd=stderr,
                terms_bpd=terms_bpd.mean(0), prior_bpd=float(prior_bpd.mean()),
                decoder_bpd=float(terms_bpd[:, 0].mean()), sample_terms_bpd=terms_bpd,
                sample_prior_bpd=prior_bpd, timesteps=t_all.clone(), dims=D, data_bits=data_bits)



@dataclass
class SampledElbo:
    r"""The stratified estimate of :func:`sampled_elbo`, in bits per dimension, for one reverse variance.

    Attributes:
        total_bpd: (N,) each sample's estimate of its bound, ``prior + decoder + sum of strata``.
        mean_bpd: their mean.
        stderr_bpd: the standard error of that mean over the samples (it holds both the spread of
            the samples and the Monte-Carlo noise of the sampled steps).
        prior_bpd: the mean prior term ``L_T`` (exact).
        decoder_bpd: the mean decoder term ``L_0`` (evaluated at every sample, not sampled).
        strata_bpd: (M,) the mean over samples of each stratum's estimated share ``n_j L_{t_j}``,
            in ascending time.
        sample_strata_bpd: (N, M) each sample's shares.
        sample_prior_bpd: (N,) each sample's prior term.
        edges: (M + 1,) the strata as indices into ``timesteps``: stratum ``j`` holds the steps
            ``edges[j] .. edges[j + 1] - 1`` (index 0 is the decoder's step).
        timesteps: (K,) the model times of the chain's reverse steps, ascending.
        dims: ``D``, the dimensions per sample.
        data_bits: bits of the discretised data, or ``None`` for a continuous density.
    """

    total_bpd: Tensor
    mean_bpd: float
    stderr_bpd: float
    prior_bpd: float
    decoder_bpd: float
    strata_bpd: Tensor
    sample_strata_bpd: Tensor
    sample_prior_bpd: Tensor
    edges: Tensor
    timesteps: Tensor
    dims: int
    data_bits: int | None


def _strata_edges(strata, K: int) -> Tensor:
    """The strata of the steps ``1 .. K - 1`` as edges ``1 = e_0 < ... < e_M = K``."""
    if K < 2:
        raise ScorekitError("the chain has no step besides the decoder's; give a longer grid")
    if isinstance(strata, int) and not isinstance(strata, bool):
        if not 1 <= strata <= K - 1:
            raise ScorekitError(f"strata must be between 1 and the chain's {K - 1} steps after the decoder's, "
                                f"got {strata}")
        return torch.round(torch.linspace(1, K, strata + 1, dtype=_F64)).long().unique()
    try:
        edges = torch.as_tensor(strata, dtype=torch.long).reshape(-1)
    except (TypeError, ValueError, RuntimeError):
        raise ScorekitError(f"strata must be a number of strata or a list of edges, got {strata!r}") from None
    if edges.numel() < 2 or edges[0] != 1 or edges[-1] != K or not bool(torch.all(edges[1:] > edges[:-1])):
        raise ScorekitError(f"strata edges must rise strictly from 1 to the chain's {K} steps (index 0 is the "
                            f"decoder, always evaluated), got {edges.tolist()}")
    return edges


def sampled_elbo(denoiser, process: GaussianProcess, x0: Tensor, *, strata=50, variances=("small",),
                 data_bits: int | None = 8, timesteps=None, generator: torch.Generator | None = None,
                 batch_size: int | None = None, progress: bool = False) -> dict:
    r"""An unbiased estimate of :func:`elbo`'s whole-chain bound from ``M + 1`` network evaluations
    per sample instead of ``K``.

    The bound is ``L_T + L_0 + sum_{k=1}^{K-1} L_k`` over the ``K`` reverse steps of the chain (for
    DDPM ``K = T = 1000``). The prior ``L_T`` is exact and the decoder ``L_0`` is evaluated for
    every sample; the steps ``1 .. K - 1`` are cut into ``M`` contiguous strata, and each sample
    draws one step ``k_j`` uniformly from each stratum ``S_j`` (and its ``x_t ~ q(x_t | x_0)``):

        L^ = L_T + L_0 + sum_j |S_j| L_{k_j},      E[L^] = L_T + L_0 + sum_k E[L_k],

    stratified sampling over ``t`` (the continuous-time loss of Kingma et al. 2021, VDM, is
    estimated the same way, with one ``t`` per sample). A stratum of one step is exact, so steps
    whose terms dwarf their neighbours' (e.g. the cosine schedule's last step, whose ``beta`` is
    clipped at 0.999) can be given their own. The network evaluations are shared by every entry of
    ``variances``: their estimates use the same steps and the same ``x_t``, so their differences
    carry no sampling noise of their own.

    Args:
        denoiser, process, data_bits, timesteps: as for :func:`elbo` (``timesteps`` the chain).
        x0: (N, ...) data.
        strata: the number ``M`` of equal strata (``1 .. K - 1``), or their edges as indices of the
            chain's steps in ascending time, rising from 1 to ``K`` (stratum ``j`` holds
            ``edges[j] .. edges[j+1] - 1``).
        variances: the reverse variances to score, each ``"small"``, ``"large"`` or ``"learned"``
            (a network with a variance head), or a mapping from names to (K,) tables of variances
            (e.g. :func:`scorekit.variances.analytic_variances`).
        generator: the only source of randomness (required): the sampled steps, then one
            ``N(0, I)`` draw per stratum, decoder first.
        batch_size: the most samples per network call (default: all ``N``).
        progress: show a progress bar over the strata.

    Returns:
        ``{name: SampledElbo}`` in the order of ``variances``.
    """
    from ..samplers._common import progress_range

    x0 = _check_data(x0, data_bits)
    if not isinstance(generator, torch.Generator):
        raise ScorekitError("sampled_elbo draws steps and x_t: pass generator=torch.Generator().manual_seed(seed)")
    if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ScorekitError(f"batch_size must be a positive whole number, got {batch_size!r}")
    t_all, s_all = _grid_pairs(process, timesteps)
    K = t_all.numel()
    if isinstance(variances, dict):
        named = dict(variances)
    elif isinstance(variances, (list, tuple)) and all(isinstance(v, str) for v in variances):
        named = {v: v for v in variances}
    else:
        named = {}
    if not named:
        raise ScorekitError(f"variances must be a non-empty tuple of names (small, large, learned) or a mapping "
                            f"from names to tables, got {variances!r}")
    data_step = data_step_variance(process, t_all, s_all)
    tables = {name: _variance_table(v, process, t_all, s_all, data_step) for name, v in named.items()}
    if any(isinstance(tb, str) and tb == "analytic" for tb in tables.values()):
        raise ScorekitError("variance 'analytic' is estimated from every step of the chain; pass the table "
                            "scorekit.variances.analytic_variances(...) under a name of its own")
    learned = any(isinstance(tb, str) and tb == "learned" for tb in tables.values())
    if learned:
        require_variance_head(denoiser)
    edges = _strata_edges(strata, K)
    M = edges.numel() - 1
    sizes = (edges[1:] - edges[:-1]).to(_F64)
    N, D = x0.shape[0], x0[0].numel()
    dev = x0.device
    B = N if batch_size is None else batch_size
    u = torch.rand(N, M, generator=generator, dtype=_F64, device=generator.device).cpu()
    index = torch.cat([torch.zeros(N, 1, dtype=torch.long),
                       edges[:-1] + torch.floor(u * sizes).long()], 1)
    index = torch.minimum(index, torch.cat([torch.zeros(1, dtype=torch.long), edges[1:] - 1]))  # u -> 1 rounding
    weight = torch.cat([torch.ones(1, dtype=_F64), sizes])
    terms = {name: torch.zeros(N, M + 1, dtype=_F64, device=dev) for name in tables}
    with torch.no_grad():
        prior = prior_term(process, x0, t_all[-1].item())
        for j in progress_range(M + 1, progress, "sampled elbo"):
            eps = to_device(torch.randn(x0.shape, generator=generator, dtype=x0.dtype, device=generator.device), dev)
            idx = index[:, j]
            t_host, s_host = t_all[idx], s_all[idx]         # the network's times, read on the CPU
            t_vec, s_vec = to_device(t_host, dev), to_device(s_host, dev)
            x_t = expand_like(process.alpha(t_vec), x0).to(x0.dtype) * x0 \
                + expand_like(process.sigma(t_vec), x0).to(x0.dtype) * eps
            for lo in range(0, N, B):
                sl = slice(lo, min(lo + B, N))
                t_arg = t_all[idx[0]].item() if j == 0 else t_host[sl]
                s_arg = s_all[idx[0]].item() if j == 0 else s_host[sl]
                if learned:
                    x0_pred, learned_log_var = denoiser.x0_and_log_variance(x_t[sl], t_arg, s_arg)
                else:
                    x0_pred = denoiser(x_t[sl], t_arg)
                if not isinstance(x0_pred, Tensor) or x0_pred.shape != x_t[sl].shape:
                    raise ScorekitError(f"the denoiser returned {getattr(x0_pred, 'shape', type(x0_pred))} for "
                                        f"x_t of shape {tuple(x_t[sl].shape)}")
                for name, table in tables.items():
                    log_var = learned_log_var if isinstance(table, str) else to_device(torch.log(table[idx[sl]]), dev)
                    terms[name][sl, j] = step_terms(process, x0[sl], x_t[sl], t_vec[sl], s_vec[sl], x0_pred,
                                                    log_var, data_bits)
    to_bpd = 1.0 / (D * _LOG2)
    prior_bpd = prior * to_bpd
    out = {}
    for name, tm in terms.items():
        shares = tm * to_device(weight, dev) * to_bpd
        total = prior_bpd + shares.sum(1)
        stderr = float(total.std(unbiased=True) / math.sqrt(N)) if N > 1 else float("nan")
        out[name] = SampledElbo(total_bpd=total, mean_bpd=float(total.mean()), stderr_bpd=stderr,
                                prior_bpd=float(prior_bpd.mean()), decoder_bpd=float(shares[:, 0].mean()),
                                strata_bpd=shares[:, 1:].mean(0), sample_strata_bpd=shares[:, 1:],
                                sample_prior_bpd=prior_bpd, edges=edges.clone(), timesteps=t_all.clone(),
                                dims=D, data_bits=data_bits)
    return out


__all__ = ["Elbo", "SampledElbo", "discretized_gaussian_log_likelihood", "elbo", "gaussian_log_likelihood",
           "log_normal_cdf_difference", "normal_kl", "prior_term", "sampled_elbo", "step_terms"]
