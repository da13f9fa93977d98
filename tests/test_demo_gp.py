"""Tests of the GP-classifier part of ``natgrad demo`` (``--only gp``)."""

from __future__ import annotations

import json

import pytest

from natgrad.cli import main
from natgrad.demo import gp_classifier


@pytest.fixture(scope="module")
def gp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo-gp")
    assert main(["demo", "--quick", "--no-progress", "--only", "gp", "--out", str(out)]) == 0
    return out


def test_gp_demo_writes_json_and_png(gp_run):
    assert not (gp_run / "demo-logistic.json").exists()  # --only gp
    assert not (gp_run / "demo-digits.json").exists()
    payload = json.loads((gp_run / "demo-gp.json").read_text())  # strict JSON
    assert {"demo", "config", "versions", "machine", "results", "traces"} <= payload.keys()
    assert payload["demo"] == "gp"
    config = payload["config"]
    assert config["quick"] is True and config["iterations"] == gp_classifier.QUICK["iterations"]
    rows = {row["method"]: row for row in payload["results"]}
    assert list(rows) == ["ng_adam", "adam"]
    for name, row in rows.items():
        assert row["iterations"] == config["iterations"]
        assert row["seconds_per_iteration"] > 0 and 0.5 < row["test_metric"] <= 1.0
        assert len(payload["traces"][name]["elbo"]) == config["iterations"] + 1
    png = (gp_run / "demo-gp.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 10_000


def test_natural_gradients_beat_adam_in_the_quick_run(gp_run):
    # Quick run (150 iterations, seed 0): ng_adam −71.4, adam −73.4; ng_adam reaches the best
    # ELBO's 1-nat band, Adam does not. Both classify the test set well (0.97, 0.96).
    rows = {r["method"]: r for r in json.loads((gp_run / "demo-gp.json").read_text())["results"]}
    assert rows["ng_adam"]["final_elbo"] >= rows["adam"]["final_elbo"] + 0.5
    assert rows["ng_adam"]["iterations_to_target"] is not None
    assert rows["adam"]["iterations_to_target"] is None
    assert min(r["test_metric"] for r in rows.values()) > 0.9


def test_demo_help_describes_the_gp_part(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for needle in ("demo-gp.json", "demo-gp.png", "--only gp", "--gp-iterations", "ng_adam"):
        assert needle in text


def test_bad_gp_options_are_errors(tmp_path):
    with pytest.raises(SystemExit, match="gp-iterations"):
        main(["demo", "--only", "gp", "--gp-iterations", "0", "--out", str(tmp_path)])
