"""optax-compatible natural-gradient transformations."""

from natgrad.optim.hessian_free import HessianFreeState, hessian_free
from natgrad.optim.kfac import KfacState, kfac
from natgrad.optim.natural_vi import NaturalVIState, natural_vi

__all__ = ["HessianFreeState", "KfacState", "NaturalVIState", "hessian_free", "kfac", "natural_vi"]
