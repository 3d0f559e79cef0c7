"""Techniques: one stage kind per module, registered by name."""

from __future__ import annotations

from ._base import (
    Plot,
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    get_stage_class,
    register_stage,
    stage_kinds,
    unregister_stage,
)

__all__ = [
    "Plot",
    "Stage",
    "StageConfig",
    "StageContext",
    "StageResult",
    "get_stage_class",
    "register_stage",
    "stage_kinds",
    "unregister_stage",
]

# Each technique module registers its stage kind when imported: one line per technique.
# --- technique registrations ---
from . import (
    _distill,  # noqa: F401
    _features,  # noqa: F401
    _prune,  # noqa: F401
    _quantize,  # noqa: F401
    _tune,  # noqa: F401
)
# --- end of technique registrations ---
