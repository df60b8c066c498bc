"""Benchmark scorekit's samplers against diffusers' schedulers, with exact mixture models.

    .venv/bin/python benchmarks/samplers.py [--quick] [--out DIR]

1. Distribution error against the number of model evaluations (NFE). The "network" is the
   exact noise prediction E[eps | x_t] of a Gaussian mixture (``scorekit.toy``) under the DDPM
   linear schedule (T = 1000), so every error comes from the sampler. All samplers start from
   the same x_T; the stochastic ones draw their noise from generators with the same seed, so
   scorekit and diffusers samplers that do the same arithmetic must give the same samples (the
   "agreement" table checks this). Measures: sliced Wasserstein distance to fresh exact samples
   (beside its noise floor), mode-weight error, within-mode SWD, within-mode spread (1 = exact,
   on all axes and on the narrow axes), and for deterministic samplers the RMSE to a float64
   solution of the probability-flow ODE from the same x_T.
2. Per-step overhead with a trivial model, scorekit against diffusers' step loops.

Writes samplers.md, samplers.json and samplers.png (``samplers-quick.*`` with --quick) to the
output folder (default benchmarks/results/); ODE reference solutions are cached in its cache/.
"""
from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import diffusers
import matplotlib
import numpy as np
import scipy
import torch
from diffusers import DDIMScheduler, DDPMScheduler
from scipy.integrate import solve_ivp

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import matplotlib.ticker  # noqa: E402

import scorekit  # noqa: E402
from scorekit import DDPM, make_timesteps  # noqa: E402
from scorekit.metrics import (mode_weight_error, sliced_wasserstein, swd_noise_floor,  # noqa: E402
                              within_mode_spread, within_mode_swd)
from scorekit.samplers import SAMPLERS  # noqa: E402
from scorekit.toy import GaussianMixture, image_mixture, multiscale_2d  # noqa: E402

Tensor = torch.Tensor

SEEDS = {"x_T": 0, "noise": 1, "exact": 2, "floor": 3, "projections": 4}
NARROW_STD = 0.025          # "narrow" whitened axes: component std at most this (sigma(t=0) = 0.01)
MIXTURES = {"multiscale_2d": multiscale_2d, "image_mixture": image_mixture}


@dataclass(frozen=True)
class Settings:
    nfes: tuple[int, ...]
    sizes: dict                 # mixture name -> number of samples
    ode_rtol: float
    floor_repeats: int
    overhead_steps: int
    overhead_repeats: int


FULL = Settings(nfes=(5, 10, 20, 50, 100, 1000), sizes={"multiscale_2d": 5000, "image_mixture": 1000},
                ode_rtol=1e-8, floor_repeats=5, overhead_steps=100, overhead_repeats=15)
QUICK = Settings(nfes=(5, 20), sizes={"multiscale_2d": 1000, "image_mixture": 200},
                 ode_rtol=1e-6, floor_repeats=3, overhead_steps=20, overhead_repeats=3)


# ---------------------------------------------------------------------------------------------
# The samplers under test
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SamplerConfig:
    library: str                # "scorekit" or "diffusers"
    method: str                 # scorekit sampler name, or "DDPM" / "DDIM" (diffusers scheduler)
    spacing: str
    options: tuple = ()         # scorekit sampler options as (name, value) pairs
    deterministic: bool = False


