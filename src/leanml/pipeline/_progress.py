"""Progress shown while a run goes: rich bars in a terminal, nothing when quiet."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
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


class RichReporter(Reporter):
    """Transient progress bars on stderr, for training and every long step; other events are
    printed lines. One rich display holds every open bar (a trial's training under a search)."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self._bars: Progress | None = None
        self._steps: list[TaskID] = []  # the open steps' bars, innermost last
        self._training: TaskID | None = None

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
        self._training = self._open(description, epochs)

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if self._bars is not None and self._training is not None:
            info = f"val_loss {logs['val_loss']:.4f} val_metric {logs['val_metric']:.4f}"
            self._bars.update(self._training, completed=epoch, info=info)

    def train_end(self) -> None:
        if self._training is not None:
            self._close(self._training)
            self._training = None

    def step_start(self, description: str, total: int | None) -> None:
        self._steps.append(self._open(description, total))

    def step_update(self, advance: int, info: str) -> None:
        if self._bars is not None and self._steps:
            # drawn now, not at the next tick: a step's last advance may come just before its end
            self._bars.update(self._steps[-1], advance=advance, info=info, refresh=True)

    def step_end(self) -> None:
        if self._steps:
            self._close(self._steps.pop())

    def close(self) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None
        self._steps.clear()
        self._training = None


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
