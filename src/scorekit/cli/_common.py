"""What the commands of ``scorekit`` share: the parser and help formatter, the argument types,
the one-line error report, SIGTERM as an interrupt, and the flags of the commands that load a run."""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import signal
import sys
from typing import Iterator

from ..errors import ScorekitError

PROG = "scorekit"


class UsageError(Exception):
    """A bad command line (raised instead of argparse's print-usage-and-exit)."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str):  # noqa: D401 - argparse hook
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Formatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-written layout of descriptions and epilogs; show the defaults of options
    that take a value."""

    def _get_help_string(self, action):
        text = action.help or ""
        # `is`, not `in`: a default of 0 equals False but is a value to show (--seed 0); an empty
        # list (a repeatable option given no times) is not
        shown = not any(action.default is v for v in (None, False, True, argparse.SUPPRESS)) \
            and action.default != []
        if shown and action.option_strings and "%(default)" not in text:
            text += " (default: %(default)s)"
        return text


# --- argument types --------------------------------------------------------------------------

def step_list(text: str) -> tuple[int, ...]:
    from ..demo import NUM_TRAIN_STEPS

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


def sampler_name(text: str) -> str:
    """A ``--sampler`` value; a name that is not a sampler but a known function gets a pointer
    (argparse's choices list the samplers)."""
    from ..sampling import NOT_SAMPLERS

    if text in NOT_SAMPLERS:
        raise argparse.ArgumentTypeError(NOT_SAMPLERS[text])
    return text


def int_in(lo: int, hi: int, what: str):
    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{what} must be from {lo} to {hi}, got {v}")
        return v
    return parse


def key_value(text: str) -> tuple[str, object]:
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


def positive_float(what: str, *, allow_zero: bool = False):
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


def unit_interval(what: str, *, closed_top: bool = False):
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


#: the largest count a flag takes where the library sets no smaller limit
BIG = 2 ** 31 - 1

#: torch threads ``scorekit train`` and ``sample`` use unless --threads says otherwise (measured:
#: on a busy 2-core machine one thread runs the small U-Nets many times faster than two)
DEFAULT_TRAIN_THREADS = 1


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """--device, --threads and --no-progress, as `sample` and `tune` take them."""
    p.add_argument("--device", metavar="DEV", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--threads", metavar="N", type=int_in(1, 1024, "--threads"),
                   default=DEFAULT_TRAIN_THREADS,
                   help="torch CPU threads (on a busy machine more threads can be much slower)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")


# --- errors and signals ----------------------------------------------------------------------

def check_json_out(out: str | None) -> None:
    """Refuse an ``--out FILE.json`` that cannot be written (a folder, or in a missing folder)
    before any work starts."""
    if out is None:
        return
    if os.path.isdir(out):
        raise ScorekitError(f"--out {out!r} is a folder; give a file name ending in .json")
    if not os.path.isdir(os.path.dirname(os.path.abspath(out))):
        raise ScorekitError(f"the folder of --out {out!r} does not exist; create it first")


def file_above(path: str) -> str | None:
    """The file that ``path`` would lie inside (``a.txt`` for ``a.txt/sub/x``): the nearest of
    its parents that exists, if that is not a folder; ``None`` otherwise."""
    above = os.path.normpath(path)
    while True:
        up = os.path.dirname(above)
        if up == above or not up:
            return None
        above = up
        if os.path.lexists(above):
            return above if os.path.exists(above) and not os.path.isdir(above) else None


def check_out_folder(out: str, flag: str = "--out") -> None:
    """Refuse an ``--out DIR`` that cannot become a folder of outputs before any work starts: a
    file, a path inside a file, or one whose parent folder does not exist."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise ScorekitError(f"{flag} {out!r} is a file; give a folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        above = file_above(out)
        if above is not None:
            raise ScorekitError(f"{flag} {out!r} lies inside {above!r}, which is a file, not a folder; give a folder")
        raise ScorekitError(f"the folder that would hold {flag} {out!r} does not exist; create it first")
    where = out if os.path.isdir(out) else parent
    if not os.access(where, os.W_OK | os.X_OK):
        raise ScorekitError(f"no permission to write into {where!r} (for {flag} {out!r})")


@contextlib.contextmanager
def staged_outputs(out: str, flag: str = "--out") -> Iterator[str]:
    """Write a command's output files all or nothing: yield a new hidden folder inside ``out``
    (``out`` is created if need be) to write them into; when the block ends, move each into
    ``out`` (replacing a file of the same name, as a rerun does) and remove the hidden folder.

    If the block or a move fails or is interrupted, ``out`` is left as it was: the new files are
    removed, the files they replaced put back, and ``out`` removed again if this call created it.
    Other files in ``out`` are never touched. A failed write (a full disk, a file-size limit, no
    permission) becomes one :class:`ScorekitError` naming the file and the cause. Check ``out``
    with :func:`check_out_folder` first."""
    import shutil
    import tempfile

    from ..errors import FileWriteError, write_failure

    created = not os.path.isdir(out)
    try:
        os.makedirs(out, exist_ok=True)
        stage = os.path.join(out, os.path.basename(tempfile.mkdtemp(prefix=f".{PROG}-", suffix=".tmp", dir=out)))
    except OSError as err:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)
        raise ScorekitError(f"cannot write into {flag} {out!r}: {write_failure(err)}") from None
    backup = os.path.join(stage, ".replaced")
    moved, replaced = [], []
    try:
        yield stage
        names = sorted(n for n in os.listdir(stage) if n != ".replaced")
        for name in names:
            dest = os.path.join(out, name)
            if os.path.isdir(dest):
                raise ScorekitError(f"{flag} {out!r} holds a folder {name!r} where an output file goes; "
                                    f"move it away or give another {flag}")
        for name in names:
            dest = os.path.join(out, name)
            if os.path.lexists(dest):
                os.makedirs(backup, exist_ok=True)
                os.replace(dest, os.path.join(backup, name))
                replaced.append(name)
            os.replace(os.path.join(stage, name), dest)
            moved.append(name)
    except BaseException as err:
        for name in moved:
            with contextlib.suppress(OSError):
                os.remove(os.path.join(out, name))
        for name in replaced:
            with contextlib.suppress(OSError):
                os.replace(os.path.join(backup, name), os.path.join(out, name))
        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(out)
        kept = "nothing was written" if created else f"{flag} is as it was"
        if isinstance(err, FileWriteError):
            # a failed write inside the block names the hidden folder: name the output instead
            raise FileWriteError(f"{str(err).replace(os.path.join(stage, ''), os.path.join(out, ''))}; "
                                 f"{kept}") from None
        if isinstance(err, ScorekitError):
            raise
        cause = write_failure(err)
        if cause is None:
            raise
        raise ScorekitError(f"cannot write into {flag} {out!r}: {cause}; {kept}") from None
    shutil.rmtree(stage, ignore_errors=True)


def fail(message: str) -> int:
    """Print ``scorekit: error: MESSAGE`` as one line on standard error; the exit status 2."""
    message = " ".join(str(message).split())            # one line, whatever the message held
    print(f"{PROG}: error: {message}", file=sys.stderr, flush=True)
    return 2


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C so that files being written are removed on the way out."""

    signum = signal.SIGTERM


def raise_terminated(signum, frame):
    """The SIGTERM handler of every command but ``train`` (which stops on its own terms)."""
    raise Terminated()
