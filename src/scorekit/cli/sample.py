"""``scorekit sample``: sample a trained model (:func:`scorekit.sampling.sample_batches`)."""
from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import textwrap

from ..errors import ScorekitError
from ._common import PROG, Formatter, add_run_flags, int_in, positive_float, sampler_name, unit_interval
from ._sampler_flags import add_sampler_option_flags, sampler_options_from

#: the --spacing that takes the time steps ``scorekit tune`` saved (:func:`scorekit.load_tuned`)
TUNED = "tuned"


def add(commands) -> None:
    p = commands.add_parser(
        "sample", formatter_class=Formatter,
        help="sample a trained model: write a PNG grid (or scatter plot) and an .npz of the samples",
        description=textwrap.dedent("""\
            Draw samples from a run folder (its newest checkpoint) or a checkpoint folder, with any
            sampler, from the EMA weights by default. Writes --out (a PNG: an image grid, or a
            scatter plot for 2-D points) and the samples themselves beside it as .npz (x: float32
            samples in the data's scale, y: the class labels for a class-conditional model).
            Prints the time taken, the number of network evaluations (NFE) per sample and the
            throughput (samples and network calls per second).

            Class-conditional models sample the classes in turn (0, 1, ..., one column each) unless
            --class names one. The noise comes from --seed; a deterministic sampler on a fixed grid
            (DDIM with eta 0) gives the same samples whatever the --batch-size (ode_adaptive: to
            within its --rtol/--atol, its steps being chosen for the whole batch).

            On a GPU: --batch-size is the knob of throughput (each step evaluates the network once
            for the whole batch, so take the largest batch that fits in memory), --compile compiles
            the network once for all batches, and --precision bf16 evaluates it in bfloat16 while
            the sampler stays in float32 (see docs/sampling.md)."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} sample runs/digits --out digits.png
              {PROG} sample runs/digits --sampler ddpm --steps 100 --variance large --out ddpm.png
              {PROG} sample runs/digits/checkpoints/step-0001000 --no-ema --num 100 --out raw.png
              {PROG} sample runs/8g --sampler ddim --eta 1 --num 5000 --out points.png
              {PROG} sample runs/8g --sampler unipc --steps 10 --spacing tuned --out tuned.png   (after {PROG} tune)
              {PROG} sample runs/mnist --class 7 --guidance-scale 3 --threshold 0.995 --out sevens.png
              {PROG} sample runs/mnist --class 7 --classifier runs/mnist-clf --classifier-scale 4 --out cg.png
              {PROG} sample runs/cifar --device cuda --batch-size 1024 --compile --precision bf16 --num 50000 --out c.png
            """))
    p.add_argument("checkpoint", metavar="RUN_OR_CKPT", help="a run folder or a checkpoint folder")
    add_sampling_flags(p)
    add_speed_flags(p)
    p.add_argument("--out", metavar="FILE.png", default="samples.png",
                   help="the image to write; the samples go to the same name with .npz")
    add_run_flags(p)
    p.set_defaults(handler=run)


