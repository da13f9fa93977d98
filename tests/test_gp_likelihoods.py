"""natgrad.gp.likelihoods against independent references (float64).

Every expectation under q(f) = N(m, v) is checked per data point against adaptive quadrature
(scipy.integrate.quad; a dense trapezoid grid in 2-D) of a log-density written here with
math/scipy.special, so the reference uses neither the module's closed forms nor its
Gauss–Hermite rule. Closed forms are also checked against a Gauss–Hermite rule applied, in this
file, to the module's own ``log_density`` (an independent path). RobustMax's P(f_y = max) is
checked against the 2-class closed form Φ((m_y − m_j)/√(v_y + v_j)) and against Monte Carlo.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, special, stats

try:
    from natgrad.gp import likelihoods
except ImportError:  # pragma: no cover - without namespace-package support
    import natgrad.gp.likelihoods as likelihoods

from natgrad.quadrature import gauss_hermite

jax.config.update("jax_enable_x64", True)  # before any array is created

N = 3
# Closed forms are exact: only the reference quadrature's error (~1e-10) remains.
CLOSED_TOL = 1e-8
# 20-point Gauss–Hermite is exact for polynomials of degree < 40; on the smooth (analytic)
# integrands used here with moderate variances (v ≤ 1) the truncation error is ~1e-9 relative,
# so 1e-6 leaves a wide margin while still catching any wrong formula.
GH_RTOL = 1e-6


def _latents(seed, num_latent, var_range=(0.2, 1.0)):
    rng = np.random.default_rng(seed)
    mean = rng.normal(scale=0.8, size=(N, num_latent))
    var = rng.uniform(*var_range, size=(N, num_latent))
    return mean, var


# --------------------------------------------------------------------------------------------
# Independent references: elementwise log p(y | f) and conditional moments, in numpy/scipy
# --------------------------------------------------------------------------------------------

GAUSS_VAR, T_DF, T_SCALE, BINSIZE = 0.3, 4.0, 0.7, 1.5


def _ref_gaussian(y, f):
    return -0.5 * math.log(2 * math.pi * GAUSS_VAR) - 0.5 * (y - f) ** 2 / GAUSS_VAR


def _ref_student(y, f):
    nu, s = T_DF, T_SCALE
    return (
        math.lgamma((nu + 1) / 2)
        - math.lgamma(nu / 2)
        - 0.5 * math.log(nu * math.pi * s**2)
        - 0.5 * (nu + 1) * math.log1p(((y - f) / s) ** 2 / nu)
    )


def _ref_probit(y, f):
    return special.log_ndtr((2 * y - 1) * f)


def _ref_logit(y, f):
    return -np.logaddexp(0.0, -(2 * y - 1) * f)


def _ref_poisson(y, f):
    rate = BINSIZE * math.exp(f)
    return y * math.log(rate) - rate - math.lgamma(y + 1)


# name -> (likelihood, reference log p, conditional mean, conditional variance, targets sampler)
CASES = {
    "gaussian": (
        likelihoods.Gaussian(variance=GAUSS_VAR, num_outputs=2),
        _ref_gaussian,
        lambda f: f,
        lambda f: GAUSS_VAR,
        lambda rng, shape: rng.normal(size=shape),
    ),
    "student_t": (
        likelihoods.StudentT(df=T_DF, scale=T_SCALE),
        _ref_student,
        lambda f: f,
        lambda f: T_SCALE**2 * T_DF / (T_DF - 2),
        lambda rng, shape: rng.normal(size=shape),
    ),
    "probit": (
        likelihoods.Bernoulli("probit", num_outputs=2),
        _ref_probit,
        special.ndtr,
        lambda f: special.ndtr(f) * special.ndtr(-f),
        lambda rng, shape: rng.integers(0, 2, size=shape).astype(float),
    ),
    "logit": (
        likelihoods.Bernoulli("logit"),
        _ref_logit,
        special.expit,
        lambda f: special.expit(f) * special.expit(-f),
        lambda rng, shape: rng.integers(0, 2, size=shape).astype(float),
    ),
    "poisson": (
        likelihoods.Poisson(binsize=BINSIZE),
        _ref_poisson,
        lambda f: BINSIZE * math.exp(f),
        lambda f: BINSIZE * math.exp(f),
        lambda rng, shape: rng.poisson(2.0, size=shape).astype(float),
    ),
}
CLOSED_VE = {"gaussian", "poisson"}
CLOSED_LPD = {"gaussian", "probit"}
CLOSED_MOMENTS = {"gaussian", "student_t", "probit", "poisson"}


def _gauss_expect(h, m, v):
    """∫ h(f) N(f; m, v) df by adaptive quadrature over m ± 12√v."""
    s = math.sqrt(v)
    c = 1 / (s * math.sqrt(2 * math.pi))
    value, _ = integrate.quad(
        lambda f: h(f) * c * math.exp(-0.5 * ((f - m) / s) ** 2),
        m - 12 * s,
        m + 12 * s,
        epsabs=1e-13,
        limit=200,
    )
    return value


def _case(name, seed=0):
    lik, ref, cond_mean, cond_var, sample = CASES[name]
    mean, var = _latents(seed, lik.num_latent)
    y = sample(np.random.default_rng(seed + 1), mean.shape)
    return lik, ref, cond_mean, cond_var, y, mean, var


# log ∫ p(y | f) q(f) df by Gauss–Hermite converges more slowly than E_q[log p]: p(y | f) is
# peaked in f (Poisson with y ≥ 2, Student-t whose complex poles f = y ± i·s√ν lie at distance
# ≈ 1.4 from the real axis, comparable to √v), and 20 nodes leave a ~1e-5 relative error. The
# default rule is checked at 1e-4 and a 100-node rule at GH_RTOL.
GH_LPD_RTOL = 1e-4


def _tol(name, closed):
    return {"rtol": 0, "atol": CLOSED_TOL} if closed else {"rtol": GH_RTOL, "atol": 1e-9}


@pytest.mark.parametrize("name", CASES)
def test_variational_expectations_against_quad(name):
    lik, ref, _, _, y, mean, var = _case(name)
    got = lik.variational_expectations(lik.init(), y, mean, var)
    expected = [
        sum(
            _gauss_expect(lambda f, yy=y[n, l]: ref(yy, f), mean[n, l], var[n, l])
            for l in range(lik.num_latent)
        )
        for n in range(N)
    ]
    assert got.shape == (N,)
    np.testing.assert_allclose(got, expected, **_tol(name, name in CLOSED_VE))


@pytest.mark.parametrize("name", CASES)
def test_log_predictive_density_against_quad(name):
    lik, ref, _, _, y, mean, var = _case(name, seed=3)
    got = lik.log_predictive_density(lik.init(), y, mean, var)
    expected = [
        sum(
            math.log(_gauss_expect(lambda f, yy=y[n, l]: np.exp(ref(yy, f)), mean[n, l], var[n, l]))
            for l in range(lik.num_latent)
        )
        for n in range(N)
    ]
    assert got.shape == (N,)
    if name in CLOSED_LPD:
        np.testing.assert_allclose(got, expected, **_tol(name, closed=True))
    else:
        np.testing.assert_allclose(got, expected, rtol=GH_LPD_RTOL)
        more = dataclasses.replace(lik, num_quadrature_points=100)
        np.testing.assert_allclose(
            more.log_predictive_density(lik.init(), y, mean, var), expected, rtol=GH_RTOL
        )


@pytest.mark.parametrize("name", CASES)
def test_predict_mean_variance_against_quad(name):
    lik, _, cond_mean, cond_var, _, mean, var = _case(name, seed=5)
    got_mean, got_var = lik.predict_mean_variance(lik.init(), mean, var)
    exp_mean = np.vectorize(lambda m, v: _gauss_expect(cond_mean, m, v))(mean, var)
    second = np.vectorize(
        lambda m, v: _gauss_expect(lambda f: cond_var(f) + cond_mean(f) ** 2, m, v)
    )(mean, var)
    assert got_mean.shape == got_var.shape == mean.shape
    tol = _tol(name, name in CLOSED_MOMENTS)
    np.testing.assert_allclose(got_mean, exp_mean, **tol)
    np.testing.assert_allclose(got_var, second - exp_mean**2, **tol)


def _gh_from_log_density(lik, params, y, mean, var, num_points=60):
    """(E_q[log p], log E_q[p]) by Gauss–Hermite over the module's ``log_density``, L = 1."""
    z, w = gauss_hermite(num_points)
    logp = np.stack(
        [np.asarray(lik.log_density(params, y, mean + np.sqrt(var) * zi)) for zi in z], axis=-1
    )  # (N, P)
    return logp @ w, special.logsumexp(logp, b=w, axis=-1)


