"""The ``quantize:`` recipe keys: the stage's configuration and its defaults, written once."""

from __future__ import annotations

import platform
from typing import Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, field_validator, model_validator

from ..._utils import cpu_description
from ...training import check_train_overrides
from .._base import StageConfig

QUANTIZED_OPS = {
    "QuantizeLinear",
    "DequantizeLinear",
    "DynamicQuantizeLinear",
    "QLinearConv",
    "QLinearMatMul",
    "ConvInteger",
    "MatMulInteger",
    "DynamicQuantizeMatMul",
    "QGemm",
}
# Per-layer sensitivity costs one quantization and one evaluation per layer.
MAX_SENSITIVITY_LAYERS = 96
# Static mode measures every quantized tensor (QDQ pair) in one session, one evaluation each.
MAX_SENSITIVITY_TENSORS = 1000
# Sensitivity only for the report's chart (the model already holds the budget) is skipped when it
# would take longer than this; auto-exclusion, which needs it, always runs it.
SENSITIVITY_SECONDS = 60.0
# Sensitivity ranks layers; it is measured on at most this many val samples (the same ones for a
# seed), and auto_exclude checks what it keeps float on the whole val split.
SENSITIVITY_ROWS = 64


class Calibration(BaseModel):
    """How static quantization finds activation ranges: on ``samples`` training samples."""

    model_config = ConfigDict(extra="forbid")

    # ``auto``: static mode quantizes with minmax, percentile and entropy and keeps the best on val
    # (see _calibrate.py). Not the default: on the real models of bench/quantization_real.py it
    # cost 26-60% more wall time for the same fidelity after auto_exclude (docs/quantize.md).
    # QAT ignores the method: it searches and then learns its ranges.
    method: Literal["auto", "minmax", "entropy", "percentile"] = "minmax"
    samples: int = Field(256, ge=1, le=100_000)
    percentile: float = Field(99.999, gt=50.0, le=100.0)


class QuantizeConfig(StageConfig):
    """The ``quantize:`` keys of a recipe (see docs/quantize.md)."""

    mode: Literal["dynamic", "static", "fp16", "qat"] = "static"
    calibration: Calibration = Field(default_factory=Calibration)
    per_channel: bool = True
    symmetric_weights: bool = True
    symmetric_activations: bool = False
    reduce_range: bool | Literal["auto"] = "auto"
    exclude: list[str] = Field(default_factory=list)
    auto_exclude: bool = True
    sensitivity: bool = True
    preprocess: bool = True
    # SmoothQuant-style migration of activation outliers into MatMul/Gemm weights before int8
    # (see _smooth.py). ``auto``: in dynamic mode, kept when it improves the val metric (it took a
    # MiniLM sentence encoder from 0.993 to 0.998 embedding cosine); ``true``: applied in dynamic
    # and static mode; ``false``: never.
    smooth: bool | Literal["auto"] = "auto"
    # The share of each activation channel's range moved into the weights; 0.7-0.8 measured best
    # on MiniLM (0.5, SmoothQuant's default for OPT, kept 0.990 there).
    smooth_alpha: float = Field(0.75, gt=0.0, lt=1.0)
    # Subtract the int8 shift of each Conv/Gemm's per-channel mean output from its float bias
    # (see _bias.py). ``auto``: in static mode, kept when the val metric is not worse; ``true``:
    # always in static mode; ``false``: never.
    bias_correction: bool | Literal["auto"] = "auto"
    # Static and dynamic mode time their int8 formats against the float model (see _formats.py) and
    # keep the fastest that holds max_metric_drop; true: the float model when no int8 format is
    # faster; false: the fastest int8 format even when slower (for a 4x smaller file).
    require_speedup: bool = True
    # ``leanml.quantize(..., finetune=...)``: the function's ``train`` is the model's own training.
    train: dict[str, Any] = Field(
        default_factory=lambda: {"epochs": 3}, validation_alias=AliasChoices("train", "finetune")
    )

    @field_validator("train")
    @classmethod
    def _train(cls, value: dict[str, Any]) -> dict[str, Any]:
        return check_train_overrides(value) or {}

    @model_validator(mode="after")
    def _smooth_needs_int8(self) -> QuantizeConfig:
        if self.smooth is True and self.mode not in ("dynamic", "static"):
            raise ValueError(
                f"smooth: true moves activation ranges into int8 weights (modes dynamic and static); "
                f"mode is {self.mode!r}: set smooth to false or auto"
            )
        return self

    @model_validator(mode="after")
    def _bias_correction_needs_static(self) -> QuantizeConfig:
        if self.bias_correction is True and self.mode != "static":
            raise ValueError(
                f"bias_correction: true corrects the biases of static int8 layers (mode static); "
                f"mode is {self.mode!r}: set bias_correction to false or auto"
            )
        return self


def reduce_range_for(setting: bool | str) -> bool:
    """``auto``: 7-bit weights on x86 CPUs without VNNI, where u8 x s8 int8 kernels can saturate."""
    if setting != "auto":
        return bool(setting)
    x86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")
    return x86 and "vnni" not in cpu_description()
