"""``leanml optimize`` and ``stages: auto``: find the plan (which techniques, in which order, with
which settings) that makes the model fastest or smallest within the accuracy budget.

The search is an Optuna multi-objective study (validation metric, and latency at
``optimize.batch_size`` or file size) with the budget as a constraint; every trial applies its plan
with the registered stages and measures the exported ONNX model in ONNX Runtime, as a run does.
Trials share work: a plan reuses the result of every stage prefix another trial already applied
in this process (the student of a distill stage, a pruned model under several quantize modes), and a
plan already finished in the study (also by an earlier, stopped run) is not applied again.

The winner is chosen on validation data only; the finalists' latencies are re-timed side by side
against the baseline. It is then written as ``plan.yaml`` and run as an ordinary recipe, so every
stage is measured on the test split and gated as in ``leanml run``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .._utils import atomic_write_text, first_line
from ..errors import InvalidInputError, LeanmlError
from ..export import save_safetensors
from ..measure import Measurement, measure, paired_latency_ratio
from ..models import Model, load_weights
from ..runtime import to_onnx
from ..task import Task
from ..techniques import get_stage_class
from ..techniques.tune._sharing import (
    Interrupts,
    fail_orphans,
    owner,
    process_salt,
    sampler_seed,
)
from ..techniques.tune._study import open_storage, quiet_optuna
from ..training import TrainResult
from ._context import PipelineContext
from ._pipeline import Pipeline, RunResult, build_task, prepare_baseline
from ._planner import OFF, PlanSpace, combination, plan_key, plan_label, plan_space
from ._progress import Reporter, StageLog
from ._recipe import OptimizeConfig, Recipe, load_recipe
from ._tasks import train_baseline
from ._workers import run_processes, worker_setup

logger = logging.getLogger("leanml")

# A finalist must be this much faster than the baseline, re-timed side by side, to count as a win:
# below it, the difference is within what a shared machine's noise gives.
MIN_SPEEDUP = 1.05
FINALISTS = 3


def _set_constraint() -> bool:
    """Whether Optuna takes constraints from the trial (5.0+) rather than from a function."""
    import optuna

    return hasattr(optuna.trial.Trial, "set_constraint")


CACHE_SIZE = 24


@dataclass
class TrialRecord:
    """One finished trial of the search, as metrics.json and the report show it."""

    number: int
    label: str
    combination: str
    plan: list[dict[str, Any]]
    val_metric: float
    latency_ms: float
    size_bytes: int
    feasible: bool
    cost: float

    def as_dict(self) -> dict[str, Any]:
        return {
            "trial": self.number,
            "label": self.label,
            "combination": self.combination,
            "val_metric": self.val_metric,
            "latency_ms": self.latency_ms,
            "size_bytes": self.size_bytes,
            "feasible": self.feasible,
        }


@dataclass
class SearchResult:
    """What the search found: the winning plan (empty: nothing beat the baseline) and why."""

    plan: list[dict[str, Any]]
    reason: str
    trials: list[TrialRecord]
    baseline: TrialRecord
    finalists: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0


class BudgetSpent(Exception):
    """A trial that found the study's budget spent by other trials: it does not run or count."""


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