@pytest.mark.parametrize(
    "lik",
    [likelihoods.Gaussian(variance=0.4), likelihoods.Poisson(binsize=0.5), likelihoods.Bernoulli()],
    ids=["gaussian", "poisson", "probit"],
)
def test_closed_forms_against_gauss_hermite(lik):
    """Closed forms against a 60-node Gauss–Hermite rule over the same likelihood's log p."""
    rng = np.random.default_rng(7)
    mean, var = rng.normal(scale=0.5, size=(N, 1)), rng.uniform(0.05, 0.3, size=(N, 1))
    y = rng.integers(0, 2, size=(N, 1)).astype(float)  # valid targets for all three
    params = lik.init()
    ve, lpd = _gh_from_log_density(lik, params, y, mean, var)
    np.testing.assert_allclose(lik.variational_expectations(params, y, mean, var), ve, rtol=1e-10)
    np.testing.assert_allclose(lik.log_predictive_density(params, y, mean, var), lpd, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# Heteroscedastic Gaussian: 2-D references
# --------------------------------------------------------------------------------------------


def _hetero_case(seed=11):
    mean, var = _latents(seed, 2, var_range=(0.1, 0.5))
    y = np.random.default_rng(seed).normal(size=N)
    return likelihoods.HeteroscedasticGaussian(), y, mean, var


def _gauss_expect_2d(h, m, v, num=1201):
    """∫∫ h(f, g) N(f; m₀, v₀) N(g; m₁, v₁) df dg by the trapezoid rule on m ± 10√v.

    For smooth integrands decaying like a Gaussian the trapezoid rule converges geometrically;
    with 1201 nodes per axis (spacing √v/60) it is exact to rounding here.
    """
    s = np.sqrt(v)
    f = np.linspace(m[0] - 10 * s[0], m[0] + 10 * s[0], num)
    g = np.linspace(m[1] - 10 * s[1], m[1] + 10 * s[1], num)
    pf = np.exp(-0.5 * ((f - m[0]) / s[0]) ** 2) / (s[0] * math.sqrt(2 * math.pi))
    pg = np.exp(-0.5 * ((g - m[1]) / s[1]) ** 2) / (s[1] * math.sqrt(2 * math.pi))
    values = h(f[:, None], g[None, :]) * pf[:, None] * pg[None, :]
    return integrate.trapezoid(integrate.trapezoid(values, g, axis=1), f)


def _ref_hetero(y, f, g):
    return -0.5 * (math.log(2 * math.pi) + g) - 0.5 * (y - f) ** 2 * np.exp(-g)


def test_heteroscedastic_against_dense_grid():
    lik, y, mean, var = _hetero_case()
    ve = lik.variational_expectations({}, y, mean, var)
    lpd = lik.log_predictive_density({}, y, mean, var)
    pred_mean, pred_var = lik.predict_mean_variance({}, mean, var)
    assert ve.shape == lpd.shape == (N,) and pred_mean.shape == pred_var.shape == (N, 1)
    for n in range(N):
        ref_ve = _gauss_expect_2d(lambda f, g, n=n: _ref_hetero(y[n], f, g), mean[n], var[n])
        ref_lpd = math.log(
            _gauss_expect_2d(lambda f, g, n=n: np.exp(_ref_hetero(y[n], f, g)), mean[n], var[n])
        )
        # E[y²] = E[f² + e^g]
        ref_second = _gauss_expect_2d(lambda f, g: f**2 + np.exp(g), mean[n], var[n])
        np.testing.assert_allclose(ve[n], ref_ve, rtol=0, atol=CLOSED_TOL)
        np.testing.assert_allclose(lpd[n], ref_lpd, rtol=GH_RTOL)
        np.testing.assert_allclose(pred_mean[n, 0], mean[n, 0], rtol=0, atol=1e-14)
        np.testing.assert_allclose(pred_var[n, 0], ref_second - mean[n, 0] ** 2, rtol=1e-8)


def test_heteroscedastic_closed_form_against_gauss_hermite():
    lik, y, mean, var = _hetero_case(seed=12)
    z, w = gauss_hermite(40)
    f = mean[:, 0, None, None] + np.sqrt(var[:, 0, None, None]) * z[None, :, None]
    g = mean[:, 1, None, None] + np.sqrt(var[:, 1, None, None]) * z[None, None, :]
    f, g = np.broadcast_arrays(f, g)  # (N, P, P)
    flat = np.stack([f.reshape(N, -1), g.reshape(N, -1)], axis=-1)  # (N, P², 2)
    logp = jax.vmap(lambda fk: lik.log_density({}, y, fk), in_axes=1, out_axes=1)(flat)
    expected = np.asarray(logp).reshape(N, 40, 40) @ w @ w
    np.testing.assert_allclose(lik.variational_expectations({}, y, mean, var), expected, rtol=1e-10)


# --------------------------------------------------------------------------------------------
# RobustMax
# --------------------------------------------------------------------------------------------

EPS = 1e-3


def _argmax_probability_from_ve(lik, y, mean, var):
    """Invert VE = log(1 − ε)P + log(ε/(C − 1))(1 − P) for P."""
    hit, miss = math.log1p(-lik.epsilon), math.log(lik.epsilon / (lik.num_classes - 1))
    ve = np.asarray(lik.variational_expectations({}, y, mean, var))
    return (ve - miss) / (hit - miss)


def test_robustmax_two_classes_closed_form():
    lik = likelihoods.RobustMax(2, epsilon=EPS, num_quadrature_points=50)
    rng = np.random.default_rng(20)
    mean, var = rng.normal(size=(6, 2)), rng.uniform(0.2, 1.0, size=(6, 2))
    y = np.array([0, 1, 0, 1, 1, 0])
    idx = np.arange(6)
    expected = stats.norm.cdf((mean[idx, y] - mean[idx, 1 - y]) / np.sqrt(var.sum(axis=1)))
    np.testing.assert_allclose(
        _argmax_probability_from_ve(lik, y, mean, var), expected, rtol=0, atol=1e-8
    )
    probs = lik.predict_class_probabilities({}, mean, var)
    p_all = np.stack([expected, 1 - expected], axis=1)
    p_all = np.where(y[:, None] == 0, p_all, p_all[:, ::-1])  # column k: P(f_k is the max)
    np.testing.assert_allclose(probs, (1 - EPS) * p_all + EPS * (1 - p_all), atol=1e-8)
    np.testing.assert_allclose(
        lik.log_predictive_density({}, y, mean, var), np.log(probs[idx, y]), rtol=1e-12
    )


def test_robustmax_against_monte_carlo():
    C, S = 4, 200_000
    lik = likelihoods.RobustMax(C, epsilon=0.01, num_quadrature_points=50)
    rng = np.random.default_rng(21)
    mean, var = rng.normal(size=(N, C)), rng.uniform(0.2, 1.0, size=(N, C))
    f = mean + np.sqrt(var) * rng.standard_normal((S, N, C))
    is_max = np.argmax(f, axis=-1)[..., None] == np.arange(C)  # (S, N, C)
    p_mc = is_max.mean(axis=0)
    stderr = np.sqrt(p_mc * (1 - p_mc) / S) + 1e-12
    p_all = np.stack(
        [_argmax_probability_from_ve(lik, np.full(N, k), mean, var) for k in range(C)], axis=1
    )
    assert np.all(np.abs(p_all - p_mc) < 5 * stderr)
    probs = lik.predict_class_probabilities({}, mean, var)
    np.testing.assert_allclose(probs, 0.99 * p_all + 0.01 / (C - 1) * (1 - p_all), atol=1e-12)
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, atol=1e-5)
    pm, pv = lik.predict_mean_variance({}, mean, var)
    np.testing.assert_allclose(pm, probs, rtol=1e-14)
    np.testing.assert_allclose(pv, probs * (1 - probs), rtol=1e-14)


