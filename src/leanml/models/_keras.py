"""Keras 3 models (``.keras`` files) as PyTorch modules, and TensorFlow models converted to ONNX.

Keras 3 runs on PyTorch: with ``KERAS_BACKEND=torch`` a Keras model *is* a ``torch.nn.Module``
whose variables are torch parameters, so the shared trainer, torch.onnx and every ONNX-level stage
take it as they take any module. No TensorFlow is needed. Keras is channels-last: the model keeps
the layout it was built with, and so do the data and the exported ONNX model.

Keras 3 also reads legacy Keras ``.h5`` files, on PyTorch too. TensorFlow SavedModels need
TensorFlow itself; with ``pip install 'leanml[tensorflow]'`` they are converted to ONNX with tf2onnx
and run through the ONNX-level stages (measure, quantize).
"""

from __future__ import annotations

import os
import re
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError

# Keras 3 reads its own .keras archives and the legacy Keras .h5 files, on PyTorch.
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
KERAS_INSTALL = "pip install 'leanml[keras]'"
TENSORFLOW_INSTALL = "pip install 'leanml[tensorflow]'"


def import_keras(*, what: str = "the model") -> Any:
    """Keras 3 on its PyTorch backend.

    leanml sets ``KERAS_BACKEND=torch`` for its own process before Keras is first imported; a Keras
    imported earlier with another backend cannot be switched, so that is an error naming the fix.

    Raises:
        InvalidInputError: Keras is not installed, or was imported with another backend.
    """
    if "keras" not in sys.modules:
        os.environ["KERAS_BACKEND"] = "torch"
    try:
        import keras
    except ImportError:
        raise InvalidInputError(
            f"{what} is a Keras model; Keras 3 is not installed: {KERAS_INSTALL} "
            "(it runs on PyTorch, no TensorFlow needed)"
        ) from None
    backend = keras.backend.backend()
    if backend != "torch":
        raise InvalidInputError(
            f"Keras was imported with the {backend!r} backend before leanml; leanml runs Keras on "
            "PyTorch: set KERAS_BACKEND=torch before the first `import keras`"
        )
    return keras


class KerasModule(nn.Module):
    """A Keras model as a PyTorch module whose ``train()``/``eval()`` reach Keras.

    Keras layers take ``training`` as a call argument (dropout, batch-norm statistics) and ignore
    torch's mode flag; this wrapper passes ``training=self.training``, so the shared trainer
    fine-tunes it as it trains any module, and ``eval()`` gives exactly Keras' predictions.

    Attributes:
        keras_model: the Keras model (a ``torch.nn.Module`` itself, holding the parameters).
    """

    def __init__(self, keras_model: Any) -> None:
        super().__init__()
        self.keras_model = keras_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.keras_model(x, training=self.training)
        if isinstance(out, dict | list | tuple):
            raise InvalidInputError(
                f"the Keras model {self.keras_model.name!r} has {len(out)} outputs; leanml takes "
                "models with one output tensor"
            )
        return out

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        """One sample's shape as Keras declares it (without the batch axis), when declared."""
        shape = getattr(self.keras_model, "input_shape", None)
        if not isinstance(shape, tuple) or not shape or isinstance(shape[0], tuple | list):
            return None
        return tuple(shape[1:])


def is_keras_module(net: nn.Module | None) -> bool:
    """Whether ``net`` is or holds a Keras model (also inside a wrapper a stage added, such as the
    features stage's column selection): Keras layers, which torch-level tools do not know."""
    if net is None:
        return False
    keras = sys.modules.get("keras")
    return any(
        isinstance(m, KerasModule) or (keras is not None and isinstance(m, keras.Layer))
        for m in net.modules()
    )


def is_keras_path(spec: str | Path) -> bool:
    """A file Keras 3 loads: a ``.keras`` archive or a legacy Keras ``.h5``/``.hdf5`` file."""
    return str(spec).endswith(KERAS_SUFFIXES)


def is_tensorflow_path(spec: str | Path) -> bool:
    """A TensorFlow SavedModel directory (one holding ``saved_model.pb``)."""
    path = Path(spec).expanduser()
    return path.is_dir() and (path / "saved_model.pb").is_file()


_MISSING_CLASS = re.compile(r"Could not locate (?:class|function) '([^']+)'")


