r"""The demo: sampler error against an exact model, with nothing to train.

A Gaussian mixture (:mod:`scorekit.toy`) has a closed-form noise prediction
``E[eps | x_t] = -sigma_t grad log p_t(x_t)`` under every forward process, so it stands in for a
perfectly trained network. :func:`run_demo` samples it through :func:`scorekit.sample` with
DDPM's ancestral sampler and with deterministic DDIM (``eta = 0``) at several step counts on the
DDPM linear schedule (``T = 1000``), and measures how far each result is from the true
distribution (:mod:`scorekit.metrics.distribution`). Whatever error remains is the sampler's
own: the model is exact.

Files written into the output folder (each atomically: a temporary file, then a rename):

* ``samples.png`` -- the true data beside the samples of every sampler and step count;
* ``trajectories.png`` -- a few DDIM paths ``x_t`` from noise to data, and the denoiser's
  prediction ``E[x_0 | x_t]`` along them, over the data;
* ``errors.md`` and ``errors.csv`` -- the table of :class:`DemoRow` results.

The command line runs it as ``scorekit demo``.
"""
from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch

from . import plotting
from .errors import ScorekitError
from .metrics.distribution import (mode_weight_error, sliced_wasserstein, swd_noise_floor,
                                   within_mode_spread)
from .processes import DDPM
from .sampling import sample
from .timesteps import make_timesteps
from .toy import GaussianMixture, eight_gaussians, multiscale_2d

#: the mixtures the demo can use, by name
DATASETS: dict[str, Callable[[], GaussianMixture]] = {
    "eight_gaussians": eight_gaussians,
    "multiscale_2d": multiscale_2d,
}
#: the number of steps of the demo's DDPM schedule
NUM_TRAIN_STEPS = 1000
DEFAULT_STEPS = (10, 50, 1000)
DEFAULT_SAMPLES = 2000
MIN_SAMPLES = 20
MAX_SAMPLES = 100_000
#: (name shown, sampler, options) of each sampler the demo compares
SAMPLER_RUNS = (
    ("DDPM", "ddpm", {"variance": "small"}),
    ("DDIM", "ddim", {"eta": 0.0}),
)
OUTPUT_FILES = ("samples.png", "trajectories.png", "errors.md", "errors.csv")
NUM_PROJECTIONS = 256
FLOOR_REPEATS = 5


@dataclass
class DemoRow:
    """One line of the demo's table.

    Attributes:
        sampler: ``"exact"`` (independent exact samples, the reference level of every metric),
            ``"DDPM"`` or ``"DDIM"``.
        steps: the number of sampler steps (``None`` for exact samples).
        nfe: the number of model evaluations.
        swd: sliced 2-Wasserstein distance to ``n`` exact reference samples.
        swd_floor, swd_floor_std: mean and standard deviation of that distance between two
            independent exact sample sets of size ``n``.
        mode_weight_error: ``max_k |hat w_k - w_k|``.
        within_mode_spread: sample / true standard deviation within the modes (1 = exact).
        seconds: wall-clock time of the sampling.
    """

    sampler: str
    steps: int | None
    nfe: int
    swd: float
    swd_floor: float
    swd_floor_std: float
    mode_weight_error: float
    within_mode_spread: float
    seconds: float

    @property
    def label(self) -> str:
        return "exact samples" if self.steps is None else f"{self.sampler}, {self.steps} steps"


@dataclass
class DemoResult:
    """What :func:`run_demo` produced: the table rows, the files written, and the samples."""

    dataset: str
    num_samples: int
    seed: int
    rows: list[DemoRow]
    files: dict[str, str]
    samples: dict[tuple[str, int], torch.Tensor] = field(repr=False, default_factory=dict)

    def table(self) -> str:
        """The rows as a Markdown table."""
        return format_table(self.rows)


# --- checks --------------------------------------------------------------------------------------

def check_steps(steps) -> tuple[int, ...]:
    """Step counts as a sorted tuple of distinct integers in ``1 .. NUM_TRAIN_STEPS``."""
    if isinstance(steps, (int,)) and not isinstance(steps, bool):
        steps = (steps,)
    try:
        values = list(steps)
    except TypeError:
        raise ScorekitError(f"steps must be a sequence of step counts, got {steps!r}") from None
    if not values:
        raise ScorekitError("steps must hold at least one step count, e.g. (10, 50, 1000)")
    for s in values:
        if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= NUM_TRAIN_STEPS:
            raise ScorekitError(f"every step count must be a whole number from 1 to {NUM_TRAIN_STEPS} "
                                f"(the schedule's T), got {s!r}")
    return tuple(sorted(set(values)))


