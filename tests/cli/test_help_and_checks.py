"""CLI polish: examples and plain flags in every --help, shell completion, measure --split all,
and the warning for an implausible "before" metric."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from leanml.cli import app
from leanml.cli._plausible import chance_warning

runner = CliRunner()


def _commands(group, path=()):
    """(path, command) of every registered leaf command, sub-groups included."""
    for name, cmd in group.commands.items():
        if getattr(cmd, "commands", None):
            yield from _commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


COMMANDS = [p for p, _ in _commands(typer.main.get_command(app))]


def test_every_command_is_found():
    assert {("run",), ("demo",), ("measure",), ("quantize",), ("data", "export")} <= set(COMMANDS)


@pytest.mark.parametrize("path", COMMANDS, ids=" ".join)
def test_help_has_an_example_and_plain_flags(path):
    r = runner.invoke(app, [*path, "--help"], terminal_width=200)
    assert r.exit_code == 0, r.output
    assert f"Example: leanml {' '.join(path)} " in r.stdout
    assert "<bool>" not in r.stdout
    usage = next(line for line in r.stdout.splitlines() if "Usage:" in line)
    assert "{" not in usage, usage


def test_root_help_has_plain_flags():
    r = runner.invoke(app, ["--help"], terminal_width=200)
    assert r.exit_code == 0 and "<bool>" not in r.stdout and "--install-completion" in r.stdout


def test_install_completion(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION", "1")
    r = runner.invoke(app, ["--install-completion", "bash"])
    assert r.exit_code == 0, r.output
    assert "No such option" not in r.output
    assert "leanml" in (tmp_path / ".bash_completions" / "leanml.sh").read_text()


def _measure(model: Path, *args: str):
    return runner.invoke(
        app,
        ["measure", str(model), "--data", "digits", "--batch-sizes", "1", *args],
        terminal_width=200,
    )


def test_measure_split_all_is_every_sample(image_onnx):
    r = _measure(image_onnx, "--split", "all")
    assert r.exit_code == 0, r.output
    assert "(all, 1797 samples)" in r.stdout  # the whole of scikit-learn's digits
    r = _measure(image_onnx, "--split", "all", "--json")  # the same, as data: no wrapped text
    metric = json.loads(r.stdout)["metric"]
    assert metric["split"] == "all" and metric["samples"] == 1797


def test_measure_bad_split(image_onnx):
    r = _measure(image_onnx, "--split", "everything")
    assert r.exit_code == 2
    err = r.stderr.strip()
    assert len(err.splitlines()) == 1 and "train, val, test, all" in err and "'everything'" in err


def test_measure_warns_when_the_model_scores_about_chance(image_onnx):
    r = _measure(image_onnx)
    assert r.exit_code == 0, r.output
    warning = [line for line in r.stderr.splitlines() if "warning" in line]
    assert len(warning) == 1 and "10 classes" in warning[0] and "pixel values / 16" in warning[0]


def test_quantize_warns_when_the_model_scores_about_chance(tmp_path, image_onnx):
    from leanml.data import load_data

    test = load_data("digits").test
    np.savez(tmp_path / "d.npz", x=test.x, y=test.y)
    r = runner.invoke(
        app,
        ["quantize", str(image_onnx), "--eval", str(tmp_path / "d.npz"), "--mode", "dynamic"]
        + ["--output", str(tmp_path / "q"), "--quiet", "--max-metric-drop", "1"],
    )
    assert r.exit_code == 0, r.output
    assert (
        sum("leanml: warning: the model scores accuracy" in line for line in r.stderr.splitlines())
        == 1
    )


@pytest.mark.parametrize(
    "value,y,warns",
    [
        (0.05, np.arange(100) % 10, "below"),  # 10 classes: chance 0.1
        (0.15, np.arange(100) % 10, "near"),
        (0.25, np.arange(100) % 10, None),
        (0.55, np.arange(100) % 2, "near"),  # 2 classes: chance 0.5
        (0.7, np.arange(100) % 2, None),
    ],
)
def test_chance_warning(value, y, warns):
    message = chance_warning("accuracy", value, y)
    if warns is None:
        assert message is None
    else:
        assert message is not None and f"{warns} what guessing scores" in message
        assert "\n" not in message


@pytest.mark.parametrize(
    "metric,y",
    [("accuracy", None), ("r2", np.arange(10) % 2), ("accuracy", np.linspace(0, 1, 10))],
)
def test_no_chance_warning_without_class_labels(metric, y):
    assert chance_warning(metric, 0.0, y) is None


def test_measure_warns_when_the_model_scores_far_below_what_the_user_expects(image_onnx):
    result = _measure(image_onnx, "--expect", "0.97")
    assert result.exit_code == 0, result.output
    warnings = [line for line in result.stderr.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "the 0.97 you expect (--expect)" in warnings[0]


@pytest.mark.parametrize(
    ("value", "expect", "higher", "warns"),
    [
        (0.68, 0.97, True, True),  # raw digits pixels given to a model trained on /16-scaled ones
        (0.95, 0.97, True, False),  # within the margin
        (0.30, 0.10, False, True),  # an error metric far above what it was
        (None, None, True, False),
    ],
)
def test_expectation_warning(value, expect, higher, warns):
    from leanml.cli._plausible import expectation_warning

    message = expectation_warning("m", value or 0.0, expect, higher_is_better=higher)
    assert (message is not None) == warns
