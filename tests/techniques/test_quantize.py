"""The quantize stage: each mode, what runs in int8, accuracy protection, any framework's ONNX file."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import numpy_helper
from torch import nn
from typer.testing import CliRunner

import leanml
from leanml.cli import app
from leanml.constraints import Constraints
from leanml.errors import InvalidInputError
from leanml.measure import MeasureConfig
from leanml.models import Model
from leanml.pipeline import Reporter, apply_stage, build_task, load_recipe
from leanml.pipeline._context import PipelineContext
from leanml.techniques import get_stage_class
from leanml.techniques.quantize import QuantizeConfig
from leanml.techniques.quantize._onnx import calibration_feeds, quiet_quantizer
from leanml.training import TrainConfig, fit

from ..conftest import FAST_MEASURE, tiny_recipe

runner = CliRunner()


def _quantize(model: Model, task, config: dict, **kw):
    return apply_stage("quantize", model, task, config, measure_config=FAST_MEASURE, **kw)


def _kernels(path: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime runs, counted here without leanml's own counting code."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(opts.optimized_model_filepath).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    """Small models train several times faster on one thread when the machine is busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_cnn():
    task = build_task(load_recipe(tiny_recipe(task={"model_args": {"width": 8, "depth": 2}})))
    torch.manual_seed(0)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=6, lr=0.01), seed=0)
    return task, Model(torch=net)


class TwoLayer(nn.Module):
    def __init__(self, n_in: int = 64, n_out: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def outlier_mlp():
    """A trained MLP whose hidden layer has four outlier units, 300x the others: the float function
    is unchanged (fc2 divides them back), but one per-tensor int8 scale for fc2's input flattens
    every ordinary unit. This is the wide-activation-range case static PTQ cannot handle."""
    task = build_task(load_recipe(tiny_recipe(task={"model": "mlp", "model_args": {}})))
    torch.manual_seed(0)
    net = TwoLayer()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=25, lr=3e-3), seed=0)
    with torch.no_grad():
        net.fc1.weight[:4] *= 300.0
        net.fc1.bias[:4] *= 300.0
        net.fc2.weight[:, :4] /= 300.0
    return task, Model(torch=net)


# -- modes ------------------------------------------------------------------------------------------


def test_static_runs_every_conv_and_gemm_in_int8_and_says_so(digits_cnn):
    task, model = digits_cnn
    out = _quantize(
        model, task, {"mode": "static", "calibration": {"method": "minmax", "samples": 128}}
    )
    details, notes = out.result.details, out.result.notes
    assert (
        details["compute_nodes"] == 5
        and len(details["int8_nodes"]) == 5
        and details["float_nodes"] == {}
    )
    assert notes[0].startswith("5 of 5 compute nodes (Conv, MatMul, Gemm) run in int8")
    kernels = _kernels(out.artifact)
    assert kernels.get("QLinearConv") == 4 and kernels.get("QGemm") == 1
    assert not {"Conv", "FusedConv", "Gemm", "FusedGemm"} & set(kernels)
    # a tiny CNN: the graph's bookkeeping is a large part of its file
    assert out.after.size_bytes < out.before.size_bytes * 0.85
    assert abs(out.after.metric - out.before.metric) <= 0.03
    assert details["calibration"]["used"] == 128
    # scales and zero points are not weights: the same layers hold the same number of weights
    assert out.after.params == out.before.params
    plot = out.result.plots[0]
    # one bar per quantized tensor, named by its node's full name and module path
    labels = next(iter(plot.series.values()))[0]
    assert plot.kind == "bar" and any("(module features.0.0)" in label for label in labels)


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_static_calibration_methods(digits_cnn, method):
    task, model = digits_cnn
    out = _quantize(
        model,
        task,
        {"mode": "static", "calibration": {"method": method, "samples": 64}, "sensitivity": False},
    )
    assert len(out.result.details["int8_nodes"]) == 5
    assert abs(out.after.metric - out.before.metric) <= 0.05


@pytest.mark.parametrize("method", ["entropy", "percentile"])
def test_histogram_calibration_takes_a_sample_count_that_is_not_a_multiple_of_32(
    digits_cnn, method
):
    task, model = digits_cnn
    out = _quantize(
        model,
        task,
        {"mode": "static", "calibration": {"method": method, "samples": 100}, "sensitivity": False},
    )
    assert out.result.details["calibration"]["used"] == 100
    assert len(out.result.details["int8_nodes"]) == 5


def test_calibration_batches_are_equal_sized(tmp_path):
    path = _plain_export(TwoLayer(), tmp_path / "mlp.onnx", (64,))
    for n, size in ((100, 25), (64, 32), (97, 1), (5, 5)):
        feeds = calibration_feeds(path, np.zeros((n, 64), np.float32))
        sizes = {len(next(iter(f.values()))) for f in feeds}
        assert sizes == {size} and sum(len(next(iter(f.values()))) for f in feeds) == n


def test_quiet_quantizer_leaves_the_root_logger_and_other_loggers_alone(caplog):
    root = logging.getLogger()
    level, handlers, filters = root.level, list(root.handlers), list(root.filters)
    with caplog.at_level(logging.WARNING), quiet_quantizer():
        logging.getLogger("someone.else").warning("kept")
        logging.warning("kept too")  # noqa: LOG015 - the quantizer logs on the root logger too
        logging.getLogger("onnxruntime.quantization.x").warning("dropped")
        # what the quantizer's own `logging.warning(...)` produces: a root record from its files
        ort_file = str(Path(ort.__file__).parent / "quantization" / "quantize.py")
        root.handle(root.makeRecord("root", logging.WARNING, ort_file, 1, "dropped", (), None))
        assert root.level == level
    assert [r.getMessage() for r in caplog.records] == ["kept", "kept too"]
    assert (root.level, root.handlers, root.filters) == (level, handlers, filters)
    assert logging.getLogger("onnxruntime").level == logging.NOTSET


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


