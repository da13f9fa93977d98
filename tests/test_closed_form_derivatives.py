"""The Gaussians' closed-form derivatives at the known point equal autodiff of the conversions."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import natgrad
from natgrad import linalg
from natgrad.expfam import gaussian
from natgrad.expfam.base import Parameterization

jax.config.update("jax_enable_x64", True)

# Both sides are float64 evaluations of the same derivative at cond(S) < 50; they differ by a few
# triangular solves' rounding, so 1e-11 relative leaves a wide margin over the ~1e-15 observed.
RTOL = 1e-11


def _point(key, dim, batch):
    k1, k2 = jax.random.split(key)
    mean = jax.random.normal(k1, (*batch, dim))
    a = jax.random.normal(k2, (*batch, dim, dim))
    cov = a @ linalg.transpose(a) / dim + 0.5 * jnp.eye(dim)
    return mean, cov


def _assert_trees_close(actual, expected):
    for x, y in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(x, y, rtol=RTOL, atol=RTOL * float(jnp.max(jnp.abs(y))))


@pytest.mark.parametrize("p", gaussian.PARAMETERIZATIONS, ids=lambda p: p.name)
@pytest.mark.parametrize("batch", [(), (2, 3)])
@pytest.mark.parametrize("dim", [1, 5])
def test_closed_form_linearizations_match_autodiff(p, batch, dim):
    keys = jax.random.split(jax.random.PRNGKey(dim + 10 * len(batch)), 5)
    params = p.from_natural(gaussian.natural_from_mean_covariance(*_point(keys[0], dim, batch)))
    cot = p.project_gradient(
        params,
        (jax.random.normal(keys[1], (*batch, dim)), jax.random.normal(keys[2], (*batch, dim, dim))),
    )
    _assert_trees_close(
        p.project_natural_tangent(p.from_expectation_vjp(params, cot)),
        p.project_natural_tangent(Parameterization.from_expectation_vjp(p, params, cot)),
    )
    tangent = (
        jax.random.normal(keys[3], (*batch, dim)),
        linalg.symmetrize(jax.random.normal(keys[4], (*batch, dim, dim))),
    )
    _assert_trees_close(
        p.from_natural_jvp(params, tangent), Parameterization.from_natural_jvp(p, params, tangent)
    )


@pytest.mark.parametrize("p", gaussian.PARAMETERIZATIONS, ids=lambda p: p.name)
def test_all_derivative_routes_agree(p):
    keys = jax.random.split(jax.random.PRNGKey(3), 3)
    params = p.from_natural(gaussian.natural_from_mean_covariance(*_point(keys[0], 5, (2,))))
    grads = (jax.random.normal(keys[1], (2, 5)), jax.random.normal(keys[2], (2, 5, 5)))
    reference = natgrad.natural_gradient(params=params, grads=grads, parameterization=p)
    for mode in ("forward", "reverse"):
        for derivatives in ("closed_form", "autodiff"):
            result = natgrad.natural_gradient(
                params=params, grads=grads, parameterization=p, mode=mode, derivatives=derivatives
            )
            _assert_trees_close(result, reference)


def test_unknown_derivatives_option_is_rejected():
    params = (jnp.zeros(2), jnp.eye(2))
    with pytest.raises(ValueError, match="derivatives"):
        natgrad.natural_gradient(
            params=params, grads=params, parameterization="mean_cholesky", derivatives="magic"
        )


@pytest.mark.parametrize("p", gaussian.PARAMETERIZATIONS, ids=lambda p: p.name)
def test_fused_natural_gradient_equals_the_composition(p):
    keys = jax.random.split(jax.random.PRNGKey(7), 3)
    params = p.from_natural(gaussian.natural_from_mean_covariance(*_point(keys[0], 6, (2,))))
    grads = p.project_gradient(
        params, (jax.random.normal(keys[1], (2, 6)), jax.random.normal(keys[2], (2, 6, 6)))
    )
    composed = p.from_natural_jvp(
        params, p.project_natural_tangent(p.from_expectation_vjp(params, grads))
    )
    _assert_trees_close(p.natural_gradient_at(params, grads), composed)
