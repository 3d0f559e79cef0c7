"""Sensitivity and auto_exclude: which layers (or, in static mode, tensors) to keep float.

Static, dynamic and fp16 measure each candidate's sensitivity (quantize it alone, measure the
metric drop on up to ``SENSITIVITY_ROWS`` val samples; see :mod:`._sensitivity` and
:mod:`._tensors`) when ``sensitivity`` is on and it fits the time budget, or when auto_exclude needs
a ranking; with ``auto_exclude``, :class:`ExclusionSteps` keeps the most sensitive float until
``max_metric_drop`` holds on the whole val split.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from ...data import Inputs, n_rows, take
from ...runtime import OnnxRunner
from ._config import (
    MAX_SENSITIVITY_LAYERS,
    MAX_SENSITIVITY_TENSORS,
    SENSITIVITY_ROWS,
    SENSITIVITY_SECONDS,
)
from ._fidelity import FidelitySteps
from ._onnx import layer_label
from ._sensitivity import dynamic_sensitivity, sample_rows, static_sensitivity
from ._tensors import QdqPair, listed_once, qdq_pairs


@dataclass
class Exclusion:
    """What sensitivity and auto_exclude left: the val metric kept, the layers auto_exclude kept
    float (dynamic and fp16 modes) or the QDQ pairs it kept float (static mode), and each
    candidate's metric drop when quantized alone."""

    value: float
    layers: list[str] = field(default_factory=list)
    pairs: list[QdqPair] = field(default_factory=list)
    sensitivity: dict[str, float] = field(default_factory=dict)


