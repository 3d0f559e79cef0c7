"""SmoothQuant-style scale migration before int8 (Xiao et al., "SmoothQuant", 2023; the same pass as
Intel Neural Compressor's ``ORTSmoothQuant``, which ONNX Runtime's ``SmoothQuant`` option calls).

Int8 activations share one scale per tensor, so a few channels with large values (the outliers of
a transformer's LayerNorm and GELU outputs) leave the other channels a handful of levels. For a
MatMul ``X @ W`` with a constant ``W``, dividing channel ``j`` of ``X`` by ``s_j`` and multiplying
row ``j`` of ``W`` by ``s_j`` leaves the product unchanged and moves the outliers into the weight,
which int8 stores per output channel. ``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``, with
``max|X_j|`` measured on calibration samples.

The ``1/s`` goes where it costs nothing when that is exact: into the LayerNormalization that
produces ``X`` (its scale and bias) or the linear layer (``MatMul`` + ``Add`` bias) before it, when
``X`` feeds nothing else. Otherwise a ``Mul`` by ``1/s`` is inserted in front of the MatMuls: in a
post-LayerNorm transformer (BERT) the residual branch also reads the LayerNorm's output, and
folding into GELU's constant ``* 0.5`` measured slower than the Mul (it stops ONNX Runtime fusing
the GELU). The float model computes the same function; only its rounding moves.

:func:`smooth_activations` is the stage's step: it smooths the float graph, and keeps it when
``smooth`` is true or (``auto``, in the modes that try it) when the val metric is better.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ._activations import exposed
from ._calibrate import draw_samples
from ._graph import attribute, consumers, topological_sort
from ._state import QuantizeState, Run

FLOATS = (onnx.TensorProto.FLOAT,)


@dataclass
class Smoothing:
    """What :func:`smooth` did: the MatMul/Gemm nodes whose weights took a scale, how many
    activation tensors were divided, where each ``1/s`` went, and what was left alone and why."""

    layers: list[str] = field(default_factory=list)
    tensors: int = 0
    # activation tensor -> the producer its 1/s was folded into
    folded: dict[str, str] = field(default_factory=dict)
    inserted: int = 0
    # MatMul/Gemm node -> why it was left alone
    skipped: dict[str, str] = field(default_factory=dict)


def smoothable(model: onnx.ModelProto) -> tuple[dict[str, list[onnx.NodeProto]], dict[str, str]]:
    """MatMul/Gemm nodes whose weight is a constant 2-D float matrix used by that node alone,
    grouped by their activation input; and, for the other MatMul/Gemm nodes, why they are not."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = consumers(graph)
    groups: dict[str, list[onnx.NodeProto]] = {}
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm"):
            continue
        w = inits.get(node.input[1])
        if node.input[0] in inits or w is None:
            skipped[node.name] = "its weight is not a constant (a MatMul of two activations)"
        elif len(w.dims) != 2 or w.data_type not in FLOATS:
            skipped[node.name] = "its weight is not a 2-D float32 matrix"
        elif node.op_type == "Gemm" and (
            attribute(node, "transA", 0) or attribute(node, "alpha", 1.0) != 1.0
        ):
            skipped[node.name] = "a Gemm with transA or alpha is not smoothed"
        elif len(users[node.input[1]]) > 1:
            skipped[node.name] = "its weight is shared with another node"
        else:
            groups.setdefault(node.input[0], []).append(node)
    return groups, skipped


def channel_peaks(
    model: onnx.ModelProto,
    tensors: Sequence[str],
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    threads: int = 1,
) -> dict[str, np.ndarray]:
    """``max |x|`` per last-axis channel of each tensor over the calibration ``feeds``."""
    peaks: dict[str, np.ndarray] = {}
    for values in exposed(model, tensors, feeds, threads=threads):
        for t, value in zip(tensors, values):
            peak = np.abs(value.reshape(-1, value.shape[-1])).max(axis=0)
            peaks[t] = np.maximum(peaks[t], peak) if t in peaks else peak
    return peaks


