"""natgrad.curvature operators on tiny models against dense float64 references.

The references are built here, independently of natgrad.curvature: the model's Jacobian Jᵢ by
``jax.jacobian`` of the raveled parameters (``ravel_pytree``), the loss's output Hessian Hᵢ by
``jax.hessian`` of a per-example negative log-likelihood written out in this file, the Hessian
by ``jax.hessian`` of the raveled objective and per-example gradients by ``jax.vmap(jax.grad)``:

    GGN = Fisher = c_B Σᵢ Jᵢᵀ Hᵢ Jᵢ,   empirical Fisher = c_B Σᵢ gᵢgᵢᵀ,
    MC Fisher = c_B Σᵢ Jᵢᵀ [(1/S) Σ_s rᵢₛrᵢₛᵀ] Jᵢ.
"""

import dataclasses
import functools
import math
import re
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import assert_tree_close, rel_err
from jax.flatten_util import ravel_pytree

from natgrad import curvature
from natgrad.curvature import CURVATURES
from natgrad.losses import GaussianNLL, SigmoidCrossEntropy, SoftmaxCrossEntropy, squared_error

jax.config.update("jax_enable_x64", True)  # before any array is created

B = 5  # batch size of every model
MC_KEY = jax.random.key(2024)
MC_SAMPLES = 3  # S of the MC Fisher in the dense comparisons


# --------------------------------------------------------------------------------------------
# Per-example negative log-likelihoods, written out independently of natgrad.losses
# --------------------------------------------------------------------------------------------


def _ce_label(f, y):
    return jax.nn.logsumexp(f) - f[y]


def _ce_probs(f, y):
    return -jnp.sum(y * (f - jax.nn.logsumexp(f)))


def _bernoulli(f, y):
    s = 1.0 / (1.0 + jnp.exp(-f))
    return -jnp.sum(y * jnp.log(s) + (1.0 - y) * jnp.log(1.0 - s))


def _gaussian(variance, constant=True):
    def nll(f, y):
        value = jnp.sum((y - f) ** 2) / (2.0 * variance)
        return value + (0.5 * f.size * math.log(2 * math.pi * variance) if constant else 0.0)

    return nll


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
    apply: Callable
    loss: Any
    params: Any
    x: jax.Array
    y: jax.Array
    nll: Callable  # independent per-example ℓ(fᵢ, yᵢ)

    @property
    def batch(self):
        return (self.x, self.y)

    @property
    def scale(self):
        """c_B."""
        return 1.0 / B if self.loss.reduction == "mean" else 1.0


def _mlp_apply(p, x):
    return jnp.tanh(x @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]


def _nested_apply(p, x):
    (w1, b1), [w2, head] = p
    return jax.nn.softplus(x @ w1 + b1) @ w2 + head["b"]


def _linear_apply(p, x):
    return x @ p["w"] + p["b"]


@functools.cache
def _problem(name: str) -> Problem:
    # Cached, and possibly first called while tracing (inside jit): build concrete arrays so
    # that no tracer leaks into the cache.
    with jax.ensure_compile_time_eval():
        return _build_problem(name)


def _build_problem(name: str) -> Problem:
    rng = np.random.default_rng(sum(map(ord, name)))

    def arr(*shape, scale=1.0):
        return jnp.asarray(scale * rng.standard_normal(shape))

    if name == "mlp":  # (a) dict params, tanh, softmax CE with labels, "mean"
        params = {"w1": arr(3, 4), "b1": arr(4, scale=0.5), "w2": arr(4, 3), "b2": arr(3)}
        x, y = arr(B, 3), jnp.asarray(rng.integers(0, 3, size=B))
        return Problem(_mlp_apply, SoftmaxCrossEntropy(), params, x, y, _ce_label)
    if name == "nested":  # (b) tuple/list pytree, sigmoid CE on a (B, 2) head, "sum"
        params = ((arr(3, 3), arr(3, scale=0.5)), [arr(3, 2), {"b": arr(2)}])
        x, y = arr(B, 3), jnp.asarray(rng.integers(0, 2, size=(B, 2)), jnp.float64)
        return Problem(
            _nested_apply, SigmoidCrossEntropy(reduction="sum"), params, x, y, _bernoulli
        )
    if name == "linear":  # (c) linear model, Gaussian NLL with σ² = 0.7
        params = {"w": arr(3, 2), "b": arr(2)}
        x, y = arr(B, 3), arr(B, 2)
        return Problem(_linear_apply, GaussianNLL(0.7), params, x, y, _gaussian(0.7))
    if name == "eqx":  # (d) equinox MLP, softmax CE with probability targets
        eqx = pytest.importorskip("equinox")
        model = eqx.nn.MLP(3, 3, 4, 1, activation=jnp.tanh, key=jax.random.key(0))
        params, static = eqx.partition(model, eqx.is_inexact_array)
        assert all(leaf.dtype == jnp.float64 for leaf in jax.tree.leaves(params))

        def apply(p, x):
            return jax.vmap(eqx.combine(p, static))(x)

        x = arr(B, 3)
        y = jnp.asarray(rng.dirichlet(np.ones(3), size=B))
        return Problem(apply, SoftmaxCrossEntropy(), params, x, y, _ce_probs)
    raise KeyError(name)


