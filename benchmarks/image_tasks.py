"""Image tasks: diffusion restorations against classical baselines, on held-out images.

    .venv/bin/python benchmarks/image_tasks.py --prior RUN      # RUN: an unconditional MNIST 32x32 DDPM run
    .venv/bin/python benchmarks/image_tasks.py --quick          # a few minutes: checks the pipeline end to end

``--help`` lists the options: the tasks, the training budget per task model, the number of held-out
inputs and of samples per input, the samplers' steps, each training-free method's settings.

Data:

* MNIST (``sr4``, ``inpaint``, ``uncrop``, ``jpeg``): the MNIST test digits
  (``../shared/data/mnist-test``), images 0-7999 for training and 8000-9999 held out, padded to
  32x32, in [-1, 1] (``benchmarks/mnist_quality.load_mnist``).
* CIFAR-10 (``colorize``): the CIFAR-10 test split (``../shared/data/cifar10-test-jpg.tar.gz``),
  split as the ``cifar10`` feature network splits it (``metrics.feature_nets.heldout_split``, 20%
  of every class held out, seed 0): the task model trains on the 8,000 images the feature network
  trained on, and the inputs come from the 2,000 it held out.

Phases (each cached in ``OUT/cache/`` and skipped when a later run asks for the same settings, so
runs with disjoint ``--tasks`` may run side by side and a last run with every task gathers them):

1. **Models.** The unconditional prior of the training-free methods: ``--prior RUN`` (a scorekit
   run folder of an unconditional MNIST 32x32 model), otherwise one trained here for
   ``--prior-minutes`` with the settings of ``benchmarks/ddim_table.py`` (DDPM, linear schedule,
   T = 1000, eps-prediction, the ``tiny`` U-Net). For ``colorize``, an unconditional CIFAR-10
   model: ``--cifar-prior RUN``, otherwise one trained here with the same settings on colorize's
   training images for ``--cifar-prior-minutes``. One task model per task (SR3 / Palette:
   ``TrainConfig(task=...)``, the condition ``[y_up, mask]`` concatenated to ``x_t``), with the same
   settings, trained for ``--minutes`` of training time on one torch thread
   (``guidance.trained_run``; ``--minutes 8,colorize=25`` gives colorize its own budget). With
   ``--task-init prior`` (the default) each task model starts from the weights of the prior of its
   images (``TrainConfig.init_from``: the condition channels at zero, so that each starts as that
   prior's denoiser); ``--task-init scratch`` starts them at random.
2. **Inputs.** ``--num`` held-out images drawn at random (seed fixed), degraded by the task
   (``tasks.degrade_images``) with its default options: ``sr4`` block means 8x8, ``uncrop`` one
   half, ``jpeg`` qualities 5-30, ``colorize`` luma; ``inpaint`` with ``--inpaint-mask``, by default
   ``box`` (the centred square of half the side, Palette's centre mask, which on MNIST always hides
   part of the digit; the task model trains with the same masks). The draws come from a fixed seed.
3. **Restorations**, every one clamped to [-1, 1]:
   * classical baselines (``tasks.baselines``): bicubic upsampling (``sr4``), mean fill and nearest
     fill with the training images' mean (``inpaint``, ``uncrop``), the average colour moved to
     the observed luma (``colorize``), the decoded JPEG itself (``jpeg``);
   * the task model: ``--samples`` K samples per input (DDIM with ``--task-eta``, ``--task-steps``
     steps, x0_pred clipped to [-1, 1]; eta = 1 by default: with a briefly trained eps-network,
     deterministic DDIM leaves grey or speckled backgrounds that stochastic steps clean up, as
     ``benchmarks/ddim_table.py`` shows); scored as a single sample (the first) and as the mean of the K samples,
     an estimate of the posterior mean ``E[x_0 | y]``, the restoration that minimises the expected
     squared error;
   * training-free methods on the unconditional prior, one sample per input: ``sr4``: ILVR
     (factor 4, from ``A^+ y``), PiGDM and DPS with ``Downsample(4)``; ``inpaint`` and ``uncrop``:
     RePaint, PiGDM and DPS with the per-sample ``Mask``; ``jpeg``: SDEdit from the decoded JPEG at
     ``--sdedit-strength``; ``--moment-matching`` adds MomentMatching (up to ``cg_iterations + 1``
     backward passes a step: costly on a CPU) to the linear tasks. ILVR, RePaint and SDEdit run
     DDPM ancestral steps, PiGDM and DPS DDIM with ``--inverse-eta``, all with x0_pred clipped to
     [-1, 1] (for PiGDM and DPS the clipping acts on the corrected x0, outside the gradient);
   * the truth, scored like a restoration: the floor of the realism measure at this N.
4. **Scores** per restoration, each a mean over the inputs with its standard error:
   * PSNR and SSIM against the truth (``metrics.image_quality``; a per-image PSNR is capped at
     60 dB, where an exact restoration would make it infinite);
   * consistency: ``Degradation.consistency``, the RMS of ``A x_hat - y`` (for JPEG: of the
     restoration re-encoded at the input's quality against the decoded input);
   * sharpness: the energy of the discrete Laplacian of the restoration over that of the truth,
     per image (1: as much fine detail as the truth; a blur scores below 1);
   * FD: the Fréchet distance of the features of the ``--num`` restorations to those of the clean
     held-out images (MNIST: 2,000; CIFAR-10: 2,000), with the ``digits`` (MNIST) or ``cifar10``
     (CIFAR-10) feature network of ``metrics.feature_nets.trained_feature_network`` (cached in
     ``OUT/cache/features``), standard error by bootstrap (``evaluation.evaluate``). FD is biased
     upwards at small N; compare rows at the same N (the truth's row is the floor).

Writes ``TAG.json`` and ``TAG.md`` into ``--out`` (default ``benchmarks/results/``, TAG
``image_tasks``) and one figure per task, ``task-<task>.png``, into ``--figures`` (default
``docs/images/``): a few inputs per row with the input, the baselines, two samples and the mean of
the task model, the training-free methods and the truth. ``--quick`` writes
``image_tasks-quick.*`` and its figures into ``--out`` instead.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import hashlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import scorekit  # noqa: E402
from ddim_table import add_training_flags, diffusion_config, digest, load_cached, save_npz  # noqa: E402
from guidance import cpu_model, recorded_config, trained_run  # noqa: E402
from mnist_quality import (DEFAULT_DATA, NUM_TRAIN, header_lines, load_average, load_mnist, log,  # noqa: E402
                           write_report)
from scorekit.data import load_dataset  # noqa: E402
from scorekit.evaluation import evaluate, reference_statistics  # noqa: E402
from scorekit.metrics import trained_feature_network  # noqa: E402
from scorekit.metrics.feature_nets import heldout_split  # noqa: E402
from scorekit.metrics.image_quality import mean_and_stderr, psnr, ssim  # noqa: E402
from scorekit.metrics.inception import quantize_uint8  # noqa: E402
from scorekit.models import count_parameters  # noqa: E402
from scorekit.plotting import _new_figure, save_figure  # noqa: E402
from scorekit.tasks import Downsample, Mask, degrade_images  # noqa: E402
from scorekit.tasks import ilvr, inverse_solver, repaint, sdedit  # noqa: E402
from scorekit.tasks.baselines import average_colour, bicubic_upsample, mean_fill, nearest_fill  # noqa: E402
from scorekit.tasks.restore import load_task_model, sample_restorations  # noqa: E402
from scorekit.thresholding import clip_x0  # noqa: E402

Tensor = torch.Tensor

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.tar.gz"
TASKS = ("sr4", "inpaint", "uncrop", "jpeg", "colorize")
MNIST_TASKS = ("sr4", "inpaint", "uncrop", "jpeg")
SEEDS = {"prior": 0, "task_model": 10, "pick": 11, "degrade": 12, "sample": 13, "features": 0}
#: the training-free methods each task runs (on the MNIST prior; none for CIFAR-10)
FREE_METHODS = {"sr4": ("ilvr", "pigdm", "dps"), "inpaint": ("repaint", "pigdm", "dps"),
                "uncrop": ("repaint", "pigdm", "dps"), "jpeg": ("sdedit",), "colorize": ()}
BASELINES = {"sr4": ("bicubic",), "inpaint": ("mean_fill", "nearest_fill"), "uncrop": ("mean_fill", "nearest_fill"),
             "jpeg": ("jpeg_decoded",), "colorize": ("average_colour",)}
LABELS = {"bicubic": "bicubic", "mean_fill": "mean fill", "nearest_fill": "nearest fill",
          "jpeg_decoded": "decoded JPEG", "average_colour": "average colour",
          "task1": "task model, 1 sample", "task_mean": "task model, mean of K",
          "ilvr": "ILVR", "repaint": "RePaint", "pigdm": "PiGDM", "dps": "DPS", "moment_matching": "MomentMatching",
          "sdedit": "SDEdit", "truth": "truth"}
KIND = {"bicubic": "baseline", "mean_fill": "baseline", "nearest_fill": "baseline", "jpeg_decoded": "baseline",
        "average_colour": "baseline", "task1": "trained", "task_mean": "trained", "truth": "reference"}
INVERSE = ("pigdm", "dps", "moment_matching")


# --- data ---------------------------------------------------------------------------------------------------

@dataclasses.dataclass
class TaskData:
    """The images of one task: the training images (their spec and options for ``TrainConfig``),
    the held-out images and the feature network that scores realism."""

    name: str
    train_spec: str
    train_options: dict
    train_x: Tensor
    held_out: Tensor
    extractor: object
    reference: object


def mnist_data(args, cache: Path) -> TaskData:
    train_set, held_out = load_mnist(args.data)
    extractor = trained_feature_network("digits", train_set, cache / "features", seed=SEEDS["features"],
                                        epochs=args.feature_epochs, progress=False, log=log)
    reference = reference_statistics(held_out.x, extractor, data=f"{held_out.spec} {NUM_TRAIN}-",
                                     cache_dir=cache / "eval", log=log)
    return TaskData("MNIST", f"mnist:{args.data}", {"pad_to": 32, "start": 0, "stop": NUM_TRAIN}, train_set.x,
                    held_out.x, extractor, reference)


def cifar_data(args, cache: Path) -> TaskData:
    """CIFAR-10 split as its feature network splits it; the training part written as an ``.npz``
    of uint8 pixels for ``TrainConfig(data="npz:...")``."""
    data = load_dataset(f"folder:{args.cifar}", progress=False)
    extractor = trained_feature_network("cifar10", data, cache / "features", seed=SEEDS["features"],
                                        epochs=args.feature_epochs, progress=False, log=log)
    train_idx, held_idx = heldout_split(data.y, 0.2, torch.Generator().manual_seed(SEEDS["features"]))
    train_x, held_out = data.x[train_idx], data.x[held_idx]
    path = cache / f"cifar10-train-{digest(train_idx.tolist())}.npz"
    if not path.is_file():
        save_npz(path, {"split": "train"}, x=quantize_uint8(train_x).numpy(), y=data.y[train_idx].numpy())
    reference = reference_statistics(held_out, extractor, data=f"{data.spec} held out", cache_dir=cache / "eval",
                                     log=log)
    return TaskData("CIFAR-10", f"npz:{path}", {}, train_x, held_out, extractor, reference)


def tensor_digest(*tensors: Tensor) -> str:
    """The first 12 hex digits of the SHA-256 of the tensors' bytes."""
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:12]


