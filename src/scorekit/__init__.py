"""scorekit: denoising diffusion and score-based generative models, tested against exact mathematics."""
from .errors import ScorekitError
from .prediction import Denoiser
from .processes import DDPM, EDM, VESDE, VPSDE, GaussianProcess, SimpleVE, SubVPSDE, beta_schedule
from .sampling import sample
from .samplers import SAMPLERS, ddim, ddim_invert, ddpm
from .timesteps import make_timesteps

__version__ = "0.1.0"

__all__ = [
    "DDPM", "EDM", "VESDE", "VPSDE", "SAMPLERS", "Denoiser", "GaussianProcess", "ScorekitError",
    "SimpleVE", "SubVPSDE", "beta_schedule", "ddim", "ddim_invert", "ddpm", "make_timesteps",
    "sample",
]
