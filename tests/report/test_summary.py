"""The deploy summary: metrics.json's ``summary``, the terminal's last line, the reports' headline."""

from __future__ import annotations

import pytest

from leanml.report import RunRecord, StageRecord, write_reports

from ..conftest import measurement

_m = measurement


def _record(final: str = "quantize") -> RunRecord:
    base = StageRecord(
        "baseline", "baseline", _m(0.99, 4000, 0.5, 8.0), 0.0, "stages/00/model.onnx"
    )
    q = StageRecord(
        "quantize", "quantize", _m(0.985, 1000, 0.25, 2.0), -0.005, "stages/01/model.onnx"
    )
    return RunRecord(
        leanml_version="0",
        task={"name": "t", "metric": "accuracy", "higher_is_better": True},
        environment={"threads": 1, "cpu": "x"},
        stages=[base, q],
        final=final,
        constraints={"max_metric_drop": 0.01},
        higher_is_better=True,
    )


def test_summary_holds_the_ratios_against_the_baseline(metrics_schema):
    import jsonschema

    record = _record()
    s = record.as_dict()["summary"]
    assert s["final_stage"] == "quantize" and s["model_path"] == "model.onnx"
    assert s["size_ratio"] == pytest.approx(4.0)
    assert s["latency_ratio"] == {"batch_1": 2.0, "batch_64": 4.0, "batch_n": 4.0}
    assert s["metric_delta"] == pytest.approx(-0.005)
    jsonschema.validate(s, metrics_schema["properties"]["summary"])


def test_the_deploy_line_says_what_each_figure_bought():
    line = _record().deploy_line()
    assert line == (
        "deploy model.onnx (quantize): 2.00x faster at batch 1, 4.00x faster at batch 64, "
        "4.00x smaller, accuracy -0.50 pt vs the baseline"
    )
    assert "it is the baseline" in _record(final="baseline").deploy_line()


def test_no_summary_when_the_runtimes_do_not_compare():
    record = _record()
    record.stages[1].measurement.runtime = "torch"
    assert record.summary() is None and "summary" not in record.as_dict()


def test_the_reports_open_with_the_headline_and_mark_the_final_row(tmp_path):
    record = _record()
    write_reports(record, tmp_path)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "report.md").read_text()
    assert record.deploy_line() in html and record.deploy_line() in md
    assert '<tr class="final">' in html and "**quantize** (final)" in md
    assert html.index(record.deploy_line()) < html.index("<table")