# --------------------------------------------------------------------------------------------
# Softmax
# --------------------------------------------------------------------------------------------
# With two classes, log Σⱼ exp fⱼ = f₀ + softplus(d), d = f₁ − f₀ ~ N(m₁ − m₀, v₀ + v₁): every
# expectation reduces to a 1-D integral over d, done here by scipy.integrate.quad.
# The module averages over S randomized-QMC nodes; on these inputs (v ≤ 3) its error falls
# from ~1e-2 at S = 64 to ~1e-4 at S = 4096 (about 1/S), so S = 4096 is checked to 2e-3.
SOFTMAX_S = 4096
SOFTMAX_TOL = 2e-3


def _softmax_two_class_reference(mean, var, y):
    """(E[log p(y|f)], p(y = 1), ∂VE/∂m, ∂VE/∂v) per row, by quad over d and central
    differences of the quad value (step 1e-4: error ~1e-8)."""

    def expect(h, mu, s):
        density = stats.norm.pdf
        return integrate.quad(lambda t: h(mu + s * t) * density(t), -np.inf, np.inf, epsabs=1e-12)[
            0
        ]

    def ve(m, v, label):
        return (
            m[label]
            - m[0]
            - expect(lambda d: np.logaddexp(0.0, d), m[1] - m[0], math.sqrt(v.sum()))
        )

    out = []
    for m, v, label in zip(mean, var, y, strict=True):
        p1 = expect(special.expit, m[1] - m[0], math.sqrt(v.sum()))
        h = 1e-4
        eye = np.eye(2)
        d_m = [(ve(m + h * e, v, label) - ve(m - h * e, v, label)) / (2 * h) for e in eye]
        d_v = [(ve(m, v + h * e, label) - ve(m, v - h * e, label)) / (2 * h) for e in eye]
        out.append((ve(m, v, label), p1, d_m, d_v))
    return [np.array(column) for column in zip(*out, strict=True)]


