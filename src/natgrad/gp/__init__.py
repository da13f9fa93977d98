"""Sparse variational Gaussian processes trained with natural gradients.

* :mod:`natgrad.gp.kernels`: squared exponential (ARD), Matérn ½, 3⁄2, 5⁄2, linear, sums and
  products, hyperparameters kept positive by a softplus.
* :mod:`natgrad.gp.likelihoods`: Gaussian, Student-t, Bernoulli (probit, logit), Poisson,
  softmax and robust-max multiclass, and heteroscedastic Gaussian, with variational expectations
  in closed form, by Gauss–Hermite quadrature, or (softmax) by fixed quasi-Monte Carlo nodes.
* :class:`SVGP`: the model (whitened or not, L latents, minibatch ELBO), with the collapsed
  Titsias bound, its optimal q(u) and the exact GP marginal likelihood as references.
* :func:`hybrid` and :func:`fit`: natural steps on q(u), Adam on the rest, alternating or joint.
"""

from natgrad.gp import kernels, likelihoods
from natgrad.gp.svgp import (
    SVGP,
    CholeskyError,
    gp_log_marginal_likelihood,
    sgpr_bound,
    sgpr_posterior,
)
from natgrad.gp.training import FitResult, HybridState, default_natural_learning_rate, fit, hybrid

__all__ = [
    "SVGP",
    "CholeskyError",
    "FitResult",
    "HybridState",
    "default_natural_learning_rate",
    "fit",
    "gp_log_marginal_likelihood",
    "hybrid",
    "kernels",
    "likelihoods",
    "sgpr_bound",
    "sgpr_posterior",
]
