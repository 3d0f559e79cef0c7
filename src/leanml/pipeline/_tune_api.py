"""``leanml.tune(...)``, and running only a recipe's tune stages (``leanml tune RECIPE --workers N``)."""

from __future__ import annotations

import math
import multiprocessing
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError, LeanmlError
from ..measure import MeasureConfig
from ..models import Model, build_sklearn
from ..task import Task
from ..training import TrainConfig
from ._context import PipelineContext
from ._pipeline import Pipeline, build_task
from ._progress import Reporter
from ._recipe import Recipe, load_recipe
from ._single import SingleStageResult, apply_stage


def tune(
    model: Model,
    task: Task,
    *,
    space: dict[str, Any],
    sampler: str = "tpe",
    trials: int | None = None,
    timeout: float | None = None,
    objectives: Sequence[str] = ("metric",),
    pruner: str = "median",
    storage: str | None = None,
    study_name: str | None = None,
    train: dict[str, Any] | None = None,
    train_config: TrainConfig | dict[str, Any] | None = None,
    measure_config: MeasureConfig | dict[str, Any] | None = None,
    max_metric_drop: float = 0.01,
    seed: int = 0,
    work_dir: str | Path | None = None,
    reporter: Reporter | None = None,
) -> SingleStageResult:
    """Search training settings and model arguments of ``model`` with an Optuna study.

    Each trial rebuilds the model from ``task`` with the trial's ``task.model_args.*``, trains it
    with the trial's ``train.*`` settings and scores its ONNX export in ONNX Runtime on the
    validation split. The study is stored in ``storage`` (default: ``study.db`` in ``work_dir``), so
    calling again with the same arguments continues it.

    Args:
        model: the starting model (its factory and arguments are what trials change).
        task: data, metric, model factory (``leanml.pipeline.build_task``).
        space: recipe path -> ``{low, high, log, step}`` or a list of choices, e.g.
            ``{"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}, "task.model_args.width": [8, 16]}``.
        sampler: ``grid``, ``random``, ``tpe``, ``gp`` or ``nsga2``.
        trials, timeout: the study's trial budget and this call's time limit (seconds).
        objectives: ``["metric"]``, ``["metric", "latency"]`` or ``["metric", "size"]``.
        pruner: ``none``, ``median`` or ``hyperband`` (single objective).
        storage: an Optuna RDB URL shared by many processes (``postgresql://...``).
        train: overrides of ``train_config`` for every trial (e.g. ``{"epochs": 5}``).
        train_config, measure_config: as a recipe's ``train:`` and ``measure:``.
        max_metric_drop: the chosen Pareto point's largest validation-metric drop vs ``model``.

    Returns:
        the stage result (model of the chosen trial, details with the trial table and Pareto front)
        with the model before and after, measured on the test split.

    Raises:
        InvalidInputError: a bad space, sampler, objective or an unreachable storage.

    Example:
        >>> import leanml  # doctest: +SKIP
        >>> out = leanml.tune(model, task, space={"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, trials=10)
        >>> out.result.details["best_params"]
    """
    config: dict[str, Any] = {
        "space": space,
        "sampler": sampler,
        "objectives": list(objectives),
        "pruner": pruner,
        "train": dict(train or {}),
    }
    for key, value in (
        ("trials", trials),
        ("timeout", timeout),
        ("storage", storage),
        ("study_name", study_name),
    ):
        if value is not None:
            config[key] = value
    return apply_stage(
        "tune",
        model,
        task,
        config,
        train_config=train_config,
        measure_config=measure_config,
        max_metric_drop=max_metric_drop,
        seed=seed,
        work_dir=work_dir,
        reporter=reporter,
    )


@dataclass
class TuneSummary:
    """What ``leanml tune`` did to one tune stage's study.

    Attributes:
        stage: the stage's name; study_name, storage (password hidden): where the study lives.
        counts: trials by state (COMPLETE, PRUNED, FAIL, RUNNING).
        best: for each best trial (one, or the Pareto front): number, values and params.
        ran: trials this call finished (over all its workers).
    """

    stage: str
    study_name: str
    storage: str
    counts: dict[str, int]
    best: list[dict[str, Any]] = field(default_factory=list)
    ran: int = 0


def _context(
    recipe: Recipe, task: Task, run_dir: Path, index: int, name: str, reporter: Reporter
) -> PipelineContext:
    return PipelineContext(
        task=task,
        train_config=recipe.train,
        measure_config=recipe.measure,
        seed=recipe.seed,
        work_dir=run_dir / "stages" / f"{index + 1:02d}-{name}",
        max_metric_drop=recipe.constraints.max_metric_drop,
        baseline_val_metric=math.nan,  # only the stage's final choice uses it; workers only search
        recipe=recipe.dump(),
        stage_index=index,
        reporter=reporter,
    )


def _start_model(pipeline: Pipeline, stage: Any, task: Task) -> Model:
    """What trials start from: an untrained model when they rebuild it, else the trained baseline."""
    if any(t.where in ("train", "model") for t in stage.config.targets.values()):
        if task.model_kind == "sklearn":
            return Model(
                sklearn=build_sklearn(task.model, task.model_args, seed=pipeline.recipe.seed),
                model_args=dict(task.model_args),
                factory=task.model,
            )
        return Model(
            torch=task.build_torch_model(), model_args=dict(task.model_args), factory=task.model
        )
    return pipeline.baseline_model(task)[0]