MODELS = ("mlp", "nested", "linear", "eqx")


# --------------------------------------------------------------------------------------------
# Dense references
# --------------------------------------------------------------------------------------------


@functools.cache
def _reference(name: str) -> dict:
    """Dense float64 matrices and per-example pieces for model ``name`` (numpy arrays)."""
    prob = _problem(name)
    flat0, unravel = ravel_pytree(prob.params)

    def outputs_of(flat):
        return prob.apply(unravel(flat), prob.x)

    def objective(flat):
        return prob.scale * jnp.sum(jax.vmap(prob.nll)(outputs_of(flat), prob.y))

    def example_grad(flat, xi, yi):
        return jax.grad(lambda w: prob.nll(prob.apply(unravel(w), xi[None])[0], yi))(flat)

    @jax.jit
    def dense(flat):
        f = outputs_of(flat)
        jac = jax.jacobian(outputs_of)(flat)
        h_out = jax.vmap(jax.hessian(prob.nll))(f, prob.y)
        g = jax.vmap(example_grad, in_axes=(None, 0, 0))(flat, prob.x, prob.y)
        return (
            f,
            jac,
            h_out,
            g,
            objective(flat),
            jax.grad(objective)(flat),
            jax.hessian(objective)(flat),
        )

    f, jac, h_out, g, value, grad, hess = (np.asarray(a) for a in dense(flat0))
    num_params = flat0.size
    event = math.prod(f.shape[1:])
    jac = jac.reshape(B, event, num_params)
    h_out = h_out.reshape(B, event, event)
    per_example_ggn = prob.scale * np.einsum("bop,boq,bqr->bpr", jac, h_out, jac)
    per_example_ef = prob.scale * np.einsum("bp,bq->bpq", g, g)
    return {
        "flat": np.asarray(flat0),
        "outputs": f,
        "jac": jac,
        "h_out": h_out,
        "per_example_grads": g,
        "value": value,
        "grad": grad,
        "per_example": {
            "ggn": per_example_ggn,
            "fisher": per_example_ggn,
            "empirical_fisher": per_example_ef,
            "hessian": None,
        },
        "matrix": {
            "ggn": per_example_ggn.sum(0),
            "fisher": per_example_ggn.sum(0),  # canonical link: output Fisher = output Hessian
            "empirical_fisher": per_example_ef.sum(0),
            "hessian": hess,
        },
    }


def _mc_per_example(name: str, key, num_samples: int) -> np.ndarray:
    """c_B Jᵢᵀ [(1/S) Σ_s rᵢₛrᵢₛᵀ] Jᵢ, (B, P, P).

    The targets are drawn with ``loss.sample(outputs, key=key, num_samples=S)``, the same call
    with the same key fisher_mc makes: this ties the test to that sampling convention (one
    ``sample`` call for all S and all examples). The residuals rᵢₛ = ∇_f ℓ(fᵢ, yᵢₛ) are from
    ``jax.grad`` of the independent ℓ.
    """
    prob, ref = _problem(name), _reference(name)
    f = jnp.asarray(ref["outputs"])
    samples = prob.loss.sample(f, key=key, num_samples=num_samples)
    # Softmax samples are class labels even when the data's targets are probabilities.
    nll = _ce_label if jnp.issubdtype(samples.dtype, jnp.integer) else prob.nll
    r = jax.vmap(jax.vmap(jax.grad(nll)), in_axes=(None, 0))(f, samples)
    r = np.asarray(r).reshape(num_samples, B, -1)
    m = np.einsum("sbo,sbq->boq", r, r) / num_samples
    jac = ref["jac"]
    return prob.scale * np.einsum("bop,boq,bqr->bpr", jac, m, jac)


