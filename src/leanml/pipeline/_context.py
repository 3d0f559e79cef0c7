"""The StageContext the pipeline hands each stage."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..data import Split
from ..measure import MeasureConfig, Measurement, measure
from ..models import Model
from ..runtime import OnnxRunner, to_onnx
from ..task import Task
from ..training import EpochCallback, LossFn, TrainConfig, TrainResult, fit
from ._progress import Reporter


class PipelineContext:
    """Implements :class:`leanml.techniques.StageContext` for one stage of a run."""

    def __init__(
        self,
        *,
        task: Task,
        train_config: TrainConfig,
        measure_config: MeasureConfig,
        seed: int,
        work_dir: Path,
        max_metric_drop: float,
        baseline_val_metric: float,
        recipe: dict[str, Any],
        stage_index: int,
        reporter: Reporter,
    ) -> None:
        self.task = task
        self.train_config = train_config
        self.measure_config = measure_config
        self.seed = seed
        self.work_dir = work_dir
        self.max_metric_drop = max_metric_drop
        self.baseline_val_metric = baseline_val_metric
        self.recipe = recipe
        self.stage_index = stage_index
        self.reporter = reporter

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
        cfg = self.train_config.merged(overrides)
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
        with tempfile.TemporaryDirectory(dir=self.work_dir) as tmp:
            path = self._artifact(model, Path(tmp))
            torch_model = model.torch if isinstance(model, Model) else None
            return measure(
                path,
                self._split(split),
                self.task.metric,
                self.measure_config,
                torch_model=torch_model,
            )

    def log(self, message: str) -> None:
        self.reporter.log(message)
