"""Checks of the options the network optimizers (:func:`~natgrad.hessian_free`,
:func:`~natgrad.kfac`) share, each error naming the option and the value."""

from __future__ import annotations

from natgrad.losses import NegativeLogLikelihood


def check_loss_damping_momentum(
    loss: object, damping: float, min_damping: float, max_damping: float, momentum: float
) -> None:
    """Raise if ``loss`` is not a NegativeLogLikelihood, λ ≤ 0, the damping bounds are not
    0 < min ≤ max, or the momentum is outside [0, 1)."""
    if not isinstance(loss, NegativeLogLikelihood):
        raise TypeError(f"loss must be a natgrad.losses.NegativeLogLikelihood, got {type(loss)}")
    if not damping > 0:
        raise ValueError(f"damping must be positive, got {damping}")
    if not 0 < min_damping <= max_damping:
        raise ValueError(f"need 0 < min_damping ≤ max_damping, got {min_damping}, {max_damping}")
    if not 0 <= momentum < 1:
        raise ValueError(f"momentum must be in [0, 1), got {momentum}")
