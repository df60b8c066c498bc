"""Benchmark scorekit's samplers against every peer (diffusers' schedulers, k-diffusion's samplers)
at low NFE, with exact mixture models.

    ./run bench samplers [--quick]                  # sets up .venv with the bench extras and k-diffusion
    .venv/bin/python benchmarks/samplers.py [--quick] [--problems image_mixture] [--part error|overhead]
    .venv/bin/python benchmarks/samplers.py --render benchmarks/results/samplers.json   # re-write .md/.png

1. Distribution error at equal counted NFE. The "network" is the exact noise prediction
   E[eps | x_t] of a Gaussian mixture (``scorekit.toy``: multiscale_2d, eight_gaussians, and
   image_mixture with component stds down to 0.005) under the DDPM linear schedule (T = 1000), so
   every error comes from the sampler. Samplers: every entry of ``scorekit.SAMPLERS`` registered
   when the benchmark runs, on each grid ``make_timesteps`` offers among trailing, log_snr and
   karras (a few samplers also with option variants, ``OPTION_VARIANTS``), against the peer
   configurations of ``peers.py`` (diffusers: defaults and the settings a knowledgeable user
   picks; k-diffusion on its grids). A sampler's NFE is counted by wrapping the model; for each
   NFE target the number of steps is the largest whose counted NFE does not exceed the target
   (``plan_steps``), so single-step 2nd/3rd-order solvers take fewer steps. All samplers start
   from the same x_T; stochastic ones draw noise from a generator with the same seed.
   Measures: sliced Wasserstein distance (SWD) to fresh exact samples (beside its noise floor),
   mode-weight error, within-mode SWD (samples assigned to their most likely component, whitened
   with its exact law, against N(0, I)), within-mode spread, and for deterministic samplers
   (detected: two noise seeds give the same samples) the RMSE to the probability-flow ODE
   solution from the same x_T, continued to sigma = 0 ("sigma0", see ``solve_probability_flow``).
   Tuned grids: our best deterministic samplers (``TUNED_FAMILIES``; fewer with --quick) also run
   on a grid "tuned" per problem and NFE by ``scorekit.schedule_tuning.tune_timesteps`` against
   the sigma0 solution of a separate batch of noise (``tune_grids``; cached in cache/tuned-*.json,
   --no-tuning leaves them out); they are evaluated on the same x_T and measures as the rest.
   Held-out check (``sampler_heldout.py``; --no-heldout skips it): each side's three best
   configurations per headline row are measured again on fresh batches, each side picks on half
   of them and is reported on the other half, with paired standard errors and verdicts.
2. Per-step overhead with a trivial model, scorekit against diffusers' step loops.

Writes samplers.md, samplers.json and samplers.png (``samplers-quick.*`` with --quick, with
``-<problems>`` when --problems is given) to the output folder (default benchmarks/results/);
ODE reference solutions are cached in its cache/. The headline table: for each NFE 5..20 and
problem, our best configuration, the best peer configuration, their errors and ours/peer.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import json
import logging
import math
import os
import platform
import statistics
import sys
import time
import warnings
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
import scorekit  # noqa: E402
from scorekit import DDPM, make_timesteps  # noqa: E402
from scorekit.errors import ScorekitError  # noqa: E402
from scorekit.metrics import (mode_weight_error, mode_weight_stderr, sliced_wasserstein,  # noqa: E402
                              swd_noise_floor, within_mode_spread, within_mode_swd)
from scorekit.samplers import SAMPLERS  # noqa: E402
from scorekit.sampling import sampler_options  # noqa: E402
from scorekit.toy import GaussianMixture, eight_gaussians, image_mixture, multiscale_2d  # noqa: E402

Tensor = torch.Tensor

SEEDS = {"x_T": 0, "noise": 1, "exact": 2, "floor": 3, "projections": 4, "noise_check": 5, "tune": 6}
NARROW_STD = 0.025          # "narrow" whitened axes: component std at most this (sigma(t=0) = 0.01)
MIXTURES = {"multiscale_2d": multiscale_2d, "eight_gaussians": eight_gaussians, "image_mixture": image_mixture}
HEADLINE_MEASURES = ("swd", "within_swd", "mode_err", "rmse_sigma0")
HEADLINE_MAX_NFE = 20


@dataclass(frozen=True)
class Settings:
    nfes: tuple[int, ...]
    sizes: dict                 # mixture name -> number of samples
    ode_rtol: float
    floor_repeats: int
    overhead_steps: int
    overhead_repeats: int
    tuned: tuple[str, ...] = ()  # families of ``TUNED_FAMILIES`` whose grids are tuned
    tune_sizes: dict | None = None   # mixture name -> size of the separate tuning batch of x_T
    tune_max_evals: int = 0     # sampler runs the grid optimiser may make per sampler and NFE
    heldout_repeats: int = 0    # fresh batches on which the headline's picks are measured again


#: deterministic samplers whose step grids are tuned per problem and NFE (``tune_grids``):
#: family -> (sampler, options), the family names of ``our_configs``
TUNED_FAMILIES = {"unipc": ("unipc", {}), "unipc order 3": ("unipc", {"order": 3}),
                  "dpmpp_2m": ("dpmpp_2m", {}), "dpmpp_3m": ("dpmpp_3m", {}), "deis": ("deis", {}),
                  "dpmpp_2s": ("dpmpp_2s", {}), "dpmpp_3s": ("dpmpp_3s", {})}
TUNE_SIZES = {"multiscale_2d": 256, "eight_gaussians": 256, "image_mixture": 128}

FULL = Settings(nfes=(5, 10, 15, 20, 50),
                sizes={"multiscale_2d": 5000, "eight_gaussians": 5000, "image_mixture": 1000},
                ode_rtol=1e-8, floor_repeats=5, overhead_steps=100, overhead_repeats=15,
                tuned=tuple(TUNED_FAMILIES), tune_sizes=TUNE_SIZES, tune_max_evals=300, heldout_repeats=24)
QUICK = Settings(nfes=(5, 10), sizes={"multiscale_2d": 500, "eight_gaussians": 500, "image_mixture": 200},
                 ode_rtol=1e-6, floor_repeats=3, overhead_steps=20, overhead_repeats=3,
                 tuned=("unipc", "unipc order 3", "dpmpp_2m", "deis"), tune_sizes=TUNE_SIZES,
                 tune_max_evals=100, heldout_repeats=6)


# ---------------------------------------------------------------------------------------------
# The samplers under test
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class OurConfig:
    """A scorekit sampler on a grid, with options; the same fields as ``peers.PeerConfig``."""
    label: str
    family: str
    method: str
    grid: str
    options: tuple = ()
    default: bool = False
    library: str = "scorekit"
    adaptive: bool = False      # NFE set by the tolerance (rtol = atol), not by the number of steps
    tuned: bool = False         # grid "tuned": tuned per problem and NFE on separate noise (``tune_grids``)


GRIDS = ("trailing", "log_snr", "karras")
#: rtol = atol values tried for adaptive solvers, loosest first (their NFE is not set by steps)
ADAPTIVE_TOLERANCES = (3e-1, 1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 1e-4)
#: option variants tried besides the defaults, where the sampler has the option
OPTION_VARIANTS = {"ddim": (("eta=0", {"eta": 0.0}), ("eta=1", {"eta": 1.0})),
                   "ddpm": (("small", {"variance": "small"}), ("large", {"variance": "large"})),
                   "unipc": (("", {}), ("order 3", {"order": 3}))}


def available_grids(process) -> list[str]:
    """The grids of ``GRIDS`` that ``make_timesteps`` offers for the process."""
    grids = []
    for grid in GRIDS:
        try:
            make_timesteps(process, 10, grid)
        except ScorekitError:
            continue
        grids.append(grid)
    return grids


def our_configs(process) -> list[OurConfig]:
    """Every sampler registered in ``scorekit.SAMPLERS`` now, on every available grid.

    An adaptive solver (options ``rtol`` and ``atol``) gets one configuration: a two-step grid
    ending at ``t_min`` (log_snr or karras; only the grid's ends matter to it), its tolerance
    tuned per NFE target.
    """
    grids = available_grids(process)
    configs = []
    for name in SAMPLERS:
        options = sampler_options(name)
        if {"rtol", "atol"} <= set(options):
            ends_at_t_min = [g for g in grids if g != "trailing"]
            if ends_at_t_min:
                configs.append(OurConfig(f"scorekit {name} (tolerance for the NFE): {ends_at_t_min[0]}", name,
                                         name, ends_at_t_min[0], default=True, adaptive=True))
            continue
        for variant, opts in OPTION_VARIANTS.get(name, (("", {}),)):
            if not set(opts) <= set(options):
                continue
            family = f"{name} {variant}".strip()
            for grid in grids:
                configs.append(OurConfig(f"scorekit {family}: {grid}", family, name, grid,
                                         tuple(sorted(opts.items())), default=grid == "trailing"))
    return configs


def tuned_configs(families) -> list[OurConfig]:
    """The samplers of ``TUNED_FAMILIES`` named in ``families`` on grid "tuned"."""
    configs = []
    for family in families:
        method, opts = TUNED_FAMILIES[family]
        if method in SAMPLERS:
            configs.append(OurConfig(f"scorekit {family}: tuned", family, method, "tuned",
                                     tuple(sorted(opts.items())), tuned=True))
    return configs


def run_config(cfg, model, process, x_T: Tensor, num_steps: int, generator: torch.Generator,
               prediction_type: str = "eps", extra_options: dict | None = None,
               timesteps=None) -> Tensor:
    """Run one configuration (ours or a peer's) with ``num_steps`` steps from ``x_T`` (ours on the
    explicit grid ``timesteps`` if given, as a tuned configuration is)."""
    if cfg.library == "scorekit":
        grid = None if timesteps is None else torch.as_tensor(timesteps, dtype=torch.float64)
        return scorekit.sample(model, x_T, process=process, prediction_type=prediction_type,
                               sampler=cfg.method, num_steps=num_steps,
                               spacing=None if grid is not None else cfg.grid, timesteps=grid,
                               generator=generator, **dict(cfg.options), **(extra_options or {}))
    return peers.run_peer(cfg, model, process, x_T, num_steps, generator, prediction_type)


class CountingModel:
    """``model(x_t, t)`` that counts its calls (the NFE), one call per batch evaluation."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __call__(self, x: Tensor, t) -> Tensor:
        self.calls += 1
        return self.model(x, t)


def one_time_model(model):
    """The model at one time for the whole batch: every sampler here calls it with one time for
    all samples; the exact mixture is cheaper with a single (alpha, sigma)."""
    def wrapped(x: Tensor, t) -> Tensor:
        return model(x, torch.as_tensor(t).reshape(-1)[0])
    return wrapped


def plan_steps(cfg, model, process, x_probe: Tensor, targets, prediction_type: str = "eps") -> dict:
    """For each NFE target: the number of steps whose counted NFE is the largest not above it.

    The NFE is counted on a small probe batch. Starting from ``n = target`` the count ``c(n)``
    gives calls per step ``c / n``; the candidates around ``target / (c / n)`` are counted too.
    A configuration that raises with ``n = target`` steps fails at that target (it is not
    silently run with fewer steps).
    Also tells whether the configuration is deterministic (two noise seeds, same samples).
    Returns ``{target: {"steps", "nfe"} or {"error"}}`` and the deterministic flag.

    An adaptive configuration runs two steps with the tightest tolerance of
    ``ADAPTIVE_TOLERANCES`` whose count fits (``{"steps": 2, "nfe", "options"}``); its count
    depends on the batch (one shared step size), so pass the batch it will sample.
    """
    if getattr(cfg, "adaptive", False):
        return plan_tolerance(cfg, model, process, x_probe, targets, prediction_type)
    counter = CountingModel(model)
    counts, outputs, errors = {}, {}, {}

    def count(n: int):
        if n not in counts and n not in errors:
            counter.calls = 0
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    outputs[n] = run_config(cfg, counter, process, x_probe, n,
                                            torch.Generator().manual_seed(SEEDS["noise"]), prediction_type)
                counts[n] = counter.calls
            except Exception as err:                   # a sampler refusing this many steps
                errors[n] = f"{type(err).__name__}: {err}"
        return counts.get(n)

    plans = {}
    for target in targets:
        c = count(target)
        if c is None:                                    # fails with as many steps as the target
            plans[target] = {"error": errors[target]}
            continue
        if c != target and c > 0:
            guess = max(1, round(target * target / c))
            for n in range(max(1, guess - 1), min(target, guess + 1) + 1):
                count(n)
        fits = [n for n, c in counts.items() if c <= target]
        if fits:
            best = max(fits, key=lambda n: (counts[n], -n))
            plans[target] = {"steps": best, "nfe": counts[best]}
        else:
            plans[target] = {"error": errors.get(target) or f"needs more than {target} NFE "
                             f"(counted {min(counts.values()) if counts else '?'})"}
    deterministic = None
    if outputs:
        n = max(outputs)
        try:
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                other = run_config(cfg, counter, process, x_probe, n,
                                   torch.Generator().manual_seed(SEEDS["noise_check"]), prediction_type)
            deterministic = bool(torch.equal(other, outputs[n]))
        except Exception:
            deterministic = None
    return plans, deterministic


def plan_tolerance(cfg, model, process, x: Tensor, targets, prediction_type: str = "eps"):
    counter = CountingModel(model)
    counts = {}
    for tol in ADAPTIVE_TOLERANCES:
        counter.calls = 0
        try:
            with torch.no_grad():
                run_config(cfg, counter, process, x, 2, torch.Generator().manual_seed(SEEDS["noise"]),
                           prediction_type, {"rtol": tol, "atol": tol})
        except Exception:
            continue
        counts[tol] = counter.calls
        if counter.calls > max(targets):
            break
    plans = {}
    for target in targets:
        fits = [tol for tol, c in counts.items() if c <= target]
        if fits:
            tol = min(fits)
            plans[target] = {"steps": 2, "nfe": counts[tol], "options": {"rtol": tol, "atol": tol}}
        else:
            plans[target] = {"error": f"needs more than {target} NFE (counted "
                             f"{min(counts.values()) if counts else '?'} at rtol {max(ADAPTIVE_TOLERANCES):g})"}
    return plans, True


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
    ``sigma = 0`` (the exact flow map: it carries the marginal at ``t = T - 1`` onto the data
    distribution itself, so it is the reference for every sampler that claims to sample the
    data), and ``"t0_D"``, the solution at ``t = 0`` followed by the exact x0-prediction
    ``E[x_0 | x_{t=0}]``, the limit of samplers whose last model call is at ``t = 0`` (its law is
    the data convolved with N(0, 0.01^2) and then shrunk by the posterior mean: components
    narrower than 0.01 come out too narrow).
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


def cached_ode_reference(name: str, mixture, process, x_T: Tensor, rtol: float, cache: Path,
                         seed: int = SEEDS["x_T"]):
    """``solve_probability_flow`` from ``x_T`` (drawn with ``seed``), cached in ``cache``."""
    from safetensors.torch import load_file, save_file

    path = cache / f"ode-{name}-n{x_T.shape[0]}-seed{seed}-rtol{rtol:g}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        if torch.equal(stored.pop("x_T"), x_T):
            return stored, True
    refs = solve_probability_flow(mixture, process, x_T, rtol)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"x_T": x_T.contiguous(), **{k: v.contiguous() for k, v in refs.items()}}, str(path))
    return refs, False


