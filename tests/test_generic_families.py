"""Tests of the exponential families defined by a log-partition (natgrad.expfam.generic).

References are independent of the code under test: closed forms written with numpy/scipy
(means, Fisher matrices, KL divergences), scipy.stats (entropies, log densities), dense
Jacobians and linear solves (natural gradients), and Monte Carlo for the samplers.
"""

import jax

jax.config.update("jax_enable_x64", True)

import functools  # noqa: E402

import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import scipy.special as sp  # noqa: E402
import scipy.stats as st  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as hst  # noqa: E402

from natgrad.expfam.base import resolve  # noqa: E402
from natgrad.expfam.generic import (  # noqa: E402
    BERNOULLI,
    CATEGORICAL,
    DIRICHLET,
    GAMMA,
    POISSON,
    ArrayParameterization,
    custom_parameterization,
)

FAMILIES = {f.name: f for f in (BERNOULLI, CATEGORICAL, POISSON, GAMMA, DIRICHLET)}
#: Number of uniforms that define one point of each family (K = 4 classes, K = 3 for Dirichlet).
NUM_UNIFORMS = {"bernoulli": 1, "categorical": 4, "poisson": 1, "gamma": 2, "dirichlet": 3}
STANDARD = {
    "bernoulli": "bernoulli_probs",
    "categorical": "categorical_probs_minimal",
    "poisson": "poisson_rate",
    "gamma": "gamma_shape_rate",
    "dirichlet": "dirichlet_concentration",
}

#: A user-defined parameterization: Poisson by ξ = √λ, so θ = 2 log ξ.
SQRT_RATE = custom_parameterization(
    POISSON,
    "poisson_sqrt_rate",
    lambda s: 2.0 * jnp.log(s),
    lambda theta: jnp.exp(theta / 2.0),
    lambda s: s > 0,
)


def parameterizations(family: str) -> list[ArrayParameterization]:
    names = [f"{family}_natural", f"{family}_expectation", STANDARD[family]]
    extra = [SQRT_RATE] if family == "poisson" else []
    return [resolve(n) for n in names] + extra


ALL_CASES = [(f, p) for f in FAMILIES for p in parameterizations(f)]
CASE_IDS = [p.name for _, p in ALL_CASES]


# -- independent reference points ------------------------------------------------------------


def _log_uniform(u, low, high):
    return np.exp(np.log(low) + u * (np.log(high) - np.log(low)))


def reference_point(family: str, u: np.ndarray) -> dict:
    """θ, η and ξ for every parameterization from uniforms ``u`` of shape ``[..., d]``.

    Ranges: p ∈ [0.02, 0.98]; λ ∈ [0.05, 50]; α ∈ [0.2, 20], β ∈ [0.1, 10] (Gamma);
    α_i ∈ [0.2, 20] (Dirichlet); class weights 0.05 + u (Categorical). Closed forms only.
    """
    u = np.asarray(u, dtype=np.float64)
    if family == "bernoulli":
        p = 0.02 + 0.96 * u[..., 0]
        theta, eta, standard = np.log(p / (1 - p)), p, p
    elif family == "poisson":
        lam = _log_uniform(u[..., 0], 0.05, 50.0)
        theta, eta, standard = np.log(lam), lam, lam
    elif family == "gamma":
        alpha, beta = _log_uniform(u[..., 0], 0.2, 20.0), _log_uniform(u[..., 1], 0.1, 10.0)
        theta = np.stack([alpha - 1, -beta], -1)
        eta = np.stack([sp.digamma(alpha) - np.log(beta), alpha / beta], -1)
        standard = np.stack([alpha, beta], -1)
    elif family == "dirichlet":
        alpha = _log_uniform(u, 0.2, 20.0)
        theta = alpha - 1
        eta = sp.digamma(alpha) - sp.digamma(alpha.sum(-1, keepdims=True))
        standard = alpha
    else:  # categorical
        w = 0.05 + u
        p = w / w.sum(-1, keepdims=True)
        theta, eta, standard = np.log(p[..., :-1] / p[..., -1:]), p[..., :-1], p[..., :-1]
    xi = {
        f"{family}_natural": theta,
        f"{family}_expectation": eta,
        STANDARD[family]: standard,
    }
    if family == "poisson":
        xi["poisson_sqrt_rate"] = np.sqrt(standard)
    return {"theta": theta, "eta": eta, "xi": xi}