class Search:
    """The study over plans for one recipe, task and trained baseline."""

    def __init__(
        self,
        recipe: Recipe,
        task: Task,
        baseline: Model,
        run_dir: Path,
        config: OptimizeConfig,
        reporter: Reporter,
        worker: int | None = None,
    ) -> None:
        self.recipe = recipe
        self.worker = worker
        self.task = task
        self.baseline = baseline
        self.run_dir = run_dir
        self.config = config
        self.reporter = reporter
        self.dir = run_dir / "optimize"
        self.space: PlanSpace = plan_space(
            task,
            baseline,
            objective=config.objective,
            allowed=config.techniques,
            epochs=recipe.train.epochs,
        )
        self.measure_config = recipe.measure.model_copy(
            update={"batch_sizes": [config.batch_size], "memory": False, "compare_torch": False}
        )
        self.cache: OrderedDict[str, Model | Exception] = OrderedDict()
        self.higher = task.metric.higher_is_better

    # -- the study ------------------------------------------------------------------------------

    def study_name(self) -> str:
        """Named after what its figures depend on: the plans' settings, the objective, the recipe's
        training, measuring and budget, and the baseline and validation data themselves (their
        bytes), so a rerun with another model or data starts a new study instead of reusing
        figures that do not belong to it."""
        data = hashlib.sha256(self._base_path.read_bytes())
        x = self.task.data.val.x
        for part in x.values() if isinstance(x, dict) else [x]:
            data.update(np.ascontiguousarray(part).tobytes())
        identity = {
            "space": {t.kind: [c.config for c in t.choices] for t in self.space.techniques},
            "objective": self.config.objective,
            "batch_size": self.config.batch_size,
            "seed": self.recipe.seed,
            "train": self.recipe.train.model_dump(mode="json"),
            "measure": self.recipe.measure.model_dump(mode="json"),
            "constraints": self.recipe.constraints.model_dump(mode="json"),
            "baseline_and_data": data.hexdigest(),
        }
        digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:8]
        return f"{self.recipe.name}-optimize-{digest}"

    def open_study(self) -> Any:
        import optuna

        url = self.config.storage or f"sqlite:///{(self.run_dir / 'study.db').resolve()}"
        storage = open_storage(url, key="optimize.storage")
        max_drop = self.recipe.constraints.max_metric_drop

        def constraints(trial: optuna.trial.FrozenTrial) -> list[float]:
            return [float(trial.user_attrs.get("drop", math.inf)) - max_drop]

        # The budget is a constraint: Optuna 5 takes it from the trial (Trial.set_constraint),
        # Optuna 4 from a function of the finished trial.
        old = {} if _set_constraint() else {"constraints_func": constraints}

        def sampler(seed: int) -> optuna.samplers.BaseSampler:
            return optuna.samplers.TPESampler(
                seed=seed,
                multivariate=True,
                n_startup_trials=min(10, max(1, self.config.trials // 4)),
                **old,
            )

        with quiet_optuna(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study = optuna.create_study(
                study_name=self._study_name,
                storage=storage,
                sampler=sampler(self.recipe.seed),
                directions=["maximize" if self.higher else "minimize", "minimize"],
                load_if_exists=True,
            )
            if not study.metric_names:  # named in optuna-dashboard instead of "Objective 0"
                unit = "latency p50 (ms)" if self.config.objective == "latency" else "size (bytes)"
                study.set_metric_names([f"val {self.task.metric.name}", unit])
        fail_orphans(study)  # trials of a killed earlier run: failed, not left running
        stored = len(study.get_trials(deepcopy=False))
        if stored or self.worker is not None:  # a resumed or shared study: this process's own draws
            study.sampler = sampler(
                sampler_seed(self.recipe.seed, salt=process_salt(self.worker, stored))
            )
        return study

    def prepare(
        self, base: TrialRecord | None = None, name: str | None = None
    ) -> tuple[Any, TrialRecord]:
        """The baseline measured on validation, and the study (seed plans queued when it is new).
        A worker is given both by its parent, so every process judges against one measurement."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._base_path = self.dir / "baseline.onnx"
        self._base = base or self._measure_baseline()
        self._study_name = name or self.study_name()
        study = self.open_study()
        if not study.trials:
            for picks in self.space.seeds():
                study.enqueue_trial(picks, skip_if_exists=True)
        self._first_trial_s: float | None = None
        self._stopped = ""
        return study, self._base

    def search(
        self, study: Any, base: TrialRecord, *, interrupts: Interrupts | None = None
    ) -> None:
        """Run trials until the study's budget of distinct plans is spent (by every process
        sharing it), the time-out, or the patience stop."""
        import optuna

        with quiet_optuna(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                if interrupts is not None:
                    interrupts.loop_started()
                study.optimize(  # each trial checks the budget; a plan proposed again is free
                    self._objective(study, interrupts),
                    n_trials=self.config.trials * 4 + 10,
                    timeout=self.config.timeout,
                    catch=(Exception,),
                    callbacks=[self._after_trial(base)],
                )
                if interrupts is not None:
                    interrupts.loop_ended()
            except KeyboardInterrupt:
                fail_orphans(study, mine=True)
                raise

    def run(self, *, workers: int = 1) -> SearchResult:
        """The whole search in this process, or in ``workers`` spawned processes, then the choice."""
        study, base = self.prepare()
        done = self._spent(study)
        todo = max(self.config.trials - done, 0)
        log = self.reporter.log
        log(
            f"[bold]optimize[/]: {self.config.objective} at batch {self.config.batch_size}, "
            f"{self.task.metric.name} within {self.recipe.constraints.max_metric_drop:g} of the baseline"
            + (f", {workers} workers" if workers > 1 else "")
        )
        log(f"  plans: {self.space.describe()}")
        for kind, why in self.space.not_applicable.items():
            log(f"  [dim]{kind} not planned: {why}[/]")
        if done:
            log(
                f"  continuing study {study.study_name!r}: {done} finished trials kept, {todo} to run"
            )
        start = time.perf_counter()
        if todo and workers > 1:
            self._spawn(workers)
        elif todo:
            self.search(study, base)
        seconds = time.perf_counter() - start
        trials = self._records(study)
        self._check_timeout(trials, seconds)
        if not self._stopped:
            self._stopped = (
                "time-out"
                if self.config.timeout and seconds >= self.config.timeout
                else "trial budget"
            )
        result = self._choose(trials, base)
        result.stopped, result.seconds = self._stopped, seconds
        return result

    def _spawn(self, workers: int) -> None:
        """Worker processes that share the study; they rebuild the baseline from its saved weights."""
        if self.baseline.torch is not None:
            save_safetensors(self.baseline.torch, self.dir / "baseline.safetensors")
        verbose = type(self.reporter) is not Reporter
        run_processes(
            _worker,
            [
                (
                    self.recipe,
                    str(self.run_dir),
                    self.config,
                    (self._base, self._study_name),
                    w,
                    verbose,
                    os.getpid(),
                )
                for w in range(workers)
            ],
            what="optimize",
        )

    def _within_budget(self, study: Any, number: int) -> bool:
        """Whether trial ``number`` may run: fewer than ``trials`` distinct plans were measured or
        are being measured before it (the storage numbers trials atomically, so processes agree)."""
        from ..techniques.tune._sharing import counts_toward_budget

        taken = sum(
            1
            for t in study.get_trials(deepcopy=False)
            if t.number < number and counts_toward_budget(t) and "same_as" not in t.user_attrs
        )
        return taken < self.config.trials

    @staticmethod
    def _spent(study: Any) -> int:
        """Trials that spent the budget: plans measured or failed; a plan proposed again is free."""
        from ..techniques.tune._sharing import counts_toward_budget

        return sum(
            1
            for t in study.get_trials(deepcopy=False)
            if counts_toward_budget(t)
            and "same_as" not in t.user_attrs
            and t.state.name != "RUNNING"
        )

    def _check_timeout(self, trials: list[TrialRecord], seconds: float) -> None:
        first = self._first_trial_s
        if (
            self.config.timeout
            and first is not None
            and first > self.config.timeout
            and len(trials) <= 1
        ):
            raise InvalidInputError(
                f"optimize.timeout {self.config.timeout:g} s is shorter than one trial: the first took "
                f"{first:.1f} s; give at least {max(first * 10, 60):.0f} s, or drop the timeout and "
                "set optimize.trials (the finished trial is kept in the study)"
            )

    # -- one trial ------------------------------------------------------------------------------

    def _objective(self, study: Any, interrupts: Interrupts | None = None):
        def objective(trial: Any) -> tuple[float, float]:
            for key, value in owner().items():
                trial.set_user_attr(key, value)
            if interrupts is None:
                return one(trial)
            interrupts.trial_started()
            try:
                return one(trial)
            finally:
                interrupts.trial_ended()

        def one(trial: Any) -> tuple[float, float]:
            if not self._within_budget(study, trial.number):
                trial.set_user_attr("skipped", "the study's budget of plans was spent")
                study.stop()
                raise BudgetSpent(
                    f"trial {trial.number} is over the budget of {self.config.trials} plans"
                )
            t0 = time.perf_counter()
            picks = self.space.picks(trial)
            plan = self.space.plan(picks)
            trial.set_user_attr("label", plan_label(plan, self.space, picks))
            trial.set_user_attr("combination", combination(plan))
            trial.set_user_attr("plan", plan)
            if not plan:  # every technique off: the baseline, measured before the search
                base = self._base
                for key in ("val_metric", "latency_ms", "size_bytes"):
                    trial.set_user_attr(key, getattr(base, key))
                self._tell_drop(trial, 0.0)
                trial.set_user_attr("same_as", -1)
                return base.val_metric, base.cost
            same = self._finished_twin(study, plan, trial.number)
            if same is not None:  # this plan was measured already (maybe by an earlier run)
                for key in ("val_metric", "latency_ms", "size_bytes"):
                    trial.set_user_attr(key, same.user_attrs[key])
                self._tell_drop(trial, same.user_attrs["drop"])
                trial.set_user_attr("same_as", same.number)
                return tuple(same.values)  # type: ignore[return-value]
            try:
                m = self._measure_plan(plan, trial.number)
            except Exception as e:
                trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e)}")
                raise
            finally:
                if self._first_trial_s is None:
                    self._first_trial_s = time.perf_counter() - t0
            drop = self._drop(m.metric)
            trial.set_user_attr("val_metric", float(m.metric))
            trial.set_user_attr("latency_ms", float(m.p50(self.config.batch_size)))
            trial.set_user_attr("size_bytes", int(m.size_bytes))
            self._tell_drop(trial, drop)
            return float(m.metric), self._cost(m)

        return objective

    @staticmethod
    def _finished_twin(study: Any, plan: list[dict[str, Any]], number: int) -> Any:
        from optuna.trial import TrialState

        key = plan_key(plan)
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if (
                t.number != number
                and plan_key(t.user_attrs.get("plan", [])) == key
                and "drop" in t.user_attrs
            ):
                return t
        return None

    def _tell_drop(self, trial: Any, drop: float) -> None:
        trial.set_user_attr("drop", float(drop))
        if _set_constraint():
            budget = self.recipe.constraints.max_metric_drop
            trial.set_constraint("metric_drop", min(float(drop) - budget, 1e9))

    def _drop(self, metric: float) -> float:
        base = self._base.val_metric
        return base - metric if self.higher else metric - base

    def _cost(self, m: Measurement) -> float:
        return (
            float(m.p50(self.config.batch_size))
            if self.config.objective == "latency"
            else float(m.size_bytes)
        )

    def _context(self, work_dir: Path) -> PipelineContext:
        return PipelineContext.for_stage(
            task=self.task,
            recipe=self.recipe,
            work_dir=work_dir,
            baseline_val_metric=self._base.val_metric,
            reporter=StageLog(_TrialReporter(self.reporter), work_dir / "log.txt"),
        )

    def apply_plan(self, plan: list[dict[str, Any]], number: int) -> Model:
        """The plan's model: each stage prefix's result is reused when another trial applied it."""
        current = self.baseline
        work = self.dir / "trials" / f"{number:04d}"
        work.mkdir(parents=True, exist_ok=True)
        ctx = self._context(work)
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

    def _measure_plan(self, plan: list[dict[str, Any]], number: int) -> Measurement:
        model = self.apply_plan(plan, number)
        path = self.dir / "trials" / f"{number:04d}" / "model.onnx"
        to_onnx(model, self.task.data.val, path)
        return measure(path, self.task.data.val, self.task.metric, self.measure_config)

    def _measure_baseline(self) -> TrialRecord:
        to_onnx(self.baseline, self.task.data.val, self._base_path)
        m = measure(self._base_path, self.task.data.val, self.task.metric, self.measure_config)
        return TrialRecord(
            number=-1,
            label="baseline",
            combination="baseline",
            plan=[],
            val_metric=float(m.metric),
            latency_ms=float(m.p50(self.config.batch_size)),
            size_bytes=int(m.size_bytes),
            feasible=True,
            cost=self._cost(m),
        )

    # -- progress -------------------------------------------------------------------------------

    def _after_trial(self, base: TrialRecord):

        patience = self.config.patience or max(10, self.config.trials // 2)
        metric = self.task.metric.name
        unit = "ms" if self.config.objective == "latency" else "bytes"

        size = (
            math.prod(len(t.labels()) for t in self.space.techniques) - 1
        )  # all off: the baseline

        def callback(study: Any, trial: Any) -> None:
            if "skipped" in trial.user_attrs:
                return
            self._progress(study, trial, base, patience, metric, unit)
            spent = self._spent(study)
            if spent >= self.config.trials:
                study.stop()
            elif len({plan_key(r.plan) for r in self._records(study)}) >= size:
                self._stopped = f"every one of the {size} plans was measured"
                study.stop()

        return callback

    def _progress(
        self, study: Any, trial: Any, base: TrialRecord, patience: int, metric: str, unit: str
    ) -> None:
        """A line per trial, the best plans every 5 measured plans, and the patience stop."""
        from optuna.trial import TrialState

        label = trial.user_attrs.get("label", "?")
        if trial.state != TrialState.COMPLETE:
            error = trial.user_attrs.get("error", "no error recorded")
            self.reporter.log(f"  trial {trial.number}: {label}: failed: {error}")
            return
        if "same_as" in trial.user_attrs:
            same = trial.user_attrs["same_as"]
            where = "the baseline" if same < 0 else f"measured in trial {same}"
            self.reporter.log(f"  [dim]trial {trial.number}: {label}: {where}[/]")
            return
        drop = trial.user_attrs["drop"]
        ratio = base.cost / trial.values[1] if trial.values[1] > 0 else math.inf
        what = "faster" if self.config.objective == "latency" else "smaller"
        over = "" if self.recipe.constraints.allows(drop) else " [yellow]over the budget[/]"
        self.reporter.log(
            f"  trial {trial.number}: {label}: {metric} {trial.values[0]:.4f} ({-drop:+.4f}), "
            f"{trial.values[1]:.4g} {unit}, {ratio:.2f}x {what}{over}"
        )
        rows = self._records(study)
        feasible = [r for r in rows if r.feasible]
        if feasible:
            best = min(feasible, key=lambda r: r.cost)
            since = sum(1 for r in rows if r.number > best.number)
            if since >= patience:
                self._stopped = f"no better plan in {patience} measured plans"
                study.stop()
        if len(rows) % 5 == 0:
            self.reporter.log(best_table_text(rows, base, metric, self.config.objective))

    # -- the choice -----------------------------------------------------------------------------

    def _records(self, study: Any) -> list[TrialRecord]:
        from optuna.trial import TrialState

        rows = []
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            if "drop" not in t.user_attrs or "same_as" in t.user_attrs:
                continue
            rows.append(
                TrialRecord(
                    number=t.number,
                    label=t.user_attrs.get("label", ""),
                    combination=t.user_attrs.get("combination", ""),
                    plan=t.user_attrs.get("plan", []),
                    val_metric=float(t.user_attrs["val_metric"]),
                    latency_ms=float(t.user_attrs["latency_ms"]),
                    size_bytes=int(t.user_attrs["size_bytes"]),
                    feasible=self.recipe.constraints.allows(float(t.user_attrs["drop"])),
                    cost=float(t.values[1]),
                )
            )
        return rows

    def _choose(self, trials: list[TrialRecord], base: TrialRecord) -> SearchResult:
        distinct: dict[str, TrialRecord] = {}
        for r in sorted(
            (r for r in trials if r.feasible and r.plan), key=lambda r: (r.cost, r.number)
        ):
            distinct.setdefault(plan_key(r.plan), r)
        ranked = list(distinct.values())
        if not ranked:
            over = len([r for r in trials if not r.feasible])
            return SearchResult(
                [],
                f"no plan held the budget on the validation split ({len(trials)} measured, {over} over "
                f"max_metric_drop {self.recipe.constraints.max_metric_drop:g})",
                trials,
                base,
            )
        if self.config.objective == "size":
            best = ranked[0]
            if best.size_bytes >= base.size_bytes:
                return SearchResult(
                    [], "no plan within the budget made the file smaller", trials, base
                )
            return SearchResult(
                best.plan,
                f"trial {best.number}, {best.label}: {base.size_bytes / best.size_bytes:.2f}x smaller on validation",
                trials,
                base,
            )
        finalists = []
        for r in ranked[:FINALISTS]:
            path = self.dir / "trials" / f"{r.number:04d}" / "model.onnx"
            if not path.exists():  # measured by a run whose files are gone: its figure stands
                finalists.append(
                    {
                        "trial": r.number,
                        "label": r.label,
                        "speedup": base.cost / r.cost,
                        "paired": False,
                    }
                )
                continue
            with self.reporter.progress(f"re-timing {r.label} side by side") as step:
                ratio = paired_latency_ratio(
                    self._base_path,
                    path,
                    self.task.data.val.x,
                    self.measure_config,
                    progress=step.update,
                )[self.config.batch_size]
            finalists.append(
                {"trial": r.number, "label": r.label, "speedup": 1 / ratio, "paired": True}
            )
        best_f = max(finalists, key=lambda f: f["speedup"])
        self.reporter.log(
            "  finalists re-timed side by side with the baseline: "
            + "; ".join(f"{f['label']} {f['speedup']:.2f}x" for f in finalists)
        )
        if best_f["speedup"] < MIN_SPEEDUP:
            return SearchResult(
                [],
                f"the fastest plan within the budget ({best_f['label']}) was {best_f['speedup']:.2f}x the baseline's "
                f"speed at batch {self.config.batch_size}, re-timed side by side: not a real gain",
                trials,
                base,
                finalists,
            )
        winner = next(r for r in ranked if r.number == best_f["trial"])
        return SearchResult(
            winner.plan,
            f"trial {winner.number}, {winner.label}: {best_f['speedup']:.2f}x faster at batch "
            f"{self.config.batch_size} on validation (re-timed side by side with the baseline)",
            trials,
            base,
            finalists,
        )


def _worker(
    recipe: Recipe,
    run_dir: str,
    config: OptimizeConfig,
    shared: tuple[TrialRecord, str],
    worker: int,
    verbose: bool,
    parent: int,
) -> None:
    """A spawned process: rebuild the task and the trained baseline, then search the shared study."""
    interrupts, reporter = worker_setup(parent, worker, verbose)
    try:
        task = build_task(recipe)
        model, needs_training = prepare_baseline(recipe, task)
        if needs_training and model.torch is not None:
            load_weights(model.torch, Path(run_dir) / "optimize" / "baseline.safetensors")
            model.torch.eval()
        elif needs_training:  # scikit-learn: the same seed fits the same model
            train_baseline(model, task, recipe.train, seed=recipe.seed)
        search = Search(recipe, task, model, Path(run_dir), config, reporter, worker=worker)
        study, base = search.prepare(*shared)
        search.search(study, base, interrupts=interrupts)
    except KeyboardInterrupt:
        sys.exit(130)  # the running trial was marked failed; the parent reports the interruption
    except (
        LeanmlError
    ) as e:  # one line, as the CLI shows errors; the parent counts the failed worker
        logger.error("[worker %d] %s", worker, e)
        sys.exit(1)
    except Exception as e:
        logger.error("[worker %d] %s: %s", worker, type(e).__name__, first_line(e))
        logger.debug("[worker %d] traceback", worker, exc_info=True)
        sys.exit(1)


def pareto(trials: list[TrialRecord], higher: bool) -> list[TrialRecord]:
    """The trials no other trial beats on both metric and cost."""
    front = []
    for r in trials:
        better = [
            o
            for o in trials
            if o is not r
            and (o.val_metric >= r.val_metric if higher else o.val_metric <= r.val_metric)
            and o.cost <= r.cost
            and (o.val_metric != r.val_metric or o.cost != r.cost)
        ]
        if not better:
            front.append(r)
    return sorted(front, key=lambda r: r.cost)


def best_per_combination(trials: list[TrialRecord]) -> list[TrialRecord]:
    """The cheapest plan within the budget for each combination of techniques."""
    best: dict[str, TrialRecord] = {}
    for r in sorted((r for r in trials if r.feasible), key=lambda r: (r.cost, r.number)):
        best.setdefault(r.combination, r)
    return sorted(best.values(), key=lambda r: r.cost)


def best_table_text(
    trials: list[TrialRecord], base: TrialRecord, metric: str, objective: str
) -> str:
    """The best plan per technique combination so far, as text lines for the terminal."""
    what = "faster" if objective == "latency" else "smaller"
    lines = [f"  best plans so far ({metric} on validation, vs the baseline):"]
    for r in best_per_combination(trials)[:8]:
        lines.append(
            f"    {base.cost / r.cost:6.2f}x {what}  {r.val_metric - base.val_metric:+.4f}  {r.label} (trial {r.number})"
        )
    return "\n".join(lines)


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
    search = Search(recipe, task, model, run_dir, config, reporter)
    found = search.run(workers=workers)
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


__all__ = ["OFF", "Search", "optimize_recipe"]
