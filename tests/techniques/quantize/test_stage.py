"""The quantize stage as a whole: what runs in int8 and says so, exclude, bad keys, foreign and old ONNX files,
recipes (leanml/techniques/quantize/_stage.py)."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import leanml
from leanml.cli import app
from leanml.errors import InvalidInputError
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.training import TrainConfig, fit

from ...conftest import tiny_recipe
from .conftest import (
    TwoLayer,
    _kernels,
    _plain_export,
    _quantize,
    runner,
)


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


class Gelu(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(64, 32), nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(x.flatten(1))))  # exact GELU: an Erf node


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


def test_an_already_quantized_model_is_refused_as_a_failed_stage(digits_cnn):
    task, model = digits_cnn
    first = _quantize(model, task, {"mode": "static", "sensitivity": False})
    with pytest.raises(leanml.StageError, match="the model is already quantized"):
        _quantize(Model(onnx=first.artifact), task, {"mode": "fp16"})


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
