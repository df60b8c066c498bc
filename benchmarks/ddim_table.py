"""Two of the DDIM lecture's quantitative claims, in miniature on MNIST.

    .venv/bin/python benchmarks/ddim_table.py            # 45 min of training, 200 samples per setting (~2.5 hours on 2 cores)
    .venv/bin/python benchmarks/ddim_table.py --quick    # a few minutes: checks the pipeline end to end

``--help`` lists the options: the training budget, the numbers of steps S, the etas, the number of
samples, the coarse-to-fine probe times, the output folders.

Data: the MNIST test digits (``../shared/data/mnist-test``), images 0-7999 for training and
8000-9999 held out, padded to 32x32, in [-1, 1] (``benchmarks/mnist_quality.py``, whose data
loading, digit classifier and training under a budget this benchmark imports, as it imports the
cached training of ``benchmarks/guidance.py``).

The model mirrors the one the DDIM paper sampled for its CIFAR-10 column (the DDPM CIFAR-10
network of Ho et al. 2020) where that is cheap: the DDPM process with the linear beta schedule
(1e-4 to 0.02, T = 1000), eps-prediction, the unweighted loss ``L_simple``, EMA weights. Not
mirrored: the network's size (the ``tiny`` U-Net, 0.41 M parameters, instead of 35.7 M), its
dropout (0 instead of 0.1: the run is far too short to overfit), random flips (digits are not
symmetric), the learning rate and EMA decay (4e-3 after 50 warm-up steps and 0.999, instead of
2e-4 and 0.9999, which suit 800k steps, not ~1,000), and the 800k steps themselves.

Phases (each cached in ``OUT/cache/`` and skipped when a later run asks for the same settings):

1. **Training**: one unconditional model on the 8,000 training digits for ``--minutes`` of
   training time, one torch thread (``guidance.trained_run``).
2. **The table** (Song et al. 2021, Table 1): from one x_T (the same seed for every setting),
   ``--num`` samples for each number of steps S in ``--steps`` with
   * DDIM at each ``--etas`` value (``c = eta sqrt(beta~)``, eq. 16; eta = 1 is DDPM's
     ancestral step with the posterior variance beta~ on the S-step sub-grid), and
   * sigma-hat: DDPM's ancestral step with the large variance ``beta = 1 - alpha_bar_t /
     alpha_bar_s`` of the sub-grid step t -> s (``ddpm``, ``variance="large"``), ``x0_pred``
     clipped to [-1, 1] (``--sigma-hat-clip``) as the DDIM code's ``ddpm_steps`` does.
   The DDIM code's DDIM steps do not clip; here they clip ``x0_pred`` to [-1, 1] too (``--clip``,
   as DDPM's own sampler and diffusers' ``DDIMScheduler`` do), so that all rows are treated
   alike: an eps-network trained for minutes is far from accurate enough at the top of the linear
   schedule (``alpha(999) = 0.0064``, where its ``x0_pred`` multiplies the error of ``eps_pred``
   by ``sigma / alpha = 157``), and unclipped deterministic sampling over the whole chain leaves
   most pixels far outside [-1, 1] (``--clip 0`` reproduces it).
   The sub-grid is the DDIM paper's CIFAR-10 choice (``--spacing quadratic``, the default):
   ``floor(linspace(0, sqrt(0.8 T), S)^2)``, whose repeated steps (at S = 50 and 100 a few near
   t = 0) are dropped -- the DDIM code runs them, but a step from t to t is the identity for
   both samplers, so dropping them changes only the count of network calls (reported). S = T
   is the whole chain T-1, ..., 0 (the quadratic formula cannot give T distinct steps). Any
   discrete spacing of :mod:`scorekit.timesteps` may be named instead. Each setting's samples go
   to ``OUT/cache/ddim-table-<run>/<row>-S<S>-<clip>.npz`` (``x`` float32 (N, 1, 32, 32),
   clamped to [-1, 1]; the settings that made them inside).
3. **Coarse to fine** (clipped as the table's DDIM steps): DDIM (eta = 0) from one x_T for
   ``--c2f-num`` images on the grid 999, then every ``--c2f-step``-th step down to 0. At each
   probe time t (``--c2f-times``, and the start t = 999), the trajectory's x_t is sampled on to
   the data ``--c2f-resamples`` times with fresh noise (DDIM eta = 1, i.e. ancestral sampling
   with beta~, on the rest of the grid). The digit classifier (``mnist_quality.get_classifier``)
   measures, against t: the share of re-samples whose class is the class of the trajectory's
   own end point, the share of pairs of re-samples of one image that agree with each other, and
   the distances between their 128-d features (to the trajectory's end point, and between
   re-samples), in units of the mean distance between two random held-out digits.
4. **Scoring** with ``scorekit eval`` (one subprocess per setting, one shared ``--cache`` so
   the reference statistics and the feature network are computed once): FID and KID of each
   setting's samples against the 2,000 held-out digits, with the features of the ``digits``
   network trained on the 8,000 training digits; ``--num`` random training digits are scored the
   same way as a reference. When this checkout has no ``scorekit eval``
   yet, the phase is skipped and the report says so; a later run reuses everything cached.

Writes ``TAG.json`` and ``TAG.md`` into ``--out`` (default ``benchmarks/results/``, TAG
``ddim_table``) and the figures ``ddim-table.png`` (FID against S, one curve per sampler) and
``coarse-to-fine.png`` into ``--figures`` (default ``docs/images/``). ``--quick`` writes
``ddim_table-quick.*`` and its figures into ``--out`` instead.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scorekit  # noqa: E402
from guidance import cpu_model, float_list, recorded_config, trained_run  # noqa: E402
from mnist_quality import (DEFAULT_DATA, NUM_TRAIN, get_classifier, load_average, load_mnist, log,  # noqa: E402
                           write_report)
from scorekit.models import count_parameters  # noqa: E402
from scorekit.plotting import _new_figure, atomic_path, save_figure  # noqa: E402
from scorekit.timesteps import DISCRETE_SPACINGS, chain_length, make_timesteps  # noqa: E402
from scorekit.train import TrainConfig  # noqa: E402

Tensor = torch.Tensor

ROOT = Path(__file__).resolve().parent.parent
SEEDS = {"diffusion": 0, "x_T": 2, "noise": 3, "c2f_x_T": 4, "c2f_noise": 5, "reference": 6}
#: the DDIM paper's CIFAR-10 FIDs (Song et al. 2021, Table 1, 50,000 samples) that a public source
#: available here confirms, keyed (row, S); the other entries of that table are left blank rather
#: than quoted from memory. Sources: ermongroup/ddim issues #32 (eta 0, S 10), #3 (eta 0, S 100),
#: #5 (eta 1, S 20), #17 (sigma-hat, S 1000, also DDPM's own CIFAR-10 FID); a reproduction's
#: README quoting the paper (eta 0 and 1, S 50).
PAPER_CIFAR10 = {("eta0", 10): 13.36, ("eta0", 50): 4.67, ("eta0", 100): 4.16,
                 ("eta1", 20): 18.36, ("eta1", 50): 8.01, ("sigmahat", 1000): 3.17}
COLORS = {"eta0": "#1b9e77", "eta0.2": "#66a61e", "eta0.5": "#e6ab02", "eta1": "#d95f02", "sigmahat": "#7570b3"}


# --- settings ---------------------------------------------------------------------------------------------

def diffusion_config(args) -> TrainConfig:
    """The DDPM CIFAR-10 setting of the DDIM paper where cheap (see the module docstring)."""
    return TrainConfig(data=f"mnist:{args.data}", data_options={"pad_to": 32, "start": 0, "stop": NUM_TRAIN},
                       model=args.model, model_options={"num_classes": None}, process="ddpm",
                       process_options={"schedule": "linear", "num_steps": 1000}, prediction="eps",
                       weighting="simple", steps=10 ** 7, batch_size=args.batch_size, lr=args.lr,
                       warmup_steps=args.warmup, ema_decay=args.ema_decay, seed=SEEDS["diffusion"],
                       num_threads=1, log_every=10, checkpoint_every=10 ** 9, keep_checkpoints=1,
                       sample_num=1, sample_steps=1)


def rows(args) -> dict:
    """The table's rows: ``key -> (label, sampler, options, clip)``."""
    out = {f"eta{eta:g}": (f"DDIM, eta = {eta:g}", "ddim", {"eta": float(eta)}, args.clip or None) for eta in args.etas}
    out["sigmahat"] = ("sigma-hat (DDPM, large variance)", "ddpm", {"variance": "large"},
                       args.sigma_hat_clip or None)
    return out


