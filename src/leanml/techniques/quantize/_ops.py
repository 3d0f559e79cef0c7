"""What ONNX Runtime actually runs in int8: the compute kernels of its optimized graph (after QDQ
fusion), matched back to the float graph's layers, with why each other layer stayed float."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import onnx

# Compute kernels of ONNX Runtime's optimized graph that take int8/uint8 operands.
INT8_KERNELS = {
    "QLinearConv",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QGemm",
    "QAttention",
    "DynamicQuantizeLSTM",
}
FLOAT_KERNELS = {"Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Attention"}
_NO_ARITHMETIC = {
    "Constant",
    "ConstantOfShape",
    "Shape",
    "Size",
    "Identity",
    "Cast",
    "Reshape",
    "Flatten",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Concat",
    "Gather",
    "Slice",
    "Split",
    "Expand",
    "Range",
    "Tile",
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "ReorderInput",
    "ReorderOutput",
    "NhwcMaxPool",
}


@dataclass
class OpCount:
    """Compute nodes of ONNX Runtime's optimized graph (what actually runs), by precision.

    Attributes:
        int8: names of compute nodes that run int8 kernels.
        float: name -> why it stayed float.
        casts: Cast nodes in the optimized graph (fp16 on a CPU without fp16 kernels adds them).
        kernels: op type -> count, for int8 and float compute kernels.
        float_ops: other ops that do float arithmetic in the optimized graph (no int8 form).
    """

    int8: list[str] = field(default_factory=list)
    float: dict[str, str] = field(default_factory=dict)
    casts: int = 0
    kernels: dict[str, int] = field(default_factory=dict)
    float_ops: dict[str, int] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return len(self.int8) + len(self.float)


def optimized_graph(path: Path) -> onnx.ModelProto:
    """The graph ONNX Runtime runs after its optimizations (QDQ fusion into int8 kernels)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        opts.intra_op_num_threads = 1
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        return onnx.load(str(out))


def _base_name(name: str) -> str:
    for marker in ("_token_", "_quant"):
        if marker in name:
            name = name.split(marker)[0]
    return name


def count_ops(
    quantized: Path,
    layers: Sequence[str],
    *,
    excluded: dict[str, str] | None = None,
    op_reasons: dict[str, str] | None = None,
) -> OpCount:
    """Which compute nodes run int8 once ONNX Runtime has fused the graph, and why the others don't.

    Args:
        quantized: the quantized ONNX file.
        layers: the names of the float graph's compute nodes (Conv, MatMul, Gemm).
        excluded: node name -> why it was kept float on purpose (requested, auto-excluded).
        op_reasons: op type -> why the quantizer leaves that op float in this mode.
    """
    excluded = excluded or {}
    op_reasons = op_reasons or {}
    graph = onnx.load(str(quantized)).graph
    producers = {o: n for n in graph.node for o in n.output}
    by_name = {n.name: n for n in graph.node}
    result = OpCount()
    int8_names: list[str] = []
    for node in optimized_graph(quantized).graph.node:
        if node.op_type == "Cast":
            result.casts += 1
        if node.op_type in INT8_KERNELS or node.op_type in FLOAT_KERNELS:
            result.kernels[node.op_type] = result.kernels.get(node.op_type, 0) + 1
        if node.op_type in INT8_KERNELS:
            int8_names.append(_base_name(node.name))
        elif not (
            node.op_type in FLOAT_KERNELS
            or node.op_type in _NO_ARITHMETIC
            or node.op_type.startswith("QLinear")
        ):
            result.float_ops[node.op_type] = result.float_ops.get(node.op_type, 0) + 1
    result.int8 = [n for n in layers if n in int8_names] + [
        n for n in int8_names if n not in layers
    ]
    for name in layers:
        if name in int8_names:
            continue
        source = by_name.get(name)
        if name in excluded:
            reason = excluded[name]
        elif source is not None and any(
            (p := producers.get(i)) is not None and p.op_type == "DequantizeLinear"
            for i in source.input
        ):
            reason = (
                "wrapped in Q/DQ, but ONNX Runtime has no int8 kernel for it here (its output is not "
                "quantized, or its pattern is not fused on CPU), so it computes in float"
            )
        elif source is not None and source.op_type in op_reasons:
            reason = op_reasons[source.op_type]
        else:
            reason = (
                "the quantizer left it float (its op or inputs are not quantizable in this mode)"
            )
        result.float[name] = reason
    return result
