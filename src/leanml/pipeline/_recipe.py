"""Recipes: the YAML a user writes, validated with pydantic (format in RECIPES.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..constraints import Constraints
from ..data import require_file
from ..errors import InvalidInputError
from ..measure import MeasureConfig
from ..techniques import Stage, StageConfig, get_stage_class
from ..training import TrainConfig


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


TECHNIQUES = ("tune", "features", "distill", "prune", "quantize")


class OptimizeConfig(BaseModel):
    """The ``optimize:`` keys: the search behind ``stages: auto`` and ``leanml optimize``."""

    model_config = ConfigDict(extra="forbid")

    objective: Literal["latency", "size"] = "latency"
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
        for t in techniques:
            if t not in TECHNIQUES:
                raise ValueError(
                    f"names {t!r}, which is not a technique leanml plans with; choose from {', '.join(TECHNIQUES)}"
                )
        if not techniques:
            raise ValueError(f"must allow at least one of {', '.join(TECHNIQUES)}")
        return list(dict.fromkeys(techniques))


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
    seed: int = Field(0, ge=0, lt=2**32, description="seeds splits, training and stages")
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

    def with_stage_keys(self, kind: str, keys: dict[str, Any]) -> Recipe:
        """This recipe with ``keys`` set on every stage of ``kind`` (validated like the recipe)."""
        stages = []
        for i, spec in enumerate(self.stages):
            if spec.kind == kind:
                raw = {**spec.config.model_dump(), **keys}
                config = validate_section(type(spec.config), raw, f"stages[{i}].{kind}")
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
                raise _StageError(
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


class _StageError(ValueError):
    """Carries already formatted stage errors through pydantic."""


def _parse_stage(i: int, item: Any) -> StageSpec:
    where = f"stages[{i}]"
    if not isinstance(item, dict):
        raise _StageError(f"{where} must be a mapping like 'prune: {{amount: 0.5}}'; got {item!r}")
    kinds = [k for k in item if k not in ("name", "enabled")]
    if len(kinds) != 1:
        raise _StageError(f"{where} must have exactly one stage kind key; got {kinds or 'none'}")
    kind = kinds[0]
    cls = get_stage_class(kind, where=where)
    raw = item[kind] or {}
    if not isinstance(raw, dict):
        raise _StageError(f"{where}.{kind} must be a mapping of settings; got {raw!r}")
    try:
        config = cls.Config.model_validate(raw)
    except ValidationError as e:
        raise _StageError(format_validation_error(e, prefix=f"{where}.{kind}")) from None
    enabled = item.get("enabled", True)
    if not isinstance(enabled, bool):
        raise _StageError(f"{where}.enabled must be true or false; got {enabled!r}")
    name = item.get("name") or kind
    return StageSpec(kind=kind, name=str(name), enabled=enabled, config=config)


def _path(loc: tuple[Any, ...], prefix: str) -> str:
    out = prefix
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "[key]":
            continue  # pydantic marks errors of a mapping's key; the key is already in the path
        elif not str(part).isidentifier():
            out += f"[{str(part)!r}]"  # a mapping key like 'train.lr' must not read as nested keys
        else:
            out += ("." if out else "") + str(part)
    return out or "recipe"


def _rule(err: dict[str, Any]) -> str:
    msg = str(err.get("msg", "is invalid"))
    typ = err.get("type", "")
    if typ == "extra_forbidden":
        return "is not a known key"
    if typ == "missing":
        return "is required"
    for a, b in (("Input should be", "must be"), ("Value error, ", ""), ("Input should", "must")):
        msg = msg.replace(a, b)
    ctx = err.get("ctx") or {}
    if typ in ("greater_than", "less_than", "greater_than_equal", "less_than_equal"):
        return msg
    if "expected" in ctx and typ == "literal_error":
        return f"must be one of {ctx['expected']}"
    return msg if msg.startswith("must") else f"must be valid: {msg}"


def validate_section(config_cls: Any, value: Any, prefix: str) -> Any:
    """A recipe section (``train``, ``measure``, a stage's keys) from a dict, validated: errors name
    the key under ``prefix``. An instance of ``config_cls`` is returned as it is."""
    if isinstance(value, config_cls):
        return value
    try:
        return config_cls.model_validate(value or {})
    except ValidationError as e:
        raise InvalidInputError(format_validation_error(e, prefix=prefix)) from None


def format_validation_error(e: ValidationError, *, prefix: str = "") -> str:
    """One line: the first problem as ``path rule; got value``, then how many more there are."""
    errors = e.errors()
    lines = []
    for err in errors:
        loc = tuple(p for p in err["loc"] if p not in ("function-after[_sum(), Splits]",))
        msg = str(err.get("msg", ""))
        if isinstance(err.get("ctx", {}).get("error"), _StageError) or msg.startswith(
            "Value error, stages["
        ):
            lines.append(msg.replace("Value error, ", ""))
            continue
        path = _path(loc, prefix)
        rule = _rule(err)
        if err.get("type") == "missing":
            lines.append(f"{path} {rule}")
        else:
            lines.append(f"{path} {rule}; got {err.get('input')!r}")
    first = lines[0]
    if len(lines) > 1:
        first += f" (and {len(lines) - 1} more: {'; '.join(lines[1:3])}{'...' if len(lines) > 3 else ''})"
    return first


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
