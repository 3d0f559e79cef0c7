"""FLOPs per sample: counted by torch.utils.flop_counter, or from an ONNX graph's shapes."""

from __future__ import annotations

import math

import onnx
from onnx import numpy_helper, shape_inference

from ..data import Inputs, take
from ..training import forward, to_tensor


def torch_flops(net, sample: Inputs) -> int:
    """Forward FLOPs of one sample, counted by PyTorch's FlopCounterMode (2 per multiply-add)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    net.eval()
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        forward(net, to_tensor(take(sample, slice(0, 1))))
    return int(counter.get_total_flops())


def _fix_input_dims(model: onnx.ModelProto, sample: Inputs) -> None:
    for inp in model.graph.input:
        arr = sample.get(inp.name, None) if isinstance(sample, dict) else sample
        if arr is None and isinstance(sample, dict) and len(sample) == 1:
            arr = next(iter(sample.values()))
        if arr is None:
            continue
        shape = (1, *arr.shape[1:])
        dims = inp.type.tensor_type.shape.dim
        for d, v in zip(dims, shape):
            d.ClearField("dim_param")
            d.dim_value = int(v)


def onnx_flops(model: onnx.ModelProto, sample: Inputs) -> int | None:
    """FLOPs of one sample for the compute ops of an ONNX graph (2 per multiply-add).

    Counts Conv, ConvInteger, QLinearConv, Gemm, MatMul, MatMulInteger, QLinearMatMul and
    FusedMatMul-like ops from inferred shapes; elementwise ops are left out, as torch's counter does.
    None when shape inference cannot give every compute op's shapes: an undercount would mislead.
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _fix_input_dims(m, sample)
    try:
        m = shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - any inference failure means the FLOPs are unknown
        return None
    shapes: dict[str, list[int]] = {}
    for vi in list(m.graph.value_info) + list(m.graph.input) + list(m.graph.output):
        dims = vi.type.tensor_type.shape.dim
        shapes[vi.name] = [d.dim_value if d.HasField("dim_value") else 0 for d in dims]
    for init in m.graph.initializer:
        shapes[init.name] = list(init.dims)

    total = 0
    for node in m.graph.node:
        op = node.op_type
        if op in ("Conv", "ConvInteger", "QLinearConv"):
            w_name = node.input[3] if op == "QLinearConv" else node.input[1]
            out = shapes.get(node.output[0])
            w = shapes.get(w_name)
            if not (out and w and all(out) and all(w)):
                return None
            # out elements x (Cin/groups x kh x kw) multiply-adds
            total += 2 * math.prod(out) * math.prod(w[1:])
        elif op in ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul", "FusedMatMul"):
            a_name = node.input[0]
            out = shapes.get(node.output[0])
            a = shapes.get(a_name)
            if not (out and a and all(out) and all(a)):
                return None
            k = a[-1] if not (op == "Gemm" and _attr(node, "transA", 0)) else a[0]
            total += 2 * math.prod(out) * k
    return int(total)


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


# Inputs that carry quantization parameters (scales, zero points), by op: not weights.
_QUANT_PARAM_INPUTS = {
    "QuantizeLinear": (1, 2),
    "DequantizeLinear": (1, 2),
    "QLinearConv": (1, 2, 4, 5, 6, 7),
    "QLinearMatMul": (1, 2, 4, 5, 6, 7),
    "QGemm": (1, 2, 4, 5, 7, 8),
    "MatMulInteger": (2, 3),
    "ConvInteger": (2, 3),
}


def onnx_param_counts(model: onnx.ModelProto) -> tuple[int, int]:
    """``(stored, non-zero)`` weight elements of an ONNX graph's initializers.

    Quantization parameters (the scale and zero-point inputs of QuantizeLinear, DequantizeLinear
    and the QLinear/Integer ops, whatever the tensors are named; and tensors named ``*_scale`` or
    ``*_zero_point``), scalars and int64 shape constants are not weights and are left out; int8
    weights and int32 biases of quantized graphs count.
    """
    quant_params: set[str] = set()
    for node in model.graph.node:
        for i in _QUANT_PARAM_INPUTS.get(node.op_type, ()):
            if i < len(node.input):
                quant_params.add(node.input[i])
    stored = nonzero = 0
    for init in model.graph.initializer:
        if init.data_type == onnx.TensorProto.INT64 or len(init.dims) == 0:
            continue
        if init.name in quant_params or init.name.endswith(("_scale", "_zero_point")):
            continue
        arr = numpy_helper.to_array(init)
        stored += int(arr.size)
        nonzero += int((arr != 0).sum())
    return stored, nonzero
