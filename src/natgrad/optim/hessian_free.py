"""Hessian-free (truncated-Newton) natural-gradient steps as an optax transformation.

At parameters θ with gradient g and a curvature matrix C (GGN, Fisher, Monte Carlo Fisher,
empirical Fisher or Hessian; :mod:`natgrad.curvature`) on the step's batch, each step

1. solves the damped system (C + λI) p = −g by conjugate gradients, warm-started from
   β·p_{t−1} (β = ``warm_start_decay``, Martens uses 0.95) and stopped by Martens' progress
   criterion on the quadratic model

       q(p) = gᵀp + ½ pᵀ(C + λI) p;

2. optionally backtracks over stored CG iterates (``cg_backtracking``): starting from the last,
   it steps back to an earlier iterate while that one has a lower loss;
3. picks the step size α: ``learning_rate`` (a float or schedule), shrunk by
   ``line_search_shrink`` until Armijo's condition L(θ + αp) ≤ L(θ) + c·α·gᵀp holds
   (``line_search=True``); a step that never satisfies it, or whose loss is not finite, is
   rejected: the update is zero and the damping grows;
4. adapts λ by Levenberg–Marquardt on the reduction ratio

       ρ = [L(θ + αp) − L(θ)] / q(αp):   ρ < ¼ ⇒ λ ← (3/2)λ,   ρ > ¾ ⇒ λ ← (2/3)λ,

   clipped to [``min_damping``, ``max_damping``];
5. returns the update δ_t = αp + μ·δ_{t−1} (μ = ``momentum``; δ_{t−1} = 0 after a rejection).

The loss used for ρ and the line search is the batch negative log-likelihood
``loss(apply(θ, inputs), targets)``; ``g`` is the ``updates`` argument (the gradient of that
loss — add other terms only if their curvature is negligible). With ``curvature_batch_size=k``
the curvature uses the first k examples of the batch (the gradient and the loss use all of them).

References: J. Martens, "Deep learning via Hessian-free optimization", ICML 2010; J. Martens and
I. Sutskever, "Training deep and recurrent networks with Hessian-free optimization", 2012.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from natgrad import curvature as curvature_lib
from natgrad.curvature.operator import tree_all_finite, tree_vdot
from natgrad.losses import NegativeLogLikelihood
from natgrad.optim.options import check_loss_damping_momentum
from natgrad.solvers import conjugate_gradient

PyTree = Any


class HessianFreeState(NamedTuple):
    """State of :func:`hessian_free`; every field is an array (all diagnostics of the last step).

    Attributes:
      count: steps taken (int32).
      damping: λ for the next step.
      cg_solution: the last CG solution p (warm start for the next solve), like params.
      velocity: the last update δ (the momentum buffer), like params.
      loss: L(θ) at the last step's params.
      rho: the last reduction ratio ρ (−inf for a rejected step).
      predicted_change: q(αp), the quadratic model's change for the taken step (≤ 0).
      actual_change: L(θ + αp) − L(θ) (0 for a rejected step).
      step_size: the α taken (0 when rejected).
      cg_iterations: CG iterations of the last solve (int32).
      cg_reason: why CG stopped, a :class:`natgrad.solvers.CGReason` code (int32).
      num_rejected: steps rejected so far (int32).
    """

    count: jax.Array
    damping: jax.Array
    cg_solution: PyTree
    velocity: PyTree
    loss: jax.Array
    rho: jax.Array
    predicted_change: jax.Array
    actual_change: jax.Array
    step_size: jax.Array
    cg_iterations: jax.Array
    cg_reason: jax.Array
    num_rejected: jax.Array


def _axpy(a, x: PyTree, y: PyTree) -> PyTree:
    """a·x + y on pytrees (dtypes of y kept)."""
    return jax.tree.map(lambda xi, yi: (a * xi + yi).astype(yi.dtype), x, y)


def _scale(a, x: PyTree) -> PyTree:
    return jax.tree.map(lambda xi: (a * xi).astype(xi.dtype), x)


def _take(tree: PyTree, i) -> PyTree:
    return jax.tree.map(lambda x: x[i], tree)


def _backtrack(solution, g_dot_p, p_curv_p, final_value, loss_at):
    """Martens' CG backtracking: from the final CG iterate, step back through the stored
    iterates (latest first) while the earlier one has a strictly lower loss.

    Returns the chosen iterate, its loss, gᵀp and pᵀ(C+λI)p.
    """
    ck = solution.checkpoints
    num_checkpoints = ck.valid.shape[0]
    # Stored iterates are in increasing iteration order and the reached ones form a prefix;
    # skip a last stored iterate that is the final one itself.
    num_valid = jnp.sum(ck.valid).astype(jnp.int32)
    duplicate = (num_valid > 0) & (
        ck.iteration[jnp.maximum(num_valid - 1, 0)] == solution.info.iterations
    )
    num_before_final = num_valid - duplicate.astype(jnp.int32)
    candidates = jax.tree.map(lambda c, x: jnp.concatenate([c, x[None]]), ck.x, solution.x)
    dtype = g_dot_p.dtype
    g_dots = jnp.concatenate([-ck.linear.astype(dtype), g_dot_p[None]])
    curvs = jnp.concatenate([2 * (ck.quadratic + ck.linear).astype(dtype), p_curv_p[None]])

    def loss_of(i):
        return jnp.where(i >= 0, loss_at(_take(candidates, jnp.maximum(i, 0))), jnp.inf)

    # carry: (index of the current candidate, its loss, index of the one before, its loss)
    def cond(carry):
        _, f, prev, f_prev = carry
        return (prev >= 0) & (f_prev < f)

    def body(carry):
        _, _, prev, f_prev = carry
        return prev, f_prev, prev - 1, loss_of(prev - 1)

    prev = num_before_final - 1
    j, value, _, _ = jax.lax.while_loop(
        cond, body, (jnp.int32(num_checkpoints), final_value, prev, loss_of(prev))
    )
    return _take(candidates, j), value, g_dots[j], curvs[j]


def hessian_free(
    apply: Callable[[PyTree, Any], jax.Array],
    loss: NegativeLogLikelihood,
    *,
    learning_rate: float | optax.Schedule = 1.0,
    curvature: str = "ggn",
    damping: float = 1.0,
    adapt_damping: bool = True,
    min_damping: float = 1e-6,
    max_damping: float = 1e6,
    momentum: float = 0.0,
    cg_max_iterations: int = 20,
    cg_min_iterations: int = 1,
    cg_rtol: float = 1e-6,
    cg_progress_tolerance: float | None = 5e-4,
    warm_start_decay: float = 0.95,
    cg_backtracking: bool = False,
    cg_num_checkpoints: int = 8,
    line_search: bool = True,
    armijo_constant: float = 1e-2,
    line_search_shrink: float = 0.5,
    line_search_max_steps: int = 8,
    curvature_batch_size: int | None = None,
    num_mc_samples: int = 1,
) -> optax.GradientTransformationExtraArgs:
    """Hessian-free natural-gradient descent (Martens 2010) as an optax transformation.

    ``update(grads, state, params, *, batch, key=None, value=None)`` returns the update δ (see
    the module docstring for the algorithm) and the new :class:`HessianFreeState`; apply it
    with :func:`optax.apply_updates`. ``batch = (inputs, targets)`` is the step's batch; ``key``
    (a PRNG key) is required for ``curvature="fisher_mc"`` and ignored otherwise; ``value``,
    optional, is L(θ) on the batch as ``jax.value_and_grad`` returns it with ``grads`` (given,
    it saves the forward pass that computes L(θ) when ``curvature_batch_size`` is set).

    Args:
      apply: ``apply(params, inputs) -> outputs`` (B, ...).
      loss: a :class:`natgrad.losses.NegativeLogLikelihood` on the outputs.
      learning_rate: α₀, a float or an optax schedule of the step count; the line search's
        first try.
      curvature: "ggn" (default), "fisher" (the same matrix for the losses here), "fisher_mc",
        "empirical_fisher" or "hessian".
      damping: initial λ > 0.
      adapt_damping: adapt λ by the Levenberg–Marquardt rule; otherwise λ stays fixed.
      min_damping, max_damping: bounds for adapted λ.
      momentum: μ ∈ [0, 1), heavy-ball momentum on the updates.
      cg_max_iterations, cg_min_iterations, cg_rtol, cg_progress_tolerance: CG limits and
        tolerances (:func:`natgrad.solvers.conjugate_gradient`; ``cg_progress_tolerance`` is
        Martens' ε, None to disable).
      warm_start_decay: β, the warm start is β·p_{t−1} (0 for cold starts).
      cg_backtracking: backtrack over ``cg_num_checkpoints`` stored CG iterates.
      line_search: Armijo backtracking on α (else α is taken unless the loss is not finite).
      armijo_constant, line_search_shrink, line_search_max_steps: c, the shrink factor and the
        most shrinks.
      curvature_batch_size: use the first k examples of the batch for curvature (static int).
      num_mc_samples: S for "fisher_mc".

    Returns:
      An :class:`optax.GradientTransformationExtraArgs`.

    Example::

        tx = natgrad.optim.hessian_free(apply, natgrad.losses.SoftmaxCrossEntropy())
        state = tx.init(params)
        grads = jax.grad(lambda p: loss(apply(p, x), y))(params)
        updates, state = tx.update(grads, state, params, batch=(x, y))
        params = optax.apply_updates(params, updates)
    """
    if curvature not in curvature_lib.CURVATURES:
        raise ValueError(
            f"unknown curvature {curvature!r}: expected one of {curvature_lib.CURVATURES}"
        )
    check_loss_damping_momentum(loss, damping, min_damping, max_damping, momentum)
    if not 0 <= warm_start_decay <= 1:
        raise ValueError(f"warm_start_decay must be in [0, 1], got {warm_start_decay}")
    if not 0 < line_search_shrink < 1:
        raise ValueError(f"line_search_shrink must be in (0, 1), got {line_search_shrink}")
    if cg_max_iterations < 1 or cg_min_iterations < 0:
        raise ValueError("cg_max_iterations must be ≥ 1 and cg_min_iterations ≥ 0")
    if curvature_batch_size is not None and curvature_batch_size < 1:
        raise ValueError(f"curvature_batch_size must be a positive int, got {curvature_batch_size}")
    schedule = learning_rate if callable(learning_rate) else (lambda _: learning_rate)
    num_checkpoints = cg_num_checkpoints if cg_backtracking else 0

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        if not leaves:
            raise ValueError("params has no array leaves")
        dtype = jnp.result_type(*leaves)
        zeros = jax.tree.map(jnp.zeros_like, params)
        scalar = jnp.zeros([], dtype)
        return HessianFreeState(
            count=jnp.zeros([], jnp.int32),
            damping=jnp.asarray(damping, dtype),
            cg_solution=zeros,
            velocity=zeros,
            loss=scalar,
            rho=scalar,
            predicted_change=scalar,
            actual_change=scalar,
            step_size=scalar,
            cg_iterations=jnp.zeros([], jnp.int32),
            cg_reason=jnp.zeros([], jnp.int32),
            num_rejected=jnp.zeros([], jnp.int32),
        )

    def update_fn(updates, state, params=None, *, batch, key=None, value=None):
        if params is None:
            raise ValueError("hessian_free needs `params` in update(grads, state, params)")
        if curvature == "fisher_mc" and key is None:
            raise ValueError("curvature='fisher_mc' samples targets from the model: pass key=")
        inputs, targets = curvature_lib.check_model_inputs(apply, loss, params, batch)
        dtype = state.damping.dtype
        grads = updates
        curvature_batch = (inputs, targets)
        if curvature_batch_size is not None:
            curvature_batch = jax.tree.map(lambda x: x[:curvature_batch_size], curvature_batch)
        op = curvature_lib.make(
            curvature, apply, loss, params, curvature_batch, key=key, num_samples=num_mc_samples
        )

        def batch_loss(p):
            return loss(apply(p, inputs), targets).astype(dtype)

        if value is not None:
            value = jnp.asarray(value).astype(dtype)
        elif curvature_batch_size is None:
            value = op.value.astype(dtype)
        else:
            value = batch_loss(params)
        lam = state.damping
        solution = conjugate_gradient(
            op.mv,
            _scale(-1.0, grads),
            damping=lam,
            x0=_scale(warm_start_decay, state.cg_solution),
            max_iterations=cg_max_iterations,
            min_iterations=cg_min_iterations,
            rtol=cg_rtol,
            progress_tolerance=cg_progress_tolerance,
            num_checkpoints=num_checkpoints,
        )
        alpha0 = jnp.asarray(schedule(state.count), dtype)
        # q(αp) = α·gᵀp + ½α²·pᵀ(C+λI)p; with b = −g, CG's φ(p) = ½pᵀ(C+λI)p + gᵀp.
        g_dot_p = tree_vdot(grads, solution.x).astype(dtype)
        p_curv_p = 2 * (solution.info.quadratic.astype(dtype) - g_dot_p)
        direction = solution.x

        def loss_along(p, alpha):
            return batch_loss(_axpy(alpha, p, params))

        new_value = loss_along(direction, alpha0)
        if cg_backtracking:
            direction, new_value, g_dot_p, p_curv_p = _backtrack(
                solution, g_dot_p, p_curv_p, new_value, lambda p: loss_along(p, alpha0)
            )

        def armijo_ok(alpha, f):
            return jnp.isfinite(f) & (f <= value + armijo_constant * alpha * g_dot_p)

        if line_search:

            def ls_cond(carry):
                i, alpha, f = carry
                return (i < line_search_max_steps) & ~armijo_ok(alpha, f)

            def ls_body(carry):
                i, alpha, _ = carry
                alpha = alpha * line_search_shrink
                return i + 1, alpha, loss_along(direction, alpha)

            _, alpha, new_value = jax.lax.while_loop(
                ls_cond, ls_body, (jnp.int32(0), alpha0, new_value)
            )
            accepted = armijo_ok(alpha, new_value)
        else:
            alpha = alpha0
            accepted = jnp.isfinite(new_value)
        accepted = (
            accepted & jnp.isfinite(value) & tree_all_finite(grads) & tree_all_finite(direction)
        )
        accepted = accepted & (g_dot_p < 0)

        predicted = alpha * g_dot_p + 0.5 * alpha**2 * p_curv_p
        actual = new_value - value
        rho = jnp.where(accepted & (predicted < 0), actual / predicted, -jnp.inf)
        if adapt_damping:
            lam = jnp.where(rho < 0.25, lam * 1.5, jnp.where(rho > 0.75, lam * (2 / 3), lam))
            lam = jnp.clip(lam, min_damping, max_damping)
        alpha = jnp.where(accepted, alpha, 0.0)
        safe_direction = jax.tree.map(
            lambda d: jnp.where(accepted, d, jnp.zeros_like(d)), direction
        )
        step = _scale(alpha, safe_direction)
        velocity = jax.tree.map(lambda v: jnp.where(accepted, v, jnp.zeros_like(v)), state.velocity)
        new_updates = _axpy(momentum, velocity, step) if momentum else step
        cg_solution = jax.tree.map(
            lambda x, prev: jnp.where(jnp.isfinite(x), x, jnp.zeros_like(x)).astype(prev.dtype),
            solution.x,
            state.cg_solution,
        )
        new_state = HessianFreeState(
            count=optax.safe_int32_increment(state.count),
            damping=lam.astype(dtype),
            cg_solution=cg_solution,
            velocity=new_updates,
            loss=value,
            rho=rho.astype(dtype),
            predicted_change=jnp.where(accepted, predicted, 0.0).astype(dtype),
            actual_change=jnp.where(accepted, actual, 0.0).astype(dtype),
            step_size=alpha.astype(dtype),
            cg_iterations=solution.info.iterations.astype(jnp.int32),
            cg_reason=solution.info.reason.astype(jnp.int32),
            num_rejected=state.num_rejected + (~accepted).astype(jnp.int32),
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