def add_sampling_flags(p: argparse.ArgumentParser, *, default_num: int = 64, counts: bool = True) -> None:
    """The flags that say how to sample a run (shared by ``sample``, ``eval`` and ``restore``): the
    sampler, its steps, grid and options, clipping and thresholding, guidance, the classes and the
    number of samples (unless ``counts`` is false: ``restore`` draws them per input), the seed, the
    batch size and the weights."""
    from ..samplers import SAMPLERS
    from ..samplers.options import ADAPTIVE_SAMPLERS
    from ..timesteps import CONTINUOUS_SPACINGS, DEFAULT_SAMPLE_STEPS, DISCRETE_SPACINGS

    p.add_argument("--sampler", choices=list(SAMPLERS), type=sampler_name, default="ddim", help="the sampler")
    p.add_argument("--steps", metavar="N", type=int_in(1, 100000, "--steps"),
                   help=f"sampler steps (network evaluations for DDIM and DDPM), at most T for ddpm and "
                        f"simple_ve models (default: {DEFAULT_SAMPLE_STEPS}, or T if smaller); not for "
                        f"{', '.join(ADAPTIVE_SAMPLERS)}, which chooses its own (its NFE is printed)")
    p.add_argument("--spacing", choices=[*sorted(set(DISCRETE_SPACINGS) | set(CONTINUOUS_SPACINGS)), TUNED],
                   help="how the steps are spaced (default: the process's own: trailing for DDPM, karras for "
                        "EDM, uniform for the SDEs); tuned: the time steps 'scorekit tune' saved for this "
                        "sampler and step count")
    p.add_argument("--schedule", dest="deprecated_schedule", choices=("default", "tuned"),
                   help=argparse.SUPPRESS)          # the old name of --spacing tuned; see _deprecated_schedule
    add_sampler_option_flags(p)
    p.add_argument("--clip", metavar="X", type=positive_float("--clip"),
                   help="clamp the predicted x_0 to [-X, X] at every step (e.g. 1 for images)")
    p.add_argument("--threshold", metavar="P", type=unit_interval("--threshold", closed_top=True),
                   help="dynamic thresholding of the predicted x_0 at percentile P of |x_0| per sample "
                        "(Imagen; e.g. 0.995): keeps large guidance scales in the data range")
    p.add_argument("--threshold-max", metavar="M", type=positive_float("--threshold-max"),
                   help="cap the threshold of --threshold at M >= 1 (default: no cap, as in Imagen; "
                        "diffusers' sample_max_value; 1 is --clip 1)")
    g = p.add_argument_group(
        "guidance", "steer a class-conditional model towards --class (see docs/guidance.md)")
    g.add_argument("--guidance-scale", metavar="W", type=float,
                   help="classifier-free guidance weight w: D = D(null) + w (D(class) - D(null)); 1 is the "
                        "plain conditional model, 0 the unconditional one, 2-5 typical (diffusers' "
                        "guidance_scale; the paper's w is W - 1). Needs a model trained on labelled data "
                        "with label dropout (on by default); each step evaluates the network once on the "
                        "conditional and unconditional batch together")
    g.add_argument("--guidance-interval", metavar="LO,HI", type=_interval,
                   help="guide only where the noise level sigma/alpha lies in (LO, HI] (Kynkaanniemi et "
                        "al. 2024; e.g. 0.28,5.42 for EDM-scaled images); the plain conditional model elsewhere")
    g.add_argument("--guidance-rescale", metavar="PHI", type=unit_interval("--guidance-rescale", closed_top=True),
                   default=0.0,
                   help="guidance rescale (Lin et al. 2024): match the guided prediction's spread to the "
                        "conditional one's by this fraction (e.g. 0.7)")
    g.add_argument("--classifier", metavar="RUN",
                   help="classifier guidance with the noise-aware classifier of RUN (trained with "
                        f"'{PROG} train --objective classifier' on the same data and process)")
    g.add_argument("--classifier-scale", metavar="S", type=float, default=1.0,
                   help="classifier guidance scale s: score + s grad log p(class | x_t); 1 samples "
                        "p(x | class) with an exact classifier, larger values trade diversity for fidelity")
    if counts:
        p.add_argument("--num", metavar="N", type=int_in(1, 1000000, "--num"), default=default_num,
                       help="number of samples")
        p.add_argument("--class", dest="label", metavar="K[,K...]",
                       help="the class(es) to sample from a class-conditional model, by number or by the "
                            "name 'scorekit info' lists (e.g. 3 or cat, or cat,dog in turn; default: all "
                            "classes in turn)")
        p.add_argument("--unconditional", action="store_true",
                       help="sample a class-conditional model without labels (it learnt this through "
                            "label dropout)")
    p.add_argument("--seed", metavar="S", type=int_in(0, 2 ** 63 - 1, "--seed"), default=0,
                   help="seed of the noise")
    p.add_argument("--batch-size", metavar="B", type=int_in(1, 1000000, "--batch-size"), default=256,
                   help="samples per network call; on a GPU the knob of throughput: the largest batch "
                        "that fits in memory draws the most samples per second")
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="sample on when the state becomes NaN or Inf (by default that is an error "
                        "naming the step where it happened)")


def add_speed_flags(p: argparse.ArgumentParser) -> None:
    """--compile and --precision: how the network is evaluated (``compile=`` and ``precision=`` of
    :func:`scorekit.sampling.sample_batches`); for the commands that sample through :func:`draw`."""
    from ..acceleration import PRECISIONS

    g = p.add_argument_group("speed", "how the network is evaluated (for GPUs; see docs/sampling.md)")
    g.add_argument("--compile", action="store_true",
                   help="torch.compile the network once, before the first batch, which every batch then "
                        "reuses (the first batch's time includes compiling: worth it for many batches)")
    g.add_argument("--precision", choices=list(PRECISIONS), default="fp32",
                   help="the network's arithmetic: bf16 runs it under bfloat16 autocast (fast on GPUs with "
                        "bfloat16 units) while the sampler's state and steps stay float32; samples then "
                        "differ from fp32 by about bfloat16's rounding, 2^-8 relative")


