"""ONNX Runtime's quantizers, as the quantize stage calls them: static QDQ int8 calibrated on
samples, dynamic int8, and float16."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from ..._utils import atomic_path
from ...data import Inputs, n_rows, take
from ...errors import InvalidInputError, StageError
from ...runtime import OnnxRunner
from ._config import Calibration, QuantizeConfig
from ._layers import DYNAMIC_OPS, EMBEDDING_OPS
from ._onnx import compact_names, finish, quiet_quantizer


class _Reader:
    """Feeds calibration batches to ONNX Runtime's calibrator (a CalibrationDataReader)."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]) -> None:
        self.feeds = feeds
        self.index = 0
        self.end = len(feeds)

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= self.end:
            return None
        self.index += 1
        return self.feeds[self.index - 1]

    def rewind(self) -> None:
        self.index, self.end = 0, len(self.feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        """The batches the next collection reads (ONNX Runtime's strided calibration)."""
        self.index, self.end = start_index, min(end_index, len(self.feeds))

    def __len__(self) -> int:
        return len(self.feeds)


def calibration_feeds(
    model_path: Path, x: Inputs, *, batch_size: int = 32
) -> list[dict[str, np.ndarray]]:
    """Equal-size batches of ``x`` keyed by the model's input names, in the model's input dtypes.

    Every batch has the same number of rows (the largest divisor of the sample count up to
    ``batch_size``): ONNX Runtime's histogram calibrators (entropy, percentile) stack the outputs
    of all batches into one array, which fails when the last batch is shorter."""

    runner = OnnxRunner(model_path)
    n = n_rows(x)
    size = next(b for b in range(min(batch_size, max(n, 1)), 0, -1) if n % b == 0)
    return [runner.feed(take(x, slice(s, s + size))) for s in range(0, n, size)]


# The defaults are the ``quantize:`` keys' (written once, in _config.py).
_CONFIG, _CALIBRATION = QuantizeConfig.model_fields, Calibration.model_fields


@dataclass(frozen=True)
class StaticSettings:
    """How :func:`quantize_static` rounds; ``reduce_range`` is the resolved ``quantize.reduce_range``
    (see :func:`._config.reduce_range_for`)."""

    method: str = _CALIBRATION["method"].default
    percentile: float = _CALIBRATION["percentile"].default
    per_channel: bool = _CONFIG["per_channel"].default
    reduce_range: bool = False
    symmetric_weights: bool = _CONFIG["symmetric_weights"].default
    symmetric_activations: bool = _CONFIG["symmetric_activations"].default

    @classmethod
    def of(cls, cfg: QuantizeConfig, *, method: str, reduce_range: bool) -> StaticSettings:
        """The settings of ``cfg``, calibrating with ``method`` (never ``auto``)."""
        return cls(
            method=method,
            percentile=cfg.calibration.percentile,
            per_channel=cfg.per_channel,
            reduce_range=reduce_range,
            symmetric_weights=cfg.symmetric_weights,
            symmetric_activations=cfg.symmetric_activations,
        )


def quantize_static(
    src: Path,
    dst: Path,
    feeds: list[dict[str, np.ndarray]],
    settings: StaticSettings,
    *,
    exclude: Sequence[str] = (),
    cache: Path | None = None,
    compact: bool = True,
    op_types: Sequence[str] | None = None,
) -> None:
    """QDQ int8 with activations calibrated on ``feeds``. ``cache`` keeps the calibrated ranges, so
    that re-quantizing with other exclusions does not calibrate again. ``compact`` False keeps the
    quantizer's tensor names (for tensor-level surgery; :func:`finish` compacts them later).
    ``op_types`` limits Q/DQ to those ops' tensors (None: every op the quantizer knows)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType
    from onnxruntime.quantization import quantize_static as ort_static

    method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[settings.method]
    extra: dict[str, object] = {
        "WeightSymmetric": settings.symmetric_weights,
        "ActivationSymmetric": settings.symmetric_activations,
    }
    if settings.method == "percentile":
        extra["CalibPercentile"] = settings.percentile
    if settings.method in ("entropy", "percentile"):
        # The histogram calibrators keep every tensor of every batch of a collection until they
        # histogram it (over 16 GB for YOLOv8n on 256 samples at 320x320): collect one batch at a
        # time and merge the histograms.
        extra["CalibStridedMinMax"] = 1
    with atomic_path(dst) as tmp, quiet_quantizer():
        try:
            ort_static(
                str(src),
                str(tmp),
                _Reader(feeds),
                quant_format=QuantFormat.QDQ,
                per_channel=settings.per_channel,
                reduce_range=settings.reduce_range,
                # x86 int8 kernels are u8 x s8; symmetric activations use s8 with zero point 0.
                activation_type=QuantType.QInt8
                if settings.symmetric_activations
                else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
                op_types_to_quantize=list(op_types) if op_types else None,
                calibrate_method=method,
                extra_options=extra,
                calibration_cache_path=str(cache) if cache else None,
            )
        except InvalidInputError:
            raise
        except Exception as e:
            raise StageError(
                f"ONNX Runtime's static quantizer failed: {str(e).splitlines()[0][:300]}"
            ) from e
        if compact:
            finish(tmp)


def quantize_dynamic(
    src: Path, dst: Path, *, per_channel: bool, reduce_range: bool, exclude: Sequence[str] = ()
) -> None:
    """Int8 weights; activations quantized at run time by ONNX Runtime."""
    from onnxruntime.quantization import QuantType
    from onnxruntime.quantization import quantize_dynamic as ort_dynamic

    with atomic_path(dst) as tmp, quiet_quantizer():
        try:
            ort_dynamic(
                str(src),
                str(tmp),
                op_types_to_quantize=[*DYNAMIC_OPS, *EMBEDDING_OPS],
                per_channel=per_channel,
                reduce_range=reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=list(exclude),
            )
        except Exception as e:
            raise StageError(
                f"ONNX Runtime's dynamic quantizer failed: {str(e).splitlines()[0][:300]}"
            ) from e
        finish(tmp)


def convert_fp16(src: Path, dst: Path, *, exclude: Sequence[str] = ()) -> None:
    """Float16 weights and compute, inputs and outputs kept float32 (ONNX Runtime's converter)."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    with atomic_path(dst) as tmp, quiet_quantizer():
        try:
            half = convert_float_to_float16(
                model, keep_io_types=True, node_block_list=list(exclude)
            )
        except Exception as e:
            raise StageError(f"float16 conversion failed: {str(e).splitlines()[0][:300]}") from e
        from onnxruntime.transformers.onnx_model import OnnxModel

        OnnxModel.graph_topological_sort(half.graph)  # the converter appends its input Casts last
        compact_names(half)
        onnx.checker.check_model(half)
        onnx.save(half, str(tmp))