def test_qat_recovers_accuracy_static_ptq_loses_and_runs_in_int8(outlier_mlp):
    task, model = outlier_mlp
    static = _quantize(model, task, {"mode": "static", "auto_exclude": False, "sensitivity": False})
    static_drop = static.before.metric - static.after.metric
    assert static_drop > 0.05  # the constraint (0.01) is clearly broken by PTQ
    qat = _quantize(model, task, {"mode": "qat", "train": {"epochs": 6, "lr": 3e-3}})
    assert qat.before.metric - qat.after.metric <= 0.02
    assert qat.before.metric - qat.after.metric < static_drop / 3
    assert qat.result.details["float_nodes"] == {} and len(qat.result.details["int8_nodes"]) == 2
    assert _kernels(qat.artifact).get("QGemm") == 2
    weights = [
        numpy_helper.to_array(i)
        for i in onnx.load(str(qat.artifact)).graph.initializer
        if len(i.dims) == 2
    ]
    assert weights and all(w.dtype == np.int8 for w in weights)
    assert qat.result.train_result is not None and qat.result.train_result.stopped_epoch >= 1


def test_qat_on_an_onnx_only_model_is_a_clear_error(digits_cnn, tmp_path):
    task, model = digits_cnn
    path = tmp_path / "m.onnx"
    leanml.runtime.to_onnx(model, task.data.val, path)
    with pytest.raises(InvalidInputError, match="mode 'qat' fine-tunes a PyTorch model"):
        _quantize(Model(onnx=path), task, {"mode": "qat"})


# -- accuracy protection -----------------------------------------------------------------------------


def test_auto_exclude_keeps_the_most_sensitive_tensor_float_until_the_constraint_holds(outlier_mlp):
    task, model = outlier_mlp
    out = _quantize(model, task, {"mode": "static"}, max_metric_drop=0.02)
    details = out.result.details
    sensitivity = details["sensitivity"]
    ranked = list(sensitivity)
    # the outlier tensor sits between fc1 and fc2: keeping it float recovers the most
    assert ranked[0] == "output of Gemm /fc1/Gemm (module fc1)" and sensitivity[ranked[0]] > 0.05
    assert sensitivity[ranked[0]] == max(sensitivity.values())
    excluded = details["auto_excluded"]
    kept = details["kept_float_tensors"]
    assert excluded == [k["tensor"] for k in kept] and kept[0]["producer"] == "/fc1/Gemm"
    # the Gemms writing and reading it compute in float, and the notes say why
    assert set(details["float_nodes"]) == {"/fc1/Gemm", "/fc2/Gemm"}
    reason = "kept float by auto_exclude: a tensor it reads or writes is among the most sensitive"
    assert details["float_nodes"]["/fc2/Gemm"].startswith(reason)
    note = next(n for n in out.result.notes if n.startswith("auto_exclude kept"))
    assert f"auto_exclude kept {len(kept)} of {len(sensitivity)} quantized tensors float" in note
    assert "output of Gemm /fc1/Gemm (module fc1)" in note
    assert any("batch 1" in n and "float" in n for n in out.result.notes)
    assert details["val_metric"]["float"] - details["val_metric"]["quantized"] <= 0.02
    assert out.before.metric - out.after.metric <= 0.03


