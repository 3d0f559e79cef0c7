"""Sensitivity analysis: prune each layer alone at several ratios and measure the metric drop.

Each probe changes the model in place and restores it (nothing changes shape), and scores the validation
split in PyTorch: hundreds of probes in seconds. The pipeline's own figures are measured on ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ...charts import Plot
from ...task import Task
from ._common import val_score
from ._sparse import n_m_mask, scores
from ._structured import WidthPruner, bypassed


@dataclass
class Sensitivity:
    """Per-layer metric drop (validation split, PyTorch) when only that layer is pruned.

    Attributes:
        baseline: the metric before pruning.
        curves: layer -> (ratios, drop at each ratio); the drop is positive when the metric worsens.
        sizes: layer -> weights (sparse kinds), units/channels (neuron/channel) or 1 (layer).
        skipped: layers not probed (beyond ``max_layers``).
    """

    baseline: float
    curves: dict[str, tuple[list[float], list[float]]] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)

    def most_sensitive(self) -> list[str]:
        return sorted(self.curves, key=lambda n: -max(self.curves[n][1] or [0.0]))

    def as_dict(self) -> dict[str, Any]:
        return {
            "evaluated_on": "validation split, PyTorch",
            "baseline": self.baseline,
            "layers": {
                n: {"ratios": r, "drop": [round(d, 5) for d in ds]}
                for n, (r, ds) in self.curves.items()
            },
            "skipped": self.skipped,
        }

    def plot(self, metric: str, kind: str) -> Plot:
        if kind == "layer":
            names = list(self.curves)
            return Plot(
                title="Layer sensitivity: metric drop when each block alone is removed",
                kind="bar",
                series={"drop": (names, [self.curves[n][1][0] for n in names])},
                xlabel="block",
                ylabel=f"{metric} drop (val)",
            )
        return Plot(
            title="Sensitivity: metric drop when each layer alone is pruned",
            kind="line",
            series={n: (list(r), list(d)) for n, (r, d) in self.curves.items()},
            xlabel="fraction pruned in that layer",
            ylabel=f"{metric} drop (val)",
        )


def sparse_sensitivity(
    net: nn.Module,
    layers: list[tuple[str, nn.Module]],
    task: Task,
    *,
    importance: str,
    ratios: list[float],
    n_m: tuple[int, int] | None,
    max_layers: int,
    seed: int,
    progress: Callable[[str, float], None] | None = None,
) -> Sensitivity:
    """Unstructured (at each ratio) or N:M (at its one sparsity) pruning of one layer at a time;
    ``progress(layer, largest drop)`` is called after each layer measured."""
    base = val_score(net, task)
    out = Sensitivity(base)
    g = torch.Generator().manual_seed(seed)
    for i, (name, m) in enumerate(layers):
        if i >= max_layers:
            out.skipped.append(name)
            continue
        s = scores(m, importance, g)
        original = m.weight.data.clone()
        grid = [1.0 - n_m[0] / n_m[1]] if n_m else list(ratios)
        drops = []
        for r in grid:
            if n_m:
                mask = n_m_mask(s, *n_m)
            else:
                mask = torch.ones_like(s)
                k = round(r * s.numel())
                if k:
                    mask.view(-1)[torch.topk(s.flatten(), k, largest=False).indices] = 0.0
            m.weight.data.mul_(mask)
            drops.append(task.metric.drop(base, val_score(net, task)))
            m.weight.data.copy_(original)
        out.curves[name] = (grid, drops)
        out.sizes[name] = int(m.weight.numel())
        if progress is not None:
            progress(name, max(drops))
    return out


def width_sensitivity(
    pruner: WidthPruner,
    task: Task,
    *,
    ratios: list[float],
    max_layers: int,
    progress: Callable[[str, float], None] | None = None,
) -> Sensitivity:
    """Units/channels of one layer's group zeroed at each ratio (the function removing them
    computes); ``progress(layer, largest drop)`` is called after each layer measured."""
    net = pruner.net
    base = val_score(net, task)
    out = Sensitivity(base)
    for i, (name, group) in enumerate(pruner.roots):
        if i >= max_layers:
            out.skipped.append(name)
            continue
        drops = []
        for r in ratios:
            restore = pruner.zeroed(group, r)
            try:
                drops.append(task.metric.drop(base, val_score(net, task)))
            finally:
                with torch.no_grad():
                    restore()
        out.curves[name] = (list(ratios), drops)
        out.sizes[name] = len(group[0].idxs)
        if progress is not None:
            progress(name, max(drops))
    return out


def block_sensitivity(
    net: nn.Module,
    blocks: list[tuple[str, nn.Module]],
    task: Task,
    *,
    max_layers: int,
    progress: Callable[[str, float], None] | None = None,
) -> Sensitivity:
    """Each block alone bypassed (its output replaced by its input); ``progress(block, drop)`` is
    called after each block measured."""
    base = val_score(net, task)
    out = Sensitivity(base)
    for i, (name, m) in enumerate(blocks):
        if i >= max_layers:
            out.skipped.append(name)
            continue
        bypass = bypassed([m])
        try:
            drop = task.metric.drop(base, val_score(net, task))
        finally:
            bypass.remove()
        out.curves[name] = ([1.0], [drop])
        out.sizes[name] = 1
        if progress is not None:
            progress(name, drop)
    return out
