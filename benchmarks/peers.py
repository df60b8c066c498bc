"""Peer samplers for the sampler benchmarks: diffusers' schedulers and k-diffusion's samplers, run on
a scorekit DDPM process and a network ``model(x_t, t)`` of any DDPM schedule.

Every peer is described by a :class:`PeerConfig` (library, scheduler class or sampler function,
options, noise-level grid) and run by :func:`run_peer` from the same standard-normal ``x_T`` as
scorekit's samplers, with noise drawn only from the ``torch.Generator`` passed in.

diffusers (``diffusers`` in the ``bench`` extra): the loop of its pipelines,
``x = x_T * init_noise_sigma``; for each ``t`` in ``scheduler.timesteps``:
``x = step(model(scale_model_input(x, t), t), t, x).prev_sample``. The scheduler is built with
``num_train_timesteps = T`` and ``trained_betas`` = the process's betas (so it has exactly the
model's schedule) and the model's prediction type; every other setting is the scheduler's default
unless the configuration names it, except ``clip_sample=False`` for DDIM/DDPM (their default clips
x0-predictions to [-1, 1], which the benchmark mixtures exceed).

k-diffusion 0.1.1 (``k_diffusion/sampling.py``): the package's ``__init__`` imports
``k_diffusion.utils``, which imports torchvision; torchvision does not import beside the pinned
CPU torch here, so the package is never imported. The wheel is installed with ``--no-deps``
together with the two dependencies of its sampler module, torchsde and torchdiffeq:

    .venv/bin/uv pip install --constraint constraints.txt --no-deps k-diffusion==0.1.1.post1
    .venv/bin/uv pip install --constraint constraints.txt torchsde torchdiffeq

and :func:`k_diffusion_sampling` loads only the file ``k_diffusion/sampling.py`` with
``importlib``, as the module ``_k_diffusion_sampling_only.sampling`` of an empty stand-in package
whose ``utils`` holds the one helper that file uses, ``append_dims(x, n)`` (append trailing
singleton dimensions to ``x`` until it has ``n``). ``importlib.util.find_spec("k_diffusion")``
locates the installed package without executing its ``__init__``.

The model is wrapped as k-diffusion's ``external.DiscreteEpsDDPMDenoiser`` /
``DiscreteVDDPMDenoiser`` do (:class:`KDiffusionDDPMDenoiser`): noise levels
``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` (float32) for the training steps, a
continuous ``sigma`` mapped to a fractional step by linear interpolation of ``log sigma`` between
neighbouring steps, the network called on ``x / sqrt(1 + sigma^2)`` (the variance-preserving
state). Sampling starts at ``x = x_T sqrt(1 + sigma_0^2)`` (the same x_T in the variance-exploding
scaling) and ends at ``sigma = 0``. The stochastic samplers get their noise from the generator:
the ancestral ones through a ``noise_sampler`` drawing ``torch.randn(..., generator=g)``, the SDE
ones through k-diffusion's own ``BrownianTreeNoiseSampler`` seeded from the generator.
"""
from __future__ import annotations

import functools
import importlib.util
import inspect
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

Tensor = torch.Tensor

DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}


@dataclass(frozen=True)
class PeerConfig:
    """One configuration of a peer sampler.

    ``library`` is ``"diffusers"`` or ``"k-diffusion"``; ``method`` the scheduler class name or the
    k-diffusion function name; ``options`` (name, value) pairs for the scheduler's constructor or
    the sampler function; ``grid`` the k-diffusion noise-level grid (``karras``, ``exponential``,
    ``discrete``); ``default`` marks the configuration a user gets without changing settings.
    """
    label: str
    library: str
    family: str
    method: str
    options: tuple = ()
    grid: str | None = None
    default: bool = False
    deterministic: bool = True
    note: str = field(default="", compare=False)


# ---------------------------------------------------------------------------------------------
# diffusers
# ---------------------------------------------------------------------------------------------

