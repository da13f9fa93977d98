"""Tests of the diagonal (mean-field) Gaussian parameterizations in natgrad.expfam.diagonal."""

import functools
import math

import hypothesis.extra.numpy as hnp
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from hypothesis import given, settings
from hypothesis import strategies as st
from jax.flatten_util import ravel_pytree
from numpy.testing import assert_allclose

import natgrad
from natgrad.expfam import diagonal

jax.config.update("jax_enable_x64", True)

PARAMS = diagonal.PARAMETERIZATIONS
IDS = [p.name for p in PARAMS]

# A batch of two diagonal Gaussians in D = 3, variances within [0.5, 2] so every Fisher below is
# well conditioned (cond = 16 in (m, v), ≈ 113 in θ and η).
M0 = np.array([[0.3, -1.2, 0.7], [1.5, 0.1, -0.4]])
V0 = np.array([[0.5, 1.3, 2.0], [0.8, 1.0, 1.7]])


def _mv(dtype=jnp.float64):
    return jnp.asarray(M0, dtype), jnp.asarray(V0, dtype)


def _loss_mv(mean, variance):
    """A nonlinear loss of (m, v) that couples coordinates and batch members."""
    return (
        jnp.sum(jnp.sin(mean) * variance)
        + 0.3 * jnp.sum(mean) ** 2
        + jnp.sum(mean**2 * jnp.log(variance))
        + 0.5 * jnp.sum(variance**2)
    )


def _kl_reference(mq, vq, mp, vp):
    """KL(N(mq, diag vq) ‖ N(mp, diag vp)) written out independently of the library."""
    return 0.5 * jnp.sum(vq / vp + (mp - mq) ** 2 / vp - 1.0 + jnp.log(vp / vq), axis=-1)


# ---------------------------------------------------------------------------------------------
# Conversions.
# ---------------------------------------------------------------------------------------------


# A few shapes only: each new shape costs a compilation, and the formulas are elementwise.
SHAPES = [(1,), (4,), (3, 2), (2, 1, 3)]


@st.composite
def mean_variance_pairs(draw):
    shape = draw(st.sampled_from(SHAPES))
    floats = dict(allow_nan=False, allow_subnormal=False)
    mean = draw(hnp.arrays(np.float64, shape, elements=st.floats(-10.0, 10.0, **floats)))
    variance = draw(hnp.arrays(np.float64, shape, elements=st.floats(1e-2, 1e2, **floats)))
    return jnp.asarray(mean), jnp.asarray(variance)


@jax.jit
def _all_conversions(mean, variance):
    """Every parameterization from (m, v), and every route back, in one compiled function."""
    reps = {p.name: p.from_mean_variance(mean, variance) for p in PARAMS}
    out = {}
    for p in PARAMS:
        xi = reps[p.name]
        out[p.name] = {
            "mean_variance": p.mean_variance(xi),
            "mean_scale": p.mean_scale(xi),
            "via_natural": {q.name: q.from_natural(p.to_natural(xi)) for q in PARAMS},
            "via_expectation": {q.name: q.from_expectation(p.to_expectation(xi)) for q in PARAMS},
        }
    return reps, out


@settings(max_examples=30, deadline=None)
@given(mean_variance_pairs())
def test_round_trips_between_all_four(pair):
    mean, variance = pair
    reps, out = _all_conversions(mean, variance)
    # rtol: the worst step is v = η₂ − η₁², which loses m²/v ≤ 1e4 of relative precision
    # (≈ 1e-12); atol only covers means whose m/v is subnormal.
    tol = dict(rtol=1e-10, atol=1e-300)
    for p in PARAMS:
        assert_allclose(out[p.name]["mean_variance"], (mean, variance), **tol)
        assert_allclose(out[p.name]["mean_scale"], (mean, jnp.sqrt(variance)), **tol)
        for q in PARAMS:  # q = p is the round trip p → θ → p and p → η → p
            assert_allclose(out[p.name]["via_natural"][q.name], reps[q.name], **tol)
            assert_allclose(out[p.name]["via_expectation"][q.name], reps[q.name], **tol)
    # The formulas themselves, checked once against the module docstring.
    theta1, theta2 = reps["diag_natural"]
    assert_allclose((theta1, theta2), (mean / variance, -0.5 / variance), rtol=1e-14)
    assert_allclose(reps["diag_expectation"][1], variance + mean**2, rtol=1e-14)
    assert_allclose(reps["diag_mean_scale"][1] ** 2, variance, rtol=1e-14)


