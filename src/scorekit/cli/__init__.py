"""The ``scorekit`` command line: a thin layer over documented library functions.

Each command parses its arguments, calls one function and prints what it did. Mistakes a user
can make (bad arguments, a bad path, a :class:`scorekit.errors.ScorekitError` from the library)
are reported in one line, ``scorekit: error: <message>``, with exit status 2.

One module per command (:mod:`~scorekit.cli.demo`, ``train``, ``sample``, ``restore``, ``edit``,
``info``, ``nll``, ``tune``, ``eval``), each with ``add(commands)``, which adds its sub-parser, and ``run(args)``, which
carries it out and returns the exit status; what they share is in ``_common`` and
``_sampler_flags``.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import textwrap
from typing import Sequence

from ..errors import ScorekitError
from . import demo, edit, info, nll, restore, sample, train, tune
from . import eval as evaluate        # the module of 'scorekit eval', named so as not to hide eval()
from ._common import PROG, Formatter, Parser, UsageError, fail, raise_terminated

#: the commands in the order ``scorekit --help`` lists them
COMMANDS = (demo, train, sample, restore, edit, evaluate, info, nll, tune)


# --- the parser --------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``scorekit`` command (one sub-parser per command)."""
    from .. import __version__

    parser = Parser(
        prog=PROG, formatter_class=Formatter,
        description="scorekit: denoising diffusion and score-based generative models, tested "
                    "against exact mathematics.",
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} demo                         sample an exact model, write figures and a table
              {PROG} demo --dataset multiscale_2d --steps 20,200
              {PROG} train --data digits --out runs/digits     train a U-Net on 8x8 digits
              {PROG} sample runs/digits --sampler ddim --steps 50 --out digits.png
              {PROG} restore runs/digits-sr2 --input low-res/ --out restored/   (a run trained with --task sr2)
              {PROG} edit runs/digits sdedit --input sketch.png --strength 0.5 --out edits
              {PROG} info runs/digits             what a run or checkpoint holds
              {PROG} eval runs/digits --num 1000  FID, KID, IS, precision/recall against the run's data
              {PROG} nll runs/digits --method both  bits/dim: ELBO and probability-flow ODE likelihood
              {PROG} tune runs/digits --sampler unipc --nfe 10   optimise the time steps for 10 NFE
              {PROG} COMMAND --help               the options of one command
            """))
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")

    for command in COMMANDS:
        command.add(commands)
    return parser


# --- entry point -------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``scorekit`` command with ``argv`` (default: ``sys.argv[1:]``); returns the exit status."""
    try:
        parser = build_parser()                        # imports the commands' modules: a moment
        args = parser.parse_args(None if argv is None else list(argv))
    except UsageError as err:
        return fail(str(err))
    except SystemExit as exit_:                        # --help and --version
        return exit_.code if isinstance(exit_.code, int) else 0
    except KeyboardInterrupt:                          # Ctrl-C while starting up
        print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
        return 130
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    from ..train.interrupt import signal_handlers

    try:
        with signal_handlers(raise_terminated, (signal.SIGTERM,)):   # train: its own stop handling
            return handler(args)
    except ScorekitError as err:
        return fail(err.for_cli())
    except MemoryError as err:                         # e.g. numpy's "Unable to allocate 91 TiB ..."
        detail = f": {err}" if str(err) else ""
        return fail(f"not enough memory{detail}; use smaller sizes or batches")
    except KeyboardInterrupt as err:                   # Ctrl-C, or SIGTERM (see below)
        signum = getattr(err, "signum", None)
        if signum is None:
            print(f"{PROG}: interrupted", file=sys.stderr, flush=True)
            return 130
        from ..train.interrupt import signal_name

        print(f"{PROG}: interrupted ({signal_name(signum)})", file=sys.stderr, flush=True)
        return 128 + signum
    except BrokenPipeError:                            # e.g. `scorekit info RUN | head -1`
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())          # no second error when Python flushes stdout
        return 1
