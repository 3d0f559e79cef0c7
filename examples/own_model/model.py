"""Your model: any function that returns a torch.nn.Module. leanml calls it with the recipe's
``task.model_args`` (and passes ``in_shape``/``n_outputs`` only if the function takes them)."""

from __future__ import annotations

from torch import nn


def build(channels: int = 32, hidden: int = 1024, classes: int = 3) -> nn.Module:
    """A 1-D conv net for signals shaped (1, 128): two small conv blocks, then a wide classifier
    (two ``hidden``-unit layers). The classifier's matrix products are most of its work, which is
    what int8 speeds up on a CPU: ``leanml quantize --mode dynamic`` makes it faster, not only
    smaller."""
    return nn.Sequential(
        nn.Conv1d(1, channels, 7, padding=3),
        nn.BatchNorm1d(channels),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Conv1d(channels, channels * 2, 5, padding=2),
        nn.BatchNorm1d(channels * 2),
        nn.ReLU(),
        nn.MaxPool1d(4),
        nn.Flatten(),
        nn.Linear(channels * 2 * 8, hidden),
        nn.ReLU(),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        nn.Linear(hidden, classes),
    )
