"""Structured pruning that physically shrinks the model.

``neuron`` and ``channel`` remove output units of Linear / Conv layers with Torch-Pruning's dependency
graph, which also shrinks everything coupled to them: BatchNorm, the next layer's inputs, both sides of a
residual addition, concatenations and depthwise convolutions. ``layer`` removes whole shape-preserving
blocks (residual blocks, transformer encoder layers).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...errors import InvalidInputError
from ...task import Task
from ...training import forward, task_loss
from ._common import (
    CONV_TYPES,
    accumulate_grads,
    describe_layers,
    named_layers,
    probe_batches,
    protected,
    run_naming_layer,
)

# -- neuron / channel ---------------------------------------------------------------------------


def _importance(name: str) -> Any:
    import torch_pruning as tp

    if name == "l1":
        return tp.importance.GroupMagnitudeImportance(p=1)
    if name == "l2":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "taylor":
        return tp.importance.GroupTaylorImportance()
    return tp.importance.RandomImportance()


def _output_layers(net: nn.Module, sample: Any) -> list[nn.Module]:
    """The Linear/Conv layers that produce the model's output (their units must stay)."""
    order: list[nn.Module] = []
    outs: dict[int, nn.Module] = {}
    handles = []
    for _, m in named_layers(net):

        def hook(mod: nn.Module, _a: Any, out: Any) -> None:
            order.append(mod)
            if isinstance(out, torch.Tensor):
                outs[id(out)] = mod

        handles.append(m.register_forward_hook(hook))
    try:
        with torch.no_grad():
            y = forward(net.eval(), sample)
    finally:
        for h in handles:
            h.remove()
    found = [outs[id(y)]] if id(y) in outs else []
    if order and order[-1] not in found:
        found.append(order[-1])
    return found


