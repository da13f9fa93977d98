"""optax-compatible natural-gradient transformations."""

from natgrad.optim.natural_vi import NaturalVIState, natural_vi

__all__ = ["NaturalVIState", "natural_vi"]
