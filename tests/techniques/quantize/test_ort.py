"""ONNX Runtime's static quantizer: every calibration method, and equal calibration batches
(leanml/techniques/quantize/_ort.py)."""

from __future__ import annotations

import numpy as np
import pytest

from leanml.techniques.quantize._ort import calibration_feeds

from .conftest import (
    TwoLayer,
    _plain_export,
    _quantize,
)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(digits_cnn, method):
    task, model = digits_cnn
    out = _quantize(
        model,
        task,
        {"mode": "static", "calibration": {"method": method, "samples": 64}, "sensitivity": False},
    )
    assert len(out.result.details["int8_nodes"]) == 5
    assert abs(out.after.metric - out.before.metric) <= 0.05


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_a_sample_count_that_is_not_a_multiple_of_32(
    digits_cnn, method
):
    task, model = digits_cnn
    out = _quantize(
        model,
        task,
        {"mode": "static", "calibration": {"method": method, "samples": 100}, "sensitivity": False},
    )
    assert out.result.details["calibration"]["used"] == 100
    assert len(out.result.details["int8_nodes"]) == 5


def test_calibration_batches_are_equal_sized(tmp_path):
    path = _plain_export(TwoLayer(), tmp_path / "mlp.onnx", (64,))
    for n, size in ((100, 25), (64, 32), (97, 1), (5, 5)):
        feeds = calibration_feeds(path, np.zeros((n, 64), np.float32))
        sizes = {len(next(iter(f.values()))) for f in feeds}
        assert sizes == {size} and sum(len(next(iter(f.values()))) for f in feeds) == n
