"""The search space of a tune stage: recipe paths to ranges or choices, validated, sampled by Optuna.

A space entry is ``{low, high, log, step}`` (an int parameter when both bounds are ints) or a list of
choices. Keys are recipe paths of three kinds, each changing a different thing in a trial:

- ``train.<key>`` (``train.lr``, ``train.early_stopping.patience``): how the trial's model trains;
- ``task.model_args.<name>``: the model's architecture (rebuilt from the factory for each trial);
- ``stages[i].<kind>.<key>``: a later stage's setting; the trial applies that stage and is scored after it.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from ...errors import InvalidInputError
from ...training import TrainConfig
from .._base import get_stage_class

_STAGE_PATH = re.compile(r"^stages\[(\d+)\]\.([A-Za-z_][\w-]*)\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
_MODEL_PATH = re.compile(r"^task\.model_args\.([A-Za-z_]\w*)$")
_TRAIN_PATH = re.compile(r"^train\.([A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*)$")
GRID_MAX = 100_000


class Dim(BaseModel):
    """One space entry. ``high`` is declared before ``low`` so that ``low``'s check can see it."""

    model_config = ConfigDict(extra="forbid")

    high: int | float | None = None
    low: int | float | None = None
    log: bool = False
    step: int | float | None = None
    choices: list[Any] | None = None

    @model_validator(mode="before")
    @classmethod
    def _shape(cls, value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return {"choices": list(value)}
        if not isinstance(value, dict):
            raise ValueError("must be {low, high} (with optional log, step) or a list of choices")  # noqa: TRY004 (pydantic reports ValueErrors)
        if "choices" not in value and ("low" not in value or "high" not in value):
            raise ValueError("must give both low and high (or a list of choices)")
        return value

    @field_validator("low")
    @classmethod
    def _low(cls, low: float | None, info: Any) -> float | None:
        high = info.data.get("high")
        if low is not None and high is not None and not low < high:
            raise ValueError(
                f"must be < high ({high}); an empty or inverted range has nothing to search"
            )
        return low

    @field_validator("choices")
    @classmethod
    def _choices(cls, choices: list[Any] | None) -> list[Any] | None:
        if choices is None:
            return None
        if len(choices) < 2:
            raise ValueError(
                "must list at least two values to choose from (a fixed value belongs in the recipe)"
            )
        if len({repr(c) for c in choices}) != len(choices):
            raise ValueError("must not repeat a value")
        if any(not isinstance(c, (bool, int, float, str)) and c is not None for c in choices):
            raise ValueError("must hold numbers, strings, booleans or null")
        return choices

    @field_validator("step")
    @classmethod
    def _step(cls, step: float | None) -> float | None:
        if step is not None and not step > 0:
            raise ValueError("must be > 0")
        return step

    @model_validator(mode="after")
    def _consistent(self) -> Dim:
        if self.choices is not None:
            if self.low is not None or self.high is not None or self.step is not None or self.log:
                raise ValueError(
                    "must be either a list of choices or {low, high, log, step}, not both"
                )
            return self
        assert self.low is not None and self.high is not None
        if self.log and self.low <= 0:
            raise ValueError("must have low > 0 with log: true")
        if self.log and self.step is not None:
            raise ValueError(
                "must not combine log: true with a step (Optuna samples one or the other)"
            )
        if self.is_int and self.step is not None and not float(self.step).is_integer():
            raise ValueError("must have an integer step for integer bounds")
        return self

    @model_serializer
    def _dump(self) -> Any:
        """As the recipe writes it: a list of choices, or the range's keys that are set."""
        if self.choices is not None:
            return list(self.choices)
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.log:
            out["log"] = True
        if self.step is not None:
            out["step"] = self.step
        return out

    @property
    def is_int(self) -> bool:
        return (
            isinstance(self.low, int)
            and isinstance(self.high, int)
            and not isinstance(self.low, bool)
        )

    def grid(self) -> list[Any] | None:
        """Every value the grid sampler visits, or None when the entry is a continuous range."""
        if self.choices is not None:
            return list(self.choices)
        assert self.low is not None and self.high is not None
        if self.is_int:
            return list(range(int(self.low), int(self.high) + 1, int(self.step or 1)))
        if self.step is None:
            return None
        n = math.floor((self.high - self.low) / self.step + 1e-9) + 1
        if n > GRID_MAX:
            return list(range(GRID_MAX + 1))  # only its size matters: too large for any budget
        return [round(self.low + i * self.step, 12) for i in range(n)]

    def bounds(self) -> list[Any]:
        """The values to check against the target's rules: the choices, or both bounds."""
        return list(self.choices) if self.choices is not None else [self.low, self.high]

    def suggest(self, trial: Any, name: str) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(name, self.choices)
        assert self.low is not None and self.high is not None
        if self.is_int:
            return trial.suggest_int(
                name, int(self.low), int(self.high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(
            name, float(self.low), float(self.high), step=self.step, log=self.log
        )


@dataclass(frozen=True)
class Target:
    """What a space path changes: ``train``, ``model`` or a later ``stage`` (with its index and kind)."""

    path: str
    where: str
    key: str
    stage_index: int | None = None
    stage_kind: str | None = None


def parse_path(path: str) -> Target:
    """Classify a space key; raise ValueError (with a "must ..." rule) for a path that cannot be tuned."""
    if m := _TRAIN_PATH.match(path):
        key = m.group(1)
        _check_model_key(TrainConfig, key.split("."), "train")
        return Target(path, "train", key)
    if m := _MODEL_PATH.match(path):
        return Target(path, "model", m.group(1))
    if m := _STAGE_PATH.match(path):
        index, kind, key = int(m.group(1)), m.group(2), m.group(3)
        try:
            cls = get_stage_class(kind)
        except InvalidInputError as e:
            raise ValueError(f"must name a known stage kind: {e}") from None
        _check_model_key(cls.Config, key.split("."), f"the {kind} stage")
        return Target(path, "stage", key, stage_index=index, stage_kind=kind)
    raise ValueError(
        "must be a recipe path to tune: train.<key> (e.g. train.lr), task.model_args.<name> "
        "(e.g. task.model_args.width) or stages[<index>].<kind>.<key> (e.g. stages[1].prune.amount)"
    )


def _check_model_key(model: type[BaseModel], parts: list[str], what: str) -> None:
    fields = model.model_fields
    head = parts[0]
    if head not in fields:
        raise ValueError(
            f"must name a setting of {what}; {head!r} is not one (settings: {', '.join(sorted(fields))})"
        )
    if len(parts) > 1:
        sub = fields[head].annotation
        if not (isinstance(sub, type) and issubclass(sub, BaseModel)):
            raise ValueError(f"must name a setting of {what}; {head!r} has no sub-settings")
        _check_model_key(sub, parts[1:], f"{what}'s {head}")


def check_train_values(path: str, key: str, dim: Dim) -> None:
    """Each choice (or bound) of a ``train.*`` entry must be a valid value of that setting."""
    base = TrainConfig()
    for value in dim.bounds():
        try:
            base.merged(nest(key, value))
        except ValidationError as e:
            rule = e.errors()[0].get("msg", "is invalid").replace("Input should be", "must be")
            raise ValueError(f"has {value!r}, which train.{key} rejects: {rule}") from None


def nest(dotted: str, value: Any) -> dict[str, Any]:
    """``nest("a.b", 1) == {"a": {"b": 1}}``."""
    head, _, rest = dotted.partition(".")
    return {head: nest(rest, value) if rest else value}


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in update.items():
        out[k] = (
            deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def check_recipe_paths(targets: list[Target], recipe: dict[str, Any], stage_index: int) -> None:
    """Paths to later stages must point at a later, enabled stage of that kind in the recipe."""
    stages = recipe.get("stages") or []
    for t in targets:
        if t.where != "stage":
            continue
        assert t.stage_index is not None
        where = f"tune.space[{t.path!r}]"
        if not stages:
            raise InvalidInputError(
                f"{where} tunes a later stage, but there is no recipe here (leanml.tune runs one stage); "
                "run it in a recipe with that stage after the tune stage"
            )
        if t.stage_index >= len(stages):
            raise InvalidInputError(
                f"{where} names stages[{t.stage_index}], but the recipe has {len(stages)} stages "
                f"(indices 0..{len(stages) - 1}); point it at a stage after this one"
            )
        if t.stage_index <= stage_index:
            raise InvalidInputError(
                f"{where} names stages[{t.stage_index}], which runs before or is this tune stage "
                f"(stages[{stage_index}]); only later stages can be tuned"
            )
        entry = stages[t.stage_index]
        if t.stage_kind not in entry:
            kind = next((k for k in entry if k not in ("name", "enabled")), "?")
            raise InvalidInputError(
                f"{where} names a {t.stage_kind} stage, but stages[{t.stage_index}] is a {kind} stage; fix the index or kind"
            )
        if entry.get("enabled", True) is False:
            raise InvalidInputError(
                f"{where} tunes stages[{t.stage_index}], which is disabled; enable it or drop the path"
            )


def check_model_args(targets: list[Target], factory: Any, what: str) -> None:
    """Model paths must be arguments the model factory (or scikit-learn estimator) takes."""
    import inspect

    names: set[str]
    if hasattr(factory, "get_params"):
        names = set(factory.get_params())
        takes_any = False
    else:
        params = inspect.signature(factory).parameters.values()
        takes_any = any(p.kind is p.VAR_KEYWORD for p in params)
        names = {p.name for p in params if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)} - {
            "in_shape",
            "n_outputs",
        }
    for t in targets:
        if t.where == "model" and not takes_any and t.key not in names:
            raise InvalidInputError(
                f"tune.space[{t.path!r}]: {what} has no argument {t.key!r}; it takes {', '.join(sorted(names)) or 'none'}"
            )
