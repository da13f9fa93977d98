"""Covariance kernels for sparse variational Gaussian processes, in plain JAX.

A kernel maps inputs x1 (N, D) and x2 (M, D) to the Gram matrix K (N, M) with
K_{nm} = k(x1_n, x2_m). Kernels are frozen dataclasses (hashable, so they can be static
arguments of :func:`jax.jit`) that hold only the *initial* hyperparameter values; the trainable
hyperparameters live in a separate pytree made by ``kernel.init(input_dim)``:

* ``init(input_dim, dtype)``: the hyperparameter pytree of **unconstrained** raw values;
* ``kernel(params, x1, x2)``: the Gram matrix k(x1, x2), shape (N, M);
* ``diag(params, x)``: diag k(x, x), shape (N,), without forming the N × N matrix;
* ``hyperparameters(params)``: the constrained (positive) values, same structure as ``params``.

Positivity: a positive hyperparameter θ is stored as raw u with θ = softplus(u)
(:func:`positive`); ``init`` stores u = softplus⁻¹(θ₀) (:func:`inverse_positive`) of the initial
value θ₀ given to the constructor. Stationary kernels use the params keys ``"lengthscale"`` (ℓ,
shape (D,) with ARD, else ()) and ``"variance"`` (σ², shape ()); :class:`Linear` uses
``"variance"`` only. :class:`Sum` and :class:`Product` take a tuple of the children's params, in
order. Kernels combine with ``k1 + k2`` and ``k1 * k2``.
"""

from __future__ import annotations

import abc
import dataclasses
import functools
import math
import operator

import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array

__all__ = [
    "Kernel",
    "Linear",
    "Matern12",
    "Matern32",
    "Matern52",
    "Product",
    "SquaredExponential",
    "Sum",
    "inverse_positive",
    "positive",
]


def positive(raw: Array) -> Array:
    """θ = softplus(u) = log(1 + eᵘ): an unconstrained raw value to a positive one.

    Args:
        raw: unconstrained values u, any shape.

    Returns:
        softplus(u) > 0, the shape and dtype of ``raw``.

    Example::

        positive(inverse_positive(2.0))  # 2.0
    """
    return jax.nn.softplus(raw)


def inverse_positive(value: Array) -> Array:
    """u = softplus⁻¹(θ) = θ + log(−expm1(−θ)): a positive value to its unconstrained raw value.

    Stable for large θ (u → θ) and small θ (u → log θ); the inverse of :func:`positive`.

    Args:
        value: positive values θ, any shape.

    Returns:
        u with softplus(u) = θ, the shape of ``value``.

    Example::

        inverse_positive(jnp.log(2.0))  # 0.0
    """
    value = jnp.asarray(value)
    return value + jnp.log(-jnp.expm1(-value))


# --------------------------------------------------------------------------------------------
# Validation helpers.


def _positive_float(name: str, arg: str, value) -> float:
    out = float(value)
    if not (math.isfinite(out) and out > 0):
        raise ValueError(f"{name}: {arg} must be positive and finite, got {value!r}")
    return out


def _hyperparameter(name: str, arg: str, value, ard: bool) -> float | tuple[float, ...]:
    """A constructor value as a float, or (ARD only) a tuple of floats; checked positive."""
    if isinstance(value, (tuple, list)) or np.ndim(value) > 0:
        values = tuple(np.asarray(value, dtype=float).ravel().tolist())
        if np.ndim(value) != 1 or not values:
            raise ValueError(
                f"{name}: {arg} must be a scalar or a non-empty 1-D sequence, "
                f"got shape {np.shape(value)}"
            )
        if not ard:
            raise ValueError(
                f"{name}: a per-dimension {arg} of length {len(values)} needs ard=True"
            )
        for v in values:
            _positive_float(name, arg, v)
        return values
    return _positive_float(name, arg, value)


def _init_value(
    name: str, arg: str, value: float | tuple[float, ...], ard: bool, input_dim: int, dtype
) -> Array:
    """The raw (unconstrained) initial parameter: shape (input_dim,) with ARD, else ()."""
    if isinstance(value, tuple) and len(value) != input_dim:
        raise ValueError(f"{name}: {arg} has {len(value)} ARD values but input_dim is {input_dim}")
    shape = (input_dim,) if ard else ()
    return inverse_positive(jnp.broadcast_to(jnp.asarray(value, dtype=dtype), shape))


def _check_input_dim(name: str, input_dim: int) -> int:
    if isinstance(input_dim, bool) or int(input_dim) != input_dim or input_dim < 1:
        raise ValueError(f"{name}: input_dim must be a positive integer, got {input_dim!r}")
    return int(input_dim)


def _canonical_dtype(dtype):
    # float64 falls back to float32 (without a warning) when x64 is disabled.
    return jax.dtypes.canonicalize_dtype(dtype)


