"""The auto_exclude step: rank the candidates by sensitivity, and keep the most sensitive float until
``max_metric_drop`` holds on the whole val split.

The mode says what a candidate is. Static mode ranks every quantized tensor (QDQ pair) in one
session and keeps the shortest prefix of the ranking that holds the budget (:func:`_tensors_float`,
with :func:`._sensitivity.static_sensitivity`); the other modes rank layers
(:meth:`._modes.Mode.layer_sensitivity`) and keep them float one at a time (:func:`_layers_float`).
Sensitivity is measured on up to ``SENSITIVITY_ROWS`` val samples when ``sensitivity`` is on and
fits ``SENSITIVITY_SECONDS``, or when auto_exclude needs a ranking.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence

import numpy as np
import onnx

from ...data import Inputs, n_rows, take
from ._bias import correct_bias, undo_bias_correction
from ._config import (
    MAX_SENSITIVITY_LAYERS,
    MAX_SENSITIVITY_TENSORS,
    SENSITIVITY_ROWS,
    SENSITIVITY_SECONDS,
)
from ._layers import layer_label
from ._sensitivity import sample_rows, static_sensitivity
from ._state import QuantizeState, Run
from ._tensors import listed_once, qdq_pairs


def auto_exclude(state: QuantizeState, run: Run) -> None:
    """Measure sensitivity (``state.sensitivity``) and run auto_exclude on ``state.out`` when asked
    for and affordable: it keeps tensors (``state.kept_float``, static mode) or layers
    (``state.auto_excluded``) float and updates ``state.value``. In static mode a kept bias
    correction is taken back for the search and measured again for the model it chose."""
    cfg, ctx, mode = run.cfg, run.ctx, run.mode
    breaks = not ctx.constraints.allows(run.drop(state.value))
    float_drop = run.drop(state.float_value)
    can_exclude = breaks and cfg.auto_exclude and ctx.constraints.allows(float_drop)
    # One candidate's sensitivity costs an evaluation on at most SENSITIVITY_ROWS val samples (and
    # in some modes a quantization).
    share = min(1.0, SENSITIVITY_ROWS / max(n_rows(ctx.task.data.val.x), 1))
    value = state.value
    if mode.per_tensor:
        deferred = bool(can_exclude and state.bias and state.bias.kept)
        if deferred:
            undo_bias_correction(state, run)
        _tensors_float(state, run, state.eval_seconds * share, can_exclude)
        if deferred:
            correct_bias(state, run, keep_float=[p.tensor for p in state.kept_float])
    else:
        layers = mode.layers(onnx.load(str(state.float_graph)))
        candidates = [name for name in layers if name not in state.exclude]
        per_layer = mode.seconds_per_layer(state.eval_seconds * share, state.quantize_seconds)
        estimate = len(candidates) * per_layer
        want_sensitivity = (
            cfg.sensitivity
            and len(candidates) <= MAX_SENSITIVITY_LAYERS
            and estimate <= SENSITIVITY_SECONDS
        )
        if candidates and (want_sensitivity or can_exclude):
            state.sensitivity = _layer_sensitivity(state, run, layers, candidates)
        elif cfg.sensitivity and candidates:
            why = (
                f"{len(candidates)} layers is more than {MAX_SENSITIVITY_LAYERS}"
                if len(candidates) > MAX_SENSITIVITY_LAYERS
                else f"it would take about {estimate:.0f} s ({len(candidates)} layers), more "
                f"than {SENSITIVITY_SECONDS:.0f} s"
            ) + ", and auto_exclude, which needs it, does not run"
            state.notes.append(f"Per-layer sensitivity skipped: {why}.")

    metric = ctx.task.metric.name
    if breaks and cfg.auto_exclude and not ctx.constraints.allows(float_drop):
        state.notes.append(
            f"auto_exclude did not run: the float model this stage started from already drops "
            f"{float_drop:.4f} {metric} on val vs the baseline, more than "
            f"max_metric_drop {ctx.max_metric_drop}, so keeping layers float cannot bring it back "
            f"(quantization itself changed val {metric} by {value - state.float_value:+.4f})."
        )
    elif can_exclude and not mode.per_tensor:
        _layers_float(state, run)
    elif breaks and not cfg.auto_exclude:
        state.notes.append(
            f"The quantized model drops {run.drop(value):.4f} {metric} on "
            f"val, more than max_metric_drop {ctx.max_metric_drop}; auto_exclude is off."
        )


def _sensitivity_rows(run: Run) -> tuple[np.ndarray, Inputs, Inputs]:
    """The val samples sensitivity is measured on (at most ``SENSITIVITY_ROWS``, the same ones in
    every mode): their indices, inputs and targets."""
    val = run.ctx.task.data.val
    rows = sample_rows(n_rows(val.x), SENSITIVITY_ROWS, run.ctx.seed)
    assert val.y is not None
    return rows, take(val.x, rows), take(val.y, rows)


def _layer_sensitivity(
    state: QuantizeState, run: Run, layers: list[str], candidates: list[str]
) -> dict[str, float]:
    """Metric drop with only one layer quantized, for each candidate layer, on at most
    ``SENSITIVITY_ROWS`` val samples (a ranking for auto_exclude, which then checks its choice on
    the whole val split)."""
    ctx = run.ctx
    rows, x, y = _sensitivity_rows(run)
    ctx.log(f"  sensitivity of {len(candidates)} layers on {len(rows)} val samples")
    # a bar in the terminal; log.txt keeps a line per layer (``sensitivity 3/12: drop ...``)
    with ctx.progress("sensitivity", len(candidates)) as step:

        def report(k: int, n: int, name: str, drop: float) -> None:
            step.advance(info=f"drop {drop:+.4f}: {layer_label(name)}")

        return run.mode.layer_sensitivity(
            state.float_graph,
            layers,
            candidates,
            x,
            lambda outputs: ctx.task.metric(outputs, y),
            lambda base, value: run.drop(value, base),
            threads=ctx.measure_config.threads,
            scratch=ctx.work_dir,
            progress=report,
        )


def _tensors_float(state: QuantizeState, run: Run, per_eval: float, can_exclude: bool) -> None:
    """Tensor-level sensitivity and auto_exclude for static mode (see :mod:`._tensors`).

    Every QDQ pair of the quantized model is a candidate: activations around Add, Concat,
    Resize, Sigmoid, Mul, ConvTranspose and the output head as well as Conv/Gemm/MatMul inputs
    and weights. One session measures each tensor's drop when rounded alone on at most
    ``SENSITIVITY_ROWS`` val samples and the shortest prefix of that ranking that holds the
    budget there; the stage keeps that prefix float, checks it on the whole val split (growing
    it while it does not hold); the format comparison then times the mixed-precision model
    against the float one. Sets ``state.value``, ``state.kept_float`` and ``state.sensitivity``."""
    cfg, ctx, mode = run.cfg, run.ctx, run.mode
    metric = ctx.task.metric.name

    def quantize(keep_float: Sequence[str] = ()) -> None:
        mode.quantize(
            state.float_graph,
            state.out,
            exclude=state.exclude,
            keep_float=keep_float,
            method=state.method,
            feeds=state.feeds,
        )

    raw = mode.quantize(
        state.float_graph,
        run.work / "qdq-named.onnx",
        exclude=state.exclude,
        method=state.method,
        feeds=state.feeds,
        compact=False,
    )
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
            state.notes.append(
                f"Per-tensor sensitivity skipped: {why}, and auto_exclude, which needs it, "
                "does not run."
            )
        return
    rows, x, y = _sensitivity_rows(run)
    by_tensor = {p.tensor: p for p in pairs}
    ctx.log(f"  sensitivity of {len(pairs)} quantized tensors on {len(rows)} val samples")

    # a bar in the terminal; log.txt keeps a line per tensor (``sensitivity 17/133: drop ...``)
    with ctx.progress("sensitivity", len(pairs)) as step:

        def report(k: int, n: int, tensor: str, drop: float) -> None:
            step.advance(info=f"drop {drop:+.4f}: {by_tensor[tensor].describe()}")

        found = static_sensitivity(
            model,
            onnx.load(str(state.float_graph)),
            pairs,
            x,
            lambda outputs: ctx.task.metric(outputs, y),
            lambda base, v: run.drop(v, base),
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
    state.sensitivity = sensitivity
    if not can_exclude:
        return
    order = list(found.alone)
    k = max(found.enough, 1)
    with ctx.progress("auto_exclude: checking on the whole val split") as step:
        while True:
            step.update(f"{k} of {len(order)} tensors float")
            quantize(order[:k])
            value = ctx.evaluate(state.out, "val")
            ctx.log(f"  kept {k} of {len(order)} tensors float: val {metric} {value:.4f}")
            if ctx.constraints.allows(run.drop(value)) or k >= len(order):
                break
            k = min(len(order), k + max(1, k // 2))
    drop = run.drop(value)
    kept = [by_tensor[t] for t in order[:k]]
    if k >= len(order):  # every tensor float is the float model: no int8 holds the budget
        drop = max(drop, run.drop(found.int8_score, found.float_score))
    if k >= len(order) or not ctx.constraints.allows(drop):
        quantize()
        state.value = ctx.evaluate(state.out, "val")
        worst = listed_once([by_tensor[t].describe() for t in order[:5]], limit=5)
        state.notes.append(
            f"auto_exclude measured all {len(pairs)} quantized tensors (activations and weights) "
            f"one at a time and kept the most sensitive float, {k} of them, before the val "
            f"{metric} drop held max_metric_drop {ctx.max_metric_drop}: the loss is spread over "
            f"every rounded tensor (most sensitive: {worst}), so no mixed-precision int8 model "
            "holds the budget and none is kept float."
        )
        return
    state.value, state.kept_float = value, kept
    kinds = Counter(p.producer_op or "input" for p in kept if p.kind == "activation")
    weights = sum(p.kind == "weight" for p in kept)
    mix = ", ".join(
        [f"{op} x{n}" for op, n in kinds.most_common()]
        + ([f"weights x{weights}"] if weights else [])
    )
    state.notes.append(
        f"auto_exclude kept {len(kept)} of {len(pairs)} quantized tensors float (mixed "
        f"precision: int8 elsewhere), the most sensitive when rounded alone on {len(rows)} val "
        f"samples ({mix}): {listed_once([p.describe() for p in kept])}; val {metric} drop "
        f"{drop:.4f} holds max_metric_drop {ctx.max_metric_drop}."
    )


def _layers_float(state: QuantizeState, run: Run) -> None:
    """Keep the most sensitive layers float, one at a time, until max_metric_drop holds on val
    (``state.auto_excluded``, ``state.value``)."""
    ctx = run.ctx
    metric = ctx.task.metric.name
    sensitivity = state.sensitivity
    order = sorted(sensitivity, key=lambda n: -sensitivity[n])
    auto: list[str] = []
    value = state.value

    def quantize(exclude: list[str]) -> float:
        run.mode.quantize(
            state.float_graph, state.out, exclude=exclude, method=state.method, feeds=state.feeds
        )
        return ctx.evaluate(state.out, "val")

    # at most one try per layer; log.txt keeps a line per try (``kept ... float: val ...``)
    with ctx.progress("auto_exclude", len(order)) as step:
        for name in order:
            auto.append(name)
            value = quantize([*state.exclude, *auto])
            step.advance(info=f"kept {layer_label(name)} float: val {metric} {value:.4f}")
            if ctx.constraints.allows(run.drop(value)):
                break
    drop = run.drop(value)
    names = ", ".join(layer_label(n) for n in auto)
    if ctx.constraints.allows(drop):
        state.notes.append(
            f"auto_exclude kept {len(auto)} most sensitive layer(s) float ({names}) so that the val "
            f"{metric} drop ({drop:.4f}) stays within max_metric_drop {ctx.max_metric_drop}."
        )
        state.value, state.auto_excluded = value, auto
        return
    # Every layer float and still over budget: exclusion bought nothing, so keep them quantized.
    state.value = quantize(state.exclude)
    state.notes.append(
        f"auto_exclude tried keeping every quantizable layer float ({names}) and the val "
        f"{metric} still dropped {drop:.4f} > {ctx.max_metric_drop}, so none is "
        "excluded: the loss is not in one layer's weights (the activations or the tensors left "
        "quantized between layers carry it)."
    )
