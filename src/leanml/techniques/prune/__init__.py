"""Pruning: unstructured, N:M, neuron, channel and layer. Structured kinds physically remove weights."""

from __future__ import annotations

from ._config import PruneConfig, ScheduleConfig, SensitivityConfig
from ._stage import PruneStage

__all__ = ["PruneConfig", "PruneStage", "ScheduleConfig", "SensitivityConfig"]
