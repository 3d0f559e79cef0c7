"""The ``tune:`` recipe keys: the stage's configuration and its defaults, written once."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator

from ...training import check_train_overrides
from .._base import StageConfig
from ._space import (
    Dim,
    Target,
    parse_path,
)
from ._study import (
    grid_size,
)

DEFAULT_TRIALS = 20


def _path_key(path: str) -> str:
    parse_path(path)
    return path


class TuneConfig(StageConfig):
    """The ``tune:`` keys (docs/recipes.md). Fields are ordered so later checks can see earlier fields."""

    space: dict[Annotated[str, AfterValidator(_path_key)], Dim]
    sampler: Literal["grid", "random", "tpe", "gp", "nsga2"] = "tpe"
    objectives: list[Literal["metric", "latency", "size"]] = Field(
        default_factory=lambda: ["metric"]
    )
    trials: int | None = Field(None, ge=1, le=100_000)
    timeout: float | None = Field(
        None, gt=0, description="seconds for this run's share of the study"
    )
    pruner: Literal["none", "median", "hyperband"] = "median"
    storage: str | None = Field(
        None, description="an Optuna RDB URL; null = study.db in the run directory"
    )
    study_name: str | None = Field(
        None, min_length=1, description="default: <recipe name>-tune<index>-<hash of the search>"
    )
    train: dict[str, Any] = Field(
        default_factory=dict, description="overrides of train: for every trial (e.g. fewer epochs)"
    )

    @field_validator("space")
    @classmethod
    def _space(cls, space: dict[str, Dim]) -> dict[str, Dim]:
        if not space:
            raise ValueError(
                "must map at least one recipe path to a range or a list, e.g. {train.lr: {low: 1.0e-4, high: 1.0e-2, log: true}}"
            )
        return space

    @field_validator("sampler")
    @classmethod
    def _sampler(cls, sampler: str, info: Any) -> str:
        space = info.data.get("space") or {}
        if sampler == "grid":
            for path, dim in space.items():
                if dim.grid() is None:
                    raise ValueError(
                        f"'grid' needs every space entry to be a list or a range with a step; space[{path!r}] is a continuous range"
                    )
        return sampler

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, objectives: list[str]) -> list[str]:
        if (
            not objectives
            or objectives[0] != "metric"
            or len(objectives) > 2
            or (len(objectives) == 2 and objectives[1] == "metric")
        ):
            raise ValueError("must be [metric], [metric, latency] or [metric, size]")
        return objectives

    @field_validator("trials")
    @classmethod
    def _trials(cls, trials: int | None, info: Any) -> int | None:
        space = info.data.get("space") or {}
        if info.data.get("sampler") == "grid" and trials is not None:
            size = grid_size(space)
            if size is not None and size > trials:
                raise ValueError(
                    f"must be at least the grid's size ({size} points) for sampler 'grid'; raise trials or shrink the grid"
                )
        return trials

    @field_validator("pruner")
    @classmethod
    def _pruner(cls, pruner: str, info: Any) -> str:
        if pruner != "none" and len(info.data.get("objectives") or []) > 1:
            raise ValueError(
                "must be none with two objectives (Optuna prunes single-objective studies only)"
            )
        return pruner

    @field_validator("storage")
    @classmethod
    def _storage(cls, url: str | None) -> str | None:
        if url is None:
            return None
        from sqlalchemy.engine import make_url
        from sqlalchemy.exc import ArgumentError

        try:
            make_url(url)
        except (ArgumentError, ValueError):
            raise ValueError(
                "must be an Optuna RDB URL like sqlite:///study.db or postgresql://user:password@host/db"
            ) from None
        return url

    @field_validator("train")
    @classmethod
    def _train(cls, train: dict[str, Any]) -> dict[str, Any]:

        return check_train_overrides(train) or {}

    @property
    def targets(self) -> dict[str, Target]:
        return {path: parse_path(path) for path in self.space}

    @property
    def budget(self) -> int | None:
        """Trials the whole study runs (over every run and worker); None: bounded by ``timeout`` only."""
        if self.sampler == "grid":  # a visited grid is done: more trials would repeat points
            size = grid_size(self.space)
            return size if self.trials is None or size is None else min(self.trials, size)
        if self.trials is not None:
            return self.trials
        return None if self.timeout is not None else DEFAULT_TRIALS
