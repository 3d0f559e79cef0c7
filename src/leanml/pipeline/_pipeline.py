"""The pipeline: baseline, then the recipe's stages, each measured, accepted or rolled back."""

from __future__ import annotations

import json
import shutil
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .._version import __version__
from .._utils import atomic_write_text, environment, seed_everything
from ..data import Dataset, Split, load_data
from ..errors import InvalidInputError
from ..export import copy_onnx, save_safetensors
from ..measure import Measurement, measure, paired_latency_ratio
from ..metrics import FIDELITY_METRICS
from ..models import Model, build_sklearn
from ..report import FailedStage, RunRecord, StageRecord, write_metrics, write_reports
from ..runtime import OnnxRunner, load_onnx, to_onnx
from ..task import Task, make_task
from ..techniques import Stage, StageResult
from ..training import TrainResult, fit, forward, to_tensor
from ._context import PipelineContext
from ._progress import Reporter, StageLog
from ._recipe import Recipe, load_recipe


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


def build_task(recipe: Recipe, *, reference: Path | None = None) -> Task:
    """Load the data and build the task a recipe describes.

    For a fidelity metric (agreement, cosine) on data without labels, the targets are the outputs of
    the reference model (the recipe's ONNX model) on each split.
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
    if model.endswith(".onnx"):
        path = Path(model).expanduser()
        model = str(path if path.is_absolute() else recipe.base_dir / path)
    if t.metric in FIDELITY_METRICS:
        data = _with_reference_targets(data, model, t.metric)
    elif not data.labelled:
        raise InvalidInputError(
            f"task.data {t.data!r} has no labels; use task.metric agreement or cosine to measure "
            "fidelity to the original model, or give labels"
        )
    return make_task(
        data,
        metric=t.metric,
        model=model,
        model_args=t.model_args,
        base_dir=recipe.base_dir,
        name=recipe.name,
    )


def _with_reference_targets(data: Dataset, model: str, metric: str) -> Dataset:
    if not model.endswith(".onnx"):
        if data.labelled and data.train.y is not None and data.train.y.ndim > 1:
            return data  # targets are already reference outputs
        raise InvalidInputError(
            f"task.metric {metric!r} measures fidelity to a reference model: give task.model as "
            "PATH.onnx, or data whose y holds the reference outputs"
        )
    load_onnx(model)
    runner = OnnxRunner(model)
    _check_onnx_takes(runner, data)

    def ref(s: Split) -> Split:
        return Split(s.x, runner.predict(s.x).astype(np.float32))

    data.train, data.val, data.test = ref(data.train), ref(data.val), ref(data.test)
    data.n_classes = None
    return data


def _check_onnx_takes(runner: OnnxRunner, data: Dataset) -> None:
    """Fail with one line when the data's samples do not fit the ONNX model's declared inputs."""
    feed = runner.feed(data.train.head(1).x)  # raises when names do not match
    for inp in runner.inputs:
        arr = feed[inp.name]
        declared = inp.shape
        if len(declared) != arr.ndim or any(
            isinstance(d, int) and d != s for d, s in zip(declared[1:], arr.shape[1:])
        ):
            raise InvalidInputError(
                f"the model's input {inp.name!r} is shaped {declared}; the data's samples are shaped "
                f"{list(arr.shape)} (batch first); give data of the model's input shape"
            )


def _probe_torch(net, data: Dataset) -> None:
    import torch

    try:
        with torch.inference_mode():
            forward(net.eval(), to_tensor(data.train.head(2).x))
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the cause is the data's shape
        raise InvalidInputError(
            f"the model cannot take the data: samples shaped {list(data.input_shape)} raised "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None


def _load_weights(net, path: Path) -> None:
    """Load a state dict from safetensors, or from a .pt file with ``weights_only=True`` (no code runs)."""
    import torch

    if not path.is_file():
        raise InvalidInputError(f"task.weights file {str(path)!r} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - unreadable or unsafe file: one clear line
        raise InvalidInputError(
            f"task.weights {str(path)!r} is not a safetensors file or a plain state dict ({type(e).__name__}); "
            "save weights with safetensors.torch.save_model or torch.save(model.state_dict())"
        ) from None
    if not isinstance(state, dict):
        raise InvalidInputError(
            f"task.weights {str(path)!r} holds {type(state).__name__}, not a state dict"
        )
    try:
        net.load_state_dict(state)
    except RuntimeError as e:
        raise InvalidInputError(
            f"task.weights {str(path)!r} do not fit the model: {str(e).splitlines()[0]}; "
            "check task.model and task.model_args"
        ) from None


def _load_pickled_module(path: Path, *, trust: bool):
    """A whole pickled nn.Module: unpickling runs code from the file, so only with --trust-pickle."""
    import torch
    from torch import nn

    if not path.is_file():
        raise InvalidInputError(f"model file {str(path)!r} does not exist")
    if not trust:
        raise InvalidInputError(
            f"task.model {str(path)!r} is a pickled PyTorch file; loading it runs code from the file. "
            "Pass --trust-pickle if you trust it, or give weights as task.weights (safetensors) or an ONNX file"
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001 - not a PyTorch file: one clear line
        raise InvalidInputError(
            f"model file {str(path)!r} is not a PyTorch file ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(obj, nn.Module):
        raise InvalidInputError(
            f"model file {str(path)!r} holds {type(obj).__name__}, not a torch.nn.Module; "
            "for a state dict use task.weights with task.model naming the architecture"
        )
    return obj.eval()


class Pipeline:
    """Runs a recipe: baseline, stages, reports. Use :func:`run` unless you need the pieces."""

    def __init__(
        self, recipe: Recipe, *, output: str | Path | None = None, reporter: Reporter | None = None
    ) -> None:
        self.recipe = recipe
        self.run_dir = Path(output) if output else recipe.run_dir
        self.outer_reporter = reporter or Reporter()
        self.reporter = self.outer_reporter  # a StageLog around it while a stage runs
        self.stages: list[tuple[Any, Stage]] = [(s, s.build()) for s in recipe.stages]

    # -- baseline -------------------------------------------------------------------------------

    def _prepare_baseline(self, task: Task) -> tuple[Model, bool]:
        """Build or load the baseline model and check it takes the data, writing nothing, so a bad
        model fails before the run directory exists. Returns the model and whether it still needs
        training."""
        kind = task.model_kind
        if kind == "onnx":
            load_onnx(task.model)
            _check_onnx_takes(OnnxRunner(task.model), task.data)
            return Model(onnx=Path(task.model), factory=task.model), False
        if kind == "sklearn":
            est = build_sklearn(task.model, task.model_args, seed=self.recipe.seed)
            if isinstance(task.data.train.x, dict) or task.data.train.y is None:
                raise InvalidInputError("scikit-learn models need tabular data with labels")
            return Model(sklearn=est, model_args=dict(task.model_args), factory=task.model), True
        seed_everything(self.recipe.seed)
        if task.model.endswith((".pt", ".pth")):
            net = _load_pickled_module(self._path(task.model), trust=self.recipe.trust_pickle)
            _probe_torch(net, task.data)
            return Model(torch=net, factory=task.model), False
        net = task.build_torch_model()
        _probe_torch(net, task.data)
        model = Model(torch=net, model_args=dict(task.model_args), factory=task.model)
        if self.recipe.task.weights:
            _load_weights(net, self._path(self.recipe.task.weights))
            net.eval()
            return model, False
        return model, True

    def baseline_model(self, task: Task) -> tuple[Model, TrainResult | None]:
        """The baseline, trained unless it came trained."""
        model, needs_training = self._prepare_baseline(task)
        return model, self._train_baseline(model, task) if needs_training else None

    def _train_baseline(self, model: Model, task: Task) -> TrainResult | None:
        if model.sklearn is not None:
            x = task.data.train.x
            assert not isinstance(x, dict)
            self.reporter.log(f"fitting {type(model.sklearn).__name__}")
            model.sklearn.fit(x.reshape(len(x), -1), task.data.train.y)
            return None
        assert model.torch is not None
        self.reporter.train_start("baseline", self.recipe.train.epochs)
        try:
            return fit(
                model.torch,
                task.data.train,
                task.data.val,
                task.metric,
                self.recipe.train,
                seed=self.recipe.seed,
                callbacks=[self.reporter.epoch],
            )
        finally:
            self.reporter.train_end()

    def _path(self, p: str) -> Path:
        path = Path(p).expanduser()
        return path if path.is_absolute() else self.recipe.base_dir / path

    # -- measuring ------------------------------------------------------------------------------

    def _artifact(self, model: Model, task: Task, stage_dir: Path) -> Path:
        path = stage_dir / "model.onnx"
        if model.torch is None and model.sklearn is None and model.onnx is not None:
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

    def _measure(self, path: Path, model: Model, task: Task) -> tuple[Measurement, float]:
        m = measure(
            path,
            task.data.test,
            task.metric,
            self.recipe.measure,
            torch_model=model.torch,
            progress=self.reporter.measure,
        )
        outputs = OnnxRunner(path, threads=self.recipe.measure.threads).predict(task.data.val.x)
        assert task.data.val.y is not None
        return m, task.metric(outputs, task.data.val.y)

    def _override_later_stages(self, overrides: dict[int, dict[str, Any]]) -> None:
        """Rebuild later stages with settings an accepted stage chose (e.g. tuned prune.amount)."""
        for index, updates in overrides.items():
            spec, _ = self.stages[index]
            config = type(spec.config).model_validate({**spec.config.model_dump(), **updates})
            spec = spec.model_copy(update={"config": config})
            self.stages[index] = (spec, spec.build())

    # -- the run --------------------------------------------------------------------------------

    def run(self) -> RunResult:
        recipe = self.recipe
        task = build_task(recipe)
        dumped = recipe.dump()
        for index, (spec, stage) in enumerate(self.stages):
            if spec.enabled:
                if task.model_kind == "sklearn":  # stays scikit-learn through every stage
                    stage.check_form(Model(sklearn=task.model))
                stage.check(task)
                stage.check_recipe(dumped, index)
        # every check that needs no training runs before anything is written
        current, needs_training = self._prepare_baseline(task)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run_dir / "recipe.yaml", yaml.safe_dump(dumped, sort_keys=False))
        env = environment(recipe.measure.threads)
        atomic_write_text(self.run_dir / "environment.json", json.dumps(env, indent=2) + "\n")
        record = RunRecord(
            leanml_version=__version__,
            task={
                "name": recipe.name,
                "metric": task.metric.name,
                "higher_is_better": task.metric.higher_is_better,
                "data": recipe.task.data,
                "model": task.model if task.model_kind != "onnx" else Path(task.model).name,
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

        t0 = time.perf_counter()
        base_dir = self.run_dir / "stages" / "00-baseline"
        self.reporter = StageLog(self.outer_reporter, base_dir / "log.txt")
        self.reporter.log(f"[bold]baseline[/]: {task.model} on {task.data.name}")
        train_result = self._train_baseline(current, task) if needs_training else None
        path = self._artifact(current, task, base_dir)
        base_m, base_val = self._measure(path, current, task)
        baseline = StageRecord(
            name="baseline",
            kind="baseline",
            measurement=base_m,
            metric_delta=0.0,
            artifact=str(path.relative_to(self.run_dir)),
            train_result=train_result,
            val_metric=base_val,
            duration_s=time.perf_counter() - t0,
        )
        record.stages.append(baseline)
        write_metrics(record, self.run_dir)
        current_record = baseline
        train_config = recipe.train

        for index, (spec, stage) in enumerate(self.stages):
            self.reporter = self.outer_reporter
            if not spec.enabled:
                self.reporter.log(f"[dim]{spec.name}: disabled, skipped[/]")
                continue
            stage_dir = self.run_dir / "stages" / f"{index + 1:02d}-{spec.name}"
            stage_dir.mkdir(parents=True, exist_ok=True)
            self.reporter = StageLog(self.outer_reporter, stage_dir / "log.txt")
            self.reporter.log(f"[bold]{spec.name}[/] ({spec.kind})")
            ctx = PipelineContext(
                task=task,
                train_config=train_config,
                measure_config=recipe.measure,
                seed=recipe.seed,
                work_dir=stage_dir,
                max_metric_drop=recipe.constraints.max_metric_drop,
                baseline_val_metric=base_val,
                recipe=recipe.dump(),
                stage_index=index,
                reporter=self.reporter,
            )
            t0 = time.perf_counter()
            try:
                stage.check_form(current)
                result: StageResult = stage.apply(current.clone(), ctx)
                path = self._artifact(result.model, task, stage_dir)
                m, val = self._measure(path, result.model, task)
            except InvalidInputError as e:
                # bad input found only now (e.g. a layer name): stop with one line, but keep the
                # best model so far as the run's result
                record.failed.append(FailedStage(spec.name, spec.kind, f"bad input: {e}"))
                self.reporter = self.outer_reporter
                self._finish(record, current, current_record)
                raise
            except Exception as e:  # noqa: BLE001 - a stage that breaks must not lose the run
                message = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                atomic_write_text(stage_dir / "error.txt", traceback.format_exc())
                record.failed.append(FailedStage(spec.name, spec.kind, message))
                self.reporter.log(
                    f"[red]{spec.name} failed[/]: {message}; keeping {current_record.name}"
                )
                write_metrics(record, self.run_dir)
                continue
            reason = self._verdict(task, base_m.metric, m.metric)
            if reason is None:
                reason = self._latency_verdict(task, current_record, m, path)
            accepted = reason is None
            if reason is not None:
                reason += f"; kept {current_record.name}"
            rec = StageRecord(
                name=spec.name,
                kind=spec.kind,
                measurement=m,
                metric_delta=m.metric - base_m.metric,
                artifact=str(path.relative_to(self.run_dir)),
                accepted=accepted,
                reason=reason,
                notes=[*result.notes, versus_input(m, current_record)],
                details=result.details,
                plots=result.plots,
                train_result=result.train_result,
                val_metric=val,
                duration_s=time.perf_counter() - t0,
            )
            record.stages.append(rec)
            for note in rec.notes:
                self.reporter.write(f"note: {note}")
            if accepted:
                current, current_record = result.model, rec
                record.final = spec.name
                if result.train_config is not None:
                    train_config = result.train_config
                self._override_later_stages(result.stage_overrides)
                self.reporter.log(
                    f"  accepted: {task.metric.name} {m.metric:.4f} ({rec.metric_delta:+.4f})"
                )
            else:
                self.reporter.log(f"  [yellow]rolled back[/]: {reason}")
            write_metrics(record, self.run_dir)
        self.reporter = self.outer_reporter
        self._finish(record, current, current_record)
        return RunResult(self.run_dir, record, record.as_dict(), current)

    def _verdict(self, task: Task, base_test: float, test: float) -> str | None:
        """Why a stage breaks ``max_metric_drop``, or None when it holds. The gate is the test-split
        figure the report shows, so an accepted stage never shows a larger drop than the
        constraint; the choices inside a stage use the validation split only. (Validation splits
        of small datasets are too coarse for a gate: on breast_cancer one sample is 1.2 points.)"""
        limit = self.recipe.constraints.max_metric_drop
        drop = task.metric.drop(base_test, test)
        if drop <= limit + 1e-12:
            return None
        return (
            f"{task.metric.name} dropped {drop:.4f} vs the baseline on the test split, more than "
            f"max_metric_drop {limit}"
        )

    def _latency_verdict(
        self, task: Task, before: StageRecord, m: Measurement, path: Path
    ) -> str | None:
        """With ``constraints.max_latency_ratio``: why the stage is slower than its input, or None.
        A ratio over the limit in the stage's own measurement is re-measured side by side with the
        input (alternating rounds in this process) before it counts: one run's noise never rolls a
        stage back."""
        limit = self.recipe.constraints.max_latency_ratio
        prev = before.measurement
        if limit is None or prev.runtime != m.runtime or m.runtime != "onnxruntime":
            return None
        over = [b for b in m.latency if b in prev.latency and m.p50(b) > limit * prev.p50(b)]
        if not over:
            return None
        self.reporter.log(f"  re-timing against {before.name} side by side")
        paired = paired_latency_ratio(
            self.run_dir / before.artifact, path, task.data.test.x, self.recipe.measure
        )
        slower = {b: r for b, r in paired.items() if r > limit}
        if not slower:
            return None
        shown = ", ".join(f"batch {b} {r:.2f}x" for b, r in sorted(slower.items()))
        return (
            f"its p50 latency is more than max_latency_ratio {limit} times its input's "
            f"({before.name}), measured side by side: {shown}"
        )

    def _finish(self, record: RunRecord, current: Model, current_record: StageRecord) -> None:
        """The final accepted model and its weights at the top of the run directory, and the reports."""
        final_dir = self.run_dir / current_record.artifact
        copy_onnx(final_dir, self.run_dir / "model.onnx")
        final_weights = final_dir.parent / "model.safetensors"
        stale = self.run_dir / "model.safetensors"
        if current.torch is not None and final_weights.exists():
            shutil.copyfile(final_weights, self.run_dir / ".model.safetensors.tmp")
            (self.run_dir / ".model.safetensors.tmp").replace(stale)
        elif stale.exists():  # an earlier run's weights would not match this model.onnx
            stale.unlink()
        write_reports(record, self.run_dir)


def versus_input(m: Measurement, before: StageRecord) -> str:
    """One line comparing a stage's measurement with the model it started from, so a stage that
    made the model slower (or larger) says so next to what it did."""

    def ratio(old: float, new: float, unit: str) -> str:
        if new <= 0 or old <= 0:
            return "n/a"
        r = old / new
        shown = (
            f"{old:.3g} -> {new:.3g} {unit}" if unit == "ms" else f"{old:.1f} -> {new:.1f} {unit}"
        )
        if abs(r - 1) < 0.005:
            return f"{shown} (unchanged)"
        word = "faster" if unit == "ms" else "smaller"
        if r < 1:
            word = "slower" if unit == "ms" else "larger"
            r = 1 / r
        return f"{shown} ({r:.2f}x {word})"

    prev = before.measurement
    if prev.runtime != m.runtime:
        return (
            f"Against its input ({before.name}): latency was measured in {m.runtime} here and in "
            f"{prev.runtime} there, so it does not compare; size "
            f"{ratio(prev.size_bytes / 1024, m.size_bytes / 1024, 'KiB')}."
        )
    parts = [
        f"batch {b} p50 {ratio(prev.latency[b].p50, m.latency[b].p50, 'ms')}"
        for b in sorted(m.latency)
        if b in prev.latency
    ]
    parts.append(f"size {ratio(prev.size_bytes / 1024, m.size_bytes / 1024, 'KiB')}")
    return f"Against its input ({before.name}), measured in this run: " + "; ".join(parts) + "."


def run(
    recipe: str | Path | dict[str, Any] | Recipe,
    *,
    output: str | Path | None = None,
    reporter: Reporter | None = None,
) -> RunResult:
    """Run a recipe: train the baseline, apply each stage, measure every step, write the reports.

    Args:
        recipe: a recipe file, YAML text, a dict, or a :class:`Recipe`.
        output: the run directory (default: the recipe's ``output``, or ``runs/<name>``).
        reporter: receives progress events (the CLI shows rich progress bars).

    Returns:
        the run directory, every stage's record and the final model.

    Raises:
        InvalidInputError: bad input (recipe, data, model); nothing half-written is left.

    Example:
        >>> import leanml
        >>> result = leanml.run({"task": {"data": "digits", "model": "cnn"}, "train": {"epochs": 5}})  # doctest: +SKIP
        >>> result.metrics["stages"][0]["metric"]  # doctest: +SKIP
    """
    return Pipeline(load_recipe(recipe), output=output, reporter=reporter).run()
