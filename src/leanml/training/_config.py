"""Training settings (the recipe's ``train:`` section and every stage's fine-tuning overrides)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class EarlyStoppingConfig(BaseModel):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    ``monitor: val_metric`` (the default) watches the task metric, what the user cares about. An
    accuracy on a small validation split moves in steps of one sample, so with ``restore_best`` the
    kept weights are those of the last epoch within one sample of the best (later epochs are further
    down the schedule); the validation loss would stop too early on a network that keeps improving
    its accuracy while growing more confident. ``patience: auto`` is a third of the epochs, at least 10: with a schedule that anneals the
    learning rate, the last epochs are often the best, and a fixed small patience stops before them.
    """

    model_config = ConfigDict(extra="forbid")

    monitor: Literal["val_loss", "val_metric"] = "val_metric"
    patience: int | Literal["auto"] = "auto"
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True
    enabled: bool = True

    @field_validator("patience", mode="before")
    @classmethod
    def _positive(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError("must be 'auto' or an integer >= 1")
        return v

    def patience_for(self, epochs: int) -> int:
        """The patience in epochs for a run of ``epochs`` epochs."""
        if self.patience == "auto":
            return max(10, math.ceil(epochs / 3))
        return int(self.patience)


class TrainConfig(BaseModel):
    """How a model is trained: the baseline, and any stage that fine-tunes.

    ``lr: auto`` (the default) runs a learning-rate range test before training (see
    ``leanml.training.find_lr``); a number turns it off. ``warmup`` is the fraction of the steps over
    which the learning rate ramps up linearly from zero. The schedule is applied per step; a cosine
    ends at ``lr_floor`` times the peak rate. ``average: ema`` validates, keeps and returns an
    exponential moving average of the weights (and BatchNorm statistics) over about ``ema_horizon``
    epochs of steps.
    """

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float | Literal["auto"] = "auto"
    warmup: float = Field(0.0, ge=0.0, lt=1.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    lr_floor: float = Field(0.0, ge=0.0, lt=1.0)
    average: Literal["none", "ema"] = "none"
    ema_horizon: float = Field(1.0, gt=0.0, le=1000.0)
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    refit: bool | Literal["auto"] = "auto"
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)

    @field_validator("lr", mode="before")
    @classmethod
    def _lr(cls, v: Any) -> Any:
        if v == "auto":
            return v
        try:
            lr = float(v)
        except (TypeError, ValueError):
            lr = math.nan
        if isinstance(v, bool) or not 0.0 < lr <= 10.0:
            raise ValueError("must be a valid number in (0, 10], or auto")
        return lr

    @field_validator("refit", mode="before")
    @classmethod
    def _refit(cls, v: Any) -> Any:
        if v == "auto" or isinstance(v, bool):
            return v
        raise ValueError("must be auto, true or false")

    def merged(self, overrides: dict[str, Any] | None) -> TrainConfig:
        """This config with ``overrides`` (a partial ``train:`` mapping) applied and validated."""
        if not overrides:
            return self
        data = self.model_dump()
        for key, value in overrides.items():
            if key == "early_stopping" and isinstance(value, dict):
                data["early_stopping"] = {**data["early_stopping"], **value}
            else:
                data[key] = value
        return TrainConfig.model_validate(data)


def check_train_overrides(overrides: dict[str, Any] | None) -> dict[str, Any] | None:
    """Validate a partial ``train:`` mapping (a stage's ``train:`` or ``finetune:`` key) as a pydantic
    field validator: a ValueError naming the bad key, so the recipe error names the whole path."""
    if overrides:
        if overrides.get("refit") is True:
            raise ValueError(
                "refit: a stage's training cannot refit on train+val, since its model is judged on "
                "the validation split; refit applies to the baseline (train.refit); remove it"
            )
        try:
            TrainConfig().merged(overrides)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"must hold valid train: keys; {key}: {err['msg']}") from None
    return overrides
