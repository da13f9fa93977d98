"""Tests of :func:`natgrad.optim.natural_vi` on conjugate Bayesian linear regression.

The model: w ~ N(0, α⁻¹I), y | w ~ N(Xw, σ²I), q(w) = N(m, S). Everything about it is closed
form, so the optimizer is checked against exact answers computed here with numpy:

* posterior   P = αI + XᵀX/σ², S* = P⁻¹, m* = P⁻¹Xᵀy/σ² (natural: θ₁ = Xᵀy/σ², θ₂ = −½P);
* −ELBO(q)    = KL(q‖p) − E_q[log p(y|w)], minimized at q = posterior with value −log p(y);
* evidence    log p(y) = log N(y | 0, α⁻¹XXᵀ + σ²I).

``test_hybrid_natural_vi_and_adam_reach_the_joint_optimum`` is the reference example of the
hybrid (natural gradients on q, Adam on a hyperparameter through :func:`optax.partition`).
"""

import functools
import math

import jax

jax.config.update("jax_enable_x64", True)

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import pytest  # noqa: E402
import scipy.optimize  # noqa: E402
from helpers import (  # noqa: E402
    PARAMETERIZATION_NAMES,
    assert_tree_close,
    params_from_mean_cov,
    random_orthogonal,
    random_params,
    rel_err,
    sym,
)
from optimizer_harness import run_harness  # noqa: E402

import natgrad  # noqa: E402

N, D = 20, 3
PRIOR_PRECISION = 1.0  # α
NOISE_VAR = 0.1  # σ²


