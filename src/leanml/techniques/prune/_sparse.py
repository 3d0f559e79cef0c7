"""Unstructured and N:M sparsity: masks on Linear/Conv weights, kept during fine-tuning, then baked in.

While fine-tuning, ``torch.nn.utils.prune`` holds each mask as a forward pre-hook, so pruned weights stay
zero whatever the optimizer does; :func:`make_permanent` then leaves plain dense weights with zeros, which
export to ONNX like any other model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ...errors import InvalidInputError
from ._common import named_layers, protected


@dataclass
class SparseLayers:
    """The layers a sparse kind prunes, and the ones it leaves whole (with why)."""

    layers: list[tuple[str, nn.Module]]
    skipped: dict[str, str] = field(default_factory=dict)


def sparse_layers(
    net: nn.Module, *, protect: list[str], n_m: tuple[int, int] | None = None
) -> SparseLayers:
    """Linear/Conv layers to sparsify: ``protect`` keeps the first/last whole; N:M needs inputs divisible by M."""
    all_layers = named_layers(net)
    if not all_layers:
        raise InvalidInputError(
            "prune: the model has no Linear or Conv layers to sparsify; unstructured and n_m pruning "
            "work on nn.Linear and nn.Conv1d/2d/3d weights"
        )
    keep = protected([n for n, _ in all_layers], protect)
    out = SparseLayers([])
    for name, m in all_layers:
        if name in keep:
            out.skipped[name] = "protected"
        elif n_m is not None and m.weight.shape[1] % n_m[1] != 0:
            out.skipped[name] = f"{m.weight.shape[1]} inputs are not a multiple of M={n_m[1]}"
        else:
            out.layers.append((name, m))
    if not out.layers:
        why = "; ".join(f"{k}: {v}" for k, v in out.skipped.items())
        raise InvalidInputError(
            f"prune: no layer is left to sparsify ({why}); protect fewer layers or change n_m"
        )
    return out


def scores(module: nn.Module, importance: str, generator: torch.Generator) -> torch.Tensor:
    """Per-weight importance: |w| for l1/l2, |w * dL/dw| for taylor, uniform noise for random.

    Weights already zero score lowest, so a growing sparsity keeps earlier choices.
    """
    w = module.weight.detach()
    if importance == "random":
        s = torch.rand(w.shape, generator=generator)
    elif importance == "taylor":
        if module.weight.grad is None:
            raise RuntimeError("taylor importance needs gradients; accumulate them first")
        s = (w * module.weight.grad.detach()).abs()
    else:
        s = w.abs()
    return torch.where(w == 0, torch.full_like(s, -1.0), s)


def _lowest_mask(s: torch.Tensor, n_zero: int) -> torch.Tensor:
    mask = torch.ones_like(s)
    if n_zero > 0:
        idx = torch.topk(s.flatten(), n_zero, largest=False).indices
        mask.view(-1)[idx] = 0.0
    return mask


def unstructured_masks(
    layers: list[tuple[str, nn.Module]],
    score: dict[str, torch.Tensor],
    *,
    scope: str,
    amount: float,
    ratios: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """Masks (1 keep, 0 prune) per layer.

    Args:
        scope: ``local``: ``amount`` of each layer; ``global``: one threshold over all layers, so
            ``amount`` of all their weights (layers with small weights lose more).
        ratios: per-layer ratios (scope ``sensitivity``); overrides ``amount`` for the layers named.
    """
    if scope == "global" and not ratios:
        flat = torch.cat([score[n].flatten() for n, _ in layers])
        k = round(amount * flat.numel())
        if k == 0:
            return {n: torch.ones_like(score[n]) for n, _ in layers}
        threshold = torch.kthvalue(flat, k).values
        masks = {n: (score[n] > threshold).float() for n, _ in layers}
        # ties at the threshold: prune exactly k by walking the tied weights in order
        excess = k - sum(int((m == 0).sum()) for m in masks.values())
        for n, _ in layers:
            if excess <= 0:
                break
            tied = (
                ((score[n] == threshold) & (masks[n] == 1)).flatten().nonzero().flatten()[:excess]
            )
            masks[n].view(-1)[tied] = 0.0
            excess -= len(tied)
        return masks
    masks = {}
    for n, _ in layers:
        r = (ratios or {}).get(n, amount)
        masks[n] = _lowest_mask(score[n], round(r * score[n].numel()))
    return masks


def n_m_mask(s: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """Keep the ``n`` highest-scoring weights of every ``m`` consecutive inputs (NVIDIA's 2:4 layout).

    For a conv weight ``[out, in, kh, kw]`` the groups run along ``in`` at each kernel position, as
    sparse tensor cores read them.
    """
    if s.dim() > 2:
        t = s.permute(0, *range(2, s.dim()), 1)  # [out, kh, kw, in]
    else:
        t = s
    groups = t.reshape(-1, m)
    keep = torch.topk(groups, n, dim=1).indices
    mask = torch.zeros_like(groups).scatter_(1, keep, 1.0).reshape(t.shape)
    if s.dim() > 2:
        mask = mask.permute(0, s.dim() - 1, *range(1, s.dim() - 1))
    return mask.contiguous()


def apply_masks(layers: list[tuple[str, nn.Module]], masks: dict[str, torch.Tensor]) -> None:
    """Attach masks as pre-hooks (pruned weights stay zero through fine-tuning)."""
    for name, module in layers:
        if torch_prune.is_pruned(module):
            torch_prune.remove(module, "weight")
        torch_prune.custom_from_mask(module, "weight", masks[name])


def make_permanent(net: nn.Module) -> None:
    """Bake the masks into plain weights and drop the hooks."""
    for m in net.modules():
        if isinstance(m, nn.Module) and hasattr(m, "weight_mask"):
            torch_prune.remove(m, "weight")


def sparsity(layers: list[tuple[str, nn.Module]]) -> float:
    """Fraction of zero weights over ``layers``."""
    total = sum(m.weight.numel() for _, m in layers)
    zeros = sum(int((m.weight == 0).sum()) for _, m in layers)
    return zeros / max(total, 1)
