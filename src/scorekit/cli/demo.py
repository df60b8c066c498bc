"""``scorekit demo``: sample an exact Gaussian mixture with DDPM and DDIM (:func:`scorekit.demo.run_demo`)."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..errors import ScorekitError
from ._common import PROG, Formatter, int_in, step_list


def add(commands) -> None:
    from ..demo import DATASETS, DEFAULT_SAMPLES, DEFAULT_STEPS, MAX_SAMPLES, MIN_SAMPLES

    p = commands.add_parser(
        "demo", formatter_class=Formatter,
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
    p.add_argument("--out", metavar="DIR", default="demo-output",
                   help="folder to write into (created if needed)")
    p.add_argument("--dataset", choices=list(DATASETS), default="eight_gaussians",
                   help="the mixture: eight equal modes on a circle, or five modes of unequal "
                        "weight at scales 50x apart")
    p.add_argument("--steps", type=step_list, metavar="N,N,...",
                   default=",".join(map(str, DEFAULT_STEPS)),
                   help="comma-separated step counts, each run with both samplers (1..1000)")
    p.add_argument("--samples", type=int_in(MIN_SAMPLES, MAX_SAMPLES, "--samples"), metavar="N",
                   default=DEFAULT_SAMPLES,
                   help="samples per sampler and step count (also the reference set's size)")
    p.add_argument("--seed", type=int_in(0, 2 ** 63 - 1, "--seed"), metavar="S", default=0,
                   help="seed of every random draw (the output is reproducible)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    from ..demo import run_demo

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
