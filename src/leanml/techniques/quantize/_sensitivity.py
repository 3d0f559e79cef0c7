"""Sensitivity in one ONNX Runtime session, on a bounded sample: per layer for dynamic int8, per
QDQ pair (every rounded tensor) for static int8.

Quantizing the model once per layer costs a load, shape inference, quantization and save of the
whole graph, and a new session, per layer: minutes on a 90 MB transformer. Dynamic int8 of one
MatMul is, up to float rounding, its weight rounded to int8 and its input rounded by
``DynamicQuantizeLinear``; of one embedding Gather, its table rounded to int8. So one graph holds,
for every layer, both the float and the rounded path, chosen by a boolean input per layer: one
session measures every layer, by feeding a different switch.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ...data import Inputs, n_rows, take
from ...runtime import OnnxRunner
from ._graph import attribute, topological_sort
from ._tensors import QdqPair, switchable_qdq

# Rows per session run of the switchable graphs.
BATCH_ROWS = 16


def sample_rows(n: int, limit: int, seed: int) -> np.ndarray:
    """The sorted row indices sensitivity is measured on: all ``n`` rows when ``n <= limit``, else
    ``limit`` rows drawn without replacement (the same rows for the same seed)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).permutation(n)[:limit])


def fake_int8(w: np.ndarray, *, axis: int | None, reduce_range: bool) -> np.ndarray:
    """``w`` rounded to symmetric int8 (7-bit with ``reduce_range``) and back to float, per
    tensor (``axis`` None) or per slice along ``axis``."""
    qmax = 63.0 if reduce_range else 127.0
    if axis is None:
        peak = np.abs(w).max(keepdims=True)
    else:
        others = tuple(i for i in range(w.ndim) if i != axis % w.ndim)
        peak = np.abs(w).max(axis=others, keepdims=True)
    scale = np.where(peak > 0, peak / qmax, 1.0).astype(np.float32)
    return (np.clip(np.round(w / scale), -qmax, qmax) * scale).astype(w.dtype)


def switch_name(k: int) -> str:
    return f"__leanml_int8_{k}"


def switchable_dynamic(
    model: onnx.ModelProto,
    layers: Sequence[str],
    *,
    per_channel: bool,
    reduce_range: bool,
) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of the float ``model`` in which layer ``layers[k]`` runs in simulated dynamic int8
    when the boolean input ``switch_name(k)`` is true. Returns the model and the layers it could
    switch (a MatMul with a constant weight, or a Gather from a constant table)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    switched: list[str] = []
    nodes: list[onnx.NodeProto] = []
    for k, name in enumerate(layers):
        node = by_name.get(name)
        if node is None:
            continue
        flag = switch_name(k)
        const = [i for i, t in enumerate(node.input) if t in inits]
        if node.op_type == "Gather" and 0 in const:
            table = numpy_helper.to_array(inits[node.input[0]])
            rounded = fake_int8(table, axis=None, reduce_range=reduce_range)
            graph.initializer.append(numpy_helper.from_array(rounded, f"{flag}_table"))
            gathered = f"{flag}_gathered"
            nodes.append(
                helper.make_node(
                    "Gather",
                    [f"{flag}_table", node.input[1]],
                    [gathered],
                    axis=int(attribute(node, "axis", 0)),
                )
            )
            float_out = f"{flag}_float"
            original = node.output[0]
            node.output[0] = float_out
            nodes.append(helper.make_node("Where", [flag, gathered, float_out], [original]))
        elif node.op_type == "MatMul" and len(const) == 1:
            w_index = const[0]
            weight = numpy_helper.to_array(inits[node.input[w_index]])
            axis = -1 if per_channel and weight.ndim >= 2 else None
            rounded = fake_int8(weight, axis=axis, reduce_range=reduce_range)
            graph.initializer.append(numpy_helper.from_array(rounded, f"{flag}_w"))
            nodes.append(
                helper.make_node("Where", [flag, f"{flag}_w", node.input[w_index]], [f"{flag}_wq"])
            )
            x = node.input[1 - w_index]
            nodes.append(
                helper.make_node(
                    "DynamicQuantizeLinear", [x], [f"{flag}_xq", f"{flag}_s", f"{flag}_z"]
                )
            )
            nodes.append(
                helper.make_node(
                    "DequantizeLinear", [f"{flag}_xq", f"{flag}_s", f"{flag}_z"], [f"{flag}_xd"]
                )
            )
            nodes.append(helper.make_node("Where", [flag, f"{flag}_xd", x], [f"{flag}_x"]))
            node.input[w_index] = f"{flag}_wq"
            node.input[1 - w_index] = f"{flag}_x"
        else:
            continue
        graph.input.append(helper.make_tensor_value_info(flag, TensorProto.BOOL, []))
        switched.append(name)
    graph.node.extend(nodes)
    topological_sort(graph)
    del graph.value_info[:]
    return out, switched


