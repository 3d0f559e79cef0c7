"""Speed is a constraint, not a hope: the stage's side of the format choice, and fp16's speed.

:class:`SpeedSteps` builds the candidate formats of this model (static QDQ on every op, on the
compute ops only, with depthwise Convs float, dynamic int8, the float model) for
:func:`._formats.choose_format`, which evaluates and times them and keeps the fastest that holds
``max_metric_drop``. In fp16 mode it says whether float16 is faster than float32 on this CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx

from . import _formats
from ._formats import COMPUTE_QDQ_OPS, Format, FormatChoice, choose_format
from ._onnx import compute_nodes, gemm_to_matmul, quantize_dynamic
from ._quantizer import Quantizer
from ._tensors import QdqPair


class SpeedSteps(Quantizer):
    """Which format the stage writes, and how fast fp16 runs."""

    def _choose_format(
        self,
        out: Path,
        value: float,
        float_val: float,
        float_path: Path,
        requested: list[str],
        kept_pairs: list[QdqPair],
    ) -> FormatChoice:
        """Speed is a constraint, not a hope: build the other formats of this mode, evaluate each
        on val, time each against the float model side by side, and keep the fastest that holds
        max_metric_drop (the float model when no int8 format is faster); see :mod:`._formats`.
        The chosen file is in the stage's work folder (``out`` when the stage's own model won)."""
        cfg, ctx = self.cfg, self.ctx
        graph = onnx.load(str(float_path))
        compute = compute_nodes(graph)
        keep = [p.tensor for p in kept_pairs]
        if cfg.mode == "static":
            mixed = f", {len(keep)} tensors float" if keep else ""
            own = Format("static", f"static QDQ (all ops{mixed})", lambda _: out, val_metric=value)
        else:
            own = Format(cfg.mode, f"{cfg.mode} int8", lambda _: out, val_metric=value)
        formats = [own]
        if cfg.mode == "static":
            formats.append(
                Format(
                    "static-compute",
                    f"static QDQ (Conv/MatMul/Gemm only{mixed})",
                    lambda dst: self._quantize(
                        dst, requested, keep_float=keep, op_types=COMPUTE_QDQ_OPS
                    ),
                )
            )
            depthwise = [
                n.name
                for n in compute
                if n.op_type == "Conv"
                and n.name not in requested
                and any(a.name == "group" and a.i > 1 for a in n.attribute)
            ]
            if depthwise:
                formats.append(
                    Format(
                        "static-pointwise",
                        f"static QDQ (Conv/MatMul/Gemm, depthwise Conv float{mixed})",
                        lambda dst: self._quantize(
                            dst, [*requested, *depthwise], keep_float=keep, op_types=COMPUTE_QDQ_OPS
                        ),
                        float_nodes=dict.fromkeys(
                            depthwise,
                            "kept float: a depthwise Conv, and the format that keeps them float "
                            "was the fastest that holds max_metric_drop",
                        ),
                    )
                )
            # Dynamic int8 only quantizes MatMul/Gemm weights: worth timing when they are most of
            # the model's (an MLP, a transformer), not for a CNN's classifier head.
            sizes = {i.name: int(np.prod(i.dims)) for i in graph.graph.initializer}
            held = {n.name: sum(sizes.get(i, 0) for i in n.input[1:2]) for n in compute}
            matmul = sum(held[n.name] for n in compute if n.op_type in ("MatMul", "Gemm"))
            if matmul and 2 * matmul >= sum(held.values()):
                formats.append(
                    Format(
                        "dynamic",
                        "dynamic int8 (MatMul/Gemm only)",
                        lambda dst: self._dynamic_format(dst, requested),
                        float_nodes={
                            n.name: "kept float: dynamic int8 (the fastest format that holds "
                            "max_metric_drop) quantizes only MatMul/Gemm"
                            for n in compute
                            if n.op_type == "Conv"
                        },
                    )
                )
        if cfg.mode in ("static", "dynamic"):
            formats.append(
                Format(
                    "float",
                    "float",
                    lambda dst: Path(shutil.copyfile(float_path, dst)),
                    int8=False,
                    val_metric=float_val,
                    float_nodes=dict.fromkeys(
                        (n.name for n in compute),
                        "kept float: no int8 format is faster than float on this CPU (see the "
                        "format comparison)",
                    ),
                )
            )
        timing = ctx.measure_config.model_copy(update={"memory": False})
        x = ctx.task.data.val.x
        reference = ctx.baseline_val_metric
        if len(formats) > 1:
            ctx.log(f"  comparing {len(formats)} formats on val and against float latency")
        with ctx.progress("candidate formats") as step:

            def evaluate(path: Path) -> float:
                step.update(f"{path.stem}: val {ctx.task.metric.name}")
                return ctx.evaluate(path, "val")

            def time_against_float(path: Path) -> dict[int, float]:
                step.update(f"{path.stem}: timing against float")
                return _formats.latency_ratios(float_path, path, x, timing)

            choice = choose_format(
                formats,
                work=self.work / "formats",
                evaluate=evaluate,
                drop=lambda v: self._drop(v, reference),
                allows=ctx.constraints.allows,
                time_against_float=time_against_float,
                require_speedup=cfg.require_speedup,
                metric=ctx.task.metric.name,
                budget=ctx.max_metric_drop,
            )
        if choice.path != out:  # the work folder is removed at the end of the stage
            kept = ctx.work_dir / f"format-{choice.chosen.fmt.key}.onnx"
            shutil.move(choice.path, kept)
            choice.chosen.path = kept
        return choice

    def _dynamic_format(self, dst: Path, requested: list[str]) -> Path:
        """Dynamic int8 of the static stage's float graph (its MatMul/Gemm layers)."""
        src = self.work / "formats" / "dynamic-float.onnx"
        gemm_to_matmul(self.prepared, src)
        quantize_dynamic(
            src,
            dst,
            per_channel=self.cfg.per_channel,
            reduce_range=self.reduce_range,
            exclude=requested,
        )
        return dst

    def _fp16_speed_note(self, path: Path) -> list[str]:
        ctx = self.ctx
        before = ctx.measure(self.prepared, "val")
        after = ctx.measure(path, "val")
        size = before.size_bytes / after.size_bytes
        ratios = {b: after.latency[b].p50 / before.latency[b].p50 for b in sorted(after.latency)}
        timing = ", ".join(f"batch {b}: {r:.2f}x the float32 latency" for b, r in ratios.items())
        faster = all(r < 1.0 for r in ratios.values())
        if faster:
            return [f"fp16 is {size:.1f}x smaller and faster on this CPU ({timing})."]
        return [
            (
                f"fp16 is {size:.1f}x smaller but not faster on this CPU ({timing}): ONNX Runtime's "
                "CPU provider has few float16 kernels, so it casts to float32 around them."
            )
        ]
