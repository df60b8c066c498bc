"""What each sampler option accepts, in one table, for help texts and checks.

The samplers' signatures give each option's name and default (:func:`scorekit.sampling.sampler_options`);
:data:`OPTION_VALUES` gives the values it takes -- a tuple of the allowed values (the constants the
samplers check against), or a sentence for a number -- per option, or per sampler where samplers
sharing an option name take different values. :data:`ADAPTIVE_SAMPLERS` choose their own steps.
The command line builds its ``--OPTION`` flags, their help and their checks from these tables,
and ``tests/test_samplers.py`` checks that every option of every sampler is listed.
"""
from __future__ import annotations

from ..variances import VARIANCES
from .dpm_solver import DPM_VARIANTS
from .multistep import DEIS_MAX_ORDER, EXTRAPOLATION_VARIABLES, IPNDM_COEFFICIENTS, IPNDM_MAX_ORDER
from .ode import ADAPTIVE_METHODS
from .sde import CORRECTORS, PREDICTORS, SNR_NORMS
from .unipc import UNIPC_ORDERS, UNIPC_VARIANTS

_DPM = ("dpmpp_2m", "dpmpp_3m", "dpmpp_2s", "dpmpp_3s", "dpmpp_2m_sde", "dpmpp_3m_sde")

#: ``{option: values}`` or ``{option: {sampler: values}}``; values are a tuple of the allowed
#: values or a sentence describing the allowed numbers
OPTION_VALUES = {
    "atol": "a number > 0 (absolute tolerance of the solver)",
    "coefficients": IPNDM_COEFFICIENTS,
    "corrector": CORRECTORS,
    "corrector_steps": "a whole number >= 0 (Langevin steps per model time)",
    "eta": "a number >= 0 (0: deterministic)",
    "extrapolate_in": EXTRAPOLATION_VARIABLES,
    "final_corrector": (0, 1),
    "method": ADAPTIVE_METHODS,
    "order": {"deis": tuple(range(1, DEIS_MAX_ORDER + 1)), "ipndm": tuple(range(1, IPNDM_MAX_ORDER + 1)),
              "unipc": UNIPC_ORDERS},
    "predictor": PREDICTORS,
    "rtol": "a number > 0 (relative tolerance of the solver)",
    "s_churn": "a number >= 0 (0: no churn)",
    "s_noise": "a number >= 0",
    "s_tmax": "a noise level sigma/alpha >= s_tmin",
    "s_tmin": "a noise level sigma/alpha >= 0",
    "snr": "a number > 0 (the corrector's signal-to-noise ratio)",
    "snr_norm": SNR_NORMS,
    "variance": VARIANCES,
    "variant": {**{name: DPM_VARIANTS for name in _DPM}, "unipc": UNIPC_VARIANTS},
}

#: samplers that choose their own steps: only the grid's first and last times matter, so a step
#: count or spacing does not set their cost (their options set the accuracy)
ADAPTIVE_SAMPLERS = ("ode_adaptive",)


def option_values(option: str, sampler: str):
    """The values ``option`` takes for ``sampler``: a tuple of the allowed values, or a sentence."""
    values = OPTION_VALUES[option]
    return values[sampler] if isinstance(values, dict) else values


def describe_values(values) -> str:
    """``"one of a, b, c"`` for a tuple, the sentence itself otherwise."""
    if isinstance(values, tuple):
        return "one of " + ", ".join(map(str, values))
    return values


__all__ = ["ADAPTIVE_SAMPLERS", "OPTION_VALUES", "describe_values", "option_values"]
