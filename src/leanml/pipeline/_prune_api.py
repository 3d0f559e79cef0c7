"""``leanml.prune``: the prune stage on one model, outside a recipe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import InvalidInputError
from ..models import Model
from ..task import Task, make_task
from ..techniques import get_stage_class
from ..training import TrainConfig
from ._inputs import as_dataset, default_metric, train_model
from ._recipe import format_validation_error
from ._single import SingleStageResult, apply_stage


def prune(
    model: Any,
    *,
    data: str | Dataset | tuple[np.ndarray, np.ndarray],
    kind: str = "channel",
    amount: float = 0.5,
    importance: str = "l2",
    scope: str = "local",
    n_m: tuple[int, int] = (2, 4),
    protect: Sequence[str] = (),
    steps: int = 1,
    finetune: dict[str, Any] | bool = True,
    sensitivity: bool = True,
    target: str | None = None,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    max_metric_drop: float = 0.01,
    seed: int = 0,
    work_dir: str | Path | None = None,
    **options: Any,
) -> SingleStageResult:
    """Prune a PyTorch model and measure it before and after on ONNX Runtime.

    Args:
        model: a trained ``torch.nn.Module``, a :class:`leanml.models.Model`, or a model name
            (``"cnn"``, ``"mlp"``, ``"pkg.mod:function"``) that is built and trained first. An ONNX
            file is refused: pruning needs the PyTorch model.
        data: a dataset name or spec (``"digits"``, ``"csv:PATH"``, ``"npz:PATH"``), a
            :class:`leanml.data.Dataset`, or ``(x, y)`` arrays (split 65/15/20 by ``seed``).
        kind: ``unstructured``, ``n_m``, ``neuron``, ``channel`` or ``layer``.
        amount: the fraction removed, in (0, 1) (sparsity for unstructured; ignored by n_m).
        importance: ``l1``, ``l2``, ``taylor`` or ``random``.
        scope: ``local``, ``global`` or ``sensitivity``.
        n_m: ``(N, M)`` for kind ``n_m``.
        protect: ``"first"`` and/or ``"last"``: leave those layers whole.
        steps: more than 1 prunes gradually along a cubic curve, fine-tuning between steps.
        finetune: ``True`` (5 epochs of the ``train`` settings), ``False`` (none), or overrides of ``train``.
        sensitivity: run the per-layer sensitivity analysis (always on for ``scope="sensitivity"``).
        target, metric, model_args: the label column of CSV data, the task metric (default accuracy for
            integer labels, r2 otherwise), arguments of a model given by name.
        train, measure: the recipe's ``train:`` and ``measure:`` settings.
        options: any other key of the stage (``schedule``, ``importance_batches``, ``max_ratio``,
            ``sensitivity`` as a mapping).

    Returns:
        the pruned model (``.model``), the stage's notes, ``details["per_layer_sparsity"]`` and plots
        (``.result``), and measurements before and after (``.before``, ``.after``) on the test split.

    Raises:
        InvalidInputError: a key breaks a rule, the model is not a PyTorch model, or it has no layers
            of the kind asked for.

    Example:
        >>> import leanml
        >>> out = leanml.prune("cnn", data="digits", kind="channel", amount=0.5)  # doctest: +SKIP
        >>> out.before.flops / out.after.flops  # doctest: +SKIP
    """
    dataset = as_dataset(data, target=target, seed=seed)
    if metric is None:
        metric = default_metric(dataset)
    tcfg = TrainConfig.model_validate(train or {})
    spec, handle = _model(model)
    task = make_task(dataset, metric=metric, model=spec, model_args=model_args or {})
    config: dict[str, Any] = {
        "kind": kind,
        "amount": amount,
        "importance": importance,
        "scope": scope,
        "n_m": list(n_m),
        "protect": list(protect),
        "schedule": {"steps": steps},
        **options,
    }
    if finetune is False:
        config["finetune"] = None
    elif isinstance(finetune, dict):
        config["finetune"] = finetune
    if "sensitivity" not in options:
        config["sensitivity"] = {"enabled": bool(sensitivity)}
    if handle is None:
        _check(config, task)  # bad settings fail before the model trains
        handle = train_model(task, tcfg, seed)
    return apply_stage(
        "prune",
        handle,
        task,
        config,
        train_config=tcfg,
        measure_config=measure,
        max_metric_drop=max_metric_drop,
        seed=seed,
        work_dir=work_dir,
    )


def _check(config: dict[str, Any], task: Task) -> None:
    from pydantic import ValidationError

    cls = get_stage_class("prune")
    try:
        stage = cls(cls.Config.model_validate(config))
    except ValidationError as e:
        raise InvalidInputError(format_validation_error(e, prefix="prune")) from None
    stage.check(task)


def _model(model: Any) -> tuple[str, Model | None]:
    """The task's model spec, and the handle when a model was given (None: build it from the spec)."""
    from torch import nn

    if isinstance(model, Model):
        spec = model.factory or (str(model.onnx) if model.form == "onnx" else "given")
        return spec, model
    if isinstance(model, nn.Module):
        return f"{type(model).__name__} (given)", Model(torch=model)
    if isinstance(model, (str, Path)) and str(model).endswith(".onnx"):
        return str(model), Model(onnx=Path(model))
    if isinstance(model, str) and not model.startswith("sklearn:"):
        return model, None
    if isinstance(model, str) or hasattr(model, "predict"):
        raise InvalidInputError(
            "prune needs the PyTorch model; scikit-learn estimators have no layers to prune (use "
            "leanml.select_features for tabular models)"
        )
    raise InvalidInputError(
        f"model must be a torch.nn.Module, a leanml Model or a model name; got {type(model).__name__}"
    )
