"""The one task builder: data in, a :class:`Task` out, shared by recipes, the technique functions
and the CLI. It owns the default metric, reference targets (fidelity to a float model on data
without labels) and the check that the data fits an ONNX model's inputs; :func:`as_model` is the
one coercion of whatever a user hands leanml as a model."""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .._utils import DEFAULT_SEED, seed_everything
from ..data import Dataset, Inputs, Split, Splits, load_data, split_arrays
from ..errors import InvalidInputError
from ..metrics import FIDELITY_METRICS, mask_padding
from ..models import (
    HFEncoder,
    KerasModule,
    Model,
    build_sklearn,
    check_keras_takes,
    is_keras_module,
    is_keras_path,
    is_tensorflow_path,
    load_hf_model,
    load_keras,
    tensorflow_to_onnx,
)
from ..runtime import OnnxRunner, load_onnx, to_onnx
from ..task import Task, make_task
from ..training import TrainConfig, fit, forward, predict, to_tensor

INT_TYPES = ("tensor(int64)", "tensor(int32)", "tensor(int8)", "tensor(uint8)", "tensor(bool)")


# -- data -----------------------------------------------------------------------------------------


def as_dataset(
    data: Any,
    *,
    seed: int,
    target: str | None = None,
    one_hot: bool = False,
    feature_names: list[str] | None = None,
    base_dir: Path | None = None,
    val: float | None = None,
    test: float | None = None,
) -> Dataset:
    """A :class:`Dataset` from a dataset name or spec, a Dataset, or ``(x, y)`` arrays.

    ``(x, y)`` is split 65/15/20 by ``seed`` (stratified for integer labels); ``x`` may be a dict of
    arrays (one per model input) and ``y`` None (no labels: fidelity metrics).
    """
    if isinstance(data, Dataset):
        return data
    if isinstance(data, str):
        return load_data(
            data,
            target=target,
            val=val,
            test=test,
            seed=seed,
            one_hot=one_hot,
            **({"base_dir": base_dir} if base_dir is not None else {}),
        )
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
    fractions = Splits.given(val, test)
    tr, va, te = split_arrays(
        x, y, val=fractions.val, test=fractions.test, seed=seed, stratify=classification
    )
    return Dataset(
        "arrays",
        kind,
        tr,
        va,
        te,
        feature_names=list(feature_names) if feature_names is not None else None,
        n_classes=int(y.max()) + 1 if classification and y is not None else None,
    )


def default_metric(dataset: Dataset, *, reference: bool = False) -> str:
    """accuracy for integer class labels, r2 for real-valued targets; for targets that are a
    reference model's outputs, agreement of top-1 for multi-column outputs and cosine otherwise."""
    y = dataset.train.y
    if y is None:
        return "cosine"
    if reference:
        return "agreement" if y.ndim == 2 and y.shape[1] > 1 else "cosine"
    return "accuracy" if np.issubdtype(y.dtype, np.integer) else "r2"


def reference_targets(dataset: Dataset, model: Model) -> Dataset:
    """The same inputs with the model's own float outputs as targets on every split: what fidelity
    metrics (agreement, cosine) compare a changed model with. Token-level outputs of a model that
    takes an ``attention_mask`` have their padding masked (:func:`~leanml.metrics.mask_padding`):
    the fidelity metrics compare real tokens only."""
    if model.torch is not None:
        net = model.torch

        def outputs(x: Inputs) -> np.ndarray:
            return predict(net, x).astype(np.float32)
    else:
        assert model.onnx is not None, "reference outputs need a torch or ONNX model"
        runner = OnnxRunner(model.onnx)
        check_onnx_takes(runner, dataset.train.x)

        def outputs(x: Inputs) -> np.ndarray:
            return runner.predict(x).astype(np.float32)

    splits = [
        Split(s.x, mask_padding(outputs(s.x), s.x))
        for s in (dataset.train, dataset.val, dataset.test)
    ]
    return Dataset(dataset.name, dataset.kind, *splits, dataset.feature_names, None)


def check_input(arr: np.ndarray, inp: Any, *, what: str) -> None:
    """One array against one declared ONNX input: numbers, integers for integer inputs, finite
    floats, and the declared shape after the batch axis."""
    if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
        raise InvalidInputError(
            f"{what} has dtype {arr.dtype}; the model takes {inp.type}: give numbers"
        )
    if inp.type in INT_TYPES:
        if np.issubdtype(arr.dtype, np.floating) and not np.all(arr == np.round(arr)):
            raise InvalidInputError(
                f"{what} holds fractional {arr.dtype} values; the model takes {inp.type}: give integers"
            )
    elif np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
        raise InvalidInputError(f"{what} holds NaN/inf values; data must be finite")
    declared = inp.shape
    if len(declared) != arr.ndim or any(
        isinstance(d, int) and d != s for d, s in zip(declared[1:], arr.shape[1:])
    ):
        raise InvalidInputError(
            f"{what} is shaped {list(arr.shape)}; the model's input {inp.name!r} is shaped "
            f"{declared} (batch first): give data of the model's input shape"
        )


