"""The space of plans ``leanml optimize`` searches: which techniques apply to the model, in which
order, with which settings.

A plan is an ordinary stage list (``[{"distill": {...}}, {"prune": {...}}]``) in the one order that
makes sense for these techniques: features (fewer inputs) → distill (a smaller network) → prune
(fewer channels of that network) → quantize (last: every earlier stage trains in float). Each
technique is one categorical choice, ``off`` or one of a few settings, so trials share work: every
plan that starts with the same stages reuses their result.

What is never planned, and why:
- unstructured and N:M pruning: ONNX Runtime's CPU kernels multiply zeros at full cost, so the
  deployed model is neither faster nor smaller on disk;
- quantization-aware training: it needs a training loop per setting, and post-training int8 is
  tried first; a recipe can still ask for ``quantize: {mode: qat}``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ..errors import InvalidInputError, StageNotApplicable
from ..models import Model
from ..task import Task
from ..techniques import get_stage_class
from ._recipe import TECHNIQUES

OFF = "off"


@dataclass(frozen=True)
class Choice:
    """One setting of a technique: its label in the study and the report, and its stage keys."""

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


def student_training(epochs: int) -> dict[str, Any]:
    """How a planned student trains: it is a new, smaller network, so its learning rate is found
    anew (the range test) rather than inherited from the teacher's recipe, and it trains for twice
    the teacher's epochs, stopped on the metric the budget is about (docs/optimize.md gives the
    measured difference on the digits CNN)."""
    budget = max(2 * epochs, 60)
    return {
        "epochs": budget,
        "lr": "auto",
        "early_stopping": {
            "monitor": "val_metric",
            "patience": max(10, budget // 5),
            "restore_best": True,
        },
    }


def finetune_training(epochs: int) -> dict[str, Any]:
    """How a planned prune stage fine-tunes: half the recipe's epochs (at least 10), stopped on the
    metric, where the stage's own default is 5 epochs."""
    budget = max(10, epochs // 2)
    return {
        "epochs": budget,
        "early_stopping": {
            "monitor": "val_metric",
            "patience": max(5, budget // 3),
            "restore_best": True,
        },
    }


def _tune(task: Task, model: Model, epochs: int, objective: str) -> list[Choice]:
    """For a tree ensemble (scikit-learn), the model's own size: fewer and shallower trees, searched
    as a grid by a tune stage that keeps the cheapest setting within the budget."""
    est = model.sklearn
    if est is None:
        return []
    final = est.steps[-1][1] if hasattr(est, "steps") else est
    params = final.get_params()
    if not isinstance(params.get("n_estimators"), int):
        return []
    n = params["n_estimators"]
    space: dict[str, Any] = {
        "task.model_args.n_estimators": sorted({max(1, n // 4), max(1, n // 2), n}),
    }
    if "max_depth" in params:
        depth = params["max_depth"]
        space["task.model_args.max_depth"] = [d for d in (4, 8) if depth is None or d < depth] + [
            depth if depth is not None else None
        ]
    space = {k: v for k, v in space.items() if len(v) > 1}
    if not space:
        return []
    config = {
        "sampler": "grid",
        "pruner": "none",
        "objectives": ["metric", objective],
        "space": space,
    }
    names = " x ".join(k.rsplit(".", 1)[1] for k in space)
    return [Choice(f"grid over {names}", config, strong=True)]


def _features(task: Task, model: Model, epochs: int) -> list[Choice]:
    return [
        Choice("auto", {"select": "rfe", "n_features": "auto"}),
        Choice("half", {"select": "rfe", "n_features": 0.5}),
        Choice("quarter", {"select": "rfe", "n_features": 0.25}, strong=True),
    ]


def _distill(task: Task, model: Model, epochs: int) -> list[Choice]:
    """Students of the teacher's family: narrower, and shallower (fewer layers is what makes a small
    model faster at batch 1, where each layer's fixed cost dominates)."""
    choices = []
    for width, depth in ((0.5, None), (0.25, None), (0.5, 0.5), (0.25, 0.5)):
        student: dict[str, Any] = {"width_mult": width}
        label = f"width x{width:g}"
        if depth is not None:
            student["depth_mult"] = depth
            label += f" depth x{depth:g}"
        choices.append(
            Choice(
                label,
                {"student": student, "compare_scratch": False, "train": student_training(epochs)},
                strong=width < 0.5 and depth is not None,
            )
        )
    return choices


def _prune(task: Task, model: Model, epochs: int) -> list[Choice]:
    return [  # the stage's own check drops the kinds the model has no layers for
        Choice(
            f"{kind} {round(a * 100)}%",
            {
                "kind": kind,
                "amount": a,
                "sensitivity": {"enabled": False},
                "finetune": finetune_training(epochs),
            },
            strong=a > 0.5,
        )
        for kind in ("channel", "neuron")
        for a in (0.5, 0.3, 0.7)
    ]


def _quantize(task: Task, model: Model, epochs: int, objective: str) -> list[Choice]:
    choices = [
        Choice("int8 static", {"mode": "static"}, strong=True),
        Choice("int8 dynamic", {"mode": "dynamic"}),
        Choice(
            "int8 static percentile", {"mode": "static", "calibration": {"method": "percentile"}}
        ),
    ]
    if objective == "size":  # float16 halves the file; on CPUs without fp16 kernels it runs slower
        choices.append(Choice("fp16", {"mode": "fp16"}))
    return choices


_NOTHING_TO_PLAN = {
    "tune": "plans tune only the size of scikit-learn tree ensembles (n_estimators, max_depth); "
    "a network's width and depth are what distill's students search",
}

_BUILDERS: dict[str, Callable[..., list[Choice]]] = {
    "tune": _tune,
    "features": _features,
    "distill": _distill,
    "prune": _prune,
    "quantize": _quantize,
}


def plan_space(
    task: Task,
    baseline: Model,
    *,
    objective: str,
    allowed: list[str] | None,
    epochs: int = 20,
) -> PlanSpace:
    """The techniques that apply to ``baseline`` (the trained model) on ``task``, with their
    choices; each is checked with the stage's own checks, so a technique is planned only where a
    recipe stage of it would run. ``epochs`` (the recipe's) sizes the training planned students
    and fine-tuning get (:func:`student_training`, :func:`finetune_training`).

    Raises:
        InvalidInputError: ``allowed`` names a technique that does not apply (saying why), or no
            technique applies at all.
    """
    techniques, not_applicable = [], {}
    for kind in TECHNIQUES:
        if allowed is not None and kind not in allowed:
            continue
        builder = _BUILDERS[kind]
        choices = (
            builder(task, baseline, epochs, objective)
            if kind in ("quantize", "tune")
            else builder(task, baseline, epochs)
        )
        usable, seen = [], set()
        reason = ""
        for choice in choices:
            why = _why_not(kind, choice.config, task, baseline)
            if why is not None:
                reason = reason or why
                continue
            same = _outcome(kind, choice.config, task, baseline)
            if same not in seen:  # two settings that build the same student are one choice
                seen.add(same)
                usable.append(choice)
        if usable:
            techniques.append(TechniqueSpace(kind, usable))
        else:
            not_applicable[kind] = reason or _NOTHING_TO_PLAN.get(kind, "no setting applies")
    if allowed is not None:
        for kind in allowed:
            if kind in not_applicable:
                raise InvalidInputError(
                    f"optimize.techniques names {kind!r}, which does not apply to this model "
                    f"({_form(task)}): {not_applicable[kind]}; remove it from optimize.techniques"
                )
    if not techniques:
        why = "; ".join(f"{k}: {v}" for k, v in not_applicable.items())
        raise InvalidInputError(
            f"no technique applies to this model ({_form(task)}): {why}; give a PyTorch model "
            "(a zoo name or 'pkg.mod:function') to plan distill and prune"
        )
    return PlanSpace(techniques, not_applicable)


def _form(task: Task) -> str:
    return {
        "onnx": "an ONNX file: only ONNX-level techniques apply",
        "sklearn": "a scikit-learn model",
        "keras": "a Keras model",
        "pickle": "a pickled PyTorch module",
    }.get(task.model_kind, "a PyTorch model")


def _outcome(kind: str, config: dict[str, Any], task: Task, model: Model) -> str:
    """What a setting builds, to tell apart settings that differ only in name."""
    if kind == "distill":
        cls = get_stage_class(kind)
        student = cls(cls.Config.model_validate(config)).student(model, task)  # type: ignore[attr-defined]
        return f"{student}{json.dumps(config, sort_keys=True) if 'student' not in config else ''}"
    return json.dumps(config, sort_keys=True)


def _why_not(kind: str, config: dict[str, Any], task: Task, model: Model) -> str | None:
    """Why a stage of ``kind`` with ``config`` cannot run on ``model``, or None when it can."""
    cls = get_stage_class(kind)
    try:
        stage = cls(cls.Config.model_validate(config))
        stage.check(task)  # its message says why for the task's model form
        if model.form not in cls.forms:
            forms = " or ".join("PyTorch" if f == "torch" else f for f in cls.forms)
            return f"it works on {forms} models"
        stage.check_form(model)
        stage.check_model(model, task)
    except (InvalidInputError, StageNotApplicable) as e:
        return str(e).split("; ")[0]  # the reason; the rest is how to fix a recipe stage
    return None
