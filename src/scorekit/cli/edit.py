"""``scorekit edit``: training-free editing with a trained model (:mod:`scorekit.tasks`: SDEdit,
ILVR, RePaint, interpolation, inversion editing) and linear inverse problems with it as the prior
(:mod:`scorekit.tasks.inverse`: DPS, PiGDM, moment matching, projection)."""
from __future__ import annotations

import argparse
import os
import sys
import textwrap

from ..errors import ScorekitError
from ._common import PROG, Formatter, add_run_flags, check_out_folder, int_in, staged_outputs, unit_interval

#: the editing methods the command offers
EDITS = ("sdedit", "ilvr", "repaint", "interpolate", "inversion")
#: the deterministic ones: DDIM and its inversion, one output per input
DDIM_EDITS = ("interpolate", "inversion")
#: the inverse-problem solvers it offers (scorekit.tasks.inverse.INVERSE_METHODS)
SOLVERS = ("dps", "pigdm", "moment_matching", "projection")
METHODS = EDITS + SOLVERS
#: the measurement operators of the solvers
OPERATOR_NAMES = ("downsample", "mask", "greyscale")

#: which methods each method-specific flag belongs to
METHOD_FLAGS = {"strength": ("--strength", ("sdedit",)), "factor": ("--factor", ("ilvr",) + SOLVERS),
                "mask": ("--mask", ("repaint",) + SOLVERS), "resamplings": ("--resamplings", ("repaint",)),
                "jump_length": ("--jump-length", ("repaint",)), "other": ("--with", ("interpolate",)),
                "frames": ("--frames", ("interpolate",)), "source": ("--from-class", ("inversion",)),
                "operator": ("--operator", SOLVERS),
                "sigma_y": ("--sigma-y", SOLVERS), "zeta": ("--zeta", ("dps",))}


