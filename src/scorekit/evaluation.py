r"""Scoring generated images against a reference dataset: FID, KID, IS and precision/recall.

Every score compares two sets of images through one feature extractor
(:class:`scorekit.metrics.FeatureExtractor`): the reference (real images) and the samples.

* **FID** (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two sets of
  features, ``||mu_r - mu_g||^2 + tr(S_r + S_g - 2 (S_r S_g)^{1/2})``
  (:func:`scorekit.metrics.frechet_distance`). It is biased upwards by an amount that falls like
  ``1/N``: compare FIDs only at equal sample counts.
* **KID** (Bińkowski et al. 2018): the unbiased squared MMD with the cubic polynomial kernel,
  averaged over random subsets (:func:`scorekit.metrics.kernel_inception_distance`); unbiased, so
  comparable across sample counts.
* **IS** (Salimans et al. 2016): ``exp E_x KL(p(y|x) || p(y))`` of the extractor's class
  probabilities of the samples alone (:func:`scorekit.metrics.inception_score`).
* **Precision and recall** (Kynkäänniemi et al. 2019): the share of samples on the ``k``-NN
  manifold of the reference features, and the share of reference features on the samples' one
  (:func:`scorekit.metrics.precision_recall`). The manifolds depend on the set sizes, so the
  reference is compared in disjoint subsets of as many points as there are samples, and the
  shares are averaged over them.

Standard errors (``Score.stderr``):

* FID: the standard deviation of the FID over ``fid_bootstrap`` bootstrap replicates (both sets
  resampled with replacement, Efron & Tibshirani 1993). Replicates hold repeated points, so their
  FIDs are larger than the estimate; their spread is what the standard error uses.
* KID: ``sqrt(J^2 + s^2 / S)``. The mean over ``S`` random subsets estimates ``MMD^2_u`` of the
  whole sets (a U-statistic), whose error ``J`` is the delete-a-group jackknife
  (:func:`scorekit.metrics.kid.mmd2_jackknife`, 10 groups); ``s^2 / S`` is the subsets' own noise
  (``s`` their standard deviation, ddof 1). The population deviation over the subsets, which the
  paper reports as ``+-``, is ``std`` in :meth:`EvalReport.to_dict`: it measures a subset's
  spread, and it is 0 when a subset holds every sample.
* IS: the splits' standard deviation (ddof 1) divided by the square root of their number;
  ``std`` is the population deviation that Salimans et al.'s code prints.
* Precision: ``std(a) / sqrt(n)``, ``a_i`` the share of the reference subsets whose manifold holds
  sample ``i`` (the binomial ``sqrt(p (1 - p) / n)`` for one subset).
* Recall: the binomial ``sqrt(r (1 - r) / n)`` over the ``n`` samples, which build the manifold
  that recall tests (testing more reference points does not make it more certain).

**Per class** (``per_class=True``, when both sets have labels): every metric but IS within each
class, the samples asked for class ``k`` against the reference images of class ``k`` (the
"intra-FID" of Miyato & Koyama 2018), and their mean over the classes. When the extractor's
classes are the samples' classes, ``class_accuracy`` is the share of samples the extractor
assigns to the class they were asked for.

**Reference statistics** (:class:`ReferenceStatistics`) hold the reference's features (and class
probabilities and labels), computed once and cached as ``.safetensors`` + ``.json`` named by the
extractor, its weights' SHA-256 and the data's SHA-256 (:func:`reference_statistics`); a cache
made with another extractor or other weights is refused.
"""
from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import math
import os

import torch

from .errors import ScorekitError

Tensor = torch.Tensor

#: the metrics :func:`evaluate` computes: ``"pr"`` gives both precision and recall
METRICS = ("fid", "kid", "is", "pr")

#: the file format version of :class:`ReferenceStatistics`
REFERENCE_FORMAT = 1


def default_cache_dir() -> str:
    """Where scorekit caches feature networks and reference statistics: ``$SCOREKIT_CACHE``, else
    ``$XDG_CACHE_HOME/scorekit``, else ``~/.cache/scorekit``."""
    if os.environ.get("SCOREKIT_CACHE"):
        return os.path.abspath(os.path.expanduser(os.environ["SCOREKIT_CACHE"]))
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "scorekit")


