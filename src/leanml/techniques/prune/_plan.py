"""What ``leanml optimize`` plans with prune: structured pruning only (channels of a convolutional
network, neurons of a dense one; the stage's own check drops the kind the model has no layers for).

Unstructured and N:M pruning are never planned: ONNX Runtime's CPU kernels multiply zeros at full
cost, so the deployed model is neither faster nor smaller on disk.
"""

from __future__ import annotations

from typing import Any

from ...models import Model
from ...search import Choice
from ...task import Task


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


def choices(task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
    return [
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
