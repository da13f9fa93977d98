"""Tests of ``natgrad bench kfac`` (on fake MNIST) and its kfac-jax subprocess protocol."""

from __future__ import annotations

import json
import os
import stat
import sys

import jax
import numpy as np
import pytest
from helpers import fake_mnist

from natgrad.bench import classifier, kfac_jax_runner
from natgrad.bench import kfac as bench
from natgrad.cli import main

ROW_KEYS = {
    "model",
    "method",
    "settings",
    "seconds_per_step",
    "mean_seconds_per_step",
    "test_accuracy",
    "seconds_to_97",
    "steps_to_97",
    "seconds_to_98",
    "steps_to_98",
    "finite",
    "trace",
}


def _fake_mnist(path, *, num_train=512, num_test=200, seed=0):
    return fake_mnist(path, num_train=num_train, num_test=num_test, seed=seed)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kfac")
    path = _fake_mnist(tmp / "fake-mnist.npz")
    out = tmp / "out"
    argv = ["bench", "kfac", "--quick", "--mnist", str(path), "--out", str(out)]
    argv += ["--train-size", "512", "--test-size", "200", "--eval-every", "2", "--no-progress"]
    argv += ["--kfac-jax-python", str(tmp / "no-such-python")]
    assert main(argv) == 0
    return out


def test_quick_run_writes_json_rows_and_plot(quick_run):
    payload = json.loads((quick_run / "kfac.json").read_text())  # strict JSON
    assert {"benchmark", "config", "versions", "machine", "results", "summary"} <= set(payload)
    assert payload["benchmark"] == "kfac"
    config = payload["config"]
    assert config["epochs"] == 1 and config["steps_per_epoch"] == 4
    # kfac-jax is absent here, and the JSON says so
    assert config["kfac_jax"]["python"] is None
    assert "does not exist" in config["kfac_jax"]["status"]
    rows = payload["results"]
    assert [(r["model"], r["method"]) for r in rows] == [
        (m, k) for m in ("mlp", "cnn") for k in ("natgrad_kfac", "sgd", "adam")
    ]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert len(row["test_accuracy"]) == 1 and 0 <= row["test_accuracy"][0] <= 1
        assert row["trace"]["steps"] == [0, 2, 4] and row["trace"]["epochs"] == [0, 0.5, 1]
        assert row["seconds_per_step"] > 0 and row["mean_seconds_per_step"] > 0
        assert row["finite"] is True
    ours = [r for r in rows if r["method"] == "natgrad_kfac"]
    assert all(r["settings"] == {"defaults": True} for r in ours)
    assert all(r["num_rejected"] == 0 and r["num_failed_inverses"] == 0 for r in ours)
    assert set(payload["summary"]) == {"mlp", "cnn"}
    png = (quick_run / "kfac.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n")


def test_the_runner_builds_the_same_models():
    """kfac-jax trains exactly natgrad's MLP and CNN (the runner cannot import natgrad)."""
    # float32 throughout: other test modules turn on x64 in this process
    x = jax.random.uniform(jax.random.PRNGKey(0), (3, 784), np.float32)
    for name, (init, apply) in bench.MODEL_FUNCTIONS.items():
        params = init(jax.random.PRNGKey(1))
        np.testing.assert_allclose(
            kfac_jax_runner.APPLY[name](params, x), apply(params, x), rtol=1e-6, atol=1e-6
        )
    assert [p["w"].shape for p in bench.cnn_init(jax.random.PRNGKey(0))] == [
        (5, 5, 1, 16),
        (5, 5, 16, 16),
        (784, 10),
    ]


def test_batches_follow_the_classifier_order_and_evaluations():
    order = bench.batch_indices(10, 3, 2, seed=4)
    assert order.shape == (6, 3)
    np.testing.assert_array_equal(order[:3].ravel(), np.random.default_rng(4).permutation(10)[:9])
    np.testing.assert_array_equal(order[3:].ravel(), np.random.default_rng(5).permutation(10)[:9])
    assert bench.eval_steps(4, 2, 3) == [0, 3, 4, 6, 8]


def _fake_python(tmp_path, result: dict, status: int = 0):
    """An executable standing in for the kfac-jax python: writes ``result`` to --output."""
    script = tmp_path / "fake-python"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        "out = sys.argv[sys.argv.index('--output') + 1]\n"
        f"json.dump({result!r}, open(out, 'w'))\n"
        f"sys.exit({status})\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def _tiny_split():
    rng = np.random.default_rng(0)
    return classifier.Split(
        rng.random((8, 784), dtype=np.float32),
        rng.integers(0, 10, 8).astype(np.int32),
        rng.random((4, 784), dtype=np.float32),
        rng.integers(0, 10, 4).astype(np.int32),
    )


@pytest.mark.skipif(os.name != "posix", reason="an executable script stands in for python")
def test_kfac_jax_protocol_parses_a_run_and_reports_a_failure(tmp_path):
    params0 = bench.mlp_init(jax.random.PRNGKey(0))
    result = {
        "kfac_jax_version": "0.0.8",
        "jax_version": "0.8.3",
        "settings": {"learning_rate": 0.3},
        "step_seconds": [0.01, 0.002, 0.003, 0.002],
        "eval": {
            "steps": [0, 2, 4],
            "seconds": [0.0, 0.012, 0.017],
            "test_accuracy": [0.1, 0.975, 0.99],
            "train_loss": [None, 1.0, 0.5],
        },
        "finite": True,
        "inverse_update_steps": [0],
        "compile_seconds": 1.5,
    }
    row, status = bench.run_kfac_jax(
        _fake_python(tmp_path, result),
        "mlp",
        params0,
        _tiny_split(),
        epochs=2,
        batch_size=4,
        seed=0,
        eval_every=2,
        settings=bench.KFAC_JAX_SETTINGS,
    )
    assert "0.0.8" in status
    assert row["method"] == "kfac_jax" and row["model"] == "mlp"
    assert row["test_accuracy"] == [0.975, 0.99]  # after epochs 1 and 2 (2 steps each)
    assert row["seconds_to_97"] == pytest.approx(0.012) and row["steps_to_97"] == 2
    assert row["seconds_per_step"] == pytest.approx(0.0025)
    assert row["mean_seconds_per_step"] == pytest.approx(0.00425)
    assert row["seconds_per_step_without_inverse_updates"] == pytest.approx(0.002)

    failing = _fake_python(tmp_path, {"error": "kfac_jax exploded"}, status=1)
    row, status = bench.run_kfac_jax(
        failing,
        "mlp",
        params0,
        _tiny_split(),
        epochs=1,
        batch_size=4,
        seed=0,
        eval_every=2,
        settings={},
    )
    assert row is None and "kfac_jax exploded" in status


def test_bad_options_are_named(tmp_path):
    path = _fake_mnist(tmp_path / "m.npz", num_train=256, num_test=64)
    base = ["bench", "kfac", "--quick", "--mnist", str(path), "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="--models"):
        main([*base, "--models", "resnet"])
    with pytest.raises(SystemExit, match="--kfac-settings"):
        main([*base, "--kfac-settings", "{nope"])
