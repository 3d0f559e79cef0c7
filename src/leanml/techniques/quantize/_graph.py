"""Reading and tidying an ONNX graph: who reads each tensor, the constants' values, a node's
attributes, topological order, and removing what nothing uses. Shared by the graph rewrites
(:mod:`._smooth`, :mod:`._bias`, :mod:`._tensors`, :mod:`._qdq`, :mod:`._sensitivity`)."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    """Tensor name -> the nodes that read it, in graph order."""
    out: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            out.setdefault(i, []).append(node)
    return out


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Tensor name -> value, for initializers and the outputs of Constant nodes."""
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def attribute(node: onnx.NodeProto, name: str, default: float) -> int | float:
    """A numeric attribute of ``node``, or ``default`` when it is not set."""
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def dequantized(values: dict[str, np.ndarray], dq: onnx.NodeProto) -> np.ndarray:
    """What a DequantizeLinear of constants (``values``: :func:`constant_values`) computes, in
    float32."""
    x = values[dq.input[0]].astype(np.float64)
    scale = values[dq.input[1]].astype(np.float64)
    zp = values[dq.input[2]].astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = int(attribute(dq, "axis", 1))
    if np.ndim(scale) == 1 and np.size(scale) > 1:
        shape = [1] * x.ndim
        shape[axis] = -1
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) else zp
    return ((x - zp) * scale).astype(np.float32)


def reads(node: onnx.NodeProto) -> set[str]:
    """The tensors ``node`` reads: its inputs, and the outer-scope names its subgraphs (``If``
    branches, ``Loop``/``Scan`` bodies) read without producing them."""
    needed = set(node.input)
    for attr in node.attribute:
        for sub in [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs):
            local = {i.name for i in sub.input} | {i.name for i in sub.initializer}
            for inner in sub.node:
                needed |= reads(inner) - local
                local.update(inner.output)
    return needed


def used_names(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node of ``graph`` (or of its subgraphs) reads, and the graph's outputs."""
    return {i for n in graph.node for i in reads(n)} | {o.name for o in graph.output}


def has_subgraphs(graph: onnx.GraphProto) -> bool:
    """Whether a node of ``graph`` carries a subgraph (``If``, ``Loop``, ``Scan``)."""
    return any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in graph.node
        for a in n.attribute
    )


def topological_sort(graph: onnx.GraphProto) -> None:
    """Order ``graph``'s nodes so that each comes after the producers of the tensors it reads,
    its subgraphs' reads of the outer scope included (in place)."""
    known = {i.name for i in graph.input} | {i.name for i in graph.initializer} | {""}
    produced = {o for n in graph.node for o in n.output}
    pending = list(graph.node)
    # A name no node here produces comes from an enclosing scope: it holds no node back.
    needs = {id(n): reads(n) & produced for n in pending}
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for n in pending:
            if needs[id(n)] <= known:
                ordered.append(n)
                known.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):  # a cycle: keep the remaining order
            ordered += rest
            break
        pending = rest
    del graph.node[:]
    graph.node.extend(ordered)


def drop_unused(graph: onnx.GraphProto) -> None:
    """Remove nodes whose outputs nothing reads, then initializers no node or output uses (in place)."""
    while True:
        used = used_names(graph)
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = used_names(graph)
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
