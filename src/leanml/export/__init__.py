"""Export of the final accepted model: ONNX (checked against its source) and safetensors weights."""

from __future__ import annotations

import shutil
from pathlib import Path

from torch import nn

from .._utils import atomic_path
from ..runtime import load_onnx

__all__ = ["copy_onnx", "save_safetensors"]


def save_safetensors(net: nn.Module, path: str | Path) -> Path:
    """Save a module's weights (parameters and buffers) as safetensors, atomically."""
    from safetensors.torch import save_model

    path = Path(path)
    with atomic_path(path) as tmp:
        save_model(net, str(tmp))
    return path


def copy_onnx(source: str | Path, target: str | Path) -> Path:
    """Copy a checked ONNX artifact to ``target`` atomically (the run's final ``model.onnx``)."""
    target = Path(target)
    load_onnx(source)  # the final artifact must pass onnx.checker
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target