def _check_finite(name: str, arg: str, x: Array) -> None:
    """Value check on concrete arrays only; tracers (under jit/grad/vmap) are skipped."""
    if isinstance(x, jax.core.Tracer):
        return
    if not np.all(np.isfinite(np.asarray(x))):
        raise ValueError(f"{name}: {arg} contains non-finite values (nan or inf)")


def _check_x(name: str, x: Array, arg: str = "x") -> Array:
    x = jnp.asarray(x) if not isinstance(x, jax.core.Tracer) else x
    if x.ndim != 2:
        raise ValueError(f"{name}: {arg} must be 2-D with shape (N, D), got shape {x.shape}")
    _check_finite(name, arg, x)
    return x


def _check_pair(name: str, x1: Array, x2: Array) -> tuple[Array, Array]:
    x1 = _check_x(name, x1, "x1")
    x2 = _check_x(name, x2, "x2")
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"{name}: x1 and x2 must have the same number of input dimensions D, got shapes "
            f"{x1.shape} and {x2.shape}"
        )
    return x1, x2


def _check_param_dim(name: str, arg: str, param: Array, input_dim: int) -> None:
    shape = jnp.shape(param)
    if shape not in ((), (input_dim,)):
        raise ValueError(
            f"{name}: {arg} parameter of shape {shape} does not match inputs with "
            f"D = {input_dim} dimensions (expected () or ({input_dim},))"
        )


# --------------------------------------------------------------------------------------------
# Base class.


class Kernel(abc.ABC):
    """A covariance function k(x, x') with hyperparameters in a separate pytree.

    Subclasses are frozen dataclasses holding the initial (constrained) hyperparameter values.
    """

    @abc.abstractmethod
    def init(self, input_dim: int, dtype=jnp.float64) -> dict:
        """The hyperparameter pytree of **unconstrained** raw values for D = ``input_dim``.

        Args:
            input_dim: the input dimension D.
            dtype: floating dtype of the parameters.

        Returns:
            The raw params; :meth:`hyperparameters` maps them to the constructor's values.
        """

    @abc.abstractmethod
    def __call__(self, params, x1: Array, x2: Array) -> Array:
        """The Gram matrix K_{nm} = k(x1_n, x2_m).

        Args:
            params: the raw hyperparameters from :meth:`init`.
            x1: inputs, shape (N, D).
            x2: inputs, shape (M, D).

        Returns:
            K, shape (N, M).
        """

    @abc.abstractmethod
    def diag(self, params, x: Array) -> Array:
        """diag k(x, x): k(x_n, x_n) for each n, without forming the N × N matrix.

        Args:
            params: the raw hyperparameters from :meth:`init`.
            x: inputs, shape (N, D).

        Returns:
            shape (N,).
        """

    @abc.abstractmethod
    def hyperparameters(self, params):
        """The constrained (positive) hyperparameter values, same structure as ``params``."""

    def __add__(self, other):
        if not isinstance(other, Kernel):
            return NotImplemented
        left = self.kernels if isinstance(self, Sum) else (self,)
        right = other.kernels if isinstance(other, Sum) else (other,)
        return Sum(left + right)

    def __mul__(self, other):
        if not isinstance(other, Kernel):
            return NotImplemented
        left = self.kernels if isinstance(self, Product) else (self,)
        right = other.kernels if isinstance(other, Product) else (other,)
        return Product(left + right)


# --------------------------------------------------------------------------------------------
# Stationary kernels: k(x, x') = σ² κ(r²), r² = Σ_d (x_d − x'_d)² / ℓ_d².


