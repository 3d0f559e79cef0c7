"""Quantization-aware training: fake-quantize a PyTorch model, fine-tune it, export a QDQ ONNX model.

Each Conv/Linear becomes a :class:`QuantLayer`: its input is fake-quantized per tensor (uint8,
asymmetric, with a learned scale: LSQ on ``log(scale)``) and its weight per output channel (int8,
symmetric). Average pools get an input quantizer too, so ONNX Runtime can run them in int8.
The fake-quant ops are PyTorch's own (``torch.fake_quantize_*``); in eval mode they use frozen
scales, so ``torch.onnx.export`` writes them as QuantizeLinear/DequantizeLinear pairs with exactly
the learned scales. The weight QuantizeLinear nodes are then folded into int8 initializers.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from torch import nn

from ..._utils import atomic_path
from ...data import Inputs, n_rows, take
from ...errors import InvalidInputError, StageError
from ...models import Model
from ...runtime import torch_to_onnx
from ...training import forward, to_tensor
from .._base import StageContext, StageResult
from ._config import QuantizeConfig
from ._layers import compute_nodes, layer_label
from ._notes import op_notes, sensitivity_plot
from ._ops import count_ops
from ._qdq import fold_weight_quantizers, keep_float

_QUANTIZABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)
_POOLS = (nn.AvgPool2d, nn.AdaptiveAvgPool2d)


class ActQuant(nn.Module):
    """Per-tensor uint8 fake quantization of activations with a learned scale.

    States: ``observing`` (record the range, pass values through), then training (learned scale,
    straight-through rounding), then eval (frozen scale: exported as QuantizeLinear/DequantizeLinear).
    """

    def __init__(self) -> None:
        super().__init__()
        self.log_scale = nn.Parameter(torch.zeros(()))
        self.register_buffer("zero_point", torch.zeros(()))
        self.register_buffer("low", torch.tensor(math.inf))
        self.register_buffer("high", torch.tensor(-math.inf))
        self.observing = False

    def start_observing(self) -> None:
        self.observing = True
        self.low.fill_(math.inf)
        self.high.fill_(-math.inf)

    def stop_observing(self) -> None:
        """Initialise the scale and zero point from the observed range (which must include 0)."""
        self.observing = False
        low = min(float(self.low), 0.0)
        high = max(float(self.high), 0.0)
        scale = max((high - low) / 255.0, 1e-8)
        with torch.no_grad():
            self.log_scale.fill_(math.log(scale))
            self.zero_point.fill_(float(min(max(round(-low / scale), 0), 255)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                self.low.copy_(torch.minimum(self.low, x.min()))
                self.high.copy_(torch.maximum(self.high, x.max()))
            return x
        if self.training:
            grad_factor = 1.0 / math.sqrt(x[0].numel() * 255.0)
            scale = self.log_scale.exp().reshape(1)
            return torch._fake_quantize_learnable_per_tensor_affine(
                x, scale, self.zero_point.reshape(1), 0, 255, grad_factor
            )
        return torch.fake_quantize_per_tensor_affine(
            x, float(self.log_scale.exp()), int(self.zero_point), 0, 255
        )


class QuantLayer(nn.Module):
    """A Conv/Linear with fake-quantized input (per tensor) and weight (per output channel)."""

    def __init__(self, layer: nn.Module, *, weight_limit: int = 127) -> None:
        super().__init__()
        self.layer = layer
        self.input_quant = ActQuant()
        self.weight_limit = weight_limit
        self.register_buffer("weight_scale", torch.ones(layer.weight.shape[0]))

    def _weight_scale(self) -> torch.Tensor:
        w = self.layer.weight.detach()
        return (w.abs().reshape(w.shape[0], -1).amax(1) / self.weight_limit).clamp_min(1e-8)

    def freeze(self) -> None:
        """Fix the weight scales at their final values (what the export writes)."""
        self.weight_scale.copy_(self._weight_scale())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_quant(x)
        scale = self._weight_scale() if self.training else self.weight_scale
        zero = torch.zeros_like(scale, dtype=torch.int32)
        # ONNX allows (-128, 127) only; a symmetric scale keeps values within +-weight_limit anyway.
        w = torch.fake_quantize_per_channel_affine(self.layer.weight, scale, zero, 0, -128, 127)
        layer = self.layer
        if isinstance(layer, nn.Linear):
            return F.linear(x, w, layer.bias)
        assert isinstance(layer, nn.Conv1d | nn.Conv2d)
        return layer._conv_forward(x, w, layer.bias)


class QuantInput(nn.Module):
    """Fake-quantizes the input of a module (average pools: ONNX Runtime then pools in int8)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self.input_quant = ActQuant()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self.input_quant(x))


