"""Progress shown while a run goes: rich bars in a terminal, nothing when quiet."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.text import Text


class Reporter:
    """Receives progress events; the default drops them (quiet runs, notebooks, tests)."""

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

    def measure(self, what: str) -> None:
        pass

    def close(self) -> None:
        pass


class RichReporter(Reporter):
    """Progress bars for training and a line per measurement step, on stderr."""

    def __init__(self, console: Console | None = None) -> None:
        self.console = console or Console(file=sys.stderr)
        self.progress: Progress | None = None
        self.task: Any = None

    def log(self, message: str) -> None:
        self.console.print(message)

    def train_start(self, description: str, epochs: int) -> None:
        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"),
            TimeElapsedColumn(),
            console=self.console,
            transient=True,
        )
        self.progress.start()
        self.task = self.progress.add_task(description, total=epochs, info="")

    def epoch(self, epoch: int, logs: dict[str, float]) -> None:
        if self.progress is not None:
            info = f"val_loss {logs['val_loss']:.4f} val_metric {logs['val_metric']:.4f}"
            self.progress.update(self.task, completed=epoch, info=info)

    def train_end(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None

    def measure(self, what: str) -> None:
        self.console.print(f"  measuring: {what}", style="dim")


class StageLog(Reporter):
    """Passes every event on to ``inner`` and appends it, as plain text with the seconds since the
    stage began, to the stage's ``log.txt``."""

    def __init__(self, inner: Reporter, path: Path) -> None:
        self.inner = inner
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")  # a rerun starts the stage's log afresh
        self.start = time.perf_counter()
        self._description = ""

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

    def measure(self, what: str) -> None:
        self._write(f"measuring: {what}")
        self.inner.measure(what)

    def close(self) -> None:
        self.inner.close()