# ---------------------------------------------------------------------------------------------
# Tuned grids
# ---------------------------------------------------------------------------------------------

TUNE_REFERENCE = "sigma0"
TUNE_FREE_LAST = True
#: The objective is the plain mean squared error, the tuning batch's estimate of the squared RMSE
#: the benchmark reports. At low NFE most of it comes from samples the sampler carries to
#: another mode than the exact ODE; trimming the worst 2% of samples or averaging per-sample
#: RMS errors instead was measured worse on the evaluation batch (quick sizes, unipc order 3 at
#: NFE 10: RMSE 0.030 vs 0.054 / 0.053 on image_mixture, 0.045 vs 0.100 / 0.108 on multiscale_2d).
TUNE_METRIC = "mse"


def tuning_key(name: str, cfg: OurConfig, nfe: int, settings: Settings) -> str:
    """The cache key of a tuned grid: problem, sampler, options, NFE and every tuning setting."""
    from scorekit.schedule_tuning import schedule_key

    return (f"{name} | {schedule_key(cfg.method, nfe, dict(cfg.options))} | n={settings.tune_sizes[name]} "
            f"seed={SEEDS['tune']} max_evals={settings.tune_max_evals} free_last={TUNE_FREE_LAST} "
            f"init=best reference={TUNE_REFERENCE} rtol={settings.ode_rtol:g} metric={TUNE_METRIC}")


