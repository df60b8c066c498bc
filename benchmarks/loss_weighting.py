"""Loss weighting on MNIST: does the ELBO weighting buy likelihood at the cost of sample quality?

    nice -n 10 .venv/bin/python benchmarks/loss_weighting.py          # about an hour on 2 busy cores
    nice -n 10 .venv/bin/python benchmarks/loss_weighting.py --steps 450 --minutes 30 \
        --tag loss_weighting-450steps --raw-num 0 --check-num 0     # the same at equal steps
    nice -n 10 .venv/bin/python benchmarks/loss_weighting.py --quick  # every phase in a few minutes

``--help`` lists the options: the training budget, the bits/dim and sampling settings, the outputs.

Data: the MNIST test digits (``../shared/data/mnist-test``), images 0-7999 for training and
8000-9999 held out, padded to 32x32, in [-1, 1] (``benchmarks/mnist_quality.py``'s loading, whose
training under a time budget this benchmark reuses through ``benchmarks/guidance.py``'s cache of
trained runs).

1. Four models, one per weighting of the loss, otherwise identical: the ``tiny`` U-Net
   (unconditional), eps-prediction, DDPM with T = 1000 steps and the cosine schedule, the same
   seed (so the same initial weights, batches, times and noise), batch 32, lr ``--lr``, EMA
   ``--ema-decay``, one torch thread, trained one after the other for ``--minutes`` of optimiser
   steps each (or exactly ``--steps`` steps):

   * ``simple``: ``||eps - eps_theta||^2`` (Ho et al. 2020), fixed reverse variances;
   * ``hybrid``: ``L_simple + 0.001 L_vlb`` with a variance head (Nichol & Dhariwal 2021);
   * ``elbo``: the bound's own weight on the same error, ``beta_t^2 / (2 beta~_t alpha_t (1 - abar_t))``
     per dimension summed (the true VLB with the posterior variance ``beta~_t``);
   * ``min_snr``: Min-SNR-gamma, ``min(SNR, 5) / SNR`` on the eps error (Hang et al. 2023).

   Cosine, not linear: it is the schedule of Improved DDPM, whose likelihood results (and hybrid
   loss) this reproduces; the linear schedule's last few hundred steps are almost pure noise and
   add little to either the bound or the samples. Cached in ``OUT/cache/`` and reused when the
   settings and budget match.

2. Bits/dim of ``--elbo-num`` held-out digits (8-bit, 1024 dimensions with the padding), the same
   digits for every model: the ELBO of the whole 1000-step chain, estimated without bias by
   ``scorekit.likelihood.sampled_elbo`` (prior and decoder exact, ``--elbo-strata`` strata of the
   other steps, narrow at both ends of the chain, with one sampled step per digit each, and the last
   ``--elbo-exact-last`` steps exactly; the same steps and x_t for every model, so differences between models are paired),
   with the fixed variances ``beta~_t`` (small) and ``beta_t`` (large) for every model and the
   learned ones for the hybrid model. The primary number is ``small`` for the fixed-variance
   models and ``learned`` for the hybrid one.

   The reverse model of the bound is the one the samplers run: its mean uses ``x0_pred`` clipped
   to [-1, 1] (``scorekit.thresholding.clip_x0``; improved-diffusion's NLL evaluation clips the
   same way). Without the clip the bound of an eps-network is dominated by the cosine schedule's
   last step, where ``beta`` is clipped at 0.999: the weight of the eps error there is
   ``beta / (2 (1 - beta) (1 - abar_{t-1})) ~ 500`` per dimension, against at most ~1 at every
   other step, so the bound measures how exactly the network returns ``x_t / sigma`` on pure
   noise. That unclipped bound is reported too, on the first ``--raw-num`` digits. The estimate is
   checked against the exact chain (``scorekit.likelihood.elbo``, all 1000 steps, term by term) on
   the first ``--check-num`` digits. Last, the probability-flow ODE likelihood
   (``scorekit.likelihood.nll_batches``, RK45, Hutchinson's estimator with one Rademacher probe,
   uniform dequantisation, rtol = atol = ``--rtol``; the network itself, unclipped) of the first
   ``--ode-num``.

3. Samples: ``--num`` per model from the same x_T with DDIM (eta 0, ``--ddim-steps``) and with the
   ancestral sampler (``--ddpm-steps``; the learned variances for the hybrid model, ``--ddpm-variance``
   for the others), both on the trailing grid with ``x0_pred`` clipped to [-1, 1] (as
   improved-diffusion samples), written as ``OUT/cache/samples/MODEL-SAMPLER.npz`` (``x`` float32
   (N, 1, 32, 32) in [-1, 1]) and reused when the run and settings match.

4. Scores of each .npz by ``scorekit eval`` against the 2,000 held-out digits through the digits
   feature network (FID, KID, precision, recall, with standard errors); skipped (``--skip-eval``,
   or when this scorekit has no ``digits`` feature network) and added by a later run.

Writes ``TAG.json`` and ``TAG.md`` into ``--out`` (default ``benchmarks/results/``, TAG
``loss_weighting`` or ``loss_weighting-quick``) and two figures into ``--figures`` (default
``docs/images/``; ``OUT`` with ``--quick``), named after TAG with dashes: ``loss-weighting.png``
(bits/dim against FID, one point per weighting and sampler with standard errors; the bound's
terms along the chain per weighting) and ``loss-weighting-samples.png`` (the first samples of each
model and sampler). The runs and every intermediate result are kept in ``OUT/cache/`` under TAG,
so runs with other settings (``--steps 400 --tag loss_weighting-400steps``) keep their own.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scorekit  # noqa: E402
from guidance import cpu_model, trained_run  # noqa: E402
from mnist_quality import (DEFAULT_DATA, NUM_TRAIN, header_lines, load_average, load_mnist, log,  # noqa: E402
                           write_report)
from scorekit.likelihood import elbo, nll_batches, sampled_elbo  # noqa: E402
from scorekit.likelihood.ode import is_quantized  # noqa: E402
from scorekit.models import count_parameters  # noqa: E402
from scorekit.plotting import _new_figure, image_grid, save_figure, write_text  # noqa: E402
from scorekit.thresholding import clip_x0  # noqa: E402
from scorekit.train import TrainConfig  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {"train": 0, "pick": 1, "elbo": 2, "check": 3, "ode": 4, "x_T": 5, "ancestral": 6, "real": 7}
#: the weightings compared: TrainConfig settings and a description
MODELS = {
    "simple": ({"weighting": "simple"}, "L_simple: eps MSE (Ho et al. 2020)"),
    "hybrid": ({"weighting": "hybrid", "variance": "learned"},
               "L_hybrid = L_simple + 0.001 L_vlb, learned variances (Nichol & Dhariwal 2021)"),
    "elbo": ({"weighting": "elbo"}, "the true VLB weighting, fixed beta~_t (Ho et al. 2020, eq. 5)"),
    "min_snr": ({"weighting": "min_snr", "weighting_options": {"min_snr_gamma": 5.0}},
                "Min-SNR-5 (Hang et al. 2023)"),
}
COLORS = {"simple": "#1f6fb4", "hybrid": "#d95f02", "elbo": "#1b9e77", "min_snr": "#7570b3"}
SAMPLERS = ("ddim", "ddpm")
MARKERS = {"ddim": "o", "ddpm": "s"}
EVAL_METRICS = ("fid", "kid", "precision", "recall")


# --- caching ------------------------------------------------------------------------------------------------

def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def cached(path: Path, key: dict, compute, what: str) -> dict:
    """``compute()``'s result, stored in ``path`` with ``key``; reused when ``key`` matches."""
    if path.is_file():
        saved = json.loads(path.read_text(encoding="utf-8"))
        if saved.get("key") == key:
            log(f"{what}: reusing {path.name}")
            return {**saved["value"], "reused": True}
    value = compute()
    write_text(path, json.dumps({"key": key, "value": value}, indent=1) + "\n")
    return {**value, "reused": False}


