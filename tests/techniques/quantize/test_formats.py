"""The quantize stage's format choice: the fastest format that holds the metric budget, and the float
model when no int8 format is faster. Latency ratios are fixed by the tests (never wall-clock)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from leanml.cli import app
from leanml.measure import MeasureConfig
from leanml.pipeline._quantize_file import quantize_onnx_file
from leanml.techniques.quantize import _formats

from ...conftest import FAST_MEASURE

QUANTIZED = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "MatMulInteger"}


class _MobileBlock(nn.Module):
    """A MobileNet-like block: stem Conv, depthwise Conv, pointwise Conv, a HardSigmoid gate, pooling
    and a Linear head (every format of static mode applies to it)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.depthwise = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pointwise = nn.Conv2d(8, 16, 1)
        self.head = nn.Linear(16, 64)  # most of the weights: dynamic int8 is a format too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        a = torch.relu(self.pointwise(torch.relu(self.depthwise(a))))
        a = a * nn.functional.hardsigmoid(a.mean((2, 3), keepdim=True))
        return self.head(a.mean((2, 3)))


@pytest.fixture(scope="module")
def block(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("formats")
    path = folder / "block.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _MobileBlock().eval(),
            (torch.zeros(2, 3, 8, 8),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}},
        )
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x=rng.normal(size=(64, 3, 8, 8)).astype(np.float32))
    np.savez(folder / "eval.npz", x=rng.normal(size=(96, 3, 8, 8)).astype(np.float32))
    return {"model": path, "calib": folder / "calib.npz", "eval": folder / "eval.npz"}


def _fixed_ratios(monkeypatch, ratios: dict[str, tuple[float, float]]) -> list[str]:
    """Every format timed at the given (batch 1, batch 8) ratios, by file name (the stage's own
    model is ``quantized-MODE.onnx``); returns the names timed, in order."""
    timed: list[str] = []

    def fixed(float_path: Path, path: Path, x: Any, config: MeasureConfig) -> dict[int, float]:
        name = path.stem.removeprefix("quantized-")
        timed.append(name)
        return dict(zip(config.batch_sizes, ratios[name]))

    monkeypatch.setattr(_formats, "latency_ratios", fixed)
    return timed


def _quantize(block: dict[str, Path], out: Path, **config: Any):
    return quantize_onnx_file(
        block["model"],
        calib=block["calib"],
        eval_data=block["eval"],
        output=out,
        metric="cosine",
        config={"mode": "static", "sensitivity": False, **config},
        measure=FAST_MEASURE,
    )


def _ops(path: Path) -> set[str]:
    return {n.op_type for n in onnx.load(str(path)).graph.node}


def test_keeps_the_fastest_format_that_holds_the_budget(block, tmp_path, monkeypatch):
    timed = _fixed_ratios(
        monkeypatch,
        {
            "static": (0.9, 0.8),
            "static-compute": (0.7, 0.7),
            "static-pointwise": (0.5, 0.6),
            "dynamic": (0.95, 0.95),
        },
    )
    done = _quantize(block, tmp_path / "out")
    assert done.accepted, done.reason
    s, details = done.summary, done.summary["details"]
    assert s["format"] == details["format"] == "static-pointwise"
    formats = details["formats"]
    assert [f["name"] for f in formats] == [
        "static",
        "static-compute",
        "static-pointwise",
        "dynamic",
        "float",
    ]
    assert [f["name"] for f in formats if f["chosen"]] == ["static-pointwise"]
    assert sorted(timed) == sorted(["static", "static-compute", "static-pointwise", "dynamic"])
    assert formats[2]["latency_ratio"] == {"1": 0.5, "8": 0.6} and formats[2]["holds_budget"]
    assert formats[-1]["latency_ratio"] == {"1": 1.0, "8": 1.0} and not formats[-1]["int8"]
    # the model written is that format: its depthwise Conv computes in float, the others in int8
    assert "/depthwise/Conv" in details["float_nodes"]
    assert "depthwise" in details["float_nodes"]["/depthwise/Conv"]
    assert {"/stem/Conv", "/pointwise/Conv"} <= set(details["int8_nodes"])
    assert "QuantizeLinear" in _ops(done.model_path)
    assert details["val_metric"]["quantized"] == formats[2]["val_metric"]
    notes = s["notes"]
    assert any(
        n.startswith("Kept static QDQ (Conv/MatMul/Gemm, depthwise Conv float)") for n in notes
    )
    assert any(n.startswith("Format static QDQ (all ops): val cosine") for n in notes)


