"""Gauss–Newton-type curvature JᵀMJ: GGN, Fisher (exact and Monte Carlo), empirical Fisher.

For a model f(θ) = apply(θ, x) on a batch of B examples and a loss L = c_B Σᵢ ℓᵢ(fᵢ, yᵢ) from
:mod:`natgrad.losses`, with Jᵢ = ∂fᵢ/∂θ, every operator here is

    C = c_B Σᵢ Jᵢᵀ Mᵢ Jᵢ,   C·v = Jᵀ(M(J v)),

one JVP and one VJP of the *same* linearization (``jax.linearize`` once, its transpose for the
VJP), so a product costs about one gradient and nothing is recomputed across products. Mᵢ is

* GGN:               Mᵢ = Hᵢ = ∇²_{fᵢ}ℓᵢ (the loss's output Hessian);
* Fisher:            Mᵢ = E_{y∼p(·|fᵢ)}[rᵢ(y) rᵢ(y)ᵀ], rᵢ(y) = ∇_{fᵢ}(−log p(y|fᵢ)); equal to Hᵢ
                     for the canonical-link losses in :mod:`natgrad.losses`, so the exact Fisher
                     *is* the GGN;
* Monte Carlo Fisher: Mᵢ = (1/S) Σ_s rᵢ(y_s) rᵢ(y_s)ᵀ, y_s ∼ p(·|fᵢ) sampled from the model;
* empirical Fisher:  Mᵢ = rᵢ(yᵢ) rᵢ(yᵢ)ᵀ at the data's targets, i.e. C = c_B Σᵢ gᵢgᵢᵀ with the
                     per-example gradients gᵢ = Jᵢᵀrᵢ (with "mean": (1/B) Σᵢ gᵢgᵢᵀ) — not the outer
                     product of the mean gradient.

Shapes: ``params`` any pytree of floating arrays; ``batch = (inputs, targets)`` where ``inputs``
is an array or pytree with leading batch axis B and ``apply(params, inputs)`` returns outputs
of shape (B, ...) as the loss expects.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from natgrad.curvature.operator import CurvatureOperator, PyTree
from natgrad.expfam.base import is_traced
from natgrad.losses import NegativeLogLikelihood

Apply = Callable[[PyTree, Any], jax.Array]


def check_model_inputs(
    apply: Apply, loss: NegativeLogLikelihood, params: PyTree, batch: Any
) -> tuple[Any, jax.Array]:
    """Validate ``(apply, loss, params, batch)`` and return ``(inputs, targets)``.

    Raises:
      TypeError: ``apply`` not callable, ``loss`` not a :class:`NegativeLogLikelihood`, a
        non-floating parameter leaf, or a batch that is not an ``(inputs, targets)`` pair.
      ValueError: no parameters, inputs whose leaves disagree on the batch size, or (outside
        jit, where values can be checked) a NaN or infinity in the inputs or targets.
    """
    if not callable(apply):
        raise TypeError(f"apply must be a function apply(params, inputs), got {type(apply)}")
    if not isinstance(loss, NegativeLogLikelihood):
        raise TypeError(
            "loss must be a natgrad.losses.NegativeLogLikelihood (SoftmaxCrossEntropy, "
            f"SigmoidCrossEntropy, GaussianNLL), got {type(loss).__name__}"
        )
    leaves = jax.tree.leaves(params)
    if not leaves:
        raise ValueError("params has no array leaves")
    for leaf in leaves:
        if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
            raise TypeError(
                f"every parameter leaf must be a floating array, got dtype {jnp.result_type(leaf)}"
                " (with equinox, split the model with eqx.partition(model, eqx.is_inexact_array))"
            )
    if not (isinstance(batch, tuple | list) and len(batch) == 2):
        raise TypeError("batch must be a pair (inputs, targets)")
    inputs, targets = batch
    sizes = {jnp.shape(x)[0] if jnp.ndim(x) else None for x in jax.tree.leaves(inputs)}
    if None in sizes or len(sizes) != 1:
        raise ValueError(
            f"every inputs leaf needs the same leading batch axis; got leading sizes {sizes}"
        )
    if not is_traced((inputs, targets)):
        for name, tree in (("inputs", inputs), ("targets", targets)):
            for x in jax.tree.leaves(tree):
                # numpy, not jnp: under jit even constant jnp arithmetic is staged out.
                if jnp.issubdtype(jnp.result_type(x), jnp.inexact) and not np.all(
                    np.isfinite(np.asarray(x))
                ):
                    raise ValueError(f"the batch {name} contain NaN or infinite values")
    return inputs, jnp.asarray(targets)


def linearize_model(apply: Apply, params: PyTree, inputs: Any):
    """One linearization of f(θ) = apply(θ, inputs) at ``params``.

    Returns:
      ``(outputs, jvp, vjp)``: f(params); v ↦ J v; u ↦ Jᵀ u (the transpose of the same
      linearization, so no second forward pass).
    """
    outputs, jvp = jax.linearize(lambda p: apply(p, inputs), params)
    transpose = jax.linear_transpose(jvp, params)
    return outputs, jvp, lambda u: transpose(u)[0]


def _per_example_dot(a: jax.Array, b: jax.Array) -> jax.Array:
    """⟨aᵢ, bᵢ⟩ over the event axes, broadcast back: (B, ...) -> (B, 1, ..., 1)."""
    return jnp.sum(a * b, axis=tuple(range(1, a.ndim)), keepdims=True)


def _factor_diagonal(apply: Apply, params: PyTree, inputs: Any, columns: jax.Array) -> PyTree:
    """Σᵢ Σₖ (Jᵢᵀ b_{ik})² for factor columns ``columns`` of shape (K, B, ...).

    One example at a time (``lax.scan``), K VJPs of that example's function each, so memory is
    K gradients, not B·K.
    """
    per_example_columns = jnp.moveaxis(columns, 0, 1)  # (B, K, ...)

    def body(total, example):
        x, cols = example
        x = jax.tree.map(lambda leaf: leaf[None], x)
        _, vjp = jax.vjp(lambda p: apply(p, x)[0], params)
        grads = jax.vmap(lambda c: vjp(c)[0])(cols)
        return jax.tree.map(lambda t, g: t + jnp.sum(g * g, axis=0), total, grads), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, (inputs, per_example_columns))
    return total


def _factor_sketch_diagonal(
    apply: Apply, params: PyTree, inputs: Any, columns: jax.Array, key: jax.Array, num_samples: int
) -> PyTree:
    """(1/S) Σ_s Σᵢ (Jᵢᵀ Σₖ z_{sik} b_{ik})², z Rademacher: unbiased for Σᵢ Σₖ (Jᵢᵀ b_{ik})²."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")
    num_columns = columns.shape[0]
    z = jax.random.rademacher(key, (num_samples, num_columns, columns.shape[1]), columns.dtype)
    z = z.reshape(z.shape + (1,) * (columns.ndim - 2))
    sketches = jnp.einsum("sk...,k...->s...", z, columns) / jnp.sqrt(num_samples)
    return _factor_diagonal(apply, params, inputs, sketches)


