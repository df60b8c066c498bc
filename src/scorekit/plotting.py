"""Small figure helpers: scatter panels and sampler trajectories of 2-D samples, image grids and
loss curves.

Figures are built with matplotlib's object-oriented API (``matplotlib.figure.Figure`` drawn by
the Agg canvas), so nothing here touches pyplot or any global matplotlib state and no display
is needed. Files are written atomically: the figure goes to a temporary file in the target
folder, which is then renamed over the target, so an interrupted run never leaves a
half-written image.
"""
from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch

from .errors import ScorekitError, write_error

#: colours of the reference data and of the samples
DATA_COLOR = "#4d4d4d"
SAMPLE_COLOR = "#1f6fb4"


_tmp_counter = itertools.count()


@contextlib.contextmanager
def atomic_path(path) -> Iterator[str]:
    """Yield a temporary file name beside ``path``; on success rename it to ``path``.

    Write the file under the yielded name (it exists, empty, with the permissions a new file
    gets). If the block raises or is interrupted, the temporary file is removed and ``path`` is
    left as it was; a failed write (a full disk, a file-size limit, no permission) raises
    :class:`scorekit.errors.FileWriteError` naming ``path`` and the cause.
    """
    path = os.fspath(path)
    folder, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        while True:
            tmp = os.path.join(folder, f".{name}.{os.getpid()}.{next(_tmp_counter)}.tmp")
            try:
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                continue
            os.close(fd)
            break
        yield tmp
        os.replace(tmp, path)
    except BaseException as err:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        failure = write_error(err, path)
        if failure is None:
            raise
        raise failure from None


def fsync_path(path: str) -> None:
    """Flush a file or folder to disk (a no-op where folders cannot be opened, e.g. Windows)."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) if os.path.isdir(path) else os.O_RDONLY
    try:
        fd = os.open(path, flags)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_json(path: str, data) -> None:
    """Write ``data`` as indented JSON and flush it to disk (not atomic by itself: write it into a
    temporary file or folder that is then renamed, as checkpoints and classifier folders do)."""
    with open(path, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=2, sort_keys=False, allow_nan=False)
        fh.write("\n")
        fh.flush()
        os.fsync(fh.fileno())


def write_text(path, text: str) -> str:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
    return os.fspath(path)


def save_figure(fig, path, *, dpi: int = 120) -> str:
    """Save a matplotlib figure to ``path`` atomically (format from the file extension)."""
    ext = os.path.splitext(os.fspath(path))[1].lstrip(".").lower() or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=ext, dpi=dpi, facecolor="white")
    return os.fspath(path)


def _new_figure(figsize):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _points(x, name: str) -> np.ndarray:
    """Samples as an (N, 2) float64 numpy array."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != 2:
        raise ScorekitError(f"{name} must be 2-D points of shape (N, 2), got {x.shape}")
    return x


def square_limits(*point_sets, margin: float = 0.08) -> tuple[tuple[float, float], tuple[float, float]]:
    """Axis limits of one square box (equal scale in x and y) around all finite points, padded
    by ``margin`` of its side."""
    pts = np.concatenate([_points(p, "points") for p in point_sets])
    pts = pts[np.isfinite(pts).all(axis=1)]
    if pts.size == 0:
        return (-1.0, 1.0), (-1.0, 1.0)
    lo, hi = pts.min(axis=0), pts.max(axis=0)
    center, half = (lo + hi) / 2, max(float((hi - lo).max()) / 2, 1e-6) * (1 + margin)
    return (center[0] - half, center[0] + half), (center[1] - half, center[1] + half)


@dataclass
class Panel:
    """One scatter panel: a title and (N, 2) points."""

    title: str
    points: object
    color: str = SAMPLE_COLOR


def _scatter(ax, pts: np.ndarray, color: str, size: float, alpha: float, limits) -> None:
    ax.scatter(pts[:, 0], pts[:, 1], s=size, c=color, alpha=alpha, linewidths=0)
    (x0, x1), (y0, y1) = limits
    outside = int((~((pts[:, 0] >= x0) & (pts[:, 0] <= x1) & (pts[:, 1] >= y0) & (pts[:, 1] <= y1))).sum())
    if outside:
        ax.text(0.98, 0.02, f"{outside} outside", transform=ax.transAxes, ha="right", va="bottom",
                fontsize=8, color="#a02020")


