"""Latency: warm-up, fixed threads, repeats until the median is stable or the time budget is
spent; p50 and p95."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

# Below this many timed calls a median says little; the budget may be overrun to get them.
MIN_SAMPLES = 3
# Warm-up may use at most this share of the time budget (and always makes one call).
WARMUP_SHARE = 0.25


@dataclass(frozen=True)
class Timing:
    """Latency of one call at one batch size, in milliseconds."""

    batch_size: int
    p50: float
    p95: float
    repeats: int
    mean: float
    stable: bool
    # why timing stopped: the median settled, the time budget was spent, or the repeat cap reached
    stopped: Literal["stable", "budget", "max_repeats"] = "stable"

    def as_dict(self) -> dict[str, object]:
        return {
            "batch_size": self.batch_size,
            "p50": self.p50,
            "p95": self.p95,
            "repeats": self.repeats,
            "mean": self.mean,
            "stable": self.stable,
            "stopped": self.stopped,
        }


def time_call(
    fn: Callable[[], object],
    *,
    batch_size: int,
    warmup: int = 10,
    repeats: int = 100,
    rel_tol: float = 0.02,
    max_repeats: int | None = None,
    max_seconds: float = 20.0,
    clock: Callable[[], float] = time.perf_counter,
) -> Timing:
    """Time ``fn`` until the median of all samples moves less than ``rel_tol`` between blocks, or
    ``max_seconds`` are spent, warm-up included.

    Up to ``warmup`` untimed calls (at most a quarter of the budget, at least one call when
    ``warmup`` > 0), then ``repeats`` timed calls; then blocks of ``repeats // 2`` more while the
    median still moves by more than ``rel_tol`` (relative), up to ``max_repeats`` samples (default
    10 × repeats). The budget stops any of these part-way, once at least three calls are timed, so
    a model whose calls take seconds is timed in about ``max_seconds``, not ``repeats`` calls.
    ``stable`` says whether the median settled; ``stopped`` why timing ended. ``clock`` is for tests.
    """
    started = clock()
    for i in range(warmup):
        if i and clock() - started >= WARMUP_SHARE * max_seconds:
            break
        fn()
    samples: list[float] = []
    block = max(repeats // 2, 5)
    cap = max_repeats or repeats * 10

    def over_budget() -> bool:
        return len(samples) >= MIN_SAMPLES and clock() - started >= max_seconds

    def run(k: int) -> None:
        for _ in range(k):
            if over_budget():
                return
            t0 = clock()
            fn()
            samples.append(clock() - t0)

    run(repeats)
    stopped: Literal["stable", "budget", "max_repeats"] = "max_repeats"
    median = float(np.median(samples))
    while True:
        if over_budget():
            stopped = "budget"
            break
        if len(samples) >= cap:
            break
        run(block)
        new_median = float(np.median(samples))
        if abs(new_median - median) <= rel_tol * median:
            stopped, median = "stable", new_median
            break
        median = new_median
    arr = np.asarray(samples) * 1000.0
    return Timing(
        batch_size=batch_size,
        p50=float(np.percentile(arr, 50)),
        p95=float(np.percentile(arr, 95)),
        repeats=len(samples),
        mean=float(arr.mean()),
        stable=stopped == "stable",
        stopped=stopped,
    )
