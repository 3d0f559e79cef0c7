"""The calibrate step: the calibration samples of static int8, and with ``calibration.method: auto``
the activation calibration, chosen per model on val.

Static int8 rounds every activation tensor into a range that calibration takes from the training
samples: ``minmax`` (the observed range), ``percentile`` (the range holding that share of the
values: rare outliers are clipped) or ``entropy`` (the clipping whose int8 histogram loses least
information, KL divergence). Which one keeps a model's accuracy depends on the tails of its
activations, so ``auto`` quantizes the model with each and keeps the one whose whole val split
scores best; a tie keeps the cheaper, more common method (minmax, then percentile).

The calibration samples are drawn once and fed to every method. ONNX Runtime calibrates each
method in its own pass: its entropy and percentile calibrators collect different histograms (signed
values in 128 bins, absolute values in 2048 bins), so one collection cannot serve both.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from ...data import n_rows, take
from ._ort import calibration_feeds
from ._state import CalibrationChoice, QuantizeState, Run

# The order ties are broken in: the cheapest and most common first.
METHODS = ("minmax", "percentile", "entropy")


def calibrate(state: QuantizeState, run: Run) -> None:
    """Static mode: draw the calibration samples (``state.feeds``) and, with ``auto``, choose the
    method (``state.method``, ``state.calibration``). The other modes calibrate nothing."""
    if not run.mode.calibrates:
        return
    run.ctx.log(f"  calibrating activation ranges ({run.cfg.calibration.method})")
    draw_samples(state, run)
    if run.cfg.calibration.method == "auto":
        _choose_method(state, run)


def draw_samples(state: QuantizeState, run: Run) -> None:
    """``calibration.samples`` training samples, drawn for the run's seed, as batches of the float
    graph's inputs (``state.feeds``)."""
    train = run.ctx.task.data.train
    n = n_rows(train.x)
    want = run.cfg.calibration.samples
    rng = np.random.default_rng(run.ctx.seed)
    index = np.sort(rng.permutation(n)[: min(want, n)])
    if want > n:
        state.notes.append(f"Calibrated on all {n} training samples ({want} were asked for).")
    state.feeds = calibration_feeds(state.float_graph, take(train.x, index))


def _choose_method(state: QuantizeState, run: Run) -> None:
    """Quantize with each method, keep the best on the whole val split (see
    :func:`choose_calibration`); every later quantization uses the method kept."""
    ctx = run.ctx
    made: dict[Path, str] = {}

    def quantize(method: str) -> Path:
        dst = run.work / f"calibration-{method}.onnx"
        made[dst] = method
        return run.mode.quantize(
            state.float_graph, dst, exclude=state.exclude, method=method, feeds=state.feeds
        )

    def evaluate(path: Path) -> float:
        value = ctx.evaluate(path, "val")
        ctx.log(f"  calibration {made[path]}: val {ctx.task.metric.name} {value:.4f}")
        return value

    state.calibration = choose_calibration(quantize, evaluate, run.drop)
    state.method = state.calibration.chosen
    for path in made:
        path.unlink(missing_ok=True)


def choose_calibration(
    quantize: Callable[[str], Path],
    evaluate: Callable[[Path], float],
    drop: Callable[[float], float],
    *,
    methods: Sequence[str] = METHODS,
) -> CalibrationChoice:
    """Quantize with each of ``methods`` and keep the one with the smallest ``drop`` of its
    ``evaluate`` value; on a tie the earlier method in ``methods`` is kept.

    Args:
        quantize: writes the model quantized with a calibration method and returns its path.
        evaluate: the val metric of a quantized model.
        drop: how much worse a val metric is than the reference (smaller is better).
        methods: the methods tried, in tie-breaking order.

    Returns:
        The method kept, with every candidate's val metric and seconds.
    """
    values: dict[str, float] = {}
    seconds: dict[str, float] = {}
    best = ""
    for method in methods:
        started = time.perf_counter()
        values[method] = evaluate(quantize(method))
        seconds[method] = time.perf_counter() - started
        if not best or drop(values[method]) < drop(values[best]):
            best = method
    if not best:
        raise ValueError("choose_calibration needs at least one method to try")
    return CalibrationChoice(best, values, seconds)
