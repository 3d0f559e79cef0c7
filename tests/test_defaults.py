"""Each default is written once, in its pydantic Config: the CLI's options and the Python API's
keywords for a recipe key default to None ("not given: the Config's"), and the help shows the
Config's value."""

from __future__ import annotations

import inspect
from collections import defaultdict
from typing import Any

import pytest
import typer
from pydantic import BaseModel

import leanml
import leanml.pipeline
from leanml.cli import app
from leanml.cli._app import config_value, help_params, shown_default
from leanml.pipeline import Recipe
from leanml.techniques import get_stage_class, stage_kinds


def _configs(model: type[BaseModel], seen: set[type[BaseModel]]) -> None:
    """``model`` and every Config nested in its fields."""
    if model in seen:
        return
    seen.add(model)
    for field in model.model_fields.values():
        for t in [field.annotation, *getattr(field.annotation, "__args__", ())]:
            if isinstance(t, type) and issubclass(t, BaseModel):
                _configs(t, seen)


def config_defaults() -> dict[str, list[Any]]:
    """Every recipe key's name -> the defaults the Configs give it (the recipe's sections and every
    registered stage's keys)."""
    seen: set[type[BaseModel]] = set()
    for model in [Recipe, *(get_stage_class(k).Config for k in stage_kinds())]:
        _configs(model, seen)
    out: dict[str, list[Any]] = defaultdict(list)
    for model in seen:
        for name, field in model.model_fields.items():
            if not field.is_required():
                out[name].append(field.get_default(call_default_factory=True))
    return out


def _commands(group: Any, path: tuple[str, ...] = ()) -> Any:
    for name, cmd in group.commands.items():
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = list(_commands(typer.main.get_command(app)))


@pytest.mark.parametrize(("path", "command"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_cli_options_take_their_defaults_from_the_configs(path, command):
    import click

    defaults = config_defaults()
    params = help_params(command, click.Context(command))  # what --help renders
    for p in params:
        if not isinstance(p, click.Option) or p.name is None:
            continue
        ref = getattr(p, "config_ref", None)
        if ref is not None:  # the option sets a Config key: None, and the help shows its default
            assert p.default is None, f"--{p.name}: default {p.default!r} beside {ref}'s"
            shown = f"[default: {shown_default(config_value(ref), p)}]"
            assert shown in (p.help or ""), (p.name, p.help)
        elif p.default is not None and not p.is_flag:
            assert p.default not in defaults.get(p.name, []), (
                f"leanml {' '.join(path)} --{p.name} writes the default {p.default!r} of the "
                "recipe key of that name again: default to None and show it with config_default()"
            )


def _public_functions() -> list[tuple[str, Any]]:
    out = {}
    for module in (leanml, leanml.pipeline):
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj):
                out[f"{module.__name__}.{name}"] = obj
    return sorted(out.items())


def duplicated(fn: Any, defaults: dict[str, list[Any]]) -> list[str]:
    """The keywords of ``fn`` named after a recipe key whose default they write again."""
    return [
        p.name
        for p in inspect.signature(fn).parameters.values()
        if p.default is not inspect.Parameter.empty
        and p.default is not None
        and p.default in defaults.get(p.name, [])
    ]


@pytest.mark.parametrize(
    ("name", "fn"), _public_functions(), ids=lambda x: x if isinstance(x, str) else ""
)
def test_api_keywords_for_recipe_keys_do_not_write_their_defaults_again(name, fn):
    assert duplicated(fn, config_defaults()) == [], (
        f"{name} writes the default of these recipe keys again: take None (the Config's default) "
        "and validate through the Config"
    )


def test_the_guard_finds_a_default_written_twice():
    def planted(model, *, max_metric_drop: float = 0.01, trials: int | None = None) -> None: ...

    assert duplicated(planted, config_defaults()) == ["max_metric_drop"]
