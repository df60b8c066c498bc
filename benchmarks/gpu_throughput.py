"""Training and sampling throughput of scorekit's U-Nets on a GPU, with FLOPs and MFU, in one run.

    PYTHONPATH=src python benchmarks/gpu_throughput.py --measure-peak            # an NVIDIA GPU
    PYTHONPATH=src python benchmarks/gpu_throughput.py --quick                   # CPU smoke test, < 1 minute

What is timed (every row gives images per second, TFLOP/s and MFU):

* **train step** -- forward, MSE against a fixed target, backward and the fused AdamW step of
  ``scorekit.train.make_optimizer``, on a fixed batch of 32x32x3 images already on the device
  with integer DDPM times, for each U-Net preset (``base`` is the 35.7 M DDPM CIFAR-10 network).
  Four variants: eager or ``torch.compile``d network, float32 (TF32 matmuls and convolutions on
  CUDA) or bfloat16 autocast around the forward pass and the loss. Beside them, diffusers'
  ``UNet2DModel`` of the same layout and parameter count (``unet_throughput.diffusers_twin``, with
  the preset's dropout) in the same four variants, when diffusers imports.
* **loop** -- the whole ``scorekit.train.train`` of a ``TrainConfig`` with the same preset, batch
  and precision (an unconditional network, as in the step) on the CIFAR-10 test images
  (``folder:`` the archive in ``../shared/data``) or a synthetic ``.npz``, with logging,
  checkpoints and the final sample grid at their defaults. *Steady* images/s come from the loop's
  own ``metrics.jsonl`` after the warm-up steps (the loop leaves checkpoint and sample-grid time
  out of it); *end to end* is steps x batch over the wall time of the whole call (start-up, data,
  compilation, checkpoints, the final grid).
* **forward** -- the compiled forward pass alone (``torch.no_grad``, as sampling runs) at the
  sampling batch, float32 and bfloat16 autocast: the ceiling of sampling.
* **sampling** -- ``scorekit.sample_batches`` with DDIM 50 steps and DPM-Solver++(2M) 20 steps
  from random-weight networks (the cost does not depend on the weights) at a large batch:
  samples/s and network evaluations (NFE) x images per second, against the compiled forward pass.
  When ``scorekit.sample`` takes ``compile=`` / ``precision=`` they are used; otherwise the
  benchmark passes ``torch.compile(net)`` and a ``compute_dtype="bfloat16"`` copy of the network.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` on one eager float32 forward
pass (matmuls, convolutions and attention; normalisations and activations are not counted); a
training step is counted as 3x the forward (backward = 2x forward), the usual convention, and
the count of an actual forward + backward is recorded beside it. MFU = counted FLOPs / time /
peak, against ``--peak-tflops`` (default: the dense bfloat16 peak of an H100 SXM or H200, 989 TFLOP/s) for every
row, float32 rows included, and with ``--measure-peak`` also against the rate of a large
bfloat16 matmul timed in the same run.

Timing: warm-up iterations first (their time, minus as many steady iterations, is reported as
compile time for compiled rows), then the median over ``--repeats`` repeats of ``--iters``
iterations each, with ``torch.cuda.synchronize`` around every timed region on CUDA. On CUDA the
benchmark sets TF32 for float32 matmuls and ``cudnn.benchmark`` for every row, the loop included.

The options scorekit's training loop and sampler offer are detected from their signatures
(``TrainConfig``'s fields, ``scorekit.sample``'s parameters), used where present, and listed
in the report. ``--quick`` runs the tiny preset at batch 4 with one thread and 2 repeats, the
dynamo-only ``eager`` compile backend (inductor takes minutes on a CPU), the scorekit rows
compiled and diffusers' eager only: a smoke test of every code path, not a measurement.

Writes gpu_throughput.json and gpu_throughput.md (``-quick`` with --quick) to ``--out``
(default benchmarks/results/), after every row, so that a run cut short keeps what it measured.
Per preset the order is: scorekit's four step variants and diffusers' eager ones, the loop,
sampling, then diffusers' compiled steps (slowest to compile). ``--budget S`` skips what has not
started after S seconds, and a part that fails becomes a note in the report; the rest still runs.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import inspect
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import scorekit
from scorekit.models import build_model, count_parameters, preset
from scorekit.train import TrainConfig, train
from scorekit.train import config as train_config
from scorekit.train.trainer import make_optimizer

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_quality import header_lines, load_average, log, write_report  # noqa: E402

try:
    from unet_throughput import diffusers_twin  # noqa: E402  (imports diffusers)
    DIFFUSERS_MISSING = None
except Exception as err:                          # not installed, or does not import beside this torch
    diffusers_twin, DIFFUSERS_MISSING = None, f"{type(err).__name__}: {err}"

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10-test-jpg.tar.gz"
#: NVIDIA's dense (no sparsity) bfloat16 tensor-core peak of an H100 SXM or an H200, TFLOP/s
HOPPER_BF16_TFLOPS = 989.0
CHANNELS = 3
SAMPLERS = (("ddim", 50), ("dpmpp_2m", 20))
#: the issue's goals: the loop against its own compiled step, scorekit's compiled bf16 step against
#: diffusers' eager bf16 step, sampling NFE throughput against the compiled forward pass
GOALS = {"loop": 0.9, "compiled_step": 1.7, "sampling": 0.9}
#: training-step variants ``(library, compiled, bf16)``: these first, then the preset's loop and
#: sampling, then LATE_VARIANTS (diffusers compiled, slow to compile; left out by --quick), so that
#: a run cut short by --budget or a timeout keeps what the goals need
FIRST_VARIANTS = [("scorekit", False, False), ("scorekit", False, True), ("scorekit", True, True),
                  ("scorekit", True, False), ("diffusers", False, True), ("diffusers", False, False)]
LATE_VARIANTS = [("diffusers", True, True), ("diffusers", True, False)]


# --- set-up ---------------------------------------------------------------------------------------------

def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, *, warmup: int, repeats: int, iters: int) -> dict:
    """Run ``fn`` ``warmup`` times, then ``repeats`` x ``iters`` times; seconds per call (median of
    the repeats), its range, and the warm-up's wall time."""
    sync(device)
    t0 = time.perf_counter()
    for _ in range(warmup):
        fn()
    sync(device)
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(iters):
            fn()
        sync(device)
        times.append((time.perf_counter() - t0) / iters)
    per = statistics.median(times)
    return dict(seconds=per, min_s=min(times), max_s=max(times), warmup_s=warm,
                compile_s=max(warm - warmup * per, 0.0), repeats=repeats, iters=iters)