#: training samples per reverse step on which ``sample --variance analytic`` estimates Analytic-DPM's
#: variances (Bao et al. 2022 report stable estimates from 100 per step)
ANALYTIC_SAMPLES = 100


def _analytic_variances(args: argparse.Namespace, ckpt, timesteps, device, classes):
    """Analytic-DPM's reverse variances on ``timesteps`` (:func:`scorekit.variances.analytic_variances`),
    estimated on :data:`ANALYTIC_SAMPLES` training samples per step drawn with seed ``--seed + 2``:
    with one ``--class`` on that class's samples and label, otherwise on all of them without labels
    (for a class-conditional model that is the larger, marginal posterior variance)."""
    import torch

    from ..data import dataset_from_config
    from ..train.checkpoint import checkpoint_denoiser
    from ..variances import analytic_variances

    if not ckpt.data_config:
        raise ScorekitError(f"--variance analytic is estimated on the run's training data, but {ckpt.path} "
                            f"records none; use --variance small or large")
    data = dataset_from_config(ckpt.data_config, progress=False if args.no_progress else None)
    x, y = data.x, None
    if classes is not None and len(classes) == 1 and data.y is not None:
        x = x[data.y == classes[0]]
        y = torch.full((ANALYTIC_SAMPLES,), classes[0], dtype=torch.long, device=device)
    denoiser = checkpoint_denoiser(ckpt, ema=not args.no_ema, y=y)
    return analytic_variances(denoiser, ckpt.process, x.to(device), num_samples=ANALYTIC_SAMPLES,
                              timesteps=timesteps, generator=torch.Generator().manual_seed(args.seed + 2),
                              progress=not args.no_progress)


def _class_labels(text: str, num_classes: int, class_names, flag: str = "--class") -> list[int]:
    """The labels ``flag`` (``--class``) names: comma-separated numbers ``0 .. num_classes-1`` or
    names of ``class_names`` (the run's, e.g. an image folder's sub-folders)."""
    names = list(class_names or [])
    listing = (", ".join(f"{i} {n}" for i, n in enumerate(names)) if names else
               f"0 to {num_classes - 1} (this run stores no class names)")
    labels = []
    for part in text.split(","):
        part = part.strip()
        if part in names:
            labels.append(names.index(part))
            continue
        try:
            k = int(part)
        except ValueError:
            raise ScorekitError(f"{flag} {part!r} is not a class of this model; its classes are: {listing}") from None
        if not 0 <= k < num_classes:
            raise ScorekitError(f"{flag} {k} is outside 0..{num_classes - 1}; the model's classes are: {listing}")
        labels.append(k)
    return labels


def _deprecated_schedule(args: argparse.Namespace) -> None:
    """``--schedule default|tuned``, which chose between the default grid and the tuned one before
    --spacing took ``tuned``: still accepted, onto --spacing, with a one-line warning (the flag
    names the beta schedule in ``scorekit train``)."""
    old = args.deprecated_schedule
    if old is None:
        return
    if old == TUNED and args.spacing not in (None, TUNED):
        raise ScorekitError(f"give either --spacing {args.spacing} or --spacing tuned (written --schedule "
                            f"tuned before), not both")
    advice = "use --spacing tuned" if old == TUNED else \
        "leave it out for the process's own grid, or choose one with --spacing"
    print(f"{PROG} sample: warning: --schedule {old} is deprecated and will be removed ('{PROG} train "
          f"--schedule' is the beta schedule); {advice}", file=sys.stderr, flush=True)
    if old == TUNED:
        args.spacing = TUNED


