"""The pipeline and recipes: the Python API that ``leanml run`` is a shell over."""

from __future__ import annotations

from ._context import PipelineContext
from ._entry import optimize, run
from ._pipeline import Pipeline, RunResult, build_task
from ._progress import Reporter, RichReporter, keras_progress
from ._recipe import Recipe, StageSpec, format_validation_error, load_recipe
from ._technique import SingleStageResult, apply_stage, run_technique

__all__ = [
    "Pipeline",
    "PipelineContext",
    "Recipe",
    "Reporter",
    "RichReporter",
    "RunResult",
    "SingleStageResult",
    "StageSpec",
    "apply_stage",
    "build_task",
    "format_validation_error",
    "keras_progress",
    "load_recipe",
    "optimize",
    "run",
    "run_technique",
]
