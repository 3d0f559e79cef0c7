"""The deployable form of models: ONNX conversion and ONNX Runtime sessions."""

from __future__ import annotations

from ._convert import (
    OPSET,
    PARITY_ATOL,
    PARITY_RTOL,
    check_parity,
    sklearn_outputs,
    to_onnx,
    torch_to_onnx,
)
from ._session import OnnxRunner, load_onnx

__all__ = [
    "OPSET",
    "PARITY_ATOL",
    "PARITY_RTOL",
    "OnnxRunner",
    "check_parity",
    "load_onnx",
    "sklearn_outputs",
    "to_onnx",
    "torch_to_onnx",
]
