"""Natural-gradient steps on a variational distribution as an optax transformation.

The update for parameters ξ of an exponential-family distribution is

    ξ_{t+1} = ξ_t − γ_t · s_t · F_ξ⁻¹∇_ξL,   s_t = 2⁻ᵏ for the least k ≤ K keeping ξ_{t+1} valid,

where F_ξ⁻¹∇_ξL comes from :func:`natgrad.natural_gradient` and the safeguard halves the step
(per independent distribution in a batch) until the new parameters are finite and inside the
parameterization's domain (for a Gaussian: a positive-definite covariance). If all K + 1 tries
fail, that distribution keeps its parameters (the step is skipped); shrinks and skips are counted
in the state. Nothing here leaves the parameters NaN.

Combine with Adam on the other parameters with :func:`optax.partition`::

    params = {"q": (mean, scale_tril), "w": weights}
    tx = optax.partition(
        {"natural": natgrad.optim.natural_vi(natgrad.log_linear_warmup(1e-4, 0.1, 5),
                                             "mean_cholesky"),
         "adam": optax.adam(1e-2)},
        {"q": "natural", "w": "adam"},
    )

The labelled subtree handed to :func:`natural_vi` must hold the parameters of one distribution
(a pair such as ``(mean, scale_tril)`` for a Gaussian, leading axes for a stack of independent
ones); use one :func:`natural_vi` per distribution.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import jax
import jax.numpy as jnp
import optax

from natgrad.expfam.base import Parameterization, PyTree, resolve
from natgrad.natural_gradient import natural_gradient


class NaturalVIState(NamedTuple):
    """State of :func:`natural_vi`.

    Attributes:
      count: number of updates taken so far (int32 scalar); the schedule's argument.
      step_size: γ_t of the last update.
      num_shrinks: total halvings applied by the safeguard, summed over steps and batch.
      num_skipped: total (step, batch element) pairs whose step was skipped because every try
        left the distribution invalid.
      last_scale: the factor 2⁻ᵏ the safeguard applied in the last update, batch-shaped
        (0 where the step was skipped).
    """

    count: jax.Array
    step_size: jax.Array
    num_shrinks: jax.Array
    num_skipped: jax.Array
    last_scale: jax.Array


def _as_distribution(leaves: list) -> PyTree:
    """The distribution's parameters from the leaves of the (possibly masked) labelled subtree."""
    return leaves[0] if len(leaves) == 1 else tuple(leaves)


def _broadcast_scale(scale: jax.Array, leaf: jax.Array) -> jax.Array:
    return jnp.reshape(scale, scale.shape + (1,) * (leaf.ndim - scale.ndim)).astype(leaf.dtype)


