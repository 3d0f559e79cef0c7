"""The tune stage: samplers, bad input, failing trials, resume after SIGKILL, shared PostgreSQL studies,
Pareto fronts, and tuning a later stage's setting."""

from __future__ import annotations

import copy
import json
import math
import os
import signal
import subprocess
import sys
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
from leanml.pipeline import build_task, load_recipe, tune_recipe
from leanml.search import open_storage
from leanml.techniques import Stage, StageConfig, StageResult, register_stage, unregister_stage

from ..conftest import FAST_MEASURE, LEANML

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
        task=task,
        train_config=TRAIN,
        measure=FAST_MEASURE,
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


@pytest.mark.slow
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


@pytest.mark.slow
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


@pytest.mark.slow
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


def _trials(run_dir: Path) -> list[optuna.trial.FrozenTrial]:
    """The trials of the only study in the run directory's study.db."""
    storage = f"sqlite:///{run_dir / 'study.db'}"
    return optuna.load_study(study_name=None, storage=storage).trials


# Runs a recipe and SIGKILLs its own process when the tune stage starts training trial N: no
# sleeping, no race; that trial is left RUNNING in the study, as after a crash.
_KILLED_AT = """
import json, os, signal, sys
import leanml
from leanml.pipeline import Reporter

class KillAt(Reporter):
    def train_start(self, description, epochs):
        if description == sys.argv[3]:
            os.kill(os.getpid(), signal.SIGKILL)

leanml.run(json.loads(sys.argv[1]), output=sys.argv[2], reporter=KillAt())
"""


@pytest.mark.slow
def test_a_study_killed_mid_trial_resumes_without_replaying_any_configuration(tmp_path):
    trials = 6
    recipe = _recipe(
        name="killed",
        train={**TRAIN, "epochs": 1},
        stages=[
            {
                "tune": {
                    "sampler": "tpe",
                    "pruner": "none",
                    "trials": trials,
                    "train": {"epochs": 1},
                    "space": {"train.lr": {"low": 1e-3, "high": 3e-2, "log": True}},
                }
            }
        ],
    )
    run_dir = tmp_path / "run"
    killed = subprocess.run(
        [sys.executable, "-c", _KILLED_AT, json.dumps(recipe), str(run_dir), "trial 2"],
        capture_output=True,
        check=False,
        timeout=900,
    )
    assert killed.returncode == -signal.SIGKILL, killed.stderr.decode()[-2000:]
    before = _trials(run_dir)
    assert [t.state.name for t in before] == ["COMPLETE", "COMPLETE", "RUNNING"]

    result = leanml.run(recipe, output=run_dir)
    after = _trials(run_dir)
    assert [(t.number, t.datetime_complete) for t in after[:2]] == [
        (t.number, t.datetime_complete) for t in before[:2]
    ]  # the finished trials are kept, unchanged
    assert after[2].state.name == "FAIL" and after[2].user_attrs["stopped"] == "its process died"
    assert [t.state.name for t in after[3:]] == ["COMPLETE"] * (trials - 2)
    lrs = [t.params["train.lr"] for t in after]
    assert len(set(lrs)) == len(lrs)  # the resumed sampler replayed none of the earlier points
    stage = result.metrics["stages"][1]
    assert stage["trial_counts"]["COMPLETE"] == trials
    assert stage["notes"][0].endswith(f"{trials - 2} ran now, 2 were kept from earlier runs.")


def test_a_fresh_study_with_the_same_seed_draws_the_same_trials(task, tmp_path):
    space = {"train.lr": {"low": 1e-3, "high": 3e-2, "log": True}}
    runs = [
        _tune(task, tmp_path / name, space=space, sampler="random", trials=3) for name in ("a", "b")
    ]
    params = [[t["params"] for t in out.result.details["trials"]] for out in runs]
    assert params[0] == params[1]
    assert len({p["train.lr"] for p in params[0]}) == 3


class _InterruptAt(leanml.pipeline.Reporter):
    def __init__(self, description: str) -> None:
        self.description = description

    def train_start(self, description: str, epochs: int) -> None:
        if description == self.description:
            raise KeyboardInterrupt