def _style(ax, limits, title: str, fontsize: float) -> None:
    ax.set_xlim(*limits[0])
    ax.set_ylim(*limits[1])
    ax.set_aspect("equal")
    ax.set_title(title, fontsize=fontsize)
    ax.tick_params(labelsize=8)
    ax.grid(True, color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)


def _auto_size(n: int) -> tuple[float, float]:
    """Marker size and alpha that keep dense clouds readable and sparse ones visible."""
    if n <= 500:
        return 6.0, 0.7
    if n <= 2000:
        return 3.0, 0.5
    if n <= 10000:
        return 1.5, 0.35
    return 0.8, 0.25


def scatter_grid(panels: Sequence[Sequence[Panel]], path, *, reference: Panel | None = None,
                 limits=None, title: str | None = None, panel_size: float = 2.6,
                 point_size: float | None = None, alpha: float | None = None,
                 dpi: int = 120) -> str:
    """A grid of 2-D scatter panels with shared, equal axes, saved to ``path``.

    Args:
        panels: rows of :class:`Panel` (e.g. one row per sampler, one column per step count), or
            one flat list of panels for a single row.
        path: the image file to write (atomically); the format follows the extension.
        reference: an optional panel (e.g. the true data) drawn to the left of the grid.
        limits: ``((xmin, xmax), (ymin, ymax))``; by default a square box around the
            reference's points (or all points). Points outside are counted in the panel.
        title: a title over the whole figure.
        point_size, alpha: marker size and opacity; chosen from the number of points by default.

    Returns the path written.
    """
    panels = list(panels)
    if panels and all(isinstance(p, Panel) for p in panels):
        panels = [panels]                                    # a flat list is one row
    rows = [list(r) for r in panels]
    if not rows or not all(rows) or not all(isinstance(p, Panel) for r in rows for p in r):
        raise ScorekitError("scatter_grid needs rows of Panel objects, at least one panel in every row")
    ncols = max(len(r) for r in rows)
    pts = [[_points(p.points, f"points of panel {p.title!r}") for p in r] for r in rows]
    ref_pts = None if reference is None else _points(reference.points, "reference points")
    if limits is None:
        limits = square_limits(ref_pts) if ref_pts is not None else \
            square_limits(*[p for r in pts for p in r])
    n = max(len(p) for r in pts for p in r)
    auto_s, auto_a = _auto_size(n)
    s = auto_s if point_size is None else point_size
    a = auto_a if alpha is None else alpha
    extra = 1 if reference is not None else 0
    fig = _new_figure((panel_size * (ncols + extra) + 0.4, panel_size * len(rows) + (0.5 if title else 0.2)))
    grid = fig.add_gridspec(len(rows), ncols + extra)
    axes = []
    if reference is not None:
        # the reference panel sits at the left, centred vertically, the same size as the others
        sub = grid[:, 0].subgridspec(3, 1, height_ratios=[len(rows) - 1, 2, len(rows) - 1]) \
            if len(rows) > 1 else grid[0, 0].subgridspec(1, 1)
        ax = fig.add_subplot(sub[1 if len(rows) > 1 else 0])
        _scatter(ax, ref_pts, reference.color, s, a, limits)
        _style(ax, limits, reference.title, 10)
        axes.append(ax)
    for i, (row, row_pts) in enumerate(zip(rows, pts)):
        for j, (panel, p) in enumerate(zip(row, row_pts)):
            ax = fig.add_subplot(grid[i, j + extra], sharex=axes[0] if axes else None,
                                 sharey=axes[0] if axes else None)
            _scatter(ax, p, panel.color, s, a, limits)
            _style(ax, limits, panel.title, 10)
            axes.append(ax)
    if title:
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, path, dpi=dpi)


