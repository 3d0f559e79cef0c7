"""The command line: exit codes, one-line errors, --json, measure."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from leanml.cli import app
from leanml.errors import InvalidInputError

from ..conftest import FAST_MEASURE, LEANML, tiny_recipe

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_tmp_path(tmp_path, monkeypatch):
    """Every test gives --output under tmp_path; should one forget, runs/ lands there too."""
    monkeypatch.chdir(tmp_path)


def _write(tmp_path: Path, recipe: dict, name: str = "r.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(recipe))
    return path


def _run(tmp_path: Path, recipe: Path, *args: str):
    """``leanml run RECIPE --output tmp_path/run``: never into the repo's runs/ folder."""
    return runner.invoke(app, ["run", str(recipe), "--output", str(tmp_path / "run"), *args])


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


@pytest.mark.slow
def test_run_json_prints_valid_metrics_only(tmp_path, validate_metrics):
    path = _write(tmp_path, tiny_recipe())
    r = runner.invoke(app, ["run", str(path), "--json", "--output", str(tmp_path / "run")])
    assert r.exit_code == 0, r.output
    metrics = json.loads(r.stdout)
    validate_metrics(metrics)
    assert (tmp_path / "run" / "model.onnx").is_file()


@pytest.mark.slow
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
    r = _run(tmp_path, _npz_recipe(tmp_path, x=x, y=np.zeros(50, dtype=np.int64)))
    _fails_with_one_line(r, "NaN/inf")


def test_label_count_mismatch(tmp_path):
    r = _run(
        tmp_path, _npz_recipe(tmp_path, x=np.ones((50, 3), np.float32), y=np.zeros(40, np.int64))
    )
    _fails_with_one_line(r, "50 rows but y has 40")


def test_shape_the_model_cannot_take(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((60, 5), np.float32), y=np.arange(60) % 2)
    recipe = {"task": {"data": "npz:d.npz", "model": "cnn"}, "train": {"epochs": 1}}
    r = _run(tmp_path, _write(tmp_path, recipe))
    _fails_with_one_line(r, "takes images shaped")


def test_model_file_that_is_not_a_model(tmp_path):
    (tmp_path / "fake.onnx").write_bytes(b"this is not a model")
    r = _run(tmp_path, _write(tmp_path, {"task": {"data": "digits", "model": "fake.onnx"}}))
    _fails_with_one_line(r, "not a valid ONNX model")
    r = runner.invoke(app, ["measure", str(tmp_path / "fake.onnx"), "--data", "digits"])
    _fails_with_one_line(r, "not a valid ONNX model")


def test_bad_yaml(tmp_path):
    (tmp_path / "r.yaml").write_text("task: {data: digits\n  model: [")
    _fails_with_one_line(_run(tmp_path, tmp_path / "r.yaml"), "not valid YAML")


@pytest.mark.slow
def test_debug_shows_the_traceback(tmp_path):
    bad = _write(tmp_path, tiny_recipe(train={"epochs": 0}))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "leanml.cli",
            "--debug",
            "run",
            str(bad),
            "-o",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode != 0 and "Traceback" in proc.stderr
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "run", str(bad), "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (
        proc.returncode == 2
        and "Traceback" not in proc.stderr
        and len(proc.stderr.strip().splitlines()) == 1
    )


@pytest.mark.parametrize("sizes", ["0", ",", "1,-4", "1,x"])
def test_measure_bad_batch_sizes(image_onnx, sizes):
    r = runner.invoke(app, ["measure", str(image_onnx), "--data", "digits", "--batch-sizes", sizes])
    _fails_with_one_line(r, "--batch-sizes must be", f"got {sizes!r}")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["--threads", "1000"], ["--threads must be <= 256", "got 1000"]),
        (["--batch-sizes", "16"], ["--batch-sizes must include 1", "got [16]"]),
        (["--seed", "-1"], ["--seed must be >= 0", "got -1"]),
    ],
)
def test_measure_bad_options(image_onnx, args, needles):
    r = runner.invoke(app, ["measure", str(image_onnx), "--data", "digits", *args])
    _fails_with_one_line(r, *needles)


def test_measure_data_the_model_cannot_take(image_onnx):
    r = runner.invoke(app, ["measure", str(image_onnx), "--data", "wine"])
    _fails_with_one_line(r, "input 'x' is shaped", "[1, 13]")


