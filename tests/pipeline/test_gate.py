"""The gate's verdicts: a rolled-back stage says what it would have given and what keeps it."""

from __future__ import annotations

from pathlib import Path

import pytest

from leanml.constraints import Constraints
from leanml.measure import MeasureConfig, Measurement
from leanml.metrics import get_metric
from leanml.pipeline import _gate
from leanml.report import StageRecord

from ..conftest import measurement

_m = measurement


BASE = _m(0.99, 32000, 1.0, 10.0)
BEFORE = StageRecord("prune", "prune", BASE, 0.0, "stages/01/model.onnx")


def _judge(m: Measurement, constraints: Constraints, paired: dict[int, float] | None = None):
    return _gate.judge(
        m,
        baseline=BASE,
        before=BEFORE,
        before_path=Path("before.onnx"),
        path=Path("after.onnx"),
        metric=get_metric("accuracy"),
        constraints=constraints,
        samples=None,
        measure_config=MeasureConfig(),
        name="int8",
    )


@pytest.fixture
def paired(monkeypatch):
    """The side-by-side re-timing's ratios (new / old p50), without timing anything."""
    ratios: dict[int, float] = {}
    monkeypatch.setattr(_gate, "paired_latency_ratio", lambda *a, **k: dict(ratios))
    return ratios


def test_a_latency_rollback_says_what_it_would_have_given_and_what_keeps_it(paired):
    paired.update({1: 1.24, 64: 1 / 1.49})
    v = _judge(_m(0.99, 10000, 1.3, 7.0), Constraints(max_latency_ratio=1.1))
    assert not v.accepted
    assert v.reason.startswith("int8 would have been 1.49x faster at batch 64 and 3.2x smaller")
    assert "measured side by side: batch 1 1.24x slower" in v.reason
    assert "max_latency_ratio 1.1 applies per batch size: set measure.batch_sizes" in v.reason
    assert "passes at batch 64" in v.reason
    assert "raise constraints.max_latency_ratio to 1.24" in v.reason
    assert "may differ from the table's single-run figures" in v.reason
    assert v.reason.endswith("kept prune")


def test_slower_at_every_batch_size_suggests_only_raising_the_ratio(paired):
    paired.update({1: 1.5, 64: 1.333})
    v = _judge(_m(0.99, 32000, 1.5, 13.0), Constraints(max_latency_ratio=1.1))
    assert not v.accepted and "would have been" not in v.reason
    assert "batch_sizes" not in v.reason
    assert "(raise constraints.max_latency_ratio to 1.5)" in v.reason


def test_a_stage_slower_in_one_run_but_not_side_by_side_is_kept_with_a_note(paired):
    paired.update({1: 1.02, 64: 0.9})
    v = _judge(_m(0.99, 32000, 1.5, 9.0), Constraints(max_latency_ratio=1.1))
    assert v.accepted and v.reason is None
    assert "not when re-timed side by side" in v.note and "batch 1 1.02x" in v.note


def test_a_metric_rollback_says_what_it_gave_and_the_max_metric_drop_that_keeps_it(paired):
    v = _judge(_m(0.9723, 8000, 0.5, 5.0), Constraints(max_metric_drop=0.01))
    assert not v.accepted
    assert v.reason == (
        "it gave 2.00x faster at batch 1, 2.00x faster at batch 64 and 4x smaller against its "
        "input (prune), but accuracy dropped 0.0177 vs the baseline on the test split, more "
        "than max_metric_drop 0.01; raise constraints.max_metric_drop to 0.0177 to keep int8; "
        "kept prune"
    )


def test_no_latency_constraint_no_retiming(paired):
    paired.update({1: 9.0})
    assert _judge(_m(0.99, 32000, 5.0, 50.0), Constraints()).accepted


def test_a_latency_rollback_counts_a_better_metric_among_what_it_would_have_given(paired):
    paired.update({1: 1.3, 64: 1.2})
    v = _judge(_m(0.995, 64000, 1.3, 12.0), Constraints(max_latency_ratio=1.1))
    assert v.reason.startswith("int8 would have been 0.0050 better in accuracy, but")
