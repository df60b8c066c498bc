"""The ``scorekit`` command line: a thin layer over documented library functions.

Each command parses its arguments, calls one function and prints what it did. Mistakes a user
can make (bad arguments, a bad path, a :class:`scorekit.errors.ScorekitError` from the library)
are reported in one line, ``scorekit: error: <message>``, with exit status 2.
"""
from __future__ import annotations

import argparse
import os
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


# --- entry point -------------------------------------------------------------------------------

def _fail(message: str) -> int:
    message = " ".join(str(message).split())            # one line, whatever the message held
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


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
    try:
        return handler(args)
    except ScorekitError as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130


if __name__ == "__main__":
    sys.exit(main())
