"""The plan search behind ``leanml optimize`` and ``stages: auto``: an Optuna multi-objective study
(validation metric, and latency at ``optimize.batch_size`` or file size) with the budget as a
constraint, over the plans of a :class:`PlanSpace`.

The search does not run stages: the caller gives ``apply_plan(plan, folder)``, which returns the
plan's model (the pipeline applies the registered stages, reusing stage prefixes other trials
applied). The search exports and measures every model one way, the baseline and each plan, on the
validation split in ONNX Runtime; a plan already finished in the study (also by an earlier, stopped
run) is not applied again. The winner is chosen on validation data only (see :mod:`._choice`).

Call order: :meth:`Search.run` does it all (:meth:`prepare`, :meth:`search` here or in the
caller's worker processes, then :meth:`choose`); a worker process calls :meth:`prepare` with the
parent's baseline record and study name, then :meth:`search`.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..constraints import Constraints
from ..errors import InvalidInputError
from ..measure import MeasureConfig, Measurement, measure
from ..models import Model
from ..runtime import to_onnx
from ..task import Task
from ._choice import choose
from ._config import OptimizeConfig
from ._interrupts import Interrupts
from ._progress import SearchLog, TrialProgress
from ._records import SearchResult, TrialRecord, records
from ._sharing import count_finished, fail_orphans
from ._space import PlanSpace
from ._storage import quiet_optuna
from ._study import counts_toward_plans, open_plan_study, plan_study_name
from ._trial import Scoring, TrialRunner

# (plan, folder to work in, the baseline's validation metric) -> the plan's model: the caller's
# stages applied to the trained baseline (their own decisions compare with that metric)
ApplyPlan = Callable[[list[dict[str, Any]], Path, float], Model]
# (baseline record, study name) -> None, once worker processes searched the shared study
Spawn = Callable[[TrialRecord, str], None]


class Search:
    """The study over plans for one task and trained baseline.

    Args:
        task: the data and metric (the search measures on the validation split only).
        baseline: the trained model every plan starts from.
        space: the plans (``leanml.techniques.plan_space`` builds it from the registry).
        apply_plan: the plan's model, given the plan, the trial's folder to work in and the
            baseline's validation metric.
        config: the ``optimize:`` keys.
        name: the recipe's name (the study is ``<name>-optimize-<hash>``).
        seed: the run's seed (the sampler's, for a fresh study of one process).
        constraints: the budget a plan must hold.
        measure: the recipe's ``measure:`` settings (timed at ``config.batch_size`` only).
        identity: what else the plans' figures depend on (the recipe's ``train:``), for the
            study's name.
        run_dir: the run directory (the search works in ``run_dir/optimize``).
        log: where progress goes.
        worker: the worker's index, in a worker process.
    """

    def __init__(
        self,
        task: Task,
        baseline: Model,
        space: PlanSpace,
        apply_plan: ApplyPlan,
        *,
        config: OptimizeConfig,
        name: str,
        seed: int,
        constraints: Constraints,
        measure: MeasureConfig,
        identity: dict[str, Any],
        run_dir: Path,
        log: SearchLog,
        worker: int | None = None,
    ) -> None:
        self.task = task
        self.baseline = baseline
        self.space = space
        self.apply_plan = apply_plan
        self.config = config
        self.name = name
        self.seed = seed
        self.constraints = constraints
        self.measure = measure
        self.identity = identity
        self.run_dir = run_dir
        self.log = log
        self.worker = worker
        self.dir = run_dir / "optimize"
        self.base_path = self.dir / "baseline.onnx"
        self.measure_config = measure.model_copy(
            update={"batch_sizes": [config.batch_size], "memory": False, "compare_torch": False}
        )
        self.scoring = Scoring(
            config.objective, config.batch_size, task.metric.higher_is_better, constraints
        )
        self.study_name = ""
        self.first_trial_s: float | None = None
        self.stopped = ""

    # -- the study ------------------------------------------------------------------------------

    def prepare(
        self, base: TrialRecord | None = None, name: str | None = None
    ) -> tuple[Any, TrialRecord]:
        """The baseline measured on validation, and the study (seed plans queued when it is new).
        A worker is given both by its parent, so every process judges against one measurement."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if base is None:
            base = self.scoring.record(self._measure(self.baseline, self.base_path))
        self.study_name = name or plan_study_name(
            self.name,
            baseline=self.base_path,
            val=self.task.data.val,
            identity={
                "space": {t.kind: [c.config for c in t.choices] for t in self.space.techniques},
                "objective": self.config.objective,
                "batch_size": self.config.batch_size,
                "seed": self.seed,
                **self.identity,
                "measure": self.measure.model_dump(mode="json"),
                "constraints": self.constraints.model_dump(mode="json"),
            },
        )
        study = open_plan_study(
            self.study_name,
            url=self.config.storage or f"sqlite:///{(self.run_dir / 'study.db').resolve()}",
            config=self.config,
            constraints=self.constraints,
            seed=self.seed,
            metric_name=self.task.metric.name,
            higher_is_better=self.task.metric.higher_is_better,
            worker=self.worker,
        )
        if not study.trials:
            for picks in self.space.seeds():
                study.enqueue_trial(picks, skip_if_exists=True)
        self.first_trial_s = None
        self.stopped = ""
        return study, base

    def search(
        self, study: Any, base: TrialRecord, *, interrupts: Interrupts | None = None
    ) -> None:
        """Run trials until the study's budget of distinct plans is spent (by every process
        sharing it), the time-out, or the patience stop."""
        import optuna

        runner = TrialRunner(
            self.space,
            self.config.trials,
            base,
            self.scoring,
            lambda plan, number: self._measure_plan(plan, number, base),
        )
        progress = TrialProgress(
            self.log, self.config, self.constraints, self.space, base, self.task.metric.name
        )
        with quiet_optuna(), warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            try:
                if interrupts is not None:
                    interrupts.loop_started()
                study.optimize(  # each trial checks the budget; a plan proposed again is free
                    runner.objective(study, interrupts),
                    n_trials=self.config.trials * 4 + 10,
                    timeout=self.config.timeout,
                    catch=(Exception,),
                    callbacks=[progress],
                )
                if interrupts is not None:
                    interrupts.loop_ended()
            except KeyboardInterrupt:
                fail_orphans(study, mine=True)
                raise
            finally:
                self.first_trial_s = runner.first_trial_s
                self.stopped = progress.stopped

    def run(self, *, workers: int = 1, spawn: Spawn | None = None) -> SearchResult:
        """The whole search, in this process or (``workers`` > 1) by ``spawn``, then the choice.

        Raises:
            InvalidInputError: ``optimize.timeout`` is shorter than one trial.
        """
        study, base = self.prepare()
        done = count_finished(study, counts=counts_toward_plans)
        todo = max(self.config.trials - done, 0)
        log = self.log.log
        log(
            f"[bold]optimize[/]: {self.config.objective} at batch {self.config.batch_size}, "
            f"{self.task.metric.name} within {self.constraints.max_metric_drop:g} of the baseline"
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
        if todo and workers > 1 and spawn is not None:
            spawn(base, self.study_name)
        elif todo:
            self.search(study, base)
        seconds = time.perf_counter() - start
        trials = records(study, self.constraints)
        self._check_timeout(trials)
        if not self.stopped:
            timed_out = self.config.timeout and seconds >= self.config.timeout
            self.stopped = "time-out" if timed_out else "trial budget"
        result = self.choose(trials, base)
        result.stopped, result.seconds = self.stopped, seconds
        return result

    def choose(self, trials: list[TrialRecord], base: TrialRecord) -> SearchResult:
        """The winner of ``trials`` (see :func:`leanml.search._choice.choose`)."""
        return choose(
            trials,
            base,
            config=self.config,
            constraints=self.constraints,
            task=self.task,
            measure_config=self.measure_config,
            base_path=self.base_path,
            trial_dir=self.dir / "trials",
            log=self.log,
        )

    def _check_timeout(self, trials: list[TrialRecord]) -> None:
        first, timeout = self.first_trial_s, self.config.timeout
        if timeout and first is not None and first > timeout and len(trials) <= 1:
            raise InvalidInputError(
                f"optimize.timeout {timeout:g} s is shorter than one trial: the first took "
                f"{first:.1f} s; give at least {max(first * 10, 60):.0f} s, or drop the timeout and "
                "set optimize.trials (the finished trial is kept in the study)"
            )

    # -- measuring ------------------------------------------------------------------------------

    def _measure(self, model: Model, path: Path) -> Measurement:
        to_onnx(model, self.task.data.val, path)
        return measure(path, self.task.data.val, self.task.metric, self.measure_config)

    def _measure_plan(
        self, plan: list[dict[str, Any]], number: int, base: TrialRecord
    ) -> Measurement:
        folder = self.dir / "trials" / f"{number:04d}"
        folder.mkdir(parents=True, exist_ok=True)
        model = self.apply_plan(plan, folder, base.val_metric)
        return self._measure(model, folder / "model.onnx")
