"""The technique functions: thin wrappers whose keywords are the recipe's keys, which never change
what they are given."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

import leanml
from leanml.errors import InvalidInputError
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._tasks import train_model
from leanml.training import TrainConfig

from ..conftest import FAST_MEASURE

FUNCTIONS = {
    "prune": leanml.prune,
    "quantize": leanml.quantize,
    "distill": leanml.distill,
    "tune": leanml.tune,
    "features": leanml.select_features,
}


@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
def test_the_functions_repeat_no_default_of_the_stage_config(kind):
    params = inspect.signature(FUNCTIONS[kind]).parameters
    assert [p.kind for p in params.values()][1:] == [inspect.Parameter.VAR_KEYWORD]


@pytest.mark.parametrize("kind", sorted(FUNCTIONS))
def test_an_unknown_key_is_named_with_the_stage_kind(kind):
    with pytest.raises(InvalidInputError, match=rf"{kind}\.no_such_key is not a known key"):
        FUNCTIONS[kind]("mlp", data="breast_cancer", no_such_key=1)


def test_an_unfitted_estimator_is_fitted_as_a_copy(tmp_path):
    est = LogisticRegression(max_iter=2000)
    out = leanml.select_features(
        est, data="breast_cancer", select="variance", measure=FAST_MEASURE, work_dir=tmp_path
    )
    assert not hasattr(est, "coef_"), "the user's estimator was fitted in place"
    assert out.model.sklearn is not est


def test_a_given_module_is_not_changed_and_a_task_names_its_family(tmp_path):
    task = build_task(
        load_recipe(
            {"task": {"data": "digits", "model": "cnn", "model_args": {"width": 8, "depth": 1}}}
        )
    )
    teacher = train_model(task, TrainConfig(epochs=1), seed=0)
    given = Model(torch=teacher.torch)  # no factory: the task says what family it is
    before = [t.clone() for t in given.torch.state_dict().values()]
    out = leanml.distill(
        given,
        task=task,
        student={"model_args": {"width": 4}},
        student_train={"epochs": 1},
        compare_scratch=False,
        measure=FAST_MEASURE,
        work_dir=tmp_path,
    )
    assert given.factory is None, "the user's Model was patched"
    after = list(given.torch.state_dict().values())
    assert all(np.array_equal(a.numpy(), b.numpy()) for a, b in zip(before, after))
    assert out.model.torch is not given.torch


def test_keys_the_function_names_differently_reach_the_stage(tmp_path):
    """The stage keys that share a name with a run setting (quantize's and distill's ``train``,
    distill's ``data``) take the names the functions always had."""
    cfg = leanml.techniques.get_stage_class("distill").Config
    c = cfg.model_validate({"transfer": "train", "student_train": {"epochs": 2}})
    assert c.data == "train" and c.train == {"epochs": 2}
    q = leanml.techniques.get_stage_class("quantize").Config.model_validate(
        {"finetune": {"epochs": 1}}
    )
    assert q.train == {"epochs": 1}
    p = leanml.techniques.get_stage_class("prune").Config
    assert p.model_validate({"finetune": False}).finetune is None
    assert p.model_validate({"finetune": True}).finetune == p().finetune
    assert p.model_validate({"sensitivity": False}).sensitivity.enabled is False
