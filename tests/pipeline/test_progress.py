"""Progress of long steps: rich bars in a terminal, a line per advance in the stage's log.txt,
nothing on stdout next to ``--json``."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from leanml.models import Model
from leanml.pipeline import Reporter, RichReporter, apply_stage, build_task, load_recipe
from leanml.pipeline._progress import StageLog
from leanml.runtime import to_onnx

from ..conftest import FAST_MEASURE, tiny_recipe


@dataclass
class StepSeen:
    description: str
    total: int | None
    advanced: int = 0
    infos: list[str] = field(default_factory=list)
    ended: bool = False


class Recording(Reporter):
    """Keeps every step it is told about, in the order they started."""

    def __init__(self) -> None:
        self.steps: list[StepSeen] = []
        self.open: list[StepSeen] = []
        self.lines: list[str] = []

    def log(self, message: str) -> None:
        self.lines.append(message)

    def step_start(self, description: str, total: int | None) -> None:
        step = StepSeen(description, total)
        self.steps.append(step)
        self.open.append(step)

    def step_update(self, advance: int, info: str) -> None:
        self.open[-1].advanced += advance
        self.open[-1].infos.append(info)

    def step_end(self) -> None:
        self.open.pop().ended = True

    def named(self, description: str) -> list[StepSeen]:
        return [s for s in self.steps if s.description == description]


def _console() -> Console:
    return Console(file=io.StringIO(), force_terminal=True, width=100)


def test_a_determinate_bar_shows_its_description_k_of_n_and_info():
    console = _console()
    reporter = RichReporter(console)
    with reporter.progress("sensitivity", 5) as step:
        for k in range(3):
            step.advance(info=f"layer{k} drop +0.0010")
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "sensitivity" in out and "3/5" in out and "layer2 drop +0.0010" in out
    assert "4/5" not in out


def test_an_indeterminate_bar_shows_what_it_does_without_a_count():
    console = _console()
    reporter = RichReporter(console)
    with reporter.progress("measuring") as step:
        step.update("latency batch 8")
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "measuring" in out and "latency batch 8" in out and "/" not in out


def test_nested_bars_and_training_share_one_display_and_close_on_errors():
    console = _console()
    reporter = RichReporter(console)
    with pytest.raises(RuntimeError, match="boom"), reporter.progress("search", 2) as outer:
        reporter.train_start("fine-tune", 3)  # a second rich display would raise here
        reporter.epoch(1, {"val_loss": 0.5, "val_metric": 0.9})
        reporter.train_end()
        with reporter.progress("measuring") as inner:
            inner.update("metric")
            raise RuntimeError("boom")
    assert outer is not inner
    # every bar is gone, so a later one starts a fresh display
    with reporter.progress("later", 1) as step:
        step.advance(info="done")
    out = console.file.getvalue()  # type: ignore[attr-defined]
    assert "later" in out and "1/1" in out and "search" in out


def test_the_quiet_reporter_takes_the_same_calls_and_shows_nothing(capsys):
    with Reporter().progress("sensitivity", 2) as step:
        step.advance(info="fc1 drop +0.0100")
        step.update("still going")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_stage_log_writes_each_advance_to_log_txt_and_passes_the_events_on(tmp_path):
    inner = Recording()
    log = StageLog(inner, tmp_path / "log.txt")
    with log.progress("sensitivity", 2) as step:
        step.advance(info="fc1 drop +0.0100")
        step.advance(info="fc2 drop +0.0000")
    with log.progress("measuring") as step:
        step.update("latency batch 8")
    text = (tmp_path / "log.txt").read_text()
    lines = [line.split("] ", 1)[1] for line in text.splitlines()]
    assert lines[:4] == [
        "sensitivity: started, 2 to do",
        "sensitivity 1/2: fc1 drop +0.0100",
        "sensitivity 2/2: fc2 drop +0.0000",
        lines[3],
    ]
    assert lines[3].startswith("sensitivity: ended after ")
    assert "measuring: latency batch 8" in lines
    assert inner.steps[0] == StepSeen(
        "sensitivity", 2, 2, ["fc1 drop +0.0100", "fc2 drop +0.0000"], True
    )
    assert inner.lines == []  # the per-item detail stays in the file; the terminal has the bar


@pytest.fixture(scope="module")
def tiny_cnn():
    task = build_task(load_recipe(tiny_recipe()))
    torch.manual_seed(0)
    return task, Model(torch=task.build_torch_model())


@pytest.mark.parametrize("mode", ["static", "dynamic"])
def test_quantize_shows_sensitivity_as_one_bar_of_k_of_n(tiny_cnn, tmp_path, mode):
    task, model = tiny_cnn
    seen = Recording()
    done = apply_stage(
        "quantize",
        model,
        task,
        {"mode": mode, "calibration": {"samples": 64}, "sensitivity": True},
        measure_config=FAST_MEASURE,
        work_dir=tmp_path,
        reporter=StageLog(seen, tmp_path / "log.txt"),
    )
    found = done.result.details["sensitivity"]
    assert found, "the tiny model's sensitivity should be measured"
    (bar,) = seen.named("sensitivity")
    assert bar.total == len(found) and bar.advanced == len(found) and bar.ended
    assert all(info.startswith("drop ") for info in bar.infos)
    assert not any("sensitivity 1/" in line for line in seen.lines)  # no line per layer
    log = (tmp_path / "log.txt").read_text()
    assert f"sensitivity {len(found)}/{len(found)}: " in log
    first = "calibrating" if mode == "static" else "quantizing (dynamic)"
    assert len(seen.named(first)) == 1 and seen.named(first)[0].total is None
    (before,) = seen.named("measuring the input model")
    assert before.total is None and "latency batch 1" in before.infos
    assert all(s.ended for s in seen.steps) and not seen.open


def test_quantize_json_keeps_stdout_clean_while_bars_draw_on_stderr(tiny_cnn, tmp_path):
    task, model = tiny_cnn
    to_onnx(model, task.data.val, tmp_path / "cnn.onnx")
    np.savez(tmp_path / "eval.npz", x=task.data.test.x[:64], y=task.data.test.y[:64])
    env = {**os.environ, "FORCE_COLOR": "1", "COLUMNS": "100"}  # rich draws bars as in a terminal
    proc = subprocess.run(
        [sys.executable, "-m", "leanml.cli", "quantize", str(tmp_path / "cnn.onnx")]
        + ["--eval", str(tmp_path / "eval.npz"), "--mode", "dynamic", "--json"]
        + ["-o", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert proc.returncode in (0, 3), proc.stderr  # 3: rejected by the gate, still a verdict
    summary = json.loads(proc.stdout)
    assert summary == json.loads(Path(tmp_path / "out" / "quantize.json").read_text())
    assert "measuring the input model" in proc.stderr


def test_without_a_terminal_steps_are_lines_at_most_every_few_seconds(monkeypatch):
    """Output redirected to a file draws no bars: each step and training says it started, then
    what it does at most every LINE_EVERY_S seconds (a fake clock here), and how long it took."""
    from leanml.pipeline import _progress

    now = [0.0]
    monkeypatch.setattr(_progress.time, "monotonic", lambda: now[0])
    console = Console(file=io.StringIO(), width=200)  # a file: not a terminal
    reporter = RichReporter(console)
    with reporter.progress("sensitivity", 3) as step:
        step.advance(info="fc1")  # at once: no line yet
        now[0] = 6.0
        step.advance(info="fc2")  # six seconds on: a line
        step.advance(info="fc3")  # the last one: a line
    reporter.train_start("distill", 80)
    now[0] = 20.0
    reporter.train_info("learning-rate range test 30/60")
    reporter.epoch(1, {"val_loss": 0.5, "val_metric": 0.9})
    now[0] = 30.0
    reporter.train_end()
    lines = console.file.getvalue().splitlines()  # type: ignore[attr-defined]
    assert lines == [
        "sensitivity: started, 3 to do",
        "sensitivity 2/3: fc2",
        "sensitivity 3/3: fc3",
        "sensitivity: done in 6s, 3 of 3 (fc3)",
        "distill: training, up to 80 epochs",
        "distill 0/80: learning-rate range test 30/60",
        "distill: done in 24s, 1 of 80 (val_loss 0.5000 val_metric 0.9000)",
    ]


def test_a_training_bar_names_the_range_test_before_the_first_epoch(tiny_cnn):
    """The bar of a training with lr auto says what runs before its first epoch (the issue: a
    distill bar stood at 0/80 for a minute with no word)."""
    from leanml.training import TrainConfig, fit

    task, _ = tiny_cnn
    seen: list[str] = []
    net = task.build_torch_model()
    fit(
        net,
        task.data.train,
        task.data.val,
        task.metric,
        TrainConfig(epochs=1, lr="auto"),
        progress=seen.append,
    )
    tests = [s for s in seen if s.startswith("learning-rate range test ")]
    assert tests and tests[0] == f"learning-rate range test 1/{tests[-1].split('/')[1]}"
    assert seen.index(tests[-1]) < seen.index("epoch 1: batch 1/" + seen[-1].split("/")[-1])