class WidthPruner:
    """Removes units (``neuron``: Linear) or channels (``channel``: Conv) with Torch-Pruning.

    Args:
        net: the model, pruned in place.
        sample: a small input batch for tracing.
        kind: ``neuron`` or ``channel``.
        importance: ``l1``, ``l2``, ``taylor`` or ``random``.
        scope: ``local`` (``amount`` of each layer), ``global`` (one ranking over all layers, each
            capped at ``max_ratio``) or ``sensitivity`` (``ratios`` per layer).
        fractions: cumulative fraction of the target reached after each step (ends at 1.0).
        ratios: layer name -> ratio, for scope ``sensitivity``.
    """

    def __init__(
        self,
        net: nn.Module,
        sample: Any,
        *,
        kind: str,
        importance: str,
        scope: str,
        amount: float,
        fractions: list[float],
        protect: list[str],
        max_ratio: float,
        ratios: dict[str, float] | None = None,
    ) -> None:
        import torch_pruning as tp

        self.net, self.kind, self.importance_name = net, kind, importance
        self.root_types: list[type[nn.Module]] = (
            [nn.Linear] if kind == "neuron" else list(CONV_TYPES)
        )
        outputs = _output_layers(net, sample)
        names = {m: n for n, m in net.named_modules()}
        candidates = [m for _, m in named_layers(net, tuple(self.root_types)) if m not in outputs]
        # depthwise convs follow their producer; they are never roots
        candidates = [m for m in candidates if not (isinstance(m, CONV_TYPES) and m.groups > 1)]
        if not candidates:
            raise InvalidInputError(self._nothing_to_prune(net))
        keep = protected([names[m] for m in candidates], protect)
        ignored = outputs + [m for m in candidates if names[m] in keep]
        scheduler = _scheduler(fractions)
        by_name = dict(net.named_modules())
        ratio_dict = {by_name[n]: r for n, r in (ratios or {}).items() if n in by_name}
        self.pruner = run_naming_layer(
            net,
            lambda: tp.pruner.BasePruner(
                net,
                sample,
                importance=_importance(importance),
                global_pruning=scope == "global",
                pruning_ratio=amount,
                pruning_ratio_dict=ratio_dict or None,
                max_pruning_ratio=max_ratio if scope != "local" else 1.0,
                iterative_steps=len(fractions),
                iterative_pruning_ratio_scheduler=scheduler,
                ignored_layers=ignored,
                root_module_types=self.root_types,
                forward_fn=lambda m, x: forward(m, x),
                in_channel_groups={},
                out_channel_groups={},
                num_heads={},
            ),
            what="prune: Torch-Pruning cannot trace the model",
            fix="give a model whose forward is plain tensor operations, or use kind 'unstructured'",
        )
        self.names = names
        traced = self.pruner.DG.module2node
        self.untraced = [names[m] for m in candidates if m not in traced]
        if len(self.untraced) == len(candidates):
            raise InvalidInputError(
                f"prune: Torch-Pruning cannot trace the model: none of its layers ({', '.join(self.untraced[:4])}"
                f"{', ...' if len(self.untraced) > 4 else ''}) is in the autograd graph of its output (a forward "
                "under torch.no_grad, .detach() or NumPy?); make the forward differentiable, or use kind 'unstructured'"
            )
        self.roots = [(names.get(g[0].dep.target.module, "?"), g) for g in self.groups()]
        if not self.roots:
            raise InvalidInputError(self._nothing_to_prune(net))

    def _nothing_to_prune(self, net: nn.Module) -> str:
        want = (
            "Linear layers with hidden units (not the output layer)"
            if self.kind == "neuron"
            else "Conv layers"
        )
        other = "channel" if self.kind == "neuron" else "neuron"
        return (
            f"prune.kind {self.kind!r} needs {want}; the model has {describe_layers(net)}; "
            f"use kind {other!r}, 'layer' or 'unstructured'"
        )

    def groups(self) -> list[Any]:
        dg = self.pruner.DG
        return list(
            dg.get_all_groups(
                ignored_layers=self.pruner.ignored_layers, root_module_types=self.root_types
            )
        )

    def sizes(self) -> dict[str, int]:
        """Root layer name -> output units/channels now."""
        dg = self.pruner.DG
        return {name: int(dg.get_out_channels(g[0].dep.target.module)) for name, g in self.roots}

    def prepare_importance(self, task: Task, n_batches: int, seed: int) -> None:
        torch.manual_seed(seed)
        if self.importance_name == "taylor":
            accumulate_grads(self.net, task, n_batches, seed)

    def step(self) -> None:
        """Prune to the next point of the schedule (units are removed from the tensors)."""
        self.pruner.step()
        self.net.zero_grad(set_to_none=True)

    def channel_scores(self, group: Any) -> torch.Tensor:
        return self.pruner.estimate_importance(group)

    def zeroed(self, group: Any, ratio: float) -> Callable[[], None]:
        """Zero the lowest-ranked ``ratio`` of a group's units in place (what removing them computes);
        returns a function that restores them. For the sensitivity analysis: no tensor changes shape."""
        n = len(group[0].idxs)
        k = round(ratio * n)
        if k <= 0:
            return lambda: None
        imp = self.channel_scores(group)
        idxs = torch.argsort(imp)[:k].tolist()
        root = group[0].dep
        sub = self.pruner.DG.get_pruning_group(root.target.module, root.handler, idxs)
        from torch_pruning._helpers import to_plain_idxs

        saved: list[tuple[torch.Tensor, torch.Tensor]] = []
        dg = self.pruner.DG
        for dep, hybrid in sub:
            dep_idxs = to_plain_idxs(hybrid)
            m = dep.target.module
            if not dep_idxs or not isinstance(m, nn.Module):
                continue
            norm = isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm))
            if not (
                norm
                or (
                    isinstance(m, (nn.Linear, *CONV_TYPES))
                    and dg.is_out_channel_pruning_fn(dep.handler)
                )
            ):
                continue
            for p in (getattr(m, "weight", None), getattr(m, "bias", None)):
                if isinstance(p, torch.Tensor) and p.dim() >= 1:
                    saved.append((p.data, p.data.clone()))
                    p.data[torch.as_tensor(dep_idxs)] = 0.0

        def restore() -> None:
            for target, original in saved:
                target.copy_(original)

        return restore


def rounded_ratios(
    ratios: dict[str, float], sizes: dict[str, int], round_to: int
) -> dict[str, float]:
    """Per-layer ratios adjusted so each layer keeps a multiple of ``round_to`` units.

    ONNX Runtime's CPU convolutions work on blocks of 8 (AVX2) or 16 (AVX-512) channels: a layer left
    with 23 channels can run slower than the 32 it started with. Layers smaller than ``2 * round_to``
    are not rounded (they would lose all or nothing).
    """
    out = {}
    for name, r in ratios.items():
        n = sizes[name]
        keep = n * (1.0 - r)
        if n >= 2 * round_to:
            kept = max(round_to, round_to * round(keep / round_to))
        else:
            kept = max(1, round(keep))
        out[name] = 1.0 - kept / n
    return out


def _scheduler(fractions: list[float]) -> Callable[[float, int], list[float]]:
    def schedule(ratio: float, steps: int) -> list[float]:
        return [0.0] + [ratio * f for f in fractions]

    return schedule


# -- layer --------------------------------------------------------------------------------------

_NOT_BLOCKS = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm, nn.Dropout, nn.Identity)


