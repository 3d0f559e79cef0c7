"""The ONNX side of quantization: preparing a float graph, ONNX Runtime's quantizers, fp16, and
what ONNX Runtime actually runs in int8 once it has fused the graph."""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..._utils import atomic_path
from ...data import Inputs, n_rows, take
from ...errors import InvalidInputError, StageError
from ...runtime import OnnxRunner
from ._graph import has_subgraphs, topological_sort, used_names

# QDQ with per-channel weights needs DequantizeLinear's ``axis`` (opset 13).
MIN_OPSET = 13
# The layers quantization is about: what sensitivity, exclusion and the op-count notes speak of.
COMPUTE_OPS = ("Conv", "MatMul", "Gemm")
# Compute kernels of ONNX Runtime's optimized graph that take int8/uint8 operands.
INT8_KERNELS = {
    "QLinearConv",
    "ConvInteger",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "DynamicQuantizeMatMul",
    "QGemm",
    "QAttention",
    "DynamicQuantizeLSTM",
}
# Dynamic mode leaves Conv float: ONNX Runtime's ConvInteger is many times slower than float Conv
# on CPU (static QDQ gives QLinearConv instead).
DYNAMIC_OPS = ("MatMul", "Attention", "LSTM")
# Embedding tables (a Gather from a constant float matrix) are most of a transformer's file: dynamic
# mode stores them in int8 too (ONNX Runtime's quantizer: int8 table, DequantizeLinear after).
EMBEDDING_OPS = ("Gather",)
FLOAT_KERNELS = {"Conv", "FusedConv", "MatMul", "FusedMatMul", "Gemm", "FusedGemm", "Attention"}


class _FromOnnxRuntime(logging.Filter):
    """Drops records below ERROR that ONNX Runtime's own code logged."""

    def __init__(self, package_dir: str) -> None:
        super().__init__()
        self.package_dir = package_dir

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR or not (
            record.name.startswith("onnxruntime") or record.pathname.startswith(self.package_dir)
        )


@contextlib.contextmanager
def quiet_quantizer() -> Iterator[None]:
    """Silence ONNX Runtime's quantizer advice (WARNING and below) while it runs; the stage's notes
    say what matters. Everything is restored afterwards and no one else's records are touched.

    The quantizer logs through its own named loggers and also with ``logging.warning(...)`` on the
    root logger, so a filter on the root logger drops those records by where they were logged. With
    no handler on the root logger, ``logging.warning`` would call ``basicConfig()`` (installing a
    stderr handler for the rest of the process): a NullHandler stands in while the quantizer runs.

    It also ``print()``s to stdout (the histogram calibrators of entropy and percentile calibration
    report their progress, the ONNX model wrapper its warnings), where it would corrupt
    ``leanml run --json``: stdout is redirected and dropped while it runs."""
    import onnxruntime

    root = logging.getLogger()
    quiet = _FromOnnxRuntime(str(Path(onnxruntime.__file__).parent))
    named = [logging.getLogger(n) for n in ("onnxruntime", "neural_compressor")]
    levels = [lg.level for lg in named]
    stand_in = logging.NullHandler() if not root.handlers else None
    root.addFilter(quiet)
    if stand_in is not None:
        root.addHandler(stand_in)
    for lg in named:
        lg.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        for lg, level in zip(named, levels):
            lg.setLevel(level)
        if stand_in is not None:
            root.removeHandler(stand_in)
        root.removeFilter(quiet)


def opset_of(model: onnx.ModelProto) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def compute_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """The Conv/MatMul/Gemm nodes of a float graph, in graph order."""
    return [n for n in model.graph.node if n.op_type in COMPUTE_OPS]


