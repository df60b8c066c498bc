r"""What a conditional model is told besides ``(x_t, t)``: the condition ``c`` of ``D(x_t, t, c)``.

A conditional denoiser estimates ``E[x_0 | x_t, c]``. The condition travels as one object,
:class:`Condition`, from the user through any sampler to the network: a denoiser is *bound* to a
condition (:meth:`scorekit.prediction.Denoiser.with_condition`), samplers keep calling
``D(x_t, t)``, and the bound denoiser calls the network as ``net(x_t, t, **condition.network_kwargs())``.
Guidance wrappers (:mod:`scorekit.guidance`) evaluate the same network under another condition,
typically the *null* condition, in the same batch.

Each field is one kind of condition, with one value per sample:

* ``labels``: class labels ``(N,)``, ``torch.long``, passed to the network as ``y``. The value
  :data:`NULL_LABEL` (``-1``) means "no label" for that sample: the unconditional model that label
  dropout trains (Ho & Salimans 2022). scorekit's networks map it to their extra "no label"
  embedding row.
* ``image``: an image ``(N, C_c, H, W)`` (or a vector ``(N, D_c)`` for vector data), float,
  passed to the network as ``cond`` and concatenated to ``x_t`` along the channels at its input
  (``cond_channels`` of :class:`scorekit.models.UNet` and :class:`scorekit.models.MLP`): the
  conditioning of SR3 (Saharia et al. 2021) and Palette (Saharia et al. 2022). scorekit's trained
  image-to-image tasks (:mod:`scorekit.tasks.degradations`) give the observed image and a mask
  channel, ``[y, m]``, ``m = 1`` on the pixels that are known. Its null value is all zeros
  ("nothing is observed"), which condition dropout trains.

A condition may hold several fields (labels and an image): the network receives each as its own
argument, and the null condition nulls every one.

The **null condition** (:meth:`Condition.null`) replaces every field of every sample by its null
value; ``D(x_t, t, null)`` is the unconditional model ``E[x_0 | x_t]`` of a network trained with
condition dropout. A new kind of condition (an image concatenated to the input, a sequence of
embeddings for cross-attention) is a new field here, with its null value and network argument;
samplers and wrappers need no change.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from .devices import to_device
from .errors import ScorekitError, reads_are_free

Tensor = torch.Tensor

#: the label that means "no label" for one sample (the null condition of a class label)
NULL_LABEL = -1

# each field's argument name in a network's forward(x_t, t, ...)
_NETWORK_ARGS = {"labels": "y", "image": "cond"}


@dataclass(frozen=True)
class Condition:
    """A batch of conditions, one per sample (see the module docstring).

    Args:
        labels: ``(N,)`` integer class labels; :data:`NULL_LABEL` marks a sample without one.
        image: ``(N, C_c, H, W)`` (or ``(N, D_c)``) float images concatenated to the network's
            input; all zeros marks a sample without one.
    """

    labels: Tensor | None = None
    image: Tensor | None = None

    def __post_init__(self):
        if self.labels is not None:
            object.__setattr__(self, "labels", _check_labels(self.labels))
        if self.image is not None:
            object.__setattr__(self, "image", _check_image(self.image))
        if self.batch_size is None:
            raise ScorekitError("a Condition needs at least one field, e.g. Condition(labels=y) or "
                                "Condition(image=c)")
        sizes = {name: value.shape[0] for name, value in self._fields().items()}
        if len(set(sizes.values())) > 1:
            raise ScorekitError(f"the fields of a Condition are for different numbers of samples: "
                                f"{', '.join(f'{k} {v}' for k, v in sizes.items())}")

    # --- shape -------------------------------------------------------------------------------
    def _fields(self) -> dict:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if getattr(self, f.name) is not None}

    @property
    def batch_size(self) -> int | None:
        """The number of samples the condition is for."""
        for value in self._fields().values():
            return value.shape[0]
        return None

    def map(self, fn) -> "Condition":
        """The condition with ``fn`` applied to every field's tensor (indexing, moving, ...)."""
        return Condition(**{name: fn(value) for name, value in self._fields().items()})

    def to(self, device) -> "Condition":
        """The condition on ``device`` (from the host without making it wait for the device)."""
        return self.map(lambda v: to_device(v, device))

    def for_batch(self, n: int) -> "Condition":
        """The condition for a batch of ``n`` samples: itself, or one condition repeated ``n`` times."""
        size = self.batch_size
        if size == n:
            return self
        if size == 1:
            return self.map(lambda v: v.expand((n,) + tuple(v.shape[1:])))
        raise ScorekitError(f"the condition is for {size} samples but the batch has {n}; give one "
                            f"condition per sample or one for all")

    def on(self, n: int, device) -> "Condition":
        """:meth:`for_batch` ``(n)`` on ``device``, made once and kept on this condition (outside
        its fields): a sampler passes the same condition at every step, so labels or images
        given on the host reach a GPU once per call, not at every network evaluation."""
        device = torch.device(device)
        kept = self.__dict__.get("_kept_on")
        if kept is None or kept[0] != n or kept[1] != device:
            kept = (n, device, self.for_batch(n).to(device))
            object.__setattr__(self, "_kept_on", kept)
        return kept[2]

    def __getitem__(self, index) -> "Condition":
        return self.map(lambda v: v[index])

    def cat(self, other: "Condition") -> "Condition":
        """This batch followed by ``other`` (same fields)."""
        mine, theirs = self._fields(), other._fields()
        if mine.keys() != theirs.keys():
            raise ScorekitError(f"cannot join conditions with fields {sorted(mine)} and {sorted(theirs)}")
        return Condition(**{k: torch.cat([mine[k], theirs[k].to(mine[k].device)]) for k in mine})

    # --- the null condition --------------------------------------------------------------------
    def null(self) -> "Condition":
        """The null condition for the same batch: every field at its "no condition" value."""
        return Condition(**{name: _NULL[name](value) for name, value in self._fields().items()})

    @property
    def is_null(self) -> Tensor:
        """``(N,)`` bool: which samples carry the null condition in every field."""
        out = None
        for name, value in self._fields().items():
            mask = _IS_NULL[name](value)
            out = mask if out is None else out & mask
        return out

    # --- what the network receives -------------------------------------------------------------
    def network_kwargs(self) -> dict:
        """The keyword arguments of ``net(x_t, t, **kwargs)``, e.g. ``{"y": labels}`` or
        ``{"y": labels, "cond": image}``."""
        return {_NETWORK_ARGS[name]: value for name, value in self._fields().items()}