class _AddBranchOutlier(nn.Module):
    """A conv net whose outlier sits in an Add branch: a constant 200 on one channel of the sum the
    head reads. The head ignores that channel, but one uint8 scale for the whole sum rounds the
    other channels (about 1) to steps of 0.8. No Conv's weights or inputs carry the outlier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 6, 1)
        offset = torch.zeros(1, 8, 1, 1)
        offset[0, 0] = 200.0
        self.register_buffer("offset", offset)
        with torch.no_grad():
            self.head.weight[:, 0] = 0.0
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        return torch.flatten(self.head(a + self.branch(a) + self.offset), 1)


def test_tensor_level_auto_exclude_fixes_an_add_branch_outlier_that_layers_cannot(tmp_path):
    from leanml.pipeline._quantize_file import quantize_onnx_file

    path = _plain_export(_AddBranchOutlier(), tmp_path / "add.onnx", (3, 8, 8))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(64, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(96, 3, 8, 8)).astype(np.float32))

    def run(name: str, config: dict):
        return quantize_onnx_file(
            path,
            calib=tmp_path / "calib.npz",
            eval_data=tmp_path / "eval.npz",
            output=tmp_path / name,
            metric="cosine",
            config={"mode": "static", **config},
            measure=FAST_MEASURE,
        )

    # every Conv float (weight-level exclusion): the Add's output is still rounded, the drop stays
    layers = run("layers", {"exclude": ["stem", "branch", "head"], "auto_exclude": False})
    assert not layers.accepted and "cosine dropped" in layers.reason
    assert layers.summary["before"]["metric"] - layers.summary["after"]["metric"] > 0.05

    done = run("tensors", {})
    assert done.accepted, done.reason
    details = done.summary["details"]
    ranked = list(details["sensitivity"])
    assert ranked[0] == "output of Add /Add_1"  # the sum with the outlier, named in full
    kept = details["kept_float_tensors"]
    assert kept[0]["producer"] == "/Add_1" and kept[0]["kind"] == "activation"
    assert len(kept) < len(ranked)  # mixed precision: the other tensors stay int8
    assert {"/stem/Conv", "/branch/Conv"} <= set(details["int8_nodes"])
    assert "/head/Conv" in details["float_nodes"]
    notes = done.summary["notes"]
    note = next(n for n in notes if n.startswith("auto_exclude kept"))
    assert "output of Add /Add_1" in note and "(Add x1)" in note
    # the format comparison times the mixed-precision model against float at each batch size
    mixed = f"Format static QDQ (all ops, {len(kept)} tensors float): "
    assert any(n.startswith(mixed) and "the float latency at batch 1/8" in n for n in notes)
    assert done.summary["before"]["metric"] - done.summary["after"]["metric"] <= 0.01
    kernels = _kernels(done.model_path)
    assert (
        kernels.get("QLinearConv") == 2
        and kernels.get("Conv", 0) + kernels.get("FusedConv", 0) == 1
    )


def test_keeping_a_tensor_float_unrounds_only_it_and_keeps_removed_relus(tmp_path):
    from leanml.techniques.quantize._onnx import StaticSettings, prepare, quantize_static
    from leanml.techniques.quantize._tensors import keep_tensors_float, qdq_pairs

    path = _plain_export(_AddBranchOutlier(), tmp_path / "add.onnx", (3, 8, 8))
    prepared = prepare(path, tmp_path / "prepared.onnx").path
    x = np.random.default_rng(1).normal(size=(32, 3, 8, 8)).astype(np.float32)
    qdq = tmp_path / "qdq.onnx"
    quantize_static(prepared, qdq, calibration_feeds(prepared, x), StaticSettings(), compact=False)
    pairs = qdq_pairs(onnx.load(str(qdq)))
    kinds = {(p.kind, p.producer_op or "-") for p in pairs}
    assert ("weight", "-") in kinds and ("activation", "Add") in kinds
    every = tmp_path / "every.onnx"
    every.write_bytes(qdq.read_bytes())
    keep_tensors_float(every, [p.tensor for p in pairs], onnx.load(str(prepared)))

    def run(p: Path) -> np.ndarray:
        return ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(
            None, {"pixels": x}
        )[0]

    # every pair float is the float model: the Relu the quantizer folded into a uint8 range stays
    float_out = run(prepared)
    assert np.abs(run(every) - float_out).max() < 0.01 < np.abs(run(qdq) - float_out).max()
    assert not {"QuantizeLinear", "DequantizeLinear"} & {
        n.op_type for n in onnx.load(str(every)).graph.node
    }


class _Context(PipelineContext):
    """A pipeline context whose baseline and quantized-model scores a test sets."""

    def __init__(self, task, tmp_path, *, baseline_val, quantized_penalty=0.0):
        super().__init__(
            task=task,
            train_config=TrainConfig(),
            measure_config=MeasureConfig.model_validate(FAST_MEASURE),
            seed=0,
            work_dir=tmp_path,
            constraints=Constraints(max_metric_drop=0.01),
            baseline_val_metric=baseline_val,
            recipe={},
            stage_index=0,
            reporter=Reporter(),
        )
        self.penalty = quantized_penalty

    def evaluate(self, model, split="val"):
        value = super().evaluate(model, split)
        quantized = isinstance(model, Path) and model.name.startswith("quantized-")
        return value - self.penalty if quantized else value


def _float_val(task, model, tmp_path):
    return _Context(task, tmp_path, baseline_val=0.0).evaluate(model)


def test_auto_exclude_does_not_run_when_the_float_input_already_breaks_the_constraint(
    digits_cnn, tmp_path
):
    task, model = digits_cnn
    baseline = _float_val(task, model, tmp_path) + 0.05  # an earlier stage already cost 5 points
    ctx = _Context(task, tmp_path, baseline_val=baseline)
    stage = get_stage_class("quantize")(QuantizeConfig(mode="static", sensitivity=False))
    result = stage.apply(model.clone(), ctx)
    assert result.details["auto_excluded"] == [] and len(result.details["int8_nodes"]) == 5
    assert any(
        n.startswith(
            "auto_exclude did not run: the float model this stage started from already drops 0.05"
        )
        for n in result.notes
    )


def test_auto_exclude_that_cannot_restore_the_metric_keeps_every_layer_quantized(
    digits_cnn, tmp_path
):
    task, model = digits_cnn
    # whatever is kept float, the quantized file scores 0.2 lower: exclusion cannot help
    ctx = _Context(
        task, tmp_path, baseline_val=_float_val(task, model, tmp_path), quantized_penalty=0.2
    )
    stage = get_stage_class("quantize")(QuantizeConfig(mode="static", sensitivity=False))
    result = stage.apply(model.clone(), ctx)
    # every quantized tensor was measured: each layer's weight and the activations between them
    labels = set(result.details["sensitivity"])
    for module in ("features.0.0", "features.1.0", "features.3.0", "features.4.0"):
        assert (
            f"weight of Conv /features/features.{module[9]}/{module}/Conv (module {module})"
            in labels
        )
    assert "weight of Gemm /classifier/Gemm (module classifier)" in labels
    assert "output of MaxPool /features/features.2/MaxPool (module features.2)" in labels
    assert result.details["auto_excluded"] == [] and len(result.details["int8_nodes"]) == 5
    assert any("no mixed-precision int8 model holds the budget" in n for n in result.notes)
    assert "QLinearConv" in _kernels(Path(result.model.onnx))


def test_exclude_list_is_kept_float_and_unknown_names_are_errors(digits_cnn):
    task, model = digits_cnn
    out = _quantize(
        model, task, {"mode": "static", "exclude": ["classifier"], "sensitivity": False}
    )
    assert out.result.details["float_nodes"] == {
        "/classifier/Gemm": "kept float: listed in quantize.exclude"
    }
    assert any(n.startswith("Float: classifier: kept float") for n in out.result.notes)
    with pytest.raises(
        InvalidInputError, match=r"quantize.exclude names 'nope'.*layers are: classifier"
    ):
        _quantize(model, task, {"mode": "static", "exclude": ["nope"]})


def test_unknown_mode_and_bad_keys_name_the_key(digits_cnn):
    task, model = digits_cnn
    with pytest.raises(InvalidInputError, match=r"quantize.mode must be one of"):
        _quantize(model, task, {"mode": "int4"})
    with pytest.raises(InvalidInputError, match=r"quantize.calibration.samples"):
        _quantize(model, task, {"calibration": {"samples": 0}})
    with pytest.raises(InvalidInputError, match=r"stages\[0\]\.quantize\.train"):
        leanml.load_recipe(
            tiny_recipe(stages=[{"quantize": {"mode": "qat", "train": {"epochs": 0}}}])
        )


# -- ONNX files from anywhere -------------------------------------------------------------------------


class Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x.flatten(1))))  # exact GELU: an Erf node


def _plain_export(net: nn.Module, path: Path, shape: tuple[int, ...], opset: int = 17) -> Path:
    """torch.onnx.export with no leanml code: a model leanml did not produce."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, *shape),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}},
        )
    return path


