"""The space of plans ``leanml optimize`` searches: the techniques that apply, in plan order, each
with a few settings.

A plan is an ordinary stage list (``[{"distill": {...}}, {"prune": {...}}]``) in the techniques'
plan order. Each technique is one categorical choice, ``off`` or one of a few settings, so trials
share work: every plan that starts with the same stages reuses their result. Which techniques and
settings there are is the techniques' own say (``Stage.plan_choices``; ``leanml.techniques.plan_space``
builds the space from the registry); this module only holds and names it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

OFF = "off"


@dataclass(frozen=True)
class Choice:
    """One setting of a technique: its label in the study and the report, and its stage keys
    (validated by the technique's Config)."""

    label: str
    config: dict[str, Any]
    strong: bool = False  # the strongest setting (a seed plan uses it)


@dataclass
class TechniqueSpace:
    """One technique's choices (``off`` is always one of them)."""

    kind: str
    choices: list[Choice]

    def labels(self) -> list[str]:
        return [OFF, *(c.label for c in self.choices)]

    def config(self, label: str) -> dict[str, Any] | None:
        return next((c.config for c in self.choices if c.label == label), None)


@dataclass
class PlanSpace:
    """The techniques that apply to a model, in plan order, and why the others do not."""

    techniques: list[TechniqueSpace]
    not_applicable: dict[str, str] = field(default_factory=dict)

    def picks(self, trial: Any) -> dict[str, str]:
        """The trial's choice per technique (its Optuna parameter is the technique's name)."""
        return {t.kind: trial.suggest_categorical(t.kind, t.labels()) for t in self.techniques}

    def plan(self, picks: dict[str, str]) -> list[dict[str, Any]]:
        """The stage list for technique labels (a missing technique is off)."""
        stages = []
        for t in self.techniques:
            config = t.config(picks.get(t.kind, OFF))
            if config is not None:
                stages.append({t.kind: config})
        return stages

    def seeds(self) -> list[dict[str, str]]:
        """Plans tried first: each technique alone at its first (documented default) setting,
        then all of them together, then all with the strongest settings."""
        first = {t.kind: t.choices[0].label for t in self.techniques}
        strongest = {
            t.kind: next((c for c in t.choices if c.strong), t.choices[-1]).label
            for t in self.techniques
        }
        seeds = [{kind: label} for kind, label in first.items()]
        if len(self.techniques) > 1:
            seeds += [first, strongest]
        return [{t.kind: s.get(t.kind, OFF) for t in self.techniques} for s in seeds]

    def describe(self) -> str:
        parts = [f"{t.kind} ({', '.join(c.label for c in t.choices)})" for t in self.techniques]
        return " → ".join(parts)


def plan_label(plan: list[dict[str, Any]], space: PlanSpace, picks: dict[str, str]) -> str:
    """``distill width x0.5 → prune channel 50% → int8 static``; ``baseline`` for no stages."""
    if not plan:
        return "baseline"
    return " → ".join(
        f"{t.kind} {picks[t.kind]}" for t in space.techniques if picks.get(t.kind, OFF) != OFF
    )


def combination(plan: list[dict[str, Any]]) -> str:
    """The techniques of a plan, joined: ``distill+prune+quantize`` (``baseline`` for none)."""
    return "+".join(next(iter(s)) for s in plan) or "baseline"


def plan_key(plan: list[dict[str, Any]]) -> str:
    return json.dumps(plan, sort_keys=True)