def make_regression(seed: int, noise_var: float):
    """X (N×D) with N(0, 1) entries and y = Xw + noise for a random w."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, D))
    y = x @ rng.standard_normal(D) + math.sqrt(noise_var) * rng.standard_normal(N)
    return x, y


X, Y = make_regression(0, NOISE_VAR)


def neg_elbo(mean, cov, noise_var=NOISE_VAR, *, x=X, y=Y):
    """−ELBO = KL(q‖p) − E_q[log p(y|w)] for q = N(m, S), summed over leading batch axes.

    E_q[log p(y|w)] = −½N log 2πσ² − (‖y − Xm‖² + tr(XᵀX S))/(2σ²),
    KL(q‖p) = ½(α tr S + α mᵀm − D − D log α − log det S).
    """
    x = jnp.asarray(x, mean.dtype)
    y = jnp.asarray(y, mean.dtype)
    alpha = PRIOR_PRECISION
    resid = y - mean @ x.T
    expected_sq = jnp.sum(resid**2, axis=-1) + jnp.sum((x.T @ x) * cov, axis=(-2, -1))
    expected_loglik = -0.5 * N * jnp.log(2 * jnp.pi * noise_var) - 0.5 * expected_sq / noise_var
    chol = jnp.linalg.cholesky(cov)
    logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
    trace = jnp.trace(cov, axis1=-2, axis2=-1)
    kl = 0.5 * (alpha * (trace + jnp.sum(mean**2, axis=-1)) - D - D * math.log(alpha) - logdet)
    return jnp.sum(kl - expected_loglik)


def elbo_loss(name):
    """loss(params) = −ELBO of q given in parameterization ``name``."""
    p = natgrad.resolve(name)
    return lambda params: neg_elbo(*p.mean_covariance(params))


def exact_posterior(noise_var, x=X, y=Y):
    """(m*, S*, P) of the posterior by numpy."""
    precision = PRIOR_PRECISION * np.eye(D) + x.T @ x / noise_var
    return np.linalg.solve(precision, x.T @ y / noise_var), np.linalg.inv(precision), precision


def log_evidence(noise_var, x=X, y=Y) -> float:
    """log N(y | 0, α⁻¹XXᵀ + σ²I) by numpy."""
    cov = x @ x.T / PRIOR_PRECISION + noise_var * np.eye(N)
    return -0.5 * (
        y @ np.linalg.solve(cov, y) + np.linalg.slogdet(cov)[1] + N * math.log(2 * math.pi)
    )


def mean_cov_numpy(name, params):
    """(m, S) in float64 from ``params`` in parameterization ``name``, by numpy (not natgrad)."""
    a, b = (np.asarray(v, np.float64) for v in params)
    if name == "natural":
        cov = np.linalg.inv(-2.0 * b)
        return np.einsum("...ij,...j->...i", cov, a), cov
    if name == "expectation":
        return a, b - a[..., :, None] * a[..., None, :]
    if name == "mean_covariance":
        return a, b
    if name == "mean_cholesky":
        return a, b @ np.swapaxes(b, -1, -2)
    if name == "mean_precision_cholesky":
        return a, np.linalg.inv(b @ np.swapaxes(b, -1, -2))
    raise KeyError(name)


def valid_numpy(name, params) -> np.ndarray:
    """Batch-shaped: finite and in the domain, checked by eigenvalues/diagonals with numpy."""
    a, b = (np.asarray(v, np.float64) for v in params)
    finite = np.all(np.isfinite(a), axis=-1) & np.all(np.isfinite(b), axis=(-2, -1))
    b = np.where(np.isfinite(b), b, 0.0)
    if name == "natural":
        return finite & (np.linalg.eigvalsh(sym(-2.0 * b))[..., 0] > 0)
    if name == "mean_covariance":
        return finite & (np.linalg.eigvalsh(sym(b))[..., 0] > 0)
    if name == "mean_cholesky":
        return finite & np.all(np.diagonal(b, axis1=-2, axis2=-1) > 0, axis=-1)
    raise KeyError(name)


# --------------------------------------------------------------------------------------------
# The shared optimizer harness, for every parameterization, in float64 and float32
# --------------------------------------------------------------------------------------------

# float64: the loss (|−log p(y)| ≈ 16) is rounded to ~1e-13 and a converged run reaches the
# optimum to that level; runs 30 steps short of convergence are ≥ 1e-7 off.
# float32: ε ≈ 1.2e-7 times sums of ~N terms of size ≲ 100 gives ~1e-5 in the loss; the
# posterior (cond(P) < 10) is found to a few ε relative.
HARNESS_TOL = {"float64": dict(loss=1e-9, params=1e-8), "float32": dict(loss=1e-4, params=1e-4)}
HARNESS_STEPS = 50


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_natural_vi_passes_the_harness(name, dtype):
    """Compiles once, finite, dtypes kept, converges, rejects unknown kwargs, runs in lax.scan.

    The harness also runs the same 50 steps inside ``jax.lax.scan`` and compares them with the
    Python loop step for step (losses, params and every state leaf; the integer counters
    ``count``, ``num_shrinks`` and ``num_skipped`` exactly).
    """
    # Start at the prior q = N(0, α⁻¹I); warm γ up from 0.1 to 1 so that every
    # parameterization converges (the first steps need the safeguard for some of them).
    params = params_from_mean_cov(name, np.zeros(D), np.eye(D) / PRIOR_PRECISION, dtype)
    exact_mean, exact_cov, _ = exact_posterior(NOISE_VAR)
    tol = HARNESS_TOL[dtype]

    def converged(final, losses):
        mean, cov = mean_cov_numpy(name, final)
        return (
            losses[-1] <= -log_evidence(NOISE_VAR) + tol["loss"]
            and rel_err(mean, exact_mean) <= tol["params"]
            and rel_err(cov, exact_cov) <= tol["params"]
        )

    result = run_harness(
        lambda: natgrad.natural_vi(natgrad.log_linear_warmup(0.1, 1.0, 10), name),
        params,
        elbo_loss(name),
        steps=HARNESS_STEPS,
        converged=converged,
    )
    state = result.state
    assert isinstance(state, natgrad.NaturalVIState)
    assert int(state.count) == HARNESS_STEPS
    assert float(state.step_size) == 1.0  # the schedule ends at γ₁ = 1
    assert int(state.num_skipped) == 0
    assert np.all(np.asarray(state.last_scale) == 1.0)


# --------------------------------------------------------------------------------------------
# Exactness for a conjugate model
# --------------------------------------------------------------------------------------------


def test_gamma_one_on_natural_lands_on_the_exact_posterior():
    """θ₊ = θ − 1·(θ − θ*) = θ*: one step from any q is the posterior (Salimbeni et al. 2018)."""
    params, _, _ = random_params(np.random.default_rng(1), "natural", D, cond=10.0)
    tx = natgrad.natural_vi(1.0, "natural")
    loss = elbo_loss("natural")

    @jax.jit
    def step(params, state):
        updates, state = tx.update(jax.grad(loss)(params), state, params)
        return optax.apply_updates(params, updates), state

    new, state = step(params, tx.init(params))
    _, _, precision = exact_posterior(NOISE_VAR)
    exact = (X.T @ Y / NOISE_VAR, -0.5 * precision)  # θ₁* = P m* = Xᵀy/σ², θ₂* = −½P
    # Rounding in S⁻¹ (through the gradient of log det S) and in the conversions: ε·cond(S)
    # with cond(S) = 10, cond(P) < 10 — far below 1e-10.
    assert_tree_close(new, exact, rtol=1e-10)
    assert int(state.num_shrinks) == 0
    assert float(state.last_scale) == 1.0


@pytest.mark.parametrize("name", ["mean_cholesky", "mean_covariance", "expectation"])
def test_stepping_in_natural_coordinates_lands_on_the_posterior_from_any_storage(name):
    """step_parameterization="natural": convert, step θ, convert back. With γ = 1 one step is
    the exact posterior whatever ξ stores q; the storage's own step (default) is not."""
    params, _, _ = random_params(np.random.default_rng(2), name, D, cond=10.0)
    loss = elbo_loss(name)
    grads = jax.grad(loss)(params)
    p = natgrad.resolve(name)
    tx = natgrad.natural_vi(1.0, name, step_parameterization="natural")
    updates, state = tx.update(grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    mean, cov = p.mean_covariance(new)
    exact_mean, exact_cov, _ = exact_posterior(NOISE_VAR)
    # Rounding through the conversions ξ → θ → ξ at cond(S) ≤ 10: ~1e-13; 1e-9 leaves room.
    np.testing.assert_allclose(mean, exact_mean, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(cov, exact_cov, rtol=1e-9, atol=1e-12)
    assert int(state.num_skipped) == 0
    own = natgrad.natural_vi(1.0, name)
    own_new = optax.apply_updates(params, own.update(grads, own.init(params), params)[0])
    _, own_cov = p.mean_covariance(own_new)
    assert not np.allclose(own_cov, exact_cov, rtol=1e-3)


# --------------------------------------------------------------------------------------------
# The hybrid: natural gradients on q, Adam on a hyperparameter (the reference example)
# --------------------------------------------------------------------------------------------

HYBRID_NOISE_VAR = 0.3  # the noise that generated the data; the learned one is near it
X_HYBRID, Y_HYBRID = make_regression(2, HYBRID_NOISE_VAR)


def hybrid_loss(params):
    """−ELBO(q, σ²) with q = N(m, LLᵀ) and σ² = exp(params["hyper"])."""
    mean, scale_tril = params["q"]
    cov = scale_tril @ scale_tril.T
    return neg_elbo(mean, cov, jnp.exp(params["hyper"]), x=X_HYBRID, y=Y_HYBRID)


def hybrid_reference_log_noise() -> float:
    """argmax over log σ² of the collapsed evidence log N(y | 0, α⁻¹XXᵀ + σ²I), independently.

    The closed-form evidence via ``jax.scipy.stats.multivariate_normal.logpdf``; its derivative
    in log σ² is zero at the maximum, found by Brent's root finder to 1e-14.
    """
    x, y = jnp.asarray(X_HYBRID), jnp.asarray(Y_HYBRID)

    def evidence(log_noise):
        cov = x @ x.T / PRIOR_PRECISION + jnp.exp(log_noise) * jnp.eye(N)
        return jax.scipy.stats.multivariate_normal.logpdf(y, jnp.zeros(N), cov)

    value_slope_curvature = jax.jit(
        lambda t: (evidence(t), jax.grad(evidence)(t), jax.grad(jax.grad(evidence))(t))
    )
    root = scipy.optimize.brentq(
        lambda t: float(value_slope_curvature(t)[1]), -6.0, 3.0, xtol=1e-14
    )
    value, _, curvature = value_slope_curvature(root)
    # A maximum, and the same evidence as the numpy formula (both ~1e-15 accurate, cond < 1e3).
    assert float(curvature) < 0
    np.testing.assert_allclose(
        float(value), log_evidence(math.exp(root), X_HYBRID, Y_HYBRID), rtol=1e-12
    )
    return root


def test_hybrid_natural_vi_and_adam_reach_the_joint_optimum():
    """The documented hybrid: ``natural_vi`` on q = (m, L), Adam on log σ², one optax optimizer.

    ``optax.partition`` sends each labelled subtree to its own transformation, so one
    ``tx.update(grads, state, params)`` takes a safeguarded natural-gradient step on q and an
    Adam step on the hyperparameter; the state is one pytree and the whole loop runs in
    ``lax.scan``::

        params = {"q": (mean, scale_tril), "hyper": log_noise_var}
        tx = optax.partition(
            {"natural": natgrad.natural_vi(natgrad.log_linear_warmup(0.1, 1.0, 10),
                                           "mean_cholesky"),
             "adam": optax.adam(optax.exponential_decay(0.1, 100, 0.5))},
            {"q": "natural", "hyper": "adam"},
        )

    The joint optimum of the ELBO over (q, σ²) is q = the exact posterior for σ², with σ² at
    the maximum of the collapsed evidence (the ELBO at the optimal q *is* the evidence), which
    is found here independently by a root finder on its derivative. ``optax.multi_transform``
    is the older name of ``optax.partition``; it is run too when it is a different function.
    """
    reference = hybrid_reference_log_noise()
    params = {"q": (jnp.zeros(D), jnp.eye(D)), "hyper": jnp.zeros(())}  # σ² = 1
    labels = {"q": "natural", "hyper": "adam"}
    combinators = {optax.partition, getattr(optax, "multi_transform", optax.partition)}
    for combine in combinators:
        tx = combine(
            {
                "natural": natgrad.natural_vi(
                    natgrad.log_linear_warmup(0.1, 1.0, 10), "mean_cholesky"
                ),
                "adam": optax.adam(optax.exponential_decay(0.1, 100, 0.5)),
            },
            labels,
        )

        def body(carry, _, tx=tx):
            params, state = carry
            loss, grads = jax.value_and_grad(hybrid_loss)(params)
            updates, state = tx.update(grads, state, params)
            return (optax.apply_updates(params, updates), state), loss

        run = jax.jit(lambda p, s, body=body: jax.lax.scan(body, (p, s), None, length=500))
        (final, _), losses = run(params, tx.init(params))

        # Adam's decayed steps (1e-1·2⁻⁵ at the end) settle log σ² to ~1e-10 here.
        log_noise = float(final["hyper"])
        assert abs(log_noise - reference) <= 1e-8, (log_noise, reference)
        # q is the exact posterior for the learned σ²; natural steps at γ = 1 converge
        # quadratically, so only rounding (cond(P) < 10) is left.
        mean, scale_tril = (np.asarray(a) for a in final["q"])
        exact_mean, exact_cov, _ = exact_posterior(math.exp(log_noise), X_HYBRID, Y_HYBRID)
        assert rel_err(mean, exact_mean) <= 1e-10
        assert rel_err(scale_tril @ scale_tril.T, exact_cov) <= 1e-10
        # The minimum of −ELBO is −(max evidence); the loss is flat there (second order).
        ref_evidence = log_evidence(math.exp(reference), X_HYBRID, Y_HYBRID)
        np.testing.assert_allclose(float(losses[-1]), -ref_evidence, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# The safeguard, under jit
# --------------------------------------------------------------------------------------------

SAFEGUARD_NAMES = ("mean_covariance", "natural", "mean_cholesky")
HUGE_GAMMA = 1e6


def near_singular_gaussian(seed=3, batch=()):
    """m ~ N(0, I) and S = Q diag(1e-8, 1, 10) Qᵀ: cond 1e9 and larger than the posterior.

    From here a step with γ = 1e6 is invalid in every parameterization tested: the precision
    1e8 overshoots for ``natural`` (θ₂ moves towards −½P by γ(θ₂* − θ₂)), and the variance 10
    (posterior variances are < 1) is pushed negative for ``mean_covariance``/``mean_cholesky``.
    """
    rng = np.random.default_rng(seed)
    q = random_orthogonal(rng, D, batch)
    cov = sym((q * np.array([1e-8, 1.0, 10.0])) @ np.swapaxes(q, -1, -2))
    return rng.standard_normal(tuple(batch) + (D,)), cov


@functools.cache
def jitted_step(name, learning_rate, max_shrinks):
    """One jitted update on the −ELBO; ``grad_offset`` is added to the gradient (NaN tests).

    Cached, so tests with the same optimizer share one compilation.
    """
    tx = natgrad.natural_vi(learning_rate, name, max_shrinks=max_shrinks)
    loss = elbo_loss(name)

    @jax.jit
    def step(params, state, grad_offset):
        grads = jax.tree.map(jnp.add, jax.grad(loss)(params), grad_offset)
        updates, state = tx.update(grads, state, params)
        return optax.apply_updates(params, updates), updates, state

    return tx, step


def zeros_like_tree(params):
    return tuple(np.zeros_like(np.asarray(a)) for a in params)


@pytest.mark.parametrize("name", SAFEGUARD_NAMES)
def test_safeguard_shrinks_a_huge_step_to_a_valid_one(name):
    params = params_from_mean_cov(name, *near_singular_gaussian())
    tx, step = jitted_step(name, HUGE_GAMMA, 60)
    new, _, state = step(params, tx.init(params), zeros_like_tree(params))

    scale = float(state.last_scale)
    halvings = -math.log2(scale)
    assert 0 < scale < 1 and halvings == round(halvings)
    assert int(state.num_shrinks) == round(halvings) > 0
    assert int(state.num_skipped) == 0
    assert valid_numpy(name, new)  # finite and in the domain (numpy eigenvalues/diagonal)
    _, new_cov = mean_cov_numpy(name, new)
    assert np.all(np.isfinite(new_cov)) and np.linalg.eigvalsh(sym(new_cov))[0] > 0
    # It is the largest valid step of the halving sequence: with ξ₊ = ξ − γs·d, the step
    # with 2s, ξ − 2γs·d = 2ξ₊ − ξ, is invalid (and so is the full step ξ − γ·d).
    old = [np.asarray(a) for a in params]
    new = [np.asarray(a) for a in new]
    assert not valid_numpy(name, [2 * n - o for n, o in zip(new, old, strict=True)])
    assert not valid_numpy(name, [o - (o - n) / scale for n, o in zip(new, old, strict=True)])


@pytest.mark.parametrize("name", SAFEGUARD_NAMES)
def test_safeguard_skips_a_step_with_nan_gradients(name):
    params = params_from_mean_cov(name, *near_singular_gaussian())
    tx, step = jitted_step(name, HUGE_GAMMA, 60)
    offset = zeros_like_tree(params)
    offset[0][1] = np.nan
    new, updates, state = step(params, tx.init(params), offset)
    for n, p, u in zip(new, params, updates, strict=True):
        np.testing.assert_array_equal(n, p)  # unchanged, bit for bit, and not NaN
        np.testing.assert_array_equal(u, 0.0)
    assert int(state.num_skipped) == 1
    assert int(state.num_shrinks) == 0
    assert float(state.last_scale) == 0.0


@pytest.mark.parametrize(("name", "max_shrinks"), [("natural", 0), ("mean_covariance", 3)])
def test_safeguard_skips_a_step_it_cannot_shrink_enough(name, max_shrinks):
    """The step needs ~20 (natural) / ~30 (mean_covariance) halvings; K is far below that."""
    params = params_from_mean_cov(name, *near_singular_gaussian())
    tx, step = jitted_step(name, HUGE_GAMMA, max_shrinks)
    state = tx.init(params)
    for _ in range(2):  # skipped twice, counted twice
        new, updates, state = step(params, state, zeros_like_tree(params))
        for n, p, u in zip(new, params, updates, strict=True):
            np.testing.assert_array_equal(n, p)
            np.testing.assert_array_equal(u, 0.0)
    assert int(state.num_skipped) == 2
    assert int(state.num_shrinks) == 0
    assert float(state.last_scale) == 0.0
    assert int(state.count) == 2


def test_safeguard_shrinks_per_element_of_a_batch():
    """A stack of 3 Gaussians in natural parameters; only the near-singular one is shrunk.

    For this conjugate model the natural-gradient step is exact: θ(s) = θ − γs(θ − θ*), i.e.
    the precision P(s) = P + γs(P* − P). Elements with P ⪯ P* (the prior, N(m, 2I)) stay valid
    for every s; the near-singular one (P with eigenvalue 1e8) needs k halvings, k computed here
    with numpy eigenvalues as the least k with P(2⁻ᵏ) ≻ 0.
    """
    mean1, cov1 = near_singular_gaussian()
    rng = np.random.default_rng(4)
    means = np.stack([np.zeros(D), mean1, rng.standard_normal(D)])
    covs = np.stack([np.eye(D) / PRIOR_PRECISION, cov1, 2.0 * np.eye(D)])
    params = params_from_mean_cov("natural", means, covs)
    tx, step = jitted_step("natural", HUGE_GAMMA, 60)
    new, _, state = step(params, tx.init(params), zeros_like_tree(params))

    _, _, exact_precision = exact_posterior(NOISE_VAR)
    precision = -2.0 * np.asarray(params[1][1])
    k = next(
        k
        for k in range(61)
        if np.linalg.eigvalsh(precision + HUGE_GAMMA * 2.0**-k * (exact_precision - precision))[0]
        > 0
    )
    assert k > 0
    np.testing.assert_array_equal(np.asarray(state.last_scale), [1.0, 2.0**-k, 1.0])
    assert int(state.num_shrinks) == k
    assert int(state.num_skipped) == 0
    assert np.all(valid_numpy("natural", new))


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_negative_max_shrinks_raises():
    with pytest.raises(ValueError, match="max_shrinks"):
        natgrad.natural_vi(0.1, "natural", max_shrinks=-1)


def test_unknown_parameterization_raises():
    with pytest.raises(ValueError, match=r"unknown parameterization 'mean_cholesy'.*mean_cholesky"):
        natgrad.natural_vi(0.1, "mean_cholesy")


def test_unknown_mode_raises():
    with pytest.raises(ValueError, match="mode"):
        natgrad.natural_vi(0.1, "natural", mode="backward")


def test_update_without_params_raises():
    params = params_from_mean_cov("mean_cholesky", np.zeros(D), np.eye(D))
    tx = natgrad.natural_vi(0.1, "mean_cholesky")
    with pytest.raises(ValueError, match="needs `params`"):
        tx.update(params, tx.init(params))


@pytest.mark.parametrize("arity", [1, 3])
def test_params_that_are_not_a_pair_raise(arity):
    mean, scale_tril = params_from_mean_cov("mean_cholesky", np.zeros(D), np.eye(D))
    tx = natgrad.natural_vi(0.1, "mean_cholesky")
    bad = (mean, scale_tril, mean)[:arity]
    with pytest.raises(TypeError, match=r"must be a pair \(mean, scale_tril\)"):
        tx.init(bad)
    state = tx.init((mean, scale_tril))
    with pytest.raises(TypeError, match=r"must be a pair \(mean, scale_tril\)"):
        tx.update(bad, state, bad)


def test_gradients_of_other_params_raise():
    params = params_from_mean_cov("mean_cholesky", np.zeros(D), np.eye(D))
    tx = natgrad.natural_vi(0.1, "mean_cholesky")
    with pytest.raises(ValueError, match="same parameters"):
        tx.update(params[:1], tx.init(params), params)
