"""Negative log-likelihood losses that know their output-space curvature.

Each loss is the negative log-likelihood −log p(yᵢ | fᵢ) of a target yᵢ given a network output
fᵢ, summed over the output's event axes and reduced over the batch axis (axis 0):

    L(f, y) = c_B · Σᵢ ℓᵢ,   ℓᵢ = −log p(yᵢ | fᵢ),   c_B = 1/B ("mean", default) or 1 ("sum").

Besides the value, a loss gives, per example and *without* the batch factor c_B:

* ``output_gradient(f, y)``: rᵢ = ∇_{fᵢ} ℓᵢ, shape of f;
* ``hessian_vp(f, v)``: Hᵢvᵢ with Hᵢ = ∇²_{fᵢ} ℓᵢ. All three losses use the canonical link
  (f is the natural parameter of p(y | f)), so Hᵢ does not depend on yᵢ and equals the Fisher
  E_{y∼p(·|fᵢ)}[rᵢrᵢᵀ] of the output distribution;
* ``fisher_factor(f)``: columns b_{ik}, shape ``(K, *f.shape)``, with Hᵢ = Σₖ b_{ik}b_{ik}ᵀ;
* ``sample(f, key=, num_samples=)``: targets y ∼ p(· | f), shape ``(S, *y.shape)``.

``batch_factor(f)`` is c_B. The curvature operators in :mod:`natgrad.curvature` combine these
with a network's Jacobian J into JᵀHJ (the generalized Gauss–Newton), its Monte Carlo and
empirical variants.

Losses are frozen dataclasses: hashable, so they can be static arguments of :func:`jax.jit`.
"""

from __future__ import annotations

import abc
import dataclasses
import math
from typing import Literal

import jax
import jax.numpy as jnp

Array = jax.Array
Reduction = Literal["mean", "sum"]
_REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> None:
    if reduction not in _REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}: expected one of {_REDUCTIONS}")


def _check_outputs(name: str, outputs: Array, min_ndim: int) -> None:
    if not jnp.issubdtype(jnp.result_type(outputs), jnp.floating):
        raise TypeError(f"{name}: outputs must be a floating array, got dtype {outputs.dtype}")
    if outputs.ndim < min_ndim:
        raise ValueError(
            f"{name}: outputs need a leading batch axis"
            + (" and a class axis" if min_ndim == 2 else "")
            + f" (at least {min_ndim} dimensions), got shape {outputs.shape}"
        )


def _sum_event(x: Array) -> Array:
    """Σ over every axis but the batch axis: (B, ...) -> (B,)."""
    return jnp.sum(x, axis=tuple(range(1, x.ndim)))


class NegativeLogLikelihood(abc.ABC):
    """A negative log-likelihood on network outputs with its output-space curvature.

    Subclasses are frozen dataclasses with a ``reduction`` field ("mean" or "sum" over the batch).
    """

    reduction: Reduction

    def __call__(self, outputs: Array, targets: Array) -> Array:
        """L(f, y) = c_B Σᵢ ℓᵢ: a scalar."""
        return self.batch_factor(outputs) * jnp.sum(self.per_example(outputs, targets))

    def batch_factor(self, outputs: Array) -> float:
        """c_B: 1/B for ``reduction="mean"``, 1 for ``"sum"`` (B = outputs.shape[0])."""
        return 1.0 / outputs.shape[0] if self.reduction == "mean" else 1.0

    @abc.abstractmethod
    def per_example(self, outputs: Array, targets: Array) -> Array:
        """ℓᵢ = −log p(yᵢ | fᵢ), shape (B,)."""

    @abc.abstractmethod
    def output_gradient(self, outputs: Array, targets: Array) -> Array:
        """rᵢ = ∇_{fᵢ} ℓᵢ, the shape of ``outputs`` (no batch factor)."""

    @abc.abstractmethod
    def hessian_vp(self, outputs: Array, tangents: Array) -> Array:
        """Hᵢvᵢ = ∇²_{fᵢ}ℓᵢ · vᵢ per example, the shape of ``outputs`` (no batch factor)."""

    @abc.abstractmethod
    def fisher_factor(self, outputs: Array) -> Array:
        """Columns b_{ik} with Hᵢ = Σₖ b_{ik} b_{ik}ᵀ, shape ``(K, *outputs.shape)``."""

    @abc.abstractmethod
    def sample(self, outputs: Array, *, key: Array, num_samples: int = 1) -> Array:
        """Targets drawn from the model, y ∼ p(· | f), shape ``(num_samples, *targets.shape)``.

        Categorical losses return integer labels, shape ``(num_samples, *outputs.shape[:-1])``,
        whichever target form (labels or probabilities) the data uses.
        """


