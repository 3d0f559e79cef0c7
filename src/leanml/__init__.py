"""leanml: make trained models smaller and faster, measured on the runtime they deploy to.

Example:
    >>> import leanml
    >>> result = leanml.run("examples/digits.yaml")  # doctest: +SKIP
    >>> result.metrics["stages"][-1]["latency_ms"]["batch_1"]["p50"]  # doctest: +SKIP
"""

from __future__ import annotations

from ._version import __version__
from .errors import InvalidInputError, LeanmlError, StageError
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
