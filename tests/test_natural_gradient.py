"""natgrad.natural_gradient on the full-covariance Gaussian, against dense references (float64).

The reference natural gradient is F⁻¹∇ in minimal coordinates z = (m, vech S), with F the dense
Hessian of KL(q₀‖q_z) and ∇ the gradient of the same loss over z (tests/helpers.py). A natural
gradient is a tangent vector, so pushed forward to (m, S) it must equal that reference in every
parameterization.
"""

import functools
import re
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import (
    CHOLESKY_NAMES,
    PARAMETERIZATION_NAMES,
    SYMMETRIC_NAMES,
    assert_tree_close,
    make_loss,
    params_from_mean_cov,
    push_forward,
    random_mean_cov,
    random_spd,
    read_lower,
    read_upper,
    reference_natural_direction,
    rel_err,
)

import natgrad
from natgrad import gaussian
from natgrad.expfam.base import resolve

jax.config.update("jax_enable_x64", True)  # before any array is created

# (dim, batch) cases: dims spread over 1–8, unbatched and with one or two leading axes. Fixed
# rather than drawn so that each shape is compiled once and shared between tests.
CASES = ((1, ()), (3, (2, 3)), (5, (3,)), (8, ()))
CASE_IDS = [f"D{d}-batch{'x'.join(map(str, b)) or 'none'}" for d, b in CASES]
MODES = ("forward", "reverse")


@functools.cache
def _problem(case_index: int):
    """A random (m, S) at cond(S) = 10 and a loss of (m, S) for one of CASES."""
    dim, batch = CASES[case_index]
    rng = np.random.default_rng(1000 + case_index)
    mean, cov = random_mean_cov(rng, dim, batch, cond=10.0)
    return mean, cov, make_loss(rng, dim)


@functools.cache
def _reference(case_index: int):
    mean, cov, loss = _problem(case_index)
    return reference_natural_direction(loss, mean, cov)


READERS = {"full": lambda xi: xi, "lower": read_lower, "upper": read_upper}


@functools.cache
def _grad_fn(case_index: int, name: str, read: str = "full"):
    """ξ ↦ ∇_ξ loss(p.mean_covariance(read(ξ))), as a user's jax.grad returns it."""
    loss = _problem(case_index)[2]
    p = resolve(name)
    reader = READERS[read]
    return jax.grad(lambda xi: loss(*p.mean_covariance(reader(xi))))


@functools.cache
def _natural_step(case_index: int, name: str, mode: str):
    """(params, user gradient, natural gradient, its push-forward to (m, S)), cached."""
    mean, cov, _ = _problem(case_index)
    params = params_from_mean_cov(name, mean, cov)
    grads = _grad_fn(case_index, name)(params)
    step = natgrad.natural_gradient(params=params, grads=grads, parameterization=name, mode=mode)
    return params, grads, step, push_forward(resolve(name), params, step)


# --------------------------------------------------------------------------------------------
# Against the dense Fisher
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
@pytest.mark.parametrize("case_index", range(len(CASES)), ids=CASE_IDS)
def test_natural_step_pushed_to_mean_cov_equals_dense_fisher_solve(case_index, name, mode):
    _, _, step, (dm, dcov) = _natural_step(case_index, name, mode)
    ref_dm, ref_dcov = _reference(case_index)
    # cond(S) = 10 gives cond(F) ≈ 1e2–1e3; every path is a few Cholesky solves, so errors are
    # ~1e-13. 1e-8 is the bound and leaves room for the dense solve of F.
    assert_tree_close((dm, dcov), (ref_dm, ref_dcov), rtol=1e-8)
    expected = params_from_mean_cov(name, *_problem(case_index)[:2])
    for leaf, ref_leaf in zip(step, expected, strict=True):
        assert leaf.shape == ref_leaf.shape and leaf.dtype == jnp.float64


@pytest.mark.parametrize("case_index", range(len(CASES)), ids=CASE_IDS)
def test_natural_step_is_the_same_direction_in_every_parameterization(case_index):
    pushed = {
        name: _natural_step(case_index, name, "forward")[3] for name in PARAMETERIZATION_NAMES
    }
    for name in PARAMETERIZATION_NAMES:
        # All five are the same tangent vector up to rounding (cond(F) ≲ 1e3): 1e-9.
        assert_tree_close(pushed[name], pushed["mean_covariance"], rtol=1e-9, msg=name)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
