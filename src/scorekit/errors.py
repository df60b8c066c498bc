"""The one exception type scorekit raises for mistakes a user can make, and checks that raise it."""
import math



class ScorekitError(ValueError):
    """A bad argument, file or configuration. The message names the input and the fix.

    The command line prints the message on one line and exits with status 2.
    """


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
