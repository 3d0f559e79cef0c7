"""The ``quantize`` stage: int8 (dynamic, static, quantization-aware training) or float16, deployed
as an ONNX model that ONNX Runtime runs with its int8 (or fp16) kernels.

Every mode ends in an ONNX file; its notes say how many Conv/MatMul/Gemm nodes ONNX Runtime runs in
int8 after fusing the graph, and why the others stayed float. Static, dynamic and fp16 measure each
layer's sensitivity (quantize that layer alone, measure the metric drop on up to
``SENSITIVITY_ROWS`` validation samples; dynamic mode switches layers in one session) and,
with ``auto_exclude``, keep the most sensitive layers float until ``max_metric_drop`` holds.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import onnx

from ...data import n_rows, take
from ...errors import InvalidInputError, StageError
from ...measure import MeasureConfig, paired_latency_ratio
from ...models import Model
from ...runtime import OnnxRunner, to_onnx
from ...task import Task
from .._base import Stage, StageContext, StageResult, register_stage
from . import _formats
from ._bias import correct_biases
from ._calibrate import CalibrationChoice, choose_calibration
from ._config import (
    MAX_SENSITIVITY_LAYERS,
    MAX_SENSITIVITY_TENSORS,
    QUANTIZED_OPS,
    SENSITIVITY_ROWS,
    SENSITIVITY_SECONDS,
    QuantizeConfig,
    reduce_range_for,
)
from ._formats import COMPUTE_QDQ_OPS, Format, FormatChoice, choose_format
from ._notes import op_notes, sensitivity_plot
from ._onnx import (
    DYNAMIC_OPS,
    StaticSettings,
    calibration_feeds,
    compute_nodes,
    convert_fp16,
    embedding_nodes,
    finish,
    gemm_to_matmul,
    layer_label,
    match_layers,
    prepare,
    quantize_dynamic,
    quantize_static,
)
from ._ops import count_ops
from ._qat import apply_qat, excluded_modules, quantizable_layers
from ._sensitivity import dynamic_sensitivity, sample_rows, static_sensitivity
from ._smooth import smooth
from ._tensors import QdqPair, float_nodes_of, keep_tensors_float, listed_once, qdq_pairs


@register_stage("quantize")
class QuantizeStage(Stage[QuantizeConfig]):
    """Quantize the model to int8 (or float16) for ONNX Runtime."""

    Config = QuantizeConfig
    keeps_layers = True
    forms = ("torch", "onnx")
    contract_example: ClassVar[dict[str, Any] | None] = {
        "mode": "static",
        "calibration": {"samples": 64},
        "sensitivity": False,
    }

    def check(self, task: Task) -> None:
        cfg = self.config
        if cfg.mode == "qat" and task.model_kind != "torch":
            raise InvalidInputError(
                "quantize mode 'qat' fine-tunes a PyTorch model; this task's model is "
                f"{task.model_kind} ({task.model}); use mode 'static' or 'dynamic' for it"
            )

    def check_model(self, model: Model, task: Task) -> None:
        """``exclude`` names layers of the model: check them before the baseline trains."""
        cfg = self.config
        if not cfg.exclude:
            return
        if model.torch is not None and cfg.mode == "qat":
            excluded_modules(cfg.exclude, quantizable_layers(model.torch))
            return
        with tempfile.TemporaryDirectory(prefix="leanml-check-") as tmp:
            path = Path(model.onnx) if model.form == "onnx" else Path(tmp) / "model.onnx"
            if model.form != "onnx":
                to_onnx(model, task.data.val, path)
            match_layers(
                cfg.exclude, _layer_nodes(onnx.load(str(path)), cfg.mode), key="quantize.exclude"
            )

    def check_form(self, model: Model) -> None:
        super().check_form(model)
        if self.config.mode == "qat" and model.torch is None:
            raise InvalidInputError(
                "quantize mode 'qat' fine-tunes a PyTorch model; this model is an ONNX file (an "
                "earlier stage or the task made it one); use mode 'static' or 'dynamic'"
            )

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        cfg = self.config
        if cfg.mode == "qat":
            return apply_qat(cfg, model, ctx, reduce_range=reduce_range_for(cfg.reduce_range))
        return _OnnxQuantizer(cfg, model, ctx).run()


class _OnnxQuantizer:
    """Static, dynamic and fp16: ONNX Runtime's quantizers on the model's float ONNX graph."""

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

    def run(self) -> StageResult:
        cfg, ctx = self.cfg, self.ctx
        fp32 = ctx.export_onnx(self.model, self.work / "float.onnx")
        quantized_ops = sorted(
            {n.op_type for n in onnx.load(str(fp32)).graph.node if n.op_type in QUANTIZED_OPS}
        )
        if quantized_ops:
            raise StageError(
                f"the model is already quantized ({', '.join(quantized_ops)} found); quantize a "
                "float model once (an earlier quantize stage was accepted)"
            )
        prepared = prepare(fp32, self.work / "prepared.onnx", preprocess=cfg.preprocess)
        self.notes += prepared.notes
        self.prepared = prepared.path
        if ctx.task.metric_label != ctx.task.metric.name:
            self.notes.append(
                f"Fidelity is {ctx.task.metric_label}: outputs at padding positions are ignored by "
                "their consumers (mean pooling with the mask, the first token) and not compared."
            )
        if cfg.mode == "dynamic":
            rewritten = gemm_to_matmul(self.prepared, self.prepared)
            if rewritten:
                self.notes.append(
                    f"Rewrote {rewritten} Gemm node(s) as MatMul + Add: ONNX Runtime's dynamic quantizer "
                    "only quantizes MatMul."
                )
        graph = onnx.load(str(self.prepared))
        # Dynamic mode quantizes MatMul (see DYNAMIC_OPS) and embedding tables: those are its layers.
        # A MatMul of two activations (attention scores) has no weight to store in int8.
        weights = {i.name for i in graph.graph.initializer}
        layers = [
            n.name
            for n in _layer_nodes(graph, cfg.mode)
            if cfg.mode != "dynamic"
            or n.op_type == "Gather"
            or (n.op_type in DYNAMIC_OPS and any(i in weights for i in n.input))
        ]
        tables = [n.name for n in embedding_nodes(graph)] if cfg.mode == "dynamic" else []
        requested = match_layers(cfg.exclude, _layer_nodes(graph, cfg.mode), key="quantize.exclude")
        if cfg.mode == "static":
            ctx.log(f"  calibrating activation ranges ({cfg.calibration.method})")
            self._calibration_samples()
            if cfg.calibration.method == "auto":
                self._choose_calibration(requested)
        float_val = ctx.evaluate(self.prepared, "val")
        reference = ctx.baseline_val_metric

        out = ctx.work_dir / f"quantized-{cfg.mode}.onnx"
        started = time.perf_counter()
        # static mode calibrates the activation ranges here (later quantizations reuse them)
        with ctx.progress("calibrating" if cfg.mode == "static" else f"quantizing ({cfg.mode})"):
            self._quantize(out, requested)
        evaluated = time.perf_counter()
        value = ctx.evaluate(out, "val")
        eval_seconds = time.perf_counter() - evaluated
        ctx.log(f"  {cfg.mode}: val {ctx.task.metric.name} {value:.4f} (float {float_val:.4f})")
        if cfg.smooth is True or (cfg.smooth == "auto" and cfg.mode == "dynamic"):
            value = self._smooth(out, requested, value, reference)
            graph = onnx.load(str(self.prepared))
        self.bias_correction: dict[str, Any] | None = None
        self.bias_note = ""  # said after the op counts, which come first
        self.bias_first: tuple[dict[str, Any], str] | None = None
        if cfg.mode == "static" and cfg.bias_correction is not False:
            value = self._bias_correct(out, requested, value, reference)

        candidates = [name for name in layers if name not in requested]
        sensitivity: dict[str, float] = {}
        breaks = not ctx.constraints.allows(self._drop(value, reference))
        float_drop = self._drop(float_val, reference)
        can_exclude = breaks and cfg.auto_exclude and ctx.constraints.allows(float_drop)
        # One layer's sensitivity costs an evaluation on at most SENSITIVITY_ROWS val samples, plus
        # (except in dynamic mode, which measures every layer in one session) a quantization.
        share = min(1.0, SENSITIVITY_ROWS / max(n_rows(ctx.task.data.val.x), 1))
        kept_pairs: list[QdqPair] = []
        if cfg.mode == "static":
            deferred = bool(can_exclude and self.bias_correction and self.bias_correction["kept"])
            if deferred:
                value = self._bias_defer(out, requested)
            # Static mode measures every QDQ pair (tensor), not layers, in one session.
            value, kept_pairs, sensitivity = self._static_tensors(
                out, requested, value, reference, eval_seconds * share, can_exclude
            )
            if deferred:
                keep_float = [p.tensor for p in kept_pairs]
                value = self._bias_correct(out, requested, value, reference, keep_float)
        else:
            per_layer = eval_seconds * share + (
                0.0 if cfg.mode == "dynamic" else evaluated - started
            )
            estimate = len(candidates) * per_layer
            want_sensitivity = (
                cfg.sensitivity
                and len(candidates) <= MAX_SENSITIVITY_LAYERS
                and estimate <= SENSITIVITY_SECONDS
            )
            if candidates and (want_sensitivity or can_exclude):
                sensitivity = self._sensitivity(graph, layers, candidates)
            elif cfg.sensitivity and candidates:
                why = (
                    f"{len(candidates)} layers is more than {MAX_SENSITIVITY_LAYERS}"
                    if len(candidates) > MAX_SENSITIVITY_LAYERS
                    else f"it would take about {estimate:.0f} s ({len(candidates)} layers), more "
                    f"than {SENSITIVITY_SECONDS:.0f} s, and the quantized model already holds "
                    "max_metric_drop"
                )
                self.notes.append(f"Per-layer sensitivity skipped: {why}.")

        auto: list[str] = []
        if breaks and cfg.auto_exclude and not ctx.constraints.allows(float_drop):
            self.notes.append(
                f"auto_exclude did not run: the float model this stage started from already drops "
                f"{float_drop:.4f} {ctx.task.metric.name} on val vs the baseline, more than "
                f"max_metric_drop {ctx.max_metric_drop}, so keeping layers float cannot bring it back "
                f"(quantization itself changed val {ctx.task.metric.name} by {value - float_val:+.4f})."
            )
        elif can_exclude and cfg.mode != "static":
            value, auto = self._auto_exclude(out, requested, sensitivity, value, reference)
        elif breaks and not cfg.auto_exclude:
            self.notes.append(
                f"The quantized model drops {self._drop(value, reference):.4f} {ctx.task.metric.name} on "
                f"val, more than max_metric_drop {ctx.max_metric_drop}; auto_exclude is off."
            )

        reasons = {n: "kept float: listed in quantize.exclude" for n in requested}
        reasons.update({n: "kept float by auto_exclude (most sensitive layer)" for n in auto})
        reasons.update({n: r for n, r in float_nodes_of(kept_pairs).items() if n not in reasons})
        # The notes and details below describe the format kept, which may be another one.
        written = self._choose_format(out, value, float_val, prepared.path, requested, kept_pairs)
        out, value = written.path, written.value
        reasons.update(written.chosen.fmt.float_nodes)
        op_reasons = {}
        if cfg.mode == "dynamic":
            op_reasons["Conv"] = (
                "dynamic mode keeps Conv float: ONNX Runtime's ConvInteger kernel is slower than float "
                "Conv on CPU (static mode runs Conv as QLinearConv)"
            )
        ops = count_ops(
            out, [n.name for n in compute_nodes(graph)], excluded=reasons, op_reasons=op_reasons
        )
        self.notes += op_notes(ops, cfg.mode, self.reduce_range)
        if tables and written.chosen.fmt.int8:
            kept = [n for n in tables if n in reasons]
            int8_tables = [layer_label(n) for n in tables if n not in reasons]
            self.notes.append(
                f"Embedding tables stored in int8 ({len(int8_tables)} of {len(tables)}): "
                f"{', '.join(int8_tables) or 'none'}"
                + (f"; kept float: {', '.join(layer_label(n) for n in kept)}." if kept else ".")
            )
        if cfg.mode == "fp16":
            self.notes += self._fp16_speed_note(out)
        elif ops.float_ops and written.chosen.fmt.int8:
            listed = ", ".join(f"{op} x{k}" for op, k in sorted(ops.float_ops.items()))
            why = (
                f"no int8 form in {cfg.mode} mode"
                if written.chosen is written.measured[0]
                else f"the format kept, {written.chosen.fmt.label}, leaves them float"
            )
            self.notes.append(f"Other ops run in float ({why}): {listed}.")
        details: dict[str, Any] = {
            "mode": cfg.mode,
            "opset": {"original": prepared.original_opset, "quantized": prepared.opset},
            "compute_nodes": ops.total,
            "int8_nodes": ops.int8 if cfg.mode != "fp16" else [],
            "float_nodes": ops.float if cfg.mode != "fp16" else {},
            "kernels": ops.kernels,
            "excluded": requested,
            "auto_excluded": auto or [p.tensor for p in kept_pairs],
            "kept_float_tensors": [
                {
                    "tensor": p.tensor,
                    "kind": p.kind,
                    "producer": p.producer,
                    "consumers": p.consumers,
                }
                for p in kept_pairs
            ],
            "sensitivity": (
                dict(sensitivity)
                if cfg.mode == "static"
                else {layer_label(k): v for k, v in sensitivity.items()}
            ),
            "val_metric": {"float": float_val, "quantized": value},
            "reduce_range": self.reduce_range,
        }
        if cfg.mode == "static":
            details["calibration"] = {
                **cfg.calibration.model_dump(),
                "used": sum(n_rows(f) for f in self.feeds),
                "chosen": self.method,
                "candidates": {},
                **(self.calibration.details() if self.calibration else {}),
            }
            if self.calibration:
                self.notes.append(self.calibration.note(ctx.task.metric.name))
            if self.bias_note:
                self.notes.append(self.bias_note)
            if self.bias_correction is not None:
                details["bias_correction"] = self.bias_correction
        details.update(written.details)
        self.notes += written.notes
        plots = (
            [sensitivity_plot(sensitivity, ctx.task.metric.name, per_tensor=cfg.mode == "static")]
            if sensitivity
            else []
        )
        shutil.rmtree(self.work, ignore_errors=True)
        result = Model(
            onnx=out,
            model_args=dict(self.model.model_args),
            factory=self.model.factory,
            info=dict(self.model.info),
        )
        result.info["quantize"] = {"mode": cfg.mode, "format": written.chosen.fmt.key}
        return StageResult(result, notes=self.notes, details=details, plots=plots)

    def _choose_format(
        self,
        out: Path,
        value: float,
        float_val: float,
        float_path: Path,
        requested: list[str],
        kept_pairs: list[QdqPair],
    ) -> FormatChoice:
        """Speed is a constraint, not a hope: build the other formats of this mode, evaluate each
        on val, time each against the float model side by side, and keep the fastest that holds
        max_metric_drop (the float model when no int8 format is faster); see :mod:`._formats`.
        The chosen file is in the stage's work folder (``out`` when the stage's own model won)."""
        cfg, ctx = self.cfg, self.ctx
        graph = onnx.load(str(float_path))
        compute = compute_nodes(graph)
        keep = [p.tensor for p in kept_pairs]
        if cfg.mode == "static":
            mixed = f", {len(keep)} tensors float" if keep else ""
            own = Format("static", f"static QDQ (all ops{mixed})", lambda _: out, val_metric=value)
        else:
            own = Format(cfg.mode, f"{cfg.mode} int8", lambda _: out, val_metric=value)
        formats = [own]
        if cfg.mode == "static":
            formats.append(
                Format(
                    "static-compute",
                    f"static QDQ (Conv/MatMul/Gemm only{mixed})",
                    lambda dst: self._quantize(
                        dst, requested, keep_float=keep, op_types=COMPUTE_QDQ_OPS
                    ),
                )
            )
            depthwise = [
                n.name
                for n in compute
                if n.op_type == "Conv"
                and n.name not in requested
                and any(a.name == "group" and a.i > 1 for a in n.attribute)
            ]
            if depthwise:
                formats.append(
                    Format(
                        "static-pointwise",
                        f"static QDQ (Conv/MatMul/Gemm, depthwise Conv float{mixed})",
                        lambda dst: self._quantize(
                            dst, [*requested, *depthwise], keep_float=keep, op_types=COMPUTE_QDQ_OPS
                        ),
                        float_nodes=dict.fromkeys(
                            depthwise,
                            "kept float: a depthwise Conv, and the format that keeps them float "
                            "was the fastest that holds max_metric_drop",
                        ),
                    )
                )
            # Dynamic int8 only quantizes MatMul/Gemm weights: worth timing when they are most of
            # the model's (an MLP, a transformer), not for a CNN's classifier head.
            sizes = {i.name: int(np.prod(i.dims)) for i in graph.graph.initializer}
            held = {n.name: sum(sizes.get(i, 0) for i in n.input[1:2]) for n in compute}
            matmul = sum(held[n.name] for n in compute if n.op_type in ("MatMul", "Gemm"))
            if matmul and 2 * matmul >= sum(held.values()):
                formats.append(
                    Format(
                        "dynamic",
                        "dynamic int8 (MatMul/Gemm only)",
                        lambda dst: self._dynamic_format(dst, requested),
                        float_nodes={
                            n.name: "kept float: dynamic int8 (the fastest format that holds "
                            "max_metric_drop) quantizes only MatMul/Gemm"
                            for n in compute
                            if n.op_type == "Conv"
                        },
                    )
                )
        if cfg.mode in ("static", "dynamic"):
            formats.append(
                Format(
                    "float",
                    "float",
                    lambda dst: Path(shutil.copyfile(float_path, dst)),
                    int8=False,
                    val_metric=float_val,
                    float_nodes=dict.fromkeys(
                        (n.name for n in compute),
                        "kept float: no int8 format is faster than float on this CPU (see the "
                        "format comparison)",
                    ),
                )
            )
        timing = ctx.measure_config.model_copy(update={"memory": False})
        x = ctx.task.data.val.x
        reference = ctx.baseline_val_metric
        if len(formats) > 1:
            ctx.log(f"  comparing {len(formats)} formats on val and against float latency")
        with ctx.progress("candidate formats") as step:

            def evaluate(path: Path) -> float:
                step.update(f"{path.stem}: val {ctx.task.metric.name}")
                return ctx.evaluate(path, "val")

            def time_against_float(path: Path) -> dict[int, float]:
                step.update(f"{path.stem}: timing against float")
                return _formats.latency_ratios(float_path, path, x, timing)

            choice = choose_format(
                formats,
                work=self.work / "formats",
                evaluate=evaluate,
                drop=lambda v: self._drop(v, reference),
                allows=ctx.constraints.allows,
                time_against_float=time_against_float,
                require_speedup=cfg.require_speedup,
                metric=ctx.task.metric.name,
                budget=ctx.max_metric_drop,
            )
        if choice.path != out:  # the work folder is removed at the end of the stage
            kept = ctx.work_dir / f"format-{choice.chosen.fmt.key}.onnx"
            shutil.move(choice.path, kept)
            choice.chosen.path = kept
        return choice

    def _dynamic_format(self, dst: Path, requested: list[str]) -> Path:
        """Dynamic int8 of the static stage's float graph (its MatMul/Gemm layers)."""
        src = self.work / "formats" / "dynamic-float.onnx"
        gemm_to_matmul(self.prepared, src)
        quantize_dynamic(
            src,
            dst,
            per_channel=self.cfg.per_channel,
            reduce_range=self.reduce_range,
            exclude=requested,
        )
        return dst

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
        assert self.bias_correction is not None
        self.bias_first = (self.bias_correction, self.bias_note)
        self.prepared = self.bias_plain
        self._quantize(out, requested)
        return float(self.bias_correction["val_metric"]["without"])

    def _sensitivity(
        self, graph: onnx.ModelProto, layers: list[str], candidates: list[str]
    ) -> dict[str, float]:
        """Metric drop with only one layer quantized, for each layer, on at most
        ``SENSITIVITY_ROWS`` val samples (a ranking for auto_exclude, which then checks its choice
        on the whole val split). Dynamic mode measures every layer in one session (see
        :mod:`._sensitivity`); the other modes quantize the model once per layer."""
        ctx, cfg = self.ctx, self.cfg
        val = ctx.task.data.val
        rows = sample_rows(n_rows(val.x), SENSITIVITY_ROWS, ctx.seed)
        x = take(val.x, rows)
        assert val.y is not None
        y = take(val.y, rows)
        threads = ctx.measure_config.threads
        total = len(candidates)
        ctx.log(f"  sensitivity of {total} layers on {len(rows)} val samples")

        def score(outputs: np.ndarray) -> float:
            return ctx.task.metric(outputs, y)

        # a bar in the terminal; log.txt keeps a line per layer (``sensitivity 3/12: drop ...``)
        with ctx.progress("sensitivity", total) as step:

            def report(k: int, n: int, name: str, drop: float) -> None:
                step.advance(info=f"drop {drop:+.4f}: {layer_label(name)}")

            if cfg.mode == "dynamic":
                _, out = dynamic_sensitivity(
                    graph,
                    candidates,
                    x,
                    score,
                    lambda base, value: self._drop(value, base),
                    per_channel=cfg.per_channel,
                    reduce_range=self.reduce_range,
                    threads=threads,
                    progress=report,
                )
                return out
            base = score(OnnxRunner(self.prepared, threads=threads).predict(x))
            out = {}
            with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
                for k, name in enumerate(candidates, 1):
                    path = self._quantize(Path(tmp) / "one.onnx", [n for n in layers if n != name])
                    value = score(OnnxRunner(path, threads=threads).predict(x))
                    out[name] = self._drop(value, base)
                    report(k, total, name, out[name])
        return out

    def _static_tensors(
        self,
        out: Path,
        requested: list[str],
        value: float,
        reference: float,
        per_eval: float,
        can_exclude: bool,
    ) -> tuple[float, list[QdqPair], dict[str, float]]:
        """Tensor-level sensitivity and auto_exclude for static mode (see :mod:`._tensors`).

        Every QDQ pair of the quantized model is a candidate: activations around Add, Concat,
        Resize, Sigmoid, Mul, ConvTranspose and the output head as well as Conv/Gemm/MatMul inputs
        and weights. One session measures each tensor's drop when rounded alone on at most
        ``SENSITIVITY_ROWS`` val samples and the shortest prefix of that ranking that holds the
        budget there; the stage keeps that prefix float, checks it on the whole val split (growing
        it while it does not hold), and times the mixed-precision model against the float one at
        batch 1. Returns the val metric kept, the pairs kept float, and the sensitivity."""
        cfg, ctx = self.cfg, self.ctx
        metric = ctx.task.metric.name
        raw = self._quantize(self.work / "qdq-named.onnx", requested, compact=False)
        model = onnx.load(str(raw))
        pairs = qdq_pairs(model)
        # Each tensor costs one evaluation of the (unfused, so slower) switchable graph.
        estimate = 2 * len(pairs) * per_eval
        want = (
            cfg.sensitivity
            and len(pairs) <= MAX_SENSITIVITY_TENSORS
            and estimate <= SENSITIVITY_SECONDS
        )
        if not pairs or not (want or can_exclude):
            if cfg.sensitivity and pairs:
                self.notes.append(
                    f"Per-tensor sensitivity skipped: it would take about {estimate:.0f} s "
                    f"({len(pairs)} quantized tensors), more than {SENSITIVITY_SECONDS:.0f} s, and "
                    "the quantized model already holds max_metric_drop."
                )
            return value, [], {}
        val = ctx.task.data.val
        rows = sample_rows(n_rows(val.x), SENSITIVITY_ROWS, ctx.seed)
        x = take(val.x, rows)
        assert val.y is not None
        y = take(val.y, rows)
        by_tensor = {p.tensor: p for p in pairs}
        ctx.log(f"  sensitivity of {len(pairs)} quantized tensors on {len(rows)} val samples")

        # a bar in the terminal; log.txt keeps a line per tensor (``sensitivity 17/133: drop ...``)
        with ctx.progress("sensitivity", len(pairs)) as step:

            def report(k: int, n: int, tensor: str, drop: float) -> None:
                step.advance(info=f"drop {drop:+.4f}: {by_tensor[tensor].describe()}")

            found = static_sensitivity(
                model,
                onnx.load(str(self.prepared)),
                pairs,
                x,
                lambda outputs: ctx.task.metric(outputs, y),
                lambda base, v: self._drop(v, base),
                ctx.constraints.allows,
                threads=ctx.measure_config.threads,
                progress=report,
            )
        del model
        # Reported by what each tensor is (``output of Add /blocks.3/Add (module blocks.3)``).
        sensitivity: dict[str, float] = {}
        for tensor, alone in found.alone.items():
            label = by_tensor[tensor].describe()
            sensitivity[label if label not in sensitivity else f"{label} [{tensor}]"] = alone
        if not can_exclude:
            return value, [], sensitivity
        order = list(found.alone)
        k = max(found.enough, 1)
        with ctx.progress("auto_exclude: checking on the whole val split") as step:
            while True:
                step.update(f"{k} of {len(order)} tensors float")
                self._quantize(out, requested, keep_float=order[:k])
                value = ctx.evaluate(out, "val")
                ctx.log(f"  kept {k} of {len(order)} tensors float: val {metric} {value:.4f}")
                if ctx.constraints.allows(self._drop(value, reference)) or k >= len(order):
                    break
                k = min(len(order), k + max(1, k // 2))
        drop = self._drop(value, reference)
        kept = [by_tensor[t] for t in order[:k]]
        if k >= len(order):  # every tensor float is the float model: no int8 holds the budget
            drop = max(drop, self._drop(found.int8_score, found.float_score))
        if k >= len(order) or not ctx.constraints.allows(drop):
            self._quantize(out, requested)
            value = ctx.evaluate(out, "val")
            worst = listed_once([by_tensor[t].describe() for t in order[:5]], limit=5)
            self.notes.append(
                f"auto_exclude measured all {len(pairs)} quantized tensors (activations and weights) "
                f"one at a time and kept the most sensitive float, {k} of them, before the val "
                f"{metric} drop held max_metric_drop {ctx.max_metric_drop}: the loss is spread over "
                f"every rounded tensor (most sensitive: {worst}), so no mixed-precision int8 model "
                "holds the budget and none is kept float."
            )
            return value, [], sensitivity
        kinds = Counter(p.producer_op or "input" for p in kept if p.kind == "activation")
        weights = sum(p.kind == "weight" for p in kept)
        mix = ", ".join(
            [f"{op} x{n}" for op, n in kinds.most_common()]
            + ([f"weights x{weights}"] if weights else [])
        )
        self.notes.append(
            f"auto_exclude kept {len(kept)} of {len(pairs)} quantized tensors float (mixed "
            f"precision: int8 elsewhere), the most sensitive when rounded alone on {len(rows)} val "
            f"samples ({mix}): {listed_once([p.describe() for p in kept])}; val {metric} drop "
            f"{drop:.4f} holds max_metric_drop {ctx.max_metric_drop}."
        )
        self.notes.append(self._mixed_speed_note(out, x))
        return value, kept, sensitivity

    def _mixed_speed_note(self, out: Path, x: Any) -> str:
        """The mixed-precision model against the float one at batch 1, timed side by side."""
        ctx = self.ctx
        mc = ctx.measure_config
        cfg = MeasureConfig(
            threads=mc.threads,
            batch_sizes=[1],
            warmup=mc.warmup,
            repeats=mc.repeats,
            max_seconds=mc.max_seconds,
            memory=False,
        )
        with ctx.progress("timing mixed precision against float side by side") as step:
            ratio = paired_latency_ratio(self.prepared, out, x, cfg, progress=step.update)[1]
        if ratio > 1.0:
            return (
                f"The mixed-precision model is slower than float at batch 1 ({ratio:.2f}x the float "
                "p50, timed side by side): the Q/DQ conversions around the ops that stay float "
                "cost more than the int8 kernels save."
            )
        return (
            f"The mixed-precision model runs at {ratio:.2f}x the float p50 latency at batch 1 "
            "(timed side by side)."
        )

    def _auto_exclude(
        self,
        out: Path,
        requested: list[str],
        sensitivity: dict[str, float],
        value: float,
        reference: float,
    ) -> tuple[float, list[str]]:
        """Keep the most sensitive layers float, one at a time, until max_metric_drop holds on val."""
        ctx = self.ctx
        order = sorted(sensitivity, key=lambda n: -sensitivity[n])
        auto: list[str] = []
        # at most one try per layer; log.txt keeps a line per try (``kept ... float: val ...``)
        with ctx.progress("auto_exclude", len(order)) as step:
            for name in order:
                auto.append(name)
                self._quantize(out, [*requested, *auto])
                value = ctx.evaluate(out, "val")
                step.advance(
                    info=f"kept {layer_label(name)} float: val {ctx.task.metric.name} {value:.4f}"
                )
                if ctx.constraints.allows(self._drop(value, reference)):
                    break
        drop = self._drop(value, reference)
        names = ", ".join(layer_label(n) for n in auto)
        if ctx.constraints.allows(drop):
            self.notes.append(
                f"auto_exclude kept {len(auto)} most sensitive layer(s) float ({names}) so that the val "
                f"{ctx.task.metric.name} drop ({drop:.4f}) stays within max_metric_drop {ctx.max_metric_drop}."
            )
            return value, auto
        # Every layer float and still over budget: exclusion bought nothing, so keep them quantized.
        self._quantize(out, requested)
        value = ctx.evaluate(out, "val")
        self.notes.append(
            f"auto_exclude tried keeping every quantizable layer float ({names}) and the val "
            f"{ctx.task.metric.name} still dropped {drop:.4f} > {ctx.max_metric_drop}, so none is "
            "excluded: the loss is not in one layer's weights (the activations or the tensors left "
            "quantized between layers carry it)."
        )
        return value, []

    def _fp16_speed_note(self, path: Path) -> list[str]:
        ctx = self.ctx
        before = ctx.measure(self.prepared, "val")
        after = ctx.measure(path, "val")
        size = before.size_bytes / after.size_bytes
        ratios = {b: after.latency[b].p50 / before.latency[b].p50 for b in sorted(after.latency)}
        timing = ", ".join(f"batch {b}: {r:.2f}x the float32 latency" for b, r in ratios.items())
        faster = all(r < 1.0 for r in ratios.values())
        if faster:
            return [f"fp16 is {size:.1f}x smaller and faster on this CPU ({timing})."]
        return [
            (
                f"fp16 is {size:.1f}x smaller but not faster on this CPU ({timing}): ONNX Runtime's "
                "CPU provider has few float16 kernels, so it casts to float32 around them."
            )
        ]


def _layer_nodes(graph: onnx.ModelProto, mode: str) -> list[onnx.NodeProto]:
    """The nodes ``exclude`` may name: compute nodes, and in dynamic mode embedding tables too."""
    return compute_nodes(graph) + (embedding_nodes(graph) if mode == "dynamic" else [])
