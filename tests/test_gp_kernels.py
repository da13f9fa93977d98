"""natgrad.gp.kernels against NumPy references written from the formulas here (float64)."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from natgrad.gp import kernels
from natgrad.gp.kernels import (
    Linear,
    Matern12,
    Matern32,
    Matern52,
    Product,
    SquaredExponential,
    Sum,
    inverse_positive,
    positive,
)

jax.config.update("jax_enable_x64", True)  # before any array is created

D = 3
LENGTHSCALE = (0.7, 1.3, 2.1)
VARIANCE = 1.7


def _points(n, seed, d=D):
    return np.random.default_rng(seed).normal(size=(n, d))


# Shared inputs: eager JAX ops compile once per shape, so tests reuse these shapes.
X1 = _points(5, 0)
X2 = _points(4, 1)


# --------------------------------------------------------------------------------------------
# Independent NumPy references: loops over pairs, straight from the formulas.


def _scaled_distance(a, b, lengthscale):
    ell = np.broadcast_to(np.asarray(lengthscale, dtype=float), a.shape)
    return math.sqrt(sum(((a[d] - b[d]) / ell[d]) ** 2 for d in range(a.shape[0])))


def _ref_se(a, b, ell, var):
    return var * math.exp(-0.5 * _scaled_distance(a, b, ell) ** 2)


def _ref_m12(a, b, ell, var):
    return var * math.exp(-_scaled_distance(a, b, ell))


def _ref_m32(a, b, ell, var):
    r = _scaled_distance(a, b, ell)
    return var * (1 + math.sqrt(3) * r) * math.exp(-math.sqrt(3) * r)


def _ref_m52(a, b, ell, var):
    r = _scaled_distance(a, b, ell)
    return var * (1 + math.sqrt(5) * r + 5 * r**2 / 3) * math.exp(-math.sqrt(5) * r)


def _ref_gram(fn, x1, x2, *args):
    return np.array([[fn(a, b, *args) for b in x2] for a in x1])


STATIONARY = [
    (SquaredExponential, _ref_se),
    (Matern12, _ref_m12),
    (Matern32, _ref_m32),
    (Matern52, _ref_m52),
]

ALL_KERNELS = [
    SquaredExponential(LENGTHSCALE, VARIANCE),
    SquaredExponential(0.8, 0.5, ard=False),
    Matern12(LENGTHSCALE, VARIANCE),
    Matern32(1.1, VARIANCE),
    Matern52(0.9, 2.0, ard=False),
    Linear(0.6),
    Linear((0.5, 1.5, 2.5), ard=True),
    SquaredExponential(1.0, 1.0) + Linear(0.3),
    Matern32(0.5) * Linear(0.4),
]


def _reference(kernel, x1, x2):
    """Reference Gram matrix from the kernel's constructor values (= constrained init values)."""
    if isinstance(kernel, Sum):
        return sum(_reference(k, x1, x2) for k in kernel.kernels)
    if isinstance(kernel, Product):
        return math.prod(_reference(k, x1, x2) for k in kernel.kernels)
    if isinstance(kernel, Linear):
        var = np.broadcast_to(np.asarray(kernel.variance, dtype=float), (x1.shape[1],))
        return np.array([[sum(var * a * b) for b in x2] for a in x1])
    ref = dict((cls, fn) for cls, fn in STATIONARY)[type(kernel)]
    return _ref_gram(ref, x1, x2, kernel.lengthscale, kernel.variance)


# --------------------------------------------------------------------------------------------
# Values.


@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=repr)
def test_gram_matches_reference(kernel):
    x1, x2 = X1, X2
    params = kernel.init(D)
    np.testing.assert_allclose(kernel(params, x1, x2), _reference(kernel, x1, x2), rtol=1e-12)


@pytest.mark.parametrize("kernel", ALL_KERNELS, ids=repr)
def test_diag_is_diagonal_of_gram(kernel):
    x = X1
    params = kernel.init(D)
    diag = kernel.diag(params, x)
    assert diag.shape == (5,)
    np.testing.assert_allclose(diag, jnp.diagonal(kernel(params, x, x)), rtol=1e-12)


@pytest.mark.parametrize("cls", [cls for cls, _ in STATIONARY])
def test_stationary_gram_is_symmetric_psd(cls):
    kernel = cls(LENGTHSCALE, VARIANCE)
    x = _points(30, 3)  # more points than dimensions: a meaningful PSD check
    gram = np.asarray(kernel(kernel.init(D), x, x))
    np.testing.assert_allclose(gram, gram.T, rtol=1e-14, atol=0)
    eigenvalues = np.linalg.eigvalsh(gram)
    assert eigenvalues.min() > -1e-10 * eigenvalues.max()


@pytest.mark.parametrize("cls", [cls for cls, _ in STATIONARY])
def test_stationary_value_at_zero_distance_is_variance(cls):
    kernel = cls(LENGTHSCALE, VARIANCE)
    x = X1
    np.testing.assert_allclose(kernel(kernel.init(D), x, x)[0, 0], VARIANCE, rtol=1e-14)