@functools.cache
def _mc_reference(name: str) -> np.ndarray:
    return _mc_per_example(name, MC_KEY, MC_SAMPLES)


def _dense(name: str, kind: str) -> np.ndarray:
    if kind == "fisher_mc":
        return _mc_reference(name).sum(0)
    return _reference(name)["matrix"][kind]


def _per_example(name: str, kind: str) -> np.ndarray:
    if kind == "fisher_mc":
        return _mc_reference(name)
    return _reference(name)["per_example"][kind]


# --------------------------------------------------------------------------------------------
# The operators under test (built once per model and curvature)
# --------------------------------------------------------------------------------------------


@functools.cache
def _operator(name: str, kind: str):
    """One eagerly built operator (used where the eager path itself is the point)."""
    prob = _problem(name)
    return curvature.make(
        kind, prob.apply, prob.loss, prob.params, prob.batch, key=MC_KEY, num_samples=MC_SAMPLES
    )


@functools.cache
def _results(name: str) -> dict:
    """Every operator of model ``name`` and what it computes, from one jitted function.

    One compilation per model instead of dispatching the primitives of five operators one by
    one (which dominated the run time); the jit test below checks that eager operators give
    the same numbers.
    """
    prob = _problem(name)
    v_tree, _ = _random_tree(name)

    @jax.jit
    def run(params, x, y, v, key):
        out = {}
        for kind in CURVATURES:
            op = curvature.make(
                kind, prob.apply, prob.loss, params, (x, y), key=key, num_samples=MC_SAMPLES
            )
            out[kind] = {
                "matrix": op.as_matrix(),
                "mv": op.mv(v),
                "matmul": op @ v,
                "value": op.value,
                "grad": op.grad,
                "diagonal": op.diagonal(),
            }
        return out

    return run(prob.params, prob.x, prob.y, v_tree, MC_KEY)


def _matrix(name: str, kind: str) -> np.ndarray:
    return np.asarray(_results(name)[kind]["matrix"])


def _random_tree(name: str, seed: int = 0, dtype=jnp.float64):
    flat, unravel = ravel_pytree(_problem(name).params)
    v = np.random.default_rng(seed).standard_normal(flat.size)
    return unravel(jnp.asarray(v, dtype)), v


def _ravel(tree) -> np.ndarray:
    return np.asarray(ravel_pytree(tree)[0])


def _ravel_jnp(tree) -> jax.Array:
    return ravel_pytree(tree)[0]


PAIRS = [(m, k) for m in MODELS for k in CURVATURES]
PAIR_IDS = [f"{m}-{k}" for m, k in PAIRS]