KARRAS = ("use_karras_sigmas", True)
TRAILING = ("timestep_spacing", "trailing")


def _diffusers_family(family: str, method: str, base: tuple, variants: dict, *,
                      deterministic: bool = True) -> list[PeerConfig]:
    configs = [PeerConfig(f"diffusers {family}: defaults", "diffusers", family, method, base,
                          default=True, deterministic=deterministic)]
    configs += [PeerConfig(f"diffusers {family}: {name}", "diffusers", family, method, base + opts,
                           deterministic=deterministic) for name, opts in variants.items()]
    return configs


def diffusers_configs() -> list[PeerConfig]:
    """diffusers' schedulers: each family's defaults and the settings a knowledgeable user tries
    (trailing spacing, Karras sigmas, final-step options, orders)."""
    multistep = {"trailing": (TRAILING,), "karras": (KARRAS,),
                 "karras, final sigma_min": (KARRAS, ("final_sigmas_type", "sigma_min")),
                 "lu_lambdas": (("use_lu_lambdas", True),),
                 "euler_at_final": (("euler_at_final", True),)}
    configs = []
    configs += _diffusers_family("DPMSolverMultistep 2M", "DPMSolverMultistepScheduler",
                                 (("solver_order", 2),), multistep)
    configs += _diffusers_family("DPMSolverMultistep 3M", "DPMSolverMultistepScheduler",
                                 (("solver_order", 3),),
                                 {k: multistep[k] for k in ("trailing", "karras", "lu_lambdas")})
    configs += _diffusers_family("DPMSolverMultistep 2M SDE", "DPMSolverMultistepScheduler",
                                 (("algorithm_type", "sde-dpmsolver++"),),
                                 {"trailing": (TRAILING,), "karras": (KARRAS,)}, deterministic=False)
    configs += _diffusers_family("DPMSolverSinglestep 2S", "DPMSolverSinglestepScheduler",
                                 (("solver_order", 2),),
                                 {"karras": (KARRAS,), "lower_order_final": (("lower_order_final", True),),
                                  "karras, lower_order_final": (KARRAS, ("lower_order_final", True))})
    configs += _diffusers_family("DPMSolverSinglestep 3S", "DPMSolverSinglestepScheduler",
                                 (("solver_order", 3),),
                                 {"karras": (KARRAS,), "karras, lower_order_final": (KARRAS, ("lower_order_final", True))})
    configs += _diffusers_family("UniPCMultistep", "UniPCMultistepScheduler", (),
                                 {"trailing": (TRAILING,), "karras": (KARRAS,), "order 3": (("solver_order", 3),),
                                  "order 3, karras": (("solver_order", 3), KARRAS),
                                  "bh1": (("solver_type", "bh1"),)})
    configs += _diffusers_family("DEISMultistep", "DEISMultistepScheduler", (),
                                 {"trailing": (TRAILING,), "karras": (KARRAS,), "order 3": (("solver_order", 3),),
                                  "order 3, karras": (("solver_order", 3), KARRAS)})
    configs += _diffusers_family("EulerDiscrete", "EulerDiscreteScheduler", (),
                                 {"trailing": (TRAILING,), "karras": (KARRAS,)})
    configs += _diffusers_family("EulerAncestralDiscrete", "EulerAncestralDiscreteScheduler", (),
                                 {"trailing": (TRAILING,)}, deterministic=False)
    configs += _diffusers_family("HeunDiscrete", "HeunDiscreteScheduler", (),
                                 {"trailing": (TRAILING,), "karras": (KARRAS,)})
    configs += _diffusers_family("LMSDiscrete", "LMSDiscreteScheduler", (),
                                 {"trailing": (TRAILING,), "karras": (KARRAS,)})
    configs += _diffusers_family("PNDM", "PNDMScheduler", (),
                                 {"skip_prk_steps": (("skip_prk_steps", True),),
                                  "skip_prk_steps, trailing": (("skip_prk_steps", True), TRAILING),
                                  "skip_prk_steps, set_alpha_to_one": (("skip_prk_steps", True),
                                                                       ("set_alpha_to_one", True))})
    configs += _diffusers_family("DDIM", "DDIMScheduler", (("clip_sample", False),),
                                 {"trailing": (TRAILING,), "linspace": (("timestep_spacing", "linspace"),)})
    configs += _diffusers_family("DDPM", "DDPMScheduler", (("clip_sample", False),),
                                 {"trailing": (TRAILING,)}, deterministic=False)
    return configs


