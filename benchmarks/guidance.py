"""Guidance on MNIST: fidelity against diversity, for classifier-free and classifier guidance.

    .venv/bin/python benchmarks/guidance.py                      # 12 + 4 minutes of training, 500 samples per setting
    .venv/bin/python benchmarks/guidance.py --minutes 3 --classifier-minutes 1 --num 100 --steps 10   # a short run
    .venv/bin/python benchmarks/guidance.py --render benchmarks/results/guidance.json   # redraw figures and table

``--help`` lists the options: the training budgets, the guidance scales, the sampler's steps, the
number of samples, the output folders.

Data: the MNIST test digits (``../shared/data/mnist-test``), images 0-7999 for training and
8000-9999 held out, padded to 32x32, in [-1, 1] (as in ``benchmarks/mnist_quality.py``, whose
data loading, judge and training-under-a-budget this benchmark imports).

1. Two models trained on the 8,000 training digits with their labels, one after the other, one
   torch thread each, under a budget of training time that the trainer enforces
   (``train(max_seconds=...)``), on the same forward process (DDPM, cosine schedule, T = 1000):
   a class-conditional diffusion model (the ``tiny`` U-Net, v-prediction, label dropout 0.1, so
   that the null label gives the unconditional model; ``--minutes``) and a noise-aware
   classifier ``p_phi(y | x_t, t)`` (``objective="classifier"``, the ``classifier-tiny`` preset;
   ``--classifier-minutes``). Both are cached in ``OUT/cache/`` and reused when a later run asks
   for the same settings and budget. The classifier's accuracy on the held-out digits noised to a
   few steps t is recorded.
2. The judge: the digit classifier of ``scorekit.metrics.digits_classifier`` trained on the
   training digits (cached; its held-out accuracy recorded). Its class probabilities give the
   fidelity, its 128-d features the distances.
3. The sweep: from one x_T (``--num`` samples, labels cycling 0..9, so 50 per class at 500),
   deterministic DDIM (eta = 0, ``--steps`` steps on the ``--spacing`` grid, no clipping) with
   * ``cfg``: classifier-free guidance ``D_w = D(null) + w (D(y) - D(null))`` at each
     ``--cfg-scales`` (``w = 0`` the unconditional model, ``w = 1`` the conditional one);
   * ``classifier``: classifier guidance ``x0 + s (sigma^2 / alpha) grad log p_phi(y | x_t, t)``
     at each ``--classifier-scales`` on the unconditional model (the network with the null label,
     as in Dhariwal & Nichol's unconditional experiments; ``s = 0`` is ``w = 0``);
   * ``classifier-cond``: the same on the conditional model (``s = 0`` is ``w = 1``);
   * for each ``--thresholding`` variant ``MAX:AT``, the ``AT`` largest scales of each method
     again with Imagen's dynamic thresholding of ``x0_pred`` (``threshold=--threshold``,
     ``threshold_max=MAX``; ``MAX = 1`` makes it clipping to [-1, 1]).
   Settings that compute the same thing (``w = 0`` and the unconditional ``s = 0``, ``w = 1``
   and the conditional ``s = 0``) are sampled once.

   The grid is ``leading`` (steps 960, 920, ..., 0 at 25 steps, as guided-diffusion's DDIM and
   diffusers' ``DDIMScheduler`` space them), not the DDPM default ``trailing`` (999, 959, ...):
   the cosine schedule has ``alpha(999) ~ 5e-5``, where classifier guidance's step
   ``s sigma^2 / alpha grad log p_phi`` multiplies whatever gradient a learned classifier has
   left on pure noise by ~2e4 and wrecks every sample at any useful ``s`` (the exact posterior's
   gradient vanishes there like ``alpha``; a trained network's does not).

4. Per setting, with the judge (samples clamped to [-1, 1]):
   * fidelity: the share of samples the judge assigns to the requested class with
     probability > 0.9 (and the share whose most probable class is the requested one);
   * FD: the Fréchet distance between the judge's features of the samples and of the 2,000
     held-out digits; per-class FD: the mean over classes k of the FD between the samples asked
     for k and the held-out digits of class k (50 against ~200 points in 128 dimensions: biased
     upwards, comparable only at equal sizes);
   * spread ratio: the within-class spread of the features, ``mean_k mean_{i in k} ||f_i - mu_k||^2``
     with classes the requested labels, divided by the same of the held-out digits (their true
     labels); below 1, the samples of a class are less varied than real digits of it;
   * precision and recall (``scorekit.metrics.precision_recall``, k = 3) against held-out
     features, averaged over disjoint random subsets of the held-out digits of ``--num`` points
     each (equal set sizes, as the measure wants);
   * NFE (network calls per batch, counted at the network; classifier-free guidance with
     ``w`` other than 0 and 1 evaluates a doubled batch in each call), classifier evaluations
     with their gradients per sample, and seconds of sampling.
   The same measures of ``--num`` training digits (balanced over classes, true labels) are the
   reference.

Writes ``TAG.json`` and ``TAG.md`` (TAG ``guidance`` by default) into ``--out`` (default
``benchmarks/results/``), the samples into its ``cache/``, and two figures into ``--figures``
(default ``docs/images/``): ``guidance-tradeoff.png`` (fidelity against recall and against the
spread ratio, one curve per method, points labelled by scale) and ``guidance-grid.png`` (one row
per ``--grid-scales`` value of w, the first sample of each class 0..9, all from the same x_T).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scorekit  # noqa: E402
from mnist_quality import (CONFIDENCE, DEFAULT_DATA, NUM_HELD_OUT, NUM_TRAIN, Scorer,  # noqa: E402
                           get_classifier, header_lines, load_average, load_mnist, log, train_for_budget,
                           write_report)
from scorekit.conditioning import NULL_LABEL  # noqa: E402
from scorekit.errors import ScorekitError  # noqa: E402
from scorekit.metrics import frechet_distance_from_features, precision_recall  # noqa: E402
from scorekit.models import count_parameters  # noqa: E402
from scorekit.plotting import _new_figure, atomic_path, image_grid, save_figure, write_text  # noqa: E402
from scorekit.timesteps import DISCRETE_SPACINGS  # noqa: E402
from scorekit.train import TrainConfig  # noqa: E402

Tensor = torch.Tensor

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {"diffusion": 0, "noisy_classifier": 1, "x_T": 2, "held_out_split": 3, "noised": 4, "reference": 5}
NUM_CLASSES = 10
K_NEAREST = 3
#: steps t of the DDPM chain (0 .. 999) at which the noise-aware classifier's accuracy is measured
NOISED_STEPS = (0, 200, 400, 600, 800, 950)
#: the methods of the sweep: classifier-free guidance, and classifier guidance steering the
#: unconditional model (the network with the null label) or the conditional one
METHODS = {"cfg": "classifier-free guidance",
           "classifier": "classifier guidance, unconditional model",
           "classifier-cond": "classifier guidance, conditional model"}
SYMBOL = {"cfg": "w", "classifier": "s", "classifier-cond": "s"}
LEGEND = {"cfg": "classifier-free (w)", "classifier": "classifier, unconditional model (s)",
          "classifier-cond": "classifier, conditional model (s)"}
#: the folders of the two runs in ``OUT/cache/``, whatever the tag (a run is reused by its settings)
RUNS = {"diffusion": "guidance-diffusion-run", "classifier": "guidance-classifier-run"}


def cpu_model() -> str:
    """The CPU's model name as lscpu gives it (or platform.processor())."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown CPU"


