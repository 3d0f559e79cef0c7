"""The gate: accept a stage's model or roll it back, with the reason, and how it compares with its
input. Every figure here was measured on the exported artifacts in ONNX Runtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..constraints import Constraints
from ..data import Inputs
from ..measure import MeasureConfig, Measurement, paired_latency_ratio
from ..metrics import Metric
from ..report import StageRecord


@dataclass
class Verdict:
    """Whether a stage is kept, and why not."""

    accepted: bool
    reason: str | None = None


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
    log: Callable[[str], None] = lambda _: None,
) -> Verdict:
    """Accept the stage measured as ``m`` (artifact ``path``) or roll it back to ``before``.

    The metric gate is the test-split figure the report shows, against the baseline, so an accepted
    stage never shows a larger drop than the constraint; the choices inside a stage use the
    validation split only (validation splits of small datasets are too coarse for a gate: on
    breast_cancer one sample is 1.2 points). With ``max_latency_ratio``, a stage slower than its
    input in its own measurement is re-timed side by side with the input (alternating rounds in
    this process) before it counts, so one run's noise never rolls a stage back.
    """
    drop = metric.drop(baseline.metric, m.metric)
    if not constraints.allows(drop):
        return Verdict(
            False,
            f"{metric.name} dropped {drop:.4f} vs the baseline on the test split, more than "
            f"max_metric_drop {constraints.max_metric_drop}; kept {before.name}",
        )
    limit = constraints.max_latency_ratio
    prev = before.measurement
    if limit is None or prev.runtime != m.runtime or m.runtime != "onnxruntime":
        return Verdict(True)
    if not any(b in prev.latency and m.p50(b) > limit * prev.p50(b) for b in m.latency):
        return Verdict(True)
    log(f"  re-timing against {before.name} side by side")
    paired = paired_latency_ratio(before_path, path, samples, measure_config)
    slower = {b: r for b, r in paired.items() if r > limit}
    if not slower:
        return Verdict(True)
    shown = ", ".join(f"batch {b} {r:.2f}x" for b, r in sorted(slower.items()))
    return Verdict(
        False,
        f"its p50 latency is more than max_latency_ratio {limit} times its input's "
        f"({before.name}), measured side by side: {shown}; kept {before.name}",
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
        word = "faster" if unit == "ms" else "smaller"
        if r < 1:
            word = "slower" if unit == "ms" else "larger"
            r = 1 / r
        return f"{shown} ({r:.2f}x {word})"

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