def natural_vi(
    learning_rate: float | optax.Schedule,
    parameterization: str | Parameterization,
    *,
    max_shrinks: int = 10,
    mode: Literal["forward", "reverse"] = "forward",
    step_parameterization: str | Parameterization | None = None,
) -> optax.GradientTransformation:
    """Turn gradients of a distribution's parameters into safeguarded natural-gradient steps.

    ``update(grads, state, params)`` returns ``updates = ξ_{t+1} − ξ_t`` with
    ξ_{t+1} = ξ_t − γ_t·2⁻ᵏ·F_ξ⁻¹∇_ξL (see the module docstring); apply them with
    :func:`optax.apply_updates`.

    Args:
      learning_rate: γ, a float or an optax schedule of the step count (for example
        :func:`natgrad.log_linear_warmup`).
      parameterization: the distribution's parameterization, a name or object.
      max_shrinks: K, the most halvings tried before the step is skipped.
      mode: how :func:`natgrad.natural_gradient` computes its JVP.
      step_parameterization: the coordinates ξ' the step is taken in, when they differ from
        the parameters' own (None): the parameters are converted to ξ', stepped there
        (ξ'_{t+1} = ξ'_t − γ_t·2⁻ᵏ·F_ξ'⁻¹∇_ξ'L, the safeguard checking ξ') and converted back.
        ``"natural"`` is Salimbeni et al.'s recommended choice: there the step is
        θ_{t+1} = θ_t − γ ∂L/∂η, and γ = 1 jumps to the optimum of a conjugate model
        (as GPflow's ``NaturalGradient`` does by default) whatever the parameters' own
        parameterization.

    Returns:
      An :class:`optax.GradientTransformation` with state :class:`NaturalVIState`.
      ``params`` is required by ``update``.
    """
    p = resolve(parameterization)
    step_p = None if step_parameterization is None else resolve(step_parameterization)
    if step_p is not None and step_p == p:
        step_p = None
    if max_shrinks < 0:
        raise ValueError(f"`max_shrinks` must be ≥ 0, got {max_shrinks}")
    if mode not in ("forward", "reverse"):
        raise ValueError(f"`mode` must be 'forward' or 'reverse', got {mode!r}")
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        dist = _as_distribution(leaves)
        p.check_structure(dist, argname="params")
        batch_shape = jnp.shape(p.is_valid(dist))
        dtype = leaves[0].dtype
        return NaturalVIState(
            count=jnp.zeros([], jnp.int32),
            step_size=jnp.zeros([], dtype),
            num_shrinks=jnp.zeros([], jnp.int32),
            num_skipped=jnp.zeros([], jnp.int32),
            last_scale=jnp.ones(batch_shape, dtype),
        )

    def update_fn(updates, state, params=None):
        if params is None:
            raise ValueError("natural_vi needs `params` in update(grads, state, params)")
        param_leaves, treedef = jax.tree.flatten(params)
        grad_leaves = jax.tree.leaves(updates)
        if len(grad_leaves) != len(param_leaves):
            raise ValueError(
                f"`updates` has {len(grad_leaves)} arrays but `params` has {len(param_leaves)}; "
                "pass the gradients of the same parameters"
            )
        dist = _as_distribution(param_leaves)
        grads = _as_distribution(grad_leaves)
        p.check_structure(dist, argname="params")
        work_p, storage_leaves = p, param_leaves
        if step_p is None:
            direction = natural_gradient(
                params=dist, grads=grads, parameterization=p, mode=mode, check=False
            )
        elif step_p.name == "natural":
            # In natural coordinates F_θ⁻¹∇_θL = ∂L/∂η, one pull-back of ∇_ξL through ξ(η).
            to_storage = p.from_natural
            grads = p.project_gradient(dist, grads)
            direction = p.project_natural_tangent(p.from_expectation_vjp(dist, grads))
            dist = p.to_natural(dist)
            work_p, param_leaves = step_p, jax.tree.leaves(dist)
        else:

            def to_storage(xi):
                return p.from_natural(step_p.to_natural(xi))

            stored = dist
            dist = step_p.from_natural(p.to_natural(stored))
            _, pullback = jax.vjp(to_storage, dist)
            (grads,) = pullback(p.project_gradient(stored, grads))
            direction = natural_gradient(
                params=dist, grads=grads, parameterization=step_p, mode=mode, check=False
            )
            work_p, param_leaves = step_p, jax.tree.leaves(dist)
        direction_leaves = jax.tree.leaves(direction)
        dtype = param_leaves[0].dtype
        gamma = jnp.asarray(schedule(state.count), dtype)

        def candidate(scale):
            return [
                x - gamma * _broadcast_scale(scale, x) * d
                for x, d in zip(param_leaves, direction_leaves, strict=True)
            ]

        def valid(scale):
            return work_p.is_valid(_as_distribution(candidate(scale)))

        scale0 = jnp.ones_like(state.last_scale)

        ok0 = valid(scale0)

        def shrink():
            # Every halving 2⁻ᵏ, k = 1..K, checked at once (no while_loop: XLA:CPU 0.10 can
            # deadlock on batched LAPACK calls inside a while_loop inside a scan); each element
            # takes its first valid one.
            halvings = jnp.arange(1, max_shrinks + 1, dtype=scale0.dtype)
            tries = jnp.exp2(-halvings).reshape((-1,) + (1,) * scale0.ndim) * scale0
            ok_k = jax.vmap(valid)(tries)  # (K, *batch)
            first = jnp.argmax(ok_k, axis=0)
            shrunk = jnp.take_along_axis(tries, first[None], axis=0)[0]
            ok = ok0 | jnp.any(ok_k, axis=0)
            return jnp.where(ok0, scale0, shrunk), ok

        if max_shrinks == 0:
            scale, ok = scale0, ok0
        else:
            # The usual step is valid as it is; the K checks run only when one is not.
            scale, ok = jax.lax.cond(jnp.all(ok0), lambda: (scale0, ok0), shrink)
        scale = jnp.where(ok, scale, jnp.zeros_like(scale))
        new_leaves = candidate(scale)
        # A skipped element has scale 0 but its direction may be NaN; keep its old value.
        new_leaves = [
            jnp.where(_broadcast_scale(ok, x).astype(bool), n, x)
            for x, n in zip(param_leaves, new_leaves, strict=True)
        ]
        halvings = jnp.where(ok, -jnp.log2(jnp.where(ok, scale, 1.0)), 0.0)
        if step_p is not None:
            # Back to the parameters' own coordinates; a skipped element's update is exactly 0.
            new_leaves = jax.tree.leaves(to_storage(_as_distribution(new_leaves)))
            new_leaves = [
                jnp.where(_broadcast_scale(ok, x).astype(bool), n, x)
                for x, n in zip(storage_leaves, new_leaves, strict=True)
            ]
            param_leaves = storage_leaves
        new_updates = [n - x for x, n in zip(param_leaves, new_leaves, strict=True)]
        new_state = NaturalVIState(
            count=optax.safe_int32_increment(state.count),
            step_size=gamma,
            num_shrinks=state.num_shrinks + jnp.sum(jnp.round(halvings)).astype(jnp.int32),
            num_skipped=state.num_skipped + jnp.sum(~ok).astype(jnp.int32),
            last_scale=scale.astype(state.last_scale.dtype),
        )
        return jax.tree.unflatten(treedef, new_updates), new_state

    return optax.GradientTransformation(init_fn, update_fn)
