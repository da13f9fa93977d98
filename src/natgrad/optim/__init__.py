"""optax-compatible natural-gradient transformations."""

from natgrad.optim.hessian_free import HessianFreeState, hessian_free
from natgrad.optim.natural_vi import NaturalVIState, natural_vi

__all__ = ["HessianFreeState", "NaturalVIState", "hessian_free", "natural_vi"]
