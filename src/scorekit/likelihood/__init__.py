"""Likelihood of data under a diffusion model, in bits per dimension.

* :mod:`.elbo` -- the discrete variational bound of DDPM, term by term.
* :mod:`.ode` -- the exact log-likelihood through the probability-flow ODE.
"""
# --- ELBO (elbo.py) ---
from .elbo import Elbo, elbo
# --- ODE likelihood (ode.py) ---
from .ode import OdeLikelihood, bits_per_dim, dequantize, ode_likelihood

__all__ = ["Elbo", "OdeLikelihood", "bits_per_dim", "dequantize", "elbo", "ode_likelihood"]
