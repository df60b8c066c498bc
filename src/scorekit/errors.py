"""The one exception type scorekit raises for mistakes a user can make, and checks that raise it."""
import errno
import math
import os
import re



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


def write_failure(err: BaseException) -> str | None:
    """Why a write failed, for a message: ``"File too large (the disk is full or a file-size
    limit is set)"``. Understands :class:`OSError` and safetensors' ``SafetensorError``, which
    wraps the operating system's error as ``... (os error 27)``; ``None`` for anything else."""
    if isinstance(err, OSError):
        code, text = err.errno, err.strerror or str(err)
    elif type(err).__name__ == "SafetensorError" and re.search(r"os error (\d+)", str(err)):
        code = int(re.search(r"os error (\d+)", str(err)).group(1))
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
