"""What ``leanml optimize`` plans with features (``techniques/features/_plan.py``)."""

from __future__ import annotations

from leanml.techniques import get_stage_class


def test_recursive_elimination_to_auto_half_and_a_quarter_of_the_columns():
    cls = get_stage_class("features")
    choices = cls.plan_choices(None, None, epochs=3, objective="latency")  # type: ignore[arg-type]
    assert [c.config["n_features"] for c in choices] == ["auto", 0.5, 0.25]
    assert {c.config["select"] for c in choices} == {"rfe"}
    assert [c.strong for c in choices] == [False, False, True]