def test_measure_negative_class_labels(tmp_path, image_onnx):
    y = np.arange(60) % 3 - 1
    np.savez(tmp_path / "d.npz", x=np.ones((60, 1, 8, 8), np.float32), y=y)
    r = runner.invoke(app, ["measure", str(image_onnx), "--data", str(tmp_path / "d.npz")])
    _fails_with_one_line(r, "class label -1", "0..n_classes-1")


def test_run_given_a_model_file_instead_of_a_recipe(tmp_path, image_onnx):
    r = _run(tmp_path, image_onnx)
    _fails_with_one_line(r, "is not a UTF-8 YAML recipe", "leanml measure")
    (tmp_path / "r.yaml").write_bytes("task: {data: caf\xe9.csv}\n".encode("latin-1"))
    _fails_with_one_line(_run(tmp_path, tmp_path / "r.yaml"), "is not a UTF-8 YAML recipe")
    assert not (tmp_path / "run").exists()


def test_negative_class_labels(tmp_path):
    y = np.arange(60) % 3 - 1
    r = _run(tmp_path, _npz_recipe(tmp_path, x=np.ones((60, 3), np.float32), y=y))
    _fails_with_one_line(r, "class label -1", "0..n_classes-1")
    assert not (tmp_path / "run").exists()


def test_model_args_the_model_rejects(tmp_path):
    recipe = tiny_recipe(task={"model_args": {"width": -1, "depth": 1}})
    r = _run(tmp_path, _write(tmp_path, recipe))
    _fails_with_one_line(r, "model 'cnn' could not be built", "'width': -1")
    assert not (tmp_path / "run").exists()