def tuned_entry(label: str, target: int, nfe: int, tuned, from_cache: bool, *, prefix: str = "") -> tuple[dict, dict]:
    """The sweep plan entry and the report row of one tuned grid (and a progress line)."""
    plan = {"steps": tuned.steps, "nfe": nfe, "timesteps": tuned.timesteps.tolist()}
    row = {"config": label, "target": target, "nfe": nfe, "steps": tuned.steps, "init": tuned.init,
           "evaluations": tuned.evaluations, "rmse_default": math.sqrt(tuned.error_default),
           "rmse_tuned": math.sqrt(tuned.error_tuned), "seconds": tuned.seconds, "cached": from_cache,
           "timesteps": tuned.timesteps.tolist()}
    print(f"{prefix}tuned {label} at NFE {nfe}: RMSE on the tuning batch {row['rmse_default']:.4g} "
          f"(trailing) -> {row['rmse_tuned']:.4g}, {tuned.evaluations} runs, {tuned.seconds:.1f} s"
          + (" (cached)" if from_cache else ""), flush=True)
    return plan, row


def tune_config(cfg, base_plan: dict, targets, denoiser, process, x_tune: Tensor, reference: Tensor,
                path: Path, stored: dict, *, key_of, max_evals_of, prefix: str = "") -> tuple[dict, list[dict]]:
    """Tune ``cfg``'s grid at every NFE target of ``base_plan`` (its plan on the trailing grid) on
    ``x_tune`` against ``reference``, reusing the grids in ``stored`` (the JSON cache at ``path``,
    keyed by ``key_of(nfe)``) and writing new ones there. Returns ``({target: plan}, rows)``."""
    from scorekit.schedule_tuning import TunedSchedule, tune_timesteps

    plan, rows = {}, []
    for target in targets:
        if "error" in base_plan[target]:
            plan[target] = {"error": base_plan[target]["error"]}
            continue
        nfe = base_plan[target]["nfe"]
        key = key_of(nfe)
        from_cache = key in stored
        if not from_cache:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    tuned = tune_timesteps(denoiser, process, cfg.method, nfe, x_tune, reference=reference,
                                           init="best", max_evals=max_evals_of(nfe),
                                           free_last=TUNE_FREE_LAST, **dict(cfg.options))
            except ScorekitError as err:
                plan[target] = {"error": f"tuning: {err}"}
                continue
            stored[key] = tuned.to_json()
            write_json_atomic(path, stored)
        tuned = TunedSchedule.from_json(stored[key], str(path))
        plan[target], row = tuned_entry(cfg.label, target, nfe, tuned, from_cache, prefix=prefix)
        rows.append(row)
    return plan, rows


