"""Gauss–Hermite quadrature for expectations under normal distributions."""

from __future__ import annotations

import numpy as np


def gauss_hermite(num_points: int, dtype=np.float64) -> tuple[np.ndarray, np.ndarray]:
    """Nodes zᵢ and weights ωᵢ with Σᵢ ωᵢ f(zᵢ) ≈ E[f(z)], z ~ N(0, 1).

    ``hermegauss`` integrates against e^(−z²/2), whose integral is √(2π); the weights are divided
    by it. Exact for polynomials of degree < 2P.

    Args:
      num_points: P ≥ 1.
      dtype: of the returned arrays.

    Returns:
      ``(nodes, weights)``, numpy arrays of shape ``(P,)``; the weights sum to 1.

    Example:
      >>> nodes, weights = gauss_hermite(3)
      >>> float(weights @ nodes**2)  # E[z²] = 1
      1.0...
    """
    from numpy.polynomial.hermite_e import hermegauss

    if num_points < 1:
        raise ValueError(f"`num_points` must be ≥ 1, got {num_points}")
    nodes, weights = hermegauss(num_points)
    return nodes.astype(dtype), (weights / np.sqrt(2.0 * np.pi)).astype(dtype)
