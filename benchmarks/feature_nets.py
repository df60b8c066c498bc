"""Feature networks for evaluation: the classifiers ``scorekit.metrics.trained_feature_network``
trains with its default settings, their held-out accuracy and their training time.

    nice .venv/bin/python benchmarks/feature_nets.py                  # all three, 2 threads
    nice .venv/bin/python benchmarks/feature_nets.py --only mnist     # one of them

Three trainings, each on the whole set with the default held-out share (20 % of every class),
seed 0 and the kind's default number of epochs:

* ``digits`` on scikit-learn's 8x8 digits (``load_dataset("digits")``, 1,797 images);
* ``digits`` on the MNIST test set (``mnist:../shared/data/mnist-test``, 10,000 28x28 digits);
* ``cifar10`` on the CIFAR-10 test split (``folder:../shared/data/cifar10-test-jpg.tar.gz``,
  10,000 32x32 colour images, read from the archive).

For each: the held-out accuracy (overall and per class), the training time (the loop alone, on
``--threads`` torch threads; loading the data is timed apart), the time to compute the features
and probabilities of all images of the set, and the share of 1,000 noise images (half white
noise, half smooth noise, as in ``outlier_images`` but drawn from another seed) that the network
classifies with probability above 0.9 (0 is the aim). The load average before and after is
recorded: the machine may be shared.

Writes ``feature_nets.json`` and ``feature_nets.md`` into ``--out`` (default
``benchmarks/results/``); the trained networks go to ``--out``'s ``cache/``, where a second run
with the same data and settings finds them (then the recorded training time is the first run's;
``--retrain`` trains into a fresh cache folder).
"""
from __future__ import annotations

import argparse
import datetime
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from scorekit.data import load_dataset
from scorekit.metrics import trained_feature_network
from scorekit.metrics.digits_classifier import confident_share
from scorekit.metrics.feature_nets import outlier_images

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_quality import load_average, log  # noqa: E402  (the time-stamped log and the load average)

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data"
SETS = {
    "sklearn-digits": ("digits", lambda args: "digits"),
    "mnist": ("digits", lambda args: f"mnist:{args.mnist}"),
    "cifar10": ("cifar10", lambda args: f"folder:{args.cifar}"),
}


def run_one(name: str, args, cache: Path) -> dict:
    kind, spec = SETS[name][0], SETS[name][1](args)
    t0 = time.perf_counter()
    data = load_dataset(spec)
    load_seconds = time.perf_counter() - t0
    log(f"{name}: {data} loaded in {load_seconds:.1f} s")
    before = load_average()
    net = trained_feature_network(kind, data, cache, seed=args.seed, progress=not args.quiet, log=log)
    after = load_average()
    t0 = time.perf_counter()
    features, _ = net.features_and_probabilities(data.x, batch_size=500)
    feature_seconds = time.perf_counter() - t0
    C, H, W = data.shape
    noise = outlier_images(1000, torch.Generator().manual_seed(args.seed + 1000), (H, W), C)
    noise_confident = confident_share(net.probabilities(noise))
    info = net.info
    log(f"{name}: held-out accuracy {100 * info['heldout_accuracy']:.2f}% ({info['num_heldout']} images), "
        f"{info['epochs']} epochs on {info['num_train']} images in {info['train_seconds']:.0f} s; "
        f"noise classified with p > 0.9: {100 * noise_confident:.1f}%")
    return {"name": name, "kind": kind, "spec": spec, "load_seconds": round(load_seconds, 1),
            "feature_seconds": round(feature_seconds, 2), "feature_images": int(features.shape[0]),
            "noise_confident_share": noise_confident, "load_average_before": before,
            "load_average_after": after, "folder": net.path, "weights_hash": net.weights_hash, "info": info}


def write_report(report: dict, out: Path) -> None:
    lines = ["# Feature networks for evaluation", "",
             f"{report['threads']} torch threads, seed {report['seed']}, default settings; "
             f"{report['date']}, torch {report['torch']}.", "",
             "| data | kind | images (train / held out) | epochs | parameters | feature dim "
             "| held-out accuracy | training time | features of all images | noise with p > 0.9 |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["runs"]:
        i = r["info"]
        lines.append(f"| {r['name']} | {r['kind']} | {i['num_train']:,} / {i['num_heldout']:,} | {i['epochs']} "
                     f"| {i['parameters']:,} | {i['feature_dim']} | {100 * i['heldout_accuracy']:.2f}% "
                     f"| {i['train_seconds']:.0f} s | {r['feature_seconds']:.1f} s "
                     f"| {100 * r['noise_confident_share']:.1f}% |")
    lines += ["", "Per-class held-out accuracy:", ""]
    for r in report["runs"]:
        per = ", ".join(f"{100 * a:.1f}" if a is not None else "-" for a in r["info"]["heldout_accuracy_per_class"])
        lines.append(f"* {r['name']}: {per}")
    lines += ["", "Load average (1, 5, 15 min) before / after each training: "
              + "; ".join(f"{r['name']} {r['load_average_before']} / {r['load_average_after']}" for r in report["runs"])]
    (out / "feature_nets.md").write_text("\n".join(lines) + "\n")
    (out / "feature_nets.json").write_text(json.dumps(report, indent=2) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", choices=sorted(SETS), action="append",
                   help="train only this one (repeatable; default: all three)")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    p.add_argument("--seed", type=int, default=0, help="seed of the split and the training (default 0)")
    p.add_argument("--mnist", default=str(SHARED / "mnist-test"), help="the MNIST IDX folder")
    p.add_argument("--cifar", default=str(SHARED / "cifar10-test-jpg.tar.gz"),
                   help="the CIFAR-10 image folder or tar archive")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"), help="output folder")
    p.add_argument("--retrain", action="store_true", help="train again into a fresh cache folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(tempfile.mkdtemp(prefix="feature-nets-", dir=out)) if args.retrain else out / "cache"
    names = args.only or list(SETS)
    report = {"date": f"{datetime.date.today()}", "torch": torch.__version__, "threads": args.threads,
              "seed": args.seed, "cache": str(cache), "runs": []}
    for name in names:
        report["runs"].append(run_one(name, args, cache))
        write_report(report, out)
    log(f"wrote {out / 'feature_nets.md'} and {out / 'feature_nets.json'}")


if __name__ == "__main__":
    main()
