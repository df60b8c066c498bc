"""The one exception type scorekit raises for mistakes a user can make, and checks that raise it."""
import collections.abc
import errno
import inspect
import math
import os
import re
import types
import typing

import numpy as np


class ScorekitError(ValueError):
    """A bad argument, file or configuration. The message names the input and the fix.

    The message speaks Python (argument names, ``resume=True``). Where the fix differs on the
    command line, ``cli`` holds the same message in its terms (``--resume``): the command line
    prints that one (``scorekit: error: <message>``, one line) and exits with status 2.
    """

    def __init__(self, message: str, *, cli: str | None = None):
        super().__init__(message)
        self.cli = cli

    def for_cli(self) -> str:
        """The message as the command line shows it."""
        return self.cli or str(self)


def positive_number(value, name: str, hint: str | None = None) -> float:
    """``float(value)`` if it is a positive finite number; otherwise a :class:`ScorekitError`
    naming ``name`` (and, for a number out of range, a typical value: ``hint``, e.g. "e.g. 0.16")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ScorekitError(f"{name} must be a positive number, got {value!r}") from None
    if not (number > 0 and math.isfinite(number)):
        typical = f" ({hint})" if hint else ""
        raise ScorekitError(f"{name} must be a positive finite number{typical}, got {value!r}")
    return number


def whole_number(value, name: str, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is a whole number ``>= minimum`` (``10`` or ``10.0``, not
    ``10.9``, ``True`` or ``"10"``); otherwise a :class:`ScorekitError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or value != int(value) or int(value) < minimum:
        kind = "a positive whole number" if minimum == 1 else f"a whole number >= {minimum}"
        raise ScorekitError(f"{name} must be {kind}, got {value!r}")
    return int(value)


class FileWriteError(ScorekitError):
    """A file could not be written (a full disk, a file-size limit, no permission, ...)."""


#: what the errors a full or closed disk gives mean, said for the user
_WRITE_CAUSES = {
    errno.ENOSPC: "the disk is full",
    errno.EFBIG: "the disk is full or a file-size limit is set",
    errno.EDQUOT: "the disk quota is used up",
    errno.EROFS: "the file system is read-only",
    errno.EACCES: "no permission to write there",
    errno.EPERM: "no permission to write there",
}


def reads_are_free(t) -> bool:
    """Whether a check may read the values of the tensor ``t`` at no cost: when it lies on the CPU.

    On a GPU reading a value makes the host wait for the device. Checks of values inside a
    training step or a sampler's step loop therefore run only where this is true; on a GPU the
    checks made once stand in for them (the data when they are loaded, labels when a denoiser is
    bound to them, the sampler's deferred finite checks, the trainer's deferred divergence check).
    """
    return t.device.type == "cpu"


def write_failure(err: BaseException) -> str | None:
    """Why a write failed, for a message: ``"File too large (the disk is full or a file-size
    limit is set)"``. Understands :class:`OSError` and safetensors' ``SafetensorError``, which
    wraps the operating system's error as ``... (os error 27)`` (``IoError(Os { code: 27, ...``
    in older releases such as 0.4); ``None`` for anything else."""
    if isinstance(err, OSError):
        code, text = err.errno, err.strerror or str(err)
    elif type(err).__name__ == "SafetensorError" and (
            found := re.search(r"os error (\d+)|Os \{ code: (\d+)", str(err))):
        code = int(found.group(1) or found.group(2))
        text = os.strerror(code)
    else:
        return None
    hint = _WRITE_CAUSES.get(code)
    return f"{text} ({hint})" if hint else text


def write_error(err: BaseException, what: str) -> FileWriteError | None:
    """``FileWriteError("cannot write WHAT: CAUSE")`` for a failed write (see :func:`write_failure`),
    ``None`` if ``err`` is not one (then re-raise ``err``)."""
    cause = write_failure(err)
    return None if cause is None else FileWriteError(f"cannot write {what}: {cause}")


#: the most classes a label-conditioned network may have: its embedding table has one row per
#: class (ImageNet-21k has 21,841 classes); 10^5 rows of 512 float32 values are 205 MB
MAX_CLASSES = 100_000


def class_count(value, name: str = "num_classes"):
    """``value`` as a number of classes, 1 .. :data:`MAX_CLASSES`, or ``None`` (no labels)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value <= MAX_CLASSES:
        raise ScorekitError(f"{name} must be a whole number from 1 to {MAX_CLASSES:,} (or None: no "
                            f"labels), got {value!r}")
    return int(value)


#: labels below this are class indices however few samples there are (any byte, e.g. a few
#: samples of the ten digit classes)
FEW_CLASSES = 256


def class_count_from_labels(largest: int, samples: int, where: str) -> int:
    """The number of classes ``largest + 1`` that labels ``0 .. largest`` of ``samples`` samples
    imply, refused when it exceeds both the number of samples and :data:`FEW_CLASSES`: labels
    such as {0, 10^9} are names, not class indices, and would make the network allocate an
    embedding row for every value up to the largest. They are not renumbered silently, since
    ``--class K`` must mean the user's class K."""
    if largest + 1 > max(samples, FEW_CLASSES):
        raise ScorekitError(
            f"{where}: the largest label is {largest} but there are only {samples} samples; labels "
            f"must be class indices 0..K-1 with K at most the number of samples (or "
            f"{FEW_CLASSES}): renumber them (e.g. "
            f"y = numpy.unique(y, return_inverse=True)[1]) or give num_classes=K (at most "
            f"{MAX_CLASSES:,}) if the classes really are that many")
    return class_count(largest + 1, f"{where}: the number of classes (largest label + 1)")