# --- the two models --------------------------------------------------------------------------------------

def trained_run(config: TrainConfig, run_dir: Path, minutes: float, what: str) -> dict:
    """Train ``config`` into ``run_dir`` for ``minutes`` of training time, or reuse the run there
    when it was trained with the same settings and budget (recorded in ``run_dir/budget.json``)."""
    marker = run_dir / "budget.json"
    want = {"config": config.as_recorded(), "minutes": minutes}
    if marker.is_file():
        saved = json.loads(marker.read_text(encoding="utf-8"))
        # options added to TrainConfig since the run was trained do not invalidate it
        if config.matches_recorded(saved.get("config")) and saved.get("minutes") == minutes:
            log(f"{what}: reusing {run_dir} ({saved['training']['steps']} steps)")
            return {**saved["training"], "reused": True}
    log(f"{what}: training for {minutes:g} min")
    training = train_for_budget(config, run_dir, 60.0 * minutes)
    write_text(marker, json.dumps({**want, "training": training}, indent=2) + "\n")
    return {**training, "reused": False}


def recorded_config(run_dir: Path) -> dict:
    """The configuration a run of :func:`trained_run` recorded (``budget.json``): what caches of its
    samples are keyed on, so that they stay valid when TrainConfig gains options."""
    return json.loads((Path(run_dir) / "budget.json").read_text(encoding="utf-8"))["config"]