def precision_name(bf16: bool, device: torch.device) -> str:
    return "bf16" if bf16 else ("fp32-tf32" if device.type == "cuda" else "fp32")


def autocast(device: torch.device, bf16: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()


def library_features() -> dict:
    """Which of the training loop's and the sampler's throughput options this scorekit has."""
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    params = inspect.signature(scorekit.sample).parameters
    return {"train": {"compile": "compile" in defaults, "mixed_precision_auto": "auto" in train_config.MIXED_PRECISION,
                      "channels_last": "channels_last" in defaults, "deterministic": "deterministic" in defaults,
                      "defaults": {k: defaults[k] for k in ("compile", "channels_last", "deterministic",
                                                            "mixed_precision") if k in defaults}},
            "sample": {"compile": "compile" in params, "precision": "precision" in params,
                       "defaults": {k: params[k].default for k in ("compile", "precision") if k in params}}}


def compile_flag(default):
    """The value that turns compilation on for an option whose default is ``default``
    (a bool, or a string such as ``"auto"``)."""
    return "yes" if isinstance(default, str) else True


def machine(device: torch.device) -> dict:
    info = dict(torch=torch.__version__, python=platform.python_version(), device=str(device),
                threads=torch.get_num_threads(), cpu=platform.processor() or platform.machine(),
                cores=os.cpu_count())
    with contextlib.suppress(OSError):
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2 ** 30, 1), cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version(), capability=f"{p.major}.{p.minor}",
                    driver_note="TF32 on for float32 matmuls and convolutions; cudnn.benchmark on")
    info["diffusers"] = "not importable" if DIFFUSERS_MISSING else __import__("diffusers").__version__
    return info


