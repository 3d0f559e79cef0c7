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
    """Copy a checked ONNX artifact to ``target`` atomically (the run's final ``model.onnx``),
    with the external-data files it names (models over 2 GB keep their weights beside the graph)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    source, target = Path(source), Path(target)
    load_onnx(source)  # the final artifact must pass onnx.checker
    proto = onnx.load(str(source), load_external_data=False)
    locations = {
        entry.value
        for t in proto.graph.initializer
        if uses_external_data(t)
        for entry in t.external_data
        if entry.key == "location"
    }
    for name in sorted(locations):  # the weights first: the graph never points at missing files
        if (source.parent / name).resolve() != (target.parent / name).resolve():
            with atomic_path(target.parent / name) as tmp:
                shutil.copyfile(source.parent / name, tmp)
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)
    return target
