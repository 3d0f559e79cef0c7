"""The command line: exit codes, one-line errors, --json, measure."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from leanml.cli import app

from ..conftest import FAST_MEASURE, tiny_recipe

runner = CliRunner()


def _write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _fails_with_one_line(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    err = result.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "Traceback" not in result.output + result.stderr
    for n in needles:
        assert n in err, err


def test_version_and_help():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.startswith("leanml ")
    for cmd in ("run", "measure", "demo"):
        r = runner.invoke(app, [cmd, "--help"])
        assert r.exit_code == 0 and "Usage" in r.stdout


def test_run_json_prints_valid_metrics_only(tmp_path, validate_metrics):
    path = _write(tmp_path, tiny_recipe())
    r = runner.invoke(app, ["run", str(path), "--json", "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    validate_metrics(metrics)
    assert (tmp_path / "run" / "model.onnx").is_file()


def test_measure_prints_every_figure(tmp_path):
    path = _write(tmp_path, tiny_recipe())
    assert (
        runner.invoke(
            app, ["run", str(path), "--quiet", "--output", str(tmp_path / "run")]
        ).exit_code
        == 0
    )
    r = runner.invoke(
        app,
        [
            "measure",
            str(tmp_path / "run" / "model.onnx"),
            "--data",
            "digits",
            "--batch-sizes",
            "1,16",
        ],
    )
    assert r.exit_code == 0, r.output
    for text in (
        "accuracy",
        "latency batch 1 p50 / p95",
        "latency batch 16 p50 / p95",
        "size on disk",
        "params",
        "FLOPs",
    ):
        assert text in r.stdout
    r = runner.invoke(
        app, ["measure", str(tmp_path / "run" / "model.onnx"), "--data", "digits", "--json"]
    )
    out = json.loads(r.stdout)
    assert out["metric"]["value"] > 0.5 and out["latency_ms"]["batch_n"]["batch_size"] == 64
    assert out["size_bytes"] == (tmp_path / "run" / "model.onnx").stat().st_size


@pytest.mark.parametrize(
    "change,needles",
    [
        ({"train": {"epochs": 1, "bogus": 1}}, ["train.bogus is not a known key"]),
        ({"train": {"epochs": "many"}}, ["train.epochs", "got 'many'"]),
        ({"constraints": {"max_metric_drop": -0.5}}, ["constraints.max_metric_drop", "got -0.5"]),
        ({"task": {"data": "npz:missing.npz"}}, ["does not exist"]),
        ({"task": {"data": "mnist"}}, ["not a known dataset"]),
        ({"task": {"data": "digits", "model": "resnet"}}, ["not a registered model", "cnn"]),
        ({"task": {"data": "digits", "model": "nosuchpkg.mod:build"}}, ["does not import"]),
        ({"stages": [{"shrink": {}}]}, ["unknown stage kind 'shrink'"]),
    ],
)
def test_bad_recipes_exit_2_with_one_line(tmp_path, change, needles):
    r = runner.invoke(
        app,
        ["run", str(_write(tmp_path, tiny_recipe(**change))), "--output", str(tmp_path / "run")],
    )
    _fails_with_one_line(r, *needles)
    assert not (tmp_path / "run" / "metrics.json").exists()


def _npz_recipe(tmp_path: Path, **arrays) -> Path:
    np.savez(tmp_path / "d.npz", **arrays)
    return _write(
        tmp_path,
        {
            "task": {"data": "npz:d.npz", "model": "mlp"},
            "train": {"epochs": 1},
            "measure": FAST_MEASURE,
        },
    )


def test_nan_in_data(tmp_path):
    x = np.ones((50, 3), dtype=np.float32)
    x[3, 1] = np.nan
    r = runner.invoke(app, ["run", str(_npz_recipe(tmp_path, x=x, y=np.zeros(50, dtype=np.int64)))])
    _fails_with_one_line(r, "NaN/inf")


def test_label_count_mismatch(tmp_path):
    r = runner.invoke(
        app,
        [
            "run",
            str(_npz_recipe(tmp_path, x=np.ones((50, 3), np.float32), y=np.zeros(40, np.int64))),
        ],
    )
    _fails_with_one_line(r, "50 rows but y has 40")


def test_shape_the_model_cannot_take(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((60, 5), np.float32), y=np.arange(60) % 2)
    r = runner.invoke(
        app,
        [
            "run",
            str(
                _write(
                    tmp_path,
                    {"task": {"data": "npz:d.npz", "model": "cnn"}, "train": {"epochs": 1}},
                )
            ),
        ],
    )
    _fails_with_one_line(r, "takes images shaped")


def test_model_file_that_is_not_a_model(tmp_path):
    (tmp_path / "fake.onnx").write_bytes(b"this is not a model")
    r = runner.invoke(
        app, ["run", str(_write(tmp_path, {"task": {"data": "digits", "model": "fake.onnx"}}))]
    )
    _fails_with_one_line(r, "not a valid ONNX model")
    r = runner.invoke(app, ["measure", str(tmp_path / "fake.onnx"), "--data", "digits"])
    _fails_with_one_line(r, "not a valid ONNX model")


def test_bad_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("task: {data: digits\n  model: [")
    _fails_with_one_line(runner.invoke(app, ["run", str(tmp_path / "r.yaml")]), "not valid YAML")


def test_debug_shows_the_traceback(tmp_path):
    bad = _write(tmp_path, tiny_recipe(train={"epochs": 0}))
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "--debug", "run", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "run", str(bad)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        proc.returncode == 2
        and "Traceback" not in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )
