"""The plan space from the registry (``leanml.techniques.plan_space``): which techniques apply to
each model form, in plan order, with which seed plans; a stage registered with plan choices is
planned with no other edit."""

from __future__ import annotations

import pytest

from leanml.errors import InvalidInputError
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._pipeline import prepare_baseline
from leanml.techniques import plan_space

from ..conftest import tiny_recipe


def _space(recipe: dict, allowed=None, objective="latency"):
    r = load_recipe(recipe)
    task = build_task(r)
    model, _ = prepare_baseline(r, task)
    return plan_space(task, model, objective=objective, allowed=allowed, epochs=r.train.epochs)


# -- the planner's space per model form ---------------------------------------------------------


def test_a_cnn_on_images_plans_distill_channel_pruning_and_quantization_not_features():
    space = _space(tiny_recipe())
    kinds = [t.kind for t in space.techniques]
    assert kinds == ["distill", "prune", "quantize"]  # the order plans apply them in
    prune = next(t for t in space.techniques if t.kind == "prune")
    assert all(label.startswith("channel") for label in prune.labels()[1:])
    assert "tabular" in space.not_applicable["features"]
    quantize = next(t for t in space.techniques if t.kind == "quantize")
    assert "fp16" not in quantize.labels()  # slower on CPUs: only for the size objective
    assert (
        "fp16"
        in next(
            t for t in _space(tiny_recipe(), objective="size").techniques if t.kind == "quantize"
        ).labels()
    )


def test_an_mlp_on_a_table_plans_features_and_neuron_pruning():
    recipe = tiny_recipe(
        task={"data": "breast_cancer", "model": "mlp", "model_args": {"width": 16}}
    )
    space = _space(recipe)
    assert [t.kind for t in space.techniques] == ["features", "distill", "prune", "quantize"]
    prune = next(t for t in space.techniques if t.kind == "prune")
    assert all(label.startswith("neuron") for label in prune.labels()[1:])


def test_an_onnx_file_gets_only_onnx_level_techniques_and_says_why(image_onnx):
    recipe = tiny_recipe(task={"data": "digits", "model": str(image_onnx), "model_args": {}})
    space = _space(recipe)
    assert [t.kind for t in space.techniques] == ["quantize"]
    assert "PyTorch" in space.not_applicable["prune"]
    with pytest.raises(InvalidInputError, match=r"optimize.techniques names 'prune'.*ONNX file"):
        _space(recipe, allowed=["prune", "quantize"])


def test_a_scikit_learn_model_gets_feature_selection():
    recipe = tiny_recipe(
        task={
            "data": "breast_cancer",
            "model": "sklearn:LogisticRegression",
            "model_args": {"max_iter": 500},
        }
    )
    space = _space(recipe)
    assert [t.kind for t in space.techniques] == ["features"]
    assert set(space.not_applicable) == {"tune", "distill", "prune", "quantize"}
    assert "tree ensembles" in space.not_applicable["tune"]


def test_seed_plans_try_each_technique_alone_at_its_default_first():
    space = _space(tiny_recipe())
    seeds = space.seeds()
    assert seeds[0] == {"distill": "width x0.5", "prune": "off", "quantize": "off"}
    assert seeds[1] == {"distill": "off", "prune": "channel 50%", "quantize": "off"}
    assert seeds[2] == {"distill": "off", "prune": "off", "quantize": "int8 static"}
    assert seeds[4] == {"distill": "width x0.25", "prune": "channel 70%", "quantize": "int8 static"}
