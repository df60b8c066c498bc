"""Image tasks on top of a diffusion model: measurement operators, training-free restoration and
editing (SDEdit, ILVR, RePaint, inverse problems), and the degradations of trained image-to-image
models."""
from .degradations import DEGRADATIONS, Degradation, Degraded, build_degradation, degrade_images
from .operators import (OPERATORS, Compose, Downsample, Greyscale, Identity, LinearOperator, Mask,
                        RandomProjection, measure)

__all__ = ["DEGRADATIONS", "Degradation", "Degraded", "build_degradation", "degrade_images",
           "OPERATORS", "Compose", "Downsample", "Greyscale", "Identity", "LinearOperator", "Mask",
           "RandomProjection", "measure"]
from .inverse import (DPS, INVERSE_METHODS, MomentMatching, PiGDM, Projection, inverse_solver,  # noqa: E402
                      solve_inverse)

__all__ += ["DPS", "INVERSE_METHODS", "MomentMatching", "PiGDM", "Projection", "inverse_solver", "solve_inverse"]

from .editing import EDIT_METHODS, check_edit_options, edit, edit_options
from .ilvr import ilvr
from .interpolation import interpolate, inversion_edit, slerp
from .repaint import repaint
from .sdedit import sdedit

__all__ += ["EDIT_METHODS", "check_edit_options", "edit", "edit_options", "ilvr", "interpolate",
            "inversion_edit", "repaint", "sdedit", "slerp"]