def smoothing_scales(x_peak: np.ndarray, w_peak: np.ndarray, alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^alpha / max|W_j|^(1 - alpha)``; 1 where a channel is all zeros."""
    x_peak = x_peak.astype(np.float64)
    w_peak = w_peak.astype(np.float64)
    live = (x_peak > 0) & (w_peak > 0)
    s = np.ones_like(x_peak)
    s[live] = x_peak[live] ** alpha / w_peak[live] ** (1.0 - alpha)
    return np.clip(s, 1e-5, 1e5).astype(np.float32)


def _fold(
    graph: onnx.GraphProto,
    tensor: str,
    inv: np.ndarray,
    producers: dict[str, onnx.NodeProto],
    users: dict[str, list[onnx.NodeProto]],
    inits: dict[str, onnx.TensorProto],
) -> str | None:
    """Multiply ``tensor`` by ``inv`` (per last-axis channel) inside the node that produces it, when
    that is exact and changes nothing else. Returns the producer's op type, or None."""
    node = producers.get(tensor)
    if node is None:
        return None
    k = inv.shape[0]

    def per_channel(name: str) -> np.ndarray | None:
        """The constant broadcast to ``k`` channels, or None when it is not a constant of 1 or k."""
        if name not in inits:
            return None
        value = numpy_helper.to_array(inits[name])
        if value.size == 1:
            return np.full(k, value.reshape(()), value.dtype)
        return value.reshape(k) if value.shape[-1:] == (k,) and value.size == k else None

    def put(target: onnx.NodeProto, index: int, value: np.ndarray) -> None:
        """Set a constant input of ``target``; a constant other nodes also read is copied first."""
        name = target.input[index]
        if len(users.get(name, [])) > 1:
            name = f"{tensor}_smooth_{target.input[index]}"
            inits[name] = graph.initializer.add()
            target.input[index] = name
        inits[name].CopyFrom(numpy_helper.from_array(value, name))

    if node.op_type == "LayerNormalization":
        params = [per_channel(n) for n in node.input[1:3] if n]
        if int(attribute(node, "axis", -1)) != -1 or any(p is None for p in params):
            return None
        for index, value in enumerate(params, 1):
            assert value is not None
            put(node, index, (value * inv).astype(value.dtype))
        return "LayerNormalization"
    consts = [i for i, n in enumerate(node.input) if n in inits]
    if node.op_type == "Add" and len(consts) == 1 and len(node.input) == 2:
        bias = per_channel(node.input[consts[0]])
        other = node.input[1 - consts[0]]
        linear = producers.get(other)
        if (
            bias is None
            or linear is None
            or linear.op_type != "MatMul"
            or len(users.get(other, [])) != 1
            or linear.input[1] not in inits
            or len(inits[linear.input[1]].dims) != 2
        ):
            return None
        put(node, consts[0], (bias * inv).astype(bias.dtype))
        w = numpy_helper.to_array(inits[linear.input[1]])
        put(linear, 1, (w * inv[None, :]).astype(w.dtype))
        return "MatMul + Add"
    return None


def smooth(
    src: Path,
    dst: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    alpha: float,
    exclude: Sequence[str] = (),
    threads: int = 1,
) -> Smoothing:
    """Write ``src`` with SmoothQuant scales migrated from activations into MatMul/Gemm weights to
    ``dst``; the float model computes the same outputs (up to float rounding).

    Args:
        src: the float ONNX model (nodes named).
        dst: where the smoothed model goes (may be ``src``).
        feeds: calibration batches, keyed by input name, that the activation peaks are taken on.
        alpha: the share of each activation channel's range moved into the weights (0 none, 1 all).
        exclude: MatMul/Gemm node names to leave alone (kept float anyway).
        threads: ONNX Runtime threads for the calibration pass.

    Returns:
        What was smoothed and folded, and what was skipped and why.
    """
    model = onnx.load(str(src))
    graph = model.graph
    groups, skipped = smoothable(model)
    result = Smoothing(skipped=skipped)
    for tensor in list(groups):
        kept = [n for n in groups[tensor] if n.name not in exclude]
        result.skipped.update(
            {n.name: "it is kept float (excluded)" for n in groups[tensor] if n not in kept}
        )
        if kept:
            groups[tensor] = kept
        else:
            del groups[tensor]
    if not groups:
        return result
    peaks = channel_peaks(model, list(groups), feeds, threads=threads)
    inits = {i.name: i for i in graph.initializer}
    users = consumers(graph)
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    added: list[onnx.NodeProto] = []
    for tensor, nodes in groups.items():
        weights = [_rows_first(node, inits) for node in nodes]
        if any(w.shape[0] != peaks[tensor].shape[0] for w in weights):
            why = "its input's last axis is not the weight's rows"
            result.skipped.update({n.name: why for n in nodes})
            continue
        w_peak = np.max([np.abs(w).max(axis=1) for w in weights], axis=0)
        s = smoothing_scales(peaks[tensor], w_peak, alpha)
        inv = (1.0 / s).astype(np.float32)
        alone = tensor not in outputs and {id(u) for u in users[tensor]} <= {id(n) for n in nodes}
        folded = _fold(graph, tensor, inv, producers, users, inits) if alone else None
        if folded is not None:
            result.folded[tensor] = folded
        else:
            # Not ``{tensor}_scale``-like names: ONNX Runtime's quantizer names its own tensors so.
            scaled, factor = f"{tensor}_smooth_out", f"{tensor}_smooth_inv"
            graph.initializer.append(numpy_helper.from_array(inv, factor))
            added.append(
                helper.make_node("Mul", [tensor, factor], [scaled], name=f"{tensor}_smooth_Mul")
            )
            for node in nodes:
                node.input[0] = scaled
            result.inserted += 1
        for node, w in zip(nodes, weights):
            w = (w * s[:, None]).astype(w.dtype)
            transposed = node.op_type == "Gemm" and attribute(node, "transB", 0)
            inits[node.input[1]].CopyFrom(
                numpy_helper.from_array(w.T.copy() if transposed else w, node.input[1])
            )
            result.layers.append(node.name)
        result.tensors += 1
    graph.node.extend(added)
    topological_sort(graph)
    onnx.save(model, str(dst))
    return result


def _rows_first(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """A MatMul/Gemm weight as ``(in_channels, out_channels)``."""
    w = numpy_helper.to_array(inits[node.input[1]])
    return w.T if node.op_type == "Gemm" and attribute(node, "transB", 0) else w


def smooth_activations(state: QuantizeState, run: Run) -> None:
    """SmoothQuant before int8 when the mode and ``smooth`` ask for it, on the calibration samples
    (drawn now in dynamic mode). The smoothed float graph replaces ``state.float_graph`` (and its
    int8 model ``state.out``, ``state.value``; ``state.smoothed`` names its layers) when
    ``smooth`` is true, or (``auto``) when its val metric is better."""
    cfg, ctx = run.cfg, run.ctx
    if not run.mode.smooths(cfg.smooth):
        return
    if not state.feeds:
        draw_samples(state, run)
    ctx.log(f"  smoothing activation outliers into weights (alpha {cfg.smooth_alpha})")
    path = run.work / "smoothed.onnx"
    with ctx.progress("SmoothQuant") as step:
        done = smooth(
            state.float_graph,
            path,
            state.feeds,
            alpha=cfg.smooth_alpha,
            exclude=state.exclude,
            threads=ctx.measure_config.threads,
        )
        if done.layers:
            step.update("quantizing and evaluating the smoothed model")
            trial = run.mode.quantize(
                path,
                run.work / "smoothed-int8.onnx",
                exclude=state.exclude,
                method=state.method,
                feeds=state.feeds,
            )
            smoothed = ctx.evaluate(trial, "val")
    if not done.layers:
        why = sorted(set(done.skipped.values())) or ["the model has no MatMul or Gemm"]
        state.notes.append(f"SmoothQuant skipped: no MatMul/Gemm to smooth ({'; '.join(why)}).")
        return
    metric = ctx.task.metric.name
    keep = cfg.smooth is True or run.drop(smoothed) < run.drop(state.value)
    ctx.log(
        f"  smoothed {run.mode.name}: val {metric} {smoothed:.4f} "
        f"({'kept' if keep else 'not kept'})"
    )
    where = [f"{n} folded into {op}" for op, n in Counter(done.folded.values()).items()]
    where += [f"{done.inserted} Mul node(s) inserted"] if done.inserted else []
    said = (
        f"SmoothQuant (alpha {cfg.smooth_alpha}) moved the per-channel range of "
        f"{done.tensors} activation tensor(s) into the weights of {len(done.layers)} "
        f"MatMul/Gemm node(s) ({', '.join(where)}): val {metric} {smoothed:.4f} with it, "
        f"{state.value:.4f} without"
    )
    if not keep:
        state.notes.append(f"{said}; not kept (smooth: auto keeps it only when it helps).")
        return
    shutil.move(trial, state.out)
    state.float_graph, state.value, state.smoothed = path, smoothed, done.layers
    state.notes.append(f"{said}; kept.")
