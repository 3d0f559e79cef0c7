"""``leanml.quantize``: the quantize stage on one model, outside a recipe; and the data files of
``leanml quantize MODEL.onnx --calib DATA.npz``."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils import atomic_write_text
from ..data import Dataset, Inputs, Split, read_npz
from ..errors import InvalidInputError
from ..metrics import FIDELITY_METRICS
from ..models import Model
from ..runtime import OnnxRunner, load_onnx
from ..task import Task, make_task
from ..training import TrainConfig, predict
from ._inputs import as_dataset, default_metric, train_model
from ._single import SingleStageResult, apply_stage

_INT_TYPES = ("tensor(int64)", "tensor(int32)", "tensor(int8)", "tensor(uint8)", "tensor(bool)")


def quantize(
    model: Any,
    *,
    data: str | Dataset | tuple[Inputs, np.ndarray | None] | None = None,
    mode: str = "static",
    calibration: str = "minmax",
    samples: int = 256,
    per_channel: bool = True,
    exclude: Sequence[str] = (),
    auto_exclude: bool = True,
    finetune: dict[str, Any] | None = None,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    max_metric_drop: float = 0.01,
    seed: int = 0,
    work_dir: str | Path | None = None,
    **options: Any,
) -> SingleStageResult:
    """Quantize a model (int8 or float16) and measure it before and after on ONNX Runtime.

    Args:
        model: a trained ``torch.nn.Module`` (a Hugging Face encoder too), a
            :class:`leanml.models.Model`, a path to an ONNX file (from any framework), a local
            Hugging Face model directory (needs ``pip install leanml[transformers]``), or a model
            name (``"cnn"``, ``"mlp"``, ``"pkg.mod:function"``) that is built and trained first.
        data: a dataset name or spec (``"digits"``, ``"csv:PATH"``, ``"npz:PATH"``), a
            :class:`leanml.data.Dataset`, or ``(x, y)`` with ``x`` an array or a dict of arrays named
            after the model's inputs, split 65/15/20 by ``seed``. With ``y`` None the metric is the
            fidelity to the float model (``agreement`` of top-1, or ``cosine`` of the outputs).
        mode: ``dynamic``, ``static``, ``fp16`` or ``qat``.
        calibration: ``minmax``, ``entropy`` or ``percentile`` (static mode).
        samples: how many training samples calibrate (static and qat).
        per_channel: per-output-channel weight scales.
        exclude: layers kept float (module paths such as ``features.0.0`` or ONNX node names).
        auto_exclude: keep the most sensitive layers float until ``max_metric_drop`` holds on val.
        finetune: qat mode: overrides of ``train`` for the quantization-aware fine-tuning (the
            stage's ``train`` key; default ``{"epochs": 3}``).
        metric: the task metric (default: accuracy for integer labels, r2 for real targets, cosine
            without labels).
        train: the ``train:`` settings (a model given by name trains with them; qat starts from them).
        options: any other key of the stage (``symmetric_weights``, ``symmetric_activations``,
            ``reduce_range``, ``sensitivity``, ``preprocess``, ``calibration`` as a mapping).

    Returns:
        the quantized model (``.model``, an ONNX file), the notes on what runs in int8 (``.result``)
        and measurements before and after on the test split.

    Raises:
        InvalidInputError: bad keys, data that does not fit the model, or a mode the model cannot take.

    Example:
        >>> import leanml
        >>> out = leanml.quantize("cnn", data="digits", mode="static")  # doctest: +SKIP
        >>> out.before.size_bytes / out.after.size_bytes  # doctest: +SKIP
    """
    handle, spec = _model(model)
    dataset = as_dataset(data, seed=seed)
    if not dataset.labelled:
        if handle is None:
            raise InvalidInputError(
                "data without labels needs a trained model: fidelity is measured against it"
            )
        dataset, metric = with_reference_outputs(dataset, handle, metric)
    if metric is None:
        metric = default_metric(dataset)
    tcfg = TrainConfig.model_validate(train or {})
    task = make_task(dataset, metric=metric, model=spec, model_args=model_args or {})
    if handle is None:
        handle = train_model(task, tcfg, seed)
    config: dict[str, Any] = {
        "mode": mode,
        "calibration": {"method": calibration, "samples": samples},
        "per_channel": per_channel,
        "exclude": list(exclude),
        "auto_exclude": auto_exclude,
        **options,
    }
    if finetune is not None:
        config["train"] = finetune
    return apply_stage(
        "quantize",
        handle,
        task,
        config,
        train_config=tcfg,
        measure_config=measure,
        max_metric_drop=max_metric_drop,
        seed=seed,
        work_dir=work_dir,
    )


def _model(model: Any) -> tuple[Model | None, str]:
    """The model handle (None when it must be built and trained) and its spec for the task."""
    if isinstance(model, Model):
        return model, str(model.onnx) if model.form == "onnx" else (model.factory or "model")
    if isinstance(model, nn.Module):
        if type(model).__module__.startswith("transformers."):
            return Model(torch=HFEncoder(model)), type(model).__name__
        return Model(torch=model), type(model).__name__
    if isinstance(model, str | Path):
        path = Path(model).expanduser()
        if str(model).endswith(".onnx"):
            load_onnx(path)
            return Model(onnx=path), str(path)
        if path.is_dir():
            return Model(torch=HFEncoder(_hf_model(path))), path.name
        return None, str(model)
    raise InvalidInputError(
        f"model must be a torch.nn.Module, a leanml Model, PATH.onnx, a model directory or a model name; "
        f"got {type(model).__name__}"
    )


class HFEncoder(nn.Module):
    """A Hugging Face encoder as a module of named tensor inputs (``input_ids``, ``attention_mask``,
    ``token_type_ids``) that returns the token embeddings (``last_hidden_state``): what the ONNX
    export (with a dynamic sequence axis) and the fidelity metric see."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        named = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "token_type_ids": token_type_ids,
        }
        out = self.model(**{k: v for k, v in named.items() if v is not None})
        return out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]