def data_hash(x: Tensor, y: Tensor | None = None, *, num_classes: int | None = None) -> str:
    """SHA-256 (hex) of a data set's content: the images' dtype, shape and bytes, then the labels'
    (and the number of classes, when given)."""
    digest = hashlib.sha256()
    for name, t in (("x", x), ("y", y)):
        if t is None:
            continue
        t = t.detach().to("cpu").contiguous()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    if num_classes is not None:
        digest.update(f"classes\0{int(num_classes)}".encode())
    return digest.hexdigest()


def parse_metrics(metrics) -> tuple[str, ...]:
    """The metric names of ``metrics`` (a sequence or a comma-separated string), checked."""
    if isinstance(metrics, str):
        metrics = [m.strip() for m in metrics.split(",") if m.strip()]
    metrics = tuple(dict.fromkeys(str(m).lower() for m in metrics))
    unknown = [m for m in metrics if m not in METRICS]
    if unknown or not metrics:
        raise ScorekitError(f"unknown metric {', '.join(map(repr, unknown)) or '(none given)'}; choose "
                            f"from {', '.join(METRICS)}",
                            cli=f"--metrics takes a comma-separated list of {', '.join(METRICS)}; "
                                f"got {', '.join(map(repr, unknown)) or 'nothing'}")
    return metrics


# --- reference statistics ---------------------------------------------------------------------

@dataclasses.dataclass
class ReferenceStatistics:
    """The reference set's features under one extractor, with what made them.

    Attributes:
        features: ``(N, d)`` float64 features of the reference images.
        probabilities: ``(N, K)`` class probabilities, or ``None`` (extractor without classes).
        labels: ``(N,)`` long labels of the reference images, or ``None``.
        meta: ``extractor`` (name), ``weights_hash``, ``data`` (a description, e.g. the spec),
            ``data_hash``, ``image_shape``, ``num``, ``format``, ``created``.
    """

    features: Tensor
    probabilities: Tensor | None
    labels: Tensor | None
    meta: dict

    def __len__(self) -> int:
        return self.features.shape[0]

    def check_extractor(self, extractor, where: str = "the reference statistics") -> None:
        """Refuse statistics made with another extractor (name or weights)."""
        name, digest = self.meta.get("extractor"), self.meta.get("weights_hash")
        if name != extractor.name or digest != extractor.weights_hash:
            raise ScorekitError(
                f"{where} were computed with the feature extractor {name!r} (weights "
                f"{str(digest)[:12]}), not with {extractor.name!r} (weights {extractor.weights_hash[:12]}); "
                f"features of different networks cannot be compared: compute the reference again "
                f"with this extractor")

    def save(self, path) -> str:
        """Write ``PATH.safetensors`` (the tensors) and ``PATH.json`` (``meta``), each atomically;
        the JSON is written last, so a reader that finds it finds the tensors complete.
        ``path`` may end in ``.safetensors``. Returns the ``.safetensors`` path."""
        from safetensors.torch import save_file

        from .plotting import atomic_path, write_json

        stem = _stem(path)
        os.makedirs(os.path.dirname(stem) or ".", exist_ok=True)
        tensors = {"features": self.features.to(torch.float64).contiguous()}
        if self.probabilities is not None:
            tensors["probabilities"] = self.probabilities.to(torch.float64).contiguous()
        if self.labels is not None:
            tensors["labels"] = self.labels.to(torch.long).contiguous()
        with atomic_path(stem + ".safetensors") as tmp:
            save_file(tensors, tmp)
        with atomic_path(stem + ".json") as tmp:
            write_json(tmp, self.meta)
        return stem + ".safetensors"

    @classmethod
    def load(cls, path, *, extractor=None) -> "ReferenceStatistics":
        """Read statistics :meth:`save` wrote; with ``extractor``, refuse them if another
        extractor made them. Missing or corrupt files raise :class:`ScorekitError`."""
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        stem = _stem(path)
        tensors_path, meta_path = stem + ".safetensors", stem + ".json"
        for p in (tensors_path, meta_path):
            if not os.path.isfile(p):
                raise ScorekitError(f"reference statistics: {p} does not exist (the statistics are a "
                                    f".safetensors file with a .json beside it)")
        try:
            with open(meta_path, encoding="utf-8") as fh:
                meta = json.load(fh)
            if not isinstance(meta, dict) or meta.get("format") != REFERENCE_FORMAT:
                raise ValueError(f"format {meta.get('format') if isinstance(meta, dict) else meta!r}")
            tensors = load_file(tensors_path)
            features = tensors["features"].to(torch.float64)
            if features.ndim != 2 or features.shape[0] != meta.get("num"):
                raise ValueError(f"features of shape {tuple(features.shape)} for {meta.get('num')} images")
        except (OSError, ValueError, KeyError, SafetensorError) as err:
            raise ScorekitError(f"reference statistics {tensors_path} are not readable "
                                f"({type(err).__name__}: {err}); delete them to compute them again") from None
        stats = cls(features, tensors.get("probabilities"), tensors.get("labels"), meta)
        if extractor is not None:
            stats.check_extractor(extractor, f"the reference statistics {tensors_path}")
        return stats