def check_onnx_takes(runner: OnnxRunner, x: Inputs, *, what: str = "the data") -> None:
    """Fail with one line when samples do not fit the ONNX model's declared inputs."""
    feed = runner.feed(x[:1] if not isinstance(x, dict) else {k: v[:1] for k, v in x.items()})
    for inp in runner.inputs:
        check_input(np.asarray(feed[inp.name]), inp, what=f"{what} for input {inp.name!r}")


# -- models ---------------------------------------------------------------------------------------


def as_model(model: Any) -> tuple[Model | None, str]:
    """The model handle and the task's model spec for whatever a user gives as a model.

    A name (``"cnn"``, ``"pkg.mod:function"``, ``"sklearn:Ridge"``) gives no handle: the model is
    built from the spec (and trained). Given models are copied, never changed: a scikit-learn
    estimator that is not fitted yet is fitted as a copy (see :func:`prepare_model`). A Keras model
    (``PATH.keras``, a legacy ``PATH.h5`` or a ``keras.Model`` object) is a trained PyTorch module
    under Keras' torch backend; a TensorFlow SavedModel directory is converted to ONNX (tf2onnx).
    """
    from torch import nn

    if isinstance(model, Model):
        if model.form == "onnx":
            return model, str(model.onnx)
        if model.form == "sklearn":
            return model, model.factory or f"sklearn:{type(model.sklearn).__name__}"
        return model, model.factory or f"{type(model.torch).__name__} (given)"
    if isinstance(model, nn.Module):
        if is_keras_module(model):
            wrapped = model if isinstance(model, KerasModule) else KerasModule(model)
            return Model(torch=wrapped.eval()), f"{type(model).__name__} (given)"
        if type(model).__module__.startswith("transformers."):
            return Model(torch=HFEncoder(model)), type(model).__name__
        return Model(torch=model), f"{type(model).__name__} (given)"
    if isinstance(model, str | Path):
        path = Path(model).expanduser()
        if str(model).endswith(".onnx"):
            load_onnx(path)
            return Model(onnx=path), str(path)
        if is_keras_path(path):
            return Model(torch=load_keras(path), factory=str(path)), str(path)
        if is_tensorflow_path(path):
            onnx_path = tensorflow_to_onnx(path)
            return Model(onnx=onnx_path), str(onnx_path)
        if path.is_dir():
            return Model(torch=HFEncoder(load_hf_model(path))), path.name
        if isinstance(model, str):
            return None, model
    if hasattr(model, "fit") and hasattr(model, "predict"):
        name = f"sklearn:{type(model).__name__}"
        return Model(sklearn=copy.deepcopy(model), factory=name), name
    raise InvalidInputError(
        "model must be a torch.nn.Module, a scikit-learn estimator, a leanml Model, PATH.onnx, a "
        f"Hugging Face model directory or a model name ('cnn', 'pkg.mod:function'); got {type(model).__name__}"
    )


def model_file_to_onnx(path: str | Path, *, sample: Split | None = None) -> Path:
    """The ONNX file to measure or quantize for a model file: an ONNX file as it is; a Keras model
    exported with torch.onnx (in a new temporary folder) and checked against Keras' predictions on
    ``sample`` (or, without one, random inputs of the model's declared shape); a TensorFlow
    SavedModel converted with tf2onnx.

    Raises:
        InvalidInputError: the file does not load, the samples do not fit the model, or the
            TensorFlow extra is missing (one line each).
    """
    import tempfile

    path = Path(path).expanduser()
    if is_tensorflow_path(path):
        return tensorflow_to_onnx(path)
    if not is_keras_path(path):
        load_onnx(path)
        return path
    module = load_keras(path)
    if sample is None:
        sample = Split(_keras_example(module, path), None)
    elif not isinstance(sample.x, dict):
        check_keras_takes(module, tuple(sample.x.shape[1:]))
    target = Path(tempfile.mkdtemp(prefix="leanml-keras-")) / (path.stem + ".onnx")
    to_onnx(Model(torch=module), sample, target)
    return target


def _keras_example(module: KerasModule, path: Path) -> np.ndarray:
    shape = module.input_shape
    if shape is None or any(d is None for d in shape):
        raise InvalidInputError(
            f"model file {str(path)!r} does not declare a fixed input shape ({shape}); give data "
            "(--calib/--data) or build the Keras model with keras.Input(shape=...)"
        )
    rng = np.random.default_rng(0)
    return rng.standard_normal((16, *shape)).astype(np.float32)  # type: ignore[misc]


