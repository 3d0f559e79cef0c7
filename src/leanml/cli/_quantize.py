"""`leanml quantize MODEL.onnx --calib DATA.npz [--eval DATA.npz] --mode static`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._app import app, err_console, handle_errors, out_console


@app.command("quantize")
@handle_errors
def quantize_cmd(
    model: Annotated[
        Path, typer.Argument(help="ONNX model file (from PyTorch, TensorFlow/tf2onnx, Paddle, ...)")
    ],
    calib: Annotated[
        Path,
        typer.Option(
            "--calib", help="NPZ: one array per model input (x for one input), y when labelled"
        ),
    ],
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval", help="NPZ of held-out samples to measure on (default: the --calib samples)"
        ),
    ] = None,
    mode: Annotated[str, typer.Option("--mode", "-m", help="dynamic | static | fp16")] = "static",
    method: Annotated[
        str, typer.Option("--method", help="calibration: minmax | entropy | percentile")
    ] = "minmax",
    samples: Annotated[
        int, typer.Option("--samples", help="calibration samples used from --calib")
    ] = 256,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="accuracy, r2, ... with labels; agreement or cosine without"),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="layer (node name) kept float; repeatable")
    ] = None,
    max_metric_drop: Annotated[
        float,
        typer.Option(
            "--max-metric-drop",
            help="auto-exclusion keeps sensitive layers float until the drop is within this",
        ),
    ] = 0.01,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="folder for model.onnx and quantize.json (default: MODEL-MODE beside the model)",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the result table")
    ] = False,
) -> None:
    """Quantize an ONNX model to int8 (or float16) and measure it before and after in ONNX Runtime."""
    from ..pipeline._quantize_api import quantize_onnx_file

    if not quiet:
        err_console.print(f"quantizing {model} ({mode})")
    done = quantize_onnx_file(
        model,
        calib=calib,
        eval_data=eval_data,
        mode=mode,
        output=output,
        metric=metric,
        config={
            "calibration": {"method": method, "samples": samples},
            "exclude": list(exclude or []),
        },
        max_metric_drop=max_metric_drop,
    )
    s = done.summary
    table = Table(
        title=f"leanml quantize: {model.name} ({mode}), {s['metric']} on the {s['evaluated_on']} samples"
    )
    for col in (
        "",
        s["metric"],
        "size KiB",
        *(f"p50 b{b} ms" for b in s["before"]["latency_ms_p50"]),
    ):
        table.add_column(col, justify="left" if not col else "right")
    for name in ("before", "after"):
        row = s[name]
        table.add_row(
            name,
            f"{row['metric']:.4f}",
            f"{row['size_bytes'] / 1024:.1f}",
            *(f"{v:.3f}" for v in row["latency_ms_p50"].values()),
        )
    out_console.print(table)
    speed = ", ".join(f"batch {b}: {v:.2f}x" for b, v in s["speedup"].items())
    out_console.print(
        f"{s['size_ratio']:.2f}x smaller, speed-up {speed}, {s['metric']} {s['metric_delta']:+.4f}"
    )
    for note in s["notes"]:
        out_console.print(f"- {note}")
    out_console.print(f"wrote {done.model_path} and {done.summary_path}")
