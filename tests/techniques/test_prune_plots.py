"""The prune stage's per-layer bars say what its notes say (``leanml.techniques.prune._stage``)."""

from __future__ import annotations

import pytest

from leanml.techniques.prune._stage import _layer_bars


def _row(layer: str, before: list[int], after: list[int] | None) -> dict:
    params_before = before[0] * before[1] * (9 if len(before) > 2 else 1)
    params_after = 0 if after is None else after[0] * after[1] * (9 if len(after) > 2 else 1)
    return {
        "layer": layer,
        "shape_before": before,
        "shape_after": after,
        "params_before": params_before,
        "params_after": params_after,
        "nonzero_after": params_after,
        "sparsity": round(1 - params_after / params_before, 4),
    }


def test_channel_bars_count_output_channels_like_the_notes_and_label_weights_apart():
    rows = [
        _row("conv1", [16, 3, 3, 3], [8, 3, 3, 3]),
        _row("conv2", [32, 16, 3, 3], [16, 8, 3, 3]),  # both sides halved: 0.75 of its weights
        _row("fc", [10, 32], [10, 16]),
    ]
    plot = _layer_bars(rows, "channel")
    channels = plot.series["output channels removed"][1]
    weights = plot.series["weights removed (input and output channels together)"][1]
    assert channels == pytest.approx([0.5, 0.5, 0.0])
    assert weights == pytest.approx([0.5, 0.75, 0.5])
    assert "as in the notes" in plot.title


def test_unstructured_bars_show_weight_sparsity():
    plot = _layer_bars([_row("fc", [10, 32], [10, 32])], "unstructured")
    assert list(plot.series) == ["weights removed or zero"]
