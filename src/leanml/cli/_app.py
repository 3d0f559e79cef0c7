"""The typer app and the error handling every command shares."""

from __future__ import annotations

import functools
import importlib
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from ..errors import InvalidInputError, LeanmlError, NoAcceptableResult

# Options several commands take, declared once.
RunDirOption = Annotated[
    Path | None,
    typer.Option(
        "--output", "-o", help="run directory (default: the recipe's output, or runs/<name>)"
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="print metrics.json to stdout, nothing else")
]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars or table")]
TrustPickleOption = Annotated[
    bool,
    typer.Option("--trust-pickle", help="allow loading pickled model files (runs their code)"),
]


# ``show_default`` of an option whose default is a Config key's (see :func:`config_default`).
_FROM_CONFIG = "leanml-config-default:"


def config_default(ref: str) -> str:
    """``show_default`` for an option that sets a Config key, ``"package:Config.key"`` (dotted
    for a nested key: ``"leanml.techniques.quantize:QuantizeConfig.calibration.method"``).

    The option itself defaults to None, "not given": the Config's default applies, written only
    there. The help shows the Config's value, read when the help is shown, so loading the CLI
    imports no Config (nor the libraries behind it).
    """
    return _FROM_CONFIG + ref


# The seed a recipe's splits use; validate it as the recipe's (validate_keys(Recipe, {"seed": seed})).
SeedOption = Annotated[
    int | None,
    typer.Option(
        "--seed",
        help="the split's seed (as a recipe's seed)",
        show_default=config_default("leanml.pipeline:Recipe.seed"),
    ),
]


def config_value(ref: str) -> Any:
    """The default of the Config key ``ref`` (``"package:Config.key"``)."""
    module, _, path = ref.partition(":")
    name, *keys = path.split(".")
    config = getattr(importlib.import_module(module), name)
    value = config.model_fields[keys[0]].get_default(call_default_factory=True)
    for key in keys[1:]:
        value = getattr(value, key)
    return value


def require_recipe(recipe: Any) -> None:
    """A recipe path that is not a file is one line at once, before the commands import torch and
    the rest (the same check, and message, as ``load_recipe``'s)."""
    from ..data import require_file

    if isinstance(recipe, Path):
        require_file(recipe, what="recipe file", fix="give a recipe YAML file")


def require_model(model: Path) -> None:
    """A model path that does not exist is one line at once, before the heavy imports (a model may
    be a file or a folder: a TensorFlow SavedModel)."""
    if not model.exists():
        raise InvalidInputError(f"model file {str(model)!r} does not exist")


def flag_names(keys: Iterable[str]) -> dict[str, str]:
    """The flag of each Config key a command takes as an option: ``max_metric_drop`` is
    ``--max-metric-drop`` (for errors that name the flag, see ``validate_section``)."""
    return {k: "--" + k.replace("_", "-") for k in keys}


def shown_default(value: Any, option: Any) -> str:
    """A default as the command line writes it: a flag by its name, a list comma-separated."""
    if isinstance(value, bool) and option.secondary_opts:
        return (option.opts if value else option.secondary_opts)[0]
    if isinstance(value, list | tuple):
        return ",".join(map(str, value))
    return "none" if value is None else str(value)


def help_params(command: Any, ctx: Any) -> list[Any]:
    """The command's parameters as its ``--help`` shows them: an option whose default is a Config
    key's shows the Config's value (:func:`config_default`). Only help imports the Configs (and
    torch behind some of them): running a command, or a bad input, does not."""
    params = command.get_params(ctx)
    for p in params:
        ref = getattr(p, "show_default", None)
        if isinstance(ref, str) and ref.startswith(_FROM_CONFIG):
            # in the help text, as typer shows a default (it would put a string in parentheses)
            p.config_ref = ref.removeprefix(_FROM_CONFIG)
            default = shown_default(config_value(p.config_ref), p)
            p.show_default = False
            p.help = f"{p.help or ''} [default: {default}]".strip()  # plain text: no markup
    return params