def _interval(text: str) -> tuple[float, float]:
    """``LO,HI`` of --guidance-interval."""
    parts = text.split(",")
    try:
        lo, hi = (float(v) for v in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--guidance-interval takes two noise levels LO,HI (e.g. "
                                         f"0.28,5.42), got {text!r}") from None
    return lo, hi


def _guidance(args: argparse.Namespace, device) -> dict:
    """The guidance arguments of :func:`scorekit.sample` that the flags ask for."""
    from ..train.checkpoint import load_classifier

    if args.classifier is None and args.classifier_scale != 1.0:
        raise ScorekitError("--classifier-scale needs --classifier RUN")
    kwargs = dict(guidance_scale=args.guidance_scale, guidance_interval=args.guidance_interval,
                  guidance_rescale=args.guidance_rescale, threshold=args.threshold,
                  threshold_max=args.threshold_max)
    if args.classifier is not None:
        kwargs.update(classifier=load_classifier(args.classifier, device=device),
                      classifier_scale=args.classifier_scale)
    return kwargs


def _sample_steps(args: argparse.Namespace) -> int | None:
    """``--steps`` (``None``: the default for the model); an adaptive sampler chooses its own
    steps, so it refuses --steps and --spacing (tuned too) and gets the grid of one step
    (whose first and last times are all it uses)."""
    from ..samplers.options import ADAPTIVE_SAMPLERS

    if args.sampler not in ADAPTIVE_SAMPLERS:
        return args.steps
    given = [flag for flag, value in (("--steps", args.steps), ("--spacing", args.spacing)) if value is not None]
    if given:
        raise ScorekitError(f"--sampler {args.sampler} chooses its own steps (--rtol and --atol set its "
                            f"accuracy; the NFE is printed): drop {', '.join(given)}")
    return 1


@dataclasses.dataclass
class Drawn:
    """What :func:`draw` returns: the samples and how they were made."""

    x: object                 # (N, ...) float32 samples on the CPU
    labels: object            # (N,) class labels, or None
    result: object            # scorekit.sampling.BatchedSamples
    ckpt: object              # the checkpoint the samples come from
    steps: int
    classes: list | None      # the --class labels
    num_classes: int | None

    def step_text(self, args: argparse.Namespace) -> str:
        """``"N steps"``, or ``"adaptive steps"`` for a sampler that chooses its own."""
        from ..samplers.options import ADAPTIVE_SAMPLERS

        return f"{self.steps} steps" if args.sampler not in ADAPTIVE_SAMPLERS else "adaptive steps"

    def throughput(self, args: argparse.Namespace) -> str:
        """Samples and network calls per second, in words; with --compile and several batches also
        the rate after the first batch, which compiled the network."""
        result = self.result
        text = (f"{result.samples_per_second:.4g} samples/s, {result.calls_per_second:.4g} network calls/s "
                f"(--batch-size {args.batch_size}, --precision {args.precision}"
                f"{', --compile' if args.compile else ''})")
        if args.compile and len(result.batch_seconds) > 1:
            rest = sum(result.batch_seconds[1:])
            samples = result.x.shape[0] - min(args.batch_size, result.x.shape[0])
            if rest > 0:
                text += (f"; after the first batch, which compiled the network: {samples / rest:.4g} "
                         f"samples/s, {sum(result.calls[1:]) / rest:.4g} network calls/s")
        return text

    def cost(self, args: argparse.Namespace) -> str:
        """The sampler, its steps and network calls per sample, in words."""
        cost = f"NFE {self.result.nfe:g} per sample"
        if args.guidance_scale is not None:
            cost += ", each on the conditional and unconditional batch together"
        if args.classifier is not None:
            cost += f", {self.result.classifier_calls / max(len(self.result.calls), 1):g} classifier gradients"
        return f"{args.sampler} ({self.step_text(args)}, {cost})"


def draw(args: argparse.Namespace, path: str, device) -> Drawn:
    """Sample the run or checkpoint ``path`` as the flags of :func:`add_sampling_flags` say."""
    import torch

    from ..sampling import sample_batches
    from ..train.checkpoint import load_denoiser
    from ..timesteps import check_step_count, default_step_count

    _deprecated_schedule(args)
    options = sampler_options_from(args)
    steps = _sample_steps(args)
    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        denoiser = load_denoiser(path, ema=not args.no_ema, device=device)
        ckpt = denoiser.checkpoint
        guidance = _guidance(args, device)
        classifier = guidance.get("classifier")
        dropout = ckpt.config.get("label_dropout")
        if (args.guidance_scale is not None or args.unconditional) and ckpt.num_classes is not None \
                and dropout is not None and dropout <= 0:
            print(f"{PROG} {args.command}: warning: this model was trained with --label-dropout 0, so its "
                  f"unconditional prediction was never trained; guidance and --unconditional use it",
                  file=sys.stderr, flush=True)
        num_classes = ckpt.num_classes
        if num_classes is None and classifier is not None:  # an unconditional model steered by classes
            num_classes = classifier.num_classes
        classes = None                                  # the --class labels, in turn
        if args.unconditional and args.label is not None:
            raise ScorekitError("give either --class or --unconditional, not both")
        if args.unconditional:
            if args.guidance_scale is not None or classifier is not None:
                raise ScorekitError("guidance steers towards a class: give --class or leave out --unconditional")
            if num_classes is None:
                raise ScorekitError("--unconditional: this model was trained without labels; it is "
                                    "unconditional already")
            labels = None
        elif args.label is not None:
            if num_classes is None:
                raise ScorekitError(f"--class {args.label}: this model was trained without labels")
            classes = _class_labels(args.label, num_classes, ckpt.config.get("class_names"))
            labels = torch.tensor(classes, dtype=torch.long)[torch.arange(args.num) % len(classes)]
        elif num_classes is not None:
            labels = torch.arange(args.num) % num_classes
        else:
            labels = None
        shape = (args.num, *ckpt.sample_shape)
        x_T = ckpt.process.prior_sample(shape, generator=torch.Generator().manual_seed(args.seed))
        noise = torch.Generator(device=device).manual_seed(args.seed + 1)
        steps = default_step_count(ckpt.process) if steps is None else check_step_count(ckpt.process, steps,
                                                                                         "--steps")
        timesteps, spacing = None, args.spacing
        if spacing == TUNED:                             # a saved grid, not a rule for one
            from ..schedule_tuning import load_tuned_for_steps

            spacing = None
            timesteps = load_tuned_for_steps(ckpt.path, ckpt.process, args.sampler, steps, **options).timesteps
        if isinstance(options.get("variance"), str) and options["variance"] == "analytic":
            from ..timesteps import make_timesteps

            if timesteps is None:
                timesteps = make_timesteps(ckpt.process, steps, spacing)
            options["variance"] = _analytic_variances(args, ckpt, timesteps, device, classes)
        result = sample_batches(denoiser, x_T, batch_size=args.batch_size, condition=labels, device=device,
                                generator=noise, sampler=args.sampler, num_steps=steps,
                                spacing=spacing, timesteps=timesteps, clip=args.clip,
                                progress=not args.no_progress, check_finite=not args.allow_nonfinite,
                                compile=args.compile, precision=args.precision, **guidance, **options)
    finally:
        torch.set_num_threads(threads_before)
    return Drawn(result.x, labels, result, ckpt, steps, classes, num_classes)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ..plotting import atomic_path
    from ..train.distributed import resolve_device
    from ..train.trainer import write_samples

    out = args.out
    if not out.lower().endswith(".png"):
        raise ScorekitError(f"--out {out!r} must name a .png file (the samples go beside it as .npz)")
    if os.path.isdir(out):
        raise ScorekitError(f"--out {out!r} is a folder; give a file name ending in .png")
    folder = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(folder):
        raise ScorekitError(f"the folder of --out {out!r} does not exist; create it first")
    drawn = draw(args, args.checkpoint, resolve_device(args.device))
    x0, labels, ckpt, classes, num_classes = drawn.x, drawn.labels, drawn.ckpt, drawn.classes, drawn.num_classes
    if not torch.isfinite(x0).all():
        bad = int((~torch.isfinite(x0.reshape(x0.shape[0], -1)).all(1)).sum())
        print(f"{PROG} sample: warning: {bad} of {args.num} samples hold NaN or Inf values",
              file=sys.stderr)
    npz = os.path.splitext(out)[0] + ".npz"
    data = None
    if len(ckpt.sample_shape) == 1:                       # points: draw the data beside them
        try:
            from ..data import dataset_from_config

            data = (dataset_from_config(ckpt.data_config, progress=False if args.no_progress else None).x
                    if ckpt.data_config else None)
        except ScorekitError:
            data = None
    title = f"{args.sampler}, {drawn.step_text(args)}, {'raw' if args.no_ema else 'EMA'} weights, step {ckpt.step}"
    if args.guidance_scale is not None:
        title += f", guidance {args.guidance_scale:g}"
    if args.classifier is not None:
        title += f", classifier scale {args.classifier_scale:g}"
    try:
        arrays = {"x": x0.numpy().astype(np.float32)}
        if labels is not None:
            arrays["y"] = labels.numpy()
        # the .npz is renamed into place only once the PNG (itself written atomically) is: a
        # failure leaves both as they were
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **arrays)
            write_samples(x0, out, data=data, title=title,
                          nrow=None if labels is None or classes is not None and len(classes) == 1
                          else len(classes or range(num_classes)))
    except OSError as err:
        raise ScorekitError(f"cannot write {out!r}: {err.strerror or err}") from None
    print(f"sampled {args.num} in {drawn.result.seconds:.2f} s with {drawn.cost(args)} "
          f"from step {ckpt.step} of {ckpt.path}")
    print(f"throughput: {drawn.throughput(args)}")
    print("wrote:")
    print(f"  {out}")
    print(f"  {npz}")
    return 0