CONFIGS = {
    "ddpm small, trailing": SamplerConfig("scorekit", "ddpm", "trailing", (("variance", "small"),)),
    "ddpm small, leading": SamplerConfig("scorekit", "ddpm", "leading", (("variance", "small"),)),
    "ddpm large, trailing": SamplerConfig("scorekit", "ddpm", "trailing", (("variance", "large"),)),
    "ddim eta=0, trailing": SamplerConfig("scorekit", "ddim", "trailing", (("eta", 0.0),), True),
    "ddim eta=0, leading": SamplerConfig("scorekit", "ddim", "leading", (("eta", 0.0),), True),
    "ddim eta=0, linspace": SamplerConfig("scorekit", "ddim", "linspace", (("eta", 0.0),), True),
    "ddim eta=1, trailing": SamplerConfig("scorekit", "ddim", "trailing", (("eta", 1.0),)),
    "diffusers DDPM, leading (default)": SamplerConfig("diffusers", "DDPM", "leading"),
    "diffusers DDPM, trailing": SamplerConfig("diffusers", "DDPM", "trailing"),
    "diffusers DDIM, leading (default)": SamplerConfig("diffusers", "DDIM", "leading", deterministic=True),
    "diffusers DDIM, trailing": SamplerConfig("diffusers", "DDIM", "trailing", deterministic=True),
}

# Pairs that do the same arithmetic on the same x_T with the same noise: their samples must agree
# to rounding. (diffusers' DDPM adds noise of std 1e-10 on a last step from t > 0; ddim with
# eta = 1 is the ancestral step with the posterior variance.)
SAME_MATH = (
    ("ddim eta=0, trailing", "diffusers DDIM, trailing"),
    ("ddim eta=0, leading", "diffusers DDIM, leading (default)"),
    ("ddpm small, trailing", "diffusers DDPM, trailing"),
    ("ddpm small, leading", "diffusers DDPM, leading (default)"),
    ("ddim eta=1, trailing", "ddpm small, trailing"),
)

SCHEDULERS = {"DDPM": DDPMScheduler, "DDIM": DDIMScheduler}


def diffusers_scheduler(method: str, spacing: str):
    """diffusers' scheduler with its defaults (linear betas 1e-4 .. 0.02, T = 1000, eps
    prediction, DDPM 'fixed_small' variance, DDIM eta = 0 and set_alpha_to_one), except
    ``clip_sample=False``: the default clips x0-predictions to [-1, 1], which the mixtures exceed."""
    return SCHEDULERS[method](clip_sample=False, timestep_spacing=spacing)


def diffusers_loop(scheduler, model, x: Tensor, num_steps: int, generator: torch.Generator) -> Tensor:
    """The sampling loop of diffusers' DDPM/DDIM pipelines."""
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x


def model_times(cfg: SamplerConfig, process: DDPM, nfe: int) -> tuple[int, ...]:
    """The steps at which the sampler calls the model."""
    if cfg.library == "scorekit":
        return tuple(int(t) for t in make_timesteps(process, nfe, cfg.spacing)[:-1])
    scheduler = diffusers_scheduler(cfg.method, cfg.spacing)
    scheduler.set_timesteps(nfe)
    return tuple(int(t) for t in scheduler.timesteps)


def run_sampler(cfg: SamplerConfig, model, process: DDPM, x_T: Tensor, nfe: int) -> Tensor:
    generator = torch.Generator().manual_seed(SEEDS["noise"])
    with torch.no_grad():
        if cfg.library == "scorekit":
            return scorekit.sample(model, x_T, process=process, prediction_type="eps",
                                   sampler=cfg.method, num_steps=nfe, spacing=cfg.spacing,
                                   generator=generator, **dict(cfg.options))
        return diffusers_loop(diffusers_scheduler(cfg.method, cfg.spacing), model, x_T, nfe, generator)


def one_time_model(model):
    """The model at one time for the whole batch. scorekit passes t as (N,) copies of one step,
    diffusers as a 0-d tensor; the exact mixture is cheaper with a single (alpha, sigma)."""
    def wrapped(x: Tensor, t) -> Tensor:
        return model(x, torch.as_tensor(t).reshape(-1)[0])
    return wrapped


# ---------------------------------------------------------------------------------------------
# The exact probability-flow ODE
# ---------------------------------------------------------------------------------------------

def sigma_bar(process: DDPM, t: float) -> float:
    """``sigma(t) / alpha(t) = sqrt((1 - alpha_bar_t) / alpha_bar_t)``."""
    return float(process.sigma(t) / process.alpha(t))


