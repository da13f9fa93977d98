"""Tests of ``natgrad bench mnist-mlp`` and its engine :mod:`natgrad.bench.classifier`."""

from __future__ import annotations

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from helpers import fake_mnist
from numpy.testing import assert_allclose

from natgrad.bench import classifier, common
from natgrad.bench import mnist_mlp as bench
from natgrad.cli import main

ROW_KEYS = {
    "method",
    "test_accuracy",
    "seconds_per_epoch",
    "seconds_to_97",
    "steps_to_97",
    "seconds_per_step",
    "curvature_products_per_step",
    "cvp_over_grad",
    "settings",
    "trace",
}


def _fake_mnist(path, *, num_train=600, num_test=300, seed=0):
    return fake_mnist(path, num_train=num_train, num_test=num_test, seed=seed)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("mnist")
    path = _fake_mnist(tmp / "fake-mnist.npz")
    out = tmp / "out"
    argv = ["bench", "mnist-mlp", "--quick", "--mnist", str(path), "--out", str(out)]
    argv += ["--train-size", "512", "--test-size", "256", "--eval-every", "4", "--no-progress"]
    argv += ["--cvp-repeats", "2"]
    assert main(argv) == 0
    return out


def test_quick_run_writes_json_with_schema(quick_run):
    payload = json.loads((quick_run / "mnist-mlp.json").read_text())
    assert set(payload) == {"benchmark", "config", "versions", "machine", "results"}
    assert payload["benchmark"] == "mnist-mlp"
    config = payload["config"]
    assert config["quick"] is True and config["epochs"] == 1
    assert (config["train_size"], config["test_size"], config["batch_size"]) == (512, 256, 128)
    assert config["steps_per_epoch"] == 4 and config["eval_every"] == 4
    assert config["ng_settings"] == classifier.NG_SETTINGS
    assert payload["versions"]["jax"] == jax.__version__
    assert {"platform", "processor", "cpu_count", "jax_devices"} <= set(payload["machine"])

    rows = {row["method"]: row for row in payload["results"]}
    assert list(rows) == list(classifier.METHODS)
    for name, row in rows.items():
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert len(row["test_accuracy"]) == 1
        assert all(0.0 <= a <= 1.0 for a in row["test_accuracy"])
        assert row["seconds_per_epoch"] > 0 and row["seconds_per_step"] > 0
        assert row["seconds_to_97"] is None or row["seconds_to_97"] >= 0
        assert row["steps_to_97"] is None or isinstance(row["steps_to_97"], int)
        trace = row["trace"]
        # Evaluations at step 0 and after step 4 (eval_every and the epoch's end coincide).
        assert trace["steps"] == [0, 4] and trace["epochs"] == [0.0, 1.0]
        assert trace["seconds"][0] == 0.0 and trace["seconds"][1] > 0
        assert trace["test_accuracy"][-1] == row["test_accuracy"][-1]
        assert row["finite"] is True
        if name in classifier.CURVATURE_OF:
            assert row["settings"]["curvature"] == classifier.CURVATURE_OF[name]
            # CG runs at least one iteration, plus one product for the warm start's residual.
            assert row["curvature_products_per_step"] >= 1
            assert row["curvature_products_per_step"] <= row["settings"]["cg_max_iterations"] + 1
            # Timing differences: finite, but their sign is at the mercy of a shared machine.
            assert math.isfinite(row["cvp_over_grad"])
            cvp = row["cvp"]
            assert cvp["batch_size"] == 128 and cvp["products"] == 10
            assert cvp["curvature_batch_size"] == classifier.NG_SETTINGS["curvature_batch_size"]
            assert cvp["seconds_grad"] > 0 and math.isfinite(cvp["seconds_product"])
        else:
            assert row["curvature_products_per_step"] is None and row["cvp_over_grad"] is None
    png = (quick_run / "mnist-mlp.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


@pytest.mark.parametrize("how", ["nothing", "missing-file"])
def test_missing_data_exits_naming_both_ways(how, tmp_path, monkeypatch):
    monkeypatch.delenv(bench.ENV_VAR, raising=False)
    argv = ["bench", "mnist-mlp", "--quick", "--out", str(tmp_path)]
    if how == "missing-file":
        argv += ["--mnist", str(tmp_path / "absent.npz")]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    message = str(exc.value.code)
    assert exc.value.code != 0
    assert "--mnist" in message and bench.ENV_VAR in message
    assert not (tmp_path / "mnist-mlp.json").exists()


def test_environment_variable_gives_the_data(tmp_path, monkeypatch):
    path = _fake_mnist(tmp_path / "m.npz", num_train=20, num_test=10)
    monkeypatch.setenv(bench.ENV_VAR, str(path))
    data, found = bench.load_mnist(None, train_size=16)
    assert found == path
    assert data.x_train.shape == (16, 784) and data.x_test.shape == (10, 784)
    assert data.x_train.dtype == np.float32 and data.y_train.dtype == np.int32
    assert 0.0 <= data.x_train.min() and data.x_train.max() <= 1.0


def test_blog_rank_one_transform_is_the_pseudo_inverse_solution():
    # G (6, 4) of rank 4 with singular values in [1, 2]: GGᵀ (6, 6) is singular, and CG from 0
    # stays in range(G), where its eigenvalues are σ² ∈ [1, 4]. The minimum-norm solution of
    # (GGᵀ)X = G is X* = (GGᵀ)⁺G. CG stops at ‖R‖_F ≤ rtol‖G‖_F, and the error E = X − X* lies
    # in range(G), so ‖E‖_F ≤ ‖R‖_F / σ_min² ≤ rtol‖G‖_F / 1 (with four distinct σ² CG is
    # exact after 4 iterations, so in float64 the error is in fact at rounding level).
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((6, 4)))
    v, _ = np.linalg.qr(rng.standard_normal((4, 4)))
    sigma = np.array([1.0, 1.3, 1.7, 2.0])
    g = u @ np.diag(sigma) @ v.T
    bias = rng.standard_normal(5)
    rtol = 1e-5
    with common.jax_x64(True):
        tx = classifier.blog_rank_one_transform(max_iterations=100, rtol=rtol)
        grads = {"w": jnp.asarray(g), "b": jnp.asarray(bias)}
        out, _ = tx.update(grads, tx.init(grads))
        out = jax.tree.map(np.asarray, out)
    assert out["w"].dtype == np.float64 and out["b"].shape == (5,)
    want = np.linalg.pinv(g @ g.T) @ g
    bound = rtol * np.linalg.norm(g) / sigma.min() ** 2
    assert np.linalg.norm(out["w"] - want) <= bound
    assert_allclose(out["w"], np.linalg.pinv(g.T), atol=bound)  # (GGᵀ)⁺G = (Gᵀ)⁺
    # A bias is a column g: (ggᵀ)⁺g = g/‖g‖² (one CG step, exact up to rounding).
    assert_allclose(out["b"], bias / (bias @ bias), rtol=1e-12)


