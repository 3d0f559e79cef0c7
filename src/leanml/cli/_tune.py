"""`leanml tune RECIPE [--workers N]`: run only a recipe's tune stages (e.g. as extra workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._app import app, err_console, handle_errors, out_console


@app.command("tune")
@handle_errors
def tune_cmd(
    recipe: Annotated[Path, typer.Argument(help="recipe YAML file with one or more tune stages")],
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            min=1,
            max=256,
            help="worker processes sharing each study on this machine",
        ),
    ] = 1,
    output: Annotated[
        Path | None,
        typer.Option(
            "--output", "-o", help="run directory (default: the recipe's output, or runs/<name>)"
        ),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
) -> None:
    """Run the remaining trials of the recipe's tune studies, split over --workers processes.

    With a shared `storage:` (postgresql://...) in the recipe, run this on as many machines as you
    like; `leanml run RECIPE` then continues the same study and keeps its best trial.
    """
    from ..pipeline import Reporter, RichReporter
    from ..pipeline._tune_workers import tune_recipe

    reporter = Reporter() if quiet else RichReporter(err_console)
    summaries = tune_recipe(recipe, workers=workers, output=output, reporter=reporter)
    for s in summaries:
        table = Table(title=f"{s.stage}: study {s.study_name} ({s.storage})")
        for col in ("trial", "values", "params"):
            table.add_column(col)
        for b in s.best:
            table.add_row(
                str(b["number"]),
                ", ".join(f"{v:.4g}" for v in b["values"]),
                ", ".join(f"{k}={v}" for k, v in b["params"].items()),
            )
        out_console.print(table)
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s.counts.items()))
        out_console.print(f"{s.ran} trials finished now; the study holds {counts or 'no trials'}")