def check_out_dir(out_dir) -> str:
    """The output folder as a string; refuse an existing file."""
    try:
        out = os.fspath(out_dir)
    except TypeError:
        raise ScorekitError(f"out_dir must be a path, got {out_dir!r}") from None
    if not out:
        raise ScorekitError("out_dir must not be empty")
    if os.path.exists(out) and not os.path.isdir(out):
        raise ScorekitError(f"output folder {out!r} is an existing file; give a folder "
                            f"(new or existing) instead")
    return out


def check_num_samples(n) -> int:
    if isinstance(n, bool) or not isinstance(n, int) or not MIN_SAMPLES <= n <= MAX_SAMPLES:
        raise ScorekitError(f"the number of samples must be a whole number from {MIN_SAMPLES} "
                            f"to {MAX_SAMPLES}, got {n!r}")
    return n


def check_seed(seed) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 63:
        raise ScorekitError(f"the seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
    return seed


def get_dataset(name: str) -> GaussianMixture:
    if name not in DATASETS:
        raise ScorekitError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]()


# --- the demo ------------------------------------------------------------------------------------

def _generator(seed: int, stream: int) -> torch.Generator:
    """An independent generator for each use (data, start noise, each sampler, ...)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + stream) % 2 ** 63)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    """Use ``num_threads`` intra-op threads inside the block, then restore the previous setting."""
    if num_threads is None:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(int(num_threads))
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def run_demo(out_dir="demo-output", *, dataset: str = "eight_gaussians",
             steps: Sequence[int] = DEFAULT_STEPS, num_samples: int = DEFAULT_SAMPLES,
             seed: int = 0, progress: bool = True, num_paths: int = 16,
             log: Callable[[str], None] | None = None, num_threads: int | None = 1) -> DemoResult:
    """Sample an exact Gaussian-mixture model with DDPM and DDIM and write figures and a table.

    Args:
        out_dir: the folder to write into (created if needed): ``samples.png``,
            ``trajectories.png``, ``errors.md``, ``errors.csv``. Existing files are replaced.
        dataset: a name in :data:`DATASETS`.
        steps: the step counts to run each sampler with (``1 .. 1000``).
        num_samples: samples per sampler and step count (also the size of the reference set).
        seed: seeds every random draw (data, start noise, sampler noise, projections).
        progress: show the samplers' progress bars.
        num_paths: the number of DDIM paths drawn in ``trajectories.png``.
        log: called with a line of text after each sampler run (e.g. ``print``).
        num_threads: torch's intra-op threads while the demo runs (restored afterwards). The
            demo's tensors are tiny (``n x 2``), so one thread is fastest: more only add
            synchronisation, which is very slow on a busy machine. ``None`` keeps the setting.

    Returns:
        A :class:`DemoResult`; ``result.table()`` is the Markdown table.

    Every sampler starts from the same noise ``x_T``, so the panels differ only by the sampler.
    """
    out = check_out_dir(out_dir)
    mixture = get_dataset(dataset)
    step_counts = check_steps(steps)
    n = check_num_samples(num_samples)
    seed = check_seed(seed)
    if mixture.dim != 2:
        raise ScorekitError(f"the demo draws 2-D scatter plots; dataset {dataset!r} has "
                            f"{mixture.dim} dimensions")
    if isinstance(num_paths, bool) or not isinstance(num_paths, int) or num_paths < 1:
        raise ScorekitError(f"num_paths must be a positive integer, got {num_paths!r}")
    num_paths = min(num_paths, n)
    if num_threads is not None and (isinstance(num_threads, bool) or not isinstance(num_threads, int)
                                    or num_threads < 1):
        raise ScorekitError(f"num_threads must be a positive integer or None, got {num_threads!r}")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as err:
        raise ScorekitError(f"cannot create output folder {out!r}: {err.strerror or err}") from None
    with _torch_threads(num_threads):
        return _run(out, dataset, mixture, step_counts, n, seed, progress, num_paths, log)


def _run(out, dataset, mixture, step_counts, n, seed, progress, num_paths, log) -> DemoResult:
    process = DDPM(schedule="linear", num_steps=NUM_TRAIN_STEPS)
    eps_model = mixture.eps_model(process)
    dtype = torch.float64
    reference = mixture.sample(n, generator=_generator(seed, 1), dtype=dtype)
    x_T = process.prior_sample((n, 2), generator=_generator(seed, 2), dtype=dtype)

    def swd(x: torch.Tensor) -> float:
        # the same projections for every row, so rows differ only by their samples
        return sliced_wasserstein(x, reference, num_projections=NUM_PROJECTIONS,
                                  generator=_generator(seed, 3))

    floor, floor_std = swd_noise_floor(mixture, n, repeats=FLOOR_REPEATS, num_projections=NUM_PROJECTIONS,
                                       generator=_generator(seed, 4))

    def row(name: str, num_steps: int | None, nfe: int, x: torch.Tensor, seconds: float) -> DemoRow:
        if not torch.isfinite(x).all():
            raise ScorekitError(f"{name} with {num_steps} steps produced non-finite samples")
        return DemoRow(name, num_steps, nfe, swd(x), floor, floor_std, mode_weight_error(x, mixture),
                       within_mode_spread(x, mixture), seconds)

    t0 = time.perf_counter()
    exact = mixture.sample(n, generator=_generator(seed, 5), dtype=dtype)
    rows = [row("exact", None, 0, exact, time.perf_counter() - t0)]
    samples: dict[tuple[str, int], torch.Tensor] = {}
    paths: list[tuple[float, torch.Tensor, torch.Tensor]] = []
    trace_steps = max(step_counts)
    for r, (name, sampler, options) in enumerate(SAMPLER_RUNS):
        for num_steps in step_counts:
            calls = [0]

            def model(x_t, t, _calls=calls):
                _calls[0] += 1
                return eps_model(x_t, t)

            trace = name == "DDIM" and num_steps == trace_steps
            callback = None
            if trace:
                def callback(i, t, x_t, x0_pred):
                    paths.append((float(t), x_t[:num_paths].clone(), x0_pred[:num_paths].clone()))

            t0 = time.perf_counter()
            x = sample(model, x_T, process=process, prediction_type="eps", sampler=sampler,
                       num_steps=num_steps, generator=_generator(seed, 100 + 10_000 * r + num_steps),
                       callback=callback, progress=progress, **options)
            seconds = time.perf_counter() - t0
            if trace:
                paths.append((process.t_data, x[:num_paths].clone(), x[:num_paths].clone()))
            samples[(name, num_steps)] = x
            rows.append(row(name, num_steps, calls[0], x, seconds))
            if log is not None:
                log(f"{rows[-1].label}: SWD {rows[-1].swd:.4f} ({seconds:.1f} s)")

    files = {}
    files["samples.png"] = _samples_figure(os.path.join(out, "samples.png"), dataset, reference, rows,
                                           samples, step_counts, n)
    files["trajectories.png"] = _trajectory_figure(os.path.join(out, "trajectories.png"), dataset,
                                                   reference, paths, trace_steps)
    files["errors.md"] = _write(os.path.join(out, "errors.md"), _markdown(dataset, n, seed, rows))
    files["errors.csv"] = _write(os.path.join(out, "errors.csv"), to_csv(rows))
    return DemoResult(dataset, n, seed, rows, files, samples)


# --- output --------------------------------------------------------------------------------------

def _write(path: str, text: str) -> str:
    try:
        return plotting.write_text(path, text)
    except OSError as err:
        raise ScorekitError(f"cannot write {path!r}: {err.strerror or err}") from None


def _samples_figure(path, dataset, reference, rows, samples, step_counts, n) -> str:
    by_label = {r.label: r for r in rows}
    grid = []
    for name, _, _ in SAMPLER_RUNS:
        line = []
        for s in step_counts:
            r = by_label[f"{name}, {s} steps"]
            line.append(plotting.Panel(f"{name}, {s} steps\nSWD {r.swd:.3f}", samples[(name, s)]))
        grid.append(line)
    floor = rows[0]
    ref = plotting.Panel(f"data (exact, n = {n})\nSWD floor {floor.swd_floor:.3f} ± {floor.swd_floor_std:.3f}",
                         reference, color=plotting.DATA_COLOR)
    try:
        return plotting.scatter_grid(
            grid, path, reference=ref,
            title=f"{dataset}: exact denoiser, DDPM linear schedule (T = {NUM_TRAIN_STEPS}), "
                  f"{n} samples per panel")
    except OSError as err:
        raise ScorekitError(f"cannot write {path!r}: {err.strerror or err}") from None


def _trajectory_figure(path, dataset, reference, paths, num_steps) -> str:
    times = [p[0] for p in paths]
    xt = torch.stack([p[1] for p in paths])
    x0 = torch.stack([p[2] for p in paths])
    k = xt.shape[1]
    try:
        return plotting.trajectory_plot(
            [(f"DDIM paths $x_t$ ({num_steps} steps, {k} samples)", xt),
             (r"denoiser's prediction $E[x_0 \mid x_t]$ along them", x0)],
            path, times=times, data=reference[:2000],
            limits=plotting.square_limits(reference, xt.reshape(-1, 2), margin=0.05),
            title=f"{dataset}: deterministic DDIM from noise (open circles) to samples (dots)",
            time_label=f"DDPM step t ({NUM_TRAIN_STEPS - 1} = noise, -1 = data)")
    except OSError as err:
        raise ScorekitError(f"cannot write {path!r}: {err.strerror or err}") from None


CSV_FIELDS = ("sampler", "steps", "nfe", "swd", "swd_floor", "swd_floor_std", "mode_weight_error",
              "within_mode_spread", "seconds")


def to_csv(rows: Sequence[DemoRow]) -> str:
    """The rows as CSV text with a header line (:data:`CSV_FIELDS`); ``steps`` is empty for exact samples."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_FIELDS)
    for r in rows:
        w.writerow([r.sampler, "" if r.steps is None else r.steps, r.nfe, f"{r.swd:.6g}",
                    f"{r.swd_floor:.6g}", f"{r.swd_floor_std:.6g}", f"{r.mode_weight_error:.6g}",
                    f"{r.within_mode_spread:.6g}", f"{r.seconds:.4g}"])
    return buf.getvalue()


