"""Training settings (the recipe's ``train:`` section and every stage's fine-tuning overrides)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError


class EarlyStoppingConfig(BaseModel):
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs."""

    model_config = ConfigDict(extra="forbid")

    monitor: Literal["val_loss", "val_metric"] = "val_loss"
    patience: int = Field(5, ge=1)
    min_delta: float = Field(0.0, ge=0.0)
    restore_best: bool = True
    enabled: bool = True


class TrainConfig(BaseModel):
    """How a model is trained: the baseline, and any stage that fine-tunes."""

    model_config = ConfigDict(extra="forbid")

    epochs: int = Field(30, ge=1, le=100_000)
    batch_size: int = Field(64, ge=1)
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["none", "cosine", "step"] = "cosine"
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)

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
        try:
            TrainConfig().merged(overrides)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(p) for p in err["loc"])
            raise ValueError(f"must hold valid train: keys; {key}: {err['msg']}") from None
    return overrides
