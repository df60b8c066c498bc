"""Sample quality on MNIST after a fixed CPU budget: scorekit's trainer, side by side with a plain
diffusers training loop.

    .venv/bin/python benchmarks/mnist_quality.py             # 12 minutes, scorekit only
    .venv/bin/python benchmarks/mnist_quality.py --peers     # and diffusers, one after the other
    .venv/bin/python benchmarks/mnist_quality.py --minutes 3 # a short run

``--help`` lists the options: the budget, the scorekit model preset and training settings, the
sampler and its numbers of steps (``--nfe 50,20,10``), the number of samples, the output folder.

Data: the MNIST test digits (``../shared/data/mnist-test``), images 0-7999 for training and
8000-9999 held out, padded to 32x32, in [-1, 1].

1. A small CNN classifier (``scorekit.metrics.digits_classifier``) is trained on the training
   digits (cached in ``OUT/cache/``); its held-out accuracy is reported. It scores digits the way
   an Inception network scores images for FID and the Inception Score.
2. Reference values at the same sample sizes: 1,000 training digits and 1,000 images of clipped
   Gaussian noise, each against the 2,000 held-out digits.
3. scorekit: ``scorekit.train.train`` for ``--minutes`` of training time (the loop alone; loading,
   the final checkpoint and the trainer's end-of-run grid are not counted), one torch thread.
   The budget is enforced by the trainer itself (``train(max_seconds=...)``, the same limit as
   ``scorekit train --max-minutes``), which checks the clock before every step.
   Then 1,000 digits from the EMA weights with scorekit's DDIM (eta = 0, the x0-prediction
   clipped to [-1, 1] as diffusers' DDIM does by default) at each ``--nfe``.
4. With ``--peers``: diffusers' ``UNet2DModel`` (block_out_channels (32, 64, 64), 1.62 M
   parameters), eps-prediction, linear betas, trained by the loop of diffusers' training
   tutorial (AdamW, lr 1e-4, MSE to the noise, gradient clipping 1.0; the learning rate is held
   constant, since the tutorial's 500 warm-up steps would outlast the run) with the EMA of
   diffusers' ``train_unconditional.py`` (``EMAModel``, decay 0.9999, warm-up power 3/4) for the same time, one thread, after the scorekit run (not at the same
   time); sampled with ``DDIMScheduler`` (its defaults, as ``DDIMPipeline`` uses it) at each
   ``--peer-nfe``. Both samplers start from the same noise x_T.

Scores of 1,000 samples: the share the classifier recognises with confidence > 0.9, the
Inception-Score analogue ``exp E[KL(p(y|x) || p(y))]`` (at most 10), the class balance
(counts per digit, largest / smallest count, KL to uniform), and the Fréchet distance (FD)
between the classifier's 128-d features of the samples and of the 2,000 held-out digits.

Writes ``TAG.md``, ``TAG.json`` and ``TAG-<model>.png`` sample grids into ``--out`` (default
``benchmarks/results/``); TAG is ``mnist_quality`` (with ``-<minutes>min`` for other budgets).
The samples themselves (``TAG-<model>-nfe<n>.safetensors``), the classifier and the scorekit run go to
``--out``'s ``cache/``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import json
import math
import os
import platform
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

import scorekit
from scorekit.data import load_dataset
from scorekit.metrics import frechet_distance_from_features
from scorekit.metrics.digits_classifier import (accuracy, class_balance, confident_share, inception_score,
                                                load_digit_classifier, save_digit_classifier,
                                                train_digit_classifier)
from scorekit.models import count_parameters
from scorekit.plotting import image_grid, write_text
from scorekit.train import TrainConfig, checkpoint_denoiser, load_checkpoint, train

Tensor = torch.Tensor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "mnist-test"
NUM_TRAIN, NUM_HELD_OUT = 8000, 2000
SEEDS = {"classifier": 0, "reference": 1, "x_T": 2, "peer_init": 3, "peer_data": 4, "peer_noise": 5,
         "train": 0}
CONFIDENCE = 0.9


def log(msg: str) -> None:
    stamp = datetime.datetime.now().strftime("%H:%M:%S")
    print(f"[{stamp}] {msg}", flush=True)


def load_average() -> list[float]:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


# --- data and the classifier -------------------------------------------------------------------------

def load_mnist(path: Path):
    train_set = load_dataset(f"mnist:{path}", pad_to=32, start=0, stop=NUM_TRAIN)
    held_out = load_dataset(f"mnist:{path}", pad_to=32, start=NUM_TRAIN, stop=NUM_TRAIN + NUM_HELD_OUT)
    return train_set, held_out


def get_classifier(train_set, held_out, cache: Path, epochs: int):
    """The digit classifier trained on the training digits, from the cache when its settings match."""
    folder = cache / f"mnist-digit-classifier-{epochs}ep"
    want = {"epochs": epochs, "num_train": NUM_TRAIN, "seed": SEEDS["classifier"], "data": train_set.spec,
            "outlier_share": 0.25, "outlier_weight": 0.5}
    if (folder / "config.json").is_file():
        net = load_digit_classifier(folder)
        if all(net.info.get(k) == v for k, v in want.items()):
            log(f"classifier: loaded from {folder}")
            return net, net.info
    log(f"classifier: training for {epochs} epochs on {NUM_TRAIN} digits")
    t0 = time.perf_counter()
    net = train_digit_classifier(train_set.x, train_set.y, epochs=epochs, outlier_share=want["outlier_share"],
                                 outlier_weight=want["outlier_weight"],
                                 generator=torch.Generator().manual_seed(SEEDS["classifier"]), log=log)
    seconds = time.perf_counter() - t0
    net.info.update(want, train_seconds=round(seconds, 1),
                    heldout_accuracy=accuracy(net, held_out.x, held_out.y),
                    train_accuracy=accuracy(net, train_set.x, train_set.y),
                    parameters=count_parameters(net))
    save_digit_classifier(net, folder)
    return net, net.info


class Scorer:
    """Scores sets of images with the classifier, against the held-out digits' features."""

    def __init__(self, classifier, held_out):
        self.classifier = classifier
        self.held_out_features = classifier.features(held_out.x)

    def __call__(self, x: Tensor) -> dict:
        x = x.clamp(-1, 1)
        probs = self.classifier.predict_proba(x)
        balance = class_balance(probs.argmax(1), 10)
        return {"n": int(x.shape[0]),
                "confident_share": confident_share(probs, CONFIDENCE),
                "inception_score": inception_score(probs),
                "class_counts": balance["counts"],
                "max_min_ratio": balance["max_min_ratio"],
                "kl_to_uniform": balance["kl_to_uniform"],
                "fd": frechet_distance_from_features(self.classifier.features(x), self.held_out_features)}