def _plain_help(params: list[Any], ctx: Any) -> list[str]:
    """Give flags no type column (typer shows ``<bool>``) and write required arguments as
    ``RECIPE`` in the usage line (typer writes ``{recipe}``), as the README does."""
    pieces: list[str] = []
    for p in params:
        if isinstance(p, TyperOption) and p.is_flag and p.metavar is None:
            p.metavar = ""
        if isinstance(p, TyperArgument):
            name = (p.metavar or p.name or "").upper()
            name = name if p.required else f"[{name}]"
            pieces.append(name + ("..." if p.nargs != 1 else ""))
        else:
            pieces.extend(p.get_usage_pieces(ctx))
    return pieces


class Command(TyperCommand):
    """A leanml command: flags without ``<bool>``, arguments in capitals in the usage line."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _plain_help(params, ctx)
        return params

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        return [self.options_metavar or "", *_plain_help(self.get_params(ctx), ctx)]

    def format_help(self, ctx: Any, formatter: Any) -> None:
        help_params(self, ctx)
        super().format_help(ctx, formatter)


class Group(TyperGroup):
    """A leanml command group, with the same help layout as :class:`Command`; each command's one-line
    help is shown whole, wrapped to the terminal, not cut at its width."""

    def get_params(self, ctx: Any) -> list[Any]:
        params = super().get_params(ctx)
        _plain_help(params, ctx)
        return params

    def format_help(self, ctx: Any, formatter: Any) -> None:
        help_params(self, ctx)
        super().format_help(ctx, formatter)

    def format_commands(self, ctx: Any, formatter: Any) -> None:
        rows = []
        for name in self.list_commands(ctx):
            cmd = self.get_command(ctx, name)
            if cmd is not None and not cmd.hidden:
                rows.append((name, cmd.get_short_help_str(limit=10_000)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)


app = typer.Typer(
    name="leanml",
    cls=Group,
    help="Make trained models smaller and faster, measured on the runtime they deploy to.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    # click's plain help: paragraphs flow to the terminal's width and option names are never cut
    # (typer's rich panels cut long names, `--max-latency-rat…`, and read `[default: static]` as
    # markup, dropping it); no width cap, so a wide terminal gets long lines
    rich_markup_mode=None,
    context_settings={"max_content_width": 10_000},
)
err_console = Console(file=sys.stderr)
out_console = Console()

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CliState:
    """What the root options set for the whole invocation; the root callback stores it in the click
    context's ``obj`` (every sub-command's context inherits it), so no module state changes."""

    debug: bool = False


def debug_on() -> bool:
    """Whether ``--debug`` was given to the command being run (False outside a command)."""
    try:  # typer >= 0.20 vendors click
        from typer._click.globals import get_current_context
    except ImportError:  # pragma: no cover - older typer, on click
        from click import get_current_context

    ctx = get_current_context(silent=True)
    state = ctx.find_root().obj if ctx is not None else None
    return isinstance(state, CliState) and state.debug


def handle_errors(fn: F) -> F:
    """Bad input: one line on stderr, exit 2. A result that breaks the constraints: one line, exit 3.
    Other leanml errors: one line, exit 1. ``--debug``: traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InvalidInputError as e:
            if debug_on():
                raise
            print(f"leanml: error: {_one_line(e)}", file=sys.stderr)
            raise typer.Exit(2) from None
        except NoAcceptableResult as e:
            if debug_on():
                raise
            print(f"leanml: rejected: {_one_line(e)}", file=sys.stderr)
            raise typer.Exit(3) from None
        except LeanmlError as e:
            if debug_on():
                raise
            print(f"leanml: failed: {_one_line(e)}", file=sys.stderr)
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            print(
                "leanml: interrupted; finished files are complete, nothing is half-written",
                file=sys.stderr,
            )
            raise typer.Exit(130) from None

    return wrapper  # type: ignore[return-value]


def check_output_dir(path: Path, *, given_as: str = "--output") -> None:
    """Refuse, before any work, a run directory that cannot be one: a path that is a file, or lies
    under one. ``given_as`` names where the path came from (``--output``, the recipe's ``output``)."""
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            where = "is" if p == path else f"lies under {str(p)!r}, which is"
            raise InvalidInputError(
                f"{given_as} {str(path)!r} {where} a file, not a folder; the output must be a folder "
                "(new or existing): give a path that is not a file and not inside one"
            )


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
