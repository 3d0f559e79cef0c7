"""The pipeline: baseline, then the recipe's stages, each measured, accepted or rolled back."""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .._text import signed
from .._utils import atomic_write_text, environment, seed_everything
from .._version import __version__
from ..data import Dataset, load_data
from ..errors import InvalidInputError, StageNotApplicable
from ..export import copy_onnx, save_safetensors
from ..measure import Measurement, measure
from ..models import (
    Model,
    is_keras_path,
    is_tensorflow_path,
    load_keras,
    load_pickled_module,
    load_weights,
    tensorflow_to_onnx,
)
from ..report import (
    FailedStage,
    RunRecord,
    SkippedStage,
    StageRecord,
    human_bytes,
    write_metrics,
    write_reports,
)
from ..runtime import OnnxRunner, load_onnx, to_onnx
from ..task import Task
from ..techniques import Stage, StageResult
from ..training import TrainResult
from ._context import PipelineContext
from ._gate import judge, versus_input
from ._progress import Reporter, StageLog
from ._recipe import Recipe, StageSpec
from ._reference import tree_reference
from ._tasks import build_model, check_onnx_takes, probe_torch, task_for, train_baseline

# Top-level files of a run directory that belong to one run: a rerun clears them first, so a
# rerun stopped part-way never shows one run's model beside another run's figures.
RUN_ARTIFACTS = (
    "model.onnx",
    "model.onnx.data",
    "model.safetensors",
    "metrics.json",
    "report.html",
    "report.md",
)


@dataclass
class RunResult:
    """What :func:`run` returns.

    Attributes:
        run_dir: the run directory.
        record: every stage's measurement and decision (what metrics.json holds).
        metrics: the metrics.json content.
        model: the final accepted model.
    """

    run_dir: Path
    record: RunRecord
    metrics: dict[str, Any]
    model: Model


def build_task(recipe: Recipe) -> Task:
    """Load the data and build the task a recipe describes.

    For a fidelity metric (agreement, cosine), the targets are the outputs of the reference model
    (the recipe's ONNX or Keras model) on each split. A TensorFlow SavedModel is converted to ONNX
    first (``leanml[tensorflow]``).
    """
    t = recipe.task
    data = load_data(
        t.data,
        target=t.target,
        val=t.splits.val,
        test=t.splits.test,
        seed=recipe.seed,
        base_dir=recipe.base_dir,
        one_hot=t.one_hot,
    )
    model = t.model
    if model == "auto":
        model = "cnn" if data.kind == "image" else "mlp"
    reference = None
    if is_tensorflow_path(_resolve(recipe, model)):
        model = str(tensorflow_to_onnx(_resolve(recipe, model)))
    if model.endswith(".onnx"):
        model = str(_resolve(recipe, model))
        load_onnx(model)
    elif is_keras_path(model):
        model = str(_resolve(recipe, model))
        if not data.labelled or t.metric in ("agreement", "cosine"):
            reference = _keras_baseline(recipe, model, data)
    elif not data.labelled and t.metric not in ("agreement", "cosine"):
        raise InvalidInputError(
            f"task.data {t.data!r} has no labels; use task.metric agreement or cosine to measure "
            "fidelity to the original model, or give labels"
        )
    return task_for(
        data,
        model=reference,
        spec=model,
        metric=t.metric,
        model_args=t.model_args,
        base_dir=recipe.base_dir,
        name=recipe.name,
    )


def _keras_baseline(recipe: Recipe, path: str | Path, data: Dataset) -> Model:
    """A Keras file as a trained PyTorch module that takes the data (Keras' layout, channels-last);
    a Lambda layer's code runs only with ``--trust-pickle``."""
    net = load_keras(_resolve(recipe, str(path)), trust=recipe.trust_pickle)
    probe_torch(net, data)
    return Model(torch=net, factory=str(path))


def _resolve(recipe: Recipe, p: str) -> Path:
    path = Path(p).expanduser()
    return path if path.is_absolute() else recipe.base_dir / path


