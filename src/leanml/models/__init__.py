"""Models: the zoo registered by name, user models, and the Model handle stages pass along."""

from __future__ import annotations

from . import _zoo  # registers the built-in models
from ._hf import HFEncoder, load_hf_model
from ._keras import (
    KerasModule,
    check_keras_takes,
    import_keras,
    is_keras_module,
    is_keras_path,
    is_tensorflow_path,
    load_keras,
    rebuild_keras,
    tensorflow_to_onnx,
)
from ._load import load_pickled_module, load_weights
from ._model import Model
from ._registry import build_model, get_model_factory, model_names, register_model
from ._sklearn import build_sklearn, sklearn_estimator_names
from ._zoo import MLP, MobileNet, SmallCNN, Standardize

__all__ = [
    "MLP",
    "HFEncoder",
    "KerasModule",
    "MobileNet",
    "Model",
    "SmallCNN",
    "Standardize",
    "build_model",
    "build_sklearn",
    "check_keras_takes",
    "get_model_factory",
    "import_keras",
    "is_keras_module",
    "is_keras_path",
    "is_tensorflow_path",
    "load_hf_model",
    "load_keras",
    "load_pickled_module",
    "load_weights",
    "model_names",
    "rebuild_keras",
    "register_model",
    "sklearn_estimator_names",
    "tensorflow_to_onnx",
]
del _zoo
