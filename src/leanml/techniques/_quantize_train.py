"""The ``qat`` mode of the quantize stage: fake-quantize, fine-tune with the shared trainer, export a
QDQ model with the learned scales, and check what ONNX Runtime runs in int8."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .._utils import atomic_path
from ..data import n_rows, take
from ..errors import InvalidInputError, StageError
from ..models import Model
from ..runtime import torch_to_onnx
from ._base import StageContext, StageResult
from ._quantize_onnx import compute_nodes, layer_label
from ._quantize_ops import count_ops
from ._quantize_qat import (
    calibrate,
    check_qat_model,
    freeze,
    insert_fake_quant,
    quantizable_layers,
)
from ._quantize_qdq import fold_weight_quantizers, keep_float

if TYPE_CHECKING:
    from ._quantize import QuantizeConfig


def _excluded_modules(names: list[str], layers: list[str]) -> list[str]:
    """Module paths for ``quantize.exclude`` entries (module paths or exported node names)."""
    out = []
    for name in names:
        module = name if name in layers else layer_label(name)
        if module not in layers:
            shown = ", ".join(layers[:12]) + (", ..." if len(layers) > 12 else "")
            raise InvalidInputError(
                f"quantize.exclude names {name!r}, which is not a Conv/Linear layer of the model; layers are: {shown}"
            )
        out.append(module)
    return out


def apply_qat(
    cfg: QuantizeConfig, model: Model, ctx: StageContext, *, reduce_range: bool
) -> StageResult:
    from ._quantize import op_notes, sensitivity_plot

    net = model.torch
    if net is None:
        raise InvalidInputError(
            "quantize mode 'qat' needs a PyTorch model; use 'static' or 'dynamic' for ONNX files"
        )
    check_qat_model(net)
    excluded = _excluded_modules(cfg.exclude, quantizable_layers(net))
    wrapped = insert_fake_quant(net, exclude=excluded, reduce_range=reduce_range)
    train = ctx.task.data.train
    rng = np.random.default_rng(ctx.seed)
    index = np.sort(rng.permutation(n_rows(train.x))[: cfg.calibration.samples])
    calibrate(net, take(train.x, index))
    ctx.log(f"  fake-quantized {len(wrapped)} layers; fine-tuning")
    train_result = ctx.fit(net, cfg.train, description="quantization-aware training")
    freeze(net)

    out = ctx.work_dir / "quantized-qat.onnx"
    with atomic_path(out) as tmp:
        try:
            torch_to_onnx(net, ctx.task.data.val.x, tmp)
        except Exception as e:
            raise StageError(
                f"exporting the QAT model to ONNX failed: {str(e).splitlines()[0][:300]}"
            ) from e
        folded = fold_weight_quantizers(tmp)
    value = ctx.evaluate(out, "val")
    drop = ctx.task.metric.drop(ctx.baseline_val_metric, value)
    ctx.log(f"  qat: val {ctx.task.metric.name} {value:.4f}")

    graph = onnx.load(str(out)).graph
    reasons = {
        n.name: "kept float: listed in quantize.exclude"
        for n in graph.node
        if layer_label(n.name) in excluded
    }
    layers = [n.name for n in compute_nodes(onnx.load(str(out))) if n.name not in reasons]
    sensitivity: dict[str, float] = {}
    auto: list[str] = []
    if drop > ctx.max_metric_drop + 1e-12 and cfg.auto_exclude and layers:
        sensitivity, auto, value = _auto_exclude(out, layers, ctx, value)
        drop = ctx.task.metric.drop(ctx.baseline_val_metric, value)
        reasons.update({n: "kept float by auto_exclude (most sensitive layer)" for n in auto})
    ops = count_ops(out, [n.name for n in compute_nodes(onnx.load(str(out)))], excluded=reasons)
    notes = [
        (
            f"Quantization-aware training: {len(wrapped)} Conv/Linear layers fake-quantized (weights int8 "
            f"per channel, inputs uint8 with learned scales), fine-tuned {train_result.stopped_epoch} "
            f"epoch(s); {folded} weight tensors stored as int8."
        ),
        *op_notes(ops, "qat", reduce_range),
    ]
    if auto:
        notes.append(
            f"auto_exclude kept {len(auto)} most sensitive layer(s) float after training "
            f"({', '.join(layer_label(n) for n in auto)}); val {ctx.task.metric.name} drop {drop:.4f}."
        )
    if sensitivity and not auto:
        notes.append(
            "auto_exclude tried keeping every layer float after training and the val "
            f"{ctx.task.metric.name} still broke max_metric_drop, so none is kept float."
        )
    if drop > ctx.max_metric_drop + 1e-12:
        notes.append(
            f"The QAT model drops {drop:.4f} {ctx.task.metric.name} on val, more than max_metric_drop "
            f"{ctx.max_metric_drop}: list sensitive layers in quantize.exclude (they are then trained "
            "float), or train longer (quantize.train)."
        )
    details = {
        "mode": "qat",
        "compute_nodes": ops.total,
        "int8_nodes": ops.int8,
        "float_nodes": ops.float,
        "kernels": ops.kernels,
        "excluded": excluded,
        "auto_excluded": auto,
        "sensitivity": {layer_label(k): v for k, v in sensitivity.items()},
        "val_metric": {"quantized": value},
        "reduce_range": reduce_range,
    }
    result = Model(
        onnx=out, model_args=dict(model.model_args), factory=model.factory, info=dict(model.info)
    )
    result.info["quantize"] = {"mode": "qat"}
    plots = [sensitivity_plot(sensitivity, ctx.task.metric.name)] if sensitivity else []
    return StageResult(result, notes=notes, details=details, plots=plots, train_result=train_result)


def _auto_exclude(
    out: Path, layers: list[str], ctx: StageContext, value: float
) -> tuple[dict[str, float], list[str], float]:
    """Per-layer sensitivity of the trained QDQ model (only that layer int8, the others float,
    no retraining), then keep the most sensitive layers float one at a time until the constraint
    holds on val."""
    import tempfile

    metric = ctx.task.metric
    sensitivity: dict[str, float] = {}
    with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
        one = Path(tmp) / "one.onnx"
        keep_float(out, one, layers)
        reference = ctx.evaluate(one, "val")
        for name in layers:
            keep_float(out, one, [n for n in layers if n != name])
            sensitivity[name] = metric.drop(reference, ctx.evaluate(one, "val"))
        auto: list[str] = []
        trained = Path(tmp) / "trained.onnx"
        trained.write_bytes(out.read_bytes())
        for name in sorted(sensitivity, key=lambda n: -sensitivity[n]):
            auto.append(name)
            keep_float(trained, out, auto)
            value = ctx.evaluate(out, "val")
            ctx.log(f"  kept {layer_label(name)} float: val {metric.name} {value:.4f}")
            if metric.drop(ctx.baseline_val_metric, value) <= ctx.max_metric_drop + 1e-12:
                break
        else:  # every layer float did not restore the metric: exclusion buys nothing, keep int8
            out.write_bytes(trained.read_bytes())
            auto, value = [], ctx.evaluate(out, "val")
            ctx.log("  keeping layers float did not restore the metric; none kept float")
    return sensitivity, auto, value
