"""SVGP: the conjugate identities of natural gradients (Titsias bound in one γ = 1 step, exact GP
at Z = X, the minibatch optimum), whitened against non-whitened, non-conjugate training, and
the errors that name their problem. float64 unless a test says otherwise."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from natgrad.expfam.gaussian import mean_covariance
from natgrad.gp import kernels, likelihoods
from natgrad.gp.svgp import (
    SVGP,
    CholeskyError,
    gp_log_marginal_likelihood,
    sgpr_bound,
    sgpr_posterior,
)
from natgrad.gp.training import fit, hybrid
from natgrad.optim import natural_vi

jax.config.update("jax_enable_x64", True)

PARAMETERIZATIONS = ["mean_cholesky", "natural", "expectation", "mean_covariance"]


def _regression(n=60, m=12, seed=0, num_outputs=1):
    rng = np.random.default_rng(seed)
    x = np.sort(rng.uniform(0, 10, (n, 1)), axis=0)
    f = np.sin(x) + 0.3 * np.cos(3 * x)
    y = f + 0.3 * rng.standard_normal((n, num_outputs))
    z = np.linspace(0.5, 9.5, m)[:, None]
    return jnp.asarray(x), jnp.asarray(y if num_outputs > 1 else y[:, 0]), jnp.asarray(z)


def _random_q(model, params, seed=1):
    """A valid, far-from-optimal q(u) in the model's parameterization."""
    num_latent, m = _shape(model, params)
    rng = np.random.default_rng(seed)
    mean = rng.standard_normal((num_latent, m))
    a = rng.standard_normal((num_latent, m, m)) / np.sqrt(m)
    cov = a @ np.swapaxes(a, -1, -2) + 0.5 * np.eye(m)
    q = model.parameterization.from_natural(
        mean_covariance.to_natural((jnp.asarray(mean), jnp.asarray(cov)))
    )
    return {**params, "q": q}


def _shape(model, params):
    mean, _ = model.parameterization.mean_covariance(params["q"])
    return mean.shape


@functools.partial(jax.jit, static_argnums=(0, 4), static_argnames=("num_data",))
def _natural_step(model, params, x, y, gamma, *, num_data=None):
    """One natural_vi step on q (hyperparameters fixed) on the loss −ELBO."""
    tx = natural_vi(gamma, model.parameterization, step_parameterization="natural")

    def loss(q):
        return -model.elbo({**params, "q": q}, x, y, num_data=num_data)

    grads = jax.grad(loss)(params["q"])
    updates, _ = tx.update(grads, tx.init(params["q"]), params["q"])
    return {**params, "q": optax.apply_updates(params["q"], updates)}


def _noise(model, params):
    return model.likelihood.hyperparameters(params["likelihood"])["variance"]


# ------------------------------------------------------------------------------------------
# Conjugate identities.
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("whiten", [True, False])
@pytest.mark.parametrize("parameterization", PARAMETERIZATIONS)
def test_one_natural_step_reaches_the_titsias_bound(whiten, parameterization):
    x, y, z = _regression()
    model = SVGP(
        kernels.SquaredExponential(lengthscale=1.3, variance=0.8),
        likelihoods.Gaussian(variance=0.09),
        whiten=whiten,
        parameterization=parameterization,
    )
    params = _random_q(model, model.init(z))
    bound = sgpr_bound(model.kernel, params["kernel"], _noise(model, params), x, y, z)
    assert model.elbo(params, x, y) < bound - 10  # far from optimal before the step
    stepped = _natural_step(model, params, x, y, 1.0)
    # Both sides are sums of O(100)-nat terms computed in float64 through Cholesky factors of
    # matrices with condition numbers below 1e6 (K_uu + jitter): 1e-8 relative leaves room.
    np.testing.assert_allclose(model.elbo(stepped, x, y), bound, rtol=1e-8)
    # The optimum of q is the closed form, and a second step is a fixed point.
    mean, cov = model.parameterization.mean_covariance(stepped["q"])
    ref_mean, ref_cov = sgpr_posterior(
        model.kernel, params["kernel"], _noise(model, params), x, y, z, whiten=whiten
    )
    scale = np.max(np.abs(ref_cov))
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-7 * np.max(np.abs(ref_mean)))
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-6, atol=1e-7 * scale)
    again = _natural_step(model, stepped, x, y, 1.0)
    np.testing.assert_allclose(model.elbo(again, x, y), bound, rtol=1e-10)
    for a, b in zip(jax.tree.leaves(again["q"]), jax.tree.leaves(stepped["q"]), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7 * np.max(np.abs(b)))


