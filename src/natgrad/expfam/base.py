"""The parameterization interface shared by every exponential family in natgrad.

An exponential family has densities

    p(x | θ) = h(x) exp(⟨θ, T(x)⟩ − A(θ)),

with natural parameters θ, sufficient statistics T(x), log-partition A(θ) and expectation
parameters η = E[T(x)] = ∇A(θ). A *parameterization* ξ is any smooth invertible map of θ. The
natural gradient needs exactly four maps per parameterization: ξ → θ, θ → ξ, ξ → η and η → ξ
(Salimbeni, Eleftheriadis & Hensman, AISTATS 2018, eq. 8):

    F_ξ⁻¹ ∇_ξ L = (∂ξ/∂θ) (∂L/∂η)ᵀ.

A :class:`Parameterization` is a frozen, hashable configuration object (not a pytree); the
parameters it describes are ordinary pytrees of arrays.
"""

from __future__ import annotations

import abc
from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def is_traced(tree: PyTree) -> bool:
    """True if any leaf is a tracer (inside jit/vmap/grad), where value checks cannot run."""
    return any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(tree))


class Parameterization(abc.ABC):
    """One parameterization ξ of one exponential family.

    Subclasses implement the four conversions and the checks. Every method accepts arbitrary
    leading batch axes unless its docstring says otherwise.

    Conventions for the natural gradient:

    * :meth:`project_gradient` maps what a user's ``jax.grad`` hands in to the gradient in the
      tangent space of ξ (for example it symmetrizes the gradient of a symmetric matrix and keeps
      the lower triangle of the gradient of a Cholesky factor).
    * :meth:`project_natural_tangent` maps ∂L/∂η, as reverse mode returns it, to a tangent of θ
      (symmetrizing matrix blocks, so that the Frobenius pairing ⟨θ, η⟩ is the duality pairing).
    """

    #: Registry name, e.g. ``"mean_cholesky"``.
    name: str = ""

    # -- conversions -------------------------------------------------------------------------
    @abc.abstractmethod
    def to_natural(self, params: PyTree) -> PyTree:
        """θ(ξ)."""

    @abc.abstractmethod
    def from_natural(self, natural: PyTree) -> PyTree:
        """ξ(θ)."""

    @abc.abstractmethod
    def to_expectation(self, params: PyTree) -> PyTree:
        """η(ξ)."""

    @abc.abstractmethod
    def from_expectation(self, expectation: PyTree) -> PyTree:
        """ξ(η)."""

    # -- tangent conventions -----------------------------------------------------------------
    def project_gradient(self, params: PyTree, grads: PyTree) -> PyTree:
        """Gradient as handed in by ``jax.grad`` → gradient in the tangent space of ξ."""
        del params
        return grads

    def project_natural_tangent(self, dnatural: PyTree) -> PyTree:
        """∂L/∂η from reverse mode → tangent of θ."""
        return dnatural

    # -- linearizations at the current point ---------------------------------------------------
    def from_expectation_vjp(self, params: PyTree, cotangent: PyTree) -> PyTree:
        """(∂ξ/∂η)ᵀ·g: the VJP of ξ(η) at η = η(ξ), ``params`` being ξ.

        The default differentiates :meth:`from_expectation` with ``jax.vjp``. A parameterization
        may override it with the same derivative written at the known point ξ (so that no
        factorization is recomputed); tests hold every override equal to this default.
        """
        expectation = self.to_expectation(params)
        out, vjp_fun = jax.vjp(self.from_expectation, expectation)
        cotangent = jax.tree.unflatten(jax.tree.structure(out), jax.tree.leaves(cotangent))
        return vjp_fun(cotangent)[0]

    def from_natural_jvp(self, params: PyTree, dnatural: PyTree) -> PyTree:
        """(∂ξ/∂θ)·v: the JVP of ξ(θ) at θ = θ(ξ), ``params`` being ξ.

        The default differentiates :meth:`from_natural` with ``jax.jvp``; overrides as for
        :meth:`from_expectation_vjp`.
        """
        natural = self.to_natural(params)
        return jax.jvp(self.from_natural, (natural,), (dnatural,))[1]

    def natural_gradient_at(self, params: PyTree, grads: PyTree) -> PyTree:
        """(∂ξ/∂θ)·project(∂L/∂η): the identity composed at the point ξ = ``params``.

        ``grads`` are already projected (:meth:`project_gradient`). The default composes
        :meth:`from_expectation_vjp` and :meth:`from_natural_jvp`; a parameterization whose
        composition simplifies symbolically (factors that cancel between the VJP and the JVP)
        may override it, and tests hold the override equal to the composition.
        """
        dnatural = self.project_natural_tangent(self.from_expectation_vjp(params, grads))
        return self.from_natural_jvp(params, dnatural)

    # -- checks ------------------------------------------------------------------------------
    @abc.abstractmethod
    def check_structure(self, params: PyTree, *, argname: str = "params") -> None:
        """Raise ``ValueError``/``TypeError`` if ``params`` has the wrong structure or shapes.

        Uses static information only (works on tracers).
        """

    @abc.abstractmethod
    def is_valid(self, params: PyTree) -> jax.Array:
        """Boolean array of the batch shape: finite and inside the parameter domain.

        Jit-compatible; used by the safeguard of :func:`natgrad.optim.natural_vi`.
        """

    def describe_invalid(self, params: PyTree) -> str:
        """A sentence saying why ``params`` is invalid (called only when it is)."""
        del params
        return f"parameters are outside the domain of the {self.name!r} parameterization"

    def check(self, params: PyTree, *, argname: str = "params") -> None:
        """Check structure, and when values are concrete, finiteness and the domain.

        Under ``jax.jit`` only the static checks run; use :meth:`is_valid` there.
        """
        self.check_structure(params, argname=argname)
        if is_traced(params):
            return
        for leaf in jax.tree.leaves(params):
            if not bool(jnp.all(jnp.isfinite(leaf))):
                raise ValueError(
                    f"`{argname}` contains NaN or infinite values; natgrad cannot take a step "
                    f"from a non-finite {self.name!r} parameter. Check the data and the step size "
                    "that produced them."
                )
        if not bool(jnp.all(self.is_valid(params))):
            raise ValueError(f"`{argname}`: {self.describe_invalid(params)}")

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r})"