def _softmax_case(seed, n=6, c=2, var_range=(0.05, 3.0)):
    rng = np.random.default_rng(seed)
    mean = rng.normal(scale=1.5, size=(n, c))
    var = rng.uniform(*var_range, size=(n, c))
    return mean, var, rng.integers(0, c, size=n)


def test_softmax_two_classes_against_quadrature():
    lik = likelihoods.Softmax(2, num_samples=SOFTMAX_S)
    mean, var, y = _softmax_case(50)
    ve_ref, p1_ref, dm_ref, dv_ref = _softmax_two_class_reference(mean, var, y)
    np.testing.assert_allclose(
        lik.variational_expectations({}, y, mean, var), ve_ref, atol=SOFTMAX_TOL
    )
    probs = lik.predict_class_probabilities({}, mean, var)
    np.testing.assert_allclose(probs[:, 1], p1_ref, atol=SOFTMAX_TOL)
    np.testing.assert_allclose(np.sum(probs, axis=1), 1.0, rtol=1e-14)
    p_y = np.where(y == 1, p1_ref, 1 - p1_ref)
    np.testing.assert_allclose(
        lik.log_predictive_density({}, y, mean, var), np.log(p_y), atol=SOFTMAX_TOL / p_y.min()
    )
    pm, pv = lik.predict_mean_variance({}, mean, var)
    np.testing.assert_allclose(pm, probs, rtol=1e-14)
    np.testing.assert_allclose(pv, probs * (1 - probs), rtol=1e-14)

    # Gradients: the custom JVP (node average of ∇ and Price's ½∇²) against differences of
    # the reference, through jax.grad (reverse mode transposes the JVP).
    def total(m, v):
        return jnp.sum(lik.variational_expectations({}, y, m, v))

    d_m, d_v = jax.grad(total, argnums=(0, 1))(mean, var)
    np.testing.assert_allclose(d_m, dm_ref, atol=SOFTMAX_TOL)
    np.testing.assert_allclose(d_v, dv_ref, atol=SOFTMAX_TOL)
    np.testing.assert_allclose(
        jax.jvp(lambda v: total(mean, v), (var,), (np.ones_like(var),))[1],
        np.sum(dv_ref),
        atol=4 * SOFTMAX_TOL,
    )


