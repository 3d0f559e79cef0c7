"""The plan space from the registry (``leanml.techniques.plan_space``): which techniques apply to
each model form, in plan order, with which seed plans; a stage registered with plan choices is
planned with no other edit."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

from leanml.errors import InvalidInputError
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._pipeline import prepare_baseline
from leanml.search import Choice
from leanml.task import Task
from leanml.techniques import (
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    plan_space,
    planned_kinds,
    register_stage,
    unregister_stage,
)

from ..conftest import tiny_recipe
from . import test_stage_contract as contract


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


# -- a new technique: one class and one register_stage line --------------------------------------


class ToyConfig(StageConfig):
    factor: float = 0.5


class ToyStage(Stage[ToyConfig]):
    """A technique that keeps the model as it is: planned between prune and quantize."""

    Config = ToyConfig
    forms = ("torch", "onnx")
    contract_example: ClassVar[dict[str, Any] | None] = {"factor": 0.5}
    plan_order: ClassVar[int | None] = 45

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        return [Choice("half", {"factor": 0.5}), Choice("quarter", {"factor": 0.25}, strong=True)]

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        return StageResult(model, notes=[f"kept the model (factor {self.config.factor})"])


@pytest.fixture
def toy():
    register_stage("toy")(ToyStage)
    yield "toy"
    unregister_stage("toy")


def test_a_registered_stage_with_plan_choices_is_planned_in_its_order_and_contract_tested(toy):
    space = _space(tiny_recipe())
    assert [t.kind for t in space.techniques] == ["distill", "prune", "toy", "quantize"]
    assert space.techniques[2].labels() == ["off", "half", "quarter"]
    assert toy in planned_kinds()
    assert load_recipe(tiny_recipe(stages="auto", optimize={"techniques": [toy]})).optimize
    contract.check_plan_contract(toy)  # what every planned stage of the registry passes
    contract.test_stage_is_documented_and_has_a_contract_example(toy)
    contract.test_unknown_keys_are_errors_that_name_the_path(toy)


def test_a_technique_that_is_not_planned_is_refused_in_optimize_techniques():
    with pytest.raises(
        InvalidInputError, match=r"'toy', which is not a technique leanml plans with"
    ):
        load_recipe(tiny_recipe(stages="auto", optimize={"techniques": ["toy"]}))