@pytest.mark.parametrize("case_index", range(len(CASES)), ids=CASE_IDS)
def test_forward_and_reverse_mode_agree_to_rounding(case_index, name):
    forward = _natural_step(case_index, name, "forward")[2]
    reverse = _natural_step(case_index, name, "reverse")[2]
    # The same linear map evaluated by a JVP or by two VJPs: only the rounding differs.
    assert_tree_close(reverse, forward, rtol=1e-12)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_natural_step_of_a_symmetric_block_is_symmetric_of_a_cholesky_block_lower(name):
    for mode in MODES:
        step_mat = np.asarray(_natural_step(2, name, mode)[2][1])
        if name in CHOLESKY_NAMES:
            np.testing.assert_array_equal(np.triu(step_mat, 1), 0.0)
        else:
            # Symmetric to rounding: a JVP through S + mmᵀ may differ by an ulp across the
            # diagonal (seen: 1e-17 relative for expectation), so compare at 1e-14.
            assert_tree_close(np.swapaxes(step_mat, -1, -2), step_mat, rtol=1e-14)


# --------------------------------------------------------------------------------------------
# Gradient conventions
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("read", ["lower", "upper"])
@pytest.mark.parametrize("name", SYMMETRIC_NAMES)
def test_loss_reading_one_triangle_gives_the_same_natural_gradient(name, read, mode):
    params, grads_full, _, _ = _natural_step(2, name, mode)
    grads_tri = _grad_fn(2, name, read)(params)
    # The two losses agree on symmetric matrices but their jax.grad differ (one triangle is 0).
    other = np.triu(grads_tri[1], 1) if read == "lower" else np.tril(grads_tri[1], -1)
    np.testing.assert_array_equal(other, 0.0)
    assert rel_err(grads_tri[1], grads_full[1]) > 0.1

    def step(grads):
        return natgrad.natural_gradient(
            params=params, grads=grads, parameterization=name, mode=mode
        )

    # ½(G + Gᵀ) is the same symmetric gradient for both: equal up to rounding.
    assert_tree_close(step(grads_tri), step(grads_full), rtol=1e-12)


@pytest.mark.parametrize("name", CHOLESKY_NAMES)
def test_upper_triangle_of_a_cholesky_gradient_is_ignored(name):
    params, tril_grads, _, _ = _natural_step(2, name, "forward")
    # The parameterization reads only the lower triangle, so jax.grad's upper triangle is 0;
    # a gradient from elsewhere (a loss reading the raw matrix) may fill it: it is ignored.
    np.testing.assert_array_equal(np.triu(tril_grads[1], 1), 0.0)
    upper = np.triu(np.random.default_rng(0).standard_normal(tril_grads[1].shape), 1)
    grads = (tril_grads[0], tril_grads[1] + upper)
    np.testing.assert_array_equal(
        natgrad.natural_gradient(params=params, grads=grads, parameterization=name)[1],
        natgrad.natural_gradient(params=params, grads=tril_grads, parameterization=name)[1],
    )


class MeanScale(NamedTuple):
    mean: jax.Array
    scale_tril: jax.Array


@pytest.mark.parametrize("container", [list, MeanScale._make], ids=["list", "namedtuple"])
def test_natural_gradient_keeps_the_container_type(container):
    params, grads, step, _ = _natural_step(0, "mean_cholesky", "forward")
    got = natgrad.natural_gradient(
        params=container(params), grads=container(grads), parameterization=resolve("mean_cholesky")
    )
    assert type(got) is type(container(params))
    np.testing.assert_array_equal(got[1], step[1])  # same computation, same numbers


# --------------------------------------------------------------------------------------------
# Conjugate Gaussian model: one natural step with γ = 1 is the exact posterior
# --------------------------------------------------------------------------------------------


