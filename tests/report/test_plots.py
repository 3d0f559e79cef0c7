"""The report's charts, drawn to inline SVG (``leanml.report._plots``). Matplotlib writes each text
as glyph paths preceded by an ``<!-- text -->`` comment: the comments say what a chart shows."""

from __future__ import annotations

import re

import pytest

from leanml.charts import Plot
from leanml.report._plots import draw, size_bars, tradeoff_scatter, training_curves


def texts(svg: str) -> list[str]:
    return re.findall(r"<!-- (.*?) -->", svg)


def assert_inline_svg(svg: str) -> None:
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>")
    assert "<image" not in svg and "<script" not in svg


@pytest.mark.parametrize("kind", ["line", "bar", "scatter"])
def test_draw_renders_a_plot_spec_with_its_title_and_labels(kind):
    xs = ["conv1", "conv2"] if kind == "bar" else [0.25, 0.5]
    plot = Plot(
        "Drop per ratio",
        kind,
        {"conv1": (xs, [0.01, 0.03]), "conv2": (xs, [0.02, 0.05])},
        xlabel="pruned ratio",
        ylabel="accuracy drop",
    )
    svg = draw(plot)
    assert_inline_svg(svg)
    shown = texts(svg)
    assert {"Drop per ratio", "pruned ratio", "accuracy drop", "conv1", "conv2"} <= set(shown)


def test_the_tradeoff_scatter_marks_rolled_back_stages(run_record):
    svg = tradeoff_scatter(run_record)
    assert_inline_svg(svg)
    shown = texts(svg)
    assert {"baseline", "half-channels", "int8 (rolled back)"} <= set(shown)
    assert "accuracy on the test split (higher is better)" in shown
    assert "latency p50 at batch 1 (ms)" in shown and "better (up-left)" in shown


def test_the_metric_axis_never_zooms_in_below_two_points_of_the_metric():
    from leanml.report._plots import metric_limits

    lo, hi = metric_limits([0.9972, 1.0, 0.9944], max_drop=0.01)
    assert hi - lo >= 0.02 and lo < 0.9944 and hi > 1.0
    lo, hi = metric_limits([0.5, 0.9], max_drop=0.01)  # a wide spread is shown whole
    assert lo < 0.5 and hi > 0.9 and hi - lo < 0.6


def test_size_bars_name_every_stage(run_record):
    svg = size_bars(run_record)
    assert_inline_svg(svg)
    assert {"baseline", "half-channels", "int8", "size (KiB)"} <= set(texts(svg))
    assert "Artifact size (file bytes; smaller is better)" in texts(svg)


def test_training_curves_only_for_stages_that_trained(run_record):
    curves = training_curves(run_record)
    assert [name for name, _ in curves] == ["baseline"]
    svg = curves[0][1]
    assert_inline_svg(svg)
    shown = texts(svg)
    assert "baseline: stopped at epoch 3 (early stopping)" in shown
    assert "best epoch 2" in shown and "val accuracy" in shown
    run_record.stages[
        0
    ].train_result.history = []  # trained, but recorded no epoch: nothing to draw
    assert training_curves(run_record) == []


def test_a_line_plot_draws_its_point_series_without_a_line():
    plot = Plot(
        "Optimization history",
        "line",
        {"trial accuracy": ([0, 2], [0.9, 0.95]), "stopped early": ([1], [0.5])},
        xlabel="trial",
        ylabel="accuracy",
        points=("stopped early",),
    )
    svg = draw(plot)
    assert {"stopped early", "trial accuracy"} <= set(texts(svg))
