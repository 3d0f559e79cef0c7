"""Progress shown while a run goes: rich bars in a terminal, nothing when quiet."""

from __future__ import annotations

import sys
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class Reporter:
    """Receives progress events; the default drops them (quiet runs, notebooks, tests)."""

    def log(self, message: str) -> None:
        pass

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
