"""Contract tests every registered stage must pass: register a stage and it is tested here."""

from __future__ import annotations

from pathlib import Path

import pytest

import leanml
from leanml.errors import InvalidInputError
from leanml.models import Model
from leanml.techniques import Stage, get_stage_class, stage_kinds

from ..conftest import tiny_recipe

KINDS = stage_kinds()


def test_the_built_in_kinds_are_registered():
    assert {"tune", "prune", "distill", "features", "quantize"} <= set(KINDS)


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
        "torch": Model(torch=__import__("torch").nn.Linear(2, 2)),
    }
    for form, model in samples.items():
        if form in cls.forms:
            stage.check_form(model)
        else:
            with pytest.raises(InvalidInputError, match=f"stage '{kind}' does not apply"):
                stage.check_form(model)


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