def tune_grids(name: str, mixture, process: DDPM, settings: Settings, cache: Path, configs: list,
               plans: dict) -> tuple[dict, list[dict]]:
    """Tune the grid of every tuned configuration at every NFE target on a separate batch of noise.

    The tuning batch ``x_T`` (``settings.tune_sizes``, seed ``SEEDS["tune"]``) is never the
    evaluation batch. The objective (``scorekit.schedule_tuning.tune_timesteps``: Nelder-Mead
    over log-SNR grids, at most ``settings.tune_max_evals`` sampler runs, starting from the
    better of the default and log-SNR-uniform grids) is the mean squared error (``TUNE_METRIC``)
    to this benchmark's own reference, the probability-flow ODE continued to sigma = 0
    ("sigma0", by ``solve_probability_flow`` from the tuning batch): the end point the
    benchmark's RMSE uses and the one whose law is the data's (``tune_timesteps``' default
    reference ends with the denoiser at t_min, "t0_D", whose narrow components are contracted).
    ``free_last``: the last
    model time is free (the final step to sigma = 0 is then the sampler's own, as on the
    trailing grid; pinning it to t = 0 measured worse for unipc, dpmpp_2m and dpmpp_2s at NFE 5
    and 10 on multiscale_2d).

    The step count for a target is that of the configuration on the trailing grid
    (``plan_steps``), tuned at its counted NFE. Grids are cached in
    ``cache/tuned-<problem>.json`` under ``tuning_key``. Returns ``{label: ({target: plan},
    True)}`` (a plan has ``steps``, ``nfe`` and the grid ``timesteps``) and one summary row per
    grid.
    """
    from scorekit.prediction import Denoiser

    if not configs:
        return {}, []
    n = settings.tune_sizes[name]
    x_tune = process.prior_sample((n, *mixture.event_shape),
                                  generator=torch.Generator().manual_seed(SEEDS["tune"]))
    start = time.perf_counter()
    refs, cached = cached_ode_reference(name, mixture, process, x_tune, settings.ode_rtol, cache, SEEDS["tune"])
    print(f"[{name}] tuning batch n={n}: ODE reference {'from cache' if cached else 'solved'} in "
          f"{time.perf_counter() - start:.1f} s", flush=True)
    reference = refs[TUNE_REFERENCE]
    denoiser = Denoiser(one_time_model(mixture.eps_model(process)), process, "eps")
    path = cache / f"tuned-{name}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    x_probe = x_tune[:2]
    out, rows = {}, []
    cpu_all, wall_all = time.process_time(), time.perf_counter()
    for cfg in configs:
        base = dataclasses.replace(cfg, label=f"scorekit {cfg.family}: trailing", grid="trailing", tuned=False)
        if base.label not in plans:
            plans[base.label] = plan_steps(base, denoiser.model, process, x_probe, settings.nfes)
        plan, new_rows = tune_config(cfg, plans[base.label][0], settings.nfes, denoiser, process, x_tune,
                                     reference, path, stored,
                                     key_of=lambda nfe: tuning_key(name, cfg, nfe, settings),
                                     max_evals_of=lambda nfe: settings.tune_max_evals, prefix=f"[{name}] ")
        rows += new_rows
        out[cfg.label] = (plan, True)
    print(f"[{name}] tuning: {time.process_time() - cpu_all:.1f} s CPU, {time.perf_counter() - wall_all:.1f} s "
          f"wall ({sum(not r['cached'] for r in rows)} grids tuned, {sum(r['cached'] for r in rows)} from cache)",
          flush=True)
    return out, rows


