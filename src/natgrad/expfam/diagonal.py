"""Diagonal (mean-field) Gaussians N(m, diag(v)) in four parameterizations.

A diagonal Gaussian on ℝᴰ is an exponential family with sufficient statistics T(x) = (x, x²)
(elementwise); its coordinates are independent, so every formula acts entry by entry:

* ``diag_natural``:       θ₁ = m/v,  θ₂ = −½/v
* ``diag_expectation``:   η₁ = m,    η₂ = v + m²
* ``diag_mean_variance``: (m, v) with v > 0
* ``diag_mean_scale``:    (m, σ) with v = σ², σ > 0 (the usual reparameterized-VI choice)

Parameters are pairs ``(vector, vector)`` of identical shapes ``(..., D)``; leading axes are a
batch of independent Gaussians. Every conversion is written once below with (m, v) as the hub.
float32 and float64 are both supported; outputs keep the input dtype.

Gradient conventions: all parameters are unconstrained vectors (no symmetric or triangular
blocks), so what ``jax.grad`` hands in is the gradient in the tangent space as it is, and ∂L/∂η
is a tangent of θ as it is. The Fisher is block diagonal per coordinate; in (m, v) it is
diag(1/v, 1/(2v²)), so the natural gradient in (m, v) is (v·∂L/∂m, 2v²·∂L/∂v).

Example:
  >>> import jax, jax.numpy as jnp, natgrad
  >>> from natgrad.expfam import diagonal
  >>> params = (jnp.zeros(3), jnp.ones(3))  # (m, σ)
  >>> loss = lambda p: jnp.sum((p[0] - 1.0) ** 2 + p[1] ** 2)
  >>> ng = natgrad.natural_gradient(
  ...     params=params, grads=jax.grad(loss)(params), parameterization="diag_mean_scale")
  >>> diagonal.mean_scale.is_valid(params)
  Array(True, dtype=bool)

References:
  Salimbeni, Eleftheriadis & Hensman, "Natural gradients in practice", AISTATS 2018.
  Khan & Lin, "Conjugate-computation variational inference", AISTATS 2017.
"""

from __future__ import annotations

import abc
import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np

from natgrad.expfam.base import Parameterization, check_floating_pair, register, split_pair

# --------------------------------------------------------------------------------------------
# Conversions, one formula each. The hub is (m, v).
# --------------------------------------------------------------------------------------------


def natural_from_mean_variance(mean, variance):
    """θ₁ = m/v, θ₂ = −½/v (elementwise).

    Args:
      mean: ``(..., D)``.
      variance: ``(..., D)``, positive.
    Returns:
      ``(theta1, theta2)``, each ``(..., D)``.
    """
    precision = 1.0 / variance  # v⁻¹ = −2θ₂
    return mean * precision, -0.5 * precision


def mean_variance_from_natural(theta1, theta2):
    """v = −½/θ₂, m = vθ₁ (elementwise)."""
    variance = -0.5 / theta2
    return variance * theta1, variance


def expectation_from_mean_variance(mean, variance):
    """η₁ = m, η₂ = v + m² (elementwise)."""
    return mean, variance + mean**2


def mean_variance_from_expectation(eta1, eta2):
    """m = η₁, v = η₂ − η₁² (elementwise)."""
    return eta1, eta2 - eta1**2


def mean_variance_from_mean_scale(mean, scale):
    """v = σ² (elementwise), m unchanged."""
    return mean, scale**2


def mean_scale_from_mean_variance(mean, variance):
    """σ = √v (elementwise), m unchanged."""
    return mean, jnp.sqrt(variance)


# --------------------------------------------------------------------------------------------
# Densities, entropies, KL and sampling, summed over the D independent coordinates.
# --------------------------------------------------------------------------------------------

_LOG_2PI = math.log(2 * math.pi)


def log_prob_from_mean_variance(mean, variance, x):
    """log N(x | m, diag(v)) = −½ Σᵢ [(xᵢ − mᵢ)²/vᵢ + log vᵢ + log 2π].

    Args:
      mean, variance: ``(..., D)``.
      x: ``(..., D)``, broadcast against the batch.
    Returns:
      ``(...)`` log-densities.
    """
    return -0.5 * jnp.sum((x - mean) ** 2 / variance + jnp.log(variance) + _LOG_2PI, axis=-1)


def entropy_from_variance(variance):
    """H[N(m, diag(v))] = ½ Σᵢ [1 + log 2π + log vᵢ]: ``(..., D) -> (...)``."""
    return 0.5 * jnp.sum(1.0 + _LOG_2PI + jnp.log(variance), axis=-1)