def solve_probability_flow(mixture: GaussianMixture, process: DDPM, x_T: Tensor,
                           rtol: float) -> dict[str, Tensor]:
    r"""The probability-flow ODE from ``x_T`` at ``t = T - 1`` in float64.

    In ``x_bar = x / alpha`` and ``s = sigma / alpha`` the data is noised as
    ``x_bar = x_0 + s eps`` and the ODE reads ``dx_bar / ds = E[eps | x_t]``, exact for the
    mixture. DOP853 integrates from ``s(T-1) = 157`` to ``s(0) = 0.0100`` and on to ``s = 0``.

    Returns the two end points a sampler can aim at: ``"sigma0"``, the ODE solution at
    ``sigma = 0`` (the exact flow map), and ``"t0_D"``, the solution at ``t = 0`` followed by
    the exact x0-prediction ``E[x_0 | x_{t=0}]``, the limit of samplers whose last model call is
    at ``t = 0``.
    """
    shape = x_T.shape

    def rhs(s, y):
        x_bar = torch.from_numpy(y).reshape(shape)
        return mixture.posterior_noise(x_bar, 1.0, s).reshape(-1).numpy()

    def integrate(y, s_from, s_to):
        sol = solve_ivp(rhs, (s_from, s_to), y, method="DOP853", rtol=rtol, atol=rtol, t_eval=[s_to])
        if not sol.success:
            raise RuntimeError(f"ODE solver failed: {sol.message}")
        return sol.y[:, -1]

    s_T, s_0 = sigma_bar(process, process.t_max), sigma_bar(process, 0)
    y_T = (x_T.to(torch.float64) / process.alpha(process.t_max)).reshape(-1).numpy()
    y_t0 = integrate(y_T, s_T, s_0)
    y_sigma0 = integrate(y_t0, s_0, 0.0)
    x_bar_t0 = torch.from_numpy(y_t0).reshape(shape)
    return {"sigma0": torch.from_numpy(y_sigma0).reshape(shape),
            "t0_D": mixture.posterior_mean(x_bar_t0, 1.0, s_0)}


def cached_ode_reference(name: str, mixture, process, x_T: Tensor, rtol: float, cache: Path):
    from safetensors.torch import load_file, save_file

    path = cache / f"ode-{name}-n{x_T.shape[0]}-seed{SEEDS['x_T']}-rtol{rtol:g}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        if torch.equal(stored.pop("x_T"), x_T):
            return stored, True
    refs = solve_probability_flow(mixture, process, x_T, rtol)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"x_T": x_T.contiguous(), **{k: v.contiguous() for k, v in refs.items()}}, str(path))
    return refs, False


# ---------------------------------------------------------------------------------------------
# Measures
# ---------------------------------------------------------------------------------------------

def narrow_spread(x: Tensor, mixture: GaussianMixture, max_std: float = NARROW_STD) -> float:
    """``within_mode_spread`` restricted to the whitened axes whose component std is at most
    ``max_std``: the ratio of sample to true std there (1 = exact; nan if there are none)."""
    comp = mixture.classify(x)
    z = mixture.whiten(x, comp)
    narrow = mixture.eigenvalues.sqrt() <= max_std
    total = weight = 0.0
    for k in range(mixture.num_components):
        zk = z[comp == k][:, narrow[k]]
        if zk.shape[0] >= 2 and zk.shape[1] > 0:
            w = float(mixture.weights[k])
            total += w * float(zk.var(dim=0).mean().sqrt())
            weight += w
    return total / weight if weight else math.nan


def rmse(x: Tensor, ref: Tensor) -> float:
    return float((x.to(torch.float64) - ref).pow(2).mean().sqrt())