@dataclasses.dataclass(frozen=True)
class SoftmaxCrossEntropy(NegativeLogLikelihood):
    """Categorical NLL of logits: ℓᵢ = −log softmax(fᵢ)_{yᵢ}.

    Shapes: logits f (B, C); targets either integer labels (B,) or class probabilities (B, C)
    (then ℓᵢ = −Σ_c y_{ic} log p_{ic}). With p = softmax(f): r = p − y (y one-hot),
    H = diag(p) − ppᵀ, and the factor b_k = √p_k (e_k − p), k = 1..C, since
    Σₖ pₖ(eₖ − p)(eₖ − p)ᵀ = diag(p) − ppᵀ.

    Example::

        loss = SoftmaxCrossEntropy()
        loss(jnp.zeros((4, 3)), jnp.array([0, 1, 2, 0]))  # log 3
    """

    reduction: Reduction = "mean"

    def __post_init__(self):
        _check_reduction(self.reduction)

    def _targets_as_probabilities(self, outputs: Array, targets: Array) -> Array:
        _check_outputs("SoftmaxCrossEntropy", outputs, 2)
        if jnp.issubdtype(jnp.result_type(targets), jnp.integer):
            if targets.shape != outputs.shape[:-1]:
                raise ValueError(
                    "SoftmaxCrossEntropy: integer labels must have shape "
                    f"{outputs.shape[:-1]} for logits of shape {outputs.shape}, got {targets.shape}"
                )
            return jax.nn.one_hot(targets, outputs.shape[-1], dtype=outputs.dtype)
        if targets.shape != outputs.shape:
            raise ValueError(
                "SoftmaxCrossEntropy: targets must be integer labels of shape "
                f"{outputs.shape[:-1]} or class probabilities of shape {outputs.shape}, "
                f"got {targets.shape} ({targets.dtype})"
            )
        return targets.astype(outputs.dtype)

    def per_example(self, outputs, targets):
        y = self._targets_as_probabilities(outputs, targets)
        return -_sum_event(y * jax.nn.log_softmax(outputs, axis=-1))

    def output_gradient(self, outputs, targets):
        y = self._targets_as_probabilities(outputs, targets)
        p = jax.nn.softmax(outputs, axis=-1)
        return p * jnp.sum(y, axis=-1, keepdims=True) - y

    def hessian_vp(self, outputs, tangents):
        _check_outputs("SoftmaxCrossEntropy", outputs, 2)
        p = jax.nn.softmax(outputs, axis=-1)
        pv = p * tangents
        return pv - p * jnp.sum(pv, axis=-1, keepdims=True)  # (diag(p) − ppᵀ) v

    def fisher_factor(self, outputs):
        _check_outputs("SoftmaxCrossEntropy", outputs, 2)
        p = jax.nn.softmax(outputs, axis=-1)
        num_classes = outputs.shape[-1]
        eye = jnp.eye(num_classes, dtype=outputs.dtype)
        # b_k = √p_k (e_k − p): axis 0 is k; e_k broadcasts over the batch and any extra axes.
        eye = eye.reshape(num_classes, *(1,) * (outputs.ndim - 1), num_classes)
        columns = eye - p[None]
        return jnp.sqrt(jnp.moveaxis(p, -1, 0))[..., None] * columns

    def sample(self, outputs, *, key, num_samples=1):
        _check_outputs("SoftmaxCrossEntropy", outputs, 2)
        return jax.random.categorical(
            key, outputs, axis=-1, shape=(num_samples, *outputs.shape[:-1])
        )


@dataclasses.dataclass(frozen=True)
class SigmoidCrossEntropy(NegativeLogLikelihood):
    """Independent Bernoulli NLL of logits: ℓᵢ = Σ_e [log(1 + exp fᵢₑ) − yᵢₑ fᵢₑ].

    Shapes: logits f (B, ...), targets y ∈ [0, 1] of the same shape. With p = σ(f): r = p − y,
    H = diag(p(1 − p)), factor b_k = √(p_k(1 − p_k)) e_k over the flattened event.

    Example::

        loss = SigmoidCrossEntropy()
        loss(jnp.zeros((2,)), jnp.array([0.0, 1.0]))  # log 2
    """

    reduction: Reduction = "mean"

    def __post_init__(self):
        _check_reduction(self.reduction)

    def _check(self, outputs: Array, targets: Array) -> Array:
        _check_outputs("SigmoidCrossEntropy", outputs, 1)
        if targets.shape != outputs.shape:
            raise ValueError(
                f"SigmoidCrossEntropy: targets shape {targets.shape} must equal the logits "
                f"shape {outputs.shape}"
            )
        return targets.astype(outputs.dtype)

    def per_example(self, outputs, targets):
        y = self._check(outputs, targets)
        return _sum_event(jax.nn.softplus(outputs) - y * outputs)

    def output_gradient(self, outputs, targets):
        y = self._check(outputs, targets)
        return jax.nn.sigmoid(outputs) - y

    def hessian_vp(self, outputs, tangents):
        _check_outputs("SigmoidCrossEntropy", outputs, 1)
        p = jax.nn.sigmoid(outputs)
        return p * (1 - p) * tangents

    def fisher_factor(self, outputs):
        _check_outputs("SigmoidCrossEntropy", outputs, 1)
        p = jax.nn.sigmoid(outputs)
        return _diagonal_factor(jnp.sqrt(p * (1 - p)))

    def sample(self, outputs, *, key, num_samples=1):
        _check_outputs("SigmoidCrossEntropy", outputs, 1)
        p = jax.nn.sigmoid(outputs)
        return jax.random.bernoulli(key, p, shape=(num_samples, *outputs.shape)).astype(
            outputs.dtype
        )


