"""A task: data (train/val/test) + model factory + metric + loss."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from .data import Dataset, Split, check_regression_targets, import_entry_point
from .errors import InvalidInputError
from .metrics import FIDELITY_METRICS, Metric, get_metric
from .models import (
    Standardize,
    build_model,
    get_model_factory,
    is_keras_path,
    rebuild_keras,
)


@dataclass
class Task:
    """What is optimized, and how it is judged.

    Attributes:
        data: the splits.
        metric: the task metric (its ``loss`` says how to train for it).
        model: the model spec of the recipe (zoo name, ``pkg.mod:function``, ``PATH.onnx``,
            ``PATH.keras`` or ``sklearn:Estimator``).
        model_args: keyword arguments of the model factory.
        n_outputs: width of the model's output (classes, regression targets, or the reference
            model's output width for fidelity tasks).
        base_dir: the recipe's folder; relative paths and entry points resolve from it.
    """

    data: Dataset
    metric: Metric
    model: str
    model_args: dict[str, Any] = field(default_factory=dict)
    n_outputs: int = 1
    base_dir: Path = field(default_factory=Path.cwd)
    name: str = "task"

    @property
    def metric_label(self) -> str:
        """The metric's name, and what it leaves out: a fidelity metric on token-level outputs
        compares real tokens only (see :func:`leanml.metrics.mask_padding`)."""
        if self.metric.excludes_padding and np.ma.isMaskedArray(self.data.val.y):
            return f"{self.metric.name} over real tokens (padding excluded by attention_mask)"
        return self.metric.name

    @property
    def is_classification(self) -> bool:
        return self.metric.loss == "cross_entropy"

    @property
    def model_kind(self) -> str:
        """``onnx``, ``sklearn``, ``pickle`` (a whole pickled module), ``keras`` (a Keras file,
        loaded as a trained PyTorch module) or ``torch`` (built from a factory)."""
        if self.model.endswith(".onnx"):
            return "onnx"
        if is_keras_path(self.model):
            return "keras"
        if self.model.startswith("sklearn:"):
            return "sklearn"
        if self.model.endswith((".pt", ".pth")):
            return "pickle"
        return "torch"

    def build_torch_model(
        self, model_args: dict[str, Any] | None = None, model: str | None = None
    ) -> nn.Module:
        """A fresh, untrained torch model from the task's factory (or ``model``) and arguments."""
        spec = model or self.model
        if is_keras_path(spec):  # the Keras architecture, fresh weights, for this data's samples
            return rebuild_keras(spec, self.data.input_shape, self.data.train.x)
        if ":" in spec and not spec.startswith("sklearn:"):
            factory = import_entry_point(
                spec, search_dir=self.base_dir, what="task.model entry point"
            )
        else:
            factory = get_model_factory(spec)
        args = self.model_args if model_args is None else model_args
        net = build_model(
            factory,
            in_shape=self.data.input_shape,
            n_outputs=self.n_outputs,
            model_args=args,
            name=spec,
        )
        _fit_standardizers(net, self.data.train)
        return net


def _fit_standardizers(net: nn.Module, train: Split) -> None:
    """Fit any ``Standardize`` layer of a tabular model on the training inputs."""
    import torch

    for m in net.modules():
        if isinstance(m, Standardize) and not isinstance(train.x, dict):
            x = torch.as_tensor(train.x.reshape(len(train.x), -1), dtype=torch.float32)
            if x.shape[1] == m.mean.numel():
                m.fit(x)


def infer_n_outputs(data: Dataset, metric: Metric) -> int:
    """Output width the model needs for this data and metric."""
    y = data.train.y
    if y is None:
        raise InvalidInputError(
            f"data {data.name!r} has no labels; a labelled metric ({metric.name}) needs them — give "
            f"labels, or use a fidelity metric ({', '.join(FIDELITY_METRICS)}) with a reference model"
        )
    if metric.needs_class_labels:
        if not np.issubdtype(y.dtype, np.integer):
            raise InvalidInputError(
                f"task.metric {metric.name!r} needs integer class labels; data {data.name!r} has "
                f"{y.dtype} targets (use mse, mae or r2 for regression)"
            )
        for split_name in ("train", "val", "test"):
            check_class_labels(data.name, split_name, getattr(data, split_name).y)
        return int(max(data.n_classes or 0, int(y.max()) + 1))
    if metric.name in ("mse", "mae", "r2"):
        check_regression_targets(data, metric.name)
    return int(np.prod(y.shape[1:])) if y.ndim > 1 else 1


def check_class_labels(name: str, split: str, y: np.ndarray | None) -> None:
    """Raise when integer class labels are negative: labels index the model's outputs."""
    if y is None or not len(y) or not np.issubdtype(y.dtype, np.integer) or int(y.min()) >= 0:
        return
    raise InvalidInputError(
        f"data {name!r}: the {split} split has class label {int(y.min())}; class labels must be "
        "integers 0..n_classes-1: map them to 0, 1, 2, ... (e.g. with "
        "numpy.unique(y, return_inverse=True)[1]), or use mse, mae or r2 for regression"
    )


def make_task(
    data: Dataset,
    *,
    metric: str,
    model: str,
    model_args: dict[str, Any] | None = None,
    base_dir: Path | None = None,
    name: str = "task",
) -> Task:
    """Build a task, checking that the metric fits the data's targets."""
    m = get_metric(metric)
    return Task(
        data=data,
        metric=m,
        model=model,
        model_args=dict(model_args or {}),
        n_outputs=infer_n_outputs(data, m),
        base_dir=base_dir or Path.cwd(),
        name=name,
    )
