"""Linear solvers on pytrees: preconditioned conjugate gradients for Hessian-free optimization."""

from natgrad.solvers.cg import (
    CGCheckpoints,
    CGInfo,
    CGReason,
    CGSolution,
    checkpoint_iterations,
    conjugate_gradient,
    reason_message,
)

__all__ = [
    "CGCheckpoints",
    "CGInfo",
    "CGReason",
    "CGSolution",
    "checkpoint_iterations",
    "conjugate_gradient",
    "reason_message",
]