def test_float_model_when_no_int8_format_is_faster(block, tmp_path, monkeypatch):
    _fixed_ratios(
        monkeypatch,
        {
            "static": (1.17, 1.53),
            "static-compute": (1.1, 1.3),
            "static-pointwise": (1.05, 1.2),
            "dynamic": (1.01, 1.02),
        },
    )
    done = _quantize(block, tmp_path / "out")
    assert done.accepted, done.reason
    assert done.model_path.name == "model.onnx"
    s, details = done.summary, done.summary["details"]
    assert s["format"] == "float"
    assert [f["name"] for f in details["formats"] if f["chosen"]] == ["float"]
    assert not _ops(done.model_path) & QUANTIZED
    assert details["int8_nodes"] == [] and len(details["float_nodes"]) == 4
    x = np.load(block["eval"])["x"]
    before, after = (
        ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, {"pixels": x})[0]
        for p in (block["model"], done.model_path)
    )
    np.testing.assert_allclose(after, before, rtol=1e-4, atol=1e-5)
    note = next(n for n in s["notes"] if n.startswith("No int8 format is faster"))
    assert "at batch sizes 1, 8" in note and "static QDQ (all ops) 1.17x/1.53x" in note
    assert "require_speedup: false" in note


def test_require_speedup_false_keeps_the_fastest_int8_format(block, tmp_path, monkeypatch):
    timed = _fixed_ratios(
        monkeypatch,
        {
            "static": (1.17, 1.53),
            "static-compute": (1.05, 1.1),
            "static-pointwise": (1.2, 1.3),
            "dynamic": (1.3, 1.3),
        },
    )
    done = _quantize(block, tmp_path / "out", require_speedup=False)
    assert done.accepted, done.reason
    details = done.summary["details"]
    assert done.summary["format"] == "static-compute"
    assert "QuantizeLinear" in _ops(done.model_path)
    float_record = details["formats"][-1]
    assert float_record["name"] == "float" and not float_record["chosen"]
    assert "require_speedup is false" in float_record["skipped"]
    assert "float" not in timed
    assert any(n.startswith("Every int8 format is slower") for n in done.summary["notes"])


@pytest.mark.parametrize("require", [True, False])
def test_the_command_says_when_the_model_written_is_float(block, tmp_path, monkeypatch, require):
    slower = {"static": (1.2, 1.5), "static-compute": (1.1, 1.3), "static-pointwise": (1.1, 1.2)}
    _fixed_ratios(monkeypatch, {**slower, "dynamic": (1.05, 1.05)})
    out = tmp_path / "q"
    r = CliRunner().invoke(
        app,
        ["quantize", str(block["model"]), "--calib", str(block["calib"]), "--eval"]
        + [str(block["eval"]), "--metric", "cosine", "--output", str(out), "--quiet"]
        + ([] if require else ["--no-require-speedup"]),
    )
    assert r.exit_code == 0, r.output
    summary = json.loads((out / "quantize.json").read_text())
    assert summary["accepted"] and (out / "model.onnx").exists()
    said = "The model written is float, not int8" in r.stdout
    if require:
        assert summary["format"] == "float" and said
    else:
        assert summary["format"] == "dynamic" and not said


def test_a_recipe_keeps_the_float_result_and_says_why(tmp_path, monkeypatch, validate_metrics):
    """The gate judges the float model like any result: it holds the budget, so the run keeps it."""
    import leanml

    from ...conftest import tiny_recipe

    slower = ["static", "static-compute", "static-pointwise", "dynamic"]
    _fixed_ratios(monkeypatch, dict.fromkeys(slower, (1.2, 1.3)))
    recipe = tiny_recipe(stages=[{"quantize": {"mode": "static", "sensitivity": False}}])
    result = leanml.run(recipe, output=tmp_path / "run", quiet=True)
    validate_metrics(result.metrics)
    stage = result.metrics["stages"][-1]
    assert stage["kind"] == "quantize" and stage["accepted"]
    assert stage["format"] == "float"  # details are fields of the stage record
    assert any(n.startswith("No int8 format is faster") for n in stage["notes"])
    assert not _ops(tmp_path / "run" / "model.onnx") & QUANTIZED


def test_dynamic_mode_compares_its_model_with_float(block, tmp_path, monkeypatch):
    timed = _fixed_ratios(monkeypatch, {"dynamic": (1.3, 1.2)})
    done = _quantize(block, tmp_path / "out", mode="dynamic")
    details = done.summary["details"]
    assert [f["name"] for f in details["formats"]] == ["dynamic", "float"] and timed == ["dynamic"]
    assert done.summary["format"] == "float" and not _ops(done.model_path) & QUANTIZED
