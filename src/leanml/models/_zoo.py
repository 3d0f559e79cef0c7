"""Built-in models: an MLP, a small CNN, and a MobileNetV2-style CNN."""

from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import InvalidInputError
from ._registry import register_model


class Standardize(nn.Module):
    """Subtract a mean and divide by a scale, both stored as buffers (exported with the model).

    Tabular features differ in scale by orders of magnitude; baking the scaling into the model means
    the exported ONNX takes raw columns and nobody re-implements preprocessing at deploy time.
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(n))
        self.register_buffer("scale", torch.ones(n))

    def fit(self, x: torch.Tensor) -> None:
        self.mean.copy_(x.mean(0))
        self.scale.copy_(x.std(0).clamp_min(1e-6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale


class MLP(nn.Module):
    """Multi-layer perceptron: ``depth`` hidden layers of ``width`` units with ReLU and dropout."""

    def __init__(
        self,
        in_features: int,
        n_outputs: int,
        width: int = 64,
        depth: int = 2,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.standardize = Standardize(in_features)
        layers: list[nn.Module] = []
        d = in_features
        for _ in range(depth):
            layers += [nn.Linear(d, width), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(d, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(self.standardize(x.flatten(1))))


@register_model("mlp")
def mlp(
    *,
    in_shape: tuple[int, ...],
    n_outputs: int,
    width: int = 64,
    depth: int = 2,
    dropout: float = 0.0,
) -> nn.Module:
    if width < 1 or depth < 0:
        raise InvalidInputError(
            f"mlp needs width >= 1 and depth >= 0; got width={width}, depth={depth}"
        )
    return MLP(math.prod(in_shape), n_outputs, width=width, depth=depth, dropout=dropout)


def _conv_bn(
    cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, act: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act:
        layers.append(nn.ReLU6() if groups > 1 or k == 1 else nn.ReLU())
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    """Conv-BN-ReLU blocks (channel count doubling at each pooling), global pooling and a classifier."""

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        width: int = 32,
        depth: int = 2,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        c = in_channels
        for i in range(depth):
            out = width * (2**i)
            blocks += [_conv_bn(c, out, kernel_size), _conv_bn(out, out, kernel_size)]
            if i < depth - 1:
                blocks.append(nn.MaxPool2d(2))
            c = out
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def _image_channels(in_shape: tuple[int, ...], model: str) -> int:
    if len(in_shape) != 3:
        raise InvalidInputError(
            f"model {model!r} takes images shaped (channels, height, width); the data's samples are "
            f"shaped {in_shape}; use model 'mlp' for tabular data"
        )
    return in_shape[0]


@register_model("cnn")
def cnn(
    *,
    in_shape: tuple[int, ...],
    n_outputs: int,
    width: int = 32,
    depth: int = 2,
    kernel_size: int = 3,
) -> nn.Module:
    return SmallCNN(
        _image_channels(in_shape, "cnn"),
        n_outputs,
        width=width,
        depth=depth,
        kernel_size=kernel_size,
    )


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expansion, depthwise kxk, 1x1 linear projection; residual when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expansion: int, kernel_size: int) -> None:
        super().__init__()
        hidden = cin * expansion
        layers: list[nn.Module] = []
        if expansion != 1:
            layers.append(_conv_bn(cin, hidden, 1))
        layers += [
            _conv_bn(hidden, hidden, kernel_size, stride=stride, groups=hidden),
            _conv_bn(hidden, cout, 1, act=False),
        ]
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv(x)
        return x + out if self.use_residual else out


def _round_channels(c: float, divisor: int = 4) -> int:
    return max(divisor, int(c + divisor / 2) // divisor * divisor)


class MobileNet(nn.Module):
    """A MobileNetV2-style CNN sized for small images.

    Args:
        width: multiplier on every layer's channel count (1.0 = 16 stem channels).
        depth: inverted-residual blocks per stage (3 stages; the first block of stages 2 and 3
            downsamples, the others are residual).
        expansion: expansion ratio of the inverted residuals.
        kernel_size: depthwise kernel size (3 or 5).
    """

    def __init__(
        self,
        in_channels: int,
        n_outputs: int,
        width: float = 1.0,
        depth: int = 2,
        expansion: int = 4,
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        stem = _round_channels(16 * width)
        self.stem = _conv_bn(in_channels, stem, 3)
        blocks: list[nn.Module] = []
        c = stem
        for stage, (base, stride) in enumerate([(16, 1), (24, 2), (32, 2)]):
            out = _round_channels(base * width)
            for i in range(depth):
                blocks.append(
                    InvertedResidual(c, out, stride if i == 0 else 1, expansion, kernel_size)
                )
                c = out
        self.blocks = nn.Sequential(*blocks)
        last = _round_channels(64 * width)
        self.head = _conv_bn(c, last, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.head(self.blocks(self.stem(x)))).flatten(1))


@register_model("mobilenet")
def mobilenet(
    *,
    in_shape: tuple[int, ...],
    n_outputs: int,
    width: float = 1.0,
    depth: int = 2,
    expansion: int = 4,
    kernel_size: int = 3,
) -> nn.Module:
    if width <= 0 or depth < 1 or expansion < 1 or kernel_size not in (3, 5, 7):
        raise InvalidInputError(
            "mobilenet needs width > 0, depth >= 1, expansion >= 1 and kernel_size in (3, 5, 7); "
            f"got width={width}, depth={depth}, expansion={expansion}, kernel_size={kernel_size}"
        )
    return MobileNet(
        _image_channels(in_shape, "mobilenet"), n_outputs, width, depth, expansion, kernel_size
    )