def random_point(family: str, seed: int, batch=()):
    u = np.random.default_rng(seed).uniform(size=(*batch, NUM_UNIFORMS[family]))
    return reference_point(family, u)


def assert_close(actual, desired, rtol, atol=0.0):
    np.testing.assert_allclose(np.asarray(actual), np.asarray(desired), rtol=rtol, atol=atol)


def assert_rel_norm(actual, desired, rtol):
    actual, desired = np.asarray(actual), np.asarray(desired)
    assert actual.shape == desired.shape
    err = np.linalg.norm(actual - desired) / np.linalg.norm(desired)
    assert err <= rtol, f"relative error {err:.2e} > {rtol:.0e}"


# -- (a) conversions and round trips ---------------------------------------------------------

#: Batch shape of the per-parameterization tests. One shape for all of them keeps the number of
#: compilations (the Newton solves of Gamma and Dirichlet dominate the runtime) small.
BATCH = 3


def uniforms(data, family: str) -> np.ndarray:
    """Hypothesis draw of ``BATCH`` points' uniforms, shape ``[BATCH, d]``."""
    d = NUM_UNIFORMS[family]
    flat = data.draw(hst.lists(hst.floats(0.0, 1.0), min_size=BATCH * d, max_size=BATCH * d))
    return np.reshape(flat, (BATCH, d))


def check_conversions(p: ArrayParameterization, ref: dict) -> None:
    xi, theta, eta = ref["xi"][p.name], ref["theta"], ref["eta"]
    # 1e-10: all maps are closed forms or a Newton solve converged to round-off (the Fisher's
    # condition number over the sampled ranges is below 1e4).
    tol = {"rtol": 1e-10, "atol": 1e-12}
    assert_close(p.to_natural(xi), theta, **tol)
    assert_close(p.to_expectation(xi), eta, **tol)
    assert_close(p.from_natural(theta), xi, **tol)
    assert_close(p.from_expectation(eta), xi, **tol)
    assert_close(p.from_natural(p.to_natural(xi)), xi, **tol)
    assert_close(p.from_expectation(p.to_expectation(xi)), xi, **tol)
    valid = np.asarray(p.is_valid(xi))
    assert valid.shape == np.shape(theta)[: np.ndim(theta) - p.family.param_ndim]
    assert valid.all()


@pytest.mark.parametrize(("family", "p"), ALL_CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None, database=None)
@given(data=hst.data())
def test_round_trips_hypothesis(family, p, data):
    check_conversions(p, reference_point(family, uniforms(data, family)))


@pytest.mark.parametrize(
    ("name", "batch"),
    [
        ("gamma_shape_rate", ()),
        ("dirichlet_expectation", (2, 2)),
        ("categorical_probs_minimal", ()),
        ("poisson_rate", (2, 2)),
    ],
)
def test_round_trips_other_batch_shapes(name, batch):
    p = resolve(name)
    check_conversions(p, random_point(p.family.name, seed=1, batch=batch))


# -- (b) mean and Fisher against closed forms ------------------------------------------------


def fisher_closed_form(family: str, ref: dict) -> np.ndarray:
    """Cov[T(x)] written by hand, for a batch of points."""
    if family == "bernoulli":
        p = ref["eta"]
        return p * (1 - p)
    if family == "poisson":
        return ref["eta"]
    if family == "gamma":
        alpha, beta = ref["xi"]["gamma_shape_rate"][..., 0], ref["xi"]["gamma_shape_rate"][..., 1]
        row1 = np.stack([sp.polygamma(1, alpha), 1 / beta], -1)  # Cov(log x, x) = 1/β
        row2 = np.stack([1 / beta, alpha / beta**2], -1)
        return np.stack([row1, row2], -2)
    if family == "dirichlet":
        alpha = ref["xi"]["dirichlet_concentration"]
        off = -sp.polygamma(1, alpha.sum(-1))[..., None, None]
        return off + np.einsum("...i,ij->...ij", sp.polygamma(1, alpha), np.eye(alpha.shape[-1]))
    p = ref["eta"]  # categorical: diag(p) − ppᵀ over the first K−1 classes
    return np.einsum("...i,ij->...ij", p, np.eye(p.shape[-1])) - p[..., :, None] * p[..., None, :]