@functools.lru_cache(maxsize=None)
def _step_takes_generator(cls) -> bool:
    return "generator" in inspect.signature(cls.step).parameters


def diffusers_scheduler(cfg: PeerConfig, process, prediction_type: str = "eps"):
    """The configured diffusers scheduler with exactly the process's betas."""
    import diffusers

    cls = getattr(diffusers, cfg.method)
    return cls(num_train_timesteps=process.T, trained_betas=process.betas.numpy(),
               prediction_type=DIFFUSERS_PREDICTION[prediction_type], **dict(cfg.options))


def run_diffusers(cfg: PeerConfig, model, process, x_T: Tensor, num_steps: int,
                  generator: torch.Generator, prediction_type: str = "eps") -> Tensor:
    """The sampling loop of diffusers' pipelines; ``model(x, t)`` gets ``t`` as an (N,) tensor."""
    scheduler = diffusers_scheduler(cfg, process, prediction_type)
    scheduler.set_timesteps(num_steps)
    extra = {"generator": generator} if _step_takes_generator(type(scheduler)) else {}
    x = x_T * scheduler.init_noise_sigma
    batch = x.shape[0]
    for t in scheduler.timesteps:
        out = model(scheduler.scale_model_input(x, t), t.reshape(1).expand(batch))
        x = scheduler.step(out, t, x, **extra).prev_sample
    return x


# ---------------------------------------------------------------------------------------------
# k-diffusion
# ---------------------------------------------------------------------------------------------

_STAND_IN = "_k_diffusion_sampling_only"


def _append_dims(x: Tensor, target_dims: int) -> Tensor:
    """``x`` with trailing singleton dimensions until it has ``target_dims`` (k-diffusion's
    ``utils.append_dims``)."""
    missing = target_dims - x.ndim
    if missing < 0:
        raise ValueError(f"input has {x.ndim} dims but target_dims is {target_dims}")
    return x[(...,) + (None,) * missing]


