"""Tests of ``natgrad bench natural-gradient``: the JSON it writes and the loss it times."""

from __future__ import annotations

import argparse
import importlib.util
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import natgrad
from natgrad.bench import common
from natgrad.bench import natural_gradient as bench
from natgrad.expfam import gaussian


@pytest.fixture
def x64():
    with common.jax_x64(True):
        yield


def _args(argv):
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    return parser.parse_args(argv)


ROW_KEYS = {
    "parameterization",
    "dim",
    "seconds_grad",
    "seconds_natgrad",
    "ratio",
    "seconds_grad_min",
    "seconds_natgrad_min",
    "repeats",
    "cholesky_grad",
    "cholesky_natgrad",
    "triangular_solves_grad",
    "triangular_solves_natgrad",
}
COUNT_KEYS = (
    "cholesky_grad",
    "cholesky_natgrad",
    "triangular_solves_grad",
    "triangular_solves_natgrad",
)


def test_run_writes_json_with_schema(tmp_path):
    x64_before = jax.config.jax_enable_x64
    out = tmp_path / "out"
    # One small D keeps the test short (compiling 2 functions per parameterization dominates);
    # the correctness tests below reuse these compilations.
    args = _args(["--dims", "4", "--repeats", "2", "--min-time", "0", "--out", str(out)])
    assert bench.run(args) == 0
    assert jax.config.jax_enable_x64 == x64_before  # run() restores the x64 switch

    payload = json.loads((out / "natural-gradient.json").read_text())
    assert set(payload) == {"benchmark", "config", "versions", "machine", "results"}
    assert payload["benchmark"] == "natural-gradient"
    assert payload["config"]["dims"] == [4]
    assert payload["config"]["dtype"] == "float64"
    assert payload["config"]["repeats"] == 2
    assert {"python", "jax", "jaxlib", "optax", "numpy", "natgrad"} <= set(payload["versions"])
    assert payload["versions"]["natgrad"] == natgrad.__version__
    assert {"platform", "processor", "cpu_count", "jax_devices"} <= set(payload["machine"])

    rows = payload["results"]
    assert [(r["dim"], r["parameterization"]) for r in rows] == [
        (4, p) for p in bench.PARAMETERIZATIONS
    ]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["seconds_grad"] > 0 and row["seconds_natgrad"] > 0
        assert row["seconds_grad_min"] <= row["seconds_grad"]
        assert row["ratio"] == pytest.approx(row["seconds_natgrad"] / row["seconds_grad"])
        assert row["repeats"] == 2 and len(row["samples_natgrad"]) == 2
        assert row["finite"] is True
        for key in COUNT_KEYS:
            assert isinstance(row[key], int) and row[key] >= 0, (key, row[key])
        # The traced natural-gradient step contains the gradient, so at least its operations.
        assert row["cholesky_natgrad"] >= row["cholesky_grad"]
        assert row["triangular_solves_natgrad"] >= row["triangular_solves_grad"]
    # The losses are the ones documented: only the (m, L) loss avoids factorizations.
    grad_chol = {r["parameterization"]: r["cholesky_grad"] for r in rows if r["dim"] == 4}
    assert grad_chol == {
        "natural": 1,
        "expectation": 1,
        "mean_covariance": 1,
        "mean_cholesky": 0,
        "mean_precision_cholesky": 0,
    }
    if importlib.util.find_spec("matplotlib") is not None:
        assert (out / "natural-gradient.png").stat().st_size > 0


@pytest.mark.usefixtures("x64")
def test_loss_is_the_negative_elbo_in_every_parameterization():
    dim = 4  # the shapes of test_run_writes_json_with_schema, whose compilations are reused
    pb, (mean, cov) = bench.make_problem(dim, key=jax.random.PRNGKey(1))
    diff = mean - pb.target
    _, logdet = jnp.linalg.slogdet(cov)
    expected = 0.5 * jnp.trace(pb.precision @ cov) + 0.5 * diff @ pb.precision @ diff - 0.5 * logdet
    for name in bench.PARAMETERIZATIONS:
        params = bench.initial_params(name, mean, cov)
        value = jax.jit(bench.LOSSES[name])(params, pb)
        # Conversions by Cholesky factors of matrices with condition number < 1e2.
        np.testing.assert_allclose(value, expected, rtol=1e-10, err_msg=name)


