"""How each prune kind runs: prune (in steps), fine-tune, record; what it did, as an outcome.

The stage (``_prune.py``) validates the keys and turns an outcome into notes, details and plots.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..._text import times
from ...models import Model
from ...task import Task
from ...training import TrainResult
from .._base import StageContext, Step
from ._common import accumulate_grads, check_runs, val_score
from ._config import PruneConfig
from ._schedule import allocate_ratios
from ._sensitivity import (
    Sensitivity,
    block_sensitivity,
    sparse_sensitivity,
    width_sensitivity,
)
from ._sparse import (
    apply_masks,
    make_permanent,
    n_m_mask,
    scores,
    sparse_layers,
    sparsity,
    unstructured_masks,
)
from ._structured import (
    WidthPruner,
    block_importance,
    drop_blocks,
    droppable_blocks,
    rounded_ratios,
)


@dataclass
class Outcome:
    """What one kind's pruning did, for the notes, details and plots."""

    notes: list[str] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, float]] = field(default_factory=list)
    sensitivity: Sensitivity | None = None
    train_result: TrainResult | None = None
    table: list[dict[str, Any]] | None = None


def _grid(cfg: PruneConfig, cap: float) -> list[float]:
    """Sensitivity ratios: the configured ones, plus (for scope sensitivity) the amount and the cap, so
    the drop curves cover the range the allocation chooses from."""
    grid = set(cfg.sensitivity.ratios)
    if cfg.scope == "sensitivity":
        grid |= {round(cfg.amount, 4), round(cap, 4)}
    return sorted(grid)


def _advance(step: Step) -> Callable[[str, float], None]:
    """A sensitivity callback that advances ``step`` by one layer (its name and largest drop)."""
    return lambda name, drop: step.advance(info=f"drop up to {drop:+.4f}: {name}")


def _finetune(
    net: nn.Module, ctx: StageContext, cfg: PruneConfig, step: int, steps: int
) -> TrainResult | None:
    if not cfg.finetune:
        return None
    label = "fine-tune" if steps == 1 else f"fine-tune (step {step}/{steps})"
    return ctx.fit(net, overrides=cfg.finetune, description=label)


def _record(
    history: list[dict[str, float]],
    step: int,
    target: float,
    achieved: float,
    net: nn.Module,
    task: Task,
) -> None:
    history.append(
        {
            "step": step,
            "target": round(target, 5),
            "achieved": round(achieved, 5),
            "val_metric": val_score(net, task),
        }
    )


# -- unstructured / N:M --------------------------------------------------------------------------


