"""One registered stage on one model, outside a recipe: the runner behind ``leanml.prune``,
``leanml.quantize``, ``leanml.distill``, ``leanml.tune`` and ``leanml.select_features``.

Each technique function is a thin wrapper: its keywords are the stage's recipe keys (defaults come
only from the stage's Config) plus the run settings below, shared by all of them.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..constraints import Constraints
from ..data import Dataset
from ..errors import InvalidInputError
from ..measure import MeasureConfig, Measurement, measure
from ..models import Model
from ..runtime import to_onnx
from ..task import Task
from ..techniques import Stage, StageResult, get_stage_class
from ..training import TrainConfig
from ._context import PipelineContext
from ._progress import Reporter, RichReporter
from ._recipe import Recipe, TaskConfig
from ._tasks import as_dataset, as_model, build_model, prepare_model, task_for, train_baseline
from ._validation import validate_keys, validate_section


@dataclass
class SingleStageResult:
    """A stage's result with the model before and after, both measured on the test split."""

    result: StageResult
    before: Measurement
    after: Measurement
    artifact: Path

    @property
    def model(self) -> Model:
        return self.result.model


def build_stage(kind: str, config: dict[str, Any] | None) -> Stage[Any]:
    """A registered stage with its keys validated like a recipe's (errors name the key)."""
    cls = get_stage_class(kind)
    return cls(validate_section(cls.Config, config, kind))


def apply_stage(
    stage: str | Stage[Any],
    model: Model,
    task: Task,
    config: dict[str, Any] | None = None,
    *,
    train_config: TrainConfig | dict[str, Any] | None = None,
    measure_config: MeasureConfig | dict[str, Any] | None = None,
    max_metric_drop: float | None = None,
    seed: int | None = None,
    work_dir: str | Path | None = None,
    reporter: Reporter | None = None,
) -> SingleStageResult:
    """Apply one stage to ``model`` and measure the model before and after on the test split.

    Args:
        stage: a registered stage kind (``prune``, ``quantize``, ...) or a built stage.
        model: the model to change (it is not modified).
        task: data, metric, model factory.
        config: the stage's recipe keys when ``stage`` is a kind.
        train_config, measure_config: as the recipe's ``train:`` and ``measure:`` sections.
        max_metric_drop: the constraint stages use for their own decisions (default: the recipe's).
        seed: the run's seed (default: the recipe's).
        work_dir: where the stage writes (default: a temporary folder).

    Raises:
        InvalidInputError: a key breaks a rule, or the stage cannot take this model.
    """
    built = build_stage(stage, config) if isinstance(stage, str) else stage
    tcfg = validate_section(TrainConfig, train_config, "train")
    mcfg = validate_section(MeasureConfig, measure_config, "measure")
    constraints = validate_section(
        Constraints, {} if max_metric_drop is None else {"max_metric_drop": max_metric_drop}, ""
    )
    built.check(task)
    built.check_form(model)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix=f"leanml-{built.kind}-"))
    work.mkdir(parents=True, exist_ok=True)
    before_path = work / "before.onnx"
    to_onnx(model, task.data.val, before_path)
    report = reporter or Reporter()
    with report.progress("measuring the input model") as step:
        before = measure(
            before_path,
            task.data.test,
            task.metric,
            mcfg,
            torch_model=model.torch,
            progress=step.update,
        )
    ctx = PipelineContext.for_stage(
        task=task,
        train_config=tcfg,
        measure_config=mcfg,
        constraints=constraints,
        seed=seed,
        work_dir=work,
        baseline_val_metric=PipelineContext.val_metric(before_path, task, mcfg),
        reporter=report,
    )
    result = built.apply(model.clone(), ctx)
    after_path = work / "model.onnx"
    to_onnx(result.model, task.data.val, after_path)
    with report.progress(f"measuring the {built.kind} result") as step:
        after = measure(
            after_path,
            task.data.test,
            task.metric,
            mcfg,
            torch_model=result.model.torch,
            progress=step.update,
        )
    return SingleStageResult(result, before, after, after_path)


RUN_SETTINGS = frozenset(
    {
        "data",
        "task",
        "target",
        "one_hot",
        "feature_names",
        "metric",
        "model_args",
        "train",
        "measure",
        "max_metric_drop",
        "seed",
        "work_dir",
        "reporter",
        "quiet",
    }
)


