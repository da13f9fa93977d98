"""The full-covariance Gaussian in its five parameterizations (float64 unless stated).

References are independent of natgrad: parameters built with np.linalg (tests/helpers.py),
scipy.stats.multivariate_normal for densities and entropies, and the closed-form KL written with
np.linalg.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats
from helpers import (
    CHOLESKY_NAMES,
    PARAMETERIZATION_NAMES,
    assert_tree_close,
    kl_numpy,
    params_from_mean_cov,
    random_mean_cov,
    rel_err,
)
from hypothesis import given, settings
from hypothesis import strategies as st

import natgrad
from natgrad import gaussian
from natgrad.expfam.base import resolve

jax.config.update("jax_enable_x64", True)  # before any array is created


def test_every_parameterization_is_registered_under_its_name():
    assert tuple(p.name for p in gaussian.PARAMETERIZATIONS) == PARAMETERIZATION_NAMES
    for p in gaussian.PARAMETERIZATIONS:
        assert resolve(p.name) is p
        assert p.name in natgrad.available_parameterizations()


# --------------------------------------------------------------------------------------------
# Conversions: round trips between every pair, against np.linalg
# --------------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    src=st.sampled_from(PARAMETERIZATION_NAMES),
    dim=st.integers(1, 8),
    batch=st.sampled_from([(), (3,)]),
    log10_cond=st.floats(0.0, 3.0),
    seed=st.integers(0, 2**32 - 1),
)
def test_conversions_round_trip_through_every_parameterization(src, dim, batch, log10_cond, seed):
    # Every conversion is a Cholesky factorization and triangular solves, whose normwise relative
    # forward error is ≲ c·D·cond(S)·eps ≈ 8·1e3·1.1e-16 ≈ 1e-12 at cond(S) ≤ 1e3; a round trip
    # chains a few of them, and the np.linalg reference (inv, cholesky) has the same size of
    # error. 1e-9 leaves a factor ~100 for the constants.
    rtol = 1e-9
    mean, cov = random_mean_cov(np.random.default_rng(seed), dim, batch, cond=10.0**log10_cond)
    p = resolve(src)
    xi = params_from_mean_cov(src, mean, cov)

    theta = p.to_natural(xi)
    eta = p.to_expectation(xi)
    assert_tree_close(theta, params_from_mean_cov("natural", mean, cov), rtol, "ξ → θ")
    assert_tree_close(eta, params_from_mean_cov("expectation", mean, cov), rtol, "ξ → η")
    assert_tree_close(p.mean_covariance(xi), (mean, cov), rtol, "ξ → (m, S)")
    assert_tree_close(p.from_natural(theta), xi, rtol, "ξ → θ → ξ")
    assert_tree_close(p.from_expectation(eta), xi, rtol, "ξ → η → ξ")

    for dst_name in PARAMETERIZATION_NAMES:
        dst = resolve(dst_name)
        expected = params_from_mean_cov(dst_name, mean, cov)
        via_theta = dst.from_natural(theta)
        via_eta = dst.from_expectation(eta)
        assert_tree_close(via_theta, expected, rtol, f"{src} → θ → {dst_name}")
        assert_tree_close(via_eta, expected, rtol, f"{src} → η → {dst_name}")
        assert_tree_close(p.from_natural(dst.to_natural(via_theta)), xi, rtol, f"via {dst_name}")
        assert_tree_close(
            p.from_expectation(dst.to_expectation(via_eta)), xi, rtol, f"via {dst_name} (η)"
        )
        for got, want in zip(via_theta, expected, strict=True):
            assert got.shape == want.shape and got.dtype == jnp.float64
        if dst_name in CHOLESKY_NAMES:  # factors come out exactly lower triangular
            np.testing.assert_array_equal(np.triu(via_theta[1], 1), 0.0)
            np.testing.assert_array_equal(np.triu(via_eta[1], 1), 0.0)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_dim_is_the_event_dimension(name):
    xi = params_from_mean_cov(name, *random_mean_cov(np.random.default_rng(0), 3, (2, 3)))
    assert resolve(name).dim(xi) == 3


# --------------------------------------------------------------------------------------------
# log_prob, entropy, kl against scipy / the closed form
# --------------------------------------------------------------------------------------------

DIM, BATCH = 5, (3,)  # the shapes shared with tests/test_natural_gradient.py (compiled once)


def _random(name, seed=0, cond=100.0):
    mean, cov = random_mean_cov(np.random.default_rng(seed), DIM, BATCH, cond=cond)
    return params_from_mean_cov(name, mean, cov), mean, cov


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_log_prob_matches_scipy(name):
    xi, mean, cov = _random(name)
    p = resolve(name)
    x = np.random.default_rng(1).standard_normal((4, *BATCH, DIM))  # broadcast over the batch
    x_single = x[0, 0]  # one point for every Gaussian of the batch
    got = np.asarray(p.log_prob(xi, jnp.asarray(x)))
    got_single = np.asarray(p.log_prob(xi, jnp.asarray(x_single)))
    assert got.shape == (4, *BATCH) and got_single.shape == BATCH
    for b in np.ndindex(BATCH):
        ref = scipy.stats.multivariate_normal(mean[b], cov[b])
        # Both sides are backward stable (Cholesky here, eigh in scipy) at cond(S) = 100; the
        # values are O(10), so 1e-10 relative (1e-10 absolute near 0) is rounding only.
        np.testing.assert_allclose(
            got[(slice(None), *b)], ref.logpdf(x[(slice(None), *b)]), rtol=1e-10, atol=1e-10
        )
        np.testing.assert_allclose(got_single[b], ref.logpdf(x_single), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_entropy_matches_scipy(name):
    xi, mean, cov = _random(name)
    got = np.asarray(resolve(name).entropy(xi))
    assert got.shape == BATCH
    ref = [scipy.stats.multivariate_normal(mean[b], cov[b]).entropy() for b in np.ndindex(BATCH)]
    # ½ log det S through a Cholesky factor vs. scipy's eigenvalues: rounding only.
    np.testing.assert_allclose(got, np.reshape(ref, BATCH), rtol=1e-10, atol=1e-12)


def test_entropy_of_a_single_gaussian_matches_scipy():
    mean, cov = random_mean_cov(np.random.default_rng(2), 8, (), cond=100.0)
    got = gaussian.mean_cholesky.entropy(params_from_mean_cov("mean_cholesky", mean, cov))
    assert got.shape == ()
    ref = scipy.stats.multivariate_normal(mean, cov).entropy()
    np.testing.assert_allclose(got, ref, rtol=1e-10)  # rounding only, as above


@pytest.mark.parametrize("name_q", PARAMETERIZATION_NAMES)
def test_kl_matches_the_closed_form_for_every_pair_of_parameterizations(name_q):
    xi_q, mean_q, cov_q = _random(name_q, seed=3)
    q = resolve(name_q)
    for name_p in PARAMETERIZATION_NAMES:
        xi_p, mean_p, cov_p = _random(name_p, seed=4)
        ref = kl_numpy(mean_q, cov_q, mean_p, cov_p)
        got = q.kl(xi_q, xi_p, resolve(name_p))
        assert got.shape == BATCH
        # Triangular solves vs. np.linalg.solve/slogdet at cond = 100, KL = O(10–100):
        # rounding only.
        np.testing.assert_allclose(got, ref, rtol=1e-9, err_msg=f"KL({name_q} ‖ {name_p})")
    xi_p, mean_p, cov_p = _random(name_q, seed=4)  # p in q's own parameterization (default)
    ref = kl_numpy(mean_q, cov_q, mean_p, cov_p)
    np.testing.assert_allclose(q.kl(xi_q, xi_p), ref, rtol=1e-9)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_kl_of_a_gaussian_with_itself_is_zero(name):
    xi, _, _ = _random(name)
    # ½[tr(I) − D] + 0 cancels to rounding of O(D·cond·eps) = O(1e-13).
    np.testing.assert_allclose(resolve(name).kl(xi, xi), 0.0, atol=1e-11)


def test_kl_rejects_a_parameterization_of_another_family():
    xi, _, _ = _random("mean_covariance")

    class NotAGaussian:
        pass

    with pytest.raises(TypeError, match="full-covariance Gaussian"):
        gaussian.mean_covariance.kl(xi, xi, NotAGaussian())


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_sample_moments_match_the_mean_and_covariance(name):
    dim, batch, num = 3, (2, 3), 20_000
    mean, cov = random_mean_cov(np.random.default_rng(5), dim, batch, cond=10.0)
    xi = params_from_mean_cov(name, mean, cov)
    samples = np.asarray(resolve(name).sample(xi, jax.random.key(0), (num,)))
    assert samples.shape == (num, *batch, dim)
    sample_mean = samples.mean(axis=0)
    centered = samples - sample_mean
    sample_cov = np.einsum("n...i,n...j->...ij", centered, centered) / (num - 1)
    var = np.diagonal(cov, axis1=-2, axis2=-1)
    # Monte Carlo tolerance: 5 standard errors (fixed key, so deterministic). The standard error
    # of the mean is √(Sᵢᵢ/N); that of a sample covariance entry is √((SᵢᵢSⱼⱼ + Sᵢⱼ²)/N).
    assert np.all(np.abs(sample_mean - mean) <= 5 * np.sqrt(var / num))
    cov_se = np.sqrt((var[..., :, None] * var[..., None, :] + cov**2) / num)
    assert np.all(np.abs(sample_cov - cov) <= 5 * cov_se)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_sampling_is_reparameterized(name):
    mean, cov = random_mean_cov(np.random.default_rng(6), DIM, BATCH)
    p = resolve(name)
    key = jax.random.key(1)

    def average_sample(m):
        xi = p.from_natural(gaussian.natural_from_mean_covariance(m, jnp.asarray(cov)))
        return jnp.sum(jnp.mean(p.sample(xi, key, (64,)), axis=0))

    # x = m + A(ξ)ε with A independent of m, so ∂ mean(x)/∂m = 1 exactly; the path through
    # ξ(m) adds only rounding.
    np.testing.assert_allclose(jax.grad(average_sample)(jnp.asarray(mean)), 1.0, atol=1e-10)
    if name != "natural" and name != "expectation":  # their first block is the mean itself
        xi = params_from_mean_cov(name, mean, cov)

        def direct(m):
            return jnp.sum(jnp.mean(p.sample((m, xi[1]), key, (64,)), axis=0))

        np.testing.assert_array_equal(jax.grad(direct)(xi[0]), 1.0)


# --------------------------------------------------------------------------------------------
# float32
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_conversions_and_densities_run_in_float32_and_keep_the_dtype(name):
    mean, cov = random_mean_cov(np.random.default_rng(7), DIM, BATCH, cond=10.0)
    p = resolve(name)
    xi32 = params_from_mean_cov(name, mean, cov, dtype=jnp.float32)
    xi64 = tuple(jnp.asarray(a, jnp.float64) for a in xi32)  # the same point, rounded once
    x = jnp.asarray(np.random.default_rng(8).standard_normal(BATCH + (DIM,)), jnp.float32)

    def everything(xi, x):
        theta, eta = p.to_natural(xi), p.to_expectation(xi)
        return {
            "to_natural": theta,
            "to_expectation": eta,
            "from_natural": p.from_natural(theta),
            "from_expectation": p.from_expectation(eta),
            "mean_covariance": p.mean_covariance(xi),
            "log_prob": p.log_prob(xi, x),
            "entropy": p.entropy(xi),
            "kl": p.kl(
                xi,
                p.from_natural(
                    gaussian.natural_from_mean_covariance(
                        jnp.zeros_like(xi[0]),
                        jnp.broadcast_to(jnp.eye(DIM, dtype=xi[0].dtype), BATCH + (DIM, DIM)),
                    )
                ),
            ),
        }

    got = everything(xi32, x)
    want = everything(xi64, jnp.asarray(x, jnp.float64))
    for key, value in got.items():
        for leaf in jax.tree.leaves(value):
            assert leaf.dtype == jnp.float32, key
        # float32 eps = 6e-8, amplified by cond(S) = 10 and a few solves: ~1e-5; 1e-3 is modest.
        assert rel_err(value, want[key]) <= 1e-3, key
    samples = p.sample(xi32, jax.random.key(0), (2,))
    assert samples.dtype == jnp.float32 and samples.shape == (2, *BATCH, DIM)


# --------------------------------------------------------------------------------------------
# is_valid
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_is_valid_is_jit_compatible_and_batch_shaped(name):
    dim, batch = 3, (2, 3)
    p = resolve(name)
    vec, mat = params_from_mean_cov(name, *random_mean_cov(np.random.default_rng(9), dim, batch))
    # Negating the matrix block leaves every parameterization's domain (S or −2θ₂ negative
    # definite, η₂ − η₁η₁ᵀ = −S − 2η₁η₁ᵀ, a negative Cholesky diagonal); NaN is never valid.
    mat = mat.at[1, 2].set(-mat[1, 2])
    vec = vec.at[0, 1, 0].set(jnp.nan)
    expected = np.ones(batch, bool)
    expected[1, 2] = expected[0, 1] = False

    valid = jax.jit(p.is_valid)((vec, mat))
    assert valid.shape == batch and valid.dtype == jnp.bool_
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(p.is_valid((vec, mat)), expected)
    assert jax.jit(p.is_valid)((vec[0, 0], mat[0, 0])).shape == ()


# --------------------------------------------------------------------------------------------
# check: clear errors (natural_gradient runs the same checks; see test_natural_gradient.py)
# --------------------------------------------------------------------------------------------


def _valid(name="mean_covariance", batch=()):
    return params_from_mean_cov(name, *random_mean_cov(np.random.default_rng(10), 3, batch))


def test_valid_params_pass_check():
    for name in PARAMETERIZATION_NAMES:
        resolve(name).check(_valid(name))


def test_resolve_suggests_a_close_name_for_an_unknown_one():
    with pytest.raises(
        ValueError,
        match=r"unknown parameterization 'mean_cholesy'\. Did you mean "
        r"'mean_cholesky'.*Known names: .*mean_precision_cholesky",
    ):
        resolve("mean_cholesy")


def test_check_rejects_an_indefinite_covariance():
    mean, cov = _valid()
    cov = cov.at[2, 2].set(-0.1)
    with pytest.raises(ValueError, match="the covariance must be symmetric positive definite"):
        gaussian.mean_covariance.check((mean, cov))


def test_check_rejects_a_positive_definite_theta2():
    theta1, theta2 = _valid("natural")
    with pytest.raises(ValueError, match=r"−2·theta2 \(the precision S⁻¹\) must be symmetric"):
        gaussian.natural.check((theta1, -theta2))


@pytest.mark.parametrize("diagonal", [0.0, -1.0], ids=["zero", "negative"])
@pytest.mark.parametrize("name", CHOLESKY_NAMES)
def test_check_rejects_a_cholesky_factor_without_a_positive_diagonal(name, diagonal):
    mean, tril = _valid(name)
    label = "scale_tril" if name == "mean_cholesky" else "precision_tril"
    with pytest.raises(ValueError, match=f"{label} must be a finite lower-triangular matrix"):
        resolve(name).check((mean, tril.at[0, 0].set(diagonal)))


def test_check_rejects_a_non_symmetric_covariance():
    mean, cov = _valid()
    with pytest.raises(ValueError, match=r"covariance must be symmetric; pass natgrad\.linalg"):
        gaussian.mean_covariance.check((mean, cov.at[2, 0].add(1e-3)))


def test_check_rejects_a_non_symmetric_theta2():
    theta1, theta2 = _valid("natural")
    with pytest.raises(ValueError, match="theta2 must be symmetric"):
        gaussian.natural.check((theta1, theta2.at[0, 1].add(1e-3)))


@pytest.mark.parametrize("name", CHOLESKY_NAMES)
def test_check_rejects_upper_triangular_entries_in_a_cholesky_factor(name):
    mean, tril = _valid(name)
    with pytest.raises(ValueError, match=r"must be lower triangular .*pass jnp\.tril"):
        resolve(name).check((mean, tril.at[1, 2].set(1e-3)))


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_check_rejects_nan(name):
    vec, mat = _valid(name)
    with pytest.raises(ValueError, match="`params` contains NaN or infinite values"):
        resolve(name).check((vec, mat.at[0, 0].set(jnp.nan)))


def test_check_rejects_a_matrix_of_the_wrong_size():
    mean, cov = _valid()
    with pytest.raises(ValueError, match=r"covariance must have shape \(\.\.\., 3, 3\).*\(2, 2\)"):
        gaussian.mean_covariance.check((mean, cov[:2, :2]))


def test_check_rejects_a_batch_shape_mismatch():
    mean, cov = _valid(batch=(2,))
    with pytest.raises(
        ValueError,
        match=r"batch shapes differ: mean has \(1,\), covariance "
        r"has \(2,\)",
    ):
        gaussian.mean_covariance.check((mean[:1], cov))


def test_check_rejects_a_dict():
    mean, cov = _valid()
    with pytest.raises(TypeError, match=r"must be a pair \(mean, scale_tril\).*got dict"):
        gaussian.mean_cholesky.check({"mean": mean, "scale_tril": cov})


def test_check_rejects_a_triple():
    mean, cov = _valid()
    with pytest.raises(TypeError, match="got tuple with 3 entries"):
        gaussian.mean_covariance.check((mean, cov, cov))


def test_check_rejects_an_integer_dtype():
    with pytest.raises(TypeError, match="mean must have a floating dtype"):
        gaussian.mean_covariance.check((jnp.zeros(2, jnp.int32), jnp.eye(2)))


def test_check_rejects_mixed_dtypes():
    mean, cov = _valid()
    with pytest.raises(TypeError, match="mean is float32 but covariance is float64"):
        gaussian.mean_covariance.check((mean.astype(jnp.float32), cov))


def test_check_only_runs_static_checks_under_jit():
    mean, cov = _valid()

    @jax.jit
    def checked(mean, cov):
        gaussian.mean_covariance.check((mean, cov))
        return gaussian.mean_covariance.is_valid((mean, cov))

    assert not bool(checked(mean, -cov))  # no error under jit; is_valid reports it
    with pytest.raises(ValueError, match="batch shapes differ"):
        checked(mean[None], cov)


def test_log_prob_of_the_mean_is_the_normalizer():
    # A closed-form value, independent of scipy: log N(m | m, S) = −½ log det(2πS).
    mean, cov = random_mean_cov(np.random.default_rng(11), 4, ())
    xi = params_from_mean_cov("mean_precision_cholesky", mean, cov)
    expected = -0.5 * (4 * math.log(2 * math.pi) + np.linalg.slogdet(cov)[1])
    np.testing.assert_allclose(
        gaussian.mean_precision_cholesky.log_prob(xi, jnp.asarray(mean)), expected, rtol=1e-12
    )