def table_grid(process, num_steps: int, spacing: str) -> Tensor:
    """The S-step sub-grid (model times, then the data time); see the module docstring."""
    T = chain_length(process)
    if num_steps == T:
        steps = np.arange(T - 1, -1, -1)
    elif spacing == "quadratic":
        steps = np.unique(np.floor(np.linspace(0, math.sqrt(0.8 * T), num_steps) ** 2).astype(np.int64))[::-1]
    else:
        return make_timesteps(process, num_steps, spacing)
    return torch.from_numpy(np.append(steps.astype(np.float64) + process.t_min, process.t_data))


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:12]


def load_cached(path: Path, want: dict) -> dict | None:
    """The arrays of the ``.npz`` at ``path`` if it was written with the settings ``want``."""
    if not path.is_file():
        return None
    with np.load(path) as f:
        if "settings" not in f.files or json.loads(str(f["settings"])) != want:
            return None
        return {k: f[k] for k in f.files}


def save_npz(path: Path, want: dict, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, settings=np.array(json.dumps(want)), **arrays)


# --- phases 2 and 3: sampling, in worker processes -------------------------------------------------------------

_DENOISERS: dict = {}


def _denoiser(run_dir: str, threads: int):
    """The run's EMA denoiser, loaded once per worker process."""
    torch.set_num_threads(threads)
    if run_dir not in _DENOISERS:
        _DENOISERS[run_dir] = scorekit.load_denoiser(run_dir)
    return _DENOISERS[run_dir]


