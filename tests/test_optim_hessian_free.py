"""Tests of :func:`natgrad.optim.hessian_free` against dense linear algebra.

References are built here densely in float64: C by ``jax.hessian`` / ``jax.jacobian`` of the
raveled objective, the step by ``np.linalg.solve``. Problems:

* a linear model with squared error (a quadratic objective: GGN = Hessian, and one undamped
  step with α = 1 lands on the least-squares solution);
* a small tanh MLP with softmax cross-entropy (non-quadratic; every curvature).
"""

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402
from optimizer_harness import run_harness  # noqa: E402

import natgrad  # noqa: E402
from natgrad import losses  # noqa: E402

B, D_IN, HIDDEN, C = 24, 3, 5, 3


def make_classification(seed=0, dtype=jnp.float64):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B, D_IN))
    w = rng.standard_normal((D_IN, C))
    y = np.argmax(x @ w + 0.3 * rng.standard_normal((B, C)), axis=1)
    params = {
        "w1": 0.5 * rng.standard_normal((D_IN, HIDDEN)),
        "b1": 0.1 * rng.standard_normal(HIDDEN),
        "w2": 0.5 * rng.standard_normal((HIDDEN, C)),
    }
    params = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return params, (jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32))


def mlp(params, x):
    return jnp.tanh(x @ params["w1"] + params["b1"]) @ params["w2"]


def linear(params, x):
    return x @ params["w"] + params["b"]


CE = losses.SoftmaxCrossEntropy()
SE = losses.squared_error()


def objective(apply, loss, batch):
    x, y = batch
    return lambda p: loss(apply(p, x), y)


def dense_curvature(name, apply, loss, params, batch):
    """C as a dense matrix from jax.jacobian / jax.hessian / per-example gradients."""
    x, y = batch
    flat, unravel = ravel_pytree(params)
    if name == "hessian":
        return jax.hessian(lambda f: loss(apply(unravel(f), x), y))(flat)
    if name == "empirical_fisher":

        def example_grad(xi, yi):
            return jax.grad(lambda f: loss(apply(unravel(f), xi[None]), yi[None]))(flat)

        g = jax.vmap(example_grad)(x, y)
        return g.T @ g / x.shape[0]
    assert name in ("ggn", "fisher")
    outputs = apply(params, x)
    jac = jax.jacobian(lambda f: apply(unravel(f), x))(flat)  # (B, C, P)
    out_hess = jax.vmap(jax.hessian(lambda o, t: loss(o[None], t[None])))(outputs, y)  # per ex.
    # ℓᵢ of a batch of one has c_B = 1; the mean over the batch gives the 1/B.
    return jnp.einsum("bip,bij,bjq->pq", jac, out_hess, jac) / x.shape[0]


def exact_settings(**overrides):
    """Options under which one update is exactly −α(C + λI)⁻¹g: fixed λ, cold, tight CG."""
    settings = dict(
        damping=1e-2,
        adapt_damping=False,
        warm_start_decay=0.0,
        line_search=False,
        cg_max_iterations=200,
        cg_rtol=1e-13,
        cg_progress_tolerance=None,
    )
    settings.update(overrides)
    return settings


@pytest.mark.parametrize("name", ["ggn", "fisher", "empirical_fisher", "hessian"])
def test_one_step_is_the_damped_newton_direction(name):
    params, batch = make_classification()
    lam = 0.5 if name == "hessian" else 1e-2  # keeps H + λI positive definite here
    tx = natgrad.hessian_free(mlp, CE, curvature=name, **exact_settings(damping=lam))
    grads = jax.grad(objective(mlp, CE, batch))(params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=batch)
    dense = dense_curvature(name, mlp, CE, params, batch)
    g = ravel_pytree(grads)[0]
    expected = -np.linalg.solve(dense + lam * np.eye(g.size), g)
    got = ravel_pytree(updates)[0]
    # cond(C + λI) < 1e4 here; CG to rtol 1e-13 leaves ≈ 1e-9 relative error in float64.
    np.testing.assert_allclose(got, expected, rtol=1e-8, atol=1e-10 * np.abs(expected).max())
    assert int(state.num_rejected) == 0
    assert float(state.step_size) == 1.0


