"""The pipeline and recipes: the Python API that ``leanml run`` is a shell over.

It runs recipes (``_pipeline``: baseline, stages, gate, reports), a recipe's planned stages
(``_optimize``, over :mod:`leanml.search`), only a recipe's tune stages (``_tune_workers``), one
stage on one model (``_technique``) and an ONNX file through quantization (``_quantize_file``).
"""

from __future__ import annotations

from ._context import PipelineContext
from ._entry import optimize, run
from ._pipeline import Pipeline, RunResult, build_task
from ._progress import Reporter, RichReporter, keras_progress
from ._quantize_file import FileQuantizeResult, quantize_onnx_file
from ._recipe import Recipe, StageSpec, load_recipe
from ._tasks import check_onnx_takes, default_metric, model_file_to_onnx, reference_targets
from ._technique import (
    SingleStageResult,
    apply_stage,
    distill,
    prune,
    quantize,
    run_technique,
    select_features,
    tune,
)
from ._tune_workers import TuneSummary, tune_recipe
from ._validation import format_validation_error, validate_keys, validate_section

__all__ = [
    "FileQuantizeResult",
    "Pipeline",
    "PipelineContext",
    "Recipe",
    "Reporter",
    "RichReporter",
    "RunResult",
    "SingleStageResult",
    "StageSpec",
    "TuneSummary",
    "apply_stage",
    "build_task",
    "check_onnx_takes",
    "default_metric",
    "distill",
    "format_validation_error",
    "keras_progress",
    "load_recipe",
    "model_file_to_onnx",
    "optimize",
    "prune",
    "quantize",
    "quantize_onnx_file",
    "reference_targets",
    "run",
    "run_technique",
    "select_features",
    "tune",
    "tune_recipe",
    "validate_keys",
    "validate_section",
]