def pick_inputs(held_out: Tensor, num: int) -> Tensor:
    """``num`` held-out images in a random order drawn from a fixed seed."""
    if num > held_out.shape[0]:
        raise SystemExit(f"--num {num} is more than the {held_out.shape[0]} held-out images")
    idx = torch.randperm(held_out.shape[0], generator=torch.Generator().manual_seed(SEEDS["pick"]))[:num]
    return held_out[idx].clone()


# --- models -------------------------------------------------------------------------------------------------

def task_options(task: str, args) -> dict:
    return {"kind": args.inpaint_mask} if task == "inpaint" else {}


def task_minutes(args, task: str) -> float:
    """The training budget of ``task``'s model: ``--minutes``' per-task entry or its default."""
    return args.minutes.get(task, args.minutes["default"])


def task_init(args, task: str, prior_ids: dict) -> str | None:
    """The checkpoint a task model starts from with ``--task-init prior``: the unconditional model
    of the task's images (``prior_ids["mnist"]`` for the MNIST tasks, ``prior_ids["cifar"]`` for
    ``colorize``); otherwise ``None`` (a random initialisation)."""
    prior_id = prior_ids.get("cifar" if task == "colorize" else "mnist")
    if args.task_init == "prior" and prior_id is not None:
        return prior_id["checkpoint"]
    return None


