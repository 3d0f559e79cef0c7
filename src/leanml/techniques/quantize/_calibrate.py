"""``calibration.method: auto``: the activation calibration of static int8, chosen per model on val.

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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The order ties are broken in: the cheapest and most common first.
METHODS = ("minmax", "percentile", "entropy")


@dataclass
class CalibrationChoice:
    """What ``auto`` measured: each method's val metric and seconds (calibration, quantization and
    evaluation), and the method kept."""

    chosen: str
    values: dict[str, float]
    seconds: dict[str, float]

    def details(self) -> dict[str, Any]:
        return {
            "chosen": self.chosen,
            "candidates": dict(self.values),
            "seconds": {m: round(s, 2) for m, s in self.seconds.items()},
        }

    def note(self, metric: str) -> str:
        others = ", ".join(f"{m} {v:.4f}" for m, v in self.values.items() if m != self.chosen)
        spent = ", ".join(f"{m} {s:.0f} s" for m, s in self.seconds.items())
        return (
            f"Calibration: {self.chosen} kept (val {metric} {self.values[self.chosen]:.4f})"
            + (f", {others}" if others else "")
            + f"; calibrating, quantizing and evaluating took {spent}."
        )


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
