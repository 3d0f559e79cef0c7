"""Layer names: full module paths, and the nearest names for one that matches nothing
(leanml/techniques/quantize/_layers.py)."""

from __future__ import annotations

import pytest

from leanml.errors import InvalidInputError

from .conftest import (
    _embedder_quantize,
)


def test_layer_labels_are_full_module_paths_never_the_last_word():
    from leanml.techniques.quantize._layers import layer_label

    assert layer_label("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert (
        layer_label("/m/encoder/layer.0/attention/self/query/MatMul")
        == "m.encoder.layer.0.attention.self.query"
    )
    assert layer_label("/model.0/conv/Conv") == "model.0.conv"
    assert layer_label("conv1") == "conv1" and layer_label("/MatMul") == "/MatMul"


def test_an_exclude_name_that_matches_nothing_lists_the_nearest_names(embedder_onnx):
    with pytest.raises(InvalidInputError, match=r"names 'embd'.*nearest names: embed"):
        _embedder_quantize(embedder_onnx, exclude=["embd"])
