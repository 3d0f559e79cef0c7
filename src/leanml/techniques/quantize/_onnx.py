"""The float graph quantization starts from: preparing it (opset, node names, ONNX Runtime's
pre-processing), rewriting Gemm as MatMul for the dynamic quantizer, and tidying a written model
(order, short names). ONNX Runtime's quantizers themselves are in :mod:`._ort`."""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..._utils import atomic_path
from ...errors import InvalidInputError
from ._config import QuantizeConfig
from ._graph import has_subgraphs, topological_sort, used_names

# QDQ with per-channel weights needs DequantizeLinear's ``axis`` (opset 13).
MIN_OPSET = 13


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


def prepare(
    src: Path, dst: Path, *, preprocess: bool = QuantizeConfig.model_fields["preprocess"].default
) -> Prepared:
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
