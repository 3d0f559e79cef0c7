"""The tune stage's charts (``leanml.techniques.tune._study.plots``): stopped trials shown,
importances only from enough complete trials."""

from __future__ import annotations

import optuna

from leanml.techniques.tune._study import MIN_TRIALS_FOR_IMPORTANCES, plots

optuna.logging.set_verbosity(optuna.logging.WARNING)


def _study(complete: int, stopped: int) -> optuna.Study:
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(0))
    for i in range(complete + stopped):
        trial = study.ask()
        x = trial.suggest_float("lr", 1e-3, 1e-1, log=True)
        trial.suggest_int("width", 8, 64)
        trial.report(0.5 + x, 1)
        if i % 2 == 1 and stopped:
            stopped -= 1
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            study.tell(trial, 0.9 + x)
    return study


def test_history_shows_stopped_trials_as_markers_and_no_importances_from_few_trials():
    charts, notes = plots(_study(3, 2), ["metric"], "accuracy", [])
    assert [c.title for c in charts] == ["Optimization history"]
    history = charts[0]
    label = "stopped early (Optuna pruner): last val accuracy"
    assert history.series[label][0] == [1, 3] and label in history.points
    assert history.series["trial accuracy"][0] == [0, 2, 4]  # trial numbers: integer ticks
    assert any(f"at least {MIN_TRIALS_FOR_IMPORTANCES} complete trials" in n for n in notes)


def test_importances_are_shown_from_enough_complete_trials():
    charts, notes = plots(_study(MIN_TRIALS_FOR_IMPORTANCES, 0), ["metric"], "accuracy", [])
    assert [c.kind for c in charts] == ["line", "bar"] and not notes
    assert set(charts[1].series["importance"][0]) == {"lr", "width"}
