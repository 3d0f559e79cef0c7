"""Tensor-level mixed precision for static (QDQ) int8: every QuantizeLinear/DequantizeLinear pair
of ONNX Runtime's QDQ model, not only Conv/MatMul/Gemm weights.

ONNX Runtime's static quantizer rounds an activation tensor wherever a quantized node reads or
writes it: around Add, Concat, Resize, Sigmoid/HardSigmoid, Mul, ConvTranspose and the output head
as well as Conv. Excluding a node (``nodes_to_exclude``) does not keep such a tensor float when a
neighbouring node is still quantized, so the loss of an outlier in an Add or Concat branch cannot
be undone by keeping layers float. Here each rounded tensor is a candidate by itself: a pair can be
switched off in one session (:func:`switchable_qdq`, for sensitivity) and removed from the model
(:func:`keep_tensors_float`, for the mixed-precision result); nodes left with only float inputs get
their weights and biases back in float, so ONNX Runtime runs them as plain float kernels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..._utils import atomic_path
from ._graph import constant_values, consumers, dequantized, drop_unused, topological_sort
from ._layers import layer_label

# ONNX Runtime names an int8 weight after its float one (quant_utils.TENSOR_NAME_QUANT_SUFFIX).
_QUANTIZED_SUFFIX = "_quantized"
# Ops whose input 1 is a weight (the rest of a constant DequantizeLinear's consumers read biases).
_WEIGHT_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class QdqPair:
    """One tensor ONNX Runtime's QDQ model rounds to int8.

    Attributes:
        tensor: the float tensor's name in the QDQ model (an activation, or a constant weight).
        kind: ``"activation"`` (a QuantizeLinear then DequantizeLinear on a computed tensor) or
            ``"weight"`` (an int8 initializer dequantized for a Conv/Gemm/MatMul).
        producer: the full name of the node computing the tensor (``""`` for a graph input or a
            weight), and its op type.
        consumers: the full names of the nodes reading the rounded tensor.
    """

    tensor: str
    kind: str
    producer: str
    producer_op: str
    consumers: tuple[str, ...]
    consumer_ops: tuple[str, ...]

    def describe(self) -> str:
        """``output of Add /blocks/blocks.3/Add (module blocks.3)``: full node names, never a word."""
        if self.kind == "weight":
            node = self.consumers[0] if self.consumers else self.tensor
            op = self.consumer_ops[0] if self.consumer_ops else "node"
            return f"weight of {op} {node}{_module(node)}"
        if not self.producer:
            return f"input {self.tensor}"
        return f"output of {self.producer_op} {self.producer}{_module(self.producer)}"


def _module(node: str) -> str:
    label = layer_label(node)
    return f" (module {label})" if label != node else ""


def _constants(graph: onnx.GraphProto) -> set[str]:
    return {i.name for i in graph.initializer} | {
        o for n in graph.node if n.op_type == "Constant" for o in n.output
    }


def qdq_pairs(model: onnx.ModelProto) -> list[QdqPair]:
    """Every rounded tensor of a QDQ model (before its names are compacted), in graph order:
    activations, and int8 weights of Conv/ConvTranspose/Gemm/MatMul (int32 biases follow their
    node's input and weight, and are not candidates by themselves)."""
    graph = model.graph
    consts = _constants(graph)
    producers = {o: n for n in graph.node for o in n.output}
    readers = consumers(graph)
    found: dict[str, QdqPair] = {}
    for dq in graph.node:
        if dq.op_type != "DequantizeLinear":
            continue
        users = [u for u in readers.get(dq.output[0], []) if u.op_type != "QuantizeLinear"]
        q = producers.get(dq.input[0])
        if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts:
            tensor, kind = q.input[0], "activation"
            source = producers.get(tensor)
        elif dq.input[0] in consts and any(
            u.op_type in _WEIGHT_OPS and len(u.input) > 1 and u.input[1] == dq.output[0]
            for u in users
        ):
            tensor, kind, source = dq.input[0].removesuffix(_QUANTIZED_SUFFIX), "weight", None
        else:
            continue
        previous = found.get(tensor)
        names = (previous.consumers if previous else ()) + tuple(u.name for u in users)
        ops = (previous.consumer_ops if previous else ()) + tuple(u.op_type for u in users)
        found[tensor] = QdqPair(
            tensor=tensor,
            kind=kind,
            producer=source.name if source is not None else "",
            producer_op=source.op_type if source is not None else "",
            consumers=names,
            consumer_ops=ops,
        )
    return list(found.values())


def switch_name(k: int) -> str:
    return f"__leanml_qdq_{k}"


def _unrounded(
    graph: onnx.GraphProto,
    dq: onnx.NodeProto,
    q: onnx.NodeProto | None,
    values: dict[str, np.ndarray],
    float_side: tuple[dict[str, np.ndarray], dict[str, onnx.NodeProto]],
    added: list[onnx.NodeProto],
) -> str:
    """The float stand-in for what ``dq`` outputs: for an activation, its float tensor (with the
    Relu or Clip the quantizer folded into the uint8 range put back); for a weight, the float
    weight of the float graph (``float_side``: its constants and the producer of each tensor)."""
    float_values, float_producers = float_side
    names = {n.name for n in graph.node}
    if q is None:
        name = dq.input[0].removesuffix(_QUANTIZED_SUFFIX)
        value = float_values.get(name)
        plain = f"{dq.output[0]}_float"
        if value is None:  # no float original (a quantized constant of the float graph)
            value = dequantized(values, dq)
        graph.initializer.append(numpy_helper.from_array(value.astype(np.float32), plain))
        return plain
    # The quantizer drops a Relu or Clip whose output it rounds (the uint8 range clamps the same):
    # unrounded, the tensor needs that activation back. Anything else passes through unchanged, so
    # ONNX Runtime's float fusions (Conv + activation, HardSwish) still apply.
    tensor = q.input[0]
    removed = float_producers.get(tensor)
    plain = f"{dq.output[0]}_float"
    if removed is not None and removed.op_type in ("Relu", "Clip") and removed.name not in names:
        bounds = [i for i in removed.input[1:]]
        for b in bounds:
            if b and b in float_values and b not in values:
                graph.initializer.append(numpy_helper.from_array(float_values[b], b))
                values[b] = float_values[b]
        added.append(
            helper.make_node(
                removed.op_type,
                [tensor, *bounds],
                [plain],
                name=f"{dq.name}_{removed.op_type.lower()}",
            )
        )
        added[-1].attribute.extend(removed.attribute)
        return plain
    return tensor


def _float_side(
    float_model: onnx.ModelProto,
) -> tuple[dict[str, np.ndarray], dict[str, onnx.NodeProto]]:
    return constant_values(float_model.graph), {
        o: n for n in float_model.graph.node for o in n.output
    }


def _pair_of(
    dq: onnx.NodeProto, producers: dict[str, onnx.NodeProto], consts: set[str]
) -> tuple[str, onnx.NodeProto | None] | None:
    """The tensor a DequantizeLinear rounds and its QuantizeLinear (None for a stored weight)."""
    q = producers.get(dq.input[0])
    if q is not None and q.op_type == "QuantizeLinear" and q.input[0] not in consts:
        return q.input[0], q
    if dq.input[0] in consts:
        return dq.input[0].removesuffix(_QUANTIZED_SUFFIX), None
    return None


def switchable_qdq(
    model: onnx.ModelProto, pairs: Sequence[QdqPair], float_model: onnx.ModelProto
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the QDQ ``model`` in which ``pairs[k]`` is rounded when the boolean input
    ``switch_name(k)`` is true and unrounded (see :func:`keep_tensors_float`) when false: every
    combination of kept-float tensors is one feed of one session. ``float_model`` is the graph
    that was quantized (its float weights). Returns the model and its switch names."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    values = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    float_side = _float_side(float_model)
    index = {p.tensor: k for k, p in enumerate(pairs)}
    added: list[onnx.NodeProto] = []
    for dq in list(graph.node):
        found = _pair_of(dq, producers, set(values)) if dq.op_type == "DequantizeLinear" else None
        if found is None or found[0] not in index:
            continue
        k = index[found[0]]
        plain = _unrounded(graph, dq, found[1], values, float_side, added)
        rounded = f"{dq.output[0]}_rounded"
        original = dq.output[0]
        dq.output[0] = rounded
        added.append(helper.make_node("Where", [switch_name(k), rounded, plain], [original]))
    graph.node.extend(added)
    for k in range(len(pairs)):
        graph.input.append(helper.make_tensor_value_info(switch_name(k), TensorProto.BOOL, []))
    topological_sort(graph)
    del graph.value_info[:]
    return out, [switch_name(k) for k in range(len(pairs))]


def keep_tensors_float(path: Path, tensors: Sequence[str], float_model: onnx.ModelProto) -> None:
    """Remove the QDQ pairs of ``tensors`` from the QDQ model at ``path`` (in place).

    An activation's readers get it clipped to its calibrated range instead of rounded to it (the
    quantizer dropped any Relu or Clip that range stands in for); a weight's reader gets the float
    weight of ``float_model``, the graph that was quantized. A node whose inputs are then all
    float (none comes from an activation DequantizeLinear) gets its int8 weight and int32 bias back
    as float initializers, so ONNX Runtime runs it as a plain float kernel instead of dequantizing
    them on every call."""
    if not tensors:
        return
    model = onnx.load(str(path))
    graph = model.graph
    wanted = set(tensors)
    values = constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    float_side = _float_side(float_model)
    added: list[onnx.NodeProto] = []
    for dq in list(graph.node):
        found = _pair_of(dq, producers, set(values)) if dq.op_type == "DequantizeLinear" else None
        if found is None or found[0] not in wanted:
            continue
        plain = _unrounded(graph, dq, found[1], values, float_side, added)
        added.append(helper.make_node("Identity", [plain], [dq.output[0]], name=f"{dq.name}_kept"))
        graph.node.remove(dq)
    graph.node.extend(added)
    topological_sort(graph)
    _float_weights_of_float_nodes(graph)
    drop_unused(graph)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


def _float_weights_of_float_nodes(graph: onnx.GraphProto) -> None:
    values = constant_values(graph)
    consts = set(values)
    producers = {o: n for n in graph.node for o in n.output}

    def rounded_activation(name: str) -> bool:
        p = producers.get(name)
        return p is not None and p.op_type == "DequantizeLinear" and p.input[0] not in consts

    readers = consumers(graph)
    for dq in list(graph.node):
        if dq.op_type != "DequantizeLinear" or dq.input[0] not in consts:
            continue
        users = readers.get(dq.output[0], [])
        if users and not any(rounded_activation(i) for u in users for i in u.input):
            graph.initializer.append(numpy_helper.from_array(dequantized(values, dq), dq.output[0]))
            graph.node.remove(dq)


def float_nodes_of(pairs: Sequence[QdqPair]) -> dict[str, str]:
    """Node name -> why it computes in float, for the compute nodes next to kept-float tensors.
    One reason per kind, so that the notes group the nodes (the tensors are named elsewhere)."""
    weight = "kept float by auto_exclude: its weight is among the most sensitive tensors"
    activation = (
        "kept float by auto_exclude: a tensor it reads or writes is among the most sensitive "
        "(mixed precision)"
    )
    reasons: dict[str, str] = {}
    for p in pairs:
        for name, op in zip(p.consumers, p.consumer_ops):
            if op in _WEIGHT_OPS:
                reasons.setdefault(name, weight if p.kind == "weight" else activation)
        if p.producer_op in _WEIGHT_OPS and p.producer:
            reasons.setdefault(p.producer, activation)
    return reasons


def listed_once(items: Sequence[str], limit: int = 12) -> str:
    """``a, b (x3), c``: each item once, in first-seen order, with a count when it repeats."""
    counts = Counter(items)
    shown = [f"{i} (x{counts[i]})" if counts[i] > 1 else i for i in dict.fromkeys(items)]
    more = f" and {len(shown) - limit} more" if len(shown) > limit else ""
    return ", ".join(shown[:limit]) + more