def data_options() -> dict:
    return {"pad_to": 32, "start": 0, "stop": NUM_TRAIN}


def diffusion_config(args) -> TrainConfig:
    return TrainConfig(data=f"mnist:{args.data}", data_options=data_options(), model=args.model,
                       process="ddpm", process_options={"schedule": args.schedule}, prediction=args.prediction,
                       label_dropout=args.label_dropout, steps=10 ** 7, batch_size=args.batch_size, lr=args.lr,
                       warmup_steps=args.warmup, ema_decay=args.ema_decay, seed=SEEDS["diffusion"],
                       num_threads=args.threads, log_every=10, checkpoint_every=10 ** 9, keep_checkpoints=1,
                       sample_num=1, sample_steps=1)


def classifier_config(args) -> TrainConfig:
    return TrainConfig(data=f"mnist:{args.data}", data_options=data_options(), model=args.classifier_model,
                       objective="classifier", process="ddpm", process_options={"schedule": args.schedule},
                       steps=10 ** 7, batch_size=args.batch_size, lr=args.classifier_lr, warmup_steps=args.warmup,
                       ema_decay=args.ema_decay, seed=SEEDS["noisy_classifier"], num_threads=args.threads,
                       log_every=10, checkpoint_every=10 ** 9, keep_checkpoints=1)


@torch.no_grad()
def noised_accuracy(classifier, denoiser, held_out, steps=NOISED_STEPS) -> dict:
    """Accuracy of the noise-aware classifier on the held-out digits noised to each step t,
    ``x_t = alpha(t) x_0 + sigma(t) eps`` (one noise draw per digit and step)."""
    g = torch.Generator().manual_seed(SEEDS["noised"])
    x0, y = held_out.x, held_out.y.long()
    out = {}
    for t in steps:
        eps = torch.randn(x0.shape, generator=g)
        x_t = denoiser.process.sample_marginal(x0, torch.full((x0.shape[0],), float(t), dtype=torch.float64), eps)
        logits = classifier(x_t.float(), denoiser.model_time(t, x0.shape[0], x0.device))
        out[str(t)] = float((logits.argmax(1) == y).double().mean())
    return out


def unconditional(denoiser) -> scorekit.Denoiser:
    """The class-conditional network with the null label, seen as an unconditional denoiser
    (the model that label dropout trains; classifier guidance then brings the class)."""
    net = denoiser.model

    def with_null_label(x_t, t):
        return net(x_t, t, y=torch.full((x_t.shape[0],), NULL_LABEL, dtype=torch.long, device=x_t.device))

    return scorekit.Denoiser(with_null_label, denoiser.process, denoiser.prediction_type,
                             time_input=denoiser.time_input)


# --- the judge ----------------------------------------------------------------------------------------------

def within_class_spread(features: Tensor, labels: Tensor) -> float:
    """``mean_k mean_{i: y_i = k} ||f_i - mu_k||^2`` over the classes present (equal weight each)."""
    f = features.double()
    spreads = [((f[labels == k] - f[labels == k].mean(0)) ** 2).sum(1).mean()
               for k in labels.unique().tolist() if int((labels == k).sum()) >= 2]
    return float(torch.stack(spreads).mean())