OutputCurvature = Callable[
    [jax.Array, jax.Array], tuple[Callable[[jax.Array], jax.Array], Callable[[], jax.Array]]
]


def _gauss_newton(
    name: str,
    apply: Apply,
    loss: NegativeLogLikelihood,
    params: PyTree,
    batch: Any,
    output_curvature: OutputCurvature,
) -> CurvatureOperator:
    """Assemble C·v = Jᵀ(c_B · M(J v)).

    ``output_curvature(outputs, targets)`` returns ``(u ↦ M u, factor)`` where M acts per
    example on output-shaped tangents and ``factor()`` gives columns (K, B, ...) with
    Mᵢ = Σₖ b_{ik}b_{ik}ᵀ; anything M needs (probabilities, sampled gradients) is computed once
    here, not per product.
    """
    inputs, targets = check_model_inputs(apply, loss, params, batch)
    outputs, jvp, vjp = linearize_model(apply, params, inputs)
    scale = jnp.asarray(loss.batch_factor(outputs), outputs.dtype)
    value = loss(outputs, targets)
    grad = vjp(scale * loss.output_gradient(outputs, targets))
    output_mv, factor = output_curvature(outputs, targets)

    def mv(v):
        return vjp(scale * output_mv(jvp(v)))

    def scaled_factor():
        return jnp.sqrt(scale) * factor()

    return CurvatureOperator(
        name=name,
        params=params,
        value=value,
        grad=grad,
        positive_semidefinite=True,
        _mv=mv,
        _diagonal=lambda: _factor_diagonal(apply, params, inputs, scaled_factor()),
        _diagonal_estimate=lambda key, num_samples: _factor_sketch_diagonal(
            apply, params, inputs, scaled_factor(), key, num_samples
        ),
    )


