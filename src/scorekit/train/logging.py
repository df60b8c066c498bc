"""The training metrics log (``metrics.jsonl``) and its loss-curve plot.

One JSON object per logged step, one per line, e.g.::

    {"step": 100, "loss": 0.0713, "lr": 0.0002, "grad_norm": 0.41, "ema_decay": 0.999,
     "images_per_second": 212.5, "seconds": 31.2}

``loss`` and ``grad_norm`` are means over the steps since the previous line; ``grad_norm`` is
the gradient norm before clipping; ``seconds`` is the training time since the run began (over
resumptions). Lines are appended and flushed as they are written, so a killed run loses at most
a partly written last line; a resumed run first cuts the log back to its checkpoint's step
(:meth:`MetricsLog.truncate_after`), so the log reads as if the run had never stopped.
"""
from __future__ import annotations

import contextlib
import json
import math
import os

from ..errors import FileWriteError, ScorekitError, write_error

METRICS_FILE = "metrics.jsonl"
LOSS_PLOT_FILE = "loss.png"


def read_metrics(path: str) -> list[dict]:
    """The complete lines of a metrics log (a partly written last line is skipped)."""
    rows = []
    if not os.path.isfile(path):
        return rows
    with open(path, encoding="utf-8") as fh:
        for line in fh:
            if not line.endswith("\n"):
                break                                  # cut off by a kill
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                break
            if isinstance(row, dict) and "step" in row:
                rows.append(row)
    return rows


class MetricsLog:
    """Append-only JSONL log of training metrics (rank 0 only)."""

    def __init__(self, path: str):
        self.path = os.fspath(path)

    def truncate_after(self, step: int) -> int:
        """Keep only complete lines with ``step <= step`` (atomically); returns how many remain."""
        from ..plotting import write_text

        rows = [r for r in read_metrics(self.path) if int(r["step"]) <= int(step)]
        if os.path.exists(self.path):
            write_text(self.path, "".join(_dumps(r) + "\n" for r in rows))
        return len(rows)

    def reset(self) -> None:
        """Start an empty log."""
        from ..plotting import write_text

        write_text(self.path, "")

    def append(self, row: dict) -> None:
        """Append one line and flush it to disk; a failed write (e.g. a full disk) is cut back off
        the log and raises :class:`scorekit.errors.FileWriteError`."""
        size = os.path.getsize(self.path) if os.path.exists(self.path) else 0
        try:
            with open(self.path, "a", encoding="utf-8") as fh:
                fh.write(_dumps(row) + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as err:
            with contextlib.suppress(OSError):
                os.truncate(self.path, size)            # no half-written line is left behind
            raise write_error(err, self.path) from None

    def rows(self) -> list[dict]:
        return read_metrics(self.path)


def _dumps(row: dict) -> str:
    clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
    return json.dumps(clean, allow_nan=False)


def plot_loss_curve(metrics_path: str, out_path: str, *, title: str | None = None) -> str | None:
    """Draw the loss curve of a metrics log to ``out_path`` (PNG); ``None`` if nothing is logged."""
    from ..plotting import loss_curve

    rows = [r for r in read_metrics(metrics_path) if r.get("loss") is not None]
    if not rows:
        return None
    steps = [int(r["step"]) for r in rows]
    losses = [float(r["loss"]) for r in rows]
    lrs = [float(r["lr"]) for r in rows] if all(r.get("lr") is not None for r in rows) else None
    try:
        return loss_curve(steps, losses, out_path, lr=lrs, title=title)
    except FileWriteError:
        raise
    except ScorekitError:
        return None


__all__ = ["LOSS_PLOT_FILE", "METRICS_FILE", "MetricsLog", "plot_loss_curve", "read_metrics"]
