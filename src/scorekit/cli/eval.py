"""``scorekit eval``: score a run's samples (or a file of samples) against a reference dataset
with FID, KID, IS and precision/recall (:mod:`scorekit.evaluation`)."""
from __future__ import annotations

import argparse
import os
import textwrap
import time

from ..errors import ScorekitError
from ._common import PROG, Formatter, add_run_flags, check_json_out, file_above, int_in, key_value
from .sample import add_sampling_flags, add_speed_flags

#: --features names besides a path
FEATURE_CHOICES = ("auto", "digits", "cifar10", "inception")


def add(commands) -> None:
    from ..evaluation import METRICS

    p = commands.add_parser(
        "eval", formatter_class=Formatter,
        help="score samples of a run (or an .npz / image folder of samples) against a dataset: FID, "
             "KID, IS, precision/recall",
        description=textwrap.dedent(f"""\
            Measure how close generated images are to real ones. SOURCE is a run folder or checkpoint
            (it is sampled: --num samples with the sampler flags of '{PROG} sample'), an .npz of
            samples (x in [-1, 1] or uint8 pixels, optional labels y; what '{PROG} sample' writes),
            or a folder of images. The samples are compared with --ref (by default the run's
            training data) through the features of one network:

              FID        Frechet distance of Gaussians fitted to the features (lower is better;
                         biased upwards at small N: compare at equal --num)
              KID        unbiased squared MMD, cubic kernel, mean over subsets (lower is better)
              IS         Inception Score exp E KL(p(y|x) || p(y)) of the samples (higher is better)
              pr         precision (samples that look real) and recall (real data the samples
                         reach), Kynkaanniemi et al. 2019 (higher is better)

            --features chooses the network: 'digits' or 'cifar10' (a classifier scorekit trains on
            labelled images -- --features-data, by default the reference -- once, then reads from
            --cache; its held-out accuracy is printed), 'inception' (the standard FID Inception
            network; --inception-weights FILE.safetensors, see docs/evaluation.md for how to obtain
            and convert it once), or a PATH (a feature network folder, or Inception weights). 'auto'
            takes digits for greyscale images and cifar10 for colour. Numbers from different
            feature networks are not comparable: report which one you used.

            The reference's features are computed once and cached in --cache, keyed by the
            network's weights and the data's content. Prints a table of each score with its
            standard error (docs/evaluation.md says how each is estimated); --out writes them as
            JSON."""),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} eval runs/digits --num 1000                    against the run's own data
              {PROG} eval runs/mnist --ref mnist:data/mnist --ref-option start=8000 --sampler ddim --steps 50
              {PROG} eval samples.npz --ref folder:data/cifar10 --features cifar10 --metrics fid,kid
              {PROG} eval samples.npz --ref folder:data/cifar10 --features inception \\
                     --inception-weights pt_inception-2015-12-05.safetensors --out scores.json
              {PROG} eval runs/mnist-cond --per-class --guidance-scale 2   per-class FID of a conditional run
            """))
    p.add_argument("source", metavar="SOURCE", help="a run or checkpoint folder, an .npz of samples, or a "
                                                    "folder of images")
    g = p.add_argument_group("what to compare with")
    g.add_argument("--ref", metavar="SPEC", help="the reference data (a dataset spec such as digits, "
                   "mnist:PATH, folder:PATH, npz:PATH), or reference statistics saved earlier "
                   "(FILE.safetensors); default: the run's training data")
    g.add_argument("--ref-option", metavar="KEY=VALUE", action="append", type=key_value, default=[],
                   help="an option of the reference data (e.g. start=8000, pad_to=32); repeatable")
    g.add_argument("--features", metavar="NAME_OR_PATH", default="auto",
                   help=f"the feature network: {', '.join(FEATURE_CHOICES)} or a PATH (default: auto)")
    g.add_argument("--features-data", metavar="SPEC",
                   help="labelled images to train the digits/cifar10 feature network on (default: the "
                        "reference data)")
    g.add_argument("--features-data-option", metavar="KEY=VALUE", action="append", type=key_value,
                   default=[], help="an option of --features-data; repeatable")
    g.add_argument("--features-epochs", metavar="N", type=int_in(1, 100000, "--features-epochs"),
                   help="passes over the data when the digits/cifar10 feature network is trained (default: "
                        "the network's own, which reaches its recorded accuracy)")
    g.add_argument("--inception-weights", metavar="FILE",
                   help="the FID Inception network's weights as .safetensors (for --features inception)")
    g.add_argument("--metrics", default=",".join(METRICS),
                   help=f"comma-separated metrics from {', '.join(METRICS)} (default: all)")
    g.add_argument("--per-class", action="store_true",
                   help="also score each class against the reference images of that class, and their "
                        "mean (needs labelled samples: a class-conditional run or an .npz with y)")
    g.add_argument("--kid-subsets", metavar="N", type=int_in(1, 100000, "--kid-subsets"), default=100,
                   help="KID: random subsets averaged")
    g.add_argument("--kid-subset-size", metavar="M", type=int_in(2, 10 ** 7, "--kid-subset-size"), default=1000,
                   help="KID: samples per subset (capped at the set sizes)")
    g.add_argument("--fid-bootstrap", metavar="B", type=int_in(0, 10000, "--fid-bootstrap"), default=10,
                   help="bootstrap replicates for FID's standard error (0: none)")
    g.add_argument("--cache", metavar="DIR",
                   help="where feature networks and reference statistics are cached (default: "
                        "$SCOREKIT_CACHE or ~/.cache/scorekit)")
    g.add_argument("--out", metavar="FILE.json", help="also write the scores as JSON")
    add_sampling_flags(p, default_num=1000)
    add_speed_flags(p)
    add_run_flags(p)
    p.set_defaults(handler=run)


def _kind_of_source(path: str) -> str:
    """``"run"``, ``"npz"`` or ``"folder"``: what SOURCE names."""
    from ..train.checkpoint import CHECKPOINT_FILES, is_run_dir

    if not os.path.exists(path):
        raise ScorekitError(f"{path!r} does not exist; give a run folder, an .npz of samples or a folder "
                            f"of images")
    if os.path.isfile(path):
        if path.lower().endswith((".npz", ".npy")):
            return "npz"
        raise ScorekitError(f"{path!r} is a file but not an .npz; give a run folder, an .npz of samples "
                            f"or a folder of images")
    if is_run_dir(path) or any(os.path.exists(os.path.join(path, f)) for f in CHECKPOINT_FILES):
        return "run"
    return "folder"


def _sampling_flags_given(args: argparse.Namespace) -> list[str]:
    """The flags that only sampling a run uses, among those given."""
    from ._sampler_flags import sampler_option_flags

    names = ["steps", "spacing", "guidance_scale", "guidance_interval", "classifier", "label", "unconditional",
             "clip", "threshold", "no_ema"]
    given = [f"--{n.replace('_', '-')}" for n in names if getattr(args, n, None) not in (None, False)]
    if args.sampler != "ddim":
        given.insert(0, "--sampler")
    given += [f"--{n.replace('_', '-')}" for n in sampler_option_flags() if getattr(args, f"opt_{n}") is not None]
    return given


def _load_samples(args: argparse.Namespace, kind: str):
    """Samples and labels from an .npz or an image folder (the first --num of them)."""
    import numpy as np
    import torch

    from ..data import images
    from ..data.dataset import to_tensor

    if kind == "npz":
        raw = images.load_npz(args.source)
    else:
        raw = images.load_image_folder(args.source, progress=False if args.no_progress else None)
    x = raw.x
    if x.ndim != 4:
        raise ScorekitError(f"{args.source}: the samples are {tuple(x.shape[1:])} vectors, not images; "
                            f"FID and its kin score images (N, C, H, W)")
    x = to_tensor(x)                  # uint8 pixels mapped to [-1, 1] as every dataset maps them
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x.reshape(x.shape[0], -1)).all(1)).sum())
        raise ScorekitError(f"{args.source}: {bad} of {x.shape[0]} samples hold NaN or Inf values; they "
                            f"cannot be scored")
    lo, hi = float(x.min()), float(x.max())
    if lo >= 0 and hi > 2:
        raise ScorekitError(f"{args.source}: the samples lie in [{lo:.4g}, {hi:.4g}]; store them in [-1, 1] "
                            f"(x / 127.5 - 1 for 0..255 pixels) or as uint8")
    y = None if raw.y is None else torch.from_numpy(np.asarray(raw.y)).long()
    num = min(args.num, x.shape[0])
    return x[:num], (None if y is None else y[:num]), f"{num} samples from {args.source}"


def _reference(args: argparse.Namespace, ckpt):
    """``(dataset or None, statistics path or None)`` of --ref."""
    from ..data import dataset_from_config, load_dataset

    ref = args.ref
    if ref is not None and ref.lower().endswith((".safetensors", ".json")) and os.path.isfile(ref):
        if args.ref_option:
            raise ScorekitError("--ref-option applies to a dataset, not to saved reference statistics")
        return None, ref
    if ref is None:
        if ckpt is None or not ckpt.data_config:
            raise ScorekitError("give --ref SPEC: the data to compare the samples with (e.g. mnist:PATH "
                                "or folder:PATH)")
        config = {**ckpt.data_config, **dict(args.ref_option)}
        return dataset_from_config(config, progress=False if args.no_progress else None), None
    return load_dataset(ref, **dict(args.ref_option)), None


def _extractor(args: argparse.Namespace, reference, image_shape, cache: str, log):
    """The feature extractor --features names."""
    from ..data import load_dataset

    name = args.features
    if name == "auto":
        name = "digits" if image_shape[0] == 1 else "cifar10"
    if args.features_epochs is not None and name not in ("digits", "cifar10"):
        raise ScorekitError("--features-epochs goes with --features digits or cifar10, which scorekit trains")
    if args.inception_weights is not None and name != "inception":
        raise ScorekitError("--inception-weights goes with --features inception")
    if name == "inception" or (name not in FEATURE_CHOICES and os.path.isfile(name)
                               and name.lower().endswith(".safetensors")):
        from ..metrics import InceptionFeatures

        path = args.inception_weights if name == "inception" else name
        if path is None:
            raise ScorekitError("--features inception needs --inception-weights FILE.safetensors (the FID "
                                "Inception weights; docs/evaluation.md says how to obtain and convert them)")
        return InceptionFeatures.from_file(path)
    if name in ("digits", "cifar10"):
        from ..metrics import trained_feature_network

        if args.features_data is not None:
            data = load_dataset(args.features_data, **dict(args.features_data_option))
        else:
            if args.features_data_option:
                raise ScorekitError("--features-data-option goes with --features-data")
            data = reference
        if data is None or data.y is None:
            which = (f"--features-data {args.features_data} has no labels" if args.features_data is not None
                     else "the reference has no labels" if data is not None else
                     "saved reference statistics hold no images to train on")
            raise ScorekitError(f"--features {name} trains a classifier on labelled images, but {which}; "
                                f"give --features-data SPEC with labels (e.g. mnist:PATH or folder:PATH with "
                                f"one sub-folder per class)")
        return trained_feature_network(name, data, os.path.join(cache, "features"), epochs=args.features_epochs,
                                       progress=not args.no_progress,
                                       log=lambda line: None if line.startswith("classifier epoch") else log(line))
    if name not in FEATURE_CHOICES and os.path.isdir(name):
        from ..metrics import load_feature_network

        return load_feature_network(name)
    raise ScorekitError(f"--features {name!r} is neither one of {', '.join(FEATURE_CHOICES)} nor an existing "
                        f"feature network folder or .safetensors weights file")


def _check_cache(cache: str, what: str) -> None:
    """Refuse a cache folder that cannot hold the feature networks and reference statistics
    (a file, a path inside a file, or a file where one of its sub-folders goes) before any work."""
    if os.path.exists(cache) and not os.path.isdir(cache):
        raise ScorekitError(f"{what} {cache!r} is a file; give a folder")
    for sub in ("features", "reference"):
        if os.path.exists(os.path.join(cache, sub)) and not os.path.isdir(os.path.join(cache, sub)):
            raise ScorekitError(f"{what} {cache!r} holds a file {sub!r} where its sub-folder goes; move it "
                                f"away or give another folder")
    above = file_above(cache)
    if above is not None:
        raise ScorekitError(f"{what} {cache!r} lies inside {above!r}, which is a file, not a folder; give a folder")


def run(args: argparse.Namespace) -> int:
    import torch

    threads_before = torch.get_num_threads()
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads_before)


def _run(args: argparse.Namespace) -> int:
    from ..evaluation import ReferenceStatistics, default_cache_dir, evaluate, parse_metrics, reference_statistics
    from ..train.distributed import resolve_device
    from .sample import draw

    metrics = parse_metrics(args.metrics)
    check_json_out(args.out)
    cache = os.path.abspath(os.path.expanduser(args.cache)) if args.cache else default_cache_dir()
    _check_cache(cache, "--cache" if args.cache else "the cache folder ($SCOREKIT_CACHE or ~/.cache/scorekit)")

    def log(message: str) -> None:
        print(message, flush=True)

    device = resolve_device(args.device)
    kind = _kind_of_source(args.source)
    ckpt = None
    started = time.perf_counter()
    if kind == "run":
        drawn = draw(args, args.source, device)
        x, labels, ckpt = drawn.x, drawn.labels, drawn.ckpt
        if len(ckpt.sample_shape) != 3:
            raise ScorekitError(f"{args.source} models {tuple(ckpt.sample_shape)} vectors, not images; FID "
                                f"and its kin score images")
        source = (f"{args.num} samples of {ckpt.path} (step {ckpt.step}) by {drawn.cost(args)}, "
                  f"{drawn.result.seconds:.1f} s")
        sampling = {"run": ckpt.path, "step": ckpt.step, "sampler": args.sampler, "steps": drawn.steps,
                    "nfe": drawn.result.nfe, "seconds": drawn.result.seconds, "seed": args.seed}
    else:
        given = _sampling_flags_given(args)
        if given:
            raise ScorekitError(f"{', '.join(given)} sample a run; {args.source} holds samples already")
        x, labels, source = _load_samples(args, kind)
        sampling = {"file": os.path.abspath(args.source)}
    dataset, stats_path = _reference(args, ckpt)
    if dataset is not None and dataset.x.ndim != 4:
        raise ScorekitError(f"the reference {dataset.spec} holds vectors, not images")
    extractor = _extractor(args, dataset, tuple(x.shape[1:]), cache, log)
    info = dict(getattr(extractor, "info", None) or {})
    if "heldout_accuracy" in info:
        log(f"features: {extractor.name} (held-out accuracy {100 * info['heldout_accuracy']:.2f}% on "
            f"{info.get('num_heldout', '?')} held-out images of {info.get('data_spec', '?')})")
    else:
        log(f"features: {extractor.name} (weights {extractor.weights_hash[:12]})")
    if stats_path is not None:
        reference = ReferenceStatistics.load(stats_path, extractor=extractor)
        ref_text = f"{len(reference)} images (statistics {stats_path})"
    else:
        reference = reference_statistics(dataset.x, extractor, labels=dataset.y, data=dataset.spec,
                                         cache_dir=cache, device=device,
                                         progress=not args.no_progress, log=log)
        ref_text = f"{len(dataset)} images of {dataset.spec}"
    report = evaluate(x, reference, extractor, metrics=metrics, sample_labels=labels, per_class=args.per_class,
                      kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                      fid_bootstrap=args.fid_bootstrap, seed=args.seed, device=device,
                      progress=not args.no_progress)
    seconds = time.perf_counter() - started
    print(f"samples:   {source}")
    print(f"reference: {ref_text}")
    print(report.table())
    if args.per_class and report.per_class:
        classes = [c for c in report.per_class if c != "mean"]
        print(f"per class ({len(classes)} classes): " + ", ".join(
            f"{c}: FID {report.per_class[c]['fid'].value:.4g}" for c in classes if "fid" in report.per_class[c]))
    if args.out is not None:
        from ..plotting import atomic_path, write_json

        data = {**report.to_dict(), "samples": {**sampling, "num": int(x.shape[0]), "source": source},
                "reference": {"data": reference.meta.get("data"), "data_hash": reference.meta.get("data_hash"),
                              "num": len(reference)},
                "seconds": seconds}
        try:
            with atomic_path(args.out) as tmp:
                write_json(tmp, data)
        except OSError as err:
            raise ScorekitError(f"cannot write {args.out!r}: {err.strerror or err}") from None
        print(f"wrote {args.out}")
    return 0
