r"""EDM's preconditioning (Karras et al. 2022, section 5 and Table 1): a raw network ``F`` seen
through input and output scalings that keep what it sees and what it must produce at unit variance.

For the variance-exploding state ``x = x_0 + sigma n`` the denoiser is

    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma)),       (eq. 7)

    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2),   c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2),
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2),          c_noise = ln(sigma) / 4,

(Table 1, column "EDM") with ``sigma_data`` the standard deviation of the data. When each
coordinate of ``x_0`` has second moment ``sigma_data^2`` (e.g. mean 0, standard deviation
``sigma_data``), the network's input ``c_in x`` has unit second moment, and so has the effective
training target ``F_target = (x_0 - c_skip x) / c_out`` (appendix B.6 derives ``c_in`` and ``c_out`` from these
two conditions, with ``c_skip`` the choice that makes ``c_out`` smallest). The loss weight
``lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2`` on ``||D - x_0||^2`` equals
``1 / c_out^2``, i.e. weight 1 on ``||F - F_target||^2`` (eq. 8). That weight is scorekit's ``edm``
weighting (:mod:`scorekit.losses`) applied to the x0 prediction ``D``.

**Every process.** scorekit's processes are ``x_t = alpha(t) x_0 + sigma(t) eps``. In Karras's
scaled variables (eq. 4 and Table 1 with ``s(t) = alpha(t)``)

    x^ = x_t / alpha,    sigma~ = sigma / alpha    (:func:`scorekit.timesteps.edm_sigma`),

``x^ = x_0 + sigma~ eps`` is the variance-exploding state above, so :class:`EDMPrecond` returns
``D(x_t, t) = c_skip(sigma~) x^ + c_out(sigma~) F(c_in(sigma~) x^; c_noise(sigma~))``, an ``x0``
prediction, for every process: for ``processes.EDM`` (``alpha = 1``, ``sigma~ = t``) it is eq. 7
itself.

**The network's time input is** ``c_noise(sigma~) = ln(sigma~) / 4`` **for every process**, not the
process's own time (EDM's VP column feeds ``(M - 1) t`` instead). Then ``F`` sees its input and its
time only through ``sigma~``: a preconditioned network is the same function of the noise level
whatever process trained it (the process only decides which noise levels are trained), it has no
tie to one schedule's time axis, and ``ln sigma~`` resolves the small noise levels that fine detail
needs, where a time such as EDM's ``t = sigma`` crowds them near zero. scorekit's networks embed
``c_noise`` as EDM's networks do, unscaled (``time_scale = 1``; the sinusoidal embedding's
frequencies run from 1 down to ``10000^{-(h-1)/h}`` for ``h`` of them, close to EDM's 1e-4).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import ScorekitError, positive_number
from .processes import GaussianProcess, expand_like
from .timesteps import edm_sigma

Tensor = torch.Tensor

#: the preconditionings a training run may choose (``TrainConfig.precondition``, ``--precondition``)
PRECONDITIONS = ("edm",)

#: EDM's ``sigma_data`` (Karras et al. 2022, Table 1), used unless the process or the run gives one
DEFAULT_SIGMA_DATA = 0.5

def check_sigma_data(value) -> float:
    """``float(value)`` if it is a positive finite number, else a :class:`ScorekitError`."""
    return positive_number(value, "sigma_data", "the data's standard deviation, 0.5 in EDM")


def resolve_sigma_data(process: GaussianProcess, sigma_data=None) -> float:
    """``sigma_data`` if given, else the process's own (``processes.EDM`` has one), else
    :data:`DEFAULT_SIGMA_DATA`; checked to be a positive finite number."""
    return check_sigma_data(getattr(process, "sigma_data", DEFAULT_SIGMA_DATA) if sigma_data is None
                            else sigma_data)


def c_skip(sigma, sigma_data: float):
    r"""``c_skip(sigma) = sigma_data^2 / (sigma^2 + sigma_data^2)`` (Table 1): the share of the noisy
    input ``D`` passes through."""
    return sigma_data ** 2 / (sigma ** 2 + sigma_data ** 2)


def c_out(sigma, sigma_data: float):
    r"""``c_out(sigma) = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)`` (Table 1): the scale of the
    network's output in ``D``."""
    return sigma * sigma_data / (sigma ** 2 + sigma_data ** 2) ** 0.5


def c_in(sigma, sigma_data: float):
    r"""``c_in(sigma) = 1 / sqrt(sigma^2 + sigma_data^2)`` (Table 1): the input scale that gives
    ``x = x_0 + sigma n`` unit variance when ``x_0`` has standard deviation ``sigma_data``."""
    return 1.0 / (sigma ** 2 + sigma_data ** 2) ** 0.5


