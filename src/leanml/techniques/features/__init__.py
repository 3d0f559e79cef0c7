"""Feature selection and transforms for tabular models, baked into the exported model."""

from __future__ import annotations

from ._config import FeaturesConfig
from ._stage import FeaturesStage

__all__ = ["FeaturesConfig", "FeaturesStage"]