@pytest.mark.usefixtures("x64")
def test_natural_gradients_agree_across_parameterizations():
    """F_ξ⁻¹∇_ξL pushed forward to (m, S) is the same tangent in every parameterization.

    For this loss the natural gradient in natural parameters is known in closed form,
    (θ₁ − Ab, θ₂ + ½A), so every parameterization is also compared against it.
    """
    dim = 4  # the shapes of test_run_writes_json_with_schema, whose compilations are reused
    pb, (mean, cov) = bench.make_problem(dim, key=jax.random.PRNGKey(2))
    theta1, theta2 = gaussian.natural_from_mean_covariance(mean, cov)
    exact_natural = (theta1 - pb.precision @ pb.target, theta2 + 0.5 * pb.precision)
    _, expected = jax.jvp(gaussian.mean_covariance_from_natural, (theta1, theta2), exact_natural)
    for name in bench.PARAMETERIZATIONS:
        p = natgrad.resolve(name)
        params = bench.initial_params(name, mean, cov)
        # The jitted step the benchmark times: natural_gradient of jax.grad of the loss.
        nat = bench.natgrad_function(name)(params, pb)
        _, (dmean, dcov) = jax.jit(lambda x, t, p=p: jax.jvp(p.mean_covariance, (x,), (t,)))(
            params, nat
        )
        # Round trips through a few Cholesky factorizations with condition number < 1e2.
        np.testing.assert_allclose(dmean, expected[0], rtol=1e-8, atol=1e-10, err_msg=name)
        np.testing.assert_allclose(dcov, expected[1], rtol=1e-8, atol=1e-10, err_msg=name)


def test_arguments_quick_and_dims():
    config = bench._config(_args(["--quick"]))
    assert config["dims"] == list(bench.QUICK_DIMS) and config["repeats"] == bench.QUICK_REPEATS
    config = bench._config(_args([]))
    assert config["dims"] == list(bench.FULL_DIMS) and config["dtype"] == "float64"
    assert max(config["dims"]) == 2000 and min(config["dims"]) == 10
    config = bench._config(_args(["--dims", "4,8", "16", "--repeats", "5", "--dtype", "float32"]))
    assert config["dims"] == [4, 8, 16] and config["repeats"] == 5
    assert config["dtype"] == "float32"


def test_count_primitives_recurses_and_takes_the_larger_cond_branch():
    def f(a, flag):
        chol = jax.jit(jnp.linalg.cholesky)(a)
        return jax.lax.cond(
            flag,
            lambda c: jax.scipy.linalg.solve_triangular(c, c, lower=True),
            lambda c: c,
            chol,
        )

    a = jnp.eye(3) * 2.0
    counts = bench.count_ops(jax.jit(f), a, True, dim=3)
    assert counts["cholesky"] == 1
    assert counts["triangular_solve"] == 1
    assert counts["triangular_solve_matrix"] == 1
    compiled = bench.count_compiled_ops(jax.jit(jnp.linalg.cholesky), a)
    assert compiled is None or compiled["cholesky"] == 1


def test_time_alternating_reports_every_function():
    x = jnp.arange(4.0)
    timings = common.time_alternating(
        {"a": lambda: x + 1, "b": lambda: x * 2}, repeats=3, min_time=0.0
    )
    assert set(timings) == {"a", "b"}
    for t in timings.values():
        assert t.repeats == 3 and len(t.samples) == 3 and 0 < t.min <= t.median
    with pytest.raises(ValueError, match="repeats"):
        common.time_alternating({"a": lambda: x}, repeats=0)


def test_write_json_creates_directories(tmp_path):
    path = common.write_json(tmp_path / "a" / "b.json", {"x": np.float64(1.5), "y": [1, 2]})
    assert json.loads(path.read_text()) == {"x": 1.5, "y": [1, 2]}