def _fold_batchnorm(net: nn.Module) -> int:
    """Fold each BatchNorm that directly follows a Conv in an nn.Sequential into the Conv."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = 0
    for module in net.modules():
        if not isinstance(module, nn.Sequential):
            continue
        keys = list(module._modules)
        for a, b in itertools.pairwise(keys):
            conv, bn = module._modules[a], module._modules[b]
            if isinstance(conv, nn.Conv1d | nn.Conv2d) and isinstance(
                bn, nn.BatchNorm1d | nn.BatchNorm2d
            ):
                module._modules[a] = fuse_conv_bn_eval(conv.eval(), bn.eval())
                module._modules[b] = nn.Identity()
                folded += 1
    return folded


def quantizable_layers(net: nn.Module) -> list[str]:
    return [name for name, m in net.named_modules() if isinstance(m, _QUANTIZABLE)]


def insert_fake_quant(
    net: nn.Module, *, exclude: Sequence[str] = (), reduce_range: bool = False
) -> list[str]:
    """Fold BatchNorms, then wrap every Conv/Linear (but ``exclude``) and average pool in place.

    Returns:
        the module paths of the wrapped Conv/Linear layers.
    """
    _fold_batchnorm(net)
    wrapped: list[str] = []
    targets = [
        (name, m)
        for name, m in net.named_modules()
        if name and (isinstance(m, _QUANTIZABLE) and name not in exclude or isinstance(m, _POOLS))
    ]
    for name, module in targets:
        parent_name, _, attr = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        if isinstance(module, _QUANTIZABLE):
            setattr(parent, attr, QuantLayer(module, weight_limit=63 if reduce_range else 127))
            wrapped.append(name)
        else:
            setattr(parent, attr, QuantInput(module))
    return wrapped


def calibrate(net: nn.Module, x: Inputs, *, batch_size: int = 64, keep: int = 128) -> None:
    """Initialise every activation quantizer's range from ``x``.

    A Conv/Linear input's clipping range is the one (of the observed range and a ladder of
    narrower ones) whose quantization changes the layer's float output least: an outlier channel
    that the layer barely uses is clipped rather than flattening every other channel.
    Average-pool inputs use the observed range.
    """
    quants = [m for m in net.modules() if isinstance(m, ActQuant)]
    layers = [m for m in net.modules() if isinstance(m, QuantLayer)]
    seen: dict[nn.Module, list[torch.Tensor]] = {m: [] for m in layers}

    def hook(module: nn.Module, args: tuple, _out: object) -> None:
        stored = seen[module]
        if sum(len(t) for t in stored) < keep:
            stored.append(args[0].detach()[:keep])

    handles = [m.register_forward_hook(hook) for m in layers]
    for q in quants:
        q.start_observing()
    net.eval()
    try:
        with torch.inference_mode():
            for s in range(0, n_rows(x), batch_size):
                forward(net, to_tensor(take(x, slice(s, s + batch_size))))
    finally:
        for h in handles:
            h.remove()
    for q in quants:
        q.stop_observing()
    for layer in layers:
        if seen[layer]:
            _fit_clipping(layer, torch.cat(seen[layer])[:keep].clone())


def _fit_clipping(layer: QuantLayer, x: torch.Tensor) -> None:
    q = layer.input_quant
    low, high = min(float(q.low), 0.0), max(float(q.high), 0.0)
    if high - low <= 0:
        return
    layer.eval()
    layer.freeze()
    with torch.no_grad():
        q.observing = True  # pass-through: the float reference output
        reference = layer(x)
        q.observing = False
        best: tuple[float, float] | None = None
        best_err = math.inf
        for fraction in (1.0, 0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05, 0.025, 0.01):
            lo, hi = low * fraction, high * fraction
            scale = max((hi - lo) / 255.0, 1e-8)
            zero = float(min(max(round(-lo / scale), 0), 255))
            q.log_scale.fill_(math.log(scale))
            q.zero_point.fill_(zero)
            err = float(((layer(x) - reference) ** 2).mean())
            if err < best_err:
                best, best_err = (math.log(scale), zero), err
        assert best is not None
        q.log_scale.fill_(best[0])
        q.zero_point.fill_(best[1])


def freeze(net: nn.Module) -> None:
    net.eval()
    for m in net.modules():
        if isinstance(m, QuantLayer):
            m.freeze()


def check_qat_model(net: nn.Module) -> None:
    if not quantizable_layers(net):
        raise InvalidInputError(
            "quantize mode 'qat' found no Conv or Linear layer in the model to fake-quantize; use "
            "mode 'dynamic' or 'static' on its ONNX export"
        )


def excluded_modules(names: list[str], layers: list[str]) -> list[str]:
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
    net = model.torch
    if net is None:
        raise InvalidInputError(
            "quantize mode 'qat' needs a PyTorch model; use 'static' or 'dynamic' for ONNX files"
        )
    check_qat_model(net)
    excluded = excluded_modules(cfg.exclude, quantizable_layers(net))
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
    if not ctx.constraints.allows(drop) and cfg.auto_exclude and layers:
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
        *op_notes(ops, int8=True, reduce_range=reduce_range),
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
    if not ctx.constraints.allows(drop):
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
            if ctx.constraints.allows(metric.drop(ctx.baseline_val_metric, value)):
                break
        else:  # every layer float did not restore the metric: exclusion buys nothing, keep int8
            out.write_bytes(trained.read_bytes())
            auto, value = [], ctx.evaluate(out, "val")
            ctx.log("  keeping layers float did not restore the metric; none kept float")
    return sensitivity, auto, value
