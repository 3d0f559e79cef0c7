"""Progress shown while a run goes: rich bars in a terminal, nothing when quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Column
from rich.text import Text

from ..models import import_keras
from ..search import Worker


class Reporter:
    """Receives progress events; the default drops them (quiet runs, notebooks, tests).

    Call order: ``train_start``, one ``epoch`` per epoch, ``train_end`` around a training; and
    ``step_start``, one ``step_update`` per advance or new info, ``step_end`` around any other long
    step. Callers open steps with :meth:`progress`, which sends the three; steps may nest (a
    measurement inside a search), and ``step_update``/``step_end`` refer to the innermost open one.
    """

    def log(self, message: str) -> None:
        pass

    def write(self, message: str) -> None:
        """A line for the stage's log file only (see :class:`StageLog`)."""

    def train_start(self, description: str, epochs: int) -> None:
        pass

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        pass

    def train_info(self, info: str) -> None:
        """What the open training does now, between epochs (the learning-rate range test before
        the first one, the batches of a long epoch)."""

    def train_end(self) -> None:
        pass

    def step_start(self, description: str, total: int | None) -> None:
        """A step begins: ``total`` advances to come, or None when unknown (a pulse)."""

    def step_update(self, advance: int, info: str) -> None:
        """The innermost step advanced by ``advance`` (0: only ``info``, what it does, changed)."""

    def step_end(self) -> None:
        """The innermost step finished (or failed)."""

    @contextmanager
    def progress(self, description: str, total: int | None = None) -> Iterator[ReporterStep]:
        """A long step, for the ``with`` block: implements
        :meth:`leanml.techniques.StageContext.progress`.

        Example:
            >>> with reporter.progress("sensitivity", 3) as step:  # doctest: +SKIP
            ...     for name in ("fc1", "fc2", "head"):
            ...         step.advance(info=f"{name} drop +0.0010")
        """
        self.step_start(description, total)
        try:
            yield ReporterStep(self)
        finally:
            self.step_end()

    def close(self) -> None:
        pass


class ReporterStep:
    """The :class:`leanml.techniques.Step` a :class:`Reporter` hands out: each call is one
    ``step_update`` event."""

    def __init__(self, reporter: Reporter) -> None:
        self.reporter = reporter

    def advance(self, k: int = 1, info: str = "") -> None:
        self.reporter.step_update(k, info)

    def update(self, info: str) -> None:
        self.reporter.step_update(0, info)


class _Count(ProgressColumn):
    """``k/n`` for a step whose total is known, nothing for a pulse."""

    def render(self, task: Task) -> Text:
        if task.total is None:
            return Text("")
        return Text(f"{int(task.completed)}/{int(task.total)}", style="progress.download")


# Where no bar can be drawn (output redirected to a file, a CI log), a running step prints a line
# at most this often, so no stretch longer than this passes without a line that names what runs.
LINE_EVERY_S = 5.0


