"""Training: the trainer every stage that fine-tunes shares, with early stopping."""

from __future__ import annotations

from ._config import EarlyStoppingConfig, TrainConfig, check_train_overrides
from ._lr_find import LrFindResult, find_lr
from ._run import LossFn, forward, task_loss, to_tensor
from ._trainer import (
    EpochCallback,
    RefitResult,
    TrainResult,
    concat_splits,
    evaluate,
    fit,
    predict,
)

__all__ = [
    "EarlyStoppingConfig",
    "EpochCallback",
    "LossFn",
    "LrFindResult",
    "RefitResult",
    "TrainConfig",
    "TrainResult",
    "check_train_overrides",
    "concat_splits",
    "evaluate",
    "find_lr",
    "fit",
    "forward",
    "predict",
    "task_loss",
    "to_tensor",
]