# ---------------------------------------------------------------------------------------------
# The natural gradient against dense Fisher matrices.
# ---------------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=0)  # one compilation per parameterization
def _dense_fisher(p, z0):
    """F = ∇²_z KL(q(z₀)‖q(z)) at z = z₀: the Fisher of q in p's flattened coordinates z.

    ``z`` is ``ravel_pytree`` of a pair of arrays shaped like ``M0``.
    """

    def flat_to_mv(z):
        first, second = z.reshape(2, *M0.shape)
        return p.mean_variance((first, second))

    def kl_from_q0(z):
        return jnp.sum(_kl_reference(*flat_to_mv(z0), *flat_to_mv(z)))

    return jax.hessian(kl_from_q0)(z0)


@pytest.mark.parametrize("mode", ["forward", "reverse"])
@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_natural_gradient_pushed_to_mean_variance_is_dense_fisher_solve(p, mode):
    mean, variance = _mv()
    xi = p.from_mean_variance(mean, variance)
    grads = jax.grad(lambda x: _loss_mv(*p.mean_variance(x)))(xi)
    ng = natgrad.natural_gradient(params=xi, grads=grads, parameterization=p.name, mode=mode)
    _, ng_mv = jax.jvp(p.mean_variance, (xi,), (ng,))

    z0, _ = ravel_pytree((mean, variance))
    fisher = np.asarray(_dense_fisher(diagonal.mean_variance, z0))
    # The Hessian of the KL is the known closed form diag(1/v, 1/(2v²)).
    closed = np.concatenate([1.0 / V0.ravel(), 0.5 / V0.ravel() ** 2])
    assert_allclose(fisher, np.diag(closed), rtol=1e-12, atol=1e-12)  # float64 second derivatives
    grad_mv, _ = ravel_pytree(jax.grad(_loss_mv, argnums=(0, 1))(mean, variance))
    expected = np.linalg.solve(fisher, np.asarray(grad_mv))
    # cond(F) ≤ 16 (v ∈ [0.5, 2]) and every step is elementwise float64: 1e-10 is a wide margin.
    assert_allclose(ravel_pytree(ng_mv)[0], expected, rtol=1e-10)


@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_natural_gradient_in_own_coordinates_is_dense_fisher_solve(p):
    xi = p.from_mean_variance(*_mv())
    grads = jax.grad(lambda x: _loss_mv(*p.mean_variance(x)))(xi)
    ng = natgrad.natural_gradient(params=xi, grads=grads, parameterization=p.name)

    z0, _ = ravel_pytree(xi)
    fisher = np.asarray(_dense_fisher(p, z0))
    expected = np.linalg.solve(fisher, np.asarray(ravel_pytree(grads)[0]))
    assert np.linalg.cond(fisher) < 1e3
    # cond(F_ξ) < 1e3 in float64: solve error ≲ 1e3·1e-16, so 1e-10 is safe.
    assert_allclose(ravel_pytree(ng)[0], expected, rtol=1e-10)


def test_natural_gradient_keeps_container_type_and_works_under_jit():
    mean, variance = _mv()
    params = [mean, jnp.sqrt(variance)]
    grads = jax.grad(lambda x: _loss_mv(x[0], x[1] ** 2))(params)
    eager = natgrad.natural_gradient(params=params, grads=grads, parameterization="diag_mean_scale")
    assert isinstance(eager, list)
    jitted = jax.jit(
        lambda p, g: natgrad.natural_gradient(params=p, grads=g, parameterization="diag_mean_scale")
    )(params, grads)
    # XLA may fuse and reorder the float64 ops; atol covers entries that cancel to O(1e-2).
    assert_allclose(jitted, eager, rtol=1e-12, atol=1e-14)


