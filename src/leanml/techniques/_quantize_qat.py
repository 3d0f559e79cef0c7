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
import torch.nn as nn
import torch.nn.functional as F
from onnx import helper, numpy_helper

from .._utils import atomic_path
from ..data import Inputs, n_rows, take
from ..errors import InvalidInputError
from ..training import forward, to_tensor
from ._quantize_onnx import compact_names

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


def _constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    values = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def _drop_relu_before_quantize(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    """Remove a Relu whose only consumer is a uint8 QuantizeLinear with zero point 0: quantizing
    clamps negatives to 0 anyway, and without the Relu ONNX Runtime fuses the layer before it into
    an int8 kernel (ONNX Runtime's own quantizer drops these Relus the same way)."""
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for i in node.input:
            consumers.setdefault(i, []).append(node)
    outputs = {o.name for o in graph.output}
    drop = []
    for node in graph.node:
        users = consumers.get(node.output[0], []) if node.op_type == "Relu" else []
        if len(users) != 1 or users[0].op_type != "QuantizeLinear" or node.output[0] in outputs:
            continue
        zp = values.get(users[0].input[2]) if len(users[0].input) > 2 else None
        if zp is None or zp.dtype != np.uint8 or np.any(zp != 0):
            continue
        users[0].input[0] = node.input[0]
        drop.append(node)
    for node in drop:
        graph.node.remove(node)


def _quantize_biases(graph: onnx.GraphProto, values: dict[str, np.ndarray]) -> None:
    """Store Conv/Gemm float biases as int32 with scale input_scale x weight_scale, as ONNX Runtime's
    quantizer does: its QGemm fusion needs the bias dequantized from int32."""
    producers = {o: n for n in graph.node for o in n.output}
    added: list[onnx.NodeProto] = []
    for node in graph.node:
        if (
            node.op_type not in ("Conv", "Gemm")
            or len(node.input) < 3
            or node.input[2] not in values
        ):
            continue
        dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
        if not (dq_x and dq_w and dq_x.op_type == dq_w.op_type == "DequantizeLinear"):
            continue
        if dq_x.input[1] not in values or dq_w.input[1] not in values:
            continue
        scale = (
            values[dq_x.input[1]].astype(np.float64) * values[dq_w.input[1]].astype(np.float64)
        ).reshape(-1)
        bias = values[node.input[2]].astype(np.float64).reshape(-1)
        if scale.size == 1:
            scale = np.full_like(bias, scale[0])
        q = np.clip(np.round(bias / scale), -(2**31), 2**31 - 1).astype(np.int32)
        name = node.input[2]
        graph.initializer.extend(
            [
                numpy_helper.from_array(q, f"{name}_int32"),
                numpy_helper.from_array(scale.astype(np.float32), f"{name}_int32_scale"),
                numpy_helper.from_array(np.zeros_like(q), f"{name}_int32_zero_point"),
            ]
        )
        added.append(
            helper.make_node(
                "DequantizeLinear",
                [f"{name}_int32", f"{name}_int32_scale", f"{name}_int32_zero_point"],
                [f"{name}_dequantized"],
                name=f"{node.name}_bias_dequantize",
                axis=0,
            )
        )
        node.input[2] = f"{name}_dequantized"
    if added:
        nodes = [*added, *graph.node]
        del graph.node[:]
        graph.node.extend(nodes)


def fold_weight_quantizers(path: Path) -> int:
    """Replace QuantizeLinear nodes on constant weights by int8 initializers (what a deployed int8
    model stores); returns how many were folded."""
    model = onnx.load(str(path))
    graph = model.graph
    values = _constant_values(graph)
    keep: list[onnx.NodeProto] = []
    folded = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not all(i in values for i in node.input if i):
            keep.append(node)
            continue
        x, scale = (
            values[node.input[0]].astype(np.float64),
            values[node.input[1]].astype(np.float64),
        )
        zp = (
            values[node.input[2]]
            if len(node.input) > 2 and node.input[2]
            else np.zeros((), np.uint8)
        )
        axis = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * x.ndim
            shape[axis] = -1
            scale, zp_b = scale.reshape(shape), zp.astype(np.int64).reshape(shape)
        else:
            zp_b = zp.astype(np.int64)
        info = np.iinfo(zp.dtype)
        q = np.clip(np.round(x / scale) + zp_b, info.min, info.max).astype(zp.dtype)
        graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded += 1
    del graph.node[:]
    graph.node.extend(keep)
    _drop_relu_before_quantize(graph, _constant_values(graph))
    _quantize_biases(graph, _constant_values(graph))
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    inits = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    consts = [n for n in graph.node if n.op_type != "Constant" or n.output[0] in used]
    del graph.node[:]
    graph.node.extend(consts)
    compact_names(model)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    return folded


def keep_float(src: Path, dst: Path, names: Sequence[str]) -> None:
    """Make the named compute nodes of a QDQ model compute in float without retraining: their
    int8 weights and int32 biases are dequantized into float initializers, and their activation
    input is clipped to its learned range instead of rounded (the layer was trained on that range).
    Other layers stay int8."""
    model = onnx.load(str(src))
    graph = model.graph
    values = _constant_values(graph)
    producers = {o: n for n in graph.node for o in n.output}
    added: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in names:
            continue
        for i, name in enumerate(node.input):
            dq = producers.get(name)
            if dq is None or dq.op_type != "DequantizeLinear":
                continue
            if dq.input[0] in values:  # a stored weight or bias: dequantize it once
                x = values[dq.input[0]].astype(np.float64)
                scale = values[dq.input[1]].astype(np.float64)
                zp = (
                    values[dq.input[2]].astype(np.float64)
                    if len(dq.input) > 2 and dq.input[2]
                    else 0.0
                )
                axis = next(
                    (helper.get_attribute_value(a) for a in dq.attribute if a.name == "axis"), 1
                )
                if np.ndim(scale) == 1 and np.size(scale) > 1:
                    shape = [1] * x.ndim
                    shape[axis] = -1
                    scale = scale.reshape(shape)
                    zp = np.reshape(zp, shape) if np.ndim(zp) else zp
                real = ((x - zp) * scale).astype(np.float32)
                graph.initializer.append(numpy_helper.from_array(real, f"{name}_float"))
                node.input[i] = f"{name}_float"
            else:  # an activation: clip to the learned range instead of rounding to it
                q = producers.get(dq.input[0])
                if q is None or q.op_type != "QuantizeLinear" or q.input[1] not in values:
                    continue
                q_scale = float(values[q.input[1]].reshape(-1)[0])
                zp_arr = values.get(q.input[2]) if len(q.input) > 2 else None
                zero = float(zp_arr.reshape(-1)[0]) if zp_arr is not None else 0.0
                info = np.iinfo(zp_arr.dtype if zp_arr is not None else np.uint8)
                low, high = (info.min - zero) * q_scale, (info.max - zero) * q_scale
                graph.initializer.extend(
                    [
                        numpy_helper.from_array(np.array(low, np.float32), f"{name}_low"),
                        numpy_helper.from_array(np.array(high, np.float32), f"{name}_high"),
                    ]
                )
                added.append(
                    helper.make_node(
                        "Clip", [q.input[0], f"{name}_low", f"{name}_high"], [f"{name}_clipped"]
                    )
                )
                node.input[i] = f"{name}_clipped"
    _insert_before_users(graph, added)
    _drop_unused(graph)
    onnx.checker.check_model(model)
    with atomic_path(dst) as tmp:
        onnx.save(model, str(tmp))


def _insert_before_users(graph: onnx.GraphProto, added: list[onnx.NodeProto]) -> None:
    """Insert nodes right after the node producing their input (keeps the graph sorted)."""
    for new in added:
        nodes = list(graph.node)
        at = next((k + 1 for k, n in enumerate(nodes) if new.input[0] in n.output), 0)
        nodes.insert(at, new)
        del graph.node[:]
        graph.node.extend(nodes)


def _drop_unused(graph: onnx.GraphProto) -> None:
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            break
        for n in dead:
            graph.node.remove(n)
    used = {i for n in graph.node for i in n.input}
    keep = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