def task_config(args, task: str, data: TaskData, init_from: str | None = None):
    """The prior's settings (``ddim_table.diffusion_config``) with the task and its data, started
    from ``init_from`` (``TrainConfig.init_from``) if given."""
    return dataclasses.replace(diffusion_config(args), data=data.train_spec, data_options=dict(data.train_options),
                               task=task, task_options=task_options(task, args), seed=SEEDS["task_model"],
                               init_from=init_from)


def prior_model(args, cache: Path) -> tuple[object, dict]:
    """The unconditional MNIST prior: ``--prior`` or one trained for ``--prior-minutes``."""
    config = dataclasses.replace(diffusion_config(args), seed=SEEDS["prior"])
    return unconditional_run(args.prior, config, cache / f"image-tasks-prior-{args.prior_minutes:g}min",
                             args.prior_minutes, (1, 32, 32), "--prior", "MNIST")


def cifar_prior_model(args, cache: Path, data: TaskData) -> dict:
    """The unconditional CIFAR-10 model ``colorize`` starts from: ``--cifar-prior`` or one trained
    here on the task model's training images for ``--cifar-prior-minutes`` with the task models'
    settings. Only its record is returned: no training-free method runs on CIFAR-10."""
    config = dataclasses.replace(diffusion_config(args), data=data.train_spec, data_options=dict(data.train_options),
                                 seed=SEEDS["prior"])
    return unconditional_run(args.cifar_prior, config,
                             cache / f"image-tasks-cifar-prior-{args.cifar_prior_minutes:g}min",
                             args.cifar_prior_minutes, (3, 32, 32), "--cifar-prior", "CIFAR-10")[1]


