"""`leanml optimize` / `stages: auto` as a run: the recipe form, bad input, plan.yaml, resume and
workers (the plan space is tested in tests/techniques/test_planning.py, the search's choice in
tests/search/)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import yaml
from typer.testing import CliRunner

import leanml
from leanml.cli import app
from leanml.errors import InvalidInputError
from leanml.pipeline import load_recipe
from leanml.search import open_storage

from ..conftest import tiny_recipe

runner = CliRunner()


def _auto(**optimize) -> dict:
    return tiny_recipe(stages="auto", optimize={"trials": 4, **optimize})


# -- the recipe form and bad input ----------------------------------------------------------------


def test_stages_auto_round_trips_through_the_recipe_as_run():
    r = load_recipe(_auto())
    assert r.planned and r.stages == []
    assert r.dump()["stages"] == "auto"
    assert r.dump()["optimize"]["trials"] == 4
    assert load_recipe(r.dump()).planned


@pytest.mark.parametrize(
    ("optimize", "message"),
    [
        ({"trials": 0}, r"optimize.trials must be at least 1: a search of 0 trials tries no plan"),
        (
            {"objective": "speed"},
            r"optimize.objective must be one of 'latency' or 'size'; got 'speed'",
        ),
        (
            {"techniques": ["prune", "magic"]},
            r"'magic', which is not a technique leanml plans with",
        ),
    ],
)
def test_bad_optimize_keys_are_one_line_naming_the_key(optimize, message):
    with pytest.raises(InvalidInputError, match=message):
        load_recipe(_auto(**optimize))


def test_a_stage_list_with_an_optimize_block_is_refused():
    with pytest.raises(InvalidInputError, match="give 'stages: auto'"):
        load_recipe(tiny_recipe(stages=[{"prune": {}}], optimize={"trials": 3}))


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--objective", "speed"], "--objective must be latency or size"),
        (["--trials", "0"], "--trials must be at least 1"),
    ],
)
def test_cli_bad_flags_exit_2_with_one_line(tmp_path, args, message):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(tiny_recipe()))
    r = runner.invoke(app, ["optimize", str(path), "-o", str(tmp_path / "run"), *args])
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_cli_inapplicable_technique_for_an_onnx_file_exits_2_saying_why(tmp_path, image_onnx):
    path = tmp_path / "r.yaml"
    recipe = tiny_recipe(task={"data": "digits", "model": str(image_onnx), "model_args": {}})
    recipe["optimize"] = {"techniques": ["distill"]}
    path.write_text(yaml.safe_dump(recipe))
    r = runner.invoke(app, ["optimize", str(path), "-o", str(tmp_path / "run")])
    assert r.exit_code == 2, r.output
    assert "optimize.techniques names 'distill', which does not apply" in r.output


def test_a_timeout_shorter_than_one_trial_says_the_measured_trial_time(tmp_path):
    with pytest.raises(
        InvalidInputError, match=r"shorter than one trial: the first took \d+\.\d s"
    ):
        leanml.run(_auto(timeout=0.01, techniques=["prune"]), output=tmp_path / "run", quiet=True)


# -- whole runs ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_optimize_runs_the_winning_plan_and_plan_yaml_reproduces_it(tmp_path, validate_metrics):
    out = tmp_path / "run"
    result = leanml.run(_auto(trials=4, techniques=["prune", "quantize"]), output=out, quiet=True)
    metrics = json.loads((out / "metrics.json").read_text())
    validate_metrics(metrics)
    opt = metrics["optimize"]
    assert opt["trials"] == 4 and len(opt["all_trials"]) == 4
    assert {r["combination"] for r in opt["all_trials"]} >= {"prune", "quantize"}  # the seed plans
    plan = yaml.safe_load((out / "plan.yaml").read_text())
    assert [next(iter(s)) for s in plan["stages"]] == [next(iter(s)) for s in opt["plan"]]
    assert yaml.safe_load((out / "recipe.yaml").read_text())["stages"] == "auto"
    assert "The plan search" in (out / "report.md").read_text()
    assert "<svg" in (out / "report.html").read_text().split("The plan search")[1]
    # the plan, run as an ordinary recipe with the same seed, gives the same model
    again = leanml.run(out / "plan.yaml", output=tmp_path / "again", quiet=True)
    assert again.metrics["final"] == result.metrics["final"]
    assert again.metrics["stages"][-1]["metric"] == pytest.approx(
        result.metrics["stages"][-1]["metric"]
    )
    # the run is the plan: a stage per planned technique, the last accepted one final
    assert [st["name"] for st in result.metrics["stages"][1:]] == [
        next(iter(e)) for e in opt["plan"]
    ]
    accepted = [st["name"] for st in result.metrics["stages"] if st["accepted"]]
    assert result.metrics["final"] == accepted[-1]


@pytest.mark.slow
def test_nothing_beating_the_baseline_says_so_and_the_result_is_the_baseline(tmp_path, monkeypatch):
    monkeypatch.setattr("leanml.search._choice.paired_latency_ratio", lambda *a, **k: {1: 1.0})
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(_auto(trials=2, techniques=["quantize"])))
    r = runner.invoke(app, ["optimize", str(path), "-o", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    assert "nothing beat the baseline" in " ".join(r.output.split())
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["final"] == "baseline" and metrics["optimize"]["plan"] == []
    assert yaml.safe_load((tmp_path / "run" / "plan.yaml").read_text())["stages"] == []


def _trials(run: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{run / 'study.db'}"
    (name,) = optuna.get_all_study_names(storage)
    return optuna.load_study(study_name=name, storage=storage).get_trials()


@pytest.mark.slow
def test_a_rerun_continues_the_study_and_measures_no_plan_twice(tmp_path):
    out = tmp_path / "run"
    leanml.run(_auto(trials=3, techniques=["prune", "quantize"]), output=out, quiet=True)
    first = {
        t.number: t.user_attrs["label"]
        for t in _trials(out)
        if t.state.name == "COMPLETE" and "same_as" not in t.user_attrs
    }
    assert len(first) == 3
    leanml.run(_auto(trials=5, techniques=["prune", "quantize"]), output=out, quiet=True)
    trials = [t for t in _trials(out) if t.state.name == "COMPLETE"]
    measured = [t for t in trials if "same_as" not in t.user_attrs]
    assert len(measured) == 5
    assert {t.number: t.user_attrs["label"] for t in measured if t.number in first} == first
    labels = [t.user_attrs["label"] for t in measured]
    assert len(set(labels)) == len(labels)  # no plan measured twice


_KILL_RECIPE = """
import sys, leanml
leanml.run(sys.argv[1], output=sys.argv[2], quiet=True)
"""


@pytest.mark.slow
def test_kill_9_mid_search_then_rerun_keeps_finished_trials_and_reruns_none(tmp_path):
    out = tmp_path / "run"
    recipe = _auto(trials=4, techniques=["prune", "quantize"])
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe))
    proc = subprocess.Popen([sys.executable, "-c", _KILL_RECIPE, str(path), str(out)])
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            if (out / "study.db").exists():
                try:
                    done = [t for t in _trials(out) if t.state.name == "COMPLETE"]
                except Exception:  # noqa: BLE001 (the study is being created)
                    done = []
                if len(done) >= 2:
                    break
            time.sleep(0.5)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    before = {t.number: t.user_attrs["label"] for t in _trials(out) if t.state.name == "COMPLETE"}
    assert len(before) >= 2
    leanml.run(path, output=out, quiet=True)
    trials = _trials(out)
    assert "RUNNING" not in {t.state.name for t in trials}
    measured = [t for t in trials if t.state.name == "COMPLETE" and "same_as" not in t.user_attrs]
    assert {t.number: t.user_attrs["label"] for t in measured if t.number in before} == before
    labels = [t.user_attrs["label"] for t in measured]
    assert len(set(labels)) == len(labels)
    assert (out / "model.onnx").exists() and (out / "plan.yaml").exists()


@pytest.mark.slow
def test_the_python_api_takes_a_trained_module_and_arrays(tmp_path):
    import numpy as np
    import torch
    from sklearn.datasets import load_breast_cancer

    x, y = load_breast_cancer(return_X_y=True)
    x = ((x - x.mean(0)) / x.std(0)).astype(np.float32)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(30, 64), torch.nn.ReLU(), torch.nn.Linear(64, 2))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(100):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(torch.tensor(x)), torch.tensor(y)).backward()
        opt.step()
    before = [p.detach().clone() for p in net.parameters()]
    result = leanml.optimize(
        net,
        data=(x, y),
        trials=3,
        techniques=["prune", "quantize"],
        measure={"threads": 1, "batch_sizes": [1, 8], "repeats": 10, "memory": False},
        output=tmp_path / "run",
        quiet=True,
    )
    assert result.metrics["optimize"]["trials"] == 3
    assert result.metrics["task"]["model"] == "Sequential (given)"
    assert "set task.model and task.data" in (tmp_path / "run" / "plan.yaml").read_text()
    assert all(
        torch.equal(a, b) for a, b in zip(before, net.parameters())
    )  # the user's module is untouched
    with pytest.raises(InvalidInputError, match="cannot name Python objects"):
        leanml.optimize(net, data=(x, y), workers=2)


@pytest.mark.slow
def test_workers_share_the_study_and_measure_the_budget_once(tmp_path):
    out = tmp_path / "run"
    result = leanml.run(
        _auto(trials=4, techniques=["prune", "quantize"]), output=out, quiet=True, workers=2
    )
    trials = _trials(out)
    measured = [t for t in trials if t.state.name == "COMPLETE" and "same_as" not in t.user_attrs]
    assert len(measured) == 4
    assert len({t.user_attrs["pid"] for t in measured}) == 2  # both workers measured plans
    assert "RUNNING" not in {t.state.name for t in trials}
    assert result.metrics["optimize"]["trials"] == 4
    assert (out / "plan.yaml").exists() and (out / "model.onnx").exists()


@pytest.mark.slow
def test_workers_share_a_postgresql_study(tmp_path, pg_study):
    url, name = pg_study
    recipe = _auto(trials=4, techniques=["prune", "quantize"], storage=url)
    recipe["name"] = name  # the study is named after the recipe: unique per test run
    storage = open_storage(url)
    try:
        result = leanml.run(recipe, output=tmp_path / "run", quiet=True, workers=2)
        (study_name,) = [
            s for s in optuna.get_all_study_names(storage) if s.startswith(f"{name}-optimize-")
        ]
        trials = optuna.load_study(study_name=study_name, storage=storage).get_trials()
        measured = [
            t for t in trials if t.state.name == "COMPLETE" and "same_as" not in t.user_attrs
        ]
        assert len(measured) == 4 and len({t.user_attrs["pid"] for t in measured}) == 2
        assert result.metrics["optimize"]["trials"] == 4
        assert not (tmp_path / "run" / "study.db").exists()  # the study lives in PostgreSQL
    finally:
        for s in optuna.get_all_study_names(storage):
            if s.startswith(f"{name}-optimize-"):
                optuna.delete_study(study_name=s, storage=storage)
