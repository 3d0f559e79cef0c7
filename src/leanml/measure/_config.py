"""Measurement settings (the recipe's ``measure:`` section)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MeasureConfig(BaseModel):
    """Where and how latency is measured."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    threads: int = Field(1, ge=1, le=256)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    warmup: int = Field(10, ge=0)
    repeats: int = Field(100, ge=5)
    max_seconds: float = Field(
        20.0, gt=0, description="time budget per batch size for the stability loop"
    )
    memory: bool = Field(True, description="measure peak inference memory in a child process")
    compare_torch: bool = Field(False, description="also time PyTorch eager, for comparison")

    @field_validator("batch_sizes")
    @classmethod
    def _batch_sizes(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("must be a non-empty list of batch sizes >= 1")
        if 1 not in v:
            raise ValueError(
                "must include 1: every report shows batch-1 latency (add a larger size beside it)"
            )
        return sorted(set(v))
