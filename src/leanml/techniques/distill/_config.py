"""The ``distill:`` recipe keys: the stage's configuration and its defaults, written once."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator

from ...training import (
    check_train_overrides,
)
from .._base import StageConfig
from ._student import StudentConfig

UNLABELED_PREFIXES = ("unlabeled:", "unlabelled:")


class AugmentConfig(BaseModel):
    """Ways to widen the transfer set; with any of them on, the teacher runs on every batch."""

    model_config = ConfigDict(extra="forbid")

    noise: float = Field(
        0.0, ge=0.0, le=10.0, description="Gaussian input noise, in standard deviations of the data"
    )
    mixup: float = Field(
        0.0, ge=0.0, le=100.0, description="mixup Beta(a, a) parameter; 0 turns mixup off"
    )

    @property
    def enabled(self) -> bool:
        return self.noise > 0 or self.mixup > 0


class DistillConfig(StageConfig):
    """The ``distill:`` keys of a recipe (docs/recipes.md)."""

    student: StudentConfig = Field(default_factory=lambda: StudentConfig(width_mult=0.5))
    temperature: float = Field(4.0, gt=0.0, le=1000.0)
    alpha: float = Field(0.7, ge=0.0, le=1.0)
    features: list[tuple[str, str]] = Field(default_factory=list)
    feature_weight: float = Field(1.0, ge=0.0)
    # ``leanml.distill(..., transfer=..., student_train=...)``: the function's ``data`` and ``train``
    # are the task's data and the teacher's training, so the stage's keys take these names there.
    data: str = Field("train", validation_alias=AliasChoices("data", "transfer"))
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    train: dict[str, Any] = Field(
        default_factory=dict, validation_alias=AliasChoices("train", "student_train")
    )
    compare_scratch: bool = True

    @field_validator("data")
    @classmethod
    def _data(cls, v: str) -> str:
        if v != "train" and not (
            v.startswith(UNLABELED_PREFIXES) and len(v.split(":", 1)[1].strip()) > 0
        ):
            raise ValueError("must be 'train' or 'unlabeled:PATH' (an NPZ file holding an array x)")
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_train_overrides(v) or {}
