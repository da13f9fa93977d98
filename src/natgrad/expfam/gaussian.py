"""Multivariate Gaussians with full covariance in five parameterizations.

A Gaussian N(m, S) on ℝᴰ is an exponential family with sufficient statistics T(x) = (x, xxᵀ):

* ``natural``:                 θ₁ = S⁻¹m,  θ₂ = −½S⁻¹
* ``expectation``:             η₁ = m,     η₂ = S + mmᵀ
* ``mean_covariance``:         (m, S)
* ``mean_cholesky``:           (m, L) with S = LLᵀ, L lower triangular with positive diagonal
* ``mean_precision_cholesky``: (m, L) with S⁻¹ = LLᵀ, L lower triangular with positive diagonal

Parameters are pairs ``(vector, matrix)`` of shapes ``(..., D)`` and ``(..., D, D)``; leading
axes are a batch of independent Gaussians (as multi-output GPs need). Every conversion between
two parameterizations is written once below and goes through Cholesky factors and triangular
solves, without explicit inverses and without jitter. float32 and float64 are both supported;
outputs keep the input dtype.

Gradient conventions (what ``jax.grad`` of a user's loss hands in is accepted as it is):

* symmetric matrices (S, θ₂, η₂): any G with dL = ⟨G, dS⟩_F for symmetric dS; natgrad uses
  ½(G + Gᵀ), so a loss that reads the whole matrix and one that reads a single triangle both work.
  Natural gradients of symmetric matrices are returned symmetric.
* Cholesky factors: only the lower triangle of G is used (the upper entries are not parameters);
  natural gradients of Cholesky factors are returned lower triangular.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from natgrad import linalg
from natgrad.expfam.base import (
    Parameterization,
    check_floating_pair,
    is_traced,
    register,
    split_pair,
)

# --------------------------------------------------------------------------------------------
# Conversions, one formula each. The hub is (m, S) with Cholesky factors where they are cheaper.
# --------------------------------------------------------------------------------------------


def natural_from_mean_covariance(mean, cov):
    """θ₁ = S⁻¹m, θ₂ = −½S⁻¹ by one Cholesky of S."""
    chol = linalg.cholesky(cov)
    return linalg.cho_solve_vec(chol, mean), -0.5 * linalg.inverse_from_cholesky(chol)


def mean_covariance_from_natural(theta1, theta2):
    """S = (−2θ₂)⁻¹, m = Sθ₁ by one Cholesky of the precision −2θ₂."""
    prec_chol = linalg.cholesky(-2.0 * theta2)  # S⁻¹ = −2θ₂
    return linalg.cho_solve_vec(prec_chol, theta1), linalg.inverse_from_cholesky(prec_chol)


def expectation_from_mean_covariance(mean, cov):
    """η₁ = m, η₂ = S + mmᵀ."""
    return mean, cov + linalg.outer(mean, mean)


def mean_covariance_from_expectation(eta1, eta2):
    """m = η₁, S = η₂ − η₁η₁ᵀ."""
    return eta1, eta2 - linalg.outer(eta1, eta1)


def natural_from_mean_cholesky(mean, scale_tril):
    """θ₂ = −½L⁻ᵀL⁻¹, θ₁ = −2θ₂m, with one triangular inverse of L."""
    prec = linalg.inverse_from_cholesky(scale_tril)
    return linalg.mv(prec, mean), -0.5 * prec


def mean_cholesky_from_natural(theta1, theta2):
    """L with LLᵀ = (−2θ₂)⁻¹ (:func:`natgrad.linalg.inverse_cholesky`), m = LLᵀθ₁."""
    scale_tril = linalg.inverse_cholesky(-2.0 * theta2)
    mean = linalg.mv(scale_tril, linalg.mv(linalg.transpose(scale_tril), theta1))
    return mean, scale_tril


def expectation_from_mean_cholesky(mean, scale_tril):
    """η₁ = m, η₂ = LLᵀ + mmᵀ."""
    return expectation_from_mean_covariance(
        mean, jnp.matmul(scale_tril, linalg.transpose(scale_tril))
    )


def mean_cholesky_from_expectation(eta1, eta2):
    """m = η₁, L = chol(η₂ − η₁η₁ᵀ)."""
    mean, cov = mean_covariance_from_expectation(eta1, eta2)
    return mean, linalg.cholesky(cov)


def natural_from_mean_precision_cholesky(mean, prec_tril):
    """θ₂ = −½LLᵀ, θ₁ = LLᵀm (L the precision's Cholesky factor)."""
    prec = jnp.matmul(prec_tril, linalg.transpose(prec_tril))
    return linalg.mv(prec, mean), -0.5 * prec


def mean_precision_cholesky_from_natural(theta1, theta2):
    """L = chol(−2θ₂), m = (LLᵀ)⁻¹θ₁."""
    prec_tril = linalg.cholesky(-2.0 * theta2)
    return linalg.cho_solve_vec(prec_tril, theta1), prec_tril


def expectation_from_mean_precision_cholesky(mean, prec_tril):
    """η₁ = m, η₂ = L⁻ᵀL⁻¹ + mmᵀ."""
    return expectation_from_mean_covariance(mean, linalg.inverse_from_cholesky(prec_tril))


def mean_precision_cholesky_from_expectation(eta1, eta2):
    """m = η₁, L with LLᵀ = (η₂ − η₁η₁ᵀ)⁻¹ (:func:`natgrad.linalg.inverse_cholesky`)."""
    mean, cov = mean_covariance_from_expectation(eta1, eta2)
    return mean, linalg.inverse_cholesky(cov)


# --------------------------------------------------------------------------------------------
# Derivatives of the conversions, written at a known point so that nothing is refactorized.
# They are what jax.jvp / jax.vjp of the conversions above compute (tests hold them equal), in
# the Frobenius pairing on symmetric matrices.
# --------------------------------------------------------------------------------------------


def _phi(x):
    """Φ(X): the lower triangle of X with its diagonal halved (self-adjoint in ⟨·,·⟩_F)."""
    return jnp.tril(x) - 0.5 * x * jnp.eye(x.shape[-1], dtype=x.dtype)


def cholesky_jvp(chol, dcov):
    """dL = LΦ(L⁻¹ dS L⁻ᵀ), the derivative of L = chol(S) (dS symmetric)."""
    left = linalg.solve_triangular(chol, dcov, lower=True)  # L⁻¹dS
    inner = linalg.solve_triangular(chol, linalg.transpose(left), lower=True)  # L⁻¹dSL⁻ᵀ
    return jnp.matmul(chol, _phi(inner))


def cholesky_vjp(chol, cotangent):
    """Ḡ_S = sym(L⁻ᵀΦ(LᵀG)L⁻¹), the adjoint of :func:`cholesky_jvp` for cotangent G of L."""
    inner = _phi(jnp.matmul(linalg.transpose(chol), jnp.tril(cotangent)))
    right = linalg.solve_triangular(chol, inner, lower=True, transpose_t=True)  # L⁻ᵀX
    both = linalg.solve_triangular(chol, linalg.transpose(right), lower=True, transpose_t=True)
    return linalg.symmetrize(both)  # (L⁻ᵀXL⁻¹)ᵀ symmetrized


def cholesky_natural_gradient(chol, cotangent):
    """LΦ(X + Xᵀ) with X = Φ(Lᵀ tril G): the natural gradient of a Cholesky block.

    For S = LLᵀ the VJP of L(η) gives ∂L/∂η₂ = sym(L⁻ᵀXL⁻¹) and the JVP of L(θ) maps dθ₂ to
    LΦ(2Lᵀdθ₂L); composed, the triangular solves cancel against the products. The same holds
    for the Cholesky factor of the precision, S⁻¹ = LLᵀ (both signs flip).
    """
    inner = _phi(jnp.matmul(linalg.transpose(chol), jnp.tril(cotangent)))
    return jnp.matmul(chol, _phi(inner + linalg.transpose(inner)))


def mean_covariance_from_expectation_vjp(mean, dmean, dcov):
    """Adjoint of (m, S) = (η₁, η₂ − η₁η₁ᵀ): (∂η₁, ∂η₂) = (g_m − 2G_S m, G_S), G_S symmetric."""
    return dmean - 2.0 * linalg.mv(dcov, mean), dcov


def mean_covariance_from_natural_jvp(mean, cov, dtheta1, dtheta2):
    """Derivative of (m, S) = ((−2θ₂)⁻¹θ₁, (−2θ₂)⁻¹): dS = 2S dθ₂ S, dm = S(dθ₁ + 2dθ₂m)."""
    dcov = 2.0 * jnp.matmul(cov, jnp.matmul(dtheta2, cov))
    dmean = linalg.mv(cov, dtheta1 + 2.0 * linalg.mv(dtheta2, mean))
    return dmean, dcov


def natural_from_mean_covariance_vjp(theta1, prec, g1, g2):
    """Adjoint of θ(m, S) = (S⁻¹m, −½S⁻¹) with P = S⁻¹, for cotangent (g₁, G₂):

    ∂m = Pg₁,  ∂S = ½PG₂P − sym((Pg₁)θ₁ᵀ).
    """
    p_g1 = linalg.mv(prec, g1)
    dcov = 0.5 * jnp.matmul(prec, jnp.matmul(linalg.symmetrize(g2), prec))
    dcov = dcov - linalg.symmetrize(linalg.outer(p_g1, theta1))
    return p_g1, dcov


def expectation_from_mean_covariance_jvp(mean, dmean, dcov):
    """Derivative of (η₁, η₂) = (m, S + mmᵀ): (dm, dS + dm mᵀ + m dmᵀ)."""
    return dmean, dcov + linalg.outer(dmean, mean) + linalg.outer(mean, dmean)


# --------------------------------------------------------------------------------------------
# Densities, entropies, KL and sampling from a triangular scale A with AAᵀ = S.
# --------------------------------------------------------------------------------------------


def log_prob_from_scale(mean, scale, x, *, lower: bool = True):
    """log N(x | m, AAᵀ) = −½‖A⁻¹(x − m)‖² − log|det A| − ½D log 2π.

    Args:
      mean: ``(..., D)``.
      scale: triangular ``(..., D, D)`` with AAᵀ = S (lower or upper per ``lower``).
      x: ``(..., D)``, broadcast against the batch.
    Returns:
      ``(...)`` log-densities.
    """
    diff = x - mean
    batch = jnp.broadcast_shapes(diff.shape[:-1], scale.shape[:-2])
    white = linalg.solve_triangular_vec(
        jnp.broadcast_to(scale, batch + scale.shape[-2:]),
        jnp.broadcast_to(diff, batch + diff.shape[-1:]),
        lower=lower,
    )
    dim = mean.shape[-1]
    return (
        -0.5 * jnp.sum(white**2, axis=-1)
        - linalg.log_abs_det_triangular(scale)
        - 0.5 * dim * math.log(2 * math.pi)
    )


def entropy_from_scale(scale):
    """H[N(m, AAᵀ)] = ½D(1 + log 2π) + log|det A|: ``(..., D, D) -> (...)``."""
    dim = scale.shape[-1]
    return 0.5 * dim * (1.0 + math.log(2 * math.pi)) + linalg.log_abs_det_triangular(scale)


def kl_from_scales(mean_q, scale_q, lower_q, mean_p, scale_p, lower_p):
    """KL(q‖p) = ½[‖A_p⁻¹A_q‖²_F + ‖A_p⁻¹(m_p − m_q)‖² − D] + log|det A_p| − log|det A_q|."""
    dim = mean_q.shape[-1]
    del lower_q  # ‖A_p⁻¹A_q‖_F needs only A_qA_qᵀ = S_q, triangular or not.
    whitened_scale = linalg.solve_triangular(scale_p, scale_q, lower=lower_p)
    batch = whitened_scale.shape[:-2]
    diff = jnp.broadcast_to(mean_p - mean_q, batch + (dim,))
    whitened_diff = linalg.solve_triangular_vec(
        jnp.broadcast_to(scale_p, batch + scale_p.shape[-2:]), diff, lower=lower_p
    )
    return 0.5 * (
        jnp.sum(whitened_scale**2, axis=(-2, -1)) + jnp.sum(whitened_diff**2, axis=-1) - dim
    ) + (linalg.log_abs_det_triangular(scale_p) - linalg.log_abs_det_triangular(scale_q))


def sample_from_scale(mean, scale, key, sample_shape=()):
    """Reparameterized samples x = m + Aε, ε ~ N(0, I): returns ``sample_shape + (..., D)``."""
    shape = tuple(sample_shape) + jnp.broadcast_shapes(mean.shape, scale.shape[:-1])
    eps = jax.random.normal(key, shape, dtype=mean.dtype)
    return mean + linalg.mv(scale, eps)


# --------------------------------------------------------------------------------------------
# Parameterization objects.
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class GaussianParameterization(Parameterization):
    """A parameterization of the full-covariance Gaussian by a pair ``(vector, matrix)``.

    Subclasses set the pair's names, the conversion functions above, and which block is a
    symmetric matrix or a Cholesky factor.
    """

    name: str = ""
    names: tuple[str, str] = ("first", "second")
    #: How the matrix block is constrained: "symmetric", "cholesky" (lower triangular) or
    #: "general" (every entry is a free parameter; gradients are used as they are).
    matrix_kind: str = "symmetric"
    family_name: str = "multivariate Gaussian"

    # -- helpers -----------------------------------------------------------------------------
    def _raw_split(self, params, argname="params"):
        return split_pair(params, argname=argname, family=self.family_name, names=self.names)

    def _split(self, params, argname="params"):
        vec, mat, rebuild = self._raw_split(params, argname)
        if self.matrix_kind == "cholesky" and argname == "params":
            # Only the lower triangle is a parameter: reading it through tril makes the upper
            # triangle's gradient exactly zero, so first-order optimizers (Adam on all of q)
            # cannot fill it in and break log det = 2 Σ log diag.
            mat = jnp.tril(mat)
        return vec, mat, rebuild

    def _scale(self, params):
        """(m, A, lower) with AAᵀ = S and A triangular."""
        mean, cov = mean_covariance_from_natural(*self.to_natural(params))
        return mean, linalg.cholesky(cov), True

    # -- tangent conventions -----------------------------------------------------------------
    def project_gradient(self, params, grads):
        g1, g2, rebuild = self._split(grads, "grads")
        if self.matrix_kind == "cholesky":
            g2 = jnp.tril(g2)
        elif self.matrix_kind == "symmetric":
            g2 = linalg.symmetrize(g2)
        return rebuild(g1, g2)

    def project_natural_tangent(self, dnatural):
        d1, d2 = dnatural
        return d1, linalg.symmetrize(d2)

    # -- checks ------------------------------------------------------------------------------
    def check_structure(self, params, *, argname="params"):
        vec, mat, _ = self._split(params, argname)
        check_floating_pair(vec, mat, argname=argname, names=self.names)
        if vec.ndim < 1:
            raise ValueError(f"`{argname}`: {self.names[0]} must have shape (..., D), got a scalar")
        dim = vec.shape[-1]
        if mat.ndim < 2 or mat.shape[-2:] != (dim, dim):
            raise ValueError(
                f"`{argname}`: {self.names[1]} must have shape (..., {dim}, {dim}) to match "
                f"{self.names[0]} of shape {tuple(vec.shape)}; got {tuple(mat.shape)}"
            )
        if vec.shape[:-1] != mat.shape[:-2]:
            raise ValueError(
                f"`{argname}`: batch shapes differ: {self.names[0]} has {tuple(vec.shape[:-1])}, "
                f"{self.names[1]} has {tuple(mat.shape[:-2])}; give both the same leading axes"
            )

    def check(self, params, *, argname="params"):
        super().check(params, argname=argname)
        _, mat, _ = self._raw_split(params, argname)
        if is_traced(params):
            return
        mat = jnp.asarray(mat)
        scale = jnp.max(jnp.abs(mat)) + jnp.finfo(mat.dtype).tiny
        tol = 100 * jnp.finfo(mat.dtype).eps * scale
        if self.matrix_kind == "cholesky":
            if bool(jnp.any(jnp.abs(jnp.triu(mat, 1)) > 0)):
                raise ValueError(
                    f"`{argname}`: {self.names[1]} must be lower triangular (the upper triangle "
                    "is not a parameter); pass jnp.tril(...) of it"
                )
        elif self.matrix_kind == "symmetric" and bool(
            jnp.any(jnp.abs(mat - linalg.transpose(mat)) > tol)
        ):
            raise ValueError(
                f"`{argname}`: {self.names[1]} must be symmetric; pass "
                "natgrad.linalg.symmetrize(...) of it"
            )

    # -- distribution methods ----------------------------------------------------------------
    def dim(self, params) -> int:
        """The event dimension D."""
        return self._split(params)[0].shape[-1]

    def mean_covariance(self, params):
        """(m, S) of the distribution."""
        return mean_covariance_from_natural(*self.to_natural(params))

    def log_prob(self, params, x):
        """log q(x): ``x`` of shape ``(..., D)`` broadcast against the batch → ``(...)``."""
        mean, scale, lower = self._scale(params)
        return log_prob_from_scale(mean, scale, x, lower=lower)

    def entropy(self, params):
        """H[q] = ½D(1 + log 2π) + ½ log det S: ``(...)``."""
        _, scale, _ = self._scale(params)
        return entropy_from_scale(scale)

    def kl(self, params_q, params_p, parameterization_p: Parameterization | None = None):
        """KL(q‖p) with p in this parameterization or in ``parameterization_p``."""
        other = self if parameterization_p is None else parameterization_p
        if not isinstance(other, GaussianParameterization):
            raise TypeError("`parameterization_p` must be a full-covariance Gaussian one")
        mq, aq, lq = self._scale(params_q)
        mp, ap, lp = other._scale(params_p)
        return kl_from_scales(mq, aq, lq, mp, ap, lp)

    def sample(self, params, key, sample_shape=()):
        """Reparameterized samples m + Aε: ``sample_shape + (..., D)``."""
        mean, scale, _ = self._scale(params)
        return sample_from_scale(mean, scale, key, sample_shape)


def _pd_ok(mat):
    """True where a symmetric matrix is positive definite (its Cholesky factor is finite)."""
    chol = linalg.cholesky(mat)
    return jnp.all(jnp.isfinite(chol), axis=(-2, -1)) & jnp.all(
        jnp.diagonal(chol, axis1=-2, axis2=-1) > 0, axis=-1
    )


def _finite(*arrays):
    ok = True
    for a, axes in zip(arrays, ((-1,), (-2, -1)), strict=True):
        ok = ok & jnp.all(jnp.isfinite(a), axis=axes)
    return ok


@dataclass(frozen=True, repr=False)
class _Natural(GaussianParameterization):
    name: str = "natural"
    names: tuple[str, str] = ("theta1", "theta2")

    def to_natural(self, params):
        t1, t2, _ = self._split(params)
        return t1, t2

    def from_natural(self, natural):
        return tuple(natural)

    def to_expectation(self, params):
        return expectation_from_mean_covariance(
            *mean_covariance_from_natural(*self._split(params)[:2])
        )

    def from_expectation(self, expectation):
        return natural_from_mean_covariance(*mean_covariance_from_expectation(*expectation))

    def from_expectation_vjp(self, params, cotangent):
        t1, t2, _ = self._split(params)
        g1, g2, _ = self._split(cotangent, "cotangent")
        prec = -2.0 * t2  # P = S⁻¹ = −2θ₂
        mean = linalg.cho_solve_vec(linalg.cholesky(prec), t1)  # m = Sθ₁: the one factorization
        dmean, dcov = natural_from_mean_covariance_vjp(t1, prec, g1, g2)
        return mean_covariance_from_expectation_vjp(mean, dmean, dcov)

    def from_natural_jvp(self, params, dnatural):
        d1, d2 = dnatural
        return d1, d2

    def is_valid(self, params):
        t1, t2, _ = self._split(params)
        return _finite(t1, t2) & _pd_ok(-2.0 * t2)

    def describe_invalid(self, params):
        return "−2·theta2 (the precision S⁻¹) must be symmetric positive definite and finite"


@dataclass(frozen=True, repr=False)
class _Expectation(GaussianParameterization):
    name: str = "expectation"
    names: tuple[str, str] = ("eta1", "eta2")

    def to_natural(self, params):
        return natural_from_mean_covariance(
            *mean_covariance_from_expectation(*self._split(params)[:2])
        )

    def from_natural(self, natural):
        return expectation_from_mean_covariance(*mean_covariance_from_natural(*natural))

    def to_expectation(self, params):
        e1, e2, _ = self._split(params)
        return e1, e2

    def from_expectation(self, expectation):
        return tuple(expectation)

    def from_expectation_vjp(self, params, cotangent):
        g1, g2, _ = self._split(cotangent, "cotangent")
        return g1, g2

    def from_natural_jvp(self, params, dnatural):
        mean, cov = mean_covariance_from_expectation(*self._split(params)[:2])
        d1, d2 = dnatural
        dmean, dcov = mean_covariance_from_natural_jvp(mean, cov, d1, linalg.symmetrize(d2))
        return expectation_from_mean_covariance_jvp(mean, dmean, dcov)

    def is_valid(self, params):
        e1, e2, _ = self._split(params)
        return _finite(e1, e2) & _pd_ok(e2 - linalg.outer(e1, e1))

    def describe_invalid(self, params):
        return "eta2 − eta1·eta1ᵀ (the covariance) must be symmetric positive definite and finite"


@dataclass(frozen=True, repr=False)
class _MeanCovariance(GaussianParameterization):
    name: str = "mean_covariance"
    names: tuple[str, str] = ("mean", "covariance")

    def to_natural(self, params):
        return natural_from_mean_covariance(*self._split(params)[:2])

    def from_natural(self, natural):
        return mean_covariance_from_natural(*natural)

    def to_expectation(self, params):
        return expectation_from_mean_covariance(*self._split(params)[:2])

    def from_expectation(self, expectation):
        return mean_covariance_from_expectation(*expectation)

    def mean_covariance(self, params):
        m, s, _ = self._split(params)
        return m, s

    def _scale(self, params):
        m, s, _ = self._split(params)
        return m, linalg.cholesky(s), True

    def from_expectation_vjp(self, params, cotangent):
        mean, _, _ = self._split(params)
        g1, g2, _ = self._split(cotangent, "cotangent")
        return mean_covariance_from_expectation_vjp(mean, g1, linalg.symmetrize(g2))

    def from_natural_jvp(self, params, dnatural):
        mean, cov, _ = self._split(params)
        d1, d2 = dnatural
        return mean_covariance_from_natural_jvp(mean, cov, d1, linalg.symmetrize(d2))

    def is_valid(self, params):
        m, s, _ = self._split(params)
        return _finite(m, s) & _pd_ok(s)

    def describe_invalid(self, params):
        return "the covariance must be symmetric positive definite and finite"


@dataclass(frozen=True, repr=False)
class _MeanCholesky(GaussianParameterization):
    name: str = "mean_cholesky"
    names: tuple[str, str] = ("mean", "scale_tril")
    matrix_kind: str = "cholesky"

    def to_natural(self, params):
        return natural_from_mean_cholesky(*self._split(params)[:2])

    def from_natural(self, natural):
        return mean_cholesky_from_natural(*natural)

    def to_expectation(self, params):
        return expectation_from_mean_cholesky(*self._split(params)[:2])

    def from_expectation(self, expectation):
        return mean_cholesky_from_expectation(*expectation)

    def mean_covariance(self, params):
        m, lt, _ = self._split(params)
        return m, jnp.matmul(lt, linalg.transpose(lt))

    def _scale(self, params):
        m, lt, _ = self._split(params)
        return m, lt, True

    def from_expectation_vjp(self, params, cotangent):
        mean, scale_tril, _ = self._split(params)
        g1, g2, _ = self._split(cotangent, "cotangent")
        return mean_covariance_from_expectation_vjp(mean, g1, cholesky_vjp(scale_tril, g2))

    def from_natural_jvp(self, params, dnatural):
        # With S = LLᵀ: dS = 2S dθ₂ S and L⁻¹dSL⁻ᵀ = 2Lᵀdθ₂L, so dL = LΦ(2Lᵀdθ₂L) needs no solve.
        mean, scale_tril, _ = self._split(params)
        d1, d2 = dnatural
        d2 = linalg.symmetrize(d2)
        lt = linalg.transpose(scale_tril)
        dscale = jnp.matmul(scale_tril, _phi(2.0 * jnp.matmul(lt, jnp.matmul(d2, scale_tril))))
        dmean = linalg.mv(scale_tril, linalg.mv(lt, d1 + 2.0 * linalg.mv(d2, mean)))
        return dmean, dscale

    def natural_gradient_at(self, params, grads):
        # The mean block is S·g_m (the Fisher is block diagonal in (m, S)).
        _, scale_tril, _ = self._split(params)
        g1, g2, _ = self._split(grads, "grads")
        dmean = linalg.mv(scale_tril, linalg.mv(linalg.transpose(scale_tril), g1))
        return dmean, cholesky_natural_gradient(scale_tril, g2)

    def is_valid(self, params):
        m, lt, _ = self._split(params)
        return _finite(m, lt) & jnp.all(jnp.diagonal(lt, axis1=-2, axis2=-1) > 0, axis=-1)

    def describe_invalid(self, params):
        return (
            "scale_tril must be a finite lower-triangular matrix with a positive diagonal "
            "(the Cholesky factor of a positive-definite covariance)"
        )


@dataclass(frozen=True, repr=False)
class _MeanPrecisionCholesky(GaussianParameterization):
    name: str = "mean_precision_cholesky"
    names: tuple[str, str] = ("mean", "precision_tril")
    matrix_kind: str = "cholesky"

    def to_natural(self, params):
        return natural_from_mean_precision_cholesky(*self._split(params)[:2])

    def from_natural(self, natural):
        return mean_precision_cholesky_from_natural(*natural)

    def to_expectation(self, params):
        return expectation_from_mean_precision_cholesky(*self._split(params)[:2])

    def from_expectation(self, expectation):
        return mean_precision_cholesky_from_expectation(*expectation)

    def _scale(self, params):
        # S = L⁻ᵀL⁻¹, so A = L⁻ᵀ (upper triangular) satisfies AAᵀ = S.
        m, lt, _ = self._split(params)
        return m, linalg.transpose(linalg.triangular_inverse(lt)), False

    def from_expectation_vjp(self, params, cotangent):
        # Λ(S) = chol(S⁻¹) has dΛ = −ΛΦ(ΛᵀdSΛ), whose adjoint is Ḡ_S = −sym(ΛΦ(ΛᵀG)Λᵀ).
        mean, prec_tril, _ = self._split(params)
        g1, g2, _ = self._split(cotangent, "cotangent")
        inner = _phi(jnp.matmul(linalg.transpose(prec_tril), jnp.tril(g2)))
        dcov = -linalg.symmetrize(
            jnp.matmul(prec_tril, jnp.matmul(inner, linalg.transpose(prec_tril)))
        )
        return mean_covariance_from_expectation_vjp(mean, g1, dcov)

    def from_natural_jvp(self, params, dnatural):
        # Λ = chol(−2θ₂): dΛ = chol'(−2dθ₂); m = P⁻¹θ₁: dm = S(dθ₁ + 2dθ₂m).
        mean, prec_tril, _ = self._split(params)
        d1, d2 = dnatural
        d2 = linalg.symmetrize(d2)
        dprec_tril = cholesky_jvp(prec_tril, -2.0 * d2)
        dmean = linalg.cho_solve_vec(prec_tril, d1 + 2.0 * linalg.mv(d2, mean))
        return dmean, dprec_tril

    def natural_gradient_at(self, params, grads):
        # The mean block is S·g_m = (LLᵀ)⁻¹g_m (the Fisher is block diagonal in (m, S)).
        _, prec_tril, _ = self._split(params)
        g1, g2, _ = self._split(grads, "grads")
        return linalg.cho_solve_vec(prec_tril, g1), cholesky_natural_gradient(prec_tril, g2)

    def is_valid(self, params):
        m, lt, _ = self._split(params)
        return _finite(m, lt) & jnp.all(jnp.diagonal(lt, axis1=-2, axis2=-1) > 0, axis=-1)

    def describe_invalid(self, params):
        return (
            "precision_tril must be a finite lower-triangular matrix with a positive diagonal "
            "(the Cholesky factor of a positive-definite precision)"
        )


@dataclass(frozen=True, repr=False)
class _CustomGaussian(GaussianParameterization):
    to_natural_fn: Callable | None = None
    from_natural_fn: Callable | None = None
    is_valid_fn: Callable | None = None

    def to_natural(self, params):
        first, second, _ = self._split(params)
        return tuple(self.to_natural_fn((first, second)))

    def from_natural(self, natural):
        return tuple(self.from_natural_fn(tuple(natural)))

    def to_expectation(self, params):
        return expectation_from_mean_covariance(
            *mean_covariance_from_natural(*self.to_natural(params))
        )

    def from_expectation(self, expectation):
        return self.from_natural(
            natural_from_mean_covariance(*mean_covariance_from_expectation(*expectation))
        )

    def is_valid(self, params):
        first, second, _ = self._split(params)
        ok = _finite(first, second)
        if self.is_valid_fn is not None:
            return ok & self.is_valid_fn((first, second))
        t1, t2 = self.to_natural(params)
        return ok & _finite(t1, t2) & _pd_ok(-2.0 * t2)


def custom_parameterization(
    name: str,
    to_natural: Callable,
    from_natural: Callable,
    is_valid: Callable | None = None,
    *,
    names: tuple[str, str] = ("first", "second"),
    matrix_kind: str = "general",
) -> GaussianParameterization:
    """A user-defined parameterization ξ = (a, B) of the full-covariance Gaussian.

    Given the pair of maps θ(ξ) and ξ(θ) (θ = (S⁻¹m, −½S⁻¹), shapes ``(..., D)`` and
    ``(..., D, D)``), the expectation maps go through the natural parameters,
    η(ξ) = η(θ(ξ)) and ξ(η) = ξ(θ(η)), and :func:`natgrad.natural_gradient` differentiates
    them with autodiff. The maps must accept leading batch axes (write them with ``...``
    indexing, or wrap with ``jnp.vectorize``).

    Args:
      name: a name for messages; pass the result to :func:`natgrad.register` to make the name
        resolvable.
      to_natural: ξ ↦ θ, a pair to a pair.
      from_natural: θ ↦ ξ, its inverse.
      is_valid: optional ξ ↦ boolean of the batch shape; the default checks that θ(ξ) is finite
        with a positive-definite precision −2θ₂.
      names: names of the two blocks, for error messages.
      matrix_kind: ``"general"`` (all D² entries of B are parameters), ``"symmetric"`` or
        ``"cholesky"`` (lower triangular): fixes how gradients of B are projected.

    Example (mean and log-Cholesky: S = LLᵀ with L's diagonal stored as its logarithm)::

      def to_nat(xi):
          m, log_chol = xi
          diag = jnp.diagonal(log_chol, axis1=-2, axis2=-1)
          chol = jnp.tril(log_chol, -1) + jnp.exp(diag)[..., None] * jnp.eye(m.shape[-1])
          return natgrad.gaussian.natural_from_mean_cholesky(m, chol)

      def from_nat(theta):
          m, chol = natgrad.gaussian.mean_cholesky_from_natural(*theta)
          diag = jnp.diagonal(chol, axis1=-2, axis2=-1)
          return m, jnp.tril(chol, -1) + jnp.log(diag)[..., None] * jnp.eye(m.shape[-1])

      log_cholesky = natgrad.gaussian.custom_parameterization(
          "mean_log_cholesky", to_nat, from_nat, matrix_kind="cholesky")
    """
    if matrix_kind not in ("general", "symmetric", "cholesky"):
        raise ValueError(
            f"`matrix_kind` must be 'general', 'symmetric' or 'cholesky', got {matrix_kind!r}"
        )
    for label, fn in (("to_natural", to_natural), ("from_natural", from_natural)):
        if not callable(fn):
            raise TypeError(f"`{label}` must be a function of a pair, got {type(fn).__name__}")
    return _CustomGaussian(
        name=name,
        names=names,
        matrix_kind=matrix_kind,
        to_natural_fn=to_natural,
        from_natural_fn=from_natural,
        is_valid_fn=is_valid,
    )


natural = register(_Natural())
expectation = register(_Expectation())
mean_covariance = register(_MeanCovariance())
mean_cholesky = register(_MeanCholesky())
mean_precision_cholesky = register(_MeanPrecisionCholesky())

PARAMETERIZATIONS = (natural, expectation, mean_covariance, mean_cholesky, mean_precision_cholesky)