def c_noise(sigma):
    r"""``c_noise(sigma) = ln(sigma) / 4`` (Table 1): the network's time input (float64)."""
    return torch.log(torch.as_tensor(sigma, dtype=torch.float64)) / 4


class EDMPrecond(nn.Module):
    r"""``D(x_t, t) = c_skip x^ + c_out F(c_in x^; c_noise)`` at ``sigma~ = sigma_t / alpha_t``,
    ``x^ = x_t / alpha_t`` (module docstring): the ``x0`` prediction of a raw network ``F``.

    Args:
        net: ``F(x, c_noise, y=None) -> Tensor`` shaped like ``x``, e.g. a :mod:`scorekit.models`
            network; it is called with ``y`` only when labels are given, and with the other keyword
            arguments (a condition image ``cond``) as given.
        process: the forward process whose times ``t`` the wrapper is called with.
        sigma_data: the data's standard deviation (default: the process's own, else 0.5).

    ``forward(x_t, t, y=None, **kwargs)`` takes the process's time ``t`` (a number, or an ``(N,)`` tensor,
    integer steps included) and returns ``D`` in ``x_t``'s dtype; the coefficients are computed in
    float64 at the time as given (:class:`scorekit.Denoiser` passes float32 times for a continuous
    process, as to every network: ``sigma~`` then carries float32 rounding, below a float32
    network's resolution). The wrapper has no parameters of its own: its ``state_dict`` is the
    network's under ``net.``; runs save the network's own.
    """

    def __init__(self, net, process: GaussianProcess, sigma_data: float | None = None):
        super().__init__()
        if not callable(net):
            raise ScorekitError("net must be callable as net(x, c_noise, y)")
        if not isinstance(process, GaussianProcess):
            raise ScorekitError(f"process must be a scorekit GaussianProcess, got {type(process).__name__}")
        self.net = net
        self.process = process
        self.sigma_data = resolve_sigma_data(process, sigma_data)

    def config(self) -> dict:
        """``{"kind": "edm", "sigma_data": ...}``: what :func:`precondition` rebuilds it from."""
        return {"kind": "edm", "sigma_data": self.sigma_data}

    def coefficients(self, t) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """``(alpha, c_skip, c_out, c_in, c_noise)`` at the times ``t``, float64 (``c_*`` at ``sigma~``)."""
        t = torch.as_tensor(t, dtype=torch.float64)
        sigma = edm_sigma(self.process, t)
        sd = self.sigma_data
        return self.process.alpha(t), c_skip(sigma, sd), c_out(sigma, sd), c_in(sigma, sd), c_noise(sigma)

    def forward(self, x_t: Tensor, t, y=None, **kwargs) -> Tensor:
        t = t.to(x_t.device) if isinstance(t, Tensor) else torch.tensor(t, dtype=torch.float64, device=x_t.device)
        if t.ndim == 0:
            t = t.expand(x_t.shape[0])
        alpha, skip, out, scale_in, noise = self.coefficients(t)
        x_hat = x_t / expand_like(alpha, x_t)
        args = (expand_like(scale_in, x_t) * x_hat, noise.to(device=x_t.device, dtype=x_t.dtype))
        f = self.net(*args, **kwargs) if y is None else self.net(*args, y, **kwargs)
        if not isinstance(f, Tensor) or f.shape != x_t.shape:
            got = tuple(f.shape) if isinstance(f, Tensor) else type(f).__name__
            raise ScorekitError(f"the preconditioned network's output has shape {got} but x_t has shape "
                                f"{tuple(x_t.shape)}; F must return one value per input value")
        return expand_like(skip, x_t) * x_hat + expand_like(out, x_t) * f


def precondition(net, process: GaussianProcess, config: dict | None):
    """``net`` wrapped as ``config`` says (``None``: ``net`` itself; ``{"kind": "edm",
    "sigma_data": ...}``: :class:`EDMPrecond`), as a run's ``config.json`` records it."""
    if config is None:
        return net
    if not isinstance(config, dict) or config.get("kind") not in PRECONDITIONS:
        raise ScorekitError(f"precondition must be null or an object with \"kind\" one of "
                            f"{', '.join(PRECONDITIONS)}, got {config!r}")
    unknown = sorted(set(config) - {"kind", "sigma_data"})
    if unknown:
        raise ScorekitError(f"precondition has unknown setting(s) {', '.join(unknown)}")
    return EDMPrecond(net, process, config.get("sigma_data"))


__all__ = ["DEFAULT_SIGMA_DATA", "EDMPrecond", "PRECONDITIONS", "c_in", "c_noise",
           "c_out", "c_skip", "check_sigma_data", "precondition", "resolve_sigma_data"]
