"""The ``scorekit`` command line: a thin layer over documented library functions.

Each command parses its arguments, calls one function and prints what it did. Mistakes a user
can make (bad arguments, a bad path, a :class:`scorekit.errors.ScorekitError` from the library)
are reported in one line, ``scorekit: error: <message>``, with exit status 2.
"""
from __future__ import annotations

import argparse
import math
import os
import signal
import sys
import textwrap
from typing import Sequence

from .errors import ScorekitError

PROG = "scorekit"


class _UsageError(Exception):
    """A bad command line (raised instead of argparse's print-usage-and-exit)."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse hook
        raise _UsageError(f"{message} (see '{self.prog} --help')")


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-written layout of descriptions and epilogs; show the defaults of options
    that take a value."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and action.option_strings \
                and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


# --- argument types --------------------------------------------------------------------------

def _step_list(text: str) -> tuple[int, ...]:
    from .demo import NUM_TRAIN_STEPS

    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or any(not p for p in parts):
        raise argparse.ArgumentTypeError(f"expected step counts separated by commas, like 10,50,1000; "
                                         f"got {text!r}")
    values = []
    for p in parts:
        try:
            v = int(p)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{p!r} is not a whole number (expected step counts "
                                             f"like 10,50,1000)") from None
        if not 1 <= v <= NUM_TRAIN_STEPS:
            raise argparse.ArgumentTypeError(f"{v} is outside 1..{NUM_TRAIN_STEPS} (the DDPM schedule "
                                             f"has T = {NUM_TRAIN_STEPS} steps)")
        values.append(v)
    return tuple(values)


def _sampler_name(text: str) -> str:
    """A ``--sampler`` value; a name that is not a sampler but a known function gets a pointer
    (argparse's choices list the samplers)."""
    from .sampling import NOT_SAMPLERS

    if text in NOT_SAMPLERS:
        raise argparse.ArgumentTypeError(NOT_SAMPLERS[text])
    return text


def _int_in(lo: int, hi: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be from {lo} to {hi}, got {v}")
        return v
    return parse


# --- the parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scorekit`` command (one sub-parser per command)."""
    from .demo import DATASETS, DEFAULT_SAMPLES, DEFAULT_STEPS, MAX_SAMPLES, MIN_SAMPLES
    from . import __version__

    parser = _Parser(
        prog=PROG, formatter_class=_Formatter,
        description="scorekit: denoising diffusion and score-based generative models, tested "
                    "against exact mathematics.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} demo                         sample an exact model, write figures and a table
              {PROG} demo --dataset multiscale_2d --steps 20,200
              {PROG} train --data digits --out runs/digits     train a U-Net on 8x8 digits
              {PROG} sample runs/digits --sampler ddim --steps 50 --out digits.png
              {PROG} info runs/digits             what a run or checkpoint holds
              {PROG} nll runs/digits --method both  bits/dim: ELBO and probability-flow ODE likelihood
              {PROG} tune runs/digits --sampler unipc --nfe 10   optimise the time steps for 10 NFE
              {PROG} COMMAND --help               the options of one command
            """))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    demo = commands.add_parser(
        "demo", formatter_class=_Formatter,
        help="sample an exact Gaussian-mixture model with DDPM and DDIM; write figures and an error table",
        description=textwrap.dedent("""\
            Sample a 2-D Gaussian mixture whose exact noise prediction stands in for a perfectly
            trained network (nothing to train), with DDPM's ancestral sampler and with
            deterministic DDIM (eta = 0) at several step counts on the DDPM linear schedule
            (T = 1000). Every error measured is the sampler's own.

            Writes into --out (replacing files of the same names):
              samples.png       the true data beside the samples of each sampler and step count
              trajectories.png  a few DDIM paths x_t from noise to data, over the data
              errors.md         the error table with explanations: sliced-Wasserstein distance
                                and its noise floor, mode-weight error, within-mode spread, time
              errors.csv        the same table as CSV
            and prints the table."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} demo
              {PROG} demo --out results/demo --dataset multiscale_2d
              {PROG} demo --steps 5,20,100 --samples 5000 --seed 1 --no-progress
            """))
    demo.add_argument("--out", metavar="DIR", default="demo-output",
                      help="folder to write into (created if needed)")
    demo.add_argument("--dataset", choices=list(DATASETS), default="eight_gaussians",
                      help="the mixture: eight equal modes on a circle, or five modes of unequal "
                           "weight at scales 50x apart")
    demo.add_argument("--steps", type=_step_list, metavar="N,N,...",
                      default=",".join(map(str, DEFAULT_STEPS)),
                      help="comma-separated step counts, each run with both samplers (1..1000)")
    demo.add_argument("--samples", type=_int_in(MIN_SAMPLES, MAX_SAMPLES, "--samples"), metavar="N",
                      default=DEFAULT_SAMPLES,
                      help="samples per sampler and step count (also the reference set's size)")
    demo.add_argument("--seed", type=_int_in(0, 2 ** 63 - 1, "--seed"), metavar="S", default=0,
                      help="seed of every random draw (the output is reproducible)")
    demo.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    demo.set_defaults(handler=_cmd_demo)
    _add_train(commands)
    _add_sample(commands)
    _add_info(commands)
    _add_nll(commands)
    _add_tune(commands)
    return parser


# --- commands ----------------------------------------------------------------------------------

def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ScorekitError(f"--out {args.out!r} is an existing file; give a folder (new or existing)")
    progress = not args.no_progress

    def log(line: str) -> None:
        print(f"  {line}", file=sys.stderr, flush=True)

    if progress:
        print(f"{PROG} demo: {args.dataset}, steps {','.join(map(str, sorted(set(args.steps))))}, "
              f"{args.samples} samples, seed {args.seed}", file=sys.stderr, flush=True)
    result = run_demo(args.out, dataset=args.dataset, steps=args.steps, num_samples=args.samples,
                      seed=args.seed, progress=progress, log=log if progress else None)
    print(result.table())
    print()
    print("wrote:")
    for path in result.files.values():
        print(f"  {path}")
    return 0


# --- train -------------------------------------------------------------------------------------

def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false, lists), else text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        parsed = json.loads(value)
    except ValueError:
        parsed = value
    return key.strip(), parsed


def _positive_float(what: str, *, allow_zero: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (v >= 0 if allow_zero else v > 0) or not math.isfinite(v):
            kind = "non-negative" if allow_zero else "positive"
            raise argparse.ArgumentTypeError(f"{what} must be a {kind} finite number, got {text}")
        return v
    return parse


def _unit_interval(what: str, *, closed_top: bool = False):
    def parse(text: str) -> float:
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (0.0 <= v <= 1.0 if closed_top else 0.0 <= v < 1.0):
            bracket = "]" if closed_top else ")"
            raise argparse.ArgumentTypeError(f"{what} must be in [0, 1{bracket}, got {text}")
        return v
    return parse


_BIG = 2 ** 31 - 1

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
}

#: the flags that set TrainConfig fields with no flag of the same name
_TRAIN_FIELD_FLAGS = {
    **{field: "--" + dest.replace("_", "-") for dest, field in _TRAIN_FIELDS.items()},
    "data_options": "--data-option/--flip", "model_options": "--model-option",
    "process_options": "--process-option/--schedule/--diffusion-steps", "weighting_options": "--min-snr-gamma",
    "variance": "--variance", "ema_warmup": "--no-ema-warmup", "grad_clip": "--grad-clip",
    "keep_checkpoints": "--keep",
}


def _check_resumable(args: argparse.Namespace, config) -> None:
    """Refuse, in flags, settings that a run given to --resume cannot change (the library's own
    check names TrainConfig fields)."""
    from .train.checkpoint import read_config
    from .train.trainer import RESUMABLE_FIELDS, TrainConfig, settings_changed

    run_config = os.path.join(args.out, "config.json")
    if not (args.resume and os.path.isfile(run_config)):
        return
    saved = TrainConfig.from_dict(read_config(args.out).get("train", {}), run_config)
    changed = settings_changed(saved, config)
    if changed:
        flag = lambda field: _TRAIN_FIELD_FLAGS.get(field, field)      # noqa: E731
        may = sorted({flag(f) for f in RESUMABLE_FIELDS})
        raise ScorekitError(f"cannot --resume {args.out!r} with different settings: "
                            + ", ".join(f"{flag(k)} {old!r} -> {new!r}" for k, (old, new) in changed.items())
                            + f"; only {', '.join(may)} may change (or start a new --out folder)")


#: torch threads ``scorekit train`` and ``sample`` use unless --threads says otherwise (measured:
#: on a busy 2-core machine one thread runs the small U-Nets many times faster than two)
DEFAULT_TRAIN_THREADS = 1


def _add_train(commands) -> None:
    from .losses import WEIGHTINGS
    from .models import PRESETS
    from .precondition import DEFAULT_SIGMA_DATA, PRECONDITIONS
    from .prediction import PREDICTION_TYPES
    from .processes import BETA_SCHEDULES
    from .samplers import SAMPLERS
    from .timesteps import DEFAULT_SAMPLE_STEPS
    from .train.trainer import (DEFAULT_DDPM_SCHEDULE, LR_SCHEDULES, MIXED_PRECISION, PROCESS_NAMES,
                                TIMESTEP_SAMPLERS, TrainConfig)

    d = TrainConfig()

    def dflt(value) -> str:
        return f" (default: {value})"

    p = commands.add_parser(
        "train", formatter_class=_Formatter,
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
            without labels, for classifier-free guidance.

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
              {PROG} train --out runs/digits --resume --steps 6000    continue, for longer
            """))
    g = p.add_argument_group("data and model")
    g.add_argument("--data", metavar="SPEC", help="dataset name or KIND:PATH" + dflt(d.data))
    g.add_argument("--data-option", metavar="KEY=VALUE", action="append", type=_key_value,
                   help="a dataset option, e.g. pad_to=32, stop=8000, size=16, channels=3 (repeatable)")
    g.add_argument("--flip", action="store_true", default=None,
                   help="augment images by random horizontal flips (not for digits!)")
    g.add_argument("--model", metavar="PRESET", choices=["auto", *PRESETS],
                   help=f"network preset: auto, {', '.join(PRESETS)}; auto is tiny for images and mlp "
                        f"for points" + dflt(d.model))
    g.add_argument("--model-option", metavar="KEY=VALUE", action="append", type=_key_value,
                   help="override a preset setting, e.g. base_channels=32, dropout=0.1 (repeatable)")
    g = p.add_argument_group("diffusion")
    g.add_argument("--process", choices=list(PROCESS_NAMES),
                   help="forward process: discrete DDPM, continuous VP / sub-VP / VE SDEs, EDM, or the "
                        "simple x_t = x_0 + sqrt(t) eps" + dflt(d.process))
    g.add_argument("--schedule", choices=list(BETA_SCHEDULES),
                   help=f"DDPM beta schedule (default: {DEFAULT_DDPM_SCHEDULE})")
    g.add_argument("--diffusion-steps", metavar="T", type=_int_in(1, 100000, "--diffusion-steps"),
                   help="number of DDPM / simple_ve steps T (default: 1000)")
    g.add_argument("--process-option", metavar="KEY=VALUE", action="append", type=_key_value,
                   help="another process setting, e.g. beta_max=20 or sigma_max=80 (repeatable)")
    g.add_argument("--prediction", choices=list(PREDICTION_TYPES),
                   help="what the network predicts (default: v for ddpm, vp and subvp; eps for the "
                        "variance-exploding ve, edm and simple_ve, where v grows with the noise level)")
    g.add_argument("--weighting", choices=list(WEIGHTINGS), help="loss weighting" + dflt(d.weighting))
    g.add_argument("--min-snr-gamma", metavar="G", type=_positive_float("--min-snr-gamma"),
                   help="gamma of --weighting min_snr (default: 5)")
    g.add_argument("--precondition", choices=list(PRECONDITIONS),
                   help="wrap the network in EDM's preconditioning D = c_skip x + c_out F(c_in x; ln(sigma)/4) "
                        "(Karras et al. 2022), any process; implies --prediction x0 --weighting edm. "
                        "Sampling, nll, tune and info apply it from the run's config.json (default: none)")
    g.add_argument("--sigma-data", metavar="SD", type=_positive_float("--sigma-data"),
                   help="the data's standard deviation for --precondition edm and --weighting edm "
                        f"(default: the edm process's sigma_data, else {DEFAULT_SIGMA_DATA})")
    g.add_argument("--variance", choices=["fixed", "learned"],
                   help="reverse variance: fixed, or learned by a variance head with the hybrid loss "
                        "(Improved DDPM; implies --weighting hybrid)" + dflt(d.variance))
    g.add_argument("--timesteps", choices=list(TIMESTEP_SAMPLERS),
                   help="how training times are drawn" + dflt(d.timesteps))
    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", metavar="N", type=_int_in(1, _BIG, "--steps"),
                   help="optimiser steps" + dflt(d.steps))
    g.add_argument("--batch-size", metavar="B", type=_int_in(1, _BIG, "--batch-size"),
                   help="samples per optimiser step" + dflt(d.batch_size))
    g.add_argument("--grad-accum", metavar="A", type=_int_in(1, 4096, "--grad-accum"),
                   help="split each batch into A micro-batches (gradient accumulation)" + dflt(d.grad_accum))
    g.add_argument("--lr", metavar="LR", type=_positive_float("--lr"), help="peak learning rate" + dflt(d.lr))
    g.add_argument("--lr-schedule", choices=list(LR_SCHEDULES),
                   help="after the warm-up: constant, or cosine decay to --min-lr" + dflt(d.lr_schedule))
    g.add_argument("--warmup", metavar="N", type=_int_in(0, _BIG, "--warmup"),
                   help="linear learning-rate warm-up steps" + dflt(d.warmup_steps))
    g.add_argument("--min-lr", metavar="LR", type=_positive_float("--min-lr", allow_zero=True),
                   help="final learning rate of the cosine schedule" + dflt(d.min_lr))
    g.add_argument("--weight-decay", metavar="W", type=_positive_float("--weight-decay", allow_zero=True),
                   help="AdamW weight decay" + dflt(d.weight_decay))
    g.add_argument("--grad-clip", metavar="NORM", type=_positive_float("--grad-clip", allow_zero=True),
                   help="clip the gradient norm (0: no clipping)" + dflt(d.grad_clip))
    g.add_argument("--ema", metavar="DECAY", type=_unit_interval("--ema"),
                   help="EMA decay of the weights, with warm-up min(DECAY, (1+k)/(10+k))" + dflt(d.ema_decay))
    g.add_argument("--no-ema-warmup", action="store_true", default=None,
                   help="use the EMA decay from the first step")
    g.add_argument("--label-dropout", metavar="P", type=_unit_interval("--label-dropout"),
                   help="probability of training a labelled sample without its label (default: 0.1 "
                        "for labelled data)")
    g.add_argument("--mixed-precision", choices=list(MIXED_PRECISION),
                   help="bf16 autocast (CPU or GPU) or fp16 (GPU)" + dflt(d.mixed_precision))
    g = p.add_argument_group("machine and outputs")
    g.add_argument("--out", metavar="DIR", required=True, help="the run folder (created)")
    g.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its newest checkpoint (options given again "
                        "must agree, except --steps, the learning-rate options and the outputs)")
    g.add_argument("--max-minutes", metavar="M", type=_positive_float("--max-minutes"),
                   help="stop after M minutes of training steps, saving a checkpoint; --resume "
                        "continues exactly (for time-limited jobs)")
    g.add_argument("--seed", metavar="S", type=_int_in(0, 2 ** 63 - 1, "--seed"),
                   help="seed of every random draw" + dflt(d.seed))
    g.add_argument("--device", metavar="DEV", help="cpu, cuda or cuda:N" + dflt(d.device))
    g.add_argument("--threads", metavar="N", type=_int_in(1, 1024, "--threads"),
                   help=f"torch CPU threads (default: {DEFAULT_TRAIN_THREADS}; on a busy machine more "
                        f"threads can be much slower)")
    g.add_argument("--log-every", metavar="N", type=_int_in(1, _BIG, "--log-every"),
                   help="steps per metrics line" + dflt(d.log_every))
    g.add_argument("--checkpoint-every", metavar="N", type=_int_in(1, _BIG, "--checkpoint-every"),
                   help="steps between checkpoints (one is always saved at the end)"
                        + dflt(d.checkpoint_every))
    g.add_argument("--keep", metavar="K", type=_int_in(0, _BIG, "--keep"),
                   help="keep the newest K checkpoints, 0 for all" + dflt(d.keep_checkpoints))
    g.add_argument("--sample-every", metavar="N", type=_int_in(0, _BIG, "--sample-every"),
                   help="steps between sample grids (0: only at the end)" + dflt(d.sample_every))
    g.add_argument("--sample-num", metavar="N", type=_int_in(1, 100000, "--sample-num"),
                   help="samples per grid (default: 64 images or 2000 points)")
    g.add_argument("--sample-steps", metavar="N", type=_int_in(1, 100000, "--sample-steps"),
                   help=f"sampler steps for the grids, at most T for ddpm and simple_ve (default: "
                        f"{DEFAULT_SAMPLE_STEPS}, or T if smaller)")
    g.add_argument("--sample-sampler", choices=list(SAMPLERS),
                   help="sampler for the grids" + dflt(d.sample_sampler))
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_cmd_train)


