"""K-FAC: Kronecker-factored natural-gradient steps as an optax transformation.

For every dense and convolution layer of ``apply`` (found by :func:`natgrad.kronecker.find_layers`,
no registration) the Fisher block is approximated by A ⊗ G (:mod:`natgrad.kronecker.factors`):

* A = E[ã ãᵀ] over the layer's inputs (with a 1 appended for the bias), and
* G = E[g gᵀ] over the gradients g = ∂ℓ/∂s of the per-example loss with respect to the layer's
  pre-activations s, for targets drawn from the model (``fisher="mc"``, the true Fisher, Martens
  & Grosse 2015), the data's targets (``"empirical"``) or the columns of the output Fisher's
  factor, H = Σₖ bₖbₖᵀ (``"exact"``: KFLR, Botev, Ritter & Barber 2017, exact for the GGN's
  output side at K backward passes per statistics update).

Both factors are exponential moving averages, A_t = ε_t A_{t−1} + (1 − ε_t) Â_t with
ε_t = min(``ema_decay``, t/(t + 1)) (so the first estimate is taken whole), updated every
``statistics_every`` steps. On the steps of :func:`refreshes_inverses` (t = 0, 1, 2, 4, 8, …
below ``inverse_every`` = T, while the averages are young, then every T steps) the damped
inverses (A + π√λ I)⁻¹ and (G + (√λ/π) I)⁻¹ are recomputed (Cholesky; factored Tikhonov damping
with the π correction); in between, steps reuse them. A refresh whose inverses are not finite
keeps the previous ones (counted in ``num_failed_inverses``). Each layer's gradient ∇ (as a
(d_in [+1]) × d_out matrix) becomes the direction Δ = A_λ⁻¹ ∇ G_λ⁻¹.

Any other parameter (not a dense or convolution layer's weight or bias) gets the diagonal
approximation Δ = ∇ / (D + λ), D an exponential moving average of c_B Σₖ (Σᵢ Jᵢᵀ cᵢₖ)²/K over
the same output-space vectors cᵢₖ as G (for ``"mc"`` an unbiased estimate of the Fisher's
diagonal, the cross terms between examples vanishing in expectation; for the other two it keeps
those cross terms).

The update is δ_t = −α_t ν Δ + μ δ_{t−1} with α_t = α₀/(1 + t/τ) (``learning_rate`` α₀,
``learning_rate_decay_steps`` τ; or a schedule), μ = ``momentum`` and
ν = min(1, √(c / (α² |Δᵀ∇|))) the KL-clipping factor of Ba, Grosse & Martens (2017) for
``norm_constraint=c`` (1 when None). With ``adaptive_step=True``, α and μ instead
minimize the damped quadratic model q(αΔ + μδ_{t−1}) = ∇ᵀ(·) + ½(·)ᵀ(F + λI)(·), F the exact
GGN on the batch (two forward-mode products per step), Martens & Grosse 2015 §7. With
``adapt_damping=True`` λ follows the Levenberg–Marquardt rule every ``damping_every`` = T₂ steps
on ρ = [L(θ + δ) − L(θ)] / q(δ): ρ < ¼ ⇒ λ ← λ/ω, ρ > ¾ ⇒ λ ← λω, ω = (19/20)^T₂ (one extra
forward pass and one product on those steps).

Defaults (α₀ = 0.3, τ = 300, μ = 0.9, λ = 0.3, c = 1e-3, statistics every 10 steps, inverses
every 100) were chosen on minibatch (B = 128) MNIST MLP training (``natgrad bench kfac``, see
benchmarks/README.md); λ is relative to a loss averaged over the batch. With a constant rate the
test accuracy stalls near the minibatch noise floor, hence the decay; pass
``learning_rate_decay_steps=None`` for a constant α.

A step whose update is not finite is rejected: the update is zero, the momentum buffer is
reset and ``num_rejected`` grows.

References: J. Martens and R. Grosse, "Optimizing neural networks with Kronecker-factored
approximate curvature", ICML 2015; R. Grosse and J. Martens, "A Kronecker-factored approximate
Fisher matrix for convolution layers", ICML 2016; A. Botev, H. Ritter and D. Barber, "Practical
Gauss-Newton optimisation for deep learning", ICML 2017; J. Ba, R. Grosse and J. Martens,
"Distributed second-order optimization using Kronecker-factored approximations", ICLR 2017.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from natgrad.curvature.operator import tree_all_finite, tree_vdot
from natgrad.kronecker import factors
from natgrad.kronecker.graph import ModelGraph, find_layers
from natgrad.losses import NegativeLogLikelihood
from natgrad.optim.options import check_loss_damping_momentum

PyTree = Any

#: Estimators of the output factor G accepted by :func:`kfac`.
FISHER_ESTIMATORS = ("mc", "empirical", "exact")


class KfacState(NamedTuple):
    """State of :func:`kfac`; every field is an array or a tuple of arrays.

    Attributes:
      count: steps taken (int32).
      damping: λ.
      a_factors, g_factors: per layer, A (d_a × d_a) and G (d_g × d_g).
      a_inverses, g_inverses: per layer, the damped inverses of the last refresh.
      diagonal: per parameter leaf outside the layers, D (shaped like the leaf).
      velocity: the last update δ, like params.
      step_size: the last α·ν.
      momentum: the last μ.
      rho: the last Levenberg–Marquardt ratio ρ (0 until computed, and when the model predicts
        no decrease).
      num_rejected: steps rejected so far (int32).
      num_failed_inverses: refreshes that kept the previous inverses (int32).
    """

    count: jax.Array
    damping: jax.Array
    a_factors: tuple
    g_factors: tuple
    a_inverses: tuple
    g_inverses: tuple
    diagonal: tuple
    velocity: PyTree
    step_size: jax.Array
    momentum: jax.Array
    rho: jax.Array
    num_rejected: jax.Array
    num_failed_inverses: jax.Array


def _signature(graph: ModelGraph) -> tuple:
    return tuple((l.kind, l.weight, l.bias, l.in_features, l.out_features) for l in graph.layers)


def _factor_sizes(graph: ModelGraph) -> list[tuple[int, int]]:
    return [(l.in_features + l.has_bias, l.out_features) for l in graph.layers]


def refreshes_inverses(count: jax.Array | int, inverse_every: int) -> jax.Array:
    """Whether step ``count`` (0-based) recomputes the inverses: t mod T = 0, or t < T a power
    of two (t = 1, 2, 4, …), so that the first inverses follow the young moving averages."""
    count = jnp.asarray(count)
    power_of_two = (count > 0) & ((count & (count - 1)) == 0)
    return (count % inverse_every == 0) | ((count < inverse_every) & power_of_two)


def kfac(
    apply: Callable[[PyTree, Any], jax.Array],
    loss: NegativeLogLikelihood,
    example_inputs: Any,
    *,
    learning_rate: float | optax.Schedule = 0.3,
    learning_rate_decay_steps: float | None = 300.0,
    momentum: float = 0.9,
    damping: float = 0.3,
    fisher: str = "mc",
    num_samples: int = 1,
    ema_decay: float = 0.95,
    statistics_every: int = 10,
    inverse_every: int = 100,
    norm_constraint: float | None = 1e-3,
    adaptive_step: bool = False,
    adapt_damping: bool = False,
    damping_every: int = 5,
    min_damping: float = 1e-8,
    max_damping: float = 1e4,
) -> optax.GradientTransformationExtraArgs:
    """K-FAC natural-gradient descent (see the module docstring) as an optax transformation.

    ``update(grads, state, params, *, batch, key=None)`` returns the update δ and the new
    :class:`KfacState`; ``batch = (inputs, targets)`` is the step's batch and ``key`` a PRNG key
    (required by ``fisher="mc"``, ignored otherwise). ``grads`` is the gradient of
    ``loss(apply(params, inputs), targets)`` (other terms are preconditioned as if theirs).

    Args:
      apply: ``apply(params, inputs) -> outputs`` (B, ...): a plain function, a flax
        ``module.apply`` or an equinox model called through ``eqx.combine`` (see the README).
      loss: a :class:`natgrad.losses.NegativeLogLikelihood` on the outputs.
      example_inputs: inputs (arrays or :class:`jax.ShapeDtypeStruct`) shaped like a batch,
        any batch size: the layers are found on them when the state is initialized.
      learning_rate: α₀, a float, or an optax schedule of the step count (used as given).
      learning_rate_decay_steps: τ: a float α₀ decays as α_t = α₀ / (1 + t/τ) (None: constant).
      momentum: μ ∈ [0, 1).
      damping: λ > 0 (initial value when adapted).
      fisher: "mc" (targets sampled from the model, ``num_samples`` of them), "empirical"
        (the batch's targets) or "exact" (the output Fisher's factor columns, KFLR).
      num_samples: samples per example for "mc".
      ema_decay: ε ∈ [0, 1), the moving average's decay.
      statistics_every: update the factors every this many steps.
      inverse_every: T, recompute the damped inverses every T steps (and at t = 0, 1, 2, 4, …
        < T; T = 1: every step).
      norm_constraint: c of the KL clipping (None to disable).
      adaptive_step: α and μ from the quadratic model (``learning_rate`` and ``momentum`` are
        then unused).
      adapt_damping: Levenberg–Marquardt adaptation of λ every ``damping_every`` steps, within
        [``min_damping``, ``max_damping``].

    Returns:
      An :class:`optax.GradientTransformationExtraArgs` whose state is a :class:`KfacState`.

    Example::

        tx = natgrad.kfac(apply, natgrad.losses.SoftmaxCrossEntropy(), x[:1])
        state = tx.init(params)
        grads = jax.grad(lambda p: loss(apply(p, x), y))(params)
        updates, state = tx.update(grads, state, params, batch=(x, y), key=key)
        params = optax.apply_updates(params, updates)
    """
    if fisher not in FISHER_ESTIMATORS:
        raise ValueError(
            f"unknown fisher estimator {fisher!r}: expected one of {FISHER_ESTIMATORS}"
        )
    check_loss_damping_momentum(loss, damping, min_damping, max_damping, momentum)
    if not 0 <= ema_decay < 1:
        raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
    for name, value in (
        ("num_samples", num_samples),
        ("statistics_every", statistics_every),
        ("inverse_every", inverse_every),
        ("damping_every", damping_every),
    ):
        if not (isinstance(value, int) and value >= 1):
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    if norm_constraint is not None and not norm_constraint > 0:
        raise ValueError(f"norm_constraint must be positive or None, got {norm_constraint}")
    if learning_rate_decay_steps is not None and not learning_rate_decay_steps > 0:
        raise ValueError(
            f"learning_rate_decay_steps must be positive or None, got {learning_rate_decay_steps}"
        )
    if callable(learning_rate):
        schedule = learning_rate
    elif learning_rate_decay_steps is None:
        schedule = lambda _: learning_rate  # noqa: E731
    else:
        schedule = lambda t: learning_rate / (1 + t / learning_rate_decay_steps)  # noqa: E731
    omega = (19 / 20) ** damping_every

    def discover(params, inputs) -> ModelGraph:
        return find_layers(apply, params, inputs)

    def init_fn(params):
        leaves = jax.tree.leaves(params)
        if not leaves:
            raise ValueError("params has no array leaves")
        dtype = jnp.result_type(*leaves)
        graph = discover(params, example_inputs)
        sizes = _factor_sizes(graph)
        a = tuple(jnp.zeros((m, m), dtype) for m, _ in sizes)
        g = tuple(jnp.zeros((n, n), dtype) for _, n in sizes)
        eye_a = tuple(jnp.eye(m, dtype=dtype) for m, _ in sizes)
        eye_g = tuple(jnp.eye(n, dtype=dtype) for _, n in sizes)
        return KfacState(
            count=jnp.zeros([], jnp.int32),
            damping=jnp.asarray(damping, dtype),
            a_factors=a,
            g_factors=g,
            a_inverses=eye_a,
            g_inverses=eye_g,
            diagonal=tuple(jnp.zeros_like(leaves[i]) for i in graph.other_leaves),
            velocity=jax.tree.map(jnp.zeros_like, params),
            step_size=jnp.zeros([], dtype),
            momentum=jnp.zeros([], dtype),
            rho=jnp.zeros([], dtype),
            num_rejected=jnp.zeros([], jnp.int32),
            num_failed_inverses=jnp.zeros([], jnp.int32),
        )

    def statistics(graph: ModelGraph, params, inputs, targets, key):
        """New estimates (Â per layer, Ĝ per layer, D̂ per other leaf)."""
        leaves, treedef = jax.tree.flatten(params)
        others = [leaves[i] for i in graph.other_leaves]
        perturbations = [jnp.zeros(s.shape, s.dtype) for s in graph.perturbation_shapes()]

        def run(other_values, eps):
            full = list(leaves)
            for i, v in zip(graph.other_leaves, other_values, strict=True):
                full[i] = v
            return graph.evaluate(jax.tree.unflatten(treedef, full), inputs, eps)

        outputs, vjp_fn, layer_inputs = jax.vjp(run, others, perturbations, has_aux=True)
        outputs = jax.lax.stop_gradient(outputs)
        c_b = loss.batch_factor(outputs)
        if fisher == "mc":
            sampled = loss.sample(outputs, key=key, num_samples=num_samples)
            cotangents = jax.vmap(lambda y: loss.output_gradient(outputs, y))(sampled)
            scale = c_b / num_samples
        elif fisher == "empirical":
            cotangents = loss.output_gradient(outputs, targets)[None]
            scale = c_b
        else:
            cotangents = loss.fisher_factor(outputs)
            scale = c_b
        cotangents = cotangents.astype(outputs.dtype)
        other_grads, layer_grads = jax.vmap(vjp_fn)(cotangents)
        a_new = tuple(
            factors.input_factor(layer, x)
            for layer, x in zip(graph.layers, layer_inputs, strict=True)
        )
        g_new = tuple(
            factors.output_factor(layer, gs, scale)
            for layer, gs in zip(graph.layers, layer_grads, strict=True)
        )
        d_new = tuple(scale * jnp.sum(jnp.square(gs), axis=0) for gs in other_grads)
        return a_new, g_new, d_new

    def quadratic_terms(params, inputs, vectors):
        """Gram matrix [vᵢᵀ F vⱼ] of the GGN on the batch, by forward-mode products."""
        jvps = [jax.jvp(lambda p: apply(p, inputs), (params,), (v,))[1] for v in vectors]
        outputs = apply(params, inputs)
        c_b = loss.batch_factor(outputs)
        h_jvps = [loss.hessian_vp(outputs, jv) for jv in jvps]
        n = len(vectors)
        return jnp.array([[c_b * jnp.sum(jvps[i] * h_jvps[j]) for j in range(n)] for i in range(n)])

    def update_fn(updates, state, params=None, *, batch, key=None):
        if params is None:
            raise ValueError("kfac needs `params` in update(grads, state, params)")
        inputs, targets = batch
        graph = discover(params, inputs)
        init_graph = discover(params, example_inputs)
        if _signature(graph) != _signature(init_graph):
            raise ValueError(
                "the layers found on this batch differ from those found on example_inputs: "
                f"{_signature(graph)} vs {_signature(init_graph)}; pass example_inputs shaped "
                "like the training batches"
            )
        if fisher == "mc" and key is None:
            raise ValueError("fisher='mc' samples targets from the model: pass key=")
        dtype = state.damping.dtype
        count = state.count
        grads = updates
        treedef = jax.tree.structure(params)
        grad_leaves = treedef.flatten_up_to(grads)

        # 1. Statistics and their moving averages.
        def with_new_statistics(_):
            a_hat, g_hat, d_hat = statistics(graph, params, inputs, targets, key)
            decay = jnp.minimum(ema_decay, count / (count + 1.0)).astype(dtype)

            def ema(old, new):
                return tuple(
                    decay * o + (1 - decay) * n.astype(dtype) for o, n in zip(old, new, strict=True)
                )

            return (
                ema(state.a_factors, a_hat),
                ema(state.g_factors, g_hat),
                ema(state.diagonal, d_hat),
            )

        old = (state.a_factors, state.g_factors, state.diagonal)
        if statistics_every == 1:
            a_fac, g_fac, diag = with_new_statistics(None)
        else:
            a_fac, g_fac, diag = jax.lax.cond(
                count % statistics_every == 0, with_new_statistics, lambda _: old, None
            )

        # 2. Damped inverses, refreshed every `inverse_every` steps.
        lam = state.damping

        def refreshed(_):
            results = [
                factors.damped_inverses(a, g, lam) for a, g in zip(a_fac, g_fac, strict=True)
            ]
            ok = jnp.all(jnp.stack([r[2] for r in results])) if results else jnp.bool_(True)
            a_inv = tuple(
                jnp.where(ok, r[0], old_inv)
                for r, old_inv in zip(results, state.a_inverses, strict=True)
            )
            g_inv = tuple(
                jnp.where(ok, r[1], old_inv)
                for r, old_inv in zip(results, state.g_inverses, strict=True)
            )
            return a_inv, g_inv, (~ok).astype(jnp.int32)

        def kept(_):
            return state.a_inverses, state.g_inverses, jnp.int32(0)

        if inverse_every == 1:
            a_inv, g_inv, failed = refreshed(None)
        else:
            a_inv, g_inv, failed = jax.lax.cond(
                refreshes_inverses(count, inverse_every), refreshed, kept, None
            )

        # 3. The preconditioned direction Δ.
        direction = list(grad_leaves)
        for layer, ai, gi in zip(graph.layers, a_inv, g_inv, strict=True):
            bias_grad = grad_leaves[layer.bias] if layer.has_bias else None
            matrix = factors.gradient_matrix(layer, grad_leaves[layer.weight], bias_grad)
            pre = factors.precondition(ai, gi, matrix.astype(dtype))
            w, b = factors.split_gradient_matrix(
                layer, pre, bias_grad.shape if layer.has_bias else None
            )
            direction[layer.weight] = w.astype(grad_leaves[layer.weight].dtype)
            if layer.has_bias:
                direction[layer.bias] = b.astype(bias_grad.dtype)
        for i, d in zip(graph.other_leaves, diag, strict=True):
            direction[i] = (grad_leaves[i] / (d + lam)).astype(grad_leaves[i].dtype)
        direction = jax.tree.unflatten(treedef, direction)

        # 4. Step size and momentum.
        g_dot_d = tree_vdot(grads, direction).astype(dtype)
        if adaptive_step:
            v = state.velocity
            neg = jax.tree.map(jnp.negative, direction)
            gram = quadratic_terms(params, inputs, [neg, v]).astype(dtype)
            sq = jnp.array([tree_vdot(neg, neg), tree_vdot(neg, v), tree_vdot(v, v)], dtype)
            m = gram + lam * jnp.array([[sq[0], sq[1]], [sq[1], sq[2]]])
            b = -jnp.array([-g_dot_d, tree_vdot(grads, v).astype(dtype)])
            first = count == 0
            alpha_only = b[0] / jnp.where(m[0, 0] > 0, m[0, 0], 1)
            det = m[0, 0] * m[1, 1] - m[0, 1] ** 2
            safe_det = jnp.where(det > 0, det, 1)
            alpha_two = (m[1, 1] * b[0] - m[0, 1] * b[1]) / safe_det
            mu_two = (m[0, 0] * b[1] - m[0, 1] * b[0]) / safe_det
            use_two = ~first & (det > 0)
            alpha = jnp.where(use_two, alpha_two, alpha_only)
            mu = jnp.where(use_two, mu_two, 0.0)
        else:
            alpha = jnp.asarray(schedule(count), dtype)
            mu = jnp.asarray(momentum, dtype)
        if norm_constraint is not None:
            # ν = min(1, √(c / (α²|Δᵀ∇|))): Δᵀ∇ ≈ ΔᵀFΔ, the step's KL to second order.
            kl = alpha**2 * jnp.abs(g_dot_d)
            nu = jnp.minimum(1.0, jnp.sqrt(norm_constraint / jnp.maximum(kl, 1e-30)))
        else:
            nu = jnp.ones([], dtype)
        scale = -(alpha * nu)
        new_updates = jax.tree.map(
            lambda d, v: (scale * d + mu * v).astype(d.dtype), direction, state.velocity
        )
        accepted = tree_all_finite(new_updates)
        new_updates = jax.tree.map(lambda u: jnp.where(accepted, u, jnp.zeros_like(u)), new_updates)

        # 5. Levenberg–Marquardt damping.
        rho = state.rho
        if adapt_damping:

            def adapted(_):
                q = quadratic_terms(params, inputs, [new_updates])[0, 0]
                predicted = tree_vdot(grads, new_updates).astype(dtype) + 0.5 * (
                    q.astype(dtype) + lam * tree_vdot(new_updates, new_updates).astype(dtype)
                )
                before = loss(apply(params, inputs), targets).astype(dtype)
                after = loss(
                    apply(optax.apply_updates(params, new_updates), inputs), targets
                ).astype(dtype)
                r = jnp.where(predicted < 0, (after - before) / jnp.minimum(predicted, -1e-30), 0.0)
                new_lam = jnp.where(r < 0.25, lam / omega, jnp.where(r > 0.75, lam * omega, lam))
                return jnp.clip(new_lam, min_damping, max_damping).astype(dtype), r

            lam, rho = jax.lax.cond(
                accepted & (count % damping_every == damping_every - 1),
                adapted,
                lambda _: (lam, rho),
                None,
            )

        new_state = KfacState(
            count=count + 1,
            damping=lam,
            a_factors=a_fac,
            g_factors=g_fac,
            a_inverses=a_inv,
            g_inverses=g_inv,
            diagonal=diag,
            velocity=new_updates,
            step_size=jnp.where(accepted, alpha * nu, 0.0).astype(dtype),
            momentum=jnp.where(accepted, mu, 0.0).astype(dtype),
            rho=rho,
            num_rejected=state.num_rejected + (~accepted).astype(jnp.int32),
            num_failed_inverses=state.num_failed_inverses + failed,
        )
        return new_updates, new_state

    return optax.GradientTransformationExtraArgs(init_fn, update_fn)