class RichReporter(Reporter):
    """Transient progress bars on stderr, for training and every long step; other events are
    printed lines. One rich display holds every open bar (a trial's training under a search).
    On a console that cannot draw bars (a file, a pipe), the same events are plain lines instead:
    each step's start, then what it does at most every ``LINE_EVERY_S`` seconds."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self._bars: Progress | None = None
        self._steps: list[TaskID] = []  # the open steps' bars, innermost last
        self._training: TaskID | None = None
        draws = self.console.is_jupyter or self.console.is_interactive
        self._lines = None if draws else _Lines(self.console)

    def log(self, message: str) -> None:
        self.console.print(message)

    def _open(self, description: str, total: int | None) -> TaskID:
        if self._bars is None:
            # a long info (a tensor's name) is cut, not the bar: it fits what is left of the line
            room = max(12, self.console.width - 64)
            info = Column(max_width=room, no_wrap=True, overflow="ellipsis")
            self._bars = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                _Count(),
                TextColumn("{task.fields[info]}", table_column=info),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._bars.start()
        return self._bars.add_task(description, total=total, info="")

    def _close(self, task: TaskID) -> None:
        if self._bars is None:
            return
        self._bars.remove_task(task)
        if not self._bars.tasks:
            self._bars.stop()
            self._bars = None

    def train_start(self, description: str, epochs: int) -> None:
        if self._lines is not None:
            self._lines.start(description, epochs, training=True)
            return
        self._training = self._open(description, epochs)

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        info = epoch_info(logs)
        if self._lines is not None:
            self._lines.training_epoch(epoch, info)
        elif self._bars is not None and self._training is not None:
            self._bars.update(self._training, completed=epoch, info=info)

    def train_info(self, info: str) -> None:
        if self._lines is not None:
            self._lines.training_info(info)
        elif self._bars is not None and self._training is not None:
            self._bars.update(self._training, info=info)

    def train_end(self) -> None:
        if self._lines is not None:
            self._lines.end(training=True)
        elif self._training is not None:
            self._close(self._training)
            self._training = None

    def step_start(self, description: str, total: int | None) -> None:
        if self._lines is not None:
            self._lines.start(description, total)
            return
        self._steps.append(self._open(description, total))

    def step_update(self, advance: int, info: str) -> None:
        if self._lines is not None:
            self._lines.update(advance, info)
        elif self._bars is not None and self._steps:
            # drawn now, not at the next tick: a step's last advance may come just before its end
            self._bars.update(self._steps[-1], advance=advance, info=info, refresh=True)

    def step_end(self) -> None:
        if self._lines is not None:
            self._lines.end()
        elif self._steps:
            self._close(self._steps.pop())

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        self._steps.clear()
        self._training = None
        if self._lines is not None:
            self._lines.open.clear()


class WorkerReporter(Reporter):
    """A worker process's progress lines, through its :class:`leanml.search.Worker` (the worker
    shows them on its stderr)."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker

    def log(self, message: str) -> None:
        self.worker.log(message)


