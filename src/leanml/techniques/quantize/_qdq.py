"""Graph surgery on the QDQ model a QAT export produces: weights stored as int8, biases as int32,
Relus that a uint8 quantizer stands in for removed (so ONNX Runtime fuses int8 kernels), and trained
layers turned back to float for auto-exclusion."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..._utils import atomic_path
from ._graph import (
    attribute,
    constant_values,
    consumers,
    dequantized,
    drop_unused,
    topological_sort,
    used_names,
)
from ._onnx import compact_names


def _drop_relu_before_quantize(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    """Remove a Relu whose only consumer is a uint8 QuantizeLinear with zero point 0: quantizing
    clamps negatives to 0 anyway, and without the Relu ONNX Runtime fuses the layer before it into
    an int8 kernel (ONNX Runtime's own quantizer drops these Relus the same way)."""
    readers = consumers(graph)
    outputs = {o.name for o in graph.output}
    drop = []
    for node in graph.node:
        users = readers.get(node.output[0], []) if node.op_type == "Relu" else []
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or node.output[0] in outputs:
            continue
        zp = values.get(users[0].input[2]) if len(users[0].input) > 2 else None
        if zp is None or zp.dtype != np.uint8 or np.any(zp != 0):
            continue
        users[0].input[0] = node.input[0]
        drop.append(node)
    for node in drop:
        graph.node.remove(node)


def _quantize_biases(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    """Store Conv/Gemm float biases as int32 with scale input_scale x weight_scale, as ONNX Runtime's
    quantizer does: its QGemm fusion needs the bias dequantized from int32."""
    producers = {o: n for n in graph.node for o in n.output}
    added: list[onnx.NodeProto] = []
    for node in graph.node:
        if (
            node.op_type not in ("Conv", "Gemm")
            or len(node.input) < 3
            or node.input[2] not in values
        ):
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        if dq_x.input[1] not in values or dq_w.input[1] not in values:
            continue
        scale = (
            values[dq_x.input[1]].astype(np.float64) * values[dq_w.input[1]].astype(np.float64)
        ).reshape(-1)
        bias = values[node.input[2]].astype(np.float64).reshape(-1)
        if scale.size == 1:
            scale = np.full_like(bias, scale[0])
        q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        name = node.input[2]
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_int32"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_int32_scale"),
                numpy_helper.from_array(np.zeros_like(q), f"{name}_int32_zero_point"),
            ]
        )
        added.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int32", f"{name}_int32_scale", f"{name}_int32_zero_point"],
                [f"{name}_dequantized"],
                name=f"{node.name}_bias_dequantize",
                axis=0,
            )
        )
        node.input[2] = f"{name}_dequantized"
    if added:
        nodes = [*added, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)


def fold_weight_quantizers(path: Path) -> int:
    """Replace QuantizeLinear nodes on constant weights by int8 initializers (what a deployed int8
    model stores); returns how many were folded."""
    model = onnx.load(str(path))
    graph = model.graph
    values = constant_values(graph)
    keep: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(i in values for i in node.input if i):
            keep.append(node)
            continue
        x, scale = (
            values[node.input[0]].astype(np.float64),
            values[node.input[1]].astype(np.float64),
        )
        zp = (
            values[node.input[2]]
            if len(node.input) > 2 and node.input[2]
            else np.zeros((), np.uint8)
        )
        axis = int(attribute(node, "axis", 1))
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zp_b = scale.reshape(shape), zp.astype(np.int64).reshape(shape)
        else:
            zp_b = zp.astype(np.int64)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.round(x / scale) + zp_b, info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    _drop_relu_before_quantize(graph, constant_values(graph))
    _quantize_biases(graph, constant_values(graph))
    used = used_names(graph)
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    consts = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(consts)
    topological_sort(graph)
    compact_names(model)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return folded


def keep_float(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Make the named compute nodes of a QDQ model compute in float without retraining: their
    int8 weights and int32 biases are dequantized into float initializers, and their activation
    input is clipped to its learned range instead of rounded (the layer was trained on that range).
    Other layers stay int8."""
    model = onnx.load(str(src))
    graph = model.graph
    values = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    added: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in values:  # a stored weight or bias: dequantize it once
                real = dequantized(values, dq)
                graph.initializer.append(numpy_helper.from_array(real, f"{name}_float"))
                node.input[i] = f"{name}_float"
            else:  # an activation: clip to the learned range instead of rounding to it
                q = producers.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in values:
                    continue
                q_scale = float(values[q.input[1]].reshape(-1)[0])
                zp_arr = values.get(q.input[2]) if len(q.input) > 2 else None
                zero = float(zp_arr.reshape(-1)[0]) if zp_arr is not None else 0.0
                info = np.iinfo(zp_arr.dtype if zp_arr is not None else np.uint8)
                low, high = (info.min - zero) * q_scale, (info.max - zero) * q_scale
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(np.array(low, np.float32), f"{name}_low"),
                        numpy_helper.from_array(np.array(high, np.float32), f"{name}_high"),
                    ]
                )
                added.append(
                    helper.make_node(
                        "Clip", [q.input[0], f"{name}_low", f"{name}_high"], [f"{name}_clipped"]
                    )
                )
                node.input[i] = f"{name}_clipped"
    graph.node.extend(added)
    topological_sort(graph)  # the Clips go before the nodes that read them
    drop_unused(graph)
    onnx.checker.check_model(model)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))
