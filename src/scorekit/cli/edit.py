"""``scorekit edit``: training-free editing with a trained model (:mod:`scorekit.tasks`: SDEdit,
ILVR, RePaint, interpolation)."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..errors import ScorekitError
from ._common import PROG, Formatter, add_run_flags, int_in, unit_interval

#: the methods the command offers (inversion editing needs two conditions: the library has it)
METHODS = ("sdedit", "ilvr", "repaint", "interpolate")

#: which method each method-specific flag belongs to
METHOD_FLAGS = {"strength": ("--strength", "sdedit"), "factor": ("--factor", "ilvr"),
                "mask": ("--mask", "repaint"), "resamplings": ("--resamplings", "repaint"),
                "jump_length": ("--jump-length", "repaint"), "other": ("--with", "interpolate"),
                "frames": ("--frames", "interpolate")}


def add(commands) -> None:
    from .sample import add_sampling_flags

    p = commands.add_parser(
        "edit", formatter_class=Formatter,
        help="edit images with a trained model, no training: SDEdit, ILVR, RePaint, interpolation",
        description=textwrap.dedent("""\
            Edit the images of --input (an image file, a folder of them, or an .npz) with the model
            of a run folder or checkpoint folder by METHOD, training nothing (see docs/tasks.md):

              sdedit       noise each image to --strength of the time range and denoise it
              ilvr         sample with each image's low frequencies (block means of --factor)
              repaint      fill the pixels where --mask is black, keep the white ones
              interpolate  --frames images between each input and its --with partner, through
                           their DDIM latents

            The images must have the model's size and channels. Writes one PNG per input into
            --out (the input, then its --num edits side by side; for interpolate the frames from
            the input to its partner) and edits.npz (input and edits as float32 in [-1, 1]). The
            noise comes from --seed."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} edit runs/mnist sdedit --input strokes/ --strength 0.5 --num 4 --out edits
              {PROG} edit runs/mnist ilvr --input digit.png --factor 8 --num 8 --out ilvr
              {PROG} edit runs/mnist repaint --input digits.npz --mask top-half.png --out filled
              {PROG} edit runs/mnist interpolate --input a.png --with b.png --frames 7 --out morph
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    p.add_argument("method", metavar="METHOD", choices=METHODS,
                   help=f"the editing method: {', '.join(METHODS)} (a positional argument: --method is the "
                        f"option of the ode_adaptive sampler)")
    p.add_argument("--input", metavar="IMG|FOLDER|NPZ", required=True,
                   help="the images to edit: a PNG/JPEG file, a folder of them, or an .npz (array x)")
    g = p.add_argument_group("method options")
    g.add_argument("--strength", metavar="S", type=unit_interval("--strength", closed_top=True),
                   help="sdedit: the noise level to start from, a fraction of the time range (default "
                        "0.5; 0 returns the input, 1 ignores it)")
    g.add_argument("--factor", metavar="N", type=int_in(1, 4096, "--factor"),
                   help="ilvr: the block size of the low-pass filter (default 4)")
    g.add_argument("--mask", metavar="PNG",
                   help="repaint: a greyscale image of the model's size, white (>= 128) where a pixel "
                        "is known, black where it is to be filled")
    g.add_argument("--resamplings", metavar="R", type=int_in(1, 1000, "--resamplings"),
                   help="repaint: times each block of steps is taken (default 10; 1: no resampling)")
    g.add_argument("--jump-length", metavar="J", type=int_in(1, 100000, "--jump-length"),
                   help="repaint: steps per block (default 10)")
    g.add_argument("--with", dest="other", metavar="IMG|FOLDER|NPZ",
                   help="interpolate: the other end of each input's interpolation (as many images)")
    g.add_argument("--frames", metavar="K", type=int_in(2, 1000, "--frames"),
                   help="interpolate: images from the input to its partner, both included (default 5)")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder to write (created if missing)")
    add_sampling_flags(p, default_num=1)
    p.set_defaults(sampler=None)                        # each method's own default (ddpm; ddim to interpolate)
    add_run_flags(p)
    p.set_defaults(handler=run)


