"""Which nodes of a float graph are layers, and their readable names: what ``exclude``, sensitivity
and the notes speak of."""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import onnx

from ...errors import InvalidInputError

# The layers quantization is about: what sensitivity, exclusion and the op-count notes speak of.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
# Dynamic mode leaves Conv float: ONNX Runtime's ConvInteger is many times slower than float Conv
# on CPU (static QDQ gives QLinearConv instead).
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM")
# Embedding tables (a Gather from a constant float matrix) are most of a transformer's file: dynamic
# mode stores them in int8 too (ONNX Runtime's quantizer: int8 table, DequantizeLinear after).
EMBEDDING_OPS = ("Gather",)


def compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv/MatMul/Gemm nodes of a float graph, in graph order."""
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS]


def embedding_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gather nodes that look rows up in a constant float matrix (embedding tables), in graph order."""
    tables = {
        i.name
        for i in model.graph.initializer
        if len(i.dims) == 2 and i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    return [n for n in model.graph.node if n.op_type in EMBEDDING_OPS and n.input[0] in tables]


def layer_label(node_name: str) -> str:
    """A readable name for a node: the full module path for torch exports
    (``/features/features.0/features.0.0/Conv`` -> ``features.0.0``;
    ``/m/encoder/layer.0/attention/self/query/MatMul`` -> ``m.encoder.layer.0.attention.self.query``),
    else the node name. Scopes that repeat their parent's path (``features`` -> ``features.0``) are
    merged, so the label is the path ``named_modules()`` gives, never its last word alone."""
    parts = [p for p in node_name.split("/") if p]
    if not node_name.startswith("/") or len(parts) < 2:
        return node_name
    path: list[str] = []
    for part in parts[:-1]:
        if path and part.startswith(f"{path[-1]}."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def match_layers(names: Sequence[str], nodes: Sequence[onnx.NodeProto], *, key: str) -> list[str]:
    """Node names for user-given layer names (a node name, or a torch module path)."""
    by_label: dict[str, list[str]] = {}
    for n in nodes:
        by_label.setdefault(n.name, []).append(n.name)
        by_label.setdefault(layer_label(n.name), []).append(n.name)
    out: list[str] = []
    for name in names:
        if name not in by_label:
            known = sorted({layer_label(n.name) for n in nodes})
            near = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            listed = near if near else known[:12]
            more = ", ..." if not near and len(known) > 12 else ""
            shown = ", ".join(listed) + more
            raise InvalidInputError(
                f"{key} names {name!r}, which is not a quantizable layer (Conv/MatMul/Gemm, or an "
                f"embedding Gather in dynamic mode) of the model; "
                f"{'nearest names' if near else 'layers are'}: {shown or '(none)'}"
            )
        out += [n for n in by_label[name] if n not in out]
    return out
