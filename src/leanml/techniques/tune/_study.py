"""The Optuna side of a tune stage: its study's name and storage, sampler and pruner, and what a
study found (the storage itself, budget claims and worker processes are ``leanml.search``'s)."""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ...charts import Plot
from ...constraints import Constraints
from ...errors import InvalidInputError
from ._space import Dim

if TYPE_CHECKING:
    import optuna

FINISHED = ("COMPLETE", "PRUNED", "FAIL")
OBJECTIVE_UNITS = {"latency": "latency p50 at batch 1 (ms)", "size": "artifact size (bytes)"}


def default_storage(work_dir: Path, in_recipe: bool) -> str:
    """``study.db`` in the run directory (``<run>/stages/NN-name`` is the stage's folder)."""
    folder = work_dir.parent.parent if in_recipe else work_dir
    folder.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(folder / 'study.db').resolve()}"


def study_name(recipe_name: str, stage_index: int, identity: dict[str, Any]) -> str:
    """``<recipe>-tune<index>-<hash>``: the same recipe continues its study; a changed search starts a new one.

    ``identity`` holds what a trial's value depends on (task, training, space, objectives), so a
    changed space never mixes its trials with another's in one study.
    """
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode()).hexdigest()[
        :8
    ]
    return f"{recipe_name}-tune{stage_index}-{digest}"


def make_sampler(
    name: str, space: dict[str, Dim], seed: int, n_objectives: int
) -> optuna.samplers.BaseSampler:
    import optuna

    if name == "grid":
        grid = {path: dim.grid() for path, dim in space.items()}
        return optuna.samplers.GridSampler(grid, seed=seed)  # type: ignore[arg-type]
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=5)
    if name == "gp":
        from optuna.exceptions import ExperimentalWarning

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=5)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed, population_size=8)
    raise InvalidInputError(
        f"tune.sampler must be one of grid, random, tpe, gp, nsga2; got {name!r}"
    )


def make_pruner(name: str) -> optuna.pruners.BasePruner:
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource="auto", reduction_factor=3
        )
    return optuna.pruners.NopPruner()


def grid_size(space: dict[str, Dim]) -> int | None:
    """Points of the full grid, or None when an entry is a continuous range."""
    total = 1
    for dim in space.values():
        values = dim.grid()
        if values is None:
            return None
        total *= len(values)
    return total


