"""scorekit: denoising diffusion and score-based generative models, tested against exact mathematics."""
from .conditioning import Condition
from .errors import ScorekitError
from .guidance import ClassifierFreeGuidance, ClassifierGuidance
from .likelihood import Elbo, OdeLikelihood, elbo, ode_likelihood
from .prediction import Denoiser
from .processes import DDPM, EDM, VESDE, VPSDE, GaussianProcess, SimpleVE, SubVPSDE, beta_schedule
from .samplers import (SAMPLERS, annealed_langevin, ddim, ddim_invert, ddpm, deis, dpmpp_2m, dpmpp_2m_sde,
                       dpmpp_2s, dpmpp_3m, dpmpp_3m_sde, dpmpp_3s, edm, edm_heun, euler, euler_ancestral,
                       ipndm, langevin, ode_adaptive, ode_euler, ode_heun, pc, reverse_diffusion,
                       reverse_sde, unipc)
from .nfe import NFECounter, count_network_calls
from .sampling import BatchedSamples, invert, sample, sample_batches
from .schedule_tuning import TunedSchedule, load_tuned, save_tuned, tune_timesteps
from .timesteps import make_timesteps
from .train.checkpoint import load_classifier, load_denoiser
from .variances import LearnedVarianceDenoiser, analytic_variances

__version__ = "0.1.0"

__all__ = [
    # processes and the prediction layer
    "DDPM", "EDM", "VESDE", "VPSDE", "GaussianProcess", "SimpleVE", "SubVPSDE", "beta_schedule",
    "Denoiser", "ScorekitError",
    # conditions and guidance
    "Condition", "ClassifierFreeGuidance", "ClassifierGuidance", "load_classifier", "load_denoiser",
    # sampling
    "SAMPLERS", "sample", "sample_batches", "BatchedSamples", "NFECounter", "count_network_calls", "invert",
    "make_timesteps", "ddpm", "ddim", "ddim_invert",
    "reverse_sde", "reverse_diffusion", "pc", "langevin", "annealed_langevin",
    "ode_euler", "ode_heun", "ode_adaptive",
    "dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpmpp_3s", "dpmpp_2m_sde", "dpmpp_3m_sde", "unipc",
    "euler", "euler_ancestral", "edm_heun", "edm", "ipndm", "deis",
    "TunedSchedule", "tune_timesteps", "save_tuned", "load_tuned",
    # likelihood and reverse variances
    "Elbo", "elbo", "OdeLikelihood", "ode_likelihood", "LearnedVarianceDenoiser", "analytic_variances",
]
