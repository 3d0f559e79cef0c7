"""docs/recipes.md against the Configs it documents: every key of every recipe section and of every
built-in stage is listed, and every key it lists exists (the Configs are where each key and its
default are written; the page must not drift from them)."""

from __future__ import annotations

import re
import typing
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

from leanml.pipeline import Recipe
from leanml.techniques import get_stage_class, stage_kinds

DOC = Path(__file__).resolve().parents[1] / "docs" / "recipes.md"
STAGES = [k for k in stage_kinds() if get_stage_class(k).__module__.startswith("leanml.")]

Key = tuple[str, str]  # (Config class name, key)


def _sub(annotation: Any) -> type[BaseModel] | None:
    """The Config a field holds (itself, in a list/union, or as a mapping's values)."""
    for t in [annotation, *typing.get_args(annotation)]:
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _keys(model: type[BaseModel], out: set[Key]) -> set[Key]:
    """Every key of ``model`` and of the Configs it holds (stages apart)."""
    for name, field in model.model_fields.items():
        if field.exclude or (model is Recipe and name == "stages"):
            continue
        if (model.__name__, name) in out:
            continue
        out.add((model.__name__, name))
        sub = _sub(field.annotation)
        if sub is not None:
            _keys(sub, out)
    return out


def documented(data: Any, model: type[BaseModel], where: str, out: set[Key]) -> None:
    """The keys a YAML block of the page writes, checked against ``model`` as it goes."""
    for key, value in (data or {}).items():
        if model is Recipe and key == "stages":
            for entry in [] if value == "auto" else value:
                for kind, config in entry.items():
                    if kind not in ("name", "enabled"):
                        documented(config, get_stage_class(kind).Config, f"stages.{kind}", out)
            continue
        field = model.model_fields.get(key)
        assert field is not None and not field.exclude, (
            f"docs/recipes.md documents {where}.{key}, which {model.__name__} does not have"
        )
        out.add((model.__name__, key))
        sub = _sub(field.annotation)
        if sub is None or not isinstance(value, dict):
            continue
        if typing.get_origin(field.annotation) is dict:  # a mapping of Configs (tune.space)
            for item in value.values():
                if isinstance(item, dict):
                    documented(item, sub, f"{where}.{key}[...]", out)
        else:
            documented(value, sub, f"{where}.{key}", out)


def _blocks() -> list[Any]:
    text = DOC.read_text(encoding="utf-8")
    return [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", text, flags=re.DOTALL)]


def test_every_key_the_page_documents_exists_and_every_key_is_documented():
    seen: set[Key] = set()
    for block in _blocks():
        documented(block, Recipe, "recipe", seen)
    expected = _keys(Recipe, set())
    for kind in STAGES:
        expected |= _keys(get_stage_class(kind).Config, set())
    assert sorted(expected - seen) == [], "document these keys in docs/recipes.md (Every key)"


def test_the_check_finds_a_key_that_does_not_exist():
    with pytest.raises(AssertionError, match=r"recipe.train.learning_rate"):
        documented({"train": {"learning_rate": 0.1}}, Recipe, "recipe", set())