def test_softmax_many_classes_against_monte_carlo():
    C, S = 5, 400_000
    lik = likelihoods.Softmax(C, num_samples=SOFTMAX_S)
    mean, var, y = _softmax_case(51, n=4, c=C)
    rng = np.random.default_rng(52)
    f = mean + np.sqrt(var) * rng.standard_normal((S, 4, C))
    log_p = f - special.logsumexp(f, axis=-1, keepdims=True)
    ve_mc = log_p[:, np.arange(4), y]
    stderr = ve_mc.std(axis=0) / math.sqrt(S)
    ve = np.asarray(lik.variational_expectations({}, y, mean, var))
    assert np.all(np.abs(ve - ve_mc.mean(axis=0)) < 5 * stderr + SOFTMAX_TOL)
    probs_mc = np.exp(log_p).mean(axis=0)
    np.testing.assert_allclose(
        lik.predict_class_probabilities({}, mean, var), probs_mc, atol=SOFTMAX_TOL
    )


def test_softmax_variance_gradient_keeps_natural_precisions_positive():
    """−2 ∂E_q[log p]/∂v (a natural step's precision contribution) is ≥ 0 for every input, even
    with few nodes, large variances and extreme means; the reparameterization derivative of
    the same node average is not."""
    lik = likelihoods.Softmax(10, num_samples=8)
    mean, var, y = _softmax_case(53, n=200, c=10, var_range=(1e-3, 30.0))
    mean = mean * 5

    def total(v):
        return jnp.sum(lik.variational_expectations({}, y, mean, v))

    assert np.all(np.asarray(jax.grad(total)(var)) <= 0)
    nodes = likelihoods._normal_nodes(10, 8, 0)

    def reparameterized(v):
        f = mean[:, None, :] + jnp.sqrt(v)[:, None, :] * nodes
        return jnp.sum(jnp.take_along_axis(mean, y[:, None], 1)) - jnp.sum(
            jnp.mean(jax.scipy.special.logsumexp(f, axis=-1), axis=1)
        )

    assert np.any(np.asarray(jax.grad(reparameterized)(var)) > 0)
    np.testing.assert_allclose(reparameterized(var), total(var), rtol=1e-12)