class Judge:
    """Scores samples asked for classes ``labels`` with the digit classifier against the held-out digits."""

    def __init__(self, classifier, held_out, num: int):
        self.classifier = classifier
        self.scorer = Scorer(classifier, held_out)
        self.features = self.scorer.held_out_features
        self.labels = held_out.y.long()
        self.spread = within_class_spread(self.features, self.labels)
        order = torch.randperm(self.features.shape[0], generator=torch.Generator().manual_seed(SEEDS["held_out_split"]))
        size = min(num, self.features.shape[0])
        self.subsets = [order[i:i + size] for i in range(0, self.features.shape[0] - size + 1, size)]

    def __call__(self, x: Tensor, labels: Tensor) -> dict:
        x = x.clamp(-1, 1)
        labels = labels.long()
        probs = self.classifier.predict_proba(x)
        asked = probs.gather(1, labels[:, None])[:, 0]
        f = self.classifier.features(x)
        per_class = [frechet_distance_from_features(f[labels == k], self.features[self.labels == k])
                     for k in range(NUM_CLASSES) if int((labels == k).sum()) >= 2]
        pr = [precision_recall(self.features[idx], f, K_NEAREST) for idx in self.subsets]
        overall = self.scorer(x)
        return {"fidelity": float((asked > CONFIDENCE).double().mean()),
                "accuracy": float((probs.argmax(1) == labels).double().mean()),
                "fd": overall["fd"],
                "per_class_fd": sum(per_class) / len(per_class),
                "per_class_fds": per_class,
                "spread_ratio": within_class_spread(f, labels) / self.spread,
                "precision": sum(p for p, _ in pr) / len(pr),
                "recall": sum(r for _, r in pr) / len(pr),
                "confident_share": overall["confident_share"],
                "inception_score": overall["inception_score"],
                "class_counts": overall["class_counts"]}


# --- the sweep ------------------------------------------------------------------------------------------------

def sweep_settings(args) -> list[dict]:
    """Every (method, scale, threshold_max) of the sweep, in the order they are sampled
    (``threshold_max`` ``None``: no thresholding)."""
    out = []
    for method in args.methods:
        scales = args.cfg_scales if method == "cfg" else args.classifier_scales
        out += [{"method": method, "scale": s, "threshold_max": None} for s in scales]
        for top, at in args.thresholding:
            out += [{"method": method, "scale": s, "threshold_max": top} for s in sorted(scales)[-at:]]
    return out


def computes(setting: dict) -> tuple:
    """What a setting computes, so that equal computations run once: classifier-free guidance at
    ``w = 0`` and classifier guidance at ``s = 0`` on the unconditional model are both the
    unconditional model; ``w = 1`` and ``s = 0`` on the conditional one the conditional model."""
    method, scale = setting["method"], float(setting["scale"])
    plain = {("cfg", 0.0): "unconditional", ("cfg", 1.0): "conditional",
             ("classifier", 0.0): "unconditional", ("classifier-cond", 0.0): "conditional"}
    if (method, scale) in plain:
        method, scale = plain[method, scale], 0.0
    return method, scale, setting["threshold_max"]


def name_of(setting: dict) -> str:
    top = setting["threshold_max"]
    return (f"{setting['method']}-{SYMBOL[setting['method']]}{setting['scale']:g}"
            + ("" if top is None else f"-threshold{top:g}"))