def _run(
    kind: str, model: Any, keys: dict[str, Any], *, run_train: str = "train"
) -> SingleStageResult:
    """Split a technique function's keywords into run settings and the stage's recipe keys.
    ``run_train`` names the keyword that holds the run's ``train:`` section (tune's stage has a
    ``train`` key of its own)."""
    run = {k: keys.pop(k) for k in list(keys) if k in RUN_SETTINGS - {"train"}}
    if run_train in keys:
        run["train"] = keys.pop(run_train)
    return run_technique(kind, model, keys, **run)


def run_technique(
    kind: str,
    model: Any,
    config: dict[str, Any] | None = None,
    *,
    data: Any = None,
    task: Task | None = None,
    target: str | None = None,
    one_hot: bool | None = None,
    feature_names: list[str] | None = None,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    train: TrainConfig | dict[str, Any] | None = None,
    measure: MeasureConfig | dict[str, Any] | None = None,
    max_metric_drop: float | None = None,
    seed: int | None = None,
    work_dir: str | Path | None = None,
    reporter: Reporter | None = None,
    quiet: bool = False,
) -> SingleStageResult:
    """Run the stage ``kind`` on ``model`` with the stage's recipe keys ``config``.

    Args:
        model: a trained ``torch.nn.Module`` (a Hugging Face encoder too), a fitted or unfitted
            scikit-learn estimator, a :class:`leanml.models.Model`, a path to an ONNX file, a local
            Hugging Face model directory, or a model name (``"cnn"``, ``"mlp"``,
            ``"pkg.mod:function"``, ``"sklearn:Ridge"``) that is built and trained first. It is
            never changed: stages work on a copy.
        data: a dataset name or spec (``"digits"``, ``"csv:PATH"``, ``"npz:PATH"``), a
            :class:`leanml.data.Dataset`, or ``(x, y)`` arrays split 65/15/20 by ``seed`` (``x``
            may be a dict of arrays named after the model's inputs). With ``y`` None the metric
            is the fidelity to the given model (``agreement`` of top-1, or ``cosine``).
        task: a ready :class:`leanml.task.Task` instead of ``data`` (its model spec describes
            ``model``).
        target, one_hot, feature_names: the label column and one-hot encoding of CSV data; column
            names for ``(x, y)`` arrays.
        metric: the task metric (default: accuracy for integer labels, r2 for real targets, a
            fidelity metric without labels).
        model_args: arguments of a model given by name.
        train, measure: the recipe's ``train:`` and ``measure:`` sections (a model given by name
            trains with ``train``; stages' fine-tuning starts from it).
        max_metric_drop: the budget the stage's own choices keep (default: the recipe's).
        reporter, quiet: progress events (default: rich progress on stderr); ``quiet`` shows none.
        config: the stage's recipe keys (see docs/recipes.md and the stage's Config).

    Raises:
        InvalidInputError: a key breaks a rule, or the model or data cannot be used.
    """
    stage = build_stage(kind, config)  # bad keys fail before anything loads or trains
    seed = validate_keys(Recipe, {"seed": seed}).seed
    one_hot = validate_keys(TaskConfig, {"one_hot": one_hot}).one_hot
    reporter = reporter or (Reporter() if quiet else RichReporter())
    tcfg = validate_section(TrainConfig, train, "train")
    handle, spec = as_model(model)
    if task is None:
        if data is None:
            raise InvalidInputError(
                f"leanml.{kind} needs data= (a dataset name, a Dataset or (x, y) arrays) or task="
            )
        dataset: Dataset = as_dataset(
            data, seed=seed, target=target, one_hot=one_hot, feature_names=feature_names
        )
        task = task_for(dataset, model=handle, spec=spec, metric=metric, model_args=model_args)
    elif (
        handle is not None
        and handle.form == "torch"
        and handle.factory is None
        and task.model_kind == "torch"
        and not task.model.endswith("(given)")
    ):  # a given module that the task's spec describes: a new handle, the user's is not changed
        handle = Model(torch=handle.torch, model_args=dict(task.model_args), factory=task.model)
    stage.check(task)
    if handle is None:
        handle = build_model(task, seed=seed)
        stage.check_model(handle, task)  # names of layers and students fail before training
        reporter.train_start(f"training {spec}", tcfg.epochs)
        try:
            train_baseline(
                handle,
                task,
                tcfg,
                seed=seed,
                callbacks=[reporter.epoch],
                progress=reporter.train_info,
            )
        finally:
            reporter.train_end()
    else:
        handle = prepare_model(handle, task)
        stage.check_model(handle, task)
    return apply_stage(
        stage,
        handle,
        task,
        train_config=tcfg,
        measure_config=measure,
        max_metric_drop=max_metric_drop,
        seed=seed,
        work_dir=work_dir,
        reporter=reporter,
    )


