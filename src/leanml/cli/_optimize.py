"""`leanml optimize`: plan the stages under the accuracy budget, then run the winning plan."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import InvalidInputError
from ._app import (
    Command,
    JsonOption,
    QuietOption,
    RunDirOption,
    TrustPickleOption,
    app,
    config_default,
    flag_names,
    handle_errors,
    require_recipe,
)
from ._run import _run

CONFIG = "leanml.search:OptimizeConfig"  # the optimize: keys the flags set


@app.command("optimize", cls=Command)
@handle_errors
def optimize_cmd(
    recipe: Annotated[
        Path, typer.Argument(help="recipe YAML file: task, constraints, optional optimize: block")
    ],
    objective: Annotated[
        str | None,
        typer.Option(
            "--objective",
            help="latency | size: a faster model at --batch-size, or a smaller file",
            show_default=config_default(f"{CONFIG}.objective"),
        ),
    ] = None,
    trials: Annotated[
        int | None,
        typer.Option(
            "--trials",
            help="plans to measure, over every run of the study",
            show_default=config_default(f"{CONFIG}.trials"),
        ),
    ] = None,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            help="seconds this run may search",
            show_default=config_default(f"{CONFIG}.timeout"),
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(
            "--batch-size",
            help="the batch size latency is judged at",
            show_default=config_default(f"{CONFIG}.batch_size"),
        ),
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
    require_recipe(recipe)
    from ..pipeline import load_recipe, validate_section
    from ..search import OptimizeConfig

    given = {"objective": objective, "trials": trials, "timeout": timeout, "batch_size": batch_size}
    keys = {k: v for k, v in given.items() if v is not None}
    if workers < 1:
        raise InvalidInputError(f"--workers must be at least 1; got {workers}")
    r = load_recipe(recipe)
    if r.stages:
        raise InvalidInputError(
            f"recipe {str(recipe)!r} lists its stages; leanml optimize plans them itself: write "
            "'stages: auto' (or drop stages:), or run the stages as written with `leanml run`"
        )
    current = r.optimize.model_dump() if r.optimize is not None else {}
    config = validate_section(
        OptimizeConfig, {**current, **keys}, "optimize", flags=flag_names(given)
    )
    _run(
        r.model_copy(update={"optimize": config, "stages_auto": True}),
        output,
        as_json,
        quiet,
        trust_pickle,
    )
