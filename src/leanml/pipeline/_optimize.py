"""``leanml optimize`` and ``stages: auto`` as a run: train the baseline, search plans
(:class:`leanml.search.Search`), then run the winner as an ordinary recipe.

The search measures plans; this module gives it what it cannot know: the plan space (from the
techniques' registry), how a plan's stages are applied (the registered stages, each in a
:class:`PipelineContext`, reusing every stage prefix another trial applied in this process: the
student of a distill stage, a pruned model under several quantize modes), and worker processes that
rebuild the task and baseline from the recipe.

The winner is written as ``plan.yaml`` and run as an ordinary recipe, so every stage is measured on
the test split and gated as in ``leanml run``.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from pathlib import Path
from typing import Any

import yaml

from .._utils import atomic_write_text
from ..export import save_safetensors
from ..models import Model, load_weights
from ..search import (
    OptimizeConfig,
    Search,
    SearchResult,
    TrialRecord,
    Worker,
    best_per_combination,
    pareto,
    plan_key,
    run_workers,
)
from ..task import Task
from ..techniques import get_stage_class, plan_space
from ..training import TrainResult
from ._context import PipelineContext
from ._pipeline import Pipeline, RunResult, build_task, prepare_baseline
from ._progress import Reporter, StageLog, WorkerReporter
from ._recipe import Recipe, load_recipe
from ._tasks import train_baseline

# Stage prefixes whose result a process keeps for later trials (the least recently used go first).
CACHE_SIZE = 24


class _TrialReporter(Reporter):
    """Inside a trial: training and step progress bars go to the terminal, stage messages only to
    the log."""

    def __init__(self, inner: Reporter) -> None:
        self.inner = inner

    def train_start(self, description: str, epochs: int) -> None:
        self.inner.train_start(description, epochs)

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        self.inner.epoch(epoch, logs)

    def train_end(self) -> None:
        self.inner.train_end()

    def step_start(self, description: str, total: int | None) -> None:
        self.inner.step_start(description, total)

    def step_update(self, advance: int, info: str) -> None:
        self.inner.step_update(advance, info)

    def step_end(self) -> None:
        self.inner.step_end()


class PlanApplier:
    """Applies a plan's stages to the baseline, as a run would, without measuring or gating them
    (the search measures the result): the search's ``apply_plan``."""

    def __init__(self, recipe: Recipe, task: Task, baseline: Model, reporter: Reporter) -> None:
        self.recipe = recipe
        self.task = task
        self.baseline = baseline
        self.reporter = reporter
        self.cache: OrderedDict[str, Model | Exception] = OrderedDict()

    def __call__(self, plan: list[dict[str, Any]], work: Path, baseline_val_metric: float) -> Model:
        """The plan's model: each stage prefix's result is reused when another trial applied it.
        ``baseline_val_metric`` is what the stages' own decisions compare with."""
        current = self.baseline
        work.mkdir(parents=True, exist_ok=True)
        ctx = PipelineContext.for_stage(
            task=self.task,
            recipe=self.recipe,
            work_dir=work,
            baseline_val_metric=baseline_val_metric,
            reporter=StageLog(_TrialReporter(self.reporter), work / "log.txt"),
        )
        for i, entry in enumerate(plan):
            key = plan_key(plan[: i + 1])
            cached = self.cache.get(key)
            if isinstance(cached, Exception):
                raise cached
            if cached is not None:
                self.cache.move_to_end(key)
                current = cached
                ctx.log(f"stage {i} ({next(iter(entry))}): reused from an earlier trial")
                continue
            kind, config = next(iter(entry.items()))
            cls = get_stage_class(kind)
            stage = cls(cls.Config.model_validate(config))
            try:
                results = ctx.apply_stages(current, [(i, stage)], work_dir=work)
            except Exception as e:
                self.cache[key] = e
                raise
            current = results[-1].model if results else current
            self.cache[key] = current
            while len(self.cache) > CACHE_SIZE:
                self.cache.popitem(last=False)
        return current


def make_search(
    recipe: Recipe,
    task: Task,
    baseline: Model,
    run_dir: Path,
    config: OptimizeConfig,
    reporter: Reporter,
    worker: int | None = None,
) -> Search:
    """The search over the plans that apply to ``baseline``, applied by a :class:`PlanApplier`."""
    space = plan_space(
        task,
        baseline,
        objective=config.objective,
        allowed=config.techniques,
        epochs=recipe.train.epochs,
    )
    return Search(
        task,
        baseline,
        space,
        PlanApplier(recipe, task, baseline, reporter),
        config=config,
        name=recipe.name,
        seed=recipe.seed,
        constraints=recipe.constraints,
        measure=recipe.measure,
        identity={"train": recipe.train.model_dump(mode="json")},
        run_dir=run_dir,
        log=reporter,
        worker=worker,
    )


def _search_in_worker(
    recipe: Recipe, run_dir: str, config: OptimizeConfig, base: TrialRecord, name: str, w: Worker
) -> None:
    """A worker process's job: rebuild the task and the trained baseline, then search the study."""
    reporter = WorkerReporter(w) if w.verbose else Reporter()
    task = build_task(recipe)
    model, needs_training = prepare_baseline(recipe, task)
    if needs_training and model.torch is not None:
        load_weights(model.torch, Path(run_dir) / "optimize" / "baseline.safetensors")
        model.torch.eval()
    elif needs_training:  # scikit-learn: the same seed fits the same model
        train_baseline(model, task, recipe.train, seed=recipe.seed)
    search = make_search(recipe, task, model, Path(run_dir), config, reporter, worker=w.index)
    study, base = search.prepare(base, name)
    search.search(study, base, interrupts=w.interrupts)