def write_json_atomic(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


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
# Part 1: error at equal NFE
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


#: pairs that do the same arithmetic on the same x_T and noise: their samples must agree to rounding
#: (diffusers' schedulers built from the process's betas; DDIM with eta = 1 is the ancestral step
#: with the posterior variance). The last pair differs only in how a fractional step is placed
#: between training steps (log sigma vs log alpha_bar interpolation).
SAME_MATH = (("scorekit ddim eta=0: trailing", "diffusers DDIM: trailing"),
             ("scorekit ddpm small: trailing", "diffusers DDPM: trailing"),
             ("scorekit ddim eta=1: trailing", "scorekit ddpm small: trailing"),
             ("scorekit euler: karras", "k-diffusion euler: karras"))


def agreement(samples: dict, nfes) -> list[dict]:
    return [{"pair": f"{a} vs {b}", "nfe": nfe, "max_abs_diff": float((samples[a, nfe] - samples[b, nfe]).abs().max())}
            for a, b in SAME_MATH for nfe in nfes if (a, nfe) in samples and (b, nfe) in samples]


def all_configs(process, include_k_diffusion: bool, tuned=()) -> list:
    """Ours on the standard grids, ours on tuned grids (the families ``tuned``), the peers."""
    return [*our_configs(process), *tuned_configs(tuned), *peers.peer_configs(include_k_diffusion)]


def sweep(name: str, mixture, process: DDPM, x_T: Tensor, exact: Tensor, refs: dict, nfes,
          configs: list, plans: dict) -> tuple[list[dict], dict]:
    """Every configuration at every NFE target: one result row each (and the samples of the
    configurations in ``SAME_MATH``)."""
    compared = {label for pair in SAME_MATH for label in pair}
    samples = {}
    model = CountingModel(one_time_model(mixture.eps_model(process)))
    x_probe = x_T[:2]
    results = []
    start_all = time.perf_counter()
    for cfg in configs:
        adaptive = getattr(cfg, "adaptive", False)
        tuned = getattr(cfg, "tuned", False)
        # an adaptive count depends on the data; a tuned grid on the problem
        key = f"{cfg.label} [{name}]" if adaptive or tuned else cfg.label
        if tuned and key not in plans:
            continue                                       # not tuned for this problem
        if key not in plans:
            plans[key] = plan_steps(cfg, model.model, process, x_T if adaptive else x_probe, nfes)
        plan, deterministic = plans[key]
        for target in nfes:
            row = {"config": cfg.label, "library": cfg.library, "family": cfg.family, "grid": cfg.grid,
                   "default": cfg.default, "target": target, "deterministic": deterministic}
            if "error" in plan[target]:
                results.append({**row, "error": plan[target]["error"]})
                continue
            model.calls = 0
            start = time.perf_counter()
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = run_config(cfg, model, process, x_T, plan[target]["steps"],
                                   torch.Generator().manual_seed(SEEDS["noise"]), "eps", plan[target].get("options"),
                                   plan[target].get("timesteps"))
            except Exception as err:
                results.append({**row, "steps": plan[target]["steps"], "error": f"{type(err).__name__}: {err}"})
                continue
            row.update(steps=plan[target]["steps"], nfe=model.calls, seconds=time.perf_counter() - start,
                       **({"options": plan[target]["options"]} if "options" in plan[target] else {}))
            if not torch.isfinite(x).all():
                results.append({**row, "error": "non-finite samples"})
                continue
            if cfg.label in compared:
                samples[cfg.label, target] = x
            row.update(distribution_metrics(x, mixture, exact))
            if deterministic:
                row.update(ode_errors(x, refs))
            results.append(row)
    print(f"[{name}] {len(configs)} configurations x {len(nfes)} NFE in "
          f"{time.perf_counter() - start_all:.1f} s", flush=True)
    return results, samples


def benchmark_mixture(name: str, settings: Settings, cache: Path, configs: list, plans: dict) -> dict:
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
    tuned_plans, tuning = tune_grids(name, mixture, process, settings, cache,
                                     [c for c in configs if getattr(c, "tuned", False)], plans)
    plans.update({f"{label} [{name}]": plan for label, plan in tuned_plans.items()})
    results, samples = sweep(name, mixture, process, x_T, exact, refs, settings.nfes, configs, plans)
    return {"n": n, "dim": mixture.dim, "event_shape": list(mixture.event_shape),
            "swd_floor": {"mean": floor[0], "std": floor[1], "repeats": settings.floor_repeats},
            "mode_err_stderr_max": float(mode_weight_stderr(mixture, n).max()),
            "ode": {"rtol": settings.ode_rtol, "seconds": ode_seconds, "cached": cached,
                    "sigma_bar_start": sigma_bar(process, process.t_max), "sigma_bar_t0": sigma_bar(process, 0),
                    "rmse_between_end_points": rmse(refs["t0_D"], refs["sigma0"])},
            "baselines": baseline_metrics(mixture, exact, refs), "results": results, "tuning": tuning,
            "agreement": agreement(samples, settings.nfes)}


# ---------------------------------------------------------------------------------------------
# Summaries: the headline (ours vs best peer) and each peer family's defaults vs best
# ---------------------------------------------------------------------------------------------

def best_row(rows: list[dict], metric: str, target: int) -> dict | None:
    """The row with the smallest finite ``metric`` among those with counted NFE <= target."""
    ok = [r for r in rows if r.get("target") == target and r.get("nfe", math.inf) <= target
          and isinstance(r.get(metric), float) and math.isfinite(r[metric])]
    return min(ok, key=lambda r: r[metric]) if ok else None


def is_tuned(row: dict) -> bool:
    """Whether a result row is one of our configurations on a tuned grid."""
    return row.get("grid") == "tuned" or row["config"].endswith(": tuned")


def headline(report: dict, nfes) -> list[dict]:
    """For each problem, NFE target (<= 20) and measure: our best configuration against the best
    peer configuration (each picked per measure), with ratio ours / peer (< 1: we win); also our
    best on the standard grids only (no tuned grid)."""
    rows = []
    for problem, rep in report["mixtures"].items():
        ours = [r for r in rep["results"] if r["library"] == "scorekit"]
        standard = [r for r in ours if not is_tuned(r)]
        theirs = [r for r in rep["results"] if r["library"] != "scorekit"]
        for target in (t for t in nfes if t <= HEADLINE_MAX_NFE):
            for metric in HEADLINE_MEASURES:
                a, b = best_row(ours, metric, target), best_row(theirs, metric, target)
                c = best_row(standard, metric, target)
                exact = rep["baselines"]["exact samples (independent set)"].get(metric)
                rows.append({"problem": problem, "nfe": target, "measure": metric, "exact_set": exact,
                             "ours": a and a["config"], "ours_nfe": a and a["nfe"], "ours_value": a and a[metric],
                             "ours_standard": c and c["config"], "ours_standard_value": c and c[metric],
                             "peer": b and b["config"], "peer_nfe": b and b["nfe"], "peer_value": b and b[metric],
                             "ratio": a[metric] / b[metric] if a and b and b[metric] > 0 else None})
    return rows


def family_summary(results: list[dict], metric: str, nfes) -> list[dict]:
    """Per peer family (and ours): the default configuration's value and the best configuration's."""
    families = {}
    for r in results:
        families.setdefault((r["library"], r["family"]), []).append(r)
    out = []
    for (library, family), rows in families.items():
        entry = {"library": library, "family": family}
        for target in nfes:
            default = [r for r in rows if r["default"] and r["target"] == target]
            value = default[0].get(metric) if default else None
            best = best_row(rows, metric, target)
            entry[str(target)] = {"default": value, "best": best and best[metric], "best_config": best and best["config"]}
        out.append(entry)
    return out


# ---------------------------------------------------------------------------------------------
# Part 2: per-step overhead
# ---------------------------------------------------------------------------------------------

def zeros_model(x: Tensor, t) -> Tensor:
    return torch.zeros_like(x)


def diffusers_loop(scheduler, model, x: Tensor, num_steps: int, generator: torch.Generator) -> Tensor:
    """The sampling loop of diffusers' DDPM/DDIM pipelines."""
    scheduler.set_timesteps(num_steps)
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x, generator=generator).prev_sample
    return x


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
    for method, cls in (("ddpm", DDPMScheduler), ("ddim", DDIMScheduler)):
        runs[f"scorekit.sample {method}"] = functools.partial(
            scorekit.sample, zeros_model, x, betas=process.betas, sampler=method, num_steps=steps,
            generator=generator)
        runs[f"scorekit.samplers.{method}"] = functools.partial(
            SAMPLERS[method], zeros_model, process, x, grid, generator=generator)
        runs[f"diffusers {method.upper()}Scheduler"] = functools.partial(
            diffusers_loop, cls(clip_sample=False), zeros_model, x, steps, generator)
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
    rows = []
    for shape_name, event_shape in (("2-D", (2,)), ("3x8x8", (3, 8, 8))):
        for batch in (1, 64):
            x = torch.randn((batch, *event_shape), generator=torch.Generator().manual_seed(0))
            runs = overhead_runs(x, settings.overhead_steps)
            us = {name: microseconds_per_step(run, settings.overhead_steps, settings.overhead_repeats)
                  for name, run in runs.items()}
            rows.append({"shape": shape_name, "batch": batch, "us_per_step": us})
            print(f"[overhead] {shape_name} batch {batch}: "
                  + ", ".join(f"{k} {v:.0f} us" for k, v in us.items()), flush=True)
    return rows