def distribution_metrics(x: Tensor, mixture: GaussianMixture, exact: Tensor) -> dict:
    projections = torch.Generator().manual_seed(SEEDS["projections"])
    return {"swd": sliced_wasserstein(x, exact, generator=projections),
            "mode_err": mode_weight_error(x, mixture),
            "within_swd": within_mode_swd(x, mixture),
            "spread": within_mode_spread(x, mixture),
            "narrow_spread": narrow_spread(x, mixture)}


def ode_errors(x: Tensor, refs: dict[str, Tensor]) -> dict:
    return {f"rmse_{name}": rmse(x, ref) for name, ref in refs.items()}


# ---------------------------------------------------------------------------------------------
# Part 1: error against NFE
# ---------------------------------------------------------------------------------------------

def exact_samples(mixture, n: int, seed: int) -> Tensor:
    return mixture.sample(n, generator=torch.Generator().manual_seed(seed))


def baseline_metrics(mixture, exact: Tensor, refs: dict[str, Tensor]) -> dict:
    """The measures for an independent exact set and for the two ODE end points."""
    other = exact_samples(mixture, exact.shape[0], SEEDS["exact"] + 100)
    baselines = {"exact samples (independent set)": distribution_metrics(other, mixture, exact)}
    for label, key in (("ODE to sigma=0", "sigma0"), ("ODE to t=0, then x0-prediction", "t0_D")):
        baselines[label] = {**distribution_metrics(refs[key], mixture, exact), **ode_errors(refs[key], refs)}
    return baselines


def sweep(name: str, mixture, process: DDPM, x_T: Tensor, exact: Tensor, refs: dict, nfes):
    """Every sampler at every NFE: the result rows and the samples, keyed by (sampler, nfe)."""
    model = one_time_model(mixture.eps_model(process))
    results, samples, computed = [], {}, {}
    for label, cfg in CONFIGS.items():
        start = time.perf_counter()
        for nfe in nfes:
            key = (cfg.library, cfg.method, cfg.options, model_times(cfg, process, nfe))
            if key not in computed:                     # e.g. every spacing is 999 .. 0 at NFE = T
                computed[key] = run_sampler(cfg, model, process, x_T, nfe)
            x = samples[label, nfe] = computed[key]
            row = {"sampler": label, "nfe": nfe, **distribution_metrics(x, mixture, exact)}
            if cfg.deterministic:
                row.update(ode_errors(x, refs))
            results.append(row)
        print(f"[{name}] {label}: {time.perf_counter() - start:.1f} s", flush=True)
    return results, samples


def agreement(samples: dict, nfes) -> list[dict]:
    return [{"pair": f"{a} vs {b}", "nfe": nfe,
             "max_abs_diff": float((samples[a, nfe] - samples[b, nfe]).abs().max())}
            for a, b in SAME_MATH for nfe in nfes]


def benchmark_mixture(name: str, settings: Settings, cache: Path) -> dict:
    mixture, process, n = MIXTURES[name](), DDPM(schedule="linear", num_steps=1000), settings.sizes[name]
    x_T = process.prior_sample((n, *mixture.event_shape), generator=torch.Generator().manual_seed(SEEDS["x_T"]))
    exact = exact_samples(mixture, n, SEEDS["exact"])

    start = time.perf_counter()
    refs, cached = cached_ode_reference(name, mixture, process, x_T, settings.ode_rtol, cache)
    ode_seconds = time.perf_counter() - start
    print(f"[{name}] n={n}, D={mixture.dim}: ODE reference {'from cache' if cached else 'solved'} "
          f"in {ode_seconds:.1f} s", flush=True)
    floor = swd_noise_floor(mixture, n, repeats=settings.floor_repeats,
                            generator=torch.Generator().manual_seed(SEEDS["floor"]))
    results, samples = sweep(name, mixture, process, x_T, exact, refs, settings.nfes)
    return {"n": n, "dim": mixture.dim, "event_shape": list(mixture.event_shape),
            "swd_floor": {"mean": floor[0], "std": floor[1], "repeats": settings.floor_repeats},
            "ode": {"rtol": settings.ode_rtol, "seconds": ode_seconds, "cached": cached,
                    "sigma_bar_start": sigma_bar(process, process.t_max), "sigma_bar_t0": sigma_bar(process, 0),
                    "rmse_between_end_points": rmse(refs["t0_D"], refs["sigma0"])},
            "baselines": baseline_metrics(mixture, exact, refs), "results": results,
            "agreement": agreement(samples, settings.nfes)}