def prepare_baseline(recipe: Recipe, task: Task) -> tuple[Model, bool]:
    """Build or load the baseline model and check it takes the data, writing nothing, so a bad
    model fails before the run directory exists. Returns the model and whether it still needs
    training."""
    kind = task.model_kind
    if kind == "onnx":
        check_onnx_takes(OnnxRunner(task.model), task.data.train.x)
        return Model(onnx=Path(task.model), factory=task.model), False
    if kind == "pickle":
        seed_everything(recipe.seed)
        net = load_pickled_module(_resolve(recipe, task.model), trust=recipe.trust_pickle)
        probe_torch(net, task.data)
        return Model(torch=net, factory=task.model), False
    if kind == "keras":
        return _keras_baseline(recipe, task.model, task.data), False
    model = build_model(task, seed=recipe.seed)
    if model.torch is not None and recipe.task.weights:
        load_weights(model.torch, _resolve(recipe, recipe.task.weights))
        model.torch.eval()
        return model, False
    return model, True


def _figures(m: Measurement, task: Task) -> str:
    """A measurement in one line for the run's log: its test metric, batch-1 latency and size."""
    latency = f", {m.p50(1):.3f} ms at batch 1" if 1 in m.latency else ""
    return f"test {task.metric.name} {m.metric:.4f}{latency}, {human_bytes(m.size_bytes)}"


