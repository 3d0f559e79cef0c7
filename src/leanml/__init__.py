"""leanml: make trained models smaller and faster, measured on the runtime they deploy to.

Example:
    >>> import leanml
    >>> result = leanml.run("examples/digits.yaml")  # doctest: +SKIP
    >>> result.metrics["stages"][-1]["latency_ms"]["batch_1"]["p50"]  # doctest: +SKIP
"""

from __future__ import annotations

__version__ = "0.1.0"

from .errors import InvalidInputError, LeanmlError, StageError  # noqa: E402
from .measure import measure  # noqa: E402
from .pipeline import load_recipe, run  # noqa: E402
from .pipeline._distill_api import distill  # noqa: E402
from .pipeline._features_api import select_features  # noqa: E402
from .pipeline._prune_api import prune  # noqa: E402
from .pipeline._quantize_api import quantize  # noqa: E402
from .pipeline._tune_api import tune  # noqa: E402

__all__ = ["InvalidInputError", "LeanmlError", "StageError", "__version__", "distill", "load_recipe", "measure", "prune", "quantize", "run", "select_features", "tune"]