def _read_images(path: str, shape: tuple, flag: str):
    """The images of ``path`` (a file, a folder or an .npz) as float32 in [-1, 1], refused unless
    shaped ``shape`` (channels, height, width)."""
    import numpy as np
    import torch

    from ..data.dataset import to_tensor
    from ..data.images import load_image_folder, load_npz

    if not os.path.exists(path):
        raise ScorekitError(f"{flag} {path!r}: no such file or folder")
    if os.path.isdir(path):
        x = load_image_folder(path, progress=False).x
    elif path.lower().endswith((".npz", ".npy")):
        x = load_npz(path).x
    else:
        from PIL import Image, UnidentifiedImageError

        try:
            with Image.open(path) as img:
                grey = img.mode in ("1", "L", "LA", "I", "I;16", "F")
                a = np.asarray(img.convert("L" if grey else "RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise ScorekitError(f"{flag} {path!r}: cannot read it as an image ({err})") from None
        x = (a[None, None] if a.ndim == 2 else a.transpose(2, 0, 1)[None]).copy()
    if tuple(x.shape[1:]) != tuple(shape):
        got = "x".join(map(str, x.shape[1:]))
        raise ScorekitError(f"{flag} {path!r} holds images of {got} (channels x height x width) but the "
                            f"model makes {'x'.join(map(str, shape))} images; give images of that size and "
                            f"channel count")
    return to_tensor(np.ascontiguousarray(x)).to(torch.float32)


def _read_mask(path: str, shape: tuple):
    """A greyscale PNG of the model's height and width: ``(1, 1, H, W)``, 1 where white (known)."""
    import numpy as np
    import torch
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            a = np.asarray(img.convert("L"))
    except FileNotFoundError:
        raise ScorekitError(f"--mask {path!r}: no such file") from None
    except (UnidentifiedImageError, OSError) as err:
        raise ScorekitError(f"--mask {path!r}: cannot read it as an image ({err})") from None
    if a.shape != tuple(shape[1:]):
        raise ScorekitError(f"--mask {path!r} is {a.shape[1]}x{a.shape[0]} (width x height) but the model's "
                            f"images are {shape[2]}x{shape[1]}")
    return torch.from_numpy((a >= 128).astype(np.float32))[None, None]


def _method_options(args: argparse.Namespace, shape: tuple) -> dict:
    """The options of the chosen method that its flags set; a flag of another method is refused."""
    given = {key: getattr(args, key) for key in METHOD_FLAGS if getattr(args, key) is not None}
    wrong = [f"{METHOD_FLAGS[k][0]} (for {METHOD_FLAGS[k][1]})" for k in given if METHOD_FLAGS[k][1] != args.method]
    if wrong:
        raise ScorekitError(f"{args.method} takes no {', '.join(wrong)}")
    if args.method == "repaint" and "mask" not in given:
        raise ScorekitError("repaint needs --mask PNG (white where a pixel is known)")
    if args.method == "interpolate" and "other" not in given:
        raise ScorekitError("interpolate needs --with IMG|FOLDER|NPZ (the other end)")
    if args.method == "interpolate" and args.num != 1:
        raise ScorekitError("interpolate is deterministic: give --frames K instead of --num")
    options = {k: v for k, v in given.items() if k not in ("mask", "other", "frames")}
    if "mask" in given:
        options["mask"] = _read_mask(args.mask, shape)
    if args.method == "interpolate":
        import torch

        frames = args.frames or 5
        options["weights"] = torch.linspace(0, 1, frames, dtype=torch.float64).tolist()
    return options


def run(args: argparse.Namespace) -> int:
    import torch

    from ..conditioning import NULL_LABEL
    from ..guidance import guided
    from ..tasks.editing import edit
    from ..timesteps import check_step_count
    from ..train.checkpoint import load_denoiser
    from ..train.distributed import resolve_device
    from ._sampler_flags import sampler_options_from
    from .sample import _class_labels, _guidance, _sample_steps

    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise ScorekitError(f"--out {args.out!r} is a file; give a folder")
    if args.unconditional and args.label is not None:
        raise ScorekitError("give either --class or --unconditional, not both")
    args.sampler = args.sampler or ("ddim" if args.method == "interpolate" else "ddpm")
    if args.method == "interpolate" and args.sampler != "ddim":
        raise ScorekitError("interpolate decodes with ddim (the inverse of its inversion); drop --sampler")
    if args.spacing == "tuned":
        raise ScorekitError("--spacing tuned takes the grid 'scorekit tune' saved for sampling from t_max; "
                            "edits run their own grids: give another --spacing")
    sampler_options = sampler_options_from(args)
    steps = _sample_steps(args)
    device = resolve_device(args.device)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        denoiser = load_denoiser(args.checkpoint, ema=not args.no_ema, device=device)
        ckpt = denoiser.checkpoint
        shape = tuple(ckpt.sample_shape)
        if len(shape) != 3:
            raise ScorekitError(f"scorekit edit edits images; this model makes {shape} vectors")
        x = _read_images(args.input, shape, "--input")
        options = _method_options(args, shape)
        if args.method == "interpolate":
            options["other"] = _read_images(args.other, shape, "--with")
            if options["other"].shape != x.shape:
                raise ScorekitError(f"--with holds {options['other'].shape[0]} images but --input holds "
                                    f"{x.shape[0]}; give one partner per input")
        if steps is not None:
            options["num_steps"] = check_step_count(ckpt.process, steps, "--steps")
        options["spacing"] = args.spacing
        if args.method != "interpolate":
            options.update(sampler=args.sampler, sampler_options=sampler_options)
        D = guided(denoiser, clip=args.clip, **_guidance(args, device))
        labels = None
        if ckpt.num_classes is not None:
            if args.label is not None:
                classes = _class_labels(args.label, ckpt.num_classes, ckpt.config.get("class_names"))
                labels = torch.tensor(classes, dtype=torch.long)
            else:
                labels = torch.tensor([NULL_LABEL])
        elif args.label is not None:
            raise ScorekitError(f"--class {args.label}: this model was trained without labels")
        inputs = x.repeat_interleave(args.num, dim=0)            # each input --num times, in a row
        if "other" in options:
            options["other"] = options["other"].repeat_interleave(args.num, dim=0)
        generator = torch.Generator(device=device).manual_seed(args.seed)
        parts = []
        for lo in range(0, inputs.shape[0], args.batch_size):
            hi = min(lo + args.batch_size, inputs.shape[0])
            batch_options = {k: (v[lo:hi].to(device) if k == "other" else v) for k, v in options.items()}
            if "mask" in batch_options:
                batch_options["mask"] = batch_options["mask"].to(device)
            if args.method != "interpolate":
                batch_options["generator"] = generator
            bound = D if labels is None else D.with_condition(
                labels[torch.arange(lo, hi) % labels.numel()].to(device))
            parts.append(edit(args.method, bound, inputs[lo:hi].to(device), **batch_options).cpu())
        out = torch.cat(parts)
    finally:
        torch.set_num_threads(threads_before)
    if not torch.isfinite(out).all():
        print(f"{PROG} edit: warning: some edits hold NaN or Inf values", file=sys.stderr)
    return _write(args, x, out, options)


def _write(args: argparse.Namespace, x, out, options) -> int:
    import numpy as np
    import torch

    from ..plotting import atomic_path, image_grid

    os.makedirs(args.out, exist_ok=True)
    n = x.shape[0]
    if args.method == "interpolate":
        rows = out.reshape(n, -1, *x.shape[1:])                           # (N, K, C, H, W)
    else:
        rows = torch.cat([x[:, None], out.reshape(n, args.num, *x.shape[1:])], dim=1)
    written = []
    for i in range(n):
        path = os.path.join(args.out, f"{i:04d}.png")
        image_grid(rows[i].clamp(-1, 1), path, nrow=rows.shape[1])
        written.append(path)
    npz = os.path.join(args.out, "edits.npz")
    arrays = {"input": x.numpy().astype(np.float32), "edits": out.numpy().astype(np.float32)}
    if "mask" in options:
        arrays["mask"] = options["mask"].numpy()
    with atomic_path(npz) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    print(f"edited {n} image(s) with {args.method}" + (f", {args.num} edits each" if args.num > 1 else ""))
    print("wrote:")
    print(f"  {written[0]}" + (f" .. {os.path.basename(written[-1])}" if n > 1 else ""))
    print(f"  {npz}")
    return 0
