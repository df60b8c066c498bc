"""Is bfloat16 autocast training as good as float32? The loss curve and the held-out loss, same seed.

    .venv/bin/python benchmarks/bf16_training.py [--data digits] [--model tiny] [--steps 1500]
        [--device cpu] [--out benchmarks/results/bf16_training]     # or: ./run bench bf16_training

Trains the same run through ``scorekit.train.train`` three times, changing one thing at a time:

* ``fp32``, seed 0: the reference;
* ``bf16``, seed 0: ``mixed_precision="bf16"`` (autocast; weights, optimiser and EMA stay float32),
  the same batches, timesteps and noise;
* ``fp32``, seed 1: another seed, which measures how far two equally good float32 runs lie apart.

bf16 is stable for this run when what it changes is no larger than what a new seed changes:

* the training loss, as the mean of the logged losses over the last quarter of the steps, with the
  standard error of that mean over the logged intervals;
* the held-out loss of each run's EMA weights, evaluated in float32 on images the runs never saw
  (``--holdout``), each image at ``--draws`` fixed ``(t, eps)`` pairs shared by all runs, so that
  the differences between runs are paired: their standard error is over images;
* the first logged interval, where the bf16 run starts from the same weights and batches as the
  float32 one: the relative loss difference in units of bfloat16's unit roundoff u = 2^-8.

Writes ``report.md``, ``report.json`` and ``loss_curves.png`` (the curves, smoothed, and the two
differences to the reference) into ``--out``; each run's folder is kept and reused when its
configuration matches.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from scorekit.data import load_dataset
from scorekit.losses import diffusion_loss
from scorekit.plotting import _new_figure, save_figure, smooth, write_text
from scorekit.train import TrainConfig, load_checkpoint, train
from scorekit.train.config import resolve_mixed_precision

ROOT = Path(__file__).resolve().parent.parent
U = 2.0 ** -8
RUNS = (("fp32", "no", 0), ("bf16", "bf16", 0), ("fp32 seed 1", "no", 1))


def run_config(args, precision: str, seed: int) -> TrainConfig:
    options = {"stop": args.train_size}
    if args.data_options:
        options.update(json.loads(args.data_options))
    return TrainConfig(data=args.data, data_options=options, model=args.model, steps=args.steps,
                       batch_size=args.batch_size, lr=args.lr, warmup_steps=args.warmup, seed=seed,
                       mixed_precision=precision, device=args.device, num_threads=args.threads,
                       log_every=args.log_every, checkpoint_every=10 ** 9, sample_every=0)


def trained(args, label: str, precision: str, seed: int) -> tuple[str, float]:
    """The run folder of ``label`` (trained here unless a finished run with the same settings is
    there) and the seconds its training took."""
    cfg = run_config(args, precision, seed)
    out = os.path.join(args.out, label.replace(" ", "-"))
    budget = os.path.join(out, "budget.json")
    if os.path.exists(budget):
        saved = json.load(open(budget))
        if saved.get("config") == cfg.as_recorded():
            print(f"{label}: reusing {out}", flush=True)
            return out, saved["seconds"]
    t0 = time.perf_counter()
    print(f"{label}: training {args.steps} steps", flush=True)
    train(cfg, out, progress=not args.no_progress, log=None)
    seconds = time.perf_counter() - t0
    write_text(budget, json.dumps({"config": cfg.as_recorded(), "seconds": seconds}, indent=2) + "\n")
    return out, seconds


def logged(run: str) -> tuple[np.ndarray, np.ndarray]:
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl")) if line.strip()]
    rows = [r for r in rows if "loss" in r]
    return np.array([r["step"] for r in rows]), np.array([r["loss"] for r in rows], dtype=np.float64)


@torch.no_grad()
def heldout_losses(run: str, x0: torch.Tensor, draws: int, device: str) -> np.ndarray:
    """(N,) each held-out image's loss averaged over ``draws`` (t, eps) pairs from a fixed
    generator (the same pairs for every run), EMA weights in float32, the run's own prediction."""
    ckpt = load_checkpoint(run, device=device)
    net = ckpt.ema_net.float().eval()
    g = torch.Generator(device=device).manual_seed(1234)
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for _ in range(draws):
        for lo in range(0, x0.shape[0], 256):
            xb = x0[lo:lo + 256].to(device)
            out = diffusion_loss(lambda x, t, y: net(x, t), ckpt.process, xb, prediction_type=ckpt.prediction_type,
                                 generator=g)
            total[lo:lo + 256] += out.per_sample.double().cpu()
    return (total / draws).numpy()