def test_npz_labels_on_some_splits_only(tmp_path):
    r = _run(
        tmp_path,
        _npz_recipe(
            tmp_path,
            x_train=np.ones((50, 3), np.float32),
            y_train=np.arange(50) % 2,
            x_test=np.ones((10, 3), np.float32),
        ),
    )
    _fails_with_one_line(r, "has y_train but no y_test", "every split or on none")
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (
            ["measure", "m.onnx", "--data", "digits", "--threads", "x"],
            "Invalid value for '--threads'",
        ),
        (["measure"], "Missing argument"),
        (["nope"], "No such command 'nope'"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", *args], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0] and "--help" in lines[0], proc.stderr


@pytest.mark.slow
def test_help_and_version_exit_0():
    for args in (["--help"], ["run", "--help"], ["--version"]):
        proc = subprocess.run(
            [sys.executable, "-m", "leanml.cli", *args], capture_output=True, text=True, check=False
        )
        assert proc.returncode == 0 and proc.stdout.strip(), args


# -- output paths, data files and recipes the fault sweep found ----------------------------------


def _output_cases(tmp_path: Path) -> dict[str, Path]:
    (tmp_path / "a_file").write_text("not a folder")
    return {"a file": tmp_path / "a_file", "under a file": tmp_path / "a_file" / "run"}


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_run_output_that_is_or_lies_under_a_file(tmp_path, case):
    out = _output_cases(tmp_path)[case]
    recipe = _write(tmp_path, tiny_recipe())
    r = runner.invoke(app, ["run", str(recipe), "--output", str(out)])
    _fails_with_one_line(r, "--output", "a_file", "is a file, not a folder")
    assert (tmp_path / "a_file").read_text() == "not a folder"


def test_recipe_output_that_is_a_file(tmp_path):
    (tmp_path / "taken").write_text("x")
    recipe = _write(tmp_path, tiny_recipe(output=str(tmp_path / "taken")))
    r = runner.invoke(app, ["run", str(recipe)])
    _fails_with_one_line(r, "the recipe's output", "is a file, not a folder")


@pytest.mark.parametrize("case", ["a file", "under a file"])
def test_quantize_output_that_is_or_lies_under_a_file(tmp_path, image_onnx, case):
    out = _output_cases(tmp_path)[case]
    np.savez(tmp_path / "calib.npz", x=np.zeros((8, 1, 8, 8), np.float32))
    r = runner.invoke(
        app,
        ["quantize", str(image_onnx), "--calib", str(tmp_path / "calib.npz"), "-o", str(out)],
    )
    _fails_with_one_line(r, "--output", "is a file, not a folder")


@pytest.mark.parametrize("drop", ["-1", "-0.01", "nan"])
def test_quantize_negative_max_metric_drop(tmp_path, image_onnx, drop):
    np.savez(tmp_path / "calib.npz", x=np.zeros((8, 1, 8, 8), np.float32))
    r = runner.invoke(
        app,
        [
            "quantize",
            str(image_onnx),
            "--calib",
            str(tmp_path / "calib.npz"),
            "--max-metric-drop",
            drop,
            "-o",
            str(tmp_path / "out"),
        ],
    )
    _fails_with_one_line(r, "--max-metric-drop must be >= 0", f"got {float(drop):g}")
    assert not (tmp_path / "out").exists()


def test_quantize_calib_that_is_not_a_regular_file(tmp_path, image_onnx):
    r = runner.invoke(
        app, ["quantize", str(image_onnx), "--calib", "/dev/null", "-o", str(tmp_path / "o")]
    )
    _fails_with_one_line(r, "'/dev/null' is not a regular file", "give an .npz file")
    r = runner.invoke(
        app, ["quantize", str(image_onnx), "--calib", str(tmp_path), "-o", str(tmp_path / "o")]
    )
    _fails_with_one_line(r, "is a directory", "give an .npz file")


def test_empty_npz_is_a_bad_file_not_an_interrupt(tmp_path):
    (tmp_path / "empty.npz").write_bytes(b"")
    recipe = _write(tmp_path, tiny_recipe(task={"data": "npz:empty.npz", "model": "mlp"}))
    r = _run(tmp_path, recipe)
    _fails_with_one_line(r, "empty.npz", "is not a readable NPZ", "empty: 0 bytes")
    assert "interrupted" not in r.stderr


def _csv_recipe(tmp_path: Path, text: str, **task) -> Path:
    (tmp_path / "d.csv").write_text(text)
    return _write(
        tmp_path,
        tiny_recipe(task={"data": "csv:d.csv", "target": "y", "model": "mlp", **task}),
    )


def test_csv_target_with_a_single_class(tmp_path):
    rows = "a,b,y\n" + "".join(f"{i},{i % 7},yes\n" for i in range(60))
    r = _run(tmp_path, _csv_recipe(tmp_path, rows))
    _fails_with_one_line(r, "target column 'y' holds a single class ('yes')", "two classes")
    assert not (tmp_path / "run").exists()


def test_csv_with_a_duplicated_header(tmp_path):
    rows = "a,a,y\n" + "".join(f"{i},{i % 7},{i % 2}\n" for i in range(60))
    r = _run(tmp_path, _csv_recipe(tmp_path, rows))
    _fails_with_one_line(r, "names column(s) ['a'] more than once")
    assert "cannot be split" not in r.stderr


def test_csv_path_that_is_a_directory(tmp_path):
    (tmp_path / "folder.csv").mkdir()
    recipe = _write(tmp_path, tiny_recipe(task={"data": "csv:folder.csv", "target": "y"}))
    _fails_with_one_line(_run(tmp_path, recipe), "folder.csv' is a directory", "give a CSV file")


def test_csv_nan_target_names_the_column(tmp_path):
    rows = "a,b,price\n" + "".join(f"{i},{i % 7},{'' if i == 5 else i * 0.5}\n" for i in range(60))
    (tmp_path / "d.csv").write_text(rows)
    recipe = _write(
        tmp_path,
        tiny_recipe(task={"data": "csv:d.csv", "target": "price", "model": "mlp", "metric": "mse"}),
    )
    r = _run(tmp_path, recipe)
    _fails_with_one_line(r, "target column 'price' holds 1 NaN/inf")
    assert "array 'x'" not in r.stderr


@pytest.mark.parametrize("metric", ["mse", "r2", "mae"])
def test_regression_metric_on_class_labels(tmp_path, metric):
    r = _run(tmp_path, _write(tmp_path, tiny_recipe(task={"metric": metric})))
    _fails_with_one_line(
        r, f"task.metric {metric!r} is a regression metric", "'digits'", "accuracy"
    )
    rows = "a,b,y\n" + "".join(f"{i},{i % 7},{i % 3}\n" for i in range(60))
    r = _run(tmp_path, _csv_recipe(tmp_path, rows, metric=metric))
    _fails_with_one_line(r, "only 3 distinct values over 60 rows", "look like class labels")
    assert not (tmp_path / "run").exists()


def test_duplicated_yaml_key_names_its_lines(tmp_path):
    (tmp_path / "r.yaml").write_text(
        "task: {data: digits}\ntrain: {epochs: 1}\nseed: 1\ntrain: {epochs: 2}\n"
    )
    _fails_with_one_line(
        _run(tmp_path, tmp_path / "r.yaml"), "key 'train' appears twice (lines 2 and 4)"
    )


@pytest.mark.parametrize(
    ("stages", "needle"),
    [
        ([{"prune": {}}, {"prune": {}}], "stages[0] and stages[1] are both named 'prune'"),
        (
            [{"prune": {}, "name": "x"}, {"quantize": {}}, {"quantize": {}, "name": "x"}],
            "stages[0] and stages[2] are both named 'x'",
        ),
    ],
)
def test_two_stages_with_one_name(tmp_path, stages, needle):
    r = _run(tmp_path, _write(tmp_path, tiny_recipe(stages=stages)))
    _fails_with_one_line(r, needle, "must be unique")


@pytest.mark.slow
def test_pickle_payload_as_weights_is_exactly_one_line(tmp_path):
    import pickle

    with open(tmp_path / "w.pt", "wb") as f:  # protocol 4: torch warns about it when refusing
        pickle.dump({"weight": [1.0, 2.0]}, f, protocol=4)
    recipe = _write(tmp_path, tiny_recipe(task={"weights": "w.pt"}))
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "run", str(recipe), "-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "is not a safetensors file or a plain state dict" in lines[0], lines


def test_debug_is_per_invocation_not_module_state(tmp_path):
    bad = _write(tmp_path, tiny_recipe(train={"epochs": 0}))
    r = runner.invoke(app, ["--debug", "run", str(bad), "-o", str(tmp_path / "run")])
    assert isinstance(r.exception, InvalidInputError)
    r = runner.invoke(app, ["run", str(bad), "-o", str(tmp_path / "run")])
    _fails_with_one_line(r, "train.epochs")


@pytest.mark.slow
def test_ctrl_c_during_a_run_is_one_line_and_exit_130(tmp_path):
    recipe = _write(
        tmp_path, tiny_recipe(train={"epochs": 10_000, "early_stopping": {"patience": 10_000}})
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", LEANML, "run", str(recipe), "-q", "-o", str(tmp_path / "r")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # the run directory appears once checks pass and the baseline starts training
        deadline = time.monotonic() + 120
        while not (tmp_path / "r" / "recipe.yaml").exists() and time.monotonic() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:  # a run that did not stop must not train on for the rest of the suite
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], err


def test_recipe_yaml_keeps_safe_load_semantics_beside_the_duplicate_check():
    from leanml.pipeline import load_recipe
    from leanml.pipeline._recipe import _yaml

    text = "a: &x {b: 1, c: 2}\nd:\n  <<: *x\n  c: 3\ne: [1, 2024-01-02, null, yes]\n"
    assert _yaml(text, "recipe") == yaml.safe_load(text)
    r = load_recipe(
        "task: {data: digits}\ntrain: {epochs: 2}\n"
        "stages:\n  - prune: {}\n    name: a\n  - prune: {}\n"
    )
    assert r.train.epochs == 2 and [s.name for s in r.stages] == ["a", "prune"]


def test_a_bare_leanml_prints_the_help_and_exits_0():
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    assert "Usage: leanml" in proc.stdout and "run" in proc.stdout and proc.stderr == ""


@pytest.mark.slow
def test_show_prints_an_earlier_runs_table_and_deploy_line(tmp_path):
    from leanml import run as run_recipe

    run = tmp_path / "run"
    run_recipe(tiny_recipe(), output=run)
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "show", str(run)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "baseline" in proc.stdout and "deploy model.onnx" in proc.stdout


@pytest.mark.parametrize("what", ["missing", "file", "empty", "not-json"])
def test_show_on_something_that_is_not_a_run_directory_is_one_line(tmp_path, what):
    target = tmp_path / "x"
    if what == "file":
        target.write_text("hi")
    elif what == "empty":
        target.mkdir()
    elif what == "not-json":
        target.mkdir()
        (target / "metrics.json").write_text("{")
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "show", str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.slow
def test_tune_trials_override_the_recipe_and_the_last_line_says_what_next(tmp_path):
    from leanml.techniques import get_stage_class

    tune = {**get_stage_class("tune").contract_example, "sampler": "random", "trials": 5}
    path = _write(tmp_path, tiny_recipe(stages=[{"tune": tune}]))
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "tune", str(path), "--trials", "1", "-q"]
        + ["-o", str(tmp_path / "run")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "1 trials finished now" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1].startswith(f"next: leanml run {path}")