def droppable_blocks(net: nn.Module, sample: Any) -> list[tuple[str, nn.Module]]:
    """Blocks that can be replaced by the identity: children of an ``nn.Sequential`` / ``nn.ModuleList``
    that hold a Linear/Conv layer, run once, and map their input to an output of the same shape (residual
    blocks, encoder layers). Nested candidates give way to the outermost block."""
    seen: dict[nn.Module, tuple[str, int, bool]] = {}
    handles = []
    for pname, parent in net.named_modules():
        if not isinstance(parent, (nn.Sequential, nn.ModuleList)):
            continue
        for cname, child in parent.named_children():
            if isinstance(child, _NOT_BLOCKS) or not any(
                isinstance(m, (nn.Linear, *CONV_TYPES)) for m in child.modules()
            ):
                continue
            name = f"{pname}.{cname}" if pname else cname

            def hook(mod: nn.Module, args: Any, out: Any, name: str = name) -> None:
                x = args[0] if args else None
                same = (
                    isinstance(x, torch.Tensor)
                    and isinstance(out, torch.Tensor)
                    and x.shape == out.shape
                )
                prev = seen.get(mod)
                seen[mod] = (
                    name,
                    (prev[1] if prev else 0) + 1,
                    same and (prev[2] if prev else True),
                )

            handles.append(child.register_forward_hook(hook))
    try:
        with torch.no_grad():
            forward(net.eval(), sample)
    finally:
        for h in handles:
            h.remove()
    blocks = [(name, m) for m, (name, calls, same) in seen.items() if calls == 1 and same]
    names = [n for n, _ in blocks]
    outer = [(n, m) for n, m in blocks if not any(n.startswith(o + ".") for o in names if o != n)]
    order = {n: i for i, (n, _) in enumerate(net.named_modules())}
    return sorted(outer, key=lambda b: order.get(b[0], 0))


class _Bypass:
    """Forward hooks that make blocks return their input: a block removed, without changing the model."""

    def __init__(self, modules: list[nn.Module]) -> None:
        self.handles = [m.register_forward_hook(lambda _m, args, _o: args[0]) for m in modules]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def bypassed(modules: list[nn.Module]) -> _Bypass:
    return _Bypass(modules)


def block_importance(
    net: nn.Module,
    blocks: list[tuple[str, nn.Module]],
    task: Task,
    *,
    importance: str,
    n_batches: int,
    seed: int,
) -> dict[str, float]:
    """How much each block matters (higher = keep).

    ``l1``/``l2``: mean relative change the block makes to its input, ``|f(x) - x| / |x|`` (a block that
    barely changes its input is the one to drop); ``taylor``: ``|dL/dy · (y - x)|``, the first-order change
    of the loss when the output ``y`` is replaced by the input ``x``; ``random``: uniform noise.
    """
    if importance == "random":
        g = torch.Generator().manual_seed(seed)
        return {n: float(torch.rand(1, generator=g)) for n, _ in blocks}
    score = dict.fromkeys((n for n, _ in blocks), 0.0)
    captured: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    handles = []
    for name, m in blocks:

        def hook(_m: nn.Module, args: Any, out: Any, name: str = name) -> None:
            if importance == "taylor" and out.requires_grad:
                out.retain_grad()
            captured[name] = (args[0], out)

        handles.append(m.register_forward_hook(hook))
    p = 1 if importance == "l1" else 2
    net.eval()
    try:
        for xb, yb in probe_batches(task, n_batches, seed=seed):
            captured.clear()
            if importance == "taylor":
                if yb is None:
                    raise InvalidInputError(
                        "prune.importance 'taylor' needs labelled training data; use l1, l2 or random"
                    )
                net.zero_grad(set_to_none=True)
                task_loss(task.metric, forward(net, xb), yb).backward()
                for name, (x, y) in captured.items():
                    if y.grad is not None:
                        score[name] += float((y.grad * (y - x)).detach().sum().abs())
            else:
                with torch.no_grad():
                    forward(net, xb)
                for name, (x, y) in captured.items():
                    num = torch.linalg.vector_norm((y - x).flatten(1), ord=p, dim=1)
                    den = torch.linalg.vector_norm(x.flatten(1), ord=p, dim=1).clamp_min(1e-12)
                    score[name] += float((num / den).mean())
    finally:
        for h in handles:
            h.remove()
        net.zero_grad(set_to_none=True)
    return score


def drop_blocks(net: nn.Module, names: list[str]) -> None:
    """Remove blocks for good: a Sequential child becomes ``nn.Identity``, a ModuleList entry is deleted
    (and a transformers config's ``num_hidden_layers`` follows)."""
    by_list: dict[str, list[int]] = {}
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = net.get_submodule(parent_name) if parent_name else net
        if isinstance(parent, nn.ModuleList):
            by_list.setdefault(parent_name, []).append(int(child))
        else:
            setattr(parent, child, nn.Identity())
    for parent_name, idxs in by_list.items():
        parent = net.get_submodule(parent_name)
        assert isinstance(parent, nn.ModuleList)
        old = len(parent)
        kept = [m for i, m in enumerate(parent) if i not in set(idxs)]
        new = nn.ModuleList(kept)
        owner_name, _, attr = parent_name.rpartition(".")
        owner = net.get_submodule(owner_name) if owner_name else net
        setattr(owner, attr, new)
        for m in net.modules():
            cfg = getattr(m, "config", None)
            if cfg is not None and getattr(cfg, "num_hidden_layers", None) == old:
                cfg.num_hidden_layers = len(kept)
