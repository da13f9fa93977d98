"""Kronecker-factored curvature: layers found in a model's jaxpr and their Kronecker factors.

:func:`find_layers` finds the dense and convolution layers of ``apply(params, inputs)``;
:mod:`natgrad.kronecker.factors` computes A, G, the π-corrected damped inverses and the
preconditioned gradient; the optimizer is :func:`natgrad.optim.kfac`.
"""

from natgrad.kronecker.graph import Layer, ModelGraph, find_layers

__all__ = ["Layer", "ModelGraph", "find_layers"]