def embedding_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Gather nodes that look rows up in a constant float matrix (embedding tables), in graph order."""
    tables = {
        i.name
        for i in model.graph.initializer
        if len(i.dims) == 2 and i.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16)
    }
    return [n for n in model.graph.node if n.op_type in EMBEDDING_OPS and n.input[0] in tables]


def layer_label(node_name: str) -> str:
    """A readable name for a node: the full module path for torch exports
    (``/features/features.0/features.0.0/Conv`` -> ``features.0.0``;
    ``/m/encoder/layer.0/attention/self/query/MatMul`` -> ``m.encoder.layer.0.attention.self.query``),
    else the node name. Scopes that repeat their parent's path (``features`` -> ``features.0``) are
    merged, so the label is the path ``named_modules()`` gives, never its last word alone."""
    parts = [p for p in node_name.split("/") if p]
    if not node_name.startswith("/") or len(parts) < 2:
        return node_name
    path: list[str] = []
    for part in parts[:-1]:
        if path and part.startswith(f"{path[-1]}."):
            path[-1] = part
        else:
            path.append(part)
    return ".".join(path)


def match_layers(names: Sequence[str], nodes: Sequence[onnx.NodeProto], *, key: str) -> list[str]:
    """Node names for user-given layer names (a node name, or a torch module path)."""
    by_label: dict[str, list[str]] = {}
    for n in nodes:
        by_label.setdefault(n.name, []).append(n.name)
        by_label.setdefault(layer_label(n.name), []).append(n.name)
    out: list[str] = []
    for name in names:
        if name not in by_label:
            known = sorted({layer_label(n.name) for n in nodes})
            near = difflib.get_close_matches(name, known, n=5, cutoff=0.5)
            listed = near if near else known[:12]
            more = ", ..." if not near and len(known) > 12 else ""
            shown = ", ".join(listed) + more
            raise InvalidInputError(
                f"{key} names {name!r}, which is not a quantizable layer (Conv/MatMul/Gemm, or an "
                f"embedding Gather in dynamic mode) of the model; "
                f"{'nearest names' if near else 'layers are'}: {shown or '(none)'}"
            )
        out += [n for n in by_label[name] if n not in out]
    return out


# -- preparing the float graph --------------------------------------------------------------------


@dataclass
class Prepared:
    """The float graph the quantizers start from, and what was done to it."""

    path: Path
    original_opset: int
    opset: int
    notes: list[str] = field(default_factory=list)


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give unnamed nodes stable names: exclusion and the notes refer to nodes by name."""
    seen: set[str] = set()
    for i, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{i}"
        seen.add(node.name)


def prepare(src: Path, dst: Path, *, preprocess: bool = True) -> Prepared:
    """Upgrade an old opset, name every node, and run ONNX Runtime's pre-processing (shape
    inference and graph optimization) so that the quantizer sees every tensor's shape."""
    model = onnx.load(str(src))
    notes: list[str] = []
    original = opset_of(model)
    if original < MIN_OPSET:
        try:
            model = onnx.version_converter.convert_version(model, MIN_OPSET)
            onnx.checker.check_model(model)
        except Exception as e:  # noqa: BLE001 - any converter failure is the file's old opset
            raise InvalidInputError(
                f"the model's opset {original} is too old for the quantizer (needs >= {MIN_OPSET}) and "
                f"onnx.version_converter cannot upgrade it ({str(e).splitlines()[0][:150]}); re-export "
                f"it with opset >= {MIN_OPSET}"
            ) from None
        notes.append(
            f"Upgraded the model's ONNX opset from {original} to {MIN_OPSET} for the quantizer."
        )
    _name_nodes(model)
    dst = Path(dst).resolve()  # absolute: pre-processing runs from a temp directory
    onnx.save(model, str(dst))
    if preprocess:
        from onnxruntime.quantization.shape_inference import quant_pre_process

        # ONNX Runtime's symbolic shape inference dumps ``sym_shape_infer_temp.onnx`` and its
        # external data into the working directory when it cannot finish: run it from the temp dir.
        with tempfile.TemporaryDirectory() as tmp, quiet_quantizer(), contextlib.chdir(tmp):
            out = Path(tmp) / "pre.onnx"
            # Pre-processing is an optimization, not a requirement: ONNX Runtime's symbolic shape
            # inference and graph optimizer raise assorted types (RuntimeError, KeyError,
            # AssertionError, onnx's errors, ...) on graphs they do not understand. Each failure
            # falls back to a weaker step, and the last one is said in the stage's notes, so nothing
            # is swallowed silently; a graph the quantizer itself cannot handle fails there, loudly.
            try:
                quant_pre_process(str(dst), str(out))
            except Exception as e:  # noqa: BLE001 - see above: fall back, then say so
                try:  # ONNX's own shape inference is enough then
                    quant_pre_process(str(dst), str(out), skip_symbolic_shape=True)
                except Exception:  # noqa: BLE001 - quantizing without pre-processing still works
                    notes.append(
                        "ONNX Runtime's pre-processing failed on this graph "
                        f"({str(e).splitlines()[0][:120]}); quantized without it."
                    )
                    out = dst
            if out != dst:
                pre = onnx.load(str(out))
                _name_nodes(pre)
                onnx.save(pre, str(dst))
    return Prepared(dst, original, max(original, MIN_OPSET), notes)