def _stem(path) -> str:
    path = os.path.abspath(os.fspath(path))
    for ext in (".safetensors", ".json"):
        if path.endswith(ext):
            return path[: -len(ext)]
    return path


def reference_cache_path(extractor, digest: str, cache_dir) -> str:
    """The cache file (``.safetensors``) of the reference with data hash ``digest`` under
    ``extractor``: ``cache_dir/reference/<extractor>-<16 hex>.safetensors``, the hex digits a
    SHA-256 of the extractor's name, its weights' hash and the data hash."""
    key = hashlib.sha256(f"{extractor.name}\0{extractor.weights_hash}\0{digest}".encode()).hexdigest()[:16]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in extractor.name)
    return os.path.join(os.fspath(cache_dir), "reference", f"{safe}-{key}.safetensors")


def reference_statistics(images: Tensor, extractor, *, labels: Tensor | None = None, data: str = "tensor",
                         cache_dir=None, batch_size: int = 100, device=None, progress: bool = False,
                         log=None) -> ReferenceStatistics:
    """The :class:`ReferenceStatistics` of ``images`` (N, C, H, W) in ``[-1, 1]`` under
    ``extractor``: read from ``cache_dir`` when a cache for this extractor, weights and data
    exists, otherwise computed (and written there when ``cache_dir`` is given). ``data``
    describes the images (e.g. the dataset spec) in the cache's JSON; ``log`` receives a line
    saying which happened."""
    digest = data_hash(images, labels)
    path = reference_cache_path(extractor, digest, cache_dir) if cache_dir is not None else None
    if path is not None and os.path.isfile(_stem(path) + ".json"):
        stats = ReferenceStatistics.load(path, extractor=extractor)
        if stats.meta.get("data_hash") == digest:
            if log is not None:
                log(f"reference statistics: read from {path}")
            return stats
    if extractor.has_probabilities:
        features, probs = extractor.features_and_probabilities(images, batch_size=batch_size, device=device,
                                                               progress=progress)
    else:
        features, probs = extractor.features(images, batch_size=batch_size, device=device,
                                             progress=progress), None
    meta = {"format": REFERENCE_FORMAT, "extractor": extractor.name, "weights_hash": extractor.weights_hash,
            "data": data, "data_hash": digest, "image_shape": list(images.shape[1:]),
            "num": int(images.shape[0]), "labelled": labels is not None,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
    stats = ReferenceStatistics(features, probs, None if labels is None else labels.to(torch.long).cpu(), meta)
    if path is not None:
        stats.save(path)
        if log is not None:
            log(f"reference statistics: computed from {images.shape[0]} images, cached in {path}")
    return stats


# --- scores -----------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Score:
    """One metric's value with its standard error (``nan`` where none is defined) and, where the
    metric reports one, the spread ``std`` of its parts (KID's subsets, IS's splits)."""

    value: float
    stderr: float = float("nan")
    std: float | None = None

    def to_dict(self) -> dict:
        out = {"value": _finite(self.value), "stderr": _finite(self.stderr)}
        if self.std is not None:
            out["std"] = _finite(self.std)
        return out


def _finite(v):
    return v if v is not None and math.isfinite(v) else None


#: how each metric is printed: its label and whether larger is better
LABELS = {"fid": ("FID", False), "kid": ("KID", False), "is": ("IS", True),
          "precision": ("precision", True), "recall": ("recall", True),
          "class_accuracy": ("class accuracy", True)}


@dataclasses.dataclass
class EvalReport:
    """What :func:`evaluate` returns.

    Attributes:
        scores: metric name (``fid``, ``kid``, ``is``, ``precision``, ``recall``,
            ``class_accuracy``) -> :class:`Score`.
        per_class: class -> its scores, with the mean over classes under ``"mean"``; or ``None``.
        num_samples, num_reference: the set sizes.
        extractor: the extractor's ``name``, ``weights_hash`` and ``info``.
        settings: the options that change the numbers (subsets, splits, k, bootstrap, seed).
    """

    scores: dict
    per_class: dict | None
    num_samples: int
    num_reference: int
    extractor: dict
    settings: dict

    def to_dict(self) -> dict:
        out = {"metrics": {k: s.to_dict() for k, s in self.scores.items()},
               "num_samples": self.num_samples, "num_reference": self.num_reference,
               "extractor": self.extractor, "settings": self.settings}
        if self.per_class is not None:
            out["per_class"] = {str(c): {k: s.to_dict() for k, s in scores.items()}
                                for c, scores in self.per_class.items()}
        return out

    def table(self) -> str:
        """The scores as a plain-text table: metric, value, standard error, better direction."""
        rows = [("metric", "value", "std. error", "")]
        for key, score in self.scores.items():
            label, up = LABELS[key]
            rows.append((label, _fmt(score.value), _fmt(score.stderr), "higher is better" if up else
                         "lower is better"))
        if self.per_class is not None and "mean" in self.per_class:
            for key, score in self.per_class["mean"].items():
                label, up = LABELS[key]
                rows.append((f"{label}, mean over classes", _fmt(score.value), _fmt(score.stderr),
                             "higher is better" if up else "lower is better"))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  ".join(c.ljust(w) if i in (0, 3) else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))
                 for r in rows]
        lines.insert(1, "  ".join("-" * w for w in widths))
        return "\n".join(line.rstrip() for line in lines)


