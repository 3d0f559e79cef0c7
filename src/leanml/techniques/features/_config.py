"""The ``features:`` recipe keys: the stage's configuration and its defaults, written once."""

from __future__ import annotations

from typing import Any, Literal, get_args

from pydantic import Field, field_validator, model_validator

from ...training import check_train_overrides
from .._base import StageConfig
from ._select import COUNTED

_SHOW = 12  # feature names listed in a note before "and N more"

EngineerKind = Literal["log", "quantile", "poly", "bins"]
ENGINEER_KINDS: tuple[str, ...] = get_args(EngineerKind)


class FeaturesConfig(StageConfig):
    """The ``features:`` keys of a recipe (docs/recipes.md)."""

    select: Literal[
        "none", "variance", "correlation", "mutual_info", "importance", "rfe", "rfecv"
    ] = "rfe"
    n_features: int | float | Literal["auto"] | None = None
    estimator: Literal["auto", "model", "linear", "gbm", "permutation"] = "auto"
    variance_threshold: float = Field(0.0, ge=0.0)
    correlation_threshold: float = Field(0.95, gt=0.0, le=1.0)
    step: int | float = 1
    cv: int = Field(3, ge=2, le=10)
    transform: Literal["none", "standardize", "pca"] = "none"
    n_components: int | None = Field(None, ge=1)
    pca_variance: float = Field(0.95, gt=0.0, le=1.0)
    curve_points: int = Field(8, ge=0, le=30)
    engineer: list[EngineerKind] | Literal["auto"] = Field(default_factory=list)
    poly_top_k: int = Field(4, ge=1, le=10)
    n_bins: int = Field(5, ge=2, le=20)
    skew_threshold: float = Field(1.0, gt=0.0)
    train: dict[str, Any] = Field(default_factory=dict)

    @field_validator("n_features")
    @classmethod
    def _count(cls, v: float | str | None) -> int | float | str | None:
        if v is None or v == "auto":
            return v
        if isinstance(v, bool):
            raise ValueError(f"must be a number of columns or a fraction in (0, 1]; got {v!r}")  # noqa: TRY004 (pydantic reports ValueError)
        if isinstance(v, int) and v < 1:
            raise ValueError("must be >= 1 (a number of columns) or a fraction in (0, 1]")
        if isinstance(v, float) and not 0.0 < v <= 1.0:
            raise ValueError(
                "must be a fraction in (0, 1], or a whole number of columns such as 10"
            )
        return v

    @field_validator("engineer", mode="before")
    @classmethod
    def _engineer(cls, v: Any) -> Any:
        if v == "auto":
            return v
        if v is None or v == "none":
            return []
        items = [v] if isinstance(v, str) else v
        valid = ", ".join(ENGINEER_KINDS)
        if not isinstance(items, list) or any(t not in ENGINEER_KINDS for t in items):
            bad = [t for t in items if t not in ENGINEER_KINDS] if isinstance(items, list) else v
            raise ValueError(
                f"unknown transform(s) {bad!r}: give a list of {valid}, or auto (chosen on val)"
            )
        return list(dict.fromkeys(items))

    @field_validator("step")
    @classmethod
    def _step(cls, v: float) -> int | float:
        if (
            isinstance(v, bool)
            or (isinstance(v, int) and v < 1)
            or (isinstance(v, float) and not 0.0 < v < 1.0)
        ):
            raise ValueError(
                "must be a whole number of columns >= 1, or a fraction in (0, 1), removed per round"
            )
        return v

    @field_validator("train")
    @classmethod
    def _train(cls, v: dict[str, Any]) -> dict[str, Any]:
        return check_train_overrides(v) or {}

    @model_validator(mode="after")
    def _applies(self) -> FeaturesConfig:
        if self.n_features is not None and self.select not in COUNTED:
            raise ValueError(
                f"n_features does not apply to select {self.select!r} (it keeps what passes its threshold); "
                f"use select {' | '.join(COUNTED)}, or drop n_features"
            )
        if self.estimator == "permutation" and self.select not in ("importance", "rfe"):
            raise ValueError(
                f"estimator 'permutation' ranks columns for select importance or rfe; select is "
                f"{self.select!r}: use estimator auto, linear or gbm"
            )
        if self.n_components is not None and self.transform != "pca":
            raise ValueError(
                f"n_components applies to transform 'pca'; transform is {self.transform!r}"
            )
        return self
