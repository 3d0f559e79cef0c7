"""choose_format on its own: hand-made graphs, fixed metrics and ratios; the fastest format that holds the
budget, the float model when no int8 format is faster (leanml/techniques/quantize/_compare.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import pytest
from onnx import TensorProto, helper

from leanml.techniques.quantize._compare import Format, choose_format


def _graph(path: Path, identities: int, *, quantized: bool = True) -> Path:
    """A graph with ``identities`` Identity nodes (and a Q/DQ pair when ``quantized``): formats
    with different counts are different graphs."""
    nodes, name = [], "x"
    if quantized:
        nodes += [
            helper.make_node("QuantizeLinear", ["x", "s"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s"], ["d"]),
        ]
        name = "d"
    for i in range(identities):
        nodes.append(helper.make_node("Identity", [name], [f"i{i}"]))
        name = f"i{i}"
    nodes.append(helper.make_node("Identity", [name], ["y"]))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])],
        [helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])],
    )
    onnx.save(helper.make_model(graph), str(path))
    return path


def _choose(tmp_path: Path, specs: list[tuple[str, int, float, float]], **kw: Any):
    """``specs``: (key, identities, val metric, latency ratio); the key ``float`` is the float
    model. The budget is a drop of 0.01 from a baseline of 1.0."""
    timed: list[str] = []
    ratios = {key: ratio for key, _, _, ratio in specs}

    def build(identities: int, quantized: bool):
        return lambda dst: _graph(dst, identities, quantized=quantized)

    formats = [
        Format(
            key,
            key,
            build(n, key != "float"),
            int8=key != "float",
            val_metric=value,
        )
        for key, n, value, _ in specs
    ]

    def time_against_float(path: Path) -> dict[int, float]:
        timed.append(path.stem)
        return {1: ratios[path.stem], 64: ratios[path.stem]}

    choice = choose_format(
        formats,
        work=tmp_path / "formats",
        evaluate=lambda path: pytest.fail("every value is given"),
        drop=lambda value: 1.0 - value,
        allows=lambda drop: drop <= 0.01,
        time_against_float=time_against_float,
        require_speedup=kw.get("require_speedup", True),
        metric="cosine",
        budget=0.01,
    )
    return choice, timed


def test_a_format_that_breaks_the_budget_is_never_chosen_nor_timed(tmp_path):
    choice, timed = _choose(
        tmp_path,
        [
            ("own", 1, 0.995, 0.8),
            ("fast", 2, 0.95, 0.3),
            ("next", 3, 0.992, 0.7),
            ("float", 0, 1.0, 1),
        ],
    )
    assert choice.chosen.fmt.key == "next" and choice.path.exists()
    fast = next(m for m in choice.measured if m.fmt.key == "fast")
    assert not fast.holds_budget and fast.latency_ratio == {} and "fast" not in timed
    assert "breaks max_metric_drop" in " ".join(choice.notes)
    assert [r["chosen"] for r in choice.details["formats"]] == [False, False, True, False]


def test_the_stage_own_model_stays_unless_another_is_measurably_faster(tmp_path):
    # 0.79 is within SAME_SPEED of 0.8: not measurably faster
    choice, _ = _choose(
        tmp_path, [("own", 1, 0.995, 0.8), ("other", 2, 0.999, 0.79), ("float", 0, 1.0, 1)]
    )
    assert choice.chosen.fmt.key == "own" and choice.chosen is choice.measured[0]


def test_no_int8_format_holds_the_budget_keeps_the_stage_own_model(tmp_path):
    """The gate then rejects it with the metric it broke; the float model would hide that."""
    choice, timed = _choose(
        tmp_path, [("own", 1, 0.9, 0.5), ("other", 2, 0.95, 0.6), ("float", 0, 1.0, 1)]
    )
    assert choice.chosen.fmt.key == "own" and timed == []
    assert any(n.startswith("No int8 format holds max_metric_drop 0.01") for n in choice.notes)


def test_the_same_graph_is_measured_once(tmp_path):
    choice, timed = _choose(
        tmp_path, [("own", 1, 0.995, 0.8), ("copy", 1, 0.995, 0.5), ("float", 0, 1.0, 1)]
    )
    copy = choice.measured[1]
    assert copy.skipped == "the same graph as own" and "copy" not in timed
    assert choice.chosen.fmt.key == "own"


def test_float_is_kept_when_int8_is_slower_and_not_when_it_is_faster(tmp_path):
    slower, _ = _choose(tmp_path / "a", [("own", 1, 0.995, 1.2), ("float", 0, 1.0, 1)])
    assert slower.chosen.fmt.key == "float" and not slower.chosen.fmt.int8
    faster, _ = _choose(tmp_path / "b", [("own", 1, 0.995, 0.9), ("float", 0, 1.0, 1)])
    assert faster.chosen.fmt.key == "own"
    kept, _ = _choose(
        tmp_path / "c", [("own", 1, 0.995, 1.2), ("float", 0, 1.0, 1)], require_speedup=False
    )
    assert kept.chosen.fmt.key == "own" and kept.details == {}  # nothing compared


def test_a_close_call_with_float_is_timed_twice(tmp_path):
    """1.05x then 0.85x: one timing says float, the two together (0.945x) say int8."""
    runs = iter([1.05, 0.85])
    timed: list[str] = []

    def time_against_float(path: Path) -> dict[int, float]:
        timed.append(path.stem)
        r = next(runs)
        return {1: r, 64: r}

    choice = choose_format(
        [
            Format("own", "own", lambda dst: _graph(dst, 1), val_metric=0.995),
            Format(
                "float",
                "float",
                lambda dst: _graph(dst, 0, quantized=False),
                int8=False,
                val_metric=1.0,
            ),
        ],
        work=tmp_path,
        evaluate=lambda path: pytest.fail("every value is given"),
        drop=lambda value: 1.0 - value,
        allows=lambda drop: drop <= 0.01,
        time_against_float=time_against_float,
        require_speedup=True,
        metric="cosine",
        budget=0.01,
    )
    assert timed == ["own", "own"]
    assert choice.chosen.fmt.key == "own"
    assert choice.chosen.latency_ratio[1] == pytest.approx((1.05 * 0.85) ** 0.5)