def _hf_model(path: Path) -> Any:
    if not (path / "config.json").is_file():
        raise InvalidInputError(
            f"model directory {str(path)!r} has no config.json; give a Hugging Face model folder"
        )
    try:
        import transformers
    except ImportError:
        raise InvalidInputError(
            f"model directory {str(path)!r} is a Hugging Face model; install the extra: pip install leanml[transformers]"
        ) from None
    return transformers.AutoModel.from_pretrained(str(path), local_files_only=True).eval()


def with_reference_outputs(
    dataset: Dataset, model: Model, metric: str | None
) -> tuple[Dataset, str]:
    """Unlabelled data: the targets are the float model's outputs; the metric is a fidelity one."""
    if metric is not None and metric not in FIDELITY_METRICS:
        raise InvalidInputError(
            f"metric {metric!r} needs labels and the data has none; use {' or '.join(FIDELITY_METRICS)}"
        )

    if model.torch is not None:

        def outputs(x: Inputs) -> np.ndarray:
            return predict(model.torch, x).astype(np.float32)  # type: ignore[arg-type]
    else:
        runner = OnnxRunner(model.onnx)  # type: ignore[arg-type]

        def outputs(x: Inputs) -> np.ndarray:
            return runner.predict(x).astype(np.float32)

    ref = {
        name: Split(s.x, outputs(s.x))
        for name, s in (("train", dataset.train), ("val", dataset.val), ("test", dataset.test))
    }
    if metric is None:
        y = ref["train"].y
        assert y is not None
        metric = "agreement" if y.ndim == 2 and y.shape[1] > 1 else "cosine"
    out = Dataset(
        dataset.name,
        dataset.kind,
        ref["train"],
        ref["val"],
        ref["test"],
        dataset.feature_names,
        None,
    )
    return out, metric