def grid_summary(nfes) -> list[dict]:
    """First and last model step of each spacing (the end time is always t = -1)."""
    process = DDPM(schedule="linear", num_steps=1000)
    rows = []
    for spacing in ("trailing", "leading", "linspace"):
        cfg = SamplerConfig("scorekit", "ddim", spacing)
        times = {nfe: model_times(cfg, process, nfe) for nfe in nfes}
        rows.append({"spacing": spacing, **{str(nfe): f"{t[0]} .. {t[-1]}" for nfe, t in times.items()}})
    return rows


# ---------------------------------------------------------------------------------------------
# Part 2: per-step overhead
# ---------------------------------------------------------------------------------------------

def zeros_model(x: Tensor, t) -> Tensor:
    return torch.zeros_like(x)


def overhead_runs(x: Tensor, steps: int) -> dict:
    """name -> zero-argument callable running ``steps`` sampler steps on ``x`` with a zero model.

    ``scorekit.sample`` builds the process and grid on every call (that is its interface); the
    plain sampler functions get them prebuilt; diffusers' schedulers are built once and
    ``set_timesteps`` runs inside each call, as in its pipelines.
    """
    process = DDPM(schedule="linear", num_steps=1000)
    grid = make_timesteps(process, steps)
    generator = torch.Generator().manual_seed(SEEDS["noise"])
    runs = {}
    for method in ("ddpm", "ddim"):
        runs[f"scorekit.sample {method}"] = functools.partial(
            scorekit.sample, zeros_model, x, betas=process.betas, sampler=method, num_steps=steps,
            generator=generator)
        runs[f"scorekit.samplers.{method}"] = functools.partial(
            SAMPLERS[method], zeros_model, process, x, grid, generator=generator)
        scheduler = diffusers_scheduler(method.upper(), "leading")
        runs[f"diffusers {method.upper()}Scheduler"] = functools.partial(
            diffusers_loop, scheduler, zeros_model, x, steps, generator)
    return runs


def microseconds_per_step(run, steps: int, repeats: int) -> float:
    with torch.no_grad():
        run()                                           # warm-up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
    return statistics.median(times) / steps * 1e6


def benchmark_overhead(settings: Settings) -> list[dict]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    rows = []
    try:
        for shape_name, event_shape in (("2-D", (2,)), ("3x8x8", (3, 8, 8))):
            for batch in (1, 64):
                x = torch.randn((batch, *event_shape), generator=torch.Generator().manual_seed(0))
                runs = overhead_runs(x, settings.overhead_steps)
                us = {name: microseconds_per_step(run, settings.overhead_steps, settings.overhead_repeats)
                      for name, run in runs.items()}
                rows.append({"shape": shape_name, "batch": batch, "us_per_step": us})
                print(f"[overhead] {shape_name} batch {batch}: "
                      + ", ".join(f"{k} {v:.0f} us" for k, v in us.items()), flush=True)
    finally:
        torch.set_num_threads(threads)
    return rows


def overhead_ratios(row: dict, method: str) -> dict:
    us = row["us_per_step"]
    theirs = us[f"diffusers {method.upper()}Scheduler"]
    return {"scorekit.sample": us[f"scorekit.sample {method}"] / theirs,
            "plain function": us[f"scorekit.samplers.{method}"] / theirs}


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

