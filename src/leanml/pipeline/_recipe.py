"""Recipes: the YAML a user writes, validated with pydantic (format in docs/recipes.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .._utils import DEFAULT_SEED
from ..constraints import Constraints
from ..data import Splits, require_file
from ..errors import InvalidInputError
from ..measure import MeasureConfig
from ..search import OptimizeConfig
from ..techniques import Stage, StageConfig, get_stage_class, planned_kinds
from ..training import TrainConfig
from ._validation import FormattedError, format_validation_error, validate_section


class TaskConfig(BaseModel):
    """What is optimized: data, model, metric."""

    model_config = ConfigDict(extra="forbid")

    data: str
    target: str | None = None
    model: str = "auto"
    model_args: dict[str, Any] = Field(default_factory=dict)
    metric: Literal["accuracy", "f1", "mse", "mae", "r2", "agreement", "cosine"] = "accuracy"
    splits: Splits = Field(default_factory=Splits)
    one_hot: bool = False
    weights: str | None = Field(
        None,
        description="pretrained weights (.safetensors, or a state-dict .pt loaded with weights_only=True) for the model; the baseline is then not retrained",
    )


class ExportConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    formats: list[Literal["onnx", "safetensors"]] = Field(
        default_factory=lambda: ["onnx", "safetensors"]
    )


class ReportConfig(BaseModel):
    """The ``report:`` keys: what the report adds beside the stages."""

    model_config = ConfigDict(extra="forbid")

    tree_reference: bool = Field(
        True,
        description=(
            "for a tabular task with a PyTorch baseline: also fit HistGradientBoosting (scikit-learn "
            "defaults) on the training split and report its test metric and batch-1 latency beside "
            "the baseline's (seconds on tables of thousands of rows)"
        ),
    )


class StageSpec(BaseModel):
    """One entry of ``stages``: the kind, its validated config, an optional name, and ``enabled``."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    kind: str
    name: str
    enabled: bool = True
    config: StageConfig

    def build(self) -> Stage:
        return get_stage_class(self.kind)(self.config)

    def dump(self) -> dict[str, Any]:
        return {
            self.kind: self.config.model_dump(mode="json"),
            "name": self.name,
            "enabled": self.enabled,
        }


