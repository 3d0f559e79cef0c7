"""A layer's own int8 rounding, isolated: its int8 form (the Q/DQ of its input, its int8 weight and
bias) copied into the float graph, reading the float model's input, so that one session of the
float graph measures what rounding each layer alone does to its output (bias correction's shift,
:mod:`._bias`), without what earlier layers' rounding carries into it."""

from __future__ import annotations

from collections.abc import Sequence

import onnx
from onnx import numpy_helper


def isolated_probe(
    model: onnx.ModelProto, qdq: onnx.ModelProto, layers: Sequence[tuple[str, str]]
) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """``model`` (the float graph) plus, for each layer, a copy of its int8 form in ``qdq`` (the
    Q/DQ of its input, its int8 weight and bias) that reads the float model's input: the layer's
    own rounding, without what earlier layers' rounding carries into it. A layer is the node whose
    output is read and the node whose weight is rounded (the same node, or a MatMul before its
    bias Add). ``qdq`` must keep the quantizer's tensor names (not compacted). Returns the probe,
    node -> the copy's output, and weighted node -> why it has no copy."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    graph = probe.graph
    floats = {i.name for i in graph.input} | {o for n in graph.node for o in n.output}
    q_inits = {i.name: i for i in qdq.graph.initializer}
    producers = {o: n for n in qdq.graph.node for o in n.output}
    q_nodes = {n.name: n for n in qdq.graph.node}
    memo: dict[str, str] = {"": ""}

    def copy(name: str, own: tuple[str, str]) -> str | None:
        """The probe tensor computing ``qdq``'s tensor ``name`` from float tensors, or None."""
        if name in memo:
            return memo[name]
        if name in q_inits:
            graph.initializer.append(
                numpy_helper.from_array(numpy_helper.to_array(q_inits[name]), f"{name}__leanml_iso")
            )
            memo[name] = f"{name}__leanml_iso"
            return memo[name]
        node = producers.get(name)
        rounding = node is not None and node.op_type in ("QuantizeLinear", "DequantizeLinear")
        if node is None or not (rounding or node.name in own):
            # a tensor the quantized model computes in float (kept float, or a graph input)
            return name if name in floats else None
        source = producers.get(node.input[0])
        reads_float = node.op_type == "QuantizeLinear" and (
            source is None or source.name not in own
        )
        if reads_float and node.input[0] in floats:
            inputs: list[str | None] = [node.input[0]]
            inputs += [copy(i, own) for i in node.input[1:]]
        else:
            inputs = [copy(i, own) for i in node.input]
        if any(i is None for i in inputs):
            return None
        twin = graph.node.add()
        twin.CopyFrom(node)
        twin.name = f"{node.name}__leanml_iso"
        del twin.input[:]
        twin.input.extend(i for i in inputs if i is not None)
        for k, out in enumerate(node.output):
            twin.output[k] = memo[out] = f"{out}__leanml_iso" if out else ""
        return memo[name]

    found: dict[str, str] = {}
    skipped: dict[str, str] = {}
    for name, weighted in layers:
        node = q_nodes.get(name)
        if node is None or weighted not in q_nodes:
            skipped[weighted] = "it is not in the quantized model"
            continue
        weight = producers.get(q_nodes[weighted].input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            skipped[weighted] = "its weight is not int8 in the quantized model"
            continue
        out = copy(node.output[0], (name, weighted))
        if out is None:
            skipped[weighted] = "its int8 form does not read tensors of the float model"
            continue
        found[name] = out
    known = {o.name for o in graph.output}
    graph.output.extend(onnx.ValueInfoProto(name=t) for t in found.values() if t not in known)
    return probe, found, skipped
