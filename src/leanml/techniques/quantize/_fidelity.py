"""The fidelity passes before int8: choose the calibration method, SmoothQuant, bias correction.

Each pass quantizes a changed model, evaluates it on val and keeps the change when it is asked for
(``true``) or, with ``auto``, when it helps; a kept change replaces the stage's quantized model and
the float graph later quantizations start from. The algorithms are in :mod:`._calibrate`,
:mod:`._smooth` and :mod:`._bias`; :class:`FidelitySteps` runs them for the stage.
"""

from __future__ import annotations

import shutil
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

import onnx

from ...data import n_rows
from ._bias import correct_biases
from ._calibrate import choose_calibration
from ._onnx import finish
from ._quantizer import Quantizer
from ._smooth import smooth


class FidelitySteps(Quantizer):
    """The passes that bring the int8 model's metric closer to the float one's."""

    def _fidelity_passes(
        self,
        out: Path,
        requested: list[str],
        value: float,
        reference: float,
        graph: onnx.ModelProto,
    ) -> tuple[float, onnx.ModelProto]:
        """SmoothQuant (``smooth`` true, or ``auto`` in dynamic mode), then (static mode) bias
        correction, on the quantized model ``out`` whose val metric is ``value``. Returns the val
        metric kept and the float graph ``graph`` after SmoothQuant (what sensitivity and the op
        counts read)."""
        cfg = self.cfg
        if cfg.smooth is True or (cfg.smooth == "auto" and cfg.mode == "dynamic"):
            value = self._smooth(out, requested, value, reference)
            graph = onnx.load(str(self.prepared))
        if cfg.mode == "static" and cfg.bias_correction is not False:
            value = self._bias_correct(out, requested, value, reference)
        return value, graph

    def _choose_calibration(self, requested: list[str]) -> None:
        """``calibration.method: auto``: quantize with each method, keep the best on the whole val
        split (see :mod:`._calibrate`); every later quantization uses the method kept."""
        ctx = self.ctx

        def quantize(method: str) -> Path:
            self.method = method
            return self._quantize(self.work / f"calibration-{method}.onnx", requested)

        def evaluate(path: Path) -> float:
            value = ctx.evaluate(path, "val")
            ctx.log(f"  calibration {self.method}: val {ctx.task.metric.name} {value:.4f}")
            return value

        reference = ctx.baseline_val_metric
        self.calibration = choose_calibration(
            quantize, evaluate, lambda value: self._drop(value, reference)
        )
        self.method = self.calibration.chosen
        for method in self.calibration.values:
            (self.work / f"calibration-{method}.onnx").unlink(missing_ok=True)

    def _smooth(self, out: Path, requested: list[str], value: float, reference: float) -> float:
        """SmoothQuant before int8 (see :mod:`._smooth`), on the calibration samples. The smoothed
        model replaces ``out`` and the float graph the rest of the stage works on when ``smooth``
        is true, or (``auto``) when its val metric is better; returns the val metric kept."""
        cfg, ctx = self.cfg, self.ctx
        if not self.feeds:
            self._calibration_samples()
        ctx.log(f"  smoothing activation outliers into weights (alpha {cfg.smooth_alpha})")
        path = self.work / "smoothed.onnx"
        with ctx.progress("SmoothQuant") as step:
            done = smooth(
                self.prepared,
                path,
                self.feeds,
                alpha=cfg.smooth_alpha,
                exclude=requested,
                threads=ctx.measure_config.threads,
            )
            if done.layers:
                step.update("quantizing and evaluating the smoothed model")
                plain, self.prepared = self.prepared, path
                trial = self._quantize(self.work / "smoothed-int8.onnx", requested)
                smoothed = ctx.evaluate(trial, "val")
        if not done.layers:
            why = sorted(set(done.skipped.values())) or ["the model has no MatMul or Gemm"]
            self.notes.append(f"SmoothQuant skipped: no MatMul/Gemm to smooth ({'; '.join(why)}).")
            return value
        metric = ctx.task.metric.name
        keep = cfg.smooth is True or self._drop(smoothed, reference) < self._drop(value, reference)
        ctx.log(
            f"  smoothed {cfg.mode}: val {metric} {smoothed:.4f} ({'kept' if keep else 'not kept'})"
        )
        where = [f"{n} folded into {op}" for op, n in Counter(done.folded.values()).items()]
        where += [f"{done.inserted} Mul node(s) inserted"] if done.inserted else []
        said = (
            f"SmoothQuant (alpha {cfg.smooth_alpha}) moved the per-channel range of "
            f"{done.tensors} activation tensor(s) into the weights of {len(done.layers)} "
            f"MatMul/Gemm node(s) ({', '.join(where)}): val {metric} {smoothed:.4f} with it, "
            f"{value:.4f} without"
        )
        if not keep:
            self.prepared = plain
            self.notes.append(f"{said}; not kept (smooth: auto keeps it only when it helps).")
            return value
        shutil.move(trial, out)
        self.notes.append(f"{said}; kept.")
        return smoothed

    def _bias_correct(
        self,
        out: Path,
        requested: list[str],
        value: float,
        reference: float,
        keep_float: Sequence[str] = (),
    ) -> float:
        """Bias correction after static int8 (see :mod:`._bias`), for the model quantized with
        ``keep_float`` unrounded. The corrected float graph replaces ``out`` and the graph the rest
        of the stage quantizes (so later quantizations keep it; see :meth:`_bias_defer` for
        auto_exclude's search) when ``bias_correction`` is true, or (``auto``) when its val metric
        is not worse than ``value``, the one without; returns the val metric kept."""
        cfg, ctx = self.cfg, self.ctx
        plain = self.bias_plain = self.prepared
        ranges = self.work / f"ranges-{plain.stem}-{self.method}.json"

        def quantize(src: Path, dst: Path) -> None:
            # Only biases differ from the float graph: its calibrated ranges are reused.
            cache = self.work / f"ranges-{src.stem}-{self.method}.json"
            if ranges.exists() and not cache.exists():
                shutil.copy(ranges, cache)
            self.prepared = src
            try:
                self._quantize(dst, requested, keep_float=keep_float, compact=False)
            finally:
                self.prepared = plain

        path = self.work / f"bias-corrected{'-mixed' if keep_float else ''}.onnx"
        trial = out.with_name(f"{out.stem}-bias-corrected.onnx")  # a quantized model, like out
        with ctx.progress("bias correction") as step:
            done = correct_biases(
                plain,
                path,
                self.feeds,
                quantize,
                exclude=requested,
                threads=ctx.measure_config.threads,
            )
            if done.layers:
                step.update("quantizing and evaluating the corrected model")
                quantize(path, trial)
                finish(trial)
                corrected = ctx.evaluate(trial, "val")
        if not done.layers:
            why = sorted(set(done.skipped.values())) or ["the model has no Conv, Gemm or MatMul"]
            self.bias_note = f"Bias correction skipped: no layer to correct ({'; '.join(why)})."
            if self.bias_first is not None:  # auto_exclude kept every corrected layer float
                self.bias_correction = {**self.bias_first[0], "kept": False}
                self.bias_note = f"{self.bias_first[1]} {self.bias_note}"
            return value
        metric = ctx.task.metric.name
        keep = cfg.bias_correction is True or (
            self._drop(corrected, reference) <= self._drop(value, reference)
        )
        ctx.log(
            f"  bias-corrected: val {metric} {corrected:.4f} ({'kept' if keep else 'not kept'})"
        )
        self.bias_correction = {
            "layers": done.layers,
            "created": done.created,
            "shift": done.shift,
            "skipped": done.skipped,
            "val_metric": {"with": corrected, "without": value},
            "kept": keep,
        }
        said = (
            f"Bias correction subtracted the int8 shift of the per-channel mean output (on "
            f"{sum(n_rows(f) for f in self.feeds)} calibration samples, {done.shift:.1%} of the "
            f"channels' spread on average) from the biases of {len(done.layers)} layer(s)"
            + (f" ({len(done.created)} had none and got one)" if done.created else "")
            + f": val {metric} {corrected:.4f} with it, {value:.4f} without"
        )
        if self.bias_first is not None:
            first, note = self.bias_first
            self.bias_correction = {**self.bias_correction, "first": first}
            said = (
                f"{note[:-1]}, but still broke max_metric_drop: auto_exclude searched the "
                f"uncorrected model; measured again with the {len(keep_float)} tensor(s) it kept "
                f"float ({len(done.layers)} layer(s)): val {metric} {corrected:.4f} with it, "
                f"{value:.4f} without"
            )
        if not keep:
            trial.unlink()
            self.bias_note = f"{said}; not kept (bias_correction: auto keeps it unless it hurts)."
            return value
        self.prepared = path
        shutil.move(trial, out)
        self.bias_note = f"{said}; kept."
        return corrected

    def _bias_defer(self, out: Path, requested: list[str]) -> float:
        """The bias-corrected model still breaks max_metric_drop, so auto_exclude will keep
        tensors float, and a correction measured with them rounded no longer fits them (their
        readers keep a correction for rounding they no longer have). auto_exclude searches the
        uncorrected model instead, and :meth:`_bias_correct` then measures the correction again
        for the mixed-precision model it chose; returns the val metric without correction."""
        assert self.bias_correction is not None and self.bias_plain is not None
        self.bias_first = (self.bias_correction, self.bias_note)
        self.prepared = self.bias_plain
        self._quantize(out, requested)
        return float(self.bias_correction["val_metric"]["without"])