def kl_from_mean_variances(mean_q, variance_q, mean_p, variance_p):
    """KL(q‖p) = ½ Σᵢ [v_qᵢ/v_pᵢ + (m_pᵢ − m_qᵢ)²/v_pᵢ − 1 + log v_pᵢ − log v_qᵢ]: ``(...)``."""
    return 0.5 * jnp.sum(
        (variance_q + (mean_p - mean_q) ** 2) / variance_p
        - 1.0
        + jnp.log(variance_p)
        - jnp.log(variance_q),
        axis=-1,
    )


def sample_from_mean_scale(mean, scale, key, sample_shape=()):
    """Reparameterized samples x = m + σε, ε ~ N(0, I): returns ``sample_shape + (..., D)``."""
    shape = tuple(sample_shape) + jnp.broadcast_shapes(mean.shape, scale.shape)
    eps = jax.random.normal(key, shape, dtype=mean.dtype)
    return mean + scale * eps


# --------------------------------------------------------------------------------------------
# Parameterization objects.
# --------------------------------------------------------------------------------------------


def _finite(*arrays):
    """True where every entry of every ``(..., D)`` array is finite: ``(...)``."""
    ok = True
    for a in arrays:
        ok = ok & jnp.all(jnp.isfinite(a), axis=-1)
    return ok


def _worst(label, values, *, largest=False):
    """A clause naming the smallest (or largest) entry of ``values`` and its index.

    Empty for tracers or all-NaN values: only a concrete number helps the reader.
    """
    if isinstance(values, jax.core.Tracer):
        return ""
    values = np.asarray(values)
    if values.size == 0 or np.all(np.isnan(values)):
        return ""
    flat_index = np.nanargmax(values) if largest else np.nanargmin(values)
    index = np.unravel_index(flat_index, values.shape)
    which = "largest" if largest else "smallest"
    return f"; the {which} {label} is {values[index]:.6g} at index {tuple(map(int, index))}"


@dataclass(frozen=True, repr=False)
class DiagonalGaussianParameterization(Parameterization):
    """A parameterization of the diagonal Gaussian by a pair ``(vector, vector)`` of shape (..., D).

    Subclasses set the pair's names and say how their parameters map to and from (m, v); the
    four conversions go through (m, v) unless a subclass holds θ or η itself.
    """

    name: str = ""
    names: tuple[str, str] = ("first", "second")
    family_name: str = "diagonal Gaussian"

    # -- hub ---------------------------------------------------------------------------------
    @abc.abstractmethod
    def mean_variance(self, params):
        """(m, v) of the distribution, each ``(..., D)``."""

    @abc.abstractmethod
    def from_mean_variance(self, mean, variance):
        """These parameters from (m, v)."""

    def mean_scale(self, params):
        """(m, σ) with σ = √v, each ``(..., D)``."""
        return mean_scale_from_mean_variance(*self.mean_variance(params))

    # -- helpers -----------------------------------------------------------------------------
    def _split(self, params, argname="params"):
        return split_pair(params, argname=argname, family=self.family_name, names=self.names)

    # -- conversions -------------------------------------------------------------------------
    def to_natural(self, params):
        return natural_from_mean_variance(*self.mean_variance(params))

    def from_natural(self, natural):
        return self.from_mean_variance(*mean_variance_from_natural(*natural))

    def to_expectation(self, params):
        return expectation_from_mean_variance(*self.mean_variance(params))

    def from_expectation(self, expectation):
        return self.from_mean_variance(*mean_variance_from_expectation(*expectation))

    # Tangent conventions: the base class's identities (everything is elementwise).

    # -- checks ------------------------------------------------------------------------------
    def check_structure(self, params, *, argname="params"):
        first, second, _ = self._split(params, argname)
        check_floating_pair(first, second, argname=argname, names=self.names)
        for label, leaf in ((self.names[0], first), (self.names[1], second)):
            if leaf.ndim < 1:
                raise ValueError(f"`{argname}`: {label} must have shape (..., D), got a scalar")
        if first.shape != second.shape:
            raise ValueError(
                f"`{argname}`: {self.names[0]} has shape {tuple(first.shape)} but "
                f"{self.names[1]} has shape {tuple(second.shape)}; a {self.family_name} needs "
                "both of the same shape (..., D) (broadcast them explicitly if that is meant)"
            )

    # -- distribution methods ----------------------------------------------------------------
    def dim(self, params) -> int:
        """The event dimension D."""
        return self._split(params)[0].shape[-1]

    def log_prob(self, params, x):
        """log q(x) summed over D: ``x`` of shape ``(..., D)`` broadcast against the batch."""
        mean, variance = self.mean_variance(params)
        return log_prob_from_mean_variance(mean, variance, x)

    def entropy(self, params):
        """H[q] = ½ Σᵢ [1 + log 2π + log vᵢ]: ``(...)``."""
        return entropy_from_variance(self.mean_variance(params)[1])

    def kl(self, params_q, params_p, parameterization_p: Parameterization | None = None):
        """KL(q‖p) with p in this parameterization or in ``parameterization_p``: ``(...)``."""
        other = self if parameterization_p is None else parameterization_p
        if not isinstance(other, DiagonalGaussianParameterization):
            raise TypeError(
                "`parameterization_p` must be a diagonal Gaussian one (diag_natural, "
                "diag_expectation, diag_mean_variance or diag_mean_scale), got "
                f"{other!r}; for a full-covariance p use natgrad.gaussian with S = diag(v)"
            )
        return kl_from_mean_variances(*self.mean_variance(params_q), *other.mean_variance(params_p))

    def sample(self, params, key, sample_shape=()):
        """Reparameterized samples m + σε, ε ~ N(0, I): ``sample_shape + (..., D)``."""
        mean, scale = self.mean_scale(params)
        return sample_from_mean_scale(mean, scale, key, sample_shape)


