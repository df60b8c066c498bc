"""Training-free editing on an exact Gaussian prior: how close each method comes to its closed form.

    .venv/bin/python benchmarks/editing_gaussian.py            # about two minutes on one CPU thread
    .venv/bin/python benchmarks/editing_gaussian.py --num 4000 # quicker, noisier

The data is one Gaussian ``N(m, S)`` with strong correlations (``D = 3`` for SDEdit, ``D = 6``
with three coordinates known for RePaint; the 1x4x4 image mixture for ILVR and interpolation),
the denoiser is its exact ``E[x_0 | x_t]`` (:mod:`scorekit.toy`), the process DDPM's linear
schedule (T = 1000). Errors are printed in the units of the oracle's own spread, beside the
Monte-Carlo noise floor of the sample size:

1. SDEdit at strengths 0.2, 0.5, 0.8, DDPM ancestral sampling over every step below ``t_0``
   (``small`` and ``large`` variance): the sample mean and covariance against the closed form
   ``E_{x_t0 ~ q(. | y)} p(x_0 | x_t0)``, and the exact law of the sampler's chain (propagated
   in closed form: with a Gaussian prior every step is linear) against it, which isolates the
   discretisation bias from the sampling noise.
2. RePaint with the exact conditional ``p(x_unknown | x_known)`` (``toy.GaussianMixture.condition_on``)
   as the oracle: whitened mean error ``|L^-1 (mean - mu_c)|`` and covariance error
   ``|L^-1 C L^-T - I|_F`` for resamplings r = 1, 3, 10, 30 and jump lengths 1 and 5, 50 steps.
3. ILVR: the largest difference of the sample's and the reference's block means (float32).
4. Interpolation: the largest error of DDIM inversion then decoding of the end points, against
   the number of steps.
"""
from __future__ import annotations

import argparse
import math
import time

import torch

import scorekit
from scorekit import DDPM
from scorekit.tasks import Downsample, Mask, ilvr, interpolate, repaint, sdedit
from scorekit.tasks.segments import sampling_grid, time_at
from scorekit.toy import correlated_gaussian, image_mixture

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


def gain(S, a, s):
    return a * S @ torch.linalg.inv(a * a * S + s * s * torch.eye(S.shape[0], dtype=F64))


def chain_law(p, m, S, ts, guide, variance):
    """Mean and covariance of DDPM's output with the exact (linear) denoiser, step by step."""
    a0, s0 = p.alpha(ts[0]).item(), p.sigma(ts[0]).item()
    eye = torch.eye(m.numel(), dtype=F64)
    mu, C = a0 * guide, s0 * s0 * eye
    for t, s in zip(ts[:-1], ts[1:]):
        a, sg = p.alpha(t).item(), p.sigma(t).item()
        K = gain(S, a, sg)
        c_x0, c_xt, var = (c.item() for c in p.posterior_coefficients(t, s))
        if variance == "large":
            var = (p.transition(t, s)[1] ** 2).item()
        var = 0.0 if s <= p.t_data else var
        M = c_x0 * K + c_xt * eye
        mu = M @ mu + c_x0 * (m - a * K @ m)
        C = M @ C @ M.T + var * eye
    return mu, C


def sdedit_rows(n):
    p = DDPM()
    mix = correlated_gaussian(3, seed=1)
    m, S = mix.means[0], mix.covs()[0]
    guide = torch.tensor([1.5, 0.5, -1.0], dtype=F64)
    D = scorekit.Denoiser(mix.x0_model(p), p, "x0")
    print(f"\nSDEdit, D = 3, {n} samples; mean errors in standard errors (max over coordinates), covariance "
          f"errors as the largest entry over the largest variance (noise floor about {math.sqrt(2 / n):.4f})")
    print("strength  t0   variance  chain mean bias  chain cov bias  sample mean err (SE)  sample cov err")
    for strength in (0.2, 0.5, 0.8):
        t0 = time_at(p, strength)
        a, s = p.alpha(torch.tensor(t0)).item(), p.sigma(torch.tensor(t0)).item()
        K = gain(S, a, s)
        mean, cov = m + K @ (a * (guide - m)), S - a * K @ S + s * s * K @ K.T
        ts = sampling_grid(p, int(t0) + 1, None, None, t_start=t0)
        scale = cov.diagonal().max().item()
        for variance in ("small", "large"):
            mu, C = chain_law(p, m, S, ts, guide, variance)
            x = sdedit(D, guide.expand(n, 3).clone(), strength=strength, num_steps=int(t0) + 1,
                       sampler_options={"variance": variance}, generator=gen(11))
            se = (cov.diagonal() / n).sqrt()
            print(f"{strength:8.1f}  {t0:4.0f} {variance:8s}  {((mu - mean) / cov.diagonal().sqrt()).abs().max():15.1e}"
                  f"  {(C - cov).abs().max().item() / scale:14.4f}  {((x.mean(0) - mean) / se).abs().max():20.2f}"
                  f"  {(torch.cov(x.T) - cov).abs().max().item() / scale:14.4f}")