def _fmt(v: float) -> str:
    if v is None or not math.isfinite(v):
        return "-"
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 100:
        return f"{v:.1f}"
    if a >= 1e-3:
        return f"{v:.4g}"
    return f"{v:.3e}"


def _check_set(x, name: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or x.shape[0] < 2 or not x.is_floating_point():
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ScorekitError(f"{name} must be a float tensor of images (N, C, H, W) with N >= 2 in "
                            f"[-1, 1], got {shape}")
    return x


def _bootstrap_fid(fake: Tensor, real: Tensor, replicates: int, generator: torch.Generator) -> float:
    from .metrics import frechet_distance_from_features

    values = []
    for _ in range(replicates):
        i = torch.randint(fake.shape[0], (fake.shape[0],), generator=generator)
        j = torch.randint(real.shape[0], (real.shape[0],), generator=generator)
        values.append(frechet_distance_from_features(fake[i], real[j]))
    return float(torch.tensor(values, dtype=torch.float64).std()) if replicates > 1 else float("nan")


def _pr(fake: Tensor, real: Tensor, k: int, generator: torch.Generator, max_subsets: int = 10):
    """Precision and recall against disjoint reference subsets of ``len(fake)`` points (all of the
    reference when it is smaller), averaged, with standard errors for new draws of the ``n``
    samples (docs/evaluation.md):

    * precision: each sample's share ``a_i`` of the reference subsets whose manifold holds it;
      ``p = mean(a)``, standard error ``std(a) / sqrt(n)`` (binomial for one subset);
    * recall: the share of tested reference points on the samples' manifold, with the binomial
      error over the ``n`` samples, ``sqrt(r (1 - r) / n)``: the samples build the manifold, so
      testing more reference points does not make recall more certain than that."""
    from .metrics import manifold_membership

    n = fake.shape[0]
    if real.shape[0] <= n:
        parts = [real]
    else:
        order = torch.randperm(real.shape[0], generator=generator)
        parts = [real[order[i * n:(i + 1) * n]] for i in range(min(real.shape[0] // n, max_subsets))]
    held = torch.stack([manifold_membership(fake, part, k) for part in parts]).double().mean(0)
    reached = torch.cat([manifold_membership(part, fake, k) for part in parts]).double()
    p, r = float(held.mean()), float(reached.mean())
    return (Score(p, float(held.std()) / math.sqrt(n)),
            Score(r, math.sqrt(max(r * (1 - r), 0.0) / n)))


def _scores(fake_f: Tensor, fake_p: Tensor | None, real_f: Tensor, metrics, *, kid_subsets: int,
            kid_subset_size: int, is_splits: int, pr_k: int, fid_bootstrap: int,
            generator: torch.Generator) -> dict:
    from .metrics import frechet_distance_from_features, inception_score, kernel_inception_distance
    from .metrics.kid import mmd2_jackknife

    out = {}
    for m in metrics:
        if m == "fid":
            value = frechet_distance_from_features(fake_f, real_f)
            out["fid"] = Score(value, _bootstrap_fid(fake_f, real_f, fid_bootstrap, generator))
        elif m == "kid":
            kid = kernel_inception_distance(fake_f, real_f, num_subsets=kid_subsets,
                                            subset_size=kid_subset_size, generator=generator)
            # the subsets' mean: its expectation over the subsets is MMD^2_u of the whole sets (a
            # U-statistic), whose error the jackknife gives; the subsets add their own, std^2 / S
            blocks = min(10, fake_f.shape[0] // 2, real_f.shape[0] // 2)
            jackknife = mmd2_jackknife(fake_f, real_f, blocks=blocks, generator=generator)[1] if blocks >= 2 \
                else float("nan")
            subsets = kid.stderr if kid.num_subsets > 1 else 0.0
            out["kid"] = Score(kid.mean, math.hypot(jackknife, subsets), kid.std)
        elif m == "is" and fake_p is not None:
            splits = min(is_splits, fake_p.shape[0])
            score = inception_score(fake_p, splits=splits)
            out["is"] = Score(score.mean, score.stderr, score.std)
        elif m == "pr":
            out["precision"], out["recall"] = _pr(fake_f, real_f, pr_k, generator)
    return out


def evaluate(samples: Tensor, reference, extractor, *, metrics=METRICS, sample_labels: Tensor | None = None,
             per_class: bool = False, kid_subsets: int = 100, kid_subset_size: int = 1000,
             is_splits: int = 10, pr_k: int = 3, fid_bootstrap: int = 10, seed: int = 0,
             batch_size: int = 100, device=None, progress: bool = False) -> EvalReport:
    """Score ``samples`` (N, C, H, W) in ``[-1, 1]`` against ``reference`` (images, or
    :class:`ReferenceStatistics` from :func:`reference_statistics`) through ``extractor`` (module
    docstring for the metrics and their standard errors).

    Args:
        metrics: names from :data:`METRICS` (``"pr"`` gives precision and recall), or a
            comma-separated string.
        sample_labels: the class each sample was asked for (class-conditional models); with
            ``per_class`` the scores are also computed within each class.
        per_class: score each class against the reference images of that class (both need labels).
        kid_subsets, kid_subset_size: KID's subsets (Bińkowski et al.: 100 of 1,000).
        is_splits: the Inception Score's splits (10 in Salimans et al.).
        pr_k: the neighbour that sets the manifolds' radii (3 in Kynkäänniemi et al.).
        fid_bootstrap: bootstrap replicates for FID's standard error (0: none).
        seed: the seed of every random subset and replicate.
    """
    metrics = parse_metrics(metrics)
    samples = _check_set(samples, "samples")
    for name, value, lo in (("kid_subsets", kid_subsets, 1), ("kid_subset_size", kid_subset_size, 2),
                            ("is_splits", is_splits, 1), ("pr_k", pr_k, 1), ("fid_bootstrap", fid_bootstrap, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < lo:
            raise ScorekitError(f"{name} must be a whole number >= {lo}, got {value!r}")
    if not isinstance(reference, ReferenceStatistics):
        reference = reference_statistics(_check_set(reference, "reference"), extractor, batch_size=batch_size,
                                         device=device, progress=progress)
    else:
        reference.check_extractor(extractor)
    shape = list(samples.shape[1:])
    if reference.meta.get("image_shape") != shape:
        raise ScorekitError(f"the samples are images of shape {tuple(shape)} (C, H, W) but the reference "
                            f"images are {tuple(reference.meta.get('image_shape') or ())}; score samples "
                            f"against data of the same size and channels")
    if "is" in metrics and not extractor.has_probabilities:
        raise ScorekitError(f"the Inception Score needs class probabilities, which the feature extractor "
                            f"{extractor.name!r} does not give; leave out 'is'")
    want_probs = extractor.has_probabilities and ("is" in metrics or sample_labels is not None)
    samples = samples.clamp(-1.0, 1.0)
    if want_probs:
        fake_f, fake_p = extractor.features_and_probabilities(samples, batch_size=batch_size, device=device,
                                                              progress=progress)
    else:
        fake_f, fake_p = extractor.features(samples, batch_size=batch_size, device=device,
                                            progress=progress), None
    real_f = reference.features
    if fake_f.shape[1] != real_f.shape[1]:
        raise ScorekitError(f"the samples' features have {fake_f.shape[1]} dimensions, the reference's "
                            f"{real_f.shape[1]}; they must come from one extractor")
    options = dict(kid_subsets=kid_subsets, kid_subset_size=kid_subset_size, is_splits=is_splits, pr_k=pr_k,
                   fid_bootstrap=fid_bootstrap)
    generator = torch.Generator().manual_seed(seed)
    scores = _scores(fake_f, fake_p, real_f, metrics, generator=generator, **options)
    if sample_labels is not None:
        sample_labels = torch.as_tensor(sample_labels).to("cpu", torch.long).reshape(-1)
        if sample_labels.shape[0] != samples.shape[0]:
            raise ScorekitError(f"sample_labels has {sample_labels.shape[0]} labels for {samples.shape[0]} samples")
        if fake_p is not None and reference.labels is not None and \
                fake_p.shape[1] == int(reference.labels.max()) + 1 and int(sample_labels.max()) < fake_p.shape[1]:
            acc = float((fake_p.argmax(1) == sample_labels).double().mean())
            scores["class_accuracy"] = Score(acc, math.sqrt(max(acc * (1 - acc), 0.0) / samples.shape[0]))
    classes = None
    if per_class:
        if sample_labels is None or reference.labels is None:
            missing = "the samples" if sample_labels is None else "the reference"
            raise ScorekitError(f"per-class scores need labels of both sets; {missing} have none",
                                cli=f"--per-class needs labels of both sets; {missing} have none "
                                    f"(samples of a class-conditional run, or an .npz with y)")
        classes = _per_class(fake_f, sample_labels, real_f, reference.labels,
                             [m for m in metrics if m != "is"], generator, options)
    return EvalReport(scores, classes, samples.shape[0], len(reference),
                      {"name": extractor.name, "weights_hash": extractor.weights_hash,
                       "info": dict(getattr(extractor, "info", None) or {})},
                      {**options, "seed": seed, "metrics": list(metrics)})


def _per_class(fake_f, fake_y, real_f, real_y, metrics, generator, options) -> dict:
    out = {}
    for c in sorted(set(fake_y.tolist()) & set(real_y.tolist())):
        f, r = fake_f[fake_y == c], real_f[real_y == c]
        if f.shape[0] < 2 or r.shape[0] < 2:
            continue
        usable = [m for m in metrics if m != "pr" or min(f.shape[0], r.shape[0]) > options["pr_k"]]
        out[int(c)] = _scores(f, None, r, usable, generator=generator, **options)
    if not out:
        raise ScorekitError("per-class scores: no class has two or more samples and reference images")
    mean = {}
    for key in {k for scores in out.values() for k in scores}:
        parts = [scores[key] for scores in out.values() if key in scores]
        errs = [s.stderr for s in parts]
        stderr = math.sqrt(sum(e * e for e in errs)) / len(parts) if all(math.isfinite(e) for e in errs) \
            else float("nan")
        mean[key] = Score(sum(s.value for s in parts) / len(parts), stderr)
    out["mean"] = {k: mean[k] for k in ("fid", "kid", "precision", "recall") if k in mean}
    return out


__all__ = ["METRICS", "EvalReport", "ReferenceStatistics", "Score", "data_hash", "default_cache_dir",
           "evaluate", "parse_metrics", "reference_cache_path", "reference_statistics"]