def unconditional_run(given: Path | None, config, run_dir: Path, minutes: float, shape: tuple, flag: str,
                      what: str) -> tuple[object, dict]:
    """The denoiser of an unconditional run and its record: the run ``given`` (the value of
    ``flag``; its ``budget.json``, if any, says how it was trained), otherwise ``config`` trained
    (or reused) in ``run_dir`` for ``minutes`` (``guidance.trained_run``). Refused unless it is an
    unconditional model of ``shape``."""
    if given is not None:
        run_dir, info = Path(given), {"run": str(given), "trained_here": False}
        budget = run_dir / "budget.json"
        if budget.is_file():
            saved = json.loads(budget.read_text(encoding="utf-8"))
            info.update(minutes=saved.get("minutes"), **saved.get("training", {}))
    else:
        info = {"run": str(run_dir), "trained_here": True, "minutes": minutes,
                **trained_run(config, run_dir, minutes, f"{what} prior")}
    denoiser = scorekit.load_denoiser(run_dir)
    ckpt = denoiser.checkpoint
    if ckpt.task is not None or tuple(ckpt.sample_shape) != shape:
        raise SystemExit(f"{flag} must be an unconditional {what} {shape[1]}x{shape[2]} run; {info['run']} has task "
                         f"{ckpt.task} and sample shape {tuple(ckpt.sample_shape)}")
    info.update(parameters=count_parameters(ckpt.ema_net), checkpoint=str(ckpt.path),
                config={k: ckpt.config.get("train", {}).get(k) for k in ("process", "process_options", "prediction")})
    return denoiser, info


def prior_id(info: dict) -> dict:
    """What a cached restoration or task model keys a prior on: its checkpoint and steps."""
    return {"checkpoint": info["checkpoint"], "steps": info.get("steps")}


# --- restorations -------------------------------------------------------------------------------------------

def baseline(name: str, degraded, data: TaskData) -> Tensor:
    mean_image = data.train_x.mean(0, keepdim=True)
    if name == "bicubic":
        return bicubic_upsample(degraded.measurement, 4)
    if name == "mean_fill":
        return mean_fill(degraded.measurement, degraded.mask, mean_image)
    if name == "nearest_fill":
        return nearest_fill(degraded.measurement, degraded.mask)
    if name == "average_colour":
        return average_colour(degraded.measurement, mean_image)
    if name == "jpeg_decoded":
        return degraded.measurement.clone()
    raise ValueError(name)


def operator_of(task: str, degraded):
    return Downsample(4) if task == "sr4" else Mask(degraded.mask)


def training_free(name: str, task: str, prior, degraded, args, generator: torch.Generator) -> Tensor:
    """One restoration per input with the unconditional ``prior`` (see the module docstring)."""
    clipped = clip_x0(prior, 1.0)
    if name == "ilvr":
        return ilvr(clipped, Downsample(4).pinv(degraded.measurement), factor=4, sampler="ddpm",
                    num_steps=args.free_steps, generator=generator)
    if name == "repaint":
        return repaint(clipped, degraded.measurement, mask=degraded.mask, resamplings=args.repaint_resamplings,
                       jump_length=args.repaint_jump, sampler="ddpm", num_steps=args.repaint_steps,
                       generator=generator)
    if name == "sdedit":
        return sdedit(clipped, degraded.measurement, strength=args.sdedit_strength, sampler="ddpm",
                      num_steps=args.sdedit_steps, generator=generator)
    if name in INVERSE:
        options = {"dps": {"zeta": args.dps_zeta}, "pigdm": {}, "moment_matching": {}}[name]
        solver = inverse_solver(prior, operator_of(task, degraded), degraded.measurement, method=name, **options)
        x_T = prior.process.prior_sample(degraded.image.shape, generator=generator)
        return scorekit.sample(solver, x_T, sampler="ddim", num_steps=args.free_steps, eta=args.inverse_eta,
                               clip=1.0, generator=generator)
    raise ValueError(name)


def in_batches(fn, degraded, batch: int) -> Tensor:
    return torch.cat([fn(degraded[lo:lo + batch]) for lo in range(0, len(degraded), batch)])


def method_settings(name: str, args) -> dict:
    """What changes a method's restorations (part of its cache key)."""
    if name == "task":
        return {"samples": args.samples, "steps": args.task_steps, "sampler": "ddim", "eta": args.task_eta,
                "clip": 1.0}
    if name == "ilvr":
        return {"factor": 4, "steps": args.free_steps, "sampler": "ddpm", "clip": 1.0}
    if name == "repaint":
        return {"steps": args.repaint_steps, "resamplings": args.repaint_resamplings, "jump": args.repaint_jump,
                "sampler": "ddpm", "clip": 1.0}
    if name == "sdedit":
        return {"strength": args.sdedit_strength, "steps": args.sdedit_steps, "sampler": "ddpm", "clip": 1.0}
    if name in INVERSE:
        return {"steps": args.free_steps, "sampler": "ddim", "eta": args.inverse_eta, "clip": 1.0,
                **({"zeta": args.dps_zeta} if name == "dps" else {})}
    return {}


def cached_restoration(path: Path, want: dict, make, what: str) -> tuple[Tensor, dict]:
    """``make()`` -> ``(x, info)``, or what an earlier run with the settings ``want`` saved at ``path``."""
    cached = load_cached(path, want)
    if cached is not None:
        log(f"{what}: reusing {path.name}")
        return torch.from_numpy(cached["x"]), {**json.loads(str(cached["info"])), "reused": True}
    log(what)
    t0 = time.perf_counter()
    x = make().detach().float()
    info = {"seconds": time.perf_counter() - t0, "load": load_average()}
    save_npz(path, want, x=x.numpy(), info=np.array(json.dumps(info)))
    return x, {**info, "reused": False}


