"""What the quantize stage tells the user: which nodes run in int8, and each layer's sensitivity."""

from __future__ import annotations

from ...charts import Plot
from ._config import reduce_range_for
from ._onnx import layer_label
from ._ops import OpCount


def op_notes(ops: OpCount, mode: str, reduce_range: bool) -> list[str]:
    """Plain-language notes on what ONNX Runtime runs in int8 (or fp16) and what stayed float."""
    if mode == "fp16":
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
