"""What ``leanml optimize`` plans with quantize (``techniques/quantize/_plan.py``)."""

from __future__ import annotations

from leanml.techniques import get_stage_class


def test_int8_static_first_and_float16_only_for_the_size_objective():
    cls = get_stage_class("quantize")
    latency = cls.plan_choices(None, None, epochs=10, objective="latency")  # type: ignore[arg-type]
    size = cls.plan_choices(None, None, epochs=10, objective="size")  # type: ignore[arg-type]
    assert latency[0].label == "int8 static" and latency[0].strong
    assert "fp16" not in [c.label for c in latency]  # slower on CPUs without fp16 kernels
    assert [c.label for c in size][-1] == "fp16"
    assert all(c.config.get("mode") != "qat" for c in size)  # qat is never planned