def gemm_to_matmul(src: Path, dst: Path) -> int:
    """Rewrite Gemm nodes with a constant B as MatMul (+ Add): ONNX Runtime's dynamic quantizer only
    quantizes MatMul. The MatMul keeps the Gemm's name. Returns how many were rewritten."""
    model = onnx.load(str(src))
    inits = {i.name: i for i in model.graph.initializer}
    nodes: list[onnx.NodeProto] = []
    rewritten = 0
    for node in model.graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        simple = (
            attrs.get("alpha", 1.0) == 1.0
            and attrs.get("beta", 1.0) == 1.0
            and not attrs.get("transA", 0)
        )
        if node.op_type != "Gemm" or not simple or node.input[1] not in inits:
            nodes.append(node)
            continue
        b = numpy_helper.to_array(inits[node.input[1]])
        if attrs.get("transB", 0):
            b = b.T
        name = f"{node.input[1]}_matmul"
        model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b), name))
        has_bias = len(node.input) > 2 and node.input[2] != ""
        out = f"{node.output[0]}_matmul" if has_bias else node.output[0]
        nodes.append(helper.make_node("MatMul", [node.input[0], name], [out], name=node.name))
        if has_bias:
            nodes.append(
                helper.make_node(
                    "Add", [out, node.input[2]], [node.output[0]], name=f"{node.name}_bias"
                )
            )
        rewritten += 1
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        used = used_names(model.graph)
        keep = [i for i in model.graph.initializer if i.name in used]
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
        onnx.checker.check_model(model)
    if rewritten or Path(src).resolve() != Path(dst).resolve():
        onnx.save(model, str(dst))  # nothing changed in place: no need to write 90 MB again
    return rewritten


def compact_names(model: onnx.ModelProto) -> None:
    """Give intermediate tensors and Q/DQ nodes short names. Quantizers name every tensor after
    its origin (``/features/features.0/Conv_output_0_QuantizeLinear_Output``), which on a small
    model is kilobytes of the file. Graph inputs/outputs and compute-node names (the layer names
    of the notes and of ``exclude``) are kept."""
    graph = model.graph
    if has_subgraphs(graph):
        return  # If/Loop branches read outer tensors by name
    keep = {i.name for i in graph.input} | {o.name for o in graph.output}
    names: dict[str, str] = {}

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        if name not in names:
            names[name] = f"t{len(names)}"
        return names[name]

    for init in graph.initializer:
        init.name = short(init.name)
    for node in graph.node:
        for i, name in enumerate(node.input):
            node.input[i] = short(name)
        for i, name in enumerate(node.output):
            node.output[i] = short(name)
        if node.op_type in ("QuantizeLinear", "DequantizeLinear", "Constant"):
            node.name = ""
    del graph.value_info[:]


def finish(path: Path) -> None:
    """Drop the shape annotations pre-processing added (ONNX Runtime infers them again at load) and
    shorten the tensor names: bytes on disk, not information the runtime needs."""
    model = onnx.load(str(path))
    # ONNX Runtime's quantizers order nodes without the names an If/Loop branch reads from the
    # outer graph (silero-vad's decoder): order them again.
    topological_sort(model.graph)
    compact_names(model)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))


# -- the quantizers -------------------------------------------------------------------------------


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


@dataclass
class StaticSettings:
    method: str = "minmax"
    percentile: float = 99.999
    per_channel: bool = True
    reduce_range: bool = False
    symmetric_weights: bool = True
    symmetric_activations: bool = False


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
