"""The test oracle for DDPM's variational bound: every expected term in closed form, for data
N(mu, s^2 I_D) and the exact denoiser E[x_0 | x_t] (shared by test_elbo.py and test_losses.py)."""
import math

import numpy as np


def closed_form_terms(betas, mu, s, D, variance):
    """E[term] in nats for data N(mu, s^2 I_D) and the exact denoiser, straight from the betas.

    ab_t = prod (1 - beta); x_0 | x_t has variance v_t = s^2 (1 - ab_t) / (ab_t s^2 + 1 - ab_t); the
    posterior N(c_x0 x_0 + c_xt x_t, b~_t) with c_x0 = sqrt(ab_{t-1}) beta_t / (1 - ab_t),
    b~_t = beta_t (1 - ab_{t-1}) / (1 - ab_t); the model's mean differs by c_x0 (x_0 - E[x_0|x_t]), so
    E KL_t = D/2 (log(S_t / b~_t) + b~_t / S_t - 1) + c_x0^2 D v_t / (2 S_t) with S_t the model variance;
    the decoder E[-log N(x_0; E[x_0|x_0'], S_0)] = D/2 log(2 pi S_0) + D v_0 / (2 S_0), with S_0 = b~_1
    for "small" (b~_0 = 0) and beta_0 for "large";
    the prior E KL(N(sqrt(ab_T) x_0, 1 - ab_T) || N(0, 1)) = D/2 (-log(1 - ab_T) - ab_T + ab_T (mu^2 + s^2)).
    """
    betas = np.asarray(betas, dtype=np.float64)
    ab = np.cumprod(1 - betas)
    ab_prev = np.concatenate([[1.0], ab[:-1]])
    post = betas * (1 - ab_prev) / (1 - ab)
    S = post.copy() if variance == "small" else betas.copy()
    if variance == "small":
        S[0] = post[1]
    c_x0 = np.sqrt(ab_prev) * betas / (1 - ab)
    v = s ** 2 * (1 - ab) / (ab * s ** 2 + 1 - ab)
    terms = np.empty_like(betas)
    terms[1:] = D / 2 * (np.log(S[1:] / post[1:]) + post[1:] / S[1:] - 1) + c_x0[1:] ** 2 * D * v[1:] / (2 * S[1:])
    terms[0] = D / 2 * np.log(2 * math.pi * S[0]) + D * v[0] / (2 * S[0])
    prior = D / 2 * (-np.log(1 - ab[-1]) - ab[-1] + ab[-1] * (mu ** 2 + s ** 2))
    return terms, prior
