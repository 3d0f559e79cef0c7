"""The ``optimize:`` recipe keys: the plan search's configuration and its defaults, written once."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OptimizeConfig(BaseModel):
    """The ``optimize:`` keys: the search behind ``stages: auto`` and ``leanml optimize``.

    ``techniques`` names registered stage kinds; the recipe checks them against the kinds the
    registry plans (this layer does not know the registry).
    """

    model_config = ConfigDict(extra="forbid")

    objective: Literal["latency", "size"] = Field(
        "latency",
        description="latency makes the model faster at batch_size, size makes its file smaller",
    )
    trials: int = Field(40, description="the study's budget, over every run of it")
    timeout: float | None = Field(None, gt=0, description="seconds for this run's search")
    techniques: list[str] | None = Field(
        None, description="the techniques plans may use; null: every one that applies"
    )
    batch_size: int = Field(1, ge=1, le=4096, description="the batch size latency is judged at")
    patience: int | None = Field(
        None, ge=1, description="stop after this many trials without a better plan; null: auto"
    )
    storage: str | None = Field(
        None, description="an Optuna RDB URL; null: study.db in the run directory"
    )

    @field_validator("trials")
    @classmethod
    def _trials(cls, trials: int) -> int:
        if trials < 1:
            raise ValueError(f"must be at least 1: a search of {trials} trials tries no plan")
        if trials > 10_000:
            raise ValueError("must be at most 10000")
        return trials

    @field_validator("techniques")
    @classmethod
    def _techniques(cls, techniques: list[str] | None) -> list[str] | None:
        if techniques is None:
            return None
        if not techniques:
            raise ValueError(
                "must name at least one technique, or be null for every one that applies"
            )
        return list(dict.fromkeys(techniques))
