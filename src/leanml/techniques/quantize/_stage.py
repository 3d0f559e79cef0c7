"""The ``quantize`` stage: int8 (dynamic, static, quantization-aware training) or float16, deployed
as an ONNX model that ONNX Runtime runs with its int8 (or fp16) kernels.

Every mode ends in an ONNX file; its notes say how many Conv/MatMul/Gemm nodes ONNX Runtime runs in
int8 after fusing the graph, and why the others stayed float. Sensitivity is measured on up to
``SENSITIVITY_ROWS`` validation samples: static mode rounds each quantized tensor (QDQ pair) alone in
one session, dynamic mode switches layers in one session, fp16 quantizes each layer alone; with
``auto_exclude`` the most sensitive are kept float until ``max_metric_drop`` holds. Static and dynamic
mode end by keeping the fastest format that holds the budget (see :mod:`._formats`).
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import onnx

from ...data import n_rows
from ...errors import InvalidInputError, StageError
from ...models import Model
from ...runtime import to_onnx
from ...search import Choice
from ...task import Task
from .._base import Stage, StageContext, StageResult, register_stage
from . import _plan
from ._config import QUANTIZED_OPS, QuantizeConfig, reduce_range_for
from ._exclude import Exclusion, ExclusionSteps
from ._formats import FormatChoice
from ._notes import op_notes, sensitivity_plot
from ._onnx import (
    DYNAMIC_OPS,
    Prepared,
    compute_nodes,
    embedding_nodes,
    gemm_to_matmul,
    layer_label,
    match_layers,
    prepare,
)
from ._ops import OpCount, count_ops
from ._qat import apply_qat, excluded_modules, quantizable_layers
from ._speed import SpeedSteps
from ._tensors import float_nodes_of


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
    plan_order: ClassVar[int | None] = 50  # last: every earlier stage trains in float

    @classmethod
    def plan_choices(cls, task: Task, model: Model, *, epochs: int, objective: str) -> list[Choice]:
        return _plan.choices(task, model, epochs=epochs, objective=objective)

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


@dataclass
class _FirstQuantization:
    """The stage's first int8 (or fp16) model, its val metric and the float graph's, and what one
    quantization and one evaluation cost (sensitivity's time estimate)."""

    out: Path
    value: float
    float_val: float
    quantize_seconds: float
    eval_seconds: float


class _OnnxQuantizer(ExclusionSteps, SpeedSteps):
    """Static, dynamic and fp16 on the ONNX graph: prepare the float graph, quantize it, run the
    fidelity passes (:mod:`._fidelity`), sensitivity and auto_exclude (:mod:`._exclude`), choose
    the format to write (:mod:`._speed`), and say what was done."""

    def run(self) -> StageResult:
        cfg, ctx = self.cfg, self.ctx
        prepared = self._prepare()
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
        first = self._first_quantization(requested)
        value, graph = self._fidelity_passes(
            first.out, requested, first.value, ctx.baseline_val_metric, graph
        )
        kept = self._exclude(
            first.out,
            requested,
            graph,
            layers,
            value,
            first.float_val,
            first.eval_seconds,
            first.quantize_seconds,
        )
        # The notes and details below describe the format kept, which may be another one.
        written = self._choose_format(
            first.out, kept.value, first.float_val, prepared.path, requested, kept.pairs
        )
        return self._result(prepared, graph, tables, requested, first, kept, written)

    def _prepare(self) -> Prepared:
        """Export the float ONNX model and prepare it for the quantizer (``self.prepared``)."""
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
        return prepared

    def _first_quantization(self, requested: list[str]) -> _FirstQuantization:
        """Quantize the prepared graph with ``requested`` float and evaluate it and the float graph
        on val."""
        cfg, ctx = self.cfg, self.ctx
        float_val = ctx.evaluate(self.prepared, "val")
        out = ctx.work_dir / f"quantized-{cfg.mode}.onnx"
        started = time.perf_counter()
        # static mode calibrates the activation ranges here (later quantizations reuse them)
        with ctx.progress("calibrating" if cfg.mode == "static" else f"quantizing ({cfg.mode})"):
            self._quantize(out, requested)
        evaluated = time.perf_counter()
        value = ctx.evaluate(out, "val")
        eval_seconds = time.perf_counter() - evaluated
        ctx.log(f"  {cfg.mode}: val {ctx.task.metric.name} {value:.4f} (float {float_val:.4f})")
        return _FirstQuantization(out, value, float_val, evaluated - started, eval_seconds)

    def _result(
        self,
        prepared: Prepared,
        graph: onnx.ModelProto,
        tables: list[str],
        requested: list[str],
        first: _FirstQuantization,
        kept: Exclusion,
        written: FormatChoice,
    ) -> StageResult:
        """The model written, and notes and details that say what was done to it."""
        cfg, ctx = self.cfg, self.ctx
        out, value = written.path, written.value
        ops = self._op_counts(graph, tables, requested, kept, written)
        details: dict[str, Any] = {
            "mode": cfg.mode,
            "opset": {"original": prepared.original_opset, "quantized": prepared.opset},
            "compute_nodes": ops.total,
            "int8_nodes": ops.int8 if cfg.mode != "fp16" else [],
            "float_nodes": ops.float if cfg.mode != "fp16" else {},
            "kernels": ops.kernels,
            "excluded": requested,
            "auto_excluded": kept.layers or [p.tensor for p in kept.pairs],
            "kept_float_tensors": [
                {
                    "tensor": p.tensor,
                    "kind": p.kind,
                    "producer": p.producer,
                    "consumers": p.consumers,
                }
                for p in kept.pairs
            ],
            "sensitivity": (
                dict(kept.sensitivity)
                if cfg.mode == "static"
                else {layer_label(k): v for k, v in kept.sensitivity.items()}
            ),
            "val_metric": {"float": first.float_val, "quantized": value},
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
            [
                sensitivity_plot(
                    kept.sensitivity, ctx.task.metric.name, per_tensor=cfg.mode == "static"
                )
            ]
            if kept.sensitivity
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

    def _op_counts(
        self,
        graph: onnx.ModelProto,
        tables: list[str],
        requested: list[str],
        kept: Exclusion,
        written: FormatChoice,
    ) -> OpCount:
        """Count the written model's int8 and float ops, with why each float one stayed float, and
        add the notes on them (and on fp16's speed)."""
        cfg = self.cfg
        out = written.path
        reasons = {n: "kept float: listed in quantize.exclude" for n in requested}
        reasons.update(
            {n: "kept float by auto_exclude (most sensitive layer)" for n in kept.layers}
        )
        reasons.update({n: r for n, r in float_nodes_of(kept.pairs).items() if n not in reasons})
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
            floats = [n for n in tables if n in reasons]
            int8_tables = [layer_label(n) for n in tables if n not in reasons]
            self.notes.append(
                f"Embedding tables stored in int8 ({len(int8_tables)} of {len(tables)}): "
                f"{', '.join(int8_tables) or 'none'}"
                + (f"; kept float: {', '.join(layer_label(n) for n in floats)}." if floats else ".")
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
        return ops


def _layer_nodes(graph: onnx.ModelProto, mode: str) -> list[onnx.NodeProto]:
    """The nodes ``exclude`` may name: compute nodes, and in dynamic mode embedding tables too."""
    return compute_nodes(graph) + (embedding_nodes(graph) if mode == "dynamic" else [])
