"""Tensor-level mixed precision in a QDQ model (leanml/techniques/quantize/_tensors.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from leanml.techniques.quantize._ort import calibration_feeds

from .conftest import (
    _AddBranchOutlier,
    _plain_export,
)


def test_keeping_a_tensor_float_unrounds_only_it_and_keeps_removed_relus(tmp_path):
    from leanml.techniques.quantize._onnx import prepare
    from leanml.techniques.quantize._ort import StaticSettings, quantize_static
    from leanml.techniques.quantize._tensors import keep_tensors_float, qdq_pairs

    path = _plain_export(_AddBranchOutlier(), tmp_path / "add.onnx", (3, 8, 8))
    prepared = prepare(path, tmp_path / "prepared.onnx").path
    x = np.random.default_rng(1).normal(size=(32, 3, 8, 8)).astype(np.float32)
    qdq = tmp_path / "qdq.onnx"
    quantize_static(prepared, qdq, calibration_feeds(prepared, x), StaticSettings(), compact=False)
    pairs = qdq_pairs(onnx.load(str(qdq)))
    kinds = {(p.kind, p.producer_op or "-") for p in pairs}
    assert ("weight", "-") in kinds and ("activation", "Add") in kinds
    every = tmp_path / "every.onnx"
    every.write_bytes(qdq.read_bytes())
    keep_tensors_float(every, [p.tensor for p in pairs], onnx.load(str(prepared)))

    def run(p: Path) -> np.ndarray:
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            None, {"pixels": x}
        )[0]

    # every pair float is the float model: the Relu the quantizer folded into a uint8 range stays
    float_out = run(prepared)
    assert np.abs(run(every) - float_out).max() < 0.01 < np.abs(run(qdq) - float_out).max()
    assert not {"QuantizeLinear", "DequantizeLinear"} & {
        n.op_type for n in onnx.load(str(every)).graph.node
    }