def test_blog_rank_one_transform_maps_a_zero_gradient_to_zero():
    tx = classifier.blog_rank_one_transform()
    zeros = {"w": jnp.zeros((3, 2)), "b": jnp.zeros(2)}
    out, _ = tx.update(zeros, tx.init(zeros))
    assert all(np.all(np.asarray(leaf) == 0) for leaf in jax.tree.leaves(out))


def test_seconds_to_and_steps_to_on_a_handmade_trace():
    trace = {
        "steps": [0, 50, 100, 150],
        "seconds": [0.0, 1.5, 3.0, 4.5],
        "test_accuracy": [0.1, 0.96, 0.97, 0.99],
    }
    assert classifier.seconds_to(trace, 0.97) == 3.0  # ≥ counts: 0.97 reaches 0.97
    assert classifier.steps_to(trace, 0.97) == 100
    assert classifier.seconds_to(trace, 0.05) == 0.0
    assert classifier.seconds_to(trace, 0.995) is None
    assert classifier.steps_to(trace, 0.995) is None


def test_mlp_init_bounds_and_apply_shapes():
    params = classifier.mlp_init(jax.random.PRNGKey(0), [20, 7, 3])
    assert [(p["w"].shape, p["b"].shape) for p in params] == [((20, 7), (7,)), ((7, 3), (3,))]
    for p, fan_in in zip(params, (20, 7), strict=True):
        for leaf in (p["w"], p["b"]):
            assert leaf.dtype == jnp.float32
            assert float(jnp.max(jnp.abs(leaf))) <= 1 / np.sqrt(fan_in)
    assert classifier.mlp_apply(params, jnp.ones((5, 20))).shape == (5, 3)


def test_interleaving_does_not_change_a_run():
    # The data order and the initialization are shared: SGD trained alone and SGD trained in
    # turn with Adam take the same steps, so they evaluate to the same accuracies.
    rng = np.random.default_rng(1)
    data = classifier.Split(
        rng.random((96, 12), dtype=np.float32),
        rng.integers(0, 3, 96).astype(np.int32),
        rng.random((40, 12), dtype=np.float32),
        rng.integers(0, 3, 40).astype(np.int32),
    )
    params0 = classifier.mlp_init(jax.random.PRNGKey(2), [12, 8, 3])
    options = dict(epochs=2, batch_size=32, seed=3, eval_every=2)
    alone = classifier.train("sgd", {"learning_rate": 0.5}, params0, data, **options)
    both = classifier.train_interleaved(
        {"adam": {}, "sgd": {"learning_rate": 0.5}}, params0, data, **options
    )
    assert both[1]["method"] == "sgd"
    assert both[1]["steps"] == alone["steps"] == [0, 2, 3, 4, 6]
    assert both[1]["test_accuracy"] == alone["test_accuracy"]
    assert_allclose(
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(both[1]["final_params"])]),
        np.concatenate([np.ravel(x) for x in jax.tree.leaves(alone["final_params"])]),
        rtol=0,
        atol=0,
    )
    assert alone["settings"] == {"learning_rate": 0.5}
    assert len(alone["epoch_test_accuracy"]) == 2


def test_unknown_method_is_an_error_naming_the_choices():
    with pytest.raises(ValueError, match="sgd, adam"):
        classifier.parse_methods("sgd,newton")
    assert classifier.parse_methods("adam, sgd,adam") == ["adam", "sgd"]
