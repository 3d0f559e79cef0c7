"""`leanml quantize MODEL.onnx --calib DATA.npz [--eval DATA.npz] --mode static` (dynamic and fp16
need no --calib)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import numpy as np
import typer
from rich.table import Table

from .._text import signed, times
from ..constraints import Constraints
from ..errors import NoAcceptableResult
from ..metrics import get_metric
from ._app import (
    Command,
    app,
    check_output_dir,
    config_default,
    err_console,
    flag_names,
    handle_errors,
    out_console,
    require_model,
)
from ._plausible import warn_if_implausible

# The Configs the flags set: the quantize: keys, and the run's constraints.
QUANTIZE = "leanml.techniques.quantize:QuantizeConfig"
CONSTRAINTS = "leanml.constraints:Constraints"


def _labels(path: Path | None) -> np.ndarray | None:
    """The ``y`` array of the NPZ the metric was measured on (None without labels)."""
    if path is None:
        return None
    with np.load(path, allow_pickle=False) as f:
        return f["y"] if "y" in f.files else None


@app.command("quantize", cls=Command)
@handle_errors
def quantize_cmd(
    model: Annotated[
        Path, typer.Argument(help="ONNX model file (from PyTorch, TensorFlow/tf2onnx, Paddle, ...)")
    ],
    calib: Annotated[
        Path | None,
        typer.Option(
            "--calib",
            help="NPZ: one array per model input (x for one input), y when labelled; static mode "
            "calibrates on it (dynamic and fp16 need none)",
        ),
    ] = None,
    eval_data: Annotated[
        Path | None,
        typer.Option(
            "--eval", help="NPZ of held-out samples to measure on (default: the --calib samples)"
        ),
    ] = None,
    mode: Annotated[
        str | None,
        typer.Option(
            "--mode",
            "-m",
            help="dynamic | static | fp16",
            show_default=config_default(f"{QUANTIZE}.mode"),
        ),
    ] = None,
    method: Annotated[
        str | None,
        typer.Option(
            "--method",
            help="calibration (static): auto (try each, keep the best on the evaluation samples) | "
            "minmax | entropy | percentile",
            show_default=config_default(f"{QUANTIZE}.calibration.method"),
        ),
    ] = None,
    samples: Annotated[
        int | None,
        typer.Option(
            "--samples",
            help="calibration samples used from --calib",
            show_default=config_default(f"{QUANTIZE}.calibration.samples"),
        ),
    ] = None,
    metric: Annotated[
        str | None,
        typer.Option("--metric", help="accuracy, r2, ... with labels; agreement or cosine without"),
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option("--exclude", help="layer (node name) kept float; repeatable")
    ] = None,
    max_metric_drop: Annotated[
        float | None,
        typer.Option(
            "--max-metric-drop",
            help="the largest metric drop accepted (auto-exclusion aims for it; a larger one exits 3)",
            show_default=config_default(f"{CONSTRAINTS}.max_metric_drop"),
        ),
    ] = None,
    max_latency_ratio: Annotated[
        float | None,
        typer.Option(
            "--max-latency-ratio",
            help="reject a result whose p50 latency at a measured batch size is more than this times "
            "the input's, confirmed side by side (exit 3); none: no latency limit",
            show_default=config_default(f"{CONSTRAINTS}.max_latency_ratio"),
        ),
    ] = None,
    require_speedup: Annotated[
        bool | None,
        typer.Option(
            "--require-speedup/--no-require-speedup",
            help="write the float model when no int8 format is faster than it at the measured batch "
            "sizes; --no-require-speedup keeps the fastest int8 format for its size",
            show_default=config_default(f"{QUANTIZE}.require_speedup"),
        ),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output",
            "-o",
            help="folder for model.onnx and quantize.json (default: MODEL-MODE beside the model)",
        ),
    ] = None,
    expect: Annotated[
        float | None,
        typer.Option(
            "--expect",
            help="the metric you expect the model to score (e.g. from your training); a "
            "'before' figure far below it gets a warning",
        ),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="print only the result table")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="print quantize.json to stdout, nothing else (progress bars stay on stderr)",
        ),
    ] = False,
) -> None:
    """Quantize an ONNX model to int8 (or float16) and measure it before and after in ONNX Runtime.

    Exit 0: accepted, written as model.onnx. Exit 2: bad input, nothing written. Exit 3: the result
    breaks --max-metric-drop or --max-latency-ratio; written as rejected-model.onnx, reason printed.

    Example: leanml quantize runs/demo/model.onnx --eval digits-test.npz --mode dynamic
    """
    require_model(model)
    from ..pipeline import Reporter, RichReporter, quantize_onnx_file, validate_section

    if output is not None:
        check_output_dir(output)
    limits = {"max_metric_drop": max_metric_drop, "max_latency_ratio": max_latency_ratio}
    constraints: Constraints = validate_section(
        Constraints,
        {k: v for k, v in limits.items() if v is not None},
        "constraints",
        flags=flag_names(limits),
    )
    # Options not given keep the quantize stage's defaults (QuantizeConfig): written once, there.
    calibration = {k: v for k, v in (("method", method), ("samples", samples)) if v is not None}
    config: dict[str, object] = {"exclude": list(exclude or [])}
    if mode is not None:
        config["mode"] = mode
    if calibration:
        config["calibration"] = calibration
    if require_speedup is not None:
        config["require_speedup"] = require_speedup
    if not quiet:
        err_console.print(f"quantizing {model}")
    done = quantize_onnx_file(
        model,
        calib=calib,
        eval_data=eval_data,
        output=output,
        metric=metric,
        config=config,
        max_metric_drop=constraints.max_metric_drop,
        max_latency_ratio=constraints.max_latency_ratio,
        reporter=Reporter() if quiet else RichReporter(err_console),
    )
    s = done.summary
    mode = s["mode"]
    if as_json:
        sys.stdout.write(json.dumps(s, indent=2) + "\n")
        if not done.accepted:
            raise NoAcceptableResult(
                f"no acceptable result: {done.reason}; wrote {done.model_path} (not model.onnx) "
                f"and {done.summary_path}"
            )
        return
    warn_if_implausible(
        s["metric"],
        s["before"]["metric"],
        _labels(eval_data or calib),
        expect=expect,
        higher_is_better=get_metric(s["metric"]).higher_is_better,
    )
    table = Table(
        title=f"leanml quantize: {model.name} ({mode}), {s['metric_label']} on the "
        f"{s['evaluated_on']} samples"
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
    effects = [times(s["size_ratio"], "smaller", "larger")]
    effects += [f"{times(v, 'faster', 'slower')} at batch {b}" for b, v in s["speedup"].items()]
    out_console.print(
        f"{', '.join(effects)}; {s['metric']} {signed(s['metric_delta'])} on "
        f"the {s['evaluated_on']} samples"
    )
    for note in s["notes"]:
        out_console.print(f"- {note}")
    if not done.accepted:
        raise NoAcceptableResult(
            f"no acceptable result: {done.reason}; wrote {done.model_path} (not model.onnx) and "
            f"{done.summary_path}"
        )
    if s.get("format") == "float":
        out_console.print(
            "The model written is float, not int8: no int8 format was faster than float on this "
            "CPU (see the notes); --no-require-speedup keeps int8 for its size."
        )
    out_console.print(f"wrote {done.model_path} and {done.summary_path}")