# --------------------------------------------------------------------------------------------
# Dense matrices, products, value and gradient
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "kind"), PAIRS, ids=PAIR_IDS)
def test_operator_matches_dense_reference(name, kind):
    res = _results(name)[kind]
    mat = _matrix(name, kind)
    expected = _dense(name, kind)
    # Tiny models in float64 with O(1) weights: both sides are a few hundred flops per entry,
    # so only rounding differs (seen ~1e-15); 1e-10 is the stated bound.
    assert_tree_close(mat, expected, rtol=1e-10, msg=f"{name} {kind} as_matrix")

    _, v = _random_tree(name)
    assert_tree_close(_ravel(res["mv"]), expected @ v, rtol=1e-10, msg="mv")
    assert_tree_close(_ravel(res["matmul"]), expected @ v, rtol=1e-10, msg="@")
    assert jax.tree.structure(res["mv"]) == jax.tree.structure(_problem(name).params)

    # Symmetric up to rounding (columns are computed independently).
    assert_tree_close(mat.T, mat, rtol=1e-12, msg="symmetry")

    ref = _reference(name)
    # value and gradient of the objective from the same linearization: rounding only.
    np.testing.assert_allclose(res["value"], ref["value"], rtol=1e-12)
    assert_tree_close(_ravel(res["grad"]), ref["grad"], rtol=1e-12, msg="grad")

    # diag(C) from per-example VJPs of the factor (or basis products for the Hessian).
    diag = _ravel(res["diagonal"])
    assert_tree_close(diag, np.diag(expected), rtol=1e-12, msg="diagonal")  # rounding only
    np.testing.assert_allclose(diag, np.diag(mat), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("name", MODELS)
def test_gauss_newton_types_are_psd_and_the_hessian_need_not_be(name):
    for kind in ("ggn", "fisher", "fisher_mc", "empirical_fisher"):
        eig = np.linalg.eigvalsh(_matrix(name, kind))
        # PSD up to rounding of a P ≤ 31 matrix with O(1) entries.
        assert eig.min() >= -1e-12 * eig.max(), (kind, eig.min(), eig.max())
    if name == "mlp":
        # The tanh MLP's Hessian carries the model's second-order term and is indefinite
        # here: the PSD check above would catch the Hessian if it were mislabelled.
        eig = np.linalg.eigvalsh(_matrix(name, "hessian"))
        assert eig.min() < -1e-3 * eig.max()


@pytest.mark.parametrize("name", MODELS)
def test_empirical_fisher_is_not_the_outer_product_of_the_mean_gradient(name):
    ref = _reference(name)
    grad = ref["grad"]
    # E = c_B Σᵢ gᵢgᵢᵀ, while ∇L∇Lᵀ = c_B² (Σᵢ gᵢ)(Σᵢ gᵢ)ᵀ is rank one: they differ by O(1).
    assert rel_err(_matrix(name, "empirical_fisher"), np.outer(grad, grad)) > 0.1
    assert np.linalg.matrix_rank(np.outer(grad, grad)) == 1
    assert np.linalg.matrix_rank(_matrix(name, "empirical_fisher"), tol=1e-10) == B


def test_ggn_differs_from_the_hessian_of_a_nonlinear_model():
    # Guards the linear-model test below from passing vacuously.
    assert rel_err(_matrix("mlp", "ggn"), _matrix("mlp", "hessian")) > 1e-2


@pytest.mark.parametrize(
    "loss",
    [squared_error(), GaussianNLL(0.7, reduction="sum"), SoftmaxCrossEntropy()],
    ids=["squared", "gaussian", "softmax"],
)
def test_ggn_equals_hessian_for_a_linear_model(loss):
    rng = np.random.default_rng(9)
    params = {
        "w": jnp.asarray(rng.standard_normal((3, 3))),
        "b": jnp.asarray(rng.standard_normal(3)),
    }
    x = jnp.asarray(rng.standard_normal((B, 3)))
    if isinstance(loss, SoftmaxCrossEntropy):
        y = jnp.asarray(rng.integers(0, 3, size=B))
        nll = _ce_label
    else:
        y = jnp.asarray(rng.standard_normal((B, 3)))
        nll = _gaussian(loss.variance, loss.include_constant)
    scale = 1.0 / B if loss.reduction == "mean" else 1.0
    _, unravel = ravel_pytree(params)

    def objective(w):
        return scale * jnp.sum(jax.vmap(nll)(_linear_apply(unravel(w), x), y))

    @jax.jit
    def matrices(params, x, y):
        return {
            kind: curvature.make(kind, _linear_apply, loss, params, (x, y)).as_matrix()
            for kind in ("ggn", "hessian")
        } | {"reference": jax.hessian(objective)(ravel_pytree(params)[0])}

    mats = matrices(params, x, y)
    # f is linear in θ, so ∇²_θ f = 0 and H = JᵀH_fJ exactly; rounding only.
    for kind in ("ggn", "hessian"):
        assert_tree_close(mats[kind], mats["reference"], rtol=1e-10, msg=kind)


# --------------------------------------------------------------------------------------------
# Monte Carlo Fisher
# --------------------------------------------------------------------------------------------


@functools.cache
def _mc_variance(name: str) -> float:
    """V = E‖F̂₁ − F‖²_F for one sample per example, exactly, by enumerating the C classes.

    F̂₁ = c_B Σᵢ gᵢgᵢᵀ with gᵢ = Jᵢᵀ(pᵢ − e_y), y ∼ pᵢ independently over i, so
    V = c_B² Σᵢ Σ_y pᵢ_y ‖gᵢgᵢᵀ − Jᵢᵀ Hᵢ Jᵢ‖²_F, and E‖F̂_S − F‖²_F = V/S.
    """
    ref = _reference(name)
    scale = _problem(name).scale
    f = ref["outputs"]
    p = np.exp(f - f.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    total = 0.0
    for i in range(B):
        exact = ref["per_example"]["ggn"][i] / scale
        for c in range(f.shape[-1]):
            g = ref["jac"][i].T @ (p[i] - np.eye(f.shape[-1])[c])
            total += p[i, c] * np.linalg.norm(np.outer(g, g) - exact) ** 2
    return scale**2 * total


def _mc_matrix(key, num_samples):
    prob = _problem("mlp")
    op = curvature.fisher_mc(
        prob.apply, prob.loss, prob.params, prob.batch, key=key, num_samples=num_samples
    )
    return op.as_matrix()


def _mc_rms(num_samples: int) -> float:
    """√(E‖F̂_S − F‖²_F)/‖F‖ = √(V/S)/‖F‖ for the MLP, exactly."""
    return math.sqrt(_mc_variance("mlp") / num_samples) / np.linalg.norm(_dense("mlp", "fisher"))


_mc_matrices = jax.jit(jax.vmap(_mc_matrix, in_axes=(0, None)), static_argnums=1)


def test_mc_fisher_converges_to_the_exact_fisher():
    exact = _dense("mlp", "fisher")
    keys = jax.random.split(jax.random.key(17), 25)
    observed = {}
    for num_samples in (1, 10, 1000):
        errs = [rel_err(m, exact) for m in np.asarray(_mc_matrices(keys, num_samples))]
        observed[num_samples] = math.sqrt(np.mean(np.square(errs)))  # rms over 25 keys
        # E‖F̂_S − F‖² = V/S, with V computed exactly by enumeration. Over 40 groups of 25
        # other keys the observed/expected rms ratio stayed within [0.77, 1.34] for each S;
        # [0.6, 1.6] is a safe margin, while a wrong 1/S scaling or a biased operator (data
        # targets instead of model samples) would be off by ≥ √10 at S = 1000.
        ratio = observed[num_samples] / _mc_rms(num_samples)
        assert 0.6 <= ratio <= 1.6, (num_samples, ratio)
    assert observed[1] > observed[10] > observed[1000], observed
    # One operator with S = 1000: its error is within 3× the rms error √(V/1000)/‖F‖ ≈ 0.043
    # (so < 0.13: 0.1 is not a statistically safe bound at this size); in 300 replications
    # with other keys the error/rms ratio had 99th percentile 2.45 and never exceeded 3.
    assert _mc_rms(1000) < 0.05
    single = rel_err(np.asarray(_mc_matrices(keys[:1], 1000))[0], exact)
    assert single <= 3 * _mc_rms(1000), single


def test_mc_fisher_is_unbiased_over_keys():
    # Average of 40 operators with S = 25 each (built under vmap over the key): the mean of
    # 1000 independent single-sample estimates, so its expected squared error is V/1000; the
    # same 3× rms bound as above.
    keys = jax.random.split(jax.random.key(99), 40)
    mats = np.asarray(_mc_matrices(keys, 25))
    exact = _dense("mlp", "fisher")
    err = rel_err(mats.mean(0), exact)
    assert err <= 3 * _mc_rms(1000), (err, _mc_rms(1000))
    # ... while a single one of them is ~√40 further off on average.
    assert math.sqrt(np.mean([rel_err(m, exact) ** 2 for m in mats])) > 2 * err


# --------------------------------------------------------------------------------------------
# Diagonal estimates
# --------------------------------------------------------------------------------------------

NUM_KEYS = 8
NUM_SKETCHES = 125  # NUM_KEYS · NUM_SKETCHES = 1000 samples per estimate


@pytest.mark.parametrize("kind", ["ggn", "hessian"])
def test_diagonal_estimate_is_unbiased(kind):
    name = "mlp"
    op = _operator(name, kind)
    estimate = jax.jit(lambda k: _ravel_jnp(op.diagonal_estimate(key=k, num_samples=NUM_SKETCHES)))
    keys = jax.random.split(jax.random.key(5), NUM_KEYS)
    estimates = np.stack([estimate(k) for k in keys])
    mean = estimates.mean(0)
    exact = np.diag(_dense(name, kind))
    n = NUM_KEYS * NUM_SKETCHES
    if kind == "hessian":
        # Hutchinson: Var(zⱼ(Cz)ⱼ) = Σ_{l≠j} C_jl², exactly.
        mat = _dense(name, kind)
        sd = np.sqrt((np.sum(mat**2, axis=1) - np.diag(mat) ** 2) / n)
    else:
        # Per example and entry j, (Σₖ zₖaₖ)² with Rademacher z has variance
        # 2[(Σₖaₖ²)² − Σₖaₖ⁴] ≤ 2 Dᵢⱼ², Dᵢⱼ = Σₖaₖ² = (c_B JᵢᵀMᵢJᵢ)ⱼⱼ; independent over i.
        d = np.diagonal(_per_example(name, kind), axis1=1, axis2=2)  # (B, P)
        sd = np.sqrt(2 * np.sum(d**2, axis=0) / n)
    # Means of 1000 iid terms, nearly Gaussian: 5 standard errors per entry (plus rounding).
    np.testing.assert_array_less(np.abs(mean - exact), 5 * sd + 1e-13)
    # Not trivially exact: a single sketch is off by much more than the tolerance used below.
    assert rel_err(estimates[0], exact) > 1e-6


def test_empirical_fisher_diagonal_estimate_is_exact():
    # One factor column per example (K = 1): (z·a)² = a² for z = ±1.
    op = _operator("mlp", "empirical_fisher")
    exact = np.diag(_dense("mlp", "empirical_fisher"))
    est = op.diagonal_estimate(key=jax.random.key(0), num_samples=2)
    assert_tree_close(_ravel(est), exact, rtol=1e-12)  # rounding only
    assert jax.tree.structure(est) == jax.tree.structure(op.params)


def _symmetric_problem():
    rng = np.random.default_rng(4)
    a = rng.standard_normal((6, 6))
    mat = a + a.T
    params = {"u": jnp.zeros(2), "v": jnp.zeros((2, 2))}
    _, unravel = ravel_pytree(params)
    return mat, params, unravel


def test_hutchinson_diagonal_on_an_explicit_matrix():
    mat, params, unravel = _symmetric_problem()

    def mv(v):
        return unravel(jnp.asarray(mat) @ ravel_pytree(v)[0])

    n = 4000
    est = curvature.hutchinson_diagonal(mv, params, key=jax.random.key(3), num_samples=n)
    assert jax.tree.structure(est) == jax.tree.structure(params)
    # Var(zⱼ(Az)ⱼ) = Σ_{l≠j} A_jl²; 5 standard errors of the mean of n iid terms.
    sd = np.sqrt((np.sum(mat**2, axis=1) - np.diag(mat) ** 2) / n)
    np.testing.assert_array_less(np.abs(_ravel(est) - np.diag(mat)), 5 * sd)
    assert np.any(np.abs(_ravel(est) - np.diag(mat)) > 1e-6)  # really an estimate

    diag = np.diag(np.arange(1.0, 7.0))

    def diag_mv(v):
        return unravel(jnp.asarray(diag) @ ravel_pytree(v)[0])

    # A diagonal matrix is estimated exactly by a single probe (zⱼ² = 1).
    est = curvature.hutchinson_diagonal(diag_mv, params, key=jax.random.key(8), num_samples=1)
    np.testing.assert_allclose(_ravel(est), np.arange(1.0, 7.0), rtol=1e-15)

    with pytest.raises(ValueError, match="num_samples"):
        curvature.hutchinson_diagonal(mv, params, key=jax.random.key(0), num_samples=0)


# --------------------------------------------------------------------------------------------
# jit and vmap
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", CURVATURES)
def test_operator_built_under_jit_and_vmap_over_vectors(kind):
    name = "mlp"
    prob = _problem(name)

    @jax.jit
    def jitted(params, x, y, v, key):
        op = curvature.make(
            kind, prob.apply, prob.loss, params, (x, y), key=key, num_samples=MC_SAMPLES
        )
        return op.mv(v), op.value, op.grad

    v_tree, v = _random_tree(name, seed=1)
    mv, value, grad = jitted(prob.params, prob.x, prob.y, v_tree, MC_KEY)
    eager = _operator(name, kind)
    assert eager.name == kind
    assert eager.positive_semidefinite is (kind != "hessian")
    # Same operations compiled vs dispatched one by one: rounding only.
    assert_tree_close(mv, eager.mv(v_tree), rtol=1e-12)
    np.testing.assert_allclose(value, eager.value, rtol=1e-12)
    assert_tree_close(grad, eager.grad, rtol=1e-12)
    assert_tree_close(_ravel(mv), _dense(name, kind) @ v, rtol=1e-10)

    vs = np.random.default_rng(2).standard_normal((4, v.size))
    _, unravel = ravel_pytree(prob.params)
    batched = jax.vmap(eager.mv)(jax.vmap(unravel)(jnp.asarray(vs)))
    flat = np.asarray(jax.vmap(_ravel_jnp)(batched))  # (4, P)
    assert_tree_close(flat, vs @ _dense(name, kind).T, rtol=1e-10)


def test_float32_operators_return_float32():
    prob = _problem("mlp")
    params = jax.tree.map(lambda a: a.astype(jnp.float32), prob.params)
    x = prob.x.astype(jnp.float32)
    v_tree, v = _random_tree("mlp", dtype=jnp.float32)

    @jax.jit
    def run(params, x, v):
        out = {}
        for kind in CURVATURES:
            op = curvature.make(
                kind, prob.apply, prob.loss, params, (x, prob.y), key=MC_KEY, num_samples=2
            )
            out[kind] = (op.mv(v), op.grad, op.value, op.diagonal())
        return out

    for kind, results in run(params, x, v_tree).items():
        for leaf in jax.tree.leaves(results):
            assert leaf.dtype == jnp.float32, kind
        if kind != "fisher_mc":  # float32 logits draw different samples
            # float32 rounding (eps ≈ 1.2e-7) through a two-layer model with O(1) weights.
            assert_tree_close(_ravel(results[0]), _dense("mlp", kind) @ v, rtol=1e-4, msg=kind)


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


def test_unknown_curvature_name_lists_the_choices():
    prob = _problem("linear")
    with pytest.raises(ValueError, match=r"unknown curvature 'newton'.*" + ".*".join(CURVATURES)):
        curvature.make("newton", prob.apply, prob.loss, prob.params, prob.batch)


def test_fisher_mc_needs_a_key_and_positive_num_samples():
    prob = _problem("linear")
    with pytest.raises(ValueError, match="key"):
        curvature.make("fisher_mc", prob.apply, prob.loss, prob.params, prob.batch)
    for bad in (0, -1):
        with pytest.raises(ValueError, match="num_samples"):
            curvature.make(
                "fisher_mc",
                prob.apply,
                prob.loss,
                prob.params,
                prob.batch,
                key=MC_KEY,
                num_samples=bad,
            )


@pytest.mark.parametrize("kind", CURVATURES)
def test_invalid_arguments(kind):
    prob = _problem("linear")

    def make(apply=prob.apply, loss=prob.loss, params=prob.params, batch=prob.batch):
        return curvature.make(kind, apply, loss, params, batch, key=MC_KEY)

    with pytest.raises(TypeError, match="pair"):
        make(batch=(prob.x, prob.y, prob.y))
    with pytest.raises(TypeError, match="pair"):
        make(batch=prob.x)
    with pytest.raises(ValueError, match="NaN"):
        make(batch=(prob.x.at[1, 2].set(jnp.nan), prob.y))
    with pytest.raises(ValueError, match="NaN"):
        make(batch=(prob.x, prob.y.at[0, 0].set(jnp.nan)))
    with pytest.raises(TypeError, match="floating"):
        make(params={**prob.params, "b": jnp.zeros(2, jnp.int32)})
    with pytest.raises(TypeError, match="NegativeLogLikelihood"):
        make(loss=lambda f, y: jnp.mean((f - y) ** 2))
    with pytest.raises(ValueError, match="num_samples"):
        _operator("mlp", kind).diagonal_estimate(key=jax.random.key(0), num_samples=0)


def test_error_messages_name_the_problem():
    prob = _problem("linear")
    with pytest.raises(TypeError, match=re.escape("int32")):
        curvature.ggn(prob.apply, prob.loss, {"w": jnp.zeros((3, 2), jnp.int32)}, prob.batch)
