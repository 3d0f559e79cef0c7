"""`leanml quantize FILE` and its Python API on any framework's ONNX file: calibration files, bad input,
the gate's verdict, the padding left out of the fidelity (leanml/cli/_quantize.py,
leanml/pipeline/_quantize_file.py, which run the quantize stage)."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

import leanml
from leanml.cli import app
from leanml.measure import MeasureConfig
from leanml.models import Model

from ...conftest import FAST_MEASURE
from .conftest import (
    runner,
)


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