def prune(model: Any, **keys: Any) -> SingleStageResult:
    """Prune a PyTorch model and measure it before and after on ONNX Runtime.

    ``keys`` are the ``prune:`` recipe keys (``kind``, ``amount``, ``importance``, ``scope``,
    ``n_m``, ``protect``, ``schedule``, ``finetune``, ``sensitivity``, ...; see docs/recipes.md) and the
    run settings of :func:`run_technique` (``data``, ``metric``, ``train``, ``measure``, ``seed``, ...).

    Returns:
        the pruned model (``.model``), the stage's notes, details and plots (``.result``), and
        measurements before and after (``.before``, ``.after``) on the test split.

    Example:
        >>> import leanml
        >>> out = leanml.prune("cnn", data="digits", kind="channel", amount=0.5)  # doctest: +SKIP
        >>> out.before.flops / out.after.flops  # doctest: +SKIP
    """
    return _run("prune", model, keys)


def quantize(model: Any, **keys: Any) -> SingleStageResult:
    """Quantize a model (int8 or float16) and measure it before and after on ONNX Runtime.

    ``keys`` are the ``quantize:`` recipe keys (``mode``, ``calibration``, ``per_channel``,
    ``exclude``, ``auto_exclude``, ``sensitivity``, ...; the QAT fine-tuning overrides, the recipe's
    ``train:`` key, are ``finetune=`` here) and the run settings of :func:`run_technique`.

    Example:
        >>> import leanml
        >>> out = leanml.quantize("cnn", data="digits", mode="static")  # doctest: +SKIP
        >>> out.before.size_bytes / out.after.size_bytes  # doctest: +SKIP
    """
    return _run("quantize", model, keys)


def distill(teacher: Any, **keys: Any) -> SingleStageResult:
    """Distill a teacher into a smaller student and measure both on ONNX Runtime.

    ``keys`` are the ``distill:`` recipe keys (``student``, ``temperature``, ``alpha``,
    ``features``, ``feature_weight``, ``augment``, ``compare_scratch``; the recipe's ``data:`` and
    ``train:`` keys are ``transfer=`` and ``student_train=`` here) and the run settings of
    :func:`run_technique` (``data``/``task``, ``train`` for the teacher, ...).

    Returns:
        the student (``.model``), notes and ``details["comparison"]`` (teacher, scratch and
        distilled student) in ``.result``, and measurements of teacher and student.

    Example:
        >>> import leanml
        >>> out = leanml.distill("cnn", data="digits", student={"model_args": {"width": 8}})  # doctest: +SKIP
    """
    return _run("distill", teacher, keys)


def tune(model: Any, **keys: Any) -> SingleStageResult:
    """Search training settings and model arguments with an Optuna study.

    ``keys`` are the ``tune:`` recipe keys (``space``, ``sampler``, ``trials``, ``timeout``,
    ``objectives``, ``pruner``, ``storage``, ``study_name``, ``train``: overrides for every
    trial) and the run settings of :func:`run_technique` (``data``/``task``, ``measure``, ...);
    the run's base training settings, which trials start from, are ``train_config=`` here.

    Each trial rebuilds the model from the task with the trial's ``task.model_args.*``, trains it
    with the trial's ``train.*`` settings and scores its ONNX export in ONNX Runtime on the
    validation split. The study is stored in ``storage`` (default: ``study.db`` in ``work_dir``).

    Example:
        >>> import leanml  # doctest: +SKIP
        >>> out = leanml.tune("cnn", data="digits", space={"train.lr": {"low": 1e-4, "high": 1e-2, "log": True}}, trials=10)
    """
    return _run("tune", model, keys, run_train="train_config")


def select_features(model: Any, **keys: Any) -> SingleStageResult:
    """Keep the columns that matter, baked into the model: its ONNX export takes the original columns.

    ``keys`` are the ``features:`` recipe keys (``select``, ``n_features``, ``transform``,
    ``estimator``, ``pca_variance``, ...) and the run settings of :func:`run_technique`
    (``data``, ``target``, ``one_hot``, ``feature_names``, ...).

    Example:
        >>> import leanml
        >>> from sklearn.linear_model import LogisticRegression
        >>> out = leanml.select_features(LogisticRegression(max_iter=2000), data="breast_cancer",
        ...                              select="rfe", n_features=8)  # doctest: +SKIP
    """
    return _run("features", model, keys)