def test_fisher_mc_step_matches_dense_sampled_fisher():
    params, batch = make_classification(1)
    key = jax.random.PRNGKey(3)
    lam = 1e-2
    tx = natgrad.hessian_free(
        mlp, CE, curvature="fisher_mc", num_mc_samples=4, **exact_settings(damping=lam)
    )
    grads = jax.grad(objective(mlp, CE, batch))(params)
    updates, _ = tx.update(grads, tx.init(params), params, batch=batch, key=key)
    op = natgrad.curvature.fisher_mc(mlp, CE, params, batch, key=key, num_samples=4)
    dense = op.as_matrix()  # the operator itself is tested densely in test_curvature.py
    g = ravel_pytree(grads)[0]
    expected = -np.linalg.solve(dense + lam * np.eye(g.size), g)
    np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8)


def test_one_undamped_step_solves_least_squares():
    """Quadratic objective, GGN = Hessian: θ − C⁻¹g is the least-squares solution."""
    rng = np.random.default_rng(2)
    x = jnp.asarray(rng.standard_normal((40, 4)))
    y = jnp.asarray(rng.standard_normal((40, 2)))
    params = {"w": jnp.asarray(rng.standard_normal((4, 2))), "b": jnp.zeros(2)}
    tx = natgrad.hessian_free(linear, SE, **exact_settings(damping=1e-12, min_damping=1e-12))
    grads = jax.grad(objective(linear, SE, (x, y)))(params)
    updates, _ = tx.update(grads, tx.init(params), params, batch=(x, y))
    new = optax.apply_updates(params, updates)
    design = np.hstack([np.asarray(x), np.ones((40, 1))])
    solution, *_ = np.linalg.lstsq(design, np.asarray(y), rcond=None)
    # cond(XᵀX) ≈ 3 here: 1e-9 covers CG's rtol and λ = 1e-12.
    np.testing.assert_allclose(new["w"], solution[:4], rtol=1e-9)
    np.testing.assert_allclose(new["b"], solution[4], rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize(("initial_damping", "expected"), [(3.0, "down"), (1e-3, "up")])
def test_reduction_ratio_and_levenberg_marquardt_rule(initial_damping, expected):
    """ρ = ΔL / q(δ) recomputed densely, and λ follows ρ < ¼ ⇒ ×3/2, ρ > ¾ ⇒ ×2/3.

    From a large λ the steps are short and the model is good (ρ > ¾: λ falls); from a tiny λ
    the full GGN-Newton steps overshoot on this non-quadratic loss (ρ < ¼: λ grows).
    """
    params, batch = make_classification(4)
    tx = natgrad.hessian_free(
        mlp,
        CE,
        damping=initial_damping,
        learning_rate=1.0,
        line_search=False,
        warm_start_decay=0.0,
        cg_max_iterations=100,
        cg_rtol=1e-12,
        cg_progress_tolerance=None,
    )
    loss_fn = objective(mlp, CE, batch)
    state = tx.init(params)
    seen = set()
    step = jax.jit(tx.update)
    for _ in range(6):
        grads = jax.grad(loss_fn)(params)
        lam = float(state.damping)
        updates, state = step(grads, state, params, batch=batch)
        dense = dense_curvature("ggn", mlp, CE, params, batch)
        d = np.asarray(ravel_pytree(updates)[0])
        g = np.asarray(ravel_pytree(grads)[0])
        predicted = g @ d + 0.5 * d @ (dense + lam * np.eye(d.size)) @ d
        new_params = optax.apply_updates(params, updates)
        actual = loss_fn(new_params) - loss_fn(params)
        rho = actual / predicted
        np.testing.assert_allclose(float(state.rho), rho, rtol=1e-7)  # CG solution to 1e-12
        np.testing.assert_allclose(float(state.predicted_change), predicted, rtol=1e-7)
        expected_lam = lam * 1.5 if rho < 0.25 else lam * (2 / 3) if rho > 0.75 else lam
        expected_lam = min(max(expected_lam, 1e-6), 1e6)
        np.testing.assert_allclose(float(state.damping), expected_lam, rtol=1e-12)
        seen.add("up" if rho < 0.25 else "down" if rho > 0.75 else "keep")
        params = new_params
    assert expected in seen, seen


def test_line_search_shrinks_a_too_long_step_and_armijo_holds():
    params, batch = make_classification(5)
    loss_fn = objective(mlp, CE, batch)
    tx = natgrad.hessian_free(
        mlp, CE, learning_rate=64.0, damping=1e-3, adapt_damping=False, line_search_max_steps=20
    )
    grads = jax.grad(loss_fn)(params)
    updates, state = tx.update(grads, tx.init(params), params, batch=batch)
    alpha = float(state.step_size)
    assert 0 < alpha < 64.0
    assert np.log2(64.0 / alpha) == pytest.approx(round(np.log2(64.0 / alpha)))  # halvings
    new = loss_fn(optax.apply_updates(params, updates))
    g_dot_d = ravel_pytree(grads)[0] @ ravel_pytree(updates)[0]
    assert new <= loss_fn(params) + 1e-2 * g_dot_d  # Armijo with c = 1e-2 (δ = αp)


def test_a_step_that_fails_the_line_search_is_rejected():
    params, batch = make_classification(5)
    tx = natgrad.hessian_free(
        mlp, CE, learning_rate=1e6, damping=1e-3, line_search_max_steps=1, momentum=0.5
    )
    grads = jax.grad(objective(mlp, CE, batch))(params)
    updates, state = tx.update(grads, tx.init(params), params, batch=batch)
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    assert int(state.num_rejected) == 1
    assert float(state.step_size) == 0.0
    assert float(state.rho) == -np.inf
    np.testing.assert_allclose(float(state.damping), 1.5e-3)


def test_non_finite_targets_inside_jit_give_a_rejected_step_not_nan():
    rng = np.random.default_rng(6)
    x = jnp.asarray(rng.standard_normal((10, 4)))
    y = jnp.asarray(rng.standard_normal((10, 2))).at[3, 1].set(jnp.nan)
    params = {"w": jnp.zeros((4, 2)), "b": jnp.zeros(2)}
    tx = natgrad.hessian_free(linear, SE)
    grads = jax.tree.map(jnp.zeros_like, params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=(x, y))
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    assert int(state.num_rejected) == 1
    assert all(np.all(np.isfinite(np.asarray(s))) for s in jax.tree.leaves(state.cg_solution))
    with pytest.raises(ValueError, match="NaN"):  # outside jit the batch is checked eagerly
        tx.update(grads, tx.init(params), params, batch=(x, y))


def test_curvature_minibatch_uses_the_first_examples():
    params, batch = make_classification(7)
    k = 10
    lam = 1e-2
    tx = natgrad.hessian_free(mlp, CE, curvature_batch_size=k, **exact_settings(damping=lam))
    grads = jax.grad(objective(mlp, CE, batch))(params)  # full-batch gradient
    updates, state = tx.update(grads, tx.init(params), params, batch=batch)
    x, y = batch
    dense = dense_curvature("ggn", mlp, CE, params, (x[:k], y[:k]))
    g = ravel_pytree(grads)[0]
    expected = -np.linalg.solve(dense + lam * np.eye(g.size), g)
    np.testing.assert_allclose(ravel_pytree(updates)[0], expected, rtol=1e-8)
    np.testing.assert_allclose(float(state.loss), objective(mlp, CE, batch)(params), rtol=1e-14)


def test_momentum_adds_the_previous_update():
    params, batch = make_classification(8)
    mu = 0.7
    settings = exact_settings(cg_max_iterations=3, cg_rtol=0.0)
    plain = natgrad.hessian_free(mlp, CE, **settings)
    heavy = natgrad.hessian_free(mlp, CE, momentum=mu, **settings)
    loss_fn = objective(mlp, CE, batch)
    g0 = jax.grad(loss_fn)(params)
    u0, s_heavy = heavy.update(g0, heavy.init(params), params, batch=batch)
    p1 = optax.apply_updates(params, u0)
    g1 = jax.grad(loss_fn)(p1)
    u1, _ = heavy.update(g1, s_heavy, p1, batch=batch)
    plain_u1, _ = plain.update(g1, plain.init(p1), p1, batch=batch)
    expected = jax.tree.map(lambda a, b: a + mu * b, plain_u1, u0)
    np.testing.assert_allclose(ravel_pytree(u1)[0], ravel_pytree(expected)[0], rtol=1e-12)


def test_warm_start_and_cg_backtracking():
    """The warm start is β·p_{t−1}; backtracking never ends above the final CG iterate."""
    params, batch = make_classification(9)
    loss_fn = objective(mlp, CE, batch)
    common = dict(damping=1e-4, adapt_damping=False, line_search=False, cg_max_iterations=30)
    final = natgrad.hessian_free(mlp, CE, **common)
    back = natgrad.hessian_free(mlp, CE, cg_backtracking=True, **common)
    grads = jax.grad(loss_fn)(params)
    u_final, s_final = final.update(grads, final.init(params), params, batch=batch)
    u_back, s_back = back.update(grads, back.init(params), params, batch=batch)
    assert loss_fn(optax.apply_updates(params, u_back)) <= loss_fn(
        optax.apply_updates(params, u_final)
    )
    # The stored warm start is the final CG solution, backtracked or not.
    np.testing.assert_allclose(
        ravel_pytree(s_back.cg_solution)[0], ravel_pytree(s_final.cg_solution)[0], rtol=1e-12
    )


def _mlp_loss(params, *, batch, key=None):
    del key
    return objective(mlp, CE, batch)(params)


@pytest.mark.parametrize("name", ["ggn", "fisher_mc", "empirical_fisher", "hessian"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_optimizer_harness(name, dtype):
    params, batch = make_classification(10, dtype)
    initial = float(_mlp_loss(params, batch=batch))
    base_key = jax.random.PRNGKey(0)

    def extra_args(i):
        return {"batch": batch, "key": jax.random.fold_in(base_key, i)}

    def converged(final_params, losses_seen):
        return losses_seen[-1] < 0.5 * initial

    result = run_harness(
        lambda: natgrad.hessian_free(
            mlp, CE, curvature=name, damping=1.0, cg_max_iterations=10, num_mc_samples=2
        ),
        params,
        _mlp_loss,
        steps=12,
        converged=converged,
        extra_args_fn=extra_args,
        scan_rtol=1e-6 if dtype == jnp.float64 else 5e-3,
    )
    assert int(result.state.count) == 12


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown curvature 'gauss'"):
        natgrad.hessian_free(mlp, CE, curvature="gauss")
    with pytest.raises(ValueError, match="damping must be positive"):
        natgrad.hessian_free(mlp, CE, damping=0.0)
    with pytest.raises(ValueError, match="momentum"):
        natgrad.hessian_free(mlp, CE, momentum=1.0)
    with pytest.raises(TypeError, match="NegativeLogLikelihood"):
        natgrad.hessian_free(mlp, lambda o, t: 0.0)
    params, batch = make_classification()
    tx = natgrad.hessian_free(mlp, CE, curvature="fisher_mc")
    grads = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match="key="):
        tx.update(grads, tx.init(params), params, batch=batch)
    with pytest.raises(ValueError, match="params"):
        tx.update(grads, tx.init(params), batch=batch, key=jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="pair"):
        natgrad.hessian_free(mlp, CE).update(grads, tx.init(params), params, batch=batch[0])