def clip_name(clip) -> str:
    return f"clip{clip:g}" if clip else "noclip"


def table_tasks(args, process, run_id: dict, folder: Path) -> list[dict]:
    """One task per (row, S): where its samples go and the settings that make them."""
    tasks = []
    for S in sorted(args.steps):
        grid = table_grid(process, S, args.spacing)
        for key, (label, sampler, options, clip) in rows(args).items():
            want = {"run": run_id, "row": key, "S": S, "sampler": sampler, "options": options, "clip": clip,
                    "grid": grid.tolist(), "num": args.num, "batch": args.sample_batch,
                    "seeds": [SEEDS["x_T"], SEEDS["noise"]]}
            name = f"{key}-S{S}-{clip_name(clip)}.npz"
            tasks.append({"row": key, "label": label, "S": S, "npz": str(folder / name), "want": want})
    return tasks


def run_table_task(run_dir: str, task: dict, threads: int) -> dict:
    """Sample one setting from the shared x_T and write its ``.npz``; returns what it cost."""
    denoiser = _denoiser(run_dir, threads)
    w = task["want"]
    x_T = denoiser.process.prior_sample((w["num"], *denoiser.checkpoint.sample_shape),
                                        generator=torch.Generator().manual_seed(w["seeds"][0]))
    result = scorekit.sample_batches(denoiser, x_T, batch_size=w["batch"], sampler=w["sampler"],
                                     timesteps=torch.tensor(w["grid"], dtype=torch.float64), clip=w["clip"],
                                     generator=torch.Generator().manual_seed(w["seeds"][1]), **w["options"])
    x = result.x
    info = {"nfe": result.nfe, "seconds": result.seconds, "threads": threads,
            "raw_range": [float(x.min()), float(x.max())], "outside_share": float((x.abs() > 1).double().mean())}
    save_npz(Path(task["npz"]), w, x=x.clamp(-1, 1).numpy().astype(np.float32), info=np.array(json.dumps(info)))
    return info


def c2f_grid(process, step: int) -> Tensor:
    T = chain_length(process)
    steps = sorted(set([T - 1] + list(range(0, T, step))), reverse=True)
    return torch.tensor([s + process.t_min for s in steps] + [process.t_data], dtype=torch.float64)


def c2f_task(args, process, run_id: dict, folder: Path) -> dict:
    grid = c2f_grid(process, args.c2f_step)
    want = {"run": run_id, "grid": grid.tolist(), "probes": [int(grid[0])] + sorted(args.c2f_times, reverse=True),
            **({"clip": args.clip} if args.clip else {}),
            "num": args.c2f_num, "resamples": args.c2f_resamples, "batch": args.sample_batch,
            "seeds": [SEEDS["c2f_x_T"], SEEDS["c2f_noise"]]}
    return {"row": "coarse-to-fine", "S": len(grid) - 1, "npz": str(folder / f"coarse-to-fine-{clip_name(args.clip)}.npz"),
            "want": want}


def run_c2f_task(run_dir: str, task: dict, threads: int) -> dict:
    """DDIM (eta = 0) trajectories, their x_t at the probe times, and re-samples from each x_t with
    DDIM eta = 1 on the rest of the grid; writes the ``.npz``."""
    denoiser = _denoiser(run_dir, threads)
    w = task["want"]
    grid, probes = torch.tensor(w["grid"], dtype=torch.float64), w["probes"]
    t0 = time.perf_counter()
    x_T = denoiser.process.prior_sample((w["num"], *denoiser.checkpoint.sample_shape),
                                        generator=torch.Generator().manual_seed(w["seeds"][0]))
    states = {}

    def grab(i, t, x_t, x0_pred):
        if int(round(t)) in probes:
            states[int(round(t))] = x_t.clone()

    arrays = {"x0": scorekit.sample(denoiser, x_T, sampler="ddim", eta=0.0, timesteps=grid, clip=w.get("clip"),
                                    callback=grab)}
    g = torch.Generator().manual_seed(w["seeds"][1])
    for t in probes:
        start = states[t].repeat_interleave(w["resamples"], dim=0)
        arrays[f"xt{t}"] = states[t]
        arrays[f"out{t}"] = scorekit.sample_batches(denoiser, start, batch_size=w["batch"], sampler="ddim", eta=1.0,
                                                    timesteps=grid[grid <= t], clip=w.get("clip"), generator=g).x
    info = {"seconds": time.perf_counter() - t0, "threads": threads}
    save_npz(Path(task["npz"]), w, info=np.array(json.dumps(info)), **{k: v.numpy() for k, v in arrays.items()})
    return info


