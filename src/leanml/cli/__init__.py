"""The ``leanml`` command: a thin shell over the Python API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .._utils import redeliver_dropped_interrupts
from .._version import __version__

# --- technique commands ---
from . import (
    _data,  # noqa: F401  (leanml data export)
    _optimize,  # noqa: F401  (leanml optimize)
    _quantize,  # noqa: F401  (leanml quantize)
    _run,  # noqa: F401  (registers run, demo, measure)
    _show,  # noqa: F401  (leanml show)
    _tune,  # noqa: F401  (leanml tune)
)
from ._app import CliState, app

# --- end of technique commands ---

__all__ = ["app", "main"]


def _version(value: bool) -> None:
    if value:
        print(f"leanml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Make trained models smaller and faster, measured on the runtime they deploy to."""
    ctx.obj = CliState(debug=debug)


def main() -> None:
    """Console-script entry point. Usage errors (a bad option value, a missing argument) are one
    line on stderr and exit 2, like every other bad input."""
    try:  # typer >= 0.20 vendors click
        from typer._click.exceptions import ClickException
    except ImportError:  # pragma: no cover - older typer, on click
        from click import ClickException

    redeliver_dropped_interrupts()  # a Ctrl-C that lands in a finalizer still stops the run
    args = sys.argv[1:] or ["--help"]  # a bare `leanml` shows the help, and that is no error
    try:
        code = app(args=args, prog_name="leanml", standalone_mode=False)
    except typer.Exit as e:  # --help, --version
        code = e.exit_code
    except ClickException as e:
        command = e.ctx.command_path if getattr(e, "ctx", None) else "leanml"
        print(f"{command}: {e.format_message()} (see {command} --help)", file=sys.stderr)
        code = 2
    except typer.Abort:
        print("leanml: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code if isinstance(code, int) else 0)
