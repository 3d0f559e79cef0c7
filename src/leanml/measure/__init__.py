"""Measurement of deployable artifacts in their runtime (``leanml.measure``)."""

from __future__ import annotations

from ._config import MeasureConfig
from ._flops import onnx_flops, onnx_param_counts, torch_flops
from ._latency import Timing, time_call
from ._measure import Measurement, artifact_size, measure
from ._memory import peak_memory_bytes
from ._paired import paired_latency_ratio

__all__ = [
    "MeasureConfig",
    "Measurement",
    "Timing",
    "artifact_size",
    "measure",
    "onnx_flops",
    "onnx_param_counts",
    "paired_latency_ratio",
    "peak_memory_bytes",
    "time_call",
    "torch_flops",
]
