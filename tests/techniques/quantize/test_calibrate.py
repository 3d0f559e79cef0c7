"""``calibration.method: auto``: static int8 tries minmax, percentile and entropy and keeps the best
on val; an explicit method is used as given."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import leanml.techniques.quantize._modes as modes_module
from leanml.cli import app
from leanml.data import n_rows
from leanml.models import Model
from leanml.pipeline import apply_stage, build_task, load_recipe
from leanml.runtime import OnnxRunner
from leanml.techniques.quantize import QuantizeConfig
from leanml.techniques.quantize._calibrate import METHODS, choose_calibration
from leanml.techniques.quantize._config import reduce_range_for
from leanml.techniques.quantize._onnx import prepare
from leanml.techniques.quantize._ort import StaticSettings, calibration_feeds, quantize_static
from leanml.training import TrainConfig, fit

from ...conftest import FAST_MEASURE, tiny_recipe


class _Mlp(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(64, 32)
        self.fc2 = nn.Linear(32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory):
    """A digits MLP as an ONNX file (the stage and the test quantize the same graph), and its task,
    whose first 16 training samples are 30x too bright: the calibration methods clip the wide
    activation ranges they cause differently (minmax keeps them, percentile and entropy cut)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        task = build_task(load_recipe(tiny_recipe(task={"model": "mlp", "model_args": {}})))
        torch.manual_seed(0)
        net = _Mlp()
        fit(
            net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=8, lr=3e-3), seed=0
        )
        task.data.train.x[:16] *= 30.0
    finally:
        torch.set_num_threads(previous)
    path = tmp_path_factory.mktemp("wide") / "wide.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, *task.data.train.x.shape[1:]),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["logits"],
            dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
        )
    return task, path


@pytest.fixture(scope="module")
def alone(mlp, tmp_path_factory):
    """Each method's val accuracy, measured here with the quantizer alone (no stage): calibrated on
    every training sample, in order, as the stage does when asked for more samples than exist."""
    task, path = mlp
    tmp = tmp_path_factory.mktemp("alone")
    prepared = prepare(path, tmp / "prepared.onnx").path
    feeds = calibration_feeds(prepared, task.data.train.x)
    values = {}
    for method in METHODS:
        settings = StaticSettings(method=method, reduce_range=reduce_range_for("auto"))
        quantize_static(prepared, tmp / f"{method}.onnx", feeds, settings)
        outputs = OnnxRunner(tmp / f"{method}.onnx").predict(task.data.val.x)
        values[method] = task.metric(outputs, task.data.val.y)
    return values


@pytest.fixture(scope="module")
def runs(mlp, tmp_path_factory):
    """The stage with ``auto`` and with each method given explicitly, on the same model, with the
    calibration method of every quantization it made."""
    task, path = mlp
    samples = n_rows(task.data.train.x) + 1  # all of them, in order
    out = {}
    for method in ("auto", *METHODS):
        used: list[str] = []

        def recording(*args, _used=used, **kw):
            _used.append(args[3].method)
            return quantize_static(*args, **kw)

        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(modes_module, "quantize_static", recording)
            done = apply_stage(
                "quantize",
                Model(onnx=path),
                task,
                {
                    "mode": "static",
                    "calibration": {"method": method, "samples": samples},
                    "sensitivity": False,
                },
                measure_config=FAST_MEASURE,
                work_dir=tmp_path_factory.mktemp(method),
            )
        out[method] = (done, used)
    return out


def test_minmax_is_the_default_and_auto_is_a_method():
    """``auto`` is opt-in: on the real models it cost 40-60% more time for the same fidelity."""
    assert QuantizeConfig().calibration.method == "minmax"
    assert QuantizeConfig(calibration={"method": "auto"}).calibration.method == "auto"


def test_the_methods_calibrate_this_model_differently(alone):
    """The fixture is one where the choice matters: not every method scores the same."""
    assert len(set(alone.values())) > 1


