"""Running only a recipe's tune stages (``leanml tune RECIPE --workers N``): worker processes (see
:func:`leanml.search.run_workers`) that share each study, die with their parent, and leave no trial
RUNNING when stopped."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ..models import Model, build_sklearn
from ..search import Worker, count_finished, redact, run_workers, split_budget
from ..task import Task
from ..techniques.tune import TuneStage
from ._context import PipelineContext
from ._pipeline import Pipeline, build_task
from ._progress import Reporter, WorkerReporter
from ._recipe import Recipe, load_recipe


@dataclass
class TuneSummary:
    """What ``leanml tune`` did to one tune stage's study.

    Attributes:
        stage: the stage's name; study_name, storage (password hidden): where the study lives.
        counts: trials by state (COMPLETE, PRUNED, FAIL, RUNNING); trials that found the budget
            already claimed and never ran are left out.
        best: for each best trial (one, or the Pareto front): number, values and params.
        ran: trials finished during this call that spend the budget (over all its workers, and any
            other process sharing the study meanwhile).
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
    return PipelineContext.for_stage(
        task=task,
        recipe=recipe,
        stage_index=index,
        work_dir=run_dir / "stages" / f"{index + 1:02d}-{name}",
        baseline_val_metric=math.nan,  # only the stage's final choice uses it; workers only search
        reporter=reporter,
    )


def _tune_stage(pipeline: Pipeline, index: int) -> tuple[str, TuneStage]:
    spec, stage = pipeline.stages[index]
    assert isinstance(stage, TuneStage)
    return spec.name, stage


def _start_model(pipeline: Pipeline, stage: TuneStage, task: Task) -> Model:
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


def _study_in_worker(
    recipe: Recipe, run_dir: str, index: int, n_trials: int | None, w: Worker
) -> None:
    """A worker process's job: rebuild the task and run ``n_trials`` of stage ``index``'s study."""
    reporter = WorkerReporter(w) if w.verbose else Reporter()
    pipeline = Pipeline(recipe, output=run_dir, reporter=reporter)
    task = build_task(recipe)
    name, stage = _tune_stage(pipeline, index)
    ctx = _context(recipe, task, Path(run_dir), index, name, reporter)
    start = _start_model(pipeline, stage, task)
    stage.run_study(start, ctx, n_trials=n_trials, worker=w.index, interrupts=w.interrupts)


def tune_recipe(
    recipe: str | Path | dict[str, Any] | Recipe,
    *,
    workers: int = 1,
    output: str | Path | None = None,
    reporter: Reporter | None = None,
) -> list[TuneSummary]:
    """Run only the tune stages of a recipe: each study's remaining trials, split over ``workers`` processes.

    Trials start from the recipe's model (earlier non-tune stages are not applied). With a shared
    ``storage`` (``postgresql://...``), run this on many machines at once: each trial claims its
    place in the study's budget in the storage, so all of them together run the budget once;
    ``leanml run`` later continues the same study and keeps its best trial.

    Raises:
        InvalidInputError: the recipe has no enabled tune stage, or a tune stage's input is bad.
        LeanmlError: a worker process failed.
        KeyboardInterrupt: on Ctrl-C, after the running trials were marked failed.
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
        name, stage = _tune_stage(pipeline, i)
        ctx = _context(r, task, run_dir, i, name, reporter)
        start_model = _start_model(pipeline, stage, task)
        stage.check_run(start_model, ctx)
        study = stage.open_study(ctx, shared=True)
        todo = stage.remaining(study)
        before = count_finished(study)
        reporter.log(
            f"[bold]{name}[/]: study {study.study_name!r}, {before} finished, {todo if todo is not None else 'until timeout'} to run on {workers} worker(s)"
        )
        if workers == 1:
            stage.run_study(start_model, ctx, n_trials=todo, study=study)
        else:
            jobs = [
                functools.partial(_study_in_worker, r, str(run_dir), i, share)
                for share in split_budget(todo, workers)
                if share != 0
            ]
            run_workers(jobs, what="tune", verbose=type(reporter) is not Reporter)
        summaries.append(_summary(name, stage, ctx, before))
    return summaries


def _summary(name: str, stage: TuneStage, ctx: PipelineContext, before: int) -> TuneSummary:
    study = stage.open_study(ctx, shared=True)
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        if "skipped" not in t.user_attrs:
            counts[t.state.name] = counts.get(t.state.name, 0) + 1
    try:
        best = [
            {
                "number": t.number,
                "values": dict(zip(study.metric_names or stage.metric_names(ctx), t.values)),
                "params": dict(t.params),
            }
            for t in study.best_trials
        ]
    except ValueError:  # no complete trial
        best = []
    return TuneSummary(
        name,
        study.study_name,
        redact(stage.storage_url(ctx)),
        counts,
        best,
        count_finished(study) - before,
    )
