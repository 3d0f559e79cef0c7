"""Measurement settings (the recipe's ``measure:`` section)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class MeasureConfig(BaseModel):
    """Where and how latency is measured."""

    model_config = ConfigDict(extra="forbid")

    runtime: Literal["onnxruntime", "torch"] = "onnxruntime"
    threads: int = Field(1, ge=1, le=256)
    batch_sizes: list[int] = Field(default_factory=lambda: [1, 64])
    sequence_batch_sizes: list[int] = Field(
        default_factory=lambda: [1, 8],
        description=(
            "batch sizes for models that take token ids (an integer input with a sequence axis) "
            "when batch_sizes is not given: a batch of 64 sequences takes seconds a call"
        ),
    )
    warmup: int = Field(10, ge=0)
    repeats: int = Field(100, ge=5)
    max_seconds: float = Field(
        5.0,
        gt=0,
        description=(
            "time budget per model and batch size, warm-up included: timing stops when the median "
            "is stable or the budget is spent (the record's ``stopped`` says which)"
        ),
    )
    memory: bool = Field(True, description="measure peak inference memory in a child process")
    compare_torch: bool = Field(False, description="also time PyTorch eager, for comparison")

    @field_validator("batch_sizes", "sequence_batch_sizes")
    @classmethod
    def _batch_sizes(cls, v: list[int]) -> list[int]:
        if not v or any(b < 1 for b in v):
            raise ValueError("must be a non-empty list of batch sizes >= 1")
        if 1 not in v:
            raise ValueError(
                "must include 1: every report shows batch-1 latency (add a larger size beside it)"
            )
        return sorted(set(v))

    def batch_sizes_for(self, inputs: Sequence[Any]) -> list[int]:
        """The batch sizes to time a model with these ONNX Runtime inputs (``session.get_inputs()``)
        at: ``batch_sizes`` when given, else ``sequence_batch_sizes`` for a model that takes token
        ids, else the default ``batch_sizes``."""
        if "batch_sizes" not in self.model_fields_set and takes_token_ids(inputs):
            return self.sequence_batch_sizes
        return self.batch_sizes


def takes_token_ids(inputs: Sequence[Any]) -> bool:
    """Whether a model takes token ids: an integer input of rank 2 or more (batch, sequence, ...)."""
    return any(
        i.type in ("tensor(int64)", "tensor(int32)") and len(i.shape or ()) >= 2 for i in inputs
    )
