"""leanml: make trained models smaller and faster, measured on the runtime they deploy to.

Example:
    >>> import leanml
    >>> result = leanml.run("examples/digits.yaml")  # doctest: +SKIP
    >>> result.metrics["stages"][-1]["latency_ms"]["batch_1"]["p50"]  # doctest: +SKIP
"""

from __future__ import annotations

import sys
import types
from typing import TYPE_CHECKING, Any

from ._version import __version__
from .errors import InvalidInputError, LeanmlError, StageError

if TYPE_CHECKING:
    from .measure import measure
    from .pipeline import (
        distill,
        load_recipe,
        optimize,
        prune,
        quantize,
        run,
        select_features,
        tune,
    )

# The API's entry points import torch, ONNX and the rest when first used, not with the package:
# `leanml --help` and a bad recipe path answer at once (PEP 562).
_LAZY = {
    "measure": "measure",
    **dict.fromkeys(
        (
            "distill",
            "load_recipe",
            "optimize",
            "prune",
            "quantize",
            "run",
            "select_features",
            "tune",
        ),
        "pipeline",
    ),
}


class _Package(types.ModuleType):
    """The package module: importing the ``leanml.measure`` subpackage binds that name here, as any
    import does; ``leanml.measure`` stays the function, as before imports were deferred."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "measure" and isinstance(value, types.ModuleType):
            value = value.measure
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'leanml' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__all__ = [
    "InvalidInputError",
    "LeanmlError",
    "StageError",
    "__version__",
    "distill",
    "load_recipe",
    "measure",
    "optimize",
    "prune",
    "quantize",
    "run",
    "select_features",
    "tune",
]