# ---------------------------------------------------------------------------------------------
# Reporting
# ---------------------------------------------------------------------------------------------

METRICS = {
    "swd": "Sliced W2 to exact samples",
    "within_swd": "Within-mode SWD (whitened samples against N(0, I))",
    "mode_err": "Mode-weight error (max_k |w_k - w_k exact|)",
    "rmse_sigma0": "RMSE to the probability-flow ODE solution at sigma = 0 (deterministic samplers)",
    "spread": "Within-mode spread, all axes (1 = exact)",
    "narrow_spread": f"Within-mode spread on narrow axes, component std <= {NARROW_STD} (1 = exact)",
    "rmse_t0_D": "RMSE to the ODE solution at t = 0 followed by the exact x0-prediction (deterministic samplers)",
}
FULL_TABLE_METRICS = ("swd", "within_swd", "mode_err", "rmse_sigma0", "narrow_spread", "rmse_t0_D")


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


def headline_section(rows: list[dict]) -> str:
    header = ["problem", "NFE", "measure", "exact set", "ours: best config (NFE)", "ours",
              "best peer config (NFE)", "peer", "ours/peer", "ours, standard grids only"]
    table = [[r["problem"], r["nfe"], r["measure"], r.get("exact_set"),
              f"{r['ours']} ({r['ours_nfe']})" if r["ours"] else "-", r["ours_value"],
              f"{r['peer']} ({r['peer_nfe']})" if r["peer"] else "-", r["peer_value"], r["ratio"],
              "-" if not r.get("ours_standard") else fmt(r["ours_standard_value"])
              if r["ours_standard"] == r["ours"] else f"{fmt(r['ours_standard_value'])} ({r['ours_standard']})"]
             for r in rows]
    return markdown_table(header, table)


def cell(row: dict | None, metric: str) -> str:
    if row is None:
        return "-"
    if "error" in row:
        return "n/a" if row["error"].startswith("needs more") else "fail"
    value = fmt(row.get(metric))
    return value if row.get("nfe") == row["target"] or value == "-" else f"{value} ({row['nfe']})"


def metric_table(results: list[dict], metric: str, nfes) -> str:
    by_key = {(r["config"], r["target"]): r for r in results}
    labels = list(dict.fromkeys(r["config"] for r in results))
    rows = [[label] + [cell(by_key.get((label, nfe)), metric) for nfe in nfes] for label in labels
            if metric not in ("rmse_sigma0", "rmse_t0_D") or any(metric in by_key.get((label, nfe), {}) for nfe in nfes)]
    return markdown_table(["configuration \\ NFE target"] + [str(nfe) for nfe in nfes], rows)


def family_table(results: list[dict], metric: str, nfes) -> str:
    rows = []
    for entry in family_summary(results, metric, nfes):
        rows.append([f"{entry['library']} {entry['family']}"]
                    + [f"{fmt(entry[str(n)]['default'])} / {fmt(entry[str(n)]['best'])}" for n in nfes])
    return markdown_table(["family: defaults / best \\ NFE"] + [str(n) for n in nfes], rows)


def failures(results: list[dict]) -> str:
    lines = [f"- {r['config']} at NFE {r['target']}: {r['error']}" for r in results
             if "error" in r and not r["error"].startswith("needs more")]
    return "\n".join(lines) if lines else "none"