def load_keras(path: str | Path, *, trust: bool = False) -> KerasModule:
    """Load a ``.keras`` file with Keras 3 on PyTorch, ready for inference (``eval()``).

    Args:
        path: the ``.keras`` file (a Keras 3 zip archive) or a legacy Keras ``.h5`` file.
        trust: allow ``Lambda`` layers holding Python bytecode (Keras' ``safe_mode=False``), which
            runs code from the file (``--trust-pickle``).

    Raises:
        InvalidInputError: the file is missing or Keras cannot load it (what Keras reported, in one
            line), or it uses a custom layer that is not registered (named, with how to register it).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise InvalidInputError(f"model file {str(path)!r} does not exist")
    keras = import_keras(what=f"model file {str(path)!r}")
    try:
        net = keras.saving.load_model(path, compile=False, safe_mode=not trust)
    except Exception as e:  # noqa: BLE001 - whatever Keras raises, one line naming it
        raise InvalidInputError(_load_error(path, e)) from None
    module = KerasModule(net)
    return module.eval()


def rebuild_keras(path: str | Path, in_shape: tuple[int, ...], train_x: Any = None) -> KerasModule:
    """The Keras model's architecture with fresh weights, for samples shaped ``in_shape``: what a
    stage that changes the inputs (features: fewer columns) retrains. ``Normalization`` layers that
    take the model's input are adapted to ``train_x`` (as leanml's MLP fits its Standardize)."""
    keras = import_keras(what=f"model file {str(path)!r}")
    net = load_keras(path).keras_model
    try:
        clone = keras.models.clone_model(net, input_tensors=keras.Input(tuple(in_shape)))
    except Exception as e:  # noqa: BLE001 - a subclassed model or a fixed-width layer
        raise InvalidInputError(
            f"the Keras model in {str(path)!r} cannot be rebuilt for samples shaped {tuple(in_shape)}: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0][:200] if str(e).strip() else ''}"
        ) from None
    if train_x is not None:
        for layer in clone.layers:
            if isinstance(layer, keras.layers.Normalization) and any(
                layer.input is t for t in clone.inputs
            ):
                layer.adapt(train_x)
    return KerasModule(clone)


def _load_error(path: Path, e: Exception) -> str:
    text = str(e)
    missing = _MISSING_CLASS.search(text)
    if missing:
        name = missing.group(1)
        return (
            f"model file {str(path)!r} uses the custom layer {name!r}, which is not registered; "
            "decorate its class with @keras.saving.register_keras_serializable() in an importable "
            "module and import that module before leanml loads the model (e.g. in the recipe's "
            "data or model entry point)"
        )
    if "safe_mode" in text:
        return (
            f"model file {str(path)!r} holds a Lambda layer with Python code, which Keras refuses to "
            "load in safe mode; pass --trust-pickle if you trust the file, or replace the Lambda by "
            "a registered layer"
        )
    first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
    return f"Keras cannot load model file {str(path)!r}: {type(e).__name__}: {first[:300]}"


def check_keras_takes(module: KerasModule, sample_shape: tuple[int, ...]) -> None:
    """Fail with one line when the data's samples are not in the Keras model's layout.

    Keras is channels-last and leanml keeps the user's layout, so channels-first images (what
    leanml's built-in image data is) must be transposed by the user, not silently by leanml.
    """
    declared = module.input_shape
    if declared is None:
        return
    fits = len(declared) == len(sample_shape) and all(
        d is None or d == s for d, s in zip(declared, sample_shape)
    )
    if fits:
        return
    shown = tuple("?" if d is None else d for d in declared)
    hint = ""
    if len(sample_shape) == 3 and tuple(sample_shape[1:]) + sample_shape[:1] == shown:
        hint = (
            " (the data is channels-first, Keras is channels-last): give the data in the model's "
            "layout, e.g. x.transpose(0, 2, 3, 1)"
        )
    raise InvalidInputError(
        f"the Keras model takes samples shaped {shown}; the data's samples are shaped "
        f"{tuple(sample_shape)}{hint or ': give data of the model input shape'}"
    )


def tensorflow_to_onnx(path: str | Path, *, out_dir: str | Path | None = None) -> Path:
    """Convert a TensorFlow SavedModel directory to ONNX with tf2onnx (opset 17).

    Returns:
        the ONNX file (in ``out_dir``, by default a new temporary folder).

    Raises:
        InvalidInputError: the extra is not installed (the one line says which pip install enables
            it), or tf2onnx cannot convert the model (what it reported).
    """
    path = Path(path).expanduser()
    try:
        import tensorflow  # type: ignore[import-not-found]  # noqa: F401
        import tf2onnx  # type: ignore[import-not-found]  # noqa: F401
    except ImportError:
        raise InvalidInputError(
            f"model {str(path)!r} is a TensorFlow SavedModel; converting it needs TensorFlow and "
            f"tf2onnx: {TENSORFLOW_INSTALL} (or save the model as .keras with Keras 3, which needs "
            "no TensorFlow)"
        ) from None
    out = Path(out_dir) if out_dir else Path(tempfile.mkdtemp(prefix="leanml-tf-"))
    out.mkdir(parents=True, exist_ok=True)
    target = out / (path.name + ".onnx")
    try:
        _convert_saved_model(path, target)
    except Exception as e:  # noqa: BLE001 - whatever TensorFlow/tf2onnx raise, one line
        raise InvalidInputError(f"tf2onnx cannot convert {str(path)!r}: {e}") from None
    return target


def _convert_saved_model(path: Path, target: Path) -> None:
    import subprocess

    cmd = [
        sys.executable,
        "-m",
        "tf2onnx.convert",
        "--saved-model",
        str(path),
        "--output",
        str(target),
        "--opset",
        "17",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0 or not target.is_file():
        lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
        raise RuntimeError(lines[-1] if lines else f"tf2onnx exited with {done.returncode}")