METRICS = {
    "swd": "Sliced W2 to exact samples",
    "mode_err": "Mode-weight error (max_k |w_k - w_k exact|)",
    "within_swd": "Within-mode SWD (whitened samples against N(0, I))",
    "spread": "Within-mode spread, all axes (1 = exact)",
    "narrow_spread": f"Within-mode spread on narrow axes, component std <= {NARROW_STD} (1 = exact)",
    "rmse_sigma0": "RMSE to the probability-flow ODE solution at sigma = 0 (deterministic samplers)",
    "rmse_t0_D": "RMSE to the ODE solution at t = 0 followed by the exact x0-prediction (deterministic samplers)",
}


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def markdown_table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def metric_table(report: dict, metric: str, nfes) -> str:
    by_key = {(r["sampler"], r["nfe"]): r for r in report["results"]}
    rows = [[label] + [by_key[label, nfe].get(metric) for nfe in nfes]
            for label in CONFIGS if metric in by_key[label, nfes[0]]]
    return markdown_table(["sampler \\ NFE"] + [str(nfe) for nfe in nfes], rows)


def mixture_section(name: str, report: dict, nfes) -> str:
    floor, ode = report["swd_floor"], report["ode"]
    parts = [f"### {name}: n = {report['n']}, D = {report['dim']} (event shape {tuple(report['event_shape'])})",
             f"SWD noise floor (two exact sets of n): {floor['mean']:.4g} +- {floor['std']:.2g} "
             f"(std over {floor['repeats']} repeats).",
             f"ODE reference: DOP853, rtol = atol = {ode['rtol']:g}, sigma_bar from {ode['sigma_bar_start']:.4g} "
             f"to {ode['sigma_bar_t0']:.4g} (t = 0) and on to 0; RMSE between its two end points "
             f"{ode['rmse_between_end_points']:.3g}.",
             "Baselines (same measures; RMSE to the two ODE end points):"]
    cols = list(METRICS)
    parts.append(markdown_table(["set"] + cols, [[label] + [vals.get(c) for c in cols]
                                                 for label, vals in report["baselines"].items()]))
    for metric, title in METRICS.items():
        parts += [f"**{title}**", metric_table(report, metric, nfes)]
    agree = {}
    for row in report["agreement"]:
        agree.setdefault(row["pair"], {})[row["nfe"]] = row["max_abs_diff"]
    parts += ["**Agreement on identical inputs and noise: max |difference| of the samples**",
              markdown_table(["pair \\ NFE"] + [str(nfe) for nfe in nfes],
                             [[pair] + [vals[nfe] for nfe in nfes] for pair, vals in agree.items()])]
    return "\n\n".join(parts)


def overhead_section(rows: list[dict], settings: Settings) -> str:
    parts = [f"Microseconds per step (median of {settings.overhead_repeats} runs of "
             f"{settings.overhead_steps} steps, torch.set_num_threads(1), model returns zeros); "
             "ratio = scorekit / diffusers."]
    for method in ("ddpm", "ddim"):
        header = ["shape", "batch", f"scorekit.sample {method}", f"scorekit.samplers.{method}",
                  f"diffusers {method.upper()}Scheduler", "ratio sample", "ratio plain"]
        table = []
        for row in rows:
            us, ratio = row["us_per_step"], overhead_ratios(row, method)
            table.append([row["shape"], row["batch"], us[header[2]], us[header[3]], us[header[4]],
                          ratio["scorekit.sample"], ratio["plain function"]])
        parts.append(markdown_table(header, table))
    return "\n\n".join(parts)


def environment() -> dict:
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "diffusers": diffusers.__version__, "numpy": np.__version__, "scipy": scipy.__version__,
            "scorekit": scorekit.__version__}


