"""Kronecker factors of one layer's Fisher block, their damping and the preconditioned gradient.

For a layer s_r = Wᵀ a_r (+ b) over rows r (examples, or examples × positions) of a batch of B
examples with loss L = c_B Σᵢ ℓᵢ (c_B = 1/B for a mean), write ã_r = [a_r; 1] when the layer has
a bias and g_r = ∂ℓ/∂s_r for targets drawn from the model (or the data, or the columns of the
output Fisher's factor). K-FAC (Martens & Grosse 2015; Grosse & Martens 2016 for convolutions)
approximates the layer's Fisher block by

    F ≈ A ⊗ G,   A = (1/R) Σ_r ã_r ã_rᵀ,   G = c_B Σ_r g_r g_rᵀ   (R rows),

which is exact for a dense layer of a deep linear network on one example. With the gradient as
the (d_in [+1]) × d_out matrix ∇ = [∇_W; ∇_bᵀ], (A ⊗ G) vec(∇) = vec(A ∇ G), so the damped
natural gradient with factored Tikhonov damping is

    (A + π√λ I)⁻¹ ∇ (G + (√λ/π) I)⁻¹,   π² = (tr A / dim A) / (tr G / dim G),

π balancing the damping between the factors (Martens & Grosse 2015, §6.3).
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from natgrad.kronecker.graph import Layer


def input_factor(layer: Layer, layer_input: jax.Array) -> jax.Array:
    """A = (1/R) Σ_r ã_r ã_rᵀ: (d_in [+1], d_in [+1]), the bias's homogeneous coordinate last."""
    rows = layer.input_rows(layer_input)
    if layer.has_bias:
        rows = jnp.concatenate([rows, jnp.ones((rows.shape[0], 1), rows.dtype)], axis=1)
    return rows.T @ rows / rows.shape[0]


def output_factor(layer: Layer, output_gradients: jax.Array, scale: float) -> jax.Array:
    """G = scale · Σ_k Σ_r g_{kr} g_{kr}ᵀ: (d_out, d_out).

    Args:
      layer: the layer.
      output_gradients: (K, *s.shape): K sets of gradients with respect to the layer's output
        s (K samples, or K columns of the output Fisher's factor).
      scale: c_B/K for K samples averaged, c_B for factor columns summed.
    """
    rows = jax.vmap(layer.output_rows)(output_gradients)
    rows = rows.reshape(-1, layer.out_features)
    return scale * (rows.T @ rows)


def gradient_matrix(layer: Layer, weight_grad: jax.Array, bias_grad: jax.Array | None) -> jax.Array:
    """∇ = [∇_W; ∇_bᵀ] as a (d_in [+1], d_out) matrix."""
    matrix = layer.weight_matrix(weight_grad)
    if layer.has_bias:
        matrix = jnp.concatenate([matrix, bias_grad.reshape(1, layer.out_features)], axis=0)
    return matrix


def split_gradient_matrix(
    layer: Layer, matrix: jax.Array, bias_shape: Sequence[int] | None
) -> tuple[jax.Array, jax.Array | None]:
    """The inverse of :func:`gradient_matrix`: (W-shaped, b-shaped or None)."""
    if layer.has_bias:
        return (
            layer.matrix_to_weight(matrix[: layer.in_features]),
            matrix[layer.in_features].reshape(bias_shape),
        )
    return layer.matrix_to_weight(matrix), None


def pi_correction(a: jax.Array, g: jax.Array) -> jax.Array:
    """π = √((tr A / dim A) / (tr G / dim G)), 1 when either trace vanishes."""
    mean_a = jnp.trace(a) / a.shape[0]
    mean_g = jnp.trace(g) / g.shape[0]
    ok = (mean_a > 0) & (mean_g > 0)
    return jnp.where(ok, jnp.sqrt(jnp.where(ok, mean_a / jnp.where(ok, mean_g, 1), 1)), 1)


def _spd_inverse(m: jax.Array) -> jax.Array:
    """M⁻¹ for symmetric positive definite M, by Cholesky (NaN if M is not)."""
    factor = jax.scipy.linalg.cho_factor(m, lower=True)
    inverse = jax.scipy.linalg.cho_solve(factor, jnp.eye(m.shape[0], dtype=m.dtype))
    return (inverse + inverse.T) / 2


def damped_inverses(
    a: jax.Array, g: jax.Array, damping: jax.Array
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(A + π√λ I)⁻¹, (G + (√λ/π) I)⁻¹ and whether both are finite.

    Args:
      a, g: the factors, (d_a, d_a) and (d_g, d_g), symmetric positive semi-definite.
      damping: λ > 0.
    """
    pi = pi_correction(a, g)
    root = jnp.sqrt(damping).astype(a.dtype)
    a_inv = _spd_inverse(a + (pi * root) * jnp.eye(a.shape[0], dtype=a.dtype))
    g_inv = _spd_inverse(g + (root / pi) * jnp.eye(g.shape[0], dtype=g.dtype))
    finite = jnp.all(jnp.isfinite(a_inv)) & jnp.all(jnp.isfinite(g_inv))
    return a_inv, g_inv, finite


def precondition(a_inverse: jax.Array, g_inverse: jax.Array, gradient: jax.Array) -> jax.Array:
    """(A_λ ⊗ G_λ)⁻¹ vec(∇) = vec(A_λ⁻¹ ∇ G_λ⁻¹), ∇ of shape (d_a, d_g)."""
    return a_inverse @ gradient @ g_inverse