class Recipe(BaseModel):
    """A whole recipe. Build it with :func:`load_recipe` (from YAML or a dict)."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    name: str = "run"
    seed: int = Field(DEFAULT_SEED, ge=0, lt=2**32, description="seeds splits, training and stages")
    output: str | None = None
    task: TaskConfig
    train: TrainConfig = Field(default_factory=TrainConfig)
    measure: MeasureConfig = Field(default_factory=MeasureConfig)
    constraints: Constraints = Field(default_factory=Constraints)
    stages: list[StageSpec] = Field(default_factory=list)
    optimize: OptimizeConfig | None = None
    stages_auto: bool = Field(
        False, exclude=True, description="set by 'stages: auto': leanml plans the stages"
    )
    export: ExportConfig = Field(default_factory=ExportConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    base_dir: Path = Field(default_factory=Path.cwd, exclude=True)
    trust_pickle: bool = Field(
        False, exclude=True, description="set by --trust-pickle: allow pickled model files"
    )

    def with_stage_keys(
        self, kind: str, keys: dict[str, Any], *, flags: dict[str, str] | None = None
    ) -> Recipe:
        """This recipe with ``keys`` set on every stage of ``kind`` (validated like the recipe;
        ``flags``: the command-line flags that gave them, for errors)."""
        stages = []
        for i, spec in enumerate(self.stages):
            if spec.kind == kind:
                raw = {**spec.config.model_dump(), **keys}
                config = validate_section(
                    type(spec.config), raw, f"stages[{i}].{kind}", flags=flags
                )
                spec = spec.model_copy(update={"config": config})
            stages.append(spec)
        return self.model_copy(update={"stages": stages})

    @model_validator(mode="before")
    @classmethod
    def _auto(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("stages") == "auto":
            data = {**data, "stages": [], "stages_auto": True}
        return data

    @model_validator(mode="after")
    def _one_plan(self) -> Recipe:
        if self.optimize is not None and self.stages:
            raise ValueError(
                "stages lists stages and optimize: asks leanml to plan them; give 'stages: auto' "
                "(or no stages) with optimize:, or drop optimize: to run the stages as written"
            )
        return self

    @model_validator(mode="after")
    def _planned_techniques(self) -> Recipe:
        """``optimize.techniques`` names kinds the registry plans (``Stage.plan_order``)."""
        planned = planned_kinds()
        for t in (self.optimize.techniques if self.optimize else None) or []:
            if t not in planned:
                raise FormattedError(
                    f"optimize.techniques names {t!r}, which is not a technique leanml plans with; "
                    f"choose from {', '.join(planned)}"
                )
        return self

    @property
    def planned(self) -> bool:
        """Whether leanml plans the stages (``stages: auto`` or an ``optimize:`` block)."""
        return self.stages_auto or self.optimize is not None

    @field_validator("stages", mode="before")
    @classmethod
    def _stages(cls, value: Any) -> list[StageSpec]:
        if value is None:
            return []
        if not isinstance(value, list):
            # pydantic turns a ValueError (not a TypeError) into a path-named error
            raise ValueError(  # noqa: TRY004
                "must be a list of stages like '- prune: {amount: 0.5}', or 'auto' to let leanml plan them"
            )
        stages = [_parse_stage(i, item) for i, item in enumerate(value)]
        first: dict[str, int] = {}
        for i, spec in enumerate(stages):
            if spec.name in first:
                raise FormattedError(
                    f"stages[{first[spec.name]}] and stages[{i}] are both named {spec.name!r} (a "
                    "stage without 'name:' is named after its kind); stage names must be unique, "
                    f"the report and metrics.json tell stages apart by them: add e.g. "
                    f"'name: {spec.name}_2' to stages[{i}]"
                )
            first[spec.name] = i
        return stages

    def dump(self) -> dict[str, Any]:
        """The recipe as plain data with defaults filled in (what recipe.yaml holds)."""
        data = self.model_dump(
            mode="json", exclude={"stages", "base_dir", "trust_pickle", "optimize"}
        )
        data["stages"] = "auto" if self.stages_auto else [s.dump() for s in self.stages]
        if self.optimize is not None:
            data["optimize"] = self.optimize.model_dump(mode="json")
        return data

    @property
    def run_dir(self) -> Path:
        return Path(self.output) if self.output else Path("runs") / self.name


def _parse_stage(i: int, item: Any) -> StageSpec:
    where = f"stages[{i}]"
    if not isinstance(item, dict):
        raise FormattedError(
            f"{where} must be a mapping like 'prune: {{amount: 0.5}}'; got {item!r}"
        )
    kinds = [k for k in item if k not in ("name", "enabled")]
    if len(kinds) != 1:
        raise FormattedError(f"{where} must have exactly one stage kind key; got {kinds or 'none'}")
    kind = kinds[0]
    cls = get_stage_class(kind, where=where)
    raw = item[kind] or {}
    if not isinstance(raw, dict):
        raise FormattedError(f"{where}.{kind} must be a mapping of settings; got {raw!r}")
    try:
        config = cls.Config.model_validate(raw)
    except ValidationError as e:
        raise FormattedError(format_validation_error(e, prefix=f"{where}.{kind}")) from None
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise FormattedError(f"{where}.enabled must be true or false; got {enabled!r}")
    name = item.get("name") or kind
    return StageSpec(kind=kind, name=str(name), enabled=enabled, config=config)


def load_recipe(source: str | Path | dict[str, Any] | Recipe) -> Recipe:
    """Read and validate a recipe from a YAML path, a YAML string, or a dict.

    Raises:
        InvalidInputError: the file is missing or not YAML, or a key breaks a rule; the message
            names the key path, the rule and the value given.
    """
    if isinstance(source, Recipe):
        return source
    base = Path.cwd()
    default_name = "run"
    if (
        isinstance(source, (str, Path))
        and (isinstance(source, Path) or "\n" not in source)
        and not str(source).lstrip().startswith("{")
    ):
        path = Path(source)
        require_file(path, what="recipe file", fix="give a recipe YAML file")
        try:
            text = path.read_text(encoding="utf-8")
        except UnicodeDecodeError:
            fix = (
                "it looks like a model file: to measure a model, use `leanml measure "
                f"{path} --data DATA`, or give it as task.model in a recipe"
                if path.suffix.lower() in (".onnx", ".pt", ".pth", ".safetensors")
                else "save the recipe as UTF-8 text"
            )
            raise InvalidInputError(
                f"recipe file {str(path)!r} is not a UTF-8 YAML recipe; `leanml run` takes a "
                f"recipe YAML file; {fix}"
            ) from None
        base = path.resolve().parent
        default_name = path.stem
        data = _yaml(text, str(path))
    elif isinstance(source, str):
        data = _yaml(source, "recipe")
    else:
        data = dict(source)
    if not isinstance(data, dict):
        raise InvalidInputError(
            f"recipe must be a mapping of keys (task:, train:, stages: ...); got {type(data).__name__}"
        )
    data.setdefault("name", default_name)
    data["base_dir"] = base
    try:
        return Recipe.model_validate(data)
    except ValidationError as e:
        raise InvalidInputError(format_validation_error(e)) from None


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping with the same key twice (PyYAML keeps the last
    one silently, so half of a recipe would be ignored)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor': the mapping's own keys override merged ones, by design
            key = self.construct_object(key_node, deep=True)
            line = key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        None,
                        None,
                        f"key {key!r} appears twice (lines {seen[key]} and {line}); each key may "
                        "appear once in a mapping: merge the two or delete one",
                        key_node.start_mark,
                    )
            except TypeError:  # an unhashable key: the base class says so
                break
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _yaml(text: str, where: str) -> Any:
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader subclass: safe
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise InvalidInputError(
            f"{where} is not valid YAML{at}: {getattr(e, 'problem', e)}"
        ) from None
