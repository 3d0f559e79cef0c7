"""The StageContext the pipeline hands each stage."""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..constraints import Constraints
from ..data import Split
from ..errors import StageNotApplicable
from ..measure import MeasureConfig, Measurement, measure
from ..models import Model
from ..runtime import OnnxRunner, to_onnx
from ..task import Task
from ..techniques import Stage, StageResult
from ..training import EpochCallback, LossFn, TrainConfig, TrainResult, fit
from ._progress import Reporter, ReporterStep
from ._recipe import Recipe


@dataclass
class PipelineContext:
    """Implements :class:`leanml.techniques.StageContext` for one stage of a run.

    Build it with :meth:`for_stage` (a recipe's stage, a technique function, a tune worker) or
    :meth:`derive` (a later stage inside another stage), so every context is built one way.
    """

    task: Task
    train_config: TrainConfig
    measure_config: MeasureConfig
    constraints: Constraints
    seed: int
    work_dir: Path
    baseline_val_metric: float
    reporter: Reporter
    recipe: dict[str, Any] = field(default_factory=dict)
    stage_index: int = 0

    @classmethod
    def for_stage(
        cls,
        *,
        task: Task,
        work_dir: Path,
        baseline_val_metric: float,
        reporter: Reporter,
        recipe: Recipe | None = None,
        stage_index: int = 0,
        train_config: TrainConfig | None = None,
        measure_config: MeasureConfig | None = None,
        constraints: Constraints | None = None,
        seed: int | None = None,
    ) -> PipelineContext:
        """The context of stage ``stage_index`` of ``recipe`` (or of a stage run on its own):
        settings not given come from the recipe, else from their Configs' defaults."""
        return cls(
            task=task,
            train_config=train_config or (recipe.train if recipe else TrainConfig()),
            measure_config=measure_config or (recipe.measure if recipe else MeasureConfig()),
            constraints=constraints or (recipe.constraints if recipe else Constraints()),
            seed=seed if seed is not None else (recipe or Recipe.model_construct()).seed,
            work_dir=work_dir,
            baseline_val_metric=baseline_val_metric,
            reporter=reporter,
            recipe=recipe.dump() if recipe else {},
            stage_index=stage_index,
        )

    def derive(self, **changes: Any) -> PipelineContext:
        """This context with some fields changed (a later stage's folder and index, say)."""
        return replace(self, **changes)

    @property
    def max_metric_drop(self) -> float:
        return self.constraints.max_metric_drop

    @staticmethod
    def val_metric(path: Path, task: Task, config: MeasureConfig) -> float:
        """The task metric of an ONNX artifact on the validation split."""
        outputs = OnnxRunner(path, threads=config.threads).predict(task.data.val.x)
        assert task.data.val.y is not None
        return task.metric(outputs, task.data.val.y)

    def _split(self, name: str) -> Split:
        return {
            "train": self.task.data.train,
            "val": self.task.data.val,
            "test": self.task.data.test,
        }[name]

    def fit(
        self,
        net: Any,
        overrides: dict[str, Any] | None = None,
        *,
        train: Split | None = None,
        loss_fn: LossFn | None = None,
        extra_parameters: Any = (),
        callbacks: list[EpochCallback] | None = None,
        description: str = "fine-tune",
    ) -> TrainResult:
        # A stage's model is judged on the validation split: it never refits on it.
        cfg = self.train_config.merged({**(overrides or {}), "refit": False})
        self.reporter.train_start(description, cfg.epochs)
        try:
            return fit(
                net,
                train or self.task.data.train,
                self.task.data.val,
                self.task.metric,
                cfg,
                seed=self.seed,
                loss_fn=loss_fn,
                extra_parameters=extra_parameters,
                callbacks=[self.reporter.epoch, *(callbacks or [])],
                progress=self.reporter.train_info,
            )
        finally:
            self.reporter.train_end()

    def export_onnx(self, model: Model, path: Path) -> Path:
        path = Path(path)
        if (
            model.torch is None
            and model.sklearn is None
            and model.onnx is not None
            and Path(model.onnx) == path
        ):
            return path
        to_onnx(model, self.task.data.val, path)
        return path

    def _artifact(self, model: Model | Path, tmp: Path) -> Path:
        if isinstance(model, Path | str):
            return Path(model)
        if model.torch is None and model.sklearn is None and model.onnx is not None:
            return Path(model.onnx)
        return self.export_onnx(model, tmp / "candidate.onnx")

    def evaluate(self, model: Model | Path, split: str = "val") -> float:
        data = self._split(split)
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            path = self._artifact(model, Path(tmp))
            outputs = OnnxRunner(path, threads=self.measure_config.threads).predict(data.x)
        assert data.y is not None
        return self.task.metric(outputs, data.y)

    def measure(self, model: Model | Path, split: str = "val") -> Measurement:
        with (
            tempfile.TemporaryDirectory(dir=self.work_dir) as tmp,
            self.progress("measuring") as step,
        ):
            path = self._artifact(model, Path(tmp))
            torch_model = model.torch if isinstance(model, Model) else None
            return measure(
                path,
                self._split(split),
                self.task.metric,
                self.measure_config,
                torch_model=torch_model,
                progress=step.update,
            )

    def log(self, message: str) -> None:
        self.reporter.log(message)

    def progress(
        self, description: str, total: int | None = None
    ) -> AbstractContextManager[ReporterStep]:
        """See :meth:`leanml.techniques.StageContext.progress`."""
        return self.reporter.progress(description, total)

    def apply_stages(
        self,
        model: Model,
        stages: Sequence[tuple[int, Stage]],
        *,
        work_dir: Path,
        train: dict[str, Any] | None = None,
    ) -> list[StageResult]:
        """See :meth:`leanml.techniques.StageContext.apply_stages`."""
        results: list[StageResult] = []
        current = model
        train_config = self.train_config.merged(train) if train else self.train_config
        for index, stage in stages:
            stage.check(self.task)
            try:
                stage.check_form(current)
            except StageNotApplicable:
                continue  # a run skips it too (prune on a Keras module)
            folder = work_dir / f"stage{index}"
            folder.mkdir(parents=True, exist_ok=True)
            ctx = self.derive(train_config=train_config, work_dir=folder, stage_index=index)
            result = stage.apply(current.clone(), ctx)
            results.append(result)
            current = result.model
        return results