def test_auto_tries_every_method_and_keeps_the_best_on_val(runs, alone):
    done, used = runs["auto"]
    calibration = done.result.details["calibration"]
    assert calibration["method"] == "auto"
    assert set(calibration["candidates"]) == set(METHODS)
    for method in METHODS:
        assert calibration["candidates"][method] == pytest.approx(alone[method], abs=1e-9)
    best = max(alone.values())  # accuracy: higher is better; a tie keeps the earlier method
    first_best = next(m for m in METHODS if alone[m] == pytest.approx(best, abs=1e-9))
    assert calibration["chosen"] == first_best
    # every method once, in order; every quantization after the choice with the method kept
    assert used[:3] == list(METHODS) and len(used) > 3
    assert set(used[3:]) == {first_best}
    note = next(n for n in done.result.notes if n.startswith("Calibration: "))
    assert note.startswith(f"Calibration: {first_best} kept (val accuracy {best:.4f})")
    assert all(m in note for m in METHODS)


@pytest.mark.parametrize("method", METHODS)
def test_an_explicit_method_is_used_as_given(runs, method):
    done, used = runs[method]
    calibration = done.result.details["calibration"]
    assert calibration["method"] == method and calibration["chosen"] == method
    assert calibration["candidates"] == {}
    assert used and set(used) == {method}
    assert not any(n.startswith("Calibration: ") for n in done.result.notes)


def test_the_choice_keeps_the_smallest_drop_and_breaks_ties_in_order():
    made: list[str] = []

    def quantize(method: str) -> Path:
        made.append(method)
        return Path(method)

    scores = {"minmax": 0.90, "percentile": 0.95, "entropy": 0.95}
    choice = choose_calibration(quantize, lambda p: scores[p.name], lambda v: 1.0 - v)
    assert made == list(METHODS)
    assert choice.chosen == "percentile" and choice.values == scores
    tie = choose_calibration(quantize, lambda p: 0.9, lambda v: 1.0 - v)
    assert tie.chosen == "minmax"
    # a loss (lower is better): the drop decides, not the raw value
    losses = {"minmax": 0.3, "percentile": 0.2, "entropy": 0.4}
    low = choose_calibration(quantize, lambda p: losses[p.name], lambda v: v - 0.1)
    assert low.chosen == "percentile"
    assert "percentile kept (val loss 0.2000), minmax 0.3000, entropy 0.4000" in low.note("loss")


def test_qat_takes_the_default_calibration(mlp):
    """QAT finds and learns its own ranges: ``auto`` (the default) is accepted and not tried."""
    task, _ = mlp
    torch.manual_seed(0)
    out = apply_stage(
        "quantize",
        Model(torch=_Mlp()),
        task,
        {"mode": "qat", "train": {"epochs": 1}},
        measure_config=FAST_MEASURE,
    )
    assert "calibration" not in out.result.details
    assert np.isfinite(out.after.metric)


@pytest.mark.parametrize("method", ["auto", "percentile"])
def test_cli_quantize_takes_the_method(mlp, tmp_path, method):
    task, path = mlp
    np.savez(tmp_path / "eval.npz", x=task.data.val.x, y=task.data.val.y)
    np.savez(tmp_path / "calib_y.npz", x=task.data.train.x[16:144], y=task.data.train.y[16:144])
    out = tmp_path / "out"
    r = CliRunner().invoke(
        app,
        [
            "quantize",
            str(path),
            "--calib",
            str(tmp_path / "calib_y.npz"),
            "--eval",
            str(tmp_path / "eval.npz"),
            "--method",
            method,
            "--max-metric-drop",
            "1",
            "--output",
            str(out),
            "--quiet",
        ],
    )
    assert r.exit_code == 0, r.output
    calibration = json.loads((out / "quantize.json").read_text())["details"]["calibration"]
    assert calibration["method"] == method
    if method == "auto":
        assert set(calibration["candidates"]) == set(METHODS)
        assert calibration["chosen"] in METHODS
    else:
        assert calibration["chosen"] == "percentile" and calibration["candidates"] == {}


def test_cli_quantize_rejects_an_unknown_method(mlp, tmp_path):
    task, path = mlp
    np.savez(tmp_path / "calib.npz", x=task.data.train.x[:32])
    r = CliRunner().invoke(
        app,
        ["quantize", str(path), "--calib", str(tmp_path / "calib.npz"), "--method", "kl"],
    )
    assert r.exit_code == 2
    assert "auto" in r.output and "minmax" in r.output
