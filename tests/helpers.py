"""Dense references for the Gaussian and natural-gradient tests.

Everything here is written independently of the code under test, with numpy or with plain
``jax.numpy`` on dense matrices: random SPD matrices of a chosen condition number, random points
in each Gaussian parameterization (built with ``np.linalg``), the Fisher in minimal coordinates
(m, vech S) as the Hessian of KL(q₀‖q), the gradient of a loss in those coordinates, and the
push-forward of a tangent of any parameterization to (m, S). The only natgrad pieces used are
``natgrad.linalg.vech``/``unvech`` (pure indexing) and ``Parameterization.mean_covariance`` for
the push-forward.

Call ``jax.config.update("jax_enable_x64", True)`` before using these (the test modules do).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from natgrad import linalg

PARAMETERIZATION_NAMES = (
    "natural",
    "expectation",
    "mean_covariance",
    "mean_cholesky",
    "mean_precision_cholesky",
)
#: Parameterizations whose matrix block is a symmetric matrix / a Cholesky factor.
SYMMETRIC_NAMES = ("natural", "expectation", "mean_covariance")
CHOLESKY_NAMES = ("mean_cholesky", "mean_precision_cholesky")


# --------------------------------------------------------------------------------------------
# Random points
# --------------------------------------------------------------------------------------------


def sym(a: np.ndarray) -> np.ndarray:
    """½(A + Aᵀ) over the last two axes."""
    return 0.5 * (a + np.swapaxes(a, -1, -2))


def random_orthogonal(rng: np.random.Generator, dim: int, batch=()) -> np.ndarray:
    """Haar-distributed orthogonal matrices ``batch + (dim, dim)`` (QR with the sign fix)."""
    q, r = np.linalg.qr(rng.standard_normal(tuple(batch) + (dim, dim)))
    signs = np.sign(np.diagonal(r, axis1=-2, axis2=-1))
    return q * signs[..., None, :]


def random_spd(
    rng: np.random.Generator, dim: int, batch=(), *, cond: float = 10.0, scale: float = 1.0
) -> np.ndarray:
    """SPD matrices ``batch + (dim, dim)`` with condition number exactly ``cond`` (for dim ≥ 2).

    Eigenvalues are spread geometrically over [scale/√cond, scale·√cond] (first and last fixed,
    the rest log-uniform), eigenvectors Haar-random; the result is symmetric to the last bit.
    """
    batch = tuple(batch)
    logs = rng.uniform(-0.5, 0.5, size=batch + (dim,)) * math.log(cond)
    if dim >= 2:
        logs[..., 0] = -0.5 * math.log(cond)
        logs[..., -1] = 0.5 * math.log(cond)
    q = random_orthogonal(rng, dim, batch)
    return sym((q * (scale * np.exp(logs))[..., None, :]) @ np.swapaxes(q, -1, -2))


def random_mean_cov(rng: np.random.Generator, dim: int, batch=(), *, cond: float = 10.0):
    """A random mean ``batch + (dim,)`` with N(0, 1) entries and an SPD covariance."""
    mean = rng.standard_normal(tuple(batch) + (dim,))
    return mean, random_spd(rng, dim, batch, cond=cond)


def params_from_mean_cov(name: str, mean, cov, dtype=jnp.float64):
    """The parameters of N(mean, cov) in parameterization ``name``, computed with np.linalg.

    Independent of natgrad: θ₁ = S⁻¹m, θ₂ = −½S⁻¹; η = (m, S + mmᵀ); (m, chol S);
    (m, chol S⁻¹). Returns a tuple of two ``jnp`` arrays of ``dtype``.
    """
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    if name == "mean_covariance":
        pair = (mean, cov)
    elif name == "natural":
        prec = sym(np.linalg.inv(cov))
        pair = ((prec @ mean[..., None])[..., 0], -0.5 * prec)
    elif name == "expectation":
        pair = (mean, cov + mean[..., :, None] * mean[..., None, :])
    elif name == "mean_cholesky":
        pair = (mean, np.linalg.cholesky(cov))
    elif name == "mean_precision_cholesky":
        pair = (mean, np.linalg.cholesky(sym(np.linalg.inv(cov))))
    else:
        raise KeyError(name)
    return tuple(jnp.asarray(a, dtype) for a in pair)


def random_params(
    rng: np.random.Generator, name: str, dim: int, batch=(), *, cond: float = 10.0, dtype=None
):
    """``(params, mean, cov)``: a random point in parameterization ``name`` and its (m, S)."""
    mean, cov = random_mean_cov(rng, dim, batch, cond=cond)
    params = params_from_mean_cov(name, mean, cov, dtype=dtype or jnp.float64)
    return params, mean, cov


# --------------------------------------------------------------------------------------------
# Dense Fisher and gradients in minimal coordinates z = (m, vech S)
# --------------------------------------------------------------------------------------------


def kl_dense(mean0, cov0, mean1, cov1):
    """KL(N(m₀, S₀) ‖ N(m₁, S₁)) for one pair, by dense solves and slogdet (jnp, unbatched)."""
    dim = mean0.shape[-1]
    diff = mean1 - mean0
    trace = jnp.trace(jnp.linalg.solve(cov1, cov0))
    maha = diff @ jnp.linalg.solve(cov1, diff)
    logdet1 = jnp.linalg.slogdet(cov1)[1]
    logdet0 = jnp.linalg.slogdet(cov0)[1]
    return 0.5 * (trace + maha - dim + logdet1 - logdet0)


def kl_numpy(mean0, cov0, mean1, cov1):
    """KL(N(m₀, S₀) ‖ N(m₁, S₁)) with np.linalg, batched over leading axes."""
    mean0, cov0, mean1, cov1 = (np.asarray(a, np.float64) for a in (mean0, cov0, mean1, cov1))
    dim = mean0.shape[-1]
    diff = (mean1 - mean0)[..., None]
    trace = np.trace(np.linalg.solve(cov1, cov0), axis1=-2, axis2=-1)
    maha = (np.swapaxes(diff, -1, -2) @ np.linalg.solve(cov1, diff))[..., 0, 0]
    logdet1 = np.linalg.slogdet(cov1)[1]
    logdet0 = np.linalg.slogdet(cov0)[1]
    return 0.5 * (trace + maha - dim + logdet1 - logdet0)


def _split_minimal(z, dim):
    return z[:dim], linalg.unvech(z[dim:], dim)


#: Every Fisher is computed on a Gaussian padded to this dimension, so one compilation serves
#: all dims 1–8 (compiling a Hessian per dimension would dominate the test time).
_FISHER_PAD = 8


@functools.partial(jax.jit, static_argnums=2)
def _fisher_full(mean0, cov0, dim):
    z0 = jnp.concatenate([mean0, linalg.vech(cov0)])

    def kl_from_q0(z):
        return kl_dense(mean0, cov0, *_split_minimal(z, dim))

    return jax.hessian(kl_from_q0)(z0)


def dense_fisher(mean, cov) -> np.ndarray:
    """Fisher of N(m, S) in minimal coordinates z = (m, vech S): ∇²_z KL(q₀‖q_z) at z = z₀.

    One unbatched Gaussian; returns a ``(D + D(D+1)/2)²`` numpy array. The Hessian is taken for
    the padded Gaussian N(m, S) ⊗ N(0, I) (dimension ≥ 8) and restricted to the coordinates of
    (m, vech S): with the padding coordinates held at their values, the padded KL is the KL of
    the D-dimensional Gaussians, so the restriction is exactly the D-dimensional Hessian.
    """
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    dim = mean.shape[-1]
    pad = max(dim, _FISHER_PAD)
    mean_pad = np.zeros(pad)
    mean_pad[:dim] = mean
    cov_pad = np.eye(pad)
    cov_pad[:dim, :dim] = cov
    full = np.asarray(_fisher_full(jnp.asarray(mean_pad), jnp.asarray(cov_pad), pad))
    rows, cols = np.tril_indices(pad)  # the vech order, row by row, as in natgrad.linalg.vech
    keep = np.concatenate([np.arange(pad) < dim, (rows < dim) & (cols < dim)])
    return full[np.ix_(keep, keep)]


@functools.partial(jax.jit, static_argnums=0)
def _minimal_gradient(loss, mean, cov):
    dim = mean.shape[-1]
    grad = jax.grad(lambda m, v: loss(m, linalg.unvech(v, dim)), argnums=(0, 1))
    return grad(mean, linalg.vech(cov))


def minimal_gradient(loss, mean, cov):
    """∇ of ``loss(m, S)`` over (m, vech S) with S = unvech(v), batched: ``(gm, gvech)``.

    Jitted (``loss`` must be hashable): eager gathers and scatters of vech/unvech would compile
    one small program each.
    """
    gm, gv = _minimal_gradient(loss, jnp.asarray(mean, jnp.float64), jnp.asarray(cov, jnp.float64))
    return np.asarray(gm), np.asarray(gv)


def reference_natural_direction(loss, mean, cov):
    """F⁻¹∇ in (m, S) by a dense solve per batch element: ``(dm, dS)`` as numpy arrays."""
    mean = np.asarray(mean, np.float64)
    cov = np.asarray(cov, np.float64)
    dim = mean.shape[-1]
    gm, gv = minimal_gradient(loss, mean, cov)
    dm = np.empty_like(mean)
    dcov = np.empty_like(cov)
    rows, cols = np.tril_indices(dim)  # the vech order of natgrad.linalg.vech
    for idx in np.ndindex(mean.shape[:-1]):
        fisher = dense_fisher(mean[idx], cov[idx])
        step = np.linalg.solve(fisher, np.concatenate([gm[idx], gv[idx]]))
        dm[idx] = step[:dim]
        dcov[idx][rows, cols] = step[dim:]
        dcov[idx][cols, rows] = step[dim:]
    return dm, dcov


def push_forward(parameterization, params, tangent):
    """The tangent ``tangent`` at ``params`` mapped to (dm, dS) by a JVP of ``mean_covariance``."""
    _, (dm, dcov) = jax.jvp(parameterization.mean_covariance, (params,), (tuple(tangent),))
    return dm, dcov


# --------------------------------------------------------------------------------------------
# Losses and comparisons
# --------------------------------------------------------------------------------------------


def make_loss(rng: np.random.Generator, dim: int):
    """A smooth, nontrivial loss of (m, S) summed over a batch of Gaussians.

    Per Gaussian: mᵀASm + tr(BS) − ½ log det S + Σ sin(cᵢmᵢ) + ⅒‖S‖²_F with non-symmetric A, B,
    so ``jax.grad`` over a full matrix S is not symmetric; the batch is coupled by a square.
    """
    a = jnp.asarray(rng.standard_normal((dim, dim)))
    b = jnp.asarray(rng.standard_normal((dim, dim)))
    c = jnp.asarray(rng.standard_normal(dim))

    def loss(mean, cov):
        a_, b_, c_ = (t.astype(cov.dtype) for t in (a, b, c))
        quad = jnp.sum((mean @ a_) * (cov @ mean[..., None])[..., 0], axis=-1)  # mᵀASm
        trace = jnp.sum(b_.T * cov, axis=(-2, -1))  # tr(BS)
        # log det S from a Cholesky factor (cheaper to differentiate than slogdet's LU).
        chol = jnp.linalg.cholesky(cov)
        logdet = 2.0 * jnp.sum(jnp.log(jnp.diagonal(chol, axis1=-2, axis2=-1)), axis=-1)
        per = (
            quad
            + trace
            - 0.5 * logdet
            + jnp.sum(jnp.sin(c_ * mean), axis=-1)
            + 0.1 * jnp.sum(cov**2, axis=(-2, -1))
        )
        return jnp.sum(per) + 0.05 * jnp.sum(per) ** 2

    # Jitted, so that its derivative is compiled once per shape and shared by every
    # parameterization (differentiating it op by op compiles far more small programs).
    return jax.jit(loss)


def read_lower(params):
    """(v, M) ↦ (v, tril(M) + tril(M, −1)ᵀ): a symmetric matrix read from its lower triangle."""
    vec, mat = params
    low = jnp.tril(mat)
    return vec, low + jnp.swapaxes(jnp.tril(mat, -1), -1, -2)


def read_upper(params):
    """(v, M) ↦ (v, triu(M) + triu(M, 1)ᵀ): a symmetric matrix read from its upper triangle."""
    vec, mat = params
    up = jnp.triu(mat)
    return vec, up + jnp.swapaxes(jnp.triu(mat, 1), -1, -2)


def rel_err(actual, expected) -> float:
    """max over leaves of ‖actual − expected‖_F / ‖expected‖_F (normwise relative error)."""
    errs = []
    for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        a = np.asarray(a, np.float64)
        e = np.asarray(e, np.float64)
        assert a.shape == e.shape, (a.shape, e.shape)
        errs.append(np.linalg.norm(a - e) / max(np.linalg.norm(e), np.finfo(np.float64).tiny))
    return max(errs)


def assert_tree_close(actual, expected, rtol: float, msg: str = "") -> None:
    """Normwise relative comparison of two pytrees of arrays (see :func:`rel_err`)."""
    err = rel_err(actual, expected)
    assert err <= rtol, f"relative error {err:.3e} > {rtol:.1e} {msg}"


def fake_mnist(path, *, num_train: int, num_test: int, seed: int = 0):
    """An npz shaped like MNIST (uint8 28×28 images, 10 classes) of random pixels and labels."""
    rng = np.random.default_rng(seed)
    np.savez(
        path,
        x_train=rng.integers(0, 256, (num_train, 28, 28), dtype=np.uint8),
        y_train=rng.integers(0, 10, num_train).astype(np.uint8),
        x_test=rng.integers(0, 256, (num_test, 28, 28), dtype=np.uint8),
        y_test=rng.integers(0, 10, num_test).astype(np.uint8),
    )
    return path