def test_softmax_nodes_are_fixed_antithetic_and_seeded():
    a = likelihoods._normal_nodes(3, 16, 0)
    np.testing.assert_array_equal(a[:8], -a[8:])
    np.testing.assert_array_equal(a, likelihoods._normal_nodes(3, 16, 0))
    assert not np.allclose(a, likelihoods._normal_nodes(3, 16, 1))
    lik = likelihoods.Softmax(3, num_samples=16)
    mean, var, y = _softmax_case(54, c=3)
    np.testing.assert_array_equal(
        lik.variational_expectations({}, y, mean, var),
        lik.variational_expectations({}, y, mean, var),
    )


# --------------------------------------------------------------------------------------------
# Limits, gradients, jit, dtypes
# --------------------------------------------------------------------------------------------


def _all_cases():
    """(likelihood, y, mean, var) for every likelihood."""
    out = {}
    for name in CASES:
        lik, _, _, _, y, mean, var = _case(name, seed=30)
        out[name] = (lik, y, mean, var)
    out["heteroscedastic"] = _hetero_case(seed=31)
    rng = np.random.default_rng(32)
    out["robustmax"] = (
        likelihoods.RobustMax(3),
        np.array([0, 2, 1]),
        rng.normal(size=(N, 3)),
        rng.uniform(0.2, 1.0, size=(N, 3)),
    )
    mean, var, y = _softmax_case(33, n=N, c=3, var_range=(0.2, 1.0))
    out["softmax"] = (likelihoods.Softmax(3), y, mean, var)
    return out


ALL = _all_cases()


