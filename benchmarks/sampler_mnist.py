"""Low-NFE samplers on a trained MNIST model: scorekit's samplers against diffusers' and
k-diffusion's, by their distance to a high-accuracy solution of the model's own probability-flow ODE.

    .venv/bin/python benchmarks/sampler_mnist.py                       # the MNIST quality benchmark's run
    .venv/bin/python benchmarks/sampler_mnist.py --run /tmp/mnist-run --quick
    .venv/bin/python benchmarks/sampler_mnist.py --select "dpmpp|DPMSolver" --n 64
    ./run bench sampler_mnist [options]                                # the same through the set-up script
    .venv/bin/python benchmarks/sampler_mnist.py --render benchmarks/results/sampler_mnist.json

The model: the scorekit run in ``benchmarks/results/cache/mnist_quality-scorekit-run`` (written by
``benchmarks/mnist_quality.py``; any run folder works, e.g. one made by ``scorekit train --data
mnist:../shared/data/mnist-test --data-option pad_to=32 --model tiny --steps 20 --out /tmp/run``),
its EMA weights, with the run's own process and prediction type (the quality run: DDPM cosine
schedule, T = 1000, v-prediction). The peers get exactly that schedule (``trained_betas``) and
prediction type (diffusers ``v_prediction``; k-diffusion's ``DiscreteVDDPMDenoiser`` scalings).

The reference: from the same x_T (``--n`` images, default 32), the probability-flow ODE of the
trained model, ``dx_bar / d log s = s eps_theta(alpha x_bar, t(s))`` in ``x_bar = x / alpha`` and
``s = sigma / alpha`` (``t(s)`` through ``process.t_from_log_snr(-2 log s)``, fractional steps),
solved by ``scipy.integrate.solve_ivp`` (RK45, rtol = atol = ``--rtol``, default 1e-5, in float64
with the network in float32) from ``t = T - 1`` down to ``t = 0``, then the model's x0-prediction
there. The network is defined only for ``t >= 0``: every sampler's last model call is at ``t >= 0``
and the limit of every sampler that ends at the data is this end point (for the exact mixtures of
``benchmarks/samplers.py`` the ODE can be continued to sigma = 0; here ``sigma_bar(0)`` is 0.0064,
below the 1/127.5 quantisation step of the images).

Samplers: the deterministic configurations of ``benchmarks/samplers.py`` (every scorekit sampler
registered at run time on each grid, the peers of ``benchmarks/peers.py``; stochastic ones have
no per-sample reference and are skipped), at equal counted NFE (5, 10, 15, 20; the step count
per target is planned by counting model calls on one image). Measure: RMSE to the reference over
all pixels (images in [-1, 1]); a headline of our best against the best peer per NFE. (The Fréchet
distance of digit-classifier features, as ``benchmarks/mnist_quality.py`` computes it, is not
reported: a few dozen images do not estimate a 128-d covariance.)

Tuned grids: a few of our best deterministic samplers (``TUNED``: unipc orders 2 and 3, dpmpp_2m,
deis; ``QUICK_TUNED`` with --quick) also run on a grid "tuned" per NFE target by
``scorekit.schedule_tuning.tune_timesteps`` (``tune_grids``) on a separate batch of noise
(``--tune-n`` images, seed ``SEEDS["tune"]``) against that batch's own reference (the same ODE
solve, cached alike), with at most ``--tune-budget // NFE`` sampler runs; the grids are cached in
``cache/mnist-tuned-<run>.json``. They are evaluated on the evaluation batch like every other
configuration, whatever ``--select`` says (``--no-tuning`` leaves them out); the headline also
shows our best on the standard grids only.

Confirmation (``--confirm``, default 256 images; ``--confirm-only JSON`` for an earlier run):
picking the best of a hundred configurations on a few dozen images favours whichever side is
lucky on them, so each NFE's two picks run again on fresh images (seed ``SEEDS["confirm"]``) with
their own reference, and the paired per-image difference gives a standard error and a verdict
(with a second, per-image verdict from the Wilcoxon signed-rank test).

Writes ``sampler_mnist.md`` / ``.json`` (``sampler_mnist-quick.*`` with --quick) to ``--out``
(default benchmarks/results/); the reference is cached in its ``cache/``.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from scipy.integrate import solve_ivp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import samplers as bench  # noqa: E402
from scorekit.train import checkpoint_denoiser, load_checkpoint  # noqa: E402

Tensor = torch.Tensor

SEEDS = {"x_T": 0, "noise": 1, "tune": 2, "confirm": 3}
CONFIRM_N = 256             # fresh images on which the headline's picks are compared again
#: deterministic samplers whose grids are tuned per NFE (families of ``samplers.TUNED_FAMILIES``)
TUNED = ("unipc", "unipc order 3", "dpmpp_2m", "deis")
QUICK_TUNED = ("unipc order 3", "dpmpp_2m")
TUNE_N = 16                 # size of the separate tuning batch of x_T (seed SEEDS["tune"])
#: network evaluations (of the tuning batch) one tuning may spend: max_evals = budget // NFE sampler
#: runs, about 1-2 minutes of one CPU core for the MNIST model at TUNE_N images
TUNE_NFE_BUDGET = 500
TUNE_FREE_LAST = True
DEFAULT_RUN = Path(__file__).resolve().parent / "results" / "cache" / "mnist_quality-scorekit-run"


def probability_flow_reference(denoiser, x_T: Tensor, rtol: float) -> tuple[Tensor, int]:
    r"""The trained model's probability-flow ODE from ``x_T`` at ``t = T - 1`` to ``t = 0``,
    then ``D(x, 0)``.

    With ``x_bar = x / alpha``, ``s = sigma / alpha`` and ``u = log s`` the ODE (Song et al. 2021,
    eq. 13, in the variables of DDIM / Karras et al. 2022, eq. 4 with ``s(t) = alpha_t``) reads

        d x_bar / d u = s * eps_theta(x, t),   x = alpha x_bar,   eps_theta = (x - alpha D(x, t)) / sigma.

    Returns the samples (float64) and the number of network evaluations.
    """
    process = denoiser.process
    shape = x_T.shape
    calls = [0]

    def eps(x_bar: Tensor, s: float) -> tuple[Tensor, float]:
        t = float(process.t_from_log_snr(torch.tensor(-2 * math.log(s), dtype=torch.float64)))
        alpha, sigma = float(process.alpha(t)), float(process.sigma(t))
        x = (alpha * x_bar).to(torch.float32)
        calls[0] += 1
        with torch.no_grad():
            x0 = denoiser(x, t).to(torch.float64)
        return (alpha * x_bar - alpha * x0) / sigma, t

    def rhs(u, y):
        s = math.exp(u)
        e, _ = eps(torch.from_numpy(y).reshape(shape), s)
        return (s * e).reshape(-1).numpy()

    t_start, t_end = process.t_max, process.t_min
    s_start, s_end = (float(process.sigma(t) / process.alpha(t)) for t in (t_start, t_end))
    y0 = (x_T.to(torch.float64) / float(process.alpha(t_start))).reshape(-1).numpy()
    sol = solve_ivp(rhs, (math.log(s_start), math.log(s_end)), y0, method="RK45", rtol=rtol, atol=rtol,
                    t_eval=[math.log(s_end)])
    if not sol.success:
        raise RuntimeError(f"ODE solver failed: {sol.message}")
    x_bar = torch.from_numpy(sol.y[:, -1]).reshape(shape)
    alpha = float(process.alpha(t_end))
    with torch.no_grad():
        x0 = denoiser((alpha * x_bar).to(torch.float32), float(t_end)).to(torch.float64)
    return x0, calls[0] + 1


def run_tag(run: Path, ckpt) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"{run.resolve().name}-step{ckpt.step}")


def cached_reference(run: Path, ckpt, denoiser, x_T: Tensor, rtol: float, cache: Path, seed: int = SEEDS["x_T"]):
    from safetensors.torch import load_file, save_file

    path = cache / f"mnist-ode-{run_tag(run, ckpt)}-n{x_T.shape[0]}-seed{seed}-rtol{rtol:g}.safetensors"
    if path.exists():
        stored = load_file(str(path))
        if torch.equal(stored["x_T"], x_T):
            return stored["x0"], int(stored["nfe"]), True
    x0, nfe = probability_flow_reference(denoiser, x_T, rtol)
    cache.mkdir(parents=True, exist_ok=True)
    save_file({"x_T": x_T.contiguous(), "x0": x0.contiguous(), "nfe": torch.tensor(nfe)}, str(path))
    return x0, nfe, False


def tuning_max_evals(nfe: int, budget: int = TUNE_NFE_BUDGET) -> int:
    """Sampler runs one tuning at ``nfe`` may make: ``budget`` network evaluations in all."""
    return max(1, budget // nfe)


def tuning_key(tag: str, cfg, nfe: int, n: int, rtol: float, budget: int) -> str:
    """The cache key of a tuned grid: model, sampler, options, NFE and every tuning setting."""
    from scorekit.schedule_tuning import schedule_key

    return (f"{tag} | {schedule_key(cfg.method, nfe, dict(cfg.options))} | n={n} seed={SEEDS['tune']} "
            f"max_evals={tuning_max_evals(nfe, budget)} free_last={TUNE_FREE_LAST} init=best "
            f"reference=ode_t0_D rtol={rtol:g} metric=mse")


def tune_grids(configs, denoiser, process, prediction_type: str, x_tune: Tensor, reference: Tensor, nfes,
               cache: Path, tag: str, rtol: float, budget: int = TUNE_NFE_BUDGET) -> tuple[dict, list[dict]]:
    """Tune the grid of every tuned configuration at every NFE target on the tuning batch ``x_tune``.

    ``x_tune`` (seed ``SEEDS["tune"]``) is never the evaluation batch. The objective
    (``scorekit.schedule_tuning.tune_timesteps``: Nelder-Mead over log-SNR grids, the last model
    time free, starting from the better of the trailing and log-SNR-uniform grids, at most
    ``budget // NFE`` sampler runs) is the mean squared error to ``reference``, this benchmark's
    own end point (the probability-flow ODE of ``probability_flow_reference`` from ``x_tune``,
    then ``D(x, 0)``). The step count for a target is that of the configuration on the trailing
    grid (``plan_steps``), tuned at its counted NFE. Grids are cached in
    ``cache/mnist-tuned-<run>.json`` under ``tuning_key``. Returns ``{label: {target: plan}}``
    (a plan has ``steps``, ``nfe`` and the grid ``timesteps``) and one summary row per grid.
    """
    import dataclasses

    path = cache / f"mnist-tuned-{tag}.json"
    stored = json.loads(path.read_text()) if path.exists() else {}
    out, rows = {}, []
    for cfg in configs:
        base = dataclasses.replace(cfg, label=f"scorekit {cfg.family}: trailing", grid="trailing", tuned=False)
        base_plan, _ = bench.plan_steps(base, denoiser.model, process, x_tune[:1], nfes, prediction_type)
        out[cfg.label], new_rows = bench.tune_config(
            cfg, base_plan, nfes, denoiser, process, x_tune, reference, path, stored,
            key_of=lambda nfe: tuning_key(tag, cfg, nfe, x_tune.shape[0], rtol, budget),
            max_evals_of=lambda nfe: tuning_max_evals(nfe, budget))
        rows += new_rows
    return out, rows


def sweep(configs, model, process, prediction_type: str, x_T: Tensor, reference: Tensor, nfes,
          tuned_plans: dict | None = None) -> tuple[list, dict]:
    counter = bench.CountingModel(model)
    results, plans = [], {}
    for cfg in configs:
        start = time.perf_counter()
        if getattr(cfg, "deterministic", True) is False:      # a peer known to draw noise
            continue
        if getattr(cfg, "tuned", False):
            if cfg.label not in (tuned_plans or {}):
                continue                                        # not tuned
            plan, deterministic = tuned_plans[cfg.label], True
        else:
            probe = x_T if getattr(cfg, "adaptive", False) else x_T[:1]   # an adaptive count depends on the batch
            plan, deterministic = bench.plan_steps(cfg, model, process, probe, nfes, prediction_type)
        plans[cfg.label] = {"deterministic": deterministic, **{str(k): v for k, v in plan.items()}}
        if not deterministic:
            continue
        for target in nfes:
            row = {"config": cfg.label, "library": cfg.library, "family": cfg.family, "grid": cfg.grid,
                   "default": cfg.default, "target": target}
            if "error" in plan[target]:
                results.append({**row, "error": plan[target]["error"]})
                continue
            counter.calls = 0
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    x = bench.run_config(cfg, counter, process, x_T, plan[target]["steps"],
                                         torch.Generator().manual_seed(SEEDS["noise"]), prediction_type,
                                         plan[target].get("options"), plan[target].get("timesteps"))
            except Exception as err:
                results.append({**row, "error": f"{type(err).__name__}: {err}"})
                continue
            row.update(steps=plan[target]["steps"], nfe=counter.calls)
            if torch.isfinite(x).all():
                row["rmse"] = bench.rmse(x, reference)
            else:
                row["error"] = "non-finite samples"
            results.append(row)
        print(f"{cfg.label}: {time.perf_counter() - start:.1f} s", flush=True)
    return results, plans


def headline(results: list[dict], nfes) -> list[dict]:
    """Per NFE target: our best configuration against the best peer configuration (ratio ours /
    peer < 1: we win), and our best on the standard grids only (no tuned grid)."""
    ours = [r for r in results if r["library"] == "scorekit"]
    standard = [r for r in ours if not bench.is_tuned(r)]
    theirs = [r for r in results if r["library"] != "scorekit"]
    rows = []
    for target in nfes:
        a, b = bench.best_row(ours, "rmse", target), bench.best_row(theirs, "rmse", target)
        c = bench.best_row(standard, "rmse", target)
        rows.append({"nfe": target, "ours": a and a["config"], "ours_nfe": a and a["nfe"], "ours_rmse": a and a["rmse"],
                     "ours_standard": c and c["config"], "ours_standard_rmse": c and c["rmse"],
                     "peer": b and b["config"], "peer_nfe": b and b["nfe"], "peer_rmse": b and b["rmse"],
                     "ratio": a["rmse"] / b["rmse"] if a and b and b["rmse"] > 0 else None})
    return rows


def confirm(report: dict, denoiser, process, prediction_type: str, x_C: Tensor, reference: Tensor) -> list[dict]:
    """The headline without the winner's curse: each NFE target's two picks (our best and the best
    peer on the evaluation batch) run again on a fresh batch ``x_C`` (seed ``SEEDS["confirm"]``,
    never used to pick or tune) against its own reference. The paired difference of per-image mean
    squared errors (ours - peer) gives a standard error over the fresh images, and a verdict:
    "ours lower" / "peer lower" when it is more than ``sampler_heldout.Z`` = 3 standard errors from
    zero, "tie" otherwise.
    Per-image errors are heavy-tailed (a few images dominate the mean), so a second verdict comes
    from the Wilcoxon signed-rank test of the per-image errors (two-sided, at the level of ``Z``
    standard errors: p < 0.0027 for Z = 3): which side is lower on a typical image."""
    from scipy.stats import norm, wilcoxon

    from sampler_heldout import Z, differs, mean_se

    level = float(2 * norm.sf(Z))

    index = {c.label: c for c in [*bench.all_configs(process, True), *bench.tuned_configs(TUNED)]}
    counter = bench.CountingModel(denoiser.model)
    rows = []
    for head in report["headline"]:
        target = head["nfe"]
        if not head["ours"] or not head["peer"]:
            continue
        errors, nfe = {}, {}
        for label in (head["ours"], head["peer"]):
            plan = report["plans"][label][str(target)]
            counter.calls = 0
            with torch.no_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                x = bench.run_config(index[label], counter, process, x_C, plan["steps"],
                                     torch.Generator().manual_seed(SEEDS["noise"]), prediction_type,
                                     plan.get("options"), plan.get("timesteps"))
            errors[label] = (x.to(torch.float64) - reference).pow(2).flatten(1).mean(1).tolist()
            nfe[label] = counter.calls
        ours, peer = errors[head["ours"]], errors[head["peer"]]
        diff = mean_se([a - b for a, b in zip(ours, peer)])
        side = differs(*diff) if all(map(math.isfinite, diff)) else 0
        rmse_ours, rmse_peer = math.sqrt(sum(ours) / len(ours)), math.sqrt(sum(peer) / len(peer))
        p_value = float(wilcoxon(ours, peer).pvalue) if any(a != b for a, b in zip(ours, peer)) else 1.0
        lower = sum(a < b for a, b in zip(ours, peer))
        rows.append({"nfe": target, "images": len(ours), "ours": head["ours"], "ours_nfe": nfe[head["ours"]],
                     "ours_rmse": rmse_ours, "peer": head["peer"], "peer_nfe": nfe[head["peer"]],
                     "peer_rmse": rmse_peer, "ratio": rmse_ours / rmse_peer, "mse_diff": diff[0],
                     "mse_diff_se": diff[1], "images_ours_lower": lower, "wilcoxon_p": p_value,
                     "verdict": "ours lower" if side < 0 else "peer lower" if side > 0 else "tie",
                     "verdict_per_image": "tie" if p_value >= level else
                     "ours lower" if lower > len(ours) - lower else "peer lower"})
    return rows


def confirm_parts(result: dict | None) -> list[str]:
    from sampler_heldout import pm

    if not result or not result.get("rows"):
        return []
    rows = result["rows"]
    return ["## Confirmation on fresh images",
            f"The two picks of each headline row run again on {rows[0]['images']} fresh images (x_T seed "
            f"{result['seed']}, never used to pick or tune) against their own reference ({result['reference_nfe']} "
            "network evaluations); 'ours - peer': the paired difference of per-image mean squared errors, ± "
            "its standard error over the images; verdict 'ours lower' / 'peer lower' when it is more than three "
            "standard errors from zero, 'tie' otherwise; 'ours better on': images where our error is smaller; "
            "per image: the Wilcoxon signed-rank test of the per-image errors (two-sided p < 0.0027, the level of "
            "three standard errors), robust to "
            "the few images that dominate the mean.",
            bench.markdown_table(["NFE", "ours (NFE)", "ours", "peer (NFE)", "peer", "ours/peer",
                                  "ours - peer (MSE per image)", "verdict (mean)", "ours better on",
                                  "Wilcoxon p", "verdict (per image)"],
                                 [[r["nfe"], f"{r['ours']} ({r['ours_nfe']})", r["ours_rmse"],
                                   f"{r['peer']} ({r['peer_nfe']})", r["peer_rmse"], r["ratio"],
                                   pm(r["mse_diff"], r["mse_diff_se"]), r["verdict"],
                                   f"{r['images_ours_lower']} of {r['images']}", r["wilcoxon_p"],
                                   r["verdict_per_image"]] for r in rows])]


def run_confirm(report: dict, n: int, cache: Path, ckpt=None) -> dict:
    """``confirm`` for ``report``'s model (``ckpt`` if already loaded) on ``n`` fresh images, with
    the reference solved (or read from ``cache``) at the report's tolerance."""
    run = Path(report["model"]["run"])
    ckpt = ckpt or load_checkpoint(run)
    if ckpt.step != report["model"]["step"]:
        raise SystemExit(f"{run} is at step {ckpt.step}, the report was made at step {report['model']['step']}")
    denoiser = checkpoint_denoiser(ckpt, ema=True)
    process = denoiser.process
    x_C = process.prior_sample((n, *ckpt.sample_shape), generator=torch.Generator().manual_seed(SEEDS["confirm"]))
    start = time.perf_counter()
    reference, ref_nfe, cached = cached_reference(run, ckpt, denoiser, x_C, report["reference"]["rtol"], cache,
                                                  SEEDS["confirm"])
    print(f"confirmation batch n={n}: reference {ref_nfe} network evaluations, "
          f"{'cached' if cached else f'{time.perf_counter() - start:.0f} s'}", flush=True)
    rows = confirm(report, denoiser, process, denoiser.prediction_type, x_C, reference)
    return {"seed": SEEDS["confirm"], "n": n, "reference_nfe": ref_nfe, "seconds": time.perf_counter() - start,
            "rows": rows}


def standard_cell(row: dict) -> str:
    if not row.get("ours_standard"):
        return "-"
    value = bench.fmt(row["ours_standard_rmse"])
    return value if row["ours_standard"] == row["ours"] else f"{value} ({row['ours_standard']})"


def tuning_parts(tuning: dict | None) -> list[str]:
    if not tuning or not tuning.get("grids"):
        return []
    parts = bench.tuning_section(tuning["grids"])
    parts[0] = parts[0].replace("its ODE solution at sigma = 0", "its ODE solution (t = 0, then D)")
    ref = "cached" if tuning["reference_cached"] else f"{tuning['reference_seconds']:.0f} s"
    return [f"Tuning batch: {tuning['n']} images of x_T seed {SEEDS['tune']} (not the evaluation batch); its "
            f"reference {tuning['reference_nfe']} network evaluations ({ref}); at most "
            f"{tuning['nfe_budget']} // NFE sampler runs per grid; tuning {tuning['cpu_seconds']:.0f} s CPU, "
            f"{tuning['wall_seconds']:.0f} s wall in this run (cached grids cost nothing).", *parts]


def markdown(report: dict) -> str:
    nfes = report["settings"]["nfes"]
    ref = report["reference"]
    ref_time = "cached" if ref["cached"] else f"{ref['seconds']:.0f} s"
    parts = ["# Samplers on a trained MNIST model: RMSE to the model's probability-flow ODE",
             "Environment: " + ", ".join(f"{k} {v}" for k, v in report["environment"].items()),
             f"Model: {report['model']['run']} (checkpoint step {report['model']['step']}, "
             f"{report['model']['process']}, {report['model']['prediction_type']}-prediction, EMA weights). "
             f"{report['settings']['n']} images, x_T seed {SEEDS['x_T']}. Run time {report['seconds']:.0f} s.",
             f"Reference: RK45 in log(sigma/alpha), rtol = atol = {ref['rtol']:g}, from t = T-1 to t = 0 "
             f"(sigma_bar {ref['sigma_bar_start']:.4g} to {ref['sigma_bar_t0']:.4g}), then the model's "
             f"x0-prediction; {ref['nfe']} network evaluations ({ref_time}). "
             "RMSE over pixels in [-1, 1]; deterministic configurations only.",
             "## Headline: our best against the best peer (ours/peer < 1: scorekit wins)",
             bench.markdown_table(["NFE", "ours: best config (NFE)", "ours", "best peer config (NFE)", "peer",
                                   "ours/peer", "ours, standard grids only"],
                                  [[r["nfe"], f"{r['ours']} ({r['ours_nfe']})" if r["ours"] else "-", r["ours_rmse"],
                                    f"{r['peer']} ({r['peer_nfe']})" if r["peer"] else "-", r["peer_rmse"], r["ratio"],
                                    standard_cell(r)]
                                   for r in report["headline"]]),
             *confirm_parts(report.get("confirm")),
             *tuning_parts(report.get("tuning")),
             "## Per family: defaults / best configuration", bench.family_table(report["results"], "rmse", nfes),
             "## All configurations (counted NFE in brackets where below the target; n/a: needs more calls)",
             bench.metric_table(report["results"], "rmse", nfes),
             "## Failures", bench.failures(report["results"])]
    return "\n\n".join(parts) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=DEFAULT_RUN, help="scorekit run or checkpoint folder")
    parser.add_argument("--n", type=int, default=None, help="number of images (default 32; 8 with --quick)")
    parser.add_argument("--nfes", default=None, help="NFE targets (default 5,10,15,20; 5,10 with --quick)")
    parser.add_argument("--rtol", type=float, default=1e-5, help="tolerance of the reference ODE solve")
    parser.add_argument("--select", default=None,
                        help="regular expression: only configurations whose label matches")
    parser.add_argument("--quick", action="store_true",
                        help="8 images, NFE 5 and 10, only each family's default configuration")
    parser.add_argument("--no-k-diffusion", action="store_true", help="leave out k-diffusion's samplers")
    parser.add_argument("--no-tuning", action="store_true",
                        help="leave out our samplers on tuned grids (always run otherwise, whatever --select)")
    parser.add_argument("--tune-n", type=int, default=TUNE_N, help="images in the separate tuning batch")
    parser.add_argument("--tune-budget", type=int, default=TUNE_NFE_BUDGET,
                        help="network evaluations per tuned grid: at most budget // NFE sampler runs")
    parser.add_argument("--confirm", type=int, default=None,
                        help=f"fresh images on which each NFE's two picks are compared again (default {CONFIRM_N}; "
                             "0 with --quick; 0 skips)")
    parser.add_argument("--confirm-only", type=Path, default=None, metavar="JSON",
                        help="only run the confirmation for an earlier run's JSON (rewrites its .json and .md)")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "results")
    parser.add_argument("--render", type=Path, default=None,
                        help="only rewrite the .md of an earlier run from its .json")
    args = parser.parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text())
        defaults = {cfg.label: cfg.default for cfg in bench.all_configs(bench.DDPM(), True)}
        for row in report["results"]:
            row["default"] = defaults.get(row["config"], row["default"])
        args.render.with_suffix(".md").write_text(markdown(report))
        return 0
    torch.set_num_threads(1)
    bench.quiet_peers()
    confirm_n = args.confirm if args.confirm is not None else (0 if args.quick else CONFIRM_N)
    if args.confirm_only is not None:
        try:
            report = json.loads(args.confirm_only.read_text())
            report["model"]["run"], report["headline"], report["plans"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            parser.error(f"{args.confirm_only} is not a report of this benchmark: {type(err).__name__}: {err}")
        report["confirm"] = run_confirm(report, confirm_n or CONFIRM_N, args.out / "cache")
        bench.write_json_atomic(args.confirm_only, bench.without_nan(report))
        args.confirm_only.with_suffix(".md").write_text(markdown(report))
        print("\n".join(confirm_parts(report["confirm"])))
        return 0
    n = args.n or (8 if args.quick else 32)
    nfes = tuple(int(v) for v in (args.nfes or ("5,10" if args.quick else "5,10,15,20")).split(","))
    start = time.perf_counter()

    ckpt = load_checkpoint(args.run)
    denoiser = checkpoint_denoiser(ckpt, ema=True)
    process, prediction_type = denoiser.process, denoiser.prediction_type
    x_T = process.prior_sample((n, *ckpt.sample_shape), generator=torch.Generator().manual_seed(SEEDS["x_T"]))
    ref_start = time.perf_counter()
    reference, ref_nfe, cached = cached_reference(args.run, ckpt, denoiser, x_T, args.rtol, args.out / "cache")
    ref_seconds = time.perf_counter() - ref_start
    print(f"reference: {ref_nfe} network evaluations, {'cached' if cached else f'{ref_seconds:.0f} s'}", flush=True)

    configs = bench.all_configs(process, not args.no_k_diffusion)
    if args.quick:
        configs = [c for c in configs if c.default]
    if args.select:
        configs = [c for c in configs if re.search(args.select, c.label)]
    tuned_plans, tuning = {}, None
    if not args.no_tuning:
        tuned_configs = bench.tuned_configs(QUICK_TUNED if args.quick else TUNED)
        x_tune = process.prior_sample((args.tune_n, *ckpt.sample_shape),
                                      generator=torch.Generator().manual_seed(SEEDS["tune"]))
        tune_start = time.perf_counter()
        tune_ref, tune_ref_nfe, tune_cached = cached_reference(args.run, ckpt, denoiser, x_tune, args.rtol,
                                                               args.out / "cache", SEEDS["tune"])
        tune_ref_seconds = time.perf_counter() - tune_start
        print(f"tuning batch n={args.tune_n}: reference {tune_ref_nfe} network evaluations, "
              f"{'cached' if tune_cached else f'{tune_ref_seconds:.0f} s'}", flush=True)
        cpu, wall = time.process_time(), time.perf_counter()
        tuned_plans, grids = tune_grids(tuned_configs, denoiser, process, prediction_type, x_tune, tune_ref, nfes,
                                        args.out / "cache", run_tag(args.run, ckpt), args.rtol, args.tune_budget)
        tuning = {"n": args.tune_n, "nfe_budget": args.tune_budget, "reference_nfe": tune_ref_nfe,
                  "reference_cached": tune_cached, "reference_seconds": tune_ref_seconds,
                  "cpu_seconds": time.process_time() - cpu, "wall_seconds": time.perf_counter() - wall,
                  "grids": grids}
        print(f"tuning: {tuning['cpu_seconds']:.0f} s CPU, {tuning['wall_seconds']:.0f} s wall", flush=True)
        configs = [*configs, *tuned_configs]
    results, plans = sweep(configs, denoiser.model, process, prediction_type, x_T, reference, nfes, tuned_plans)
    report = {"environment": bench.environment(),
              "settings": {"n": n, "nfes": list(nfes), "rtol": args.rtol, "select": args.select, "quick": args.quick,
                           "tuning": not args.no_tuning, "tune_n": args.tune_n, "tune_budget": args.tune_budget},
              "model": {"run": str(args.run), "step": ckpt.step, "process": repr(process),
                        "prediction_type": prediction_type},
              "reference": {"rtol": args.rtol, "nfe": ref_nfe, "cached": cached, "seconds": ref_seconds,
                            "sigma_bar_start": float(process.sigma(process.t_max) / process.alpha(process.t_max)),
                            "sigma_bar_t0": float(process.sigma(process.t_min) / process.alpha(process.t_min))},
              "results": results, "plans": plans, "tuning": tuning, "headline": headline(results, nfes)}
    if confirm_n:
        report["confirm"] = run_confirm(report, confirm_n, args.out / "cache", ckpt)
    report["seconds"] = time.perf_counter() - start
    text = markdown(report)
    stem = "sampler_mnist-quick" if args.quick else "sampler_mnist"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.md").write_text(text)
    (args.out / f"{stem}.json").write_text(json.dumps(bench.without_nan(report), indent=1))
    print("\n" + text[:4000])
    print(f"wrote {args.out / stem}.md, .json")
    return 0


if __name__ == "__main__":
    np.seterr(all="ignore")
    sys.exit(main())