def test_matern12_at_unit_distance():
    kernel = Matern12(lengthscale=2.0, variance=VARIANCE, ard=False)
    x1 = np.zeros_like(X1)
    x2 = np.broadcast_to([1.2, 1.6, 0.0], X2.shape)  # Euclidean distance 2 = one lengthscale
    np.testing.assert_allclose(
        kernel(kernel.init(D), x1, x2), np.full((5, 4), VARIANCE * math.exp(-1.0)), rtol=1e-14
    )


def test_scalar_lengthscale_broadcasts_with_ard():
    params = SquaredExponential(0.5).init(4)
    assert params["lengthscale"].shape == (4,)
    assert params["variance"].shape == ()
    assert SquaredExponential(0.5, ard=False).init(4)["lengthscale"].shape == ()
    assert Linear().init(4)["variance"].shape == ()
    assert Linear(ard=True).init(4)["variance"].shape == (4,)


# --------------------------------------------------------------------------------------------
# Gradients at r = 0.


def test_gradients_finite_on_training_gram():
    x = np.concatenate([X1[:4], X1[:1]])  # a repeated point: r = 0 off the diagonal too
    all_params = tuple(k.init(D) for k in ALL_KERNELS)

    @jax.jit  # one compilation for every kernel keeps the test fast
    def grads(all_params, x):
        def total(kernel, params, x):
            return jnp.sum(kernel(params, x, x)) + jnp.sum(kernel.diag(params, x))

        return tuple(
            jax.grad(lambda p, x, k=k: total(k, p, x), argnums=(0, 1))(p, x)
            for k, p in zip(ALL_KERNELS, all_params, strict=True)
        )

    for kernel, (grad_params, grad_x) in zip(ALL_KERNELS, grads(all_params, x), strict=True):
        for leaf in jax.tree_util.tree_leaves(grad_params):
            assert np.all(np.isfinite(leaf)), kernel
        assert np.all(np.isfinite(grad_x)), kernel
        assert np.any(grad_x != 0), kernel


# --------------------------------------------------------------------------------------------
# Combinations.


def test_sum_and_product_of_children():
    k1, k2, k3 = SquaredExponential(LENGTHSCALE), Matern32(0.5, 2.0), Linear(0.3)
    x1, x2 = X1, X2
    p1, p2, p3 = k1.init(D), k2.init(D), k3.init(D)
    np.testing.assert_allclose(
        Sum((k1, k2, k3))((p1, p2, p3), x1, x2),
        k1(p1, x1, x2) + k2(p2, x1, x2) + k3(p3, x1, x2),
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        Product((k1, k2, k3))((p1, p2, p3), x1, x2),
        k1(p1, x1, x2) * k2(p2, x1, x2) * k3(p3, x1, x2),
        rtol=1e-14,
    )
    np.testing.assert_allclose(
        Product((k1, k2)).diag((p1, p2), x1), k1.diag(p1, x1) * k2.diag(p2, x1), rtol=1e-14
    )


def test_operators_build_flat_combinations():
    k1, k2, k3 = SquaredExponential(), Matern12(), Linear()
    assert k1 + k2 == Sum((k1, k2))
    assert (k1 + k2) + k3 == Sum((k1, k2, k3))
    assert k1 + (k2 + k3) == Sum((k1, k2, k3))
    assert k1 * k2 * k3 == Product((k1, k2, k3))
    assert k1 * k2 + k3 == Sum((Product((k1, k2)), k3))
    params = (k1 + k2 + k3).init(D)
    assert isinstance(params, tuple) and len(params) == 3
    assert set(params[0]) == {"lengthscale", "variance"}
    assert set(params[2]) == {"variance"}
    with pytest.raises(TypeError):
        k1 + 1.0


def test_combination_rejects_wrong_params():
    kernel = SquaredExponential() + Linear()
    x = X1
    with pytest.raises(ValueError, match="one entry per kernel"):
        kernel((SquaredExponential().init(D),), x, x)
    with pytest.raises(ValueError, match="non-empty tuple"):
        Sum(())


# --------------------------------------------------------------------------------------------
# Positivity transform and hyperparameters.