# --- scores -------------------------------------------------------------------------------------------------

#: per-image PSNR is capped here (an image restored exactly has an infinite PSNR)
PSNR_CAP = 60.0
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def laplacian_energy(x: Tensor) -> Tensor:
    """``(N,)`` mean square of the discrete Laplacian of each image (per channel, where it fits)."""
    C = x.shape[1]
    kernel = LAPLACIAN.to(x).view(1, 1, 3, 3).repeat(C, 1, 1, 1)
    return F.conv2d(x, kernel, groups=C).pow(2).flatten(1).mean(1)


def mse(m) -> dict:
    mean, err = mean_and_stderr(m)
    return {"value": mean, "stderr": err}


def score(x: Tensor, truth: Tensor, degraded, degradation, data: TaskData, args) -> dict:
    x = x.clamp(-1, 1)
    report = evaluate(x, data.reference, data.extractor, metrics="fid", fid_bootstrap=args.fid_bootstrap, seed=0)
    fd = report.scores["fid"]
    same = bool(torch.equal(x, truth))
    return {"psnr": None if same else mse(psnr(x, truth).clamp_max(PSNR_CAP)), "ssim": mse(ssim(x, truth)),
            "consistency": mse(degradation.consistency(x, degraded)),
            "sharpness": mse(laplacian_energy(x) / laplacian_energy(truth)),
            "fd": {"value": fd.value, "stderr": fd.stderr}}


# --- one task -----------------------------------------------------------------------------------------------

def run_task(task: str, args, data: TaskData, prior, prior_ids: dict, cache: Path) -> tuple[dict, dict]:
    """Train (or reuse) the task model, restore the inputs every way, score them. Returns the
    task's record and the images of the figure."""
    folder = cache / "image-tasks"
    prior_id = prior_ids.get("mnist")
    minutes, init_from = task_minutes(args, task), task_init(args, task, prior_ids)
    config = task_config(args, task, data, init_from)
    run_dir = cache / f"image-task-{task}-{minutes:g}min{'-from-prior' if init_from else ''}"
    training = {**trained_run(config, run_dir, minutes, f"{task} task model"), "minutes": minutes,
                "init_from": init_from}
    model = load_task_model(run_dir)
    degradation = model.degradation
    truth = pick_inputs(data.held_out, args.num)
    degraded = degrade_images(truth, degradation, generator=torch.Generator().manual_seed(SEEDS["degrade"]))
    inputs_id = {"task": task, "options": task_options(task, args), "data": data.name, "num": args.num,
                 "seeds": [SEEDS["pick"], SEEDS["degrade"]],
                 "content": tensor_digest(truth, degraded.measurement, degraded.mask)}
    rows, images, infos = {}, {}, {}

    for name in BASELINES[task]:
        rows[name] = baseline(name, degraded, data).clamp(-1, 1)

    task_id = {"config": recorded_config(run_dir), "minutes": minutes, "steps": training["steps"]}
    want = {"inputs": inputs_id, "model": task_id, "method": "task", **method_settings("task", args),
            "seed": SEEDS["sample"]}
    def draw():
        out = sample_restorations(model, degraded, num_samples=args.samples, sampler="ddim", steps=args.task_steps,
                                  generator=torch.Generator().manual_seed(SEEDS["sample"]), batch_size=args.batch,
                                  eta=args.task_eta, clip=1.0)
        return out.x.reshape(len(degraded), args.samples, *model.sample_shape)

    samples, infos["task"] = cached_restoration(folder / f"{task}-task-{digest(want)}.npz", want, draw,
                                                f"{task}: task model, {args.samples} samples of {args.num} inputs")
    samples = samples.clamp(-1, 1)
    rows["task1"] = samples[:, 0]
    rows["task_mean"] = samples.mean(1)
    images["task2"] = samples[:, 1] if args.samples > 1 else samples[:, 0]

    methods = [m for m in FREE_METHODS[task] if m in args.free_methods]
    if args.moment_matching and task in ("sr4", "inpaint", "uncrop"):
        methods.append("moment_matching")
    for name in methods:
        want = {"inputs": inputs_id, "prior": prior_id, "method": name, **method_settings(name, args),
                "seed": SEEDS["sample"]}
        g = torch.Generator().manual_seed(SEEDS["sample"])
        x, infos[name] = cached_restoration(
            folder / f"{task}-{name}-{digest(want)}.npz", want,
            lambda: in_batches(lambda d: training_free(name, task, prior, d, args, g), degraded, args.batch),
            f"{task}: {LABELS[name]} on {args.num} inputs")
        rows[name] = x.clamp(-1, 1)
    rows["truth"] = truth

    scores = {}
    for name, x in rows.items():
        scores[name] = score(x, truth, degraded, degradation, data, args)
        s = scores[name]
        log(f"{task} {LABELS[name]}: PSNR {fmt(s['psnr'], 2)}, SSIM {fmt(s['ssim'], 3)}, consistency "
            f"{fmt(s['consistency'], 4)}, sharpness {fmt(s['sharpness'], 2)}, FD {fmt(s['fd'], 1)}")
    record = {"task": task, "data": data.name, "num": args.num, "training": training,
              "run": str(run_dir), "feature_network": {k: data.extractor.info.get(k) for k in
                                                       ("kind", "heldout_accuracy", "epochs", "num_train", "key")},
              "reference_images": int(data.held_out.shape[0]),
              "rows": [{"method": name, "label": LABELS[name], "kind": KIND.get(name, "training-free"),
                        **scores[name], **({"info": infos[name]} if name in infos else {}),
                        **({"info": infos["task"]} if name in ("task1", "task_mean") else {})}
                       for name in rows]}
    images.update(rows)
    images["input"] = shown_input(task, degraded)
    return record, images


