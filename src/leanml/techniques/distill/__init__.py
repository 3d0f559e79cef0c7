"""Knowledge distillation: a smaller student trained on the teacher's outputs."""

from __future__ import annotations

from ._config import AugmentConfig, DistillConfig
from ._stage import DistillStage

__all__ = ["AugmentConfig", "DistillConfig", "DistillStage"]