def trajectory_plot(panels: Sequence[tuple[str, object]], path, *, times=None, data=None,
                    limits=None, title: str | None = None, time_label: str = "t",
                    panel_size: float = 4.2, dpi: int = 120) -> str:
    """Sample paths drawn over the data, coloured by time, saved to ``path``.

    Args:
        panels: ``(title, paths)`` pairs; ``paths`` has shape ``(S, K, 2)``: ``K`` paths of ``S``
            points each, in the order visited (e.g. ``x_t`` at each sampler step, then the sample).
        path: the image file to write (atomically).
        times: ``(S,)`` the time of each point, for the colour scale (default: the step index).
        data: optional ``(N, 2)`` points drawn faintly behind the paths.
        limits: ``((xmin, xmax), (ymin, ymax))``; by default a box around the data and paths.
        title: a title over the whole figure.
        time_label: the label of the colour bar.

    Each path starts with an open circle and ends with a filled dot.
    """
    from matplotlib import colormaps
    from matplotlib.collections import LineCollection
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize

    names, arrays = [], []
    for name, paths in panels:
        if isinstance(paths, torch.Tensor):
            paths = paths.detach().cpu().to(torch.float64).numpy()
        p = np.asarray(paths, dtype=np.float64)
        if p.ndim != 3 or p.shape[2] != 2 or p.shape[0] < 2:
            raise ScorekitError(f"paths of panel {name!r} must have shape (steps >= 2, K, 2), got {p.shape}")
        names.append(str(name))
        arrays.append(p)
    if not arrays:
        raise ScorekitError("trajectory_plot needs at least one panel")
    S = arrays[0].shape[0]
    t = np.arange(S, dtype=np.float64) if times is None else np.asarray(times, dtype=np.float64).reshape(-1)
    if t.shape[0] != S or any(a.shape[0] != S for a in arrays):
        raise ScorekitError("every panel and times must have the same number of points per path")
    data_pts = None if data is None else _points(data, "data")
    if limits is None:
        sets = [a.reshape(-1, 2) for a in arrays] + ([data_pts] if data_pts is not None else [])
        limits = square_limits(*sets, margin=0.05)
    # plasma without its palest end, so that early (noisy) segments stay visible on white
    cmap = ListedColormap(colormaps["plasma"](np.linspace(0.0, 0.85, 256)), name="plasma_dark")
    norm = Normalize(vmin=float(t.min()), vmax=float(t.max()))
    seg_t = (t[:-1] + t[1:]) / 2
    fig = _new_figure((panel_size * len(arrays) + 0.9, panel_size + (0.5 if title else 0.2)))
    axes = fig.subplots(1, len(arrays), sharex=True, sharey=True, squeeze=False)[0]
    for ax, name, p in zip(axes, names, arrays):
        if data_pts is not None:
            ax.scatter(data_pts[:, 0], data_pts[:, 1], s=2, c="#9a9a9a", alpha=0.35, linewidths=0,
                       zorder=1)
        for k in range(p.shape[1]):
            seg = np.stack([p[:-1, k], p[1:, k]], axis=1)              # (S-1, 2, 2)
            lc = LineCollection(seg, cmap=cmap, norm=norm, linewidths=1.3, alpha=0.9, zorder=2)
            lc.set_array(seg_t)
            ax.add_collection(lc)
        ax.scatter(p[0, :, 0], p[0, :, 1], s=20, facecolors="white", edgecolors="black",
                   linewidths=0.8, zorder=3)
        ax.scatter(p[-1, :, 0], p[-1, :, 1], s=16, c=[cmap(norm(t[-1]))], edgecolors="black",
                   linewidths=0.4, zorder=4)
        _style(ax, limits, name, 10)
    cbar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), shrink=0.85, pad=0.02)
    cbar.set_label(time_label, fontsize=9)
    cbar.ax.tick_params(labelsize=8)
    if title:
        fig.suptitle(title, fontsize=12)
    return save_figure(fig, path, dpi=dpi)


def _grid_array(images, nrow: int | None, padding: int, pad_value: float) -> tuple[np.ndarray, int]:
    """Images ``(N, C, H, W)`` in ``[-1, 1]`` tiled into one ``(rows*H', cols*W', C)`` uint8 array
    (and the image width ``W``)."""
    if isinstance(images, torch.Tensor):
        images = images.detach().cpu().to(torch.float64).numpy()
    x = np.asarray(images, dtype=np.float64)
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4 or x.shape[0] == 0 or x.shape[1] not in (1, 3):
        raise ScorekitError(f"images must have shape (N, C, H, W) with N >= 1 and C = 1 or 3, "
                            f"got {x.shape}")
    n, c, h, w = x.shape
    cols = int(nrow) if nrow else int(math.ceil(math.sqrt(n)))
    cols = max(1, min(cols, n))
    rows = int(math.ceil(n / cols))
    x = np.nan_to_num(x, nan=0.0, posinf=1.0, neginf=-1.0)
    pixels = np.clip(np.round((x + 1.0) * 127.5), 0, 255).astype(np.uint8)   # [-1, 1] -> 0..255
    fill = int(np.clip(round((pad_value + 1.0) * 127.5), 0, 255))
    grid = np.full((rows * (h + padding) + padding, cols * (w + padding) + padding, c), fill,
                   dtype=np.uint8)
    for i in range(n):
        r, q = divmod(i, cols)
        top, left = padding + r * (h + padding), padding + q * (w + padding)
        grid[top:top + h, left:left + w] = pixels[i].transpose(1, 2, 0)
    return grid, w


