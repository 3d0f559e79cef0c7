"""The search's records (``leanml.search._records``): the Pareto front and the best plan per
combination of techniques."""

from __future__ import annotations

from leanml.search import TrialRecord, best_per_combination, pareto


def _row(number, combination, metric, cost, feasible=True, plan=None):
    return TrialRecord(
        number=number,
        label=combination,
        combination=combination,
        plan=plan if plan is not None else [{combination: {}}],
        val_metric=metric,
        latency_ms=cost,
        size_bytes=int(cost * 1000),
        feasible=feasible,
        cost=cost,
    )


def test_pareto_front_and_best_per_combination():
    rows = [
        _row(0, "prune", 0.95, 1.0),
        _row(1, "prune", 0.97, 2.0),
        _row(2, "quantize", 0.96, 2.5),  # beaten by trial 1 on both
        _row(3, "distill", 0.90, 0.5, feasible=False),
    ]
    assert [r.number for r in pareto(rows, higher=True)] == [3, 0, 1]
    assert [r.number for r in best_per_combination(rows)] == [0, 2]  # infeasible distill left out
