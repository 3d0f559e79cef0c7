"""What ``leanml optimize`` plans with features: recursive feature elimination to the count the
stage chooses itself (``n_features: auto``), to half and to a quarter of the columns (the stage's
own checks keep it to tabular data)."""

from __future__ import annotations

from ...models import Model
from ...search import Choice
from ...task import Task


def choices(task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
    return [
        Choice("auto", {"select": "rfe", "n_features": "auto"}),
        Choice("half", {"select": "rfe", "n_features": 0.5}),
        Choice("quarter", {"select": "rfe", "n_features": 0.25}, strong=True),
    ]
