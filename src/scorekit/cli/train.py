"""``scorekit train``: train a model (:func:`scorekit.train.train`) with a TrainConfig built from the flags."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..errors import ScorekitError
from ._common import (BIG, DEFAULT_TRAIN_THREADS, PROG, Formatter, int_in, key_value, positive_float,
                      unit_interval)

#: ``scorekit train`` options that map one to one onto TrainConfig fields (dest -> field)
_TRAIN_FIELDS = {
    "data": "data", "model": "model", "process": "process", "prediction": "prediction",
    "weighting": "weighting", "timesteps": "timesteps", "steps": "steps", "batch_size": "batch_size",
    "precondition": "precondition", "sigma_data": "sigma_data",
    "grad_accum": "grad_accum", "lr": "lr", "lr_schedule": "lr_schedule", "warmup": "warmup_steps",
    "min_lr": "min_lr", "weight_decay": "weight_decay", "ema": "ema_decay",
    "label_dropout": "label_dropout", "mixed_precision": "mixed_precision", "seed": "seed",
    "device": "device", "threads": "num_threads", "log_every": "log_every",
    "checkpoint_every": "checkpoint_every", "sample_every": "sample_every",
    "sample_num": "sample_num", "sample_steps": "sample_steps", "sample_sampler": "sample_sampler",
    "objective": "objective", "task": "task", "cond_dropout": "cond_dropout", "init_from": "init_from",
    "compile": "compile", "channels_last": "channels_last", "deterministic": "deterministic",
}

#: the flags that set TrainConfig fields with no flag of the same name
_TRAIN_FIELD_FLAGS = {
    **{field: "--" + dest.replace("_", "-") for dest, field in _TRAIN_FIELDS.items()},
    "data_options": "--data-option/--flip", "model_options": "--model-option",
    "process_options": "--process-option/--schedule/--diffusion-steps", "weighting_options": "--min-snr-gamma",
    "variance": "--variance", "ema_warmup": "--no-ema-warmup", "grad_clip": "--grad-clip",
    "keep_checkpoints": "--keep", "task_options": "--task-option",
}


def _check_resumable(args: argparse.Namespace, config) -> None:
    """Refuse, in flags, settings that a run given to --resume cannot change (the library's own
    check names TrainConfig fields)."""
    from ..train.checkpoint import read_config
    from ..train.config import KERNEL_FIELDS
    from ..train.trainer import RESUMABLE_FIELDS, TrainConfig, settings_changed

    run_config = os.path.join(args.out, "config.json")
    if not (args.resume and os.path.isfile(run_config)):
        return
    saved = TrainConfig.from_dict(read_config(args.out).get("train", {}), run_config)
    changed = settings_changed(saved, config)
    if changed:
        flag = lambda field: _TRAIN_FIELD_FLAGS.get(field, field)      # noqa: E731
        may = sorted({flag(f) for f in RESUMABLE_FIELDS if f not in KERNEL_FIELDS})
        kernels = sorted(flag(f) for f in KERNEL_FIELDS)
        raise ScorekitError(f"cannot --resume {args.out!r} with different settings: "
                            + ", ".join(f"{flag(k)} {old!r} -> {new!r}" for k, (old, new) in changed.items())
                            + f"; only {', '.join(may)} may change, and how the kernels compute "
                              f"({', '.join(kernels)}) (or start a new --out folder)")


def add(commands) -> None:
    from ..losses import WEIGHTINGS
    from ..models import PRESETS
    from ..train.objectives import OBJECTIVES
    from ..precondition import DEFAULT_SIGMA_DATA, PRECONDITIONS
    from ..prediction import PREDICTION_TYPES
    from ..processes import BETA_SCHEDULES
    from ..samplers import SAMPLERS
    from ..tasks.degradations import DEGRADATIONS
    from ..timesteps import DEFAULT_SAMPLE_STEPS
    from ..train.config import COMPILE_CHOICES
    from ..train.trainer import (DEFAULT_DDPM_SCHEDULE, LR_SCHEDULES, MIXED_PRECISION, PROCESS_NAMES,
                                TIMESTEP_SAMPLERS, TrainConfig)

    d = TrainConfig()

    def dflt(value) -> str:
        return f" (default: {value})"

    p = commands.add_parser(
        "train", formatter_class=Formatter,
        help="train a diffusion model on a dataset; write checkpoints, metrics, loss curve and samples",
        description=textwrap.dedent("""\
            Train a denoising network (U-Net for images, MLP for 2-D points) with AdamW, a
            learning-rate warm-up, gradient clipping and an exponential moving average (EMA) of the
            weights. Everything is reproducible from --seed, and --resume continues a stopped run
            exactly as if it had never stopped. Ctrl-C or SIGTERM finishes the current step, saves a
            checkpoint of it and exits with status 130 or 143.

            Data (--data): digits (scikit-learn's 8x8 digits, built in), the 2-D sets swiss_roll,
            moons, checkerboard, eight_gaussians, multiscale_2d, or mnist:PATH (IDX files),
            folder:PATH (an image folder or .tar.gz), npz:PATH (arrays x [, y]). Labelled data train a
            class-conditional network; --label-dropout of the labels (default 0.1) also trains it
            without labels, for classifier-free guidance (scorekit sample --guidance-scale).
            --objective classifier trains a noise-aware classifier p(y | x_t, t) on the same
            noisy data instead, for classifier guidance (scorekit sample --classifier RUN).

            Writes into --out:
              config.json                  everything to rebuild model, process, loss and data
              metrics.jsonl                step, loss, lr, grad_norm, images/s, seconds per line
              loss.png                     the loss curve (raw and smoothed) with the learning rate
              samples/step-NNNNNNN.png     samples from the EMA weights (fixed noise, DDIM)
              checkpoints/step-NNNNNNN/    model, EMA and trainer state (safetensors + JSON)
              latest                       the name of the newest complete checkpoint"""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} train --data digits --out runs/digits
              {PROG} train --data digits --model tiny --prediction v --schedule cosine \\
                  --steps 800 --batch-size 64 --lr 2e-3 --lr-schedule cosine \\
                  --sample-every 200 --out runs/digits     (about 3 minutes on 2 CPU cores)
              {PROG} train --data mnist:../shared/data/mnist-test --data-option pad_to=32 \\
                  --mixed-precision bf16 --out runs/mnist
              {PROG} train --data eight_gaussians --timesteps lognormal --steps 2000 --out runs/8g
              {PROG} train --data eight_gaussians --precondition edm --timesteps lognormal --out runs/8g-edm
              {PROG} train --data digits --objective classifier --out runs/digits-clf   (a classifier
                  for classifier guidance: give it the --process and its options of the model to guide)
              {PROG} train --data digits --task sr2 --out runs/digits-sr2     (then: {PROG} restore runs/digits-sr2 ...)
              {PROG} train --data folder:faces --task inpaint --task-option kind=strokes --out runs/inpaint
              {PROG} train --out runs/digits --resume --steps 6000    continue, for longer
            """))
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="SPEC", help="dataset name or KIND:PATH" + dflt(d.data))
    g.add_argument("--data-option", metavar="KEY=VALUE", action="append", type=key_value,
                   help="a dataset option, e.g. pad_to=32, stop=8000, size=16, channels=3 (repeatable)")
    g.add_argument("--flip", action="store_true", default=None,
                   help="augment images by random horizontal flips (not for digits!)")
    g.add_argument("--objective", choices=list(OBJECTIVES),
                   help="what to train: diffusion (a denoiser) or classifier (a noise-aware classifier "
                        "p(y | x_t, t) of labelled data for classifier guidance; its model presets are "
                        "classifier-tiny and classifier-mlp, chosen by auto)" + dflt(d.objective))
    g.add_argument("--model", metavar="PRESET", choices=["auto", *PRESETS],
                   help=f"network preset: auto, {', '.join(PRESETS)}; auto is tiny for images and mlp "
                        f"for points" + dflt(d.model))
    g.add_argument("--model-option", metavar="KEY=VALUE", action="append", type=key_value,
                   help="override a preset setting, e.g. base_channels=32, dropout=0.1 (repeatable)")
    g = p.add_argument_group(
        "task", "train an image-to-image model (SR3 / Palette): each clean image is degraded on the fly "
                "and the network is conditioned on the result (see docs/tasks.md)")
    g.add_argument("--task", choices=list(DEGRADATIONS),
                   help="sr2, sr4 (super-resolution by 2 / 4), colorize, inpaint, uncrop or jpeg; restore "
                        f"with '{PROG} restore RUN'")
    g.add_argument("--task-option", metavar="KEY=VALUE", action="append", type=key_value,
                   help="an option of the task, e.g. kind=strokes or fill=noise (inpaint), kind=border "
                        "(uncrop), quality_min=10 (jpeg), upsample=nearest (sr) (repeatable)")
    g.add_argument("--cond-dropout", metavar="P", type=unit_interval("--cond-dropout"),
                   help="probability of training without the condition image, for classifier-free "
                        "guidance on it (restore --guidance-scale)" + dflt(d.cond_dropout))
    g.add_argument("--init-from", metavar="RUN",
                   help="start the network from the EMA weights of another run (its folder or a checkpoint) "
                        "instead of at random: the same --model, --process and --prediction; a --task model "
                        "may start from an unconditional run, its condition channels at zero, so that it "
                        "begins as that run's denoiser and only learns to use the condition")
    g = p.add_argument_group("diffusion")
    g.add_argument("--process", choices=list(PROCESS_NAMES),
                   help="forward process: discrete DDPM, continuous VP / sub-VP / VE SDEs, EDM, or the "
                        "simple x_t = x_0 + sqrt(t) eps" + dflt(d.process))
    g.add_argument("--schedule", choices=list(BETA_SCHEDULES),
                   help=f"DDPM beta schedule (default: {DEFAULT_DDPM_SCHEDULE})")
    g.add_argument("--diffusion-steps", metavar="T", type=int_in(1, 100000, "--diffusion-steps"),
                   help="number of DDPM / simple_ve steps T (default: 1000)")
    g.add_argument("--process-option", metavar="KEY=VALUE", action="append", type=key_value,
                   help="another process setting, e.g. beta_max=20 or sigma_max=80 (repeatable)")
    g.add_argument("--prediction", choices=list(PREDICTION_TYPES),
                   help="what the network predicts (default: v for ddpm, vp and subvp; eps for the "
                        "variance-exploding ve, edm and simple_ve, where v grows with the noise level)")
    g.add_argument("--weighting", choices=list(WEIGHTINGS), help="loss weighting" + dflt(d.weighting))
    g.add_argument("--min-snr-gamma", metavar="G", type=positive_float("--min-snr-gamma"),
                   help="gamma of --weighting min_snr (default: 5)")
    g.add_argument("--precondition", choices=list(PRECONDITIONS),
                   help="wrap the network in EDM's preconditioning D = c_skip x + c_out F(c_in x; ln(sigma)/4) "
                        "(Karras et al. 2022), any process; implies --prediction x0 --weighting edm. "
                        "Sampling, nll, tune and info apply it from the run's config.json (default: none)")
    g.add_argument("--sigma-data", metavar="SD", type=positive_float("--sigma-data"),
                   help="the data's standard deviation for --precondition edm and --weighting edm "
                        f"(default: the edm process's sigma_data, else {DEFAULT_SIGMA_DATA})")
    g.add_argument("--variance", choices=["fixed", "learned"],
                   help="reverse variance: fixed, or learned by a variance head with the hybrid loss "
                        "(Improved DDPM; implies --weighting hybrid)" + dflt(d.variance))
    g.add_argument("--timesteps", choices=list(TIMESTEP_SAMPLERS),
                   help="how training times are drawn" + dflt(d.timesteps))
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", metavar="N", type=int_in(1, BIG, "--steps"),
                   help="optimiser steps" + dflt(d.steps))
    g.add_argument("--batch-size", metavar="B", type=int_in(1, BIG, "--batch-size"),
                   help="samples per optimiser step" + dflt(d.batch_size))
    g.add_argument("--grad-accum", metavar="A", type=int_in(1, 4096, "--grad-accum"),
                   help="split each batch into A micro-batches (gradient accumulation)" + dflt(d.grad_accum))
    g.add_argument("--lr", metavar="LR", type=positive_float("--lr"), help="peak learning rate" + dflt(d.lr))
    g.add_argument("--lr-schedule", choices=list(LR_SCHEDULES),
                   help="after the warm-up: constant, or cosine decay to --min-lr" + dflt(d.lr_schedule))
    g.add_argument("--warmup", metavar="N", type=int_in(0, BIG, "--warmup"),
                   help="linear learning-rate warm-up steps" + dflt(d.warmup_steps))
    g.add_argument("--min-lr", metavar="LR", type=positive_float("--min-lr", allow_zero=True),
                   help="final learning rate of the cosine schedule" + dflt(d.min_lr))
    g.add_argument("--weight-decay", metavar="W", type=positive_float("--weight-decay", allow_zero=True),
                   help="AdamW weight decay" + dflt(d.weight_decay))
    g.add_argument("--grad-clip", metavar="NORM", type=positive_float("--grad-clip", allow_zero=True),
                   help="clip the gradient norm (0: no clipping)" + dflt(d.grad_clip))
    g.add_argument("--ema", metavar="DECAY", type=unit_interval("--ema"),
                   help="EMA decay of the weights, with warm-up min(DECAY, (1+k)/(10+k))" + dflt(d.ema_decay))
    g.add_argument("--no-ema-warmup", action="store_true", default=None,
                   help="use the EMA decay from the first step")
    g.add_argument("--label-dropout", metavar="P", type=unit_interval("--label-dropout"),
                   help="probability of training a labelled sample without its label (default: 0.1 "
                        "for labelled data)")
    g.add_argument("--mixed-precision", choices=list(MIXED_PRECISION),
                   help="bf16 autocast (CPU or GPU) or fp16 (GPU); auto is bf16 on a CUDA device that "
                        "supports it and no elsewhere, recorded as chosen and kept by --resume"
                        + dflt(d.mixed_precision))
    g = p.add_argument_group("machine and outputs")
    g.add_argument("--out", metavar="DIR", required=True, help="the run folder (created)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (options given again "
                        "must agree, except --steps, the learning-rate options and the outputs)")
    g.add_argument("--max-minutes", metavar="M", type=positive_float("--max-minutes"),
                   help="stop after M minutes of training steps, saving a checkpoint; --resume "
                        "continues exactly (for time-limited jobs)")
    g.add_argument("--seed", metavar="S", type=int_in(0, 2 ** 63 - 1, "--seed"),
                   help="seed of every random draw" + dflt(d.seed))
    g.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N" + dflt(d.device))
    g.add_argument("--compile", choices=list(COMPILE_CHOICES),
                   help="torch.compile the network for training: auto is yes on CUDA and no on a CPU; "
                        "the first step's extra seconds are logged" + dflt(d.compile))
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="keep an image network and its batches in channels-last (NHWC) layout, "
                        "faster convolutions on tensor-core GPUs (default: off)")
    g.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=None,
                   help="deterministic kernels only, so that a GPU run repeats itself bit for bit "
                        "(slower; an operation without one stops the run) (default: off)")
    g.add_argument("--threads", metavar="N", type=int_in(1, 1024, "--threads"),
                   help=f"torch CPU threads (default: {DEFAULT_TRAIN_THREADS}; on a busy machine more "
                        f"threads can be much slower)")
    g.add_argument("--log-every", metavar="N", type=int_in(1, BIG, "--log-every"),
                   help="steps per metrics line" + dflt(d.log_every))
    g.add_argument("--checkpoint-every", metavar="N", type=int_in(1, BIG, "--checkpoint-every"),
                   help="steps between checkpoints (one is always saved at the end)"
                        + dflt(d.checkpoint_every))
    g.add_argument("--keep", metavar="K", type=int_in(0, BIG, "--keep"),
                   help="keep the newest K checkpoints, 0 for all" + dflt(d.keep_checkpoints))
    g.add_argument("--sample-every", metavar="N", type=int_in(0, BIG, "--sample-every"),
                   help="steps between sample grids (0: only at the end)" + dflt(d.sample_every))
    g.add_argument("--sample-num", metavar="N", type=int_in(1, 100000, "--sample-num"),
                   help="samples per grid (default: 64 images or 2000 points)")
    g.add_argument("--sample-steps", metavar="N", type=int_in(1, 100000, "--sample-steps"),
                   help=f"sampler steps for the grids, at most T for ddpm and simple_ve (default: "
                        f"{DEFAULT_SAMPLE_STEPS}, or T if smaller)")
    g.add_argument("--sample-sampler", choices=list(SAMPLERS),
                   help="sampler for the grids" + dflt(d.sample_sampler))
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=run)


