"""What the technique functions (``leanml.prune``, ``leanml.quantize``, ...) accept as data, and
how they train a model they were given by name."""

from __future__ import annotations

from typing import Any

import numpy as np

from .._utils import seed_everything
from ..data import Dataset, load_data, split_arrays
from ..errors import InvalidInputError
from ..models import Model
from ..task import Task
from ..training import TrainConfig, fit


def as_dataset(
    data: Any,
    *,
    seed: int,
    target: str | None = None,
    one_hot: bool = False,
    feature_names: list[str] | None = None,
) -> Dataset:
    """A :class:`Dataset` from a dataset name or spec, a Dataset, or ``(x, y)`` arrays.

    ``(x, y)`` is split 65/15/20 by ``seed`` (stratified for integer labels); ``x`` may be a dict of
    arrays (one per model input) and ``y`` None (no labels: fidelity metrics).
    """
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_data(data, target=target, seed=seed, one_hot=one_hot)
    if not (isinstance(data, tuple) and len(data) == 2):
        raise InvalidInputError(
            "data must be a dataset name or spec, a leanml Dataset, or (x, y) arrays; "
            f"got {type(data).__name__}"
        )
    x, y = data
    if not isinstance(x, dict):
        x = np.asarray(x, dtype=np.float32)
    rows = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    classification = False
    if y is not None:
        y = np.asarray(y)
        if len(y) != rows:
            raise InvalidInputError(
                f"data (x, y) needs one target per row; got {rows} rows and {len(y)} targets"
            )
        classification = bool(np.issubdtype(y.dtype, np.integer)) and y.ndim == 1
        y = y.astype(np.int64) if classification else y.astype(np.float32)
    ndim = None if isinstance(x, dict) else x.ndim
    kind = {4: "image", 2: "tabular"}.get(ndim, "other") if ndim else "other"
    if feature_names is not None and (ndim != 2 or len(feature_names) != x.shape[1]):
        raise InvalidInputError(
            f"feature_names has {len(feature_names)} names; x must be 2-D with as many columns "
            f"(got x shaped {getattr(x, 'shape', 'a dict')})"
        )
    tr, va, te = split_arrays(x, y, val=0.15, test=0.2, seed=seed, stratify=classification)
    return Dataset(
        "arrays",
        kind,
        tr,
        va,
        te,
        feature_names=list(feature_names) if feature_names is not None else None,
        n_classes=int(y.max()) + 1 if classification and y is not None else None,
    )


def train_model(task: Task, config: TrainConfig, seed: int) -> Model:
    """Build the task's PyTorch model and train it with the shared trainer."""
    seed_everything(seed)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, config, seed=seed)
    return Model(torch=net, model_args=dict(task.model_args), factory=task.model)


def default_metric(dataset: Dataset) -> str:
    """accuracy for integer class labels, r2 otherwise."""
    y = dataset.train.y
    return "accuracy" if y is not None and np.issubdtype(y.dtype, np.integer) else "r2"
