"""MNIST-1D for the training bench: the dataset's generator and the paper's small CNN.

The generator is ported from the ``mnist1d`` package (Sam Greydanus, Peter Steinbach; "Scaling down
deep learning with MNIST-1D", ICML 2024; github.com/greydanus/mnist1d, MIT/Apache-2.0): its
``get_dataset`` downloads a pickle by default, while ``make_dataset`` only computes, so the few
functions that compute are copied here (same defaults, same global NumPy seeding, so the data are the
package's ``make_dataset()``: 4,000 training and 1,000 test signals of length 40, 10 classes). Nothing
is downloaded. ``conv_base`` is the paper's ``ConvBase`` as a ``pkg.mod:function`` model.
"""

from __future__ import annotations

import random

import numpy as np
import torch
from scipy.interpolate import interp1d
from scipy.ndimage import gaussian_filter
from torch import nn

ARGS = {
    "num_samples": 5000,
    "train_split": 0.8,
    "template_len": 12,
    "padding": (36, 60),
    "scale_coeff": 0.4,
    "max_translation": 48,
    "corr_noise_scale": 0.25,
    "iid_noise_scale": 2e-2,
    "shear_scale": 0.75,
    "final_seq_length": 40,
}


def _templates() -> tuple[np.ndarray, np.ndarray]:
    """The ten 1-D digit templates, whitened, starting and ending at 0; and their time axis."""
    d = np.asarray(
        [
            [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
            [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
            [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
            [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
            [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
            [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
            [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
            [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
            [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
        ]
    )
    d -= d.mean(1, keepdims=True)
    d /= d.std(1, keepdims=True)
    d -= d[:, :1]
    return d / 6.0, np.linspace(-5, 5, d.shape[1]) / 6.0


def _interpolate(x: np.ndarray, n: int) -> np.ndarray:
    return interp1d(np.linspace(0, 1, len(x)), x, axis=0, kind="linear")(np.linspace(0, 1, n))


def _transform(x: np.ndarray) -> np.ndarray:
    """Pad, dilate, scale, translate, add correlated and iid noise, shear, subsample (the
    package's ``transform``, drawing from NumPy's global generator in the same order)."""
    a = ARGS
    low, high = a["padding"]
    p = low + int(np.random.rand() * (high - low + 1))
    x = np.concatenate([x + 1e-8, np.zeros(p)])
    x = _interpolate(x, a["template_len"] + high)
    x *= 1 + a["scale_coeff"] * (np.random.rand() - 0.5)
    k = np.random.choice(a["max_translation"])
    x = np.concatenate([x[-k:], x[:-k]])
    mask = x != 0
    x = mask * x + (1 - mask) * gaussian_filter(
        a["corr_noise_scale"] * np.random.randn(*x.shape), 2
    )
    x = x + a["iid_noise_scale"] * np.random.randn(*x.shape)
    x = x - a["shear_scale"] * (np.random.rand() - 0.5) * np.linspace(-0.5, 0.5, len(x))
    return _interpolate(x, a["final_seq_length"])


def make_dataset(seed: int = 42) -> dict[str, np.ndarray]:
    """The MNIST-1D arrays (seed 42 is the published dataset): ``x_train`` (4000, 1, 40),
    ``y_train``, ``x_test`` (1000, 1, 40), ``y_test``, standardized as the package does."""
    random.seed(seed)
    np.random.seed(seed)  # the package draws from the global generator; kept for the same data
    templates, _ = _templates()
    per_class = ARGS["num_samples"] // len(templates)
    xs, ys = [], []
    for label, template in enumerate(templates):
        for _ in range(per_class):
            xs.append(_transform(template))
            ys.append(label)
    order = np.random.permutation(len(ys))
    x, y = np.stack(xs)[order], np.asarray(ys)[order]
    x = (x - x.mean()) / x.std()
    cut = int(len(y) * ARGS["train_split"])
    x = x[:, None, :].astype(np.float32)
    y = y.astype(np.int64)
    return {"x_train": x[:cut], "y_train": y[:cut], "x_test": x[cut:], "y_test": y[cut:]}


class ConvBase(nn.Module):
    """The MNIST-1D paper's CNN: three stride-2 convolutions (25 channels, kernels 5, 3, 3), ReLU,
    a linear layer on the flattened features."""

    def __init__(self, n_outputs: int = 10, channels: int = 25, length: int = 40) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv1d(1, c, 5, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        for kernel in (5, 3, 3):
            length = (length + 2 - kernel) // 2 + 1
        self.linear = nn.Linear(c * length, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.body(x))


def conv_base(in_shape: tuple[int, ...], n_outputs: int) -> nn.Module:
    """``task.model: mnist1d_bench:conv_base``."""
    return ConvBase(n_outputs, length=int(in_shape[-1]))