def test_old_opset_is_upgraded_and_unsupported_ops_stay_float_and_are_said(digits_cnn, tmp_path):
    task, _ = digits_cnn
    torch.manual_seed(0)
    path = _plain_export(Gelu(), tmp_path / "gelu.onnx", (1, 8, 8), opset=11)
    out = _quantize(Model(onnx=path), task, {"mode": "static", "sensitivity": False})
    notes = " ".join(out.result.notes)
    assert "Upgraded the model's ONNX opset from 11 to 13" in notes
    other = [
        n
        for n in out.result.notes
        if n.startswith("Other ops run in float (no int8 form in static mode):")
    ]
    assert len(other) == 1 and "Erf x1" in other[0]
    assert out.result.details["opset"] == {"original": 11, "quantized": 13}
    assert len(out.result.details["int8_nodes"]) == 2


@pytest.mark.slow
def test_recipe_with_an_onnx_model_quantizes_it(tmp_path, validate_metrics):
    task = build_task(load_recipe(tiny_recipe(task={"model": "mlp", "model_args": {}})))
    torch.manual_seed(0)
    net = TwoLayer()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=10, lr=3e-3), seed=0)
    path = _plain_export(net, tmp_path / "mlp.onnx", (1, 8, 8))
    recipe = tiny_recipe(
        task={"model": str(path), "model_args": {}},
        stages=[{"quantize": {"mode": "static"}}],
        constraints={"max_metric_drop": 0.05},
    )
    result = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(result.metrics)
    stage = result.metrics["stages"][1]
    assert stage["kind"] == "quantize" and stage["accepted"], stage
    assert stage["size_bytes"] < result.metrics["stages"][0]["size_bytes"] / 2
    assert stage["notes"][0].startswith("2 of 2 compute nodes")


@pytest.fixture(scope="module")
def foreign_model(tmp_path_factory, digits_cnn):
    """A digits CNN exported with plain torch.onnx.export, and its data as NPZ files."""
    task, model = digits_cnn
    folder = tmp_path_factory.mktemp("foreign")
    _plain_export(model.torch, folder / "cnn.onnx", (1, 8, 8))
    np.savez(folder / "calib.npz", pixels=task.data.train.x[:200], y=task.data.train.y[:200])
    np.savez(folder / "eval.npz", pixels=task.data.test.x, y=task.data.test.y)
    np.savez(folder / "calib_x.npz", x=task.data.train.x[:200])
    np.savez(folder / "eval_x.npz", x=task.data.test.x)
    return folder