def test_bound_equals_the_exact_marginal_likelihood_when_z_is_x():
    x, y, _ = _regression(n=25)
    kernel = kernels.Matern52(lengthscale=0.7, variance=1.5)
    model = SVGP(kernel, likelihoods.Gaussian(variance=0.2), jitter=0.0)
    params = _random_q(model, model.init(x))
    exact = gp_log_marginal_likelihood(kernel, params["kernel"], 0.2, x, y)
    np.testing.assert_allclose(
        sgpr_bound(kernel, params["kernel"], 0.2, x, y, x, jitter=0.0), exact, rtol=1e-9
    )
    stepped = _natural_step(model, params, x, y, 1.0)
    # K(X, X) of 25 points spread over [0, 10] with ℓ = 0.7 has condition number < 1e4.
    np.testing.assert_allclose(model.elbo(stepped, x, y), exact, rtol=1e-9)
    # And the predictions are the exact GP posterior's: K*ₓ(K + σ²I)⁻¹y, k** − K*ₓ(K+σ²I)⁻¹Kₓ*.
    xs = jnp.linspace(-1, 11, 7)[:, None]
    kp = params["kernel"]
    kxx = np.asarray(kernel(kp, x, x)) + 0.2 * np.eye(x.shape[0])
    ksx = np.asarray(kernel(kp, xs, x))
    exact_mean = ksx @ np.linalg.solve(kxx, np.asarray(y))
    exact_var = np.asarray(kernel.diag(kp, xs)) - np.sum(ksx * np.linalg.solve(kxx, ksx.T).T, 1)
    mean, var = model.predict_f(stepped, xs)
    np.testing.assert_allclose(mean[:, 0], exact_mean, rtol=1e-7, atol=1e-9)
    np.testing.assert_allclose(var[:, 0], exact_var, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("whiten", [True, False])
def test_one_step_on_a_minibatch_lands_on_that_minibatch_optimum(whiten):
    x, y, z = _regression(n=80)
    model = SVGP(
        kernels.SquaredExponential(lengthscale=1.0), likelihoods.Gaussian(0.1), whiten=whiten
    )
    params = _random_q(model, model.init(z))
    idx = np.random.default_rng(3).choice(80, 16, replace=False)
    xb, yb = x[idx], y[idx]
    stepped = _natural_step(model, params, xb, yb, 1.0, num_data=80)
    # (N/B)·Σ_b log N(y | f, σ²) is, up to a constant, Σ_b log N(y | f, σ²B/N): the minibatch
    # ELBO's optimum is the SGPR posterior of the batch with noise σ²·B/N.
    ref_mean, ref_cov = sgpr_posterior(
        model.kernel, params["kernel"], 0.1 * 16 / 80, xb, yb, z, whiten=whiten
    )
    mean, cov = model.parameterization.mean_covariance(stepped["q"])
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-6, atol=1e-8 * np.max(np.abs(ref_mean)))
    np.testing.assert_allclose(cov, ref_cov, rtol=1e-6, atol=1e-8 * np.max(np.abs(ref_cov)))

    def q_gradient(p):  # the gradient as a parameter tangent (a Cholesky factor's lower triangle)
        g = jax.grad(lambda q: model.elbo({**p, "q": q}, xb, yb, num_data=80))(p["q"])
        g = model.parameterization.project_gradient(p["q"], g)
        return max(float(jnp.max(jnp.abs(leaf))) for leaf in jax.tree.leaves(g))

    # Stationary: the gradient vanishes to rounding relative to where the step started.
    assert q_gradient(stepped) < 1e-7 * q_gradient(params)