def mean_se(v: np.ndarray) -> tuple[float, float]:
    """The mean of ``v`` and its standard error ``s / sqrt(n)``; the error is NaN (undefined) when
    ``v`` holds one value, as in a smoke run of a few steps."""
    if len(v) < 2:
        return float(v.mean()), math.nan
    return float(v.mean()), float(v.std(ddof=1) / math.sqrt(len(v)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default="digits", help="training data (a scorekit train --data spec)")
    ap.add_argument("--data-options", help="more data options as JSON, e.g. '{\"pad_to\": 32}'")
    ap.add_argument("--train-size", type=int, default=1500, help="train on the first N images")
    ap.add_argument("--holdout", type=int, default=297, help="evaluate on the next N images")
    ap.add_argument("--draws", type=int, default=8, help="(t, eps) pairs per held-out image")
    ap.add_argument("--model", default="tiny")
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads on a CPU (default 1)")
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bf16_training"))
    args = ap.parse_args(argv)
    if args.device.startswith("cuda"):
        torch.backends.cuda.matmul.allow_tf32 = False      # float32 means float32 here
        torch.backends.cudnn.allow_tf32 = False
        args.threads = None
    os.makedirs(args.out, exist_ok=True)
    start = datetime.datetime.now().isoformat(timespec="seconds")
    runs = {label: trained(args, label, precision, seed) for label, precision, seed in RUNS}

    options = json.loads(args.data_options) if args.data_options else {}
    held = load_dataset(args.data, start=args.train_size, stop=args.train_size + args.holdout, **options).x
    per_image = {label: heldout_losses(run, held, args.draws, args.device) for label, (run, _) in runs.items()}
    curves = {label: logged(run) for label, (run, _) in runs.items()}
    ref_steps, ref = curves["fp32"]
    rows = []
    for label, (run, seconds) in runs.items():
        steps, losses = curves[label]
        tail = losses[len(losses) * 3 // 4:]
        train_mean, train_se = mean_se(tail)
        held_mean, held_se = mean_se(per_image[label])
        row = dict(run=label, seconds=seconds, train_loss=train_mean, train_se=train_se,
                   heldout_loss=held_mean, heldout_se=held_se)
        if label != "fp32":
            diff = per_image[label] - per_image["fp32"]
            row["heldout_diff"], row["heldout_diff_se"] = mean_se(diff)
            row["train_diff"] = train_mean - mean_se(ref[len(ref) * 3 // 4:])[0]
            if label == "bf16":                          # same start, same batches as the reference
                row["first_interval_rel_u"] = abs(losses[0] - ref[0]) / ref[0] / U
        rows.append(row)
    resolved = resolve_mixed_precision("auto", args.device)
    report = dict(date=start, command=" ".join(sys.argv), device=args.device,
                  device_name=torch.cuda.get_device_name() if args.device.startswith("cuda") else
                  (platform.processor() or platform.machine()), torch=torch.__version__,
                  auto_precision_here=resolved, settings=vars(args), rows=rows)

    lines = [f"bf16 autocast against float32 training: {args.data} (first {args.train_size} images), model "
             f"{args.model}, {args.steps} steps of batch {args.batch_size}, lr {args.lr}; {args.device} "
             f"({report['device_name']}), torch {torch.__version__}; {start}", "",
             "| run | training s | train loss, last quarter | held-out loss (EMA, fp32) | held-out vs fp32 seed 0 "
             "(paired) | train loss vs fp32 seed 0 | first interval, rel. diff / u |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        diff = f"{r['heldout_diff']:+.5f} ± {r['heldout_diff_se']:.5f}" if "heldout_diff" in r else ""
        tdiff = f"{r['train_diff']:+.5f}" if "train_diff" in r else ""
        first = f"{r['first_interval_rel_u']:.2g}" if "first_interval_rel_u" in r else ""
        lines.append(f"| {r['run']} | {r['seconds']:.0f} | {r['train_loss']:.5f} ± {r['train_se']:.5f} | "
                     f"{r['heldout_loss']:.5f} ± {r['heldout_se']:.5f} | {diff} | {tdiff} | {first} |")
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(os.path.join(args.out, "report.md"), text)
    write_text(os.path.join(args.out, "report.json"), json.dumps(report, indent=2) + "\n")

    fig = _new_figure((10, 4))
    ax1, ax2 = fig.subplots(1, 2)
    colours = {"fp32": "C0", "bf16": "C3", "fp32 seed 1": "C2"}
    for label, (steps, losses) in curves.items():
        ax1.plot(steps, smooth(losses, 0.9), color=colours[label], label=label, lw=1.2)
        if label != "fp32" and len(losses) == len(ref):
            ax2.plot(steps, smooth(losses - ref, 0.9), color=colours[label], lw=1.2,
                     label=f"{label} - fp32")
    ax1.set(xlabel="step", ylabel="training loss (smoothed)", yscale="log", title="loss curves")
    ax2.axhline(0, color="k", lw=0.6)
    ax2.set(xlabel="step", ylabel="loss difference (smoothed)", title="difference to fp32, seed 0")
    ax1.legend()
    ax2.legend()
    save_figure(fig, os.path.join(args.out, "loss_curves.png"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
