"""The ``--OPTION`` flags of the samplers' own options, shared by ``scorekit sample`` and ``tune``:
generated from the samplers' signatures and :mod:`scorekit.samplers.options`."""
from __future__ import annotations

import argparse

from ..errors import ScorekitError


def sampler_option_flags() -> dict:
    """Every option of every sampler: ``{name: (type, {sampler name: default})}``."""
    from ..samplers import SAMPLERS
    from ..sampling import sampler_options

    flags = {}
    for sampler in SAMPLERS:
        for name, default in sampler_options(sampler).items():
            kind = type(default) if default is not None else str
            flags.setdefault(name, (kind, {}))[1][sampler] = default
    return flags


def _sampler_option_help(name: str, defaults: dict) -> str:
    """The help of ``--NAME``: its values, the samplers that use it and their defaults
    (:mod:`scorekit.samplers.options`)."""
    from ..samplers.options import describe_values, option_values

    groups = {}                                  # samplers that take the same values, together
    for sampler, default in defaults.items():
        groups.setdefault(describe_values(option_values(name, sampler)), []).append(f"{sampler} (default {default})")
    return "; ".join(f"{values}, for {', '.join(used)}" for values, used in groups.items())


def add_sampler_option_flags(p: argparse.ArgumentParser) -> None:
    """One ``--OPTION`` flag per sampler option (``sample`` and ``tune``), with its values and defaults."""
    g = p.add_argument_group("sampler options (each sampler takes only its own)")
    for name, (kind, defaults) in sorted(sampler_option_flags().items()):
        g.add_argument(f"--{name.replace('_', '-')}", dest=f"opt_{name}", metavar=name.upper(),
                       type=float if kind in (int, float) else str, default=None,
                       help=_sampler_option_help(name, defaults))


def sampler_options_from(args: argparse.Namespace) -> dict:
    """The ``--option`` flags given for ``args.sampler``, checked against its options; whole
    numbers become ints where the option's default is an int."""
    from ..sampling import sampler_options

    options = {name: getattr(args, f"opt_{name}") for name in sampler_option_flags()
               if getattr(args, f"opt_{name}") is not None}
    allowed = sampler_options(args.sampler)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        flags = ", ".join("--" + u.replace("_", "-") for u in unknown)
        raise ScorekitError(f"sampler {args.sampler!r} has no option {flags}; its options are: "
                            f"{', '.join('--' + a.replace('_', '-') for a in allowed) or 'none'}")
    from ..samplers.options import option_values

    for name, value in list(options.items()):
        default = allowed[name]
        if isinstance(default, int) and not isinstance(default, bool) and float(value).is_integer():
            options[name] = value = int(value)
        values = option_values(name, args.sampler)
        if isinstance(values, tuple) and value not in values:
            given = f"{value:g}" if isinstance(value, float) else value
            raise ScorekitError(f"--{name.replace('_', '-')} {given} is not an option of {args.sampler}; "
                                f"choose one of {', '.join(map(str, values))}")
    return options
