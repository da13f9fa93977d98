"""Tests of K-FAC: layer discovery, Kronecker factors against dense references, the optimizer.

References, all float64:

* the exact GGN/Fisher as a dense matrix (:func:`natgrad.curvature.ggn` ``.as_matrix()``, itself
  tested against ``jax.jacobian``/``jax.hessian`` in test_curvature.py), whose layer blocks equal
  A ⊗ G exactly for a deep linear network on one example with the KFLR ("exact") factor;
* closed forms for a one-layer softmax regression (s = Wᵀx + b is the output): G_exact =
  (1/B) Σ (diag p − ppᵀ) and G_empirical = (1/B) Σ (p − y)(p − y)ᵀ;
* the layer's own forward pass and ``jax.grad``: s_r = Wᵀa_r + b and ∇_W = Σ_r a_r g_rᵀ
  for the rows of :class:`natgrad.kronecker.Layer` (this pins the patch and kernel layouts of
  convolutions);
* the damped direction against ``np.linalg.solve`` with ((A + π√λI) ⊗ (G + √λ/π I)) built by
  ``np.kron``.

Tolerances: 1e-10 relative for identities that are exact in exact arithmetic (the matrices are
small and well conditioned, so rounding is ≈ 1e-15 × a few hundred operations); Monte Carlo
estimates get a tolerance derived from their standard error.
"""

from __future__ import annotations

import jax

jax.config.update("jax_enable_x64", True)

import equinox as eqx  # noqa: E402
import flax.linen as nn  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
from optimizer_harness import run_harness  # noqa: E402

import natgrad  # noqa: E402
from natgrad import curvature, losses  # noqa: E402
from natgrad.kronecker import factors, find_layers  # noqa: E402
from natgrad.optim.kfac import refreshes_inverses  # noqa: E402

CE = losses.SoftmaxCrossEntropy()


def _normal(key, shape, scale=1.0):
    return scale * jax.random.normal(key, shape, jnp.float64)


def plain_mlp(params, x):
    h = jnp.tanh(x @ params["w1"] + params["b1"])
    return h @ params["w2"].T + params["b2"]  # W stored (out, in), as in torch


def plain_params(key, d_in=3, hidden=4, d_out=3):
    k = jax.random.split(key, 4)
    return {
        "w1": _normal(k[0], (d_in, hidden), 0.7),
        "b1": _normal(k[1], (hidden,), 0.3),
        "w2": _normal(k[2], (d_out, hidden), 0.7),
        "b2": _normal(k[3], (d_out,), 0.3),
    }


def conv_apply(params, x):
    """NHWC conv (stride 2, SAME) + relu + conv (VALID, dilation 2) + dense, with biases."""
    dn = ("NHWC", "HWIO", "NHWC")
    h = jax.lax.conv_general_dilated(x, params[0]["w"], (2, 2), "SAME", dimension_numbers=dn)
    h = jnp.tanh(h + params[0]["b"])
    h = jax.lax.conv_general_dilated(
        h, params[1]["w"], (1, 1), "VALID", rhs_dilation=(2, 2), dimension_numbers=dn
    )
    h = jnp.tanh(h + params[1]["b"])
    return h.reshape(h.shape[0], -1) @ params[2]["w"] + params[2]["b"]


def conv_params(key):
    k = jax.random.split(key, 6)
    return [
        {"w": _normal(k[0], (3, 3, 2, 3), 0.5), "b": _normal(k[1], (3,), 0.2)},
        {"w": _normal(k[2], (2, 2, 3, 4), 0.5), "b": _normal(k[3], (4,), 0.2)},
        {"w": _normal(k[4], (4 * 2 * 2, 3), 0.5), "b": _normal(k[5], (3,), 0.2)},
    ]


