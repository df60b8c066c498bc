r"""How the network is evaluated while sampling: compiled (``torch.compile``) and in bfloat16.

Both change only the network call, never a sampler: :func:`prepare_network` returns the model with
its network (reached through :func:`scorekit.wrappers.with_network`, under any wrappers) replaced,
and :func:`scorekit.sample` / :func:`scorekit.sample_batches` call it for ``compile=`` and
``precision=``.

* ``compile``: ``torch.compile`` of the network, made once per network and backend and kept on
  the network object (:func:`compiled`), so that every batch of :func:`scorekit.sample_batches`
  and every later call reuses it. The first call compiles (seconds to minutes); a new batch size
  or time dtype compiles once more. The compiled network computes the same function, up to the
  rounding of fused kernels.
* ``precision="bf16"``: the network runs under ``torch.autocast(dtype=torch.bfloat16)``
  (:class:`Autocast`) and its output is cast back to the state's dtype, so the sampler's state,
  its coefficients and every step stay in float32. Autocast runs matrix products and convolutions
  in bfloat16 (8 significant bits: unit roundoff ``u = 2^-8``) and keeps reductions and
  normalisations in float32, so each network output changes by about ``u`` relative. The samples
  change by about as much, not by ``u`` times the number of steps (BENCHMARKS.md, "Sampling in
  bf16", measures it; ``tests/test_sampling_acceleration.py`` derives the bounds it checks).
"""
from __future__ import annotations

from typing import Callable

import torch

from .errors import ScorekitError

Tensor = torch.Tensor

#: the values of ``precision=`` (``--precision``): the network's arithmetic
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}

#: the backend ``compile=True`` means
DEFAULT_BACKEND = "inductor"

_CACHE = "_scorekit_compiled"          # attribute of a network: {backend: compiled network}


def check_precision(precision) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (``None`` for float32), or a :class:`ScorekitError`."""
    if not isinstance(precision, str) or precision not in PRECISIONS:
        raise ScorekitError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def check_compile(compile) -> str | None:
    """The ``torch.compile`` backend that ``compile`` asks for (``True``: :data:`DEFAULT_BACKEND`),
    ``None`` for ``False``, or a :class:`ScorekitError` naming the backends."""
    if compile is False or compile is None:
        return None
    if compile is True:
        return DEFAULT_BACKEND
    backends = torch._dynamo.list_backends(exclude_tags=())
    if not isinstance(compile, str) or compile not in backends:
        raise ScorekitError(f"compile must be True, False or a torch.compile backend ({', '.join(backends)}), "
                            f"got {compile!r}")
    return compile


class Autocast:
    """``network`` evaluated under ``torch.autocast(dtype)`` on its input's device, its output cast
    back to the input's dtype. Every other attribute is the network's; the network itself is
    ``__wrapped__``."""

    def __init__(self, network: Callable, dtype: torch.dtype):
        self.__wrapped__ = network
        self.dtype = dtype

    def __call__(self, x_t: Tensor, *args, **kwargs):
        from .prediction import network_tensor

        with torch.autocast(x_t.device.type, dtype=self.dtype):
            out = network_tensor(self.__wrapped__(x_t, *args, **kwargs))
        return out.to(x_t.dtype) if isinstance(out, Tensor) else out

    def __getattr__(self, name):
        try:
            wrapped = self.__dict__["__wrapped__"]
        except KeyError:                                # not yet set (e.g. while copying)
            raise AttributeError(name) from None
        return getattr(wrapped, name)

    def __repr__(self) -> str:
        return f"Autocast({self.__wrapped__!r}, {self.dtype})"


class _CompiledCache(dict):
    """{backend: compiled network}, kept on a network; a copy of the network starts without it
    (a deep copy or a pickle must not carry compiled code that wraps the original)."""

    def __deepcopy__(self, memo):
        return _CompiledCache()

    def __reduce__(self):
        return (_CompiledCache, ())


def compiled(network: Callable, backend: str = DEFAULT_BACKEND) -> Callable:
    """``torch.compile(network, backend=backend)``, made once and kept on ``network`` (outside an
    ``nn.Module``'s parameters and state dict), so that later calls reuse the compiled code. A
    bound method is cached on its object (its ``__dict__`` is the function's, shared by every
    instance), keyed by the method's name."""
    import inspect

    owner, key = network, backend
    if inspect.ismethod(network):
        owner, key = network.__self__, (network.__func__.__qualname__, backend)
    store = getattr(owner, "__dict__", None)
    cache = store.get(_CACHE) if isinstance(store, dict) else None
    if cache is not None and key in cache:
        return cache[key]
    out = torch.compile(network, backend=backend)
    if isinstance(store, dict):
        if not isinstance(cache, _CompiledCache):
            cache = store[_CACHE] = _CompiledCache()
        cache[key] = out
    return out


def prepare_network(model, *, compile=False, precision: str = "fp32"):
    """``model`` (a network or a denoiser, possibly wrapped) with its network compiled (``compile``:
    ``True`` or a backend name) and evaluated in ``precision`` (``"fp32"`` or ``"bf16"``); ``model``
    itself when neither applies. ``model`` is left as it was."""
    dtype = check_precision(precision)
    backend = check_compile(compile)
    if backend is None and dtype is None:
        return model

    def prepare(network):
        if backend is not None:
            network = compiled(network, backend)
        return network if dtype is None else Autocast(network, dtype)

    from .wrappers import with_network

    return with_network(model, prepare)


__all__ = ["Autocast", "DEFAULT_BACKEND", "PRECISIONS", "check_compile", "check_precision", "compiled",
           "prepare_network"]
