"""What a tune study found, as the stage's result: the chosen model, notes, trial table, charts."""

from __future__ import annotations

from typing import Any

from ...errors import StageError
from ...search import redact
from .._base import StageContext, StageResult
from ._objective import Objective, split_params, stage_overrides
from ._study import FINISHED, choose, describe_params, plots, trial_rows


def study_result(
    study: Any,
    objective: Objective,
    ctx: StageContext,
    config: Any,
    *,
    storage: str,
    directions: list[str],
    seconds: float,
    before: int,
) -> StageResult:
    """Choose the trial to keep (retraining it when its model is not in this process) and report the study.

    Args:
        study: the stage's Optuna study; objective: this process's objective (its cache and errors).
        config: the stage's TuneConfig; storage: the study's URL; directions: of the objectives.
        seconds: wall-clock of this process's optimize; before: trials finished before it.

    Raises:
        the first trial's exception when every trial of this process failed, or StageError when
        no trial completed.
    """
    cfg = config
    rows = trial_rows(study)
    complete = [r for r in rows if r.state == "COMPLETE"]
    if not complete:
        failed = [r for r in rows if r.state == "FAIL" and r.error]
        if objective.errors:
            raise objective.errors[0]
        if failed:
            raise StageError(f"all {len(rows)} trials failed; the first: {failed[0].error}")
        raise StageError(
            f"no trial completed ({len(rows)} trials: {_counts(rows)}); raise trials or timeout, or use pruner: none"
        )
    metric = ctx.task.metric
    choice = choose(
        study,
        cfg.objectives,
        baseline=ctx.baseline_val_metric,
        constraints=ctx.constraints,
        higher_is_better=metric.higher_is_better,
    )
    settings = split_params(dict(choice.trial.params), cfg.targets)
    notes: list[str] = []
    cached = objective.cache.get(choice.trial.number)
    if cached is None:
        cached = objective.train(settings, None)
        if objective.retrains:
            notes.append(
                f"Retrained trial {choice.trial.number}'s settings with the run's seed (it ran in another process or an earlier run)."
            )
    train_config = ctx.train_config.merged(settings.train) if settings.train else None
    overrides = stage_overrides(ctx.recipe, settings.stages) if settings.stages else {}

    ran_now = objective.calls
    overhead = (seconds - objective.seconds) / ran_now if ran_now > 0 and seconds > 0 else None
    front = choice.front
    notes.insert(
        0,
        f"{len(rows)} trials ({_counts(rows)}) with sampler {cfg.sampler}; {ran_now} ran now, {before} were kept from earlier runs.",
    )
    notes.append(
        f"Chose trial {choice.trial.number}, {choice.reason}: {metric.name} {choice.trial.values[0]:.4f} on validation ({describe_params(choice.trial.params)})."
    )
    if not choice.meets_constraint:
        notes.append(
            f"Its validation {metric.name} is more than max_metric_drop {ctx.max_metric_drop} below the baseline's {ctx.baseline_val_metric:.4f}."
        )
    if len(cfg.objectives) > 1:
        unit = "ms" if cfg.objectives[1] == "latency" else "bytes"
        points = "; ".join(
            f"#{t.number} {metric.name} {t.values[0]:.4f} / {t.values[1]:.4g} {unit}" for t in front
        )
        notes.append(f"Pareto front ({len(front)} points, measured in ONNX Runtime): {points}.")
    if overrides:
        notes.append(
            "Later stages get: " + "; ".join(f"stages[{i}] {v}" for i, v in overrides.items()) + "."
        )
    failed = [r for r in rows if r.state == "FAIL"]
    if failed:
        notes.append(
            f"{len(failed)} trials failed; the first: trial {failed[0].number}: {failed[0].error or 'no error recorded (its process died)'}."
        )
    notes.append(
        f"Open the study: optuna-dashboard {redact(storage)} (study {study.study_name!r}); "
        "optuna-dashboard is not a leanml dependency: `pip install optuna-dashboard` first."
    )
    charts, chart_notes = plots(study, cfg.objectives, metric.name, front)
    notes.extend(chart_notes)
    details: dict[str, Any] = {
        "study": {
            "name": study.study_name,
            "storage": redact(storage),
            "sampler": cfg.sampler,
            "pruner": cfg.pruner,
            "objectives": cfg.objectives,
            "directions": directions,
        },
        "best_params": dict(choice.trial.params),
        "chosen_trial": choice.trial.number,
        "baseline_val_metric": ctx.baseline_val_metric,
        "trials": [r.as_dict(cfg.objectives) for r in rows],
        "trial_counts": {
            s: sum(r.state == s for r in rows) for s in (*FINISHED, "RUNNING", "WAITING")
        },
        "tuner_overhead_s_per_trial": overhead,
    }
    if len(cfg.objectives) > 1:
        details["pareto_front"] = [
            {
                "number": t.number,
                cfg.objectives[0]: t.values[0],
                cfg.objectives[1]: t.values[1],
                "params": dict(t.params),
            }
            for t in front
        ]
    if overrides:
        details["stage_overrides"] = {str(k): v for k, v in overrides.items()}
    return StageResult(
        model=cached.model,
        notes=notes,
        details=details,
        plots=charts,
        train_config=train_config,
        train_result=cached.train_result,
        stage_overrides=overrides,
    )


def _counts(rows: list[Any]) -> str:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state.lower()] = counts.get(r.state.lower(), 0) + 1
    return ", ".join(f"{n} {s}" for s, n in counts.items())
