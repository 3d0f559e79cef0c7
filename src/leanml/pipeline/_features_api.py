"""``leanml.select_features``: the features stage on one model, outside a recipe."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import InvalidInputError
from ..models import Model, build_sklearn
from ..task import make_task
from ..training import TrainConfig
from ._inputs import as_dataset, default_metric, train_model
from ._single import SingleStageResult, apply_stage


def select_features(
    model: Any,
    *,
    data: str | Dataset | tuple[np.ndarray, np.ndarray],
    target: str | None = None,
    one_hot: bool = False,
    feature_names: list[str] | None = None,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    select: str = "rfe",
    n_features: float | None = None,
    transform: str = "none",
    train: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
    **options: Any,
) -> SingleStageResult:
    """Keep the columns that matter, baked into the model: its ONNX export takes the original columns.

    Args:
        model: a scikit-learn estimator (fitted or not; unfitted ones are fitted on the train split),
            a model name (``"sklearn:LogisticRegression"``, ``"mlp"``, ``"pkg.mod:function"``) that is
            built and trained first, or a :class:`leanml.models.Model`.
        data: a dataset name or spec (``"breast_cancer"``, ``"csv:PATH"``, ``"npz:PATH"``), a
            :class:`leanml.data.Dataset`, or ``(x, y)`` arrays (split 65/15/20 by ``seed``).
        target: the label column, for CSV data.
        one_hot: one-hot encode non-numeric CSV columns with at most 20 distinct values.
        feature_names: column names for ``(x, y)`` arrays.
        metric: the task metric (default: accuracy for integer labels, r2 otherwise).
        model_args: arguments of a model given by name.
        select, n_features, transform: the features stage's keys; any other key of the stage
            (``estimator``, ``pca_variance``, ``n_components``, ``cv``, ``step``,
            ``variance_threshold``, ``correlation_threshold``, ``curve_points``) goes in ``options``.
        train: the ``train:`` settings for torch models (baseline and retraining).
        measure: the ``measure:`` settings.

    Returns:
        the new model (``.model``), the stage's notes and ``details["selected_features"]``
        (``.result``), and measurements before and after on the test split.

    Raises:
        InvalidInputError: a key breaks a rule, the data is not tabular, or the model cannot be used.

    Example:
        >>> import leanml
        >>> from sklearn.linear_model import LogisticRegression
        >>> out = leanml.select_features(LogisticRegression(max_iter=2000), data="breast_cancer",
        ...                              select="rfe", n_features=8)  # doctest: +SKIP
        >>> out.result.details["selected_features"]  # doctest: +SKIP
    """
    dataset = as_dataset(
        data, target=target, one_hot=one_hot, feature_names=feature_names, seed=seed
    )
    if metric is None:
        metric = default_metric(dataset)
    tcfg = TrainConfig.model_validate(train or {})
    spec, handle = _model(model, model_args or {}, seed)
    task = make_task(dataset, metric=metric, model=spec, model_args=model_args or {})
    if handle is None:
        handle = train_model(task, tcfg, seed)
    elif handle.sklearn is not None and not _fitted(handle.sklearn):
        assert dataset.train.y is not None
        x = dataset.train.x
        assert not isinstance(x, dict)
        handle.sklearn.fit(x.reshape(len(x), -1), dataset.train.y)
    config = {"select": select, "n_features": n_features, "transform": transform, **options}
    if n_features is None:
        config.pop("n_features")
    return apply_stage(
        "features",
        handle,
        task,
        config,
        train_config=tcfg,
        measure_config=measure,
        seed=seed,
        work_dir=work_dir,
    )


def _model(model: Any, model_args: dict[str, Any], seed: int) -> tuple[str, Model | None]:
    """The task's model spec, and the model handle when one was given (None: build from the spec)."""
    from torch import nn

    if isinstance(model, Model):
        if model.form == "sklearn":
            return f"sklearn:{type(model.sklearn).__name__}", model
        if not model.factory:
            raise InvalidInputError(
                "a torch Model needs its factory (e.g. 'mlp') so the features stage can rebuild it"
            )
        return model.factory, model
    if isinstance(model, str):
        if model.startswith("sklearn:"):
            return model, Model(
                sklearn=build_sklearn(model, model_args, seed=seed),
                model_args=model_args,
                factory=model,
            )
        return model, None
    if isinstance(model, nn.Module):
        raise InvalidInputError(
            "select_features rebuilds a PyTorch network for fewer inputs, so it needs the network's "
            "factory: give its name (e.g. 'mlp' or 'pkg.mod:function') with model_args, or a leanml Model"
        )
    if hasattr(model, "fit") and hasattr(model, "predict"):
        return f"sklearn:{type(model).__name__}", Model(
            sklearn=model, factory=f"sklearn:{type(model).__name__}"
        )
    raise InvalidInputError(
        f"model must be a scikit-learn estimator, a model name, or a leanml Model; got {type(model).__name__}"
    )


def _fitted(estimator: Any) -> bool:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True