def repaint_rows(n):
    p = DDPM()
    mix = correlated_gaussian(6, seed=0)
    D = scorekit.Denoiser(mix.x0_model(p), p, "x0")
    known = torch.tensor([[1, 1, 1, 0, 0, 0]], dtype=F64)
    x0 = mix.sample(1, generator=gen(7), dtype=F64)
    post = mix.condition_on(Mask(known), known * x0)
    u = ~known[0].bool()
    mean, cov = post.mean()[u], post.covariance()[u][:, u]
    L = torch.linalg.cholesky(cov)
    print(f"\nRePaint, D = 6 (3 known), 50 DDPM steps (variance large), {n} samples; noise floors: mean "
          f"{math.sqrt(3 / n):.3f}, covariance {math.sqrt(12 / n):.3f}")
    print(" j   r  network evals  whitened mean err  whitened cov err  seconds")
    for j in (1, 5):
        for r in (1, 3, 10, 30):
            start = time.perf_counter()
            calls = []
            counted = lambda x, t: (calls.append(1), D(x, t))[1]              # noqa: E731
            out = repaint(counted, x0.expand(n, 6).clone(), mask=known, resamplings=r, jump_length=j, process=p,
                          num_steps=50, sampler_options={"variance": "large"}, generator=gen(8))
            z = torch.linalg.solve_triangular(L, (out[:, u].mean(0) - mean)[:, None], upper=False)
            W = torch.linalg.solve_triangular(
                L, torch.linalg.solve_triangular(L, torch.cov(out[:, u].T), upper=False).T, upper=False)
            print(f"{j:2d} {r:3d} {len(calls):14d} {z.norm().item():18.3f} "
                  f"{(W - torch.eye(3, dtype=F64)).norm().item():17.3f} {time.perf_counter() - start:8.1f}")


def ilvr_rows():
    p = DDPM()
    mix = image_mixture(3, (1, 4, 4))
    D = scorekit.Denoiser(mix.x0_model(p), p, "x0")
    ref = mix.sample(256, generator=gen(0))
    phi = Downsample(2)
    print("\nILVR, 1x4x4 image mixture, factor 2, 256 samples (float32): largest |phi(x) - phi(y)|")
    print("sampler    steps  range       low-pass error  high-pass rms")
    for sampler in ("ddpm", "ddim", "dpmpp_2m"):
        for rng in ((0.0, 1.0), (0.3, 1.0)):
            out = ilvr(D, ref, factor=2, sampler=sampler, num_steps=50, condition_range=rng, generator=gen(1))
            hp = phi.complement(out).pow(2).mean().sqrt().item()
            print(f"{sampler:9s} {50:6d}  {str(rng):10s} {(phi.project(out) - phi.project(ref)).abs().max().item():15.2e}"
                  f"  {hp:13.3f}")


def interpolation_rows():
    p = DDPM()
    mix = image_mixture(2, (1, 4, 4))
    D = scorekit.Denoiser(mix.x0_model(p), p, "x0")
    xa, xb = mix.sample(64, generator=gen(0), dtype=F64), mix.sample(64, generator=gen(1), dtype=F64)
    print("\nInterpolation: DDIM inversion then decoding of the end points (w = 0, 1), 1x4x4 image mixture, "
          "64 pairs, float64")
    print("steps  largest error  mean error")
    for steps in (10, 40, 160, 640):
        out = interpolate(D, xa, other=xb, weights=[0.0, 1.0], num_steps=steps)
        err = torch.cat([(out[:, 0] - xa).abs().flatten(1), (out[:, 1] - xb).abs().flatten(1)])
        print(f"{steps:5d}  {err.max().item():13.4f}  {err.mean().item():10.5f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--num", type=int, default=20000, help="samples for SDEdit and RePaint (default 20000)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    sdedit_rows(args.num)
    repaint_rows(args.num // 2)
    ilvr_rows()
    interpolation_rows()
    print(f"\n{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