# --- scorekit --------------------------------------------------------------------------------------------

def train_for_budget(config: TrainConfig, run_dir: Path, seconds: float) -> dict:
    """Train ``config`` into ``run_dir`` until its optimiser steps have taken ``seconds``.

    ``train(max_seconds=...)`` checks the clock before every step, so the loop overshoots the
    budget by at most one step; ``config.steps`` is only an upper bound (the learning rate is
    constant after warm-up, so it does not shape the schedule).
    """
    if run_dir.exists():
        shutil.rmtree(run_dir)
    t_start = time.perf_counter()
    result = train(config, run_dir, progress=False, max_seconds=seconds)
    wall = time.perf_counter() - t_start
    if result.step >= config.steps:
        log(f"scorekit: reached the step limit {config.steps} before the budget; raise --steps")
    log(f"scorekit: {result.step} steps in {result.seconds:.0f} s ({result.images_per_second:.1f} images/s), "
        f"loss {result.loss:.4f}")
    return {"steps": result.step, "train_seconds": result.seconds, "wall_seconds": wall,
            "images_per_second": result.images_per_second, "final_loss": result.loss,
            "load": load_average()}


def sample_scorekit(ckpt, n: int, nfe: int, *, sampler: str, clip: float | None, batch: int) -> tuple[Tensor, float]:
    """``n`` samples from the EMA weights with scorekit; returns (samples, seconds)."""
    d = checkpoint_denoiser(ckpt, ema=True)
    shape = (n, *ckpt.sample_shape)
    x_T = d.process.prior_sample(shape, generator=torch.Generator().manual_seed(SEEDS["x_T"]))
    g = torch.Generator().manual_seed(SEEDS["x_T"] + 1)
    out = []
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        out.append(scorekit.sample(d.model, x_T[i:i + batch], process=d.process,
                                   prediction_type=d.prediction_type, sampler=sampler,
                                   num_steps=nfe, generator=g, clip=clip))
    return torch.cat(out), time.perf_counter() - t0