def run_sparse(
    net: nn.Module, cfg: PruneConfig, ctx: StageContext, fractions: list[float]
) -> Outcome:
    task, out = ctx.task, Outcome()
    is_nm = cfg.kind == "n_m"
    chosen = sparse_layers(net, protect=cfg.protect, n_m=cfg.n_m if is_nm else None)
    layers = chosen.layers
    gen = torch.Generator().manual_seed(ctx.seed)
    taylor = cfg.importance == "taylor"
    if taylor:
        accumulate_grads(net, task, cfg.importance_batches, ctx.seed)
    # Individual weights can go further than whole channels: let sensitive layers' share move to the
    # robust ones, up to most of a layer, and probe the curves up to that cap.
    cap = max(cfg.max_ratio, 1.0 - (1.0 - cfg.amount) / 4)
    if cfg.sensitivity.enabled or cfg.scope == "sensitivity":
        with ctx.progress("sensitivity", min(len(layers), cfg.sensitivity.max_layers)) as step:
            out.sensitivity = sparse_sensitivity(
                net,
                layers,
                task,
                importance=cfg.importance,
                ratios=_grid(cfg, cap),
                n_m=cfg.n_m if is_nm else None,
                max_layers=cfg.sensitivity.max_layers,
                seed=ctx.seed,
                progress=_advance(step),
            )
    ratios = None
    if cfg.scope == "sensitivity" and not is_nm and out.sensitivity is not None:
        ratios = allocate_ratios(
            out.sensitivity.curves, out.sensitivity.sizes, cfg.amount, max_ratio=cap
        )
        out.details["layer_ratios"] = {n: round(r, 4) for n, r in ratios.items()}
    target_final = 1.0 - cfg.n_m[0] / cfg.n_m[1] if is_nm else cfg.amount
    steps = [1.0] if is_nm else fractions  # an N:M pattern is all or nothing per group
    for k, f in enumerate(steps, start=1):
        make_permanent(net)
        if taylor and k > 1:
            accumulate_grads(net, task, cfg.importance_batches, ctx.seed)
        s = {n: scores(m, cfg.importance, gen) for n, m in layers}
        if is_nm:
            masks = {n: n_m_mask(s[n], *cfg.n_m) for n, _ in layers}
        else:
            step_ratios = {n: r * f for n, r in ratios.items()} if ratios else None
            scope = "local" if ratios else cfg.scope
            masks = unstructured_masks(
                layers, s, scope=scope, amount=cfg.amount * f, ratios=step_ratios
            )
        net.zero_grad(set_to_none=True)
        apply_masks(layers, masks)
        out.train_result = _finetune(net, ctx, cfg, k, len(steps)) or out.train_result
        _record(out.history, k, target_final * f, sparsity(layers), net, task)
    make_permanent(net)
    achieved = sparsity(layers)
    total = sum(m.weight.numel() for _, m in layers)
    how = {
        "local": "the same fraction of each layer",
        "global": f"one {cfg.importance} threshold across layers",
        "sensitivity": "per-layer fractions from the sensitivity analysis",
    }[cfg.scope]
    if is_nm:
        out.notes.append(
            f"{cfg.n_m[0]}:{cfg.n_m[1]} sparsity: in every group of {cfg.n_m[1]} consecutive input weights the "
            f"{cfg.n_m[1] - cfg.n_m[0]} least important ({cfg.importance}) are zero; {achieved:.1%} of the {total:,} "
            f"weights in {len(layers)} layers. prune.amount does not apply (the pattern fixes the sparsity)"
            + (
                "; nor does schedule.steps (one step, then fine-tuning)."
                if cfg.schedule.steps > 1
                else "."
            )
        )
        out.notes.append(
            "Sparse tensor cores (NVIDIA Ampere and later, via TensorRT) can run this layout about 2x faster; "
            "ONNX Runtime on CPU runs it as a dense model."
        )
    else:
        gradual = (
            f"{cfg.schedule.steps} gradual steps along a polynomial curve (power {cfg.schedule.power:g})"
            if cfg.schedule.steps > 1
            else "one shot"
        )
        after = "after each step" if cfg.schedule.steps > 1 else "afterwards"
        tuned = (
            f"with fine-tuning {after} (masks held, so pruned weights stay zero)"
            if cfg.finetune
            else "without fine-tuning"
        )
        out.notes.append(
            f"Set {achieved:.1%} of the {total:,} weights in {len(layers)} Linear/Conv layers to zero ({cfg.importance} "
            f"importance, {how}; {gradual}, {tuned})."
        )
    if chosen.skipped:
        out.notes.append(
            "Left whole: " + "; ".join(f"{n} ({why})" for n, why in chosen.skipped.items()) + "."
        )
    out.details["sparsity"] = round(achieved, 5)
    out.details["skipped_layers"] = chosen.skipped
    return out


def size_notes(
    original: nn.Module, net: nn.Module, ctx: StageContext, details: dict[str, Any]
) -> list[str]:
    """Compressed artifact size before vs after (what zeros buy), and the plain runtime note."""
    sizes = {}
    for label, m in (("before", original), ("after", net)):
        path = ctx.work_dir / f"prune-{label}.onnx"
        ctx.export_onnx(Model(torch=m), path)
        data = path.read_bytes()
        sizes[label] = (len(data), len(zlib.compress(data, 9)))
        path.unlink()
    (raw_b, zb), (raw_a, za) = sizes["before"], sizes["after"]
    details.update(
        size_bytes_before=raw_b,
        size_bytes_after=raw_a,
        compressed_bytes_before=zb,
        compressed_bytes_after=za,
        compressed_ratio=round(zb / max(za, 1), 3),
    )
    return [
        (
            f"The ONNX file stores the zeros as values: {raw_a:,} bytes (vs {raw_b:,}). Compressed (zlib level 9) "
            f"it is {za:,} bytes vs {zb:,} before, {times(zb / max(za, 1), 'smaller', 'larger')}: what the sparsity buys in "
            "storage and download."
        ),
        (
            "Dense runtimes (ONNX Runtime's CPU kernels, PyTorch) multiply the zeros like any other weight, so "
            "this sparsity does not make the model faster; the latency reported for this stage is measured, not "
            "inferred from the sparsity."
        ),
    ]