def markdown_report(report: dict, settings: Settings) -> str:
    env = report["environment"]
    parts = ["# Sampler benchmark", "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
             f"Run time {report['seconds']:.0f} s.", "## Grids (first .. last model step; all end at t = -1)",
             markdown_table(["spacing \\ NFE"] + [str(n) for n in settings.nfes],
                            [[r["spacing"]] + [r[str(n)] for n in settings.nfes] for r in report["grids"]]),
             "## Distribution error against NFE"]
    parts += [mixture_section(name, rep, settings.nfes) for name, rep in report["mixtures"].items()]
    if report["overhead"]:
        parts += ["## Per-step overhead", overhead_section(report["overhead"], settings)]
    return "\n\n".join(parts) + "\n"


PLOTS = (("swd", "sliced W2", "log"), ("mode_err", "mode-weight error", "log"),
         ("within_swd", "within-mode SWD", "log"), ("narrow_spread", "spread, narrow axes (1 = exact)", "linear"),
         ("rmse_sigma0", "RMSE to ODE (sigma = 0)", "log"))


def line_colors() -> dict:
    """One colour per scorekit sampler; a diffusers sampler takes the colour of its scorekit twin."""
    ours = [label for label, cfg in CONFIGS.items() if cfg.library == "scorekit"]
    colors = dict(zip(ours, plt.get_cmap("tab10").colors))
    colors.update({b: colors[a] for a, b in SAME_MATH if CONFIGS[b].library == "diffusers"})
    return colors


def plot(report: dict, nfes, path: Path) -> None:
    mixtures = report["mixtures"]
    fig, axes = plt.subplots(len(mixtures), len(PLOTS), figsize=(4 * len(PLOTS) + 2.5, 3.6 * len(mixtures)),
                             squeeze=False)
    colors = line_colors()
    for row, (name, rep) in zip(axes, mixtures.items()):
        by_key = {(r["sampler"], r["nfe"]): r for r in rep["results"]}
        exact = rep["baselines"]["exact samples (independent set)"]
        for ax, (metric, title, yscale) in zip(row, PLOTS):
            for label, cfg in CONFIGS.items():
                values = [by_key[label, nfe].get(metric, math.nan) for nfe in nfes]
                if not all(math.isnan(v) for v in values):
                    theirs = cfg.library == "diffusers"
                    ax.plot(nfes, values, "--" if theirs else "-", marker="x" if theirs else "o", ms=4,
                            lw=1.0 if theirs else 1.6, color=colors[label], label=label)
            if metric in exact:
                ax.axhline(exact[metric], color="k", lw=0.8, ls=":", label="exact samples (independent set)")
            ax.set_xscale("log")
            ax.set_yscale(yscale)
            ax.set_xticks(nfes, [str(n) for n in nfes])
            ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
            ax.set_title(f"{name}: {title}", fontsize=9)
            ax.set_xlabel("NFE")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, fontsize=7, loc="center right")
    fig.tight_layout(rect=(0, 0, 1 - 2.3 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def without_nan(obj):
    """NaN -> None, so that the JSON file is standard JSON."""
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_nan(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and NFE (5, 20): a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="output folder (default: benchmarks/results/)")
    parser.add_argument("--part", choices=("all", "error", "overhead"), default="all",
                        help="run only the distribution-error part or only the per-step overhead")
    args = parser.parse_args(argv)
    settings = QUICK if args.quick else FULL
    stem = ("samplers-quick" if args.quick else "samplers") + ("" if args.part == "all" else f"-{args.part}")
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    report = {"environment": environment(), "settings": {**settings.__dict__, "nfes": list(settings.nfes)},
              "grids": grid_summary(settings.nfes),
              "mixtures": {name: benchmark_mixture(name, settings, args.out / "cache") for name in MIXTURES}
              if args.part != "overhead" else {},
              "overhead": benchmark_overhead(settings) if args.part != "error" else []}
    report["seconds"] = time.perf_counter() - start

    text = markdown_report(report, settings)
    print("\n" + text)
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(without_nan(report), indent=1))
    if report["mixtures"]:
        plot(report, settings.nfes, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.md, .json, .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