@pytest.mark.parametrize("mode", ["dynamic", "fp16"])
def test_cli_dynamic_and_fp16_need_no_calibration_file(foreign_model, tmp_path, mode):
    f = foreign_model
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "quantize", str(f / "cnn.onnx"), "--eval"]
        + [str(f / "eval.npz"), "--mode", mode, "-o", str(out), "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode in (0, 3), proc.stderr  # 3: rejected by the gate, still a verdict
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["mode"] == mode and summary["evaluated_on"] == "eval"


def test_cli_static_without_calibration_says_what_to_give(foreign_model):
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "quantize", str(foreign_model / "cnn.onnx")]
        + ["--eval", str(foreign_model / "eval.npz"), "--mode", "static", "-q"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and "give --calib" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_quantizes_a_foreign_onnx_file_with_labels(foreign_model, tmp_path):
    f = foreign_model
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "quantize",
            str(f / "cnn.onnx"),
            "--calib",
            str(f / "calib.npz"),
            "--eval",
            str(f / "eval.npz"),
            "--mode",
            "static",
            "--output",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["metric"] == "accuracy" and summary["evaluated_on"] == "eval"
    assert summary["size_ratio"] > 1.15 and abs(summary["metric_delta"]) <= 0.03
    assert "5 of 5 compute nodes" in r.stdout and "smaller" in r.stdout
    sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["pixels"]


def test_cli_without_labels_measures_fidelity(foreign_model, tmp_path):
    f = foreign_model
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        [
            "quantize",
            str(f / "cnn.onnx"),
            "--calib",
            str(f / "calib_x.npz"),
            "--eval",
            str(f / "eval_x.npz"),
            "--mode",
            "dynamic",
            "--output",
            str(out),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["metric"] == "agreement"
    assert summary["before"]["metric"] == 1.0 and summary["after"]["metric"] >= 0.95


def _bad_inputs(f: Path, tmp: Path) -> dict[str, tuple[list[str], str]]:
    garbage = tmp / "garbage.onnx"
    garbage.write_bytes(b"not an onnx model")
    np.savez(tmp / "shape.npz", pixels=np.zeros((10, 1, 7, 7), np.float32))
    np.savez(tmp / "dtype.npz", pixels=np.array([["a"] * 64] * 4).reshape(4, 1, 8, 8))
    np.savez(tmp / "empty.npz", pixels=np.zeros((0, 1, 8, 8), np.float32))
    np.savez(tmp / "rows.npz", pixels=np.zeros((10, 1, 8, 8), np.float32), y=np.zeros(7, np.int64))
    np.savez(tmp / "names.npz", image=np.zeros((10, 1, 8, 8), np.float32), other=np.zeros(3))
    model, calib = str(f / "cnn.onnx"), str(f / "calib.npz")
    return {
        "not onnx": ([str(garbage), "--calib", calib], "is not a valid ONNX model"),
        "shape": ([model, "--calib", str(tmp / "shape.npz")], "is shaped [10, 1, 7, 7]"),
        "dtype": ([model, "--calib", str(tmp / "dtype.npz")], "has dtype <U1"),
        "count": ([model, "--calib", str(tmp / "empty.npz")], "holds 0 samples"),
        "rows": ([model, "--calib", str(tmp / "rows.npz")], "y has 7 rows but the inputs have 10"),
        "names": ([model, "--calib", str(tmp / "names.npz")], "the model's inputs are ['pixels']"),
        "mode": ([model, "--calib", calib, "--mode", "int4"], "quantize.mode must be one of"),
        "qat": (
            [model, "--calib", calib, "--mode", "qat"],
            "mode 'qat' fine-tunes a PyTorch model",
        ),
        "missing": ([str(tmp / "nope.onnx"), "--calib", calib], "does not exist"),
    }


@pytest.mark.parametrize(
    "case", ["not onnx", "shape", "dtype", "count", "rows", "names", "mode", "qat", "missing"]
)
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(foreign_model, tmp_path, case):
    args, needle = _bad_inputs(foreign_model, tmp_path)[case]
    out = tmp_path / "out"
    r = runner.invoke(app, ["quantize", *args, "--output", str(out), "--quiet"])
    assert r.exit_code == 2, r.output
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in r.output, err
    assert needle in err, err
    assert not out.exists()


# -- the gate: a result that breaks the constraints is not passed off as a success ------------------


def _cli_quantize(f: Path, out: Path, *extra: str):
    args = ["quantize", str(f / "cnn.onnx"), "--calib", str(f / "calib.npz")]
    return runner.invoke(app, [*args, "--eval", str(f / "eval.npz"), "-o", str(out), *extra])


def test_cli_accepted_result_is_model_onnx_with_the_verdict(foreign_model, tmp_path):
    out = tmp_path / "out"
    (out).mkdir()
    (out / "rejected-model.onnx").write_bytes(b"an earlier run's rejected model")
    r = _cli_quantize(foreign_model, out, "--quiet", "--max-latency-ratio", "1000")
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["accepted"] is True and summary["reason"] is None
    assert summary["constraints"] == {"max_metric_drop": 0.01, "max_latency_ratio": 1000.0}
    assert (out / "model.onnx").exists() and not (out / "rejected-model.onnx").exists()


def test_cli_result_slower_than_max_latency_ratio_is_rejected_with_exit_3(foreign_model, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"an earlier run's accepted model")
    # no model runs in a millionth of its input's time: the side-by-side re-timing confirms it
    r = _cli_quantize(foreign_model, out, "--max-latency-ratio", "0.000001")
    assert r.exit_code == 3, r.output
    err = r.stderr.strip().splitlines()[-1]
    # the reason may first say what the result would have given (2.3x smaller, ...)
    assert err.startswith("leanml: rejected: no acceptable result: "), err
    assert "its p50 latency is more than" in err, err
    assert "max_latency_ratio 1e-06" in err and "rejected-model.onnx" in err, err
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["accepted"] is False and "max_latency_ratio" in summary["reason"]
    assert (out / "rejected-model.onnx").exists() and not (out / "model.onnx").exists()
    onnx.checker.check_model(onnx.load(str(out / "rejected-model.onnx")))
    assert "before" in r.stdout and "after" in r.stdout  # the figures are still shown


def test_api_returns_the_metric_verdict_and_writes_the_rejected_model(foreign_model, tmp_path):
    from leanml.pipeline._quantize_file import quantize_onnx_file

    f = foreign_model
    # int8 always moves the output a little: with no drop allowed, cosine cannot hold
    done = quantize_onnx_file(
        f / "cnn.onnx",
        calib=f / "calib_x.npz",
        eval_data=f / "eval_x.npz",
        output=tmp_path / "out",
        metric="cosine",
        config={"mode": "static", "auto_exclude": False, "sensitivity": False},
        measure=FAST_MEASURE,
        max_metric_drop=0.0,
    )
    assert done.accepted is False and done.model_path.name == "rejected-model.onnx"
    assert "cosine dropped" in done.reason and "max_metric_drop 0.0" in done.reason
    assert done.summary["accepted"] is False and done.summary["reason"] == done.reason
    assert not (tmp_path / "out" / "model.onnx").exists()


@pytest.mark.parametrize("ratio", ["0", "-1", "nan"])
def test_cli_bad_max_latency_ratio_is_exit_2(foreign_model, tmp_path, ratio):
    out = tmp_path / "out"
    r = _cli_quantize(foreign_model, out, "--max-latency-ratio", ratio)
    assert r.exit_code == 2, r.output
    assert "--max-latency-ratio must be > 0" in r.stderr and not out.exists()


# -- transformers -------------------------------------------------------------------------------------


def test_layer_labels_are_full_module_paths_never_the_last_word():
    from leanml.techniques.quantize._onnx import layer_label

    assert layer_label("/features/features.0/features.0.0/Conv") == "features.0.0"
    assert (
        layer_label("/m/encoder/layer.0/attention/self/query/MatMul")
        == "m.encoder.layer.0.attention.self.query"
    )
    assert layer_label("/model.0/conv/Conv") == "model.0.conv"
    assert layer_label("conv1") == "conv1" and layer_label("/MatMul") == "/MatMul"


class _Embedder(nn.Module):
    """Token ids -> a vector per sequence: an embedding table much larger than the layers after it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(2000, 64)
        self.proj = nn.Linear(64, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids)).mean(1)


@pytest.fixture(scope="module")
def embedder_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("embedder") / "embedder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Embedder().eval(),
            (torch.zeros(2, 16, dtype=torch.long),),
            str(path),
            dynamo=False,
            input_names=["ids"],
            dynamic_axes={"ids": {0: "n", 1: "seq"}},
        )
    return path


def _embedder_quantize(path: Path, exclude=()):
    ids = np.random.default_rng(0).integers(0, 2000, size=(64, 16))
    return leanml.quantize(
        path,
        data=(ids, None),
        mode="dynamic",
        sensitivity=False,
        exclude=list(exclude),
        measure=FAST_MEASURE,
    )


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


def test_an_exclude_name_that_matches_nothing_lists_the_nearest_names(embedder_onnx):
    with pytest.raises(InvalidInputError, match=r"names 'embd'.*nearest names: embed"):
        _embedder_quantize(embedder_onnx, exclude=["embd"])


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


def test_an_already_quantized_model_is_refused_as_a_failed_stage(digits_cnn):
    task, model = digits_cnn
    first = _quantize(model, task, {"mode": "static", "sensitivity": False})
    with pytest.raises(leanml.StageError, match="the model is already quantized"):
        _quantize(Model(onnx=first.artifact), task, {"mode": "fp16"})


def test_a_trained_qat_layer_can_be_kept_float_without_retraining(outlier_mlp, tmp_path):
    from leanml.runtime import OnnxRunner
    from leanml.techniques.quantize._qdq import keep_float

    task, model = outlier_mlp
    qat = _quantize(model, task, {"mode": "qat", "train": {"epochs": 1}})
    mixed = tmp_path / "mixed.onnx"
    keep_float(qat.artifact, mixed, ["/fc2/Gemm"])
    kernels = _kernels(mixed)
    # fc2 computes in float on fc1's float output (fc1's int8 output quantizer was fc2's input)
    assert kernels.get("QGemm", 0) < 2 and kernels.get("Gemm", 0) + kernels.get("FusedGemm", 0) >= 1
    x = task.data.val.x
    int8, part = OnnxRunner(qat.artifact).predict(x), OnnxRunner(mixed).predict(x)
    assert (int8.argmax(1) == part.argmax(1)).mean() > 0.9


def test_a_bad_layer_name_fails_before_training_and_writes_nothing(tmp_path):
    recipe = tiny_recipe(stages=[{"quantize": {"mode": "static", "exclude": ["nope"]}}])
    with pytest.raises(InvalidInputError, match="quantize.exclude names 'nope'"):
        leanml.run(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_a_bad_layer_name_found_mid_run_stops_with_one_line_but_keeps_the_baseline(
    tmp_path, validate_metrics
):
    # after a distill stage the model's layers are the student's: the name is checked only then
    distill = {"student": {"model_args": {"width": 4}}, "train": {"epochs": 1}}
    stages = [
        {"distill": {**distill, "compare_scratch": False}, "name": "student"},
        {"quantize": {"mode": "static", "exclude": ["nope"]}},
    ]
    recipe = tiny_recipe(stages=stages, constraints={"max_metric_drop": 1.0})
    with pytest.raises(InvalidInputError, match="quantize.exclude names 'nope'"):
        leanml.run(recipe, output=tmp_path / "run")
    run = tmp_path / "run"
    # the best model so far (the baseline) is still the run's result, and the report says why
    metrics = json.loads((run / "metrics.json").read_text())
    validate_metrics(metrics)
    final = next(s for s in metrics["stages"] if s["name"] == metrics["final"])
    assert (run / "model.onnx").read_bytes() == (run / final["artifact"]).read_bytes()
    assert metrics["failed_stages"][0]["error"].startswith("bad input: quantize.exclude names")
    assert "quantize" in (run / "report.md").read_text()


def test_sensitivity_sample_is_bounded_and_the_same_for_a_seed():
    from leanml.techniques.quantize._sensitivity import sample_rows

    assert list(sample_rows(10, 64, seed=0)) == list(range(10))  # few rows: all of them
    rows = sample_rows(1000, 64, seed=3)
    assert len(rows) == 64 and len(set(rows)) == 64 and list(rows) == sorted(rows)
    assert list(rows) == list(sample_rows(1000, 64, seed=3))
    assert list(rows) != list(sample_rows(1000, 64, seed=4))


def test_dynamic_sensitivity_switches_one_layer_in_one_session_like_the_quantizer(tmp_path):
    from onnx import TensorProto, helper

    from leanml.techniques.quantize._onnx import quantize_dynamic
    from leanml.techniques.quantize._sensitivity import dynamic_sensitivity, switchable_dynamic

    rng = np.random.default_rng(0)
    w1 = rng.normal(size=(16, 32)).astype(np.float32)
    w2 = rng.normal(size=(32, 8)).astype(np.float32)
    table = rng.normal(size=(50, 16)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
            helper.make_node("ReduceMean", ["e"], ["h"], axes=[1], keepdims=0, name="pool"),
            helper.make_node("MatMul", ["h", "w1"], ["a"], name="fc1"),
            helper.make_node("Relu", ["a"], ["r"], name="relu"),
            helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2"),
        ],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n", 5])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
        [
            numpy_helper.from_array(table, "table"),
            numpy_helper.from_array(w1, "w1"),
            numpy_helper.from_array(w2, "w2"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    float_path = tmp_path / "float.onnx"
    onnx.save(model, str(float_path))
    ids = rng.integers(0, 50, size=(40, 5)).astype(np.int64)
    layers = ["embed", "fc1", "fc2"]
    switchable, switched = switchable_dynamic(
        model, [*layers, "missing"], per_channel=False, reduce_range=False
    )
    assert switched == layers and len(model.graph.input) == 1  # the input model is untouched
    onnx.checker.check_model(switchable)
    sess = ort.InferenceSession(switchable.SerializeToString(), providers=["CPUExecutionProvider"])
    reference = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    y_float = reference.run(None, {"ids": ids})[0]

    def run(on: str | None) -> np.ndarray:
        flags = {f"__leanml_int8_{k}": np.array(n == on) for k, n in enumerate(layers)}
        return sess.run(None, {"ids": ids, **flags})[0]

    np.testing.assert_array_equal(run(None), y_float)  # every switch off: the float model
    for name in layers:  # one switch on: that layer as ONNX Runtime's dynamic int8 runs it
        only = tmp_path / f"{name}.onnx"
        quantize_dynamic(
            float_path,
            only,
            per_channel=False,
            reduce_range=False,
            exclude=[n for n in layers if n != name],
        )
        y_int8 = ort.InferenceSession(str(only), providers=["CPUExecutionProvider"]).run(
            None, {"ids": ids}
        )[0]
        simulated = run(name)
        assert not np.array_equal(simulated, y_float), name
        np.testing.assert_allclose(simulated, y_int8, atol=0.05 * np.abs(y_float).max())

    def mse(out: np.ndarray) -> float:
        return -float(((out - y_float) ** 2).mean())

    seen: list[str] = []
    base, drops = dynamic_sensitivity(
        model,
        layers,
        ids,
        mse,
        lambda b, v: b - v,
        per_channel=False,
        reduce_range=False,
        progress=lambda k, n, name, d: seen.append(name),
        batch_size=16,
    )
    assert base == 0.0 and seen == layers and set(drops) == set(layers)
    assert all(d > 0 for d in drops.values())


# -- SmoothQuant ------------------------------------------------------------------------------------


def _matmul_graph(tmp_path: Path, outlier: float = 1.0) -> tuple[Path, np.ndarray]:
    """x -> MatMul -> Add -> MatMul -> LayerNorm -> MatMul: the first MatMul reads a graph input
    (a Mul must be inserted), the second a linear layer's output and the third a LayerNorm's (both
    fold exactly). Channel 3 of x is ``outlier`` times larger than the others."""
    from onnx import TensorProto, helper

    rng = np.random.default_rng(0)

    def const(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.2, shape).astype(np.float32), name)

    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["a"], name="first"),
        helper.make_node("Add", ["a", "b0"], ["a2"], name="bias"),
        helper.make_node("MatMul", ["a2", "w1"], ["c"], name="second"),
        helper.make_node("LayerNormalization", ["c", "gamma", "beta"], ["n"], name="norm"),
        helper.make_node("MatMul", ["n", "w2"], ["y"], name="third"),
    ]
    graph = helper.make_graph(
        nodes,
        "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 16])],
        [const("w0", 64, 32), const("b0", 32), const("w1", 32, 48), const("w2", 48, 16)]
        + [const("gamma", 48), const("beta", 48)],
    )
    path = tmp_path / "mm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    x = rng.normal(0, 1, (256, 64)).astype(np.float32)
    x[:, 3] *= outlier
    return path, x


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[
        0
    ]


def test_smoothing_keeps_the_float_model_and_folds_where_it_is_exact(tmp_path):
    from leanml.techniques.quantize._smooth import smooth

    path, x = _matmul_graph(tmp_path, outlier=30.0)
    done = smooth(path, tmp_path / "smooth.onnx", [{"x": x[:128]}, {"x": x[128:]}], alpha=0.75)
    assert done.layers == ["first", "second", "third"] and done.tensors == 3
    assert sorted(done.folded.values()) == ["LayerNormalization", "MatMul + Add"]
    assert done.inserted == 1 and done.skipped == {}
    before, after = _run(path, x), _run(tmp_path / "smooth.onnx", x)
    assert not np.array_equal(
        numpy_helper.to_array(onnx.load(str(path)).graph.initializer[0]),
        numpy_helper.to_array(onnx.load(str(tmp_path / "smooth.onnx")).graph.initializer[0]),
    )
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5 * np.abs(before).max())


def test_smoothing_skips_what_it_cannot_smooth_and_says_why(tmp_path):
    from onnx import TensorProto, helper

    from leanml.techniques.quantize._smooth import smooth

    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "z"], ["y"], name="scores")],
        "two",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [4, 4]) for n in ("x", "z")],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 4])],
    )
    path = tmp_path / "two.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    feeds = [{"x": np.ones((4, 4), np.float32), "z": np.ones((4, 4), np.float32)}]
    done = smooth(path, tmp_path / "out.onnx", feeds, alpha=0.5)
    assert done.layers == [] and "not a constant" in done.skipped["scores"]
    assert not (tmp_path / "out.onnx").exists()

    path, x = _matmul_graph(tmp_path)
    done = smooth(path, tmp_path / "out.onnx", [{"x": x}], alpha=0.5, exclude=["first"])
    assert done.layers == ["second", "third"] and "excluded" in done.skipped["first"]


def test_smoothing_improves_dynamic_int8_fidelity_with_an_outlier_channel(tmp_path):
    from leanml.techniques.quantize._onnx import quantize_dynamic
    from leanml.techniques.quantize._smooth import smooth

    path, x = _matmul_graph(tmp_path, outlier=60.0)
    reference = _run(path, x)
    smooth(path, tmp_path / "smooth.onnx", [{"x": x[:128]}], alpha=0.75)

    def error(src: Path) -> float:
        dst = tmp_path / f"{src.stem}-int8.onnx"
        quantize_dynamic(src, dst, per_channel=True, reduce_range=False)
        y = _run(dst, x[128:])
        return float(np.abs(y - reference[128:]).mean() / np.abs(reference[128:]).mean())

    plain, smoothed = error(path), error(tmp_path / "smooth.onnx")
    assert smoothed < 0.5 * plain, (plain, smoothed)

    out = leanml.quantize(str(path), data=(x, None), mode="dynamic", metric="cosine", smooth=True)
    said = next(n for n in out.result.notes if n.startswith("SmoothQuant (alpha 0.75)"))
    assert "3 MatMul/Gemm node(s)" in said and said.endswith("kept.")


def test_smooth_true_needs_an_int8_mode(digits_cnn):
    task, model = digits_cnn
    with pytest.raises(InvalidInputError, match=r"smooth: true .* mode is 'fp16'"):
        _quantize(model, task, {"mode": "fp16", "smooth": True})


class _TokenEncoder(nn.Module):
    """Token ids and an attention mask -> one vector per token; ``pad_noise`` changes only the
    padding positions' outputs, ``shift`` only the real tokens'."""

    def __init__(self, *, pad_noise: float = 0.0, shift: float = 0.0) -> None:
        super().__init__()
        torch.manual_seed(0)  # every variant has the same weights
        self.embed, self.proj = nn.Embedding(50, 16), nn.Linear(16, 16)
        self.pad_noise, self.shift = pad_noise, shift

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.proj(self.embed(input_ids))
        real = attention_mask.unsqueeze(-1).float()
        return h + (1 - real) * self.pad_noise * torch.sin(7 * h) + real * self.shift


def _token_model(path: Path, **kw: float) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _TokenEncoder(**kw).eval(),
            (torch.ones(2, 12, dtype=torch.long), torch.ones(2, 12, dtype=torch.long)),
            str(path),
            dynamo=False,
            input_names=["input_ids", "attention_mask"],
            dynamic_axes={"input_ids": {0: "n", 1: "seq"}, "attention_mask": {0: "n", 1: "seq"}},
        )
    return path


def _token_inputs(n: int = 80, seq: int = 12) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, seq + 1, n)
    mask = (np.arange(seq) < lengths[:, None]).astype(np.int64)
    return {"input_ids": rng.integers(1, 50, (n, seq)) * mask, "attention_mask": mask}


def test_fidelity_of_a_sequence_model_compares_real_tokens_only(tmp_path):
    from leanml.pipeline._tasks import as_dataset, task_for

    ref = _token_model(tmp_path / "ref.onnx")
    task = task_for(
        as_dataset((_token_inputs(), None), seed=0), model=Model(onnx=ref), spec=str(ref)
    )
    assert task.metric.name == "cosine" and "padding excluded" in task.metric_label

    def fidelity(path: Path) -> float:
        return leanml.measure(
            path, task.data.test, task.metric, MeasureConfig(**FAST_MEASURE)
        ).metric

    assert fidelity(_token_model(tmp_path / "pad.onnx", pad_noise=50.0)) == pytest.approx(1.0)
    assert fidelity(_token_model(tmp_path / "real.onnx", shift=0.5)) < 0.99


def test_cli_names_the_padding_it_leaves_out_of_the_fidelity(tmp_path):
    model = _token_model(tmp_path / "encoder.onnx")
    np.savez(tmp_path / "x.npz", **_token_inputs())
    out = tmp_path / "out"
    r = runner.invoke(
        app,
        ["quantize", str(model), "--eval", str(tmp_path / "x.npz"), "--mode", "dynamic"]
        + ["--output", str(out), "--quiet"],
    )
    assert r.exit_code in (0, 3), r.output  # 3: rejected by the gate, still a verdict
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["metric"] == "cosine" and "padding excluded" in summary["metric_label"]
    assert any("padding positions" in n for n in summary["notes"]), summary["notes"]


@pytest.mark.parametrize("method", ["percentile", "entropy"])
def test_run_json_with_histogram_calibration_prints_valid_json_only(
    foreign_model, tmp_path, method
):
    # ONNX Runtime's histogram calibrators print() their progress; stdout must stay the JSON.
    recipe = tiny_recipe(
        task={"model": str(foreign_model / "cnn.onnx"), "model_args": {}},
        stages=[
            {
                "quantize": {
                    "mode": "static",
                    "calibration": {"method": method, "samples": 64},
                    "sensitivity": False,
                }
            }
        ],
        constraints={"max_metric_drop": 0.05},
    )
    path = tmp_path / "recipe.yaml"
    path.write_text(json.dumps(recipe))
    r = runner.invoke(app, ["run", str(path), "--json", "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    assert [s["kind"] for s in metrics["stages"]] == ["baseline", "quantize"], metrics["stages"]