def _train_config(args: argparse.Namespace):
    """The TrainConfig the command line asks for: the run's own settings when resuming, the
    defaults otherwise, with every option given on the command line applied."""
    import dataclasses

    from .train.checkpoint import read_config
    from .train.trainer import TrainConfig

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
    changes.update(data_options=data_options, model_options=model_options,
                   process_options=process_options, weighting_options=weighting_options)
    return dataclasses.replace(base, **changes)


def _cmd_train(args: argparse.Namespace) -> int:
    import shlex

    from .train import TrainingInterrupted, train

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ScorekitError(f"--out {args.out!r} is an existing file; give a folder (new, or a run "
                            f"to --resume)")
    config = _train_config(args)
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


# --- sample ------------------------------------------------------------------------------------

def _sampler_option_flags() -> dict:
    """Every option of every sampler: ``{name: (type, {sampler name: default})}``."""
    from .samplers import SAMPLERS
    from .sampling import sampler_options

    flags = {}
    for sampler in SAMPLERS:
        for name, default in sampler_options(sampler).items():
            kind = type(default) if default is not None else str
            flags.setdefault(name, (kind, {}))[1][sampler] = default
    return flags


def _sampler_option_help(name: str, defaults: dict) -> str:
    """The help of ``--NAME``: its values, the samplers that use it and their defaults
    (:mod:`scorekit.samplers.options`)."""
    from .samplers.options import describe_values, option_values

    groups = {}                                  # samplers that take the same values, together
    for sampler, default in defaults.items():
        groups.setdefault(describe_values(option_values(name, sampler)), []).append(f"{sampler} (default {default})")
    return "; ".join(f"{values}, for {', '.join(used)}" for values, used in groups.items())