def mixture_section(name: str, report: dict, nfes) -> str:
    floor, ode = report["swd_floor"], report["ode"]
    parts = [f"### {name}: n = {report['n']}, D = {report['dim']} (event shape {tuple(report['event_shape'])})",
             f"SWD noise floor (two exact sets of n): {floor['mean']:.4g} +- {floor['std']:.2g} "
             f"(std over {floor['repeats']} repeats); mode-weight standard error at this n: up to "
             f"{report['mode_err_stderr_max']:.3g}.",
             f"ODE reference: DOP853, rtol = atol = {ode['rtol']:g}, sigma_bar from {ode['sigma_bar_start']:.4g} "
             f"to {ode['sigma_bar_t0']:.4g} (t = 0) and on to 0; RMSE between its two end points "
             f"{ode['rmse_between_end_points']:.3g}.",
             "Baselines (same measures; RMSE to the two ODE end points):"]
    tuning_parts = tuning_section(report.get("tuning") or [])
    cols = list(METRICS)
    parts.append(markdown_table(["set"] + cols, [[label] + [vals.get(c) for c in cols]
                                                 for label, vals in report["baselines"].items()]))
    parts += tuning_parts
    for metric in HEADLINE_MEASURES:
        parts += [f"**Per family, {METRICS[metric]}: defaults / best configuration**",
                  family_table(report["results"], metric, nfes)]
    for metric in FULL_TABLE_METRICS:
        parts += [f"**All configurations: {METRICS[metric]}** (counted NFE in brackets where below the "
                  "target; n/a: the configuration needs more calls)",
                  metric_table(report["results"], metric, nfes)]
    agree = {}
    for row in report["agreement"]:
        agree.setdefault(row["pair"], {})[row["nfe"]] = row["max_abs_diff"]
    parts += ["**Agreement on identical inputs and noise: max |difference| of the samples**",
              markdown_table(["pair \\ NFE target"] + [str(nfe) for nfe in nfes],
                             [[pair] + [vals.get(nfe) for nfe in nfes] for pair, vals in agree.items()]),
              "**Failures** (exceptions and non-finite samples)", failures(report["results"])]
    return "\n\n".join(parts)


def tuning_section(rows: list[dict]) -> list[str]:
    if not rows:
        return []
    table = [[r["config"], r["nfe"], r["steps"], r["rmse_default"], r["rmse_tuned"], r["init"], r["evaluations"],
              r["seconds"], "yes" if r["cached"] else "no",
              " ".join(f"{t:.0f}" for t in r["timesteps"][:-1])] for r in rows]
    cpu = sum(r["seconds"] for r in rows)
    return ["**Tuned grids** (on the separate tuning batch; RMSE to its ODE solution at sigma = 0 "
            f"on the trailing grid and on the tuned grid; tuning time {cpu:.0f} s in all, cached grids count the time "
            "they took when tuned)",
            markdown_table(["configuration", "NFE", "steps", "RMSE trailing", "RMSE tuned", "start", "runs",
                            "seconds", "cached", "model times"], table)]


def overhead_section(rows: list[dict], settings: Settings) -> str:
    parts = [f"Microseconds per step (median of {settings.overhead_repeats} runs of "
             f"{settings.overhead_steps} steps, torch.set_num_threads(1), model returns zeros); "
             "ratio = scorekit / diffusers."]
    for method in ("ddpm", "ddim"):
        header = ["shape", "batch", f"scorekit.sample {method}", f"scorekit.samplers.{method}",
                  f"diffusers {method.upper()}Scheduler", "ratio sample", "ratio plain"]
        table = []
        for row in rows:
            us = row["us_per_step"]
            theirs = us[header[4]]
            table.append([row["shape"], row["batch"], us[header[2]], us[header[3]], theirs,
                          us[header[2]] / theirs, us[header[3]] / theirs])
        parts.append(markdown_table(header, table))
    return "\n\n".join(parts)


def environment() -> dict:
    return {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "python": platform.python_version(), "platform": platform.platform(),
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "diffusers": diffusers.__version__, "k-diffusion": peers.k_diffusion_version(),
            "numpy": np.__version__, "scipy": scipy.__version__, "scorekit": scorekit.__version__,
            "scorekit samplers": ", ".join(SAMPLERS)}


REFERENCE_NOTE = (
    "RMSE is measured against the probability-flow ODE solution from the same x_T continued to "
    "sigma = 0 ('sigma0'): that flow map carries the marginal at t = T-1 onto the data distribution "
    "itself, so it is what an exact deterministic sampler returns. The other end point, 't0_D' (the "
    "ODE to t = 0, sigma_bar = 0.01, then the exact x0-prediction), is what samplers that stop at t = 0 "
    "and return their x0-prediction converge to; its law is not the data's (components narrower than "
    "0.01 are contracted, see the baselines), so it is reported only in the last table. Samplers whose "
    "last model call is at t = 0 cannot get closer to 'sigma0' than about the RMSE between the two end "
    "points, given per problem.")


TUNING_NOTE = (
    "Configurations on grid 'tuned' run our deterministic samplers on step grids tuned per problem "
    "and NFE by scorekit.schedule_tuning.tune_timesteps (Nelder-Mead over log-SNR grids, the last "
    "model time free) to minimise the mean squared error to the ODE solution at sigma = 0 on a "
    "separate batch of noise (its own seed; never the evaluation batch), then evaluated like every "
    "other configuration. "
    "The headline's last column is our best on the standard grids (trailing, log_snr, karras) only, "
    "with its configuration where it differs.")


def markdown_report(report: dict, settings: Settings) -> str:
    env = report["environment"]
    nfes = settings.nfes
    parts = ["# Sampler benchmark: scorekit against diffusers and k-diffusion at equal NFE",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in env.items()),
             f"Run time {report['seconds']:.0f} s.",
             "Best configurations are picked per problem, NFE and measure, separately for scorekit "
             "and for the peers (each side's oracle choice); a configuration counts at an NFE target "
             "if its counted NFE is at most the target.", REFERENCE_NOTE]
    if any(r.get("tuning") for r in report["mixtures"].values()):
        parts.append(TUNING_NOTE + f" Tuning: at most {settings.tune_max_evals} sampler runs per grid; "
                     "tuning batch sizes " + ", ".join(f"{k} {v}" for k, v in (settings.tune_sizes or {}).items())
                     + ".")
    if report["mixtures"]:
        parts += ["## Headline: our best against the best peer (ours/peer < 1: scorekit wins)",
                  "'exact set': the measure for an independent set of exact samples of the same size, "
                  "i.e. the metric's resolution; differences below it are sampling noise.",
                  headline_section(report["headline"])]
        if report.get("heldout"):
            from sampler_heldout import heldout_section
            parts += ["## Held-out check of the distribution measures", heldout_section(report["heldout"])]
        parts.append("## Details per problem")
        parts += [mixture_section(name, rep, nfes) for name, rep in report["mixtures"].items()]
    if report["overhead"]:
        parts += ["## Per-step overhead", overhead_section(report["overhead"], settings)]
    return "\n\n".join(parts) + "\n"