@dataclasses.dataclass(frozen=True)
class GaussianNLL(NegativeLogLikelihood):
    """Gaussian NLL with fixed variance σ²: ℓᵢ = ‖yᵢ − fᵢ‖² / (2σ²) + (E/2)·log(2πσ²).

    The ½ is part of the loss; E is the number of output entries per example (the event size).
    ``include_constant=False`` drops the (E/2)·log(2πσ²) term, so ``GaussianNLL(1.0, False)``
    is the squared error ½‖y − f‖² (see :func:`squared_error`); gradients and curvature are the
    same either way: r = (f − y)/σ², H = I/σ², factor b_k = e_k/σ.

    Shapes: outputs and targets (B, ...), equal.

    Example::

        loss = squared_error(reduction="sum")
        loss(jnp.array([[1.0, 2.0]]), jnp.array([[0.0, 0.0]]))  # 2.5
    """

    variance: float = 1.0
    include_constant: bool = True
    reduction: Reduction = "mean"

    def __post_init__(self):
        _check_reduction(self.reduction)
        try:
            if isinstance(self.variance, bool | str | bytes):
                raise TypeError
            variance = float(self.variance)
        except (TypeError, ValueError):
            raise ValueError(
                f"GaussianNLL: variance must be a positive finite number, got {self.variance!r}"
            ) from None
        if not (math.isfinite(variance) and variance > 0):
            raise ValueError(
                f"GaussianNLL: variance must be a positive finite number, got {self.variance!r}"
            )
        object.__setattr__(self, "variance", variance)

    def _check(self, outputs: Array, targets: Array) -> Array:
        _check_outputs("GaussianNLL", outputs, 1)
        if targets.shape != outputs.shape:
            raise ValueError(
                f"GaussianNLL: targets shape {targets.shape} must equal the outputs shape "
                f"{outputs.shape}"
            )
        return targets.astype(outputs.dtype)

    def per_example(self, outputs, targets):
        y = self._check(outputs, targets)
        value = _sum_event(jnp.square(outputs - y)) / (2 * self.variance)
        if self.include_constant:
            event_size = math.prod(outputs.shape[1:])
            value = value + 0.5 * event_size * math.log(2 * math.pi * self.variance)
        return value

    def output_gradient(self, outputs, targets):
        y = self._check(outputs, targets)
        return (outputs - y) / self.variance

    def hessian_vp(self, outputs, tangents):
        _check_outputs("GaussianNLL", outputs, 1)
        return tangents / self.variance

    def fisher_factor(self, outputs):
        _check_outputs("GaussianNLL", outputs, 1)
        return _diagonal_factor(jnp.full_like(outputs, 1 / math.sqrt(self.variance)))

    def sample(self, outputs, *, key, num_samples=1):
        _check_outputs("GaussianNLL", outputs, 1)
        noise = jax.random.normal(key, (num_samples, *outputs.shape), dtype=outputs.dtype)
        return outputs + math.sqrt(self.variance) * noise


def squared_error(reduction: Reduction = "mean") -> GaussianNLL:
    """ℓᵢ = ½‖yᵢ − fᵢ‖²: the unit-variance Gaussian NLL without its constant."""
    return GaussianNLL(variance=1.0, include_constant=False, reduction=reduction)


def _diagonal_factor(scale: Array) -> Array:
    """Columns s_k e_k (one per event entry) for H = diag(s²): shape ``(E, *scale.shape)``."""
    batch, event_shape = scale.shape[0], scale.shape[1:]
    event_size = math.prod(event_shape)
    flat = scale.reshape(batch, event_size)
    columns = jnp.eye(event_size, dtype=scale.dtype)[:, None, :] * flat[None]
    return columns.reshape(event_size, batch, *event_shape)