def _output_hessian(loss: NegativeLogLikelihood) -> OutputCurvature:
    def curvature(outputs, targets):
        del targets
        return (lambda u: loss.hessian_vp(outputs, u)), (lambda: loss.fisher_factor(outputs))

    return curvature


def ggn(apply: Apply, loss: NegativeLogLikelihood, params: PyTree, batch: Any) -> CurvatureOperator:
    """Generalized Gauss–Newton G = c_B Σᵢ Jᵢᵀ Hᵢ Jᵢ, Hᵢ = ∇²_{fᵢ}ℓᵢ.

    Args:
      apply: ``apply(params, inputs) -> outputs`` of shape (B, ...).
      loss: a :class:`natgrad.losses.NegativeLogLikelihood`.
      params: pytree of floating arrays.
      batch: ``(inputs, targets)``.
    Returns:
      A :class:`CurvatureOperator` (positive semi-definite).

    Example::

        op = ggn(apply, SoftmaxCrossEntropy(), params, (x, y))
        Gv = op.mv(v)
    """
    return _gauss_newton("ggn", apply, loss, params, batch, _output_hessian(loss))


def fisher(
    apply: Apply, loss: NegativeLogLikelihood, params: PyTree, batch: Any
) -> CurvatureOperator:
    """The exact Fisher F = c_B Σᵢ Jᵢᵀ E_{y∼p(·|fᵢ)}[rᵢrᵢᵀ] Jᵢ.

    For the canonical-link losses of :mod:`natgrad.losses` the output Fisher equals the output
    Hessian, so F equals the GGN (:func:`ggn`); this operator is that product under the name
    "fisher". Arguments as :func:`ggn`.
    """
    return _gauss_newton("fisher", apply, loss, params, batch, _output_hessian(loss))


def fisher_mc(
    apply: Apply,
    loss: NegativeLogLikelihood,
    params: PyTree,
    batch: Any,
    *,
    key: jax.Array,
    num_samples: int = 1,
) -> CurvatureOperator:
    """Monte Carlo Fisher F̂ = c_B Σᵢ Jᵢᵀ [(1/S) Σ_s rᵢ(y_{is}) rᵢ(y_{is})ᵀ] Jᵢ, y_{is} ∼ p(·|fᵢ).

    Targets are sampled from the model (not taken from the batch), so E[F̂] = F and F̂ → F as
    S grows; the batch's targets only enter ``value`` and ``grad``.

    Args:
      apply, loss, params, batch: as :func:`ggn`.
      key: PRNG key for the sampled targets.
      num_samples: S, a static positive int.
    """
    if not (isinstance(num_samples, int) and num_samples >= 1):
        raise ValueError(f"num_samples must be a positive integer, got {num_samples!r}")

    def curvature(outputs, targets):
        del targets
        samples = loss.sample(outputs, key=key, num_samples=num_samples)
        r = jax.vmap(lambda y: loss.output_gradient(outputs, y))(samples)  # (S, B, ...)

        def output_mv(u):
            return jnp.mean(r * jax.vmap(lambda rs: _per_example_dot(rs, u))(r), axis=0)

        return output_mv, lambda: r / jnp.sqrt(jnp.asarray(num_samples, r.dtype))

    return _gauss_newton("fisher_mc", apply, loss, params, batch, curvature)


def empirical_fisher(
    apply: Apply, loss: NegativeLogLikelihood, params: PyTree, batch: Any
) -> CurvatureOperator:
    """Empirical Fisher E = c_B Σᵢ gᵢgᵢᵀ with per-example gradients gᵢ = ∇_θ ℓᵢ = Jᵢᵀrᵢ.

    With ``reduction="mean"`` this is (1/B) Σᵢ gᵢgᵢᵀ. The product E·v = c_B Σᵢ gᵢ(gᵢᵀv) is
    computed as Jᵀ(r ⊙ ⟨r, Jv⟩ᵢ) without materializing per-example gradients. Arguments as
    :func:`ggn`.
    """

    def curvature(outputs, targets):
        r = loss.output_gradient(outputs, targets)
        return (lambda u: r * _per_example_dot(r, u)), (lambda: r[None])

    return _gauss_newton("empirical_fisher", apply, loss, params, batch, curvature)