def run_sweep(args, denoiser, classifier, judge: Judge, cache: Path, tag: str) -> tuple[list, dict]:
    """Sample and score every setting; returns the rows and the first ``NUM_CLASSES`` samples of each."""
    labels = torch.arange(args.num) % NUM_CLASSES
    x_T = denoiser.process.prior_sample((args.num, *denoiser.checkpoint.sample_shape),
                                        generator=torch.Generator().manual_seed(SEEDS["x_T"]))
    bases = {"cfg": denoiser, "classifier": unconditional(denoiser), "classifier-cond": denoiser}
    done, rows, firsts = {}, [], {}
    for setting in sweep_settings(args):
        key, name = computes(setting), name_of(setting)
        if key in done:
            row = {**done[key], **setting, "same_as": done[key]["name"], "name": name}
            log(f"{name}: the same computation as {done[key]['name']}")
        else:
            kwargs = {"sampler": "ddim", "num_steps": args.steps, "spacing": args.spacing, "eta": 0.0,
                      "generator": torch.Generator().manual_seed(SEEDS["x_T"] + 1)}
            if setting["threshold_max"] is not None:
                kwargs.update(threshold=args.threshold, threshold_max=setting["threshold_max"])
            if setting["method"] == "cfg":
                kwargs["guidance_scale"] = setting["scale"]
            else:
                kwargs.update(classifier=classifier, classifier_scale=setting["scale"])
            try:
                result = scorekit.sample_batches(bases[setting["method"]], x_T, batch_size=args.sample_batch, condition=labels, **kwargs)
            except ScorekitError as err:            # e.g. a non-finite state at a huge scale
                log(f"{name}: failed: {err}")
                row = {**setting, "name": name, "failed": str(err)}
                rows.append(row)
                continue
            with atomic_path(cache / f"{tag}-{name}.safetensors") as tmp:
                save_file({"samples": result.x.contiguous(), "labels": labels}, tmp)
            firsts[name] = result.x[:NUM_CLASSES]
            row = {**setting, "name": name, "nfe": result.nfe, "seconds": result.seconds,
                   "classifier_calls_per_sample": result.classifier_calls / len(result.calls),
                   "x0_range": [float(result.x.min()), float(result.x.max())], **judge(result.x, labels)}
            done[key] = row
            log(f"{name}: {row['seconds']:.0f} s, fidelity {row['fidelity']:.3f}, FD {row['fd']:.1f}, "
                f"per-class FD {row['per_class_fd']:.1f}, spread {row['spread_ratio']:.3f}, "
                f"precision {row['precision']:.3f}, recall {row['recall']:.3f}")
        rows.append(row)
        firsts.setdefault(name, firsts.get(row.get("same_as")))
    return rows, firsts


# --- figures and the report -----------------------------------------------------------------------------------

COLORS = {"cfg": "#1f6fb4", "classifier": "#d95f02", "classifier-cond": "#1b9e77"}
#: line styles of no thresholding and of the thresholding variants, in the order of --thresholding
STYLES = ("-", "--", ":", "-.")


def thresholding_label(top) -> str:
    if top is None:
        return "none"
    return "clip (threshold_max 1)" if top == 1 else f"dynamic, threshold_max {top:g}"


def tradeoff_figure(report: dict, path) -> str:
    """Fidelity (x) against recall and against the spread ratio (y), one curve per method and
    thresholding, points labelled by scale, the real training digits as a star."""
    panels = (("recall", "recall (share of held-out digits covered)"),
              ("spread_ratio", "within-class spread / held-out digits'"))
    fig = _new_figure((11.0, 5.8))
    axes = fig.subplots(1, len(panels))
    rows = [r for r in report["sweep"] if "failed" not in r]
    ref = report["reference"]
    variants = [None] + [top for top, _ in report["settings"]["thresholding"]]
    for ax, (key, label) in zip(axes, panels):
        for method in METHODS:
            for style, top in zip(STYLES, variants):
                pts = sorted((r for r in rows if r["method"] == method and r["threshold_max"] == top),
                             key=lambda r: r["scale"])
                if not pts:
                    continue
                xs, ys = [r["fidelity"] for r in pts], [r[key] for r in pts]
                name = LEGEND[method] + ("" if top is None else " + clip" if top == 1 else f" + dynamic, max {top:g}")
                ax.plot(xs, ys, style, marker="o" if top is None else "s", color=COLORS[method],
                        markerfacecolor=COLORS[method] if top is None else "white", label=name, lw=1.3, ms=5)
                for r, x, y in zip(pts, xs, ys):
                    if r.get("same_as"):                # labelled on the curve it was sampled for
                        continue
                    ax.annotate(f"{SYMBOL[method]}={r['scale']:g}", (x, y), textcoords="offset points",
                                xytext=(4, 4 if top is None else -10), fontsize=6.5, color=COLORS[method])
        ax.plot([ref["fidelity"]], [ref[key]], "*", color="#4d4d4d", ms=11, label="real training digits")
        ax.set_xlabel(f"fidelity (share judged the requested class, p > {CONFIDENCE:g})")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside lower center", ncol=3, fontsize=7.5, frameon=False)
    fig.suptitle(f"Guidance on MNIST: fidelity against diversity ({report['settings']['num']} samples per "
                 f"setting, DDIM {report['settings']['steps']} steps)", fontsize=11)
    return save_figure(fig, path, dpi=130)


