"""What each mode does: dynamic int8 (linear layers, embedding tables, Conv kept float, a BERT encoder) and
fp16 (leanml/techniques/quantize/_modes.py)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper

import leanml
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.techniques.quantize import QuantizeConfig
from leanml.techniques.quantize._modes import DynamicMode, Fp16Mode, StaticMode, mode_for
from leanml.training import TrainConfig, fit

from ...conftest import FAST_MEASURE, tiny_recipe
from .conftest import (
    _embedder_quantize,
    _kernels,
    _quantize,
)


def test_dynamic_quantizes_linear_layers_of_an_mlp():
    task = build_task(
        load_recipe(
            tiny_recipe(task={"data": "breast_cancer", "model": "mlp", "model_args": {"width": 32}})
        )
    )
    torch.manual_seed(0)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=10, lr=0.01), seed=0)
    out = _quantize(Model(torch=net), task, {"mode": "dynamic"})
    assert len(out.result.details["int8_nodes"]) == 3
    assert any("Rewrote 3 Gemm node(s) as MatMul" in n for n in out.result.notes)
    kernels = _kernels(out.artifact)
    assert kernels.get("DynamicQuantizeMatMul", 0) + kernels.get("MatMulIntegerToFloat", 0) == 3
    assert abs(out.after.metric - out.before.metric) <= 0.03


def test_dynamic_keeps_conv_float_and_says_why(digits_cnn):
    task, model = digits_cnn
    out = _quantize(model, task, {"mode": "dynamic", "sensitivity": False})
    floats = out.result.details["float_nodes"]
    assert len(floats) == 4 and all("ConvInteger" in why for why in floats.values())
    assert any(n.startswith("1 of 5 compute nodes") for n in out.result.notes)


def test_fp16_stores_half_weights_keeps_float32_io_and_reports_speed(digits_cnn):
    task, model = digits_cnn
    out = _quantize(model, task, {"mode": "fp16", "sensitivity": False})
    graph = onnx.load(str(out.artifact)).graph
    assert {numpy_helper.to_array(i).dtype for i in graph.initializer if len(i.dims) > 1} == {
        np.dtype("float16")
    }
    assert graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    speed = [n for n in out.result.notes if n.startswith("fp16 is")]
    assert len(speed) == 1 and "smaller" in speed[0] and "batch 1:" in speed[0]
    assert abs(out.after.metric - out.before.metric) <= 0.01


def test_dynamic_stores_embedding_tables_in_int8_unless_excluded(embedder_onnx):
    out = _embedder_quantize(embedder_onnx)
    tables = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(out.artifact)).graph.initializer
        if tuple(i.dims) == (2000, 64)
    ]
    assert [t.dtype for t in tables] == [np.int8] or [t.dtype for t in tables] == [np.uint8]
    assert out.before.size_bytes / out.after.size_bytes > 3.5
    assert out.after.metric > 0.99  # cosine to the float model
    assert any(
        n.startswith("Embedding tables stored in int8 (1 of 1): embed") for n in out.result.notes
    )
    kept = _embedder_quantize(embedder_onnx, exclude=["embed"])
    assert out.after.size_bytes < kept.after.size_bytes / 2
    assert any("kept float: embed." in n for n in kept.result.notes), kept.result.notes


def test_bert_encoder_exports_with_dynamic_sequence_and_quantizes_dynamic():
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=200,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=128,
        max_position_embeddings=64,
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    rng = np.random.default_rng(0)
    n, seq = 120, 16
    x = {
        "input_ids": rng.integers(0, 200, size=(n, seq)).astype(np.int64),
        "attention_mask": np.ones((n, seq), np.int64),
    }
    x["attention_mask"][:, 12:] = 0
    out = leanml.quantize(
        bert, data=(x, None), mode="dynamic", sensitivity=False, measure=FAST_MEASURE
    )
    assert out.result.details["int8_nodes"] and out.before.metric > 0.999
    assert out.after.metric >= 0.99  # embedding cosine to the float model
    sess = ort.InferenceSession(str(out.artifact), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["input_ids", "attention_mask"]
    longer = {k: np.ones((2, 40), np.int64) for k in ("input_ids", "attention_mask")}
    assert sess.run(None, longer)[0].shape == (2, 40, 64)


def test_each_mode_says_what_differs_and_the_config_picks_it():
    static, dynamic, fp16 = (
        mode_for(QuantizeConfig(mode=m)) for m in ("static", "dynamic", "fp16")
    )
    assert (type(static), type(dynamic), type(fp16)) == (StaticMode, DynamicMode, Fp16Mode)
    # SmoothQuant: asked for in both int8 modes, tried on auto in dynamic mode only
    assert static.smooths(True) and dynamic.smooths(True)
    assert dynamic.smooths("auto") and not static.smooths("auto") and not fp16.smooths("auto")
    assert not dynamic.smooths(False)
    # bias correction: static mode, unless it is off
    assert static.corrects_bias("auto") and static.corrects_bias(True)
    assert not static.corrects_bias(False) and not dynamic.corrects_bias(True)
    # sensitivity per quantized tensor in static mode, per layer otherwise
    assert static.per_tensor and not dynamic.per_tensor and not fp16.per_tensor
    assert static.calibrates and not dynamic.calibrates and not fp16.int8
    # the formats compared besides the stage's own: float only when int8 could lose to it
    assert static.formats[-1] == dynamic.formats[-1] == "float" and fp16.formats == ()
