"""What the ONNX quantize stage has decided so far (:class:`QuantizeState`), and what every step
reads and none changes (:class:`Run`).

:func:`._stage.quantize_onnx` makes both and passes them through the steps in order; each step's
docstring says which fields of the state it sets. Nothing else holds the stage's state.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .._base import StageContext
from ._config import QuantizeConfig, reduce_range_for
from ._modes import Mode
from ._onnx import Prepared
from ._tensors import QdqPair


@dataclass(frozen=True)
class Run:
    """One run of the ONNX quantize stage: the ``quantize:`` keys, the pipeline's context, the
    mode's strategy and the folder for intermediate files."""

    cfg: QuantizeConfig
    ctx: StageContext
    mode: Mode
    work: Path

    @property
    def reduce_range(self) -> bool:
        """``quantize.reduce_range`` resolved for this CPU."""
        return reduce_range_for(self.cfg.reduce_range)

    def drop(self, value: float, reference: float | None = None) -> float:
        """How much worse the val metric ``value`` is than ``reference`` (the baseline's)."""
        base = self.ctx.baseline_val_metric if reference is None else reference
        return self.ctx.task.metric.drop(base, value)


@dataclass
class CalibrationChoice:
    """What ``calibration.method: auto`` measured: each method's val metric and seconds
    (calibration, quantization and evaluation), and the method kept."""

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


@dataclass
class BiasDecision:
    """What bias correction decided (static mode).

    Attributes:
        before: the float graph it corrected (what auto_exclude searches instead, see
            :func:`._bias.undo_bias_correction`).
        details: the ``bias_correction`` record of the stage's details (None when no layer could
            be corrected).
        note: what the notes say about it (after the op counts).
        first: the first correction's details and note, when auto_exclude made it measure again.
    """

    before: Path
    details: dict[str, Any] | None = None
    note: str = ""
    first: tuple[dict[str, Any], str] | None = None

    @property
    def kept(self) -> bool:
        return bool(self.details and self.details["kept"])


@dataclass
class QuantizeState:
    """What quantization has decided so far, step by step (see :mod:`._stage` for the order).

    Attributes:
        prepared: the float graph as exported and prepared (:mod:`._onnx`): the float model the
            format comparison times and writes, and the opsets the details report.
        float_graph: the float graph every quantization starts from: ``prepared.path``, then the
            smoothed or bias-corrected graph when one is kept.
        exclude: the nodes kept float because ``quantize.exclude`` names them.
        out: the stage's own quantized model (``quantized-MODE.onnx``); ``value`` its val metric,
            ``float_value`` the float graph's.
        quantize_seconds, eval_seconds: what the first quantization and one evaluation cost
            (sensitivity's estimate).
        method: the calibration method of every static quantization (``auto``: the one kept).
        feeds: the calibration samples, batches keyed by input name (static mode; SmoothQuant
            draws them in dynamic mode).
        calibration: what ``calibration.method: auto`` measured.
        smoothed: the MatMul/Gemm nodes whose weights took SmoothQuant's scales (empty: none, or
            not kept).
        bias: what bias correction decided.
        auto_excluded: the layers auto_exclude kept float (dynamic and fp16 modes).
        kept_float: the quantized tensors auto_exclude kept float (static mode).
        sensitivity: each candidate's metric drop when quantized alone, most first; by node name
            (layers) or by what the tensor is (static mode).
        notes: what the steps said, in order.
    """

    prepared: Prepared
    float_graph: Path
    exclude: list[str]
    out: Path
    method: str
    value: float = math.nan
    float_value: float = math.nan
    quantize_seconds: float = 0.0
    eval_seconds: float = 0.0
    feeds: list[dict[str, np.ndarray]] = field(default_factory=list)
    calibration: CalibrationChoice | None = None
    smoothed: list[str] = field(default_factory=list)
    bias: BiasDecision | None = None
    auto_excluded: list[str] = field(default_factory=list)
    kept_float: list[QdqPair] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
