"""What the quantize stage tells the user: which nodes run in int8, each layer's sensitivity, and
(:func:`describe`, the ONNX modes' last step) the stage's result with its notes and details."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import onnx

from ...charts import Plot
from ...data import n_rows
from ...models import Model
from .._base import StageResult
from ._compare import FormatChoice
from ._config import reduce_range_for
from ._layers import compute_nodes, layer_label
from ._ops import OpCount, count_ops
from ._state import QuantizeState, Run
from ._tensors import float_nodes_of


def op_notes(ops: OpCount, *, int8: bool, reduce_range: bool) -> list[str]:
    """Plain-language notes on what ONNX Runtime runs in int8 (or, ``int8`` False, in fp16) and
    what stayed float."""
    if not int8:
        casts = f"; ONNX Runtime added {ops.casts} Cast node(s) to run them" if ops.casts else ""
        return [f"Weights are stored in float16; {ops.total} compute node(s){casts}."]
    kernels = ", ".join(f"{k} x{v}" for k, v in sorted(ops.kernels.items()))
    notes = [
        (
            f"{len(ops.int8)} of {ops.total} compute nodes (Conv, MatMul, Gemm) run in int8 in ONNX "
            f"Runtime's optimized graph ({kernels or 'none'})."
        )
    ]
    by_reason: dict[str, list[str]] = {}
    for name, reason in ops.float.items():
        by_reason.setdefault(reason, []).append(layer_label(name))
    for reason, names in by_reason.items():
        shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
        notes.append(f"Float: {shown}: {reason}.")
    if reduce_range:
        why = (
            "this CPU has no VNNI, and 8-bit u8 x s8 products can saturate"
            if reduce_range_for("auto")
            else "quantize.reduce_range is set"
        )
        notes.append(f"Weights use 7 bits (reduce_range): {why}.")
    return notes


def sensitivity_plot(
    sensitivity: dict[str, float], metric: str, *, per_tensor: bool = False
) -> Plot:
    """Per layer (only that layer quantized), or per quantized tensor (only that tensor rounded;
    labelled with its node's full name)."""
    names = list(sensitivity)
    if per_tensor:
        return Plot(
            title="Per-tensor quantization sensitivity (only that tensor rounded to int8)",
            kind="bar",
            series={f"{metric} drop on val": (names, [sensitivity[n] for n in names])},
            xlabel="quantized tensor",
            ylabel=f"{metric} drop",
        )
    return Plot(
        title="Per-layer quantization sensitivity (only that layer quantized)",
        kind="bar",
        series={
            f"{metric} drop on val": (
                [layer_label(n) for n in names],
                [sensitivity[n] for n in names],
            )
        },
        xlabel="layer",
        ylabel=f"{metric} drop",
    )


def describe(state: QuantizeState, run: Run, model: Model, written: FormatChoice) -> StageResult:
    """The model written (the format kept, which may not be the stage's own), and the notes and
    details that say what was done to it; removes the stage's intermediate files."""
    cfg, ctx, mode = run.cfg, run.ctx, run.mode
    notes = state.notes
    ops = _op_counts(state, run, written)
    kept = state.kept_float
    details: dict[str, Any] = {
        "mode": mode.name,
        "opset": {"original": state.prepared.original_opset, "quantized": state.prepared.opset},
        "compute_nodes": ops.total,
        "int8_nodes": ops.int8 if mode.int8 else [],
        "float_nodes": ops.float if mode.int8 else {},
        "kernels": ops.kernels,
        "excluded": state.exclude,
        "auto_excluded": state.auto_excluded or [p.tensor for p in kept],
        "kept_float_tensors": [
            {"tensor": p.tensor, "kind": p.kind, "producer": p.producer, "consumers": p.consumers}
            for p in kept
        ],
        "sensitivity": (
            dict(state.sensitivity)
            if mode.per_tensor
            else {layer_label(k): v for k, v in state.sensitivity.items()}
        ),
        "val_metric": {"float": state.float_value, "quantized": written.value},
        "reduce_range": run.reduce_range,
    }
    if mode.calibrates:
        details["calibration"] = {
            **cfg.calibration.model_dump(),
            "used": sum(n_rows(f) for f in state.feeds),
            "chosen": state.method,
            "candidates": {},
            **(state.calibration.details() if state.calibration else {}),
        }
    if state.calibration:
        notes.append(state.calibration.note(ctx.task.metric.name))
    if state.bias is not None:
        if state.bias.note:
            notes.append(state.bias.note)
        if state.bias.details is not None:
            details["bias_correction"] = state.bias.details
    details.update(written.details)
    notes += written.notes
    plots = (
        [sensitivity_plot(state.sensitivity, ctx.task.metric.name, per_tensor=mode.per_tensor)]
        if state.sensitivity
        else []
    )
    shutil.rmtree(run.work, ignore_errors=True)
    result = Model(
        onnx=written.path,
        model_args=dict(model.model_args),
        factory=model.factory,
        info=dict(model.info),
    )
    result.info["quantize"] = {"mode": mode.name, "format": written.chosen.fmt.key}
    return StageResult(result, notes=notes, details=details, plots=plots)


def _op_counts(state: QuantizeState, run: Run, written: FormatChoice) -> OpCount:
    """Count the written model's int8 and float ops, with why each float one stayed float, and
    add the notes on them (and on fp16's speed)."""
    mode, notes = run.mode, state.notes
    graph = onnx.load(str(state.float_graph))
    reasons = {n: "kept float: listed in quantize.exclude" for n in state.exclude}
    reasons.update(
        {n: "kept float by auto_exclude (most sensitive layer)" for n in state.auto_excluded}
    )
    reasons.update({n: r for n, r in float_nodes_of(state.kept_float).items() if n not in reasons})
    reasons.update(written.chosen.fmt.float_nodes)
    ops = count_ops(
        written.path,
        [n.name for n in compute_nodes(graph)],
        excluded=reasons,
        op_reasons=dict(mode.op_reasons),
    )
    notes += op_notes(ops, int8=mode.int8, reduce_range=run.reduce_range)
    tables = mode.tables(graph)
    if tables and written.chosen.fmt.int8:
        floats = [n for n in tables if n in reasons]
        int8_tables = [layer_label(n) for n in tables if n not in reasons]
        notes.append(
            f"Embedding tables stored in int8 ({len(int8_tables)} of {len(tables)}): "
            f"{', '.join(int8_tables) or 'none'}"
            + (f"; kept float: {', '.join(layer_label(n) for n in floats)}." if floats else ".")
        )
    if not mode.int8:
        notes += _fp16_speed_note(run, state.float_graph, written.path)
    elif ops.float_ops and written.chosen.fmt.int8:
        listed = ", ".join(f"{op} x{k}" for op, k in sorted(ops.float_ops.items()))
        why = (
            f"no int8 form in {mode.name} mode"
            if written.chosen is written.measured[0]
            else f"the format kept, {written.chosen.fmt.label}, leaves them float"
        )
        notes.append(f"Other ops run in float ({why}): {listed}.")
    return ops


def _fp16_speed_note(run: Run, float_graph: Path, path: Path) -> list[str]:
    """Whether float16 is faster than float32 on this CPU (ONNX Runtime's CPU provider has few
    float16 kernels)."""
    before = run.ctx.measure(float_graph, "val")
    after = run.ctx.measure(path, "val")
    size = before.size_bytes / after.size_bytes
    ratios = {b: after.latency[b].p50 / before.latency[b].p50 for b in sorted(after.latency)}
    timing = ", ".join(f"batch {b}: {r:.2f}x the float32 latency" for b, r in ratios.items())
    if all(r < 1.0 for r in ratios.values()):
        return [f"fp16 is {size:.1f}x smaller and faster on this CPU ({timing})."]
    return [
        (
            f"fp16 is {size:.1f}x smaller but not faster on this CPU ({timing}): ONNX Runtime's "
            "CPU provider has few float16 kernels, so it casts to float32 around them."
        )
    ]