def measure_peak(device: torch.device, quick: bool) -> dict:
    """TFLOP/s of a large square matmul in bfloat16 (and float32 with TF32 on CUDA)."""
    n = 512 if quick or device.type != "cuda" else 8192
    out = {"matmul_size": n}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32-tf32" if device.type == "cuda" else "fp32", torch.float32)):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(n, n, generator=g).to(device, dtype)
        b = torch.randn(n, n, generator=g).to(device, dtype)
        t = timed(lambda: a @ b, device, warmup=3, repeats=3 if quick else 5, iters=2 if quick else 20)
        out[name] = 2 * n ** 3 / t["seconds"] / 1e12
    return out


# --- the models -----------------------------------------------------------------------------------------

def unet_config(name: str) -> dict:
    return preset(name, in_channels=CHANNELS, out_channels=CHANNELS)


def make_net(library: str, config: dict):
    """``(net, call)``: the network of ``library`` with the layout of ``config`` and
    ``call(net, x, t) -> Tensor``."""
    if library == "scorekit":
        return build_model(config), lambda net, x, t: net(x, t)
    twin = diffusers_twin(config)
    for name, m in twin.named_modules():                # the preset's dropout, in the residual blocks
        if name.endswith(".dropout") and isinstance(m, nn.Dropout):
            m.p = float(config["dropout"])
    return twin, lambda net, x, t: net(x, t).sample