def image_grid(images, path, *, nrow: int | None = None, padding: int = 1, pad_value: float = 1.0,
               scale: int | None = None) -> str:
    """Write images ``(N, C, H, W)`` in ``[-1, 1]`` (C = 1 or 3) as one PNG grid, atomically.

    Args:
        images: a tensor or array; values outside ``[-1, 1]`` are clipped, NaN shows as grey.
        path: the PNG file to write.
        nrow: images per row (default: a square-ish grid).
        padding: pixels between images, filled with ``pad_value`` (in ``[-1, 1]``; 1 is white).
        scale: enlarge every pixel to ``scale x scale`` (nearest neighbour); by default small
            images are enlarged so that each is at least 64 pixels wide.

    Returns the path written.
    """
    from PIL import Image

    grid, w = _grid_array(images, nrow, int(padding), float(pad_value))
    if scale is None:
        scale = max(1, int(math.ceil(64 / max(int(w), 1))))
    if int(scale) > 1:
        grid = grid.repeat(int(scale), axis=0).repeat(int(scale), axis=1)
    mode = "L" if grid.shape[2] == 1 else "RGB"
    img = Image.fromarray(grid[:, :, 0] if mode == "L" else grid, mode=mode)
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return os.fspath(path)


def smooth(values, weight: float = 0.9) -> np.ndarray:
    r"""Bias-corrected exponential moving average ``m_k = w m_{k-1} + (1 - w) v_k``, divided by
    ``1 - w^(k+1)`` (so the first values are not pulled towards zero)."""
    v = np.asarray(values, dtype=np.float64)
    out = np.empty_like(v)
    m = 0.0
    for k, value in enumerate(v):
        m = weight * m + (1 - weight) * value
        out[k] = m / (1 - weight ** (k + 1))
    return out


def loss_curve(steps, losses, path, *, lr=None, title: str | None = None,
               smoothing: float | None = None, dpi: int = 120) -> str:
    """The training loss against the step, raw (faint) and smoothed, on a log scale; with the
    learning rate on a second axis if ``lr`` is given. Written atomically to ``path``."""
    s = np.asarray(steps, dtype=np.float64)
    y = np.asarray(losses, dtype=np.float64)
    if s.ndim != 1 or s.shape != y.shape or s.size == 0:
        raise ScorekitError("loss_curve needs equally long, non-empty sequences of steps and losses")
    finite = np.isfinite(y)
    s, y = s[finite], y[finite]
    if s.size == 0:
        raise ScorekitError("loss_curve: no finite loss values to plot")
    if smoothing is None:                          # about 2 % of the run, at least a few points
        smoothing = float(np.clip(1 - 1 / max(3.0, 0.02 * s.size), 0.0, 0.995))
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.0))                # fixed margins: much faster than a layout engine
    FigureCanvasAgg(fig)
    fig.subplots_adjust(left=0.1, right=0.87 if lr is not None else 0.97, bottom=0.12, top=0.91)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(s, y, color=SAMPLE_COLOR, alpha=0.25, linewidth=0.8, label="loss")
    ax.plot(s, smooth(y, smoothing), color=SAMPLE_COLOR, linewidth=1.8, label="smoothed")
    if np.all(y > 0):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss")
    ax.grid(True, which="both", color="#e6e6e6", linewidth=0.6)
    ax.set_axisbelow(True)
    handles, labels = ax.get_legend_handles_labels()
    if lr is not None:
        r = np.asarray(lr, dtype=np.float64)[finite]
        ax2 = ax.twinx()
        (line,) = ax2.plot(s, r, color="#c46a1a", linewidth=1.0, linestyle="--", label="learning rate")
        ax2.set_ylabel("learning rate", color="#c46a1a")
        ax2.tick_params(axis="y", labelcolor="#c46a1a", labelsize=8)
        ax2.set_ylim(bottom=0)
        handles.append(line)
        labels.append("learning rate")
    ax.legend(handles, labels, loc="upper right", fontsize=8)
    ax.set_title(title or f"training loss: {smooth(y, smoothing)[-1]:.4g} (smoothed) at step "
                          f"{s[-1]:.0f}", fontsize=10)
    return save_figure(fig, path, dpi=dpi)


__all__ = ["Panel", "atomic_path", "image_grid", "loss_curve", "save_figure", "scatter_grid",
           "smooth", "square_limits", "trajectory_plot", "write_text"]
