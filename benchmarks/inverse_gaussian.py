"""Inverse-problem solvers (scorekit.tasks.inverse) on an exact Gaussian prior: how far each method's
samples are from the closed-form posterior, against the number of steps.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/inverse_gaussian.py            # about 2 minutes

Prior: N(mu, Sigma) on 1 x 4 x 4 images, full non-isotropic covariance (eigenvalues ~0.1 .. ~4),
the exact x0-prediction under DDPM (linear, T = 1000), float64. Operators: a random mask (half
the pixels), 2x2 block-mean downsampling, a random projection to 6 measurements; sigma_y = 0 and
0.2; one measurement y from a draw of the prior. Reference: GaussianMixture.condition_on, the exact
p(x | y) = N(m, C). Sampler: DDIM (eta = 0), started from the exact marginal p(x_T | y), so that
what remains is the method's approximation and the sampler's discretisation.

Measures: |mean - m| (Euclidean), ||Cov - C||_F / ||C||_F, and the rms of ||A x - y||. Moment
matching and PiGDM are affine in x_T for a Gaussian prior (so is DDIM), so their law is computed
exactly (no Monte-Carlo error) by pushing the start's mean and its unit offsets through the
sampler; DPS (zeta = 10) and projection (lambda = 1) are not affine, and are measured on N = 2000
samples, whose own Monte-Carlo floor (the same measures for N exact posterior draws) is printed.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

from scorekit import DDPM
from scorekit.prediction import Denoiser
from scorekit.tasks.inverse import solve_inverse
from scorekit.tasks.operators import Downsample, Mask, RandomProjection
from scorekit.toy import GaussianMixture

F64 = torch.float64
SHAPE, D = (1, 4, 4), 16
PROCESS = DDPM()
AFFINE = ("moment_matching", "pigdm")
METHODS = {"moment_matching": {}, "pigdm": {}, "dps": {"zeta": 10.0}, "projection": {}}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def prior():
    g = gen(0)
    mu = 0.3 * torch.randn(1, D, generator=g, dtype=F64)
    L = torch.randn(D, D, generator=g, dtype=F64) / math.sqrt(D)
    return GaussianMixture([1.0], mu, (L @ L.T + 0.1 * torch.eye(D, dtype=F64))[None], event_shape=SHAPE)


def operators():
    return {"mask": Mask((torch.rand(1, 1, 4, 4, generator=gen(7)) < 0.5).double()),
            "downsample 2x": Downsample(2),
            "projection m=6": RandomProjection(SHAPE, 6, seed=1)}


def law(method, p, A, y, sigma_y, steps, n):
    """(mean, covariance, rms ||A x - y||) of the method's samples."""
    post = p.condition_on(A, y, sigma_y)
    t0 = float(PROCESS.t_max)
    a, s = PROCESS.alpha(t0).item(), PROCESS.sigma(t0).item()
    mean_T = a * post.means[0]
    cov_T = a ** 2 * post.covs()[0] + s ** 2 * torch.eye(D, dtype=F64)
    den = Denoiser(p.x0_model(PROCESS), PROCESS, "x0")
    kw = dict(method=method, sigma_y=sigma_y, num_steps=steps, sampler="ddim", options=METHODS[method],
              generator=gen(steps))
    M = p.measurement_matrix(A)
    if method in AFFINE:
        starts = torch.cat([mean_T[None], mean_T[None] + torch.eye(D, dtype=F64)]).reshape(D + 1, *SHAPE)
        out = solve_inverse(den, A, y.expand((D + 1,) + tuple(y.shape[1:])), x_T=starts, **kw).reshape(D + 1, D)
        J = (out[1:] - out[0]).T
        mean, cov = out[0], J @ cov_T @ J.T
        resid = ((M @ mean - y.reshape(-1)) ** 2).sum() + torch.trace(M @ cov @ M.T)
        return mean, cov, resid.clamp_min(0).sqrt().item()
    chol = torch.linalg.cholesky(cov_T)
    starts = (mean_T + torch.randn(n, D, generator=gen(1), dtype=F64) @ chol.T).reshape(n, *SHAPE)
    x = solve_inverse(den, A, y.expand((n,) + tuple(y.shape[1:])), x_T=starts, **kw).reshape(n, D)
    resid = (x @ M.T - y.reshape(-1)).square().sum(1).mean().sqrt().item()
    return x.mean(0), torch.cov(x.T), resid


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="25,50,100,200")
    parser.add_argument("--n", type=int, default=2000)
    args = parser.parse_args()
    steps = [int(s) for s in args.steps.split(",")]
    p, started = prior(), time.time()
    print("| operator | sigma_y | method | " + " | ".join(f"{s} steps: mean / cov" for s in steps)
          + f" | rms A x - y ({steps[-1]} steps; posterior) |")
    print("|---|---|---|" + "---|" * len(steps) + "---|")
    for name, A in operators().items():
        for sigma_y in (0.0, 0.2):
            x_true = p.sample(1, generator=gen(3), dtype=F64)
            y = A(x_true) + sigma_y * torch.randn(A(x_true).shape, generator=gen(4), dtype=F64)
            post = p.condition_on(A, y, sigma_y)
            m, C = post.means[0], post.covs()[0]
            M = p.measurement_matrix(A)
            post_resid = math.sqrt(max(0.0, (((M @ m - y.reshape(-1)) ** 2).sum() + torch.trace(M @ C @ M.T)).item()))
            draws = post.sample(args.n, generator=gen(5), dtype=F64).reshape(args.n, D)
            floor = ((draws.mean(0) - m).norm().item(), ((torch.cov(draws.T) - C).norm() / C.norm()).item())
            for method in METHODS:
                cells, resid = [], None
                for s in steps:
                    mean, cov, resid = law(method, p, A, y, sigma_y, s, args.n)
                    cells.append(f"{(mean - m).norm().item():.3f} / {((cov - C).norm() / C.norm()).item():.3f}")
                tag = "" if method in AFFINE else f" (MC floor {floor[0]:.3f} / {floor[1]:.3f})"
                print(f"| {name} | {sigma_y} | {method}{tag} | " + " | ".join(cells)
                      + f" | {resid:.3f}; {post_resid:.3f} |", flush=True)
    print(f"\n{time.time() - started:.0f} s")


if __name__ == "__main__":
    main()
