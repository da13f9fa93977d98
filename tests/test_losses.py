"""natgrad.losses against closed forms written out here (float64).

Every loss is checked against an independent per-example negative log-likelihood ℓ(fᵢ, yᵢ)
written in this file (``_REFERENCES``): the values in NumPy, the output gradient, Hessian and
Fisher factor against ``jax.grad`` / ``jax.hessian`` of the same closed form in ``jax.numpy``.
The Fisher identity E_y[r rᵀ] = H is checked exactly by enumerating every outcome (softmax,
sigmoid) or statistically from samples (Gaussian).
"""

import dataclasses
import itertools
import math
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from natgrad import losses
from natgrad.losses import GaussianNLL, SigmoidCrossEntropy, SoftmaxCrossEntropy, squared_error

jax.config.update("jax_enable_x64", True)  # before any array is created

B = 4  # batch size of every case
VARIANCE = 0.5


# --------------------------------------------------------------------------------------------
# Independent closed forms: one example, ``xp`` is numpy or jax.numpy.
# --------------------------------------------------------------------------------------------


def _logsumexp(xp, f):
    m = xp.max(f)
    return m + xp.log(xp.sum(xp.exp(f - m)))


def _ce_label(xp, f, y):
    """−log softmax(f)_y = logsumexp(f) − f_y."""
    return _logsumexp(xp, f) - f[y]


def _ce_probs(xp, f, y):
    """−Σ_c y_c log softmax(f)_c."""
    return -xp.sum(y * (f - _logsumexp(xp, f)))


def _bernoulli(xp, f, y):
    """−Σ [y log σ(f) + (1 − y) log(1 − σ(f))], σ(f) = 1/(1 + e^{−f})."""
    s = 1.0 / (1.0 + xp.exp(-f))
    return -xp.sum(y * xp.log(s) + (1.0 - y) * xp.log(1.0 - s))


def _gaussian(variance, constant):
    """−log N(y; f, σ²I) (or without the normalizing constant)."""

    def nll(xp, f, y):
        value = xp.sum((y - f) ** 2) / (2.0 * variance)
        if constant:
            value = value + 0.5 * xp.size(f) * xp.log(2.0 * math.pi * variance)
        return value

    return nll


def _sigmoid_np(f):
    return 1.0 / (1.0 + np.exp(-f))


def _softmax_np(f):
    e = np.exp(f - f.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


# --------------------------------------------------------------------------------------------
# Cases: (loss with reduction "mean", outputs, targets, reference ℓ)
# --------------------------------------------------------------------------------------------


def _case(name):
    rng = np.random.default_rng(100 + CASES.index(name))
    if name == "softmax-labels":
        f = rng.standard_normal((B, 3)) * 1.5
        return SoftmaxCrossEntropy(), f, rng.integers(0, 3, size=B), _ce_label
    if name == "softmax-probs":
        f = rng.standard_normal((B, 3)) * 1.5
        return SoftmaxCrossEntropy(), f, rng.dirichlet(np.ones(3), size=B), _ce_probs
    if name == "sigmoid-B":
        f = rng.standard_normal(B) * 1.5
        return SigmoidCrossEntropy(), f, rng.integers(0, 2, size=B).astype(float), _bernoulli
    if name == "sigmoid-BK":
        f = rng.standard_normal((B, 3)) * 1.5
        return SigmoidCrossEntropy(), f, rng.uniform(size=(B, 3)), _bernoulli
    if name == "gauss-const":
        f, y = rng.standard_normal((2, B, 2))
        return GaussianNLL(VARIANCE), f, y, _gaussian(VARIANCE, True)
    if name == "gauss-noconst":
        f, y = rng.standard_normal((2, B, 2))
        return GaussianNLL(VARIANCE, include_constant=False), f, y, _gaussian(VARIANCE, False)
    if name == "squared":
        f, y = rng.standard_normal((2, B, 3))
        return squared_error(), f, y, _gaussian(1.0, False)
    raise KeyError(name)


CASES = (
    "softmax-labels",
    "softmax-probs",
    "sigmoid-B",
    "sigmoid-BK",
    "gauss-const",
    "gauss-noconst",
    "squared",
)
REDUCTIONS = ("mean", "sum")


def _setup(name, reduction="mean"):
    loss, f, y, ref = _case(name)
    if name == "squared":
        loss = squared_error(reduction=reduction)
    else:
        loss = dataclasses.replace(loss, reduction=reduction)
    return loss, jnp.asarray(f), jnp.asarray(y), ref


def _flat_event(x):
    """(B, *event) -> (B, E)."""
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1)