# -- neuron / channel ----------------------------------------------------------------------------


def run_width(
    net: nn.Module, cfg: PruneConfig, ctx: StageContext, sample: Any, fractions: list[float]
) -> Outcome:
    task, out = ctx.task, Outcome()
    unit = "units" if cfg.kind == "neuron" else "channels"
    coupled = (
        "the next layer's inputs"
        if cfg.kind == "neuron"
        else "BatchNorm, the next layer's inputs, residual additions, concatenations, depthwise convolutions"
    )

    def pruner(scope: str, ratios: dict[str, float] | None = None) -> WidthPruner:
        return WidthPruner(
            net,
            sample,
            kind=cfg.kind,
            importance=cfg.importance,
            scope=scope,
            amount=cfg.amount,
            fractions=fractions,
            protect=cfg.protect,
            max_ratio=cfg.max_ratio,
            ratios=ratios,
        )

    wp = pruner("local" if cfg.scope == "sensitivity" else cfg.scope)
    if cfg.sensitivity.enabled or cfg.scope == "sensitivity":
        wp.prepare_importance(task, cfg.importance_batches, ctx.seed)
        with ctx.progress("sensitivity", min(len(wp.roots), cfg.sensitivity.max_layers)) as step:
            out.sensitivity = width_sensitivity(
                wp,
                task,
                ratios=_grid(cfg, cfg.max_ratio),
                max_layers=cfg.sensitivity.max_layers,
                progress=_advance(step),
            )
        net.zero_grad(set_to_none=True)
    ratios: dict[str, float] | None = None
    if cfg.scope == "sensitivity" and out.sensitivity is not None:
        ratios = allocate_ratios(
            out.sensitivity.curves, out.sensitivity.sizes, cfg.amount, max_ratio=cfg.max_ratio
        )
        for name in out.sensitivity.skipped:
            ratios[name] = cfg.amount
    elif cfg.scope == "local" and cfg.round_to and cfg.round_to > 1:
        ratios = dict.fromkeys(wp.sizes(), cfg.amount)
    if ratios is not None:
        if cfg.round_to and cfg.round_to > 1:
            ratios = rounded_ratios(ratios, wp.sizes(), cfg.round_to)
        out.details["layer_ratios"] = {n: round(r, 4) for n, r in ratios.items()}
        wp = pruner("local", ratios)
    start = wp.sizes()
    for k, f in enumerate(fractions, start=1):
        wp.prepare_importance(task, cfg.importance_batches, ctx.seed + k)
        wp.step()
        check_runs(net, sample, what=f"prune.kind {cfg.kind!r}")
        out.train_result = _finetune(net, ctx, cfg, k, len(fractions)) or out.train_result
        now = wp.sizes()
        _record(
            out.history,
            k,
            cfg.amount * f,
            1 - sum(now.values()) / max(sum(start.values()), 1),
            net,
            task,
        )
    end = wp.sizes()
    removed = 1 - sum(end.values()) / max(sum(start.values()), 1)
    example = ", ".join(f"{n} {start[n]}->{end.get(n, 0)}" for n in list(start)[:3])
    out.notes.append(
        f"Removed {removed:.1%} of the {sum(start.values()):,} {unit} of {len(start)} layers ({cfg.importance} "
        f"importance, {cfg.scope} scope; e.g. {example}), with Torch-Pruning's dependency graph shrinking what "
        f"depends on them ({coupled})."
    )
    if ratios is not None and cfg.round_to and cfg.round_to > 1 and cfg.scope == "local":
        out.notes.append(
            f"Each layer of {2 * cfg.round_to} or more {unit} keeps a multiple of {cfg.round_to} (round_to): "
            "ONNX Runtime's CPU kernels work on blocks of 8 or 16 channels, and an odd count can run slower "
            "than the unpruned layer; set round_to: null for the exact amount."
        )
    if wp.untraced:
        out.notes.append(
            f"Left whole: {', '.join(wp.untraced)}, which Torch-Pruning's trace did not reach (outside the autograd "
            "graph of the output)."
        )
    out.details["units_before"] = start
    out.details["units_after"] = end
    out.details["removed_fraction"] = round(removed, 5)
    return out


