"""A symmetric curvature matrix C as a linear map on parameter pytrees."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

PyTree = Any


@dataclasses.dataclass(frozen=True)
class CurvatureOperator:
    """A curvature matrix C (P × P, P = number of parameters) known only through products C·v.

    Built by :func:`natgrad.curvature.ggn`, :func:`~natgrad.curvature.fisher`,
    :func:`~natgrad.curvature.fisher_mc`, :func:`~natgrad.curvature.empirical_fisher` or
    :func:`~natgrad.curvature.hessian` from one linearization of the model at ``params``; every
    product reuses it. The objective's value and gradient at ``params`` come from the same
    linearization.

    Attributes:
      name: which curvature ("ggn", "fisher", "fisher_mc", "empirical_fisher", "hessian").
      params: the point C is taken at (gives the pytree structure of v).
      value: the objective L(params), a scalar.
      grad: ∇L(params), a pytree like ``params``.
      positive_semidefinite: True when C ⪰ 0 by construction (all but the Hessian).
    """

    name: str
    params: PyTree
    value: jax.Array
    grad: PyTree
    positive_semidefinite: bool
    _mv: Callable[[PyTree], PyTree] = dataclasses.field(repr=False)
    _diagonal: Callable[[], PyTree] = dataclasses.field(repr=False)
    _diagonal_estimate: Callable[[jax.Array, int], PyTree] = dataclasses.field(repr=False)

    def mv(self, v: PyTree) -> PyTree:
        """C·v for a pytree v shaped like ``params``."""
        return self._mv(v)

    def __matmul__(self, v: PyTree) -> PyTree:
        return self._mv(v)

    def as_matrix(self) -> jax.Array:
        """The dense (P, P) matrix, column j = C·e_j in ``ravel_pytree(params)`` order.

        Costs P products and P² memory: for tests and diagnostics on small models only.
        """
        flat, unravel = ravel_pytree(self.params)
        basis = jnp.eye(flat.size, dtype=flat.dtype)
        columns = jax.vmap(lambda e: ravel_pytree(self._mv(unravel(e)))[0])(basis)
        return columns.T

    def diagonal(self) -> PyTree:
        """diag(C) exactly, as a pytree like ``params``.

        Gauss–Newton-type operators (JᵀMJ) use a factor M = Σₖ bₖbₖᵀ of the output curvature:
        diag(C) = Σᵢ Σₖ (Jᵢᵀ b_{ik})², one per-example VJP per factor column (K per example;
        the number of classes for the exact Fisher, 1 for the empirical Fisher). The Hessian
        uses P Hessian-vector products with basis vectors, so it is for small models.
        """
        return self._diagonal()

    def diagonal_estimate(self, *, key: jax.Array, num_samples: int = 1) -> PyTree:
        """An unbiased estimate of diag(C), cheaper than :meth:`diagonal`.

        Gauss–Newton types: diag(C) ≈ (1/S) Σ_s Σᵢ (Jᵢᵀ Σₖ z_{sik} b_{ik})² with Rademacher
        z (one per-example VJP per sample; exact when K = 1). Hessian: Hutchinson's estimate
        (1/S) Σ_s z_s ⊙ C z_s (see :func:`hutchinson_diagonal`).
        """
        return self._diagonal_estimate(key, num_samples)


def tree_all_finite(tree: PyTree) -> jax.Array:
    """Whether every entry of every leaf is finite: a boolean scalar (True for no leaves)."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.asarray(True)


def tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
    """⟨a, b⟩ = Σ over leaves of Σ a·b (real pytrees)."""
    products = jax.tree.map(lambda x, y: jnp.sum(x * y), a, b)
    return sum(jax.tree.leaves(products), start=jnp.zeros((), jnp.result_type(*jax.tree.leaves(a))))


def rademacher_like(tree: PyTree, key: jax.Array) -> PyTree:
    """Independent ±1 entries, one pytree like ``tree``."""
    leaves, treedef = jax.tree.flatten(tree)
    keys = jax.random.split(key, len(leaves))
    return jax.tree.unflatten(
        treedef,
        [
            jax.random.rademacher(k, x.shape, dtype=x.dtype)
            for k, x in zip(keys, leaves, strict=True)
        ],
    )


def hutchinson_diagonal(
    mv: Callable[[PyTree], PyTree], params: PyTree, *, key: jax.Array, num_samples: int = 1
) -> PyTree:
    """Hutchinson's diagonal estimate diag(C) ≈ (1/S) Σ_s z_s ⊙ (C z_s), z_s Rademacher.

    Unbiased since E[zzᵀ] = I; its variance per entry is Σ_{j≠i} C_{ij}² / S.

    Args:
      mv: v ↦ C·v on pytrees like ``params``.
      params: gives the structure and dtypes.
      key: PRNG key.
      num_samples: S, a static positive int.
    Returns:
      A pytree like ``params``.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}")

    def body(total, k):
        z = rademacher_like(params, k)
        return jax.tree.map(lambda t, a, b: t + a * b, total, z, mv(z)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, _ = jax.lax.scan(body, zeros, jax.random.split(key, num_samples))
    return jax.tree.map(lambda t: t / num_samples, total)


def basis_diagonal(mv: Callable[[PyTree], PyTree], params: PyTree) -> PyTree:
    """diag(C) from P products with basis vectors, one at a time (memory of one product)."""
    flat, unravel = ravel_pytree(params)

    def entry(j):
        e = jnp.zeros_like(flat).at[j].set(1)
        return ravel_pytree(mv(unravel(e)))[0][j]

    return unravel(jax.lax.map(entry, jnp.arange(flat.size)))