def train_config(args: argparse.Namespace):
    """The TrainConfig the command line asks for: the run's own settings when resuming, the
    defaults otherwise, with every option given on the command line applied."""
    import dataclasses

    from ..train.checkpoint import read_config
    from ..train.trainer import TrainConfig

    base = TrainConfig(num_threads=DEFAULT_TRAIN_THREADS)
    run_config = os.path.join(args.out, "config.json")
    if args.resume and os.path.isfile(run_config):
        base = TrainConfig.from_dict(read_config(args.out).get("train", {}), run_config)
    changes = {field: getattr(args, dest) for dest, field in _TRAIN_FIELDS.items()
               if getattr(args, dest) is not None}
    if args.grad_clip is not None:
        changes["grad_clip"] = args.grad_clip or None
    if args.keep is not None:
        changes["keep_checkpoints"] = args.keep or None
    if args.no_ema_warmup:
        changes["ema_warmup"] = False
    data_options = dict(base.data_options) if "data" not in changes else {}
    data_options.update(dict(args.data_option or []))
    if args.flip:
        data_options["flip"] = True
    model_options = dict(base.model_options)
    model_options.update(dict(args.model_option or []))
    task_options = dict(base.task_options) if "task" not in changes else {}
    task_options.update(dict(args.task_option or []))
    process_options = dict(base.process_options) if "process" not in changes else {}
    process_options.update(dict(args.process_option or []))
    if args.schedule is not None:
        process_options["schedule"] = args.schedule
    if args.diffusion_steps is not None:
        process_options["num_steps"] = args.diffusion_steps
    weighting_options = dict(base.weighting_options)
    if args.min_snr_gamma is not None:
        weighting_options["min_snr_gamma"] = args.min_snr_gamma
    if args.variance is not None:
        changes["variance"] = args.variance
        if args.variance == "learned" and args.weighting is None:
            changes["weighting"] = "hybrid"             # the loss that trains the variance head
    if args.precondition == "edm":                      # D predicts x0; the edm weight gives F weight 1
        changes.setdefault("prediction", "x0")
        changes.setdefault("weighting", "edm")
    changes.update(data_options=data_options, model_options=model_options, task_options=task_options,
                   process_options=process_options, weighting_options=weighting_options)
    return dataclasses.replace(base, **changes)


