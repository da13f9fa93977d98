"""Tests of ``natgrad bench svgp`` at toy size: JSON schema, the conjugate one-step gap, the plot,
the MNIST path on a fake npz and its skip message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import fake_mnist

from natgrad.bench import svgp
from natgrad.cli import main

ROW_KEYS = {
    "dataset",
    "method",
    "iterations_to_target",
    "seconds_to_target",
    "seconds_per_iteration",
    "final_elbo",
    "test_metric_name",
    "test_metric",
    "trace",
}


def _fake_mnist(path, *, num_train=300, num_test=100, seed=0):
    return fake_mnist(path, num_train=num_train, num_test=num_test, seed=seed)


TINY = ["--quick", "--iterations", "20", "--chunk-size", "10", "--no-progress"]


@pytest.fixture(scope="module")
def mnist_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("svgp")
    path = _fake_mnist(tmp / "fake-mnist.npz")
    out = tmp / "out"
    argv = ["bench", "svgp", *TINY, "--datasets", "regression_1d,mnist", "--mnist", str(path)]
    argv += ["--mnist-inducing", "10", "--mnist-batch-size", "32", "--mnist-eval-every", "10"]
    assert main([*argv, "--out", str(out)]) == 0
    return out


def test_json_schema_and_rows(mnist_run):
    payload = json.loads((mnist_run / "svgp.json").read_text())  # strict JSON
    assert set(payload) == {"benchmark", "config", "versions", "machine", "results"}
    assert payload["benchmark"] == "svgp"
    config = payload["config"]
    assert config["quick"] is True and config["mode"] == svgp.DEFAULT_MODE
    assert config["datasets"] == ["regression_1d", "mnist"]
    assert config["mnist"]["inducing"] == 10 and config["mnist"]["batch_size"] == 32
    assert {"regression_1d", "mnist"} <= set(config["data"])
    rows = payload["results"]
    pairs = [(r["dataset"], r["method"]) for r in rows]
    assert pairs == [
        ("regression_1d", "ng_adam"),
        ("regression_1d", "ng_adam_alternating"),
        ("regression_1d", "adam"),
        ("mnist", "ng_adam"),
        ("mnist", "adam"),
    ]
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert row["seconds_per_iteration"] > 0 and np.isfinite(row["final_elbo"])
        assert len(row["trace"]["elbo"]) == len(row["trace"]["iteration"])
        assert row["trace"]["iteration"][-1] == 20
    by = {(r["dataset"], r["method"]): r for r in rows}
    assert by["mnist", "ng_adam"]["test_metric_name"] == "test_accuracy"
    assert 0.0 <= by["mnist", "adam"]["test_metric"] <= 1.0
    assert [e["iteration"] for e in by["mnist", "adam"]["evaluations"]] == [0, 10, 20]
    assert by["regression_1d", "adam"]["test_metric_name"] == "test_rmse"
    assert "seconds_per_iteration_ratio_this_over_adam" in by["regression_1d", "ng_adam"]


def test_conjugate_one_natural_step_reaches_the_sgpr_bound(mnist_run):
    rows = json.loads((mnist_run / "svgp.json").read_text())["results"]
    ng = next(r for r in rows if r["dataset"] == "regression_1d" and r["method"] == "ng_adam")
    adam = next(r for r in rows if r["dataset"] == "regression_1d" and r["method"] == "adam")
    assert ng["one_step_gap"] < 1e-8
    assert ng["iterations_to_target"] == 1
    assert abs(ng["final_elbo"] - ng["sgpr_reference"]) < 1e-6 * abs(ng["sgpr_reference"])
    assert adam["final_elbo"] < ng["final_elbo"] - 1.0  # 20 Adam steps are far from it
    assert "one_step_gap" not in adam


def test_png_is_written(mnist_run):
    png = (mnist_run / "svgp.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_without_mnist_it_is_skipped_and_said(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(svgp.ENV_VAR, raising=False)
    argv = ["bench", "svgp", *TINY, "--datasets", "mnist", "--out", str(tmp_path)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "mnist: skipped (no --mnist or NATGRAD_MNIST)" in captured.err
    payload = json.loads((tmp_path / "svgp.json").read_text())
    assert payload["config"]["mnist"] == "mnist: skipped (no --mnist or NATGRAD_MNIST)"
    assert payload["results"] == []
    assert not (tmp_path / "svgp.png").exists()  # nothing to plot


def test_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="does not exist"):
        main(["bench", "svgp", "--datasets", "mnist", "--mnist", str(tmp_path / "nope.npz"),
              "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(SystemExit, match="--datasets"):
        main(["bench", "svgp", "--datasets", "cifar", "--out", str(tmp_path)])
    bad = tmp_path / "bad.npz"
    np.savez(bad, x_train=np.zeros((3, 28, 28)))
    with pytest.raises(SystemExit, match="lacks"):
        main(["bench", "svgp", "--datasets", "mnist", "--mnist", str(bad), "--out", str(tmp_path)])
