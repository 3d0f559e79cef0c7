"""What differs between the ONNX modes of the quantize stage: static, dynamic and fp16, one small
strategy object each, built from the config by :func:`mode_for`.

The stage's steps (their order is in :mod:`._stage`) ask the mode, never ``quantize.mode``:

- which nodes are its layers: :meth:`Mode.layer_nodes` (what ``exclude`` may name),
  :meth:`Mode.layers` (sensitivity's candidates), :meth:`Mode.tables`;
- how to quantize one model: :meth:`Mode.quantize` (and :meth:`Mode.prepare` first);
- which fidelity passes apply: :meth:`Mode.smooths` (SmoothQuant; ``auto`` in dynamic mode) and
  :meth:`Mode.corrects_bias` (static mode);
- how sensitivity is measured: per quantized tensor (``per_tensor``, static mode) or per layer
  (:meth:`Mode.layer_sensitivity`: one session in dynamic mode, one quantization per layer in fp16);
- which formats the format comparison builds besides the stage's own (``formats``);
- what its notes say (``int8``, ``op_reasons``).

Quantization-aware training trains the PyTorch model instead: it is its own path (:mod:`._qat`).
"""

from __future__ import annotations

import tempfile
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnx

from ...data import Inputs
from ...runtime import OnnxRunner
from ._config import QuantizeConfig, reduce_range_for
from ._layers import DYNAMIC_OPS, compute_nodes, embedding_nodes
from ._onnx import finish, gemm_to_matmul
from ._ort import StaticSettings, convert_fp16, quantize_dynamic, quantize_static
from ._sensitivity import dynamic_sensitivity
from ._tensors import keep_tensors_float

Feeds = Sequence[dict[str, np.ndarray]]
# progress(k, n, layer, drop) after each layer's sensitivity
Progress = Callable[[int, int, str, float], None]


