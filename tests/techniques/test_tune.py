"""The tune stage: samplers, bad input, failing trials, resume after SIGKILL, shared PostgreSQL studies,
Pareto fronts, and tuning a later stage's setting."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import optuna
import pytest
import torch
import yaml
from torch import nn
from typer.testing import CliRunner

import leanml
from leanml.errors import InvalidInputError, StageError
from leanml.models import MLP, Model, model_names, register_model
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._tune_api import tune_recipe
from leanml.techniques import Stage, StageConfig, StageResult, register_stage, unregister_stage
from leanml.techniques.tune._study import open_storage

from ..conftest import FAST_MEASURE

MLP_TASK = {"data": "breast_cancer", "model": "mlp", "model_args": {"width": 8, "depth": 1}}
TRAIN = {"epochs": 2, "batch_size": 64, "lr": 0.01, "schedule": "none"}


class _Scaled(nn.Module):
    """An MLP whose outputs are multiplied by ``scale``: a huge scale makes the training loss infinite."""

    def __init__(self, in_features: int, n_outputs: int, scale: float) -> None:
        super().__init__()
        self.mlp = MLP(in_features, n_outputs, width=8, depth=1)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x) * self.scale


if "tune_test_scaled" not in model_names():

    @register_model("tune_test_scaled")
    def _scaled(*, in_shape: tuple[int, ...], n_outputs: int, scale: float = 1.0) -> nn.Module:
        return _Scaled(math.prod(in_shape), n_outputs, scale)


def _recipe(**overrides: Any) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "name": "tune-test",
        "seed": 0,
        "task": copy.deepcopy(MLP_TASK),
        "train": dict(TRAIN),
        "measure": dict(FAST_MEASURE),
        "constraints": {"max_metric_drop": 0.05},
        "export": {"formats": ["onnx"]},
    }
    recipe.update(overrides)
    return recipe


@pytest.fixture(scope="module")
def task():
    return build_task(load_recipe(_recipe()))


def _model(task, **args: Any) -> Model:
    model_args = {**task.model_args, **args}
    return Model(
        torch=task.build_torch_model(model_args=model_args),
        model_args=model_args,
        factory=task.model,
    )


def _tune(task, tmp_path: Path, **kwargs: Any):
    kwargs.setdefault("train", {"epochs": 1})
    kwargs.setdefault("pruner", "none")
    return leanml.tune(
        _model(task),
        task,
        train_config=TRAIN,
        measure_config=FAST_MEASURE,
        work_dir=tmp_path,
        **kwargs,
    )


# -- samplers ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sampler", "trials"),
    [("grid", None), ("random", 3), ("tpe", 6), ("gp", 6), ("nsga2", 3)],
)
def test_each_sampler_runs_a_study_and_keeps_its_best_trial(task, tmp_path, sampler, trials):
    space = {
        "train.lr": [0.003, 0.03]
        if sampler == "grid"
        else {"low": 1e-3, "high": 5e-2, "log": True},
        "task.model_args.width": [4, 8],
    }
    out = _tune(task, tmp_path, space=space, sampler=sampler, trials=trials)
    details = out.result.details
    expected = 4 if sampler == "grid" else trials
    assert details["trial_counts"]["COMPLETE"] == expected
    assert len(details["trials"]) == expected
    values = [t["metric"] for t in details["trials"]]
    chosen = details["trials"][details["chosen_trial"]]
    assert chosen["metric"] == max(values)
    assert details["best_params"] == chosen["params"]
    assert out.model.model_args["width"] == chosen["params"]["task.model_args.width"]
    assert (
        out.model.torch is not None
        and out.model.torch.head.in_features == chosen["params"]["task.model_args.width"]
    )
    if sampler == "grid":
        assert sorted(
            (t["params"]["train.lr"], t["params"]["task.model_args.width"])
            for t in details["trials"]
        ) == [
            (0.003, 4),
            (0.003, 8),
            (0.03, 4),
            (0.03, 8),
        ]
    assert (tmp_path / "study.db").is_file()
    titles = [p.title for p in out.result.plots]
    assert "Optimization history" in titles


def test_grid_study_of_a_recipe_is_stored_in_the_run_directory_and_a_rerun_runs_nothing_new(
    tmp_path, validate_metrics
):
    recipe = _recipe(
        stages=[
            {
                "tune": {
                    "sampler": "grid",
                    "pruner": "none",
                    "space": {"train.batch_size": [32, 64]},
                    "train": {"epochs": 1},
                }
            }
        ]
    )
    first = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(first.metrics)
    stage = first.metrics["stages"][1]
    assert stage["kind"] == "tune" and stage["trial_counts"]["COMPLETE"] == 2
    assert (tmp_path / "run" / "study.db").is_file()
    assert any("optuna-dashboard sqlite:///" in n for n in stage["notes"])
    again = leanml.run(recipe, output=tmp_path / "run")
    stage2 = again.metrics["stages"][1]
    assert [t["number"] for t in stage2["trials"]] == [
        0,
        1,
    ]  # the finished grid was kept, not rerun
    assert stage2["trials"] == stage["trials"]


# -- bad input --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("tune", "needles"),
    [
        (
            {"space": {"train.lr": {"low": 0.1, "high": 0.01}}},
            ["tune.space['train.lr'].low", "must be < high"],
        ),
        (
            {"space": {"train.lr": {"low": 0.01, "high": 0.01}}},
            ["tune.space['train.lr'].low", "must be < high"],
        ),
        (
            {"space": {"train.lrate": [0.1, 0.01]}},
            ["tune.space['train.lrate']", "'lrate' is not one"],
        ),
        (
            {"space": {"task.data": ["digits", "wine"]}},
            ["tune.space['task.data']", "must be a recipe path"],
        ),
        (
            {"space": {"train.batch_size": [32]}},
            ["tune.space['train.batch_size']", "at least two values"],
        ),
        (
            {"space": {"train.batch_size": [16, 32, 64]}, "sampler": "grid", "trials": 2},
            ["tune.trials", "grid's size (3 points)"],
        ),
        (
            {"space": {"train.lr": {"low": 1e-3, "high": 1e-2}}, "sampler": "grid"},
            ["tune.sampler", "space['train.lr']"],
        ),
        (
            {"space": {"train.lr": {"low": 0, "high": 1e-2, "log": True}}},
            ["tune.space['train.lr']", "low > 0"],
        ),
        ({"space": {"train.lr": [0.1, 0.2]}, "objectives": ["latency"]}, ["tune.objectives"]),
        (
            {
                "space": {"train.lr": [0.1, 0.2]},
                "objectives": ["metric", "size"],
                "pruner": "median",
            },
            ["tune.pruner"],
        ),
        ({"space": {"train.lr": [0.1, 0.2]}, "storage": "not a url"}, ["tune.storage"]),
        ({"space": {}}, ["tune.space", "at least one"]),
    ],
)
def test_bad_settings_fail_in_one_line_naming_the_path(task, tmp_path, tune, needles):
    config = {"sampler": "tpe", **tune}
    with pytest.raises(InvalidInputError) as e:
        _tune(task, tmp_path, **config)
    message = str(e.value)
    assert "\n" not in message
    for n in needles:
        assert n in message, message


@pytest.mark.parametrize(
    ("space", "storage", "needles"),
    [
        (
            {"task.model_args.widht": [4, 8]},
            None,
            ["tune.space['task.model_args.widht']", "no argument 'widht'", "width"],
        ),
        (
            {"train.optimizer": ["adam", "rmsprop"]},
            None,
            ["tune.space['train.optimizer']", "'rmsprop'"],
        ),
        (
            {"train.lr": [0.01, 0.02]},
            "postgresql://leanml:x@127.0.0.1:1/nothing",
            ["tune.storage", "cannot be opened", "***"],
        ),
    ],
)
def test_input_the_model_or_storage_cannot_take_fails_before_any_trial(
    task, tmp_path, space, storage, needles
):
    with pytest.raises(InvalidInputError) as e:
        _tune(task, tmp_path, space=space, trials=2, **({"storage": storage} if storage else {}))
    for n in needles:
        assert n in str(e.value), str(e.value)
    assert not (tmp_path / "study.db").exists()


def test_cli_tune_rejects_a_path_to_a_stage_the_recipe_lacks_with_exit_2(tmp_path):
    from leanml.cli import (
        _tune,  # noqa: F401  (registers the command)
        app,
    )

    recipe = _recipe(
        stages=[
            {"tune": {"space": {"stages[3].prune.amount": [0.2, 0.4]}}},
            {"prune": {"amount": 0.3}},
        ]
    )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    r = CliRunner().invoke(app, ["tune", str(path), "--output", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "tune.space['stages[3].prune.amount']" in r.stderr and "has 2 stages" in r.stderr


def test_run_rejects_a_bad_later_stage_path_before_the_baseline_trains(tmp_path):
    recipe = _recipe(
        stages=[
            {"tune": {"space": {"stages[1].prune.amount": [0.2, 1.5]}}},
            {"prune": {"amount": 0.3}},
        ]
    )
    with pytest.raises(InvalidInputError, match=r"has 1.5, which stages\[1\].prune rejects"):
        leanml.run(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written


# -- failures ---------------------------------------------------------------------------------------


def test_a_trial_that_raises_or_diverges_is_recorded_failed_and_the_study_goes_on(tmp_path):
    recipe = _recipe(task={**MLP_TASK, "model": "tune_test_scaled", "model_args": {}})
    task = build_task(load_recipe(recipe))
    # scale 1e39 overflows the outputs: the trainer stops on the non-finite loss. "x" is not a
    # number: building the model raises inside the trial.
    out = _tune(task, tmp_path, space={"task.model_args.scale": [1.0, 1e39, "x"]}, sampler="grid")
    rows = {t["params"]["task.model_args.scale"]: t for t in out.result.details["trials"]}
    assert rows[1.0]["state"] == "COMPLETE"
    assert rows[1e39]["state"] == "FAIL" and "training loss became" in rows[1e39]["error"]
    assert rows["x"]["state"] == "FAIL" and "TypeError" in rows["x"]["error"]
    assert out.result.details["best_params"] == {"task.model_args.scale": 1.0}
    assert any("2 trials failed" in n for n in out.result.notes)


def test_when_every_trial_fails_the_stage_fails_with_the_first_error(tmp_path):
    task = build_task(
        load_recipe(_recipe(task={**MLP_TASK, "model": "tune_test_scaled", "model_args": {}}))
    )
    with pytest.raises(StageError, match="training loss became"):
        _tune(task, tmp_path, space={"task.model_args.scale": [1e39, 1e40]}, sampler="grid")


# -- early stopping of trials -----------------------------------------------------------------------


def test_median_pruner_stops_hopeless_trials_from_their_epoch_reports(task, tmp_path):
    # lr 1e-6 barely moves from the random start: once three trials finished, the median pruner
    # stops such trials after their first epochs.
    out = _tune(
        task,
        tmp_path,
        space={"train.lr": [1e-6, 3e-2]},
        sampler="random",
        trials=8,
        pruner="median",
        train={"epochs": 3, "early_stopping": {"enabled": False}},
    )
    rows = out.result.details["trials"]
    pruned = [t for t in rows if t["state"] == "PRUNED"]
    assert pruned and all(t["params"]["train.lr"] == 1e-6 for t in pruned)
    study = optuna.load_study(
        study_name=out.result.details["study"]["name"], storage=f"sqlite:///{tmp_path / 'study.db'}"
    )
    for t in study.trials:
        steps = sorted(t.intermediate_values)
        assert steps and steps[0] == 1  # every trial reported its epochs
        if t.state.name == "PRUNED":
            assert steps[-1] < 3


# -- multi-objective --------------------------------------------------------------------------------


def test_two_objectives_give_a_pareto_front_and_the_smallest_point_within_the_drop_is_kept(
    task, tmp_path
):
    out = _tune(
        task,
        tmp_path,
        space={"task.model_args.width": [1, 2, 8, 32]},
        sampler="grid",
        objectives=["metric", "size"],
        max_metric_drop=0.05,
    )
    d = out.result.details
    complete = [(t["metric"], t["size"]) for t in d["trials"] if t["state"] == "COMPLETE"]
    front = [(p["metric"], p["size"]) for p in d["pareto_front"]]
    assert front
    for m, s in front:  # nobody dominates a front point
        assert not any(m2 >= m and s2 <= s and (m2, s2) != (m, s) for m2, s2 in complete)
    assert len({s for _, s in complete}) == 4  # sizes were measured on each exported model
    chosen = d["trials"][d["chosen_trial"]]
    assert (chosen["metric"], chosen["size"]) in front
    feasible = [(m, s) for m, s in front if d["baseline_val_metric"] - m <= 0.05]
    if feasible:
        assert chosen["size"] == min(s for _, s in feasible)
    else:
        assert chosen["metric"] == max(m for m, _ in front)
    assert any(p.title.startswith("Pareto front") for p in out.result.plots)


# -- tuning a later stage ---------------------------------------------------------------------------


class _ProbeConfig(StageConfig):
    factor: float = 1.0


@register_stage("tune_probe")
class _Probe(Stage):
    """Scales the last layer by ``factor`` (0 destroys the model) and reports the factor it used."""

    Config = _ProbeConfig

    def apply(self, model: Model, ctx) -> StageResult:
        assert model.torch is not None
        with torch.no_grad():
            for p in model.torch.head.parameters():
                p.mul_(self.config.factor)  # type: ignore[attr-defined]
        return StageResult(model, details={"factor_used": self.config.factor})  # type: ignore[attr-defined]


def test_a_later_stage_setting_is_tuned_by_applying_that_stage_in_each_trial(tmp_path):
    try:
        recipe = _recipe(
            stages=[
                {
                    "tune": {
                        "sampler": "grid",
                        "pruner": "none",
                        "space": {"stages[1].tune_probe.factor": [0.0, 1.0]},
                    }
                },
                {"tune_probe": {"factor": 0.0}},
            ]
        )
        result = leanml.run(recipe, output=tmp_path / "run")
        tune_rec, probe_rec = result.metrics["stages"][1], result.metrics["stages"][2]
        metrics = {
            t["params"]["stages[1].tune_probe.factor"]: t["metric"] for t in tune_rec["trials"]
        }
        assert (
            metrics[1.0] > metrics[0.0] + 0.2
        )  # the trial with factor 0 was scored after the probe ran
        assert tune_rec["stage_overrides"] == {"1": {"factor": 1.0}}
        assert (
            probe_rec["factor_used"] == 1.0
        )  # the pipeline ran the later stage with the tuned value
    finally:
        unregister_stage("tune_probe")


# -- resume and distribution ------------------------------------------------------------------------


def _complete(db: Path) -> list[tuple[int, str]]:
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db, timeout=5) as con:
            return con.execute(
                "SELECT number, datetime_complete FROM trials WHERE state = 'COMPLETE' ORDER BY number"
            ).fetchall()
    except sqlite3.OperationalError:  # the tables are not created yet
        return []


def test_a_run_killed_mid_study_resumes_with_its_finished_trials_kept(tmp_path):
    trials = 5
    recipe = _recipe(
        name="killed",
        train={**TRAIN, "epochs": 1},
        stages=[
            {
                "tune": {
                    "sampler": "random",
                    "pruner": "none",
                    "trials": trials,
                    "train": {"epochs": 10, "early_stopping": {"enabled": False}},
                    "space": {"train.lr": {"low": 1e-3, "high": 3e-2, "log": True}},
                }
            }
        ],
    )
    run_dir = tmp_path / "run"
    db = run_dir / "study.db"
    code = "import json, sys, leanml; leanml.run(json.loads(sys.argv[1]), output=sys.argv[2])"
    proc = subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(recipe), str(run_dir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not _complete(db) and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed mid-study"
        assert _complete(db), "no trial finished in time"
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    kept = _complete(db)
    assert 1 <= len(kept) < trials
    result = leanml.run(recipe, output=run_dir)
    after = _complete(db)
    assert after[: len(kept)] == kept  # the finished trials are there, unchanged
    assert len(after) == trials  # only the remaining budget ran
    rows = result.metrics["stages"][1]["trials"]
    assert sum(r["state"] == "COMPLETE" for r in rows) == trials
    assert result.metrics["stages"][1]["notes"][0].endswith(
        f"{trials - len(kept)} ran now, {len(kept)} were kept from earlier runs."
    )


def test_four_workers_share_one_postgresql_study_and_record_each_trial_once(tmp_path):
    url = os.environ.get("LEANML_TEST_POSTGRES_URL")
    if not url:
        pytest.skip(
            "set LEANML_TEST_POSTGRES_URL=postgresql://leanml:leanml@127.0.0.1:5432/leanml with a running PostgreSQL "
            "(apt-get install postgresql; pg_ctlcluster 15 main start; create role and database leanml) to run this test"
        )
    name = f"leanml-test-{uuid.uuid4().hex[:8]}"
    trials = 8
    recipe = _recipe(
        name="pg",
        task={
            "data": "breast_cancer",
            "model": "sklearn:LogisticRegression",
            "model_args": {"max_iter": 200},
        },
        stages=[
            {
                "tune": {
                    "sampler": "random",
                    "trials": trials,
                    "storage": url,
                    "study_name": name,
                    "space": {"task.model_args.C": {"low": 1e-3, "high": 10.0, "log": True}},
                }
            }
        ],
    )
    try:
        summaries = tune_recipe(recipe, workers=4, output=tmp_path / "run")
        assert summaries[0].counts == {"COMPLETE": trials}
        study = optuna.load_study(study_name=name, storage=open_storage(url))
        numbers = sorted(t.number for t in study.trials)
        assert numbers == list(range(trials))
        assert (
            len({t.params["task.model_args.C"] for t in study.trials}) == trials
        )  # four samplers, four seeds
        workers = {t.user_attrs.get("worker") for t in study.trials}
        assert workers == {0, 1, 2, 3}
        # a rerun of the recipe finds the budget spent and keeps the study as it is
        again = tune_recipe(recipe, workers=4, output=tmp_path / "run")
        assert again[0].ran == 0 and again[0].counts == {"COMPLETE": trials}
    finally:
        try:
            optuna.delete_study(study_name=name, storage=open_storage(url))
        except KeyError:
            pass