def test_multi_output_step_reaches_the_sum_of_the_bounds():
    x, y, z = _regression(num_outputs=2)
    model = SVGP(kernels.Matern32(lengthscale=1.0), likelihoods.Gaussian(0.1, num_outputs=2))
    params = _random_q(model, model.init(z))
    assert _shape(model, params) == (2, z.shape[0])
    stepped = _natural_step(model, params, x, y, 1.0)
    bounds = [sgpr_bound(model.kernel, params["kernel"], 0.1, x, y[:, i], z) for i in range(2)]
    np.testing.assert_allclose(model.elbo(stepped, x, y), sum(bounds), rtol=1e-8)


def test_whitened_and_non_whitened_trajectories_coincide_at_small_gamma():
    x, y, z = _regression(n=40, m=8)
    kernel = kernels.SquaredExponential(lengthscale=1.5)
    lik = likelihoods.Bernoulli(link="probit")
    yb = (y > 0).astype(jnp.float64)
    white = SVGP(kernel, lik, whiten=True)
    plain = SVGP(kernel, lik, whiten=False)
    pw = white.init(z)
    pp = plain.init(z)  # both start at the prior: q(v) = N(0, I) ⇔ q(u) = N(0, K_uu)
    kuu = np.asarray(kernel(pw["kernel"], z, z)) + 1e-6 * np.eye(z.shape[0])
    luu = np.linalg.cholesky(kuu)
    gamma, steps = 1e-3, 5
    for _ in range(steps):
        pw = _natural_step(white, pw, x, yb, gamma)
        pp = _natural_step(plain, pp, x, yb, gamma)
    mean_w, cov_w = white.parameterization.mean_covariance(pw["q"])
    mean_p, cov_p = plain.parameterization.mean_covariance(pp["q"])
    # Map q(v) to q(u) = N(L m, L S Lᵀ). Natural-gradient flow is invariant to the linear
    # reparameterization u = Lv; the discrete steps of (m, L) differ at O(γ²) per step.
    mean_u = np.asarray(mean_w) @ luu.T
    cov_u = luu @ np.asarray(cov_w) @ luu.T
    moved = np.max(np.abs(mean_p))
    assert moved > 1e-3  # they did move: 5 steps of γ = 1e-3 go ~0.5% of the way
    np.testing.assert_allclose(mean_u, mean_p, atol=1e-3 * moved)
    np.testing.assert_allclose(cov_u, cov_p, atol=1e-5 * np.max(np.abs(cov_p)))
    np.testing.assert_allclose(white.elbo(pw, x, yb), plain.elbo(pp, x, yb), rtol=1e-7)


# ------------------------------------------------------------------------------------------
# Non-conjugate training.
# ------------------------------------------------------------------------------------------