# --- training ---------------------------------------------------------------------------------------------

def train_config(args, name: str) -> TrainConfig:
    settings = MODELS[name][0]
    return TrainConfig(data=f"mnist:{args.data}", data_options={"pad_to": 32, "start": 0, "stop": NUM_TRAIN},
                       model="tiny", model_options={"num_classes": None}, process="ddpm",
                       process_options={"schedule": args.schedule}, prediction="eps", **settings,
                       steps=args.steps or 10 ** 7, batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup,
                       ema_decay=args.ema_decay, seed=SEEDS["train"], num_threads=1, log_every=10,
                       checkpoint_every=10 ** 9, keep_checkpoints=1, sample_num=1, sample_steps=1)


def loss_summary(run_dir: Path) -> dict:
    """The training curve in numbers, from the run's ``metrics.jsonl`` (one line per 10 steps: the
    mean loss and gradient norm before clipping over those steps)."""
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
            if line.strip()]
    loss = np.array([r["loss"] for r in rows], dtype=float)
    grad = np.array([r.get("grad_norm", float("nan")) for r in rows], dtype=float)
    half = loss[len(loss) // 2:]
    return {"windows": len(rows), "loss_first": float(loss[0]), "loss_last_half_median": float(np.median(half)),
            "loss_max": float(np.max(loss)), "loss_max_step": int(rows[int(np.argmax(loss))]["step"]),
            "spikes": int(np.sum(loss > 10 * np.median(half))), "finite": bool(np.isfinite(loss).all()),
            "grad_norm_median": float(np.nanmedian(grad)), "grad_norm_max": float(np.nanmax(grad))}


def primary_variance(name: str) -> str:
    return "learned" if MODELS[name][0].get("variance") == "learned" else "small"


# --- bits/dim ---------------------------------------------------------------------------------------------

def strata_edges(args, K: int) -> list[int]:
    """``--elbo-strata`` strata of the steps ``1 .. K - 1 - exact_last``, then one per last step.

    The edges are ``1 + (K - exact_last - 1) (1 - cos(pi j / M)) / 2``: narrow strata at both ends of
    the chain, where the terms change fastest (``L_t`` falls ~100-fold over the first 50 steps and
    rises again over the last 50), wide ones in the flat middle.
    """
    last = K - args.elbo_exact_last
    j = torch.arange(args.elbo_strata + 1, dtype=torch.float64) / args.elbo_strata
    body = torch.round(1 + (last - 1) * (1 - torch.cos(math.pi * j)) / 2).long().unique().tolist()
    return body + list(range(last + 1, K + 1))


def elbo_estimate(denoiser, x, name: str, args) -> dict:
    """The sampled whole-chain ELBO of ``x`` with the fixed variances (and the learned ones of a
    variance head), from the same network calls."""
    variances = ("learned", "small", "large") if primary_variance(name) == "learned" else ("small", "large")
    edges = strata_edges(args, 1000)
    t0 = time.perf_counter()
    out = sampled_elbo(denoiser, denoiser.process, x, strata=edges, variances=variances, data_bits=8,
                       generator=torch.Generator().manual_seed(SEEDS["elbo"]), batch_size=args.eval_batch)
    seconds = time.perf_counter() - t0
    r0 = next(iter(out.values()))
    times = r0.timesteps
    return {"seconds": seconds, "num": x.shape[0], "network_calls_per_digit": len(edges),
            "edges": edges, "stratum_times": [[times[a].item(), times[b - 1].item()]
                                              for a, b in zip(edges[:-1], edges[1:])],
            "variances": {v: {"mean_bpd": r.mean_bpd, "stderr_bpd": r.stderr_bpd, "prior_bpd": r.prior_bpd,
                              "decoder_bpd": r.decoder_bpd, "strata_bpd": r.strata_bpd.tolist(),
                              "per_digit_bpd": r.total_bpd.tolist()} for v, r in out.items()}}


def full_chain(denoiser, x, name: str, args) -> dict:
    """The whole-chain ELBO (every one of the 1000 steps) of ``x``, term by term, and the mean of
    ``--check-repeats`` sampled estimates of the same digits with other seeds (their standard error
    over the repeats measures the estimator's own noise)."""
    variance = primary_variance(name)
    t0 = time.perf_counter()
    r = elbo(denoiser, denoiser.process, x, variance=variance, data_bits=8,
             generator=torch.Generator().manual_seed(SEEDS["check"]), batch_steps=max(1, args.eval_batch // x.shape[0]))
    seconds = time.perf_counter() - t0
    means = [sampled_elbo(denoiser, denoiser.process, x, strata=strata_edges(args, 1000), variances=(variance,),
                          data_bits=8, generator=torch.Generator().manual_seed(1000 + i))[variance].mean_bpd
             for i in range(args.check_repeats)]
    repeats = {"num": len(means), "mean_bpd": float(np.mean(means)) if means else None,
               "stderr_bpd": float(np.std(means, ddof=1) / math.sqrt(len(means))) if len(means) > 1 else None}
    return {"seconds": seconds, "num": x.shape[0], "variance": variance, "mean_bpd": r.mean_bpd,
            "stderr_bpd": r.stderr_bpd, "per_digit_bpd": r.total_bpd.tolist(), "terms_bpd": r.terms_bpd.tolist(),
            "sampled_repeats": repeats}


def ode(denoiser, x, args) -> dict:
    r = nll_batches(denoiser, x, method="ode", batch_size=x.shape[0], data_bits=8, rtol=args.rtol, atol=args.rtol,
                    divergence="hutchinson", probe="rademacher", num_probes=1,
                    generator=torch.Generator().manual_seed(SEEDS["ode"]))
    return {"seconds": r.seconds, "num": x.shape[0], "mean_bpd": r.mean, "stderr_bpd": r.stderr,
            "nfe_per_batch": r.nfe_per_batch, "per_digit_bpd": r.bits_per_dim.tolist()}


# --- samples and their scores ---------------------------------------------------------------------------

def sampler_settings(args, name: str, sampler: str) -> dict:
    if sampler == "ddim":
        return {"sampler": "ddim", "num_steps": args.ddim_steps, "eta": 0.0, "clip": 1.0}
    variance = "learned" if primary_variance(name) == "learned" else args.ddpm_variance
    return {"sampler": "ddpm", "num_steps": args.ddpm_steps, "variance": variance, "clip": 1.0}


def write_npz(path: Path, x) -> None:
    """Images ``x`` as ``path`` (``x`` float32 (N, 1, 32, 32) in [-1, 1], what ``scorekit eval`` reads), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")
    np.savez(tmp, x=x.clamp(-1, 1).to(torch.float32).numpy())
    os.replace(tmp, path)


def draw_samples(denoiser, settings: dict, args, path: Path) -> dict:
    x_T = denoiser.process.prior_sample((args.num, 1, 32, 32), generator=torch.Generator().manual_seed(SEEDS["x_T"]))
    r = scorekit.sample_batches(denoiser, x_T, batch_size=args.sample_batch,
                                generator=torch.Generator().manual_seed(SEEDS["ancestral"]), **settings)
    write_npz(path, r.x)
    return {"seconds": r.seconds, "nfe": r.nfe, "npz": os.path.relpath(path, ROOT),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def bits_and_samples(name: str, m: dict, args, x) -> dict:
    """Bits/dim and samples of one trained model (each part cached in ``OUT/cache``): what
    ``m["bits"]``, ``m["samples"]`` and ``m["parameters"]`` hold afterwards. Runs in a worker
    process with ``--workers 2``."""
    torch.set_num_threads(1)
    cache = args.out / "cache"
    m = {**m, "bits": {}, "samples": {}}
    d = scorekit.load_denoiser(ROOT / m["run"])
    m["parameters"] = count_parameters(d.checkpoint.ema_net)
    run_key = {"config": m["config"], "steps": m["training"]["steps"], "loss": m["training"]["final_loss"]}
    common = {"run": digest(run_key), "pick": SEEDS["pick"], "elbo_num": args.elbo_num}
    key = {**common, "edges": strata_edges(args, 1000), "seed": SEEDS["elbo"], "x0_clip": 1.0}
    m["bits"]["elbo"] = e = cached(cache / f"{args.tag}-{name}-elbo.json", key,
                                   lambda: elbo_estimate(clip_x0(d, 1.0), x, name, args), f"{name} ELBO")
    v = e["variances"][primary_variance(name)]
    log(f"{name}: ELBO {v['mean_bpd']:.3f} ± {v['stderr_bpd']:.3f} bits/dim ({primary_variance(name)}; "
        f"{e['seconds']:.0f} s)")
    if args.raw_num:
        key = {**common, "edges": strata_edges(args, 1000), "seed": SEEDS["elbo"], "raw_num": args.raw_num}
        m["bits"]["raw"] = r = cached(cache / f"{args.tag}-{name}-raw.json", key,
                                      lambda: elbo_estimate(d, x[:args.raw_num], name, args), f"{name} raw ELBO")
        rv = r["variances"][primary_variance(name)]
        log(f"{name}: ELBO without clipping {rv['mean_bpd']:.3f} ± {rv['stderr_bpd']:.3f} bits/dim "
            f"({r['num']} digits; {r['seconds']:.0f} s)")
    if args.check_num:
        key = {**common, "check_num": args.check_num, "seed": SEEDS["check"], "x0_clip": 1.0,
               "repeats": args.check_repeats, "edges": strata_edges(args, 1000)}
        m["bits"]["check"] = c = cached(cache / f"{args.tag}-{name}-check.json", key,
                                        lambda: full_chain(clip_x0(d, 1.0), x[:args.check_num], name, args),
                                        f"{name} full chain")
        same = v["per_digit_bpd"][:c["num"]]
        rep = c["sampled_repeats"]
        log(f"{name}: whole-chain ELBO of {c['num']} digits {c['mean_bpd']:.3f} (sampled estimate of the same: "
            f"{np.mean(same):.3f}, {rep['num']} more seeds: {pm(rep)}; {c['seconds']:.0f} s)")
    if args.ode_num:
        key = {**common, "ode_num": args.ode_num, "rtol": args.rtol, "seed": SEEDS["ode"]}
        m["bits"]["ode"] = o = cached(cache / f"{args.tag}-{name}-ode.json", key,
                                      lambda: ode(d, x[:args.ode_num], args), f"{name} ODE")
        log(f"{name}: ODE {o['mean_bpd']:.3f} ± {o['stderr_bpd']:.3f} bits/dim ({o['seconds']:.0f} s, "
            f"NFE {o['nfe_per_batch']:.0f})")
    for sampler in SAMPLERS:
        settings = sampler_settings(args, name, sampler)
        key = {"run": digest(run_key), "settings": settings, "num": args.num, "batch": args.sample_batch,
               "seeds": [SEEDS["x_T"], SEEDS["ancestral"]]}
        path = cache / "samples" / f"{args.tag}-{name}-{sampler}.npz"
        marker = cache / "samples" / f"{args.tag}-{name}-{sampler}.json"
        entry = cached(marker, key, lambda: draw_samples(d, settings, args, path), f"{name} {sampler} samples")
        if not path.is_file() or hashlib.sha256(path.read_bytes()).hexdigest() != entry["sha256"]:
            log(f"{name} {sampler}: {path.name} changed; sampling again")
            marker.unlink()
            entry = cached(marker, key, lambda: draw_samples(d, settings, args, path), f"{name} {sampler} samples")
        m["samples"][sampler] = {**entry, "settings": settings}
        log(f"{name} {sampler}: {args.num} samples ({entry['seconds']:.0f} s)")
    return m


def eval_available() -> bool:
    try:
        import scorekit.metrics.feature_nets  # noqa: F401
    except ImportError:
        return False
    return True


def evaluate(npz: Path, args, out_json: Path) -> dict:
    """``scorekit eval`` of one .npz against the held-out digits, through the digits features."""
    data = f"mnist:{args.data}"
    command = [sys.executable, "-m", "scorekit", "eval", str(npz), "--ref", data, "--ref-option", f"start={NUM_TRAIN}",
               "--ref-option", "pad_to=32", "--features", "digits", "--features-data", data,
               "--features-data-option", "pad_to=32", "--metrics", "fid,kid,pr",
               "--cache", str(args.out / "cache" / "eval"), "--out", str(out_json)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"scorekit eval failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    metrics = json.loads(out_json.read_text(encoding="utf-8"))["metrics"]
    return {"seconds": time.perf_counter() - t0, "command": " ".join(command[1:]),
            **{m: metrics[m] for m in EVAL_METRICS if m in metrics}}


# --- the report -------------------------------------------------------------------------------------------

def pm(entry: dict | None, key="mean_bpd", se="stderr_bpd", digits=3) -> str:
    if not entry or entry.get(key) is None:
        return "-"
    s = entry.get(se)
    return f"{entry[key]:.{digits}f}" + ("" if s is None or not math.isfinite(s) else f" ± {s:.{digits}f}")


def metric(scores: dict | None, name: str, spec: str) -> str:
    """``value ± stderr`` of one of ``scorekit eval``'s metrics, formatted by ``spec``."""
    if not scores or name not in scores:
        return "-"
    m = scores[name]
    se = m.get("stderr")
    return f"{m['value']:{spec}}" + ("" if se is None else f" ± {se:{spec}}")


def paired(report: dict, name: str, part: str = "elbo") -> dict | None:
    """The per-digit ELBO difference of ``name`` against ``simple`` (same digits, steps and x_t);
    ``part`` ``"raw"`` for the bound without clipping."""
    a = report["models"][name]["bits"].get(part)
    b = report["models"]["simple"]["bits"].get(part) if "simple" in report["models"] else None
    if not a or not b:
        return None
    d = torch.tensor(a["variances"][primary_variance(name)]["per_digit_bpd"]) \
        - torch.tensor(b["variances"]["small"]["per_digit_bpd"])
    return {"mean_bpd": d.mean().item(), "stderr_bpd": (d.std() / math.sqrt(d.numel())).item()}


def tradeoff_figure(report: dict, path) -> str:
    """Bits/dim against FID (one point per weighting and sampler, with standard errors), the bound's
    term per step along the chain, and each model's terms relative to the simple model's."""
    fig = _new_figure((15.5, 4.7))
    ax, prof, rel = fig.subplots(1, 3, width_ratios=[1.1, 1.0, 1.0])
    profiles, points = {}, []
    for name, m in report["models"].items():
        e = m["bits"].get("elbo")
        if not e:
            continue
        v = e["variances"][primary_variance(name)]
        steps = np.array([1.0] + [0.5 * (a + b) + 1 for a, b in e["stratum_times"]])      # t + 1; t = 0 the decoder
        per_step = np.array([v["decoder_bpd"]] + list(np.asarray(v["strata_bpd"]) / np.diff(e["edges"])))
        profiles[name] = (steps, per_step)
        for sampler in SAMPLERS:
            sc = m["samples"].get(sampler, {}).get("scores")
            if sc and "fid" in sc:
                points.append((name, sampler, v["mean_bpd"], v["stderr_bpd"], sc["fid"]["value"],
                               sc["fid"].get("stderr") or 0.0))
    have_fid = bool(points)
    # the models within 0.1 bits/dim of the best bound again, magnified, when some lie far from them
    best = min((p[2] for p in points), default=0.0)
    close = [p for p in points if p[2] < best + 0.1]
    inset = ax.inset_axes([0.22, 0.50, 0.45, 0.44]) if 1 < len(close) < len(points) else None
    for target, pts in ((ax, points), (inset, close)):
        if target is None:
            continue
        for name, sampler, bpd, bpd_se, fid, fid_se in pts:
            target.errorbar(bpd, fid, xerr=bpd_se, yerr=fid_se, fmt=MARKERS[sampler], color=COLORS[name], ms=6,
                            capsize=3, label=f"{name}, {sampler.upper()}" if target is ax else None)
            if sampler == SAMPLERS[0]:
                target.annotate(name, (bpd, fid), textcoords="offset points", xytext=(5, 5), fontsize=7,
                                color=COLORS[name])
    if inset is not None:
        inset.set_yscale("log")
        inset.tick_params(labelsize=7)
        inset.grid(alpha=0.3, which="both")
        ax.indicate_inset_zoom(inset, edgecolor="#999999")
    ref = (report.get("reference") or {}).get("scores")
    if ref and "fid" in ref:
        ax.axhline(ref["fid"]["value"], color="#4d4d4d", ls="--", lw=1, label=f"real: {report['reference']['name']}")
    if have_fid:
        ax.set_yscale("log")
    else:
        ax.text(0.5, 0.5, "FID not measured yet\n(scorekit eval)", transform=ax.transAxes, ha="center")
    ax.set_xlabel("ELBO, bits/dim on held-out digits (lower: better likelihood)")
    ax.set_ylabel("FID, digits features, log scale (lower: better samples)")
    ax.set_title("likelihood against sample quality", fontsize=10)
    ax.grid(alpha=0.3)
    if have_fid:
        ax.legend(fontsize=6.5, ncol=2, loc="lower right")
    base = profiles.get("simple")
    for name, (steps, per_step) in profiles.items():
        label = f"{name} ({primary_variance(name)} variance)"
        prof.plot(steps, per_step, "-o", color=COLORS[name], lw=1.3, ms=2.5, label=label)
        if base is not None:
            rel.plot(steps, per_step / base[1], "-o", color=COLORS[name], lw=1.3, ms=2.5, label=label)
    for a in (prof, rel):
        a.set_xscale("log")
        a.set_xlabel("t + 1 (log scale; t = 0 is the decoder L_0, t = 999 the noisiest step)")
        a.grid(alpha=0.3, which="both")
        a.legend(fontsize=7)
    prof.set_yscale("log")
    prof.set_ylabel("bound's term L_t, bits/dim per step")
    prof.set_title("where each model's bound goes (stratum means)", fontsize=10)
    rel.axhline(1.0, color="#999999", lw=0.8)
    rel.set_ylabel("L_t / simple model's L_t")
    rel.set_title("each step's term relative to L_simple's", fontsize=10)
    s = report["settings"]
    fig.suptitle(f"Loss weighting on MNIST: tiny U-Net, DDPM cosine, eps-prediction, {report['budget']}; ELBO of "
                 f"{s['elbo_num']} held-out digits (x0_pred clipped), {s['num']} samples per sampler", fontsize=10)
    return save_figure(fig, path, dpi=130)


def samples_figure(report: dict, path) -> str | None:
    rows = []
    for name in report["models"]:
        for sampler in SAMPLERS:
            npz = ROOT / report["models"][name]["samples"].get(sampler, {}).get("npz", "missing")
            if npz.is_file():
                rows.append(torch.from_numpy(np.load(npz)["x"][:12]))
    if not rows:
        return None
    return image_grid(torch.cat(rows), path, nrow=12, padding=2, scale=2)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = header_lines(report, "Loss weighting on MNIST: likelihood against sample quality") + [
             f"Models: tiny U-Net, eps-prediction, DDPM {s['schedule']} T = 1000, seed {SEEDS['train']}, batch "
             f"{s['batch_size']}, lr {s['lr']:g}, EMA {s['ema_decay']:g}; {report['budget']} each, one after the "
             "other, one thread.", "",
             f"Bits/dim: {s['elbo_num']} held-out digits (8-bit, 32x32 with the padding), the same for every model. "
             f"ELBO = the whole 1000-step bound, stratified estimate ({s['elbo_strata']} strata + the last "
             f"{s['elbo_exact_last']} steps exact + the decoder = {report['elbo_calls']} network calls per digit), "
             f"variance beta~_t (small) for the fixed-variance models and learned for hybrid; ODE = probability-flow "
             f"ODE, {s['ode_num']} digits, rtol = atol = {s['rtol']:g}. Samples: {s['num']} per model and sampler "
             f"from one x_T; DDIM eta 0 {s['ddim_steps']} steps; ancestral (DDPM) {s['ddpm_steps']} steps with "
             f"variance learned (hybrid) or {s['ddpm_variance']} (the others); x0_pred clipped to [-1, 1].", "",
             "| weighting | train steps | ELBO bits/dim ± se | ODE bits/dim ± se | sampler | FID ± se | KID ± se | "
             "precision | recall |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["models"].items():
        e = m["bits"].get("elbo")
        v = e["variances"][primary_variance(name)] if e else None
        for i, sampler in enumerate(SAMPLERS):
            sc = m["samples"].get(sampler, {}).get("scores")
            first = i == 0
            lines.append(f"| {name if first else ''} | {m['training']['steps'] if first else ''} | "
                         f"{pm(v) if first else ''} | {pm(m['bits'].get('ode')) if first else ''} | "
                         f"{sampler.upper()} {s['ddim_steps'] if sampler == 'ddim' else s['ddpm_steps']} | "
                         f"{metric(sc, 'fid', '.0f')} | {metric(sc, 'kid', '.3g')} | {metric(sc, 'precision', '.3f')} | "
                         f"{metric(sc, 'recall', '.3f')} |")
    k = s["elbo_exact_last"]
    ref = report.get("reference")
    if ref and ref.get("scores"):
        sc = ref["scores"]
        lines.append(f"| real: {ref['name']} | | | | - | {metric(sc, 'fid', '.0f')} | {metric(sc, 'kid', '.3g')} | "
                     f"{metric(sc, 'precision', '.3f')} | {metric(sc, 'recall', '.3f')} |")
    lines += ["", "## The bound in detail", "",
              f"ELBO columns: the sampled whole-chain estimate with x0_pred clipped ({s['elbo_num']} digits); "
              f"'minus simple's' pairs each digit with the simple model's (same steps and x_t); 'last {k} steps' is "
              f"the share of the chain's last {k} steps (exact)."
              + (f" 'Whole chain': every one of the 1000 steps for the first {s['check_num']} digits, against the "
                 f"sampled estimate of the same digits and the mean of {s['check_repeats']} more (± their standard "
                 "error)." if s["check_num"] else "")
              + (f" 'Not clipped': the same bound of the raw network ({s['raw_num']} digits)." if s["raw_num"] else ""),
              "",
              "| weighting | final loss | ELBO small | ELBO large | ELBO learned | minus simple's (paired) | "
              f"decoder L_0 | last {k} steps | whole chain | sampled, same digits | {s['check_repeats']} more seeds | "
              "not clipped | "
              f"minus simple's | its last {k} steps |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["models"].items():
        e, r, c = m["bits"].get("elbo"), m["bits"].get("raw"), m["bits"].get("check")
        if not e:
            continue
        vs, pv = e["variances"], primary_variance(name)
        v = vs[pv]
        last = f"{sum(v['strata_bpd'][-k:]):.3f}" if k else "-"
        rv = r["variances"][pv] if r else None
        rlast = f"{sum(rv['strata_bpd'][-k:]):.3f}" if rv and k else "-"
        same = None
        if c:
            est = torch.tensor(v["per_digit_bpd"][:c["num"]], dtype=torch.float64)
            same = {"mean_bpd": est.mean().item(),
                    "stderr_bpd": (est.std() / math.sqrt(c["num"])).item() if c["num"] > 1 else None}
        lines.append(f"| {name} | {m['training']['final_loss']:.4g} | {pm(vs.get('small'))} | {pm(vs.get('large'))} | "
                     f"{pm(vs.get('learned'))} | {pm(paired(report, name))} | {v['decoder_bpd']:.3f} | {last} | "
                     f"{pm(c)} | {pm(same)} | {pm(c.get('sampled_repeats') if c else None)} | {pm(rv)} | "
                     f"{pm(paired(report, name, 'raw'))} | {rlast} |")
    lines += ["", "## Training", "",
              "Loss: the run's mean over each 10 steps (the weighting's own units: elbo sums nats over the 1024 "
              "dimensions, the others average); spikes = 10-step windows above 10x the median of the second half; "
              "gradient norm before clipping to 1.", "",
              "| weighting | steps | images/s | first loss | median loss, 2nd half | largest (step) | spikes | "
              "gradient norm median | largest |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["models"].items():
        t, c = m["training"], m["curve"]
        lines.append(f"| {name} | {t['steps']} | {t['images_per_second']:.1f} | {c['loss_first']:.4g} | "
                     f"{c['loss_last_half_median']:.4g} | {c['loss_max']:.4g} ({c['loss_max_step']}) | {c['spikes']} | "
                     f"{c['grad_norm_median']:.3g} | {c['grad_norm_max']:.3g} |")
    lines += ["", "Strata of the sampled ELBO (steps): "
              + ", ".join(f"{int(a)}-{int(b)}" for a, b in report["models"][next(iter(report["models"]))]["bits"]
                          ["elbo"]["stratum_times"]) if report["models"] else "", "",
              "## Timings", "", "| weighting | training s | images/s | ELBO s | not clipped s | whole chain s | ODE s | " +
              " | ".join(f"sampling {x.upper()} s" for x in SAMPLERS) + " | eval s |",
              "| --- | --- | --- | --- | --- | --- | --- | " + " | ".join("---" for _ in SAMPLERS) + " | --- |"]
    for name, m in report["models"].items():
        t, b = m["training"], m["bits"]
        cells = [f"{t['train_seconds']:.0f}", f"{t['images_per_second']:.1f}"]
        cells += [f"{b[part]['seconds']:.0f}" if b.get(part) else "-" for part in ("elbo", "raw", "check")]
        cells.append(f"{b['ode']['seconds']:.0f} ({b['ode']['nfe_per_batch']:.0f} NFE)" if b.get("ode") else "-")
        cells += [f"{m['samples'][x]['seconds']:.0f}" if m["samples"].get(x) else "-" for x in SAMPLERS]
        ev = [m["samples"][x]["scores"]["seconds"] for x in SAMPLERS
              if m["samples"].get(x, {}).get("scores")]
        cells.append(f"{sum(ev):.0f}" if ev else "-")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"Phases (wall seconds, this invocation): "
              + ", ".join(f"{k} {v:.0f}" for k, v in report["phase_seconds"].items()), "",
              f"Figures: `{report['figures'].get('tradeoff')}`, `{report['figures'].get('samples')}` (rows: each "
              "weighting with DDIM, then with the ancestral sampler).", "",
              "Settings:", "", "```json", json.dumps(s), "```", ""]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------------

QUICK = {"minutes": 0.5, "elbo_num": 16, "elbo_strata": 8, "raw_num": 8, "check_num": 2, "check_repeats": 2,
         "ode_num": 2, "rtol": 1e-3, "num": 20, "ddim_steps": 10, "ddpm_steps": 10}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a tiny budget and few digits and samples: every phase "
                   "in a few minutes (" + ", ".join(f"{k} {v:g}" for k, v in QUICK.items()) + ")")
    p.add_argument("--models", default=",".join(MODELS), help="comma-separated weightings from " + ", ".join(MODELS))
    p.add_argument("--minutes", type=float, default=6.0, help="training budget per model")
    p.add_argument("--steps", type=int, default=None, help="train exactly this many steps per model instead "
                   "(the minutes still cap it)")
    p.add_argument("--schedule", default="cosine", help="DDPM beta schedule")
    p.add_argument("--lr", type=float, default=2e-3, help="learning rate")
    p.add_argument("--batch-size", type=int, default=32, help="training batch size")
    p.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    p.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay")
    p.add_argument("--elbo-num", type=int, default=300, help="held-out digits for the ELBO")
    p.add_argument("--elbo-strata", type=int, default=24, help="strata of the sampled ELBO")
    p.add_argument("--elbo-exact-last", type=int, default=2, help="last steps of the chain evaluated exactly")
    p.add_argument("--raw-num", type=int, default=64, help="digits for the ELBO without clipping x0_pred (0: none)")
    p.add_argument("--check-num", type=int, default=4, help="digits whose whole 1000-step ELBO is computed, "
                   "against the sampled estimate of the same digits (0: none)")
    p.add_argument("--check-repeats", type=int, default=16, help="sampled estimates of the --check-num digits with "
                   "other seeds, averaged against the whole chain")
    p.add_argument("--ode-num", type=int, default=8, help="digits for the ODE likelihood (0: none)")
    p.add_argument("--rtol", type=float, default=1e-4, help="ODE tolerances")
    p.add_argument("--eval-batch", type=int, default=250, help="digits per network call for the bits/dim")
    p.add_argument("--num", type=int, default=500, help="samples per model and sampler")
    p.add_argument("--ddim-steps", type=int, default=25, help="DDIM steps")
    p.add_argument("--ddpm-steps", type=int, default=50, help="ancestral sampler's steps")
    p.add_argument("--ddpm-variance", default="large", choices=("small", "large"),
                   help="the ancestral sampler's variance for the fixed-variance models")
    p.add_argument("--sample-batch", type=int, default=250, help="samples per sampling batch")
    p.add_argument("--workers", type=int, default=2, help="processes for the bits/dim and sampling of the "
                   "trained models, one model each at a time (training always runs alone, one model after the other)")
    p.add_argument("--skip-eval", action="store_true", help="do not run scorekit eval")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the MNIST test IDX files")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    p.add_argument("--figures", type=Path, default=None, help="folder of the figures (default docs/images, "
                   "with --quick the output folder)")
    p.add_argument("--tag", default=None, help="file name stem of the outputs")
    args = p.parse_args(argv)
    if args.quick:
        defaults = {a.dest: a.default for a in p._actions}
        for k, v in QUICK.items():
            if getattr(args, k) == defaults[k]:
                setattr(args, k, v)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    unknown = [m for m in args.models if m not in MODELS]
    if unknown:
        p.error(f"unknown weighting {unknown[0]!r}; choose from {', '.join(MODELS)}")
    if "simple" not in args.models:
        p.error("--models must include simple, the reference of the paired differences")
    args.tag = args.tag or ("loss_weighting-quick" if args.quick else "loss_weighting")
    args.figures = args.figures or (args.out if args.quick else ROOT / "docs" / "images")
    if min(args.elbo_num, args.num, args.elbo_strata) < 2 or max(args.raw_num, args.ode_num, args.check_num) > args.elbo_num:
        p.error("--elbo-num, --num and --elbo-strata must be at least 2; --raw-num, --check-num and --ode-num at most "
                "--elbo-num")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    cache = args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    load = {"at the start": load_average()}
    phases = {}
    log(f"{args.tag}: {', '.join(args.models)}; load average {load['at the start']} on {os.cpu_count()} cores")

    train_set, held_out = load_mnist(args.data)
    pick = torch.randperm(held_out.x.shape[0], generator=torch.Generator().manual_seed(SEEDS["pick"]))[:args.elbo_num]
    x = held_out.x[pick].float()
    assert is_quantized(x, 8), "the held-out digits are not 8-bit"

    t_phase = time.perf_counter()
    budget = (f"{args.steps} training steps (at most {args.minutes:g} min)" if args.steps
              else f"{args.minutes:g} min of training")
    models = {}
    for name in args.models:
        config = train_config(args, name)
        run_dir = cache / f"{args.tag}-{name}-run"
        training = trained_run(config, run_dir, args.minutes, f"{name} ({MODELS[name][1]})")
        models[name] = {"description": MODELS[name][1], "run": os.path.relpath(run_dir, ROOT),
                        "config": config.to_dict(), "training": training, "curve": loss_summary(run_dir),
                        "bits": {}, "samples": {}}
    load["after training"] = load_average()
    phases["training"] = time.perf_counter() - t_phase

    t_phase = time.perf_counter()
    if args.workers > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(args.workers, mp_context=multiprocessing.get_context("spawn")) as pool:
            futures = {name: pool.submit(bits_and_samples, name, m, args, x) for name, m in models.items()}
            models = {name: f.result() for name, f in futures.items()}
    else:
        models = {name: bits_and_samples(name, m, args, x) for name, m in models.items()}
    load["after bits/dim and sampling"] = load_average()
    phases["bits/dim and sampling"] = time.perf_counter() - t_phase

    t_phase = time.perf_counter()
    reference = None
    if args.skip_eval or not eval_available():
        log("eval: skipped (" + ("--skip-eval" if args.skip_eval else "no digits feature network in this scorekit")
            + "); a later run adds it")
    else:
        (cache / "eval").mkdir(parents=True, exist_ok=True)
        real = cache / "samples" / f"{args.tag}-real.npz"
        pick_real = torch.randperm(train_set.x.shape[0], generator=torch.Generator().manual_seed(SEEDS["real"]))[:args.num]
        write_npz(real, train_set.x[pick_real])
        jobs = [(name, sampler, m["samples"][sampler]) for name, m in models.items() for sampler in SAMPLERS]
        reference = {"name": f"{args.num} training digits", "npz": os.path.relpath(real, ROOT),
                     "sha256": hashlib.sha256(real.read_bytes()).hexdigest()}
        for name, sampler, entry in jobs + [("real", "training digits", reference)]:
            stem = f"{args.tag}-{name}" + (f"-{sampler}" if name != "real" else "")
            scores = cached(cache / "eval" / f"{stem}.key.json", {"npz": entry["sha256"]},
                            lambda: evaluate(ROOT / entry["npz"], args, cache / "eval" / f"{stem}.json"),
                            f"{name} {sampler} eval")
            entry["scores"] = scores
            log(f"{name} {sampler}: FID {metric(scores, 'fid', '.0f')}, KID {metric(scores, 'kid', '.3g')}, "
                f"precision {metric(scores, 'precision', '.3f')}, recall {metric(scores, 'recall', '.3f')}")
        load["after eval"] = load_average()
    phases["eval"] = time.perf_counter() - t_phase

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}, one torch thread",
              "settings": settings, "budget": budget, "elbo_calls": len(strata_edges(args, 1000)),
              "models": models, "load": load, "phase_seconds": phases, "figures": {}, "reference": reference}
    for name in models:
        report["models"][name]["paired_elbo_vs_simple"] = paired(report, name)
        report["models"][name]["paired_raw_elbo_vs_simple"] = paired(report, name, "raw")
    args.figures.mkdir(parents=True, exist_ok=True)
    stem = args.tag.replace("_", "-")
    report["figures"]["tradeoff"] = os.path.relpath(tradeoff_figure(report, args.figures / f"{stem}.png"), ROOT)
    grid = samples_figure(report, args.figures / f"{stem}-samples.png")
    report["figures"]["samples"] = os.path.relpath(grid, ROOT) if grid else None
    write_report(args.out, args.tag, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