# -- leanml quantize MODEL.onnx --calib DATA.npz ---------------------------------------------------


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
        _check_array(arr, inp, what=f"{what} array for input {inp.name!r}")
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


def _check_array(arr: np.ndarray, inp: Any, *, what: str) -> None:
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInputError(
            f"{what} has dtype {arr.dtype}; the model takes {inp.type}: give numbers"
        )
    if (
        inp.type in _INT_TYPES
        and np.issubdtype(arr.dtype, np.floating)
        and not np.all(arr == np.round(arr))
    ):
        raise InvalidInputError(
            f"{what} holds fractional {arr.dtype} values; the model takes {inp.type}: give integers"
        )
    if (
        inp.type not in _INT_TYPES
        and np.issubdtype(arr.dtype, np.floating)
        and not np.isfinite(arr).all()
    ):
        raise InvalidInputError(f"{what} holds NaN/inf values; data must be finite")
    declared = inp.shape
    if len(declared) != arr.ndim or any(
        isinstance(d, int) and d != s for d, s in zip(declared[1:], arr.shape[1:])
    ):
        raise InvalidInputError(
            f"{what} is shaped {list(arr.shape)}; the model's input is shaped {declared} (batch first)"
        )


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
    mode: str = "static",
    output: str | Path | None = None,
    metric: str | None = None,
    config: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    max_metric_drop: float = 0.01,
    seed: int = 0,
) -> FileQuantizeResult:
    """Quantize an ONNX file from any framework with calibration (and evaluation) NPZ files.

    Writes ``OUTPUT/model.onnx`` and ``OUTPUT/quantize.json`` only when everything succeeded.
    Without ``eval_data`` the measurements use the calibration samples; without labels (``y``) the
    metric is the fidelity to the original model.
    """
    from pydantic import ValidationError

    from ..techniques import get_stage_class
    from ._recipe import format_validation_error

    try:  # a bad mode or key fails before any file is read
        get_stage_class("quantize").Config.model_validate({"mode": mode, **(config or {})})
    except ValidationError as e:
        raise InvalidInputError(format_validation_error(e, prefix="quantize")) from None
    path = Path(model).expanduser()
    load_onnx(path)
    runner = OnnxRunner(path)
    calib_split = load_input_npz(Path(calib), runner, what="--calib")
    eval_split = (
        load_input_npz(Path(eval_data), runner, what="--eval") if eval_data else calib_split
    )
    dataset = Dataset(f"npz:{Path(calib).name}", "other", calib_split, eval_split, eval_split)
    handle = Model(onnx=path)
    if calib_split.y is None or eval_split.y is None:
        if calib_split.y is not None or eval_split.y is not None:
            raise InvalidInputError("--calib and --eval must both hold labels (y), or neither")
        dataset, metric = with_reference_outputs(dataset, handle, metric)
    elif metric is None:
        y = calib_split.y
        metric = "accuracy" if np.issubdtype(y.dtype, np.integer) else "r2"
    elif metric in FIDELITY_METRICS:
        dataset, metric = with_reference_outputs(
            Dataset(
                dataset.name,
                "other",
                Split(calib_split.x),
                Split(eval_split.x),
                Split(eval_split.x),
            ),
            handle,
            metric,
        )
    task: Task = make_task(dataset, metric=metric or "cosine", model=str(path))
    out_dir = Path(output) if output else path.with_name(f"{path.stem}-{mode}")
    with tempfile.TemporaryDirectory(prefix="leanml-quantize-") as tmp:
        result = apply_stage(
            "quantize",
            handle,
            task,
            {"mode": mode, **(config or {})},
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


__all__ = [
    "FileQuantizeResult",
    "HFEncoder",
    "load_input_npz",
    "quantize",
    "quantize_onnx_file",
    "summarize",
    "with_reference_outputs",
]
