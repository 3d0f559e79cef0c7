"""The space of plans, from the registry: every stage with a ``plan_order``, in that order, with the
settings it gives for the model (``Stage.plan_choices``), each checked by the stage's own checks, so
a technique is planned only where a recipe stage of it would run.

A new technique is planned by registering it with a ``plan_order`` and ``plan_choices``: no list of
techniques is kept here.
"""

from __future__ import annotations

from typing import Any

from ..errors import InvalidInputError, StageNotApplicable
from ..models import Model
from ..search import PlanSpace, TechniqueSpace
from ..task import Task
from ._base import get_stage_class, stage_kinds


def planned_kinds() -> list[str]:
    """The stage kinds plans may use, in plan order (``optimize.techniques`` names some of them)."""
    classes = [get_stage_class(k) for k in stage_kinds()]
    planned = [c for c in classes if c.plan_order is not None]
    return [c.kind for c in sorted(planned, key=lambda c: (c.plan_order, c.kind))]


def plan_space(
    task: Task,
    baseline: Model,
    *,
    objective: str,
    allowed: list[str] | None,
    epochs: int,
) -> PlanSpace:
    """The techniques that apply to ``baseline`` (the trained model) on ``task``, with their choices.

    Args:
        objective: ``latency`` or ``size`` (a technique may plan settings for one only).
        allowed: the kinds plans may use (``optimize.techniques``); None: every planned kind.
        epochs: the recipe's ``train.epochs``, which sizes the training settings do.

    Raises:
        InvalidInputError: ``allowed`` names a technique that does not apply (saying why), or no
            technique applies at all.
    """
    techniques, not_applicable = [], {}
    for kind in planned_kinds():
        if allowed is not None and kind not in allowed:
            continue
        cls = get_stage_class(kind)
        usable, seen = [], set()
        reason = ""
        for choice in cls.plan_choices(task, baseline, epochs=epochs, objective=objective):
            why = _why_not(kind, choice.config, task, baseline)
            if why is not None:
                reason = reason or why
                continue
            same = cls.plan_outcome(choice.config, task, baseline)
            if same not in seen:  # two settings that build the same model are one choice
                seen.add(same)
                usable.append(choice)
        if usable:
            techniques.append(TechniqueSpace(kind, usable))
        else:
            not_applicable[kind] = reason or cls.nothing_to_plan
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
