"""Latency of two artifacts compared side by side: timing rounds alternate between them, so a
shared machine's load changes hit both alike, and the ratio is of medians measured together."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..data import Inputs, n_rows, take
from ..runtime import OnnxRunner
from ._config import MeasureConfig
from ._latency import time_call


def paired_latency_ratio(
    before: str | Path,
    after: str | Path,
    x: Inputs,
    config: MeasureConfig | None = None,
    *,
    rounds: int = 5,
    progress: Callable[[str], None] | None = None,
) -> dict[int, float]:
    """``after`` p50 / ``before`` p50 per batch size of ``config``, from ``rounds`` alternating
    rounds (before, after, before, ...); each ratio is the median over rounds of the per-round
    ratios. Below 1: ``after`` is faster. ``progress`` is called with each round's batch size and
    number (``batch 8, round 2/5``), e.g. a progress bar's ``update``."""
    cfg = config or MeasureConfig()
    runners = [OnnxRunner(before, threads=cfg.threads), OnnxRunner(after, threads=cfg.threads)]
    repeats = max(cfg.repeats // rounds, 10)
    ratios: dict[int, float] = {}
    # each model's timing at one batch size stays within the budget, over all its rounds
    budget = cfg.max_seconds / rounds
    for b in cfg.batch_sizes_for(runners[0].inputs):
        batch = take(x, np.arange(b) % n_rows(x))
        calls = [functools.partial(r.session.run, [r.output], r.feed(batch)) for r in runners]
        per_round = []
        for r in range(rounds):
            if progress is not None:
                progress(f"batch {b}, round {r + 1}/{rounds}")
            p50 = [
                time_call(
                    call,
                    batch_size=b,
                    warmup=2,
                    repeats=repeats,
                    max_repeats=repeats,
                    max_seconds=budget,
                ).p50
                for call in calls
            ]
            per_round.append(p50[1] / p50[0])
        ratios[b] = float(np.median(per_round))
    return ratios