def shown_input(task: str, degraded) -> Tensor:
    """The input as a figure shows it: the low-resolution image at full size (each pixel a block),
    the known pixels with the unknown ones grey, the grey image, the decoded JPEG."""
    if task == "sr4":
        return Downsample(4).pinv(degraded.measurement)
    if task in ("inpaint", "uncrop"):
        return torch.where(degraded.mask > 0.5, degraded.measurement, torch.zeros_like(degraded.measurement))
    return degraded.image


# --- figure and report --------------------------------------------------------------------------------------

def task_figure(task: str, images: dict, columns: list[str], rows: int, path) -> str:
    """``rows`` inputs, one per row; the columns are the inputs, restorations and truths."""
    tiles = [images[c][:rows] for c in columns]
    n, C, h, w = tiles[0].shape
    pad = 2
    canvas = np.ones((n * (h + pad) - pad, len(columns) * (w + pad) - pad, 3))
    for j, tile in enumerate(tiles):
        for i in range(n):
            img = ((tile[i].clamp(-1, 1) + 1) / 2).numpy().transpose(1, 2, 0)
            canvas[i * (h + pad):i * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = img
    fig = _new_figure((1.05 * len(columns) + 0.3, 1.05 * n + 0.6))
    ax = fig.subplots()
    ax.imshow(canvas, interpolation="nearest")
    names = {"input": "input", "task2": "task model, 2nd", "task1": "task model, 1st", **LABELS}
    ax.set_xticks([j * (w + pad) + w / 2 for j in range(len(columns))], [names[c].replace("task model, ", "task ")
                                                                          for c in columns], fontsize=7)
    ax.xaxis.tick_top()
    ax.set_yticks([])
    ax.tick_params(length=0)
    for side in ax.spines.values():
        side.set_visible(False)
    return save_figure(fig, path, dpi=130)


def figure_columns(task: str, images: dict) -> list[str]:
    free = [m for m in ("ilvr", "repaint", "pigdm", "dps", "moment_matching", "sdedit") if m in images]
    return ["input", *BASELINES[task], "task1", "task2", "task_mean", *free, "truth"]


def fmt(m: dict | None, digits: int) -> str:
    if not m or m.get("value") is None:
        return "-"
    err = m.get("stderr")
    return f"{m['value']:.{digits}f}" + (f" ± {err:.{digits}f}" if err is not None and err == err else "")


def markdown(report: dict) -> str:
    s = report["settings"]
    lines = header_lines(report, "Image tasks: restorations against classical baselines")
    p, cp = report["prior"], report.get("cifar_prior")
    lines += [f"Task models: the `{s['model']}` U-Net with the condition's channels, DDPM linear schedule T = 1000, "
              f"eps-prediction, lr {s['lr']:g}, batch {s['batch_size']}, EMA {s['ema_decay']}; trained on one torch "
              f"thread for the minutes given per task below. Sampling: K = {s['samples']} DDIM samples per input, "
              f"eta = {s['task_eta']:g}, {s['task_steps']} steps, x0_pred clipped to [-1, 1].", "",
              f"Prior of the training-free methods: `{p['run']}`"
              + (f" ({p['steps']} steps in {p['train_seconds']:.0f} s)" if p.get("steps") else "")
              + f", {p['parameters']:,} parameters."
              + ("" if not cp else f" Prior the colorize model starts from: `{cp['run']}`"
                 + (f" ({cp['steps']} steps in {cp['train_seconds']:.0f} s)" if cp.get("steps") else "")
                 + f", {cp['parameters']:,} parameters."), "",
              f"Training-free settings: ILVR, PiGDM, DPS {s['free_steps']} steps (ILVR DDPM; PiGDM and DPS DDIM "
              f"eta = {s['inverse_eta']:g}; DPS zeta = {s['dps_zeta']:g}); RePaint {s['repaint_steps']} steps, "
              f"r = {s['repaint_resamplings']}, j = {s['repaint_jump']}; SDEdit strength {s['sdedit_strength']:g}, "
              f"{s['sdedit_steps']} steps.", "",
              "Columns: PSNR (dB) and SSIM against the truth; consistency = RMS of A(x_hat) - y; sharpness = "
              "Laplacian energy over the truth's (1 = as much detail as the truth); FD = Fréchet distance of the "
              "evaluation features to the clean held-out images (the truth's row: the floor at this N). "
              "Means ± standard errors over the inputs (FD: bootstrap).", ""]
    for t in report["tasks"]:
        tr, fn = t["training"], t["feature_network"]
        lines += [f"## {t['task']} ({t['data']}, {t['num']} held-out inputs)", "",
                  f"Task model: {tr.get('minutes', s['minutes'])} min "
                  f"{'from the prior' if tr.get('init_from') else 'from a random start'}, "
                  f"{tr['steps']} steps in {tr['train_seconds']:.0f} s, final loss {tr['final_loss']:.4f}"
                  f"{' (an earlier run with the same settings)' if tr.get('reused') else ''}. Feature network: "
                  f"`{fn['kind']}`, held-out accuracy {100 * fn['heldout_accuracy']:.1f}%.",
                  "", "| method | kind | PSNR | SSIM | consistency | sharpness | FD | seconds |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in t["rows"]:
            sec = r.get("info", {}).get("seconds")
            lines.append(f"| {r['label']} | {r['kind']} | {fmt(r['psnr'], 2)} | {fmt(r['ssim'], 3)} | "
                         f"{fmt(r['consistency'], 4)} | {fmt(r['sharpness'], 2)} | {fmt(r['fd'], 1)} | "
                         f"{'-' if sec is None else f'{sec:.0f}'} |")
        lines.append("")
    lines += ["Timings (s): " + ", ".join(f"{k} {v:.0f}" for k, v in report["timings"].items()), "",
              "Figures: " + ", ".join(f"`{v}`" for v in report["figures"].values()), "",
              "Settings:", "", "```json", json.dumps(s), "```", ""]
    return "\n".join(lines) + "\n"


# --- main ---------------------------------------------------------------------------------------------------

def name_list(choices):
    def parse(text: str) -> list[str]:
        names = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in names if v not in choices]
        if bad or not names:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)}; got {text!r}")
        return names
    return parse