@pytest.mark.parametrize("family", FAMILIES)
def test_mean_and_fisher_closed_forms(family):
    ref = random_point(family, seed=2, batch=(3,))
    fam = FAMILIES[family]
    # η from scipy's digamma or elementary functions; agreement to round-off.
    assert_close(fam.mean(ref["theta"]), ref["eta"], rtol=1e-12, atol=1e-14)
    assert_close(fam.fisher(ref["theta"]), fisher_closed_form(family, ref), rtol=1e-11, atol=1e-14)


def test_mean_matches_digamma_formulas_explicitly():
    alpha, beta = np.array([0.5, 3.0]), np.array([2.0, 0.25])
    eta = GAMMA.mean(np.stack([alpha - 1, -beta], -1))
    assert_close(eta[..., 0], sp.digamma(alpha) - np.log(beta), rtol=1e-13)
    assert_close(eta[..., 1], alpha / beta, rtol=1e-13)
    assert_close(BERNOULLI.mean(np.array([-2.0, 0.0, 3.0])), sp.expit([-2.0, 0.0, 3.0]), rtol=1e-14)
    assert_close(POISSON.mean(np.array([-1.0, 2.0])), np.exp([-1.0, 2.0]), rtol=1e-14)


# -- (c) natural gradients -------------------------------------------------------------------


def ng(p, xi, g):
    """F_ξ⁻¹ g by the VJP-then-JVP identity, as natgrad.natural_gradient computes it."""
    eta = p.to_expectation(xi)
    _, vjp = jax.vjp(p.from_expectation, eta)
    (dl_deta,) = vjp(p.project_gradient(xi, g))
    theta = p.to_natural(xi)
    return jax.jvp(p.from_natural, (theta,), (p.project_natural_tangent(dl_deta),))[1]


def loss_theta(theta):
    """A smooth loss of the distribution, L(θ) = Σ sin(θ) + ½‖θ‖², for the push-forward check."""
    return jnp.sum(jnp.sin(theta) + 0.5 * theta**2)


@functools.cache
def ng_checks(p: ArrayParameterization):
    """Compiled once per parameterization: the NG, its dense reference, and its push-forward.

    Returns ``f(xi, g) -> (ng, dense, direction, direction_ref)`` for a batch of points:

    * ``dense`` = J ∇²A(θ)⁻¹ Jᵀ g with J = ∂ξ/∂θ formed by ``jax.jacobian`` per point;
    * ``direction`` = (∂θ/∂ξ) F_ξ⁻¹ ∇_ξL for L(θ(ξ)) = ``loss_theta``, which must equal
      ``direction_ref`` = ∇²A(θ)⁻¹ ∇_θL whatever the parameterization.
    """

    def dense_one(xi, g):
        theta = p.to_natural(xi)
        jac = jax.jacobian(p.from_natural)(theta).reshape(xi.size, theta.size)
        hess = p.family.fisher(theta).reshape(theta.size, theta.size)
        return (jac @ jnp.linalg.solve(hess, jac.T @ g.reshape(-1))).reshape(xi.shape)

    def push_ref_one(theta):
        hess = p.family.fisher(theta).reshape(theta.size, theta.size)
        grad = jax.grad(loss_theta)(theta).reshape(-1)
        return jnp.linalg.solve(hess, grad).reshape(theta.shape)

    def checks(xi, g):
        grad_xi = jax.grad(lambda x: loss_theta(p.to_natural(x)))(xi)
        # Both natural gradients in one vmap over cotangents: the Newton solve is traced once.
        ng_g, ng_loss = jax.vmap(lambda v: ng(p, xi, v))(jnp.stack([g, grad_xi]))
        direction = jax.jvp(p.to_natural, (xi,), (ng_loss,))[1]
        theta = p.to_natural(xi)
        return ng_g, jax.vmap(dense_one)(xi, g), direction, jax.vmap(push_ref_one)(theta)

    return jax.jit(checks)