@dataclass(frozen=True, repr=False)
class _DiagNatural(DiagonalGaussianParameterization):
    name: str = "diag_natural"
    names: tuple[str, str] = ("theta1", "theta2")

    def mean_variance(self, params):
        return mean_variance_from_natural(*self._split(params)[:2])

    def from_mean_variance(self, mean, variance):
        return natural_from_mean_variance(mean, variance)

    def to_natural(self, params):
        t1, t2, _ = self._split(params)
        return t1, t2

    def from_natural(self, natural):
        return tuple(natural)

    def is_valid(self, params):
        t1, t2, _ = self._split(params)
        return _finite(t1, t2) & jnp.all(t2 < 0, axis=-1)

    def describe_invalid(self, params):
        _, t2, _ = self._split(params)
        return "theta2 = −½/v must be negative and finite" + _worst("theta2", t2, largest=True)


@dataclass(frozen=True, repr=False)
class _DiagExpectation(DiagonalGaussianParameterization):
    name: str = "diag_expectation"
    names: tuple[str, str] = ("eta1", "eta2")

    def mean_variance(self, params):
        return mean_variance_from_expectation(*self._split(params)[:2])

    def from_mean_variance(self, mean, variance):
        return expectation_from_mean_variance(mean, variance)

    def to_expectation(self, params):
        e1, e2, _ = self._split(params)
        return e1, e2

    def from_expectation(self, expectation):
        return tuple(expectation)

    def is_valid(self, params):
        e1, e2, _ = self._split(params)
        return _finite(e1, e2) & jnp.all(e2 - e1**2 > 0, axis=-1)

    def describe_invalid(self, params):
        e1, e2, _ = self._split(params)
        return "eta2 − eta1² (the variance) must be positive and finite" + _worst(
            "eta2 − eta1²", e2 - e1**2
        )


@dataclass(frozen=True, repr=False)
class _DiagMeanVariance(DiagonalGaussianParameterization):
    name: str = "diag_mean_variance"
    names: tuple[str, str] = ("mean", "variance")

    def mean_variance(self, params):
        m, v, _ = self._split(params)
        return m, v

    def from_mean_variance(self, mean, variance):
        return mean, variance

    def is_valid(self, params):
        m, v, _ = self._split(params)
        return _finite(m, v) & jnp.all(v > 0, axis=-1)

    def describe_invalid(self, params):
        _, v, _ = self._split(params)
        return "the variance must be positive and finite" + _worst("variance", v)


@dataclass(frozen=True, repr=False)
class _DiagMeanScale(DiagonalGaussianParameterization):
    name: str = "diag_mean_scale"
    names: tuple[str, str] = ("mean", "scale")

    def mean_variance(self, params):
        return mean_variance_from_mean_scale(*self._split(params)[:2])

    def from_mean_variance(self, mean, variance):
        return mean_scale_from_mean_variance(mean, variance)

    def mean_scale(self, params):
        m, s, _ = self._split(params)
        return m, s

    def is_valid(self, params):
        m, s, _ = self._split(params)
        return _finite(m, s) & jnp.all(s > 0, axis=-1)

    def describe_invalid(self, params):
        _, s, _ = self._split(params)
        return (
            "the scale σ (standard deviation) must be positive and finite; for an "
            "unconstrained parameter use σ = softplus(ρ)" + _worst("scale", s)
        )


natural = register(_DiagNatural())
expectation = register(_DiagExpectation())
mean_variance = register(_DiagMeanVariance())
mean_scale = register(_DiagMeanScale())

PARAMETERIZATIONS = (natural, expectation, mean_variance, mean_scale)