def count_flops(call, net, x, t) -> dict:
    """FLOPs of one forward pass (no_grad) and of one forward + backward, as FlopCounterMode counts."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fwd:
        call(net, x, t)
    with FlopCounterMode(display=False) as both:
        call(net, x, t).float().pow(2).mean().backward()
    net.zero_grad(set_to_none=True)
    return {"forward": fwd.get_total_flops(), "forward_backward": both.get_total_flops()}


def rates(flops: float, seconds: float, peaks: dict) -> dict:
    """TFLOP/s and MFU against each peak (``{name: TFLOP/s}``)."""
    tflops = flops / seconds / 1e12
    return {"tflops": tflops, **{f"mfu_{k}": tflops / v for k, v in peaks.items() if v}}


class Bench:
    """The settings, the report and its rows; ``save()`` writes the report as it stands."""

    def __init__(self, args, argv, device: torch.device):
        self.args, self.device = args, device
        self.warmup = 1 if args.quick else 3
        self.features = library_features()
        self.compile_kwargs = {k: v for k, v in (("backend", args.compile_backend), ("mode", args.compile_mode)) if v}
        self.peaks = {"nominal": args.peak_tflops}
        self.flops: dict = {}
        self.notes: list[str] = []
        self.started = time.perf_counter()
        m = machine(device)
        self.report = dict(
            command=" ".join(["benchmarks/gpu_throughput.py", *(argv if argv is not None else sys.argv[1:])]),
            date=datetime.datetime.now().isoformat(timespec="seconds"),
            machine=f"{m.get('gpu', m['cpu'])}; torch {m['torch']}" + (f", CUDA {m['cuda']}" if "cuda" in m else ""),
            machine_info=m, load={"before": load_average()},
            settings=dict(batch=args.batch, sample_batch=args.sample_batch, repeats=args.repeats, iters=args.iters,
                          warmup=self.warmup, compile=self.compile_kwargs or "torch defaults (inductor)",
                          loop_steps=args.loop_steps, loop_warmup=args.loop_warmup, presets=args.presets,
                          parts=args.parts, flop_convention="train step = 3 x counted forward FLOPs"),
            features=self.features, peak={"nominal_bf16_tflops": args.peak_tflops}, flops=self.flops,
            train_step=[], loop=[], forward=[], sampling=[], goals=[], notes=self.notes)

    def save(self) -> None:
        self.report["load"]["after"] = load_average()
        add_ratios(self.report)
        self.report["goals"] = goals(self.report)
        tag = "gpu_throughput-quick" if self.args.quick else "gpu_throughput"
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null):
            write_report(Path(self.args.out), tag, self.report, markdown(self.report))

    def add(self, part: str, row: dict) -> None:
        self.report[part].append(row)
        shown = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}
        log(f"{part}: {shown}")
        self.save()

    def free(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def forward_flops(self, name: str) -> float:
        """Counted FLOPs of scorekit's forward pass per image of preset ``name`` (counted once)."""
        if "scorekit" not in self.flops.get(name, {}):
            n = self.args.batch
            g = torch.Generator().manual_seed(2)
            x = torch.randn(n, CHANNELS, self.args.size, self.args.size, generator=g).to(self.device)
            t = torch.randint(0, 1000, (n,), generator=g).to(self.device)
            net, call = make_net("scorekit", unet_config(name))
            counted = count_flops(call, net.to(self.device).train(), x, t)
            self.flops.setdefault(name, {})["scorekit"] = {k: v / n for k, v in counted.items()}
        return self.flops[name]["scorekit"]["forward"]

    # -- the training step ---------------------------------------------------------------------------
    def over_budget(self, what: str) -> bool:
        """True (and a note) once ``--budget`` seconds have passed: ``what`` is then skipped."""
        if self.args.budget is None or time.perf_counter() - self.started < self.args.budget:
            return False
        self.notes.append(f"skipped after the {self.args.budget:g} s budget: {what}")
        log(self.notes[-1])
        return True

    def attempt(self, what: str, fn, *a) -> None:
        """Run one part; a failure becomes a note (with its message) and the run goes on."""
        if self.over_budget(what):
            return
        try:
            fn(*a)
        except Exception as err:                 # one failed part must not lose the others' rows
            traceback.print_exc()
            self.notes.append(f"{what} failed: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
            self.free()
        self.save()

    def train_steps(self, name: str, variants) -> None:
        """The training-step rows of preset ``name`` for ``variants``, ``(library, compiled, bf16)``
        triples (diffusers' left out when it does not import)."""
        args, device = self.args, self.device
        config = unet_config(name)
        g = torch.Generator().manual_seed(0)
        x = torch.randn(args.batch, CHANNELS, args.size, args.size, generator=g).to(device)
        t = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
        target = torch.randn(args.batch, CHANNELS, args.size, args.size, generator=g).to(device)
        for library, compiled, bf16 in variants:
            if library == "diffusers" and diffusers_twin is None:
                continue
            what = f"train step {name} {library} {'compiled' if compiled else 'eager'} {precision_name(bf16, device)}"
            if self.over_budget(what):
                return
            net, call = make_net(library, config)
            if library not in self.flops.get(name, {}):
                counted = count_flops(call, net.to(device).train(), x, t)
                self.flops.setdefault(name, {})[library] = {k: v / args.batch for k, v in counted.items()}
            del net
            self.add("train_step", self.one_step(name, library, config, call, compiled, bf16, x, t, target))
            self.free()

    def one_step(self, name, library, config, call, compiled, bf16, x, t, target) -> dict:
        args, device = self.args, self.device
        net = make_net(library, config)[0].to(device).train()
        opt = make_optimizer(net, TrainConfig(lr=1e-4))
        fwd = torch.compile(net, **self.compile_kwargs) if compiled else net

        def step():
            with autocast(device, bf16):
                loss = F.mse_loss(call(fwd, x, t).float(), target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        timing = timed(step, device, warmup=self.warmup + (2 if compiled else 0), repeats=args.repeats,
                       iters=args.iters)
        flops = 3 * self.flops[name][library]["forward"] * args.batch
        row = dict(preset=name, library=library, compiled=compiled, precision=precision_name(bf16, device),
                   batch=args.batch, parameters=count_parameters(net), images_per_s=args.batch / timing["seconds"],
                   step_ms=1e3 * timing["seconds"], **rates(flops, timing["seconds"], self.peaks), **timing)
        if not compiled:
            row.pop("compile_s")
        return row

    # -- the training loop ---------------------------------------------------------------------------
    def loop(self, name: str, data: str) -> None:
        args, device = self.args, self.device
        fields = {f.name for f in dataclasses.fields(TrainConfig)}
        bf16 = args.loop_precision == "bf16"
        settings = dict(data=data, model=name, lr=2e-4, model_options={"num_classes": None},
                        batch_size=args.batch, steps=args.loop_steps, device=str(device),
                        mixed_precision="bf16" if bf16 else "no")
        if device.type == "cpu":
            settings["num_threads"] = torch.get_num_threads()
        if args.quick:
            settings["sample_num"] = args.batch     # a small final grid: the smoke test's time
            if "compile" in fields:
                settings["compile"] = "no"         # inductor on a CPU takes minutes
        config = TrainConfig(**settings)
        with tempfile.TemporaryDirectory() as tmp:
            run = Path(tmp) / "run"
            sync(device)
            t0 = time.perf_counter()
            result = train(config, run, progress=False, log=lambda line: log(f"train: {line}"))
            sync(device)
            wall = time.perf_counter() - t0
            rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
        images = seconds = 0.0
        for prev, row in zip([{"step": 0}] + rows, rows):
            if prev["step"] >= args.loop_warmup:
                n = (row["step"] - prev["step"]) * args.batch
                images, seconds = images + n, seconds + n / row["images_per_second"]
        steady = images / seconds if seconds else float("nan")
        precision = precision_name(bf16, device)
        own = find_step(self.report["train_step"], name, "scorekit", True, precision)
        eager = find_step(self.report["train_step"], name, "scorekit", False, precision)
        trained = {k: v for k, v in config.to_dict().items() if k in ("compile", "channels_last", "deterministic",
                                                                         "mixed_precision", "log_every",
                                                                         "checkpoint_every", "sample_every")}
        row = dict(preset=name, precision=precision, data=data, batch=args.batch, steps=result.step,
                   warmup_steps=args.loop_warmup, steady_images_per_s=steady,
                   end_to_end_images_per_s=result.step * args.batch / wall, wall_s=wall,
                   train_step_s=rows[-1]["seconds"] if rows else None, final_loss=result.loss, settings=trained,
                   **rates(3 * self.flops.get(name, {}).get("scorekit", {}).get("forward", 0.0) * args.batch,
                           args.batch / steady, self.peaks))
        if own:
            row["vs_compiled_step"] = steady / own["images_per_s"]
        if eager:
            row["vs_eager_step"] = steady / eager["images_per_s"]
        self.add("loop", row)

    # -- forward and sampling ------------------------------------------------------------------------
    def sampling(self, name: str) -> None:
        args, device = self.args, self.device
        config = unet_config(name)
        process = train_config.build_process("ddpm")
        prediction = train_config.default_prediction(process)
        g = torch.Generator().manual_seed(1)
        n = args.sample_batch
        x_T = process.prior_sample((n, CHANNELS, args.size, args.size), generator=g).to(device)
        t = torch.randint(0, 1000, (n,), generator=g).to(device)
        net = build_model(config).to(device).eval()
        per_image = self.forward_flops(name)
        features = self.features["sample"]
        repeats = min(args.repeats, 3)
        for bf16 in (False,) if args.quick else (False, True):
            precision = precision_name(bf16, device)
            if self.over_budget(f"sampling {name} {precision}"):
                return
            fwd = torch.compile(net, **self.compile_kwargs)

            def forward():
                with torch.no_grad(), autocast(device, bf16):
                    fwd(x_T, t)

            timing = timed(forward, device, warmup=self.warmup + 2, repeats=args.repeats, iters=args.iters)
            ref = n / timing["seconds"]
            self.add("forward", dict(preset=name, precision=precision, batch=n, images_per_s=ref,
                                     **rates(per_image * n, timing["seconds"], self.peaks), **timing))
            kwargs, how = {}, []
            model = net
            if features["compile"]:
                kwargs["compile"] = compile_flag(features["defaults"]["compile"])
                how.append(f"sample(compile={kwargs['compile']!r})")
            else:
                how.append("torch.compile(net) passed in")
            if bf16 and features["precision"]:
                kwargs["precision"] = "bf16"
                how.append("sample(precision='bf16')")
            elif bf16:
                model = build_model({**net.config(), "compute_dtype": "bfloat16"}).to(device).eval()
                model.load_state_dict(net.state_dict())
                how.append("compute_dtype='bfloat16'")
            if not features["compile"]:
                model = torch.compile(model, **self.compile_kwargs)
            for sampler, steps in SAMPLERS:
                if self.over_budget(f"sampling {name} {sampler} {precision}"):
                    return
                out = {}

                def draw():
                    out["r"] = scorekit.sample_batches(model, x_T, batch_size=n, process=process,
                                                       prediction_type=prediction, sampler=sampler,
                                                       num_steps=steps, progress=False, **kwargs)

                timing = timed(draw, device, warmup=1, repeats=repeats, iters=1)
                nfe = float(out["r"].nfe)
                nfe_rate = n * nfe / timing["seconds"]
                self.add("sampling", dict(
                    preset=name, sampler=sampler, steps=steps, nfe=nfe, precision=precision, batch=n,
                    how=", ".join(how), samples_per_s=n / timing["seconds"], nfe_images_per_s=nfe_rate,
                    vs_compiled_forward=nfe_rate / ref, **rates(per_image * n * nfe, timing["seconds"], self.peaks),
                    **timing))
            del fwd, model
            self.free()


# --- the report -----------------------------------------------------------------------------------------

def find_step(rows: list[dict], name: str, library: str, compiled: bool, precision: str) -> dict | None:
    """The training-step row of preset ``name`` and ``library`` in this variant, if measured."""
    key = (name, library, compiled, precision)
    return next((r for r in rows if (r["preset"], r["library"], r["compiled"], r["precision"]) == key), None)


def add_ratios(report: dict) -> None:
    """Each training-step and loop row's speed over diffusers' eager bf16 step of its preset."""
    for part, key in (("train_step", "images_per_s"), ("loop", "steady_images_per_s")):
        for r in report[part]:
            base = find_step(report["train_step"], r["preset"], "diffusers", False, "bf16")
            if base is not None:
                r["vs_diffusers_eager_bf16"] = r[key] / base["images_per_s"]


def goals(report: dict) -> list[dict]:
    """Each goal of the issue with its measured ratio (``met``: ``None`` where not measured)."""
    out = []
    for r in report["loop"]:
        out.append(dict(goal=f"loop >= {GOALS['loop']}x own compiled step ({r['preset']}, {r['precision']})",
                        value=r.get("vs_compiled_step"), target=GOALS["loop"]))
    steps = report["train_step"]
    for name in dict.fromkeys(r["preset"] for r in steps):
        ours = find_step(steps, name, "scorekit", True, "bf16")
        value = None if ours is None else ours.get("vs_diffusers_eager_bf16")
        out.append(dict(goal=f"compiled bf16 step >= {GOALS['compiled_step']}x diffusers eager bf16 ({name})",
                        value=value, target=GOALS["compiled_step"]))
    for r in report["sampling"]:
        out.append(dict(goal=f"sampling >= {GOALS['sampling']}x compiled forward ({r['preset']}, {r['sampler']} "
                             f"{r['steps']}, {r['precision']})", value=r["vs_compiled_forward"], target=GOALS["sampling"]))
    for g in out:
        g["met"] = None if g["value"] is None else bool(g["value"] >= g["target"])
    return out


def _f(v, digits: int = 1, suffix: str = "") -> str:
    return "" if v is None else f"{v:,.{digits}f}{suffix}"


def _x(v) -> str:
    return _f(v, 2, "x")


def _g(v) -> str:
    """Three significant digits (TFLOP/s on a CPU are small, on a GPU large)."""
    return "" if v is None else f"{v:.3g}"


def _mfu(r: dict) -> str:
    return " / ".join(_g(100 * r[k]) + "%" for k in ("mfu_nominal", "mfu_measured") if k in r)


def _table(title: str, header: str, rows: list[list]) -> list[str]:
    """A Markdown section: ``## title`` and a table of ``rows`` under the ``|``-separated ``header``
    (nothing when there are no rows)."""
    if not rows:
        return []
    columns = header.split(" | ")
    return [f"## {title}", "", f"| {header} |", "|" + " --- |" * len(columns),
            *("| " + " | ".join(str(c) for c in row) + " |" for row in rows), ""]


def markdown(report: dict) -> str:
    s, peak = report["settings"], report["peak"]
    measured = (f", measured {_f(peak['measured_tflops'])} TFLOP/s (the faster of a {peak['matmul']['matmul_size']}^3 "
                f"bf16 and float32 matmul)" if "measured_tflops" in peak else "")
    feats = report["features"]
    lines = header_lines(report, "GPU throughput: scorekit's U-Net training step, training loop and sampling")
    lines += [
        f"Batch {s['batch']} (training), {s['sample_batch']} (sampling); median of {s['repeats']} repeats of "
        f"{s['iters']} iterations after {s['warmup']} warm-up iterations (compiled rows: 2 more); compile: "
        f"{s['compile']}. FLOPs counted by FlopCounterMode on one forward pass; {s['flop_convention']}. "
        f"MFU against the nominal peak {_f(peak['nominal_bf16_tflops'])} TFLOP/s{measured} (nominal / measured).", "",
        "Library options found: training " + ", ".join(f"{k}={v}" for k, v in feats["train"].items() if k != "defaults")
        + "; sampling " + ", ".join(f"{k}={v}" for k, v in feats["sample"].items() if k != "defaults") + ".", ""]
    lines += _table("Training step (forward, MSE, backward, fused AdamW)",
                    "preset | model | compiled | precision | parameters | images/s | step ms | TFLOP/s | MFU | "
                    "compile s | vs diffusers eager bf16",
                    [[r["preset"], r["library"], "yes" if r["compiled"] else "no", r["precision"], f"{r['parameters']:,}",
                      _f(r["images_per_s"]), _f(r["step_ms"], 2), _g(r["tflops"]), _mfu(r), _f(r.get("compile_s")),
                      _x(r.get("vs_diffusers_eager_bf16"))] for r in report["train_step"]])
    lines += _table("Training loop (`scorekit.train.train`)",
                    "preset | precision | settings | steps | images/s steady | end to end | wall s | TFLOP/s | MFU | "
                    "vs compiled step | vs eager step | vs diffusers eager bf16",
                    [[r["preset"], r["precision"], ", ".join(f"{k}={v}" for k, v in r["settings"].items()), r["steps"],
                      _f(r["steady_images_per_s"]), _f(r["end_to_end_images_per_s"]), _f(r["wall_s"]), _g(r["tflops"]),
                      _mfu(r), _x(r.get("vs_compiled_step")), _x(r.get("vs_eager_step")),
                      _x(r.get("vs_diffusers_eager_bf16"))] for r in report["loop"]])
    lines += _table("Sampling (`scorekit.sample_batches`) against the compiled forward pass",
                    "preset | what | precision | batch | NFE | samples/s | NFE x images/s | TFLOP/s | MFU | "
                    "vs compiled forward",
                    [[r["preset"], "compiled forward", r["precision"], r["batch"], 1, "", _f(r["images_per_s"]),
                      _g(r["tflops"]), _mfu(r), "1.00x"] for r in report["forward"]]
                    + [[r["preset"], f"{r['sampler']} {r['steps']} ({r['how']})", r["precision"], r["batch"],
                        _f(r["nfe"], 0), _f(r["samples_per_s"]), _f(r["nfe_images_per_s"]), _g(r["tflops"]), _mfu(r),
                        _x(r["vs_compiled_forward"])] for r in report["sampling"]])
    lines += _table("Goals", "goal | measured | met",
                    [[g["goal"], _x(g["value"]), "not measured" if g["met"] is None else ("yes" if g["met"] else "no")]
                     for g in report["goals"]])
    if report["notes"]:
        lines += ["## Notes", ""] + [f"* {n}" for n in report["notes"]] + [""]
    return "\n".join(lines)


# --- the command ----------------------------------------------------------------------------------------

def synthetic_data(folder: Path, size: int, n: int = 64) -> str:
    """An ``npz:`` spec of ``n`` random ``size x size x 3`` uint8 images without labels, written to ``folder``."""
    rng = np.random.default_rng(0)
    path = folder / "images.npz"
    np.savez(path, x=rng.integers(0, 256, (n, CHANNELS, size, size), dtype=np.uint8))
    return f"npz:{path}"


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke test: tiny preset, batch 4, 2 repeats, one thread, dynamo-only compile")
    p.add_argument("--device", default=None, help="default: cuda if available, else cpu")
    p.add_argument("--presets", default=None, help="comma-separated U-Net presets (default base,small,tiny)")
    p.add_argument("--parts", default="step,loop,sample", help="which of step, loop, sample to run")
    p.add_argument("--loop-presets", default="base", help="presets whose training loop is run (of --presets)")
    p.add_argument("--sample-presets", default="base", help="presets whose sampling is timed (of --presets)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default 128)")
    p.add_argument("--sample-batch", type=int, default=None, help="sampling batch (default 1024)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    p.add_argument("--iters", type=int, default=None, help="iterations per repeat (default 10)")
    p.add_argument("--loop-steps", type=int, default=None, help="steps of the training loop (default 1000)")
    p.add_argument("--loop-warmup", type=int, default=None, help="loop steps left out of the steady rate (default 100)")
    p.add_argument("--loop-precision", choices=("bf16", "fp32"), default=None, help="default bf16 (--quick: fp32)")
    p.add_argument("--image-size", dest="size", type=int, default=None,
                   help="height and width of the images (default 32; --quick: 16)")
    p.add_argument("--data", default=None, help="the loop's dataset spec (default: folder: the CIFAR-10 archive "
                                                "in ../shared/data, else synthetic images)")
    p.add_argument("--peak-tflops", type=float, default=HOPPER_BF16_TFLOPS,
                   help="the peak that MFU divides by (default: H100 SXM or H200 dense bf16, 989)")
    p.add_argument("--measure-peak", action="store_true", help="also time a large bf16 matmul as the achievable peak")
    p.add_argument("--compile-backend", default=None, help="torch.compile backend (default inductor; --quick: eager)")
    p.add_argument("--compile-mode", default=None, help="torch.compile mode (e.g. max-autotune-no-cudagraphs)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (--quick: 1)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds after which the parts and rows not yet started are skipped (with a note)")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results"))
    args = p.parse_args(argv)
    q = args.quick
    for name, quick, full in (("presets", "tiny", "base,small,tiny"), ("batch", 4, 128), ("sample_batch", 4, 1024),
                              ("repeats", 2, 5), ("iters", 1, 10), ("loop_steps", 20, 1000),
                              ("loop_warmup", 10, 100), ("threads", 1, None), ("size", 16, 32),
                              ("loop_precision", "fp32", "bf16")):
        if getattr(args, name) is None:
            setattr(args, name, quick if q else full)
    if q and args.compile_backend is None:
        args.compile_backend = "eager"
    if q:
        args.loop_presets = args.sample_presets = args.presets
    args.presets = [s for s in args.presets.split(",") if s]
    args.parts = [s for s in args.parts.split(",") if s]
    unknown = set(args.parts) - {"step", "loop", "sample"}
    if unknown:
        p.error(f"--parts takes step, loop, sample; got {', '.join(sorted(unknown))}")
    return args


def main(argv=None) -> int:
    args = parse(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.threads:
        torch.set_num_threads(args.threads)
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True
    for limit in ("recompile_limit", "cache_size_limit"):     # many variants of one forward in one process
        if hasattr(torch._dynamo.config, limit):
            setattr(torch._dynamo.config, limit, 64)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    bench = Bench(args, argv, device)
    if DIFFUSERS_MISSING:
        bench.notes.append(f"diffusers rows skipped: diffusers does not import here ({DIFFUSERS_MISSING})")
    elif args.quick:
        bench.notes.append("--quick: diffusers' compiled rows left out to keep the smoke test short")
    if args.quick:
        bench.notes.append("--quick: a CPU smoke test at toy size (16x16 images) with the dynamo-only 'eager' "
                           "compile backend, the loop in float32 and sampling in float32 only (bfloat16 crawls on "
                           "a CPU without bfloat16 instructions); not a measurement")
    if args.measure_peak:
        peak = measure_peak(device, args.quick)
        bench.peaks["measured"] = max(v for k, v in peak.items() if k != "matmul_size")
        bench.report["peak"].update(measured_tflops=bench.peaks["measured"], matmul=peak)
        log(f"measured peak: {peak}")
    bench.save()
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data
        if data is None:
            data = f"folder:{CIFAR}" if CIFAR.exists() and not args.quick else synthetic_data(Path(tmp), args.size)
        for name in args.presets:
            torch._dynamo.reset()
            if "step" in args.parts:
                bench.attempt(f"train steps {name}", bench.train_steps, name, FIRST_VARIANTS)
            if "loop" in args.parts and name in args.loop_presets.split(","):
                bench.attempt(f"loop {name}", bench.loop, name, data)
            if "sample" in args.parts and name in args.sample_presets.split(","):
                bench.attempt(f"sampling {name}", bench.sampling, name)
            if "step" in args.parts and not args.quick:
                bench.attempt(f"diffusers compiled steps {name}", bench.train_steps, name, LATE_VARIANTS)
    bench.save()
    print(markdown(bench.report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