@pytest.mark.parametrize(("family", "p"), ALL_CASES, ids=CASE_IDS)
@settings(max_examples=25, deadline=None, database=None)
@given(data=hst.data())
def test_natural_gradient_matches_dense_hypothesis(family, p, data):
    ref = reference_point(family, uniforms(data, family))
    xi = jnp.asarray(ref["xi"][p.name])
    g = np.random.default_rng(data.draw(hst.integers(0, 2**31 - 1))).normal(size=xi.shape)
    got, dense, direction, direction_ref = ng_checks(p)(xi, g)
    # 1e-8: both sides solve with ∇²A (condition number < 1e4 on these ranges).
    assert_rel_norm(got, dense, rtol=1e-8)
    assert_rel_norm(direction, direction_ref, rtol=1e-8)
    if p.name.endswith("_natural"):  # ξ = θ: F_θ⁻¹ g = ∇²A(θ)⁻¹ g, solved with numpy
        fisher = np.asarray(p.family.fisher(ref["theta"]))
        n = int(np.prod(xi.shape[1:]))
        expected = np.linalg.solve(fisher.reshape(BATCH, n, n), g.reshape(BATCH, n, 1))
        assert_rel_norm(got, expected.reshape(xi.shape), rtol=1e-8)


@pytest.mark.parametrize("family", ["gamma", "dirichlet"])
def test_newton_solve_derivatives_are_inverse_fisher(family):
    """Implicit differentiation of the Newton solve: dθ/dη = ∇²A(θ)⁻¹, forward and reverse."""
    fam = FAMILIES[family]
    ref = random_point(family, seed=7)
    inv_fisher = np.linalg.inv(np.asarray(fam.fisher(ref["theta"])))
    both = jax.jit(
        lambda e: (jax.jacfwd(fam.natural_from_mean)(e), jax.jacrev(fam.natural_from_mean)(e))
    )
    for got in both(jnp.asarray(ref["eta"])):
        assert_close(got, inv_fisher, rtol=1e-9, atol=1e-12)


def test_integration_with_natural_gradient_function():
    natural_gradient = pytest.importorskip("natgrad.natural_gradient").natural_gradient
    p = resolve("gamma_shape_rate")
    xi = jnp.asarray(random_point("gamma", seed=8, batch=(3,))["xi"][p.name])
    g = np.random.default_rng(9).normal(size=xi.shape)
    for mode in ("forward", "reverse"):
        got = natural_gradient(params=xi, grads=jnp.asarray(g), parameterization=p, mode=mode)
        assert_rel_norm(got, ng(p, xi, g), rtol=1e-12)


# -- (d) KL, entropy and log densities against closed forms and scipy ------------------------


def kl_closed_form(family: str, q: dict, p: dict) -> np.ndarray:
    sq, sp_ = q["xi"][STANDARD[family]], p["xi"][STANDARD[family]]
    if family == "bernoulli":
        return sq * np.log(sq / sp_) + (1 - sq) * np.log((1 - sq) / (1 - sp_))
    if family == "poisson":
        return sq * np.log(sq / sp_) - sq + sp_
    if family == "gamma":
        (aq, bq), (ap, bp) = np.moveaxis(sq, -1, 0), np.moveaxis(sp_, -1, 0)
        return (
            (aq - ap) * sp.digamma(aq)
            - sp.gammaln(aq)
            + sp.gammaln(ap)
            + ap * (np.log(bq) - np.log(bp))
            + aq * (bp - bq) / bq
        )
    if family == "dirichlet":
        aq0, ap0 = sq.sum(-1), sp_.sum(-1)
        return (
            sp.gammaln(aq0)
            - sp.gammaln(sq).sum(-1)
            - sp.gammaln(ap0)
            + sp.gammaln(sp_).sum(-1)
            + ((sq - sp_) * (sp.digamma(sq) - sp.digamma(aq0)[..., None])).sum(-1)
        )
    fq = np.concatenate([sq, 1 - sq.sum(-1, keepdims=True)], -1)
    fp = np.concatenate([sp_, 1 - sp_.sum(-1, keepdims=True)], -1)
    return (fq * np.log(fq / fp)).sum(-1)


