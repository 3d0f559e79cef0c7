"""``leanml.distill``: the distill stage on one teacher, outside a recipe."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..data import Dataset
from ..errors import InvalidInputError
from ..models import Model
from ..task import Task, make_task
from ..training import TrainConfig
from ._inputs import as_dataset, default_metric, train_model
from ._single import SingleStageResult, apply_stage


def distill(
    teacher: Any,
    *,
    data: str | Dataset | tuple[np.ndarray, np.ndarray] | None = None,
    task: Task | None = None,
    student: dict[str, Any] | None = None,
    temperature: float = 4.0,
    alpha: float = 0.7,
    features: Sequence[tuple[str, str]] = (),
    feature_weight: float = 1.0,
    transfer: str = "train",
    augment: dict[str, float] | None = None,
    epochs: int | None = None,
    student_train: dict[str, Any] | None = None,
    compare_scratch: bool = True,
    target: str | None = None,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    train: dict[str, Any] | None = None,
    measure: dict[str, Any] | None = None,
    seed: int = 0,
    work_dir: str | Path | None = None,
) -> SingleStageResult:
    """Distill a teacher into a smaller student and measure both on ONNX Runtime.

    Args:
        teacher: a trained ``torch.nn.Module``, a :class:`leanml.models.Model`, or a model name
            (``"cnn"``, ``"mlp"``, ``"pkg.mod:function"``) that is built and trained first.
        data: a dataset name or spec (``"digits"``, ``"csv:PATH"``, ``"npz:PATH"``), a
            :class:`leanml.data.Dataset`, or ``(x, y)`` arrays (split 65/15/20 by ``seed``).
        task: a ready :class:`leanml.task.Task` instead of ``data`` (its model spec and arguments
            describe the teacher).
        student: the stage's ``student:`` keys: ``{"model_args": {"width": 16}}``,
            ``{"width_mult": 0.5}`` or ``{"model": "mlp", "model_args": {...}}``; default half width.
        temperature: softens the teacher's and student's distributions (> 0).
        alpha: weight of the soft (teacher) loss, in [0, 1].
        features: ``(teacher_layer, student_layer)`` pairs for hint losses (names from ``named_modules()``).
        feature_weight: weight of the hint losses.
        transfer: ``"train"`` or ``"unlabeled:PATH"`` (an NPZ with an array ``x``; no labels used).
        augment: ``{"noise": ..., "mixup": ...}`` to widen the transfer set.
        epochs: the student's epochs (shorthand for ``student_train={"epochs": ...}``).
        student_train: overrides of ``train`` for the student (the stage's ``train:`` key); the
            from-scratch comparison uses the same budget.
        compare_scratch: also train the same student from scratch with the same budget.
        target, metric, model_args: the label column of CSV data, the task metric (default accuracy
            for integer labels, r2 otherwise), arguments of a teacher given by name.
        train: the ``train:`` settings (the teacher's training, and the base of the student's).
        measure: the ``measure:`` settings.

    Returns:
        the distilled student (``.model``), notes and ``details["comparison"]`` (teacher, scratch
        and distilled student on the test split) in ``.result``, and measurements of the teacher
        (``.before``) and student (``.after``) on the test split.

    Raises:
        InvalidInputError: a key breaks a rule, the student's outputs do not match the teacher's, or
            a hint layer does not exist.

    Example:
        >>> import leanml
        >>> out = leanml.distill("cnn", data="digits", student={"model_args": {"width": 8}})  # doctest: +SKIP
        >>> out.result.details["comparison"]["rows"]  # doctest: +SKIP
    """
    tcfg = TrainConfig.model_validate(train or {})
    spec, handle = _teacher(teacher)
    if task is None:
        if data is None:
            raise InvalidInputError(
                "leanml.distill needs data= (a dataset name, a Dataset or (x, y) arrays) or task="
            )
        dataset = as_dataset(data, target=target, seed=seed)
        if metric is None:
            metric = default_metric(dataset)
        task = make_task(dataset, metric=metric, model=spec, model_args=model_args or {})
    if handle is None:
        handle = train_model(task, tcfg, seed)
    elif handle.factory is None and task.model != "given" and task.model_kind == "torch":
        handle.factory, handle.model_args = task.model, dict(task.model_args)
    stage_train = dict(student_train or {})
    if epochs is not None:
        stage_train["epochs"] = epochs
    config: dict[str, Any] = {
        "temperature": temperature,
        "alpha": alpha,
        "features": [list(p) for p in features],
        "feature_weight": feature_weight,
        "data": transfer,
        "augment": augment or {},
        "train": stage_train,
        "compare_scratch": compare_scratch,
    }
    if student is not None:
        config["student"] = student
    return apply_stage(
        "distill",
        handle,
        task,
        config,
        train_config=tcfg,
        measure_config=measure,
        seed=seed,
        work_dir=work_dir,
    )


def _teacher(teacher: Any) -> tuple[str, Model | None]:
    """The task's model spec, and the handle when a trained teacher was given."""
    from torch import nn

    if isinstance(teacher, Model):
        if teacher.form != "torch":
            raise InvalidInputError(
                f"leanml.distill needs a PyTorch teacher; got a {teacher.form} model"
            )
        return teacher.factory or "given", teacher
    if isinstance(teacher, nn.Module):
        return "given", Model(torch=teacher)
    if (
        isinstance(teacher, str)
        and not teacher.startswith("sklearn:")
        and not teacher.endswith(".onnx")
    ):
        return teacher, None
    raise InvalidInputError(
        f"teacher must be a torch.nn.Module, a leanml Model or a model name (cnn, mlp, 'pkg.mod:function'); got {teacher!r}"
    )