def test_ctrl_c_in_a_trial_marks_it_failed_and_a_rerun_runs_the_whole_budget(task, tmp_path):
    space = {"train.lr": {"low": 1e-3, "high": 3e-2, "log": True}}
    with pytest.raises(KeyboardInterrupt):
        _tune(task, tmp_path, space=space, trials=3, reporter=_InterruptAt("trial 1"))
    assert [t.state.name for t in _trials(tmp_path)] == ["COMPLETE", "FAIL"]
    out = _tune(task, tmp_path, space=space, trials=3)
    assert (
        out.result.details["trial_counts"]["COMPLETE"] == 3
    )  # the interrupted trial does not count
    lrs = [t.params["train.lr"] for t in _trials(tmp_path)]
    assert len(set(lrs)) == len(lrs)


# A model factory for `leanml tune --workers 2` that stops the parent from inside a worker's trial
# (SIGINT as Ctrl-C does, or SIGKILL), then waits for the signal the parent or the kernel sends back.
_STOPPING_FACTORY = """
import math, os, signal
from leanml.models import MLP

def build(*, in_shape, n_outputs, stall=0):
    if stall:
        try:
            os.close(os.open(os.environ["LEANML_TEST_FLAG"], os.O_CREAT | os.O_EXCL))
            os.kill(os.getppid(), getattr(signal, os.environ["LEANML_TEST_SIGNAL"]))
        except FileExistsError:  # the other worker stops the parent
            pass
        signal.pause()
    return MLP(math.prod(in_shape), n_outputs, width=4, depth=1)
"""


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGINT", "SIGKILL"])
def test_workers_stop_with_their_parent_and_leave_no_trial_running(tmp_path, sig):
    (tmp_path / "leanml_test_stopping.py").write_text(_STOPPING_FACTORY)
    recipe = _recipe(
        name="stopped",
        task={**MLP_TASK, "model": "leanml_test_stopping:build", "model_args": {}},
        stages=[
            {
                "tune": {
                    "sampler": "random",
                    "pruner": "none",
                    "trials": 4,
                    "space": {"task.model_args.stall": [1, 2]},
                }
            }
        ],
    )
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "LEANML_TEST_SIGNAL": sig, "LEANML_TEST_FLAG": str(tmp_path / "flag")}
    cmd = [sys.executable, "-c", LEANML, "tune", str(path), "-w", "2", "-q"]
    # communicate() returns once every process holding the pipes (the parent and both workers)
    # has exited: an orphaned worker would keep it waiting until the timeout.
    proc = subprocess.run(
        [*cmd, "-o", str(tmp_path / "run")],
        capture_output=True,
        check=False,
        text=True,
        env=env,
        timeout=900,
    )
    assert (tmp_path / "flag").exists(), proc.stderr
    if sig == "SIGINT":
        assert proc.returncode == 130, proc.stderr
        assert proc.stderr.strip().splitlines() == [
            "leanml: interrupted; finished files are complete, nothing is half-written"
        ]
    else:
        assert proc.returncode == -signal.SIGKILL, proc.stderr
    trials = _trials(tmp_path / "run")
    states = [t.state.name for t in trials]
    assert "FAIL" in states and "RUNNING" not in states, (
        [(t.number, t.state.name, t.user_attrs) for t in trials],
        proc.stderr,
    )


def _pg_recipe(url: str, name: str, trials: int) -> dict[str, Any]:
    return _recipe(
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


def _ran(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    """The study's trials that ran (not those that found the budget already claimed)."""
    study = optuna.load_study(study_name=name, storage=open_storage(url))
    return [t for t in study.trials if "skipped" not in t.user_attrs]


@pytest.mark.slow
def test_two_processes_of_four_workers_share_one_postgresql_study_and_run_its_budget_once(
    tmp_path, pg_study
):
    url, name = pg_study
    trials = 12
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_pg_recipe(url, name, trials)))
    cmd = [sys.executable, "-m", "leanml.cli", "tune", str(path), "-w", "4", "-q"]
    procs = [
        subprocess.Popen([*cmd, "-o", str(tmp_path / f"run{i}")], stderr=subprocess.PIPE, text=True)
        for i in range(2)
    ]
    errors = [p.communicate(timeout=900)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], errors
    ran = _ran(url, name)
    assert [t.state.name for t in ran] == ["COMPLETE"] * trials  # exactly the budget, no overrun
    params = [t.params["task.model_args.C"] for t in ran]
    assert len(set(params)) == trials  # no two workers drew the same point
    assert {t.user_attrs["worker"] for t in ran} <= set(range(4))
    assert len({t.user_attrs["pid"] for t in ran}) > 1  # eight workers shared the study
    # a rerun finds the budget spent and keeps the study as it is
    again = tune_recipe(path, workers=4, output=tmp_path / "run0")
    assert again[0].ran == 0 and again[0].counts == {"COMPLETE": trials}
