"""Sparse variational Gaussian processes (Hensman et al. 2013, 2015) and their exact references.

L independent latent functions f_l ~ GP(0, k) share one kernel k and M inducing inputs Z; each
has its own q(u_l) = N(m_l, S_l) over its inducing outputs u_l = f_l(Z) (non-whitened) or over
v_l with u_l = L_uu v_l, K_uu = L_uu L_uuᵀ (whitened). With A = L_uu⁻¹K_uf (M, N) the marginals
of q(f_l(x_n)) are

    whitened:      μ = Aᵀm,            σ² = k_nn − ‖A_n‖² + A_nᵀ S A_n,
    non-whitened:  μ = Bᵀm, B = L_uu⁻ᵀA,   σ² = k_nn − ‖A_n‖² + B_nᵀ S B_n,

and the evidence lower bound on a minibatch b of B of the N training points is

    ELBO = (N/B) Σ_{n∈b} E_{q(f_n)}[log p(y_n | f_n)] − Σ_l KL(q(u_l) ‖ p(u_l)),

p(v_l) = N(0, I) whitened, p(u_l) = N(0, K_uu) otherwise. q(u) is held in any natgrad Gaussian
parameterization (``"mean_cholesky"`` by default) with a leading axis of size L, so
:func:`natgrad.natural_vi` takes natural-gradient steps on it directly.

The parameters are one pytree (a dict)::

    {"q": (mean (L, M), matrix (L, M, M)),   # in the model's parameterization
     "kernel": kernel.init(D),                # unconstrained (softplus) hyperparameters
     "likelihood": likelihood.init(),
     "inducing_inputs": Z (M, D)}

K_uu gets ``jitter``·I added before its Cholesky factorization; the same jittered K_uu enters
the bound, the predictions and the references below, so identities hold to rounding.

References: J. Hensman, N. Fusi, N. Lawrence, "Gaussian processes for big data", UAI 2013;
J. Hensman, A. Matthews, Z. Ghahramani, "Scalable variational Gaussian process classification",
AISTATS 2015; M. Titsias, "Variational learning of inducing variables in sparse Gaussian
processes", AISTATS 2009; H. Salimbeni, S. Eleftheriadis, J. Hensman, "Natural gradients in
practice", AISTATS 2018.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from natgrad.expfam.base import Parameterization, is_traced, resolve
from natgrad.expfam.gaussian import mean_cholesky

PyTree = Any
Array = jax.Array


class CholeskyError(ValueError):
    """K_uu (or another matrix that must be positive definite) failed its Cholesky factorization."""


def _cholesky_with_jitter(matrix: Array, jitter: float) -> Array:
    eye = jnp.eye(matrix.shape[-1], dtype=matrix.dtype)
    return jnp.linalg.cholesky(matrix + jitter * eye)


def _check_finite(name: str, value: Array, hint: str) -> None:
    if is_traced(value):
        return
    if not bool(jnp.all(jnp.isfinite(value))):
        raise CholeskyError(f"{name} is not positive definite (its Cholesky factor is NaN); {hint}")


def _jitter_hint(jitter: float) -> str:
    return (
        f"jitter is {jitter:g}: increase SVGP(jitter=...), remove duplicate inducing inputs, or "
        "check the kernel's hyperparameters"
    )


@dataclasses.dataclass(frozen=True)
class SVGP:
    """A sparse variational GP with L independent latents sharing a kernel and inducing inputs.

    Args:
      kernel: a :class:`natgrad.gp.kernels.Kernel`.
      likelihood: a :class:`natgrad.gp.likelihoods.Likelihood`; its ``num_latent`` is L.
      whiten: q over v with u = L_uu v and prior N(0, I) (True), or over u with prior
        N(0, K_uu) (False).
      parameterization: q(u)'s natgrad Gaussian parameterization (name or object).
      jitter: added to K_uu's diagonal before factorizing.

    Example::

        model = SVGP(kernels.SquaredExponential(), likelihoods.Gaussian(0.1))
        params = model.init(z)                        # z (M, D) inducing inputs
        loss = lambda p: -model.elbo(p, x, y)         # jax.grad(loss) feeds natgrad.natural_vi
    """

    kernel: Any
    likelihood: Any
    whiten: bool = True
    parameterization: str | Parameterization = "mean_cholesky"
    jitter: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "parameterization", resolve(self.parameterization))
        if not (isinstance(self.jitter, int | float) and math.isfinite(self.jitter)):
            raise ValueError(f"SVGP: jitter must be a finite number ≥ 0, got {self.jitter!r}")
        if self.jitter < 0:
            raise ValueError(f"SVGP: jitter must be ≥ 0, got {self.jitter!r}")
        object.__setattr__(self, "jitter", float(self.jitter))

    @property
    def num_latent(self) -> int:
        """L, the number of latent functions (the likelihood's)."""
        return int(self.likelihood.num_latent)

    # -- parameters ------------------------------------------------------------------------
    def init(self, inducing_inputs: Array, *, q_scale: float = 1.0) -> dict:
        """Parameters with q(u_l) = the prior scaled by ``q_scale``² (mean 0), hyperparameters at
        the kernel's and likelihood's initial values.

        Whitened: q(v_l) = N(0, q_scale²·I); non-whitened: q(u_l) = N(0, q_scale²·K_uu).

        Args:
          inducing_inputs: Z, ``(M, D)``; its dtype is the parameters' dtype.
          q_scale: the initial q's scale relative to the prior (GPflow-style small values such
            as 1e-3 make the start close to deterministic).
        """
        z = jnp.asarray(inducing_inputs)
        if z.ndim != 2:
            raise ValueError(f"SVGP.init: inducing_inputs must have shape (M, D), got {z.shape}")
        if not jnp.issubdtype(z.dtype, jnp.floating):
            z = z.astype(jnp.result_type(float))
        num_inducing, input_dim = z.shape
        dtype = z.dtype
        kernel_params = self.kernel.init(input_dim, dtype=dtype)
        if self.whiten:
            scale = q_scale * jnp.eye(num_inducing, dtype=dtype)
        else:
            kuu = self.kernel(kernel_params, z, z)
            luu = _cholesky_with_jitter(kuu, self.jitter)
            _check_finite("K_uu + jitter·I", luu, _jitter_hint(self.jitter))
            scale = q_scale * luu
        scale = jnp.broadcast_to(scale, (self.num_latent, num_inducing, num_inducing))
        mean = jnp.zeros((self.num_latent, num_inducing), dtype)
        q = self.parameterization.from_natural(mean_cholesky.to_natural((mean, scale)))
        return {
            "q": q,
            "kernel": kernel_params,
            "likelihood": self.likelihood.init(dtype=dtype),
            "inducing_inputs": z,
        }

    def check(self, params: dict, *, x: Array | None = None, y: Array | None = None) -> None:
        """Eager checks that name the problem: shapes, NaN in data, K_uu positive definite.

        Runs on concrete values only (a no-op under tracing). Raises ValueError (or
        :class:`CholeskyError` for a K_uu that does not factorize at this jitter).
        """
        z = params["inducing_inputs"]
        if z.ndim != 2:
            raise ValueError(f"SVGP: inducing_inputs must have shape (M, D), got {z.shape}")
        mean, _ = self.parameterization.mean_covariance(params["q"])
        if mean.shape != (self.num_latent, z.shape[0]):
            raise ValueError(
                f"SVGP: q(u) has mean shape {mean.shape}; expected (L, M) = "
                f"({self.num_latent}, {z.shape[0]}) for {self.num_latent} latent(s) and "
                f"{z.shape[0]} inducing inputs"
            )
        if not is_traced(params["q"]):
            self.parameterization.check(params["q"], argname="params['q']")
        if x is not None:
            _check_inputs(x, z.shape[1])
        if y is not None:
            if x is not None and y.shape[0] != x.shape[0]:
                raise ValueError(
                    f"SVGP: x has {x.shape[0]} rows but y has {y.shape[0]}; give one target "
                    "per input row"
                )
            self.likelihood.check_targets(y)
        if not is_traced(params):
            kuu = self.kernel(params["kernel"], z, z)
            _check_finite(
                "K_uu + jitter·I",
                _cholesky_with_jitter(kuu, self.jitter),
                _jitter_hint(self.jitter),
            )

    # -- marginals -------------------------------------------------------------------------
    def _projection(self, params: dict, x: Array) -> tuple[Array, Array]:
        """(P, k_nn): q(f) marginals are μ = Pᵀm, σ² = k_nn − ‖A_n‖² + P_nᵀSP_n; P = A or B."""
        z = params["inducing_inputs"]
        kp = params["kernel"]
        luu = _cholesky_with_jitter(self.kernel(kp, z, z), self.jitter)
        kuf = self.kernel(kp, z, x)
        a = jax.scipy.linalg.solve_triangular(luu, kuf, lower=True)  # A = L_uu⁻¹K_uf
        kff = self.kernel.diag(kp, x) - jnp.sum(jnp.square(a), axis=0)  # k_nn − ‖A_n‖²
        if self.whiten:
            return a, kff
        return jax.scipy.linalg.solve_triangular(luu.T, a, lower=False), kff  # B = L_uu⁻ᵀA

    def predict_f(self, params: dict, x: Array) -> tuple[Array, Array]:
        """Means and variances of q(f_l(x_n)) = ∫ p(f_l | u_l) q(u_l) du_l: ``(N, L)`` each.

        Args:
          params: the model's parameters.
          x: inputs ``(N, D)``.
        """
        _check_inputs(x, params["inducing_inputs"].shape[1])
        proj, kff = self._projection(params, x)
        mean_u, cov_u = self.parameterization.mean_covariance(params["q"])  # (L, M), (L, M, M)
        mean = (mean_u @ proj).T  # μ_{nl} = P_nᵀ m_l
        var = kff[:, None] + jnp.einsum("mn,lmk,kn->nl", proj, cov_u, proj)  # + P_nᵀ S_l P_n
        return mean, jnp.maximum(var, 0.0)

    def prior_kl(self, params: dict) -> Array:
        """Σ_l KL(q(u_l) ‖ p(u_l)): p = N(0, I) whitened, N(0, K_uu) otherwise. Scalar."""
        mean_u, _ = self.parameterization.mean_covariance(params["q"])
        num_latent, num_inducing = mean_u.shape
        if self.whiten:
            scale = jnp.eye(num_inducing, dtype=mean_u.dtype)
        else:
            z = params["inducing_inputs"]
            scale = _cholesky_with_jitter(self.kernel(params["kernel"], z, z), self.jitter)
        prior = (
            jnp.zeros_like(mean_u),
            jnp.broadcast_to(scale, (num_latent, num_inducing, num_inducing)),
        )
        return jnp.sum(self.parameterization.kl(params["q"], prior, mean_cholesky))

    def expected_log_likelihood(self, params: dict, x: Array, y: Array) -> Array:
        """Σ_n E_{q(f_n)}[log p(y_n | f_n)] over the rows given. Scalar."""
        mean, var = self.predict_f(params, x)
        return jnp.sum(self.likelihood.variational_expectations(params["likelihood"], y, mean, var))

    def elbo(self, params: dict, x: Array, y: Array, *, num_data: int | None = None) -> Array:
        """(N/B)·Σ_{n∈batch} E_q[log p(y_n | f_n)] − Σ_l KL(q(u_l) ‖ p(u_l)).

        Args:
          params: the model's parameters.
          x, y: a batch of B rows ``(B, D)`` and its targets.
          num_data: N, the training set's size (default: B, the full-batch ELBO).

        Returns:
          The scalar bound on log p(y) (for the full training set when ``num_data`` is N).
        """
        batch = x.shape[0]
        scale = 1.0 if num_data is None else num_data / batch
        return scale * self.expected_log_likelihood(params, x, y) - self.prior_kl(params)

    def predict_y(self, params: dict, x: Array) -> tuple[Array, Array]:
        """Predictive mean and variance of y at ``x`` (shapes as the likelihood returns)."""
        mean, var = self.predict_f(params, x)
        return self.likelihood.predict_mean_variance(params["likelihood"], mean, var)

    def predict_class_probabilities(self, params: dict, x: Array) -> Array:
        """p(y = k | x) = ∫ p(y = k | f) q(f) df, shape ``(N, C)``.

        Multiclass likelihoods (``Softmax``, ``RobustMax``) give their C classes; a Bernoulli
        likelihood with one output gives the two columns (p(y = 0), p(y = 1)).
        """
        mean, var = self.predict_f(params, x)
        lik = self.likelihood
        if hasattr(lik, "predict_class_probabilities"):
            return lik.predict_class_probabilities(params["likelihood"], mean, var)
        if type(lik).__name__ == "Bernoulli" and self.num_latent == 1:
            p1, _ = lik.predict_mean_variance(params["likelihood"], mean, var)
            p1 = p1.reshape(-1)
            return jnp.stack([1 - p1, p1], axis=-1)
        raise TypeError(
            f"SVGP: {type(lik).__name__} is not a classification likelihood; use predict_y"
        )

    def log_predictive_density(self, params: dict, x: Array, y: Array) -> Array:
        """log ∫ p(y_n | f_n) q(f_n) df_n per row: ``(N,)``."""
        mean, var = self.predict_f(params, x)
        return self.likelihood.log_predictive_density(params["likelihood"], y, mean, var)


def _check_inputs(x: Array, input_dim: int) -> None:
    if x.ndim != 2 or x.shape[1] != input_dim:
        raise ValueError(
            f"SVGP: inputs must have shape (N, {input_dim}) to match the inducing inputs; "
            f"got {tuple(x.shape)}"
        )
    if not is_traced(x) and not bool(np.all(np.isfinite(np.asarray(x)))):
        raise ValueError("SVGP: inputs contain NaN or inf")


# ------------------------------------------------------------------------------------------
# Gaussian-likelihood references: Titsias' collapsed bound, its optimal q(u), the exact GP.
# ------------------------------------------------------------------------------------------


def _gaussian_pieces(kernel, kernel_params, noise_variance, x, y, z, jitter):
    y = y.reshape(y.shape[0], -1)  # (N, L): independent outputs
    kuu = kernel(kernel_params, z, z)
    luu = _cholesky_with_jitter(kuu, jitter)
    a = jax.scipy.linalg.solve_triangular(luu, kernel(kernel_params, z, x), lower=True)
    a = a / jnp.sqrt(noise_variance)  # A/σ
    b = jnp.eye(z.shape[0], dtype=a.dtype) + a @ a.T  # I + AAᵀ/σ²
    lb = jnp.linalg.cholesky(b)
    c = jax.scipy.linalg.solve_triangular(lb, a @ y, lower=True) / jnp.sqrt(noise_variance)
    return y, luu, a, lb, c


def sgpr_bound(kernel, kernel_params, noise_variance, x, y, z, *, jitter: float = 1e-6) -> Array:
    """Titsias' collapsed bound log N(y | 0, Q_ff + σ²I) − tr(K_ff − Q_ff)/(2σ²), Q_ff =
    K_fuK_uu⁻¹K_uf, summed over the columns of y (independent outputs). Scalar.

    Computed with A = L_uu⁻¹K_uf/σ, L_B = chol(I + AAᵀ), c = L_B⁻¹Ay/σ:
    −(N/2)log 2πσ² − Σ log diag L_B − yᵀy/(2σ²) + cᵀc/2 − tr K_ff/(2σ²) + tr AAᵀ/2 per output.

    Args:
      kernel, kernel_params: the kernel and its (unconstrained) parameters.
      noise_variance: σ² (a positive scalar, constrained).
      x: ``(N, D)``; y: ``(N,)`` or ``(N, L)``; z: ``(M, D)``.
      jitter: added to K_uu as in :class:`SVGP`.
    """
    y2, _, a, lb, c = _gaussian_pieces(kernel, kernel_params, noise_variance, x, y, z, jitter)
    n, num_outputs = y2.shape
    per_output = (
        -0.5 * n * jnp.log(2 * jnp.pi * noise_variance)
        - jnp.sum(jnp.log(jnp.diag(lb)))
        - 0.5 * jnp.sum(jnp.square(y2), axis=0) / noise_variance
        + 0.5 * jnp.sum(jnp.square(c), axis=0)
        - 0.5 * jnp.sum(kernel.diag(kernel_params, x)) / noise_variance
        + 0.5 * jnp.sum(jnp.square(a))
    )
    assert per_output.shape == (num_outputs,)
    return jnp.sum(per_output)


def sgpr_posterior(
    kernel, kernel_params, noise_variance, x, y, z, *, whiten: bool = True, jitter: float = 1e-6
) -> tuple[Array, Array]:
    """The optimal q(u) of the collapsed bound, as (mean (L, M), covariance (L, M, M)).

    Whitened (over v): S = (I + AAᵀ/σ²)⁻¹, m = S·A y/σ² with A = L_uu⁻¹K_uf;
    non-whitened (over u = L_uu v): m_u = L_uu m, S_u = L_uu S L_uuᵀ.
    """
    y2, luu, _, lb, c = _gaussian_pieces(kernel, kernel_params, noise_variance, x, y, z, jitter)
    # m = (I + AAᵀ)⁻¹(A y/σ)/σ = L_B⁻ᵀ c, S = L_B⁻ᵀ L_B⁻¹ (A already divided by σ).
    mean = jax.scipy.linalg.solve_triangular(lb.T, c, lower=False)  # (M, L)
    lb_inv = jax.scipy.linalg.solve_triangular(lb, jnp.eye(lb.shape[0], dtype=lb.dtype), lower=True)
    cov = lb_inv.T @ lb_inv
    if not whiten:
        mean, cov = luu @ mean, luu @ cov @ luu.T
    num_outputs = y2.shape[1]
    return mean.T, jnp.broadcast_to(cov, (num_outputs, *cov.shape))


def gp_log_marginal_likelihood(kernel, kernel_params, noise_variance, x, y) -> Array:
    """Exact log N(y | 0, K_ff + σ²I), summed over the columns of y. Scalar."""
    y2 = y.reshape(y.shape[0], -1)
    n = y2.shape[0]
    cov = kernel(kernel_params, x, x) + noise_variance * jnp.eye(n, dtype=y2.dtype)
    chol = jnp.linalg.cholesky(cov)
    alpha = jax.scipy.linalg.solve_triangular(chol, y2, lower=True)
    per_output = (
        -0.5 * n * jnp.log(2 * jnp.pi)
        - jnp.sum(jnp.log(jnp.diag(chol)))
        - 0.5 * jnp.sum(jnp.square(alpha), axis=0)
    )
    return jnp.sum(per_output)