def _classification(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(-3, 3, (n, 2))
    y = (np.sin(x[:, 0]) + 0.5 * x[:, 1] + 0.3 * rng.standard_normal(n) > 0).astype(np.float64)
    return jnp.asarray(x), jnp.asarray(y), jnp.asarray(x[:: n // 20])


def test_bernoulli_elbo_rises_monotonically_at_small_gamma():
    x, y, z = _classification()
    model = SVGP(kernels.SquaredExponential(lengthscale=1.5), likelihoods.Bernoulli("logit"))
    params = model.init(z)
    values = [float(model.elbo(params, x, y))]
    step = jax.jit(lambda p: _natural_step(model, p, x, y, 0.05))
    for _ in range(40):
        params = step(params)
        values.append(float(model.elbo(params, x, y)))
    assert np.all(np.diff(values) > 0), np.diff(values)
    assert values[-1] > values[0] + 10


def test_softmax_natural_steps_need_no_safeguard_where_robustmax_does():
    """Softmax's variance gradient (Price's theorem) keeps every natural step's precision
    positive definite: at γ = 0.5 the ELBO rises monotonically without a single safeguard
    halving and reaches Adam's q-only optimum (5000 iterations) within 50 steps. Robust-max,
    whose expectation is linear in q(f_y = max), needs the safeguard at the same γ."""
    rng = np.random.default_rng(0)
    n, m, c = 150, 15, 3
    x = rng.uniform(-3, 3, (n, 2))
    logits = 2 * np.sin(x) @ rng.standard_normal((2, c)) + 0.3 * rng.standard_normal((n, c))
    x, y = jnp.asarray(x), jnp.asarray(np.argmax(logits, axis=1))
    kernel = kernels.SquaredExponential(lengthscale=1.5, variance=5.0)
    frozen = optax.set_to_zero()

    softmax = SVGP(kernel, likelihoods.Softmax(c))
    params = softmax.init(x[:: n // m])
    ng = fit(softmax, params, x, y, iterations=50, natural_learning_rate=0.5, other=frozen)
    adam = fit(
        softmax,
        params,
        x,
        y,
        iterations=5000,
        natural_learning_rate=None,
        other=_adam_on(("q",)),
        chunk_size=1000,
    )
    assert np.all(np.diff(ng.elbo) > 0), np.diff(ng.elbo)
    assert int(ng.state.natural.num_shrinks) == 0
    assert ng.elbo[-1] > adam.elbo[-1] - 0.05, (ng.elbo[-1], adam.elbo[-1])

    robust = SVGP(kernel, likelihoods.RobustMax(c))
    r = fit(
        robust,
        robust.init(x[:: n // m]),
        x,
        y,
        iterations=50,
        natural_learning_rate=0.5,
        other=frozen,
    )
    assert int(r.state.natural.num_shrinks) > 0


def _adam_on(keys, learning_rate=0.01):
    """Adam on the top-level entries ``keys`` of the SVGP's params, the rest frozen."""

    def labels(params):
        return {k: jax.tree.map(lambda _, k=k: k in keys, v) for k, v in params.items()}

    return optax.multi_transform(
        {True: optax.adam(learning_rate), False: optax.set_to_zero()}, labels
    )


def test_natural_plus_adam_reaches_adams_1000_iteration_elbo_within_200():
    # A small problem: 100 points, 20 inducing inputs fixed on data points, q(u) from the prior,
    # the kernel's hyperparameters trained by Adam(0.01) from near their optimum (ℓ = (1.6,
    # 2.9), σ² = 10, where 3000 NG+Adam iterations took them). NG+Adam gets there at ~130.
    # (When the hyperparameters start far away, Adam's pace on them dominates both methods.)
    x, y, z = _classification()
    kernel = kernels.SquaredExponential(lengthscale=(1.6, 2.9), variance=10.0)
    model = SVGP(kernel, likelihoods.Bernoulli("probit"))
    params = model.init(z)
    adam = fit(
        model,
        params,
        x,
        y,
        iterations=1000,
        natural_learning_rate=None,
        other=_adam_on(("q", "kernel")),
        chunk_size=250,
    )
    target = float(adam.elbo[-1])
    assert target > float(adam.elbo[500])  # Adam was still improving
    ng = fit(model, params, x, y, iterations=200, other=_adam_on(("kernel",)), chunk_size=100)
    reached = np.nonzero(ng.elbo >= target)[0]
    assert reached.size and reached[0] < 200, (target, ng.elbo[-5:])
    assert adam.num_rejected == ng.num_rejected == 0


def test_adam_on_a_cholesky_factor_keeps_it_lower_triangular():
    # The upper triangle of scale_tril is not a parameter: its gradient is zero, so Adam on all
    # of q converges to the same optimum as natural steps (not to a "better" invalid one).
    x, y, z = _classification()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Bernoulli("probit"))
    params = model.init(z)
    grads = jax.grad(lambda p: model.elbo(p, x, y))(params)
    np.testing.assert_array_equal(np.triu(grads["q"][1], 1), 0.0)


@pytest.mark.parametrize("mode", ["alternating", "joint"])
def test_hybrid_with_frozen_hyperparameters_is_natural_vi(mode):
    x, y, z = _classification()
    model = SVGP(kernels.Matern32(), likelihoods.Bernoulli("logit"))
    params = model.init(z)
    tx = hybrid(0.1, optax.set_to_zero(), model.parameterization, mode=mode)

    def loss(p):
        return -model.elbo(p, x, y)

    updates, _ = tx.update(jax.grad(loss)(params), tx.init(params), params, value_fn=loss)
    expected = _natural_step(model, params, x, y, 0.1)
    got = optax.apply_updates(params, updates)
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


def test_alternating_adam_step_sees_the_gradient_at_the_updated_q():
    # Gaussian likelihood, γ = 1: after the natural step q is optimal, so the hyperparameter
    # gradient at the updated q is the gradient of the collapsed bound (Titsias).
    x, y, z = _regression()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1))
    params = _random_q(model, model.init(z))
    captured = {}

    def spy_update(grads, state, params=None):
        captured["grads"] = grads
        return jax.tree.map(jnp.zeros_like, grads), state

    spy = optax.GradientTransformation(lambda p: optax.EmptyState(), spy_update)
    tx = hybrid(1.0, spy, model.parameterization, mode="alternating")

    def loss(p):
        return -model.elbo(p, x, y)

    tx.update(jax.grad(loss)(params), tx.init(params), params, value_fn=loss)

    def collapsed(kernel_params):
        return -sgpr_bound(model.kernel, kernel_params, 0.1, x, y, z)

    np.testing.assert_allclose(
        captured["grads"]["kernel"]["lengthscale"],
        jax.grad(collapsed)(params["kernel"])["lengthscale"],
        rtol=1e-6,
    )


def test_alternating_mode_needs_value_fn():
    x, y, z = _regression()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1))
    params = model.init(z)
    tx = hybrid(1.0, optax.adam(1e-2), model.parameterization)
    grads = jax.grad(lambda p: -model.elbo(p, x, y))(params)
    with pytest.raises(ValueError, match="value_fn"):
        tx.update(grads, tx.init(params), params)


def test_fit_minibatches_history_and_early_stopping():
    x, y, z = _regression(n=200)
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1))
    params = model.init(z)
    result = fit(
        model, params, x, y, iterations=130, batch_size=50, key=jax.random.key(0), chunk_size=50
    )
    assert result.elbo.shape == (130,) and np.all(np.isfinite(result.elbo))
    assert len(result.chunk_seconds) == 3  # 50 + 50 + 30
    full_start = float(model.elbo(params, x, y))
    assert float(model.elbo(result.params, x, y)) > full_start + 50
    stopped = fit(model, params, x, y, iterations=5000, chunk_size=20, patience=40, min_delta=1e-3)
    assert stopped.stopped_early and stopped.iterations < 5000
    with pytest.raises(ValueError, match="key="):
        fit(model, params, x, y, iterations=10, batch_size=10)


