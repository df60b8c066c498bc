"""Stopping a training run on SIGINT (Ctrl-C) or SIGTERM (a scheduler, a shutdown) with a checkpoint.

While :func:`scorekit.train.train` runs in the main thread, :func:`stop_signals` replaces the
handlers of :data:`STOP_SIGNALS` by one that only records the signal. The training loop looks at
the record after each optimiser step (all processes of a data-parallel job agree, see
:meth:`scorekit.train.distributed.DistributedContext.max`), after start-up and while drawing a
sample grid; it then saves a checkpoint of the step reached and, once the previous handlers are
back, raises :class:`TrainingInterrupted`. A signal that arrives while the checkpoint is written
is recorded too and cannot cut the save short, so a second Ctrl-C never corrupts anything (the
save is atomic in any case, see :mod:`scorekit.train.checkpoint`).
"""
from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

#: the signals that stop a run cleanly: Ctrl-C, and what schedulers send before killing a job
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def signal_name(signum: int) -> str:
    """``"SIGINT"`` for ``signal.SIGINT``, etc."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


class TrainingInterrupted(KeyboardInterrupt):
    """:func:`scorekit.train.train` stopped on a signal after saving a checkpoint.

    A :class:`KeyboardInterrupt`, so code that handles Ctrl-C handles it too.

    Attributes:
        signum: the signal (``signal.SIGINT`` or ``signal.SIGTERM``).
        step: the optimiser steps taken, which the checkpoint holds.
        checkpoint: the checkpoint folder of ``step`` (``None`` if the signal came before the
            first step of a new run).
        out_dir: the run folder; ``train(None, out_dir, resume=True)`` continues the run exactly.
    """

    def __init__(self, signum: int, step: int, checkpoint: str | None, out_dir: str):
        self.signum = int(signum)
        self.step = int(step)
        self.checkpoint = checkpoint
        self.out_dir = out_dir
        saved = f"saved {checkpoint}" if checkpoint else "no checkpoint yet"
        super().__init__(f"training interrupted ({self.signal_name}) at step {self.step}; {saved}; "
                         f"continue with train(None, {out_dir!r}, resume=True)")

    @property
    def signal_name(self) -> str:
        return signal_name(self.signum)

    @property
    def exit_status(self) -> int:
        """``128 + signum``, the shell's status of a process ended by the signal (130, 143)."""
        return 128 + self.signum

    def __str__(self) -> str:
        return str(self.args[0])


class StopRequest:
    """What :func:`stop_signals` recorded: the first stop signal received, if any."""

    def __init__(self):
        self.signum: int | None = None
        self.count = 0

    def record(self, signum, frame=None) -> None:
        """The signal handler: remember the signal, do nothing else."""
        self.count += 1
        if self.signum is None:
            self.signum = int(signum)

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextlib.contextmanager
def signal_handlers(handler, signums) -> Iterator[None]:
    """Install ``handler`` for each of ``signums`` while the block runs, then put the previous
    handlers back. Outside the main thread (where Python cannot handle signals) nothing is
    installed."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {}
    try:
        for signum in signums:
            previous[signum] = signal.signal(signum, handler)
        yield
    finally:
        for signum, before in previous.items():
            # a handler installed outside Python reads as None and cannot be put back: use the default
            signal.signal(signum, signal.SIG_DFL if before is None else before)


@contextlib.contextmanager
def stop_signals() -> Iterator[StopRequest]:
    """Record SIGINT and SIGTERM in a :class:`StopRequest` instead of acting on them, and restore
    the previous handlers on leaving. Outside the main thread (where Python cannot handle
    signals) nothing is installed and the request never fires."""
    request = StopRequest()
    with signal_handlers(request.record, STOP_SIGNALS):
        yield request


__all__ = ["STOP_SIGNALS", "StopRequest", "TrainingInterrupted", "signal_handlers", "signal_name",
           "stop_signals"]
