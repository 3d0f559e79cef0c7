"""The tree reference beside a tabular torch baseline (report.tree_reference)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

import leanml
from leanml.cli import app
from leanml.data import load_data
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._reference import tree_reference_kind

from ..conftest import FAST_MEASURE, tiny_recipe


def _checkerboard(tmp_path: Path) -> str:
    """A table trees split exactly and a network trained for two epochs cannot: the label is the
    XOR of two thresholds, beside four noise columns."""
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(600, 6)).astype(np.float32)
    y = ((x[:, 0] > 0.2) ^ (x[:, 1] > -0.3)).astype(np.int64)
    np.savez(tmp_path / "table.npz", x=x, y=y)
    return f"npz:{tmp_path / 'table.npz'}"


def _recipe(data: str, tmp_path: Path, **task) -> dict:
    return {
        "name": "table",
        "output": str(tmp_path / "run"),
        "task": {"data": data, "model": "mlp", "model_args": {"width": 8, "depth": 1}, **task},
        "train": {"epochs": 2, "lr": 0.001},
        "measure": FAST_MEASURE,
        "export": {"formats": ["onnx"]},
    }


def test_a_tabular_net_gets_a_tree_reference_measured_on_its_onnx(tmp_path, validate_metrics):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from threadpoolctl import threadpool_limits

    data = _checkerboard(tmp_path)
    result = leanml.run(_recipe(data, tmp_path))
    validate_metrics(result.metrics)
    ref = result.metrics["reference"]
    # the same split, the same defaults: the figure is the trees' own test accuracy
    split = load_data(data, seed=0)
    with threadpool_limits(limits=1, user_api="openmp"):  # as the run fits it (and fast when busy)
        hgb = HistGradientBoostingClassifier(random_state=0).fit(split.train.x, split.train.y)
    assert ref["metric"] == pytest.approx(hgb.score(split.test.x, split.test.y))
    assert ref["model"] == "HistGradientBoostingClassifier" and ref["beats_baseline"]
    assert ref["metric"] > result.metrics["stages"][0]["metric"]
    assert ref["latency_p50_ms_b1"] > 0 and ref["latency_ratio_b1"] > 0
    assert "try `model: sklearn:HistGradientBoostingClassifier`" in ref["note"]
    assert ref["note"] in (tmp_path / "run" / "report.md").read_text()
    shown = CliRunner().invoke(app, ["show", str(tmp_path / "run")])
    assert shown.exit_code == 0 and ref["note"] in shown.stdout


def test_the_reference_can_be_turned_off(tmp_path):
    recipe = {**_recipe(_checkerboard(tmp_path), tmp_path), "report": {"tree_reference": False}}
    result = leanml.run(recipe)
    assert "reference" not in result.metrics
    assert "gradient-boosted" not in (tmp_path / "run" / "report.md").read_text()
    written = yaml.safe_load((tmp_path / "run" / "recipe.yaml").read_text())
    assert written["report"] == {"tree_reference": False}


def test_a_regression_net_gets_a_tree_regressor(tmp_path, validate_metrics):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 5)).astype(np.float32)
    y = (np.sin(2 * x[:, 0]) + (x[:, 1] > 0)).astype(np.float32)
    np.savez(tmp_path / "reg.npz", x=x, y=y)
    result = leanml.run(_recipe(f"npz:{tmp_path / 'reg.npz'}", tmp_path, metric="r2"))
    validate_metrics(result.metrics)
    ref = result.metrics["reference"]
    assert ref["model"] == "HistGradientBoostingRegressor" and "test r2" in ref["note"]
    assert ref["metric"] > 0.5  # the trees fit this function: the regressor's output is read right


def test_a_scikit_learn_baseline_gets_no_reference(tmp_path):
    recipe = _recipe(
        "wine", tmp_path, model="sklearn:LogisticRegression", model_args={"max_iter": 5000}
    )
    result = leanml.run({**recipe, "train": {}})
    assert "reference" not in result.metrics


@pytest.mark.parametrize(
    ("recipe", "kind"),
    [
        (tiny_recipe(), None),  # images
        ({"task": {"data": "wine", "model": "mlp"}}, "HistGradientBoostingClassifier"),
        (
            {"task": {"data": "wine", "model": "mlp", "metric": "f1"}},
            "HistGradientBoostingClassifier",
        ),
        ({"task": {"data": "wine", "model": "sklearn:LogisticRegression"}}, None),
    ],
)
def test_which_tasks_get_a_reference(recipe, kind):
    r = load_recipe(recipe)
    task = build_task(r)
    model, _ = leanml.pipeline._pipeline.prepare_baseline(r, task)
    assert tree_reference_kind(task, model) == kind
