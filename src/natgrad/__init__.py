"""natgrad: natural-gradient optimization for JAX.

Fisher-preconditioned steps without forming or inverting a Fisher matrix.
"""

from natgrad import curvature, gp, linalg, losses, optim, parallel, solvers
from natgrad.expfam import diagonal, gaussian, generic
from natgrad.expfam.base import (
    Parameterization,
    available_parameterizations,
    register,
    resolve,
)
from natgrad.natural_gradient import natural_gradient
from natgrad.optim import (
    HessianFreeState,
    KfacState,
    NaturalVIState,
    hessian_free,
    kfac,
    natural_vi,
)
from natgrad.schedules import increasing_rate, inverse_time_decay, log_linear_warmup

__version__ = "0.1.0"

__all__ = [
    "HessianFreeState",
    "KfacState",
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
    "inverse_time_decay",
    "kfac",
    "linalg",
    "log_linear_warmup",
    "losses",
    "natural_gradient",
    "natural_vi",
    "optim",
    "parallel",
    "register",
    "resolve",
    "solvers",
]