_NULL = {"labels": lambda y: torch.full_like(y, NULL_LABEL), "image": torch.zeros_like}
_IS_NULL = {"labels": lambda y: y == NULL_LABEL,
            "image": lambda c: (c.reshape(c.shape[0], -1) == 0).all(dim=1)}


def _check_labels(y) -> Tensor:
    if not isinstance(y, Tensor):
        try:
            y = torch.as_tensor(y)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ScorekitError(f"labels must be integers, one per sample: {err}") from None
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise ScorekitError(f"labels must be integers (torch.long), got dtype {y.dtype}")
    if y.ndim == 0:
        y = y.reshape(1)
    if y.ndim != 1:
        raise ScorekitError(f"labels must have shape (N,), one per sample, got {tuple(y.shape)}")
    y = y.to(torch.long)
    # (read on the CPU only: a Condition is rebuilt at every network call of a sampler, and labels
    # on a GPU are checked once, when a denoiser is bound to them, by check_labels_for)
    if y.numel() and reads_are_free(y) and int(y.min()) < NULL_LABEL:
        raise ScorekitError(f"label {int(y.min())} is negative; labels are 0..K-1, or {NULL_LABEL} "
                            f"for 'no label'")
    return y


def _check_image(c) -> Tensor:
    if not isinstance(c, Tensor):
        try:
            c = torch.as_tensor(c, dtype=torch.float32)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ScorekitError(f"a condition image must be numbers, (N, C, H, W) or (N, D): {err}") from None
    if not c.is_floating_point():
        raise ScorekitError(f"a condition image must be floating point (e.g. torch.float32), got dtype {c.dtype}")
    if c.ndim not in (2, 4):
        raise ScorekitError(f"a condition image must have shape (N, C, H, W), or (N, D) for vector data, one "
                            f"per sample; got {tuple(c.shape)}")
    return c


def as_condition(value) -> Condition | None:
    """``None``, a :class:`Condition`, or class labels (a tensor, a sequence or an int) as a
    :class:`Condition`."""
    if value is None or isinstance(value, Condition):
        return value
    return Condition(labels=value)


def check_labels_for(condition: Condition | None, num_classes: int | None, what: str = "the model") -> None:
    """Refuse labels outside ``0 .. num_classes - 1`` (or :data:`NULL_LABEL`), and any label for a
    model without classes (``num_classes=None``)."""
    if condition is None or condition.labels is None:
        return
    y = condition.labels
    if num_classes is None:
        if bool((y != NULL_LABEL).any()):
            raise ScorekitError(f"class labels were given but {what} is unconditional (it was trained "
                                f"without labels)", cli=f"--class was given but {what} is unconditional "
                                                        f"(it was trained without labels)")
        return
    bad = y[(y != NULL_LABEL) & ((y < 0) | (y >= num_classes))]
    if bad.numel():
        raise ScorekitError(f"class {int(bad[0])} is outside {what}'s classes 0..{num_classes - 1}")


def check_image_for(condition: Condition | None, cond_channels: int | None, what: str = "the model") -> None:
    """Refuse a condition image for a network that takes none (``cond_channels`` 0) and one with
    another number of channels than ``cond_channels``; ``None`` (a network scorekit does not know)
    checks nothing."""
    if condition is None or condition.image is None or cond_channels is None:
        return
    if not cond_channels:
        raise ScorekitError(f"a condition image was given but {what} takes none (it was trained without an "
                            f"image condition: cond_channels=0)")
    if condition.image.shape[1] != cond_channels:
        raise ScorekitError(f"the condition image has {condition.image.shape[1]} channels but {what} takes "
                            f"{cond_channels} (cond_channels)")


def _model_attribute(model, name: str) -> int | None:
    """The whole-number attribute ``name`` of a network, looking through wrappers."""
    seen = set()
    while model is not None and id(model) not in seen:
        seen.add(id(model))
        n = getattr(model, name, None)
        if isinstance(n, int) and not isinstance(n, bool):
            return n
        model = next((getattr(model, a) for a in ("net", "model", "module", "network")
                      if getattr(model, a, None) is not None), None)
    return None


def model_num_classes(model) -> int | None:
    """The number of classes of a network, looking through wrappers (``.net``, ``.model``,
    ``.module``); ``None`` for an unconditional one."""
    return _model_attribute(model, "num_classes")


def model_cond_channels(model) -> int | None:
    """The channels of the condition image a network takes (``cond_channels``, 0 for none),
    looking through wrappers; ``None`` for a network that does not say."""
    return _model_attribute(model, "cond_channels")


__all__ = ["Condition", "NULL_LABEL", "as_condition", "check_image_for", "check_labels_for", "model_cond_channels",
           "model_num_classes"]