# --- the diffusers peer ------------------------------------------------------------------------------------

def peer_model():
    from diffusers import UNet2DModel

    torch.manual_seed(SEEDS["peer_init"])            # diffusers initialises from the global generator
    return UNet2DModel(sample_size=32, in_channels=1, out_channels=1, layers_per_block=2,
                       block_out_channels=(32, 64, 64),
                       down_block_types=("DownBlock2D", "DownBlock2D", "AttnDownBlock2D"),
                       up_block_types=("AttnUpBlock2D", "UpBlock2D", "UpBlock2D"))


def train_peer(train_set, seconds: float, *, batch_size: int, lr: float) -> tuple[object, dict]:
    """The loop of diffusers' training tutorial for ``seconds`` of training time; returns the
    EMA network and what happened."""
    from diffusers import DDPMScheduler
    from diffusers.training_utils import EMAModel

    model = peer_model()
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    ema = EMAModel(model.parameters(), decay=0.9999, use_ema_warmup=True, inv_gamma=1.0, power=0.75)
    g_data = torch.Generator().manual_seed(SEEDS["peer_data"])
    g_noise = torch.Generator().manual_seed(SEEDS["peer_noise"])
    x = train_set.x
    order, pos = torch.randperm(x.shape[0], generator=g_data), 0
    model.train()
    step, loop_seconds, losses = 0, 0.0, []
    while loop_seconds < seconds:
        t0 = time.perf_counter()
        if pos + batch_size > x.shape[0]:
            order, pos = torch.randperm(x.shape[0], generator=g_data), 0
        clean = x[order[pos:pos + batch_size]]
        pos += batch_size
        noise = torch.randn(clean.shape, generator=g_noise)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (clean.shape[0],), generator=g_noise)
        noisy = scheduler.add_noise(clean, noise, t)
        loss = torch.nn.functional.mse_loss(model(noisy, t, return_dict=False)[0], noise)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        ema.step(model.parameters())
        loop_seconds += time.perf_counter() - t0
        losses.append(float(loss.detach()))
        step += 1
        if step % 50 == 0:
            log(f"diffusers: {step} steps in {loop_seconds:.0f} s, loss {np.mean(losses[-50:]):.4f}")
    ema_model = copy.deepcopy(model).eval()
    ema.copy_to(ema_model.parameters())
    info = {"steps": step, "train_seconds": loop_seconds, "wall_seconds": loop_seconds,
            "images_per_second": step * batch_size / loop_seconds,
            "final_loss": float(np.mean(losses[-50:])), "ema_decay_last": float(ema.cur_decay_value or 0.0)}
    return ema_model, info