def shrink_note(pb: int, pa: int, fb: int | None, fa: int | None) -> str:
    flops = (
        f"; FLOPs per sample {fb:,} -> {fa:,} ({fb / max(fa, 1):.2f}x fewer)" if fb and fa else ""
    )
    return (
        f"Parameters {pb:,} -> {pa:,} ({pb / max(pa, 1):.2f}x fewer){flops}. The tensors are smaller, so the "
        "exported model is smaller and does less work; its latency is measured below."
    )


# -- layer ---------------------------------------------------------------------------------------


def run_layers(
    net: nn.Module, cfg: PruneConfig, ctx: StageContext, sample: Any, fractions: list[float]
) -> Outcome:
    task, out = ctx.task, Outcome()
    blocks = droppable_blocks(net, sample)
    first_names = {m: n for n, m in blocks}
    params = {m: sum(p.numel() for p in m.parameters()) for _, m in blocks}
    n_target = min(len(blocks), max(1, round(cfg.amount * len(blocks))))
    if cfg.sensitivity.enabled or cfg.scope == "sensitivity":
        with ctx.progress("sensitivity", min(len(blocks), cfg.sensitivity.max_layers)) as step:
            out.sensitivity = block_sensitivity(
                net, blocks, task, max_layers=cfg.sensitivity.max_layers, progress=_advance(step)
            )
    measured = {
        m: -out.sensitivity.curves[n][1][0]
        for n, m in blocks
        if out.sensitivity and n in out.sensitivity.curves
    }
    counts = [round(n_target * f) for f in fractions]
    dropped: list[nn.Module] = []
    importance_log: dict[str, float] = {}
    for k, count in enumerate(counts, start=1):
        n_now = count - len(dropped)
        if n_now <= 0:
            continue
        current = droppable_blocks(net, sample)
        current = [(n, m) for n, m in current if m in first_names]
        if cfg.scope == "sensitivity" and measured:
            imp = {n: measured.get(m, 0.0) for n, m in current}
        else:
            imp = block_importance(
                net,
                current,
                task,
                importance=cfg.importance,
                n_batches=cfg.importance_batches,
                seed=ctx.seed + k,
            )
        for n, m in current:
            importance_log[first_names[m]] = round(imp[n], 6)
        chosen = sorted(current, key=lambda b: imp[b[0]])[:n_now]
        dropped += [m for _, m in chosen]
        drop_blocks(net, [n for n, _ in chosen])
        check_runs(net, sample, what="prune.kind 'layer'")
        out.train_result = _finetune(net, ctx, cfg, k, len(counts)) or out.train_result
        _record(
            out.history, k, cfg.amount * fractions[k - 1], len(dropped) / len(blocks), net, task
        )
    names = [first_names[m] for m in dropped]
    out.table = [
        {
            "layer": first_names[m],
            "type": type(m).__name__,
            "params_before": params[m],
            "params_after": 0 if m in dropped else params[m],
            "sparsity": 1.0 if m in dropped else 0.0,
            "importance": importance_log.get(first_names[m]),
        }
        for _, m in blocks
    ]
    how = "measured metric drop" if cfg.scope == "sensitivity" else f"{cfg.importance} importance"
    out.notes.append(
        f"Dropped {len(dropped)} of {len(blocks)} removable blocks ({', '.join(names)}), the least important by "
        f"{how}; each is gone and its input passes straight on (a residual block keeps its skip path)."
    )
    out.details["dropped_blocks"] = names
    out.details["candidate_blocks"] = [n for n, _ in blocks]
    return out