@pytest.mark.parametrize(("family", "p"), ALL_CASES, ids=CASE_IDS)
def test_kl_closed_forms(family, p):
    q_ref, p_ref = random_point(family, seed=10, batch=(3,)), random_point(family, 11, (3,))
    xi_q, xi_p = q_ref["xi"][p.name], p_ref["xi"][p.name]
    # Bregman form vs closed form: the same quantity written two ways, agreement to round-off.
    assert_close(p.kl(xi_q, xi_p), kl_closed_form(family, q_ref, p_ref), rtol=1e-10, atol=1e-12)
    assert_close(p.kl(xi_q, xi_q), np.zeros(3), rtol=0, atol=1e-12)
    assert np.all(np.asarray(p.kl(xi_q, xi_p)) > 0)


def scipy_entropy(family: str, ref: dict) -> np.ndarray:
    s = ref["xi"][STANDARD[family]]
    if family == "bernoulli":
        return st.bernoulli(s).entropy()
    if family == "poisson":
        return st.poisson(s).entropy()
    if family == "gamma":
        return st.gamma(s[..., 0], scale=1 / s[..., 1]).entropy()
    if family == "dirichlet":
        return np.array([st.dirichlet(a).entropy() for a in s])
    full = np.concatenate([s, 1 - s.sum(-1, keepdims=True)], -1)
    return st.entropy(full, axis=-1)


@pytest.mark.parametrize("family", FAMILIES)
def test_entropy_matches_scipy(family):
    ref = random_point(family, seed=12, batch=(3,))
    p = resolve(STANDARD[family])
    assert_close(p.entropy(ref["xi"][p.name]), scipy_entropy(family, ref), rtol=1e-10, atol=1e-12)


def test_poisson_entropy_across_the_series_switch():
    """Direct sum below λ = 100, asymptotic series above (error < 4e−11 at the switch)."""
    rates = np.array([1e-3, 0.7, 99.9, 100.0, 100.1, 300.0, 1e4])
    reference = []
    for lam in rates:  # −Σ p log p over a range holding all but 1e−300 of the mass
        k = np.arange(0, int(lam + 60 * np.sqrt(lam) + 60))
        logpmf = st.poisson.logpmf(k, lam)
        reference.append(-np.sum(np.exp(logpmf) * logpmf))
    assert_close(POISSON.entropy(np.log(rates)), reference, rtol=0, atol=1e-10)


def scipy_log_prob(family: str, ref: dict, x: np.ndarray) -> np.ndarray:
    s = ref["xi"][STANDARD[family]]
    if family == "bernoulli":
        return st.bernoulli.logpmf(x, s)
    if family == "poisson":
        return st.poisson.logpmf(x, s)
    if family == "gamma":
        return st.gamma.logpdf(x, s[..., 0], scale=1 / s[..., 1])
    if family == "dirichlet":
        return np.array([st.dirichlet.logpdf(xx, a) for xx, a in zip(x, s, strict=True)])
    full = np.concatenate([s, 1 - s.sum(-1, keepdims=True)], -1)
    return np.log(full[np.arange(len(x)), x])


def some_observations(family: str, n: int) -> np.ndarray:
    rng = np.random.default_rng(13)
    return {
        "bernoulli": rng.integers(0, 2, n),
        "poisson": rng.integers(0, 30, n),
        "gamma": rng.gamma(2.0, size=n),
        "dirichlet": rng.dirichlet(np.ones(3), size=n),
        "categorical": rng.integers(0, 4, n),
    }[family]


@pytest.mark.parametrize(("family", "p"), ALL_CASES, ids=CASE_IDS)
def test_log_prob_matches_scipy(family, p):
    ref = random_point(family, seed=14, batch=(3,))
    x = some_observations(family, 3)
    assert_close(p.log_prob(ref["xi"][p.name], x), scipy_log_prob(family, ref, x), rtol=1e-10)


def test_log_prob_broadcasts_observations_against_batch():
    theta = jnp.log(jnp.array([0.5, 2.0, 7.0]))  # three Poisson rates
    x = jnp.arange(4)[:, None]  # four counts, broadcast against the three rates
    expected = st.poisson.logpmf(np.arange(4)[:, None], np.array([0.5, 2.0, 7.0]))
    assert_close(POISSON.log_prob(theta, x), expected, rtol=1e-12)


# -- (e) samplers ----------------------------------------------------------------------------