def run(args: argparse.Namespace) -> int:
    import shlex

    from ..train import TrainingInterrupted, train

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ScorekitError(f"--out {args.out!r} is an existing file; give a folder (new, or a run "
                            f"to --resume)")
    config = train_config(args)
    _check_resumable(args, config)
    progress = not args.no_progress

    def log(line: str) -> None:
        print(f"{PROG} train: {line}", file=sys.stderr, flush=True)

    try:
        max_seconds = None if args.max_minutes is None else 60.0 * args.max_minutes
        result = train(config, args.out, resume=args.resume, progress=progress, log=log,
                       max_seconds=max_seconds)
    except TrainingInterrupted as stop:
        saved = "no checkpoint yet"
        if stop.checkpoint:                             # shown inside --out as the user gave it
            saved = "saved " + os.path.join(args.out, os.path.relpath(stop.checkpoint, stop.out_dir))
        print(f"{PROG} train: interrupted ({stop.signal_name}) at step {stop.step}; {saved}; continue "
              f"with: {PROG} train --out {shlex.quote(args.out)} --resume", file=sys.stderr, flush=True)
        return stop.exit_status
    except OSError as err:
        raise ScorekitError(f"cannot write the run folder {args.out!r}: "
                            f"{err.strerror or err} ({err.filename or args.out})") from None
    if result.step < config.steps and max_seconds is not None and result.step > result.start_step:
        print(f"stopped at step {result.step} of {config.steps} after --max-minutes "
              f"{args.max_minutes:g}; --resume continues the run")
    if result.step == result.start_step:
        print(f"the run is already at step {result.step}: nothing to train (give a larger --steps "
              f"to train longer); last logged loss {result.loss:.4g}")
    else:
        print(f"trained to step {result.step} in {result.seconds:.1f} s "
              f"({result.images_per_second:.1f} samples/s); last logged loss {result.loss:.4g}")
    print("wrote:")
    for path in (result.checkpoint, *result.files.values()):
        if path:
            print(f"  {path}")
    return 0
