"""SmoothQuant before int8 (leanml/techniques/quantize/_smooth.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

import leanml
from leanml.errors import InvalidInputError

from .conftest import (
    _quantize,
)


def _matmul_graph(tmp_path: Path, outlier: float = 1.0) -> tuple[Path, np.ndarray]:
    """x -> MatMul -> Add -> MatMul -> LayerNorm -> MatMul: the first MatMul reads a graph input
    (a Mul must be inserted), the second a linear layer's output and the third a LayerNorm's (both
    fold exactly). Channel 3 of x is ``outlier`` times larger than the others."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def const(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"], name="first"),
        helper.make_node("Add", ["a", "b0"], ["a2"], name="bias"),
        helper.make_node("MatMul", ["a2", "w1"], ["c"], name="second"),
        helper.make_node("LayerNormalization", ["c", "gamma", "beta"], ["n"], name="norm"),
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="third"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [const("w0", 64, 32), const("b0", 32), const("w1", 32, 48), const("w2", 48, 16)]
        + [const("gamma", 48), const("beta", 48)],
    )
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(0, 1, (256, 64)).astype(np.float32)
    x[:, 3] *= outlier
    return path, x


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]


def test_smoothing_keeps_the_float_model_and_folds_where_it_is_exact(tmp_path):
    from leanml.techniques.quantize._smooth import smooth

    path, x = _matmul_graph(tmp_path, outlier=30.0)
    done = smooth(path, tmp_path / "smooth.onnx", [{"x": x[:128]}, {"x": x[128:]}], alpha=0.75)
    assert done.layers == ["first", "second", "third"] and done.tensors == 3
    assert sorted(done.folded.values()) == ["LayerNormalization", "MatMul + Add"]
    assert done.inserted == 1 and done.skipped == {}
    before, after = _run(path, x), _run(tmp_path / "smooth.onnx", x)
    assert not np.array_equal(
        numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]),
        numpy_helper.to_array(onnx.load(str(tmp_path / "smooth.onnx")).graph.initializer[0]),
    )
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * np.abs(before).max())


def test_smoothing_skips_what_it_cannot_smooth_and_says_why(tmp_path):
    from onnx import TensorProto, helper

    from leanml.techniques.quantize._smooth import smooth

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "z"], ["y"], name="scores")],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("x", "z")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = [{"x": np.ones((4, 4), np.float32), "z": np.ones((4, 4), np.float32)}]
    done = smooth(path, tmp_path / "out.onnx", feeds, alpha=0.5)
    assert done.layers == [] and "not a constant" in done.skipped["scores"]
    assert not (tmp_path / "out.onnx").exists()

    path, x = _matmul_graph(tmp_path)
    done = smooth(path, tmp_path / "out.onnx", [{"x": x}], alpha=0.5, exclude=["first"])
    assert done.layers == ["second", "third"] and "excluded" in done.skipped["first"]


def test_smoothing_improves_dynamic_int8_fidelity_with_an_outlier_channel(tmp_path):
    from leanml.techniques.quantize._config import reduce_range_for
    from leanml.techniques.quantize._ort import quantize_dynamic
    from leanml.techniques.quantize._smooth import smooth

    path, x = _matmul_graph(tmp_path, outlier=60.0)
    reference = _run(path, x)
    smooth(path, tmp_path / "smooth.onnx", [{"x": x[:128]}], alpha=0.75)

    def error(src: Path) -> float:
        dst = tmp_path / f"{src.stem}-int8.onnx"
        # 7-bit weights where the CPU has no VNNI (u8 x s8 kernels saturate there), as leanml does
        quantize_dynamic(src, dst, per_channel=True, reduce_range=reduce_range_for("auto"))
        y = _run(dst, x[128:])
        return float(np.abs(y - reference[128:]).mean() / np.abs(reference[128:]).mean())

    plain, smoothed = error(path), error(tmp_path / "smooth.onnx")
    assert smoothed < 0.5 * plain, (plain, smoothed)

    out = leanml.quantize(str(path), data=(x, None), mode="dynamic", metric="cosine", smooth=True)
    said = next(n for n in out.result.notes if n.startswith("SmoothQuant (alpha 0.75)"))
    assert "3 MatMul/Gemm node(s)" in said and said.endswith("kept.")


def test_smooth_true_needs_an_int8_mode(digits_cnn):
    task, model = digits_cnn
    with pytest.raises(InvalidInputError, match=r"smooth: true .* mode is 'fp16'"):
        _quantize(model, task, {"mode": "fp16", "smooth": True})