def statistics_by_hand(family: str, x: np.ndarray, k: int) -> np.ndarray:
    x = np.asarray(x)
    if family in ("bernoulli", "poisson"):
        return x.astype(float)
    if family == "gamma":
        return np.stack([np.log(x), x], -1)
    if family == "dirichlet":
        return np.log(x)
    return np.eye(k + 1)[x][..., :-1]


@pytest.mark.parametrize("family", FAMILIES)
def test_sample_means_match_expectation(family):
    """The average of T(x) over N = 20000 draws is within 5 standard errors of η.

    Var T = ∇²A(θ), so the standard error of each component is √(diag ∇²A / N); the batch of
    three points has at most 3 × 3 components, and P(|Z| > 5) ≈ 6e−7 each (fixed key anyway).

    For Gamma the draws are reparameterized: the per-draw derivatives of x with respect to
    (α, β) average to ∂E[x]/∂(α, β) = (1/β, −α/β²), again within 5 standard errors.
    """
    n = 20_000
    u = np.random.default_rng(15).uniform(0.3, 1.0, size=(3, NUM_UNIFORMS[family]))
    ref = reference_point(family, u)  # the 0.3 floor keeps α ≥ 0.8 so log x stays finite
    p = resolve(STANDARD[family])
    xi = jnp.asarray(ref["xi"][p.name])
    if family == "gamma":  # one compilation gives the draws and their pathwise derivatives

        def draws(s):
            x = p.sample(s, jax.random.key(0), (n,))
            return x, x

        per_draw, x = jax.jit(jax.jacfwd(draws, has_aux=True))(xi)  # [n, 3, 3, 2], [n, 3]
        per_draw = np.asarray(per_draw)[:, np.arange(3), np.arange(3)]  # [n, 3, 2]
        alpha, beta = ref["xi"][p.name][:, 0], ref["xi"][p.name][:, 1]
        expected = np.stack([1 / beta, -alpha / beta**2], -1)
        se = per_draw.std(0) / np.sqrt(n)
        np.testing.assert_array_less(np.abs(per_draw.mean(0) - expected), 5 * se)
    else:
        x = p.sample(xi, jax.random.key(0), (n,))
    k = np.shape(ref["theta"])[-1] if family == "categorical" else 0
    t = statistics_by_hand(family, x, k)
    fam = FAMILIES[family]
    var = np.asarray(fam.fisher(ref["theta"]))
    var = np.diagonal(var, axis1=-2, axis2=-1) if var.ndim == 3 else var
    assert x.shape[:2] == (n, 3)
    np.testing.assert_array_less(np.abs(t.mean(0) - ref["eta"]), 5 * np.sqrt(var / n))


# -- (f) bad inputs, validity, hashability ---------------------------------------------------


def test_wrong_trailing_shape_names_the_argument():
    p = resolve("gamma_shape_rate")
    with pytest.raises(ValueError, match=r"`params`.*\(2,\).*\(3, 3\)"):
        p.to_natural(jnp.ones((3, 3)))
    with pytest.raises(ValueError, match=r"`natural`.*\(2,\).*\(4, 1\)"):
        p.from_natural(jnp.ones((4, 1)))
    with pytest.raises(ValueError, match=r"`expectation`"):
        p.from_expectation(jnp.ones(3))
    with pytest.raises(ValueError, match=r"`params_p`"):
        p.kl(jnp.ones(2), jnp.ones(3))
    with pytest.raises(ValueError, match=r"`params`.*\(K,\).*\(\)"):
        resolve("dirichlet_concentration").is_valid(jnp.asarray(1.0))
    with pytest.raises(TypeError, match=r"`params`.*single array.*tuple"):
        p.check_structure((jnp.ones(3), jnp.ones(3)))


