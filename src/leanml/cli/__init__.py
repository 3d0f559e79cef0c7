"""The ``leanml`` command: a thin shell over the Python API."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from .. import __version__

# --- technique commands ---
from . import (
    _quantize,  # noqa: F401  (leanml quantize)
    _run,  # noqa: F401  (registers run, demo, measure)
    _tune,  # noqa: F401  (leanml tune)
)
from ._app import DEBUG, app

# --- end of technique commands ---

__all__ = ["app", "main"]


def _version(value: bool) -> None:
    if value:
        print(f"leanml {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks")] = False,
) -> None:
    """Make trained models smaller and faster, measured on the runtime they deploy to."""
    DEBUG["on"] = debug


def main() -> None:
    """Console-script entry point."""
    if "--debug" in sys.argv[1:]:
        DEBUG["on"] = True
    app()
