"""The gate: accept a stage's model or roll it back, with the reason, and how it compares with its
input. Every figure here was measured on the exported artifacts in ONNX Runtime."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from .._text import times
from ..constraints import Constraints
from ..data import Inputs
from ..measure import MeasureConfig, Measurement, paired_latency_ratio
from ..metrics import Metric
from ..report import StageRecord
from ._progress import Reporter


@dataclass
class Verdict:
    """Whether a stage is kept, why not, and a note on how the verdict was reached."""

    accepted: bool
    reason: str | None = None
    note: str | None = None


_PAIRED = (
    "the latency ratios in this verdict come from the side-by-side re-timing, so they may differ "
    "from the table's single-run figures"
)


def _ceil(x: float, places: int) -> float:
    step = 10**places
    return math.ceil(x * step - 1e-9) / step


def _effects(m: Measurement, prev: Measurement, ratios: dict[int, float] | None) -> list[str]:
    """What a stage did to latency and size against its input: "1.49x faster at batch 64",
    "3.2x smaller". ``ratios`` (new / old p50) replace the single-run latencies when given."""
    out = []
    if prev.runtime == m.runtime:
        for b in sorted(m.latency):
            if ratios is not None and b in ratios:
                r = ratios[b]
            elif b in prev.latency and prev.p50(b) > 0:
                r = m.p50(b) / prev.p50(b)
            else:
                continue
            if r > 0 and abs(r - 1) >= 0.005:
                out.append(f"{times(1 / r, 'faster', 'slower')} at batch {b}")
    if m.size_bytes > 0 and prev.size_bytes > 0:
        s = prev.size_bytes / m.size_bytes
        if abs(s - 1) >= 0.005:
            out.append(times(s, "smaller", "larger", spec=".2g"))
    return out


def _joined(parts: list[str]) -> str:
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def metric_rollback(
    name: str, m: Measurement, before: StageRecord, *, metric: str, drop: float, limit: float
) -> str:
    """The reason a stage is rolled back for its metric: what it gave, and the constraint that keeps it."""
    gave = _effects(m, before.measurement, None)
    what = f"it gave {_joined(gave)} against its input ({before.name}), but " if gave else ""
    return (
        f"{what}{metric} dropped {drop:.4f} vs the baseline on the test split, more than "
        f"max_metric_drop {limit}; raise constraints.max_metric_drop to {_ceil(drop, 4):g} to "
        f"keep {name}; kept {before.name}"
    )


def latency_rollback(
    name: str,
    m: Measurement,
    before: StageRecord,
    *,
    paired: dict[int, float],
    limit: float,
    gained: str | None = None,
) -> str:
    """The reason a stage is rolled back for latency: what it would have given, where it was
    slower side by side, and which recipe change keeps it."""
    slower = {b: r for b, r in paired.items() if r > limit}
    gains = [e for e in _effects(m, before.measurement, paired) if "faster" in e or "smaller" in e]
    if gained:  # a better metric is part of what the stage would have given
        gains.insert(0, gained)
    shown = ", ".join(f"batch {b} {r:.2f}x" for b, r in sorted(slower.items()))
    head = f"{name} would have been {_joined(gains)}, but " if gains else ""
    fits = sorted(b for b in paired if b not in slower)
    keep = f"raise constraints.max_latency_ratio to {_ceil(max(slower.values()), 2):g}"
    if fits:
        keep = (
            f"max_latency_ratio {limit} applies per batch size: set measure.batch_sizes to the "
            f"batch you deploy at (it passes at {', '.join(f'batch {b}' for b in fits)}), or {keep}"
        )
    return (
        f"{head}its p50 latency is more than max_latency_ratio {limit} times its input's "
        f"({before.name}), measured side by side: {shown} slower ({keep}); {_PAIRED}; "
        f"kept {before.name}"
    )


def judge(
    m: Measurement,
    *,
    baseline: Measurement,
    before: StageRecord,
    before_path: Path,
    path: Path,
    metric: Metric,
    constraints: Constraints,
    samples: Inputs,
    measure_config: MeasureConfig,
    name: str = "this stage",
    reporter: Reporter | None = None,
) -> Verdict:
    """Accept the stage ``name`` measured as ``m`` (artifact ``path``) or roll it back to ``before``.

    The metric gate is the test-split figure the report shows, against the baseline, so an accepted
    stage never shows a larger drop than the constraint; the choices inside a stage use the
    validation split only (validation splits of small datasets are too coarse for a gate: on
    breast_cancer one sample is 1.2 points). With ``max_latency_ratio``, a stage slower than its
    input in its own measurement is re-timed side by side with the input (alternating rounds in
    this process) before it counts, so one run's noise never rolls a stage back (``reporter``
    shows that re-timing's progress). A rolled-back stage's reason says what it would have given
    and which recipe change keeps it.
    """
    drop = metric.drop(baseline.metric, m.metric)
    if not constraints.allows(drop):
        return Verdict(
            False,
            metric_rollback(
                name,
                m,
                before,
                metric=metric.name,
                drop=drop,
                limit=constraints.max_metric_drop,
            ),
        )
    limit = constraints.max_latency_ratio
    prev = before.measurement
    if limit is None or prev.runtime != m.runtime or m.runtime != "onnxruntime":
        return Verdict(True)
    if not any(b in prev.latency and m.p50(b) > limit * prev.p50(b) for b in m.latency):
        return Verdict(True)
    with (reporter or Reporter()).progress(f"re-timing against {before.name} side by side") as step:
        paired = paired_latency_ratio(
            before_path, path, samples, measure_config, progress=step.update
        )
    if not any(r > limit for r in paired.values()):
        shown = ", ".join(f"batch {b} {r:.2f}x" for b, r in sorted(paired.items()))
        return Verdict(
            True,
            note=(
                f"Kept: slower than max_latency_ratio {limit} times its input ({before.name}) in "
                f"the table's single run, but not when re-timed side by side (p50 new/old: "
                f"{shown}); {_PAIRED}."
            ),
        )
    better = -metric.drop(prev.metric, m.metric)
    gained = f"{better:.4f} better in {metric.name}" if better > 0 else None
    return Verdict(
        False, latency_rollback(name, m, before, paired=paired, limit=limit, gained=gained)
    )


def versus_input(m: Measurement, before: StageRecord) -> str:
    """One line comparing a stage's measurement with the model it started from, so a stage that
    made the model slower (or larger) says so next to what it did."""

    def ratio(old: float, new: float, unit: str) -> str:
        if new <= 0 or old <= 0:
            return "n/a"
        r = old / new
        shown = (
            f"{old:.3g} -> {new:.3g} {unit}" if unit == "ms" else f"{old:.1f} -> {new:.1f} {unit}"
        )
        if abs(r - 1) < 0.005:
            return f"{shown} (unchanged)"
        words = ("faster", "slower") if unit == "ms" else ("smaller", "larger")
        return f"{shown} ({times(r, *words)})"

    prev = before.measurement
    size = ratio(prev.size_bytes / 1024, m.size_bytes / 1024, "KiB")
    if prev.runtime != m.runtime:
        return (
            f"Against its input ({before.name}): latency was measured in {m.runtime} here and in "
            f"{prev.runtime} there, so it does not compare; size {size}."
        )
    parts = [
        f"batch {b} p50 {ratio(prev.latency[b].p50, m.latency[b].p50, 'ms')}"
        for b in sorted(m.latency)
        if b in prev.latency
    ]
    parts.append(f"size {size}")
    return f"Against its input ({before.name}), measured in this run: " + "; ".join(parts) + "."