# ---------------------------------------------------------------------------------------------
# Agreement with the full-covariance Gaussian.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "full",
    [
        natgrad.gaussian.mean_covariance,
        natgrad.gaussian.natural,
        natgrad.gaussian.expectation,
    ],
    ids=lambda f: f.name,
)
def test_agrees_with_full_covariance_gaussian_for_a_loss_of_the_diagonal(full):
    mean, variance = jnp.asarray(M0[0]), jnp.asarray(V0[0])
    grads_mv = jax.grad(lambda x: _loss_mv(*x))((mean, variance))
    ng_diag = natgrad.natural_gradient(
        params=(mean, variance), grads=grads_mv, parameterization="diag_mean_variance"
    )
    # Closed form F⁻¹∇ in (m, v): (v·∂L/∂m, 2v²·∂L/∂v).
    assert_allclose(ng_diag, (variance * grads_mv[0], 2 * variance**2 * grads_mv[1]), rtol=1e-13)

    def loss_full(xi):
        m, cov = full.mean_covariance(xi)
        return _loss_mv(m, jnp.diagonal(cov))

    @jax.jit  # one compilation instead of one per primitive
    def full_step(mean, variance):
        xi = full.from_natural(
            natgrad.gaussian.natural_from_mean_covariance(mean, jnp.diag(variance))
        )
        ng_full = natgrad.natural_gradient(
            params=xi, grads=jax.grad(loss_full)(xi), parameterization=full.name
        )
        return ng_full, jax.jvp(full.mean_covariance, (xi,), (ng_full,))[1]

    ng_full, (dm, dcov) = full_step(mean, variance)
    # Verified, not assumed: the full-covariance step leaves S diagonal (off-diagonal entries are
    # Cholesky rounding, ~1e-16 of the diagonal) and its diagonal is the diagonal step.
    off_diagonal = dcov - jnp.diag(jnp.diagonal(dcov))
    assert float(jnp.max(jnp.abs(off_diagonal))) < 1e-12 * float(jnp.max(jnp.abs(dcov)))
    # D = 3, cond(S) = 4, float64 Cholesky route: 1e-10 is ~1e5 times the rounding.
    assert_allclose(dm, ng_diag[0], rtol=1e-10)
    assert_allclose(jnp.diagonal(dcov), ng_diag[1], rtol=1e-10)

    if full.name == "expectation":
        # …but "diagonal" is a statement about S, not η₂: dη₂ = dS + dm mᵀ + m dmᵀ has the
        # off-diagonal entries dmᵢmⱼ + mᵢdmⱼ, which are not zero when m ≠ 0.
        d_eta2 = ng_full[1]
        dm_diag, dv_diag = ng_diag
        expected = jnp.diag(dv_diag) + jnp.outer(dm_diag, mean) + jnp.outer(mean, dm_diag)
        assert_allclose(d_eta2, expected, rtol=1e-10)
        assert float(jnp.max(jnp.abs(d_eta2 - jnp.diag(jnp.diagonal(d_eta2))))) > 0.1


# ---------------------------------------------------------------------------------------------
# Conjugate problem: one natural-gradient step with γ = 1 lands on the exact posterior.
# ---------------------------------------------------------------------------------------------


def test_one_unit_step_in_natural_parameters_reaches_exact_posterior():
    rng = np.random.default_rng(0)
    dim, max_count, noise_var = 4, 5, 0.3
    prior_mean = np.array([0.0, 1.0, -2.0, 0.5])
    prior_var = np.array([1.0, 4.0, 0.5, 2.0])
    counts = np.array([1, 3, 5, 2])  # y_ij ~ N(w_i, σ²), j < counts[i]: factorizes over i
    mask = np.arange(max_count)[None, :] < counts[:, None]
    w_true = rng.normal(size=dim)
    y = np.where(mask, w_true[:, None] + math.sqrt(noise_var) * rng.normal(size=mask.shape), 0.0)

    def neg_elbo(theta):
        m, v = diagonal.natural.mean_variance(theta)
        # E_q[log N(y | w, σ²)] = −½ log 2πσ² − ((y − m)² + v)/(2σ²)
        expected_loglik = -0.5 * math.log(2 * math.pi * noise_var) - (
            (y - m[:, None]) ** 2 + v[:, None]
        ) / (2 * noise_var)
        prior = (jnp.asarray(prior_mean), jnp.asarray(prior_var))
        kl = diagonal.natural.kl(theta, prior, diagonal.mean_variance)
        return -jnp.sum(jnp.where(mask, expected_loglik, 0.0)) + kl

    @jax.jit  # one compilation instead of one per primitive
    def step(theta):
        ng = natgrad.natural_gradient(
            params=theta, grads=jax.grad(neg_elbo)(theta), parameterization="diag_natural"
        )
        return tuple(t - g for t, g in zip(theta, ng, strict=True)), ng

    theta0 = diagonal.natural.from_mean_variance(jnp.full(dim, 3.0), jnp.full(dim, 0.1))
    theta1, _ = step(theta0)

    post_precision = 1.0 / prior_var + counts / noise_var
    post_mean = (prior_mean / prior_var + y.sum(axis=1) / noise_var) / post_precision
    # A handful of float64 elementwise operations on O(1)–O(20) numbers: 1e-12 is generous.
    assert_allclose(
        diagonal.natural.mean_variance(theta1), (post_mean, 1 / post_precision), rtol=1e-12
    )
    # The posterior is a fixed point: the natural gradient vanishes there.
    _, ng_at_posterior = step(theta1)
    assert_allclose(ng_at_posterior, np.zeros((2, dim)), atol=1e-12)


