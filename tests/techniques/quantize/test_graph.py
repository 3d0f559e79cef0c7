"""The graph helpers count what If/Loop branches read from the outer graph (silero-vad's decoder)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from leanml.techniques.quantize._graph import drop_unused, reads, topological_sort


def _if_model(*, branch_reads_first: bool) -> onnx.ModelProto:
    """``y = If(c, then: Add(h, w), else: Sub(h, w))`` where ``h = Relu(x)`` is produced outside the
    branches and ``w`` is an initializer read only inside them."""
    then = helper.make_graph(
        [helper.make_node("Add", ["h", "w"], ["t"])],
        "then",
        [],
        [helper.make_tensor_value_info("t", TensorProto.FLOAT, [2])],
    )
    other = helper.make_graph(
        [helper.make_node("Sub", ["h", "w"], ["e"])],
        "else",
        [],
        [helper.make_tensor_value_info("e", TensorProto.FLOAT, [2])],
    )
    branch = helper.make_node("If", ["c"], ["y"], then_branch=then, else_branch=other)
    relu = helper.make_node("Relu", ["x"], ["h"])
    nodes = [branch, relu] if branch_reads_first else [relu, branch]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("c", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.array([1.0, 2.0], np.float32), "w")],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_a_branch_that_reads_an_outer_tensor_is_ordered_after_its_producer():
    model = _if_model(branch_reads_first=True)
    assert reads(model.graph.node[0]) == {"c", "h", "w"}
    with pytest.raises(onnx.checker.ValidationError, match="topologically sorted"):
        onnx.checker.check_model(model)
    topological_sort(model.graph)
    assert [n.op_type for n in model.graph.node] == ["Relu", "If"]
    onnx.checker.check_model(model)
    session = ort.InferenceSession(model.SerializeToString())
    out = session.run(None, {"x": np.array([-1.0, 3.0], np.float32), "c": np.array(True)})[0]
    np.testing.assert_allclose(out, [1.0, 5.0])


def test_an_initializer_read_only_inside_a_branch_is_kept():
    model = _if_model(branch_reads_first=False)
    drop_unused(model.graph)
    assert [i.name for i in model.graph.initializer] == ["w"]
    assert len(model.graph.node) == 2
    onnx.checker.check_model(model)