@pytest.mark.parametrize("name", ALL)
def test_zero_variance_limit_is_log_density(name):
    lik, y, mean, _ = ALL[name]
    if name == "robustmax":  # a clear argmax, so that P → 1 exactly in the limit
        mean = np.where(np.arange(3) == y[:, None], 2.0, 0.0)
    params = lik.init()
    tiny = np.full_like(mean, 1e-14)
    expected = lik.log_density(params, y, mean)
    np.testing.assert_allclose(
        lik.variational_expectations(params, y, mean, tiny), expected, rtol=1e-6, atol=1e-6
    )
    np.testing.assert_allclose(
        lik.log_predictive_density(params, y, mean, tiny), expected, rtol=1e-6, atol=1e-6
    )


@pytest.mark.parametrize("name", ALL)
def test_gradients_finite_and_jit(name):
    lik, y, mean, var = ALL[name]
    params = lik.init()

    def objective(params, mean, var):
        return jnp.sum(lik.variational_expectations(params, y, mean, var))

    grads = jax.jit(jax.grad(objective, argnums=(0, 1, 2)))(params, mean, var)
    for leaf in jax.tree_util.tree_leaves(grads):
        assert np.all(np.isfinite(leaf))
    assert set(grads[0]) == set(params)

    # hashable: usable as a static argument of an outer jit
    static = jax.jit(lambda lk, p, m, v: lk.variational_expectations(p, y, m, v), static_argnums=0)
    np.testing.assert_allclose(
        static(lik, params, mean, var), lik.variational_expectations(params, y, mean, var)
    )


@pytest.mark.parametrize("name", ALL)
def test_float32_in_float32_out(name):
    lik, y, mean, var = ALL[name]
    params = lik.init(jnp.float32)
    assert all(v.dtype == jnp.float32 for v in params.values())
    m32, v32 = mean.astype(np.float32), var.astype(np.float32)
    outs = [
        lik.variational_expectations(params, y, m32, v32),
        lik.log_predictive_density(params, y, m32, v32),
        *lik.predict_mean_variance(params, m32, v32),
    ]
    for out in outs:
        assert out.dtype == jnp.float32
    np.testing.assert_allclose(
        outs[0], lik.variational_expectations(lik.init(), y, mean, var), rtol=1e-4, atol=1e-4
    )


@pytest.mark.parametrize("name", ALL)
def test_check_targets_accepts_valid(name):
    lik, y, _, _ = ALL[name]
    lik.check_targets(y)


def test_init_hyperparameters_round_trip():
    lik = likelihoods.Gaussian(variance=0.3)
    np.testing.assert_allclose(lik.hyperparameters(lik.init())["variance"], 0.3, rtol=1e-14)
    lik = likelihoods.StudentT(scale=2.5)
    np.testing.assert_allclose(lik.hyperparameters(lik.init())["scale"], 2.5, rtol=1e-14)
    for lik in (
        likelihoods.Bernoulli(),
        likelihoods.Poisson(),
        likelihoods.RobustMax(3),
        likelihoods.Softmax(3),
    ):
        assert lik.init() == {} and lik.hyperparameters({}) == {}
    assert likelihoods.HeteroscedasticGaussian().num_latent == 2
    assert likelihoods.RobustMax(5).num_latent == 5
    assert likelihoods.Gaussian(num_outputs=3).num_latent == 3


def test_targets_of_shape_n_for_one_output():
    lik = likelihoods.Poisson()
    mean, var = _latents(40, 1)
    y = np.array([0.0, 2.0, 5.0])
    np.testing.assert_allclose(
        lik.variational_expectations({}, y, mean, var),
        lik.variational_expectations({}, y[:, None], mean, var),
    )