class ExclusionSteps(FidelitySteps):
    """Sensitivity and auto_exclude, after the fidelity passes (static mode measures bias
    correction again for the mixed-precision model it keeps)."""

    def _exclude(
        self,
        out: Path,
        requested: list[str],
        graph: onnx.ModelProto,
        layers: list[str],
        value: float,
        float_val: float,
        eval_seconds: float,
        quantize_seconds: float,
    ) -> Exclusion:
        """Measure sensitivity and run auto_exclude on the quantized model ``out`` (val metric
        ``value``; ``float_val`` the float graph's), when asked for and affordable: one evaluation
        took ``eval_seconds``, one quantization ``quantize_seconds``."""
        cfg, ctx = self.cfg, self.ctx
        reference = ctx.baseline_val_metric
        candidates = [name for name in layers if name not in requested]
        sensitivity: dict[str, float] = {}
        breaks = not ctx.constraints.allows(self._drop(value, reference))
        float_drop = self._drop(float_val, reference)
        can_exclude = breaks and cfg.auto_exclude and ctx.constraints.allows(float_drop)
        # One layer's sensitivity costs an evaluation on at most SENSITIVITY_ROWS val samples, plus
        # (except in dynamic mode, which measures every layer in one session) a quantization.
        share = min(1.0, SENSITIVITY_ROWS / max(n_rows(ctx.task.data.val.x), 1))
        kept_pairs: list[QdqPair] = []
        if cfg.mode == "static":
            deferred = bool(can_exclude and self.bias_correction and self.bias_correction["kept"])
            if deferred:
                value = self._bias_defer(out, requested)
            # Static mode measures every QDQ pair (tensor), not layers, in one session.
            value, kept_pairs, sensitivity = self._static_tensors(
                out, requested, value, reference, eval_seconds * share, can_exclude
            )
            if deferred:
                keep_float = [p.tensor for p in kept_pairs]
                value = self._bias_correct(out, requested, value, reference, keep_float)
        else:
            per_layer = eval_seconds * share + (0.0 if cfg.mode == "dynamic" else quantize_seconds)
            estimate = len(candidates) * per_layer
            want_sensitivity = (
                cfg.sensitivity
                and len(candidates) <= MAX_SENSITIVITY_LAYERS
                and estimate <= SENSITIVITY_SECONDS
            )
            if candidates and (want_sensitivity or can_exclude):
                sensitivity = self._sensitivity(graph, layers, candidates)
            elif cfg.sensitivity and candidates:
                why = (
                    f"{len(candidates)} layers is more than {MAX_SENSITIVITY_LAYERS}"
                    if len(candidates) > MAX_SENSITIVITY_LAYERS
                    else f"it would take about {estimate:.0f} s ({len(candidates)} layers), more "
                    f"than {SENSITIVITY_SECONDS:.0f} s"
                ) + ", and auto_exclude, which needs it, does not run"
                self.notes.append(f"Per-layer sensitivity skipped: {why}.")

        auto: list[str] = []
        if breaks and cfg.auto_exclude and not ctx.constraints.allows(float_drop):
            self.notes.append(
                f"auto_exclude did not run: the float model this stage started from already drops "
                f"{float_drop:.4f} {ctx.task.metric.name} on val vs the baseline, more than "
                f"max_metric_drop {ctx.max_metric_drop}, so keeping layers float cannot bring it back "
                f"(quantization itself changed val {ctx.task.metric.name} by {value - float_val:+.4f})."
            )
        elif can_exclude and cfg.mode != "static":
            value, auto = self._auto_exclude(out, requested, sensitivity, value, reference)
        elif breaks and not cfg.auto_exclude:
            self.notes.append(
                f"The quantized model drops {self._drop(value, reference):.4f} {ctx.task.metric.name} on "
                f"val, more than max_metric_drop {ctx.max_metric_drop}; auto_exclude is off."
            )
        return Exclusion(value, auto, kept_pairs, sensitivity)

    def _sensitivity_rows(self) -> tuple[np.ndarray, Inputs, Inputs]:
        """The val samples sensitivity is measured on (at most ``SENSITIVITY_ROWS``, the same
        ones in every mode): their indices, inputs and targets."""
        val = self.ctx.task.data.val
        rows = sample_rows(n_rows(val.x), SENSITIVITY_ROWS, self.ctx.seed)
        assert val.y is not None
        return rows, take(val.x, rows), take(val.y, rows)

    def _sensitivity(
        self, graph: onnx.ModelProto, layers: list[str], candidates: list[str]
    ) -> dict[str, float]:
        """Metric drop with only one layer quantized, for each layer, on at most
        ``SENSITIVITY_ROWS`` val samples (a ranking for auto_exclude, which then checks its choice
        on the whole val split). Dynamic mode measures every layer in one session (see
        :mod:`._sensitivity`); the other modes quantize the model once per layer."""
        ctx, cfg = self.ctx, self.cfg
        rows, x, y = self._sensitivity_rows()
        threads = ctx.measure_config.threads
        total = len(candidates)
        ctx.log(f"  sensitivity of {total} layers on {len(rows)} val samples")

        def score(outputs: np.ndarray) -> float:
            return ctx.task.metric(outputs, y)

        # a bar in the terminal; log.txt keeps a line per layer (``sensitivity 3/12: drop ...``)
        with ctx.progress("sensitivity", total) as step:

            def report(k: int, n: int, name: str, drop: float) -> None:
                step.advance(info=f"drop {drop:+.4f}: {layer_label(name)}")

            if cfg.mode == "dynamic":
                _, out = dynamic_sensitivity(
                    graph,
                    candidates,
                    x,
                    score,
                    lambda base, value: self._drop(value, base),
                    per_channel=cfg.per_channel,
                    reduce_range=self.reduce_range,
                    threads=threads,
                    progress=report,
                )
                return out
            base = score(OnnxRunner(self.prepared, threads=threads).predict(x))
            out = {}
            with tempfile.TemporaryDirectory(dir=ctx.work_dir) as tmp:
                for k, name in enumerate(candidates, 1):
                    path = self._quantize(Path(tmp) / "one.onnx", [n for n in layers if n != name])
                    value = score(OnnxRunner(path, threads=threads).predict(x))
                    out[name] = self._drop(value, base)
                    report(k, total, name, out[name])
        return out

    def _static_tensors(
        self,
        out: Path,
        requested: list[str],
        value: float,
        reference: float,
        per_eval: float,
        can_exclude: bool,
    ) -> tuple[float, list[QdqPair], dict[str, float]]:
        """Tensor-level sensitivity and auto_exclude for static mode (see :mod:`._tensors`).

        Every QDQ pair of the quantized model is a candidate: activations around Add, Concat,
        Resize, Sigmoid, Mul, ConvTranspose and the output head as well as Conv/Gemm/MatMul inputs
        and weights. One session measures each tensor's drop when rounded alone on at most
        ``SENSITIVITY_ROWS`` val samples and the shortest prefix of that ranking that holds the
        budget there; the stage keeps that prefix float, checks it on the whole val split (growing
        it while it does not hold); the format comparison then times the mixed-precision model
        against the float one. Returns the val metric kept, the pairs kept float, and the sensitivity."""
        cfg, ctx = self.cfg, self.ctx
        metric = ctx.task.metric.name
        raw = self._quantize(self.work / "qdq-named.onnx", requested, compact=False)
        model = onnx.load(str(raw))
        pairs = qdq_pairs(model)
        # Each tensor costs one evaluation of the (unfused, so slower) switchable graph.
        estimate = 2 * len(pairs) * per_eval
        want = (
            cfg.sensitivity
            and len(pairs) <= MAX_SENSITIVITY_TENSORS
            and estimate <= SENSITIVITY_SECONDS
        )
        if not pairs or not (want or can_exclude):
            if cfg.sensitivity and pairs:
                why = (
                    f"{len(pairs)} quantized tensors is more than {MAX_SENSITIVITY_TENSORS}"
                    if len(pairs) > MAX_SENSITIVITY_TENSORS
                    else f"it would take about {estimate:.0f} s ({len(pairs)} quantized tensors), "
                    f"more than {SENSITIVITY_SECONDS:.0f} s"
                )
                self.notes.append(
                    f"Per-tensor sensitivity skipped: {why}, and auto_exclude, which needs it, "
                    "does not run."
                )
            return value, [], {}
        rows, x, y = self._sensitivity_rows()
        by_tensor = {p.tensor: p for p in pairs}
        ctx.log(f"  sensitivity of {len(pairs)} quantized tensors on {len(rows)} val samples")

        # a bar in the terminal; log.txt keeps a line per tensor (``sensitivity 17/133: drop ...``)
        with ctx.progress("sensitivity", len(pairs)) as step:

            def report(k: int, n: int, tensor: str, drop: float) -> None:
                step.advance(info=f"drop {drop:+.4f}: {by_tensor[tensor].describe()}")

            found = static_sensitivity(
                model,
                onnx.load(str(self.prepared)),
                pairs,
                x,
                lambda outputs: ctx.task.metric(outputs, y),
                lambda base, v: self._drop(v, base),
                ctx.constraints.allows,
                threads=ctx.measure_config.threads,
                progress=report,
            )
        del model
        # Reported by what each tensor is (``output of Add /blocks.3/Add (module blocks.3)``).
        sensitivity: dict[str, float] = {}
        for tensor, alone in found.alone.items():
            label = by_tensor[tensor].describe()
            sensitivity[label if label not in sensitivity else f"{label} [{tensor}]"] = alone
        if not can_exclude:
            return value, [], sensitivity
        order = list(found.alone)
        k = max(found.enough, 1)
        with ctx.progress("auto_exclude: checking on the whole val split") as step:
            while True:
                step.update(f"{k} of {len(order)} tensors float")
                self._quantize(out, requested, keep_float=order[:k])
                value = ctx.evaluate(out, "val")
                ctx.log(f"  kept {k} of {len(order)} tensors float: val {metric} {value:.4f}")
                if ctx.constraints.allows(self._drop(value, reference)) or k >= len(order):
                    break
                k = min(len(order), k + max(1, k // 2))
        drop = self._drop(value, reference)
        kept = [by_tensor[t] for t in order[:k]]
        if k >= len(order):  # every tensor float is the float model: no int8 holds the budget
            drop = max(drop, self._drop(found.int8_score, found.float_score))
        if k >= len(order) or not ctx.constraints.allows(drop):
            self._quantize(out, requested)
            value = ctx.evaluate(out, "val")
            worst = listed_once([by_tensor[t].describe() for t in order[:5]], limit=5)
            self.notes.append(
                f"auto_exclude measured all {len(pairs)} quantized tensors (activations and weights) "
                f"one at a time and kept the most sensitive float, {k} of them, before the val "
                f"{metric} drop held max_metric_drop {ctx.max_metric_drop}: the loss is spread over "
                f"every rounded tensor (most sensitive: {worst}), so no mixed-precision int8 model "
                "holds the budget and none is kept float."
            )
            return value, [], sensitivity
        kinds = Counter(p.producer_op or "input" for p in kept if p.kind == "activation")
        weights = sum(p.kind == "weight" for p in kept)
        mix = ", ".join(
            [f"{op} x{n}" for op, n in kinds.most_common()]
            + ([f"weights x{weights}"] if weights else [])
        )
        self.notes.append(
            f"auto_exclude kept {len(kept)} of {len(pairs)} quantized tensors float (mixed "
            f"precision: int8 elsewhere), the most sensitive when rounded alone on {len(rows)} val "
            f"samples ({mix}): {listed_once([p.describe() for p in kept])}; val {metric} drop "
            f"{drop:.4f} holds max_metric_drop {ctx.max_metric_drop}."
        )
        return value, kept, sensitivity

    def _auto_exclude(
        self,
        out: Path,
        requested: list[str],
        sensitivity: dict[str, float],
        value: float,
        reference: float,
    ) -> tuple[float, list[str]]:
        """Keep the most sensitive layers float, one at a time, until max_metric_drop holds on val."""
        ctx = self.ctx
        order = sorted(sensitivity, key=lambda n: -sensitivity[n])
        auto: list[str] = []
        # at most one try per layer; log.txt keeps a line per try (``kept ... float: val ...``)
        with ctx.progress("auto_exclude", len(order)) as step:
            for name in order:
                auto.append(name)
                self._quantize(out, [*requested, *auto])
                value = ctx.evaluate(out, "val")
                step.advance(
                    info=f"kept {layer_label(name)} float: val {ctx.task.metric.name} {value:.4f}"
                )
                if ctx.constraints.allows(self._drop(value, reference)):
                    break
        drop = self._drop(value, reference)
        names = ", ".join(layer_label(n) for n in auto)
        if ctx.constraints.allows(drop):
            self.notes.append(
                f"auto_exclude kept {len(auto)} most sensitive layer(s) float ({names}) so that the val "
                f"{ctx.task.metric.name} drop ({drop:.4f}) stays within max_metric_drop {ctx.max_metric_drop}."
            )
            return value, auto
        # Every layer float and still over budget: exclusion bought nothing, so keep them quantized.
        self._quantize(out, requested)
        value = ctx.evaluate(out, "val")
        self.notes.append(
            f"auto_exclude tried keeping every quantizable layer float ({names}) and the val "
            f"{ctx.task.metric.name} still dropped {drop:.4f} > {ctx.max_metric_drop}, so none is "
            "excluded: the loss is not in one layer's weights (the activations or the tensors left "
            "quantized between layers carry it)."
        )
        return value, []
