"""Samplers: plain functions ``sampler(denoiser, process, x_T, timesteps, *, generator, callback, progress, **options)``.

``SAMPLERS`` maps the names the command line and :func:`scorekit.sample` accept to the functions.
"""
from .ddim import ddim, ddim_invert
from .ddpm import ddpm

# --- score-based samplers (sde.py, langevin.py) ---
from .langevin import annealed_langevin, langevin
from .sde import pc, reverse_diffusion, reverse_sde
# --- probability-flow ODE samplers (ode.py) ---
from .ode import ode_adaptive, ode_euler, ode_heun, solve_probability_flow
# --- fast solvers: DPM-Solver++ and UniPC (dpm_solver.py, unipc.py) ---
from .dpm_solver import dpmpp_2m, dpmpp_2m_sde, dpmpp_2s, dpmpp_3m, dpmpp_3m_sde, dpmpp_3s
from .unipc import unipc
# --- fast solvers: EDM, iPNDM / DEIS, Euler (edm.py, multistep.py) ---
from .edm import edm, edm_heun, euler, euler_ancestral
from .multistep import deis, ipndm

SAMPLERS = {
    "ddpm": ddpm,
    "ddim": ddim,
    # score-based samplers
    "reverse_sde": reverse_sde,
    "reverse_diffusion": reverse_diffusion,
    "pc": pc,
    # probability-flow ODE samplers
    "ode_euler": ode_euler,
    "ode_heun": ode_heun,
    "ode_adaptive": ode_adaptive,
    # fast solvers: DPM-Solver++ and UniPC
    "dpmpp_2m": dpmpp_2m,
    "dpmpp_3m": dpmpp_3m,
    "dpmpp_2s": dpmpp_2s,
    "dpmpp_3s": dpmpp_3s,
    "dpmpp_2m_sde": dpmpp_2m_sde,
    "dpmpp_3m_sde": dpmpp_3m_sde,
    "unipc": unipc,
    # fast solvers: EDM, iPNDM / DEIS, Euler
    "euler": euler,
    "euler_ancestral": euler_ancestral,
    "edm_heun": edm_heun,
    "edm": edm,
    "ipndm": ipndm,
    "deis": deis,
}

__all__ = ["SAMPLERS", "annealed_langevin", "ddim", "ddim_invert", "ddpm", "deis", "dpmpp_2m",
           "dpmpp_2m_sde", "dpmpp_2s", "dpmpp_3m", "dpmpp_3m_sde", "dpmpp_3s", "edm", "edm_heun", "euler",
           "euler_ancestral", "ipndm", "langevin", "ode_adaptive", "ode_euler", "ode_heun", "pc",
           "reverse_diffusion", "reverse_sde", "solve_probability_flow", "unipc"]
