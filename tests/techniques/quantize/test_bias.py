"""Bias correction for static int8 (leanml/techniques/quantize/_bias.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import leanml
from leanml.errors import InvalidInputError
from leanml.techniques.quantize import _bias
from leanml.techniques.quantize._bias import channel_stats, correct_biases, node_outputs
from leanml.techniques.quantize._ort import StaticSettings, quantize_static


def _skewed_cnn(path: Path) -> Path:
    """x -> Conv ``stem`` (bias) -> Relu -> Conv ``skewed`` (no bias) -> Relu -> pool -> Gemm
    ``head``. Every weight of ``skewed`` but one per channel sits 0.45 of an int8 step above a
    level, so per-channel int8 rounds them all down: its output mean drops in every channel."""
    rng = np.random.default_rng(0)
    stem = rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32)
    levels = rng.integers(-60, 60, (8, 8, 3, 3)).astype(np.float32)
    skewed = (levels + 0.45) / 127.0
    skewed[:, 0, 0, 0] = 1.0  # the per-channel maximum: the int8 step is exactly 1/127
    head = rng.normal(0, 0.3, (5, 8)).astype(np.float32)
    inits = [
        numpy_helper.from_array(stem, "w_stem"),
        numpy_helper.from_array(np.full(8, 0.1, np.float32), "b_stem"),
        numpy_helper.from_array(skewed.astype(np.float32), "w_skewed"),
        numpy_helper.from_array(head, "w_head"),
        numpy_helper.from_array(np.zeros(5, np.float32), "b_head"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w_stem", "b_stem"], ["a"], name="stem", pads=[1] * 4),
        helper.make_node("Relu", ["a"], ["a_relu"], name="stem_relu"),
        helper.make_node("Conv", ["a_relu", "w_skewed"], ["b"], name="skewed", pads=[1] * 4),
        helper.make_node("Relu", ["b"], ["b_relu"], name="skewed_relu"),
        helper.make_node("GlobalAveragePool", ["b_relu"], ["pooled"], name="pool"),
        helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "w_head", "b_head"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "skewed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 5])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _inputs(n: int = 128) -> np.ndarray:
    return np.random.default_rng(1).normal(0, 1, (n, 3, 8, 8)).astype(np.float32)


def _mean_shift(float_path: Path, int8_path: Path, feeds: list[dict[str, np.ndarray]]) -> float:
    """Mean |per-channel mean output of ``skewed``, int8 - float|, every layer int8."""

    def means(path: Path) -> np.ndarray:
        model = onnx.load(str(path))
        return channel_stats(model, node_outputs(model, {"skewed": 1}), feeds)["skewed"][0]

    return float(np.abs(means(int8_path) - means(float_path)).mean())


def test_correction_removes_the_mean_shift_and_gives_a_biasless_conv_a_bias(tmp_path):
    src = _skewed_cnn(tmp_path / "cnn.onnx")
    x = _inputs()
    feeds = [{"x": x[:64]}, {"x": x[64:]}]
    cache = tmp_path / "ranges.json"

    def quantize(float_path: Path, dst: Path) -> None:
        settings = StaticSettings(reduce_range=False)
        quantize_static(float_path, dst, feeds, settings, cache=cache, compact=False)

    done = correct_biases(src, tmp_path / "corrected.onnx", feeds, quantize)
    assert done.layers == ["stem", "skewed", "head"] and done.created == ["skewed"]
    assert done.skipped == {} and done.shift > 0.0
    corrected = onnx.load(str(tmp_path / "corrected.onnx"))
    skewed = next(n for n in corrected.graph.node if n.name == "skewed")
    bias = next(i for i in corrected.graph.initializer if i.name == skewed.input[2])
    # rounding down lowered every channel's mean: the new bias raises each of them
    assert numpy_helper.to_array(bias).shape == (8,) and (numpy_helper.to_array(bias) > 0).all()

    quantize(src, tmp_path / "plain-int8.onnx")
    quantize(tmp_path / "corrected.onnx", tmp_path / "corrected-int8.onnx")
    before = _mean_shift(src, tmp_path / "plain-int8.onnx", feeds)
    after = _mean_shift(src, tmp_path / "corrected-int8.onnx", feeds)
    assert after < 0.3 * before, (before, after)


def test_excluded_layers_are_left_alone(tmp_path):
    src = _skewed_cnn(tmp_path / "cnn.onnx")
    feeds = [{"x": _inputs(32)}]

    def quantize(float_path: Path, dst: Path) -> None:
        quantize_static(float_path, dst, feeds, StaticSettings(), exclude=["skewed"], compact=False)

    done = correct_biases(src, tmp_path / "out.onnx", feeds, quantize, exclude=["skewed"])
    assert "skewed" not in done.layers and "excluded" in done.skipped["skewed"]


def test_bias_correction_true_needs_static_mode(tmp_path):
    src = _skewed_cnn(tmp_path / "cnn.onnx")
    with pytest.raises(InvalidInputError, match=r"bias_correction: true .* mode is 'dynamic'"):
        leanml.quantize(
            str(src), data=(_inputs(), None), mode="dynamic", metric="cosine", bias_correction=True
        )


def _static(src: Path, **keys: object):
    return leanml.quantize(
        str(src),
        data=(_inputs(256), None),
        mode="static",
        metric="cosine",
        sensitivity=False,
        **keys,
    )


def test_auto_keeps_a_correction_that_helps(tmp_path):
    out = _static(_skewed_cnn(tmp_path / "cnn.onnx"))
    said = out.result.details["bias_correction"]
    assert said["kept"] and said["created"] == ["skewed"]
    assert said["val_metric"]["with"] > said["val_metric"]["without"]  # the shift cost fidelity
    note = next(n for n in out.result.notes if n.startswith("Bias correction"))
    assert "3 layer(s) (1 had none and got one)" in note and note.endswith("kept.")


def _harmful(monkeypatch: pytest.MonkeyPatch) -> None:
    """The real correction, then every corrected bias pushed far off: a correction that hurts."""
    real = _bias.correct_biases

    def harmful(src: Path, dst: Path, *args: object, **kw: object):
        done = real(src, dst, *args, **kw)
        model = onnx.load(str(dst))
        for init in model.graph.initializer:
            if init.name.startswith("b_") or init.name.endswith("_leanml_bias"):
                value = numpy_helper.to_array(init) + 3.0
                init.CopyFrom(numpy_helper.from_array(value.astype(np.float32), init.name))
        onnx.save(model, str(dst))
        return done

    monkeypatch.setattr(_bias, "correct_biases", harmful)


def test_auto_drops_a_correction_that_hurts_and_true_keeps_it(tmp_path, monkeypatch):
    _harmful(monkeypatch)
    src = _skewed_cnn(tmp_path / "cnn.onnx")
    auto = _static(src)
    said = auto.result.details["bias_correction"]
    assert not said["kept"] and said["val_metric"]["with"] < said["val_metric"]["without"]
    assert auto.result.details["val_metric"]["quantized"] == said["val_metric"]["without"]
    assert any(
        n.endswith("not kept (bias_correction: auto keeps it unless it hurts).")
        for n in auto.result.notes
    )
    forced = _static(src, bias_correction=True)
    said = forced.result.details["bias_correction"]
    assert (
        said["kept"]
        and forced.result.details["val_metric"]["quantized"] == said["val_metric"]["with"]
    )


def test_bias_correction_false_does_nothing(tmp_path):
    out = _static(_skewed_cnn(tmp_path / "cnn.onnx"), bias_correction=False)
    assert "bias_correction" not in out.result.details
    assert not any(n.startswith("Bias correction") for n in out.result.notes)


def _outlier_mlp(path: Path) -> Path:
    """x -> Gemm fc1 -> Relu -> Gemm fc2, four hidden units 300x the others (fc2 divides them
    back): one int8 scale for fc2's input flattens the ordinary units, so auto_exclude keeps that
    tensor float, and a correction measured with it rounded no longer fits."""
    rng = np.random.default_rng(0)
    w1 = rng.normal(0, 0.2, (64, 32)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 64).astype(np.float32)
    w2 = rng.normal(0, 0.2, (10, 64)).astype(np.float32)
    w1[:4] *= 300.0
    b1[:4] *= 300.0
    w2[:, :4] /= 300.0
    inits = [
        numpy_helper.from_array(w, n)
        for w, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (np.zeros(10, np.float32), "b2"))
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name="fc1", transB=1),
        helper.make_node("Relu", ["h"], ["h_relu"], name="relu"),
        helper.make_node("Gemm", ["h_relu", "w2", "b2"], ["y"], name="fc2", transB=1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_auto_exclude_searches_the_uncorrected_model_and_the_correction_is_measured_again(
    tmp_path,
):
    x = np.random.default_rng(2).normal(0, 1, (256, 32)).astype(np.float32)
    out = leanml.quantize(
        str(_outlier_mlp(tmp_path / "mlp.onnx")),
        data=(x, None),
        mode="static",
        metric="cosine",
        max_metric_drop=0.001,
        require_speedup=False,
    )
    details = out.result.details
    said = details["bias_correction"]
    # the first correction helped all-int8 but did not hold the budget
    first = said["first"]
    assert first["kept"] and first["val_metric"]["with"] > first["val_metric"]["without"]
    assert 1.0 - first["val_metric"]["with"] > 0.001
    # auto_exclude found a mixed-precision model on the uncorrected graph: with the first
    # correction it would have kept everything float and still not held the budget
    kept = details["kept_float_tensors"]
    assert kept and len(kept) < len(details["sensitivity"])
    assert 1.0 - said["val_metric"]["without"] <= 0.001
    assert said["val_metric"]["without"] > first["val_metric"]["with"]
    # the second correction is kept only when it is not worse, and the model is the one kept
    best = max(said["val_metric"].values())
    assert details["val_metric"]["quantized"] == (
        best if said["kept"] else said["val_metric"]["without"]
    )
    note = next(n for n in out.result.notes if n.startswith("Bias correction"))
    assert f"measured again with the {len(kept)} tensor(s) it kept float" in note
