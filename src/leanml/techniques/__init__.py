"""Techniques: one subpackage per stage kind (``prune/``, ``quantize/``, ``distill/``, ``tune/``,
``features/``), each registered by name behind the :class:`Stage` contract in ``_base.py``."""

from __future__ import annotations

from ._base import (
    Stage,
    StageConfig,
    StageContext,
    StageResult,
    Step,
    get_stage_class,
    register_stage,
    stage_kinds,
    unregister_stage,
)
from ._planning import plan_space, planned_kinds

__all__ = [
    "Stage",
    "StageConfig",
    "StageContext",
    "StageResult",
    "Step",
    "get_stage_class",
    "plan_space",
    "planned_kinds",
    "register_stage",
    "stage_kinds",
    "unregister_stage",
]

# Each technique subpackage registers its stage kind when imported: one line per technique.
from . import distill, features, prune, quantize, tune  # noqa: F401
