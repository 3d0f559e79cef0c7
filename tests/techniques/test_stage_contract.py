"""Contract tests every registered stage must pass: register a stage and it is tested here."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest
import yaml

import leanml
from leanml.errors import InvalidInputError
from leanml.models import Model
from leanml.search import OFF
from leanml.techniques import Stage, get_stage_class, plan_space, planned_kinds, stage_kinds

from ..conftest import tiny_recipe

# the kinds leanml ships: tests elsewhere register stages of their own
KINDS = [k for k in stage_kinds() if get_stage_class(k).__module__.startswith("leanml.")]
PLANNED = [k for k in KINDS if get_stage_class(k).plan_order is not None]

# Model forms a planned stage's choices are tried on, beside its own contract_task.
PLAN_TASKS: list[dict[str, Any]] = [
    {"data": "digits", "model": "cnn", "model_args": {"width": 8, "depth": 1}},
    {"data": "breast_cancer", "model": "mlp", "model_args": {"width": 8}},
    {
        "data": "breast_cancer",
        "model": "sklearn:RandomForestClassifier",
        "model_args": {"n_estimators": 8, "random_state": 0},
    },
]


def test_the_built_in_kinds_are_registered():
    assert {"tune", "prune", "distill", "features", "quantize"} <= set(KINDS)


def test_the_built_in_kinds_are_planned_in_their_order():
    assert [k for k in planned_kinds() if k in KINDS] == [
        "tune",
        "features",
        "distill",
        "prune",
        "quantize",
    ]


@functools.cache
def _built(task_keys: str) -> tuple[Any, Model]:
    """The task and (untrained) baseline a recipe with these ``task:`` keys builds."""
    from leanml.pipeline import build_task, load_recipe
    from leanml.pipeline._pipeline import prepare_baseline

    recipe = load_recipe(tiny_recipe(task=yaml.safe_load(task_keys)))
    task = build_task(recipe)
    return task, prepare_baseline(recipe, task)[0]


def check_plan_contract(kind: str) -> None:
    """What every planned stage must do: give, on some model form, settings its Config takes, with
    unique labels, that survive plan.yaml; the planner then plans it (for a form it applies to)."""
    cls = get_stage_class(kind)
    assert cls.plan_choices.__func__ is not Stage.plan_choices.__func__, (  # type: ignore[attr-defined]
        f"{cls.__name__} has a plan_order: give it plan_choices"
    )
    assert cls.nothing_to_plan.strip()
    planned = False
    for keys in [dict(cls.contract_task), *PLAN_TASKS]:
        task, model = _built(yaml.safe_dump(keys, sort_keys=True))
        for objective in ("latency", "size"):
            choices = cls.plan_choices(task, model, epochs=3, objective=objective)
            labels = [c.label for c in choices]
            assert len(set(labels)) == len(labels) and OFF not in labels and all(labels), labels
            for c in choices:
                cls.Config.model_validate(c.config)  # a plan's stage is a valid recipe stage
                assert yaml.safe_load(yaml.safe_dump(c.config)) == c.config  # plan.yaml keeps it
            try:
                space = plan_space(task, model, objective=objective, allowed=[kind], epochs=3)
            except InvalidInputError as e:  # the stage does not apply to this form: it says why
                assert f"names {kind!r}, which does not apply" in str(e)
                continue
            (technique,) = space.techniques
            assert technique.kind == kind and set(technique.labels()[1:]) <= set(labels)
            for c in technique.choices:
                assert isinstance(cls.plan_outcome(c.config, task, model), str)
            planned = True
    assert planned, f"{kind} is never planned on {[cls.contract_task, *PLAN_TASKS]}"


@pytest.mark.parametrize("kind", PLANNED)
def test_planned_stages_give_settings_their_config_takes(kind):
    check_plan_contract(kind)


@pytest.mark.parametrize("kind", KINDS)
def test_stage_is_documented_and_has_a_contract_example(kind):
    cls = get_stage_class(kind)
    assert issubclass(cls, Stage) and cls.kind == kind
    assert (cls.__doc__ or "").strip(), f"{cls.__name__} needs a docstring"
    assert cls.contract_example is not None, (
        f"{cls.__name__}.contract_example: give a small config to test it on"
    )
    assert set(cls.forms) <= {"torch", "onnx", "sklearn"}


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_keys_are_errors_that_name_the_path(kind):
    cls = get_stage_class(kind)
    recipe = tiny_recipe(stages=[{kind: {**(cls.contract_example or {}), "no_such_key": 1}}])
    with pytest.raises(
        InvalidInputError, match=rf"stages\[0\]\.{kind}\.no_such_key is not a known key"
    ):
        leanml.load_recipe(recipe)


@pytest.mark.parametrize("kind", KINDS)
def test_forms_the_stage_does_not_take_are_refused_clearly(kind, tmp_path):
    cls = get_stage_class(kind)
    stage = cls(cls.Config.model_validate(cls.contract_example or {}))
    samples = {
        "onnx": Model(onnx=Path(tmp_path / "m.onnx")),
        "sklearn": Model(sklearn=object()),
        "torch": Model(torch=__import__("torch").nn.Linear(2, 2), factory="mlp"),
    }
    for form, model in samples.items():
        if form in cls.forms:
            stage.check_form(model)
        else:
            with pytest.raises(InvalidInputError, match=f"stage '{kind}' does not apply"):
                stage.check_form(model)


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_stage_runs_in_the_pipeline_and_is_measured(kind, tmp_path, validate_metrics):
    cls = get_stage_class(kind)
    recipe = tiny_recipe(
        task=dict(cls.contract_task),
        stages=[{kind: cls.contract_example or {}}],
        constraints={"max_metric_drop": 1.0},
    )
    result = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(result.metrics)
    assert result.metrics["failed_stages"] == [], result.metrics["failed_stages"]
    stage = result.metrics["stages"][1]
    assert stage["kind"] == kind and stage["accepted"] is True
    assert (tmp_path / "run" / stage["artifact"]).is_file()
    # the stage says what it did in its own words (beside the pipeline's comparison note)
    own = [n for n in stage["notes"] if not n.startswith("Against its input")]
    assert own and all(isinstance(n, str) and n for n in own), stage["notes"]
    assert result.metrics["final"] == kind


def _fingerprint(model: Model) -> bytes:
    """The bytes of a model's state: weights of a torch module, the pickle-free parameters of an
    estimator, the file of an ONNX model."""
    import copy
    import pickle

    if model.torch is not None:
        return b"".join(t.detach().numpy().tobytes() for t in model.torch.state_dict().values())
    if model.sklearn is not None:
        return pickle.dumps(copy.deepcopy(model.sklearn.__dict__))
    return Path(model.onnx).read_bytes()


@pytest.mark.slow
@pytest.mark.parametrize("kind", KINDS)
def test_function_path_agrees_with_the_recipe_path_is_seeded_and_leaves_its_input_alone(
    kind, tmp_path
):
    """``apply_stage`` on the baseline a recipe trains gives the recipe's figure; the same seed
    gives the same model; the model handed in is not changed."""
    import numpy as np

    from leanml.pipeline import Pipeline, apply_stage, build_task, load_recipe
    from leanml.runtime import OnnxRunner

    cls = get_stage_class(kind)
    recipe = load_recipe(
        tiny_recipe(
            task=dict(cls.contract_task),
            stages=[{kind: cls.contract_example or {}}],
            constraints={"max_metric_drop": 1.0},
        )
    )
    ran = leanml.run(recipe, output=tmp_path / "run").metrics["stages"][1]
    task = build_task(recipe)
    baseline, _ = Pipeline(recipe, output=tmp_path / "unused").baseline_model(task)
    before = _fingerprint(baseline)
    outs = [
        apply_stage(
            kind,
            baseline,
            task,
            cls.contract_example,
            train_config=recipe.train,
            measure_config=recipe.measure,
            max_metric_drop=recipe.constraints.max_metric_drop,
            seed=recipe.seed,
            work_dir=tmp_path / f"fn{i}",
        )
        for i in range(2)
    ]
    assert _fingerprint(baseline) == before, f"{kind} changed the model it was given"
    first, second = (OnnxRunner(o.artifact).predict(task.data.test.x) for o in outs)
    np.testing.assert_allclose(first, second, rtol=1e-5, atol=1e-6)
    assert outs[0].after.metric == pytest.approx(outs[1].after.metric, abs=1e-9)
    assert outs[0].after.metric == pytest.approx(ran["metric"], abs=1e-9)