def minutes_spec(text: str) -> dict:
    """``"8"`` or ``"8,colorize=20"``: ``{"default": 8.0, "colorize": 20.0}``."""
    spec = {}
    for part in (p.strip() for p in text.split(",") if p.strip()):
        task, _, value = part.rpartition("=")
        try:
            minutes = float(value)
        except ValueError:
            minutes = -1.0
        if minutes <= 0 or (task and task not in TASKS) or (task or "default") in spec:
            raise argparse.ArgumentTypeError(f"give minutes > 0, then TASK=MINUTES for tasks among {', '.join(TASKS)}; "
                                             f"got {text!r}")
        spec[task or "default"] = minutes
    if "default" not in spec:
        raise argparse.ArgumentTypeError(f"start with the minutes of every task, e.g. 8,colorize=20; got {text!r}")
    return spec


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="a pipeline check: 0.3 min per model, 8 inputs, 2 samples, 10 steps, 1-epoch feature "
                             "networks; outputs image_tasks-quick.* and its figures in --out")
    parser.add_argument("--tasks", type=name_list(TASKS), default=list(TASKS),
                        help=f"comma-separated tasks from {', '.join(TASKS)}")
    parser.add_argument("--prior", type=Path, default=None,
                        help="run folder of an unconditional MNIST 32x32 model (default: train one)")
    parser.add_argument("--prior-minutes", type=float, default=None, help="budget of the prior trained here "
                        "(default --minutes)")
    parser.add_argument("--cifar-prior", type=Path, default=None,
                        help="run folder of an unconditional CIFAR-10 32x32 model for colorize to start from "
                             "(default: train one on colorize's training images)")
    parser.add_argument("--cifar-prior-minutes", type=float, default=60.0,
                        help="budget of the CIFAR-10 prior trained here")
    parser.add_argument("--minutes", type=minutes_spec, default=minutes_spec("8,colorize=25"),
                        help="training budget of each task model in minutes: one number for every task, "
                             "then TASK=MINUTES for the exceptions")
    parser.add_argument("--task-init", choices=("prior", "scratch"), default="prior",
                        help="start each task model from the unconditional model of its images (TrainConfig."
                             "init_from; the condition channels at zero): the MNIST prior, or the CIFAR-10 prior "
                             "for colorize; or at random")
    parser.add_argument("--num", type=int, default=200, help="held-out inputs per task")
    parser.add_argument("--samples", type=int, default=4, help="K, task-model samples per input")
    parser.add_argument("--task-steps", type=int, default=50, help="DDIM steps of the task models")
    parser.add_argument("--task-eta", type=float, default=1.0, help="DDIM's eta for the task models")
    parser.add_argument("--inpaint-mask", default="box", choices=("box", "boxes", "strokes", "mixed"),
                        help="the inpaint task's masks (training and inputs); box: the centred square of half the "
                             "side")
    parser.add_argument("--free-methods", type=name_list(("ilvr", "repaint", "pigdm", "dps", "sdedit")),
                        default=["ilvr", "repaint", "pigdm", "dps", "sdedit"], help="training-free methods to run")
    parser.add_argument("--free-steps", type=int, default=100, help="steps of ILVR, PiGDM, DPS")
    parser.add_argument("--inverse-eta", type=float, default=1.0, help="DDIM's eta for PiGDM and DPS")
    parser.add_argument("--dps-zeta", type=float, default=100.0,
                        help="DPS's step size (score units; chosen on 12 training digits)")
    parser.add_argument("--repaint-steps", type=int, default=50, help="RePaint's steps")
    parser.add_argument("--repaint-resamplings", type=int, default=4, help="RePaint's r")
    parser.add_argument("--repaint-jump", type=int, default=5, help="RePaint's j")
    parser.add_argument("--sdedit-strength", type=float, default=0.3, help="SDEdit's t_0 as a fraction")
    parser.add_argument("--sdedit-steps", type=int, default=50, help="SDEdit's steps from t_0")
    parser.add_argument("--moment-matching", action="store_true", help="also MomentMatching on the linear tasks")
    parser.add_argument("--batch", type=int, default=100, help="images per sampling batch")
    parser.add_argument("--fid-bootstrap", type=int, default=20, help="bootstrap replicates of FD's standard error")
    parser.add_argument("--feature-epochs", type=int, default=None, help="feature networks' epochs (default: "
                        "their kind's)")
    parser.add_argument("--figure-rows", type=int, default=6, help="inputs per figure")
    add_training_flags(parser)
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of the MNIST test IDX files")
    parser.add_argument("--cifar", type=Path, default=DEFAULT_CIFAR, help="the CIFAR-10 test split (image folder "
                        "or archive)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results", help="output folder")
    parser.add_argument("--figures", type=Path, default=ROOT / "docs" / "images", help="folder of the figures")
    parser.add_argument("--tag", default=None, help="file name stem of the outputs (default image_tasks[-quick])")
    args = parser.parse_args(argv)
    if args.quick:
        args.minutes, args.num, args.samples, args.task_steps = {"default": 0.3}, 8, 2, 10
        args.cifar_prior_minutes = args.minutes["default"]
        args.free_steps, args.repaint_steps, args.repaint_resamplings, args.repaint_jump = 10, 10, 2, 2
        args.sdedit_steps, args.fid_bootstrap, args.feature_epochs, args.figure_rows = 10, 2, 1, 4
        args.figures = args.out
    if args.prior_minutes is None:
        args.prior_minutes = args.minutes["default"]
    args.tag = args.tag or ("image_tasks-quick" if args.quick else "image_tasks")
    if args.num < 2 or args.samples < 1:
        parser.error("--num must be at least 2 and --samples at least 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(1)
    out, cache = args.out, args.out / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    load = {"at the start": load_average()}
    timings = {}
    log(f"{args.tag}: tasks {', '.join(args.tasks)}; task models "
        f"{', '.join(f'{t} {task_minutes(args, t):g} min' for t in args.tasks)}; load average "
        f"{load['at the start']} on {os.cpu_count()} cores")
    prior, prior_info = (None, None)
    if any(t in MNIST_TASKS for t in args.tasks):
        t0 = time.perf_counter()
        prior, prior_info = prior_model(args, cache)
        timings["prior"] = time.perf_counter() - t0
    prior_ids, cifar_prior_info = ({} if prior is None else {"mnist": prior_id(prior_info)}), None
    datasets, records, figures = {}, [], {}
    args.figures.mkdir(parents=True, exist_ok=True)
    for task in args.tasks:
        t0 = time.perf_counter()
        which = "cifar" if task == "colorize" else "mnist"
        if which not in datasets:
            datasets[which] = (cifar_data if which == "cifar" else mnist_data)(args, cache)
        if task == "colorize" and args.task_init == "prior" and cifar_prior_info is None:
            t1 = time.perf_counter()
            cifar_prior_info = cifar_prior_model(args, cache, datasets[which])
            prior_ids["cifar"] = prior_id(cifar_prior_info)
            timings["cifar prior"] = time.perf_counter() - t1
        record, images = run_task(task, args, datasets[which], prior, prior_ids, cache)
        records.append(record)
        figures[task] = os.path.relpath(task_figure(task, images, figure_columns(task, images), args.figure_rows,
                                                    args.figures / f"task-{task}.png"), ROOT)
        timings[task] = time.perf_counter() - t0
        load[f"after {task}"] = load_average()

    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    report = {"command": " ".join([os.path.relpath(sys.argv[0], ROOT)] + (argv if argv is not None else sys.argv[1:])),
              "date": datetime.datetime.now().isoformat(timespec="seconds"),
              "machine": f"{cpu_model()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
                         f"torch {torch.__version__}; one torch thread",
              "settings": settings, "prior": prior_info or {"run": "-", "parameters": 0},
              **({"cifar_prior": cifar_prior_info} if cifar_prior_info else {}), "tasks": records,
              "load": load, "timings": timings, "figures": figures}
    write_report(out, args.tag, report, markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
