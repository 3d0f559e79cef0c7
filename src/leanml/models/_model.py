"""The model that flows between pipeline stages, in the forms it exists in."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn


@dataclass
class Model:
    """A model at one point of the pipeline.

    Exactly one of ``torch``, ``onnx`` and ``sklearn`` is the model's source of truth:
    ``torch`` for trainable PyTorch modules, ``onnx`` for a ready ONNX file (a user's pretrained
    model or a quantized one, which later stages can only measure or re-quantize), ``sklearn`` for a
    fitted scikit-learn estimator.

    Attributes:
        model_args: the arguments the torch model was built with (stages that rebuild it use them).
        factory: the name or entry point that builds the torch model, when known.
        info: what stages learned about the model (e.g. the selected features), kept for the report.
    """

    torch: nn.Module | None = None
    onnx: Path | None = None
    sklearn: Any = None
    model_args: dict[str, Any] = field(default_factory=dict)
    factory: str | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def form(self) -> str:
        if self.torch is not None:
            return "torch"
        if self.sklearn is not None:
            return "sklearn"
        return "onnx"

    def clone(self) -> Model:
        """A deep copy a stage can change without touching the previous stage's model."""
        return Model(
            torch=copy.deepcopy(self.torch),
            onnx=self.onnx,
            sklearn=copy.deepcopy(self.sklearn),
            model_args=copy.deepcopy(self.model_args),
            factory=self.factory,
            info=copy.deepcopy(self.info),
        )

    def torch_params(self) -> int | None:
        if self.torch is None:
            return None
        return sum(p.numel() for p in self.torch.parameters())
