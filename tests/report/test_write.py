"""metrics.json, report.md and report.html from a run record (``leanml.report._write``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from leanml.report import human_bytes, human_count, metrics_dict, write_metrics, write_reports

from .conftest import make_run_record

REPORTS = {"metrics.json", "report.md", "report.html"}


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> Path:
    """The reports of the hand-made run, written once for the tests that only read them
    (drawing the plots takes a second or two)."""
    run_dir = tmp_path_factory.mktemp("reports")
    write_reports(make_run_record(), run_dir)
    return run_dir


def test_metrics_json_validates_and_holds_what_the_records_say(
    tmp_path, run_record, validate_metrics
):
    path = write_metrics(run_record, tmp_path)
    assert path == tmp_path / "metrics.json"
    metrics = json.loads(path.read_text())
    validate_metrics(metrics)
    assert metrics == metrics_dict(run_record)
    assert metrics["final"] == "half-channels" and metrics["leanml_version"] == "0.0.test"
    assert [s["name"] for s in metrics["stages"]] == ["baseline", "half-channels", "int8"]
    base, pruned, quantized = metrics["stages"]
    assert base["latency_ms"]["runtime"] == "onnxruntime"
    assert (
        base["latency_ms"]["batch_1"]["p50"] == 0.5
        and base["latency_ms"]["batch_n"]["batch_size"] == 8
    )
    assert [t["batch_size"] for t in base["latency_ms"]["all"]] == [1, 8]
    training = base["training"]
    assert {k: training[k] for k in ("epochs", "stopped_epoch", "best_epoch", "stopped_early")} == {
        "epochs": 10,
        "stopped_epoch": 3,
        "best_epoch": 2,
        "stopped_early": True,
    }
    assert training["history"] == run_record.stages[0].train_result.history
    # what the trainer did (TrainResult.summary): epochs run, why it stopped, the lr and its range test
    assert training["epochs_run"] == 3 and {"stop_reason", "lr", "lr_find"} <= set(training)
    assert base["duration_s"] == 1.235 and base["val_metric"] == 0.94
    assert pruned["size_bytes"] == 20_000 and pruned["nonzero_params"] == 2_500
    assert quantized["accepted"] is False and quantized["reason"].startswith("accuracy dropped")
    assert quantized["notes"] == ["12 of 14 MatMul nodes run in int8"]
    assert "training" not in pruned
    assert metrics["failed_stages"] == [
        {"name": "distill", "kind": "distill", "error": "StageError: the student did not converge"}
    ]


def test_stage_details_never_overwrite_the_recorded_figures(run_record):
    pruned = metrics_dict(run_record)["stages"][1]
    assert pruned["sparsity"] == 0.5  # a new key: at the top level of the stage
    assert pruned["notes"] == ["removed 50% of the channels of conv1"]
    assert pruned["details"] == {"notes": "a details key that clashes"}  # a clash: under details
    assert pruned["metric"] == 0.945  # a required key: the measured value stays


def test_metrics_json_takes_numpy_values_and_paths(tmp_path, run_record):
    run_record.stages[1].details.update(
        {"scale": np.float32(0.5), "counts": np.arange(3), "where": Path("a/b.onnx")}
    )
    pruned = json.loads(write_metrics(run_record, tmp_path).read_text())["stages"][1]
    assert (
        pruned["scale"] == 0.5 and pruned["counts"] == [0, 1, 2] and pruned["where"] == "a/b.onnx"
    )


def test_a_value_json_cannot_hold_is_an_error_and_leaves_the_old_file(tmp_path, run_record):
    write_metrics(run_record, tmp_path)
    before = (tmp_path / "metrics.json").read_text()
    run_record.stages[1].details["handle"] = object()
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        write_metrics(run_record, tmp_path)
    assert (tmp_path / "metrics.json").read_text() == before
    assert {p.name for p in tmp_path.iterdir()} == {"metrics.json"}


def test_write_reports_writes_the_three_files_and_nothing_else(tmp_path, run_record):
    paths = write_reports(run_record, tmp_path)
    assert paths == {
        "metrics": tmp_path / "metrics.json",
        "markdown": tmp_path / "report.md",
        "html": tmp_path / "report.html",
    }
    assert {p.name for p in tmp_path.iterdir()} == REPORTS  # no temporary file left behind
    # writing again replaces them in place
    run_record.final = "baseline"
    write_reports(run_record, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == REPORTS
    assert json.loads((tmp_path / "metrics.json").read_text())["final"] == "baseline"
    assert "Final model: **baseline**" in (tmp_path / "report.md").read_text()


def test_a_write_that_fails_leaves_no_temporary_file(tmp_path, run_record):
    (tmp_path / "report.html").mkdir()  # the rename onto it fails
    (tmp_path / "report.html" / "keep").write_text("")
    with pytest.raises(OSError):
        write_reports(run_record, tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == REPORTS
    assert (tmp_path / "report.html").is_dir()


@pytest.mark.parametrize(
    ("name", "rolled_back"), [("report.md", "**no**: "), ("report.html", "<b>Rolled back</b>: ")]
)
def test_reports_show_every_stage_its_decision_and_its_notes(
    reports, run_record, name, rolled_back
):
    text = (reports / name).read_text()
    for stage in run_record.stages:
        assert stage.name in text
        for note in stage.notes:
            assert note in text
    assert f"{rolled_back}accuracy dropped 0.1500 vs the baseline; kept half-channels" in text
    assert text.count(rolled_back) == 1  # the two accepted stages say yes
    assert "distill" in text and "the student did not converge" in text  # the failed stage
    assert "Trained 3 of 10 epochs (early stopping); weights of epoch 2 kept." in text
    assert "test cpu (avx2)" in text and "hand-made" in text


def test_the_markdown_table_has_a_column_pair_per_batch_size(reports):
    lines = (reports / "report.md").read_text().splitlines()
    header = next(line for line in lines if line.startswith("| stage |"))
    assert "p50 b1 (ms)" in header and "p95 b8 (ms)" in header
    base = next(line for line in lines if line.startswith("| baseline |"))
    cells = [c.strip() for c in base.strip("|").split("|")]
    assert len(cells) == header.count("|") - 1
    assert cells[4:8] == ["0.500", "0.750", "2.000", "3.000"]  # p50, p95 at batch 1 then 8
    assert "39.1 KiB" in cells and "10.00k" in cells and "yes" in cells


def test_latencies_from_different_runtimes_are_said_not_to_compare(reports, tmp_path, run_record):
    assert "do not compare" not in (reports / "report.md").read_text()
    run_record.stages[1].measurement.runtime = "torch"
    write_reports(run_record, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert "onnxruntime for baseline, int8; torch for half-channels" in md
    assert "(latencies from different runtimes do not compare)" in md


def test_report_html_is_self_contained(reports):
    html = (reports / "report.html").read_text()
    assert "<script" not in html and "<link" not in html and "@import" not in html
    assert not re.search(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", html)
    assert not re.search(r"url\(\s*[\"']?(?:https?:)?//", html)
    for src in re.findall(r"""<img[^>]*\bsrc\s*=\s*["']([^"']*)""", html):
        assert src.startswith("data:"), src
    # plots are inline: the trade-off scatter, the sizes, one training curve, one stage plot
    assert html.count("<svg") == 4 and "Sensitivity per layer" in html


def test_report_html_escapes_what_stages_write(tmp_path, run_record):
    run_record.stages[1].notes.append("<script>alert(1)</script>")
    write_reports(run_record, tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "<script>alert(1)</script>" not in html
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (None, "–"),
        (0, "0 B"),
        (1023, "1023 B"),
        (1024, "1.0 KiB"),
        (1536, "1.5 KiB"),
        (2**20, "1.0 MiB"),
        (3 * 2**30, "3.0 GiB"),
        (5 * 2**40, "5120.0 GiB"),  # GiB is the largest unit
    ],
)
def test_human_bytes(n, shown):
    assert human_bytes(n) == shown


@pytest.mark.parametrize(
    ("n", "shown"),
    [
        (None, "–"),
        (0, "0"),
        (999, "999"),
        (1000, "1.00k"),
        (1_500_000, "1.50M"),
        (2_000_000_000, "2.00G"),
        (10**13, "10000.00G"),  # G is the largest unit
    ],
)
def test_human_count(n, shown):
    assert human_count(n) == shown


def test_a_latency_inside_the_measured_spread_is_marked_within_noise():
    from leanml.measure import Timing
    from leanml.report._write import within_noise

    def t(p50: float, p95: float) -> Timing:
        return Timing(batch_size=64, p50=p50, p95=p95, repeats=10, mean=p50, stable=True)

    assert within_noise(t(2.8, 6.9), t(3.0, 3.1))  # the case: p95 6.9 beside p50 2.8
    assert not within_noise(t(1.0, 1.05), t(2.0, 2.1))


def test_a_model_without_weight_tensors_shows_params_as_not_applicable():
    from leanml.report import human_params

    assert human_params(0) == "n/a (no weight tensors)"
    assert human_params(1500) == "1.50k" and human_params(None) == "–"