PLOTS = (("swd", "sliced W2", "log"), ("within_swd", "within-mode SWD", "log"),
         ("mode_err", "mode-weight error", "log"), ("rmse_sigma0", "RMSE to ODE (sigma = 0)", "log"))


def plot(report: dict, nfes, path: Path) -> None:
    """Best configuration per library at each NFE, per problem and measure."""
    mixtures = report["mixtures"]
    fig, axes = plt.subplots(len(mixtures), len(PLOTS), figsize=(4 * len(PLOTS) + 2, 3.4 * len(mixtures)),
                             squeeze=False)
    styles = {"scorekit": ("-", "o", "C0"), "scorekit, standard grids": ("-.", ".", "C3"),
              "diffusers": ("--", "x", "C1"), "k-diffusion": (":", "s", "C2")}
    for row, (name, rep) in zip(axes, mixtures.items()):
        exact = rep["baselines"]["exact samples (independent set)"]
        has_tuned = any(is_tuned(r) for r in rep["results"])
        for ax, (metric, title, yscale) in zip(row, PLOTS):
            for library, (ls, marker, color) in styles.items():
                if library == "scorekit, standard grids":
                    if not has_tuned:
                        continue
                    rows = [r for r in rep["results"] if r["library"] == "scorekit" and not is_tuned(r)]
                else:
                    rows = [r for r in rep["results"] if r["library"] == library]
                best = [best_row(rows, metric, nfe) for nfe in nfes]
                values = [b[metric] if b else math.nan for b in best]
                if not all(math.isnan(v) for v in values):
                    ax.plot(nfes, values, ls=ls, marker=marker, color=color, ms=4, label=f"best {library}")
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
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / fig.get_figwidth(), 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def without_nan(obj):
    """NaN -> None, so that the JSON file is standard JSON."""
    if isinstance(obj, dict):
        return {k: without_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [without_nan(v) for v in obj]
    return None if isinstance(obj, float) and math.isnan(obj) else obj


def quiet_peers() -> None:
    """diffusers logs a warning per scheduler it adjusts; torchsde warns on float round-off."""
    diffusers.utils.logging.set_verbosity_error()
    logging.getLogger("diffusers").setLevel(logging.ERROR)


def render(path: Path) -> int:
    """Rewrite ``path``'s markdown report and plot from its JSON results."""
    report = json.loads(path.read_text())
    defaults = {cfg.label: cfg.default for cfg in all_configs(DDPM(schedule="linear", num_steps=1000), True)}
    for rep in report["mixtures"].values():                 # the current choice of each family's default
        for row in rep["results"]:
            row["default"] = defaults.get(row["config"], row["default"])
    stored = report["settings"]
    settings = Settings(**{**stored, "nfes": tuple(stored["nfes"])})
    report["headline"] = headline(report, settings.nfes)
    path.with_suffix(".md").write_text(markdown_report(report, settings))
    if report["mixtures"]:
        plot(report, settings.nfes, path.with_suffix(".png"))
    print(f"wrote {path.with_suffix('.md')}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and NFE (5, 10): a smoke run")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results",
                        help="output folder (default: benchmarks/results/)")
    parser.add_argument("--part", choices=("all", "error", "overhead"), default="all",
                        help="run only the distribution-error part or only the per-step overhead")
    parser.add_argument("--problems", default=",".join(MIXTURES),
                        help=f"comma-separated subset of {', '.join(MIXTURES)}")
    parser.add_argument("--no-k-diffusion", action="store_true", help="leave out k-diffusion's samplers")
    parser.add_argument("--no-tuning", action="store_true", help="leave out our samplers on tuned grids")
    parser.add_argument("--no-heldout", action="store_true",
                        help="skip measuring the headline's picks again on fresh batches (sampler_heldout.py)")
    parser.add_argument("--render", type=Path, default=None,
                        help="only rewrite the .md and .png of an earlier run from its .json")
    args = parser.parse_args(argv)
    if args.render is not None:
        return render(args.render)
    torch.set_num_threads(1)
    quiet_peers()
    settings = QUICK if args.quick else FULL
    problems = [p for p in args.problems.split(",") if p]
    unknown = set(problems) - set(MIXTURES)
    if unknown:
        parser.error(f"unknown problem(s) {', '.join(sorted(unknown))}; choose from {', '.join(MIXTURES)}")
    stem = ("samplers-quick" if args.quick else "samplers") + ("" if args.part == "all" else f"-{args.part}")
    if args.problems != ",".join(MIXTURES):
        stem += "-" + "-".join(problems)
    args.out.mkdir(parents=True, exist_ok=True)

    start = time.perf_counter()
    configs = all_configs(DDPM(schedule="linear", num_steps=1000), not args.no_k_diffusion,
                          settings.tuned if not args.no_tuning else ())
    print(f"{len(configs)} configurations: {sum(c.library == 'scorekit' for c in configs)} scorekit "
          f"(samplers {', '.join(SAMPLERS)}; grids {', '.join(available_grids(DDPM()))}; tuned grids for "
          f"{', '.join(c.family for c in configs if getattr(c, 'tuned', False)) or 'none'})", flush=True)
    plans = {}
    report = {"environment": environment(), "settings": {**settings.__dict__, "nfes": list(settings.nfes)},
              "mixtures": {name: benchmark_mixture(name, settings, args.out / "cache", configs, plans)
                           for name in problems} if args.part != "overhead" else {},
              "overhead": benchmark_overhead(settings) if args.part != "error" else []}
    report["plans"] = {label: {"deterministic": det, **{str(k): v for k, v in plan.items()}}
                       for label, (plan, det) in plans.items()}
    report["headline"] = headline(report, settings.nfes)
    if report["mixtures"] and settings.heldout_repeats and not args.no_heldout:
        from sampler_heldout import heldout
        report["heldout"] = heldout(report, settings.heldout_repeats)
    report["seconds"] = time.perf_counter() - start

    text = markdown_report(report, settings)
    print("\n" + text[:6000])
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(without_nan(report), indent=1))
    if report["mixtures"]:
        plot(report, settings.nfes, args.out / f"{stem}.png")
    print(f"wrote {args.out / stem}.md, .json" + (", .png" if report["mixtures"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