def grid_figure(firsts: dict, scales, path) -> str | None:
    """One row per classifier-free guidance weight in ``scales``: the first sample of each class."""
    rows = [firsts.get(name_of({"method": "cfg", "scale": w, "threshold_max": None})) for w in scales]
    rows = [r for r in rows if r is not None]
    if not rows:
        return None
    return image_grid(torch.cat(rows), path, nrow=rows[0].shape[0], padding=2, scale=3)


def fmt_row(r: dict) -> str:
    scale = f"{SYMBOL[r['method']]} = {r['scale']:g}"
    thr = thresholding_label(r["threshold_max"])
    if "failed" in r:
        return f"| {scale} | {thr} | failed: {r['failed']} |" + " |" * 9
    same = f" (= {r['same_as']})" if r.get("same_as") else ""
    return (f"| {scale}{same} | {thr} | {r['fidelity']:.3f} | {r['accuracy']:.3f} | {r['fd']:.1f} | "
            f"{r['per_class_fd']:.1f} | {r['spread_ratio']:.3f} | {r['precision']:.3f} | {r['recall']:.3f} | "
            f"{r['nfe']:g} | {r['classifier_calls_per_sample']:g} | {r['seconds']:.0f} |")


HEADER = ["| scale | thresholding | fidelity | accuracy | FD | per-class FD | spread ratio | precision | recall | "
          "NFE | classifier calls | seconds |",
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = header_lines(report, "Guidance on MNIST: fidelity against diversity") + [
             f"Data: MNIST test digits 0-{NUM_TRAIN - 1} for training, {NUM_TRAIN}-{NUM_TRAIN + NUM_HELD_OUT - 1} "
             f"held out, padded to 32x32. Sampling: DDIM, eta 0, {s['steps']} steps, no clipping, "
             f"{s['num']} samples per setting from one x_T, labels cycling 0..9, batches of {s['sample_batch']}; "
             f"{s['spacing']} grid; thresholding of x0_pred at percentile {s['threshold']} where the tables "
             f"say so (threshold_max 1 makes it clipping to [-1, 1]).", "",
             "| model | parameters | training budget | steps | training seconds | images/s | final loss | "
             "load average after training | trained |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, m in report["models"].items():
        t = m["training"]
        lines.append(f"| {name} | {m['parameters']:,} | {m['minutes']:g} min | {t['steps']} | {t['train_seconds']:.0f} | "
                     f"{t['images_per_second']:.1f} | {t['final_loss']:.4f} | {t['load']} | "
                     f"{'by an earlier run with the same settings' if t['reused'] else 'by this run'} |")
    acc = report["models"]["noise-aware classifier"]["noised_accuracy"]
    lines += ["", "Noise-aware classifier, accuracy on the held-out digits noised to step t: "
              + ", ".join(f"t = {t}: {a:.3f}" for t, a in acc.items()) + ".", "",
              f"Judge: {report['judge']['parameters']:,}-parameter digit classifier, {report['judge']['epochs']} "
              f"epochs, held-out accuracy {100 * report['judge']['heldout_accuracy']:.2f}%.", ""]
    ref = report["reference"]
    lines += ["Reference, " + ref["name"] + ": "
              + f"fidelity {ref['fidelity']:.3f}, accuracy {ref['accuracy']:.3f}, FD {ref['fd']:.1f}, per-class FD "
                f"{ref['per_class_fd']:.1f}, spread ratio {ref['spread_ratio']:.3f}, precision {ref['precision']:.3f}, "
                f"recall {ref['recall']:.3f}.", ""]
    for method, title in METHODS.items():
        lines += [f"## {title}", ""] + HEADER
        lines += [fmt_row(r) for r in report["sweep"] if r["method"] == method]
        lines.append("")
    lines += ["Columns: fidelity = share of samples the judge gives the requested class with probability > "
              f"{CONFIDENCE:g}; accuracy = share whose most probable class is the requested one; FD and per-class FD "
              "on the judge's features against the held-out digits; spread ratio = within-class feature spread "
              "over the held-out digits'; precision and recall with k = 3; NFE = network calls (classifier-free "
              "guidance with w other than 0 and 1 evaluates a doubled batch per call); classifier calls = "
              "classifier evaluations with gradient per sample; seconds = wall-clock sampling time.", "",
              f"Figures: `{report['figures']['tradeoff']}`, `{report['figures']['grid']}` (rows w = "
              + ", ".join(f"{w:g}" for w in s["grid_scales"]) + ", columns the digits 0..9).", "",
              "Settings:", "", "```json", json.dumps(s), "```", ""]
    return "\n".join(lines) + "\n"


def float_list(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def method_list(text: str) -> list[str]:
    methods = [v.strip() for v in text.split(",") if v.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown method {unknown[0]!r}; choose from {', '.join(METHODS)}")
    return methods


def thresholding_list(text: str) -> list[tuple[float, int]]:
    out = []
    for part in (v for v in text.split(",") if v.strip()):
        try:
            top, at = part.split(":")
            out.append((float(top), int(at)))
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected MAX:AT pairs such as 1:2,2:1, got {part!r}") from None
        if not (out[-1][0] >= 1 and out[-1][1] >= 1):
            raise argparse.ArgumentTypeError(f"MAX must be at least 1 and AT at least 1, got {part!r}")
    if len(out) >= len(STYLES):
        raise argparse.ArgumentTypeError(f"at most {len(STYLES) - 1} thresholding variants")
    return out


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--minutes", type=float, default=12.0, help="training budget of the diffusion model")
    parser.add_argument("--classifier-minutes", type=float, default=4.0,
                        help="training budget of the noise-aware classifier")
    parser.add_argument("--num", type=int, default=500, help="samples per setting (labels cycle 0..9)")
    parser.add_argument("--steps", type=int, default=25, help="DDIM steps")
    parser.add_argument("--cfg-scales", type=float_list, default=[0, 1, 1.5, 2, 3, 5, 8],
                        help="classifier-free guidance weights w")
    parser.add_argument("--spacing", default="leading", choices=DISCRETE_SPACINGS,
                        help="the DDIM grid of steps (see the module docstring on why not trailing)")
    parser.add_argument("--classifier-scales", type=float_list, default=[0, 1, 4, 16, 32, 64],
                        help="classifier guidance scales s")
    parser.add_argument("--methods", type=method_list, default=list(METHODS),
                        help="the methods to sweep: " + ", ".join(f"{k} ({v})" for k, v in METHODS.items()))
    parser.add_argument("--thresholding", type=thresholding_list, default=[(1.0, 2), (2.0, 1)],
                        help="thresholding variants MAX:AT,...: dynamic thresholding with threshold_max MAX (1: "
                             "clipping to [-1, 1]) at the AT largest scales of each method")
    parser.add_argument("--threshold", type=float, default=0.995, help="dynamic thresholding percentile")
    parser.add_argument("--grid-scales", type=float_list, default=[0, 1, 3, 8],
                        help="classifier-free guidance weights shown in the sample grid, one row each")
    parser.add_argument("--sample-batch", type=int, default=100, help="samples per sampling batch")
    parser.add_argument("--model", default="tiny", help="U-Net preset of the diffusion model")
    parser.add_argument("--classifier-model", default="classifier-tiny", help="preset of the noise-aware classifier")
    parser.add_argument("--schedule", default="cosine", help="DDPM beta schedule of both models")
    parser.add_argument("--prediction", default="v", help="prediction type of the diffusion model")
    parser.add_argument("--label-dropout", type=float, default=0.1, help="label dropout of the diffusion model")
    parser.add_argument("--lr", type=float, default=4e-3, help="learning rate of the diffusion model")
    parser.add_argument("--classifier-lr", type=float, default=2e-3, help="learning rate of the noise-aware classifier")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size of both models")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up steps of both models")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay of both models")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--judge-epochs", type=int, default=8, help="epochs of the judge (digit classifier)")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the MNIST test IDX files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "images", help="folder of the two figures")
    parser.add_argument("--tag", default="guidance", help="file name stem of the outputs")
    parser.add_argument("--render", type=Path, default=None, metavar="JSON",
                        help="only redraw the figures and TAG.md from a saved TAG.json and the samples in its cache/")
    args = parser.parse_args(argv)
    if args.num < 2 * NUM_CLASSES or args.steps < 1:
        parser.error(f"--num must be at least {2 * NUM_CLASSES} and --steps at least 1")
    return args


def first_samples(report: dict, cache: Path) -> dict:
    """The first ``NUM_CLASSES`` samples of every setting of a saved report, from ``cache``."""
    from safetensors.torch import load_file

    out = {}
    for r in report["sweep"]:
        path = cache / f"{report['settings']['tag']}-{r.get('same_as') or r['name']}.safetensors"
        if "failed" not in r and path.is_file():
            out[r["name"]] = load_file(str(path))["samples"][:NUM_CLASSES]
    return out


def write_outputs(report: dict, firsts: dict, out: Path, figures: Path) -> None:
    """The two figures, ``TAG.json`` and ``TAG.md``."""
    s = report["settings"]
    figures.mkdir(parents=True, exist_ok=True)
    tradeoff = tradeoff_figure(report, figures / "guidance-tradeoff.png")
    grid = grid_figure(firsts, s["grid_scales"], figures / "guidance-grid.png")
    report["figures"] = {"tradeoff": os.path.relpath(tradeoff, ROOT),
                         "grid": os.path.relpath(grid, ROOT) if grid else None}
    log(f"wrote {tradeoff} and {grid}")
    write_report(out, s["tag"], report, markdown(report))


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.render is not None:
        report = json.loads(args.render.read_text(encoding="utf-8"))
        out = args.render.parent
        write_outputs(report, first_samples(report, out / "cache"), out, args.figures)
        return 0
    torch.set_num_threads(args.threads)
    out, cache = args.out, args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    load = {"at the start": load_average()}
    log(f"{args.tag}: budgets {args.minutes:g} + {args.classifier_minutes:g} min; load average {load['at the start']} "
        f"on {os.cpu_count()} cores")

    train_set, held_out = load_mnist(args.data)
    judge_net, judge_info = get_classifier(train_set, held_out, cache, args.judge_epochs)
    log(f"judge: held-out accuracy {100 * judge_info['heldout_accuracy']:.2f}%")
    judge = Judge(judge_net, held_out, args.num)

    g = torch.Generator().manual_seed(SEEDS["reference"])
    per_class = args.num // NUM_CLASSES
    idx = torch.cat([torch.nonzero(train_set.y == k)[:, 0][torch.randperm(int((train_set.y == k).sum()), generator=g)[:per_class]]
                     for k in range(NUM_CLASSES)])
    reference = {"name": f"{idx.numel()} training digits ({per_class} per class, their true labels)",
                 **judge(train_set.x[idx], train_set.y[idx])}

    models = {}
    configs = {"diffusion model": (diffusion_config(args), args.minutes),
               "noise-aware classifier": (classifier_config(args), args.classifier_minutes)}
    for name, (config, minutes) in configs.items():
        run_dir = cache / RUNS[config.objective]
        models[name] = {"run": os.path.relpath(run_dir, ROOT), "minutes": minutes, "config": config.to_dict(),
                        "training": trained_run(config, run_dir, minutes, name)}
    denoiser = scorekit.load_denoiser(cache / RUNS["diffusion"])
    classifier = scorekit.load_classifier(cache / RUNS["classifier"])
    models["diffusion model"]["parameters"] = count_parameters(denoiser.checkpoint.ema_net)
    models["noise-aware classifier"]["parameters"] = count_parameters(classifier.net)
    models["noise-aware classifier"]["noised_accuracy"] = noised_accuracy(classifier, denoiser, held_out)
    log("noise-aware classifier accuracy at t: " + str(models["noise-aware classifier"]["noised_accuracy"]))

    rows, firsts = run_sweep(args, denoiser, classifier, judge, cache, args.tag)
    load["at the end"] = load_average()

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}, {args.threads} torch thread(s)",
              "settings": settings, "judge": judge_info, "models": models, "reference": reference,
              "sweep": rows, "load": load, "figures": {}}
    write_outputs(report, firsts, out, args.figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