def probe_torch(net: Any, data: Dataset) -> None:
    """Fail with one line when a PyTorch model cannot take the data's samples."""
    import torch

    if isinstance(net, KerasModule) and not isinstance(data.train.x, dict):
        check_keras_takes(net, data.input_shape)
    try:
        with torch.inference_mode():
            forward(net.eval(), to_tensor(data.train.head(2).x))
    except Exception as e:  # noqa: BLE001 - whatever the model raises, the cause is the data's shape
        raise InvalidInputError(
            f"the model cannot take the data: samples shaped {list(data.input_shape)} raised "
            f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
        ) from None


def build_model(task: Task, *, seed: int) -> Model:
    """A fresh, untrained model from the task's spec (a torch factory or a scikit-learn estimator)."""
    if task.model_kind == "sklearn":
        est = build_sklearn(task.model, task.model_args, seed=seed)
        return Model(sklearn=est, model_args=dict(task.model_args), factory=task.model)
    seed_everything(seed)
    net = task.build_torch_model()
    probe_torch(net, task.data)
    return Model(torch=net, model_args=dict(task.model_args), factory=task.model)


def train_baseline(
    model: Model,
    task: Task,
    config: TrainConfig,
    *,
    seed: int,
    callbacks: list[Any] | None = None,
    progress: Callable[[str], None] | None = None,
    val_reused: bool = True,
) -> Any:
    """Train a built model in place: ``fit`` for scikit-learn, the shared trainer for torch
    (``callbacks`` after each epoch, ``progress`` told what runs between them). Returns the torch
    training history (None for scikit-learn). ``val_reused``: stages (or a search) judge the model
    on the validation split afterwards, so ``train.refit: auto`` does not retrain on it."""
    if model.sklearn is not None:
        x = task.data.train.x
        if isinstance(x, dict) or task.data.train.y is None:
            raise InvalidInputError("scikit-learn models need tabular data with labels")
        model.sklearn.fit(x.reshape(len(x), -1), task.data.train.y)
        return None
    assert model.torch is not None
    return fit(
        model.torch,
        task.data.train,
        task.data.val,
        task.metric,
        config,
        seed=seed,
        callbacks=callbacks or [],
        progress=progress,
        val_reused=val_reused,
    )


def prepare_model(model: Model, task: Task) -> Model:
    """A given model ready for a stage: a scikit-learn estimator that is not fitted yet is fitted
    on the train split, as a copy (the user's object is never changed)."""
    if model.sklearn is None or _fitted(model.sklearn):
        return model
    from sklearn.base import clone

    fitted = Model(
        sklearn=clone(model.sklearn), model_args=dict(model.model_args), factory=model.factory
    )
    train_baseline(fitted, task, TrainConfig(), seed=DEFAULT_SEED)
    return fitted


def _fitted(estimator: Any) -> bool:
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted

    try:
        check_is_fitted(estimator)
    except NotFittedError:
        return False
    return True


# -- tasks ----------------------------------------------------------------------------------------


def task_for(
    dataset: Dataset,
    *,
    model: Model | None,
    spec: str,
    metric: str | None = None,
    model_args: dict[str, Any] | None = None,
    base_dir: Path | None = None,
    name: str = "task",
) -> Task:
    """The task for ``dataset`` and a model (a handle, or a spec to build).

    Without labels, or with a fidelity metric and a reference model, the targets are the
    reference model's outputs (``model``, or the ONNX file ``spec`` names).
    """
    if model is not None and model.onnx is not None and model.form == "onnx":
        check_onnx_takes(OnnxRunner(model.onnx), dataset.train.x)
    reference_outputs = metric in FIDELITY_METRICS or not dataset.labelled
    if reference_outputs:
        if metric is not None and metric not in FIDELITY_METRICS:
            raise InvalidInputError(
                f"metric {metric!r} needs labels and the data has none; use "
                f"{' or '.join(FIDELITY_METRICS)} to measure fidelity to the original model"
            )
        reference = model
        if reference is None and spec.endswith(".onnx"):
            reference = Model(onnx=Path(spec))
        if reference is not None and reference.form in ("torch", "onnx"):
            dataset = reference_targets(dataset, reference)
        elif not (dataset.train.y is not None and dataset.train.y.ndim > 1):
            raise InvalidInputError(
                f"metric {metric or 'cosine'!r} measures fidelity to a reference model: give the model "
                "as PATH.onnx or a trained model, or data whose y holds the reference outputs"
            )
    return make_task(
        dataset,
        metric=metric or default_metric(dataset, reference=reference_outputs),
        model=spec,
        model_args=model_args,
        base_dir=base_dir,
        name=name,
    )


def train_model(task: Task, config: TrainConfig, *, seed: int) -> Model:
    """Build the task's model and train it: a baseline outside a recipe (benches, notebooks)."""
    model = build_model(task, seed=seed)
    train_baseline(model, task, config, seed=seed)
    return model
