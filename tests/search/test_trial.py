"""One trial of the plan search (``leanml.search._trial``): a plan is measured once, a plan
proposed again reuses its twin's figures for free, and a trial past the budget of distinct plans
does not run."""

from __future__ import annotations

from types import SimpleNamespace

import optuna

from leanml.constraints import Constraints
from leanml.search import Choice, PlanSpace, TechniqueSpace, TrialRecord
from leanml.search._trial import Scoring, TrialRunner


def test_each_plan_is_measured_once_and_the_budget_counts_distinct_plans():
    space = PlanSpace([TechniqueSpace("prune", [Choice("a", {"amount": 0.5}), Choice("b", {})])])
    scoring = Scoring("latency", 1, True, Constraints(max_metric_drop=0.01))
    base = scoring.record(SimpleNamespace(metric=0.9, size_bytes=1000, p50=lambda b: 2.0))
    measured = []

    def measure_plan(plan, number):
        measured.append((number, plan))
        return SimpleNamespace(metric=0.85, size_bytes=500, p50=lambda b: 1.0)

    runner = TrialRunner(space, 2, base, scoring, measure_plan)
    study = optuna.create_study(directions=["maximize", "minimize"])
    for label in ("a", "a", "off", "b", "b"):
        study.enqueue_trial({"prune": label})
    study.optimize(runner.objective(study), n_trials=5, catch=(Exception,))
    trials = study.get_trials()
    assert measured == [(0, [{"prune": {"amount": 0.5}}]), (3, [{"prune": {}}])]
    assert trials[1].user_attrs["same_as"] == 0 and trials[2].user_attrs["same_as"] == -1
    assert trials[0].user_attrs["drop"] == 0.9 - 0.85  # against the baseline's metric
    assert "skipped" in trials[4].user_attrs  # two distinct plans measured: the budget is spent
    assert isinstance(base, TrialRecord) and base.cost == 2.0 and runner.first_trial_s is not None
