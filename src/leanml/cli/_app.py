"""The typer app and the error handling every command shares."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import typer
from rich.console import Console

from ..errors import InvalidInputError, LeanmlError

app = typer.Typer(
    name="leanml",
    help="Make trained models smaller and faster, measured on the runtime they deploy to.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err_console = Console(file=sys.stderr)
out_console = Console()
DEBUG = {"on": False}

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(fn: F) -> F:
    """Bad input: one line on stderr, exit 2. Other leanml errors: one line, exit 1. ``--debug``: traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except InvalidInputError as e:
            if DEBUG["on"]:
                raise
            print(f"leanml: error: {_one_line(e)}", file=sys.stderr)
            raise typer.Exit(2) from None
        except LeanmlError as e:
            if DEBUG["on"]:
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


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())
