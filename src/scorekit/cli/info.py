"""``scorekit info``: describe a run or checkpoint (:func:`scorekit.train.load_checkpoint`)."""
from __future__ import annotations

import argparse
import os
import textwrap

from ._common import PROG, Formatter


def add(commands) -> None:
    p = commands.add_parser(
        "info", formatter_class=Formatter,
        help="describe a run or checkpoint: model, process, data, step, EMA, files",
        description=textwrap.dedent("""\
            Print what a run folder (its newest checkpoint) or a checkpoint folder holds: the
            network (kind, preset, parameters), the forward process, the prediction type and loss,
            the data, the step, the EMA, the last logged loss and the sizes of the files. Loading
            checks the files: a corrupt configuration or weights that do not fit it are reported."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} info runs/digits
              {PROG} info runs/digits/checkpoints/step-0001000
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    p.set_defaults(handler=run)


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def _precondition_text(precondition: dict | None) -> str:
    if not precondition:
        return ""
    return f" (EDM preconditioning, sigma_data {precondition.get('sigma_data')})"


def run(args: argparse.Namespace) -> int:
    from ..models import count_parameters
    from ..train.checkpoint import is_run_dir, list_checkpoints, load_checkpoint
    from ..train.logging import read_metrics

    ckpt = load_checkpoint(args.checkpoint)
    cfg = ckpt.config
    model = cfg["model"]
    train = cfg.get("train", {})
    preset = cfg.get("model_preset") or train.get("model")
    details = ", ".join(f"{k} {v}" for k, v in model.items()
                        if k in ("in_channels", "dim", "base_channels", "channel_mults", "hidden",
                                 "depth", "num_classes", "cond_channels") and v is not None)
    lines = [("checkpoint", f"{ckpt.path} (step {ckpt.step})")]
    run = os.path.dirname(os.path.dirname(os.path.abspath(ckpt.path)))
    if is_run_dir(run):
        steps = [s for s, _ in list_checkpoints(run)]
        lines.append(("run", f"{run}: {len(steps)} checkpoint(s) at step{'s' if len(steps) > 1 else ''} "
                              f"{', '.join(map(str, steps))}"))
    lines += [
        ("model", f"{model['kind']}" + (f" preset {preset}" if preset else "")
         + f", {count_parameters(ckpt.net):,} parameters ({details})"),
        ("process", repr(ckpt.process)),
    ]
    if ckpt.objective == "diffusion":
        lines.append(("prediction", ckpt.prediction_type + _precondition_text(cfg.get("precondition"))))
    else:
        use = (f" (a noise-aware classifier p(y | x_t, t): sample RUN --class K --classifier {run})"
               if ckpt.objective == "classifier" else "")
        lines.append(("objective", ckpt.objective + use))
    task = ckpt.task
    if task:
        opts = ", ".join(f"{k}={v}" for k, v in task.get("options", {}).items())
        lines.append(("task", f"{task['name']}{f' ({opts})' if opts else ''}: conditioned on the degraded image "
                              f"and its mask, {task.get('cond_channels')} channels"
                              + (f", condition dropout {task['cond_dropout']}" if task.get("cond_dropout") else "")
                              + f" (restore with: {PROG} restore {run} --input IMAGES --out DIR)"))
    loss = cfg.get("loss", {})
    if loss:
        opts = ", ".join(f"{k}={v}" for k, v in loss.get("options", {}).items())
        lines.append(("loss", f"{loss.get('weighting')} weighting{f' ({opts})' if opts else ''}, "
                              f"{loss.get('timesteps')} timesteps"))
    data = ckpt.data_config or {}
    size = ckpt.trainer.get("data", {}).get("size")
    data_text = data.get("spec", "?")
    opts = ", ".join(f"{k}={v}" for k, v in data.items() if k != "spec")
    if opts:
        data_text += f" ({opts})"
    data_text += f": {size if size is not None else '?'} samples of shape {tuple(ckpt.sample_shape)}"
    if ckpt.num_classes is not None:
        data_text += f", {ckpt.num_classes} classes"
        if ckpt.objective == "diffusion":
            data_text += f", label dropout {cfg.get('label_dropout')}"
    lines.append(("data", data_text))
    if cfg.get("class_names"):
        lines.append(("classes", ", ".join(f"{i} {name}" for i, name in enumerate(cfg["class_names"]))
                      + " (sample --class takes a number or a name)"))
    total = train.get("steps")
    lines.append(("step", f"{ckpt.step}" + (f" of {total}" if total else "")
                  + (f", batch size {train.get('batch_size')}" if train.get("batch_size") else "")
                  + (f", lr {train.get('lr')} ({train.get('lr_schedule')}, warm-up "
                     f"{train.get('warmup_steps')})" if train.get("lr") else "")))
    ema = ckpt.trainer.get("ema", cfg.get("ema", {}))
    if ema:
        lines.append(("EMA", f"decay {ema.get('decay')}{' with warm-up' if ema.get('warmup') else ''}"
                             + (f", {ema['num_updates']} updates" if "num_updates" in ema else "")))
    if is_run_dir(run):
        rows = [r for r in read_metrics(os.path.join(run, "metrics.jsonl")) if r["step"] <= ckpt.step]
        if rows:
            r = rows[-1]
            lines.append(("last loss", f"{r['loss']:.4g} at step {r['step']} "
                                       f"({r.get('seconds', 0):.0f} s of training, "
                                       f"{r.get('images_per_second', 0):.0f} samples/s)"))
    files = []
    for name in sorted(os.listdir(ckpt.path)):
        path = os.path.join(ckpt.path, name)
        if os.path.isfile(path):
            files.append(f"{name} {_size(os.path.getsize(path))}")
    lines.append(("files", ", ".join(files)))
    width = max(len(k) for k, _ in lines)
    for key, value in lines:
        print(f"{key + ':':<{width + 1}} {value}")
    return 0