def _ref_grads(ref, f, y):
    """∇_{fᵢ} ℓ(fᵢ, yᵢ) per example by jax.grad of the closed form (jitted: one compilation)."""
    return jax.jit(jax.vmap(jax.grad(lambda fi, yi: ref(jnp, fi, yi))))(f, y)


def _ref_hessians(ref, f, y):
    """∇²_{fᵢ} ℓ(fᵢ, yᵢ) per example by jax.hessian of the closed form: (B, E, E)."""
    h = jax.jit(jax.vmap(jax.hessian(lambda fi, yi: ref(jnp, fi, yi))))(f, y)
    event = math.prod(f.shape[1:])
    return np.asarray(h).reshape(f.shape[0], event, event)


# --------------------------------------------------------------------------------------------
# Values and derivatives
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name", CASES)
def test_value_matches_closed_form(name, reduction):
    loss, f, y, ref = _setup(name, reduction)
    f_np, y_np = np.asarray(f), np.asarray(y)
    per = np.array([ref(np, f_np[i], y_np[i]) for i in range(B)])
    c = 1.0 / B if reduction == "mean" else 1.0
    # Same formula up to rearrangement (log-sum-exp, softplus vs log σ): a few ulps of O(1).
    np.testing.assert_allclose(loss.per_example(f, y), per, rtol=1e-13)
    np.testing.assert_allclose(loss(f, y), c * per.sum(), rtol=1e-13)
    assert loss.batch_factor(f) == c
    assert loss(f, y).shape == ()


@pytest.mark.parametrize("name", CASES)
def test_output_gradient_is_grad_of_per_example_nll(name):
    loss, f, y, ref = _setup(name)
    expected = _ref_grads(ref, f, y)
    got = loss.output_gradient(f, y)
    assert got.shape == f.shape
    # Closed forms p − y, (f − y)/σ²: O(1) entries, rounding only.
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-14)
    # Per example, without the batch factor: the reduction does not enter.
    np.testing.assert_array_equal(_setup(name, "sum")[0].output_gradient(f, y), got)


@pytest.mark.parametrize("name", CASES)
def test_hessian_vp_and_fisher_factor_match_jax_hessian(name):
    loss, f, y, ref = _setup(name)
    h = _ref_hessians(ref, f, y)
    v = jnp.asarray(np.random.default_rng(3).standard_normal(f.shape))
    hv = loss.hessian_vp(f, v)
    assert hv.shape == f.shape
    expected = np.einsum("bij,bj->bi", h, _flat_event(v))
    # Entries O(1) (|H| ≤ 2, |v| ≲ 3): rounding only.
    np.testing.assert_allclose(_flat_event(hv), expected, rtol=1e-12, atol=1e-14)

    cols = np.asarray(loss.fisher_factor(f))
    assert cols.shape[1:] == f.shape
    cols = cols.reshape(cols.shape[0], B, -1)  # (K, B, E)
    np.testing.assert_allclose(
        np.einsum("kbi,kbj->bij", cols, cols), h, rtol=1e-12, atol=1e-14
    )  # Σₖ bₖbₖᵀ = H; O(1) entries

    # Per example, without the batch factor: the reduction does not enter.
    summed = _setup(name, "sum")[0]
    np.testing.assert_array_equal(summed.hessian_vp(f, v), hv)
    np.testing.assert_array_equal(summed.fisher_factor(f), loss.fisher_factor(f))