@pytest.mark.parametrize(
    ("name", "params", "expected"),
    [
        ("poisson_rate", [2.0, -1.0, 0.0, np.nan, np.inf], [1, 0, 0, 0, 0]),
        ("poisson_natural", [2.0, -30.0, np.nan, -np.inf], [1, 1, 0, 0]),
        ("poisson_expectation", [2.0, -1.0, np.nan], [1, 0, 0]),
        ("bernoulli_probs", [0.3, 1.0, 1.5, 0.0, np.nan], [1, 0, 0, 0, 0]),
        ("bernoulli_expectation", [0.3, -0.1], [1, 0]),
        ("gamma_shape_rate", [[2.0, 1.0], [2.0, -1.0], [-1.0, 1.0], [np.nan, 1.0]], [1, 0, 0, 0]),
        ("gamma_natural", [[1.0, -1.0], [-1.5, -1.0], [1.0, 0.5]], [1, 0, 0]),
        ("gamma_expectation", [[0.0, 2.0], [1.0, 2.0], [0.0, -1.0]], [1, 0, 0]),
        ("dirichlet_concentration", [[1.0, 2.0, 3.0], [1.0, -2.0, 3.0]], [1, 0]),
        ("dirichlet_natural", [[0.0, 1.0, 2.0], [-1.0, 1.0, 2.0]], [1, 0]),
        ("dirichlet_expectation", [[-1.0, -2.0, -3.0], [0.0, -2.0, -3.0]], [1, 0]),
        ("categorical_probs_minimal", [[0.2, 0.3], [0.6, 0.6], [0.0, 0.5]], [1, 0, 0]),
        ("categorical_natural", [[0.2, 0.3], [np.nan, 0.0]], [1, 0]),
    ],
)
def test_is_valid(name, params, expected):
    p = resolve(name)
    params = jnp.asarray(params)
    assert np.array_equal(np.asarray(p.is_valid(params)), np.asarray(expected, dtype=bool))


def test_is_valid_under_jit():
    p = resolve("gamma_expectation")
    params = jnp.array([[0.0, 2.0], [1.0, 2.0], [np.nan, 2.0]])
    assert np.array_equal(np.asarray(jax.jit(p.is_valid)(params)), [True, False, False])


def test_is_valid_of_custom_parameterization_and_check():
    assert np.array_equal(SQRT_RATE.is_valid(jnp.array([1.0, -1.0, np.nan])), [True, False, False])
    p = resolve("poisson_rate")
    with pytest.raises(ValueError, match=r"NaN"):
        p.check(jnp.array([1.0, np.nan]))
    with pytest.raises(ValueError, match=r"poisson_rate.*1 of 3 entries.*\(1,\).*rate λ > 0"):
        p.check(jnp.array([1.0, -2.0, 3.0]))


def test_custom_parameterization_matches_builtin_direction():
    """√λ-parameterized Poisson: its natural gradient, pushed to θ, equals the built-ins'."""
    rates = jnp.array([0.3, 4.0, 25.0])

    def loss_theta(theta):  # any smooth loss of the distribution
        return jnp.sum((jnp.exp(theta) - 3.0) ** 2 + theta)

    directions = []
    for p, xi in [
        (SQRT_RATE, jnp.sqrt(rates)),
        (resolve("poisson_rate"), rates),
        (resolve("poisson_natural"), jnp.log(rates)),
        (resolve("poisson_expectation"), rates),
    ]:
        g = jax.grad(lambda x, p=p: loss_theta(p.to_natural(x)))(xi)
        directions.append(jax.jvp(p.to_natural, (xi,), (ng(p, xi, g),))[1])
    for d in directions[1:]:
        assert_rel_norm(d, directions[0], rtol=1e-12)


def test_parameterizations_are_hashable_static_arguments():
    p = resolve("gamma_shape_rate")
    assert hash(p) == hash(resolve("gamma_shape_rate"))
    assert p.family is GAMMA and hash(GAMMA)

    @functools.partial(jax.jit, static_argnums=0)
    def entropy(param, xi):
        return param.entropy(xi)

    assert_close(entropy(p, jnp.array([2.0, 3.0])), st.gamma(2.0, scale=1 / 3).entropy(), 1e-12)
    assert repr(p) == "ArrayParameterization(name='gamma_shape_rate')"


def test_family_without_inverse_map_is_rejected():
    with pytest.raises(ValueError, match="initial_natural"):
        type(POISSON)(
            name="broken",
            log_partition=jnp.exp,
            sufficient_statistics=lambda x, shape: x,
            log_base_measure=lambda x: 0.0,
            param_shape=(),
            event_shape=(),
            domain_check=lambda t: True,
        )
