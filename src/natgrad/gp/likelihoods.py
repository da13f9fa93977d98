"""Likelihoods p(y | f) for sparse variational Gaussian processes.

A sparse variational GP gives, per data point n, the marginals of its L latent functions,
q(fₙ) = N(meanₙ, varₙ) with ``mean`` and ``var`` of shape (N, L), independent across l. A
likelihood turns these into the three quantities the SVGP needs:

* ``variational_expectations``: E_{q(fₙ)}[log p(yₙ | fₙ)], shape (N,), the data term of the ELBO;
* ``log_predictive_density``: log ∫ p(yₙ | fₙ) q(fₙ) dfₙ, shape (N,);
* ``predict_mean_variance``: the mean and variance of y under ∫ p(y | f) q(f) df.

Closed forms are used where they exist; otherwise Gauss–Hermite quadrature with
``num_quadrature_points`` nodes (:func:`natgrad.quadrature.gauss_hermite`): with
f = m + √v·zᵢ, E_q[h(f)] ≈ Σᵢ ωᵢ h(fᵢ), and log E_q[p(y | f)] ≈ logsumexp(log ωᵢ + log p(y | fᵢ)).

Likelihood hyperparameters live in a dict ``params`` of *unconstrained* values (``init``);
``hyperparameters`` maps them to the constrained ones (softplus for positive quantities).
Likelihoods are frozen dataclasses: hashable, so they can be static arguments of :func:`jax.jit`.
The shapes of ``mean``, ``var`` and ``y`` are checked statically (also under jit);
``check_targets`` checks concrete target values (NaN, labels, counts) and is meant to be called
outside jit.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, log_ndtr, logsumexp, ndtr

from natgrad.gp.kernels import inverse_positive, positive
from natgrad.quadrature import gauss_hermite

Array = jax.Array
_LOG_2PI = math.log(2.0 * math.pi)
_LINKS = ("probit", "logit")
# Public methods are jitted with the (hashable) likelihood static: one compilation per shape and
# dtype instead of many small eager dispatches. Shape errors are raised while tracing.
_jit_method = functools.partial(jax.jit, static_argnums=0)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _check_positive_finite(name: str, argument: str, value) -> float:
    try:
        if isinstance(value, bool | str | bytes):
            raise TypeError
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not (math.isfinite(number) and number > 0):
        raise ValueError(f"{name}: {argument} must be a positive finite number, got {value!r}")
    return number


def _check_int(name: str, argument: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name}: {argument} must be an integer ≥ {minimum}, got {value!r}")
    return int(value)


def _float_dtype(*arrays) -> np.dtype:
    dtype = jnp.result_type(*arrays)
    if not jnp.issubdtype(dtype, jnp.floating):
        dtype = jnp.result_type(float)
    return np.dtype(dtype)


def _prepare_latent(name: str, mean, var, num_latent: int) -> tuple[Array, Array]:
    """Check mean/var are (N, num_latent) and cast them to a common floating dtype."""
    mean, var = jnp.asarray(mean), jnp.asarray(var)
    if mean.ndim != 2 or mean.shape[1] != num_latent:
        raise ValueError(
            f"{name}: mean must have shape (N, {num_latent}) (num_latent = {num_latent}), "
            f"got {mean.shape}"
        )
    if var.shape != mean.shape:
        raise ValueError(f"{name}: var shape {var.shape} must equal the mean shape {mean.shape}")
    dtype = _float_dtype(mean, var)
    return mean.astype(dtype), var.astype(dtype)


def _quadrature(num_points: int, dtype) -> tuple[Array, Array]:
    nodes, weights = gauss_hermite(num_points, np.dtype(dtype))
    return jnp.asarray(nodes), jnp.asarray(weights)


def _concrete_targets(name: str, y) -> np.ndarray:
    """y as a numpy array, checked numeric and finite (concrete values only)."""
    y = np.asarray(y)
    if not (np.issubdtype(y.dtype, np.number) or y.dtype == np.bool_):
        raise ValueError(f"{name}: targets must be numeric, got dtype {y.dtype}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: targets contain NaN or infinite values")
    return y


class Likelihood(abc.ABC):
    """A likelihood p(y | f) of L latent functions, with its expectations under q(f) = N(m, v).

    Subclasses are frozen dataclasses. ``num_latent`` is L, the number of latent functions per
    data point that ``mean`` and ``var`` (shape (N, L)) carry.
    """

    @property
    @abc.abstractmethod
    def num_latent(self) -> int:
        """L: the number of latent functions the likelihood needs."""

    def init(self, dtype=jnp.float64) -> dict:
        """The unconstrained hyperparameters (``{}`` when there are none)."""
        return {}

    def hyperparameters(self, params: dict) -> dict:
        """The constrained hyperparameter values of ``params``."""
        return {}

    @abc.abstractmethod
    def log_density(self, params: dict, y: Array, f: Array) -> Array:
        """log p(yₙ | fₙ) summed over outputs, shape (N,), for latent values f (N, L)."""

    @abc.abstractmethod
    def variational_expectations(self, params: dict, y: Array, mean: Array, var: Array) -> Array:
        """E_{q(fₙ)}[log p(yₙ | fₙ)] summed over outputs, shape (N,)."""

    @abc.abstractmethod
    def predict_mean_variance(self, params: dict, mean: Array, var: Array) -> tuple[Array, Array]:
        """Mean and variance of y under ∫ p(y | f) q(f) df."""

    @abc.abstractmethod
    def log_predictive_density(self, params: dict, y: Array, mean: Array, var: Array) -> Array:
        """log ∫ p(yₙ | fₙ) q(fₙ) dfₙ, shape (N,)."""

    @abc.abstractmethod
    def check_targets(self, y) -> None:
        """Raise ValueError for targets of a wrong shape or value (concrete arrays, not traced)."""


# --------------------------------------------------------------------------------------------
# Elementwise likelihoods: p(yₙ | fₙ) = Πₗ p(yₙₗ | fₙₗ)
# --------------------------------------------------------------------------------------------


class _Elementwise(Likelihood):
    """Base of the likelihoods factorizing over outputs: L = ``num_outputs``, y (N, L) or (N,).

    Subclasses give the elementwise log p(y | f) (``_log_prob``) and the conditional moments
    E[y | f], Var[y | f] (``_conditional_moments``); the three expectations default to
    Gauss–Hermite and are overridden by closed forms.
    """

    num_outputs: int
    num_quadrature_points: int

    @property
    def num_latent(self) -> int:
        return self.num_outputs

    @property
    def _name(self) -> str:
        return type(self).__name__

    # -- to implement ----------------------------------------------------------------------

    @abc.abstractmethod
    def _log_prob(self, hyp: dict, y: Array, f: Array) -> Array:
        """Elementwise log p(y | f), broadcasting."""

    @abc.abstractmethod
    def _conditional_moments(self, hyp: dict, f: Array) -> tuple[Array, Array]:
        """Elementwise E[y | f], Var[y | f]."""

    def _check_values(self, y: np.ndarray) -> None:
        """Likelihood-specific checks of concrete target values."""

    # -- Gauss–Hermite defaults, elementwise (N, L) ----------------------------------------

    def _nodes(self, mean: Array, var: Array) -> tuple[Array, Array]:
        z, w = _quadrature(self.num_quadrature_points, mean.dtype)
        return mean[..., None] + jnp.sqrt(var)[..., None] * z, w

    def _ve(self, hyp, y, mean, var):
        f, w = self._nodes(mean, var)
        return self._log_prob(hyp, y[..., None], f) @ w

    def _lpd(self, hyp, y, mean, var):
        f, w = self._nodes(mean, var)
        return logsumexp(self._log_prob(hyp, y[..., None], f) + jnp.log(w), axis=-1)

    def _moments(self, hyp, mean, var):
        f, w = self._nodes(mean, var)
        cond_mean, cond_var = self._conditional_moments(hyp, f)
        pred_mean = cond_mean @ w
        second = (cond_var + jnp.square(cond_mean)) @ w
        return pred_mean, jnp.maximum(second - jnp.square(pred_mean), 0.0)

    # -- public -----------------------------------------------------------------------------

    def _hyp(self, params: dict, dtype) -> dict:
        return {k: jnp.asarray(v, dtype) for k, v in self.hyperparameters(params).items()}

    def _prepare_targets(self, y, mean: Array) -> Array:
        y = jnp.asarray(y)
        if y.ndim == 1 and self.num_outputs == 1:
            y = y[:, None]
        if y.shape != mean.shape:
            raise ValueError(
                f"{self._name}: targets must have shape {mean.shape}"
                + (f" or {mean.shape[:1]}" if self.num_outputs == 1 else "")
                + f" to match mean, got {y.shape}"
            )
        return y.astype(mean.dtype)

    def _prepare(self, params, y, mean, var):
        mean, var = _prepare_latent(self._name, mean, var, self.num_latent)
        hyp = self._hyp(params, mean.dtype)
        if y is None:
            return hyp, None, mean, var
        return hyp, self._prepare_targets(y, mean), mean, var

    @_jit_method
    def log_density(self, params, y, f):
        f = jnp.asarray(f)
        f = f.astype(_float_dtype(f))
        hyp, y, f, _ = self._prepare(params, y, f, f)
        return jnp.sum(self._log_prob(hyp, y, f), axis=-1)

    @_jit_method
    def variational_expectations(self, params, y, mean, var):
        hyp, y, mean, var = self._prepare(params, y, mean, var)
        return jnp.sum(self._ve(hyp, y, mean, var), axis=-1)

    @_jit_method
    def predict_mean_variance(self, params, mean, var):
        hyp, _, mean, var = self._prepare(params, None, mean, var)
        return self._moments(hyp, mean, var)

    @_jit_method
    def log_predictive_density(self, params, y, mean, var):
        hyp, y, mean, var = self._prepare(params, y, mean, var)
        return jnp.sum(self._lpd(hyp, y, mean, var), axis=-1)

    def check_targets(self, y) -> None:
        y = _concrete_targets(self._name, y)
        L = self.num_outputs
        if not (y.ndim == 2 and y.shape[1] == L) and not (y.ndim == 1 and L == 1):
            expected = f"(N, {L})" + (" or (N,)" if L == 1 else "")
            raise ValueError(f"{self._name}: targets must have shape {expected}, got {y.shape}")
        self._check_values(y)


@dataclasses.dataclass(frozen=True)
class Gaussian(_Elementwise):
    """Gaussian noise: p(y | f) = N(y; f, σ²), σ² trained (one variance shared by all outputs).

    Closed forms, per output:

        E_q[log p(y | f)] = −½ log(2πσ²) − ((y − m)² + v) / (2σ²),
        ∫ p(y | f) q(f) df = N(y; m, v + σ²).

    Args:
      variance: initial σ² > 0.
      num_outputs: L, the number of independent outputs (columns of y, mean, var).

    Shapes: mean, var (N, L); y (N, L) or (N,) when L = 1. ``variational_expectations`` and
    ``log_predictive_density`` return (N,) (summed over outputs); ``predict_mean_variance``
    returns (m, v + σ²), each (N, L).

    Example::

        lik = Gaussian(variance=0.1)
        params = lik.init()  # {"variance": softplus⁻¹(0.1)}
        lik.variational_expectations(params, y, mean, var)  # (N,)
    """

    variance: float = 1.0
    num_outputs: int = 1

    def __post_init__(self):
        v = _check_positive_finite("Gaussian", "variance", self.variance)
        object.__setattr__(self, "variance", v)
        _check_int("Gaussian", "num_outputs", self.num_outputs, 1)

    def init(self, dtype=jnp.float64):
        return {"variance": inverse_positive(jnp.asarray(self.variance, dtype))}

    def hyperparameters(self, params):
        return {"variance": positive(params["variance"])}

    def _log_prob(self, hyp, y, f):
        s2 = hyp["variance"]
        return -0.5 * (_LOG_2PI + jnp.log(s2)) - 0.5 * jnp.square(y - f) / s2

    def _conditional_moments(self, hyp, f):
        return f, jnp.broadcast_to(hyp["variance"], f.shape)

    def _ve(self, hyp, y, mean, var):
        s2 = hyp["variance"]
        return -0.5 * (_LOG_2PI + jnp.log(s2)) - 0.5 * (jnp.square(y - mean) + var) / s2

    def _lpd(self, hyp, y, mean, var):
        total = var + hyp["variance"]
        return -0.5 * (_LOG_2PI + jnp.log(total)) - 0.5 * jnp.square(y - mean) / total

    def _moments(self, hyp, mean, var):
        return mean, var + hyp["variance"]


@dataclasses.dataclass(frozen=True)
class StudentT(_Elementwise):
    """Student-t noise: p(y | f) = St(y; f, scale s, df ν), s trained, ν fixed.

        log p(y | f) = log Γ((ν+1)/2) − log Γ(ν/2) − ½ log(νπs²) − (ν+1)/2 · log(1 + (y−f)²/(νs²)).

    E_q[log p] and log ∫ p q df by Gauss–Hermite (the latter with logsumexp); the predictive mean
    is m and the variance v + s²ν/(ν − 2) for ν > 2 (infinite otherwise).

    Args:
      df: ν > 0 (not trained).
      scale: initial s > 0.
      num_outputs: L.
      num_quadrature_points: Gauss–Hermite nodes.

    Shapes: mean, var (N, L); y (N, L) or (N,) when L = 1; expectations (N,), moments (N, L).

    Example::

        lik = StudentT(df=4.0, scale=0.5)
        lik.log_predictive_density(lik.init(), y, mean, var)  # (N,)
    """

    df: float = 3.0
    scale: float = 1.0
    num_outputs: int = 1
    num_quadrature_points: int = 20

    def __post_init__(self):
        object.__setattr__(self, "df", _check_positive_finite("StudentT", "df", self.df))
        object.__setattr__(self, "scale", _check_positive_finite("StudentT", "scale", self.scale))
        _check_int("StudentT", "num_outputs", self.num_outputs, 1)
        _check_int("StudentT", "num_quadrature_points", self.num_quadrature_points, 1)

    def init(self, dtype=jnp.float64):
        return {"scale": inverse_positive(jnp.asarray(self.scale, dtype))}

    def hyperparameters(self, params):
        return {"scale": positive(params["scale"])}

    def _log_prob(self, hyp, y, f):
        nu, s = self.df, hyp["scale"]
        const = math.lgamma((nu + 1) / 2) - math.lgamma(nu / 2) - 0.5 * math.log(nu * math.pi)
        r2 = jnp.square((y - f) / s)
        return const - jnp.log(s) - 0.5 * (nu + 1) * jnp.log1p(r2 / nu)

    def _conditional_moments(self, hyp, f):
        noise = self._noise_variance(hyp, f.dtype)
        return f, jnp.broadcast_to(noise, f.shape)

    def _noise_variance(self, hyp, dtype):
        if self.df > 2:
            return jnp.square(hyp["scale"]) * (self.df / (self.df - 2))
        return jnp.asarray(jnp.inf, dtype)

    def _moments(self, hyp, mean, var):
        return mean, var + self._noise_variance(hyp, mean.dtype)


@dataclasses.dataclass(frozen=True)
class Bernoulli(_Elementwise):
    """Binary classification: p(y = 1 | f) = Φ(f) (probit) or σ(f) (logit), y ∈ {0, 1}.

        log p(y | f) = log Φ((2y − 1) f)   or   log σ((2y − 1) f).

    E_q[log p] by Gauss–Hermite. Probit has the closed forms ∫ p(y | f) q(f) df =
    Φ((2y − 1) m / √(1 + v)) and predictive mean p = Φ(m / √(1 + v)); logit uses Gauss–Hermite.
    The predictive variance is p(1 − p).

    Args:
      link: ``"probit"`` or ``"logit"``.
      num_outputs: L.
      num_quadrature_points: Gauss–Hermite nodes.

    Shapes: mean, var (N, L); y (N, L) or (N,) when L = 1; expectations (N,), moments (N, L).

    Example::

        lik = Bernoulli("logit")
        lik.variational_expectations({}, jnp.array([0.0, 1.0]), mean, var)  # mean (2, 1)
    """

    link: Literal["probit", "logit"] = "probit"
    num_outputs: int = 1
    num_quadrature_points: int = 20

    def __post_init__(self):
        if self.link not in _LINKS:
            raise ValueError(f"Bernoulli: unknown link {self.link!r}: expected one of {_LINKS}")
        _check_int("Bernoulli", "num_outputs", self.num_outputs, 1)
        _check_int("Bernoulli", "num_quadrature_points", self.num_quadrature_points, 1)

    def _log_cdf(self, x):
        return log_ndtr(x) if self.link == "probit" else jax.nn.log_sigmoid(x)

    def _log_prob(self, hyp, y, f):
        return self._log_cdf((2 * y - 1) * f)

    def _conditional_moments(self, hyp, f):
        p = ndtr(f) if self.link == "probit" else jax.nn.sigmoid(f)
        return p, p * (1 - p)

    def _lpd(self, hyp, y, mean, var):
        if self.link == "probit":
            return log_ndtr((2 * y - 1) * mean / jnp.sqrt(1 + var))
        return super()._lpd(hyp, y, mean, var)

    def _moments(self, hyp, mean, var):
        if self.link == "probit":
            p = ndtr(mean / jnp.sqrt(1 + var))
        else:
            f, w = self._nodes(mean, var)
            p = jax.nn.sigmoid(f) @ w
        return p, p * (1 - p)

    def _check_values(self, y):
        if not np.all((y == 0) | (y == 1)):
            bad = np.unique(y[(y != 0) & (y != 1)])[:5]
            raise ValueError(f"Bernoulli: targets must be 0 or 1, got values such as {bad}")


@dataclasses.dataclass(frozen=True)
class Poisson(_Elementwise):
    """Counts with an exponential link: y ~ Poisson(b·e^f), b = ``binsize``.

    Closed forms, per output:

        E_q[log p(y | f)] = y(m + log b) − b·exp(m + v/2) − log Γ(y + 1),
        E[y] = b·exp(m + v/2),   Var[y] = E[y] + b²(e^v − 1)·exp(2m + v).

    log ∫ p(y | f) q(f) df by Gauss–Hermite (logsumexp).

    Args:
      binsize: b > 0 (fixed).
      num_outputs: L.
      num_quadrature_points: Gauss–Hermite nodes (for the predictive density).

    Shapes: mean, var (N, L); y (N, L) or (N,) when L = 1; expectations (N,), moments (N, L).

    Example::

        lik = Poisson()
        lik.variational_expectations({}, jnp.array([0.0, 3.0]), mean, var)  # mean (2, 1)
    """

    binsize: float = 1.0
    num_outputs: int = 1
    num_quadrature_points: int = 20

    def __post_init__(self):
        b = _check_positive_finite("Poisson", "binsize", self.binsize)
        object.__setattr__(self, "binsize", b)
        _check_int("Poisson", "num_outputs", self.num_outputs, 1)
        _check_int("Poisson", "num_quadrature_points", self.num_quadrature_points, 1)

    def _log_prob(self, hyp, y, f):
        log_b = math.log(self.binsize)
        return y * (f + log_b) - jnp.exp(f + log_b) - gammaln(y + 1)

    def _conditional_moments(self, hyp, f):
        rate = self.binsize * jnp.exp(f)
        return rate, rate

    def _ve(self, hyp, y, mean, var):
        log_b = math.log(self.binsize)
        return y * (mean + log_b) - jnp.exp(mean + var / 2 + log_b) - gammaln(y + 1)

    def _moments(self, hyp, mean, var):
        b = self.binsize
        pred_mean = b * jnp.exp(mean + var / 2)
        return pred_mean, pred_mean + b**2 * jnp.expm1(var) * jnp.exp(2 * mean + var)

    def _check_values(self, y):
        if np.any(y < 0) or np.any(y != np.floor(y)):
            bad = np.unique(y[(y < 0) | (y != np.floor(y))])[:5]
            raise ValueError(
                f"Poisson: targets must be non-negative integer counts, got values such as {bad}"
            )


# --------------------------------------------------------------------------------------------
# Multiclass: integer labels, C latents
# --------------------------------------------------------------------------------------------


class _Multiclass(Likelihood):
    """What multiclass likelihoods share: C = ``num_classes`` latents, integer labels in
    [0, C), and ``predict_mean_variance`` = (p, p(1 − p)) from ``predict_class_probabilities``."""

    num_classes: int

    @property
    def num_latent(self) -> int:
        return self.num_classes

    def _labels(self, y, n: int) -> Array:
        y = jnp.asarray(y)
        if y.shape != (n,):
            raise ValueError(
                f"{type(self).__name__}: labels must have shape ({n},) to match mean, got {y.shape}"
            )
        return y.astype(jnp.int32)

    def _prepare(self, y, mean, var) -> tuple[Array, Array, Array]:
        """(labels (N,) int32, mean, var): mean and var checked (N, C), cast to one float dtype."""
        mean, var = _prepare_latent(type(self).__name__, mean, var, self.num_latent)
        return self._labels(y, mean.shape[0]), mean, var

    @abc.abstractmethod
    def predict_class_probabilities(self, params: dict, mean: Array, var: Array) -> Array:
        """p(y = k) under q(f), shape (N, C)."""

    @_jit_method
    def predict_mean_variance(self, params, mean, var):
        probs = self.predict_class_probabilities(params, mean, var)
        return probs, probs * (1 - probs)

    def check_targets(self, y) -> None:
        name = type(self).__name__
        y = _concrete_targets(name, y)
        if y.ndim != 1:
            raise ValueError(f"{name}: labels must have shape (N,), got {y.shape}")
        bad = (y < 0) | (y >= self.num_classes) | (y != np.floor(y))
        if np.any(bad):
            raise ValueError(
                f"{name}: labels must be integers in [0, {self.num_classes}), got values "
                f"such as {np.unique(y[bad])[:5]}"
            )


# --------------------------------------------------------------------------------------------
# Multiclass: robust max
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RobustMax(_Multiclass):
    """Multiclass robust max (Girolami & Rogers 2006; GPflow's MultiClass/RobustMax).

        p(y = k | f) = 1 − ε if k = argmax_j f_j, else ε / (C − 1).

    With Pₖ = q(fₖ > fⱼ ∀ j ≠ k) = E_{fₖ}[Π_{j≠k} Φ((fₖ − mⱼ)/√vⱼ)] (1-D Gauss–Hermite over fₖ):

        E_q[log p(y | f)] = log(1 − ε)·P_y + log(ε/(C − 1))·(1 − P_y),
        p(y = k) = (1 − ε)·Pₖ + ε/(C − 1)·(1 − Pₖ),   log predictive density = log p(y).

    Args:
      num_classes: C ≥ 2 (= ``num_latent``).
      epsilon: ε ∈ (0, 1) (fixed).
      num_quadrature_points: Gauss–Hermite nodes.

    Shapes: mean, var (N, C) with var > 0; y (N,) integer labels in [0, C). Expectations (N,);
    ``predict_class_probabilities`` (N, C); ``predict_mean_variance`` (p, p(1 − p)), each (N, C).

    Example::

        lik = RobustMax(num_classes=3)
        lik.predict_class_probabilities({}, mean, var)  # mean, var (N, 3); rows sum to 1
    """

    num_classes: int
    epsilon: float = 1e-3
    num_quadrature_points: int = 20

    def __post_init__(self):
        _check_int("RobustMax", "num_classes", self.num_classes, 2)
        eps = self.epsilon
        if isinstance(eps, bool) or not isinstance(eps, int | float | np.floating):
            eps = math.nan
        if not 0 < eps < 1:
            raise ValueError(f"RobustMax: epsilon must be in (0, 1), got {self.epsilon!r}")
        object.__setattr__(self, "epsilon", float(eps))
        _check_int("RobustMax", "num_quadrature_points", self.num_quadrature_points, 1)

    def _log_probs(self) -> tuple[float, float]:
        """log(1 − ε), log(ε/(C − 1))."""
        return math.log1p(-self.epsilon), math.log(self.epsilon / (self.num_classes - 1))

    def _argmax_probability(self, mean: Array, var: Array, labels: Array) -> Array:
        """P_y = q(f_y > f_j ∀ j ≠ y), shape (N,)."""
        z, w = _quadrature(self.num_quadrature_points, mean.dtype)
        std = jnp.sqrt(var)
        one_hot = jax.nn.one_hot(labels, self.num_classes, dtype=bool)  # (N, C)
        m_y = jnp.sum(jnp.where(one_hot, mean, 0), axis=1)
        s_y = jnp.sum(jnp.where(one_hot, std, 0), axis=1)
        f_y = m_y[:, None] + s_y[:, None] * z  # (N, P)
        log_cdf = log_ndtr((f_y[:, None, :] - mean[..., None]) / std[..., None])  # (N, C, P)
        log_prod = jnp.sum(jnp.where(one_hot[..., None], 0.0, log_cdf), axis=1)
        return jnp.exp(log_prod) @ w

    def _all_argmax_probabilities(self, mean: Array, var: Array) -> Array:
        """Pₖ for every class k, shape (N, C)."""
        labels = jnp.broadcast_to(
            jnp.arange(self.num_classes)[:, None], (self.num_classes, mean.shape[0])
        )
        per_class = jax.vmap(lambda k: self._argmax_probability(mean, var, k))
        return per_class(labels).T

    @_jit_method
    def log_density(self, params, y, f):
        f = jnp.asarray(f)
        f = f.astype(_float_dtype(f))
        labels, f, _ = self._prepare(y, f, f)
        log_hit, log_miss = self._log_probs()
        hit = jnp.argmax(f, axis=1) == labels
        return jnp.where(hit, log_hit, log_miss).astype(f.dtype)

    @_jit_method
    def variational_expectations(self, params, y, mean, var):
        labels, mean, var = self._prepare(y, mean, var)
        p = self._argmax_probability(mean, var, labels)
        log_hit, log_miss = self._log_probs()
        return log_hit * p + log_miss * (1 - p)

    @_jit_method
    def predict_class_probabilities(self, params: dict, mean: Array, var: Array) -> Array:
        """p(y = k) = (1 − ε)Pₖ + ε/(C − 1)(1 − Pₖ) under q(f), shape (N, C).

        Args:
          params: ``{}`` (no hyperparameters).
          mean, var: (N, C), var > 0.

        Returns:
          Class probabilities (N, C); rows sum to 1 up to the quadrature error of Σₖ Pₖ = 1.
        """
        mean, var = _prepare_latent("RobustMax", mean, var, self.num_latent)
        return self._mix(self._all_argmax_probabilities(mean, var))

    def _mix(self, p: Array) -> Array:
        eps, c = self.epsilon, self.num_classes
        return (1 - eps) * p + eps / (c - 1) * (1 - p)

    @_jit_method
    def log_predictive_density(self, params, y, mean, var):
        labels, mean, var = self._prepare(y, mean, var)
        return jnp.log(self._mix(self._argmax_probability(mean, var, labels)))


# --------------------------------------------------------------------------------------------
# Multiclass: softmax
# --------------------------------------------------------------------------------------------


@functools.cache
def _normal_nodes(dim: int, num_samples: int, seed: int) -> np.ndarray:
    """``num_samples`` standard-normal points in R^dim: antithetic pairs ±ndtri(u) of a scrambled
    Sobol sequence u (randomized quasi-Monte Carlo, fixed by ``seed``), shape (S, dim)."""
    from scipy.special import ndtri
    from scipy.stats import qmc

    u = qmc.Sobol(d=dim, scramble=True, seed=seed).random_base2(int(math.log2(num_samples // 2)))
    z = ndtri(np.clip(u, 1e-12, 1 - 1e-12))
    nodes = np.concatenate([z, -z])
    nodes.setflags(write=False)
    return nodes


def _node_points(mean: Array, var: Array, nodes: Array) -> Array:
    """fₙₛ = mₙ + √vₙ ⊙ zₛ, shape (N, S, C)."""
    return mean[:, None, :] + jnp.sqrt(var)[:, None, :] * nodes.astype(mean.dtype)


@jax.custom_jvp
def _expected_logsumexp(mean: Array, var: Array, nodes: Array) -> Array:
    """E_{N(m, diag v)}[log Σₖ exp fₖ] ≈ (1/S) Σₛ logsumexp(m + √v ⊙ zₛ), shape (N,).

    Its derivative (custom JVP) is the same node average of the exact derivatives:
    ∂/∂m = E[softmax(f)] (the estimate's own derivative) and, by Price's theorem,
    ∂/∂vₖ = ½ E[∂²/∂fₖ² logsumexp(f)] = ½ E[pₖ(f)(1 − pₖ(f))] ≥ 0.
    """
    return jnp.mean(logsumexp(_node_points(mean, var, nodes), axis=-1), axis=-1)


@_expected_logsumexp.defjvp
def _expected_logsumexp_jvp(primals, tangents):
    mean, var, nodes = primals
    dmean, dvar, _ = tangents
    f = _node_points(mean, var, nodes)
    value = jnp.mean(logsumexp(f, axis=-1), axis=-1)
    p = jax.nn.softmax(f, axis=-1)  # (N, S, C)
    grad_mean = jnp.mean(p, axis=1)
    grad_var = 0.5 * jnp.mean(p * (1 - p), axis=1)
    return value, jnp.sum(grad_mean * dmean, axis=-1) + jnp.sum(grad_var * dvar, axis=-1)


@dataclasses.dataclass(frozen=True)
class Softmax(_Multiclass):
    """Multiclass softmax: p(y = k | f) = exp fₖ / Σⱼ exp fⱼ, over C latent functions.

        E_q[log p(y | f)] = m_y − E_q[log Σⱼ exp fⱼ],   q(f) = N(m, diag v).

    The C-dimensional expectation has no closed form and is too wide for a product
    Gauss–Hermite rule, so every expectation is an average over S fixed standard-normal nodes
    zₛ (antithetic pairs of a scrambled Sobol sequence: deterministic, the same nodes at every
    step, so the ELBO is a smooth function of q): E_q[h(f)] ≈ (1/S) Σₛ h(m + √v ⊙ zₛ).

    Gradients: ∂/∂m is the node average of ∇h; ∂/∂v uses Price's theorem,
    ∂/∂vₖ E[h] = ½ E[∂²h/∂fₖ²], which for h = log-sum-exp is ½ E[pₖ(1 − pₖ)] ≥ 0. So
    −2 ∂E_q[log p]/∂v is never negative: the likelihood's contribution to a natural step's
    precision stays positive semi-definite (the reparameterization estimate's does not), which
    is what makes natural-gradient steps on q(u) stable for this likelihood. Robust-max's
    expectation, linear in q(f_y = max), lacks this property.

    Predictions: p(y = k) = E_q[softmax(f)ₖ], log predictive density log E_q[softmax(f)_y]
    (node averages).

    Args:
      num_classes: C ≥ 2 (= ``num_latent``).
      num_samples: S, a power of two ≥ 2.
      seed: the Sobol scrambling seed (fixes the nodes).

    Shapes: mean, var (N, C) with var ≥ 0; y (N,) integer labels in [0, C). Expectations (N,);
    ``predict_class_probabilities`` (N, C); ``predict_mean_variance`` (p, p(1 − p)), each (N, C).

    Example::

        lik = Softmax(num_classes=10)
        lik.variational_expectations({}, y, mean, var)  # mean, var (N, 10) -> (N,)
    """

    num_classes: int
    num_samples: int = 64
    seed: int = 0

    def __post_init__(self):
        _check_int("Softmax", "num_classes", self.num_classes, 2)
        s = self.num_samples
        _check_int("Softmax", "num_samples", s, 2)
        if s & (s - 1):
            raise ValueError(f"Softmax: num_samples must be a power of two ≥ 2, got {s!r}")
        _check_int("Softmax", "seed", self.seed, 0)

    def _nodes(self) -> Array:
        return jnp.asarray(_normal_nodes(self.num_classes, self.num_samples, self.seed))

    @_jit_method
    def log_density(self, params, y, f):
        f = jnp.asarray(f)
        f = f.astype(_float_dtype(f))
        labels, f, _ = self._prepare(y, f, f)
        return jnp.take_along_axis(jax.nn.log_softmax(f, axis=1), labels[:, None], axis=1)[:, 0]

    @_jit_method
    def variational_expectations(self, params, y, mean, var):
        labels, mean, var = self._prepare(y, mean, var)
        m_y = jnp.take_along_axis(mean, labels[:, None], axis=1)[:, 0]
        return m_y - _expected_logsumexp(mean, var, self._nodes())

    @_jit_method
    def predict_class_probabilities(self, params: dict, mean: Array, var: Array) -> Array:
        """p(y = k) = E_q[softmax(f)ₖ] (node average), shape (N, C); rows sum to 1.

        Args:
          params: ``{}`` (no hyperparameters).
          mean, var: (N, C), var ≥ 0.
        """
        mean, var = _prepare_latent("Softmax", mean, var, self.num_latent)
        f = _node_points(mean, var, self._nodes())
        return jnp.mean(jax.nn.softmax(f, axis=-1), axis=1)

    @_jit_method
    def log_predictive_density(self, params, y, mean, var):
        labels, mean, var = self._prepare(y, mean, var)
        log_p = jax.nn.log_softmax(_node_points(mean, var, self._nodes()), axis=-1)  # (N, S, C)
        log_p_y = jnp.take_along_axis(log_p, labels[:, None, None], axis=-1)[..., 0]
        return logsumexp(log_p_y, axis=1) - math.log(self.num_samples)


# --------------------------------------------------------------------------------------------
# Heteroscedastic Gaussian
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class HeteroscedasticGaussian(Likelihood):
    """Gaussian noise with a latent log-variance: y ~ N(f, exp(g)), latents (f, g), L = 2.

    With q(f) = N(m_f, v_f), q(g) = N(m_g, v_g) independent:

        E_q[log p(y | f, g)] = −½ log 2π − ½ m_g − ½((y − m_f)² + v_f)·exp(−m_g + v_g/2),
        E[y] = m_f,   Var[y] = v_f + exp(m_g + v_g/2),
        log ∫ p q = log E_g[N(y; m_f, v_f + e^g)] (Gauss–Hermite over g, logsumexp).

    No hyperparameters.

    Args:
      num_quadrature_points: Gauss–Hermite nodes (for the predictive density).

    Shapes: mean, var (N, 2), column 0 is f, column 1 is g; y (N,) or (N, 1). Expectations (N,);
    ``predict_mean_variance`` returns two (N, 1) arrays.

    Example::

        lik = HeteroscedasticGaussian()
        lik.variational_expectations({}, y, mean, var)  # mean, var (N, 2) -> (N,)
    """

    num_quadrature_points: int = 20

    def __post_init__(self):
        _check_int(
            "HeteroscedasticGaussian", "num_quadrature_points", self.num_quadrature_points, 1
        )

    @property
    def num_latent(self) -> int:
        return 2

    def _prepare(self, y, mean, var):
        mean, var = _prepare_latent("HeteroscedasticGaussian", mean, var, 2)
        if y is not None:
            y = jnp.asarray(y)
            n = mean.shape[0]
            if y.shape not in ((n,), (n, 1)):
                raise ValueError(
                    f"HeteroscedasticGaussian: targets must have shape ({n},) or ({n}, 1) to "
                    f"match mean {mean.shape}, got {y.shape}"
                )
            y = y.reshape(n).astype(mean.dtype)
        return y, mean, var

    @_jit_method
    def log_density(self, params, y, f):
        f = jnp.asarray(f)
        f = f.astype(_float_dtype(f))
        y, f, _ = self._prepare(y, f, f)
        mu, g = f[:, 0], f[:, 1]
        return -0.5 * (_LOG_2PI + g) - 0.5 * jnp.square(y - mu) * jnp.exp(-g)

    @_jit_method
    def variational_expectations(self, params, y, mean, var):
        y, mean, var = self._prepare(y, mean, var)
        m_f, m_g, v_f, v_g = mean[:, 0], mean[:, 1], var[:, 0], var[:, 1]
        return -0.5 * (_LOG_2PI + m_g) - 0.5 * (jnp.square(y - m_f) + v_f) * jnp.exp(-m_g + v_g / 2)

    @_jit_method
    def predict_mean_variance(self, params, mean, var):
        _, mean, var = self._prepare(None, mean, var)
        return mean[:, :1], var[:, :1] + jnp.exp(mean[:, 1:] + var[:, 1:] / 2)

    @_jit_method
    def log_predictive_density(self, params, y, mean, var):
        y, mean, var = self._prepare(y, mean, var)
        z, w = _quadrature(self.num_quadrature_points, mean.dtype)
        g = mean[:, 1:] + jnp.sqrt(var[:, 1:]) * z  # (N, P)
        total = var[:, :1] + jnp.exp(g)
        log_normal = (
            -0.5 * (_LOG_2PI + jnp.log(total)) - 0.5 * jnp.square(y[:, None] - mean[:, :1]) / total
        )
        return logsumexp(log_normal + jnp.log(w), axis=-1)

    def check_targets(self, y) -> None:
        y = _concrete_targets("HeteroscedasticGaussian", y)
        if not (y.ndim == 1 or (y.ndim == 2 and y.shape[1] == 1)):
            raise ValueError(
                f"HeteroscedasticGaussian: targets must have shape (N,) or (N, 1), got {y.shape}"
            )