class Mode(ABC):
    """One way to quantize the float ONNX graph. The class attributes are what the steps ask;
    :meth:`quantize` is the one call that writes a model."""

    name: ClassVar[str]
    # The label of the stage's own model in the format comparison ({mixed}: tensors kept float).
    label: ClassVar[str]
    # False for float16: no int8 nodes to count, its own op-count note, and a speed note.
    int8: ClassVar[bool] = True
    # Calibrates activation ranges on training samples (static): the calibrate step draws them
    # first, and the first quantization is where the ranges are calibrated.
    calibrates: ClassVar[bool] = False
    # ``smooth: auto`` tries SmoothQuant (dynamic mode: it took a MiniLM sentence encoder from
    # 0.993 to 0.998 embedding cosine).
    smooths_on_auto: ClassVar[bool] = False
    # Sensitivity and auto_exclude work per quantized tensor (QDQ pair) instead of per layer.
    per_tensor: ClassVar[bool] = False
    # The formats the format comparison builds besides the stage's own (see _formats._candidates).
    formats: ClassVar[tuple[str, ...]] = ()
    # op type -> why this mode leaves it float (for the op-count notes).
    op_reasons: ClassVar[dict[str, str]] = {}

    def layer_nodes(self, graph: onnx.ModelProto) -> list[onnx.NodeProto]:
        """The nodes ``exclude`` may name: the compute nodes (Conv, MatMul, Gemm)."""
        return compute_nodes(graph)

    def layers(self, graph: onnx.ModelProto) -> list[str]:
        """The layers sensitivity measures, by node name."""
        return [n.name for n in self.layer_nodes(graph)]

    def tables(self, graph: onnx.ModelProto) -> list[str]:
        """The embedding tables this mode stores in int8 (none but in dynamic mode)."""
        return []

    def prepare(self, path: Path) -> list[str]:
        """Rewrite the prepared float graph at ``path`` in place for this mode's quantizer; returns
        the notes that say so."""
        return []

    def smooths(self, setting: bool | str) -> bool:
        """Whether SmoothQuant runs, for ``quantize.smooth``."""
        return setting is True or (setting == "auto" and self.smooths_on_auto)

    def corrects_bias(self, setting: bool | str) -> bool:
        """Whether bias correction runs, for ``quantize.bias_correction`` (static mode only)."""
        return False

    def quantize(
        self,
        src: Path,
        dst: Path,
        *,
        exclude: Sequence[str] = (),
        keep_float: Sequence[str] = (),
        method: str | None = None,
        feeds: Feeds = (),
        compact: bool = True,
        op_types: Sequence[str] | None = None,
    ) -> Path:
        """Quantize the float graph ``src`` to ``dst`` (returned), keeping the nodes ``exclude``
        float. Static mode also takes the calibration ``method`` and samples ``feeds``, keeps the
        tensors ``keep_float`` unrounded, keeps the quantizer's tensor names when ``compact`` is
        False (what :func:`._tensors.qdq_pairs` reads) and limits Q/DQ to ``op_types``; the other
        modes have none of these and only :meth:`_write`."""
        self._write(src, dst, exclude)
        return dst

    @abstractmethod
    def _write(self, src: Path, dst: Path, exclude: Sequence[str]) -> None:
        """Write the model quantized in this mode, the nodes ``exclude`` float."""

    def seconds_per_layer(self, evaluation: float, quantization: float) -> float:
        """What one layer's sensitivity costs, from one evaluation's and one quantization's."""
        return evaluation + quantization

    def layer_sensitivity(
        self,
        src: Path,
        layers: Sequence[str],
        candidates: Sequence[str],
        x: Inputs,
        score: Callable[[np.ndarray], float],
        drop: Callable[[float, float], float],
        *,
        threads: int,
        scratch: Path,
        progress: Progress,
    ) -> dict[str, float]:
        """Per candidate layer, the metric drop (``drop(base, value)``) on ``x`` with only that layer
        quantized (``score`` of the outputs): the float graph ``src`` quantized once per layer, in
        the folder ``scratch``."""
        base = score(OnnxRunner(src, threads=threads).predict(x))
        out: dict[str, float] = {}
        with tempfile.TemporaryDirectory(dir=scratch) as tmp:
            for k, name in enumerate(candidates, 1):
                path = self.quantize(
                    src, Path(tmp) / "one.onnx", exclude=[n for n in layers if n != name]
                )
                out[name] = drop(base, score(OnnxRunner(path, threads=threads).predict(x)))
                progress(k, len(candidates), name, out[name])
        return out


@dataclass(frozen=True)
class StaticMode(Mode):
    """Static QDQ int8: activation ranges calibrated on training samples; every op ONNX Runtime
    can run in int8 gets Q/DQ pairs."""

    name: ClassVar[str] = "static"
    label: ClassVar[str] = "static QDQ (all ops{mixed})"
    calibrates: ClassVar[bool] = True
    per_tensor: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...]] = ("static-compute", "static-pointwise", "dynamic", "float")

    # The config's settings; each quantization calibrates with the method it is given.
    settings: StaticSettings

    def corrects_bias(self, setting: bool | str) -> bool:
        return setting is not False

    def quantize(
        self,
        src: Path,
        dst: Path,
        *,
        exclude: Sequence[str] = (),
        keep_float: Sequence[str] = (),
        method: str | None = None,
        feeds: Feeds = (),
        compact: bool = True,
        op_types: Sequence[str] | None = None,
    ) -> Path:
        if method is None:
            raise ValueError("static quantization needs a calibration method and samples")
        quantize_static(
            src,
            dst,
            list(feeds),
            replace(self.settings, method=method),
            exclude=exclude,
            cache=self.ranges(src, method),
            compact=False,
            op_types=op_types,
        )
        if keep_float:
            keep_tensors_float(dst, keep_float, onnx.load(str(src)))
        if compact:
            finish(dst)
        return dst

    def _write(self, src: Path, dst: Path, exclude: Sequence[str]) -> None:
        raise TypeError("static quantization calibrates: call quantize with a method and samples")

    @staticmethod
    def ranges(src: Path, method: str) -> Path:
        """Where the ranges calibrated on ``src`` with ``method`` are kept, so that quantizing it
        again (other exclusions) does not calibrate again. One file per method: ONNX Runtime
        refuses a cache another method wrote."""
        return src.with_name(f"ranges-{src.stem}-{method}.json")