def run_tasks(tasks: list[dict], run_dir: Path, workers: int, threads: int) -> list[dict]:
    """Run the tasks whose ``.npz`` is missing or was made with other settings, the costliest first,
    in ``workers`` processes; every task gets ``info`` and ``reused``."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    import multiprocessing

    todo = []
    for task in tasks:
        cached = load_cached(Path(task["npz"]), task["want"])
        if cached is None:
            todo.append(task)
        else:
            task.update(info=json.loads(str(cached["info"])), reused=True)
    todo.sort(key=lambda t: -t["S"] * (t["want"]["num"] * t["want"].get("resamples", 1)))
    log(f"sampling {len(todo)} settings in {workers} process(es) ({len(tasks) - len(todo)} cached)")
    fn = {True: run_c2f_task, False: run_table_task}
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(fn[t["row"] == "coarse-to-fine"], str(run_dir), t, threads): t for t in todo}
        for future in as_completed(futures):
            task = futures[future]
            task.update(info=future.result(), reused=False)
            i = task["info"]
            log(f"{task['row']} S={task['S']}: {i['seconds']:.0f} s" + (
                f", {i['nfe']:g} NFE ({task['want']['num'] * i['nfe'] / i['seconds']:.0f} image evaluations/s), "
                f"range {i['raw_range'][0]:.2f} .. {i['raw_range'][1]:.2f}" if "nfe" in i else ""))
    return tasks


def load_c2f(task: dict) -> dict:
    with np.load(task["npz"]) as f:
        data = {k: torch.from_numpy(f[k]) for k in f.files if k.startswith(("x0", "xt", "out"))}
    return {"probes": task["want"]["probes"], **data}


# --- phase 3: coarse to fine, scored ---------------------------------------------------------------------------

def mean_pair_distance(f: Tensor) -> float:
    """Mean Euclidean distance over the distinct pairs of the rows of ``f``."""
    d = torch.cdist(f.double(), f.double())
    n = f.shape[0]
    return float(d.sum() / (n * (n - 1)))


@torch.no_grad()
def coarse_to_fine_scores(data: dict, classifier, held_out, resamples: int) -> dict:
    """Class agreement and feature distances of the re-samples against t (see the docstring)."""
    f_ref = classifier.features(held_out.x).double()
    y_ref = held_out.y.long()
    random_pair = mean_pair_distance(f_ref)
    same_class = float(np.mean([mean_pair_distance(f_ref[y_ref == k]) for k in range(10)]))
    x0 = data["x0"].clamp(-1, 1)
    c0, f0 = classifier.predict(x0), classifier.features(x0).double()
    share = torch.bincount(c0, minlength=10).double() / c0.numel()
    per_t = []
    for t in data["probes"]:
        out = data[f"out{t}"].clamp(-1, 1)
        c, f = classifier.predict(out), classifier.features(out).double()
        n = x0.shape[0]
        c, f = c.view(n, resamples), f.view(n, resamples, -1)
        to_own = (f - f0[:, None]).norm(dim=-1).mean()
        pair_dist = np.mean([mean_pair_distance(f[i]) for i in range(n)])
        agree_pairs = ((c[:, :, None] == c[:, None, :]).double().sum((1, 2)) - resamples) / (resamples * (resamples - 1))
        per_t.append({"t": t, "class_agreement": float((c == c0[:, None]).double().mean()),
                      "pair_agreement": float(agree_pairs.mean()),
                      "distance_to_own": float(to_own) / random_pair,
                      "distance_between": float(pair_dist) / random_pair})
    return {"per_t": per_t, "random_pair_distance": random_pair,
            "same_class_distance": same_class / random_pair,
            "chance_agreement": float((share ** 2).sum()),
            "classes": c0.tolist()}


# --- phase 4: scoring -----------------------------------------------------------------------------------------

def eval_available() -> bool:
    return (ROOT / "src" / "scorekit" / "cli" / "eval.py").is_file()


def eval_args(args, cache: Path) -> list[str]:
    data = f"mnist:{args.data}"
    return ["--ref", data, "--ref-option", f"start={NUM_TRAIN}", "--ref-option", "pad_to=32",
            "--features", "digits", "--features-data", data, "--features-data-option", "start=0",
            "--features-data-option", f"stop={NUM_TRAIN}", "--features-data-option", "pad_to=32",
            "--metrics", "fid,kid", "--cache", str(cache / "eval"), "--seed", "0", "--no-progress"]


def reference_record(args, train_set, folder: Path) -> dict:
    """``--num`` training digits, drawn at random, scored like the samples: the FID and KID that
    real digits reach at this sample size (FID is biased upwards at small N)."""
    want = {"reference": train_set.spec, "num": args.num, "seed": SEEDS["reference"]}
    path = folder / f"real-{args.num}.npz"
    if load_cached(path, want) is None:
        idx = torch.randperm(train_set.x.shape[0], generator=torch.Generator().manual_seed(SEEDS["reference"]))
        save_npz(path, want, x=train_set.x[idx[:args.num]].numpy().astype(np.float32), info=np.array("{}"))
    return {"row": "real", "label": f"{args.num} training digits", "S": 0, "npz": str(path)}


def score(args, records: list[dict], cache: Path) -> float:
    """Run ``scorekit eval`` on every setting's samples (reusing earlier scores of the same file
    and arguments); fills ``record["metrics"]``; returns the seconds spent."""
    common = eval_args(args, cache)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    for r in records:
        npz = Path(r["npz"])
        with np.load(npz) as f:
            key = digest({"settings": str(f["settings"]), "eval": common})
        out = cache / "scores" / f"{npz.stem}-{key}.json"
        if not out.is_file():
            out.parent.mkdir(parents=True, exist_ok=True)
            cmd = [sys.executable, "-m", "scorekit", "eval", str(npz), *common, "--out", str(out)]
            done = subprocess.run(cmd, env=env, capture_output=True, text=True)
            if done.returncode != 0:
                raise SystemExit(f"scorekit eval failed on {npz.name} ({done.returncode}):\n{done.stderr[-2000:]}")
        r["metrics"] = json.loads(out.read_text(encoding="utf-8"))["metrics"]
        fid = r["metrics"]["fid"]
        log(f"{r['row']} S={r['S']}: FID {fid['value']:.1f} +- {fid.get('stderr', float('nan')):.1f}")
    return time.perf_counter() - t0


# --- figures and the report -----------------------------------------------------------------------------------

def table_figure(report: dict, path) -> str:
    """FID against S (log x), one curve per sampler; beside it the DDIM paper's CIFAR-10 entries."""
    fig = _new_figure((11.5, 4.6))
    axes = fig.subplots(1, 2)
    recs = [r for r in report["table"] if r.get("metrics")]
    for key, label in report["rows"].items():
        pts = sorted((r for r in recs if r["row"] == key), key=lambda r: r["S"])
        if pts:
            fid = [r["metrics"]["fid"] for r in pts]
            axes[0].errorbar([r["S"] for r in pts], [m["value"] for m in fid],
                             yerr=[m.get("stderr") or 0.0 for m in fid], marker="o", ms=4, capsize=2,
                             color=COLORS.get(key), label=label)
        paper = sorted((S, v) for (k, S), v in PAPER_CIFAR10.items() if k == key)
        if paper:
            axes[1].plot([s for s, _ in paper], [v for _, v in paper], "o", ms=6, color=COLORS.get(key), label=label)
    ref = (report.get("reference") or {}).get("metrics")
    if ref:
        axes[0].axhline(ref["fid"]["value"], color="grey", ls=":", lw=1.2, label=report["reference"]["label"])
    s = report["settings"]
    axes[0].set_title(f"MNIST, tiny U-Net, {s['num']} samples per point (FID on digit features)", fontsize=9.5)
    axes[1].set_title("DDIM paper, CIFAR-10, 50k samples (the entries a source confirms)", fontsize=9.5)
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    paper_steps = sorted({S for _, S in PAPER_CIFAR10} | {10, 20, 50, 100, 1000})
    for ax, steps in zip(axes, (s["steps"], paper_steps)):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(steps, [str(v) for v in steps])
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.yaxis.set_major_formatter(ScalarFormatter())
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("number of sampling steps S")
        ax.set_ylabel("FID")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7.5)
    return save_figure(fig, path, dpi=130)