def test_positive_inverse_round_trip():
    values = np.logspace(-6, 6, 15).reshape(X1.shape)  # X1's shape: reuses compiled ops
    np.testing.assert_allclose(positive(inverse_positive(values)), values, rtol=1e-12)
    raw = np.linspace(-20.0, 20.0, 15).reshape(X1.shape)
    np.testing.assert_allclose(inverse_positive(positive(raw)), raw, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(inverse_positive(math.log(2.0)), 0.0, atol=1e-15)


def test_hyperparameters_return_initial_values():
    kernel = SquaredExponential(LENGTHSCALE, VARIANCE) + Linear(0.3) * Matern52(2.0, ard=False)
    hyper = kernel.hyperparameters(kernel.init(D))
    np.testing.assert_allclose(hyper[0]["lengthscale"], LENGTHSCALE, rtol=1e-12)
    np.testing.assert_allclose(hyper[0]["variance"], VARIANCE, rtol=1e-12)
    np.testing.assert_allclose(hyper[1][0]["variance"], 0.3, rtol=1e-12)
    np.testing.assert_allclose(hyper[1][1]["lengthscale"], 2.0, rtol=1e-12)
    assert hyper[1][1]["lengthscale"].shape == ()


# --------------------------------------------------------------------------------------------
# Errors.


@pytest.mark.parametrize("cls", [SquaredExponential, Matern12, Matern32, Matern52])
def test_invalid_constructor_values(cls):
    name = cls.__name__
    with pytest.raises(ValueError, match=f"{name}: lengthscale must be positive and finite"):
        cls(lengthscale=-1.0)
    with pytest.raises(ValueError, match=f"{name}: variance must be positive and finite"):
        cls(variance=0.0)
    with pytest.raises(ValueError, match="lengthscale must be positive and finite"):
        cls(lengthscale=(1.0, math.inf))
    with pytest.raises(ValueError, match="needs ard=True"):
        cls(lengthscale=(1.0, 2.0), ard=False)
    with pytest.raises(ValueError, match="Linear: variance must be positive"):
        Linear(variance=math.nan)


def test_constructor_normalizes_values():
    assert SquaredExponential(np.float32(0.5)).lengthscale == 0.5
    assert isinstance(SquaredExponential(jnp.asarray(2.0)).lengthscale, float)
    assert SquaredExponential(np.array([1.0, 2.0])).lengthscale == (1.0, 2.0)
    assert SquaredExponential(1) == SquaredExponential(1.0)


def test_input_shape_errors():
    kernel = SquaredExponential(LENGTHSCALE)
    params = kernel.init(D)
    with pytest.raises(ValueError, match=r"x1 must be 2-D with shape \(N, D\), got shape \(4,\)"):
        kernel(params, np.zeros(4), np.zeros((2, D)))
    with pytest.raises(ValueError, match=r"same number of input dimensions.*\(4, 3\) and \(2, 2\)"):
        kernel(params, np.zeros((4, D)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match=r"lengthscale parameter of shape \(3,\).*D = 2"):
        kernel(params, np.zeros((4, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="x must be 2-D"):
        kernel.diag(params, np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="3 ARD values but input_dim is 2"):
        kernel.init(2)
    with pytest.raises(ValueError, match="non-finite"):
        kernel(params, np.full((2, D), np.nan), np.zeros((2, D)))
    with pytest.raises(ValueError, match=r"Linear: variance parameter of shape \(2,\)"):
        Linear(ard=True)(Linear(ard=True).init(2), np.zeros((1, D)), np.zeros((1, D)))


def test_shape_errors_under_jit():
    kernel = Matern32(ard=True)
    params = kernel.init(2)
    with pytest.raises(ValueError, match=r"lengthscale parameter of shape \(2,\)"):
        jax.jit(kernel.__call__)(params, jnp.zeros((3, D)), jnp.zeros((3, D)))


# --------------------------------------------------------------------------------------------
# Hashability, jit, dtypes.


def test_kernels_are_hashable_static_args():
    traces = []

    def gram(kernel, params, x):
        traces.append(kernel)
        return kernel(params, x, x)

    jitted = jax.jit(gram, static_argnums=0)
    x = jnp.asarray(X1)
    k1 = SquaredExponential(0.5) + Linear(0.2)
    params = k1.init(D)
    out1 = jitted(k1, params, x)
    out2 = jitted(SquaredExponential(0.5) + Linear(0.2), params, x)  # equal, new object
    assert len(traces) == 1
    np.testing.assert_allclose(out1, out2)
    np.testing.assert_allclose(jax.jit(k1.__call__)(params, x, x), k1(params, x, x), rtol=1e-14)
    for i, k in enumerate(ALL_KERNELS):
        assert hash(k) == hash(dataclasses.replace(k))
        assert [k == other for other in ALL_KERNELS] == [j == i for j in range(len(ALL_KERNELS))]
    assert Matern12() != SquaredExponential()


@pytest.mark.parametrize("kernel", ALL_KERNELS[::2], ids=repr)  # every code path, half the cost
def test_float32_in_float32_out(kernel):
    params = kernel.init(D, dtype=jnp.float32)
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree_util.tree_leaves(params))
    x = X1.astype(np.float32)
    assert kernel(params, x, x[:2]).dtype == jnp.float32
    assert kernel.diag(params, x).dtype == jnp.float32
    np.testing.assert_allclose(kernel(params, x, x[:2]), _reference(kernel, x, x[:2]), rtol=1e-4)


def test_module_exports():
    assert set(kernels.__all__) >= {"Kernel", "positive", "inverse_positive", "Sum", "Product"}
