"""Image tasks on top of a diffusion model: measurement operators, training-free restoration and
editing (SDEdit, ILVR, RePaint, inverse problems), and the degradations of trained image-to-image
models."""
from .operators import (OPERATORS, Compose, Downsample, Greyscale, Identity, LinearOperator, Mask,
                        RandomProjection, measure)

__all__ = ["OPERATORS", "Compose", "Downsample", "Greyscale", "Identity", "LinearOperator", "Mask",
           "RandomProjection", "measure"]
from .editing import EDIT_METHODS, check_edit_options, edit, edit_options
from .ilvr import ilvr
from .interpolation import interpolate, inversion_edit, slerp
from .repaint import repaint
from .sdedit import sdedit

__all__ += ["EDIT_METHODS", "check_edit_options", "edit", "edit_options", "ilvr", "interpolate",
            "inversion_edit", "repaint", "sdedit", "slerp"]
