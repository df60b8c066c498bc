r"""Where the host waits for the GPU: scorekit's step loops under ``torch.cuda.set_sync_debug_mode``.

On a GPU the host queues kernels and runs ahead of them. An operation that makes it wait (reading
a value back, a blocking copy from pageable host memory, a synchronize) empties that queue, and
the GPU idles while the host queues the next step's work. PyTorch can warn at each such operation
(``torch.cuda.set_sync_debug_mode("warn")``); this script switches that on inside the step loops
only, after a warm-up, and reports every wait with the scorekit lines it came from:

* training: eight steps of each of nine set-ups (``scorekit.train.train`` on 8x8 digits, a tiny
  U-Net, bf16 autocast as on any GPU run; one with fp16 and gradient scaling), steps 3 to 8 watched;
* sampling: every fixed-step sampler (6 steps), one under bf16 autocast, classifier-free
  guidance (plain, rescaled with a condition image, a guidance interval), classifier guidance,
  ``sample_batches`` with a partial last batch; the whole call watched (the deferred finite
  check reads once, at the end);
* the editing and inverse-problem methods (SDEdit, ILVR, RePaint, DPS, PiGDM, moment matching,
  projection) and the ELBO.

Expected: no wait in a training step; one per sampling call (the deferred finite check at the
end); one per classifier-guided call (its labels, read once); one per step for PiGDM and moment
matching (the conjugate-gradient residual, read every 8 iterations). Anything else is a defect.

    PYTHONPATH=src python benchmarks/gpu_sync_check.py --out DIR        # on a CUDA GPU, about a minute
    PYTHONPATH=src python benchmarks/gpu_sync_check.py --device cpu     # runs every scenario; detects nothing

Writes ``DIR/gpu_sync_check.md`` and ``.json``.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
import traceback
import warnings
from collections import Counter

import torch

import scorekit
from scorekit import DDPM, Denoiser
from scorekit.models import build_model, preset
from scorekit.samplers import SAMPLERS

_SCOREKIT = os.sep + "scorekit" + os.sep


def _where() -> str:
    frames = [f for f in traceback.extract_stack()[:-2] if _SCOREKIT in f.filename]
    if not frames:
        return "(outside scorekit)"
    return " <- ".join(f"{f.filename.split(_SCOREKIT)[-1]}:{f.lineno}" for f in reversed(frames[-3:]))


class Watch:
    """Counts the operations that make the host wait for a CUDA device inside ``with watch:``."""

    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.found: list[str] = []

    @contextlib.contextmanager
    def __call__(self):
        if not self.cuda:
            yield
            return
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            shown = warnings.showwarning

            def show(message, category, filename, lineno, file=None, line=None):
                if "synchroniz" in str(message):
                    self.found.append(_where())
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = show
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield
            finally:
                torch.cuda.set_sync_debug_mode("default")


# -- the scenarios -----------------------------------------------------------------------------------------

TRAINING = {
    "unconditional": {},
    "labels, label dropout, channels-last": dict(label_dropout=0.1, channels_last=True),
    "elbo weighting, importance sampling": dict(weighting="elbo", timesteps="importance"),
    "learned variance, hybrid loss": dict(variance="learned", weighting="hybrid"),
    "EDM, gradient accumulation": dict(process="edm", grad_accum=2),
    "VP, min-SNR weighting": dict(process="vp", weighting="min_snr"),
    "task sr2 (data on the host)": dict(task="sr2"),
    "noise-aware classifier": dict(objective="classifier"),
    "fp16 autocast, gradient scaling (CUDA only)": dict(mixed_precision="fp16"),
}


def training(device, name, watch_steps_from=2, steps=8):
    from scorekit.train import TrainConfig, train
    from scorekit.train import trainer as trainer_module

    watch = Watch(device)
    step = trainer_module._Trainer.train_step

    def watched(self):
        if self.step < watch_steps_from:
            return step(self)
        with watch():
            return step(self)

    options = dict(TRAINING[name])
    model = "classifier-tiny" if options.get("objective") == "classifier" else "tiny"
    config = TrainConfig(data="digits", model=model, model_options={"base_channels": 16, "groups": 8},
                         steps=steps, batch_size=32, log_every=1000, checkpoint_every=1000, device=str(device),
                         compile="no", **options)
    trainer_module._Trainer.train_step = watched
    try:
        with tempfile.TemporaryDirectory() as out:
            train(config, os.path.join(out, "run"), progress=False, log=lambda *a: None)
    finally:
        trainer_module._Trainer.train_step = step
    return watch.found, steps - watch_steps_from


def _network(device, **overrides):
    cfg = preset("tiny", in_channels=1, out_channels=1, image_size=8)
    cfg.update(overrides)
    net = build_model(cfg).to(device).eval()
    torch.nn.init.normal_(net.conv_out.weight, std=0.02)            # zero at initialisation
    return net


def sampling(device, name):
    watch = Watch(device)
    g = torch.Generator(device=device).manual_seed(0)
    x_T = torch.randn(8, 1, 8, 8, generator=g, device=device)
    kwargs = dict(betas=torch.linspace(1e-4, 0.02, 1000), num_steps=6, generator=g)
    if name in SAMPLERS:
        net, call = _network(device), lambda: scorekit.sample(net, x_T, sampler=name, **kwargs)
    elif name == "dpmpp_2m, bf16":
        net = _network(device)
        call = lambda: scorekit.sample(net, x_T, sampler="dpmpp_2m", precision="bf16", **kwargs)  # noqa: E731
    elif name.startswith("cfg"):
        image = "image" in name
        net = _network(device, num_classes=10, cond_channels=2 if image else 0)
        labels = torch.arange(8, device=device) % 10
        condition = scorekit.Condition(labels=labels, image=torch.randn(8, 2, 8, 8, device=device)) if image \
            else labels
        extra = dict(guidance_scale=2.0, guidance_rescale=0.7) if image else \
            dict(guidance_scale=2.0, guidance_interval=(0.5, 20.0)) if "interval" in name else dict(guidance_scale=3.0)
        call = lambda: scorekit.sample(net, x_T, sampler="dpmpp_2m", condition=condition,  # noqa: E731
                                       **kwargs, **extra)
    elif name == "classifier guidance":
        net = _network(device)
        classifier = build_model(preset("classifier-tiny", image_size=8)).to(device).eval()
        labels = torch.arange(8, device=device) % 10
        call = lambda: scorekit.sample(net, x_T, sampler="ddim", classifier=classifier, condition=labels,  # noqa: E731
                                       classifier_scale=1.0, **kwargs)
    else:                                                # sample_batches, 20 samples in batches of 8
        net = _network(device)
        x_all = torch.randn(20, 1, 8, 8, generator=g, device=device)
        call = lambda: scorekit.sample_batches(net, x_all, batch_size=8, sampler="ddim", **kwargs)  # noqa: E731
    with torch.no_grad():
        call()                                           # warm-up: cuDNN, caches
        with watch():
            call()
    return watch.found, 1


def tasks(device, name):
    from scorekit.tasks import Downsample, edit, measure, solve_inverse

    watch = Watch(device)
    den = Denoiser(_network(device), DDPM(num_steps=200), "eps")
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(8, 1, 8, 8, generator=g, device=device).clamp(-1, 1)
    if name == "elbo":
        data = torch.randint(0, 256, (8, 1, 8, 8), generator=g, device=device) * (2 / 255) - 1
        call = lambda: scorekit.likelihood.elbo(den, den.process, data, batch_steps=50, generator=g)  # noqa: E731
    elif name in ("sdedit", "ilvr", "repaint"):
        options = {"sdedit": dict(strength=0.5), "ilvr": dict(factor=2),
                   "repaint": dict(mask=torch.rand(1, 8, 8, device=device) > 0.5, resamplings=2, jump_length=2)}[name]
        call = lambda: edit(name, den, x, num_steps=6, generator=g, **options)  # noqa: E731
    else:
        A = Downsample(2)
        y = measure(A, x, 0.05, generator=g)
        call = lambda: solve_inverse(den, A, y, method=name, sigma_y=0.05, num_steps=6, generator=g,  # noqa: E731
                                     process=den.process)
    call()
    with watch():
        call()
    return watch.found, 1


def scenarios(quick: bool, device: torch.device):
    fixed = [s for s in SAMPLERS if s != "ode_adaptive"]
    setups = [name for name in TRAINING if device.type == "cuda" or "CUDA only" not in name]
    out = [("training", name, training) for name in (setups[:2] if quick else setups)]
    out += [("sampling", name, sampling) for name in (fixed[:2] if quick else fixed)]
    out += [("sampling", name, sampling) for name in ["dpmpp_2m, bf16", "cfg", "cfg rescaled, image", "cfg interval",
                                                      "classifier guidance", "sample_batches"]]
    out += [("tasks", name, tasks) for name in ["sdedit", "ilvr", "repaint", "dps", "pigdm", "moment_matching",
                                                 "projection", "elbo"]]
    return out


def write_report(out: str, rows: list, device: torch.device, argv) -> None:
    """``out/gpu_sync_check.md`` (a table) and ``.json`` of the rows so far."""
    header = ("# Where the host waits for the GPU\n\n"
              f"device: {torch.cuda.get_device_name(device) if device.type == 'cuda' else device}, "
              f"torch {torch.__version__}, CUDA {torch.version.cuda}\n"
              f"command: python benchmarks/gpu_sync_check.py {' '.join(argv if argv is not None else sys.argv[1:])}\n"
              + ("" if device.type == "cuda" else "\nNot a CUDA device: nothing is detected (a smoke run).\n")
              + "\n| group | scenario | waits | watched | where (count x scorekit lines) |\n"
              + "| --- | --- | --- | --- | --- |\n")
    table = "".join(f"| {r['group']} | {r['scenario']} | {r['waits'] if not r['error'] else 'error'} | "
                    f"{r['watched']} {'steps' if r['group'] == 'training' else 'call'} | "
                    f"{'; '.join(r['where']) or (r['error'] or '')} |\n" for r in rows)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "gpu_sync_check.md"), "w") as f:
        f.write(header + table)
    with open(os.path.join(out, "gpu_sync_check.json"), "w") as f:
        json.dump(dict(device=str(device), torch=torch.__version__, rows=rows), f, indent=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--out", default=None, help="folder of the report (default: print only)")
    parser.add_argument("--quick", action="store_true", help="two training set-ups and two samplers")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    rows = []
    for group, name, run in scenarios(args.quick, device):
        start = time.perf_counter()
        try:
            found, calls = run(device, name)
            error = None
        except Exception as err:                          # report and go on: one broken path is a finding
            found, calls, error = [], 0, f"{type(err).__name__}: {err}"
        where = Counter(found).most_common(3)
        rows.append(dict(group=group, scenario=name, waits=len(found), watched=calls, error=error,
                         where=[f"{n} x {w}" for w, n in where], seconds=round(time.perf_counter() - start, 2)))
        print(f"{group:9s} {name:40s} waits {len(found):3d}" + (f"  ERROR {error}" if error else "")
              + "".join(f"\n    {n} x {w}" for w, n in where), flush=True)
        if args.out:                                      # after every row: a run cut short keeps its rows
            write_report(args.out, rows, device, argv)
    return 1 if any(r["error"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