@dataclass
class TrialRow:
    """One row of the trial table."""

    number: int
    state: str
    values: list[float] | None
    params: dict[str, Any]
    duration_s: float | None
    error: str | None = None

    def as_dict(self, objectives: list[str]) -> dict[str, Any]:
        row: dict[str, Any] = {"number": self.number, "state": self.state, "params": self.params}
        for i, name in enumerate(objectives):
            row[name] = None if self.values is None else _finite(self.values[i])
        row["duration_s"] = None if self.duration_s is None else round(self.duration_s, 3)
        if self.error:
            row["error"] = self.error
        return row


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def trial_rows(study: optuna.Study) -> list[TrialRow]:
    """The study's trials, without those that found the budget spent and never ran."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if "skipped" in t.user_attrs:
            continue
        duration = t.duration.total_seconds() if t.duration is not None else None
        rows.append(
            TrialRow(
                t.number,
                t.state.name,
                list(t.values) if t.values else None,
                dict(t.params),
                duration,
                t.user_attrs.get("error") or t.user_attrs.get("stopped"),
            )
        )
    return rows


@dataclass
class Choice:
    """The trial a tune stage keeps, and why."""

    trial: optuna.trial.FrozenTrial
    reason: str
    front: list[optuna.trial.FrozenTrial] = field(default_factory=list)
    meets_constraint: bool = True


def choose(
    study: optuna.Study,
    objectives: list[str],
    *,
    baseline: float,
    constraints: Constraints,
    higher_is_better: bool,
) -> Choice:
    """The best trial; for two objectives, the cheapest Pareto point the constraints allow."""
    from optuna.trial import TrialState

    def drop(value: float) -> float:
        return baseline - value if higher_is_better else value - baseline

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(objectives) == 1:
        best = study.best_trial
        ok = constraints.allows(drop(best.values[0]))
        return Choice(
            best, f"the best {objectives[0]} of {len(complete)} complete trials", [best], ok
        )
    front = sorted(study.best_trials, key=lambda t: t.values[1])
    feasible = [t for t in front if constraints.allows(drop(t.values[0]))]
    if feasible:
        pick = feasible[0]
        return Choice(
            pick,
            f"the {'fastest' if objectives[1] == 'latency' else 'smallest'} of {len(feasible)} Pareto points within max_metric_drop {constraints.max_metric_drop} of the baseline",
            front,
            True,
        )
    pick = min(front, key=lambda t: drop(t.values[0]))
    return Choice(
        pick,
        f"no Pareto point is within max_metric_drop {constraints.max_metric_drop} of the baseline; kept the most accurate",
        front,
        False,
    )


# fewer complete trials than this make an importance ranking noise (issue 16 saw one from 3)
MIN_TRIALS_FOR_IMPORTANCES = 5


def plots(
    study: optuna.Study, objectives: list[str], metric_name: str, front: list[Any]
) -> tuple[list[Plot], list[str]]:
    """Optimization history, parameter importances and (two objectives) the Pareto front; notes on what was left out."""
    import optuna
    from optuna.trial import TrialState

    out: list[Plot] = []
    notes: list[str] = []
    complete = sorted(
        study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)), key=lambda t: t.number
    )
    stopped = [
        t
        for t in study.get_trials(deepcopy=False, states=(TrialState.PRUNED,))
        if t.intermediate_values
    ]
    if not complete:
        return out, notes
    maximize = study.directions[0] == optuna.study.StudyDirection.MAXIMIZE
    xs = [t.number for t in complete]
    ys = [t.values[0] for t in complete]
    best, running = [], None
    for y in ys:
        running = y if running is None else (max(running, y) if maximize else min(running, y))
        best.append(running)
    series = {f"trial {metric_name}": (xs, ys), "best so far": (xs, best)}
    points = (f"trial {metric_name}",)
    if stopped:
        # a trial the Optuna pruner stopped has no final value: show its last reported one
        label = f"stopped early (Optuna pruner): last val {metric_name}"
        series[label] = (
            [t.number for t in stopped],
            [t.intermediate_values[max(t.intermediate_values)] for t in stopped],
        )
        points = (*points, label)
    out.append(Plot("Optimization history", "line", series, "trial", metric_name, points))
    importances: dict[str, float] = {}
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCES:
        notes.append(
            f"Parameter importances are not shown: they need at least "
            f"{MIN_TRIALS_FOR_IMPORTANCES} complete trials and this study has {len(complete)}, "
            "too few for the ranking to mean anything."
        )
    else:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                importances = optuna.importance.get_param_importances(
                    study, target=lambda t: t.values[0]
                )
        except (RuntimeError, ValueError) as e:  # no parameter varied
            notes.append(f"Parameter importances were not computed: {str(e).splitlines()[0][:160]}")
    if importances:
        out.append(
            Plot(
                f"Parameter importances (for {metric_name}, from {len(complete)} complete trials)",
                "bar",
                {"importance": (list(importances), [float(v) for v in importances.values()])},
                "parameter",
                "importance (fANOVA share, sums to 1)",
            )
        )
    if len(objectives) > 1:
        unit = OBJECTIVE_UNITS[objectives[1]]
        on_front = {t.number for t in front}
        rest = [t for t in complete if t.number not in on_front]
        out.append(
            Plot(
                f"Pareto front: {metric_name} vs {objectives[1]} (ONNX Runtime)",
                "scatter",
                {
                    "trials": ([t.values[1] for t in rest], [t.values[0] for t in rest]),
                    "Pareto front": ([t.values[1] for t in front], [t.values[0] for t in front]),
                },
                unit,
                metric_name,
            )
        )
    return out, notes


def describe_params(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={_fmt(v)}" for k, v in params.items()) or "(no parameters)"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)