def _linear_regression(rng, dim, batch):
    """Bayesian linear regression y = Xw + ε, w ~ N(0, Σ₀), ε ~ N(0, σ²I), and its posterior.

    Returns (grad_neg_elbo, posterior natural parameters as numpy) where grad_neg_elbo(ξ, p) is
    ∇_ξ of −ELBO of q = ξ in parameterization p, −E_q[log N(y | Xw, σ²I)] + KL(q‖N(0, Σ₀)),
    in closed form.
    """
    n, noise = 12, 0.3
    x = rng.standard_normal(batch + (n, dim))
    y = rng.standard_normal(batch + (n,))
    prior_cov = random_spd(rng, dim, batch, cond=10.0)
    prior = params_from_mean_cov("mean_covariance", np.zeros(batch + (dim,)), prior_cov)
    xtx = np.swapaxes(x, -1, -2) @ x
    xty = (np.swapaxes(x, -1, -2) @ y[..., None])[..., 0]
    # Σ_post⁻¹ = Σ₀⁻¹ + XᵀX/σ², θ₁ = Σ_post⁻¹m_post = Xᵀy/σ² (zero prior mean), θ₂ = −½Σ_post⁻¹.
    prec_post = np.linalg.inv(prior_cov) + xtx / noise
    posterior = (xty / noise, -0.5 * prec_post)
    xj, yj, xtxj = jnp.asarray(x), jnp.asarray(y), jnp.asarray(xtx)

    def neg_elbo(params, p):
        m, s = p.mean_covariance(params)
        resid = yj - jnp.einsum("...nd,...d->...n", xj, m)
        expected_ll = -0.5 * n * np.log(2 * np.pi * noise) - 0.5 / noise * (
            jnp.sum(resid**2, axis=-1) + jnp.einsum("...ij,...ji->...", xtxj, s)
        )
        kl = p.kl(params, prior, gaussian.mean_covariance)
        return jnp.sum(kl - expected_ll)

    # Jitted gradient (p static): op-by-op differentiation of the KL would compile far more.
    return jax.jit(jax.grad(neg_elbo), static_argnums=1), posterior


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("dim, batch", [(8, ()), (5, (3,))], ids=["D8", "D5-batch3"])
def test_one_natural_step_with_unit_rate_lands_on_the_exact_posterior(dim, batch, mode):
    rng = np.random.default_rng(7)
    grad_neg_elbo, posterior = _linear_regression(rng, dim, batch)
    theta = params_from_mean_cov("natural", *random_mean_cov(rng, dim, batch, cond=10.0))
    grads = grad_neg_elbo(theta, gaussian.natural)
    step = natgrad.natural_gradient(
        params=theta, grads=grads, parameterization="natural", mode=mode
    )
    new_theta = jax.tree.map(lambda t, s: t - 1.0 * s, theta, step)
    # −ELBO is −⟨θ_post, η⟩ + ⟨θ, η⟩ − A(θ) + const, so θ − ∂L/∂η = θ_post exactly; what is
    # left is rounding through S = (−2θ₂)⁻¹ at cond ≲ 1e2.
    assert_tree_close(new_theta, posterior, rtol=1e-10)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_natural_step_from_any_parameterization_maps_to_the_exact_posterior(name):
    rng = np.random.default_rng(8)
    dim, batch = 5, (3,)
    grad_neg_elbo, posterior = _linear_regression(rng, dim, batch)
    p = resolve(name)
    params = params_from_mean_cov(name, *random_mean_cov(rng, dim, batch, cond=10.0))
    step = natgrad.natural_gradient(
        params=params, grads=grad_neg_elbo(params, p), parameterization=name
    )
    # The natural gradient is a tangent vector: pushed to θ it is the natural-parameter step.
    theta, dtheta = jax.jvp(p.to_natural, (params,), (step,))
    new_theta = jax.tree.map(lambda t, s: t - 1.0 * s, theta, dtheta)
    # Same identity as the natural-parameter test plus one JVP of θ(ξ): rounding only.
    assert_tree_close(new_theta, posterior, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# float32, jit, vmap
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_natural_gradient_runs_in_float32_and_keeps_the_dtype(name):
    mean, cov, _ = _problem(2)
    params32 = params_from_mean_cov(name, mean, cov, dtype=jnp.float32)
    grads32 = _grad_fn(2, name)(params32)
    assert all(g.dtype == jnp.float32 for g in grads32)
    for mode in MODES:
        step32 = natgrad.natural_gradient(
            params=params32, grads=grads32, parameterization=name, mode=mode
        )
        assert [s.dtype for s in step32] == [jnp.float32, jnp.float32]
        # The float64 result at the same (rounded) point; cond(S) = 10 so float32 rounding
        # (6e-8) grows to ~1e-5 through the loss gradient and the Cholesky solves: 1e-3 is modest.
        params64 = tuple(jnp.asarray(a, jnp.float64) for a in params32)
        step64 = natgrad.natural_gradient(
            params=params64, grads=_grad_fn(2, name)(params64), parameterization=name, mode=mode
        )
        assert_tree_close(step32, step64, rtol=1e-3)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_natural_gradient_under_jit_equals_eager(name, mode):
    params, grads, eager, _ = _natural_step(2, name, mode)
    jitted = jax.jit(functools.partial(natgrad.natural_gradient, parameterization=name, mode=mode))
    # Same operations; XLA may fuse and reorder them, so equal to rounding.
    assert_tree_close(jitted(params=params, grads=grads), eager, rtol=1e-12)


@pytest.mark.parametrize("name", PARAMETERIZATION_NAMES)
def test_vmap_over_the_batch_equals_the_batched_call(name):
    params, grads, batched, _ = _natural_step(1, name, "forward")  # batch (2, 3)

    def one(xi, g):
        return natgrad.natural_gradient(params=xi, grads=g, parameterization=name)

    mapped = jax.vmap(jax.vmap(one))(params, grads)
    # Batched linear algebra vs. one matrix at a time: equal to rounding.
    assert_tree_close(mapped, batched, rtol=1e-12)


# --------------------------------------------------------------------------------------------
# Bad input: clear errors
# --------------------------------------------------------------------------------------------


def _valid(name="mean_covariance", dim=3, batch=()):
    rng = np.random.default_rng(3)
    params = params_from_mean_cov(name, *random_mean_cov(rng, dim, batch))
    grads = tuple(jnp.ones_like(a) for a in params)
    return params, grads


def test_unknown_parameterization_name_lists_known_names_and_suggests_a_close_one():
    params, grads = _valid()
    with pytest.raises(ValueError, match=r"unknown parameterization 'mean_cholesy'") as info:
        natgrad.natural_gradient(params=params, grads=grads, parameterization="mean_cholesy")
    message = str(info.value)
    assert "Did you mean 'mean_cholesky'" in message
    assert re.search(r"Known names: .*mean_cholesky", message)
    for name in PARAMETERIZATION_NAMES:
        assert name in message


def test_parameterization_of_the_wrong_type_is_rejected():
    params, grads = _valid()
    with pytest.raises(TypeError, match="must be a name such as 'mean_cholesky'"):
        natgrad.natural_gradient(params=params, grads=grads, parameterization=3)


def test_grads_with_a_different_structure_are_rejected():
    params, grads = _valid()
    with pytest.raises(ValueError, match="`grads` must have the same structure as `params`"):
        natgrad.natural_gradient(
            params=params, grads=(*grads, grads[1]), parameterization="mean_covariance"
        )


def test_grads_as_a_dict_are_rejected():
    params, grads = _valid()
    with pytest.raises(ValueError, match="`grads` must have the same structure as `params`"):
        natgrad.natural_gradient(
            params=params,
            grads={"mean": grads[0], "cov": grads[1]},
            parameterization="mean_covariance",
        )


def test_grads_of_a_different_shape_are_rejected():
    params, grads = _valid()
    with pytest.raises(ValueError, match=r"`grads` leaf 1 has shape \(3, 2\)"):
        natgrad.natural_gradient(
            params=params, grads=(grads[0], grads[1][:, :2]), parameterization="mean_covariance"
        )


def test_indefinite_covariance_is_rejected():
    params, grads = _valid()
    cov = params[1].at[0, 0].set(-1.0)
    with pytest.raises(ValueError, match="covariance must be symmetric positive definite"):
        natgrad.natural_gradient(
            params=(params[0], cov), grads=grads, parameterization="mean_covariance"
        )


def test_positive_definite_theta2_is_rejected():
    params, grads = _valid("natural")
    with pytest.raises(ValueError, match=r"theta2 \(the precision S⁻¹\) must be"):
        natgrad.natural_gradient(
            params=(params[0], -params[1]), grads=grads, parameterization="natural"
        )


@pytest.mark.parametrize("diagonal", [0.0, -0.5], ids=["zero", "negative"])
@pytest.mark.parametrize("name", CHOLESKY_NAMES)
def test_cholesky_factor_without_a_positive_diagonal_is_rejected(name, diagonal):
    params, grads = _valid(name)
    tril = params[1].at[1, 1].set(diagonal)
    with pytest.raises(ValueError, match="lower-triangular matrix with a positive diagonal"):
        natgrad.natural_gradient(params=(params[0], tril), grads=grads, parameterization=name)


def test_covariance_that_is_not_positive_definite_in_expectation_form_is_rejected():
    params, grads = _valid("expectation")
    eta2 = params[1] - 10.0 * jnp.eye(3)
    with pytest.raises(ValueError, match=r"eta2 − eta1·eta1ᵀ \(the covariance\)"):
        natgrad.natural_gradient(
            params=(params[0], eta2), grads=grads, parameterization="expectation"
        )


def test_non_symmetric_covariance_is_rejected():
    params, grads = _valid()
    cov = params[1].at[0, 1].add(0.1)  # still positive definite after symmetrization
    with pytest.raises(ValueError, match="covariance must be symmetric; pass"):
        natgrad.natural_gradient(
            params=(params[0], cov), grads=grads, parameterization="mean_covariance"
        )


@pytest.mark.parametrize("name", CHOLESKY_NAMES)
def test_upper_triangular_entries_in_a_cholesky_parameter_are_rejected(name):
    params, grads = _valid(name)
    tril = params[1].at[0, 2].set(0.3)
    with pytest.raises(ValueError, match="must be lower triangular"):
        natgrad.natural_gradient(params=(params[0], tril), grads=grads, parameterization=name)


def test_nan_in_params_is_rejected():
    params, grads = _valid("mean_cholesky")
    with pytest.raises(ValueError, match="`params` contains NaN or infinite values"):
        natgrad.natural_gradient(
            params=(params[0].at[1].set(jnp.nan), params[1]),
            grads=grads,
            parameterization="mean_cholesky",
        )


def test_nan_in_grads_is_rejected():
    params, grads = _valid()
    with pytest.raises(ValueError, match="`grads` leaf 1 contains NaN or infinite values"):
        natgrad.natural_gradient(
            params=params,
            grads=(grads[0], grads[1].at[2, 0].set(jnp.nan)),
            parameterization="mean_covariance",
        )


def test_matrix_of_the_wrong_size_is_rejected():
    params, grads = _valid()
    with pytest.raises(ValueError, match=r"covariance must have shape \(\.\.\., 3, 3\)"):
        natgrad.natural_gradient(
            params=(params[0], jnp.eye(4)), grads=grads, parameterization="mean_covariance"
        )


def test_batch_shape_mismatch_is_rejected():
    params, grads = _valid(batch=(3,))
    with pytest.raises(ValueError, match=r"batch shapes differ: mean has \(2,\), covariance has"):
        natgrad.natural_gradient(
            params=(params[0][:2], params[1]), grads=grads, parameterization="mean_covariance"
        )


def test_params_as_a_dict_are_rejected():
    params, grads = _valid()
    with pytest.raises(TypeError, match=r"must be a pair \(mean, covariance\).*got dict"):
        natgrad.natural_gradient(
            params={"mean": params[0], "covariance": params[1]},
            grads={"mean": grads[0], "covariance": grads[1]},
            parameterization="mean_covariance",
        )


def test_params_as_a_triple_are_rejected():
    params, grads = _valid()
    with pytest.raises(TypeError, match=r"must be a pair .*got tuple with 3 entries"):
        natgrad.natural_gradient(
            params=(*params, params[1]),
            grads=(*grads, grads[1]),
            parameterization="mean_covariance",
        )


def test_unknown_mode_is_rejected():
    params, grads = _valid()
    with pytest.raises(ValueError, match="`mode` must be 'forward' or 'reverse'"):
        natgrad.natural_gradient(
            params=params, grads=grads, parameterization="mean_covariance", mode="backward"
        )


@pytest.mark.parametrize("name", ["mean_covariance", "mean_cholesky"])
def test_grads_of_a_different_dtype_are_rejected(name):
    # Before this check: silently float64 steps for float32 symmetric parameters, and a cryptic
    # lax.triangular_solve dtype error for Cholesky ones.
    params = tuple(a.astype(jnp.float32) for a in _valid(name)[0])
    grads = tuple(jnp.ones(a.shape, jnp.float64) for a in params)
    with pytest.raises(ValueError, match="`grads` leaf 0 has dtype float64 but the matching"):
        natgrad.natural_gradient(params=params, grads=grads, parameterization=name)
