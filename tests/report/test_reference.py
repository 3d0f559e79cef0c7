"""The tree reference in metrics.json and the reports: one sentence that says "beats" only when the
trees do better, and never compares latencies from two runtimes."""

from __future__ import annotations

import json

import jsonschema
import pytest

from leanml.report import TreeReference, reference_line, write_reports

from .conftest import make_run_record, measurement


def _with_reference(metric: float, p50: float, **kw) -> dict:
    run = make_run_record()  # baseline: accuracy 0.95, batch-1 p50 0.50 ms
    run.reference = TreeReference(
        "HistGradientBoostingClassifier", measurement(metric, p50, 300_000, 0, **kw)
    )
    return run.as_dict()


def test_better_trees_beat_the_baseline_and_are_suggested(metrics_schema):
    metrics = _with_reference(0.97, 0.05)
    jsonschema.validate(metrics, metrics_schema)
    ref = metrics["reference"]
    assert ref["model"] == "HistGradientBoostingClassifier" and ref["beats_baseline"] is True
    assert ref["latency_ratio_b1"] == pytest.approx(0.1) and ref["size_bytes"] == 300_000
    assert ref["note"] == (
        "A gradient-boosted tree model (HistGradientBoostingClassifier, defaults) beats the "
        "baseline: test accuracy 0.9700 vs the baseline's 0.9500 at 0.1x its batch-1 latency: "
        "try `model: sklearn:HistGradientBoostingClassifier`."
    )


def test_worse_trees_leave_the_net_ahead():
    ref = _with_reference(0.90, 1.5)["reference"]
    assert (
        ref["beats_baseline"] is False and "beats" not in ref["note"] and "try" not in ref["note"]
    )
    assert ref["note"].startswith("The baseline net is ahead of a gradient-boosted tree model")
    assert "at 3x its batch-1 latency" in ref["note"]


def test_equal_trees_match():
    assert "matches the baseline" in _with_reference(0.95, 0.5)["reference"]["note"]


def test_lower_is_better_metrics_compare_the_other_way():
    line = reference_line("HistGradientBoostingRegressor", "mse", 2.0, 3.0, 0.5, False)
    assert " beats the baseline: test mse 2 vs the baseline's 3 at 0.5x" in line
    line = reference_line("HistGradientBoostingRegressor", "mse", 4.0, 3.0, 0.5, False)
    assert line.startswith("The baseline net is ahead")


def test_latencies_from_two_runtimes_are_not_compared():
    run = make_run_record()
    run.stages[0].measurement.runtime = "torch"
    run.reference = TreeReference(
        "HistGradientBoostingClassifier",
        measurement(0.97, 0.05, 1000, 0),
        note="the baseline was timed in torch, the trees in onnxruntime",
    )
    ref = run.as_dict()["reference"]
    assert ref["latency_ratio_b1"] is None
    assert "latency not compared: the baseline was timed in torch" in ref["note"]


def test_reports_show_the_sentence(tmp_path):
    run = make_run_record()
    run.reference = TreeReference(
        "HistGradientBoostingClassifier", measurement(0.97, 0.05, 300_000, 0)
    )
    write_reports(run, tmp_path)
    note = json.loads((tmp_path / "metrics.json").read_text())["reference"]["note"]
    assert note in (tmp_path / "report.md").read_text()
    html = (tmp_path / "report.html").read_text()
    assert "<code>model: sklearn:HistGradientBoostingClassifier</code>" in html
    assert "the baseline&#39;s 0.9500" in html


def test_no_reference_no_key_and_no_sentence(tmp_path, run_record):
    write_reports(run_record, tmp_path)
    assert "reference" not in json.loads((tmp_path / "metrics.json").read_text())
    assert "gradient-boosted" not in (tmp_path / "report.md").read_text()
