"""The recipe's ``task.splits`` keys: the fractions of data held out, when it has no predefined
split; their defaults, written once."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class Splits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    val: float = Field(0.15, gt=0.0, lt=1.0)
    test: float = Field(0.2, gt=0.0, lt=1.0)

    @model_validator(mode="after")
    def _sum(self) -> Splits:
        if self.val + self.test >= 0.9:
            raise ValueError(
                f"val + test must be below 0.9 to leave data to train on; got {self.val + self.test:.2f}"
            )
        return self

    @classmethod
    def given(cls, val: float | None = None, test: float | None = None) -> Splits:
        """The fractions given (already validated, as a recipe's), the defaults for the others."""
        return cls.model_construct(
            **{k: v for k, v in (("val", val), ("test", test)) if v is not None}
        )
