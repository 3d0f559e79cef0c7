"""``leanml quantize MODEL.onnx --calib DATA.npz``: quantize an ONNX file from any framework with
calibration (and evaluation) samples in NPZ files, and write the result beside a summary."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import atomic_write_text
from ..data import Dataset, Split, read_npz
from ..errors import InvalidInputError
from ..models import Model
from ..runtime import OnnxRunner, load_onnx
from ..task import Task
from ._tasks import check_input, task_for
from ._technique import SingleStageResult, apply_stage, build_stage


def load_input_npz(path: Path, runner: OnnxRunner, *, what: str) -> Split:
    """An NPZ of one array per model input (named after it; ``x`` for a single-input model), plus
    ``y`` when labelled. Shapes, dtypes and row counts are checked against the model."""
    arrays = read_npz(path, what=what, example="<input name>=..., y=...")
    names = runner.input_names
    x: dict[str, np.ndarray] = {}
    for inp in runner.inputs:
        arr = arrays.get(inp.name)
        if arr is None and len(names) == 1:
            arr = arrays.get("x")
        if arr is None:
            raise InvalidInputError(
                f"{what} {str(path)!r} has arrays {sorted(arrays)}; the model's inputs are {names}: give one "
                f"array per input, named after it{' (or x)' if len(names) == 1 else ''}"
            )
        check_input(arr, inp, what=f"{what} array for input {inp.name!r}")
        x[inp.name] = arr
    rows = {k: len(v) for k, v in x.items()}
    if len(set(rows.values())) != 1:
        raise InvalidInputError(
            f"{what} arrays have different row counts {rows}; every input needs one row per sample"
        )
    n = next(iter(rows.values()))
    if n < 1:
        raise InvalidInputError(
            f"{what} {str(path)!r} holds 0 samples; give at least 1 (256 calibrate well)"
        )
    y = arrays.get("y")
    if y is not None:
        if len(y) != n:
            raise InvalidInputError(
                f"{what}: y has {len(y)} rows but the inputs have {n}; one label per sample"
            )
        if not (np.issubdtype(y.dtype, np.number) or y.dtype == bool):
            raise InvalidInputError(f"{what}: y has dtype {y.dtype}; labels must be numbers")
        y = y.astype(np.int64) if np.issubdtype(y.dtype, np.integer) else y.astype(np.float32)
    return Split(x[names[0]] if len(names) == 1 else x, y)


@dataclass
class FileQuantizeResult:
    """What ``leanml quantize`` wrote: the quantized model and the before/after summary."""

    model_path: Path
    summary_path: Path
    summary: dict[str, Any]
    result: SingleStageResult


def quantize_onnx_file(
    model: str | Path,
    *,
    calib: str | Path,
    eval_data: str | Path | None = None,
    output: str | Path | None = None,
    metric: str | None = None,
    config: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    max_metric_drop: float | None = None,
    seed: int = 0,
) -> FileQuantizeResult:
    """Quantize an ONNX file with the ``quantize:`` keys ``config`` (``mode``, ``calibration``, ...).

    Writes ``OUTPUT/model.onnx`` and ``OUTPUT/quantize.json`` only when everything succeeded.
    Without ``eval_data`` the measurements use the calibration samples; without labels (``y``) the
    metric is the fidelity to the original model.
    """
    stage = build_stage("quantize", config)  # a bad mode or key fails before any file is read
    path = Path(model).expanduser()
    load_onnx(path)
    runner = OnnxRunner(path)
    calib_split = load_input_npz(Path(calib), runner, what="--calib")
    eval_split = (
        load_input_npz(Path(eval_data), runner, what="--eval") if eval_data else calib_split
    )
    if (calib_split.y is None) != (eval_split.y is None):
        raise InvalidInputError("--calib and --eval must both hold labels (y), or neither")
    dataset = Dataset(f"npz:{Path(calib).name}", "other", calib_split, eval_split, eval_split)
    handle = Model(onnx=path)
    task: Task = task_for(dataset, model=handle, spec=str(path), metric=metric)
    mode = stage.config.mode
    out_dir = Path(output) if output else path.with_name(f"{path.stem}-{mode}")
    with tempfile.TemporaryDirectory(prefix="leanml-quantize-") as tmp:
        result = apply_stage(
            stage,
            handle,
            task,
            measure_config=measure,
            max_metric_drop=max_metric_drop,
            seed=seed,
            work_dir=tmp,
        )
        summary = summarize(
            result, task, mode=mode, source=path, evaluated_on="eval" if eval_data else "calib"
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        model_path = out_dir / "model.onnx"
        tmp_model = out_dir / ".model.onnx.tmp"
        shutil.copyfile(result.artifact, tmp_model)
        tmp_model.replace(model_path)
        summary_path = out_dir / "quantize.json"
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return FileQuantizeResult(model_path, summary_path, summary, result)


def summarize(
    result: SingleStageResult, task: Task, *, mode: str, source: Path, evaluated_on: str
) -> dict[str, Any]:
    """The before/after figures of ``quantize.json``."""
    b, a = result.before, result.after
    batches = sorted(set(b.latency) & set(a.latency))
    return {
        "source": str(source),
        "mode": mode,
        "metric": task.metric.name,
        "evaluated_on": evaluated_on,
        "before": {
            "metric": b.metric,
            "size_bytes": b.size_bytes,
            "latency_ms_p50": {str(k): b.latency[k].p50 for k in batches},
        },
        "after": {
            "metric": a.metric,
            "size_bytes": a.size_bytes,
            "latency_ms_p50": {str(k): a.latency[k].p50 for k in batches},
        },
        "metric_delta": a.metric - b.metric,
        "size_ratio": b.size_bytes / a.size_bytes,
        "speedup": {str(k): b.latency[k].p50 / a.latency[k].p50 for k in batches},
        "notes": result.result.notes,
        "details": result.result.details,
    }