@torch.no_grad()
def sample_peer(model, n: int, nfe: int, *, batch: int) -> tuple[Tensor, float]:
    """``n`` samples with diffusers' ``DDIMScheduler`` (defaults, eta = 0), as in ``DDIMPipeline``."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear")
    x_T = torch.randn((n, 1, 32, 32), generator=torch.Generator().manual_seed(SEEDS["x_T"]))
    out = []
    t0 = time.perf_counter()
    for i in range(0, n, batch):
        image = x_T[i:i + batch]
        scheduler.set_timesteps(nfe)
        for t in scheduler.timesteps:
            eps = model(image, t, return_dict=False)[0]
            image = scheduler.step(eps, t, image, eta=0.0).prev_sample
        out.append(image)
    return torch.cat(out), time.perf_counter() - t0


# --- the report ------------------------------------------------------------------------------------------

def finite(obj):
    """``obj`` with infinite or NaN floats replaced by ``None`` (strict JSON)."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_report(out: Path, tag: str, report: dict, text: str) -> None:
    """Write ``report`` as strict JSON to ``OUT/TAG.json`` and ``text`` to ``OUT/TAG.md``
    (atomically), and print ``text``."""
    write_text(out / f"{tag}.json", json.dumps(finite(report), indent=2, allow_nan=False) + "\n")
    write_text(out / f"{tag}.md", text)
    log(f"wrote {out / (tag + '.md')} and {out / (tag + '.json')}")
    print(text)


def header_lines(report: dict, title: str) -> list[str]:
    """The title, command, date, machine and load averages that open a benchmark's Markdown report."""
    return [f"# {title}", "", f"Command: `{report['command']}`  ", f"Date: {report['date']}; {report['machine']}  ",
            "Load average (1, 5, 15 min): " + "; ".join(f"{k} {v}" for k, v in report["load"].items()), ""]


