"""What ``leanml optimize`` plans with distill: students of the teacher's family, narrower and
shallower (fewer layers is what makes a small model faster at batch 1, where each layer's fixed
cost dominates)."""

from __future__ import annotations

import json
from typing import Any

from ...models import Model
from ...search import Choice
from ...task import Task
from ._config import DistillConfig
from ._student import plan_student


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


def choices(task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
    out = []
    for width, depth in ((0.5, None), (0.25, None), (0.5, 0.5), (0.25, 0.5)):
        student: dict[str, Any] = {"width_mult": width}
        label = f"width x{width:g}"
        if depth is not None:
            student["depth_mult"] = depth
            label += f" depth x{depth:g}"
        out.append(
            Choice(
                label,
                {"student": student, "compare_scratch": False, "train": student_training(epochs)},
                strong=width < 0.5 and depth is not None,
            )
        )
    return out


def outcome(config: dict[str, Any], task: Task, model: Model) -> str:
    """The student a setting builds (``cnn(width=16, depth=1)``): two multipliers that round to the
    same student are one choice."""
    student = plan_student(DistillConfig.model_validate(config).student, model, task).description
    return f"{student}{json.dumps(config, sort_keys=True) if 'student' not in config else ''}"
