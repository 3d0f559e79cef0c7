"""``leanml quantize MODEL.onnx --calib DATA.npz``: quantize an ONNX file from any framework with
calibration (and evaluation) samples in NPZ files, judge the result with the recipes' gate, and
write it beside a summary: ``model.onnx`` when accepted, ``rejected-model.onnx`` when not."""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import atomic_write_text
from ..constraints import Constraints
from ..data import Dataset, Split, read_npz
from ..errors import InvalidInputError
from ..measure import MeasureConfig
from ..models import Model
from ..report import StageRecord
from ..runtime import OnnxRunner, load_onnx
from ..task import Task
from ._gate import Verdict, judge
from ._progress import Reporter
from ._tasks import check_input, model_file_to_onnx, task_for
from ._technique import SingleStageResult, apply_stage, build_stage
from ._validation import validate_section

ACCEPTED_NAME = "model.onnx"
REJECTED_NAME = "rejected-model.onnx"


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
    """What ``leanml quantize`` wrote: the quantized model and the before/after summary.

    ``accepted`` is the gate's verdict (the one recipes get); when False, ``reason`` says which
    constraint the result broke, and ``model_path`` is ``rejected-model.onnx``, never ``model.onnx``.
    """

    model_path: Path
    summary_path: Path
    summary: dict[str, Any]
    result: SingleStageResult
    accepted: bool = True
    reason: str | None = None


def quantize_onnx_file(
    model: str | Path,
    *,
    calib: str | Path | None = None,
    eval_data: str | Path | None = None,
    output: str | Path | None = None,
    metric: str | None = None,
    config: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    max_metric_drop: float | None = None,
    max_latency_ratio: float | None = None,
    seed: int | None = None,
    reporter: Reporter | None = None,
) -> FileQuantizeResult:
    """Quantize an ONNX file with the ``quantize:`` keys ``config`` (``mode``, ``calibration``, ...).

    The result goes through the gate recipes use (:func:`leanml.pipeline._gate.judge`): its metric
    drop on the evaluation samples must hold ``max_metric_drop`` and, when given, its p50 latency at
    every measured batch size must be at most ``max_latency_ratio`` times the input's (confirmed side
    by side). Writes ``OUTPUT/quantize.json`` (with ``accepted`` and ``reason``) and the model as
    ``OUTPUT/model.onnx`` when accepted, ``OUTPUT/rejected-model.onnx`` when not; nothing is
    written when the stage fails. Without ``eval_data`` the measurements use the calibration
    samples; without ``calib`` (dynamic and fp16 modes need no calibration) the evaluation samples
    are all there is; without labels (``y``) the metric is the fidelity to the original model.

    Raises:
        InvalidInputError: a bad key, file, array or constraint; nothing is written.
    """
    stage = build_stage("quantize", config)  # a bad mode or key fails before any file is read
    limits = {"max_metric_drop": max_metric_drop, "max_latency_ratio": max_latency_ratio}
    constraints: Constraints = validate_section(
        Constraints, {k: v for k, v in limits.items() if v is not None}, ""
    )
    measure_config: MeasureConfig = validate_section(MeasureConfig, measure, "measure")
    source = Path(model).expanduser()
    path = model_file_to_onnx(source)  # a Keras or TensorFlow model: its checked ONNX export
    load_onnx(path)
    runner = OnnxRunner(path)
    mode = stage.config.mode
    if calib is None and (mode in ("static", "qat") or eval_data is None):
        raise InvalidInputError(
            f"mode {mode!r} calibrates activation ranges on samples: give --calib DATA.npz"
            if mode in ("static", "qat")
            else "give --eval DATA.npz (samples to measure on) or --calib DATA.npz"
        )
    eval_split = load_input_npz(Path(eval_data), runner, what="--eval") if eval_data else None
    calib_split = load_input_npz(Path(calib), runner, what="--calib") if calib else eval_split
    assert calib_split is not None
    eval_split = eval_split or calib_split
    if (calib_split.y is None) != (eval_split.y is None):
        raise InvalidInputError("--calib and --eval must both hold labels (y), or neither")
    name = Path(calib or eval_data or "").name
    dataset = Dataset(f"npz:{name}", "other", calib_split, eval_split, eval_split)
    handle = Model(onnx=path)
    task: Task = task_for(dataset, model=handle, spec=str(path), metric=metric)
    out_dir = Path(output) if output else source.with_name(f"{source.stem}-{mode}")
    with tempfile.TemporaryDirectory(prefix="leanml-quantize-") as tmp:
        result = apply_stage(
            stage,
            handle,
            task,
            measure_config=measure_config,
            max_metric_drop=constraints.max_metric_drop,
            seed=seed,
            work_dir=tmp,
            reporter=reporter,
        )
        verdict = judge(
            result.after,
            baseline=result.before,
            before=StageRecord("the input model", "input", result.before, 0.0, str(path)),
            before_path=path,
            path=result.artifact,
            metric=task.metric,
            constraints=constraints,
            samples=eval_split.x,
            measure_config=measure_config,
            reporter=reporter,
        )
        summary = summarize(
            result,
            task,
            mode=mode,
            source=source,
            evaluated_on="eval" if eval_data else "calib",
            verdict=verdict,
            constraints=constraints,
        )
        out_dir.mkdir(parents=True, exist_ok=True)
        name, stale = (
            (ACCEPTED_NAME, REJECTED_NAME) if verdict.accepted else (REJECTED_NAME, ACCEPTED_NAME)
        )
        # An earlier run's model under the other name would sit beside this verdict: remove it.
        (out_dir / stale).unlink(missing_ok=True)
        model_path = out_dir / name
        tmp_model = out_dir / f".{name}.tmp"
        shutil.copyfile(result.artifact, tmp_model)
        tmp_model.replace(model_path)
        summary_path = out_dir / "quantize.json"
        atomic_write_text(summary_path, json.dumps(summary, indent=2) + "\n")
    return FileQuantizeResult(
        model_path, summary_path, summary, result, verdict.accepted, verdict.reason
    )


def summarize(
    result: SingleStageResult,
    task: Task,
    *,
    mode: str,
    source: Path,
    evaluated_on: str,
    verdict: Verdict,
    constraints: Constraints,
) -> dict[str, Any]:
    """The verdict and the before/after figures of ``quantize.json``."""
    b, a = result.before, result.after
    batches = sorted(set(b.latency) & set(a.latency))
    return {
        "source": str(source),
        "mode": mode,
        # the format written (see techniques/quantize/_formats.py): "float" when no int8 format
        # was faster; None when the stage compared none (fp16)
        "format": result.result.details.get("format"),
        "accepted": verdict.accepted,
        "reason": verdict.reason,
        "constraints": constraints.model_dump(),
        "metric": task.metric.name,
        "metric_label": task.metric_label,
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
