"""`leanml show RUN_DIR`: the table and deploy line of an earlier run, from its metrics.json."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInputError
from ._app import Command, app, handle_errors, out_console
from ._run import rollback_lines, stage_table


@app.command("show", cls=Command)
@handle_errors
def show_cmd(
    run_dir: Annotated[Path, typer.Argument(help="a run directory (it holds metrics.json)")],
) -> None:
    """Print the stage table and the deploy summary of an earlier run.

    Example: leanml show runs/demo
    """
    path = run_dir / "metrics.json"
    if not run_dir.is_dir():
        raise InvalidInputError(
            f"{str(run_dir)!r} is not a folder; give a run directory (what `leanml run` wrote)"
        )
    if not path.is_file():
        raise InvalidInputError(
            f"{str(run_dir)!r} has no metrics.json, so it is not a run directory (or its run "
            "stopped before the baseline was measured); give the folder `leanml run` wrote"
        )
    try:
        metrics = json.loads(path.read_text(encoding="utf-8"))
        metric = metrics["task"]["metric"]
        metrics["stages"]
    except (ValueError, KeyError, TypeError) as e:
        raise InvalidInputError(
            f"{str(path)!r} is not a leanml metrics.json ({type(e).__name__}: {e}); rerun the recipe"
        ) from None
    out_console.print(stage_table(metrics))
    for line in rollback_lines(metrics):
        out_console.print(line)
    if isinstance(metrics.get("reference"), dict) and metrics["reference"].get("note"):
        out_console.print(
            metrics["reference"]["note"], markup=False, highlight=False, soft_wrap=True
        )
    if not (run_dir / "model.onnx").is_file():
        out_console.print(
            "no model.onnx: the run did not finish (metrics.json holds the stages it did)"
        )
        return
    from ..report import deploy_line  # the report package imports the measuring stack

    out_console.print(f"[bold]{deploy_line(metrics.get('summary'), metric)}[/]")
