"""A user-defined Gaussian parameterization (maps to and from θ) gets natural gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import natgrad
from natgrad import linalg
from natgrad.expfam import gaussian

jax.config.update("jax_enable_x64", True)


def _to_natural(xi):
    mean, log_chol = xi
    eye = jnp.eye(mean.shape[-1], dtype=mean.dtype)
    diag = jnp.diagonal(log_chol, axis1=-2, axis2=-1)
    chol = jnp.tril(log_chol, -1) + jnp.exp(diag)[..., None] * eye
    return gaussian.natural_from_mean_cholesky(mean, chol)


def _from_natural(theta):
    mean, chol = gaussian.mean_cholesky_from_natural(*theta)
    eye = jnp.eye(mean.shape[-1], dtype=mean.dtype)
    diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
    return mean, jnp.tril(chol, -1) + jnp.log(diag)[..., None] * eye


LOG_CHOLESKY = gaussian.custom_parameterization(
    "mean_log_cholesky", _to_natural, _from_natural, matrix_kind="cholesky"
)


def _loss_of_mean_cov(mean, cov):
    return jnp.sum(jnp.sin(mean)) + 0.3 * jnp.sum(cov * cov) - jnp.linalg.slogdet(cov)[1]


@pytest.mark.parametrize("batch", [(), (2,)])
def test_custom_log_cholesky_gives_the_same_direction_as_builtins(batch):
    dim = 4
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    mean = jax.random.normal(k1, (*batch, dim))
    a = jax.random.normal(k2, (*batch, dim, dim))
    cov = a @ linalg.transpose(a) / dim + 0.5 * jnp.eye(dim)
    theta = gaussian.natural_from_mean_covariance(mean, cov)

    directions = []
    for p in (LOG_CHOLESKY, gaussian.mean_cholesky, gaussian.mean_covariance):
        xi = p.from_natural(theta)
        grads = jax.grad(lambda xi, p=p: jnp.sum(_loss_of_mean_cov(*p.mean_covariance(xi))))(xi)
        step = natgrad.natural_gradient(params=xi, grads=grads, parameterization=p)
        _, pushed = jax.jvp(p.mean_covariance, (xi,), (step,))
        directions.append(pushed)
    # Same direction in (m, S) up to rounding of a few factorizations at cond(S) < 100.
    for other in directions[1:]:
        for x, y in zip(directions[0], other, strict=True):
            np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12)


def test_custom_parameterization_validity_and_errors():
    xi = LOG_CHOLESKY.from_natural(gaussian.natural_from_mean_covariance(jnp.zeros(2), jnp.eye(2)))
    assert bool(LOG_CHOLESKY.is_valid(xi))
    assert not bool(LOG_CHOLESKY.is_valid((xi[0], xi[1].at[0, 0].set(jnp.nan))))
    with pytest.raises(ValueError, match="matrix_kind"):
        gaussian.custom_parameterization("x", _to_natural, _from_natural, matrix_kind="upper")
    with pytest.raises(TypeError, match="from_natural"):
        gaussian.custom_parameterization("x", _to_natural, None)
