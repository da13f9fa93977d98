"""Tests of ``natgrad demo`` (Bayesian logistic regression) and of ``natgrad.data``."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate
from scipy.special import expit, log_expit

from natgrad import demo
from natgrad.cli import main
from natgrad.data import load_breast_cancer, prepare_classification
from natgrad.demo import logistic


def _quad_expectation(f, mean, std):
    """E[f(a)], a ~ N(μ, σ²), by adaptive quadrature over μ ± 40σ (the tails beyond: < 1e-300)."""
    density = lambda a: np.exp(-0.5 * ((a - mean) / std) ** 2) / (std * np.sqrt(2 * np.pi))  # noqa: E731
    lo, hi = mean - 40 * std, mean + 40 * std
    points = [0.0] if lo < 0.0 < hi else None  # the kink of log σ near 0
    value, _ = integrate.quad(
        lambda a: f(a) * density(a), lo, hi, points=points, epsabs=1e-13, epsrel=1e-13, limit=400
    )
    return value


# -------------------------------------------------------------------------------------------
# Quadrature.
# -------------------------------------------------------------------------------------------


def test_gauss_hermite_rule_is_for_the_standard_normal():
    nodes, weights = logistic.gauss_hermite(32)
    # Exact for polynomials of degree < 64: E[1] = 1, E[z²] = 1, E[z⁴] = 3.
    assert_allclose([weights.sum(), weights @ nodes**2, weights @ nodes**4], [1, 1, 3], rtol=1e-12)
    with pytest.raises(ValueError, match="num_points"):
        logistic.gauss_hermite(0)


@pytest.mark.parametrize("mean", [-4.0, -1.0, 0.0, 0.5, 3.0])
def test_expected_log_sigmoid_matches_adaptive_quadrature(mean):
    # log σ is analytic in the strip |Im a| < π, so the P-point Gauss–Hermite error decays
    # geometrically in √P·π/σ. At the optimum of the demo σₙ = ‖Lᵀxₙ‖ has median 1.4 and
    # 90% quantile 2.7; over σ ≤ 3 the 32-point rule's error measured ≤ 6e-6 (≤ 3e-8 for σ ≤ 2).
    nodes, weights = logistic.gauss_hermite(32)
    stds = np.array([0.05, 0.3, 1.0, 2.0, 3.0])
    got = np.asarray(
        logistic.expected_log_sigmoid(jnp.full(stds.shape, mean), jnp.asarray(stds), nodes, weights)
    )
    want = [_quad_expectation(log_expit, mean, s) for s in stds]
    assert_allclose(got, want, rtol=0, atol=1e-5)


def test_expected_log_likelihood_and_predictive_match_per_point_quadrature():
    with demo.x64(True):
        data = load_breast_cancer(seed=0)
        x, y = data.x_train[:40], data.y_train[:40]
        signs = 2.0 * y - 1.0
        rng = np.random.default_rng(1)
        dim = data.num_features
        mean = 0.3 * rng.standard_normal(dim)
        scale_tril = np.tril(0.05 * rng.standard_normal((dim, dim))) + 0.2 * np.eye(dim)
        params = (jnp.asarray(mean), jnp.asarray(scale_tril))
        nodes, weights = (jnp.asarray(a) for a in logistic.gauss_hermite(32))
        ell = float(
            logistic.expected_log_likelihood(
                params, jnp.asarray(x), jnp.asarray(signs), nodes, weights
            )
        )
        prob = np.asarray(logistic.predictive_probability(params, jnp.asarray(x), nodes, weights))
    # aₙ = xₙᵀw ~ N(xₙᵀm, xₙᵀSxₙ), computed densely here.
    mu = x @ mean
    std = np.sqrt(np.einsum("nd,de,ne->n", x, scale_tril @ scale_tril.T, x))
    assert std.max() < 3.0  # the regime of the tolerance above
    ref = sum(
        _quad_expectation(log_expit, s * m, v) for s, m, v in zip(signs, mu, std, strict=True)
    )
    assert_allclose(ell, ref, rtol=0, atol=40 * 1e-5)  # 40 terms, each within 1e-5
    ref_prob = [_quad_expectation(expit, m, v) for m, v in zip(mu, std, strict=True)]
    assert_allclose(prob, ref_prob, rtol=0, atol=1e-5)


def test_elbo_is_expected_log_likelihood_minus_kl():
    with demo.x64(True):
        data = load_breast_cancer(seed=0)
        x = jnp.asarray(data.x_train)
        signs = jnp.asarray(2.0 * data.y_train - 1.0)
        nodes, weights = (jnp.asarray(a) for a in logistic.gauss_hermite(32))
        prior = logistic.prior(data.num_features, jnp.float64)
        # q = p: KL = 0.
        assert_allclose(
            logistic.elbo(prior, x, signs, nodes, weights),
            logistic.expected_log_likelihood(prior, x, signs, nodes, weights),
            rtol=1e-13,
        )
        # q = N(m, σ²I) against N(0, I): KL = ½(Dσ² + ‖m‖² − D) − D log σ, in closed form.
        dim, sigma = data.num_features, 0.3
        mean = jnp.linspace(-1.0, 1.0, dim)
        q = (mean, sigma * jnp.eye(dim))
        # A negative diagonal gives the same q (S = LLᵀ); the KL must use log|Lᵢᵢ|.
        q_flipped = (mean, -sigma * jnp.eye(dim))
        kl = 0.5 * (dim * sigma**2 + float(mean @ mean) - dim) - dim * np.log(sigma)
        for params in (q, q_flipped):
            got = logistic.elbo(params, x, signs, nodes, weights)
            want = logistic.expected_log_likelihood(q, x, signs, nodes, weights) - kl
            assert_allclose(got, want, rtol=1e-12)


# -------------------------------------------------------------------------------------------
# The command.
# -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "--quick", "--no-progress", "--only", "logistic", "--out", str(out)]) == 0
    return out


def test_quick_demo_writes_json_and_png(quick_run, capsys):
    payload = json.loads((quick_run / "demo-logistic.json").read_text())  # strict JSON
    assert {"demo", "config", "versions", "machine", "results"} <= payload.keys()
    assert payload["demo"] == "logistic"
    assert payload["config"]["quick"] is True
    assert payload["versions"]["jax"] == jax.__version__
    rows = {row["method"]: row for row in payload["results"]}
    assert rows.keys() == {"natural_gradient", "adam"}
    for row in rows.values():
        for key in (
            "iterations_to_target",
            "seconds_to_target",
            "final",
            "test_accuracy",
            "seconds_per_iteration",
        ):
            assert key in row
        assert np.isfinite(row["final"]) and row["final"] <= payload["best_elbo"] + 1e-9
        assert 0.9 < row["test_accuracy"] <= 1.0
    ng = rows["natural_gradient"]
    assert ng["iterations"] == logistic.QUICK["iterations_ng"]
    assert ng["iterations_to_target"] is not None and ng["safeguard_skipped"] == 0
    png = (quick_run / "demo-logistic.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_natural_gradient_beats_adam_after_the_same_iterations(quick_run):
    traces = json.loads((quick_run / "demo-logistic.json").read_text())["traces"]
    ng, adam = np.array(traces["natural_gradient"]["elbo"]), np.array(traces["adam"]["elbo"])
    t = logistic.QUICK["iterations_ng"]  # 20
    assert ng[0] == adam[0]  # the same start, the same ELBO
    assert ng[t] > adam[t] + 10.0  # NG is within 0.1 nat by ~10 iterations; Adam needs ~150
    assert ng[t] > adam[-1]  # ... and still ahead of Adam after 5× the iterations


def test_demo_help_documents_outputs(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("demo-logistic.json", "demo-logistic.png", "--out", "--quick", "--gamma"):
        assert needle in text


def test_run_chunked_records_every_iteration():
    # f(s) = s for the step s ↦ s + 1: values 0, 1, ..., T across chunks and a remainder chunk.
    trace = demo.run_chunked(
        lambda s: (s + 1.0, s), lambda s: s, jnp.float32(0.0), 7, name="count", chunk_size=3
    )
    assert_allclose(trace.values, np.arange(8.0))
    assert trace.seconds[0] == 0.0 and np.all(np.diff(trace.seconds) >= 0)
    assert demo.iterations_to_target(trace, 4.5) == (5, trace.seconds[5])
    assert demo.iterations_to_target(trace, 100.0) == (None, None)


# -------------------------------------------------------------------------------------------
# Data.
# -------------------------------------------------------------------------------------------


def test_breast_cancer_split_is_standardized_and_deterministic():
    data = load_breast_cancer(seed=3)
    assert data.x_train.shape == (455, 31) and data.x_test.shape == (114, 31)
    assert data.feature_names[-1] == "bias" and np.all(data.x_train[:, -1] == 1.0)
    assert_allclose(data.x_train[:, :-1].mean(axis=0), 0.0, atol=1e-12)
    assert_allclose(data.x_train[:, :-1].std(axis=0), 1.0, rtol=1e-12)
    assert set(np.unique(data.y_train)) == {0, 1}
    again = load_breast_cancer(seed=3)
    assert np.array_equal(data.x_test, again.x_test) and np.array_equal(data.y_test, again.y_test)
    assert not np.array_equal(load_breast_cancer(seed=4).y_test, data.y_test)
    assert load_breast_cancer(seed=0, dtype=np.float32).x_train.dtype == np.float32


def test_nan_in_features_is_an_error_naming_the_column():
    features = np.arange(20.0).reshape(10, 2)
    features[4, 1] = np.nan
    with pytest.raises(ValueError, match=r"toy: .*NaN.*1 row.*'width'"):
        prepare_classification(
            features, np.arange(10) % 2, name="toy", seed=0, feature_names=["height", "width"]
        )


def test_nan_in_breast_cancer_is_an_error(monkeypatch):
    from sklearn import datasets

    original = datasets.load_breast_cancer

    def corrupted():
        raw = original()
        raw.data[7, 0] = np.nan
        return raw

    monkeypatch.setattr(datasets, "load_breast_cancer", corrupted)
    with pytest.raises(ValueError, match=r"breast_cancer: .*NaN.*'mean radius'"):
        load_breast_cancer(seed=0)


@pytest.mark.parametrize(
    ("labels", "kwargs", "match"),
    [
        (np.array([0, 1, 2, 1, 0, 1]), {}, "labels must be 0 or 1"),
        (np.array([0, 1, np.nan, 1, 0, 1]), {}, "labels contain NaN"),
        (np.array([0, 1, 0, 1, 0, 1]), {"test_fraction": 1.5}, "test_fraction"),
        (np.array([0, 1, 0]), {}, "shape"),
    ],
)
def test_bad_labels_and_fractions_are_errors(labels, kwargs, match):
    with pytest.raises(ValueError, match=match):
        prepare_classification(np.ones((6, 2)), labels, name="toy", seed=0, **kwargs)