# ---------------------------------------------------------------------------------------------
# Densities, entropy, KL, sampling.
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_log_prob_entropy_against_scipy(p):
    xi = p.from_mean_variance(*_mv())
    x = np.random.default_rng(1).normal(size=(5, *M0.shape))
    # x of shape (5, 2, 3) broadcasts against the batch (2,) → (5, 2).
    expected = scipy.stats.norm.logpdf(x, M0, np.sqrt(V0)).sum(axis=-1)
    # float64 elementwise; the natural route adds a few ulps to m and v.
    assert_allclose(p.log_prob(xi, jnp.asarray(x)), expected, rtol=1e-12)
    assert_allclose(p.entropy(xi), scipy.stats.norm.entropy(0.0, np.sqrt(V0)).sum(-1), rtol=1e-12)


@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_kl_against_closed_form_and_full_gaussian(p):
    mq, vq = _mv()
    mp_np, vp_np = M0[::-1] + 0.5, V0[:, ::-1] * 1.7
    mp, vp = jnp.asarray(mp_np), jnp.asarray(vp_np)
    q = p.from_mean_variance(mq, vq)
    closed = 0.5 * np.sum(V0 / vp_np + (mp_np - M0) ** 2 / vp_np - 1 - np.log(V0 / vp_np), -1)
    full = natgrad.gaussian.mean_covariance
    full_kl = full.kl((mq, jax.vmap(jnp.diag)(vq)), (mp, jax.vmap(jnp.diag)(vp)))
    assert_allclose(closed, full_kl, rtol=1e-12)  # the reference itself, against the dense one
    for other in PARAMS:  # p given in every parameterization
        kl = p.kl(q, other.from_mean_variance(mp, vp), other)
        assert kl.shape == (2,)
        assert_allclose(kl, closed, rtol=1e-12)  # float64, KL values O(1)
    assert_allclose(p.kl(q, p.from_mean_variance(mp, vp)), closed, rtol=1e-12)
    assert_allclose(p.kl(q, q), np.zeros(2), atol=1e-14)  # KL(q‖q) = 0 up to rounding


@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_sample_moments_and_reparameterization(p):
    mean, variance = jnp.array([0.5, -2.0, 3.0]), jnp.array([0.25, 1.0, 4.0])
    xi = p.from_mean_variance(mean, variance)
    key = jax.random.PRNGKey(0)
    n = 100_000
    samples = p.sample(xi, key, (n,))
    assert samples.shape == (n, 3)
    # 5 standard errors (√(v/n) for the mean, v√(2/n) for the variance): with a fixed key the test
    # is deterministic, and a fresh key would fail with probability ≈ 6e-7 per check.
    assert np.all(np.abs(samples.mean(0) - mean) < 5 * np.sqrt(variance / n))
    assert np.all(np.abs(samples.var(0) - variance) < 5 * variance * np.sqrt(2 / n))
    # Reparameterized: x = m + σε with ε from the same key, for every parameterization.
    eps = jax.random.normal(key, (n, 3), dtype=jnp.float64)
    assert_allclose(samples, mean + jnp.sqrt(variance) * eps, rtol=1e-12, atol=1e-12)
    # sample_shape + batch + (D,), without drawing.
    batch = jax.eval_shape(lambda xi: p.sample(xi, key, (7,)), p.from_mean_variance(*_mv()))
    assert batch.shape == (7, *M0.shape)
    # Pathwise gradients through the parameterization: ∂x/∂m = 1 and ∂x/∂σ = ε (one draw).
    grad_m, grad_s = jax.grad(
        lambda ms: jnp.sum(p.sample(p.from_mean_variance(ms[0], ms[1] ** 2), key))
    )((mean, jnp.sqrt(variance)))
    assert_allclose(grad_m, np.ones(3), rtol=1e-12)
    assert_allclose(grad_s, jax.random.normal(key, (3,), dtype=jnp.float64), rtol=1e-12)


# ---------------------------------------------------------------------------------------------
# dtypes, errors, validity under jit, registry.
# ---------------------------------------------------------------------------------------------