def _split(total: int | None, workers: int) -> list[int | None]:
    """Split a trial budget so the workers' shares add up to exactly ``total``."""
    if total is None:
        return [None] * workers
    base, extra = divmod(total, workers)
    return [base + (1 if w < extra else 0) for w in range(workers)]


class _WorkerReporter(Reporter):
    def __init__(self, worker: int) -> None:
        self.prefix = f"[worker {worker}]"

    def log(self, message: str) -> None:
        print(f"{self.prefix} {message.strip()}", file=sys.stderr, flush=True)


def _worker(
    recipe: Recipe, run_dir: str, index: int, n_trials: int | None, worker: int, verbose: bool
) -> None:
    """A spawned process: rebuild the task and run ``n_trials`` of stage ``index``'s study."""
    reporter: Reporter = _WorkerReporter(worker) if verbose else Reporter()
    pipeline = Pipeline(recipe, output=run_dir, reporter=reporter)
    task = build_task(recipe)
    spec, stage = pipeline.stages[index]
    ctx = _context(recipe, task, Path(run_dir), index, spec.name, reporter)
    stage.optimize(_start_model(pipeline, stage, task), ctx, n_trials=n_trials, worker=worker)


def tune_recipe(
    recipe: str | Path | dict[str, Any] | Recipe,
    *,
    workers: int = 1,
    output: str | Path | None = None,
    reporter: Reporter | None = None,
) -> list[TuneSummary]:
    """Run only the tune stages of a recipe: each study's remaining trials, split over ``workers`` processes.

    Trials start from the recipe's model (earlier non-tune stages are not applied). With a shared
    ``storage`` (``postgresql://...``), run this on many machines at once: each call takes the
    budget that remains when it starts; ``leanml run`` later continues the same study and keeps
    its best trial.

    Raises:
        InvalidInputError: the recipe has no enabled tune stage, or a tune stage's input is bad.
        LeanmlError: a worker process failed.
    """
    if workers < 1:
        raise InvalidInputError(f"--workers must be >= 1; got {workers}")
    r = load_recipe(recipe)
    run_dir = Path(output) if output else r.run_dir
    reporter = reporter or Reporter()
    pipeline = Pipeline(r, output=run_dir, reporter=reporter)
    indices = [
        i for i, (spec, _) in enumerate(pipeline.stages) if spec.kind == "tune" and spec.enabled
    ]
    if not indices:
        raise InvalidInputError(
            f"recipe {r.name!r} has no enabled tune stage; `leanml tune` runs only tune stages (use `leanml run`)"
        )
    task = build_task(r)
    for i in indices:
        pipeline.stages[i][1].check(task)
    summaries = []
    for i in indices:
        spec, stage = pipeline.stages[i]
        ctx = _context(r, task, run_dir, i, spec.name, reporter)
        start_model = _start_model(pipeline, stage, task)
        stage._check_run(start_model, ctx)
        study = stage.open_study(ctx)
        todo = stage.remaining(study)
        from ..techniques.tune._study import count_finished

        before = count_finished(study)
        reporter.log(
            f"[bold]{spec.name}[/]: study {study.study_name!r}, {before} finished, {todo if todo is not None else 'until timeout'} to run on {workers} worker(s)"
        )
        if workers == 1:
            stage.optimize(start_model, ctx, n_trials=todo, study=study)
        else:
            _run_workers(
                r, run_dir, i, _split(todo, workers), verbose=type(reporter) is not Reporter
            )
        summaries.append(_summary(spec.name, stage, ctx, before))
    return summaries


def _run_workers(
    recipe: Recipe, run_dir: Path, index: int, shares: list[int | None], *, verbose: bool
) -> None:
    mp = multiprocessing.get_context("spawn")
    procs = [
        mp.Process(
            target=_worker,
            args=(recipe, str(run_dir), index, share, w, verbose),
            name=f"leanml-tune-{w}",
        )
        for w, share in enumerate(shares)
        if share != 0
    ]
    for p in procs:
        p.start()
    try:
        for p in procs:
            p.join()
    except KeyboardInterrupt:
        for p in procs:
            p.terminate()
        raise
    bad = [(p.name, p.exitcode) for p in procs if p.exitcode != 0]
    if bad:
        raise LeanmlError(
            f"{len(bad)} of {len(procs)} tune workers failed (exit codes {bad}); finished trials are kept in the study"
        )


def _summary(name: str, stage: Any, ctx: PipelineContext, before: int) -> TuneSummary:
    from ..techniques.tune._study import count_finished, redact

    study = stage.open_study(ctx)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    try:
        best = [
            {"number": t.number, "values": list(t.values), "params": dict(t.params)}
            for t in study.best_trials
        ]
    except ValueError:
        best = []
    return TuneSummary(
        name,
        study.study_name,
        redact(stage.storage_url(ctx)),
        counts,
        best,
        count_finished(study) - before,
    )