def _add_sampler_option_flags(p: argparse.ArgumentParser) -> None:
    """One ``--OPTION`` flag per sampler option (``sample`` and ``tune``), with its values and defaults."""
    g = p.add_argument_group("sampler options (each sampler takes only its own)")
    for name, (kind, defaults) in sorted(_sampler_option_flags().items()):
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar=name.upper(),
                       type=float if kind in (int, float) else str, default=None,
                       help=_sampler_option_help(name, defaults))


def _add_sample(commands) -> None:
    from .samplers import SAMPLERS
    from .samplers.options import ADAPTIVE_SAMPLERS
    from .timesteps import CONTINUOUS_SPACINGS, DEFAULT_SAMPLE_STEPS, DISCRETE_SPACINGS

    p = commands.add_parser(
        "sample", formatter_class=_Formatter,
        help="sample a trained model: write a PNG grid (or scatter plot) and an .npz of the samples",
        description=textwrap.dedent("""\
            Draw samples from a run folder (its newest checkpoint) or a checkpoint folder, with any
            sampler, from the EMA weights by default. Writes --out (a PNG: an image grid, or a
            scatter plot for 2-D points) and the samples themselves beside it as .npz (x: float32
            samples in the data's scale, y: the class labels for a class-conditional model).
            Prints the time taken and the number of network evaluations (NFE) per sample.

            Class-conditional models sample the classes in turn (0, 1, ..., one column each) unless
            --class names one. The noise comes from --seed; a deterministic sampler (DDIM with
            eta 0) gives the same samples whatever the --batch-size."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} sample runs/digits --out digits.png
              {PROG} sample runs/digits --sampler ddpm --steps 100 --variance large --out ddpm.png
              {PROG} sample runs/digits/checkpoints/step-0001000 --no-ema --num 100 --out raw.png
              {PROG} sample runs/8g --sampler ddim --eta 1 --num 5000 --out points.png
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    p.add_argument("--sampler", choices=list(SAMPLERS), type=_sampler_name, default="ddim", help="the sampler")
    p.add_argument("--steps", metavar="N", type=_int_in(1, 100000, "--steps"),
                   help=f"sampler steps (network evaluations for DDIM and DDPM), at most T for ddpm and "
                        f"simple_ve models (default: {DEFAULT_SAMPLE_STEPS}, or T if smaller); not for "
                        f"{', '.join(ADAPTIVE_SAMPLERS)}, which chooses its own (its NFE is printed)")
    p.add_argument("--spacing", choices=sorted(set(DISCRETE_SPACINGS) | set(CONTINUOUS_SPACINGS)),
                   help="how the steps are spaced (default: the process's own: trailing for DDPM, karras for EDM, uniform for the SDEs)")
    p.add_argument("--schedule", choices=("default", "tuned"), default="default",
                   help="tuned: the time steps 'scorekit tune' saved for this sampler and step count "
                        "(instead of --spacing)")
    _add_sampler_option_flags(p)
    p.add_argument("--clip", metavar="X", type=_positive_float("--clip"),
                   help="clamp the predicted x_0 to [-X, X] at every step (e.g. 1 for images)")
    p.add_argument("--num", metavar="N", type=_int_in(1, 1000000, "--num"), default=64,
                   help="number of samples")
    p.add_argument("--class", dest="label", metavar="K[,K...]",
                   help="the class(es) to sample from a class-conditional model, by number or by the "
                        "name 'scorekit info' lists (e.g. 3 or cat, or cat,dog in turn; default: all "
                        "classes in turn)")
    p.add_argument("--unconditional", action="store_true",
                   help="sample a class-conditional model without labels (it learnt this through "
                        "label dropout)")
    p.add_argument("--seed", metavar="S", type=_int_in(0, 2 ** 63 - 1, "--seed"), default=0,
                   help="seed of the noise")
    p.add_argument("--batch-size", metavar="B", type=_int_in(1, 1000000, "--batch-size"), default=256,
                   help="samples per network call")
    p.add_argument("--out", metavar="FILE.png", default="samples.png",
                   help="the image to write; the samples go to the same name with .npz")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="sample on when the state becomes NaN or Inf (by default that is an error "
                        "naming the step where it happened)")
    _add_run_flags(p)
    p.set_defaults(handler=_cmd_sample)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    """--device, --threads and --no-progress, as `sample` and `tune` take them."""
    p.add_argument("--device", metavar="DEV", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", metavar="N", type=_int_in(1, 1024, "--threads"),
                   default=DEFAULT_TRAIN_THREADS,
                   help="torch CPU threads (on a busy machine more threads can be much slower)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def _sampler_options_from(args: argparse.Namespace) -> dict:
    """The ``--option`` flags given for ``args.sampler``, checked against its options; whole
    numbers become ints where the option's default is an int."""
    from .sampling import sampler_options

    options = {name: getattr(args, f"opt_{name}") for name in _sampler_option_flags()
               if getattr(args, f"opt_{name}") is not None}
    allowed = sampler_options(args.sampler)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        flags = ", ".join("--" + u.replace("_", "-") for u in unknown)
        raise ScorekitError(f"sampler {args.sampler!r} has no option {flags}; its options are: "
                            f"{', '.join('--' + a.replace('_', '-') for a in allowed) or 'none'}")
    from .samplers.options import option_values

    for name, value in list(options.items()):
        default = allowed[name]
        if isinstance(default, int) and not isinstance(default, bool) and float(value).is_integer():
            options[name] = value = int(value)
        values = option_values(name, args.sampler)
        if isinstance(values, tuple) and value not in values:
            given = f"{value:g}" if isinstance(value, float) else value
            raise ScorekitError(f"--{name.replace('_', '-')} {given} is not an option of {args.sampler}; "
                                f"choose one of {', '.join(map(str, values))}")
    return options


#: training samples per reverse step on which ``sample --variance analytic`` estimates Analytic-DPM's
#: variances (Bao et al. 2022 report stable estimates from 100 per step)
ANALYTIC_SAMPLES = 100


def _analytic_variances(args: argparse.Namespace, ckpt, timesteps, device, classes):
    """Analytic-DPM's reverse variances on ``timesteps`` (:func:`scorekit.variances.analytic_variances`),
    estimated on :data:`ANALYTIC_SAMPLES` training samples per step drawn with seed ``--seed + 2``:
    with one ``--class`` on that class's samples and label, otherwise on all of them without labels
    (for a class-conditional model that is the larger, marginal posterior variance)."""
    import torch

    from .data import dataset_from_config
    from .train.checkpoint import checkpoint_denoiser
    from .variances import analytic_variances

    if not ckpt.data_config:
        raise ScorekitError(f"--variance analytic is estimated on the run's training data, but {ckpt.path} "
                            f"records none; use --variance small or large")
    data = dataset_from_config(ckpt.data_config, progress=False if args.no_progress else None)
    x, y = data.x, None
    if classes is not None and len(classes) == 1 and data.y is not None:
        x = x[data.y == classes[0]]
        y = torch.full((ANALYTIC_SAMPLES,), classes[0], dtype=torch.long, device=device)
    denoiser = checkpoint_denoiser(ckpt, ema=not args.no_ema, y=y)
    return analytic_variances(denoiser, ckpt.process, x.to(device), num_samples=ANALYTIC_SAMPLES,
                              timesteps=timesteps, generator=torch.Generator().manual_seed(args.seed + 2),
                              progress=not args.no_progress)


class _Counted:
    """Counts the calls of a model (one call evaluates the network on a whole batch)."""

    def __init__(self, model):
        self.model = model
        self.calls = 0

    def __call__(self, x_t, t, **condition):
        self.calls += 1
        return self.model(x_t, t, **condition)


def _class_labels(text: str, num_classes: int, class_names) -> list[int]:
    """The labels ``--class`` names: comma-separated numbers ``0 .. num_classes-1`` or names of
    ``class_names`` (the run's, e.g. an image folder's sub-folders)."""
    names = list(class_names or [])
    listing = (", ".join(f"{i} {n}" for i, n in enumerate(names)) if names else
               f"0 to {num_classes - 1} (this run stores no class names)")
    labels = []
    for part in text.split(","):
        part = part.strip()
        if part in names:
            labels.append(names.index(part))
            continue
        try:
            k = int(part)
        except ValueError:
            raise ScorekitError(f"--class {part!r} is not a class of this model; its classes are: {listing}") from None
        if not 0 <= k < num_classes:
            raise ScorekitError(f"--class {k} is outside 0..{num_classes - 1}; the model's classes are: {listing}")
        labels.append(k)
    return labels


def _sample_steps(args: argparse.Namespace) -> int | None:
    """``--steps`` (``None``: the default for the model); an adaptive sampler chooses its own
    steps, so it refuses --steps, --spacing and --schedule tuned and gets the grid of one step
    (whose first and last times are all it uses)."""
    from .samplers.options import ADAPTIVE_SAMPLERS

    if args.sampler not in ADAPTIVE_SAMPLERS:
        return args.steps
    given = [flag for flag, value in (("--steps", args.steps), ("--spacing", args.spacing)) if value is not None]
    given += ["--schedule tuned"] if args.schedule == "tuned" else []
    if given:
        raise ScorekitError(f"--sampler {args.sampler} chooses its own steps (--rtol and --atol set its "
                            f"accuracy; the NFE is printed): drop {', '.join(given)}")
    return 1


def _cmd_sample(args: argparse.Namespace) -> int:
    import time

    import numpy as np
    import torch

    from .plotting import atomic_path
    from .sampling import sample
    from .train.checkpoint import checkpoint_denoiser, load_checkpoint
    from .train.distributed import resolve_device
    from .samplers.options import ADAPTIVE_SAMPLERS
    from .timesteps import check_step_count, default_step_count
    from .train.trainer import write_samples

    out = args.out
    if not out.lower().endswith(".png"):
        raise ScorekitError(f"--out {out!r} must name a .png file (the samples go beside it as .npz)")
    if os.path.isdir(out):
        raise ScorekitError(f"--out {out!r} is a folder; give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ScorekitError(f"the folder of --out {out!r} does not exist; create it first")
    options = _sampler_options_from(args)
    steps = _sample_steps(args)
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=device)
        num_classes = ckpt.num_classes
        classes = None                                  # the --class labels, in turn
        if args.unconditional and args.label is not None:
            raise ScorekitError("give either --class or --unconditional, not both")
        if args.unconditional:
            if num_classes is None:
                raise ScorekitError("--unconditional: this model was trained without labels; it is "
                                    "unconditional already")
            labels = None
        elif args.label is not None:
            if num_classes is None:
                raise ScorekitError(f"--class {args.label}: this model was trained without labels")
            classes = _class_labels(args.label, num_classes, ckpt.config.get("class_names"))
            labels = torch.tensor(classes, dtype=torch.long)[torch.arange(args.num) % len(classes)]
        elif num_classes is not None:
            labels = torch.arange(args.num) % num_classes
        else:
            labels = None
        shape = (args.num, *ckpt.sample_shape)
        x_T = ckpt.process.prior_sample(shape, generator=torch.Generator().manual_seed(args.seed))
        noise = torch.Generator(device=device).manual_seed(args.seed + 1)
        steps = default_step_count(ckpt.process) if steps is None else check_step_count(ckpt.process, steps,
                                                                                         "--steps")
        timesteps = None
        if args.schedule == "tuned":
            from .schedule_tuning import load_tuned_for_steps

            if args.spacing is not None:
                raise ScorekitError("give either --spacing or --schedule tuned, not both")
            timesteps = load_tuned_for_steps(ckpt.path, ckpt.process, args.sampler, steps,
                                             **options).timesteps
        if isinstance(options.get("variance"), str) and options["variance"] == "analytic":
            from .timesteps import make_timesteps

            if timesteps is None:
                timesteps = make_timesteps(ckpt.process, steps, args.spacing)
            options["variance"] = _analytic_variances(args, ckpt, timesteps, device, classes)
        parts, nfe_calls, batches = [], 0, 0
        start = time.perf_counter()
        for lo in range(0, args.num, args.batch_size):
            hi = min(lo + args.batch_size, args.num)
            y = None if labels is None else labels[lo:hi].to(device)
            d = checkpoint_denoiser(ckpt, ema=not args.no_ema, y=y)
            if getattr(d, "learned_variance", False):   # the whole network, variance head included
                from .variances import LearnedVarianceDenoiser

                model = _Counted(d.network)
                target = LearnedVarianceDenoiser(model, ckpt.process, ckpt.prediction_type,
                                                 time_input=d.time_input)
            else:
                model = target = _Counted(d.model)
            x = sample(target, x_T[lo:hi].to(device), process=ckpt.process,
                       prediction_type=ckpt.prediction_type, sampler=args.sampler,
                       num_steps=steps, spacing=args.spacing, timesteps=timesteps,
                       generator=noise, clip=args.clip, progress=not args.no_progress,
                       check_finite=not args.allow_nonfinite, **options)
            parts.append(x.cpu())
            nfe_calls += model.calls
            batches += 1
        seconds = time.perf_counter() - start
        x0 = torch.cat(parts)
    finally:
        torch.set_num_threads(threads_before)
    if not torch.isfinite(x0).all():
        bad = int((~torch.isfinite(x0.reshape(x0.shape[0], -1)).all(1)).sum())
        print(f"{PROG} sample: warning: {bad} of {args.num} samples hold NaN or Inf values",
              file=sys.stderr)
    npz = os.path.splitext(out)[0] + ".npz"
    data = None
    if len(ckpt.sample_shape) == 1:                       # points: draw the data beside them
        try:
            from .data import dataset_from_config

            data = (dataset_from_config(ckpt.data_config, progress=False if args.no_progress else None).x
                    if ckpt.data_config else None)
        except ScorekitError:
            data = None
    nfe = nfe_calls / max(batches, 1)
    step_text = f"{steps} steps" if args.sampler not in ADAPTIVE_SAMPLERS else "adaptive steps"
    title = f"{args.sampler}, {step_text}, {'raw' if args.no_ema else 'EMA'} weights, step {ckpt.step}"
    try:
        arrays = {"x": x0.numpy().astype(np.float32)}
        if labels is not None:
            arrays["y"] = labels.numpy()
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
        try:
            write_samples(x0, out, data=data, title=title,
                          nrow=None if labels is None or classes is not None and len(classes) == 1
                          else len(classes or range(num_classes)))
        except BaseException:
            os.remove(npz)
            raise
    except OSError as err:
        raise ScorekitError(f"cannot write {out!r}: {err.strerror or err}") from None
    print(f"sampled {args.num} in {seconds:.2f} s with {args.sampler} ({step_text}, "
          f"NFE {nfe:g} per sample) from step {ckpt.step} of {ckpt.path}")
    print("wrote:")
    print(f"  {out}")
    print(f"  {npz}")
    return 0


# --- info --------------------------------------------------------------------------------------

def _add_info(commands) -> None:
    p = commands.add_parser(
        "info", formatter_class=_Formatter,
        help="describe a run or checkpoint: model, process, data, step, EMA, files",
        description=textwrap.dedent("""\
            Print what a run folder (its newest checkpoint) or a checkpoint folder holds: the
            network (kind, preset, parameters), the forward process, the prediction type and loss,
            the data, the step, the EMA, the last logged loss and the sizes of the files. Loading
            checks the files: a corrupt configuration or weights that do not fit it are reported."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} info runs/digits
              {PROG} info runs/digits/checkpoints/step-0001000
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    p.set_defaults(handler=_cmd_info)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _precondition_text(precondition: dict | None) -> str:
    if not precondition:
        return ""
    return f" (EDM preconditioning, sigma_data {precondition.get('sigma_data')})"


def _cmd_info(args: argparse.Namespace) -> int:
    from .models import count_parameters
    from .train.checkpoint import is_run_dir, list_checkpoints, load_checkpoint
    from .train.logging import read_metrics

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.config
    model = cfg["model"]
    train = cfg.get("train", {})
    preset = cfg.get("model_preset") or train.get("model")
    details = ", ".join(f"{k} {v}" for k, v in model.items()
                        if k in ("in_channels", "dim", "base_channels", "channel_mults", "hidden",
                                 "depth", "num_classes") and v is not None)
    lines = [("checkpoint", f"{ckpt.path} (step {ckpt.step})")]
    run = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.path)))
    if is_run_dir(run):
        steps = [s for s, _ in list_checkpoints(run)]
        lines.append(("run", f"{run}: {len(steps)} checkpoint(s) at step{'s' if len(steps) > 1 else ''} "
                              f"{', '.join(map(str, steps))}"))
    lines += [
        ("model", f"{model['kind']}" + (f" preset {preset}" if preset else "")
         + f", {count_parameters(ckpt.net):,} parameters ({details})"),
        ("process", repr(ckpt.process)),
        ("prediction", ckpt.prediction_type + _precondition_text(cfg.get("precondition"))),
    ]
    loss = cfg.get("loss", {})
    if loss:
        opts = ", ".join(f"{k}={v}" for k, v in loss.get("options", {}).items())
        lines.append(("loss", f"{loss.get('weighting')} weighting{f' ({opts})' if opts else ''}, "
                              f"{loss.get('timesteps')} timesteps"))
    data = ckpt.data_config or {}
    size = ckpt.trainer.get("data", {}).get("size")
    data_text = data.get("spec", "?")
    opts = ", ".join(f"{k}={v}" for k, v in data.items() if k != "spec")
    if opts:
        data_text += f" ({opts})"
    data_text += f": {size if size is not None else '?'} samples of shape {tuple(ckpt.sample_shape)}"
    if ckpt.num_classes is not None:
        data_text += f", {ckpt.num_classes} classes, label dropout {cfg.get('label_dropout')}"
    lines.append(("data", data_text))
    if cfg.get("class_names"):
        lines.append(("classes", ", ".join(f"{i} {name}" for i, name in enumerate(cfg["class_names"]))
                      + " (sample --class takes a number or a name)"))
    total = train.get("steps")
    lines.append(("step", f"{ckpt.step}" + (f" of {total}" if total else "")
                  + (f", batch size {train.get('batch_size')}" if train.get("batch_size") else "")
                  + (f", lr {train.get('lr')} ({train.get('lr_schedule')}, warm-up "
                     f"{train.get('warmup_steps')})" if train.get("lr") else "")))
    ema = ckpt.trainer.get("ema", cfg.get("ema", {}))
    if ema:
        lines.append(("EMA", f"decay {ema.get('decay')}{' with warm-up' if ema.get('warmup') else ''}"
                             + (f", {ema['num_updates']} updates" if "num_updates" in ema else "")))
    if is_run_dir(run):
        rows = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if r["step"] <= ckpt.step]
        if rows:
            r = rows[-1]
            lines.append(("last loss", f"{r['loss']:.4g} at step {r['step']} "
                                       f"({r.get('seconds', 0):.0f} s of training, "
                                       f"{r.get('images_per_second', 0):.0f} samples/s)"))
    files = []
    for name in sorted(os.listdir(ckpt.path)):
        path = os.path.join(ckpt.path, name)
        if os.path.isfile(path):
            files.append(f"{name} {_size(os.path.getsize(path))}")
    lines.append(("files", ", ".join(files)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0


# --- tune --------------------------------------------------------------------------------------

def _add_tune(commands) -> None:
    from .samplers import SAMPLERS
    from .schedule_tuning import DEFAULT_MAX_EVALS, INITS

    p = commands.add_parser(
        "tune", formatter_class=_Formatter,
        help="optimise a deterministic sampler's time steps for a trained model at a given NFE",
        description=textwrap.dedent("""\
            Choose the time steps on which a deterministic sampler (e.g. ddim, or a higher-order
            ODE solver) with --nfe network evaluations comes closest to the exact probability-flow
            ODE of the model (EMA weights). Draws --num noise samples x_T from the prior (--seed),
            solves the ODE from them once to high accuracy, then minimises the sampler's mean squared
            error to that solution over the grids uniform in log-SNR after a smooth reshaping
            (Nelder-Mead, at most --max-evals sampler runs). Prints the error on the sampler's
            default grid and on the tuned one, and saves the tuned grid in schedules.json of the
            checkpoint folder, where 'scorekit sample --schedule tuned' finds it.

            Single-step higher-order solvers make more than one evaluation per step: the grid then
            has fewer steps than --nfe (an --nfe no grid reaches is refused, naming the nearest)."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} tune runs/8g --sampler ddim --nfe 10
              {PROG} sample runs/8g --sampler ddim --steps 10 --schedule tuned --out tuned.png
              {PROG} tune runs/8g --sampler ode_heun --nfe 9 --num 256 --max-evals 500
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    p.add_argument("--sampler", choices=list(SAMPLERS), type=_sampler_name, default="ddim",
                   help="the sampler (a deterministic one)")
    p.add_argument("--nfe", metavar="N", type=_int_in(1, 100000, "--nfe"), required=True,
                   help="network evaluations per sample")
    _add_sampler_option_flags(p)
    p.add_argument("--num", metavar="N", type=_int_in(1, 100000, "--num"), default=128,
                   help="noise samples to tune on")
    p.add_argument("--seed", metavar="S", type=_int_in(0, 2 ** 63 - 1, "--seed"), default=0,
                   help="seed of the noise")
    p.add_argument("--max-evals", metavar="M", type=_int_in(0, 1000000, "--max-evals"),
                   default=DEFAULT_MAX_EVALS, help="most sampler runs the optimiser may make")
    p.add_argument("--init", choices=list(INITS), default="best",
                   help="start from the sampler's default grid, the log-SNR-uniform one, or the "
                        "better of the two")
    _add_run_flags(p)
    p.set_defaults(handler=_cmd_tune)


def _cmd_tune(args: argparse.Namespace) -> int:
    import torch

    from .schedule_tuning import save_tuned, tune_timesteps
    from .train.checkpoint import checkpoint_denoiser, load_checkpoint
    from .train.distributed import resolve_device

    options = _sampler_options_from(args)
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        ckpt = load_checkpoint(args.checkpoint, device=device)
        labels = None
        if ckpt.num_classes is not None:                 # the classes in turn, as sample does
            labels = (torch.arange(args.num) % ckpt.num_classes).to(device)
        x_T = ckpt.process.prior_sample((args.num, *ckpt.sample_shape),
                                        generator=torch.Generator().manual_seed(args.seed)).to(device)
        denoiser = checkpoint_denoiser(ckpt, y=labels)
        if not args.no_progress:
            print(f"{PROG} tune: {args.sampler} at NFE {args.nfe} on {args.num} samples from step "
                  f"{ckpt.step} of {ckpt.path}; solving the probability-flow ODE to high accuracy "
                  f"first", file=sys.stderr, flush=True)
        tuned = tune_timesteps(denoiser, ckpt.process, args.sampler, args.nfe, x_T, init=args.init,
                               max_evals=args.max_evals, progress=not args.no_progress, **options)
    finally:
        torch.set_num_threads(threads_before)
    file = save_tuned(ckpt.path, tuned)
    ratio = tuned.error_default / tuned.error_tuned if tuned.error_tuned > 0 else math.inf
    times = ", ".join(f"{t:.4g}" for t in tuned.timesteps.tolist())
    print(f"tuned {args.sampler} at NFE {tuned.nfe} ({tuned.steps} steps) on {tuned.num_samples} samples "
          f"in {tuned.seconds:.1f} s ({tuned.evaluations} sampler runs)")
    print(f"mean squared error to the probability-flow ODE: default grid {tuned.error_default:.4g}, "
          f"tuned {tuned.error_tuned:.4g} ({ratio:.2f}x lower)")
    print(f"time steps: {times}")
    print(f"use it: {PROG} sample {args.checkpoint} --sampler {args.sampler} --steps {tuned.steps} "
          f"--schedule tuned")
    print("wrote:")
    print(f"  {file}")
    return 0


# --- nll ---------------------------------------------------------------------------------------

NLL_METHODS = ("ode", "elbo", "both")


def _data_bits(text: str):
    """``auto``, ``0`` (continuous data) or a bit depth 1..16."""
    if text == "auto":
        return text
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected auto, 0 or a bit depth from 1 to 16; got {text!r}") from None
    if not 0 <= v <= 16:
        raise argparse.ArgumentTypeError(f"--data-bits must be auto, 0 (continuous) or 1..16, got {v}")
    return v


def _add_nll(commands) -> None:
    from .likelihood.ode import DIVERGENCES, PROBES
    from .timesteps import DEFAULT_CHAIN_STEPS
    from .variances import VARIANCES

    p = commands.add_parser(
        "nll", formatter_class=_Formatter,
        help="negative log-likelihood of data in bits/dim: the exact probability-flow ODE likelihood "
             "and/or the ELBO",
        description=textwrap.dedent("""\
            Evaluate a trained model's negative log-likelihood of data, in bits per dimension, from
            a run folder (its newest checkpoint) or a checkpoint folder, with the EMA weights by
            default:
              ode   the exact likelihood through the probability-flow ODE (adaptive RK45, with
                    Hutchinson's divergence estimate or the exact trace; scorekit.likelihood.ode)
              elbo  the variational bound of a discrete chain (scorekit.likelihood.elbo): a
                    discrete process's own steps, or for a continuous process (vp, subvp, ve,
                    edm) --elbo-steps times uniform in log-SNR (scorekit.timesteps.chain_timesteps)
            The data are the checkpoint's training data unless --data names others; --data-option
            changes their options (e.g. start=1500 for samples not trained on). For 8-bit data
            (--data-bits auto detects values on the 256 levels of [-1, 1]) both report bits/dim of
            the discrete values: the ODE through uniform dequantisation, an upper bound. Other data
            are scored by the continuous density (which can be negative in bits/dim).

            Prints for each method the mean bits/dim +- its standard error over the samples, the
            network evaluations (NFE) per batch and the wall time; --out writes them, with every
            sample's value, as JSON. With --method both, a method that cannot be computed for this
            model (e.g. --variance learned without a variance head) is reported in one line beside
            the other's result; the exit status is 2 only if neither could be computed."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} nll runs/digits --num 128
              {PROG} nll runs/mnist --data mnist:../shared/data/mnist-test --data-option pad_to=32 \\
                  --method both --out nll.json
              {PROG} nll runs/8g --data-option seed=1 --divergence exact --rtol 1e-6 --atol 1e-6
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    g = p.add_argument_group("data")
    g.add_argument("--data", metavar="SPEC", help="dataset name or KIND:PATH (default: the checkpoint's data)")
    g.add_argument("--data-option", metavar="KEY=VALUE", action="append", type=_key_value,
                   help="a dataset option, e.g. start=1500 or seed=1 for held-out samples (repeatable)")
    g.add_argument("--num", metavar="N", type=_int_in(1, _BIG, "--num"), default=256,
                   help="evaluate the first N samples (all of them if the data hold fewer)")
    g.add_argument("--batch-size", metavar="B", type=_int_in(1, _BIG, "--batch-size"), default=64,
                   help="samples per ODE solve / ELBO pass")
    g.add_argument("--data-bits", metavar="B", type=_data_bits, default="auto",
                   help="bit depth of the data: auto (8 if every value is on the 256 levels of [-1, 1], "
                        "else continuous), 0 for continuous data, or 1..16")
    g = p.add_argument_group("method")
    g.add_argument("--method", choices=list(NLL_METHODS), default="ode",
                   help="the exact ODE likelihood, the ELBO, or both")
    g.add_argument("--divergence", choices=list(DIVERGENCES), default="hutchinson",
                   help="ODE: Hutchinson's estimate or the exact trace (one backward pass per dimension)")
    g.add_argument("--probe", choices=list(PROBES), default="rademacher", help="ODE: Hutchinson's probes")
    g.add_argument("--num-probes", metavar="K", type=_int_in(1, 4096, "--num-probes"), default=1,
                   help="ODE: probes per evaluation")
    g.add_argument("--rtol", metavar="R", type=_positive_float("--rtol"), default=1e-5,
                   help="ODE: relative tolerance")
    g.add_argument("--atol", metavar="A", type=_positive_float("--atol"), default=1e-5,
                   help="ODE: absolute tolerance")
    g.add_argument("--t-eps", metavar="T", type=float,
                   help="ODE: start time of the integral (default: the process's t_min)")
    g.add_argument("--variance", choices=list(VARIANCES), default="small",
                   help="ELBO: the reverse variance (learned: a model trained with --variance learned)")
    g.add_argument("--elbo-steps", metavar="N", type=_int_in(1, 100000, "--elbo-steps"),
                   help=f"ELBO: reverse steps of the chain (default: a discrete process's whole chain of "
                        f"T steps; a continuous one's {DEFAULT_CHAIN_STEPS} steps uniform in log-SNR)")
    g = p.add_argument_group("other")
    g.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    g.add_argument("--seed", metavar="S", type=_int_in(0, 2 ** 63 - 1, "--seed"), default=0,
                   help="seed of the dequantisation noise, the probes and the ELBO's x_t")
    g.add_argument("--out", metavar="FILE.json", help="write the results as JSON")
    g.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(handler=_cmd_nll)


def _nll_data(args: argparse.Namespace, ckpt):
    """The dataset ``scorekit nll`` evaluates: --data (or the checkpoint's), with --data-option."""
    from .data import load_dataset

    if args.data is not None:
        spec, options = args.data, {}
    else:
        if not ckpt.data_config or "spec" not in ckpt.data_config:
            raise ScorekitError(f"{ckpt.path} records no dataset; name one with --data")
        options = {k: v for k, v in ckpt.data_config.items() if k not in ("spec", "flip")}
        spec = ckpt.data_config["spec"]
    options.update(dict(args.data_option or []))
    if args.no_progress:
        options["progress"] = False
    dataset = load_dataset(spec, **options)
    if tuple(dataset.shape) != tuple(ckpt.sample_shape):
        raise ScorekitError(f"{dataset.spec} holds samples of shape {tuple(dataset.shape)}, but the model "
                            f"takes {tuple(ckpt.sample_shape)}; give data of the model's shape (--data, "
                            f"--data-option)")
    return dataset


def _nll_method(method, args, ckpt, x, labels, data_bits, elbo_grid, elbo_fn) -> dict:
    """One method's bits/dim of ``x`` batch by batch: the mean, its standard error, every sample's value,
    NFE per batch and seconds."""
    import time

    import torch
    from tqdm.auto import tqdm

    from .likelihood.ode import ode_likelihood
    from .train.checkpoint import checkpoint_denoiser

    num = x.shape[0]
    generator = torch.Generator().manual_seed(args.seed)
    bpd, nfe, start = [], [], time.perf_counter()
    bar = tqdm(total=num, desc=f"nll {method}", disable=args.no_progress, leave=False)
    try:
        for lo in range(0, num, args.batch_size):
            hi = min(lo + args.batch_size, num)
            d = checkpoint_denoiser(ckpt, ema=not args.no_ema,
                                    y=None if labels is None else labels[lo:hi])
            if getattr(d, "learned_variance", False):   # count the whole network's calls
                from .variances import PredictionHead

                counter = d.network = _Counted(d.network)
                d.model = PredictionHead(counter)
            else:
                counter = d.model = _Counted(d.model)
            if method == "ode":
                res = ode_likelihood(d, ckpt.process, x[lo:hi], divergence=args.divergence,
                                     probe=args.probe, num_probes=args.num_probes, rtol=args.rtol,
                                     atol=args.atol, t_eps=args.t_eps, data_bits=data_bits,
                                     generator=generator)
                bpd.append(res.bits_per_dim)
            else:
                with torch.no_grad():
                    res = elbo_fn(d, ckpt.process, x[lo:hi], data_bits=data_bits, variance=args.variance,
                                  timesteps=elbo_grid, generator=generator)
                bpd.append(res.total_bpd)
            nfe.append(counter.calls)
            bar.update(hi - lo)
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    values = torch.cat(bpd).to(torch.float64)
    stderr = values.std().item() / math.sqrt(num) if num > 1 else float("nan")
    return {"mean_bpd": values.mean().item(), "stderr_bpd": stderr,
            "nfe_per_batch": sum(nfe) / len(nfe), "batches": len(nfe),
            "seconds": seconds, "bits_per_dim": values.tolist()}


def _cmd_nll(args: argparse.Namespace) -> int:
    import json

    import torch

    from .likelihood.ode import is_quantized
    from .train.checkpoint import load_checkpoint

    if args.out is not None:
        if os.path.isdir(args.out):
            raise ScorekitError(f"--out {args.out!r} is a folder; give a file name ending in .json")
        if not os.path.isdir(os.path.dirname(os.path.abspath(args.out))):
            raise ScorekitError(f"the folder of --out {args.out!r} does not exist; create it first")
    elbo_fn = None
    if args.method in ("elbo", "both"):
        try:
            from .likelihood import elbo as elbo_fn
        except ImportError:
            raise ScorekitError("--method elbo: this installation has no scorekit.likelihood.elbo; "
                                "use --method ode") from None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(DEFAULT_TRAIN_THREADS)
    try:
        ckpt = load_checkpoint(args.checkpoint)
        dataset = _nll_data(args, ckpt)
        num = min(args.num, len(dataset))
        x = dataset.x[:num]
        labels = None
        if ckpt.num_classes is not None and dataset.y is not None:
            labels = dataset.y[:num]
        if args.data_bits == "auto":
            data_bits = 8 if is_quantized(x, 8) else None
        else:
            data_bits = args.data_bits or None
        if data_bits is not None and not is_quantized(x, data_bits):
            raise ScorekitError(f"--data-bits {data_bits}: {dataset.spec} is not on the {2 ** data_bits} "
                                f"levels of {data_bits}-bit values in [-1, 1]; use --data-bits auto or 0")
        methods = ["ode", "elbo"] if args.method == "both" else [args.method]
        elbo_grid = None
        if "elbo" in methods:                          # the process's chain, or --elbo-steps of it
            from .timesteps import chain_timesteps

            elbo_grid = chain_timesteps(ckpt.process, args.elbo_steps)
        results, failures = {}, {}
        for method in methods:
            try:
                results[method] = _nll_method(method, args, ckpt, x, labels, data_bits, elbo_grid, elbo_fn)
            except ScorekitError as err:
                if args.method != "both":
                    raise
                failures[method] = " ".join(err.for_cli().split())
    finally:
        torch.set_num_threads(threads_before)
    if not results:
        raise ScorekitError("; ".join(f"--method {m}: {why}" for m, why in failures.items()))

    kind = f"{data_bits}-bit" if data_bits is not None else "continuous"
    given = ", given their labels" if labels is not None else ""
    print(f"{num} samples of {dataset.spec} ({kind} data, {int(x[0].numel())} dims{given}) under step "
          f"{ckpt.step} of {ckpt.path} ({'raw' if args.no_ema else 'EMA'} weights)")
    elbo_steps = len(elbo_grid) - 1 if elbo_grid is not None else None
    for method in methods:
        if method in failures:
            print(f"  {method}: not computed: {failures[method]}")
            continue
        r = results[method]
        detail = (f"{args.divergence}" + (f", {args.num_probes} {args.probe} probe(s)"
                                           if args.divergence == "hutchinson" else "")
                  + f", rtol {args.rtol:g}, atol {args.atol:g}") if method == "ode" else \
            f"bound, {elbo_steps} steps, variance {args.variance}"
        stderr = "nan" if math.isnan(r["stderr_bpd"]) else f"{r['stderr_bpd']:.4f}"
        print(f"  {method}: {r['mean_bpd']:.4f} +- {stderr} bits/dim ({detail}); NFE {r['nfe_per_batch']:.0f} "
              f"per batch of up to {args.batch_size}; {r['seconds']:.2f} s ({r['seconds'] / num:.3g} s per sample)")
    if args.out is not None:
        from .plotting import atomic_path

        report = {"checkpoint": ckpt.path, "step": ckpt.step, "data": dataset.config(), "num": num,
                  "data_bits": data_bits, "conditional": labels is not None, "ema": not args.no_ema,
                  "seed": args.seed,
                  "ode_options": {"divergence": args.divergence, "probe": args.probe,
                                  "num_probes": args.num_probes, "rtol": args.rtol, "atol": args.atol,
                                  "t_eps": args.t_eps},
                  "elbo_options": {"variance": args.variance, "steps": elbo_steps},
                  "not_computed": failures,
                  "results": {m: {k: (None if isinstance(v, float) and math.isnan(v) else v)
                                  for k, v in r.items()} for m, r in results.items()}}
        try:
            with atomic_path(args.out) as tmp:
                with open(tmp, "w") as fh:
                    json.dump(report, fh, indent=1)
        except OSError as err:
            raise ScorekitError(f"cannot write {args.out!r}: {err.strerror or err}") from None
        print("wrote:")
        print(f"  {args.out}")
    return 0


# --- entry point -------------------------------------------------------------------------------

def _fail(message: str) -> int:
    message = " ".join(str(message).split())            # one line, whatever the message held
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that files being written are removed on the way out."""

    signum = signal.SIGTERM


def _raise_terminated(signum, frame):
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scorekit`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except _UsageError as err:
        return _fail(str(err))
    except SystemExit as exit_:                        # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from .train.interrupt import signal_handlers

    try:
        with signal_handlers(_raise_terminated, (signal.SIGTERM,)):   # train: its own stop handling
            return handler(args)
    except ScorekitError as err:
        return _fail(err.for_cli())
    except KeyboardInterrupt as err:                   # Ctrl-C, or SIGTERM (see below)
        signum = getattr(err, "signum", None)
        if signum is None:
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
            return 130
        from .train.interrupt import signal_name

        print(f"{PROG}: interrupted ({signal_name(signum)})", file=sys.stderr, flush=True)
        return 128 + signum
    except BrokenPipeError:                            # e.g. `scorekit info RUN | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())          # no second error when Python flushes stdout
        return 1


if __name__ == "__main__":
    sys.exit(main())