@functools.lru_cache(maxsize=1)
def k_diffusion_sampling() -> types.ModuleType:
    """k-diffusion's ``sampling.py`` alone (see the module docstring); raises ImportError with the
    install command when the wheel or its dependencies are missing."""
    spec = importlib.util.find_spec("k_diffusion")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("k-diffusion is not installed: .venv/bin/uv pip install --constraint constraints.txt "
                          "--no-deps k-diffusion==0.1.1.post1 && .venv/bin/uv pip install --constraint "
                          "constraints.txt torchsde torchdiffeq")
    path = Path(list(spec.submodule_search_locations)[0]) / "sampling.py"
    package = types.ModuleType(_STAND_IN)
    package.__path__ = []
    utils = types.ModuleType(f"{_STAND_IN}.utils")
    utils.append_dims = _append_dims
    package.utils = utils
    sys.modules.setdefault(_STAND_IN, package)
    sys.modules.setdefault(f"{_STAND_IN}.utils", utils)
    module_spec = importlib.util.spec_from_file_location(f"{_STAND_IN}.sampling", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def k_diffusion_version() -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("k-diffusion")
    except PackageNotFoundError:
        return None


class KDiffusionDDPMDenoiser:
    r"""``D(x; sigma)`` of a DDPM network, as k-diffusion's ``DiscreteEpsDDPMDenoiser`` (eps) and
    ``DiscreteVDDPMDenoiser`` (v) build it.

    With ``sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t)`` the state ``x = x_0 + sigma eps`` is the
    DDPM state divided by ``alpha = 1 / sqrt(1 + sigma^2)``; the network sees ``c_in x``,
    ``c_in = 1 / sqrt(1 + sigma^2)``, at the fractional step ``t(sigma)`` that interpolates
    ``log sigma`` linearly between training steps, and

        eps network:  D = x - sigma * eps_pred
        v network:    D = x / (1 + sigma^2) - sigma / sqrt(1 + sigma^2) * v_pred
    """

    def __init__(self, model, alpha_bar: Tensor, prediction_type: str = "eps"):
        if prediction_type not in ("eps", "v"):
            raise ValueError(f"k-diffusion's DDPM wrappers take eps or v models, not {prediction_type!r}")
        alpha_bar = torch.as_tensor(alpha_bar, dtype=torch.float32)
        self.model = model
        self.prediction_type = prediction_type
        self.sigmas = ((1 - alpha_bar) / alpha_bar).sqrt()
        self.log_sigmas = self.sigmas.log()

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def t_from_sigma(self, sigma: Tensor) -> Tensor:
        """Fractional step: linear interpolation of ``log sigma`` (clamped to the table's range)."""
        steps = np.arange(len(self.log_sigmas), dtype=np.float64)
        t = np.interp(sigma.double().log().cpu().numpy(), self.log_sigmas.double().numpy(), steps)
        return torch.as_tensor(t, dtype=torch.float32).reshape(sigma.shape)

    def sigma_from_t(self, t: Tensor) -> Tensor:
        """``sigma`` at a fractional step: ``log sigma`` interpolated linearly."""
        t = t.float()
        lo, hi, w = t.floor().long(), t.ceil().long(), t.frac()
        return ((1 - w) * self.log_sigmas[lo] + w * self.log_sigmas[hi]).exp()

    def discrete_sigmas(self, n: int) -> Tensor:
        """k-diffusion's ``DiscreteSchedule.get_sigmas(n)``: steps ``linspace(T-1, 0, n)``, then 0."""
        t = torch.linspace(len(self.sigmas) - 1, 0, n)
        return torch.cat([self.sigma_from_t(t), torch.zeros(1)])

    def __call__(self, x: Tensor, sigma: Tensor, **kwargs) -> Tensor:
        sigma = sigma.to(x.dtype).reshape(-1)
        s = _append_dims(sigma, x.ndim)
        c_in = 1 / (s ** 2 + 1).sqrt()
        out = self.model(x * c_in, self.t_from_sigma(sigma))
        if self.prediction_type == "eps":
            return x - s * out
        return x / (s ** 2 + 1) - s * c_in * out


def k_diffusion_configs(include_fast: bool = True) -> list[PeerConfig]:
    """k-diffusion's samplers on its grids: ``karras`` (get_sigmas_karras, rho = 7, its usual
    choice), ``exponential`` (get_sigmas_exponential, uniform in log sigma) and ``discrete``
    (the wrapped model's own ``get_sigmas``: training steps linspace(T-1, 0, n)). A family's
    "default" is ``discrete``, what k-diffusion's examples for wrapped DDPM models use
    (``model_wrap.get_sigmas(steps)``)."""
    samplers = {"sample_euler": True, "sample_euler_ancestral": False, "sample_heun": True,
                "sample_dpm_2": True, "sample_lms": True, "sample_dpmpp_2s_ancestral": False,
                "sample_dpmpp_2m": True, "sample_dpmpp_sde": False, "sample_dpmpp_2m_sde": False,
                "sample_dpmpp_3m_sde": False}
    configs = []
    for method, deterministic in samplers.items():
        family = method.removeprefix("sample_")
        for grid in ("karras", "exponential", "discrete"):
            configs.append(PeerConfig(f"k-diffusion {family}: {grid}", "k-diffusion", family, method,
                                      grid=grid, default=grid == "discrete", deterministic=deterministic))
    if include_fast:
        configs.append(PeerConfig("k-diffusion dpm_fast: own grid", "k-diffusion", "dpm_fast",
                                  "sample_dpm_fast", grid="own", default=True, deterministic=True,
                                  note="ends at sigma_min, the noise level of step 0"))
    return configs


#: the samplers whose default noise comes from a Brownian tree (overlapping sub-steps share it)
BROWNIAN_TREE_SAMPLERS = ("sample_dpmpp_sde", "sample_dpmpp_2m_sde", "sample_dpmpp_3m_sde")


def _k_sigmas(kd, grid: str, denoiser: KDiffusionDDPMDenoiser, n: int) -> Tensor:
    if grid == "karras":
        return kd.get_sigmas_karras(n, denoiser.sigma_min, denoiser.sigma_max)
    if grid == "exponential":
        return kd.get_sigmas_exponential(n, denoiser.sigma_min, denoiser.sigma_max)
    if grid == "discrete":
        return denoiser.discrete_sigmas(n)
    raise ValueError(f"unknown k-diffusion grid {grid!r}")


def run_k_diffusion(cfg: PeerConfig, model, process, x_T: Tensor, num_steps: int,
                    generator: torch.Generator, prediction_type: str = "eps") -> Tensor:
    """A k-diffusion sampler on ``num_steps`` noise levels (then 0) from ``x_T`` (see the module
    docstring); returns the samples at sigma = 0 (``dpm_fast``: at sigma_min)."""
    kd = k_diffusion_sampling()
    denoiser = KDiffusionDDPMDenoiser(model, process.alpha_bar_table, prediction_type)
    fn = getattr(kd, cfg.method)
    params = inspect.signature(fn).parameters
    options = dict(cfg.options)
    if cfg.method == "sample_dpm_fast":
        x = x_T * math.sqrt(1 + denoiser.sigma_max ** 2)
        noise = {"noise_sampler": lambda sigma, sigma_next: torch.randn(x.shape, generator=generator, dtype=x.dtype)}
        return fn(denoiser, x, denoiser.sigma_min, denoiser.sigma_max, num_steps, disable=True, **noise, **options)
    sigmas = _k_sigmas(kd, cfg.grid, denoiser, num_steps)
    x = x_T * math.sqrt(1 + float(sigmas[0]) ** 2)
    if "noise_sampler" in params and not cfg.deterministic:
        if cfg.method in BROWNIAN_TREE_SAMPLERS:
            seed = int(torch.randint(0, 2 ** 62, (), generator=generator))
            positive = sigmas[sigmas > 0]
            options["noise_sampler"] = kd.BrownianTreeNoiseSampler(x, positive.min(), positive.max(), seed=seed)
        else:
            options["noise_sampler"] = lambda sigma, sigma_next: torch.randn(x.shape, generator=generator,
                                                                             dtype=x.dtype)
    return fn(denoiser, x, sigmas, disable=True, **options)


# ---------------------------------------------------------------------------------------------
# One entry point
# ---------------------------------------------------------------------------------------------

def peer_configs(include_k_diffusion: bool = True) -> list[PeerConfig]:
    configs = diffusers_configs()
    if include_k_diffusion:
        configs += k_diffusion_configs()
    return configs


def run_peer(cfg: PeerConfig, model, process, x_T: Tensor, num_steps: int, generator: torch.Generator,
             prediction_type: str = "eps") -> Tensor:
    """Run a peer configuration: ``model(x_t, t)`` is the network on the DDPM state with ``t`` an
    (N,) tensor of (possibly fractional) training steps; returns samples shaped like ``x_T``."""
    with torch.no_grad():
        if cfg.library == "diffusers":
            return run_diffusers(cfg, model, process, x_T, num_steps, generator, prediction_type)
        if cfg.library == "k-diffusion":
            return run_k_diffusion(cfg, model, process, x_T, num_steps, generator, prediction_type)
    raise ValueError(f"unknown peer library {cfg.library!r}")