def test_student_t_infinite_variance_for_small_df():
    lik = likelihoods.StudentT(df=2.0)
    _, var = lik.predict_mean_variance(lik.init(), *_latents(41, 1))
    assert np.all(np.isinf(var))


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: likelihoods.Gaussian(variance=0.0), "Gaussian: variance"),
        (lambda: likelihoods.Gaussian(variance=math.inf), "Gaussian: variance"),
        (lambda: likelihoods.Gaussian(variance="1"), "Gaussian: variance"),
        (lambda: likelihoods.Gaussian(num_outputs=0), "Gaussian: num_outputs"),
        (lambda: likelihoods.StudentT(df=-1.0), "StudentT: df"),
        (lambda: likelihoods.StudentT(scale=math.nan), "StudentT: scale"),
        (lambda: likelihoods.StudentT(num_quadrature_points=0), "StudentT: num_quadrature"),
        (lambda: likelihoods.Bernoulli("tanh"), r"Bernoulli: unknown link 'tanh'.*probit.*logit"),
        (lambda: likelihoods.Poisson(binsize=-1.0), "Poisson: binsize"),
        (lambda: likelihoods.RobustMax(1), "RobustMax: num_classes"),
        (lambda: likelihoods.RobustMax(3, epsilon=1.0), "RobustMax: epsilon"),
        (lambda: likelihoods.RobustMax(3, epsilon=0.0), "RobustMax: epsilon"),
        (lambda: likelihoods.Softmax(1), "Softmax: num_classes"),
        (lambda: likelihoods.Softmax(3, num_samples=48), "Softmax: num_samples must be a power"),
        (lambda: likelihoods.Softmax(3, num_samples=1), "Softmax: num_samples"),
        (lambda: likelihoods.Softmax(3, seed=-1), "Softmax: seed"),
        (
            lambda: likelihoods.HeteroscedasticGaussian(num_quadrature_points=0),
            "HeteroscedasticGaussian: num_quadrature_points",
        ),
    ],
)
def test_bad_constructor_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


@pytest.mark.parametrize(
    ("lik", "y", "match"),
    [
        (likelihoods.Gaussian(), np.array([0.0, np.nan]), "Gaussian: targets contain NaN"),
        (likelihoods.Bernoulli(), np.array([0.0, np.inf]), "Bernoulli: targets contain NaN"),
        (likelihoods.Bernoulli(), np.array([0.0, 0.5]), "Bernoulli: targets must be 0 or 1"),
        (likelihoods.Poisson(), np.array([1.0, -1.0]), "Poisson: .*non-negative integer"),
        (likelihoods.Poisson(), np.array([1.0, 1.5]), "Poisson: .*non-negative integer"),
        (likelihoods.RobustMax(3), np.array([0, 3]), r"RobustMax: labels .*\[0, 3\)"),
        (likelihoods.RobustMax(3), np.array([0, -1]), r"RobustMax: labels .*\[0, 3\)"),
        (likelihoods.RobustMax(3), np.array([0.0, 1.5]), "RobustMax: labels must be integers"),
        (likelihoods.RobustMax(3), np.zeros((2, 1)), r"RobustMax: labels .*shape \(N,\)"),
        (likelihoods.Softmax(3), np.array([0, 3]), r"Softmax: labels .*\[0, 3\)"),
        (likelihoods.Softmax(3), np.array([0.5]), "Softmax: labels must be integers"),
        (likelihoods.Softmax(3), np.array([0, np.nan]), "Softmax: targets contain NaN"),
        (likelihoods.Gaussian(num_outputs=2), np.zeros(4), r"Gaussian: .*\(N, 2\).*\(4,\)"),
        (
            likelihoods.HeteroscedasticGaussian(),
            np.zeros((4, 2)),
            r"HeteroscedasticGaussian: .*\(4, 2\)",
        ),
        (likelihoods.HeteroscedasticGaussian(), np.array([np.nan]), "targets contain NaN"),
    ],
)
def test_check_targets_errors(lik, y, match):
    with pytest.raises(ValueError, match=match):
        lik.check_targets(y)


@pytest.mark.parametrize("name", ALL)
def test_wrong_mean_shape(name):
    lik, y, mean, var = ALL[name]
    params = lik.init()
    bad = np.zeros((N, lik.num_latent + 1))
    with pytest.raises(ValueError, match=rf"mean must have shape \(N, {lik.num_latent}\)"):
        lik.variational_expectations(params, y, bad, bad)
    with pytest.raises(ValueError, match="mean must have shape"):
        jax.jit(lik.predict_mean_variance)(params, bad, bad)
    with pytest.raises(ValueError, match="var shape"):
        lik.log_predictive_density(params, y, mean, var[:-1])
    with pytest.raises(ValueError, match=r"targets|labels"):
        lik.variational_expectations(params, np.zeros(N + 1), mean, var)
