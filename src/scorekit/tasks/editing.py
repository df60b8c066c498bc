r"""Training-free editing with any diffusion model, by name: :data:`EDIT_METHODS` and :func:`edit`.

Every method is a function ``method(denoiser, x, /, **options)`` of a denoiser and a batch of
input images (one guide, reference, original or end point per sample), whose keyword options
are its signature; :func:`edit` checks options against it
(:func:`scorekit.errors.check_options`), as :func:`scorekit.sample` checks a sampler's. None
trains anything or changes a sampler: SDEdit, ILVR and RePaint drive the samplers of
:data:`scorekit.samplers.SAMPLERS` on pieces of their grid (:mod:`scorekit.tasks.segments`),
interpolation and inversion editing run DDIM and its inversion.
"""
from __future__ import annotations

import inspect

from ..errors import ScorekitError, check_options, option_schema
from .ilvr import ilvr
from .interpolation import interpolate, inversion_edit
from .repaint import repaint
from .sdedit import sdedit

#: the editing methods by name
EDIT_METHODS = {
    "sdedit": sdedit,
    "ilvr": ilvr,
    "repaint": repaint,
    "interpolate": interpolate,
    "inversion": inversion_edit,
}


def _lookup(method: str):
    if method not in EDIT_METHODS:
        raise ScorekitError(f"unknown editing method {method!r}; choose one of {', '.join(EDIT_METHODS)}")
    return EDIT_METHODS[method]


def edit_options(method: str) -> dict:
    """The keyword options of ``method`` with their defaults (``inspect.Parameter.empty`` for
    the ones it requires, such as RePaint's ``mask``)."""
    return {k: p.default for k, p in inspect.signature(_lookup(method)).parameters.items()
            if p.kind == p.KEYWORD_ONLY}


def check_edit_options(method: str, options: dict) -> dict:
    """``options`` of ``method`` converted to the types its signature gives; an unknown or a
    missing required option is refused, naming the method's options."""
    fn = _lookup(method)
    checked = check_options(options, option_schema(fn), f"{method} option")
    missing = [k for k, d in edit_options(method).items() if d is inspect.Parameter.empty and k not in checked]
    if missing:
        raise ScorekitError(f"{method} needs the option{'s' if len(missing) > 1 else ''} {', '.join(missing)}")
    return checked


def edit(method: str, denoiser, x, **options):
    """Run the editing method ``method`` (a name in :data:`EDIT_METHODS`) on the images ``x`` with
    its ``options`` (``strength=0.4``, ``mask=m``, ``generator=g``, ...), checked first."""
    return _lookup(method)(denoiser, x, **check_edit_options(method, options))


__all__ = ["EDIT_METHODS", "check_edit_options", "edit", "edit_options"]