class Pipeline:
    """Runs a recipe: baseline, stages, reports. Use :func:`run` unless you need the pieces."""

    def __init__(
        self, recipe: Recipe, *, output: str | Path | None = None, reporter: Reporter | None = None
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(output) if output else recipe.run_dir
        self.reporter = reporter or Reporter()
        self.stages: list[tuple[StageSpec, Stage[Any]]] = [(s, s.build()) for s in recipe.stages]

    def baseline_model(self, task: Task) -> tuple[Model, TrainResult | None]:
        """The baseline, trained unless it came trained."""
        model, needs_training = prepare_baseline(self.recipe, task)
        return model, self.train(model, task, self.reporter) if needs_training else None

    def train(self, model: Model, task: Task, log: Reporter) -> TrainResult | None:
        """Train (or fit) the baseline in place with the recipe's settings."""
        if model.sklearn is not None:
            log.log(f"fitting {type(model.sklearn).__name__}")
            return train_baseline(model, task, self.recipe.train, seed=self.recipe.seed)
        log.train_start("baseline", self.recipe.train.epochs)
        try:
            return train_baseline(
                model,
                task,
                self.recipe.train,
                seed=self.recipe.seed,
                callbacks=[log.epoch],
                progress=log.train_info,
                # stages (or the plan search of stages: auto) judge their candidates on val:
                # train.refit: auto refits only a baseline that is delivered as trained
                val_reused=self.recipe.planned or any(spec.enabled for spec, _ in self.stages),
            )
        finally:
            log.train_end()

    # -- checks, before anything is written ------------------------------------------------------

    def check(self, task: Task) -> tuple[Model, bool]:
        """Every check that needs no training: each stage's settings against the task, the recipe
        and the built, untrained baseline (while its layers are still the baseline's)."""
        model, needs_training = prepare_baseline(self.recipe, task)
        self.check_stages(task, model)
        return model, needs_training

    def check_stages(self, task: Task, model: Model) -> None:
        """Each enabled stage's settings against the task, the recipe and the baseline ``model``."""
        dumped = self.recipe.dump()
        enabled = [(i, spec, stage) for i, (spec, stage) in enumerate(self.stages) if spec.enabled]
        for index, spec, stage in enabled:
            if task.model_kind == "sklearn":  # stays scikit-learn through every stage
                stage.check_form(Model(sklearn=task.model))
            stage.check(task)
            stage.check_recipe(dumped, index)
        for _, _, stage in enabled:
            if model.form in stage.forms:
                stage.check_model(model, task)
            if not stage.keeps_layers:
                break

    def start(self) -> None:
        """A fresh run directory, or an old one cleared of the previous run's results and of
        temporary files a killed process left."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_ARTIFACTS:
            (self.run_dir / name).unlink(missing_ok=True)
        for tmp in self.run_dir.rglob(".*.tmp"):
            if tmp.is_file():
                tmp.unlink()

    # -- measuring ------------------------------------------------------------------------------

    def _artifact(self, model: Model, task: Task, stage_dir: Path) -> Path:
        path = stage_dir / "model.onnx"
        if model.form == "onnx" and model.onnx is not None:
            src = Path(model.onnx).resolve()
            if src.parent == stage_dir.resolve() and src != path.resolve():
                src.replace(path)  # the stage wrote its result beside: one copy, named model.onnx
                model.onnx = path
            elif src != path.resolve():
                copy_onnx(model.onnx, path)
        else:
            to_onnx(model, task.data.val, path)
        if model.torch is not None and "safetensors" in self.recipe.export.formats:
            save_safetensors(model.torch, stage_dir / "model.safetensors")
        return path

    def _measure(
        self, path: Path, model: Model, task: Task, log: Reporter
    ) -> tuple[Measurement, float]:
        with log.progress("measuring") as step:
            m = measure(
                path,
                task.data.test,
                task.metric,
                self.recipe.measure,
                torch_model=model.torch,
                progress=step.update,
            )
            step.update("val metric")
            return m, PipelineContext.val_metric(path, task, self.recipe.measure)

    def _override_later_stages(self, overrides: dict[int, dict[str, Any]]) -> None:
        """Rebuild later stages with settings an accepted stage chose (e.g. tuned prune.amount)."""
        for index, updates in overrides.items():
            spec, _ = self.stages[index]
            config = type(spec.config).model_validate({**spec.config.model_dump(), **updates})
            spec = spec.model_copy(update={"config": config})
            self.stages[index] = (spec, spec.build())

    # -- the run --------------------------------------------------------------------------------

    def run(
        self,
        *,
        task: Task | None = None,
        baseline: tuple[Model, TrainResult | None] | None = None,
        optimize: dict[str, Any] | None = None,
    ) -> RunResult:
        """Run the recipe. ``task`` and a trained ``baseline`` (with its training record) may be
        given when the caller built them (``leanml optimize`` runs its plan this way); ``optimize``
        is the search's record for metrics.json and the report."""
        recipe = self.recipe
        task = task or build_task(recipe)
        if baseline is None:
            model, needs_training = self.check(task)
            trained = None
        else:
            self.check_stages(task, baseline[0])
            model, trained = baseline
            needs_training = False
        self.start()
        atomic_write_text(
            self.run_dir / "recipe.yaml", yaml.safe_dump(recipe.dump(), sort_keys=False)
        )
        env = environment(recipe.measure.threads)
        atomic_write_text(self.run_dir / "environment.json", json.dumps(env, indent=2) + "\n")
        record = self._new_record(task, env)
        record.optimize = optimize
        first = self._baseline(model, needs_training, task, trained)
        record.stages.append(first)
        if recipe.report.tree_reference:
            record.reference = tree_reference(
                task, model, first.measurement, recipe.measure, seed=recipe.seed, log=self.reporter
            )
        write_metrics(record, self.run_dir)
        self.current, self.current_record = model, first
        self.train_config = recipe.train
        for index, (spec, stage) in enumerate(self.stages):
            if not spec.enabled:
                self.reporter.log(f"[dim]{spec.name}: disabled, skipped[/]")
                continue
            self._run_stage(index, spec, stage, task, record)
            write_metrics(record, self.run_dir)
        self._finish(record)
        return RunResult(self.run_dir, record, record.as_dict(), self.current)

    def _new_record(self, task: Task, env: dict[str, Any]) -> RunRecord:
        recipe = self.recipe
        return RunRecord(
            leanml_version=__version__,
            task={
                "name": recipe.name,
                "metric": task.metric.name,
                "higher_is_better": task.metric.higher_is_better,
                "data": recipe.task.data,
                "model": Path(task.model).name
                if task.model_kind in ("onnx", "keras")
                else task.model,
                "model_args": task.model_args,
                "splits": {
                    "train": len(task.data.train),
                    "val": len(task.data.val),
                    "test": len(task.data.test),
                },
            },
            environment=env,
            stages=[],
            final="baseline",
            constraints=recipe.constraints.model_dump(),
            higher_is_better=task.metric.higher_is_better,
            recipe=recipe.dump(),
        )

    def _baseline(
        self, model: Model, needs_training: bool, task: Task, trained: TrainResult | None = None
    ) -> StageRecord:
        t0 = time.perf_counter()
        stage_dir = self.run_dir / "stages" / "00-baseline"
        log = StageLog(self.reporter, stage_dir / "log.txt")
        log.log(f"[bold]baseline[/]: {task.model} on {task.data.name}")
        train_result = self.train(model, task, log) if needs_training else trained
        path = self._artifact(model, task, stage_dir)
        m, val = self._measure(path, model, task, log)
        self.baseline_val = val
        log.log(f"  measured: {_figures(m, task)}")
        return StageRecord(
            name="baseline",
            kind="baseline",
            measurement=m,
            metric_delta=0.0,
            artifact=str(path.relative_to(self.run_dir)),
            train_result=train_result,
            val_metric=val,
            duration_s=time.perf_counter() - t0,
        )

    def _run_stage(
        self, index: int, spec: StageSpec, stage: Stage[Any], task: Task, record: RunRecord
    ) -> None:
        """Apply one stage to the current model, measure it, and keep it or roll it back."""
        stage_dir = self.run_dir / "stages" / f"{index + 1:02d}-{spec.name}"
        log = StageLog(self.reporter, stage_dir / "log.txt")
        log.log(f"[bold]{spec.name}[/] ({spec.kind})")
        before = self.current_record
        ctx = PipelineContext.for_stage(
            task=task,
            recipe=self.recipe,
            stage_index=index,
            train_config=self.train_config,
            work_dir=stage_dir,
            baseline_val_metric=self.baseline_val,
            reporter=log,
        )
        t0 = time.perf_counter()
        try:
            stage.check_form(self.current)
        except StageNotApplicable as e:
            # the stage cannot work on this kind of model (prune on a Keras module): say so, go on
            record.skipped.append(SkippedStage(spec.name, spec.kind, str(e)))
            log.log(f"[yellow]{spec.name} skipped[/]: {e}; keeping {before.name}")
            return
        try:
            result: StageResult = stage.apply(self.current.clone(), ctx)
            path = self._artifact(result.model, task, stage_dir)
            m, val = self._measure(path, result.model, task, log)
        except InvalidInputError as e:
            # bad input found only now (e.g. a layer name): stop with one line, but keep the best
            # model so far as the run's result
            record.failed.append(FailedStage(spec.name, spec.kind, f"bad input: {e}"))
            self._finish(record)
            raise
        except Exception as e:  # noqa: BLE001 - a stage that breaks must not lose the run
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            message = f"{type(e).__name__}: {first}"
            atomic_write_text(stage_dir / "error.txt", traceback.format_exc())
            record.failed.append(FailedStage(spec.name, spec.kind, message))
            log.log(f"[red]{spec.name} failed[/]: {message}; keeping {before.name}")
            return
        verdict = judge(
            m,
            baseline=record.stages[0].measurement,
            before=before,
            before_path=self.run_dir / before.artifact,
            path=path,
            metric=task.metric,
            constraints=self.recipe.constraints,
            samples=task.data.test.x,
            measure_config=self.recipe.measure,
            name=spec.name,
            reporter=log,
        )
        rec = StageRecord(
            name=spec.name,
            kind=spec.kind,
            measurement=m,
            metric_delta=m.metric - record.stages[0].measurement.metric,
            artifact=str(path.relative_to(self.run_dir)),
            accepted=verdict.accepted,
            reason=verdict.reason,
            notes=[*result.notes, versus_input(m, before), *filter(None, [verdict.note])],
            details=result.details,
            plots=result.plots,
            train_result=result.train_result,
            val_metric=val,
            duration_s=time.perf_counter() - t0,
        )
        record.stages.append(rec)
        for note in rec.notes:
            log.write(f"note: {note}")
        if not verdict.accepted:
            log.log(f"  [yellow]rolled back[/]: {verdict.reason}")
            return
        self.current, self.current_record = result.model, rec
        record.final = spec.name
        if result.train_config is not None:
            self.train_config = result.train_config
        self._override_later_stages(result.stage_overrides)
        log.log(f"  accepted: {_figures(m, task)} ({signed(rec.metric_delta)} vs the baseline)")

    def _finish(self, record: RunRecord) -> None:
        """The final accepted model and its weights at the top of the run directory, and the reports."""
        final = self.run_dir / self.current_record.artifact
        copy_onnx(final, self.run_dir / "model.onnx")
        weights = final.parent / "model.safetensors"
        if self.current.torch is not None and weights.exists():
            shutil.copyfile(weights, self.run_dir / ".model.safetensors.tmp")
            (self.run_dir / ".model.safetensors.tmp").replace(self.run_dir / "model.safetensors")
        write_reports(record, self.run_dir)