def format_table(rows: Sequence[DemoRow]) -> str:
    """The rows as a Markdown table with aligned columns."""
    header = ["sampler", "steps", "NFE", "SWD", "SWD floor", "mode-weight error",
              "within-mode spread", "seconds"]
    body = [[r.sampler, "-" if r.steps is None else str(r.steps), str(r.nfe), f"{r.swd:.4f}",
             f"{r.swd_floor:.4f} ± {r.swd_floor_std:.4f}", f"{r.mode_weight_error:.4f}",
             f"{r.within_mode_spread:.3f}", f"{r.seconds:.2f}"] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) for i, h in enumerate(header)]
    left = {0}

    def line(cells):
        return "| " + " | ".join(c.ljust(w) if i in left else c.rjust(w)
                                 for i, (c, w) in enumerate(zip(cells, widths))) + " |"

    rule = "|" + "|".join(("-" * (w + 2)) if i in left else ("-" * (w + 1) + ":")
                          for i, w in enumerate(widths)) + "|"
    return "\n".join([line(header), rule, *(line(b) for b in body)])


def _markdown(dataset: str, n: int, seed: int, rows: Sequence[DemoRow]) -> str:
    mix = get_dataset(dataset)
    stderr = max(math.sqrt(w * (1 - w) / n) for w in mix.weights.tolist())
    process = DDPM(schedule="linear", num_steps=NUM_TRAIN_STEPS)
    last = []
    for s in sorted({r.steps for r in rows if r.steps is not None}):
        t = float(make_timesteps(process, s)[-2])
        last.append(f"{s} steps: t = {t:.0f} (sigma_t = {float(process.sigma(t)):.3f})")
    return f"""# scorekit demo: sampler error on `{dataset}`

The model is exact: the Gaussian mixture's closed-form noise prediction on the DDPM linear
schedule (T = {NUM_TRAIN_STEPS}), so every error below is the sampler's. n = {n} samples per row,
seed {seed}; all samplers start from the same noise x_T.

{format_table(rows)}

- **sampler**: `exact` = independent exact samples (the level every metric reaches for a perfect
  sampler at this n); `DDPM` = ancestral sampling with the posterior variance (beta tilde);
  `DDIM` = deterministic DDIM (eta = 0). Steps are spaced `trailing` (the first at t = {NUM_TRAIN_STEPS - 1}).
- **NFE**: model evaluations.
- **SWD**: sliced 2-Wasserstein distance to n exact reference samples ({NUM_PROJECTIONS} random directions).
- **SWD floor**: the same distance between two independent exact sample sets of size n (mean ± std
  over {FLOOR_REPEATS} repeats). A sampler within a few std of it cannot be told apart from exact
  sampling with n samples. At small n the floor comes mostly from the random number of samples
  in each mode, so errors inside the modes show in the within-mode spread first.
- **mode-weight error**: max over modes of |sampled weight - true weight|, each sample assigned to
  its most likely mode (the standard error of exact sampling is up to {stderr:.4f} here).
- **within-mode spread**: sample / true standard deviation inside the modes, weight-averaged
  (1 = exact; below 1 the modes are too narrow, above 1 too blurred). Both samplers end with
  x_0 = E[x_0 | x_t] at their last model time, which narrows every mode whose width is not
  large against sigma_t there: {"; ".join(last)}.
- **seconds**: wall-clock sampling time.
"""


__all__ = ["DATASETS", "DEFAULT_SAMPLES", "DEFAULT_STEPS", "DemoResult", "DemoRow", "NUM_TRAIN_STEPS",
           "OUTPUT_FILES", "SAMPLER_RUNS", "format_table", "run_demo", "to_csv"]
