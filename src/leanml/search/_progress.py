"""What the plan search says while it runs, and when it stops early: a line per trial, the best
plans every 5 measured plans, and a stop when the budget is spent, when every plan of the space
was measured, or after ``patience`` measured plans without a better one."""

from __future__ import annotations

import math
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from ..constraints import Constraints
from ._config import OptimizeConfig
from ._records import TrialRecord, best_table_text, records
from ._sharing import count_finished
from ._space import PlanSpace, plan_key
from ._study import counts_toward_plans


class StepLog(Protocol):
    """A long step in progress (see :class:`SearchLog`)."""

    def update(self, info: str) -> None:
        """Say what the step is doing now."""
        ...


class SearchLog(Protocol):
    """Where the search reports (``leanml.pipeline.Reporter`` is one): progress lines, and long
    steps shown while a ``with`` block runs."""

    def log(self, message: str) -> None:
        """A progress line for the user."""
        ...

    def progress(
        self, description: str, total: int | None = None
    ) -> AbstractContextManager[StepLog]:
        """A long step (re-timing a finalist), for the ``with`` block."""
        ...


@dataclass
class TrialProgress:
    """The study's callback after each trial (``study.optimize(callbacks=[progress])``).

    ``stopped`` says why it stopped the study, when it did.
    """

    log: SearchLog
    config: OptimizeConfig
    constraints: Constraints
    space: PlanSpace
    base: TrialRecord
    metric: str
    stopped: str = ""

    def __call__(self, study: Any, trial: Any) -> None:
        if "skipped" in trial.user_attrs:
            return
        self.report(study, trial)
        size = math.prod(len(t.labels()) for t in self.space.techniques) - 1  # all off: baseline
        if count_finished(study, counts=counts_toward_plans) >= self.config.trials:
            study.stop()
        elif len({plan_key(r.plan) for r in records(study, self.constraints)}) >= size:
            self.stopped = f"every one of the {size} plans was measured"
            study.stop()

    @property
    def patience(self) -> int:
        return self.config.patience or max(10, self.config.trials // 2)

    def report(self, study: Any, trial: Any) -> None:
        """A line for the trial, the best plans every 5 measured plans, and the patience stop."""
        from optuna.trial import TrialState

        label = trial.user_attrs.get("label", "?")
        if trial.state != TrialState.COMPLETE:
            error = trial.user_attrs.get("error", "no error recorded")
            self.log.log(f"  trial {trial.number}: {label}: failed: {error}")
            return
        if "same_as" in trial.user_attrs:
            same = trial.user_attrs["same_as"]
            where = "the baseline" if same < 0 else f"measured in trial {same}"
            self.log.log(f"  [dim]trial {trial.number}: {label}: {where}[/]")
            return
        drop = trial.user_attrs["drop"]
        ratio = self.base.cost / trial.values[1] if trial.values[1] > 0 else math.inf
        latency = self.config.objective == "latency"
        what, unit = ("faster", "ms") if latency else ("smaller", "bytes")
        over = "" if self.constraints.allows(drop) else " [yellow]over the budget[/]"
        self.log.log(
            f"  trial {trial.number}: {label}: {self.metric} {trial.values[0]:.4f} ({-drop:+.4f}), "
            f"{trial.values[1]:.4g} {unit}, {ratio:.2f}x {what}{over}"
        )
        rows = records(study, self.constraints)
        feasible = [r for r in rows if r.feasible]
        if feasible:
            best = min(feasible, key=lambda r: r.cost)
            since = sum(1 for r in rows if r.number > best.number)
            if since >= self.patience:
                self.stopped = f"no better plan in {self.patience} measured plans"
                study.stop()
        if len(rows) % 5 == 0:
            self.log.log(best_table_text(rows, self.base, self.metric, self.config.objective))