# --- keyword options checked against the signature of the function that receives them ----------

def option_schema(*functions, skip=()) -> dict:
    """``{name: (annotation, default)}`` of the keyword parameters of ``functions`` (the first
    function that names a parameter decides its type); ``*args``, ``**kwargs`` and ``skip`` are
    left out. The schema of a builder is its signature: nothing to keep in step by hand."""
    schema = {}
    for fn in functions:
        try:
            params = inspect.signature(fn, eval_str=True).parameters
        except NameError:                                       # an annotation that cannot be read
            params = inspect.signature(fn).parameters
        for name, p in params.items():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY) or name in skip:
                continue
            schema.setdefault(name, (p.annotation, p.default))
    return schema


class _Mismatch(Exception):
    """A value that does not have the form an option expects."""


def _kind(annotation, default):
    """The annotation, or the type of the default where there is none (``None``: anything)."""
    if annotation is not inspect.Parameter.empty:
        return annotation
    if default is None or default is inspect.Parameter.empty:
        return None
    if isinstance(default, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool)
                                                  for v in default):
        return typing.Sequence[int]
    return type(default)


def _optional(kind) -> tuple[bool, list]:
    """``(None allowed, the other types)`` of a union such as ``int | None``."""
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        args = typing.get_args(kind)
        return type(None) in args, [a for a in args if a is not type(None)]
    return False, [kind]


def _sequence_item(kind):
    """The item type of ``Sequence[T]`` / ``list[T]`` / ``tuple[T, ...]``, else ``None``."""
    origin = typing.get_origin(kind)
    if origin in (list, tuple, collections.abc.Sequence) and typing.get_args(kind):
        return typing.get_args(kind)[0]
    return None


def _form(kind, default=None) -> str:
    """How an option of type ``kind`` is written, for error messages."""
    if kind is None:
        return "any value"
    optional, kinds = _optional(kind)
    forms = []
    for k in kinds:
        item = _sequence_item(k)
        if item is not None:
            items = "whole numbers like [1,2] or 1,2" if item is int else "numbers like [0.5,1] or 0.5,1"
            forms.append(f"a list of {items}")
        elif k is bool:
            forms.append("true or false")
        elif k is int:
            forms.append("a whole number")
        elif k is float:
            forms.append("a number")
        elif k is str:
            forms.append(f"text (e.g. {default})" if isinstance(default, str) else "text")
        else:
            forms.append(f"a {getattr(k, '__name__', str(k))}")
    return " or ".join(forms + (["null"] if optional else []))


def _scalar(value, kind, default):
    """``value`` as ``kind`` (bool, int, float or str), reading text the way a user writes it."""
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise _Mismatch
    if isinstance(value, bool):
        raise _Mismatch
    if kind is int:
        if isinstance(value, (int, np.integer)):
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        if isinstance(value, (str, float, np.floating)):
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch from None
            if math.isfinite(number) and number.is_integer():
                return int(number)
        raise _Mismatch
    if kind is float:
        if not isinstance(value, (int, float, str, np.integer, np.floating)):
            raise _Mismatch
        try:
            number = float(value)
        except ValueError:
            raise _Mismatch from None
        # NaN is never an option value; infinity only where the default is infinite
        if math.isnan(number) or (math.isinf(number) and not (isinstance(default, float)
                                                              and math.isinf(default))):
            raise _Mismatch
        return number
    if kind is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(kind, type) and kind not in (object,):
        if isinstance(value, kind):
            return value
        raise _Mismatch
    return value                                                # Callable, Any, ...: as it is


def _convert(value, kind, default):
    if kind is None:
        return value
    optional, kinds = _optional(kind)
    if value is None or (isinstance(value, str) and value.strip().lower() in ("none", "null")
                         and optional):
        if optional:
            return None
        raise _Mismatch
    for k in kinds:
        item = _sequence_item(k)
        try:
            if item is not None:
                if isinstance(value, str):
                    text = value.strip().strip("[]()").strip()
                    parts = [p.strip() for p in text.split(",")] if text else []
                elif isinstance(value, (list, tuple)):
                    parts = list(value)
                else:
                    parts = [value]                             # one number: a list of one
                return [_scalar(p, item, None) for p in parts]
            return _scalar(value, k, default)
        except _Mismatch:
            continue
    raise _Mismatch


def check_options(options, schema: dict, what: str) -> dict:
    """``options`` (a dict) with every value converted to the type its parameter expects.

    ``schema`` is :func:`option_schema` of the receiving function(s); ``what`` names the options in
    messages (e.g. ``"model option"``). Values may be written as a user types them on a command
    line: ``"32"`` for a whole number, ``"1,2"`` or ``[1, 2]`` for a list of them, ``"true"`` for
    a flag. An unknown key, or a value not of the expected form, raises :class:`ScorekitError`
    naming the option, what it expects and the valid keys.
    """
    if not isinstance(options, dict):
        raise ScorekitError(f"{what}s must be a dict of name: value, got {type(options).__name__}")
    unknown = sorted(k for k in options if k not in schema)
    if unknown:
        s = "s" if len(unknown) > 1 else ""
        raise ScorekitError(f"unknown {what}{s} {', '.join(map(str, unknown))}; valid: "
                            f"{', '.join(schema) or 'none'}")
    checked = {}
    for key, value in options.items():
        kind, default = schema[key]
        kind = _kind(kind, default)
        try:
            checked[key] = _convert(value, kind, default)
        except _Mismatch:
            shown = value if isinstance(value, str) else repr(value)
            raise ScorekitError(f"{what} {key}={shown}: expected {_form(kind, default)}") from None
    return checked