_REGISTRY: dict[str, Parameterization] = {}


def register(parameterization: Parameterization) -> Parameterization:
    """Make ``parameterization`` resolvable by its name (used for the built-ins)."""
    if not parameterization.name:
        raise ValueError("a registered parameterization needs a non-empty `name`")
    _REGISTRY[parameterization.name] = parameterization
    return parameterization


def available_parameterizations() -> tuple[str, ...]:
    """Names accepted wherever natgrad takes a ``parameterization=`` string."""
    return tuple(sorted(_REGISTRY))


def resolve(parameterization: str | Parameterization) -> Parameterization:
    """Turn a built-in name or a :class:`Parameterization` into a :class:`Parameterization`."""
    if isinstance(parameterization, Parameterization):
        return parameterization
    if isinstance(parameterization, str):
        try:
            return _REGISTRY[parameterization]
        except KeyError:
            import difflib

            close = difflib.get_close_matches(parameterization, list(_REGISTRY), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise ValueError(
                f"unknown parameterization {parameterization!r}.{hint} Known names: "
                f"{', '.join(available_parameterizations())}; or pass a "
                "natgrad.Parameterization object (see natgrad.custom_parameterization)."
            ) from None
    raise TypeError(
        "`parameterization` must be a name such as 'mean_cholesky' or a "
        f"natgrad.Parameterization, got {type(parameterization).__name__}"
    )


def check_floating_pair(first, second, *, argname: str, names: tuple[str, str]) -> None:
    """Raise unless both blocks of a pair are floating-point arrays of one dtype (static check)."""
    for label, leaf in zip(names, (first, second), strict=True):
        if not hasattr(leaf, "shape") or not hasattr(leaf, "dtype"):
            raise TypeError(f"`{argname}`: {label} must be an array, got {type(leaf).__name__}")
        if not jnp.issubdtype(leaf.dtype, jnp.floating):
            raise TypeError(
                f"`{argname}`: {label} must have a floating dtype (float32 or float64), "
                f"got {leaf.dtype}"
            )
    if first.dtype != second.dtype:
        raise TypeError(
            f"`{argname}`: {names[0]} is {first.dtype} but {names[1]} is {second.dtype}; "
            "use one dtype"
        )


def split_pair(params: PyTree, *, argname: str, family: str, names: tuple[str, str]):
    """Unpack a two-array parameter (a tuple, list or NamedTuple of two arrays).

    Returns ``(first, second, rebuild)`` where ``rebuild(a, b)`` makes a pair of the same type.
    """
    if isinstance(params, tuple | list) and len(params) == 2:
        first, second = params
        if hasattr(params, "_fields"):  # NamedTuple

            def rebuild(a, b):
                return type(params)(a, b)
        elif isinstance(params, list):

            def rebuild(a, b):
                return [a, b]
        else:

            def rebuild(a, b):
                return (a, b)

        return first, second, rebuild
    raise TypeError(
        f"`{argname}` of a {family} must be a pair ({names[0]}, {names[1]}) as a tuple, list or "
        f"NamedTuple of two arrays; got {type(params).__name__}"
        + (f" with {len(params)} entries" if isinstance(params, tuple | list | dict) else "")
    )
