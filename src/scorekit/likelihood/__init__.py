"""Likelihood of data under a diffusion model, in bits per dimension.

* :mod:`.elbo` -- the discrete variational bound of DDPM, term by term, and its stratified estimate
  from a few sampled steps per sample (:func:`sampled_elbo`).
* :mod:`.ode` -- the exact log-likelihood through the probability-flow ODE.
* :mod:`.batches` -- either one over a dataset, batch by batch (:func:`nll_batches`).
"""
# --- ELBO (elbo.py) ---
from .elbo import Elbo, SampledElbo, elbo, sampled_elbo
# --- ODE likelihood (ode.py) ---
from .ode import OdeLikelihood, bits_per_dim, dequantize, ode_likelihood

# --- a dataset in batches (batches.py) ---
from .batches import NLL_METHODS, BatchedNll, nll_batches

__all__ = ["BatchedNll", "Elbo", "NLL_METHODS", "OdeLikelihood", "SampledElbo", "bits_per_dim", "dequantize",
           "elbo", "nll_batches", "ode_likelihood", "sampled_elbo"]
