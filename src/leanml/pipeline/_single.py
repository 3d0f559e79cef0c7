"""Run one stage outside a recipe: what ``leanml.prune(...)``, ``leanml.quantize(...)`` and the
other technique functions are built on."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..measure import MeasureConfig, Measurement, measure
from ..models import Model
from ..runtime import to_onnx
from ..task import Task
from ..techniques import StageResult, get_stage_class
from ..training import TrainConfig
from ._context import PipelineContext
from ._progress import Reporter
from ._recipe import format_validation_error


@dataclass
class SingleStageResult:
    """A stage's result with the model before and after, both measured on the test split."""

    result: StageResult
    before: Measurement
    after: Measurement
    artifact: Path

    @property
    def model(self) -> Model:
        return self.result.model


def apply_stage(
    kind: str,
    model: Model,
    task: Task,
    config: dict[str, Any] | None = None,
    *,
    train_config: TrainConfig | dict[str, Any] | None = None,
    measure_config: MeasureConfig | dict[str, Any] | None = None,
    max_metric_drop: float = 0.01,
    seed: int = 0,
    work_dir: str | Path | None = None,
    reporter: Reporter | None = None,
) -> SingleStageResult:
    """Apply one registered stage to ``model`` and measure the model before and after.

    Args:
        kind: a registered stage kind (``prune``, ``quantize``, ...).
        model: the model to change (it is not modified).
        task: data, metric, model factory.
        config: the stage's recipe keys, validated like a recipe's (errors name the key).
        train_config, measure_config: as the recipe's ``train:`` and ``measure:`` sections.
        max_metric_drop: the constraint stages may use for their own decisions.
        work_dir: where the stage writes (default: a temporary folder; the artifact is copied out).

    Raises:
        InvalidInputError: a key breaks a rule, or the stage cannot take this model.
    """
    from pydantic import ValidationError

    from ..errors import InvalidInputError

    cls = get_stage_class(kind)

    def validated(config_cls: Any, value: Any, prefix: str) -> Any:
        if isinstance(value, config_cls):
            return value
        try:
            return config_cls.model_validate(value or {})
        except ValidationError as e:
            raise InvalidInputError(format_validation_error(e, prefix=prefix)) from None

    cfg = validated(cls.Config, config, kind)
    tcfg = validated(TrainConfig, train_config, "train")
    mcfg = validated(MeasureConfig, measure_config, "measure")
    stage = cls(cfg)
    stage.check(task)
    stage.check_form(model)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"leanml-{kind}-"))
    work.mkdir(parents=True, exist_ok=True)
    before_path = work / "before.onnx"
    to_onnx(model, task.data.val, before_path)
    before = measure(before_path, task.data.test, task.metric, mcfg, torch_model=model.torch)
    ctx = PipelineContext(
        task=task,
        train_config=tcfg,
        measure_config=mcfg,
        seed=seed,
        work_dir=work,
        max_metric_drop=max_metric_drop,
        baseline_val_metric=ctx_val(before_path, task, mcfg),
        recipe={},
        stage_index=0,
        reporter=reporter or Reporter(),
    )
    result = stage.apply(model.clone(), ctx)
    after_path = work / "model.onnx"
    to_onnx(result.model, task.data.val, after_path)
    after = measure(after_path, task.data.test, task.metric, mcfg, torch_model=result.model.torch)
    return SingleStageResult(result, before, after, after_path)


def ctx_val(path: Path, task: Task, mcfg: MeasureConfig) -> float:
    from ..runtime import OnnxRunner

    out = OnnxRunner(path, threads=mcfg.threads).predict(task.data.val.x)
    assert task.data.val.y is not None
    return task.metric(out, task.data.val.y)
