"""Which format a quantize stage writes: speed is a constraint, not a hope.

Int8 is not always faster on a CPU. Q/DQ conversions around ops that stay float, depthwise
convolutions whose int8 kernels lose to float ones at batch 1, and small models whose time goes to
bookkeeping can make a quantized model slower than the float one it came from. So the stage builds a
few formats of the same model (static QDQ on every op, QDQ on the compute ops only, the same with
depthwise Convs float, dynamic int8, and the float model itself), evaluates each on val, times each
against the float model side by side at the run's batch sizes, and keeps the fastest that holds
``max_metric_drop``: the float model when no int8 format is faster (unless
``quantize.require_speedup`` is false).

:func:`keep_fastest_format` is the stage's step: it builds the formats its mode compares
(:attr:`._modes.Mode.formats`) and lets :func:`._compare.choose_format` keep one.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx

from ...data import Inputs
from ...measure import MeasureConfig, paired_latency_ratio
from ._compare import Format, FormatChoice, choose_format
from ._layers import compute_nodes
from ._modes import DynamicMode
from ._onnx import gemm_to_matmul
from ._state import QuantizeState, Run

# The ops the "compute ops only" static format wraps in Q/DQ: no conversions around Add, Concat,
# Resize, HardSigmoid, ..., which then run in float between int8 convolutions.
COMPUTE_QDQ_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def latency_ratios(
    float_path: Path, path: Path, x: Inputs, config: MeasureConfig
) -> dict[int, float]:
    """``path``'s p50 / the float model's p50 per batch size, timed side by side (alternating
    rounds; see :func:`leanml.measure.paired_latency_ratio`). The stage calls it through this module,
    so that tests can replace it with fixed ratios."""
    return paired_latency_ratio(float_path, path, x, config)


def keep_fastest_format(state: QuantizeState, run: Run) -> FormatChoice:
    """Speed is a constraint, not a hope: build the formats the mode compares, evaluate each on
    val, time each against the float model side by side, and keep the fastest that holds
    max_metric_drop (the float model when no int8 format is faster). The chosen file is in the
    stage's folder (``state.out`` when the stage's own model won)."""
    ctx = run.ctx
    formats = _candidates(state, run)
    timing = ctx.measure_config.model_copy(update={"memory": False})
    x = ctx.task.data.val.x
    if len(formats) > 1:
        ctx.log(f"  comparing {len(formats)} formats on val and against float latency")
    with ctx.progress("candidate formats") as step:

        def evaluate(path: Path) -> float:
            step.update(f"{path.stem}: val {ctx.task.metric.name}")
            return ctx.evaluate(path, "val")

        def time_against_float(path: Path) -> dict[int, float]:
            step.update(f"{path.stem}: timing against float")
            return latency_ratios(state.prepared.path, path, x, timing)

        choice = choose_format(
            formats,
            work=run.work / "formats",
            evaluate=evaluate,
            drop=run.drop,
            allows=ctx.constraints.allows,
            time_against_float=time_against_float,
            require_speedup=run.cfg.require_speedup,
            metric=ctx.task.metric.name,
            budget=ctx.max_metric_drop,
        )
    if choice.path != state.out:  # the work folder is removed at the end of the stage
        kept = ctx.work_dir / f"format-{choice.chosen.fmt.key}.onnx"
        shutil.move(choice.path, kept)
        choice.chosen.path = kept
    return choice


def _candidates(state: QuantizeState, run: Run) -> list[Format]:
    """The stage's own model, then the formats of ``run.mode.formats`` that apply to this model:
    static QDQ on the compute ops only, the same with depthwise Convs float, dynamic int8 of the
    same float graph, and the float model the stage started from."""
    mode, out = run.mode, state.out
    float_path = state.prepared.path
    graph = onnx.load(str(float_path))
    compute = compute_nodes(graph)
    keep = [p.tensor for p in state.kept_float]
    mixed = f", {len(keep)} tensors float" if keep else ""

    def quantize(dst: Path, exclude: list[str]) -> Path:
        return mode.quantize(
            state.float_graph,
            dst,
            exclude=exclude,
            keep_float=keep,
            method=state.method,
            feeds=state.feeds,
            op_types=COMPUTE_QDQ_OPS,
        )

    def compute_only() -> Format | None:
        return Format(
            "static-compute",
            f"static QDQ (Conv/MatMul/Gemm only{mixed})",
            lambda dst: quantize(dst, state.exclude),
        )

    def pointwise() -> Format | None:
        depthwise = [
            n.name
            for n in compute
            if n.op_type == "Conv"
            and n.name not in state.exclude
            and any(a.name == "group" and a.i > 1 for a in n.attribute)
        ]
        if not depthwise:
            return None
        return Format(
            "static-pointwise",
            f"static QDQ (Conv/MatMul/Gemm, depthwise Conv float{mixed})",
            lambda dst: quantize(dst, [*state.exclude, *depthwise]),
            float_nodes=dict.fromkeys(
                depthwise,
                "kept float: a depthwise Conv, and the format that keeps them float "
                "was the fastest that holds max_metric_drop",
            ),
        )

    def dynamic() -> Format | None:
        # Dynamic int8 only quantizes MatMul/Gemm weights: worth timing when they are most of
        # the model's (an MLP, a transformer), not for a CNN's classifier head.
        sizes = {i.name: int(np.prod(i.dims)) for i in graph.graph.initializer}
        held = {n.name: sum(sizes.get(i, 0) for i in n.input[1:2]) for n in compute}
        matmul = sum(held[n.name] for n in compute if n.op_type in ("MatMul", "Gemm"))
        if not matmul or 2 * matmul < sum(held.values()):
            return None
        int8 = DynamicMode(per_channel=run.cfg.per_channel, reduce_range=run.reduce_range)

        def build(dst: Path) -> Path:
            src = run.work / "formats" / "dynamic-float.onnx"
            gemm_to_matmul(state.float_graph, src)
            return int8.quantize(src, dst, exclude=state.exclude)

        return Format(
            "dynamic",
            "dynamic int8 (MatMul/Gemm only)",
            build,
            float_nodes={
                n.name: "kept float: dynamic int8 (the fastest format that holds "
                "max_metric_drop) quantizes only MatMul/Gemm"
                for n in compute
                if n.op_type == "Conv"
            },
        )

    def float_model() -> Format | None:
        return Format(
            "float",
            "float",
            lambda dst: Path(shutil.copyfile(float_path, dst)),
            int8=False,
            val_metric=state.float_value,
            float_nodes=dict.fromkeys(
                (n.name for n in compute),
                "kept float: no int8 format is faster than float on this CPU (see the "
                "format comparison)",
            ),
        )

    builders: dict[str, Callable[[], Format | None]] = {
        "static-compute": compute_only,
        "static-pointwise": pointwise,
        "dynamic": dynamic,
        "float": float_model,
    }
    own = Format(mode.name, mode.label.format(mixed=mixed), lambda _: out, val_metric=state.value)
    found = [builders[key]() for key in mode.formats]
    return [own, *(f for f in found if f is not None)]