def _spawn(
    recipe: Recipe,
    run_dir: Path,
    config: OptimizeConfig,
    baseline: Model,
    workers: int,
    verbose: bool,
    base: TrialRecord,
    name: str,
) -> None:
    """Worker processes that share the study; they rebuild the baseline from its saved weights."""
    if baseline.torch is not None:
        save_safetensors(baseline.torch, run_dir / "optimize" / "baseline.safetensors")
    job = functools.partial(_search_in_worker, recipe, str(run_dir), config, base, name)
    run_workers([job] * workers, what="optimize", verbose=verbose)


def optimize_recipe(
    recipe: Recipe,
    *,
    output: str | Path | None = None,
    reporter: Reporter | None = None,
    workers: int = 1,
    task: Task | None = None,
    baseline: Model | None = None,
) -> RunResult:
    """Plan a recipe's stages (``stages: auto``), then run the plan as a recipe (see module doc).
    ``task`` and a trained ``baseline`` may be given (a model object from Python, which the
    recipe cannot name); workers then cannot rebuild it, so the search runs in this process."""
    config = recipe.optimize or OptimizeConfig()
    reporter = reporter or Reporter()
    pipeline = Pipeline(recipe.model_copy(update={"stages": []}), output=output, reporter=reporter)
    run_dir = pipeline.run_dir
    if task is None or baseline is None:
        task = build_task(recipe)
        model, needs_training = pipeline.check(task)
    else:
        model, needs_training = baseline, False
        workers = 1
    pipeline.start()
    train_result: TrainResult | None = None
    if needs_training:
        train_result = pipeline.train(model, task, reporter)
    search = make_search(recipe, task, model, run_dir, config, reporter)
    spawn = functools.partial(
        _spawn, recipe, run_dir, config, model, workers, type(reporter) is not Reporter
    )
    found = search.run(workers=workers, spawn=spawn)
    plan_recipe = write_plan(recipe, found.plan, run_dir, given=baseline is not None)
    if found.plan:
        reporter.log(
            f"[bold]plan[/]: {found.reason}; running it as a recipe (plan.yaml), gated on the test split"
        )
    else:
        reporter.log(
            f"[yellow]nothing beat the baseline[/]: {found.reason}; the result is the baseline"
        )
    info = optimize_record(found, config, search, task)
    result = Pipeline(plan_recipe, output=run_dir, reporter=reporter).run(
        task=task, baseline=(model, train_result), optimize=info
    )
    atomic_write_text(run_dir / "recipe.yaml", yaml.safe_dump(recipe.dump(), sort_keys=False))
    return result


def write_plan(
    recipe: Recipe, plan: list[dict[str, Any]], run_dir: Path, *, given: bool = False
) -> Recipe:
    """``plan.yaml``: the recipe with the plan written out as its stages (``leanml run`` runs it).
    ``given``: the model and data came as Python objects, which the file can only name."""
    data = recipe.dump()
    data.pop("optimize", None)
    data["stages"] = [{**entry, "name": next(iter(entry))} for entry in plan]
    if data["train"].get("refit") == "auto":
        # the search judged the baseline on val, so it was not refit on train+val: nor is it here
        # (with no stages, train.refit: auto would refit it, and plan.yaml would not reproduce it)
        data["train"]["refit"] = False
    header = (
        "# The plan leanml optimize chose, as an ordinary recipe. The model and data were given as Python\n"
        "# objects: set task.model and task.data to their files, then `leanml run plan.yaml` reproduces it.\n"
        if given
        else "# The plan leanml optimize chose, as an ordinary recipe: `leanml run plan.yaml` reproduces it.\n"
    )
    text = header + yaml.safe_dump(data, sort_keys=False)
    atomic_write_text(run_dir / "plan.yaml", text)
    planned = load_recipe({**data, "name": recipe.name})
    return planned.model_copy(
        update={"base_dir": recipe.base_dir, "trust_pickle": recipe.trust_pickle}
    )


def optimize_record(
    found: SearchResult, config: OptimizeConfig, search: Search, task: Task
) -> dict[str, Any]:
    """The ``optimize`` entry of metrics.json."""
    higher = task.metric.higher_is_better
    return {
        "objective": config.objective,
        "batch_size": config.batch_size,
        "trials": len(found.trials),
        "budget": config.trials,
        "stopped": found.stopped,
        "seconds": round(found.seconds, 1),
        "space": {t.kind: t.labels() for t in search.space.techniques},
        "not_planned": dict(search.space.not_applicable),
        "plan": found.plan,
        "reason": found.reason,
        "baseline": found.baseline.as_dict(),
        "finalists": found.finalists,
        "pareto": [r.as_dict() for r in pareto(found.trials, higher)],
        "by_combination": [r.as_dict() for r in best_per_combination(found.trials)],
        "all_trials": [r.as_dict() for r in found.trials],
    }


__all__ = ["PlanApplier", "make_search", "optimize_recipe", "write_plan"]
