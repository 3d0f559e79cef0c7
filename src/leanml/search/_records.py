"""What the plan search found, as metrics.json and the report show it: a record per measured plan,
the search's result, the Pareto front and the best plan per combination of techniques."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..constraints import Constraints


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
    """What the search found: the winning plan (empty: nothing beat the baseline) and why.

    Attributes:
        plan: the winning stage list; reason: why it won (or why nothing did).
        trials: every plan measured; baseline: the baseline's record (trial -1).
        finalists: the plans re-timed side by side with the baseline, and their speed-ups.
        stopped: why the search stopped; seconds: its wall-clock time in this process.
    """

    plan: list[dict[str, Any]]
    reason: str
    trials: list[TrialRecord]
    baseline: TrialRecord
    finalists: list[dict[str, Any]] = field(default_factory=list)
    stopped: str = ""
    seconds: float = 0.0


def records(study: Any, constraints: Constraints) -> list[TrialRecord]:
    """The study's measured plans (not a plan proposed again, which reuses its twin's figures)."""
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
                feasible=constraints.allows(float(t.user_attrs["drop"])),
                cost=float(t.values[1]),
            )
        )
    return rows


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
