"""Natural gradients of exponential-family parameters by one VJP and one JVP.

For a distribution in exponential-family form with natural parameters θ and expectation
parameters η = ∇A(θ), the Fisher in natural coordinates is F_θ = ∂η/∂θ. For any
parameterization ξ (Salimbeni, Eleftheriadis & Hensman, AISTATS 2018, eq. 8)

    F_ξ⁻¹ ∇_ξ L = (∂ξ/∂θ) (∂L/∂η)ᵀ,

so the natural gradient needs no Fisher matrix: ∂L/∂η is the VJP of ξ(η) with the cotangent
∇_ξL, and the push-forward through ξ(θ) is a JVP. Its cost is a small multiple of one evaluation
of the conversions (a few Cholesky factorizations and triangular solves of size D for a
Gaussian), independent of how the gradient ∇_ξL was obtained.
"""

from __future__ import annotations

import functools
from typing import Literal

import jax
import jax.numpy as jnp

from natgrad.expfam.base import Parameterization, PyTree, is_traced, resolve


def _check_matching(params: PyTree, grads: PyTree) -> None:
    p_leaves, p_def = jax.tree.flatten(params)
    g_leaves, g_def = jax.tree.flatten(grads)
    if p_def != g_def:
        raise ValueError(
            "`grads` must have the same structure as `params`: got params "
            f"{p_def} and grads {g_def}. Pass jax.grad(loss)(params) for the same params."
        )
    for i, (p, g) in enumerate(zip(p_leaves, g_leaves, strict=True)):
        if jnp.shape(p) != jnp.shape(g):
            raise ValueError(
                f"`grads` leaf {i} has shape {jnp.shape(g)} but the matching `params` leaf has "
                f"shape {jnp.shape(p)}; the gradient of a parameter has that parameter's shape"
            )
        if jnp.result_type(p) != jnp.result_type(g):
            raise ValueError(
                f"`grads` leaf {i} has dtype {jnp.result_type(g)} but the matching `params` leaf "
                f"has dtype {jnp.result_type(p)}; the natural gradient keeps the parameters' "
                "dtype, so pass gradients of the same dtype (as jax.grad at these params returns)"
            )
    if not is_traced(grads):
        for i, g in enumerate(g_leaves):
            if not bool(jnp.all(jnp.isfinite(g))):
                raise ValueError(
                    f"`grads` leaf {i} contains NaN or infinite values; the loss or its gradient "
                    "is not finite at these parameters"
                )


def _jvp_by_reverse_twice(fun, primal, tangent):
    """J·v from two VJPs: u ↦ Jᵀu is linear, and its VJP with cotangent v is J·v."""
    out, vjp_fun = jax.vjp(fun, primal)
    zeros = jax.tree.map(jnp.zeros_like, out)
    _, vjp_of_vjp = jax.vjp(lambda u: vjp_fun(u)[0], zeros)
    return vjp_of_vjp(tangent)[0]


def natural_gradient(
    *,
    params: PyTree,
    grads: PyTree,
    parameterization: str | Parameterization,
    mode: Literal["forward", "reverse"] = "forward",
    derivatives: Literal["closed_form", "autodiff"] = "closed_form",
    check: bool = True,
) -> PyTree:
    """Natural gradient F_ξ⁻¹∇_ξL of a loss L in the parameterization ξ.

    Computes ∂L/∂η by one VJP through ξ(η) at η(ξ), then pushes it forward by one JVP through
    ξ(θ) at θ(ξ): F_ξ⁻¹∇_ξL = (∂ξ/∂θ)(∂L/∂η)ᵀ. No Fisher matrix is formed or inverted.

    Args:
      params: the distribution's parameters ξ in ``parameterization`` (for a Gaussian a pair
        such as ``(mean, scale_tril)`` of shapes ``(..., D)`` and ``(..., D, D)``).
      grads: ∇_ξL with the structure of ``params``, as ``jax.grad`` returns it. For symmetric
        matrices any G with dL = ⟨G, dS⟩ on symmetric dS is accepted (it is symmetrized); for
        Cholesky factors only the lower triangle is used.
      parameterization: a built-in name (see :func:`natgrad.available_parameterizations`) or a
        :class:`natgrad.Parameterization`.
      mode: ``"forward"`` (a JVP) or ``"reverse"`` (the JVP emulated by two VJPs; equal to
        rounding, for functions that only have reverse-mode rules).
      derivatives: ``"closed_form"`` uses the parameterization's derivatives of ξ(η) and ξ(θ)
        written at the known point ξ (:meth:`Parameterization.from_expectation_vjp`,
        :meth:`Parameterization.from_natural_jvp`, composed by
        :meth:`Parameterization.natural_gradient_at`, where factors that cancel between the
        two are cancelled; the built-in Gaussians recompute no Cholesky factorization of the
        covariance); ``"autodiff"`` differentiates the
        conversion functions with ``jax.vjp``/``jax.jvp``. Both give the same result to
        rounding; parameterizations without closed forms use autodiff either way.
      check: run the static shape checks and, outside ``jit``, the value checks.

    Returns:
      F_ξ⁻¹∇_ξL with the structure of ``params``.

    Example:
      >>> import jax, jax.numpy as jnp, natgrad
      >>> params = (jnp.zeros(2), jnp.eye(2))  # (m, L)
      >>> loss = lambda p: jnp.sum((p[0] - 1.0) ** 2) + jnp.sum(p[1] ** 2)
      >>> ng = natgrad.natural_gradient(
      ...     params=params, grads=jax.grad(loss)(params), parameterization="mean_cholesky")
    """
    p = resolve(parameterization)
    if check:
        p.check(params, argname="params")
        _check_matching(params, grads)
    if mode not in ("forward", "reverse"):
        raise ValueError(f"`mode` must be 'forward' or 'reverse', got {mode!r}")
    if derivatives not in ("closed_form", "autodiff"):
        raise ValueError(f"`derivatives` must be 'closed_form' or 'autodiff', got {derivatives!r}")
    treedef = jax.tree.structure(params)
    if derivatives == "closed_form":
        pull_back = functools.partial(p.from_expectation_vjp, params)
        push_forward = functools.partial(p.from_natural_jvp, params)
    else:  # the base-class methods differentiate the conversions with jax.vjp / jax.jvp
        pull_back = functools.partial(Parameterization.from_expectation_vjp, p, params)
        push_forward = functools.partial(Parameterization.from_natural_jvp, p, params)

    grads = p.project_gradient(params, grads)
    if mode == "forward" and derivatives == "closed_form":
        nat_grad = p.natural_gradient_at(params, grads)
        return jax.tree.unflatten(treedef, jax.tree.leaves(nat_grad))
    natural_tangent = p.project_natural_tangent(pull_back(grads))
    if mode == "forward":
        nat_grad = push_forward(natural_tangent)
    elif derivatives == "autodiff":
        nat_grad = _jvp_by_reverse_twice(p.from_natural, p.to_natural(params), natural_tangent)
    else:  # the closed-form push-forward is linear, so J·v = (Jᵀ)ᵀ·v by two VJPs of it
        zero = jax.tree.map(jnp.zeros_like, natural_tangent)
        nat_grad = _jvp_by_reverse_twice(push_forward, zero, natural_tangent)
    return jax.tree.unflatten(treedef, jax.tree.leaves(nat_grad))