def add(commands) -> None:
    from .sample import add_sampling_flags

    p = commands.add_parser(
        "edit", formatter_class=Formatter,
        help="edit images with a trained model, no training: SDEdit, ILVR, RePaint, interpolation, "
             "inversion editing, inverse problems",
        description=textwrap.dedent("""\
            Edit the images of --input (an image file, a folder of them, or an .npz) with the model
            of a run folder or checkpoint folder by METHOD, training nothing (see docs/tasks.md):

              sdedit       noise each image to --strength of the time range and denoise it
              ilvr         sample with each image's low frequencies (block means of --factor)
              repaint      fill the pixels where --mask is black, keep the white ones
              interpolate  --frames images between each input and its --with partner, through
                           their DDIM latents
              inversion    (a class-conditional model) invert each input with DDIM under
                           --from-class, or the null label, and decode the latent under --class:
                           the same layout, another class

            and, with the model as the prior of a linear inverse problem y = A x + noise, where
            --input holds the measurements y and --operator names A:

              dps, pigdm, moment_matching, projection
                           sample p(x | y) (moment_matching is exact for Gaussian data; dps the
                           most robust on trained models; see docs/tasks.md)
              --operator downsample   y: the mean of each --factor x --factor block (super-
                                      resolution); --input images are --factor times smaller
              --operator mask         y: the pixels where --mask is white (inpainting)
              --operator greyscale    y: the luma of colour images (colourisation); --input is grey

            The edited images must have the model's size and channels. Writes one PNG per input
            into --out (the input, then its --num edits side by side; a measurement is shown
            through the operator's pseudo-inverse; for interpolate the frames from the input to
            its partner) and edits.npz (input and edits as float32 in [-1, 1]), all or nothing: if
            a write fails (a full disk), --out is left as it was. The noise comes from --seed."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} edit runs/mnist sdedit --input strokes/ --strength 0.5 --num 4 --out edits
              {PROG} edit runs/mnist ilvr --input digit.png --factor 8 --num 8 --out ilvr
              {PROG} edit runs/mnist repaint --input digits.npz --mask top-half.png --out filled
              {PROG} edit runs/mnist interpolate --input a.png --with b.png --frames 7 --out morph
              {PROG} edit runs/mnist inversion --input threes/ --from-class 3 --class 8 --out to-eight
              {PROG} edit runs/mnist dps --operator downsample --factor 4 --input low-res/ --num 4 --out sr
              {PROG} edit runs/mnist pigdm --operator mask --mask known.png --input digits.npz --out filled
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
                   help="ilvr: the block size of the low-pass filter; solvers with --operator downsample: "
                        "the downsampling factor (default 4)")
    g.add_argument("--mask", metavar="PNG",
                   help="repaint, and solvers with --operator mask: a greyscale image of the model's size, "
                        "white (>= 128) where a pixel is known, black where it is to be filled")
    g.add_argument("--operator", choices=OPERATOR_NAMES,
                   help="dps, pigdm, moment_matching, projection: the measurement operator A of y = A x "
                        "(default: mask with --mask, else downsample)")
    g.add_argument("--sigma-y", metavar="S", type=float,
                   help="solvers: the standard deviation of the measurement noise, in the [-1, 1] pixel "
                        "scale (default 0: noiseless)")
    g.add_argument("--zeta", metavar="Z", type=float,
                   help="dps: the step size of the likelihood gradient (default 10)")
    g.add_argument("--resamplings", metavar="R", type=int_in(1, 1000, "--resamplings"),
                   help="repaint: times each block of steps is taken (default 10; 1: no resampling)")
    g.add_argument("--jump-length", metavar="J", type=int_in(1, 100000, "--jump-length"),
                   help="repaint: steps per block (default 10)")
    g.add_argument("--with", dest="other", metavar="IMG|FOLDER|NPZ",
                   help="interpolate: the other end of each input's interpolation (as many images)")
    g.add_argument("--frames", metavar="K", type=int_in(2, 1000, "--frames"),
                   help="interpolate: images from the input to its partner, both included (default 5)")
    g.add_argument("--from-class", dest="source", metavar="K[,K...]",
                   help="inversion: the class(es) the inputs are inverted under, in turn (default: the null "
                        "label, for a model trained with label dropout); --class gives the classes to decode "
                        "under")
    p.add_argument("--out", metavar="DIR", required=True, help="the folder to write (created if missing)")
    add_sampling_flags(p, default_num=1)
    p.set_defaults(sampler=None)                        # each method's own default (ddpm; ddim to interpolate)
    add_run_flags(p)
    p.set_defaults(handler=run)


def _read_images(path: str, shape: tuple, flag: str):
    """The images of ``path`` (a file, a folder or an .npz; :func:`scorekit.data.user_images.read_images`)
    as float32 in [-1, 1], refused unless shaped ``shape`` (channels, height, width)."""
    import torch

    from ..data.user_images import check_images, read_images

    x, _, _ = read_images(path, flag)
    return check_images(x, shape, path, flag).to(torch.float32)


def _read_mask(path: str, shape: tuple):
    """A mask image of the model's height and width: ``(1, 1, H, W)``, 1 where white (known)."""
    from ..data.user_images import read_mask

    return read_mask(path, shape[1:], "--mask")


def _method_options(args: argparse.Namespace, shape: tuple) -> dict:
    """The options of the chosen method that its flags set; a flag of another method is refused."""
    given = {key: getattr(args, key) for key in METHOD_FLAGS if getattr(args, key) is not None}
    wrong = [f"{METHOD_FLAGS[k][0]} (for {', '.join(METHOD_FLAGS[k][1])})" for k in given
             if args.method not in METHOD_FLAGS[k][1]]
    if wrong:
        raise ScorekitError(f"{args.method} takes no {', '.join(wrong)}")
    if args.method == "repaint" and "mask" not in given:
        raise ScorekitError("repaint needs --mask PNG (white where a pixel is known)")
    if args.method == "interpolate" and "other" not in given:
        raise ScorekitError("interpolate needs --with IMG|FOLDER|NPZ (the other end)")
    if args.method == "interpolate" and args.num != 1:
        raise ScorekitError("interpolate is deterministic: give --frames K instead of --num")
    if args.method == "inversion" and args.num != 1:
        raise ScorekitError("inversion is deterministic: one edit per input; drop --num")
    if args.method == "inversion" and args.label is None:
        raise ScorekitError("inversion needs --class K[,K...], the class(es) to decode each input under")
    if args.method in SOLVERS:
        return _solver_options(args, given, shape)
    options = {k: v for k, v in given.items() if k not in ("mask", "other", "frames", "source")}
    if "mask" in given:
        options["mask"] = _read_mask(args.mask, shape)
    if args.method == "interpolate":
        import torch

        frames = args.frames or 5
        options["weights"] = torch.linspace(0, 1, frames, dtype=torch.float64).tolist()
    return options


def _solver_options(args: argparse.Namespace, given: dict, shape: tuple) -> dict:
    """The operator, the measurement shape and the method's options of an inverse-problem solver."""
    from ..tasks.operators import Downsample, Greyscale, Mask

    operator = given.get("operator") or ("mask" if "mask" in given else "downsample")
    if operator != "mask" and "mask" in given:
        raise ScorekitError(f"--mask is the mask of --operator mask, not of --operator {operator}")
    if operator != "downsample" and "factor" in given:
        raise ScorekitError(f"--factor is the factor of --operator downsample, not of --operator {operator}")
    C, H, W = shape
    if operator == "mask":
        if "mask" not in given:
            raise ScorekitError("--operator mask needs --mask PNG (white where a pixel is known)")
        A, y_shape = Mask(_read_mask(args.mask, shape)), shape
    elif operator == "greyscale":
        if C != 3:
            raise ScorekitError(f"--operator greyscale measures colour images, but the model makes {C}-channel "
                                f"images")
        A, y_shape = Greyscale(), (1, H, W)
    else:
        factor = given.get("factor", 4)
        if H % factor or W % factor:
            raise ScorekitError(f"--factor {factor} does not divide the model's {H}x{W} images")
        A, y_shape = Downsample(factor), (C, H // factor, W // factor)
    options = {}
    if "zeta" in given:
        options["zeta"] = given["zeta"]
    sigma_y = given.get("sigma_y", 0.0)
    if not sigma_y >= 0:
        raise ScorekitError(f"--sigma-y must be >= 0, got {sigma_y}")
    return {"A": A, "y_shape": y_shape, "sigma_y": float(sigma_y), "options": options}


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

    check_out_folder(args.out)
    if args.unconditional and args.label is not None:
        raise ScorekitError("give either --class or --unconditional, not both")
    args.sampler = args.sampler or ("ddim" if args.method in DDIM_EDITS else "ddpm")
    if args.method in DDIM_EDITS and args.sampler != "ddim":
        raise ScorekitError(f"{args.method} decodes with ddim (the inverse of its inversion); drop --sampler")
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
        options = _method_options(args, shape)
        x = _read_images(args.input, options.get("y_shape", shape), "--input")
        if args.method == "interpolate":
            options["other"] = _read_images(args.other, shape, "--with")
            if options["other"].shape != x.shape:
                raise ScorekitError(f"--with holds {options['other'].shape[0]} images but --input holds "
                                    f"{x.shape[0]}; give one partner per input")
        if steps is not None:
            options["num_steps"] = check_step_count(ckpt.process, steps, "--steps")
        options["spacing"] = args.spacing
        if args.method in SOLVERS:
            options.update(sampler=args.sampler, sampler_options=sampler_options)
        elif args.method not in DDIM_EDITS:
            options.update(sampler=args.sampler, sampler_options=sampler_options)
        D = guided(denoiser, clip=args.clip, **_guidance(args, device))
        labels, targets = None, None
        if args.method == "inversion":
            labels, targets = _inversion_labels(args, ckpt)
        elif ckpt.num_classes is not None:
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
            if args.method not in DDIM_EDITS:
                batch_options["generator"] = generator
            if targets is not None:
                batch_options["target"] = targets[torch.arange(lo, hi) % targets.numel()].to(device)
            bound = D if labels is None else D.with_condition(
                labels[torch.arange(lo, hi) % labels.numel()].to(device))
            if args.method in SOLVERS:
                parts.append(_solve(args.method, bound, inputs[lo:hi].to(device), batch_options).detach().cpu())
            else:
                parts.append(edit(args.method, bound, inputs[lo:hi].to(device), **batch_options).cpu())
        out = torch.cat(parts)
    finally:
        torch.set_num_threads(threads_before)
    if not torch.isfinite(out).all():
        print(f"{PROG} edit: warning: some edits hold NaN or Inf values", file=sys.stderr)
    return _write(args, x, out, options)


def _inversion_labels(args: argparse.Namespace, ckpt):
    """``(source, target)`` label tensors of inversion editing: ``--from-class`` (or the null
    label) and ``--class``, each used in turn over the inputs."""
    import torch

    from ..conditioning import NULL_LABEL
    from .sample import _class_labels

    if ckpt.num_classes is None:
        raise ScorekitError("inversion changes the class an image is decoded under, but this model was trained "
                            "without labels; give a run trained on labelled data")
    names = ckpt.config.get("class_names")
    targets = torch.tensor(_class_labels(args.label, ckpt.num_classes, names), dtype=torch.long)
    if args.source is not None:
        return torch.tensor(_class_labels(args.source, ckpt.num_classes, names, "--from-class"),
                            dtype=torch.long), targets
    dropout = ckpt.config.get("label_dropout")                  # as trained (the default resolved)
    if dropout is not None and not dropout > 0:
        raise ScorekitError("this model was trained with --label-dropout 0, so it has no unconditional mode to "
                            "invert under; give --from-class K, the inputs' class")
    return torch.tensor([NULL_LABEL]), targets


def _solve(method: str, denoiser, y, options: dict):
    """Samples of ``p(x | y)`` by one of :data:`SOLVERS` (:func:`scorekit.tasks.inverse.solve_inverse`)."""
    from ..tasks.inverse import solve_inverse

    kwargs = {k: options[k] for k in ("sampler", "sampler_options", "generator", "spacing") if k in options}
    if "num_steps" in options:
        kwargs["num_steps"] = options["num_steps"]
    return solve_inverse(denoiser, options["A"], y, method=method, sigma_y=options["sigma_y"],
                         options=options["options"], **kwargs)


def _write(args: argparse.Namespace, x, out, options) -> int:
    import numpy as np
    import torch

    from ..plotting import atomic_path, image_grid

    n = x.shape[0]
    measurement = x
    if "A" in options:                                    # a measurement: shown through A^+
        x = options["A"].pinv(x).clamp(-1, 1)
    if args.method == "interpolate":
        rows = out.reshape(n, -1, *x.shape[1:])                           # (N, K, C, H, W)
    else:
        rows = torch.cat([x[:, None], out.reshape(n, args.num, *x.shape[1:])], dim=1)
    arrays = {"input": x.numpy().astype(np.float32), "edits": out.numpy().astype(np.float32)}
    if "mask" in options:
        arrays["mask"] = options["mask"].numpy()
    if "A" in options:
        arrays["measurement"] = measurement.numpy().astype(np.float32)
        if hasattr(options["A"], "mask"):
            arrays["mask"] = options["A"].mask.numpy()
    pngs = [f"{i:04d}.png" for i in range(n)]
    with staged_outputs(args.out) as stage:            # all or nothing: --out unchanged on a failure
        for i, name in enumerate(pngs):
            image_grid(rows[i].clamp(-1, 1), os.path.join(stage, name), nrow=rows.shape[1])
        with atomic_path(os.path.join(stage, "edits.npz")) as tmp, open(tmp, "wb") as fh:
            np.savez(fh, **arrays)
    written = [os.path.join(args.out, name) for name in pngs]
    npz = os.path.join(args.out, "edits.npz")
    print(f"edited {n} image(s) with {args.method}" + (f", {args.num} edits each" if args.num > 1 else ""))
    print("wrote:")
    print(f"  {written[0]}" + (f" .. {os.path.basename(written[-1])}" if n > 1 else ""))
    print(f"  {npz}")
    return 0