def test_fit_resumes_from_a_previous_state_exactly():
    """fit(40) then fit(30, state=...) is fit(70): Adam's moments and the γ warm-up's count
    carry over. Restarting without the state re-runs the warm-up from γ = 1e-4 and differs."""
    x, y, z = _classification()
    model = SVGP(kernels.SquaredExponential(lengthscale=1.5), likelihoods.Bernoulli("logit"))
    params = model.init(z)
    kwargs = dict(mode="joint", chunk_size=20)
    whole = fit(model, params, x, y, iterations=70, **kwargs)
    first = fit(model, params, x, y, iterations=40, **kwargs)
    resumed = fit(model, first.params, x, y, iterations=30, state=first.state, **kwargs)
    restarted = fit(model, first.params, x, y, iterations=30, **kwargs)
    np.testing.assert_allclose(resumed.elbo, whole.elbo[40:], rtol=1e-12)
    for a, b in zip(jax.tree.leaves(resumed.params), jax.tree.leaves(whole.params), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    assert int(resumed.state.natural.count) == 70
    assert abs(restarted.elbo[1] - whole.elbo[41]) > 1e-3


def test_fit_rejects_a_state_from_another_optimizer():
    x, y, z = _classification()
    model = SVGP(kernels.SquaredExponential(lengthscale=1.5), likelihoods.Bernoulli("logit"))
    params = model.init(z)
    adam_only = fit(model, params, x, y, iterations=2, natural_learning_rate=None)
    with pytest.raises(ValueError, match=r"state= must be the FitResult\.state.*tree structure"):
        fit(model, params, x, y, iterations=2, state=adam_only.state)
    smaller = model.init(z[:-1])
    other_m = fit(model, smaller, x, y, iterations=2)
    with pytest.raises(ValueError, match=r"leaf .* is float64\[19"):
        fit(model, params, x, y, iterations=2, state=other_m.state)
    with pytest.raises(ValueError, match="got dict"):
        fit(model, params, x, y, iterations=2, state={})


def test_fit_in_float32_stays_close_to_float64():
    x, y, z = _regression()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1), jitter=1e-4)
    p64 = model.init(z)
    p32 = jax.tree.map(lambda a: a.astype(jnp.float32), p64)
    r64 = fit(model, p64, x, y, iterations=50, chunk_size=50)
    r32 = fit(
        model, p32, x.astype(jnp.float32), y.astype(jnp.float32), iterations=50, chunk_size=50
    )
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(r32.params))
    assert r32.elbo.dtype == np.float32 and np.all(np.isfinite(r32.elbo))
    # float32 rounding through Cholesky factors of K_uu (cond ~1e4 with jitter 1e-4): 1e-3.
    np.testing.assert_allclose(r32.elbo[-1], r64.elbo[-1], rtol=1e-3)