class StageLog(Reporter):
    """Passes every event on to ``inner`` and appends it, as plain text with the seconds since the
    stage began, to the stage's ``log.txt``: a step's start, each advance (``sensitivity 17/133:
    ...``) and its end, so the log keeps the detail a terminal shows only as a bar."""

    def __init__(self, inner: Reporter, path: Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")  # a rerun starts the stage's log afresh
        self.start = time.perf_counter()
        self._description = ""
        # the open steps, innermost last: [description, total, done so far, started at]
        self._steps: list[list[Any]] = []

    def _write(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(f"[{time.perf_counter() - self.start:8.2f}s] {Text.from_markup(line).plain}\n")

    def log(self, message: str) -> None:
        self._write(message)
        self.inner.log(message)

    def write(self, message: str) -> None:
        """To the log file only."""
        self._write(message)

    def train_start(self, description: str, epochs: int) -> None:
        self._description = description
        self._write(f"{description}: up to {epochs} epochs")
        self.inner.train_start(description, epochs)

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        values = " ".join(f"{k} {v:.4f}" for k, v in logs.items() if isinstance(v, int | float))
        self._write(f"{self._description} epoch {epoch}: {values}")
        self.inner.epoch(epoch, logs)

    def train_info(self, info: str) -> None:
        self.inner.train_info(info)  # a bar's detail: the epochs' lines keep the log's record

    def train_end(self) -> None:
        self.inner.train_end()

    def step_start(self, description: str, total: int | None) -> None:
        self._steps.append([description, total, 0, time.perf_counter()])
        self._write(f"{description}: started" + (f", {total} to do" if total is not None else ""))
        self.inner.step_start(description, total)

    def step_update(self, advance: int, info: str) -> None:
        if self._steps:
            step = self._steps[-1]
            step[2] += advance
            where = f" {step[2]}/{step[1]}" if advance and step[1] is not None else ""
            self._write(f"{step[0]}{where}: {info}" if info else f"{step[0]}{where}")
        self.inner.step_update(advance, info)

    def step_end(self) -> None:
        if self._steps:
            description, _, _, started = self._steps.pop()
            self._write(f"{description}: ended after {time.perf_counter() - started:.1f}s")
        self.inner.step_end()

    def close(self) -> None:
        self.inner.close()


def epoch_info(logs: dict[str, float]) -> str:
    """An epoch's figures as a bar shows them: the validation ones (``val_loss``, ``val_metric``,
    Keras' ``val_accuracy``), or every figure when none is on validation."""
    figures = {k: v for k, v in logs.items() if k != "epoch" and isinstance(v, int | float)}
    shown = {k: v for k, v in figures.items() if k.startswith("val_")} or figures
    return " ".join(f"{k} {v:.4f}" for k, v in shown.items())


def keras_progress(description: str, reporter: Reporter | None = None) -> Any:
    """A Keras callback that shows ``model.fit`` as leanml shows its own training: a bar with the
    epochs, each epoch's validation figures and the batch it is at (``reporter``; default rich bars
    on stderr, plain lines where bars cannot draw).

    Example:
        >>> model.fit(x, y, epochs=30, callbacks=[keras_progress("keras teacher")])  # doctest: +SKIP
    """
    keras = import_keras(what="keras_progress")
    shown = reporter or RichReporter()

    class KerasProgress(keras.callbacks.Callback):  # type: ignore[misc, name-defined]
        def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
            shown.train_start(description, int(self.params.get("epochs") or 0))

        def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
            steps = self.params.get("steps")
            shown.train_info(f"batch {batch + 1}" + (f"/{steps}" if steps else ""))

        def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
            shown.epoch(epoch + 1, {k: float(v) for k, v in (logs or {}).items()})

        def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
            shown.train_end()

    return KerasProgress()


@dataclass
class _Running:
    """A step (or a training) :class:`_Lines` follows."""

    description: str
    total: int | None
    started: float
    last_line: float
    done: int = 0
    info: str = ""


class _Lines:
    """What :class:`RichReporter` prints where it cannot draw bars: a line when a step starts, a
    line with its count and info at most every ``LINE_EVERY_S`` seconds, and a line when a step
    that ran longer than that ends."""

    def __init__(self, console: Console, clock: Callable[[], float] | None = None) -> None:
        self.console = console
        self.clock = clock or time.monotonic
        self.open: list[_Running] = []  # innermost last
        self.training: _Running | None = None

    def _print(self, line: str) -> None:
        self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def start(self, description: str, total: int | None, *, training: bool = False) -> None:
        now = self.clock()
        step = _Running(description, total, now, now)
        if training:
            self.training = step
            self._print(f"{description}: training, up to {total} epochs")
        else:
            self.open.append(step)
            self._print(f"{description}: started" + (f", {total} to do" if total else ""))

    def _line(self, step: _Running, *, now: bool = False) -> None:
        """A line on ``step``, when ``now`` or when the last one is ``LINE_EVERY_S`` old."""
        t = self.clock()
        if not now and t - step.last_line < LINE_EVERY_S:
            return
        step.last_line = t
        count = f" {step.done}/{step.total}" if step.total else ""
        self._print(f"{step.description}{count}" + (f": {step.info}" if step.info else ""))

    def update(self, advance: int, info: str) -> None:
        if self.open:
            step = self.open[-1]
            step.done += advance
            step.info = info or step.info
            self._line(step, now=advance > 0 and step.done == step.total)

    def training_epoch(self, epoch: int, info: str) -> None:
        if self.training is not None:
            self.training.done, self.training.info = epoch, info
            self._line(self.training, now=epoch == self.training.total)

    def training_info(self, info: str) -> None:
        if self.training is not None:
            self.training.info = info
            self._line(self.training)

    def end(self, *, training: bool = False) -> None:
        if training:
            step, self.training = self.training, None
        else:
            step = self.open.pop() if self.open else None
        if step is None:
            return
        took = self.clock() - step.started
        if took >= LINE_EVERY_S:
            count = f", {step.done} of {step.total}" if step.total else ""
            info = f" ({step.info})" if step.info else ""
            self._print(f"{step.description}: done in {took:.0f}s{count}{info}")
