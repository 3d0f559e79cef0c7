"""What ``leanml optimize`` plans with tune (``techniques/tune/_plan.py``): the size of a tree
ensemble, as a grid."""

from __future__ import annotations

from ..conftest import tiny_recipe
from .test_planning import _space


def test_a_tree_ensemble_gets_a_grid_over_its_size_then_feature_selection():
    recipe = tiny_recipe(
        task={
            "data": "breast_cancer",
            "model": "sklearn:RandomForestClassifier",
            "model_args": {"n_estimators": 40, "random_state": 0},
        }
    )
    space = _space(recipe)
    assert [t.kind for t in space.techniques] == ["tune", "features"]
    (choice,) = space.techniques[0].choices
    assert choice.config["space"] == {
        "task.model_args.n_estimators": [10, 20, 40],
        "task.model_args.max_depth": [4, 8, None],
    }
    assert choice.config["objectives"] == ["metric", "latency"]
