"""What ``leanml optimize`` plans with prune (``techniques/prune/_plan.py``): structured kinds only,
fine-tuned for half the recipe's epochs."""

from __future__ import annotations

from leanml.techniques import get_stage_class
from leanml.techniques.prune._plan import finetune_training


def test_structured_kinds_only_at_three_amounts():
    choices = get_stage_class("prune").plan_choices(None, None, epochs=40, objective="latency")  # type: ignore[arg-type]
    assert {c.config["kind"] for c in choices} == {"channel", "neuron"}
    assert sorted({c.config["amount"] for c in choices}) == [0.3, 0.5, 0.7]
    assert choices[0].label == "channel 50%"  # the documented default first: the seed plans try it
    assert all(c.config["finetune"] == finetune_training(40) for c in choices)


def test_fine_tuning_is_half_the_recipes_epochs_at_least_10_stopped_on_the_metric():
    assert finetune_training(40)["epochs"] == 20
    assert finetune_training(4)["epochs"] == 10
    assert finetune_training(40)["early_stopping"]["monitor"] == "val_metric"
