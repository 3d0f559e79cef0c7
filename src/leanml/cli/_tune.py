"""`leanml tune RECIPE [--workers N]`: run only a recipe's tune stages (e.g. as extra workers)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from ._app import (
    Command,
    RunDirOption,
    app,
    err_console,
    flag_names,
    handle_errors,
    out_console,
    require_recipe,
)


@app.command("tune", cls=Command)
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
    output: RunDirOption = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", help="the studies' trial budget (overrides tune.trials)"),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option("--timeout", help="seconds per study (overrides tune.timeout)"),
    ] = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress lines")] = False,
) -> None:
    """Run the remaining trials of the recipe's tune studies, split over --workers processes.

    With a shared `storage:` (postgresql://...) in the recipe, run this on as many machines as you
    like; `leanml run RECIPE` then continues the same study and keeps its best trial.

    Example: leanml tune examples/tune.yaml --workers 2 --trials 20
    """
    require_recipe(recipe)
    from ..pipeline import Reporter, RichReporter, load_recipe, tune_recipe

    r = load_recipe(recipe)
    given = {"trials": trials, "timeout": timeout}
    overrides = {k: v for k, v in given.items() if v is not None}
    if overrides:  # validated by TuneConfig, as the recipe's own keys
        r = r.with_stage_keys("tune", overrides, flags=flag_names(given))
    reporter = Reporter() if quiet else RichReporter(err_console)
    summaries = tune_recipe(r, workers=workers, output=output, reporter=reporter)
    for s in summaries:
        table = Table(title=f"{s.stage}: study {s.study_name} ({s.storage})")
        for col in ("trial", "values", "params"):
            table.add_column(col)
        for b in s.best:
            table.add_row(
                str(b["number"]),
                ", ".join(f"{name} {v:.4g}" for name, v in b["values"].items()),
                ", ".join(f"{k}={v}" for k, v in b["params"].items()),
            )
        out_console.print(table)
        counts = ", ".join(f"{n} {state.lower()}" for state, n in sorted(s.counts.items()))
        out_console.print(f"{s.ran} trials finished now; the study holds {counts or 'no trials'}")
    out_console.print(
        f"next: leanml run {recipe} (continues the same studies, keeps their best trials, then "
        "runs the other stages)",
        soft_wrap=True,
    )