def c2f_figure(report: dict, data: dict, resamples: int, path) -> str:
    """Class agreement and feature distances against t, and one image's x_t and re-samples."""
    c = report["coarse_to_fine"]
    ts = [p["t"] for p in c["per_t"]]
    fig = _new_figure((13.0, 4.8))
    gs = fig.add_gridspec(1, 3, width_ratios=[1, 1, 1.1])
    ax = fig.add_subplot(gs[0])
    ax.plot(ts, [p["class_agreement"] for p in c["per_t"]], "o-", color="#1b9e77",
            label="re-sample's class = trajectory's class")
    ax.plot(ts, [p["pair_agreement"] for p in c["per_t"]], "s--", color="#7570b3", ms=4,
            label="two re-samples agree")
    ax.axhline(c["chance_agreement"], color="grey", ls=":", lw=1, label="chance (two random samples)")
    ax.set_ylim(0, 1.03)
    ax.set_ylabel("share")
    ax.set_title("class decided", fontsize=10)
    ax2 = fig.add_subplot(gs[1])
    ax2.plot(ts, [p["distance_to_own"] for p in c["per_t"]], "o-", color="#d95f02", label="to the trajectory's end")
    ax2.plot(ts, [p["distance_between"] for p in c["per_t"]], "s--", color="#e6ab02", ms=4, label="between re-samples")
    ax2.axhline(1.0, color="grey", ls=":", lw=1, label="two random held-out digits")
    ax2.axhline(c["same_class_distance"], color="grey", ls="-.", lw=1, label="two held-out digits, same class")
    ax2.set_ylim(0, None)
    ax2.set_ylabel("feature distance (units: random pair)")
    ax2.set_title("how far the outcomes differ", fontsize=10)
    for a in (ax, ax2):
        a.set_xlabel("t at which the trajectory is re-sampled (999 = x_T)")
        a.invert_xaxis()
        a.grid(alpha=0.3)
        a.legend(fontsize=7)
    ax3 = fig.add_subplot(gs[2])
    idx, ncol = 0, resamples + 2
    probes = data["probes"]
    rows_img = []
    for t in probes:
        outs = data[f"out{t}"][idx * resamples:(idx + 1) * resamples]
        rows_img.append(torch.cat([data[f"xt{t}"][idx:idx + 1].clamp(-1, 1), data["x0"][idx:idx + 1], outs]))
    images = torch.cat(rows_img).clamp(-1, 1)[:, 0].numpy()
    h, w = images.shape[1:]
    canvas = np.ones(((h + 2) * len(probes), (w + 2) * ncol))
    for i, img in enumerate(images):
        r, q = divmod(i, ncol)
        canvas[r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = (img + 1) / 2
    ax3.imshow(canvas, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax3.set_yticks([(h + 2) * r + h / 2 for r in range(len(probes))], [f"t = {t}" for t in probes], fontsize=7.5)
    ax3.set_xticks([w / 2, (w + 2) + w / 2, (w + 2) * (2 + (resamples - 1) / 2) + w / 2],
                   ["x_t", "end", "re-samples from x_t"], fontsize=7.5)
    ax3.tick_params(length=0)
    for side in ax3.spines.values():
        side.set_visible(False)
    ax3.set_title("one trajectory, re-sampled from x_t", fontsize=10)
    fig.suptitle(f"Coarse content is decided early: {c['num']} DDIM (eta = 0) trajectories, {resamples} "
                 f"stochastic re-samples from each x_t", fontsize=11)
    return save_figure(fig, path, dpi=130)


def fmt(m: dict | None, scale: float = 1.0, digits: int = 1) -> str:
    if not m:
        return "-"
    err = m.get("stderr")
    return f"{scale * m['value']:.{digits}f}" + (f" ± {scale * err:.{digits}f}" if err is not None else "")


def markdown(report: dict) -> str:
    s, tr = report["settings"], report["training"]
    steps = s["steps"]
    by = {(r["row"], r["S"]): r for r in report["table"]}
    head = "| sampler | " + " | ".join(f"S = {v}" for v in steps) + " |"
    rule = "| --- |" + " --- |" * len(steps)
    lines = ["# The DDIM table and coarse-to-fine sampling on MNIST", "",
             f"Command: `{report['command']}`  ", f"Date: {report['date']}; {report['machine']}  ",
             "Load average (1, 5, 15 min): " + "; ".join(f"{k} {v}" for k, v in report["load"].items()), "",
             f"Model: `{s['model']}` U-Net ({report['parameters']:,} parameters), DDPM linear schedule T = 1000, "
             f"eps-prediction, L_simple, lr {s['lr']:g}, batch {s['batch_size']}, EMA {s['ema_decay']}; "
             f"{tr['steps']} steps in {tr['train_seconds']:.0f} s of training ({s['minutes']:g}-minute budget, "
             f"{'an earlier run with the same settings' if tr.get('reused') else 'this run'}), final loss "
             f"{tr['final_loss']:.4f}.", "",
             f"Sampling: {s['num']} samples per setting from one x_T; sub-grid `{s['spacing']}` "
             f"(S = 1000: the whole chain); "
             + (f"x0_pred clipped to ±{s['clip']:g} in the DDIM steps" if s["clip"]
                else "x0_pred not clipped in the DDIM steps (`--clip 0`)")
             + (f", to ±{s['sigma_hat_clip']:g} in sigma-hat's." if s["sigma_hat_clip"] else ", nor in sigma-hat's."), ""]
    lines += ["## FID (digit features, against the 2,000 held-out digits; ± the eval's standard error)", "", head, rule]
    for key, label in report["rows"].items():
        lines.append(f"| {label} | " + " | ".join(fmt((by.get((key, S)) or {}).get("metrics", {}).get("fid"))
                                                  for S in steps) + " |")
    if report["scored"]:
        ref = report["reference"]["metrics"]
        lines += ["", f"Reference: {report['reference']['label']} (the same N) score FID {fmt(ref['fid'])}, "
                      f"KID / 10^6 {fmt(ref['kid'], 1e-6, 3)}."]
    else:
        lines += ["", f"Not scored: {report['scored_note']}"]
    if report["scored"]:
        lines += ["", f"## FID relative to the same sampler's at S = {steps[-1]}", "", head, rule]
        for key, label in report["rows"].items():
            last = (by.get((key, steps[-1])) or {}).get("metrics")
            lines.append(f"| {label} | " + " | ".join(
                f"{by[key, S]['metrics']['fid']['value'] / last['fid']['value']:.2f}" if last and (key, S) in by else "-"
                for S in steps) + " |")
    lines += ["", "## KID / 10^6 (cubic kernel on the raw 128-d features)", "", head, rule]
    for key, label in report["rows"].items():
        lines.append(f"| {label} | " + " | ".join(fmt((by.get((key, S)) or {}).get("metrics", {}).get("kid"), 1e-6, 2)
                                                  for S in steps) + " |")
    lines += ["", "## The DDIM paper, CIFAR-10 (Table 1; entries confirmed by a public source here, others blank)",
              "", head, rule]
    for key, label in report["rows"].items():
        lines.append(f"| {label} | " + " | ".join(f"{PAPER_CIFAR10[key, S]:.2f}" if (key, S) in PAPER_CIFAR10
                                                  else "" for S in steps) + " |")
    lines += ["", "## Network calls per sample and seconds per setting", "", head, rule]
    for key, label in report["rows"].items():
        lines.append(f"| {label} | " + " | ".join(
            (f"{by[key, S]['nfe']:g} / {by[key, S]['seconds']:.0f} s" if (key, S) in by else "-") for S in steps) + " |")
    if any(r.get("outside_share") for r in report["table"]):
        lines += ["", "## Share of pixels outside [-1, 1] before the samples were clamped", "", head, rule]
        for key, label in report["rows"].items():
            lines.append(f"| {label} | " + " | ".join(
                (f"{by[key, S]['outside_share']:.3f}" if (key, S) in by else "-") for S in steps) + " |")
    c = report["coarse_to_fine"]
    lines += ["", "## Coarse to fine", "",
              f"{c['num']} DDIM (eta = 0) trajectories on a {c['grid_steps']}-step grid, {c['resamples']} "
              f"re-samples (DDIM eta = 1) from each probe time; distances in units of the mean feature distance "
              f"between two random held-out digits (two held-out digits of the same class: "
              f"{c['same_class_distance']:.3f}); chance class agreement {c['chance_agreement']:.3f}.", "",
              "| t | class agreement with the trajectory | agreement between re-samples | distance to the trajectory's end | distance between re-samples |",
              "| --- | --- | --- | --- | --- |"]
    for p in c["per_t"]:
        lines.append(f"| {p['t']} | {p['class_agreement']:.3f} | {p['pair_agreement']:.3f} | "
                     f"{p['distance_to_own']:.3f} | {p['distance_between']:.3f} |")
    lines += ["", "Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items()), "",
              "Figures: " + ", ".join(f"`{v}`" for v in report["figures"].values()), "",
              "Settings:", "", "```json", json.dumps(s), "```", ""]
    return "\n".join(lines) + "\n"


# --- main -------------------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    values = float_list(text)
    if any(v != int(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers, got {text!r}")
    return [int(v) for v in values]


def add_training_flags(parser) -> None:
    """The flags :func:`diffusion_config` reads: the U-Net preset and the optimiser's settings."""
    parser.add_argument("--model", default="tiny", help="U-Net preset")
    parser.add_argument("--lr", type=float, default=4e-3, help="learning rate")
    parser.add_argument("--batch-size", type=int, default=32, help="training batch size")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    parser.add_argument("--ema-decay", type=float, default=0.999, help="largest EMA decay")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a pipeline check: 1 minute of training, 6 samples per setting, S = 10, 20, 1000, "
                             "a small coarse-to-fine run; outputs ddim_table-quick.* and its figures in --out")
    parser.add_argument("--minutes", type=float, default=45.0, help="training budget")
    parser.add_argument("--num", type=int, default=200, help="samples per setting of the table")
    parser.add_argument("--steps", type=int_list, default=[10, 20, 50, 100, 1000], help="numbers of sampling steps S")
    parser.add_argument("--etas", type=float_list, default=[0.0, 0.2, 0.5, 1.0], help="DDIM's eta values")
    parser.add_argument("--spacing", default="quadratic", choices=DISCRETE_SPACINGS,
                        help="the S-step sub-grid (quadratic: the DDIM paper's CIFAR-10 choice, repeats dropped)")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="clip x0_pred to [-X, X] in the DDIM steps of the table and of the coarse-to-fine "
                             "run (0: off, as the DDIM code's generalized_steps; see the docstring)")
    parser.add_argument("--sigma-hat-clip", type=float, default=1.0,
                        help="clip x0_pred to [-X, X] in the sigma-hat sampler, as the DDIM code does (0: off)")
    parser.add_argument("--c2f-num", type=int, default=24, help="coarse to fine: trajectories")
    parser.add_argument("--c2f-resamples", type=int, default=6, help="coarse to fine: re-samples per x_t")
    parser.add_argument("--c2f-times", type=int_list, default=[900, 800, 700, 600, 500, 400, 300, 200, 100],
                        help="coarse to fine: probe times (multiples of --c2f-step)")
    parser.add_argument("--c2f-step", type=int, default=20, help="coarse to fine: spacing of the grid")
    parser.add_argument("--sample-batch", type=int, default=100, help="samples per sampling batch")
    parser.add_argument("--workers", type=int, default=2, help="sampling processes (the settings are shared out)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per sampling process (training uses one)")
    add_training_flags(parser)
    parser.add_argument("--judge-epochs", type=int, default=8, help="epochs of the coarse-to-fine digit classifier")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the MNIST test IDX files")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "images", help="folder of the figures")
    parser.add_argument("--tag", default=None, help="file name stem of the outputs (default ddim_table[-quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.num, args.steps = 1.0, 6, [10, 20, 1000]
        args.c2f_num, args.c2f_resamples, args.c2f_times = 3, 3, [700, 300]
        args.figures = args.out
    args.tag = args.tag or ("ddim_table-quick" if args.quick else "ddim_table")
    if args.num < 2 or args.c2f_num < 1 or args.c2f_resamples < 2 or not args.steps:
        parser.error("--num must be at least 2, --c2f-num at least 1, --c2f-resamples at least 2")
    if any(t % args.c2f_step or not 0 < t < 999 for t in args.c2f_times):
        parser.error(f"--c2f-times must be multiples of --c2f-step ({args.c2f_step}) between 0 and 999")
    if any(not 1 <= S <= 1000 for S in args.steps):
        parser.error("--steps must lie in 1 .. 1000")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    out, cache = args.out, args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    load = {"at the start": load_average()}
    timings = {}
    log(f"{args.tag}: budget {args.minutes:g} min; load average {load['at the start']} on {os.cpu_count()} cores")

    config = diffusion_config(args)
    run_dir = cache / f"ddim-table-run-{args.minutes:g}min"
    t0 = time.perf_counter()
    training = trained_run(config, run_dir, args.minutes, "diffusion model")
    timings["training (wall)"] = time.perf_counter() - t0
    load["after training"] = load_average()
    denoiser = scorekit.load_denoiser(run_dir)
    run_id = {"config": recorded_config(run_dir), "minutes": args.minutes, "steps": training["steps"]}
    folder = cache / f"ddim-table-{digest(run_id)}"

    t0 = time.perf_counter()
    tasks = table_tasks(args, denoiser.process, run_id, folder)
    c2f_job = c2f_task(args, denoiser.process, run_id, folder)
    run_tasks([c2f_job] + tasks, run_dir, args.workers, args.threads)
    records = [{k: v for k, v in t.items() if k != "want"} | t["info"] for t in tasks]
    timings["sampling (wall)"] = time.perf_counter() - t0
    load["after sampling"] = load_average()

    t0 = time.perf_counter()
    train_set, held_out = load_mnist(args.data)
    classifier, judge_info = get_classifier(train_set, held_out, cache, args.judge_epochs)
    c2f = load_c2f(c2f_job)
    c2f_scores = coarse_to_fine_scores(c2f, classifier, held_out, args.c2f_resamples)
    timings["coarse-to-fine scoring (wall)"] = time.perf_counter() - t0
    for p in c2f_scores["per_t"]:
        log(f"t = {p['t']}: class agreement {p['class_agreement']:.3f}, distance to own end {p['distance_to_own']:.3f}, "
            f"between re-samples {p['distance_between']:.3f}")

    scored, note, reference = eval_available(), "", None
    if scored:
        reference = reference_record(args, train_set, folder)
        timings["scoring (wall)"] = score(args, [reference] + records, cache)
    else:
        note = ("this checkout has no `scorekit eval` (src/scorekit/cli/eval.py) yet; run the command again "
                "once it has: the samples are cached")
        log("not scored: " + note)
    load["at the end"] = load_average()

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}; training 1 torch thread, sampling {args.workers} process(es) x "
                         f"{args.threads} thread(s)",
              "settings": settings, "training": training, "parameters": count_parameters(denoiser.checkpoint.ema_net),
              "rows": {k: v[0] for k, v in rows(args).items()},
              "grids": {str(S): table_grid(denoiser.process, S, args.spacing).tolist()[:-1] for S in args.steps},
              "table": records, "reference": reference, "scored": scored, "scored_note": note, "judge": judge_info,
              "coarse_to_fine": {"num": args.c2f_num, "resamples": args.c2f_resamples,
                                 "grid_steps": len(c2f_grid(denoiser.process, args.c2f_step)) - 1,
                                 **c2f_job["info"], "reused": c2f_job["reused"], **c2f_scores},
              "paper_cifar10": {f"{k}-S{S}": v for (k, S), v in PAPER_CIFAR10.items()},
              "load": load, "timings": timings, "figures": {}}
    args.figures.mkdir(parents=True, exist_ok=True)
    report["figures"]["coarse_to_fine"] = os.path.relpath(
        c2f_figure(report, c2f, args.c2f_resamples, args.figures / "coarse-to-fine.png"), ROOT)
    if scored:
        report["figures"]["table"] = os.path.relpath(table_figure(report, args.figures / "ddim-table.png"), ROOT)
    write_report(out, args.tag, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
