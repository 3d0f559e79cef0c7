"""Which student a distill stage trains: the teacher's family made smaller, or another model."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import nn

from ..._utils import seed_everything
from ...data import import_entry_point
from ...errors import InvalidInputError
from ...models import Model, get_model_factory
from ...task import Task


class StudentConfig(BaseModel):
    """The ``student:`` keys of a distill stage.

    ``model_args`` are merged over the teacher's when the student is of the teacher's family;
    ``width_mult``/``depth_mult`` scale the teacher's ``width``/``depth`` arguments first.
    """

    model_config = ConfigDict(extra="forbid")

    model: str | None = None
    model_args: dict[str, Any] = Field(default_factory=dict)
    width_mult: float | None = Field(None, gt=0.0)
    depth_mult: float | None = Field(None, gt=0.0)

    @model_validator(mode="after")
    def _something(self) -> StudentConfig:
        if (
            self.model is None
            and not self.model_args
            and self.width_mult is None
            and self.depth_mult is None
        ):
            raise ValueError(
                "must say how the student differs from the teacher: model_args (e.g. {width: 16}), "
                "width_mult/depth_mult, or model"
            )
        return self


@dataclass
class StudentPlan:
    """The student's factory and arguments, resolved against the teacher."""

    model: str
    model_args: dict[str, Any]

    @property
    def description(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in self.model_args.items())
        return f"{self.model}({args})"

    def build(self, task: Task, *, seed: int) -> nn.Module:
        """A fresh student; the same seed gives the same initial weights."""
        seed_everything(seed)
        try:
            return task.build_torch_model(self.model_args, model=self.model)
        except InvalidInputError as e:
            raise InvalidInputError(_as_student_error(e)) from None


def plan_student(spec: StudentConfig, teacher: Model, task: Task) -> StudentPlan:
    """Resolve ``student:`` against the teacher's factory and arguments.

    Raises:
        InvalidInputError: the teacher's family is unknown and no ``student.model`` is given, or a
            multiplier names an argument the model does not take.
    """
    family = teacher.factory
    model = spec.model or family
    if model is None or model.endswith((".onnx", ".keras", ".h5")) or model.startswith("sklearn:"):
        source = (
            "the teacher was given as a trained model, not built by a factory"
            if family is None
            else f"the teacher was loaded from {family!r}, not built by a factory"
        )
        raise InvalidInputError(
            f"distill.student: the teacher's model family is not known ({source}); "
            "give student.model as a zoo name (cnn, mlp, mobilenet) or 'pkg.mod:function'"
        )
    same_family = model == family
    if (spec.width_mult is not None or spec.depth_mult is not None) and not same_family:
        raise InvalidInputError(
            f"distill.student: width_mult/depth_mult scale the teacher's {family!r} arguments; with "
            f"student.model {model!r} give student.model_args instead"
        )
    args = dict(teacher.model_args) if same_family else {}
    defaults = _factory_defaults(model, task)
    for key, mult in (("width", spec.width_mult), ("depth", spec.depth_mult)):
        if mult is None:
            continue
        value = args.get(key, defaults.get(key))
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise InvalidInputError(
                f"distill.student.{key}_mult: model {model!r} has no numeric {key!r} argument to scale "
                f"(it takes {sorted(defaults)}); give student.model_args instead"
            )
        args[key] = _scale(value, mult)
    args.update(spec.model_args)
    return StudentPlan(model, args)


def _scale(value: float, mult: float) -> float | int:
    """An int argument (channels, layers) stays a whole number >= 1; a float multiplier scales."""
    if isinstance(value, int):
        return value if value == 0 else max(1, math.floor(value * mult + 0.5))
    return value * mult


def _factory_defaults(model: str, task: Task) -> dict[str, Any]:
    """The factory's keyword arguments and their defaults (``None`` when it has none)."""
    if ":" in model:
        factory = import_entry_point(
            model, search_dir=task.base_dir, what="distill.student.model entry point"
        )
    else:
        try:
            factory = get_model_factory(model)
        except InvalidInputError as e:
            raise InvalidInputError(_as_student_error(e)) from None
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return {}
    return {
        name: (None if p.default is inspect.Parameter.empty else p.default)
        for name, p in params.items()
        if name not in ("in_shape", "n_outputs")
        and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def _as_student_error(e: InvalidInputError) -> str:
    """Point a model-building error at the student's keys rather than the task's."""
    return (
        str(e)
        .replace("task.model_args", "distill.student.model_args", 1)
        .replace("task.model ", "distill.student.model ", 1)
    )
