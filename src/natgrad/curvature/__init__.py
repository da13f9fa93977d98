"""Curvature of a network's loss as linear operators on parameter pytrees.

``ggn``, ``fisher``, ``fisher_mc``, ``empirical_fisher`` and ``hessian`` each linearize the model
once at the given parameters and return a :class:`CurvatureOperator` with ``mv`` (C·v),
``as_matrix`` (dense, small models), ``diagonal`` and ``diagonal_estimate``, plus the loss
``value`` and ``grad`` from the same linearization. ``make`` picks one by name.
"""

from __future__ import annotations

from typing import Any

import jax

from natgrad.curvature.gauss_newton import (
    check_model_inputs,
    empirical_fisher,
    fisher,
    fisher_mc,
    ggn,
    linearize_model,
)
from natgrad.curvature.hessian import hessian
from natgrad.curvature.operator import (
    CurvatureOperator,
    hutchinson_diagonal,
    rademacher_like,
    tree_all_finite,
    tree_vdot,
)
from natgrad.losses import NegativeLogLikelihood

#: Curvature names accepted by :func:`make` (and the optimizers).
CURVATURES = ("ggn", "fisher", "fisher_mc", "empirical_fisher", "hessian")


def make(
    name: str,
    apply,
    loss: NegativeLogLikelihood,
    params,
    batch: Any,
    *,
    key: jax.Array | None = None,
    num_samples: int = 1,
) -> CurvatureOperator:
    """The curvature operator called ``name`` (one of :data:`CURVATURES`).

    ``key`` (and ``num_samples``) are needed by "fisher_mc" only.
    """
    if name not in CURVATURES:
        raise ValueError(f"unknown curvature {name!r}: expected one of {CURVATURES}")
    if name == "fisher_mc":
        if key is None:
            raise ValueError("curvature 'fisher_mc' samples targets: pass key=")
        return fisher_mc(apply, loss, params, batch, key=key, num_samples=num_samples)
    return {"ggn": ggn, "fisher": fisher, "empirical_fisher": empirical_fisher, "hessian": hessian}[
        name
    ](apply, loss, params, batch)


__all__ = [
    "CURVATURES",
    "CurvatureOperator",
    "check_model_inputs",
    "empirical_fisher",
    "fisher",
    "fisher_mc",
    "ggn",
    "hessian",
    "hutchinson_diagonal",
    "linearize_model",
    "make",
    "rademacher_like",
    "tree_all_finite",
    "tree_vdot",
]