@dataclasses.dataclass(frozen=True)
class _Stationary(Kernel):
    lengthscale: float | tuple[float, ...] = 1.0
    variance: float = 1.0
    ard: bool = True

    def __post_init__(self):
        name = type(self).__name__
        if not isinstance(self.ard, (bool, np.bool_)):
            raise ValueError(f"{name}: ard must be a bool, got {self.ard!r}")
        object.__setattr__(self, "ard", bool(self.ard))
        object.__setattr__(
            self, "lengthscale", _hyperparameter(name, "lengthscale", self.lengthscale, self.ard)
        )
        object.__setattr__(
            self, "variance", _hyperparameter(name, "variance", self.variance, False)
        )

    @abc.abstractmethod
    def _profile(self, r2: Array) -> Array:
        """κ(r²) with κ(0) = 1, from the scaled squared distance r² ≥ 0."""

    def init(self, input_dim, dtype=jnp.float64):
        name = type(self).__name__
        input_dim = _check_input_dim(name, input_dim)
        dtype = _canonical_dtype(dtype)
        return {
            "lengthscale": _init_value(
                name, "lengthscale", self.lengthscale, self.ard, input_dim, dtype
            ),
            "variance": _init_value(name, "variance", self.variance, False, 1, dtype),
        }

    def __call__(self, params, x1, x2):
        name = type(self).__name__
        x1, x2 = _check_pair(name, x1, x2)
        _check_param_dim(name, "lengthscale", params["lengthscale"], x1.shape[1])
        lengthscale = positive(params["lengthscale"])
        r2 = self._scaled_squared_distance(x1 / lengthscale, x2 / lengthscale)
        return positive(params["variance"]) * self._profile(r2)

    def _scaled_squared_distance(self, a: Array, b: Array) -> Array:
        """r²_{nm} = ‖a_n − b_m‖² from differences: exact at r = 0, (N, M, D) memory."""
        diff = a[:, None, :] - b[None, :, :]
        return jnp.maximum(jnp.sum(diff * diff, axis=-1), 0.0)

    def diag(self, params, x):
        name = type(self).__name__
        x = _check_x(name, x)
        _check_param_dim(name, "lengthscale", params["lengthscale"], x.shape[1])
        variance = positive(params["variance"])
        dtype = jnp.result_type(variance, params["lengthscale"], x)
        return jnp.broadcast_to(variance, x.shape[:1]).astype(dtype)

    def hyperparameters(self, params):
        return {key: positive(value) for key, value in params.items()}


def _safe_sqrt(r2: Array) -> Array:
    """√r² with a zero (finite) gradient at r² = 0, the diagonal of K(X, X)."""
    nonzero = r2 > 0
    return jnp.where(nonzero, jnp.sqrt(jnp.where(nonzero, r2, 1.0)), 0.0)


@dataclasses.dataclass(frozen=True)
class SquaredExponential(_Stationary):
    """Squared-exponential (RBF) kernel: k(x, x') = σ² exp(−½ Σ_d (x_d − x'_d)² / ℓ_d²).

    Args:
        lengthscale: initial ℓ > 0; a scalar (broadcast to (D,) when ``ard``) or, with ``ard``,
            a length-D sequence.
        variance: initial σ² > 0.
        ard: one lengthscale per input dimension (params shape (D,)) or a shared one (()).

    Example::

        k = SquaredExponential(lengthscale=0.5)
        params = k.init(2)
        K = k(params, jnp.zeros((3, 2)), jnp.ones((4, 2)))  # (3, 4), all exp(-4)
    """

    def _profile(self, r2):
        return jnp.exp(-0.5 * r2)

    def _scaled_squared_distance(self, a, b):
        # ‖a‖² + ‖b‖² − 2abᵀ: one matrix product instead of an (N, M, D) tensor (17× faster
        # gradients at D = 784). Its rounding near r = 0 is harmless here, since exp(−r²/2)
        # has no square root whose derivative would blow up there.
        r2 = jnp.sum(a * a, axis=-1)[:, None] + jnp.sum(b * b, axis=-1)[None, :] - 2 * (a @ b.T)
        return jnp.maximum(r2, 0.0)


@dataclasses.dataclass(frozen=True)
class Matern12(_Stationary):
    """Matérn-½ (exponential) kernel: k(x, x') = σ² e^{−r}, r² = Σ_d (x_d − x'_d)² / ℓ_d².

    Args and params as :class:`SquaredExponential`.

    Example::

        k = Matern12()
        k(k.init(1), jnp.zeros((1, 1)), jnp.ones((1, 1)))  # [[exp(-1)]]
    """

    def _profile(self, r2):
        return jnp.exp(-_safe_sqrt(r2))


@dataclasses.dataclass(frozen=True)
class Matern32(_Stationary):
    """Matérn-3/2 kernel: k(x, x') = σ² (1 + √3 r) e^{−√3 r}, r² = Σ_d (x_d − x'_d)² / ℓ_d².

    Args and params as :class:`SquaredExponential`.

    Example::

        k = Matern32(lengthscale=2.0, variance=0.5, ard=False)
        k(k.init(3), x1, x2)  # (N, M)
    """

    def _profile(self, r2):
        s = math.sqrt(3.0) * _safe_sqrt(r2)
        return (1.0 + s) * jnp.exp(-s)


@dataclasses.dataclass(frozen=True)
class Matern52(_Stationary):
    """Matérn-5/2 kernel: k(x, x') = σ² (1 + √5 r + 5r²/3) e^{−√5 r}, r² = Σ_d (x_d − x'_d)²/ℓ_d².

    Args and params as :class:`SquaredExponential`.

    Example::

        k = Matern52(lengthscale=(1.0, 2.0))
        k(k.init(2), x1, x2)  # (N, M)
    """

    def _profile(self, r2):
        s = math.sqrt(5.0) * _safe_sqrt(r2)
        return (1.0 + s + (5.0 / 3.0) * r2) * jnp.exp(-s)


# --------------------------------------------------------------------------------------------
# Linear kernel.