def test_float32_keeps_dtype():
    f32 = jnp.float32

    def everything(p, mean, variance):
        xi = p.from_mean_variance(mean, variance)
        q = diagonal.mean_variance.from_mean_variance(mean, variance)
        grads = jax.grad(lambda x: _loss_mv(*p.mean_variance(x)))(xi)
        return [
            xi,
            p.to_natural(xi),
            p.from_natural(p.to_natural(xi)),
            p.to_expectation(xi),
            p.from_expectation(p.to_expectation(xi)),
            p.mean_variance(xi),
            p.mean_scale(xi),
            p.log_prob(xi, jnp.zeros(3, f32)),
            p.entropy(xi),
            p.kl(xi, q, diagonal.mean_variance),
            p.sample(xi, jax.random.PRNGKey(0), (4,)),
            natgrad.natural_gradient(params=xi, grads=grads, parameterization=p),
            natgrad.natural_gradient(params=xi, grads=grads, parameterization=p, mode="reverse"),
        ], p.is_valid(xi)

    # One compilation for all four (dtypes are the same under jit as eagerly).
    everything_all = jax.jit(lambda m, v: {p.name: everything(p, m, v) for p in PARAMS})
    with jax.numpy_dtype_promotion("strict"):  # any float64 constant would raise here
        results = everything_all(*_mv(f32))
    for name, (outputs, valid) in results.items():
        for leaf in jax.tree.leaves(outputs):
            assert leaf.dtype == f32, name
        assert valid.dtype == jnp.bool_
        assert bool(jnp.all(valid)), name


def _invalid_second(p):
    """A value of the second parameter outside p's domain, for mean 1."""
    return {
        "diag_natural": 0.0,  # θ₂ must be < 0
        "diag_expectation": 0.5,  # η₂ − η₁² = −0.5
        "diag_mean_variance": -1.0,
        "diag_mean_scale": 0.0,
    }[p.name]


@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_bad_inputs_raise_clear_errors(p):
    good = p.from_mean_variance(jnp.ones(3), jnp.ones(3))
    with pytest.raises(TypeError, match="pair"):
        p.check((good[0],))
    with pytest.raises(ValueError, match=r"shape \(\.\.\., D\), got a scalar"):
        p.check((jnp.float64(1.0), jnp.float64(1.0)))
    with pytest.raises(ValueError, match=r"`q`: .* has shape \(3,\) but .* has shape \(2, 3\)"):
        p.check((good[0], jnp.ones((2, 3))), argname="q")
    with pytest.raises(TypeError, match="one dtype"):
        p.check((good[0], good[1].astype(jnp.float32)))
    with pytest.raises(TypeError, match="floating dtype"):
        p.check((jnp.ones(3, jnp.int32), jnp.ones(3, jnp.int32)))
    with pytest.raises(TypeError, match="must be an array"):
        p.check(([1.0, 1.0, 1.0], good[1]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        p.check((good[0].at[1].set(jnp.nan), good[1]))
    bad = (good[0], good[1].at[2].set(_invalid_second(p)))
    with pytest.raises(ValueError, match=r"must be (positive|negative) and finite.*index \(2,\)"):
        p.check(bad)
    with pytest.raises(ValueError, match=r"must be (positive|negative)"):
        natgrad.natural_gradient(params=bad, grads=good, parameterization=p.name)
    with pytest.raises(TypeError, match="diagonal Gaussian"):
        p.kl(good, (jnp.ones(3), jnp.eye(3)), natgrad.gaussian.mean_covariance)
    p.check(good)  # and the good one passes


@pytest.mark.parametrize("p", PARAMS, ids=IDS)
def test_is_valid_under_jit_is_batch_shaped(p):
    first, second = p.from_mean_variance(jnp.ones((3, 2)), jnp.ones((3, 2)))
    second = second.at[1, 0].set(_invalid_second(p))  # outside the domain
    first = first.at[2, 1].set(jnp.nan)  # not finite
    valid = jax.jit(p.is_valid)((first, second))
    assert valid.shape == (3,)
    assert valid.tolist() == [True, False, False]
    assert jax.jit(p.is_valid)((first[0], second[0])).shape == ()
    # check() under jit runs the static checks only and does not fail on tracers.
    jax.jit(lambda a, b: p.check((a, b)) or a)(first, second)


def test_registry_and_hashability():
    assert [p.name for p in PARAMS] == [
        "diag_natural",
        "diag_expectation",
        "diag_mean_variance",
        "diag_mean_scale",
    ]
    for p in PARAMS:
        assert natgrad.resolve(p.name) is p
        assert p.name in natgrad.available_parameterizations()
        assert hash(p) == hash(type(p)()) and p == type(p)()
        assert p.name in repr(p)
    assert len(set(PARAMS)) == 4
    # jit accepts them as static arguments.
    f = jax.jit(lambda xi, p: p.entropy(xi), static_argnums=1)
    assert_allclose(f(_mv(), diagonal.mean_variance), diagonal.mean_variance.entropy(_mv()))