@pytest.mark.parametrize("name", ["softmax-labels", "softmax-probs"])
def test_softmax_fisher_identity_by_enumerating_classes(name):
    loss, f, y, ref = _setup(name)
    p = _softmax_np(np.asarray(f))  # (B, C)
    num_classes = f.shape[-1]
    expected = np.zeros((B, num_classes, num_classes))
    for c in range(num_classes):
        r = np.asarray(loss.output_gradient(f, jnp.full((B,), c)))  # r(y = c), (B, C)
        expected += p[:, c, None, None] * np.einsum("bi,bj->bij", r, r)
    # E_y[r rᵀ] summed exactly over the C outcomes; H from jax.hessian, independent of y.
    np.testing.assert_allclose(expected, _ref_hessians(ref, f, y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["sigmoid-B", "sigmoid-BK"])
def test_sigmoid_fisher_identity_by_enumerating_outcomes(name):
    loss, f, y, ref = _setup(name)
    p = _sigmoid_np(np.asarray(f))
    event_shape = f.shape[1:]
    event = math.prod(event_shape)
    expected = np.zeros((B, event, event))
    for bits in itertools.product((0.0, 1.0), repeat=event):
        outcome = np.broadcast_to(np.reshape(bits, event_shape), f.shape)  # same y for all i
        weight = np.prod((p**outcome * (1 - p) ** (1 - outcome)).reshape(B, event), axis=1)
        r = _flat_event(loss.output_gradient(f, jnp.asarray(outcome)))
        expected += weight[:, None, None] * np.einsum("bi,bj->bij", r, r)
    # All 2^K outcomes enumerated: exact up to rounding.
    np.testing.assert_allclose(expected, _ref_hessians(ref, f, y), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["gauss-const", "squared"])
def test_gaussian_fisher_identity_from_samples(name):
    loss, f, _, _ = _setup(name)
    num_samples = 5_000
    samples = loss.sample(f, key=jax.random.key(0), num_samples=num_samples)
    r = jax.vmap(lambda ys: loss.output_gradient(f, ys))(samples)
    r = np.asarray(r).reshape(-1, math.prod(f.shape[1:]))  # n = S·B iid draws of r ∼ N(0, I/σ²)
    n = r.shape[0]
    second_moment = r.T @ r / n
    variance = loss.variance
    # Entry (j, l) averages n iid products with standard deviation √2/σ² (j = l) or 1/σ²
    # (j ≠ l): standard error ≤ √(2/n)/σ² = 0.01/σ² here (n = 20000); 5 standard errors.
    tol = 5 * math.sqrt(2 / n) / variance
    np.testing.assert_allclose(second_moment, np.eye(r.shape[1]) / variance, rtol=0, atol=tol)


def test_softmax_fisher_factor_with_an_extra_event_axis():
    # Logits (B, T, C) with labels (B, T) are accepted by per_example, output_gradient,
    # hessian_vp and sample (labels must have shape outputs.shape[:-1]); H is block diagonal.
    f = jnp.asarray(np.random.default_rng(5).standard_normal((2, 3, 4)))
    loss = SoftmaxCrossEntropy()
    p = _softmax_np(np.asarray(f))
    expected = np.einsum("btc,cd->btcd", p, np.eye(4)) - np.einsum("btc,btd->btcd", p, p)
    cols = np.asarray(loss.fisher_factor(f))  # expected shape (C, B, T, C)
    np.testing.assert_allclose(
        np.einsum("kbtc,kbtd->btcd", cols, cols), expected, rtol=1e-12, atol=1e-14
    )


# --------------------------------------------------------------------------------------------
# Sampling
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "dtype"),
    [
        ("softmax-labels", jnp.float64),
        ("softmax-probs", jnp.float32),
        ("sigmoid-B", jnp.float64),
        ("sigmoid-BK", jnp.float32),
        ("gauss-const", jnp.float64),
        ("squared", jnp.float32),
    ],
)
def test_sample_shapes_and_dtypes(name, dtype):
    loss, f, _, _ = _setup(name)
    f = f.astype(dtype)
    s = loss.sample(f, key=jax.random.key(1), num_samples=7)
    np.testing.assert_array_equal(s, loss.sample(f, key=jax.random.key(1), num_samples=7))
    if isinstance(loss, SoftmaxCrossEntropy):
        # Class labels (also when the data's targets are probabilities).
        assert s.shape == (7, *f.shape[:-1])
        assert jnp.issubdtype(s.dtype, jnp.integer)
        assert np.all((np.asarray(s) >= 0) & (np.asarray(s) < f.shape[-1]))
    else:
        assert s.shape == (7, *f.shape)
        assert s.dtype == dtype
    if isinstance(loss, SigmoidCrossEntropy):
        assert set(np.unique(np.asarray(s))) <= {0.0, 1.0}
    # The samples are valid targets for the loss.
    assert np.isfinite(float(loss(f, s[0])))


