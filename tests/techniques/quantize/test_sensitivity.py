"""Sensitivity in one session, on a bounded sample (leanml/techniques/quantize/_sensitivity.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper


def test_sensitivity_sample_is_bounded_and_the_same_for_a_seed():
    from leanml.techniques.quantize._sensitivity import sample_rows

    assert list(sample_rows(10, 64, seed=0)) == list(range(10))  # few rows: all of them
    rows = sample_rows(1000, 64, seed=3)
    assert len(rows) == 64 and len(set(rows)) == 64 and list(rows) == sorted(rows)
    assert list(rows) == list(sample_rows(1000, 64, seed=3))
    assert list(rows) != list(sample_rows(1000, 64, seed=4))


def test_dynamic_sensitivity_switches_one_layer_in_one_session_like_the_quantizer(tmp_path):
    from onnx import TensorProto, helper

    from leanml.techniques.quantize._ort import quantize_dynamic
    from leanml.techniques.quantize._sensitivity import dynamic_sensitivity, switchable_dynamic

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    table = rng.normal(size=(50, 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
            helper.make_node("ReduceMean", ["e"], ["h"], axes=[1], keepdims=0, name="pool"),
            helper.make_node("MatMul", ["h", "w1"], ["a"], name="fc1"),
            helper.make_node("Relu", ["a"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    float_path = tmp_path / "float.onnx"
    onnx.save(model, str(float_path))
    ids = rng.integers(0, 50, size=(40, 5)).astype(np.int64)
    layers = ["embed", "fc1", "fc2"]
    switchable, switched = switchable_dynamic(
        model, [*layers, "missing"], per_channel=False, reduce_range=False
    )
    assert switched == layers and len(model.graph.input) == 1  # the input model is untouched
    onnx.checker.check_model(switchable)
    sess = ort.InferenceSession(switchable.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    y_float = reference.run(None, {"ids": ids})[0]

    def run(on: str | None) -> np.ndarray:
        flags = {f"__leanml_int8_{k}": np.array(n == on) for k, n in enumerate(layers)}
        return sess.run(None, {"ids": ids, **flags})[0]

    np.testing.assert_array_equal(run(None), y_float)  # every switch off: the float model
    for name in layers:  # one switch on: that layer as ONNX Runtime's dynamic int8 runs it
        only = tmp_path / f"{name}.onnx"
        quantize_dynamic(
            float_path,
            only,
            per_channel=False,
            reduce_range=False,
            exclude=[n for n in layers if n != name],
        )
        y_int8 = ort.InferenceSession(str(only), providers=["CPUExecutionProvider"]).run(
            None, {"ids": ids}
        )[0]
        simulated = run(name)
        assert not np.array_equal(simulated, y_float), name
        np.testing.assert_allclose(simulated, y_int8, atol=0.05 * np.abs(y_float).max())

    def mse(out: np.ndarray) -> float:
        return -float(((out - y_float) ** 2).mean())

    seen: list[str] = []
    base, drops = dynamic_sensitivity(
        model,
        layers,
        ids,
        mse,
        lambda b, v: b - v,
        per_channel=False,
        reduce_range=False,
        progress=lambda k, n, name, d: seen.append(name),
        batch_size=16,
    )
    assert base == 0.0 and seen == layers and set(drops) == set(layers)
    assert all(d > 0 for d in drops.values())
