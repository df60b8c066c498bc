"""The test oracle for the variational bound of a Gaussian chain: every expected term in closed form,
for data N(mu, s^2 I_D) and the exact denoiser E[x_0 | x_t] (shared by test_elbo.py and test_losses.py)."""
import math

import numpy as np


def closed_form_chain_terms(alpha, sigma, mu, s, D, variance, *, prior_std=1.0):
    """E[term] in nats of the chain t_K > ... > t_1 > data, from alpha_k, sigma_k at t_1 .. t_K
    (ascending; the data has alpha = 1, sigma = 0), for data N(mu, s^2 I_D) and the exact denoiser.

    A step t -> s has a_ts = alpha_t / alpha_s, S2_ts = sigma_t^2 - a_ts^2 sigma_s^2 (transition
    variance), the posterior N(c_x0 x_0 + c_xt x_t, b~) with c_x0 = alpha_s S2_ts / sigma_t^2 and
    b~ = S2_ts sigma_s^2 / sigma_t^2; x_0 | x_t has variance v_t = s^2 sigma_t^2 / (alpha_t^2 s^2 +
    sigma_t^2); the model's mean differs by c_x0 (x_0 - E[x_0|x_t]), so
    E KL_t = D/2 (log(S_t / b~_t) + b~_t / S_t - 1) + c_x0^2 D v_t / (2 S_t) with S_t the model variance
    (b~ for "small", S2 for "large"); the decoder E[-log N(x_0; E[x_0|x_1], S_0)] = D/2 log(2 pi S_0)
    + D v_1 / (2 S_0), with S_0 = S2 = sigma_1^2 for "large" and for "small" b~ of the chain's next
    step t_2 -> t_1;
    the prior E KL(N(alpha_K x_0, sigma_K^2) || N(0, P^2)) = D/2 (log(P^2 / sigma_K^2)
    + (sigma_K^2 + alpha_K^2 (mu^2 + s^2)) / P^2 - 1).
    Returns (terms (K,), prior, (c_x0, b~, S, v)) -- the last for :func:`chain_gap`.
    """
    alpha = np.asarray(alpha, dtype=np.float64)
    sigma = np.asarray(sigma, dtype=np.float64)
    a_prev = np.concatenate([[1.0], alpha[:-1]])
    s_prev = np.concatenate([[0.0], sigma[:-1]])
    trans = sigma ** 2 - (alpha / a_prev) ** 2 * s_prev ** 2
    post = trans * s_prev ** 2 / sigma ** 2
    c_x0 = a_prev * trans / sigma ** 2
    S = post.copy() if variance == "small" else trans.copy()
    if variance == "small":
        S[0] = post[1]
    v = s ** 2 * sigma ** 2 / (alpha ** 2 * s ** 2 + sigma ** 2)
    terms = np.empty_like(alpha)
    terms[1:] = D / 2 * (np.log(S[1:] / post[1:]) + post[1:] / S[1:] - 1) + c_x0[1:] ** 2 * D * v[1:] / (2 * S[1:])
    terms[0] = D / 2 * np.log(2 * math.pi * S[0]) + D * v[0] / (2 * S[0])
    P2 = prior_std ** 2
    prior = D / 2 * (np.log(P2 / sigma[-1] ** 2) + (sigma[-1] ** 2 + alpha[-1] ** 2 * (mu ** 2 + s ** 2)) / P2 - 1)
    return terms, prior, (c_x0, post, S, v)


def chain_gap(alpha, sigma, mu, s, D, parts, *, prior_std=1.0):
    """E[bound] - H(data) in nats, computed another way: the bound's expectation exceeds the data's
    entropy by KL(q(x_K) || p(x_K)) + sum_k E KL(q(x_{k-1} | x_k) || p(x_{k-1} | x_k)) (chain rule of
    the KL of the joints in reverse order). For Gaussian data q(x_s | x_t) = N(model mean, b~ + c_x0^2
    v_t) and q(x_0 | x_1) = N(E[x_0|x_1], v_1): each is a KL of Gaussians of equal means,
    D/2 (log(S / V) + V / S - 1); q(x_K) = N(alpha_K mu, alpha_K^2 s^2 + sigma_K^2). Every term is >= 0,
    and is O(step^2) for the steps above the decoder."""
    c_x0, post, S, v = parts
    alpha, sigma = np.asarray(alpha, dtype=np.float64), np.asarray(sigma, dtype=np.float64)
    V = post + c_x0 ** 2 * v
    V[0] = v[0]
    steps = D / 2 * (np.log(S / V) + V / S - 1)
    var_K, P2 = alpha[-1] ** 2 * s ** 2 + sigma[-1] ** 2, prior_std ** 2
    prior = D / 2 * (np.log(P2 / var_K) + (var_K + alpha[-1] ** 2 * mu ** 2) / P2 - 1)
    return steps, prior


def gaussian_entropy(s, D):
    """H(N(mu, s^2 I_D)) = D/2 log(2 pi e s^2) nats: the exact expected NLL of the data."""
    return D / 2 * math.log(2 * math.pi * math.e * s ** 2)


def closed_form_terms(betas, mu, s, D, variance):
    """E[term] in nats of DDPM's whole chain, straight from the betas: ab_t = prod (1 - beta),
    alpha_t = sqrt(ab_t), sigma_t^2 = 1 - ab_t in :func:`closed_form_chain_terms`."""
    ab = np.cumprod(1 - np.asarray(betas, dtype=np.float64))
    terms, prior, _ = closed_form_chain_terms(np.sqrt(ab), np.sqrt(1 - ab), mu, s, D, variance)
    return terms, prior
