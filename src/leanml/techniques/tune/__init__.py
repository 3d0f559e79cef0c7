"""Hyperparameter tuning with Optuna: samplers, pruners, storages; later stages' settings too."""

from __future__ import annotations

from ._config import TuneConfig
from ._stage import TuneStage

__all__ = ["TuneConfig", "TuneStage"]
