"""Bits per dimension on held-out MNIST digits: the variational bound (ELBO) and the exact
probability-flow ODE likelihood, for a model trained with L_simple, the same model with
Analytic-DPM variances, and a model trained with learned variances and the hybrid loss.

    .venv/bin/python benchmarks/mnist_nll.py                  # 8 minutes of training per model
    .venv/bin/python benchmarks/mnist_nll.py --minutes 2 --num 32   # a short run
    ./run bench mnist_nll [options]

Data: the MNIST test digits (``../shared/data/mnist-test``) at their native 28x28, 8-bit,
images 0-7999 for training and 8000-9999 held out (``--num`` of them are evaluated).

Models: scorekit's ``tiny`` U-Net, DDPM with the cosine schedule (T = 1000), eps-prediction,
each trained for ``--minutes`` of optimiser steps (``train(max_seconds=...)``), one thread:

* ``simple``: ``L_simple``, fixed reverse variances;
* ``hybrid``: a variance head trained with ``L_simple + 0.001 L_vlb`` (Nichol & Dhariwal 2021).

Evaluations on the same held-out digits, each with its own wall time and network evaluations:

* ELBO (every one of the 1000 steps, the discretised Gaussian decoder for 8-bit data) of the
  ``simple`` model with the reverse variances ``beta~_t`` ("small"), ``beta_t`` ("large") and
  Analytic-DPM's (estimated from ``--analytic-samples`` training digits per step), and of the
  ``hybrid`` model with its learned variances; each with the prior, decoder and step terms.
* ODE likelihood of both models: the probability-flow ODE with Hutchinson's divergence
  estimator (one Rademacher probe), uniform dequantisation, rtol = atol = ``--rtol``.

Results go to ``benchmarks/results/mnist_nll.md`` / ``.json`` (``--out``), the trained runs to
``--out``'s ``cache/``. A run folder already trained with the same settings is reused
(``--retrain`` trains again).
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import torch

from scorekit.data import load_dataset
from scorekit.likelihood import elbo, ode_likelihood
from scorekit.train import TrainConfig, checkpoint_denoiser, load_checkpoint, train
from scorekit.variances import analytic_variances

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist-test"
NUM_TRAIN, NUM_HELD_OUT = 8000, 2000
SEEDS = {"train": 0, "elbo": 1, "ode": 2, "analytic": 3, "pick": 4}


def log(msg: str) -> None:
    print(f"[{datetime.datetime.now():%H:%M:%S}] {msg}", flush=True)


def train_model(name: str, data: str, minutes: float, cache: Path, retrain: bool, **options) -> tuple[dict, str]:
    """Train (or reuse) one model; returns (training info, run folder)."""
    run_dir = cache / f"mnist_nll-{name}-{minutes:g}min"
    config = TrainConfig(data=f"mnist:{data}", data_options={"start": 0, "stop": NUM_TRAIN}, model="tiny",
                         model_options={"num_classes": None}, process="ddpm",
                         process_options={"schedule": "cosine"}, prediction="eps", steps=10 ** 7,
                         batch_size=32, lr=2e-3, warmup_steps=50, ema_decay=0.999, seed=SEEDS["train"],
                         num_threads=1, log_every=10, checkpoint_every=10 ** 9, keep_checkpoints=1,
                         sample_num=1, sample_steps=1, **options)
    info_path = run_dir / "benchmark.json"
    if not retrain and info_path.is_file():
        info = json.loads(info_path.read_text())
        if config.matches_recorded(info.get("config")):        # options added since keep their defaults
            log(f"{name}: reusing {run_dir} ({info['steps']} steps)")
            return info, str(run_dir)
    if run_dir.exists():
        shutil.rmtree(run_dir)
    log(f"{name}: training for {minutes:g} min")
    result = train(config, run_dir, progress=False, max_seconds=60 * minutes)
    info = {"config": config.as_recorded(), "steps": result.step, "train_seconds": round(result.seconds, 1),
            "images_per_second": round(result.images_per_second, 1), "final_loss": result.loss}
    info_path.write_text(json.dumps(info, indent=2) + "\n")
    log(f"{name}: {result.step} steps in {result.seconds:.0f} s, loss {result.loss:.4f}")
    return info, str(run_dir)


def batched(fn, x: torch.Tensor, batch: int) -> list:
    return [fn(x[i:i + batch]) for i in range(0, x.shape[0], batch)]


class Counted:
    """Counts the network calls of a model."""

    def __init__(self, model):
        self.model, self.calls = model, 0

    def __call__(self, *args):
        self.calls += 1
        return self.model(*args)


def counted_denoiser(ckpt):
    d = checkpoint_denoiser(ckpt, ema=True)
    if getattr(d, "learned_variance", False):
        from scorekit.variances import PredictionHead

        counter = d.network = Counted(d.network)
        d.model = PredictionHead(counter)
    else:
        counter = d.model = Counted(d.model)
    return d, counter


def summarise(values: torch.Tensor) -> tuple[float, float]:
    v = values.double()
    return v.mean().item(), (v.std().item() / math.sqrt(v.numel()) if v.numel() > 1 else float("nan"))


def evaluate_elbo(ckpt, x: torch.Tensor, variance, batch: int) -> dict:
    d, counter = counted_denoiser(ckpt)
    g = torch.Generator().manual_seed(SEEDS["elbo"])
    t0 = time.perf_counter()
    with torch.no_grad():
        parts = batched(lambda b: elbo(d, ckpt.process, b, variance=variance, data_bits=8, generator=g), x, batch)
    seconds = time.perf_counter() - t0
    total = torch.cat([p.total_bpd for p in parts])
    weights = [p.total_bpd.numel() / x.shape[0] for p in parts]
    terms = sum(w * p.terms_bpd.double() for w, p in zip(weights, parts))
    mean, se = summarise(total)
    prior = sum(w * float(p.prior_bpd) for w, p in zip(weights, parts))
    decoder = sum(w * float(p.decoder_bpd) for w, p in zip(weights, parts))
    T = terms.numel()
    bands = [(1, 10), (10, 100), (100, 500), (500, T)]
    return {"mean_bpd": mean, "stderr_bpd": se, "prior_bpd": prior, "decoder_bpd": decoder,
            "steps_bpd": {f"t {a}-{b - 1}": float(terms[a:b].sum()) for a, b in bands},
            "nfe_per_image": counter.calls / len(parts), "seconds_per_image": seconds / x.shape[0],
            "seconds": seconds}


def evaluate_ode(ckpt, x: torch.Tensor, rtol: float, batch: int) -> dict:
    d, counter = counted_denoiser(ckpt)
    g = torch.Generator().manual_seed(SEEDS["ode"])
    t0 = time.perf_counter()
    parts = batched(lambda b: ode_likelihood(d, ckpt.process, b, divergence="hutchinson", probe="rademacher",
                                             num_probes=1, rtol=rtol, atol=rtol, data_bits=8, generator=g),
                    x, batch)
    seconds = time.perf_counter() - t0
    mean, se = summarise(torch.cat([p.bits_per_dim for p in parts]))
    return {"mean_bpd": mean, "stderr_bpd": se, "nfe_per_image": counter.calls / len(parts),
            "seconds_per_image": seconds / x.shape[0], "seconds": seconds}


def write_report(report: dict, out: Path) -> None:
    lines = ["# Bits/dim on held-out MNIST digits", "",
             f"`{report['command']}` -- {report['date']}, {report['machine']}", "",
             f"{report['settings']['num']} held-out digits (28x28, 8-bit), tiny U-Net (DDPM cosine, T = 1000, "
             f"eps-prediction), {report['settings']['minutes']:g} min of training per model.", "",
             "| model | training | bound | reverse variance | bits/dim | +- s.e. | prior | decoder L_0 | "
             "L_1..L_9 | L_10..L_99 | L_100..L_499 | L_500.. | NFE per batch | s per image |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["rows"]:
        r = row["result"]
        steps = r.get("steps_bpd", {})
        cells = [f"{v:.3f}" for v in steps.values()] if steps else ["-"] * 4
        lines.append(f"| {row['model']} | {row['training']} | {row['bound']} | {row['variance']} | "
                     f"{r['mean_bpd']:.3f} | {r['stderr_bpd']:.3f} | "
                     + (f"{r['prior_bpd']:.4f} | {r['decoder_bpd']:.3f} | " if "prior_bpd" in r else "- | - | ")
                     + " | ".join(cells) + f" | {r['nfe_per_image']:.0f} | {r['seconds_per_image']:.2f} |")
    lines += ["", "ELBO: every step of the 1000-step chain (one network evaluation per step); ODE: adaptive RK45 "
              "in log-SNR, one Rademacher probe, uniform dequantisation. s.e.: standard error over the "
              "digits (for the ODE it includes the Hutchinson noise)."]
    (out / "mnist_nll.md").write_text("\n".join(lines) + "\n")
    (out / "mnist_nll.json").write_text(json.dumps(report, indent=2) + "\n")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=8.0, help="training budget per model (default 8)")
    p.add_argument("--num", type=int, default=64, help="held-out digits evaluated (default 64)")
    p.add_argument("--batch", type=int, default=64, help="digits per evaluation batch (default 64)")
    p.add_argument("--rtol", type=float, default=1e-5, help="ODE tolerances (default 1e-5)")
    p.add_argument("--analytic-samples", type=int, default=64,
                   help="training digits per step for the Analytic-DPM estimate (default 64)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="the MNIST IDX folder")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--skip-ode", action="store_true", help="only the ELBO")
    p.add_argument("--retrain", action="store_true", help="train again even if a matching run exists")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(args.out)
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)

    held_out = load_dataset(f"mnist:{args.data}", start=NUM_TRAIN, stop=NUM_TRAIN + NUM_HELD_OUT)
    pick = torch.randperm(NUM_HELD_OUT, generator=torch.Generator().manual_seed(SEEDS["pick"]))[:args.num]
    x = held_out.x[pick].float()
    train_x = load_dataset(f"mnist:{args.data}", start=0, stop=NUM_TRAIN).x.float()

    report = {"command": " ".join(["benchmarks/mnist_nll.py", *(argv if argv is not None else sys.argv[1:])]),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}",
              "settings": vars(args), "models": {}, "rows": []}
    simple_info, simple_dir = train_model("simple", args.data, args.minutes, cache, args.retrain)
    hybrid_info, hybrid_dir = train_model("hybrid", args.data, args.minutes, cache, args.retrain,
                                          variance="learned", weighting="hybrid")
    report["models"] = {"simple": simple_info, "hybrid": hybrid_info}
    simple, hybrid = load_checkpoint(simple_dir), load_checkpoint(hybrid_dir)

    def training(info, loss):
        return f"{loss}, {info['steps']} steps"

    log(f"Analytic-DPM: estimating Gamma_t from {args.analytic_samples} training digits per step")
    t0 = time.perf_counter()
    d, _ = counted_denoiser(simple)
    with torch.no_grad():
        analytic = analytic_variances(d, simple.process, train_x, num_samples=args.analytic_samples,
                                      generator=torch.Generator().manual_seed(SEEDS["analytic"]))
    report["analytic_seconds"] = round(time.perf_counter() - t0, 1)

    plans = [("simple", simple, simple_info, "L_simple", "small", "beta~_t"),
             ("simple", simple, simple_info, "L_simple", "large", "beta_t"),
             ("simple", simple, simple_info, "L_simple", analytic, "Analytic-DPM"),
             ("hybrid", hybrid, hybrid_info, "hybrid", "learned", "learned")]
    for name, ckpt, info, loss, variance, label in plans:
        log(f"ELBO of {name} with {label} variances on {args.num} digits")
        r = evaluate_elbo(ckpt, x, variance, args.batch)
        log(f"  {r['mean_bpd']:.3f} +- {r['stderr_bpd']:.3f} bits/dim ({r['seconds']:.0f} s)")
        report["rows"].append({"model": name, "training": training(info, loss), "bound": "ELBO",
                               "variance": label, "result": r})
        write_report(report, out)
    if not args.skip_ode:
        for name, ckpt, info, loss in (("simple", simple, simple_info, "L_simple"),
                                       ("hybrid", hybrid, hybrid_info, "hybrid")):
            log(f"ODE likelihood of {name} on {args.num} digits")
            r = evaluate_ode(ckpt, x, args.rtol, args.batch)
            log(f"  {r['mean_bpd']:.3f} +- {r['stderr_bpd']:.3f} bits/dim ({r['seconds']:.0f} s, "
                f"NFE {r['nfe_per_image']:.0f} per batch)")
            report["rows"].append({"model": name, "training": training(info, loss), "bound": "ODE",
                                   "variance": "-", "result": r})
            write_report(report, out)
    log(f"wrote {out / 'mnist_nll.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