# ------------------------------------------------------------------------------------------
# Errors.
# ------------------------------------------------------------------------------------------


def test_duplicate_inducing_inputs_without_jitter_raise_a_cholesky_error():
    x, y, z = _regression()
    z = jnp.concatenate([z, z[:1]])
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1), jitter=0.0)
    params = SVGP(model.kernel, model.likelihood).init(z)  # whitened init needs no K_uu
    with pytest.raises(CholeskyError, match="jitter"):
        model.check(params, x=x, y=y)
    with pytest.raises(CholeskyError, match="jitter"):
        fit(model, params, x, y, iterations=5)
    with pytest.raises(CholeskyError, match="jitter"):
        SVGP(model.kernel, model.likelihood, whiten=False, jitter=0.0).init(z)


def test_a_step_into_a_failing_cholesky_is_rejected_and_reported():
    # Adam with a huge step drives the lengthscale so large that K_uu (no jitter) is singular;
    # fit stops with a CholeskyError naming the iteration, and hands back earlier parameters.
    x, y, z = _regression()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1), jitter=0.0)
    params = model.init(z)
    with pytest.raises(CholeskyError, match="iteration") as info:
        fit(model, params, x, y, iterations=50, learning_rate=1e3, chunk_size=10)
    model.check(info.value.params)  # the parameters handed back are valid


def test_bad_inputs_are_named():
    x, y, z = _regression()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1))
    params = model.init(z)
    with pytest.raises(ValueError, match=r"inputs must have shape \(N, 1\)"):
        model.predict_f(params, jnp.ones((4, 2)))
    with pytest.raises(ValueError, match="NaN"):
        fit(model, params, x.at[3, 0].set(jnp.nan), y, iterations=2)
    with pytest.raises(ValueError, match="NaN"):
        fit(model, params, x, y.at[3].set(jnp.nan), iterations=2)
    with pytest.raises(ValueError, match="rows"):
        fit(model, params, x, y[:-1], iterations=2)
    with pytest.raises(ValueError, match="unknown parameterization"):
        SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1), parameterization="chol")
    with pytest.raises(ValueError, match="jitter"):
        SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1), jitter=-1.0)
    with pytest.raises(ValueError, match="mode"):
        hybrid(1.0, optax.adam(1e-2), mode="sideways")


def test_class_probabilities_and_log_predictive_density_agree():
    x, y, z = _classification()
    model = SVGP(kernels.SquaredExponential(), likelihoods.Bernoulli("probit"))
    params = _natural_step(model, model.init(z), x, y, 0.5)
    probs = np.asarray(model.predict_class_probabilities(params, x))
    np.testing.assert_allclose(probs.sum(1), 1.0, rtol=1e-12)
    labels = np.asarray(y).astype(int)
    # log p(y_n) under the predictive is the log of the predicted class probability.
    np.testing.assert_allclose(
        np.log(probs[np.arange(len(labels)), labels]),
        model.log_predictive_density(params, x, y),
        rtol=1e-10,
    )
    three = SVGP(kernels.Matern52(), likelihoods.RobustMax(3, num_quadrature_points=50))
    p3 = three.init(z)
    probs3 = np.asarray(three.predict_class_probabilities(p3, x))
    assert probs3.shape == (x.shape[0], 3)
    np.testing.assert_allclose(probs3.sum(1), 1.0, rtol=1e-6)
    with pytest.raises(TypeError, match="not a classification likelihood"):
        SVGP(kernels.Matern52(), likelihoods.Gaussian()).predict_class_probabilities(p3, x)
