"""Quantization-aware training (leanml/techniques/quantize/_qat.py, _qdq.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

import leanml
from leanml.errors import InvalidInputError
from leanml.models import Model

from .conftest import (
    _kernels,
    _quantize,
)


def test_qat_recovers_accuracy_static_ptq_loses_and_runs_in_int8(outlier_mlp):
    task, model = outlier_mlp
    static = _quantize(model, task, {"mode": "static", "auto_exclude": False, "sensitivity": False})
    static_drop = static.before.metric - static.after.metric
    assert static_drop > 0.05  # the constraint (0.01) is clearly broken by PTQ
    qat = _quantize(model, task, {"mode": "qat", "train": {"epochs": 6, "lr": 3e-3}})
    assert qat.before.metric - qat.after.metric <= 0.02
    assert qat.before.metric - qat.after.metric < static_drop / 3
    assert qat.result.details["float_nodes"] == {} and len(qat.result.details["int8_nodes"]) == 2
    assert _kernels(qat.artifact).get("QGemm") == 2
    weights = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(qat.artifact)).graph.initializer
        if len(i.dims) == 2
    ]
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert qat.result.train_result is not None and qat.result.train_result.stopped_epoch >= 1


def test_qat_on_an_onnx_only_model_is_a_clear_error(digits_cnn, tmp_path):
    task, model = digits_cnn
    path = tmp_path / "m.onnx"
    leanml.runtime.to_onnx(model, task.data.val, path)
    with pytest.raises(InvalidInputError, match="mode 'qat' fine-tunes a PyTorch model"):
        _quantize(Model(onnx=path), task, {"mode": "qat"})


def test_a_trained_qat_layer_can_be_kept_float_without_retraining(outlier_mlp, tmp_path):
    from leanml.runtime import OnnxRunner
    from leanml.techniques.quantize._qdq import keep_float

    task, model = outlier_mlp
    qat = _quantize(model, task, {"mode": "qat", "train": {"epochs": 1}})
    mixed = tmp_path / "mixed.onnx"
    keep_float(qat.artifact, mixed, ["/fc2/Gemm"])
    kernels = _kernels(mixed)
    # fc2 computes in float on fc1's float output (fc1's int8 output quantizer was fc2's input)
    assert kernels.get("QGemm", 0) < 2 and kernels.get("Gemm", 0) + kernels.get("FusedGemm", 0) >= 1
    x = task.data.val.x
    int8, part = OnnxRunner(qat.artifact).predict(x), OnnxRunner(mixed).predict(x)
    assert (int8.argmax(1) == part.argmax(1)).mean() > 0.9
