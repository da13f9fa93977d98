"""natgrad: natural-gradient optimization for JAX.

Fisher-preconditioned steps without forming or inverting a Fisher matrix.
"""

from natgrad import linalg, optim
from natgrad.expfam import diagonal, gaussian, generic
from natgrad.expfam.base import (
    Parameterization,
    available_parameterizations,
    register,
    resolve,
)
from natgrad.natural_gradient import natural_gradient
from natgrad.optim import NaturalVIState, natural_vi
from natgrad.schedules import increasing_rate, log_linear_warmup

__version__ = "0.1.0"

__all__ = [
    "NaturalVIState",
    "Parameterization",
    "__version__",
    "available_parameterizations",
    "diagonal",
    "gaussian",
    "generic",
    "increasing_rate",
    "linalg",
    "log_linear_warmup",
    "natural_gradient",
    "natural_vi",
    "optim",
    "register",
    "resolve",
]
