"""Quantization: post-training dynamic/static int8, float16, and quantization-aware training, all deployed as ONNX."""

from __future__ import annotations

from ._config import Calibration, QuantizeConfig
from ._stage import QuantizeStage

__all__ = ["Calibration", "QuantizeConfig", "QuantizeStage"]