class FlaxNet(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.Conv(3, (3, 3), strides=2, param_dtype=jnp.float64)(x)
        x = nn.tanh(x).reshape(x.shape[0], -1)
        x = nn.Dense(5, param_dtype=jnp.float64)(x)
        x = nn.LayerNorm(param_dtype=jnp.float64)(x)  # scale and bias: not a layer
        return nn.Dense(3, param_dtype=jnp.float64)(x)


def equinox_model(key):
    k1, k2 = jax.random.split(key)
    model = eqx.nn.Sequential(
        [
            eqx.nn.Conv2d(2, 3, 3, stride=2, key=k1, dtype=jnp.float64),
            eqx.nn.Lambda(jnp.tanh),
            eqx.nn.Lambda(jnp.ravel),
            eqx.nn.Linear(3 * 3 * 3, 3, key=k2, dtype=jnp.float64),
        ]
    )
    params, static = eqx.partition(model, eqx.is_array)

    def apply(params, x):
        return jax.vmap(eqx.combine(params, static))(x)

    return apply, params


# --------------------------------------------------------------------------------------------
# Layer discovery
# --------------------------------------------------------------------------------------------


def _described(graph):
    return [(l.kind, l.weight, l.bias) for l in graph.layers]


def test_plain_function_layers_and_biases_are_found():
    params = plain_params(jax.random.PRNGKey(0))
    graph = find_layers(plain_mlp, params, jnp.zeros((5, 3)))
    # leaves in sorted-key order: b1, b2, w1, w2
    assert _described(graph) == [("dense", 2, 0), ("dense", 3, 1)]
    assert graph.other_leaves == ()
    assert graph.layers[1].weight_in_axis == 1  # W2 is stored (out, in)


def test_flax_layers_found_and_layernorm_falls_back():
    x = _normal(jax.random.PRNGKey(1), (2, 6, 6, 2))
    net = FlaxNet()
    params = net.init(jax.random.PRNGKey(0), x)
    graph = find_layers(net.apply, params, x)
    names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
    found = {(l.kind, names[l.weight], names[l.bias]) for l in graph.layers}
    assert found == {
        ("conv", "['params']['Conv_0']['kernel']", "['params']['Conv_0']['bias']"),
        ("dense", "['params']['Dense_0']['kernel']", "['params']['Dense_0']['bias']"),
        ("dense", "['params']['Dense_1']['kernel']", "['params']['Dense_1']['bias']"),
    }
    assert {names[i] for i in graph.other_leaves} == {
        "['params']['LayerNorm_0']['bias']",
        "['params']['LayerNorm_0']['scale']",
    }


def test_equinox_layers_found_under_vmap():
    apply, params = equinox_model(jax.random.PRNGKey(0))
    graph = find_layers(apply, params, jnp.zeros((4, 2, 7, 7)))
    assert [(l.kind, l.has_bias) for l in graph.layers] == [("conv", True), ("dense", True)]
    assert graph.other_leaves == ()
    assert graph.layers[1].weight_operand == 0  # W @ x


def test_layers_inside_jit_are_found_and_tied_weights_fall_back():
    @jax.jit
    def dense(w, b, x):
        return x @ w + b

    params = {"b": jnp.ones(2), "w": jnp.ones((3, 2))}
    graph = find_layers(lambda p, x: dense(p["w"], p["b"], x), params, jnp.ones((4, 3)))
    assert _described(graph) == [("dense", 1, 0)]

    def tied(p, x):  # an autoencoder with W and Wᵀ: one leaf, two uses
        return jnp.tanh(x @ p["w"]) @ p["w"].T

    graph = find_layers(tied, {"w": jnp.ones((3, 2))}, jnp.ones((4, 3)))
    assert graph.layers == () and graph.other_leaves == (0,)

    def scaled(p, x):  # a bias added twice is not a bias of one layer
        return (x @ p["w"] + p["b"]) * p["b"]

    graph = find_layers(scaled, {"b": jnp.ones(2), "w": jnp.ones((3, 2))}, jnp.ones((4, 3)))
    assert _described(graph) == [("dense", 1, None)] and graph.other_leaves == (0,)


@pytest.mark.parametrize("model", ["plain", "conv", "flax", "equinox"])
def test_rows_reproduce_the_layer_and_its_gradient(model):
    """s_r = Wᵀa_r + b from the rows, and ∇_W = Σ_r a_r g_rᵀ against jax.grad."""
    key = jax.random.PRNGKey(3)
    if model == "plain":
        apply, params, x = plain_mlp, plain_params(key), _normal(key, (5, 3))
    elif model == "conv":
        apply, params, x = conv_apply, conv_params(key), _normal(key, (2, 7, 7, 2))
    elif model == "flax":
        x = _normal(key, (2, 6, 6, 2))
        apply, params = FlaxNet().apply, FlaxNet().init(key, x)
    else:
        apply, params = equinox_model(key)
        x = _normal(key, (3, 2, 7, 7))
    graph = find_layers(apply, params, x)
    leaves = jax.tree.leaves(params)
    eps = [jnp.zeros(s.shape, s.dtype) for s in graph.perturbation_shapes()]
    outputs, layer_inputs = jax.jit(graph.evaluate)(params, x, eps)
    np.testing.assert_allclose(outputs, apply(params, x), rtol=1e-13, atol=1e-13)
    y = jnp.arange(outputs.shape[0]) % outputs.shape[-1]

    def loss_of(p, e):
        return CE(graph.evaluate(p, x, e)[0], y)

    param_grads, eps_grads = jax.jit(jax.grad(loss_of, argnums=(0, 1)))(params, eps)
    grad_leaves = jax.tree.leaves(param_grads)
    for layer, a, g, s_shape in zip(
        graph.layers, layer_inputs, eps_grads, graph.perturbation_shapes(), strict=True
    ):
        rows = layer.input_rows(a)
        w = layer.weight_matrix(leaves[layer.weight])
        s = rows @ w
        if layer.has_bias:
            s = s + leaves[layer.bias].reshape(1, -1)
        # the layer's output, recomputed from the rows, against the perturbation's shape and a
        # forward pass of the equation itself (ε = 0, so ∂/∂ε reads the same point)
        assert s.shape == (int(np.prod(s_shape.shape)) // layer.out_features, layer.out_features)
        g_rows = layer.output_rows(g)
        np.testing.assert_allclose(
            layer.weight_matrix(grad_leaves[layer.weight]), rows.T @ g_rows, rtol=1e-10, atol=1e-14
        )
        if layer.has_bias:
            np.testing.assert_allclose(
                grad_leaves[layer.bias].reshape(-1), g_rows.sum(0), rtol=1e-10, atol=1e-14
            )
        np.testing.assert_array_equal(
            layer.matrix_to_weight(layer.weight_matrix(leaves[layer.weight])), leaves[layer.weight]
        )


def test_conv_rows_times_kernel_is_the_convolution():
    params = conv_params(jax.random.PRNGKey(4))
    x = _normal(jax.random.PRNGKey(5), (2, 7, 7, 2))
    graph = find_layers(conv_apply, params, x)
    layer = graph.layers[0]
    eps = [jnp.zeros(s.shape, s.dtype) for s in graph.perturbation_shapes()]
    _, (a, *_) = graph.evaluate(params, x, eps)
    direct = jax.lax.conv_general_dilated(
        x, params[0]["w"], (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
    )
    from_rows = layer.input_rows(a) @ layer.weight_matrix(params[0]["w"])
    np.testing.assert_allclose(from_rows, layer.output_rows(direct), rtol=1e-12, atol=1e-13)
    # The patches themselves, independently: ∂s[b, i, j, o]/∂W[:, :, :, o] is the patch under
    # output position (b, i, j), whatever o; flatten it in the weight matrix's (in, kh, kw) order.
    jac = jax.jacobian(
        lambda w: jax.lax.conv_general_dilated(
            x, w, (2, 2), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
    )(params[0]["w"])  # (B, H', W', O, kh, kw, I, O)
    patches = jnp.transpose(jac[:, :, :, 0, :, :, :, 0], (0, 1, 2, 5, 3, 4))
    patches = patches.reshape(-1, layer.in_features)
    np.testing.assert_allclose(layer.input_rows(a), patches, rtol=1e-13, atol=1e-14)
    a_factor = factors.input_factor(layer, a)  # with the bias's homogeneous coordinate
    ones = jnp.ones((patches.shape[0], 1))
    expected = jnp.concatenate([patches, ones], 1).T @ jnp.concatenate([patches, ones], 1)
    np.testing.assert_allclose(a_factor, expected / patches.shape[0], rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Factors against dense references
# --------------------------------------------------------------------------------------------


def deep_linear(params, x):
    h = x @ params["w1"] + params["b1"]
    h = params["w2"] @ h.T  # (out, in) layout, then back
    return h.T + params["b2"]


def _block_indices(params, weight, bias, weight_in_axis):
    """Positions of [vec W (rows = inputs); b] in ravel_pytree(params), row-major (in, out)."""
    names = sorted(params)
    offsets = dict(zip(names, np.cumsum([0] + [params[n].size for n in names[:-1]]), strict=True))
    w = params[weight]
    d_in, d_out = w.shape if weight_in_axis == 0 else w.shape[::-1]
    ids = []
    for i in range(d_in + 1):
        for j in range(d_out):
            if i == d_in:
                ids.append(offsets[bias] + j)
            elif weight_in_axis == 0:
                ids.append(offsets[weight] + i * d_out + j)
            else:
                ids.append(offsets[weight] + j * d_in + i)
    return np.array(ids)


def test_kronecker_blocks_equal_the_exact_fisher_for_a_deep_linear_network():
    k = jax.random.split(jax.random.PRNGKey(6), 5)
    params = {
        "w1": _normal(k[0], (3, 4)),
        "b1": _normal(k[1], (4,)),
        "w2": _normal(k[2], (5, 4)),
        "b2": _normal(k[3], (5,)),
    }
    x, y = _normal(k[4], (1, 3)), jnp.array([2])
    tx = natgrad.kfac(deep_linear, CE, x, fisher="exact", ema_decay=0.0)
    grads = jax.grad(lambda p: CE(deep_linear(p, x), y))(params)
    _, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=(x, y))
    dense = curvature.ggn(deep_linear, CE, params, (x, y)).as_matrix()
    for l, (w, b, axis) in enumerate([("w1", "b1", 0), ("w2", "b2", 1)]):
        ids = _block_indices(params, w, b, axis)
        block = np.asarray(dense)[np.ix_(ids, ids)]
        kron = np.kron(state.a_factors[l], state.g_factors[l])
        np.testing.assert_allclose(kron, block, rtol=1e-10, atol=1e-12 * np.abs(block).max())


def softmax_regression(params, x):
    return x @ params["w"] + params["b"]


def _regression_problem(batch=6, seed=7):
    k = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = {"b": _normal(k[0], (3,), 0.5), "w": _normal(k[1], (4, 3), 0.5)}
    x = _normal(k[2], (batch, 4))
    y = jnp.arange(batch) % 3
    return params, x, y


@pytest.mark.parametrize("fisher", ["exact", "empirical"])
def test_factors_of_softmax_regression_match_closed_forms(fisher):
    params, x, y = _regression_problem()
    tx = natgrad.kfac(softmax_regression, CE, x, fisher=fisher, ema_decay=0.0)
    grads = jax.grad(lambda p: CE(softmax_regression(p, x), y))(params)
    _, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=(x, y))
    p = jax.nn.softmax(softmax_regression(params, x))
    if fisher == "exact":
        expected_g = jnp.mean(jax.vmap(lambda q: jnp.diag(q) - jnp.outer(q, q))(p), axis=0)
    else:
        r = p - jax.nn.one_hot(y, 3)
        expected_g = r.T @ r / x.shape[0]
    x1 = jnp.concatenate([x, jnp.ones((x.shape[0], 1))], axis=1)
    np.testing.assert_allclose(state.a_factors[0], x1.T @ x1 / x.shape[0], rtol=1e-12)
    np.testing.assert_allclose(state.g_factors[0], expected_g, rtol=1e-10, atol=1e-15)


def test_monte_carlo_output_factor_converges_to_the_exact_one():
    params, x, y = _regression_problem()
    grads = jax.grad(lambda p: CE(softmax_regression(p, x), y))(params)
    exact = natgrad.kfac(softmax_regression, CE, x, fisher="exact", ema_decay=0.0)
    g_exact = jax.jit(exact.update)(grads, exact.init(params), params, batch=(x, y))[1].g_factors[0]
    errors = []
    for s in (16, 4096):
        tx = natgrad.kfac(softmax_regression, CE, x, fisher="mc", num_samples=s, ema_decay=0.0)
        _, st = jax.jit(tx.update)(
            grads, tx.init(params), params, batch=(x, y), key=jax.random.PRNGKey(s)
        )
        errors.append(float(jnp.linalg.norm(st.g_factors[0] - g_exact) / jnp.linalg.norm(g_exact)))
    # The relative standard error shrinks like 1/√(S·B); at S·B = 24576 it is ≈ 0.01, so 0.05
    # is five of them, and the estimate must have improved on the 16-sample one.
    assert errors[1] < 0.05 and errors[1] < errors[0], errors


def test_damped_direction_matches_the_dense_solve_and_the_diagonal_fallback():
    """Δ = ((A + π√λI) ⊗ (G + √λ/π I))⁻¹ vec ∇ per layer and ∇/(D + λ) elsewhere."""

    def scaled_mlp(params, x):  # "s" is a parameter outside any layer
        h = jnp.tanh(x @ params["w1"] + params["b1"]) * params["s"]
        return h @ params["w2"]

    k = jax.random.split(jax.random.PRNGKey(8), 6)
    params = {
        "b1": _normal(k[0], (4,), 0.3),
        "s": 1.0 + _normal(k[1], (4,), 0.1),
        "w1": _normal(k[2], (3, 4), 0.7),
        "w2": _normal(k[3], (4, 3), 0.7),
    }
    x, y = _normal(k[4], (8, 3)), jnp.arange(8) % 3
    lam = 0.3
    tx = natgrad.kfac(
        scaled_mlp,
        CE,
        x,
        damping=lam,
        learning_rate=1.0,
        momentum=0.0,
        norm_constraint=None,
        ema_decay=0.0,
        inverse_every=1,
    )
    grads = jax.grad(lambda p: CE(scaled_mlp(p, x), y))(params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=(x, y), key=k[5])
    for l, (w, b) in enumerate([("w1", "b1"), ("w2", None)]):
        a, g = np.asarray(state.a_factors[l]), np.asarray(state.g_factors[l])
        pi = np.sqrt((np.trace(a) / a.shape[0]) / (np.trace(g) / g.shape[0]))
        damped = np.kron(
            a + pi * np.sqrt(lam) * np.eye(a.shape[0]), g + np.sqrt(lam) / pi * np.eye(g.shape[0])
        )
        grad_matrix = np.asarray(grads[w])
        update_matrix = np.asarray(updates[w])
        if b is not None:
            grad_matrix = np.vstack([grad_matrix, np.asarray(grads[b])[None]])
            update_matrix = np.vstack([update_matrix, np.asarray(updates[b])[None]])
        expected = -np.linalg.solve(damped, grad_matrix.ravel())
        np.testing.assert_allclose(update_matrix.ravel(), expected, rtol=1e-10)
    (diag,) = state.diagonal
    np.testing.assert_allclose(updates["s"], -grads["s"] / (np.asarray(diag) + lam), rtol=1e-12)
    assert np.all(np.asarray(diag) > 0)


def test_moving_averages_and_inverse_refresh():
    params, x, y = _regression_problem()
    x2 = x[::-1] * 1.5
    decay = 0.8
    tx = natgrad.kfac(
        softmax_regression,
        CE,
        x,
        fisher="exact",
        ema_decay=decay,
        inverse_every=5,
        statistics_every=1,
        damping=0.1,
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    inverses = []
    for t in range(8):
        xt = x if t % 2 == 0 else x2
        grads = jax.grad(lambda p, xt=xt: CE(softmax_regression(p, xt), y))(params)
        _, state = update(grads, state, params, batch=(xt, y))
        inverses.append(state.a_inverses[0])
        if t == 1:
            a_after_two = state.a_factors[0]
    layer = find_layers(softmax_regression, params, x).layers[0]
    a1, a2 = factors.input_factor(layer, x), factors.input_factor(layer, x2)
    # ε₀ = 0 (the first estimate is taken whole), ε₁ = min(0.8, 1/2) = 1/2
    np.testing.assert_allclose(a_after_two, 0.5 * a1 + 0.5 * a2, rtol=1e-12)
    # T = 5: refreshed at t = 0, then 1, 2, 4 (powers of two below T), then 5; kept at 3, 6, 7
    refreshed = [not np.array_equal(inverses[t], inverses[t - 1]) for t in range(1, 8)]
    assert refreshed == [True, True, False, True, True, False, False]
    assert int(state.count) == 8 and int(state.num_failed_inverses) == 0
    # statistics_every = 2: the factors move at t = 0, 2, … and stay at t = 1, 3
    sparse = natgrad.kfac(softmax_regression, CE, x, fisher="exact", statistics_every=2)
    update, state, seen = jax.jit(sparse.update), sparse.init(params), []
    for t in range(4):
        xt = x if t == 0 else x2
        grads = jax.grad(lambda p, xt=xt: CE(softmax_regression(p, xt), y))(params)
        _, state = update(grads, state, params, batch=(xt, y))
        seen.append(state.a_factors[0])
    np.testing.assert_array_equal(seen[0], seen[1])
    np.testing.assert_allclose(seen[0], a1, rtol=1e-12)
    assert not np.allclose(seen[1], seen[2])
    np.testing.assert_array_equal(seen[2], seen[3])
    schedule = [bool(refreshes_inverses(t, 5)) for t in range(12)]
    assert [t for t in range(12) if schedule[t]] == [0, 1, 2, 4, 5, 10]


# --------------------------------------------------------------------------------------------
# The optimizer
# --------------------------------------------------------------------------------------------


def _classification(dtype):
    rng = np.random.default_rng(11)
    x = rng.standard_normal((32, 3))
    y = np.argmax(x @ rng.standard_normal((3, 3)) + 0.3 * rng.standard_normal((32, 3)), axis=1)
    params = plain_params(jax.random.PRNGKey(12))
    cast = jax.tree.map(lambda a: jnp.asarray(a, dtype), params)
    return cast, (jnp.asarray(x, dtype), jnp.asarray(y, jnp.int32))


@pytest.mark.parametrize("fisher", ["mc", "empirical", "exact"])
@pytest.mark.parametrize("dtype", [jnp.float64, jnp.float32])
def test_optimizer_harness(fisher, dtype):
    params, batch = _classification(dtype)
    initial = float(CE(plain_mlp(params, batch[0]), batch[1]))
    base_key = jax.random.PRNGKey(0)

    def loss_fn(p, *, batch, key=None):
        del key
        return CE(plain_mlp(p, batch[0]), batch[1])

    result = run_harness(
        lambda: natgrad.kfac(
            plain_mlp,
            CE,
            batch[0],
            fisher=fisher,
            learning_rate=0.5,
            damping=0.1,
            inverse_every=3,
        ),
        params,
        loss_fn,
        steps=15,
        converged=lambda p, seen: seen[-1] < 0.6 * initial,
        extra_args_fn=lambda i: {"batch": batch, "key": jax.random.fold_in(base_key, i)},
        scan_rtol=1e-6 if dtype == jnp.float64 else 5e-3,
    )
    assert int(result.state.count) == 15 and int(result.state.num_rejected) == 0


def test_adaptive_step_minimizes_the_quadratic_model():
    """With adaptive_step, (α, μ) is the stationary point of q(α(−Δ) + μδ_prev)."""
    params, (x, y) = _classification(jnp.float64)
    lam = 0.2
    tx = natgrad.kfac(
        plain_mlp, CE, x, adaptive_step=True, norm_constraint=None, damping=lam, fisher="exact"
    )
    state = tx.init(params)
    objective = lambda p: CE(plain_mlp(p, x), y)  # noqa: E731
    for _ in range(2):
        grads = jax.grad(objective)(params)
        updates, new_state = jax.jit(tx.update)(grads, state, params, batch=(x, y))
        if int(state.count) == 1:
            break
        params, state = optax.apply_updates(params, updates), new_state
    flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]  # noqa: E731
    dense = np.asarray(curvature.ggn(plain_mlp, CE, params, (x, y)).as_matrix())
    dense = dense + lam * np.eye(dense.shape[0])
    g, v, delta = flat(grads), flat(state.velocity), flat(updates)
    alpha, mu = float(new_state.step_size), float(new_state.momentum)
    minus_direction = (delta - mu * v) / alpha
    # ∂q/∂α = (−Δ)ᵀ(g + Cδ) = 0 and ∂q/∂μ = vᵀ(g + Cδ) = 0
    residual = g + dense @ delta
    scale = np.linalg.norm(g) * np.linalg.norm(minus_direction)
    assert abs(minus_direction @ residual) < 1e-9 * scale
    assert abs(v @ residual) < 1e-9 * np.linalg.norm(g) * np.linalg.norm(v)
    assert alpha > 0


def test_levenberg_marquardt_damping_moves_with_rho():
    params, (x, y) = _classification(jnp.float64)
    objective = lambda p: CE(plain_mlp(p, x), y)  # noqa: E731
    for lr, direction in ((1e-3, "down"), (30.0, "up")):
        tx = natgrad.kfac(
            plain_mlp,
            CE,
            x,
            learning_rate=lr,
            momentum=0.0,
            norm_constraint=None,
            adapt_damping=True,
            damping_every=1,
            damping=1.0,
            fisher="exact",
        )
        grads = jax.grad(objective)(params)
        _, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=(x, y))
        rho = float(state.rho)
        # ρ = actual / predicted reduction: a tiny step follows the model (ρ ≈ 1 > ¾), a huge
        # one does not (ρ < ¼); ω = 19/20 for T₂ = 1.
        if direction == "down":
            assert rho > 0.75 and float(state.damping) == pytest.approx(0.95)
        else:
            assert rho < 0.25 and float(state.damping) == pytest.approx(1 / 0.95)


def test_step_size_decays_and_the_kl_clip_bounds_the_step():
    params, (x, y) = _classification(jnp.float64)
    grads = jax.grad(lambda p: CE(plain_mlp(p, x), y))(params)
    tx = natgrad.kfac(
        plain_mlp,
        CE,
        x,
        fisher="exact",
        learning_rate=0.5,
        learning_rate_decay_steps=4.0,
        norm_constraint=None,
    )
    state = tx.init(params)
    update = jax.jit(tx.update)
    for _ in range(3):
        _, state = update(grads, state, params, batch=(x, y))
    assert float(state.step_size) == pytest.approx(0.5 / (1 + 2 / 4))  # α₂ = α₀/(1 + 2/τ)
    # With c small, ν = √(c/(α²|Δᵀ∇|)) < 1 scales the step to that KL bound.
    clipped = natgrad.kfac(plain_mlp, CE, x, fisher="exact", norm_constraint=1e-8, momentum=0.0)
    updates, state = jax.jit(clipped.update)(grads, clipped.init(params), params, batch=(x, y))
    flat = lambda t: jax.flatten_util.ravel_pytree(t)[0]  # noqa: E731
    # δ = −αν Δ, so |δᵀ∇| = αν·|Δᵀ∇| and α²ν²|Δᵀ∇| = c  ⇒  |δᵀ∇|·αν = c
    alpha_nu = float(state.step_size)
    assert alpha_nu < 0.3
    assert abs(flat(updates) @ flat(grads)) * alpha_nu == pytest.approx(1e-8, rel=1e-8)


def test_non_finite_step_is_rejected():
    params, (x, y) = _classification(jnp.float64)
    tx = natgrad.kfac(plain_mlp, CE, x, fisher="exact")
    grads = jax.tree.map(lambda g: g.at[(0,) * g.ndim].set(jnp.nan), params)
    updates, state = jax.jit(tx.update)(grads, tx.init(params), params, batch=(x, y))
    assert all(np.all(np.asarray(u) == 0) for u in jax.tree.leaves(updates))
    assert int(state.num_rejected) == 1
    assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(state.velocity))


def test_errors_name_the_problem():
    params, (x, y) = _classification(jnp.float64)
    with pytest.raises(ValueError, match="unknown fisher estimator 'true'"):
        natgrad.kfac(plain_mlp, CE, x, fisher="true")
    with pytest.raises(ValueError, match="damping must be positive"):
        natgrad.kfac(plain_mlp, CE, x, damping=0.0)
    with pytest.raises(ValueError, match="learning_rate_decay_steps"):
        natgrad.kfac(plain_mlp, CE, x, learning_rate_decay_steps=0)
    with pytest.raises(ValueError, match="inverse_every"):
        natgrad.kfac(plain_mlp, CE, x, inverse_every=0)
    with pytest.raises(TypeError, match="NegativeLogLikelihood"):
        natgrad.kfac(plain_mlp, lambda o, t: 0.0, x)
    tx = natgrad.kfac(plain_mlp, CE, x)
    grads = jax.tree.map(jnp.zeros_like, params)
    with pytest.raises(ValueError, match="key="):
        tx.update(grads, tx.init(params), params, batch=(x, y))
    other = natgrad.kfac(plain_mlp, CE, jnp.zeros((2, 5)))  # wrong input width
    with pytest.raises(TypeError):
        other.init(params)
