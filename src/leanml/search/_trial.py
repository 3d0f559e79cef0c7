"""One trial of the plan search: claim a place in the budget, draw a plan, and score it: the
baseline's figures for the empty plan, a twin's figures for a plan already measured (also by an
earlier, stopped run), else the plan applied and its ONNX model measured on validation."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .._utils import first_line
from ..constraints import Constraints
from ..measure import Measurement
from ._interrupts import Interrupts
from ._records import TrialRecord
from ._sharing import owner, within_budget
from ._space import PlanSpace, combination, plan_key, plan_label
from ._study import counts_toward_plans, takes_constraint_from_trial

# (plan, trial number) -> the measurement of the plan's model on validation
MeasurePlan = Callable[[list[dict[str, Any]], int], Measurement]


class BudgetSpent(Exception):
    """A trial that found the study's budget spent by other trials: it does not run or count."""


@dataclass(frozen=True)
class Scoring:
    """How a measurement scores: its metric drop against the baseline, and its cost (p50 latency
    at ``batch_size``, or file bytes) for the objective."""

    objective: str
    batch_size: int
    higher_is_better: bool
    constraints: Constraints

    def cost(self, m: Measurement) -> float:
        if self.objective == "latency":
            return float(m.p50(self.batch_size))
        return float(m.size_bytes)

    def drop(self, metric: float, base: float) -> float:
        return base - metric if self.higher_is_better else metric - base

    def record(self, m: Measurement) -> TrialRecord:
        """The baseline's record (trial -1): the empty plan."""
        return TrialRecord(
            number=-1,
            label="baseline",
            combination="baseline",
            plan=[],
            val_metric=float(m.metric),
            latency_ms=float(m.p50(self.batch_size)),
            size_bytes=int(m.size_bytes),
            feasible=True,
            cost=self.cost(m),
        )

    def tell_drop(self, trial: Any, drop: float) -> None:
        """Put the drop on the trial, and the budget as its constraint (Optuna 5)."""
        trial.set_user_attr("drop", float(drop))
        if takes_constraint_from_trial():
            budget = self.constraints.max_metric_drop
            trial.set_constraint("metric_drop", min(float(drop) - budget, 1e9))


@dataclass
class TrialRunner:
    """The study's objective: ``study.optimize(runner.objective(study, interrupts), ...)``.

    ``first_trial_s`` is how long the first plan this process measured took (for a time-out that
    cannot fit one trial).
    """

    space: PlanSpace
    budget: int
    base: TrialRecord
    scoring: Scoring
    measure_plan: MeasurePlan
    first_trial_s: float | None = None

    def objective(
        self, study: Any, interrupts: Interrupts | None = None
    ) -> Callable[[Any], tuple[float, float]]:
        def objective(trial: Any) -> tuple[float, float]:
            for key, value in owner().items():
                trial.set_user_attr(key, value)
            if interrupts is None:
                return self.run(study, trial)
            interrupts.trial_started()
            try:
                return self.run(study, trial)
            finally:
                interrupts.trial_ended()

        return objective

    def run(self, study: Any, trial: Any) -> tuple[float, float]:
        if not within_budget(study, trial.number, self.budget, counts=counts_toward_plans):
            trial.set_user_attr("skipped", "the study's budget of plans was spent")
            study.stop()
            raise BudgetSpent(f"trial {trial.number} is over the budget of {self.budget} plans")
        t0 = time.perf_counter()
        picks = self.space.picks(trial)
        plan = self.space.plan(picks)
        trial.set_user_attr("label", plan_label(plan, self.space, picks))
        trial.set_user_attr("combination", combination(plan))
        trial.set_user_attr("plan", plan)
        if not plan:  # every technique off: the baseline, measured before the search
            base = self.base
            for key in ("val_metric", "latency_ms", "size_bytes"):
                trial.set_user_attr(key, getattr(base, key))
            self.scoring.tell_drop(trial, 0.0)
            trial.set_user_attr("same_as", -1)
            return base.val_metric, base.cost
        same = finished_twin(study, plan, trial.number)
        if same is not None:  # this plan was measured already (maybe by an earlier run)
            for key in ("val_metric", "latency_ms", "size_bytes"):
                trial.set_user_attr(key, same.user_attrs[key])
            self.scoring.tell_drop(trial, same.user_attrs["drop"])
            trial.set_user_attr("same_as", same.number)
            return tuple(same.values)  # type: ignore[return-value]
        try:
            m = self.measure_plan(plan, trial.number)
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {first_line(e)}")
            raise
        finally:
            if self.first_trial_s is None:
                self.first_trial_s = time.perf_counter() - t0
        trial.set_user_attr("val_metric", float(m.metric))
        trial.set_user_attr("latency_ms", float(m.p50(self.scoring.batch_size)))
        trial.set_user_attr("size_bytes", int(m.size_bytes))
        self.scoring.tell_drop(trial, self.scoring.drop(m.metric, self.base.val_metric))
        return float(m.metric), self.scoring.cost(m)


def finished_twin(study: Any, plan: list[dict[str, Any]], number: int) -> Any:
    """A complete trial other than ``number`` that measured the same plan, or None."""
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
