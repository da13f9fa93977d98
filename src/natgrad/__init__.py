"""natgrad: natural-gradient optimization for JAX.

Fisher-preconditioned steps without forming or inverting a Fisher matrix.
"""

from natgrad import curvature, gp, linalg, losses, optim, solvers
from natgrad.expfam import diagonal, gaussian, generic
from natgrad.expfam.base import (
    Parameterization,
    available_parameterizations,
    register,
    resolve,
)
from natgrad.natural_gradient import natural_gradient
from natgrad.optim import HessianFreeState, NaturalVIState, hessian_free, natural_vi
from natgrad.schedules import increasing_rate, log_linear_warmup

__version__ = "0.1.0"

__all__ = [
    "HessianFreeState",
    "NaturalVIState",
    "Parameterization",
    "__version__",
    "available_parameterizations",
    "curvature",
    "diagonal",
    "gaussian",
    "generic",
    "gp",
    "hessian_free",
    "increasing_rate",
    "linalg",
    "log_linear_warmup",
    "losses",
    "natural_gradient",
    "natural_vi",
    "optim",
    "register",
    "resolve",
    "solvers",
]