NUM_DRAWS = 20_000


def test_softmax_sample_frequencies_match_probabilities():
    f = jnp.asarray(np.random.default_rng(11).standard_normal((3, 4)))
    s = np.asarray(SoftmaxCrossEntropy().sample(f, key=jax.random.key(2), num_samples=NUM_DRAWS))
    freq = np.stack([(s == c).mean(axis=0) for c in range(4)], axis=-1)  # (B, C)
    p = _softmax_np(np.asarray(f))
    # Each frequency is a mean of S Bernoulli(p) draws: standard error √(p(1−p)/S) ≤ 0.0035.
    np.testing.assert_array_less(np.abs(freq - p), 5 * np.sqrt(p * (1 - p) / NUM_DRAWS))


def test_sigmoid_sample_means_match_probabilities():
    f = jnp.asarray(np.random.default_rng(12).standard_normal((3, 2)))
    s = np.asarray(SigmoidCrossEntropy().sample(f, key=jax.random.key(3), num_samples=NUM_DRAWS))
    p = _sigmoid_np(np.asarray(f))
    # Mean of S Bernoulli(p) draws: standard error √(p(1−p)/S); 5 standard errors.
    np.testing.assert_array_less(np.abs(s.mean(axis=0) - p), 5 * np.sqrt(p * (1 - p) / NUM_DRAWS))


def test_gaussian_sample_mean_and_variance():
    f = jnp.asarray(np.random.default_rng(13).standard_normal((3, 2)))
    s = np.asarray(GaussianNLL(0.7).sample(f, key=jax.random.key(4), num_samples=NUM_DRAWS))
    # Sample mean: standard error σ/√S; sample variance: σ²·√(2/(S−1)). 5 standard errors.
    np.testing.assert_allclose(s.mean(axis=0), f, rtol=0, atol=5 * math.sqrt(0.7 / NUM_DRAWS))
    np.testing.assert_allclose(
        s.var(axis=0, ddof=1), 0.7, rtol=0, atol=5 * 0.7 * math.sqrt(2 / (NUM_DRAWS - 1))
    )


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "make",
    [
        lambda r: SoftmaxCrossEntropy(reduction=r),
        lambda r: SigmoidCrossEntropy(reduction=r),
        lambda r: GaussianNLL(reduction=r),
        lambda r: squared_error(reduction=r),
    ],
    ids=["softmax", "sigmoid", "gaussian", "squared"],
)
def test_unknown_reduction_is_a_value_error_naming_it(make):
    with pytest.raises(ValueError, match=r"unknown reduction 'average'.*mean.*sum"):
        make("average")


