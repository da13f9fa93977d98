"""Exponential families defined by a log-partition function; everything else by autodiff.

A family is given by its log-partition A(θ), sufficient statistics T(x) and log base measure
log h(x):

    log p(x | θ) = log h(x) + ⟨θ, T(x)⟩ − A(θ).

From A alone, automatic differentiation gives the expectation parameters and the Fisher matrix

    η = E[T(x)] = ∇A(θ),        F(θ) = Cov[T(x)] = ∇²A(θ),

and the inverse map η → θ, when no closed form is supplied, solves ∇A(θ) = η by damped Newton
iterations on the convex function A(θ) − ⟨θ, η⟩, differentiated implicitly (dθ/dη = ∇²A(θ)⁻¹).

Conventions. One natural parameter θ is a single array of the family's ``param_shape`` (``()``
for Bernoulli and Poisson, ``(2,)`` for Gamma, ``(K,)`` for a K-class Dirichlet, ``(K−1,)`` for a
K-class Categorical); a ``None`` entry in a shape means "any size", so one family object serves
every K. All public methods accept arbitrary leading batch axes in front of that shape.

Built-in families: :data:`BERNOULLI`, :data:`CATEGORICAL`, :data:`POISSON`, :data:`GAMMA`,
:data:`DIRICHLET`. Their parameterizations are registered under ``"<family>_<parameterization>"``
(``"bernoulli_natural"``, ``"gamma_shape_rate"``, ...) and resolvable with
:func:`natgrad.expfam.base.resolve`; see :func:`custom_parameterization` for user-defined ones.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.scipy.special import gammaln, xlogy

from natgrad.expfam.base import Parameterization, register

Array = jax.Array
#: A core (unbatched) shape; ``None`` stands for "any size" along that axis.
ShapeSpec = tuple[int | None, ...]

__all__ = [
    "BERNOULLI",
    "CATEGORICAL",
    "DIRICHLET",
    "GAMMA",
    "POISSON",
    "ArrayParameterization",
    "ExponentialFamily",
    "custom_parameterization",
    "expectation_parameterization",
    "natural_parameterization",
]

# Damped Newton: step sizes 1, 1/2, ..., 2^−(_NEWTON_HALVINGS−1) are tried at every iteration.
_NEWTON_HALVINGS = 30
# Armijo constant for the merit function ‖∇A(θ) − η‖².
_ARMIJO = 1e-4


# -- small helpers ---------------------------------------------------------------------------


def _as_float(x) -> Array:
    """``x`` as a JAX array, integers and booleans promoted to the default float dtype."""
    x = jnp.asarray(x)
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        x = x.astype(jnp.result_type(float))
    return x


def _core(ndim: int, letter: str) -> str:
    """Core-dimension part of a ``jnp.vectorize`` signature, e.g. ``_core(1, "a") == "(a0)"``."""
    return "(" + ",".join(f"{letter}{i}" for i in range(ndim)) + ")"


def _vectorize(fn: Callable, in_ndims: tuple[int, ...], out_ndim: int, *, same_core=False):
    """Vectorize ``fn`` of unbatched arrays over all leading batch axes.

    ``same_core=True`` gives every input the same core dimension names (they must agree).
    """
    ins = ",".join(_core(n, "a" if same_core else f"i{k}_") for k, n in enumerate(in_ndims))
    return jnp.vectorize(fn, signature=f"{ins}->{_core(out_ndim, 'o')}")


def _check_shape(x, spec: ShapeSpec, *, argname: str, what: str) -> None:
    """Raise if ``x`` is not one array whose trailing shape matches ``spec`` (static only)."""
    if isinstance(x, tuple | list | dict):
        raise TypeError(
            f"`{argname}` of {what} must be a single array with trailing shape "
            f"{_show(spec)}, got a {type(x).__name__}; stack the parts along the last axis "
            "(jnp.stack(parts, axis=-1))."
        )
    shape = tuple(np.shape(x))
    core = shape[len(shape) - len(spec) :] if len(spec) else ()
    if len(shape) < len(spec) or any(
        want is not None and got != want for want, got in zip(spec, core, strict=True)
    ):
        raise ValueError(
            f"`{argname}` of {what} must have trailing shape {_show(spec)} (batch axes first), "
            f"got shape {shape}."
        )


def _jit_method(method: Callable) -> Callable:
    """Compile a method once per (hashable) object and input shape.

    Eager calls then run one compiled program instead of dispatching every primitive of the
    vectorized derivatives; under an outer ``jax.jit`` the inner one is simply inlined.
    """
    return jax.jit(method, static_argnums=0)


def _show(spec: ShapeSpec) -> str:
    inner = ", ".join("K" if s is None else str(s) for s in spec)
    return f"({inner},)" if len(spec) == 1 else f"({inner})"


# -- the family ------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExponentialFamily:
    """An exponential family p(x | θ) = h(x) exp(⟨θ, T(x)⟩ − A(θ)) given by A, T and log h.

    A frozen, hashable configuration object (not a pytree). Every callable acts on ONE unbatched
    parameter or observation; the methods vectorize them over leading batch axes.

    Attributes:
        name: Family name, the prefix of its registered parameterizations.
        log_partition: A(θ) → scalar, for θ of shape ``param_shape``; convex, smooth.
        sufficient_statistics: ``(x, param_shape) → T(x)`` shaped like θ. ``param_shape`` is the
            concrete shape of θ (families with a ``None`` size, such as Categorical, read the
            number of classes from it; others ignore it).
        log_base_measure: log h(x) → scalar.
        param_shape: core shape of θ and η; ``None`` entries mean any size.
        event_shape: core shape of one observation x (``None`` as above).
        domain_check: θ → boolean scalar, True inside the natural domain (jit-compatible).
        domain_description: a phrase describing the natural domain, for error messages.
        natural_from_expectation: optional closed form η → θ. When ``None``, θ solves
            ∇A(θ) = η by damped Newton from ``initial_natural(η)``.
        initial_natural: η → starting θ for the Newton solve (inside the domain).
        expectation_domain_check: optional η → boolean scalar, True for valid η (the interior of
            the convex hull of T's range). When ``None``, η is valid when θ(η) is finite and in
            the natural domain.
        expectation_domain_description: a phrase describing that domain.
        sampler: optional ``(theta, key, shape) → x`` with θ batched, its batch shape
            broadcastable to ``shape``; returns an array of shape ``shape + event_shape``.
        entropy_base_term: optional θ → E[log h(x)]; ``None`` means zero (h ≡ 1).
        newton_iterations: fixed number of damped Newton iterations (jit-compatible).
        reparameterized: whether ``sampler`` is differentiable in θ (pathwise gradients).
    """

    name: str
    log_partition: Callable[[Array], Array]
    sufficient_statistics: Callable[[Array, tuple[int, ...]], Array]
    log_base_measure: Callable[[Array], Array]
    param_shape: ShapeSpec
    event_shape: ShapeSpec
    domain_check: Callable[[Array], Array]
    domain_description: str = "the natural domain"
    natural_from_expectation: Callable[[Array], Array] | None = None
    initial_natural: Callable[[Array], Array] | None = None
    expectation_domain_check: Callable[[Array], Array] | None = None
    expectation_domain_description: str = "the interior of the mean domain"
    sampler: Callable[[Array, Array, tuple[int, ...]], Array] | None = None
    entropy_base_term: Callable[[Array], Array] | None = None
    newton_iterations: int = 40
    reparameterized: bool = False

    def __post_init__(self):
        if self.natural_from_expectation is None and self.initial_natural is None:
            raise ValueError(
                f"family {self.name!r} needs `natural_from_expectation` (a closed form η → θ) "
                "or `initial_natural` (a starting point for the Newton solve of ∇A(θ) = η)."
            )

    @property
    def param_ndim(self) -> int:
        """Number of core axes of θ and η."""
        return len(self.param_shape)

    def batch_shape(self, theta) -> tuple[int, ...]:
        """Leading batch shape of a natural parameter array."""
        shape = tuple(np.shape(theta))
        return shape[: len(shape) - self.param_ndim]

    def check_natural(self, theta, *, argname: str = "theta") -> None:
        """Raise ``ValueError``/``TypeError`` if ``theta`` has the wrong trailing shape."""
        _check_shape(theta, self.param_shape, argname=argname, what=f"the {self.name} family")

    # -- moments --------------------------------------------------------------------------
    def mean(self, theta) -> Array:
        """Expectation parameters η = E[T(x)] = ∇A(θ).

        Args:
            theta: ``[..., *param_shape]`` natural parameters.

        Returns:
            ``[..., *param_shape]``.

        Example:
            >>> round(float(POISSON.mean(jnp.log(3.0))), 6)  # η = λ = exp θ
            3.0
        """
        self.check_natural(theta)
        return self._mean_batched(_as_float(theta))

    @_jit_method
    def _mean_batched(self, theta: Array) -> Array:
        n = self.param_ndim
        return _vectorize(self._mean_one, (n,), n)(theta)

    def fisher(self, theta) -> Array:
        """Fisher information F(θ) = ∇²A(θ) = Cov[T(x)], as a dense matrix.

        Args:
            theta: ``[..., *param_shape]``.

        Returns:
            ``[..., *param_shape, *param_shape]`` (``[...]`` for scalar θ).
        """
        self.check_natural(theta)
        return self._fisher_batched(_as_float(theta))

    @_jit_method
    def _fisher_batched(self, theta: Array) -> Array:
        n = self.param_ndim
        hess = jax.hessian(self.log_partition)
        return jnp.vectorize(hess, signature=f"{_core(n, 'a')}->{_core(2 * n, 'o')}")(theta)

    def natural_from_mean(self, eta) -> Array:
        """Natural parameters θ = (∇A)⁻¹(η): the closed form, or a Newton solve of ∇A(θ) = η.

        The Newton solve is differentiable in forward and reverse mode through implicit
        differentiation, dθ = ∇²A(θ)⁻¹ dη. Invalid η give non-finite or meaningless θ; check
        with the expectation parameterization's ``is_valid``.

        Args:
            eta: ``[..., *param_shape]`` expectation parameters.

        Returns:
            ``[..., *param_shape]``.
        """
        self.check_natural(eta, argname="eta")
        return self._natural_from_mean_batched(_as_float(eta))

    @_jit_method
    def _natural_from_mean_batched(self, eta: Array) -> Array:
        n = self.param_ndim
        return _vectorize(self._natural_from_mean_one, (n,), n)(eta)

    def _mean_one(self, theta: Array) -> Array:
        return jax.grad(self.log_partition)(theta)

    def _natural_from_mean_one(self, eta: Array) -> Array:
        if self.natural_from_expectation is not None:
            return self.natural_from_expectation(eta)
        return _solve_mean_equation(self, eta)

    # -- densities and divergences --------------------------------------------------------
    def log_prob(self, theta, x) -> Array:
        """log p(x | θ) = log h(x) + ⟨θ, T(x)⟩ − A(θ).

        Args:
            theta: ``[..., *param_shape]``.
            x: ``[..., *event_shape]``; batch axes broadcast against θ's.

        Returns:
            ``[...]`` the broadcast batch shape.
        """
        self.check_natural(theta)
        _check_shape(x, self.event_shape, argname="x", what=f"the {self.name} family")
        return self._log_prob_batched(_as_float(theta), jnp.asarray(x))

    @_jit_method
    def _log_prob_batched(self, theta: Array, x: Array) -> Array:
        def one(th, xx):
            t = self.sufficient_statistics(xx, th.shape)
            return self.log_base_measure(xx) + jnp.sum(th * t) - self.log_partition(th)

        return _vectorize(one, (self.param_ndim, len(self.event_shape)), 0)(theta, x)

    def entropy(self, theta) -> Array:
        """Entropy H = A(θ) − ⟨θ, ∇A(θ)⟩ − E[log h(x)].

        Args:
            theta: ``[..., *param_shape]``.

        Returns:
            ``[...]``.
        """
        self.check_natural(theta)
        return self._entropy_batched(_as_float(theta))

    @_jit_method
    def _entropy_batched(self, theta: Array) -> Array:
        def one(th):
            eta = jax.grad(self.log_partition)(th)
            base = 0.0 if self.entropy_base_term is None else self.entropy_base_term(th)
            return self.log_partition(th) - jnp.sum(th * eta) - base

        return _vectorize(one, (self.param_ndim,), 0)(theta)

    def kl(self, theta_q, theta_p) -> Array:
        """KL(q ‖ p) as the Bregman divergence of A: A(θ_p) − A(θ_q) − ⟨θ_p − θ_q, ∇A(θ_q)⟩.

        Args:
            theta_q: ``[..., *param_shape]`` natural parameters of q.
            theta_p: ``[..., *param_shape]`` natural parameters of p (batch axes broadcast).

        Returns:
            ``[...]``.
        """
        self.check_natural(theta_q, argname="theta_q")
        self.check_natural(theta_p, argname="theta_p")
        return self._kl_batched(_as_float(theta_q), _as_float(theta_p))

    @_jit_method
    def _kl_batched(self, theta_q: Array, theta_p: Array) -> Array:
        a = self.log_partition

        def one(tq, tp):
            return a(tp) - a(tq) - jnp.sum((tp - tq) * jax.grad(a)(tq))

        n = self.param_ndim
        return _vectorize(one, (n, n), 0, same_core=True)(theta_q, theta_p)

    def sample(self, theta, key, sample_shape: tuple[int, ...] = ()) -> Array:
        """Draw x ~ p(x | θ).

        Args:
            theta: ``[*batch, *param_shape]``.
            key: a ``jax.random`` key.
            sample_shape: leading shape of independent draws.

        Returns:
            ``[*sample_shape, *batch, *event_shape]``.
        """
        self.check_natural(theta)
        if self.sampler is None:
            raise NotImplementedError(
                f"the {self.name} family has no sampler; pass `sampler=` to ExponentialFamily."
            )
        shape = tuple(sample_shape) + self.batch_shape(theta)
        return self.sampler(_as_float(theta), key, shape)


# -- Newton solve of ∇A(θ) = η with implicit differentiation ---------------------------------


@functools.partial(jax.custom_jvp, nondiff_argnums=(0,))
def _solve_mean_equation(family: ExponentialFamily, eta: Array) -> Array:
    """θ with ∇A(θ) = η for one unbatched η, by damped Newton (forward: dθ = ∇²A(θ)⁻¹ dη)."""
    return _damped_newton(family, jax.lax.stop_gradient(eta))


@_solve_mean_equation.defjvp
def _solve_mean_equation_jvp(family, primals, tangents):
    (eta,), (deta,) = primals, tangents
    theta = _solve_mean_equation(family, eta)
    size = theta.size
    hess = jax.hessian(family.log_partition)(theta).reshape(size, size)  # ∇²A(θ)
    dtheta = _spd_solve(hess, deta.reshape(size)).reshape(theta.shape)
    return theta, dtheta


def _spd_solve(matrix: Array, rhs: Array) -> Array:
    """matrix⁻¹ rhs for a symmetric positive definite ``[n, n]`` matrix (here ∇²A), by Cholesky."""
    return jax.scipy.linalg.cho_solve((jnp.linalg.cholesky(matrix), True), rhs)


@functools.partial(jax.jit, static_argnums=0)
def _damped_newton(family: ExponentialFamily, eta: Array) -> Array:
    """Minimize the convex f(θ) = A(θ) − ⟨θ, η⟩ by Newton steps θ ← θ − t ∇²A(θ)⁻¹(∇A(θ) − η).

    The step size t is the largest of 1, 1/2, 1/4, ... that stays in the natural domain and
    decreases the merit ‖∇A(θ) − η‖² by the Armijo factor (1 − 2·10⁻⁴ t); the Newton direction
    is a descent direction of that merit whenever ∇²A(θ) is nonsingular. A fixed number of
    iterations keeps the solve jit-compatible; once the merit stops decreasing (round-off) the
    iterate stays put. Compiled once per family and shape (``family`` is a static argument), so
    eager calls do not retrace the loop.
    """
    shape, size = eta.shape, eta.size
    grad_a = jax.grad(family.log_partition)
    hess_a = jax.hessian(family.log_partition)
    steps = 0.5 ** jnp.arange(_NEWTON_HALVINGS, dtype=eta.dtype)

    def merit(theta):
        r = grad_a(theta) - eta
        m = jnp.sum(r * r)
        inside = family.domain_check(theta) & jnp.isfinite(m)
        return jnp.where(inside, m, jnp.inf)

    def iteration(_, theta):
        r = grad_a(theta) - eta
        hess = hess_a(theta).reshape(size, size)
        direction = -_spd_solve(hess, r.reshape(size)).reshape(shape)
        candidates = theta + steps.reshape((-1,) + (1,) * len(shape)) * direction
        merits = jax.vmap(merit)(candidates)
        accept = merits <= (1.0 - 2.0 * _ARMIJO * steps) * jnp.sum(r * r)
        best = candidates[jnp.argmax(accept)]
        return jnp.where(jnp.any(accept), best, theta)

    theta0 = family.initial_natural(eta)
    return jax.lax.fori_loop(0, family.newton_iterations, iteration, theta0)


# -- parameterizations -----------------------------------------------------------------------


def _identity(x: Array) -> Array:
    return x


@dataclasses.dataclass(frozen=True, repr=False, kw_only=True)
class ArrayParameterization(Parameterization):
    """A parameterization ξ of an :class:`ExponentialFamily` whose parameter is one array.

    Defined by the maps ξ → θ and θ → ξ on ONE unbatched parameter; the expectation maps go
    through the natural parameters unless closed forms are given:

        η(ξ) = ∇A(θ(ξ)),        ξ(η) = ξ(θ(η)),   θ(η) = (∇A)⁻¹(η).

    Frozen and hashable, so it can be a static argument or be closed over under ``jax.jit``.
    Build one with :func:`custom_parameterization`, :func:`natural_parameterization` or
    :func:`expectation_parameterization`.

    Attributes:
        family: the :class:`ExponentialFamily`.
        name: registry name, e.g. ``"poisson_rate"``.
        to_natural_fn: ξ → θ for one unbatched ξ.
        from_natural_fn: θ → ξ for one unbatched θ.
        is_valid_fn: optional ξ → boolean scalar (domain test; finiteness is always checked).
            When ``None``: θ(ξ) is finite and inside the family's natural domain.
        to_expectation_fn: optional closed form ξ → η.
        from_expectation_fn: optional closed form η → ξ.
        param_shape: core shape of ξ; ``None`` means the family's ``param_shape``.
        domain: a phrase describing the valid ξ, used by :meth:`describe_invalid`.
    """

    family: ExponentialFamily
    name: str
    to_natural_fn: Callable[[Array], Array]
    from_natural_fn: Callable[[Array], Array]
    is_valid_fn: Callable[[Array], Array] | None = None
    to_expectation_fn: Callable[[Array], Array] | None = None
    from_expectation_fn: Callable[[Array], Array] | None = None
    param_shape: ShapeSpec | None = None
    domain: str = ""

    @property
    def core_shape(self) -> ShapeSpec:
        """Core (unbatched) shape of ξ."""
        return self.family.param_shape if self.param_shape is None else self.param_shape

    def _map(self, fn: Callable, x: Array, *, from_family_shape: bool, to_family_shape: bool):
        src = self.family.param_ndim if from_family_shape else len(self.core_shape)
        dst = self.family.param_ndim if to_family_shape else len(self.core_shape)
        return _vectorize(fn, (src,), dst)(x)

    # -- conversions ----------------------------------------------------------------------
    def to_natural(self, params) -> Array:
        """θ(ξ): ``[..., *core_shape]`` → ``[..., *family.param_shape]``."""
        self.check_structure(params)
        return self._to_natural(_as_float(params))

    @_jit_method
    def _to_natural(self, params: Array) -> Array:
        return self._map(self.to_natural_fn, params, from_family_shape=False, to_family_shape=True)

    def from_natural(self, natural) -> Array:
        """ξ(θ): ``[..., *family.param_shape]`` → ``[..., *core_shape]``."""
        self.family.check_natural(natural, argname="natural")
        return self._from_natural(_as_float(natural))

    @_jit_method
    def _from_natural(self, natural: Array) -> Array:
        return self._map(
            self.from_natural_fn, natural, from_family_shape=True, to_family_shape=False
        )

    def to_expectation(self, params) -> Array:
        """η(ξ) = ∇A(θ(ξ)) (or the closed form): ``[..., *core_shape]`` → ``[..., *η shape]``."""
        self.check_structure(params)
        return self._to_expectation(_as_float(params))

    @_jit_method
    def _to_expectation(self, params: Array) -> Array:
        if self.to_expectation_fn is None:
            return self.family.mean(self._to_natural(params))
        return self._map(
            self.to_expectation_fn, params, from_family_shape=False, to_family_shape=True
        )

    def from_expectation(self, expectation) -> Array:
        """ξ(η) = ξ(θ(η)) (or the closed form): ``[..., *η shape]`` → ``[..., *core_shape]``."""
        self.family.check_natural(expectation, argname="expectation")
        return self._from_expectation(_as_float(expectation))

    @_jit_method
    def _from_expectation(self, expectation: Array) -> Array:
        if self.from_expectation_fn is None:
            return self._from_natural(self.family.natural_from_mean(expectation))
        return self._map(
            self.from_expectation_fn, expectation, from_family_shape=True, to_family_shape=False
        )

    # -- checks ---------------------------------------------------------------------------
    def check_structure(self, params, *, argname: str = "params") -> None:
        """Raise if ``params`` is not one array with trailing shape ``core_shape``."""
        _check_shape(
            params, self.core_shape, argname=argname, what=f"the {self.name!r} parameterization"
        )

    def is_valid(self, params) -> Array:
        """Boolean ``[...]``: ξ finite and inside the domain (jit-compatible)."""
        self.check_structure(params)
        return self._is_valid(_as_float(params))

    @_jit_method
    def _is_valid(self, params: Array) -> Array:
        core_axes = tuple(range(-len(self.core_shape), 0))

        def one(xi):
            if self.is_valid_fn is not None:
                inside = self.is_valid_fn(xi)
            else:
                theta = self.to_natural_fn(xi)
                inside = jnp.all(jnp.isfinite(theta)) & self.family.domain_check(theta)
            return jnp.all(jnp.isfinite(xi)) & inside

        finite = jnp.all(jnp.isfinite(params), axis=core_axes)
        return finite & _vectorize(one, (len(self.core_shape),), 0)(params)

    def describe_invalid(self, params) -> str:
        """Say how many batch entries are invalid, where the first one is, and the domain."""
        valid = np.asarray(self.is_valid(params))
        bad = np.argwhere(~valid)
        domain = self.domain or f"ξ with θ(ξ) in {self.family.domain_description}"
        where = ""
        if valid.ndim and len(bad):
            first = tuple(int(i) for i in bad[0])
            where = f" ({len(bad)} of {valid.size} entries; first at batch index {first})"
        return (
            f"parameters are outside the domain of the {self.name!r} parameterization{where}; "
            f"it needs finite values with {domain}."
        )

    # -- conveniences through the natural parameters --------------------------------------
    def log_prob(self, params, x) -> Array:
        """log p(x | θ(ξ)); ``x`` is ``[..., *family.event_shape]``."""
        return self.family.log_prob(self.to_natural(params), x)

    def entropy(self, params) -> Array:
        """Entropy of p(· | θ(ξ)), shape ``[...]``."""
        return self.family.entropy(self.to_natural(params))

    def kl(self, params_q, params_p) -> Array:
        """KL(q ‖ p) with both distributions given in this parameterization, shape ``[...]``."""
        self.check_structure(params_q, argname="params_q")
        self.check_structure(params_p, argname="params_p")
        return self.family.kl(self.to_natural(params_q), self.to_natural(params_p))

    def sample(self, params, key, sample_shape: tuple[int, ...] = ()) -> Array:
        """Draw ``[*sample_shape, *batch, *event_shape]`` samples from p(· | θ(ξ))."""
        return self.family.sample(self.to_natural(params), key, sample_shape)


def custom_parameterization(
    family: ExponentialFamily,
    name: str,
    to_natural: Callable[[Array], Array],
    from_natural: Callable[[Array], Array],
    is_valid: Callable[[Array], Array] | None = None,
    *,
    to_expectation: Callable[[Array], Array] | None = None,
    from_expectation: Callable[[Array], Array] | None = None,
    param_shape: ShapeSpec | None = None,
    domain: str = "",
) -> ArrayParameterization:
    """A parameterization ξ of ``family`` given by the maps θ(ξ) and ξ(θ).

    The expectation maps go through the natural parameters, η(ξ) = ∇A(θ(ξ)) and
    ξ(η) = ξ(θ(η)), unless closed forms are passed. All maps act on one unbatched parameter and
    must be differentiable (the natural gradient takes a VJP of ξ(η) and a JVP of ξ(θ)).

    Args:
        family: the exponential family.
        name: a name for messages (and for :func:`~natgrad.expfam.base.register`).
        to_natural: ξ → θ, one unbatched ξ of shape ``param_shape``.
        from_natural: θ → ξ, its inverse.
        is_valid: optional ξ → boolean scalar; default: θ(ξ) finite and in the natural domain.
        to_expectation: optional closed form ξ → η.
        from_expectation: optional closed form η → ξ.
        param_shape: core shape of ξ if it differs from the family's ``param_shape``.
        domain: a phrase describing the valid ξ, for error messages.

    Returns:
        A hashable :class:`ArrayParameterization`.

    Example:
        >>> sqrt_rate = custom_parameterization(POISSON, "poisson_sqrt_rate",
        ...     lambda s: 2.0 * jnp.log(s), lambda t: jnp.exp(t / 2.0), lambda s: s > 0)
        >>> round(float(sqrt_rate.to_expectation(jnp.asarray(3.0))), 6)  # λ = s²
        9.0
    """
    return ArrayParameterization(
        family=family,
        name=name,
        to_natural_fn=to_natural,
        from_natural_fn=from_natural,
        is_valid_fn=is_valid,
        to_expectation_fn=to_expectation,
        from_expectation_fn=from_expectation,
        param_shape=param_shape,
        domain=domain,
    )


def natural_parameterization(family: ExponentialFamily) -> ArrayParameterization:
    """ξ = θ, named ``"<family>_natural"``; η(θ) = ∇A(θ), θ(η) by closed form or Newton."""
    return custom_parameterization(
        family,
        f"{family.name}_natural",
        _identity,
        _identity,
        family.domain_check,
        from_expectation=family._natural_from_mean_one,
        domain=family.domain_description,
    )


def expectation_parameterization(family: ExponentialFamily) -> ArrayParameterization:
    """ξ = η = ∇A(θ), named ``"<family>_expectation"``; θ(η) by closed form or Newton."""
    return custom_parameterization(
        family,
        f"{family.name}_expectation",
        family._natural_from_mean_one,
        family._mean_one,
        family.expectation_domain_check,
        to_expectation=_identity,
        from_expectation=_identity,
        domain=family.expectation_domain_description,
    )


# -- Bernoulli -------------------------------------------------------------------------------


def _logit(p: Array) -> Array:
    """θ = log p − log(1 − p)."""
    return jnp.log(p) - jnp.log1p(-p)


def _open_unit_interval(p: Array) -> Array:
    return (p > 0) & (p < 1)


def _always_finite(theta: Array) -> Array:
    return jnp.all(jnp.isfinite(theta))


def _bernoulli_sampler(theta, key, shape):
    return jax.random.bernoulli(key, jax.nn.sigmoid(theta), shape).astype(theta.dtype)


#: Bernoulli(p) on x ∈ {0, 1}: θ = logit p, A(θ) = softplus(θ), T(x) = x, h = 1; θ shape ``()``.
#: Samples are floats 0./1. and are not reparameterized.
BERNOULLI = ExponentialFamily(
    name="bernoulli",
    log_partition=jax.nn.softplus,
    sufficient_statistics=lambda x, shape: _as_float(x),
    log_base_measure=lambda x: jnp.zeros(()),
    param_shape=(),
    event_shape=(),
    domain_check=_always_finite,
    domain_description="a finite logit θ",
    natural_from_expectation=_logit,
    expectation_domain_check=_open_unit_interval,
    expectation_domain_description="probability 0 < p < 1",
    sampler=_bernoulli_sampler,
)


# -- Categorical (minimal form) --------------------------------------------------------------


def _categorical_log_partition(theta: Array) -> Array:
    """A(θ) = log(1 + Σ_k exp θ_k) = logsumexp([θ, 0])."""
    return jax.nn.logsumexp(jnp.append(theta, 0.0))


def _categorical_natural_from_probs(p: Array) -> Array:
    """θ_k = log p_k − log p_K with p_K = 1 − Σ_{k<K} p_k."""
    return jnp.log(p) - jnp.log1p(-jnp.sum(p))


def _categorical_probs_from_natural(theta: Array) -> Array:
    """p_k = exp(θ_k − A(θ)), k < K."""
    return jnp.exp(theta - _categorical_log_partition(theta))


def _minimal_simplex(p: Array) -> Array:
    return jnp.all(p > 0) & (jnp.sum(p) < 1)


def _categorical_statistics(x: Array, shape: tuple[int, ...]) -> Array:
    """T(x) = one-hot(x) without the last class."""
    return jax.nn.one_hot(x, shape[-1] + 1)[:-1]


def _categorical_sampler(theta, key, shape):
    logits = jnp.concatenate([theta, jnp.zeros((*theta.shape[:-1], 1), theta.dtype)], axis=-1)
    return jax.random.categorical(key, logits, axis=-1, shape=shape)


#: Categorical over K classes in the minimal (K−1)-dimensional form: θ_k = log(p_k / p_K),
#: A(θ) = log(1 + Σ exp θ_k), T(x) = one-hot(x)[:K−1] for an integer class index x ∈ {0..K−1};
#: θ shape ``(K−1,)`` for any K ≥ 2, x shape ``()``. Samples are integers, not reparameterized.
CATEGORICAL = ExponentialFamily(
    name="categorical",
    log_partition=_categorical_log_partition,
    sufficient_statistics=_categorical_statistics,
    log_base_measure=lambda x: jnp.zeros(()),
    param_shape=(None,),
    event_shape=(),
    domain_check=_always_finite,
    domain_description="finite log-odds θ_k = log(p_k / p_K)",
    natural_from_expectation=_categorical_natural_from_probs,
    expectation_domain_check=_minimal_simplex,
    expectation_domain_description="probabilities p_k > 0 of the first K−1 classes, Σ p_k < 1",
    sampler=_categorical_sampler,
)


# -- Poisson ---------------------------------------------------------------------------------

# E[log x!] is summed directly for λ ≤ _POISSON_SWITCH (terms k < _POISSON_TERMS; the tail
# beyond k = 300 is below 1e−57 at λ = 100); for larger λ it comes from the asymptotic entropy
# series (absolute error < 4e−11 at λ = 100, decreasing like λ⁻⁵).
_POISSON_SWITCH = 100.0
_POISSON_TERMS = 300


def _poisson_expected_log_factorial(rate: Array) -> Array:
    """E[log x!] for x ~ Poisson(λ).

    Direct sum Σ_k p(k) log k! for λ ≤ 100; above, from the entropy expansion
    H(λ) = ½ log(2πeλ) − 1/(12λ) − 1/(24λ²) − 19/(360λ³) − 9/(80λ⁴) + O(λ⁻⁵)
    and E[log x!] = H(λ) + λ log λ − λ.
    """
    small = jnp.minimum(rate, _POISSON_SWITCH)
    k = jnp.arange(_POISSON_TERMS, dtype=rate.dtype)
    log_fact = gammaln(k + 1.0)
    direct = jnp.sum(jnp.exp(xlogy(k, small) - small - log_fact) * log_fact)
    big = jnp.maximum(rate, _POISSON_SWITCH)
    inv = 1.0 / big
    entropy = (
        0.5 * jnp.log(2.0 * jnp.pi * jnp.e * big)
        - inv / 12.0
        - inv**2 / 24.0
        - 19.0 * inv**3 / 360.0
        - 9.0 * inv**4 / 80.0
    )
    asymptotic = entropy + big * jnp.log(big) - big
    return jnp.where(rate <= _POISSON_SWITCH, direct, asymptotic)


def _positive(x: Array) -> Array:
    return jnp.all(x > 0)


def _poisson_sampler(theta, key, shape):
    return jax.random.poisson(key, jnp.exp(theta), shape)


#: Poisson(λ) on x ∈ {0, 1, ...}: θ = log λ, A(θ) = exp θ, T(x) = x, h(x) = 1/x!; θ shape ``()``.
#: Samples are integers, not reparameterized.
POISSON = ExponentialFamily(
    name="poisson",
    log_partition=jnp.exp,
    sufficient_statistics=lambda x, shape: _as_float(x),
    log_base_measure=lambda x: -gammaln(_as_float(x) + 1.0),
    param_shape=(),
    event_shape=(),
    domain_check=_always_finite,
    domain_description="a finite log-rate θ",
    natural_from_expectation=jnp.log,
    expectation_domain_check=_positive,
    expectation_domain_description="rate λ > 0",
    sampler=_poisson_sampler,
    entropy_base_term=lambda theta: -_poisson_expected_log_factorial(jnp.exp(theta)),
)


# -- Gamma -----------------------------------------------------------------------------------


def _gamma_log_partition(theta: Array) -> Array:
    """A(θ) = lgamma(α) − α log β with α = θ₁ + 1, β = −θ₂."""
    alpha, beta = theta[0] + 1.0, -theta[1]
    return gammaln(alpha) - alpha * jnp.log(beta)


def _gamma_natural_domain(theta: Array) -> Array:
    return (theta[0] > -1.0) & (theta[1] < 0.0)  # α > 0, β > 0


def _gamma_expectation_domain(eta: Array) -> Array:
    """η = (E log x, E x) is valid iff E x > 0 and log E x > E log x (strict Jensen)."""
    return (eta[1] > 0) & (jnp.log(eta[1]) > eta[0])


def _gamma_initial_natural(eta: Array) -> Array:
    """Minka's approximation α ≈ (3 − s + √((s − 3)² + 24 s)) / (12 s), s = log E x − E log x."""
    s = jnp.log(eta[1]) - eta[0]
    alpha = (3.0 - s + jnp.sqrt((s - 3.0) ** 2 + 24.0 * s)) / (12.0 * s)
    return jnp.stack([alpha - 1.0, -alpha / eta[1]])  # θ = (α − 1, −β), β = α / E x


def _gamma_sampler(theta, key, shape):
    alpha, beta = theta[..., 0] + 1.0, -theta[..., 1]
    return jax.random.gamma(key, alpha, shape) / beta


#: Gamma(α, β) (shape, rate) on x > 0: θ = (α − 1, −β), T(x) = (log x, x), h = 1,
#: A(θ) = lgamma(α) − α log β; θ shape ``(2,)``, x shape ``()``. η → θ by Newton.
#: Samples are reparameterized (JAX's implicit gradients of ``jax.random.gamma``).
GAMMA = ExponentialFamily(
    name="gamma",
    log_partition=_gamma_log_partition,
    sufficient_statistics=lambda x, shape: jnp.stack([jnp.log(x), _as_float(x)]),
    log_base_measure=lambda x: jnp.zeros(()),
    param_shape=(2,),
    event_shape=(),
    domain_check=_gamma_natural_domain,
    domain_description="θ₁ > −1 and θ₂ < 0 (shape α = θ₁ + 1 > 0, rate β = −θ₂ > 0)",
    initial_natural=_gamma_initial_natural,
    expectation_domain_check=_gamma_expectation_domain,
    expectation_domain_description="η₂ = E x > 0 and log η₂ > η₁ = E log x",
    sampler=_gamma_sampler,
    reparameterized=True,
)


# -- Dirichlet -------------------------------------------------------------------------------


def _dirichlet_log_partition(theta: Array) -> Array:
    """A(θ) = Σ lgamma(α_i) − lgamma(Σ α_i) with α = θ + 1."""
    alpha = theta + 1.0
    return jnp.sum(gammaln(alpha)) - gammaln(jnp.sum(alpha))


def _dirichlet_natural_domain(theta: Array) -> Array:
    return jnp.all(theta > -1.0)  # α > 0


def _dirichlet_expectation_domain(eta: Array) -> Array:
    """η = E log x is valid iff Σ exp η_i < 1 (strict Jensen; sufficient for K ≥ 2)."""
    return jnp.sum(jnp.exp(eta)) < 1.0


def _dirichlet_initial_natural(eta: Array) -> Array:
    """Start from ψ(a) ≈ log(a − ½): α_i = ½ + exp(η_i)(α₀ − ½), α₀ = (K − S)/(2(1 − S)).

    With S = Σ exp η_i < 1, this makes every α_i > 0 and Σ α_i = α₀.
    """
    e = jnp.exp(eta)
    s = jnp.sum(e)
    alpha0 = (eta.shape[-1] - s) / (2.0 * (1.0 - s))
    return 0.5 + e * (alpha0 - 0.5) - 1.0


def _dirichlet_sampler(theta, key, shape):
    return jax.random.dirichlet(key, theta + 1.0, shape)


#: Dirichlet(α) on the (K−1)-simplex: θ = α − 1, T(x) = log x, h = 1 (Lebesgue measure on the
#: first K−1 coordinates), A(θ) = Σ lgamma(α_i) − lgamma(Σ α_i); θ and x shape ``(K,)``, K ≥ 2.
#: η → θ by Newton. Samples are reparameterized (JAX's implicit gradients).
DIRICHLET = ExponentialFamily(
    name="dirichlet",
    log_partition=_dirichlet_log_partition,
    sufficient_statistics=lambda x, shape: jnp.log(x),
    log_base_measure=lambda x: jnp.zeros(()),
    param_shape=(None,),
    event_shape=(None,),
    domain_check=_dirichlet_natural_domain,
    domain_description="θ_i > −1 (concentrations α_i = θ_i + 1 > 0)",
    initial_natural=_dirichlet_initial_natural,
    expectation_domain_check=_dirichlet_expectation_domain,
    expectation_domain_description="Σ exp η_i < 1 for η = E log x",
    sampler=_dirichlet_sampler,
    reparameterized=True,
)


# -- registered parameterizations -------------------------------------------------------------


def _register_builtins() -> None:
    for family in (BERNOULLI, CATEGORICAL, POISSON, GAMMA, DIRICHLET):
        register(natural_parameterization(family))
        register(expectation_parameterization(family))
    register(
        custom_parameterization(
            BERNOULLI,
            "bernoulli_probs",
            _logit,
            jax.nn.sigmoid,
            _open_unit_interval,
            to_expectation=_identity,
            from_expectation=_identity,
            domain="probability 0 < p < 1",
        )
    )
    register(
        custom_parameterization(
            CATEGORICAL,
            "categorical_probs_minimal",
            _categorical_natural_from_probs,
            _categorical_probs_from_natural,
            _minimal_simplex,
            to_expectation=_identity,
            from_expectation=_identity,
            domain="probabilities p_k > 0 of the first K−1 classes with Σ p_k < 1",
        )
    )
    register(
        custom_parameterization(
            POISSON,
            "poisson_rate",
            jnp.log,
            jnp.exp,
            _positive,
            to_expectation=_identity,
            from_expectation=_identity,
            domain="rate λ > 0",
        )
    )
    register(
        custom_parameterization(
            GAMMA,
            "gamma_shape_rate",
            lambda xi: jnp.stack([xi[0] - 1.0, -xi[1]]),  # θ = (α − 1, −β)
            lambda theta: jnp.stack([theta[0] + 1.0, -theta[1]]),  # (α, β) = (θ₁ + 1, −θ₂)
            _positive,
            domain="shape α > 0 and rate β > 0 in the last axis [..., (α, β)]",
        )
    )
    register(
        custom_parameterization(
            DIRICHLET,
            "dirichlet_concentration",
            lambda alpha: alpha - 1.0,  # θ = α − 1
            lambda theta: theta + 1.0,
            _positive,
            domain="concentrations α_i > 0",
        )
    )


_register_builtins()
