"""The Python API's two entry points over recipes: :func:`run` (the stages as written, or planned
with ``stages: auto``) and :func:`optimize` (a model and data in, the best plan found and run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InvalidInputError
from ._optimize import optimize_recipe
from ._pipeline import Pipeline, RunResult
from ._progress import Reporter, RichReporter
from ._recipe import Recipe, load_recipe
from ._tasks import as_dataset, as_model, build_model, prepare_model, task_for, train_baseline


def run(
    recipe: str | Path | dict[str, Any] | Recipe,
    *,
    output: str | Path | None = None,
    reporter: Reporter | None = None,
    quiet: bool = False,
    workers: int = 1,
) -> RunResult:
    """Run a recipe: train the baseline, apply each stage, measure every step, write the reports.
    A recipe with ``stages: auto`` (or an ``optimize:`` block) has its stages planned first, as
    :func:`optimize` does.

    Args:
        recipe: a recipe file, YAML text, a dict, or a :class:`Recipe`.
        output: the run directory (default: the recipe's ``output``, or ``runs/<name>``).
        reporter: receives progress events (default: rich progress bars on stderr, in terminals
            and notebooks, ending with the deploy line).
        quiet: no progress at all.
        workers: processes that share a planned recipe's search (its study's storage).

    Returns:
        the run directory, every stage's record and the final model.

    Raises:
        InvalidInputError: bad input (recipe, data, model); nothing half-written is left.

    Example:
        >>> import leanml
        >>> result = leanml.run({"task": {"data": "digits", "model": "cnn"}, "train": {"epochs": 5}})  # doctest: +SKIP
        >>> result.metrics["stages"][0]["metric"]  # doctest: +SKIP
    """
    if workers < 1:
        raise InvalidInputError(f"workers must be at least 1; got {workers}")
    shown = reporter or (Reporter() if quiet else RichReporter())
    loaded = load_recipe(recipe)
    if loaded.planned:
        result = optimize_recipe(loaded, output=output, reporter=shown, workers=workers)
    else:
        result = Pipeline(loaded, output=output, reporter=shown).run()
    if reporter is None and not quiet:
        shown.log(f"[bold]{result.record.deploy_line()}[/] (in {result.run_dir})")
    return result


def optimize(
    model: Any,
    *,
    data: Any,
    max_metric_drop: float | None = None,
    objective: str | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    techniques: list[str] | None = None,
    batch_size: int | None = None,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    target: str | None = None,
    train: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    seed: int | None = None,
    output: str | Path | None = None,
    reporter: Reporter | None = None,
    quiet: bool = False,
    workers: int = 1,
    storage: str | None = None,
) -> RunResult:
    """Find the fastest (or smallest) deployable model within ``max_metric_drop`` of the baseline,
    composing distill, prune, quantize and feature selection, and run the winning plan.

    Every setting left None takes its recipe key's default (``constraints.max_metric_drop``,
    ``optimize.objective``/``trials``/``batch_size``..., ``seed``: see docs/recipes.md), and every
    setting given is validated as that recipe key.

    Args:
        model: what ``task.model`` takes (a zoo name such as ``"cnn"``, ``"pkg.mod:function"``,
            an ONNX, Keras or pickled-module file, ``"sklearn:Name"``), or a trained model object
            (a ``torch.nn.Module``, a scikit-learn estimator): an object is used as it is (not
            retrained), and students are planned only for a model named by its factory.
        data: what ``task.data`` takes (``"digits"``, ``"csv:PATH"``, ``"npz:PATH"``), a
            :class:`leanml.data.Dataset`, or ``(x, y)`` arrays (split 65/15/20 by ``seed``).
        objective: ``latency`` (at ``batch_size``) or ``size`` (file bytes).
        trials, timeout, techniques: the search's budget and the techniques it may use.
        metric, model_args, target, train, measure, seed: as the recipe keys of the same names.
        output: the run directory (default ``runs/optimize``); rerunning continues its study.
        workers, storage: processes sharing the search, and the Optuna RDB URL of its study
            (default: study.db in the run directory; PostgreSQL for many machines).

    Returns:
        the run of the winning plan (``result.metrics["optimize"]`` holds the search; the run
        directory holds ``plan.yaml``).

    Example:
        >>> import leanml
        >>> result = leanml.optimize("cnn", data="digits", max_metric_drop=0.01, trials=20)  # doctest: +SKIP
        >>> result.metrics["summary"]["latency_ratio"]  # doctest: +SKIP
    """
    given = not isinstance(model, str | Path) or not isinstance(data, str | Path)
    if given and workers > 1:
        raise InvalidInputError(
            f"workers={workers} rebuild the model and data from the recipe, which cannot name Python "
            "objects; give model and data as names or files, or use workers=1"
        )
    task: dict[str, Any] = {"data": str(data), "model": str(model), "model_args": model_args or {}}
    if metric is not None:
        task["metric"] = metric
    if target is not None:
        task["target"] = target
    search = {
        "objective": objective,
        "trials": trials,
        "timeout": timeout,
        "techniques": techniques,
        "batch_size": batch_size,
        "storage": storage,
    }
    recipe: dict[str, Any] = {
        "name": "optimize",
        "task": task,
        "constraints": _given(max_metric_drop=max_metric_drop),
        "stages": "auto",
        "optimize": _given(**search),
        **_given(seed=seed),
    }
    if train is not None:
        recipe["train"] = train
    if measure is not None:
        recipe["measure"] = measure
    if not given:
        return run(recipe, output=output, reporter=reporter, quiet=quiet, workers=workers)
    handle, spec = as_model(model)
    named = {"data": data if isinstance(data, str | Path) else "given", "model": spec}
    loaded = load_recipe({**recipe, "task": {**task, **{k: str(v) for k, v in named.items()}}})
    built = task_for(
        as_dataset(data, seed=loaded.seed, target=target),
        model=handle,
        spec=spec,
        metric=metric,
        model_args=model_args,
    )
    shown = reporter or (Reporter() if quiet else RichReporter())
    if handle is None:  # a name, with data given as objects: built and trained as a recipe would
        handle = build_model(built, seed=loaded.seed)
        train_baseline(handle, built, loaded.train, seed=loaded.seed)
    else:
        handle = prepare_model(handle, built)
    result = optimize_recipe(loaded, output=output, reporter=shown, task=built, baseline=handle)
    if reporter is None and not quiet:
        shown.log(f"[bold]{result.record.deploy_line()}[/] (in {result.run_dir})")
    return result


def _given(**keys: Any) -> dict[str, Any]:
    """The keys given (not None): the others keep their recipe defaults."""
    return {k: v for k, v in keys.items() if v is not None}
