"""What every step of the ONNX quantize stage shares: its state, and the one call that quantizes.

:class:`Quantizer` holds the float graph the steps quantize (``prepared``, which SmoothQuant and
bias correction may replace), the calibration samples and method, and the notes; its
:meth:`Quantizer._quantize` writes one static, dynamic or fp16 model of it. The steps build on it:
:mod:`._fidelity` (calibration choice, SmoothQuant, bias correction), :mod:`._exclude`
(sensitivity, auto_exclude) and :mod:`._speed` (which format to write); :mod:`._stage` runs them.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ...data import n_rows, take
from ...models import Model
from .._base import StageContext
from ._calibrate import CalibrationChoice
from ._config import QuantizeConfig, reduce_range_for
from ._onnx import (
    StaticSettings,
    calibration_feeds,
    convert_fp16,
    finish,
    quantize_dynamic,
    quantize_static,
)
from ._tensors import keep_tensors_float


class Quantizer:
    """Static, dynamic and fp16: ONNX Runtime's quantizers on the model's float ONNX graph."""

    # The float graph every quantization starts from; the stage's prepare step sets it.
    prepared: Path

    def __init__(self, cfg: QuantizeConfig, model: Model, ctx: StageContext) -> None:
        self.cfg, self.model, self.ctx = cfg, model, ctx
        self.work = ctx.work_dir / "quantize"
        if self.work.exists():
            shutil.rmtree(self.work)
        self.work.mkdir(parents=True)
        self.notes: list[str] = []
        self.reduce_range = reduce_range_for(cfg.reduce_range)
        self.feeds: list[dict[str, np.ndarray]] = []
        # The calibration every static quantization uses; ``auto`` sets it in _choose_calibration.
        method = cfg.calibration.method
        self.method = "minmax" if method == "auto" else method
        self.calibration: CalibrationChoice | None = None
        # Bias correction (static mode): its details, its note (said after the op counts, which
        # come first), and the first correction when auto_exclude made it measure again.
        self.bias_correction: dict[str, Any] | None = None
        self.bias_note = ""
        self.bias_first: tuple[dict[str, Any], str] | None = None
        self.bias_plain: Path | None = None  # the float graph before bias correction

    def _drop(self, value: float, reference: float) -> float:
        return self.ctx.task.metric.drop(reference, value)

    def _quantize(
        self,
        dst: Path,
        exclude: Sequence[str],
        *,
        keep_float: Sequence[str] = (),
        compact: bool = True,
        op_types: Sequence[str] | None = None,
    ) -> Path:
        """Quantize the prepared model to ``dst``, keeping the nodes ``exclude`` float and (static
        mode) the tensors ``keep_float`` unrounded; ``compact`` False keeps the quantizer's tensor
        names (what :func:`qdq_pairs` reads); ``op_types`` (static mode) limits Q/DQ to those ops."""
        cfg = self.cfg
        if cfg.mode == "static":
            settings = StaticSettings(
                method=self.method,
                percentile=cfg.calibration.percentile,
                per_channel=cfg.per_channel,
                reduce_range=self.reduce_range,
                symmetric_weights=cfg.symmetric_weights,
                symmetric_activations=cfg.symmetric_activations,
            )
            quantize_static(
                self.prepared,
                dst,
                self.feeds,
                settings,
                exclude=exclude,
                # One cache per method: ONNX Runtime refuses a cache another method wrote.
                cache=self.work / f"ranges-{self.prepared.stem}-{self.method}.json",
                compact=False,
                op_types=op_types,
            )
            if keep_float:
                keep_tensors_float(dst, keep_float, onnx.load(str(self.prepared)))
            if compact:
                finish(dst)
        elif cfg.mode == "dynamic":
            quantize_dynamic(
                self.prepared,
                dst,
                per_channel=cfg.per_channel,
                reduce_range=self.reduce_range,
                exclude=exclude,
            )
        else:
            convert_fp16(self.prepared, dst, exclude=exclude)
        return dst

    def _calibration_samples(self) -> None:
        train = self.ctx.task.data.train
        n = n_rows(train.x)
        want = self.cfg.calibration.samples
        rng = np.random.default_rng(self.ctx.seed)
        index = np.sort(rng.permutation(n)[: min(want, n)])
        if want > n:
            self.notes.append(f"Calibrated on all {n} training samples ({want} were asked for).")
        self.feeds = calibration_feeds(self.prepared, take(train.x, index))