def dynamic_sensitivity(
    model: onnx.ModelProto,
    layers: Sequence[str],
    x: Inputs,
    score: Callable[[np.ndarray], float],
    drop: Callable[[float, float], float],
    *,
    per_channel: bool,
    reduce_range: bool,
    threads: int = 1,
    progress: Callable[[int, int, str, float], None] | None = None,
    batch_size: int = BATCH_ROWS,
) -> tuple[float, dict[str, float]]:
    """The float score of ``x`` and, per layer, the metric drop with only that layer in simulated
    dynamic int8, all in one session. ``score(outputs)`` is the metric of the outputs on ``x``."""
    switchable, switched = switchable_dynamic(
        model, layers, per_channel=per_channel, reduce_range=reduce_range
    )
    with tempfile.TemporaryDirectory(prefix="leanml-sensitivity-") as tmp:
        path = Path(tmp) / "switchable.onnx"
        onnx.save(switchable, str(path))
        del switchable
        run = _switched_runner(OnnxRunner(path, threads=threads), x, batch_size)
        index = {name: k for k, name in enumerate(layers)}

        def outputs(on: str | None) -> np.ndarray:
            return run({switch_name(index[n]): np.array(n == on, dtype=bool) for n in switched})

        base = score(outputs(None))
        result: dict[str, float] = {}
        for k, name in enumerate(switched, 1):
            result[name] = drop(base, score(outputs(name)))
            if progress is not None:
                progress(k, len(switched), name, result[name])
    return base, result


@dataclass
class TensorSensitivity:
    """Tensor-level sensitivity of a static (QDQ) model on a bounded sample.

    Attributes:
        float_score: the metric with every pair passing its float value through.
        int8_score: the metric with every pair rounded (the QDQ model as quantized).
        alone: per tensor, the metric drop with only that tensor rounded (every other one float):
            what auto_exclude ranks by, most first (ties: by the outputs' squared error).
        enough: how many of the ranked tensors, kept float together, bring the sample's drop
            within the budget (0: the int8 model already holds it).
    """

    float_score: float
    int8_score: float
    alone: dict[str, float]
    enough: int


def static_sensitivity(
    model: onnx.ModelProto,
    float_model: onnx.ModelProto,
    pairs: Sequence[QdqPair],
    x: Inputs,
    score: Callable[[np.ndarray], float],
    drop: Callable[[float, float], float],
    allows: Callable[[float], bool],
    *,
    threads: int = 1,
    progress: Callable[[int, int, str, float], None] | None = None,
    batch_size: int = BATCH_ROWS,
) -> TensorSensitivity:
    """The metric drop of rounding each QDQ pair of ``model`` (ONNX Runtime's QDQ output of
    ``float_model``) alone, every other pair float, in one session; then the shortest prefix of
    that ranking whose tensors, kept float together (the rest rounded), bring the drop within
    ``allows`` on the same sample (a bisection: a few more evaluations)."""
    switchable, switches = switchable_qdq(model, pairs, float_model)
    with tempfile.TemporaryDirectory(prefix="leanml-sensitivity-") as tmp:
        path = Path(tmp) / "switchable.onnx"
        onnx.save(switchable, str(path))
        del switchable
        runner = OnnxRunner(path, threads=threads)
        run = _switched_runner(runner, x, batch_size)

        def outputs(kept: set[int]) -> np.ndarray:
            return run({s: np.array(k not in kept, dtype=bool) for k, s in enumerate(switches)})

        def with_float(kept: set[int]) -> float:
            return score(outputs(kept))

        every = set(range(len(pairs)))
        reference = outputs(every)
        base = score(reference)
        full = with_float(set())
        alone: dict[str, float] = {}
        # A coarse metric (top-1 agreement on 64 samples moves in steps of 1/64) ties most
        # tensors at 0: the outputs' squared error to the float outputs breaks the ties.
        error: dict[str, float] = {}
        for k, pair in enumerate(pairs):
            rounded = outputs(every - {k})
            alone[pair.tensor] = drop(base, score(rounded))
            error[pair.tensor] = float(np.mean((rounded - reference) ** 2))
            if progress is not None:
                progress(k + 1, len(pairs), pair.tensor, alone[pair.tensor])
        order = sorted(
            range(len(pairs)), key=lambda k: (-alone[pairs[k].tensor], -error[pairs[k].tensor])
        )
        # every pair float is the float model (int32 biases aside): a prefix that holds exists
        low, high = -1, len(order)  # the prefix of ``high`` tensors holds, of ``low`` does not
        if allows(drop(base, full)):
            high = 0
        else:
            low = 0
        while high - low > 1:
            mid = (low + high) // 2
            if allows(drop(base, with_float(set(order[:mid])))):
                high = mid
            else:
                low = mid
    ranked = {pairs[k].tensor: alone[pairs[k].tensor] for k in order}
    return TensorSensitivity(base, full, ranked, high)


def _switched_runner(
    runner: OnnxRunner, x: Inputs, batch_size: int
) -> Callable[[dict[str, np.ndarray]], np.ndarray]:
    """The model's first output on ``x``, in batches, with the switch values given."""
    names = [i.name for i in runner.inputs if not i.name.startswith("__leanml_")]
    feeds = []
    for s in range(0, n_rows(x), batch_size):
        part = take(x, slice(s, s + batch_size))
        feed = dict(part) if isinstance(part, dict) else {names[0]: part}
        for i in runner.inputs:
            if i.name in feed and i.type == "tensor(float)":
                feed[i.name] = np.asarray(feed[i.name], np.float32)
        feeds.append(feed)

    def run(flags: dict[str, np.ndarray]) -> np.ndarray:
        outs = [runner.session.run([runner.output], {**feed, **flags})[0] for feed in feeds]
        return np.concatenate(outs).astype(np.float32)

    return run
