"""The ``prune:`` recipe keys: the stage's configuration and its defaults, written once."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from ...training import check_train_overrides
from .._base import StageConfig

Kind = Literal["unstructured", "n_m", "neuron", "channel", "layer"]


class ScheduleConfig(StageConfig):
    """``steps: 1`` prunes at once; ``steps > 1`` prunes gradually along a polynomial decay curve."""

    steps: int = Field(1, ge=1, le=100)
    power: float = Field(3.0, gt=0.0, le=10.0)


class SensitivityConfig(StageConfig):
    """The per-layer sensitivity analysis (always run for ``scope: sensitivity``)."""

    enabled: bool = True
    ratios: list[float] = Field(
        default_factory=lambda: [0.25, 0.5, 0.75], min_length=1, max_length=20
    )
    max_layers: int = Field(64, ge=1, le=10_000)

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: list[float]) -> list[float]:
        if any(not 0.0 < r < 1.0 for r in v):
            raise ValueError(f"must all be in (0, 1); got {v}")
        return sorted(set(v))


class PruneConfig(StageConfig):
    """The ``prune:`` keys of a recipe (see docs/prune.md)."""

    kind: Kind = "channel"
    amount: float = 0.5
    importance: Literal["l1", "l2", "taylor", "random"] = "l2"
    scope: Literal["local", "global", "sensitivity"] = "local"
    n_m: tuple[int, int] = (2, 4)
    protect: list[Literal["first", "last"]] = Field(default_factory=list)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    finetune: dict[str, Any] | None = Field(default_factory=lambda: {"epochs": 5})
    sensitivity: SensitivityConfig = Field(default_factory=SensitivityConfig)
    importance_batches: int = Field(4, ge=1, le=1000)
    max_ratio: float = Field(0.9, gt=0.0, lt=1.0)
    round_to: int | None = Field(8, ge=1, le=256)

    @field_validator("amount")
    @classmethod
    def _amount(cls, v: float) -> float:
        if not 0.0 < v < 1.0:
            raise ValueError("must be in (0, 1)")
        return v

    @field_validator("n_m")
    @classmethod
    def _n_m(cls, v: tuple[int, int]) -> tuple[int, int]:
        n, m = v
        if not 1 <= n < m <= 64:
            raise ValueError("must be [N, M] with 1 <= N < M <= 64, e.g. [2, 4]")
        return v

    @field_validator("finetune", mode="before")
    @classmethod
    def _finetune(cls, v: Any) -> dict[str, Any] | None:
        """``false``/``null``: no fine-tuning; ``true``: the default; else train overrides."""
        if v is False or v is None:
            return None
        if v is True:
            return cls.model_fields["finetune"].get_default(call_default_factory=True)
        return check_train_overrides(v)

    @field_validator("sensitivity", mode="before")
    @classmethod
    def _sensitivity(cls, v: Any) -> Any:
        """``sensitivity: false`` is short for ``sensitivity: {enabled: false}``."""
        return {"enabled": v} if isinstance(v, bool) else v
