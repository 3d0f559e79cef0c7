"""What ``leanml optimize`` plans with distill (``techniques/distill/_plan.py``): students of the
teacher's family, and what each builds."""

from __future__ import annotations

from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._pipeline import prepare_baseline
from leanml.techniques import get_stage_class
from leanml.techniques.distill._plan import student_training

from ..conftest import tiny_recipe


def test_students_train_twice_the_teachers_epochs_with_their_own_learning_rate():
    assert student_training(40)["epochs"] == 80
    assert student_training(10)["epochs"] == 60  # at least 60
    assert student_training(40)["lr"] == "auto"


def test_two_settings_that_build_the_same_student_are_told_apart_by_what_they_build():
    recipe = load_recipe(tiny_recipe())
    task = build_task(recipe)
    model, _ = prepare_baseline(recipe, task)
    cls = get_stage_class("distill")
    choices = cls.plan_choices(task, model, epochs=3, objective="latency")
    assert choices[0].label == "width x0.5"
    outcomes = [cls.plan_outcome(c.config, task, model) for c in choices]
    assert all(o.startswith(task.model) for o in outcomes)  # the student: "cnn(width=4, ...)"
    same = {"student": {"model_args": dict(model.model_args)}}
    assert cls.plan_outcome(same, task, model) != outcomes[0]