@dataclasses.dataclass(frozen=True)
class Linear(Kernel):
    """Linear (dot-product) kernel: k(x, x') = Σ_d σ²_d x_d x'_d.

    Args:
        variance: initial σ² > 0; a scalar (broadcast to (D,) when ``ard``) or, with ``ard``, a
            length-D sequence.
        ard: one variance per input dimension (params shape (D,)) or a shared one (()).

    Params: ``{"variance": raw}`` (unconstrained).

    Example::

        k = Linear(variance=2.0)
        k(k.init(2), jnp.ones((1, 2)), jnp.ones((1, 2)))  # [[4.0]]
    """

    variance: float | tuple[float, ...] = 1.0
    ard: bool = False

    def __post_init__(self):
        if not isinstance(self.ard, (bool, np.bool_)):
            raise ValueError(f"Linear: ard must be a bool, got {self.ard!r}")
        object.__setattr__(self, "ard", bool(self.ard))
        object.__setattr__(
            self, "variance", _hyperparameter("Linear", "variance", self.variance, self.ard)
        )

    def init(self, input_dim, dtype=jnp.float64):
        input_dim = _check_input_dim("Linear", input_dim)
        dtype = _canonical_dtype(dtype)
        return {
            "variance": _init_value("Linear", "variance", self.variance, self.ard, input_dim, dtype)
        }

    def __call__(self, params, x1, x2):
        x1, x2 = _check_pair("Linear", x1, x2)
        _check_param_dim("Linear", "variance", params["variance"], x1.shape[1])
        return (x1 * positive(params["variance"])) @ x2.T

    def diag(self, params, x):
        x = _check_x("Linear", x)
        _check_param_dim("Linear", "variance", params["variance"], x.shape[1])
        return jnp.sum(positive(params["variance"]) * x * x, axis=-1)

    def hyperparameters(self, params):
        return {key: positive(value) for key, value in params.items()}


# --------------------------------------------------------------------------------------------
# Combinations.


@dataclasses.dataclass(frozen=True)
class _Combination(Kernel):
    kernels: tuple[Kernel, ...]

    _op = None  # binary operator combining the children

    def __post_init__(self):
        name = type(self).__name__
        kernels = self.kernels
        if isinstance(kernels, list):
            kernels = tuple(kernels)
        if not isinstance(kernels, tuple) or not kernels:
            raise ValueError(
                f"{name}: kernels must be a non-empty tuple of Kernel, got {kernels!r}"
            )
        for k in kernels:
            if not isinstance(k, Kernel):
                raise ValueError(f"{name}: every element of kernels must be a Kernel, got {k!r}")
        object.__setattr__(self, "kernels", kernels)

    def _check_params(self, params) -> None:
        if not isinstance(params, (tuple, list)) or len(params) != len(self.kernels):
            raise ValueError(
                f"{type(self).__name__}: params must be a tuple with one entry per kernel "
                f"({len(self.kernels)}), got {type(params).__name__}"
                + (f" of length {len(params)}" if isinstance(params, (tuple, list)) else "")
            )

    def init(self, input_dim, dtype=jnp.float64):
        return tuple(k.init(input_dim, dtype) for k in self.kernels)

    def __call__(self, params, x1, x2):
        self._check_params(params)
        parts = (k(p, x1, x2) for k, p in zip(self.kernels, params, strict=True))
        return functools.reduce(type(self)._op, parts)

    def diag(self, params, x):
        self._check_params(params)
        parts = (k.diag(p, x) for k, p in zip(self.kernels, params, strict=True))
        return functools.reduce(type(self)._op, parts)

    def hyperparameters(self, params):
        self._check_params(params)
        return tuple(k.hyperparameters(p) for k, p in zip(self.kernels, params, strict=True))


@dataclasses.dataclass(frozen=True)
class Sum(_Combination):
    """Sum of kernels: k(x, x') = Σᵢ kᵢ(x, x').

    Args:
        kernels: the children k₁, …, k_n (a non-empty tuple).

    Params: a tuple of the children's params, in order. ``k1 + k2`` builds a Sum (nested sums
    made with ``+`` are flattened).

    Example::

        k = SquaredExponential() + Linear()  # Sum((SquaredExponential(), Linear()))
        params = k.init(2)  # (se_params, linear_params)
    """

    _op = operator.add


@dataclasses.dataclass(frozen=True)
class Product(_Combination):
    """Product of kernels: k(x, x') = Πᵢ kᵢ(x, x').

    Args:
        kernels: the children k₁, …, k_n (a non-empty tuple).

    Params: a tuple of the children's params, in order. ``k1 * k2`` builds a Product (nested
    products made with ``*`` are flattened).

    Example::

        k = Matern32() * Linear()
        K = k(k.init(2), x1, x2)
    """

    _op = operator.mul
