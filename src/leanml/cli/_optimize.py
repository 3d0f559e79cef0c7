"""`leanml optimize`: plan the stages under the accuracy budget, then run the winning plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import InvalidInputError
from ._app import (
    Command,
    JsonOption,
    QuietOption,
    RunDirOption,
    TrustPickleOption,
    app,
    handle_errors,
)
from ._run import _run

OBJECTIVES = ("latency", "size")


def _overrides(
    objective: str | None, trials: int | None, timeout: float | None, batch_size: int | None
) -> dict[str, Any]:
    """The flags as ``optimize:`` keys, each checked with a message that names the flag."""
    keys: dict[str, Any] = {}
    if objective is not None:
        if objective not in OBJECTIVES:
            raise InvalidInputError(
                f"--objective must be latency or size; got {objective!r}: latency makes the model "
                "faster at --batch-size, size makes its file smaller"
            )
        keys["objective"] = objective
    if trials is not None:
        if trials < 1:
            raise InvalidInputError(
                f"--trials must be at least 1: a search of {trials} trials tries no plan; give e.g. --trials 40"
            )
        keys["trials"] = trials
    if timeout is not None:
        if timeout <= 0:
            raise InvalidInputError(
                f"--timeout must be a positive number of seconds; got {timeout:g}"
            )
        keys["timeout"] = timeout
    if batch_size is not None:
        if batch_size < 1:
            raise InvalidInputError(f"--batch-size must be at least 1; got {batch_size}")
        keys["batch_size"] = batch_size
    return keys


@app.command("optimize", cls=Command)
@handle_errors
def optimize_cmd(
    recipe: Annotated[
        Path, typer.Argument(help="recipe YAML file: task, constraints, optional optimize: block")
    ],
    objective: Annotated[
        str | None, typer.Option("--objective", help="latency | size (default: latency)")
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option("--trials", help="plans to measure, over every run of the study (default 40)"),
    ] = None,
    timeout: Annotated[
        float | None, typer.Option("--timeout", help="seconds this run may search")
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option("--batch-size", help="the batch size latency is judged at (default 1)"),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            "-w",
            help="processes sharing the search (with optimize.storage: many machines)",
        ),
    ] = 1,
    output: RunDirOption = None,
    as_json: JsonOption = False,
    quiet: QuietOption = False,
    trust_pickle: TrustPickleOption = False,
) -> None:
    """Find the fastest (or smallest) model within the recipe's accuracy budget: leanml plans
    distill, prune, quantize and feature selection itself, measuring every plan on ONNX Runtime,
    then runs the winner as a recipe (plan.yaml) gated on the test split. Rerun to continue the
    search; finished plans are kept.

    Example: leanml optimize examples/optimize.yaml --trials 30
    """
    from ..pipeline import load_recipe
    from ..pipeline._recipe import OptimizeConfig, validate_section

    keys = _overrides(objective, trials, timeout, batch_size)
    if workers < 1:
        raise InvalidInputError(f"--workers must be at least 1; got {workers}")
    r = load_recipe(recipe)
    if r.stages:
        raise InvalidInputError(
            f"recipe {str(recipe)!r} lists its stages; leanml optimize plans them itself: write "
            "'stages: auto' (or drop stages:), or run the stages as written with `leanml run`"
        )
    current = r.optimize.model_dump() if r.optimize is not None else {}
    config = validate_section(OptimizeConfig, {**current, **keys}, "optimize")
    _run(
        r.model_copy(update={"optimize": config, "stages_auto": True}),
        output,
        as_json,
        quiet,
        trust_pickle,
    )
