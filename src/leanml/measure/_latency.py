"""Latency: warm-up, fixed threads, repeats until the median is stable; p50 and p95."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Timing:
    """Latency of one call at one batch size, in milliseconds."""

    batch_size: int
    p50: float
    p95: float
    repeats: int
    mean: float
    stable: bool

    def as_dict(self) -> dict[str, object]:
        return {
            "batch_size": self.batch_size,
            "p50": self.p50,
            "p95": self.p95,
            "repeats": self.repeats,
            "mean": self.mean,
            "stable": self.stable,
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
    """Time ``fn`` until the median of all samples moves less than ``rel_tol`` between blocks.

    After ``warmup`` untimed calls, ``repeats`` calls are timed; then blocks of ``repeats // 2``
    more are added while the median still moves by more than ``rel_tol`` (relative), up to
    ``max_repeats`` samples (default 10 × repeats) or ``max_seconds`` of timing.
    ``stable`` says whether the median settled before a limit was reached. ``clock`` is for tests.
    """
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    block = max(repeats // 2, 5)
    cap = max_repeats or repeats * 10
    started = clock()

    def run(k: int) -> None:
        for _ in range(k):
            t0 = clock()
            fn()
            samples.append(clock() - t0)

    run(repeats)
    stable = False
    median = float(np.median(samples))
    while len(samples) < cap and clock() - started < max_seconds:
        run(block)
        new_median = float(np.median(samples))
        if abs(new_median - median) <= rel_tol * median:
            stable = True
            median = new_median
            break
        median = new_median
    arr = np.asarray(samples) * 1000.0
    return Timing(
        batch_size=batch_size,
        p50=float(np.percentile(arr, 50)),
        p95=float(np.percentile(arr, 95)),
        repeats=len(samples),
        mean=float(arr.mean()),
        stable=stable,
    )
