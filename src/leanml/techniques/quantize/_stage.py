"""The ``quantize`` stage: int8 (dynamic, static, quantization-aware training) or float16, deployed
as an ONNX model that ONNX Runtime runs with its int8 (or fp16) kernels.

Every mode ends in an ONNX file; its notes say how many Conv/MatMul/Gemm nodes ONNX Runtime runs in
int8 after fusing the graph, and why the others stayed float. QAT fine-tunes the PyTorch model
(:mod:`._qat`). The other modes quantize its ONNX graph in steps over one state
(:class:`._state.QuantizeState`), each asking the mode's strategy (:mod:`._modes`) what differs;
:func:`quantize_onnx` runs them in this order:

1. :func:`_start`: export and prepare the float graph, match ``exclude`` to its layers;
2. :func:`._calibrate.calibrate`: the calibration samples and method (static mode);
3. :func:`_quantize_first`: the first quantized model, and the float graph's val metric;
4. :func:`._smooth.smooth_activations`: SmoothQuant (``smooth``; ``auto`` in dynamic mode);
5. :func:`._bias.correct_bias`: bias correction (static mode);
6. :func:`._exclude.auto_exclude`: sensitivity, and the tensors or layers kept float;
7. :func:`._formats.keep_fastest_format`: the fastest format that holds the budget;
8. :func:`._notes.describe`: the result, its notes and details.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

import onnx

from ...errors import InvalidInputError, StageError
from ...models import Model
from ...runtime import to_onnx
from ...search import Choice
from ...task import Task
from .._base import Stage, StageContext, StageResult, register_stage
from . import _plan
from ._bias import correct_bias
from ._calibrate import METHODS, calibrate
from ._config import QUANTIZED_OPS, QuantizeConfig, reduce_range_for
from ._exclude import auto_exclude
from ._formats import keep_fastest_format
from ._layers import compute_nodes, match_layers
from ._modes import mode_for
from ._notes import describe
from ._onnx import prepare
from ._qat import apply_qat, excluded_modules, quantizable_layers
from ._smooth import smooth_activations
from ._state import QuantizeState, Run


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

    @property
    def _trains(self) -> bool:
        """Mode ``qat`` fine-tunes the PyTorch model (:mod:`._qat`); the others quantize its ONNX
        graph with the strategy :func:`._modes.mode_for` picks."""
        return self.config.mode == "qat"

    def check(self, task: Task) -> None:
        if self._trains and task.model_kind != "torch":
            raise InvalidInputError(
                "quantize mode 'qat' fine-tunes a PyTorch model; this task's model is "
                f"{task.model_kind} ({task.model}); use mode 'static' or 'dynamic' for it"
            )

    def check_model(self, model: Model, task: Task) -> None:
        """``exclude`` names layers of the model: check them before the baseline trains."""
        cfg = self.config
        if not cfg.exclude:
            return
        if model.torch is not None and self._trains:
            excluded_modules(cfg.exclude, quantizable_layers(model.torch))
            return
        with tempfile.TemporaryDirectory(prefix="leanml-check-") as tmp:
            path = Path(model.onnx) if model.form == "onnx" else Path(tmp) / "model.onnx"
            if model.form != "onnx":
                to_onnx(model, task.data.val, path)
            layer_nodes = compute_nodes if self._trains else mode_for(cfg).layer_nodes
            match_layers(cfg.exclude, layer_nodes(onnx.load(str(path))), key="quantize.exclude")

    def check_form(self, model: Model) -> None:
        super().check_form(model)
        if self._trains and model.torch is None:
            raise InvalidInputError(
                "quantize mode 'qat' fine-tunes a PyTorch model; this model is an ONNX file (an "
                "earlier stage or the task made it one); use mode 'static' or 'dynamic'"
            )

    def apply(self, model: Model, ctx: StageContext) -> StageResult:
        cfg = self.config
        if self._trains:
            return apply_qat(cfg, model, ctx, reduce_range=reduce_range_for(cfg.reduce_range))
        return quantize_onnx(cfg, model, ctx)


def quantize_onnx(cfg: QuantizeConfig, model: Model, ctx: StageContext) -> StageResult:
    """Static, dynamic and fp16 on the ONNX graph: the steps of the module docstring, in order."""
    work = ctx.work_dir / "quantize"
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    run = Run(cfg, ctx, mode_for(cfg), work)
    state = _start(run, model)
    calibrate(state, run)
    _quantize_first(state, run)
    smooth_activations(state, run)
    correct_bias(state, run)
    auto_exclude(state, run)
    written = keep_fastest_format(state, run)
    return describe(state, run, model, written)


def _start(run: Run, model: Model) -> QuantizeState:
    """Export the float ONNX model, refuse one that is already quantized, prepare it for the
    mode's quantizer and match ``exclude`` to its layers: the state the steps start from."""
    cfg, ctx, mode = run.cfg, run.ctx, run.mode
    fp32 = ctx.export_onnx(model, run.work / "float.onnx")
    quantized_ops = sorted(
        {n.op_type for n in onnx.load(str(fp32)).graph.node if n.op_type in QUANTIZED_OPS}
    )
    if quantized_ops:
        raise StageError(
            f"the model is already quantized ({', '.join(quantized_ops)} found); quantize a "
            "float model once (an earlier quantize stage was accepted)"
        )
    prepared = prepare(fp32, run.work / "prepared.onnx", preprocess=cfg.preprocess)
    notes = list(prepared.notes)
    if ctx.task.metric_label != ctx.task.metric.name:
        notes.append(
            f"Fidelity is {ctx.task.metric_label}: outputs at padding positions are ignored by "
            "their consumers (mean pooling with the mask, the first token) and not compared."
        )
    notes += mode.prepare(prepared.path)
    graph = onnx.load(str(prepared.path))
    exclude = match_layers(cfg.exclude, mode.layer_nodes(graph), key="quantize.exclude")
    method = cfg.calibration.method
    return QuantizeState(
        prepared=prepared,
        float_graph=prepared.path,
        exclude=exclude,
        out=ctx.work_dir / f"quantized-{mode.name}.onnx",
        # ``auto`` is chosen by the calibrate step; until then (and outside static mode) minmax
        method=METHODS[0] if method == "auto" else method,
        notes=notes,
    )


def _quantize_first(state: QuantizeState, run: Run) -> None:
    """Quantize the float graph with ``exclude`` float (``state.out``) and evaluate it and the float
    graph on val (``state.value``, ``state.float_value``, and what each cost)."""
    ctx, mode = run.ctx, run.mode
    state.float_value = ctx.evaluate(state.float_graph, "val")
    started = time.perf_counter()
    # static mode calibrates the activation ranges here (later quantizations reuse them)
    with ctx.progress("calibrating" if mode.calibrates else f"quantizing ({mode.name})"):
        mode.quantize(
            state.float_graph,
            state.out,
            exclude=state.exclude,
            method=state.method,
            feeds=state.feeds,
        )
    evaluated = time.perf_counter()
    state.value = ctx.evaluate(state.out, "val")
    state.eval_seconds = time.perf_counter() - evaluated
    state.quantize_seconds = evaluated - started
    ctx.log(
        f"  {mode.name}: val {ctx.task.metric.name} {state.value:.4f} "
        f"(float {state.float_value:.4f})"
    )
