"""``scorekit tune``: optimise a sampler's time steps for a model (:func:`scorekit.tune_timesteps`)."""
from __future__ import annotations

import argparse
import math
import sys
import textwrap

from ._common import PROG, Formatter, add_run_flags, int_in, sampler_name
from ._sampler_flags import add_sampler_option_flags, sampler_options_from


def add(commands) -> None:
    from ..samplers import SAMPLERS
    from ..schedule_tuning import DEFAULT_MAX_EVALS, INITS

    p = commands.add_parser(
        "tune", formatter_class=Formatter,
        help="optimise a deterministic sampler's time steps for a trained model at a given NFE",
        description=textwrap.dedent("""\
            Choose the time steps on which a deterministic sampler (e.g. ddim, or a higher-order
            ODE solver) with --nfe network evaluations comes closest to the exact probability-flow
            ODE of the model (EMA weights). Draws --num noise samples x_T from the prior (--seed),
            solves the ODE from them once to high accuracy, then minimises the sampler's mean squared
            error to that solution over the grids uniform in log-SNR after a smooth reshaping
            (Nelder-Mead, at most --max-evals sampler runs). Prints the error on the sampler's
            default grid and on the tuned one, and saves the tuned grid in schedules.json of the
            checkpoint folder, where 'scorekit sample --spacing tuned' finds it.

            Single-step higher-order solvers make more than one evaluation per step: the grid then
            has fewer steps than --nfe (an --nfe no grid reaches is refused, naming the nearest)."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} tune runs/8g --sampler ddim --nfe 10
              {PROG} sample runs/8g --sampler ddim --steps 10 --spacing tuned --out tuned.png
              {PROG} tune runs/8g --sampler ode_heun --nfe 9 --num 256 --max-evals 500
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    p.add_argument("--sampler", choices=list(SAMPLERS), type=sampler_name, default="ddim",
                   help="the sampler (a deterministic one)")
    p.add_argument("--nfe", metavar="N", type=int_in(1, 100000, "--nfe"), required=True,
                   help="network evaluations per sample")
    add_sampler_option_flags(p)
    p.add_argument("--num", metavar="N", type=int_in(1, 100000, "--num"), default=128,
                   help="noise samples to tune on")
    p.add_argument("--seed", metavar="S", type=int_in(0, 2 ** 63 - 1, "--seed"), default=0,
                   help="seed of the noise")
    p.add_argument("--max-evals", metavar="M", type=int_in(0, 1000000, "--max-evals"),
                   default=DEFAULT_MAX_EVALS, help="most sampler runs the optimiser may make")
    p.add_argument("--init", choices=list(INITS), default="best",
                   help="start from the sampler's default grid, the log-SNR-uniform one, or the "
                        "better of the two")
    add_run_flags(p)
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from ..schedule_tuning import save_tuned, tune_timesteps
    from ..train.checkpoint import checkpoint_denoiser, load_checkpoint
    from ..train.distributed import resolve_device

    options = sampler_options_from(args)
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
          f"--spacing tuned")
    print("wrote:")
    print(f"  {file}")
    return 0