def fmt_counts(c) -> str:
    return " ".join(str(v) for v in c)


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = [f"# Sample quality on MNIST after {s['minutes']:g} minutes of CPU training", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}; {report['machine']}  ",
             "Load average (1, 5, 15 min; 2 cores shared with other work): "
             + "; ".join(f"{k} {v}" for k, v in report["load"].items()), "",
             f"Data: MNIST test digits 0-{NUM_TRAIN - 1} for training, {NUM_TRAIN}-{NUM_TRAIN + NUM_HELD_OUT - 1} "
             f"held out, padded to 32x32. Batch {s['batch_size']} for scorekit"
             + (f", {s['peer']['batch_size']} for diffusers" if s["peer"] else "")
             + "; one torch thread; training time = the training loop alone; the models were trained "
             "one after the other, not at the same time.", ""]
    c = report["classifier"]
    lines += [f"Classifier: {c['parameters']:,} parameters, {c['epochs']} epochs, held-out accuracy "
              f"**{100 * c['heldout_accuracy']:.2f}%** (training {100 * c['train_accuracy']:.2f}%).", ""]
    lines += [f"| samples | model | steps done | images/s | NFE | sampling {s['num_samples']:,} took | confident share | "
              "IS analogue | FD | class counts 0-9 | max/min | KL to uniform |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, ref in report["references"].items():
        lines.append(f"| {name} | - | - | - | - | - | {ref['confident_share']:.3f} | {ref['inception_score']:.2f} | "
                     f"{ref['fd']:.1f} | {fmt_counts(ref['class_counts'])} | {ref['max_min_ratio']:.2f} | "
                     f"{ref['kl_to_uniform']:.3f} |")
    for name, m in report["models"].items():
        for r in m["samples"]:
            lines.append(f"| {name} | {m['description']} ({m['parameters'] / 1e6:.2f} M) | {m['training']['steps']} | "
                         f"{m['training']['images_per_second']:.1f} | {r['nfe']} | {r['seconds']:.0f} s | "
                         f"{r['confident_share']:.3f} | {r['inception_score']:.2f} | {r['fd']:.1f} | "
                         f"{fmt_counts(r['class_counts'])} | {r['max_min_ratio']:.2f} | {r['kl_to_uniform']:.3f} |")
    lines += ["", "Sample grids (the first 100 samples at the largest NFE):", ""]
    for name, m in report["models"].items():
        lines.append(f"* {name}: `{m['grid']}`")
    lines += ["", "Settings:", "", "```json", json.dumps(report["settings"], indent=2), "```", ""]
    for name, m in report["models"].items():
        lines += [f"{name} training: {m['training']['train_seconds']:.0f} s of training "
                  f"({m['training']['wall_seconds']:.0f} s wall-clock with loading and saving), final loss "
                  f"{m['training']['final_loss']:.4f}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget per model (default 12)")
    parser.add_argument("--model", default="tiny", help="scorekit model preset (default tiny)")
    parser.add_argument("--process", default="ddpm", help="scorekit process (default ddpm)")
    parser.add_argument("--schedule", default="cosine", help="DDPM beta schedule (default cosine)")
    parser.add_argument("--prediction", default="v", help="eps, x0 or v (default v)")
    parser.add_argument("--weighting", default="simple", help="loss weighting (default simple)")
    parser.add_argument("--lr", type=float, default=4e-3, help="scorekit learning rate (default 4e-3)")
    parser.add_argument("--warmup", type=int, default=50, help="scorekit warm-up steps (default 50)")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay (default 0.999)")
    parser.add_argument("--batch-size", type=int, default=32, help="scorekit batch size (default 32)")
    parser.add_argument("--model-options", default="{}", help="JSON overrides of the preset")
    parser.add_argument("--sampler", default="ddim", help="scorekit sampler (default ddim)")
    parser.add_argument("--nfe", default="50,20,10", help="scorekit's numbers of sampling steps (default 50,20,10)")
    parser.add_argument("--peer-nfe", default="50", help="diffusers' numbers of sampling steps (default 50)")
    parser.add_argument("--clip", type=float, default=1.0, help="clip the x0-prediction to [-clip, clip] "
                        "while sampling with scorekit, as diffusers' DDIMScheduler does by default (0: off)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--peers", action="store_true", help="also train and sample diffusers' UNet2DModel")
    parser.add_argument("--peer-lr", type=float, default=1e-4)
    parser.add_argument("--peer-batch-size", type=int, default=64, help="as in the peers' note (default 64)")
    parser.add_argument("--classifier-epochs", type=int, default=8)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the MNIST test IDX files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--tag", default=None, help="file name stem of the outputs")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    nfes = sorted({int(v) for v in args.nfe.split(",")}, reverse=True)
    peer_nfes = sorted({int(v) for v in args.peer_nfe.split(",")}, reverse=True)
    tag = args.tag or ("mnist_quality" if args.minutes == 12 else f"mnist_quality-{args.minutes:g}min")
    out = args.out
    cache = out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    budget = 60.0 * args.minutes
    load_start = load_average()
    log(f"{tag}: budget {args.minutes:g} min per model; load average {load_start} on {os.cpu_count()} cores")

    train_set, held_out = load_mnist(args.data)
    classifier, clf_info = get_classifier(train_set, held_out, cache, args.classifier_epochs)
    log(f"classifier: held-out accuracy {100 * clf_info['heldout_accuracy']:.2f}%")
    score = Scorer(classifier, held_out)

    g = torch.Generator().manual_seed(SEEDS["reference"])
    idx = torch.randperm(NUM_TRAIN, generator=g)[:args.num_samples]
    noise = torch.randn((args.num_samples, 1, 32, 32), generator=g).clamp(-1, 1)
    references = {f"real: {args.num_samples} training digits": score(train_set.x[idx]),
                  "pure noise: N(0, 1) clipped to [-1, 1]": score(noise)}
    for name, r in references.items():
        log(f"reference {name}: FD {r['fd']:.1f}, IS {r['inception_score']:.2f}, confident {r['confident_share']:.3f}")

    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}",
              "settings": {}, "classifier": clf_info, "references": references, "models": {},
              "load": {"at the start": load_start}}
    model_options = json.loads(args.model_options)
    model_options.setdefault("num_classes", None)           # unconditional, like the peer
    process_options = {"schedule": args.schedule} if args.process == "ddpm" else {}
    config = TrainConfig(data=f"mnist:{args.data}", data_options={"pad_to": 32, "start": 0, "stop": NUM_TRAIN},
                         model=args.model, model_options=model_options, process=args.process,
                         process_options=process_options, prediction=args.prediction,
                         weighting=args.weighting, steps=10 ** 7, batch_size=args.batch_size, lr=args.lr,
                         warmup_steps=args.warmup, ema_decay=args.ema_decay, seed=SEEDS["train"],
                         num_threads=1, log_every=10, checkpoint_every=10 ** 9, keep_checkpoints=1,
                         sample_num=1, sample_steps=1)
    report["settings"] = {"minutes": args.minutes, "batch_size": args.batch_size, "nfe": nfes,
                          "peer_nfe": peer_nfes if args.peers else None,
                          "num_samples": args.num_samples, "scorekit": config.to_dict(),
                          "scorekit_sampler": {"sampler": args.sampler, "clip": args.clip or None, "eta": 0.0},
                          "peer": {"lr": args.peer_lr, "batch_size": args.peer_batch_size, "optimizer": "AdamW", "ema": "EMAModel(decay=0.9999, "
                                   "use_ema_warmup=True, inv_gamma=1, power=0.75)", "scheduler": "DDPMScheduler linear",
                                   "sampler": "DDIMScheduler defaults (clip_sample=True, leading spacing), eta 0"}
                          if args.peers else None}

    # scorekit
    run_dir = cache / f"{tag}-scorekit-run"
    log(f"scorekit: training {config.model} ({config.process} {process_options}, "
        f"{config.prediction}-prediction, lr {config.lr}) for {args.minutes:g} min")
    training = train_for_budget(config, run_dir, budget)
    report["load"]["after scorekit training"] = load_average()
    ckpt = load_checkpoint(run_dir)
    entry = {"description": f"scorekit UNet {args.model}, {args.prediction}-prediction, {args.process} "
                            f"{args.schedule if args.process == 'ddpm' else ''}".rstrip(),
             "parameters": count_parameters(ckpt.ema_net), "training": training, "samples": []}
    grid_samples = None
    for nfe in nfes:
        x, secs = sample_scorekit(ckpt, args.num_samples, nfe, sampler=args.sampler, clip=args.clip or None,
                                  batch=250)
        save_file({"samples": x.contiguous()}, str(cache / f"{tag}-scorekit-nfe{nfe}.safetensors"))        # to score again later
        r = {"nfe": nfe, "seconds": secs, **score(x)}
        entry["samples"].append(r)
        grid_samples = x if grid_samples is None else grid_samples
        log(f"scorekit NFE {nfe}: {secs:.0f} s, confident {r['confident_share']:.3f}, IS {r['inception_score']:.2f}, "
            f"FD {r['fd']:.1f}, counts {r['class_counts']}")
    entry["grid"] = str(image_grid(grid_samples[:100], out / f"{tag}-scorekit.png", nrow=10))
    report["models"]["scorekit"] = entry
    report["load"]["after scorekit sampling"] = load_average()

    if args.peers:
        log(f"diffusers: training UNet2DModel (32, 64, 64) for {args.minutes:g} min")
        peer, peer_training = train_peer(train_set, budget, batch_size=args.peer_batch_size, lr=args.peer_lr)
        report["load"]["after diffusers training"] = load_average()
        entry = {"description": "diffusers UNet2DModel (32, 64, 64), eps-prediction, linear betas",
                 "parameters": count_parameters(peer), "training": peer_training, "samples": []}
        grid_samples = None
        for nfe in peer_nfes:
            x, secs = sample_peer(peer, args.num_samples, nfe, batch=250)
            save_file({"samples": x.contiguous()}, str(cache / f"{tag}-diffusers-nfe{nfe}.safetensors"))
            r = {"nfe": nfe, "seconds": secs, **score(x)}
            entry["samples"].append(r)
            grid_samples = x if grid_samples is None else grid_samples
            log(f"diffusers NFE {nfe}: {secs:.0f} s, confident {r['confident_share']:.3f}, "
                f"IS {r['inception_score']:.2f}, FD {r['fd']:.1f}")
        entry["grid"] = str(image_grid(grid_samples[:100], out / f"{tag}-diffusers.png", nrow=10))
        report["models"]["diffusers"] = entry

    report["load"]["at the end"] = load_average()
    for m in report["models"].values():
        m["grid"] = os.path.relpath(m["grid"], ROOT)
    write_report(out, tag, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
