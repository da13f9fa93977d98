"""The Hessian of the loss in the parameters, by forward-over-reverse differentiation."""

from __future__ import annotations

from typing import Any

import jax

from natgrad.curvature.gauss_newton import Apply, check_model_inputs
from natgrad.curvature.operator import (
    CurvatureOperator,
    PyTree,
    basis_diagonal,
    hutchinson_diagonal,
)
from natgrad.losses import NegativeLogLikelihood


def hessian(
    apply: Apply, loss: NegativeLogLikelihood, params: PyTree, batch: Any
) -> CurvatureOperator:
    """H = ∇²_θ L(θ), L(θ) = loss(apply(θ, inputs), targets), as products H·v.

    H·v is the JVP of θ ↦ ∇L(θ) (forward over reverse), linearized once at ``params`` with
    ``jax.linearize`` and reused by every product. H = G + Σᵢ c_B Σ_o (∂ℓᵢ/∂f_{io}) ∇²_θ f_{io}:
    the GGN plus the model's second-order term, so H is symmetric but may be indefinite.

    Args, Returns: as :func:`natgrad.curvature.ggn`. ``diagonal()`` takes P products (small
    models); ``diagonal_estimate`` is Hutchinson's.
    """
    inputs, targets = check_model_inputs(apply, loss, params, batch)

    def objective(p):
        return loss(apply(p, inputs), targets)

    (value, grad), linear = jax.linearize(jax.value_and_grad(objective), params)

    def mv(v):
        return linear(v)[1]

    return CurvatureOperator(
        name="hessian",
        params=params,
        value=value,
        grad=grad,
        positive_semidefinite=False,
        _mv=mv,
        _diagonal=lambda: basis_diagonal(mv, params),
        _diagonal_estimate=lambda key, num_samples: hutchinson_diagonal(
            mv, params, key=key, num_samples=num_samples
        ),
    )
