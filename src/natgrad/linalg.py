"""Small batched linear-algebra helpers: Cholesky factors, triangular solves, symmetrization.

Every function accepts arbitrary leading batch axes ``(..., D, D)`` and never forms an explicit
inverse with ``jnp.linalg.inv``: inverses of SPD matrices go through a Cholesky factor and
triangular solves.

Batched Cholesky factorizations and triangular solves with enough work loop over the batch
(:func:`jax.lax.map`) and call LAPACK once per matrix. jaxlib ≥ 0.10's CPU LAPACK kernels split
a batch whose work exceeds ~2e5 flops over XLA's intra-op thread pool and block their worker
until the pieces finish; when as many such kernels run concurrently as the pool has threads
(two on a two-core machine: XLA:CPU runs independent operations of a program in parallel),
every worker waits and the program deadlocks. One matrix per call, or a batch below that work,
is done in place, so these helpers cannot deadlock (``tests/test_lapack_one_matrix_per_call.py``
has the reproducer). Batches under :data:`LOOP_ABOVE_FLOPS` (an estimate 4× below jaxlib's
threshold) keep the single batched call. Derivatives are taken through the loop, so they are
unbatched too; under a user's :func:`jax.vmap` the loop body is batched again.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import lax


def transpose(a: jax.Array) -> jax.Array:
    """Swap the last two axes: ``(..., M, N) -> (..., N, M)``."""
    return jnp.swapaxes(a, -1, -2)


def symmetrize(a: jax.Array) -> jax.Array:
    """½(A + Aᵀ), the projection of a square matrix onto symmetric matrices."""
    return 0.5 * (a + transpose(a))


def identity_like(a: jax.Array) -> jax.Array:
    """The identity broadcast to the shape and dtype of ``a`` (``(..., D, D)``)."""
    return jnp.broadcast_to(jnp.eye(a.shape[-1], dtype=a.dtype), a.shape)


def outer(u: jax.Array, v: jax.Array) -> jax.Array:
    """Batched outer product uvᵀ: ``(..., D), (..., E) -> (..., D, E)``."""
    return u[..., :, None] * v[..., None, :]


def mv(a: jax.Array, x: jax.Array) -> jax.Array:
    """Batched matrix-vector product Ax: ``(..., M, N), (..., N) -> (..., M)``."""
    return jnp.matmul(a, x[..., None])[..., 0]


#: Batched LAPACK work (flops, estimated) from which :func:`cholesky` and :func:`solve_triangular`
#: call LAPACK one matrix at a time.
LOOP_ABOVE_FLOPS = 5e4


def _one_matrix_at_a_time(fn, flops_per_matrix: float, *arrays: jax.Array) -> jax.Array:
    """fn over the common leading batch axes of ``arrays`` (each ``(..., R, C)``), one matrix per
    call when the batch's work reaches :data:`LOOP_ABOVE_FLOPS` (see the module docstring)."""
    batch = arrays[0].shape[:-2]
    count = math.prod(batch)
    if len(batch) == 0 or count * flops_per_matrix < LOOP_ABOVE_FLOPS:
        return fn(*arrays)
    flat = [a.reshape((-1,) + a.shape[-2:]) for a in arrays]
    if flat[0].shape[0] == 1:
        out = fn(*(a[0] for a in flat))[None]
    else:
        out = lax.map(lambda xs: fn(*xs), tuple(flat))
    return out.reshape(batch + out.shape[-2:])


def cholesky(a: jax.Array) -> jax.Array:
    """Lower Cholesky factor L of an SPD matrix, A = LLᵀ (NaN where A is not SPD)."""
    return _one_matrix_at_a_time(jnp.linalg.cholesky, a.shape[-1] ** 3, a)


def _broadcast_batch(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array]:
    batch = jnp.broadcast_shapes(a.shape[:-2], b.shape[:-2])
    return (
        jnp.broadcast_to(a, batch + a.shape[-2:]),
        jnp.broadcast_to(b, batch + b.shape[-2:]),
    )


def solve_triangular(
    t: jax.Array, b: jax.Array, *, lower: bool, transpose_t: bool = False
) -> jax.Array:
    """Solve T X = B (or Tᵀ X = B) for triangular T: ``(..., D, D), (..., D, K) -> (..., D, K)``."""
    t, b = _broadcast_batch(t, b)

    def solve(t, b):
        return lax.linalg.triangular_solve(
            t, b, left_side=True, lower=lower, transpose_a=transpose_t
        )

    return _one_matrix_at_a_time(solve, t.shape[-1] ** 2 * b.shape[-1], t, b)


def solve_triangular_vec(
    t: jax.Array, b: jax.Array, *, lower: bool, transpose_t: bool = False
) -> jax.Array:
    """Vector version of :func:`solve_triangular`: ``(..., D, D), (..., D) -> (..., D)``."""
    return solve_triangular(t, b[..., None], lower=lower, transpose_t=transpose_t)[..., 0]


def cho_solve_vec(chol: jax.Array, b: jax.Array) -> jax.Array:
    """A⁻¹b from the lower Cholesky factor L of A = LLᵀ: ``(..., D, D), (..., D) -> (..., D)``."""
    y = solve_triangular_vec(chol, b, lower=True)
    return solve_triangular_vec(chol, y, lower=True, transpose_t=True)


def triangular_inverse(t: jax.Array, *, lower: bool = True) -> jax.Array:
    """T⁻¹ of a triangular matrix by one triangular solve against the identity."""
    return solve_triangular(t, identity_like(t), lower=lower)


def inverse_from_cholesky(chol: jax.Array) -> jax.Array:
    """A⁻¹ = L⁻ᵀL⁻¹ from the lower Cholesky factor L of A."""
    chol_inv = triangular_inverse(chol)
    return jnp.matmul(transpose(chol_inv), chol_inv)


def inverse_cholesky(a: jax.Array) -> jax.Array:
    """Lower-triangular L with positive diagonal and LLᵀ = A⁻¹, for SPD A.

    One Cholesky factorization and one triangular inverse: with J the reversal permutation,
    JAJ = RRᵀ (R lower) gives A = UUᵀ with U = JRJ upper, so A⁻¹ = U⁻ᵀU⁻¹ and
    L = U⁻ᵀ = J R⁻ᵀ J is lower triangular.
    """
    reversed_a = jnp.flip(a, axis=(-1, -2))
    r = cholesky(reversed_a)
    r_inv = triangular_inverse(r)
    return jnp.flip(transpose(r_inv), axis=(-1, -2))


def log_abs_det_triangular(t: jax.Array) -> jax.Array:
    """log|det T| = Σᵢ log|Tᵢᵢ| for triangular T: ``(..., D, D) -> (...)``."""
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(t, axis1=-2, axis2=-1))), axis=-1)


def vech(a: jax.Array) -> jax.Array:
    """Stack the lower triangle (diagonal included) row by row: ``(D, D) -> (D(D+1)/2,)``."""
    rows, cols = jnp.tril_indices(a.shape[-1])
    return a[..., rows, cols]


def unvech(v: jax.Array, dim: int) -> jax.Array:
    """Inverse of :func:`vech` onto symmetric matrices: ``(D(D+1)/2,) -> (D, D)``."""
    rows, cols = jnp.tril_indices(dim)
    a = jnp.zeros(v.shape[:-1] + (dim, dim), v.dtype).at[..., rows, cols].set(v)
    return a + transpose(jnp.tril(a, -1))
