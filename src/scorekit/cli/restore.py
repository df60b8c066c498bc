"""``scorekit restore``: restore images with a trained task model (:func:`scorekit.tasks.restore.restore`)."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..errors import ScorekitError
from ._common import PROG, Formatter, add_run_flags, check_out_folder, int_in, staged_outputs
from ._sampler_flags import sampler_options_from


def add(commands) -> None:
    from .sample import add_sampling_flags

    p = commands.add_parser(
        "restore", formatter_class=Formatter,
        help="restore images with a model trained for a task (super-resolution, colorisation, "
             "inpainting, uncropping, JPEG)",
        description=textwrap.dedent("""\
            Restore images with a run trained with 'scorekit train --task': draw --num-samples
            samples of p(x | input) per input with any sampler (SR3 / Palette). --input is an
            image file (PNG, JPEG, ...), a folder of them or an .npz (x, optionally mask); images
            are not resized: they must have the model's channels and the size its task observes
            (for sr2 and sr4 the low-resolution size, e.g. 4x4 for an 8x8 model with sr2). With
            --degrade the inputs are clean images of the model's size, degraded here first as in
            training, so the truth is known and shown.

            inpaint and uncrop need the mask of the known pixels: --mask PNG of the images' size,
            white where a pixel is known, black where it is to be filled (or 'mask' in the .npz, 1
            = known).

            Writes into --out (created): one PNG per input, named after it (a.png -> a.png; two
            inputs a.png and a.bmp -> a_png.png and a_bmp.png), side by side: the input as the
            network sees it | the samples | the truth (with --degrade); and restored.npz with x (N,
            K, C, H, W) float32 samples, input, measurement, mask and truth (with --degrade). All or
            nothing: if a write fails (a full disk), --out is left as it was."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} restore runs/digits-sr2 --input low-res/ --out restored/
              {PROG} restore runs/digits-sr2 --input clean.npz --degrade --num-samples 4 --out check/
              {PROG} restore runs/faces-inpaint --input face.png --mask known.png --sampler ddpm --out filled/
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder (trained with --task) or a checkpoint")
    p.add_argument("--input", metavar="IMG|FOLDER|NPZ", required=True,
                   help="the images to restore: a file, a folder of image files, or an .npz")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder to write (created)")
    p.add_argument("--degrade", action="store_true",
                   help="the inputs are clean images of the model's size: degrade them first (truth known)")
    p.add_argument("--mask", metavar="PNG", help="inpaint / uncrop: white = known pixel, black = to fill")
    p.add_argument("--num-samples", metavar="K", type=int_in(1, 10000, "--num-samples"), default=1,
                   help="samples per input")
    add_sampling_flags(p, counts=False)
    add_run_flags(p)
    p.set_defaults(handler=run)


def _check_flags(args: argparse.Namespace) -> None:
    """Refuse the flags of ``sample`` that a restoration has no use for."""
    from .sample import TUNED

    if args.classifier is not None:
        raise ScorekitError("--classifier steers towards a class; a restoration is steered by its input")
    if args.spacing == TUNED or args.deprecated_schedule == TUNED:
        raise ScorekitError("--spacing tuned is not available for restore; choose a spacing rule")
    if getattr(args, "opt_variance", None) == "analytic":
        raise ScorekitError("--variance analytic is not available for restore; use small, large or learned")
    check_out_folder(args.out)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..plotting import atomic_path, image_grid
    from ..tasks.degradations import degrade_images
    from ..tasks.restore import (check_observation, load_task_model, observe, read_inputs, read_mask,
                                 sample_restorations)
    from ..timesteps import check_step_count
    from ..train.distributed import resolve_device
    from .sample import _deprecated_schedule, _guidance, _sample_steps

    _check_flags(args)
    _deprecated_schedule(args)
    options = sampler_options_from(args)
    steps = _sample_steps(args)
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        model = load_task_model(args.checkpoint, ema=not args.no_ema, device=device)
        ckpt = model.denoiser.checkpoint
        task = model.degradation.name
        x, names, mask = read_inputs(args.input, "--input")
        if args.mask is not None:
            if not model.degradation.needs_mask:
                raise ScorekitError(f"--mask applies to tasks inpaint and uncrop; this model restores {task!r}")
            if args.degrade:
                raise ScorekitError("--degrade draws the masks as in training; give either --degrade or --mask")
            mask = read_mask(args.mask, x.shape[-2:], "--mask")
        generator = torch.Generator().manual_seed(args.seed)
        truth = None
        if args.degrade:
            if mask is not None:
                raise ScorekitError("--degrade draws the masks as in training; the .npz's mask is not used with it")
            check_observation(model, x, clean=True)
            truth = x
            degraded = degrade_images(x, model.degradation, generator=generator)
        else:
            if mask is not None and not model.degradation.needs_mask:
                raise ScorekitError(f"the .npz holds a mask, but task {task!r} observes every pixel")
            degraded = observe(model, x, mask, generator=generator)
        guidance = _guidance(args, device)
        if args.guidance_scale is not None and not ckpt.task.get("cond_dropout"):
            print(f"{PROG} restore: warning: this model was trained with --cond-dropout 0, so its prediction "
                  f"without the input was never trained; --guidance-scale uses it", file=sys.stderr, flush=True)
        if steps is not None:
            steps = check_step_count(ckpt.process, steps, "--steps")
        result = sample_restorations(model, degraded, num_samples=args.num_samples, sampler=args.sampler,
                                     steps=steps, generator=generator, batch_size=args.batch_size,
                                     device=device, progress=not args.no_progress, spacing=args.spacing,
                                     clip=args.clip, check_finite=not args.allow_nonfinite, **guidance, **options)
    finally:
        torch.set_num_threads(threads_before)
    n, k = len(degraded), args.num_samples
    samples = result.x.reshape(n, k, *model.sample_shape)
    arrays = {"x": samples.numpy().astype(np.float32), "input": degraded.image.cpu().numpy(),
              "measurement": degraded.measurement.cpu().numpy(), "mask": degraded.mask.cpu().numpy()}
    if truth is not None:
        arrays["truth"] = truth.numpy()
    files = [f"{name}.png" for name in names] + ["restored.npz"]
    with staged_outputs(args.out) as stage:            # all or nothing: --out unchanged on a failure
        for i, name in enumerate(files[:-1]):
            row = [degraded.image[i:i + 1].cpu(), samples[i]] + ([truth[i:i + 1]] if truth is not None else [])
            image_grid(torch.cat(row), os.path.join(stage, name), nrow=k + 1 + (truth is not None))
        with atomic_path(os.path.join(stage, files[-1])) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    written = [os.path.join(args.out, name) for name in files]
    print(f"restored {n} input(s) x {k} sample(s) by {task} in {result.seconds:.2f} s with {args.sampler} "
          f"(NFE {result.nfe:g} per sample) from step {ckpt.step} of {ckpt.path}")
    print("wrote:")
    shown = written if len(written) <= 6 else written[:4] + [f"... ({len(written) - 5} more)"] + written[-1:]
    for path in shown:
        print(f"  {path}")
    return 0