@dataclass(frozen=True)
class DynamicMode(Mode):
    """Dynamic int8: int8 MatMul weights and embedding tables, activations quantized at run time."""

    name: ClassVar[str] = "dynamic"
    label: ClassVar[str] = "dynamic int8"
    smooths_on_auto: ClassVar[bool] = True
    formats: ClassVar[tuple[str, ...]] = ("float",)
    op_reasons: ClassVar[dict[str, str]] = {
        "Conv": (
            "dynamic mode keeps Conv float: ONNX Runtime's ConvInteger kernel is slower than float "
            "Conv on CPU (static mode runs Conv as QLinearConv)"
        )
    }

    per_channel: bool
    reduce_range: bool

    def layer_nodes(self, graph: onnx.ModelProto) -> list[onnx.NodeProto]:
        """Compute nodes and embedding tables."""
        return compute_nodes(graph) + embedding_nodes(graph)

    def layers(self, graph: onnx.ModelProto) -> list[str]:
        """MatMul (see DYNAMIC_OPS) and embedding tables: a MatMul of two activations (attention
        scores) has no weight to store in int8."""
        weights = {i.name for i in graph.graph.initializer}
        return [
            n.name
            for n in self.layer_nodes(graph)
            if n.op_type == "Gather"
            or (n.op_type in DYNAMIC_OPS and any(i in weights for i in n.input))
        ]

    def tables(self, graph: onnx.ModelProto) -> list[str]:
        return [n.name for n in embedding_nodes(graph)]

    def prepare(self, path: Path) -> list[str]:
        rewritten = gemm_to_matmul(path, path)
        if not rewritten:
            return []
        return [
            (
                f"Rewrote {rewritten} Gemm node(s) as MatMul + Add: ONNX Runtime's dynamic "
                "quantizer only quantizes MatMul."
            )
        ]

    def _write(self, src: Path, dst: Path, exclude: Sequence[str]) -> None:
        quantize_dynamic(
            src, dst, per_channel=self.per_channel, reduce_range=self.reduce_range, exclude=exclude
        )

    def seconds_per_layer(self, evaluation: float, quantization: float) -> float:
        return evaluation  # every layer is switched in one session: no quantization per layer

    def layer_sensitivity(
        self,
        src: Path,
        layers: Sequence[str],
        candidates: Sequence[str],
        x: Inputs,
        score: Callable[[np.ndarray], float],
        drop: Callable[[float, float], float],
        *,
        threads: int,
        scratch: Path,
        progress: Progress,
    ) -> dict[str, float]:
        """Every layer in one session (see :func:`._sensitivity.dynamic_sensitivity`)."""
        _, out = dynamic_sensitivity(
            onnx.load(str(src)),
            candidates,
            x,
            score,
            drop,
            per_channel=self.per_channel,
            reduce_range=self.reduce_range,
            threads=threads,
            progress=progress,
        )
        return out


@dataclass(frozen=True)
class Fp16Mode(Mode):
    """Float16 weights and compute, inputs and outputs kept float32."""

    name: ClassVar[str] = "fp16"
    label: ClassVar[str] = "fp16 int8"
    int8: ClassVar[bool] = False

    def _write(self, src: Path, dst: Path, exclude: Sequence[str]) -> None:
        convert_fp16(src, dst, exclude=exclude)


def mode_for(cfg: QuantizeConfig) -> Mode:
    """The strategy of ``cfg.mode`` (static, dynamic or fp16; QAT is :mod:`._qat`)."""
    reduce_range = reduce_range_for(cfg.reduce_range)
    modes: dict[str, Callable[[], Mode]] = {
        "static": lambda: StaticMode(
            StaticSettings.of(cfg, method=cfg.calibration.method, reduce_range=reduce_range)
        ),
        "dynamic": lambda: DynamicMode(per_channel=cfg.per_channel, reduce_range=reduce_range),
        "fp16": Fp16Mode,
    }
    return modes[cfg.mode]()