def test_softmax_label_shape_errors_mention_the_shapes():
    f = jnp.zeros((4, 3))
    with pytest.raises(ValueError, match=re.escape("shape (4,)") + ".*" + re.escape("(5,)")):
        SoftmaxCrossEntropy()(f, jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match=re.escape("(4, 3)") + ".*" + re.escape("got (4, 2)")):
        SoftmaxCrossEntropy().output_gradient(f, jnp.full((4, 2), 0.5))
    with pytest.raises(ValueError, match=r"at least 2 dimensions.*\(4,\)"):
        SoftmaxCrossEntropy().fisher_factor(jnp.zeros(4))


@pytest.mark.parametrize("loss", [SigmoidCrossEntropy(), GaussianNLL(0.5)], ids=["sig", "gauss"])
def test_target_shape_mismatch_is_a_value_error(loss):
    with pytest.raises(ValueError, match=re.escape("(4, 2)") + ".*" + re.escape("(4, 3)")):
        loss(jnp.zeros((4, 3)), jnp.zeros((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        loss.output_gradient(jnp.zeros((4, 3)), jnp.zeros((3,)))


@pytest.mark.parametrize(
    "loss",
    [SoftmaxCrossEntropy(), SigmoidCrossEntropy(), GaussianNLL(0.5)],
    ids=["softmax", "sigmoid", "gauss"],
)
def test_integer_outputs_are_a_type_error(loss):
    f = jnp.zeros((4, 3), jnp.int32)
    y = jnp.zeros(4, jnp.int32) if isinstance(loss, SoftmaxCrossEntropy) else jnp.zeros((4, 3))
    for call in (
        lambda: loss(f, y),
        lambda: loss.hessian_vp(f, f),
        lambda: loss.fisher_factor(f),
        lambda: loss.sample(f, key=jax.random.key(0)),
    ):
        with pytest.raises(TypeError, match="floating"):
            call()


@pytest.mark.parametrize("variance", [0.0, -1.0, float("nan"), float("inf"), True, "1.0", None])
def test_invalid_variance_is_a_value_error(variance):
    with pytest.raises(ValueError, match="variance must be a positive finite number"):
        GaussianNLL(variance)


@pytest.mark.parametrize("variance", [2, np.float64(0.5), np.float32(3.0), jnp.asarray(0.7)])
def test_numpy_and_jax_scalar_variances_are_accepted_as_floats(variance):
    loss = GaussianNLL(variance)
    assert type(loss.variance) is float
    assert loss.variance == pytest.approx(float(variance))


# --------------------------------------------------------------------------------------------
# Hashing and jit
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", CASES)
def test_losses_are_hashable_static_jit_arguments(name):
    loss, f, y, _ = _setup(name)
    twin = dataclasses.replace(loss)
    assert twin is not loss and twin == loss and hash(twin) == hash(loss)
    assert dataclasses.replace(loss, reduction="sum") != loss
    assert isinstance(loss, losses.NegativeLogLikelihood)

    traces = []

    @jax.jit
    def value_and_gradient(f, y):
        traces.append(None)
        return loss(f, y), loss.output_gradient(f, y)

    def static(loss_, f, y):
        traces.append(None)
        return loss_(f, y)

    jitted = jax.jit(static, static_argnums=0)
    # Compiled vs eager: the same operations, possibly fused; O(1) values, rounding only.
    np.testing.assert_allclose(jitted(loss, f, y), loss(f, y), rtol=1e-13)
    np.testing.assert_allclose(jitted(twin, f, y), loss(f, y), rtol=1e-13)
    assert len(traces) == 1  # the equal twin hits the cache
    value, gradient = value_and_gradient(f, y)
    np.testing.assert_allclose(value, loss(f, y), rtol=1e-13)
    np.testing.assert_allclose(gradient, loss.output_gradient(f, y), rtol=1e-13, atol=1e-15)
