"""Samplers: plain functions ``sampler(denoiser, process, x_T, timesteps, *, generator, callback, progress, **options)``.

``SAMPLERS`` maps the names the command line and :func:`scorekit.sample` accept to the functions.
"""
from .ddim import ddim, ddim_invert
from .ddpm import ddpm

SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
}

__all__ = ["SAMPLERS", "ddim", "ddim_invert", "ddpm"]
