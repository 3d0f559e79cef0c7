"""Feature selection and projection baked into a PyTorch model, so the exported ONNX takes the raw columns.

:class:`FeatureModel` puts a :class:`FeatureFront` (index-select, then a fixed affine map for the
scaling and the PCA projection, stored as buffers) in front of a network built for the reduced width.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class FeatureFront(nn.Module):
    """Take the original columns; keep ``index``; apply ``x @ weight.T + bias`` when a transform is set.

    Buffers, not parameters: the selection and projection are fixed; only the network behind trains.
    """

    def __init__(
        self,
        n_columns: int,
        index: np.ndarray,
        weight: np.ndarray | None = None,
        bias: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        self.n_columns = n_columns
        self.register_buffer("index", torch.as_tensor(np.asarray(index, dtype=np.int64)))
        self.has_transform = weight is not None
        if weight is not None:
            self.register_buffer("weight", torch.as_tensor(np.asarray(weight, dtype=np.float32)))
            self.register_buffer("bias", torch.as_tensor(np.asarray(bias, dtype=np.float32)))

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0]) if self.has_transform else int(self.index.numel())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        if self.index.numel() < self.n_columns:  # keeping every column in order needs no Gather
            x = x.index_select(1, self.index)
        if self.has_transform:
            x = F.linear(x, self.weight, self.bias)
        return x


def front_from_steps(
    n_columns: int, indices: np.ndarray, steps: list[tuple[str, Any]]
) -> FeatureFront:
    """The fitted scaler (and PCA) as one affine map: ``C·((x − μ)/s − m) = (C/s)·x − C·(μ/s + m)``."""
    named = dict(steps)
    if not named:
        return FeatureFront(n_columns, indices)
    scaler = named["scale"]
    mu, s = scaler.mean_.astype(np.float64), scaler.scale_.astype(np.float64)
    if "pca" in named:
        pca = named["pca"]
        c, m = pca.components_.astype(np.float64), pca.mean_.astype(np.float64)
        return FeatureFront(n_columns, indices, c / s[None, :], -(c @ (mu / s + m)))
    return FeatureFront(n_columns, indices, np.diag(1.0 / s), -mu / s)


class FeatureModel(nn.Module):
    """``net(front(x))``: a network for the reduced width behind the baked-in column selection."""

    def __init__(self, front: FeatureFront, net: nn.Module) -> None:
        super().__init__()
        self.front = front
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(self.front(x))
