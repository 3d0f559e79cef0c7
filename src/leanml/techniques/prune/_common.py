"""What every prune kind shares: the layers it can touch, probe batches, gradients, checks, tables."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..._utils import DEFAULT_SEED
from ...data import Inputs, Split, take
from ...errors import InvalidInputError
from ...task import Task
from ...training import forward, predict, task_loss, to_tensor

WEIGHT_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CONV_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def named_layers(
    net: nn.Module, types: tuple[type[nn.Module], ...] = WEIGHT_TYPES
) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the layers of ``types``, in definition order."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, types)]


def describe_layers(net: nn.Module) -> str:
    """A short inventory like ``3 Linear (body.0, body.2, head), 0 Conv`` for error messages."""
    counts: dict[str, list[str]] = {}
    for name, m in named_layers(net):
        counts.setdefault(type(m).__name__, []).append(name)
    if not counts:
        return "no Linear or Conv layers"
    parts = []
    for kind, names in counts.items():
        shown = ", ".join(names[:4]) + (", ..." if len(names) > 4 else "")
        parts.append(f"{len(names)} {kind} ({shown})")
    return "; ".join(parts)


def sample_input(split: Split, n: int = 2) -> torch.Tensor | dict[str, torch.Tensor]:
    return to_tensor(take(split.x, slice(0, n)))


def probe_batches(
    task: Task, n_batches: int, batch_size: int = 64, seed: int = DEFAULT_SEED
) -> list[tuple[Any, torch.Tensor | None]]:
    """A few shuffled training batches (inputs as tensors, targets as a tensor or None)."""
    train = task.data.train
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(train))[: n_batches * batch_size]
    out = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        if len(idx) < 2:
            continue
        y = None if train.y is None else torch.as_tensor(train.y[idx])
        out.append((to_tensor(take(train.x, idx)), y))
    return out


def accumulate_grads(net: nn.Module, task: Task, n_batches: int, seed: int) -> None:
    """Leave the summed gradients of the task loss over ``n_batches`` training batches in ``.grad``.

    Eval mode, so BatchNorm statistics and dropout do not change what is measured.
    """
    was_training = net.training
    net.eval()
    net.zero_grad(set_to_none=True)
    for xb, yb in probe_batches(task, n_batches, seed=seed):
        if yb is None:
            raise InvalidInputError(
                "prune.importance 'taylor' needs labelled training data; use l1, l2 or random"
            )
        task_loss(task.metric, forward(net, xb), yb).backward()
    net.train(was_training)


def val_score(net: nn.Module, task: Task) -> float:
    """The task metric of ``net`` on the validation split, in PyTorch (fast, for in-stage decisions)."""
    assert task.data.val.y is not None
    return task.metric(predict(net, task.data.val.x), task.data.val.y)


def count_flops(net: nn.Module, sample: Inputs) -> int | None:
    """Forward FLOPs of one sample (PyTorch's FlopCounterMode), or None when they cannot be counted."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        net.eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            forward(net, to_tensor(take(sample, slice(0, 1))))
        return int(counter.get_total_flops())
    except Exception:  # noqa: BLE001 - a model the counter cannot follow has no FLOPs figure
        return None


@contextlib.contextmanager
def _module_stack(net: nn.Module) -> Iterator[list[str]]:
    """Track which modules are running, so an exception can name the innermost one."""
    stack: list[str] = []
    handles = []
    for name, m in net.named_modules():
        if not name:
            continue

        def pre(_m: nn.Module, _a: Any, name: str = name) -> None:
            stack.append(name)

        def post(_m: nn.Module, _a: Any, _o: Any) -> None:
            if stack:
                stack.pop()

        handles.append(m.register_forward_pre_hook(pre))
        handles.append(m.register_forward_hook(post))
    try:
        yield stack
    finally:
        for h in handles:
            h.remove()


def run_naming_layer(net: nn.Module, fn: Callable[[], Any], *, what: str, fix: str) -> Any:
    """Call ``fn`` (which runs ``net``); on failure raise one line naming the layer that failed."""
    with _module_stack(net) as stack:
        try:
            return fn()
        except InvalidInputError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure becomes one line naming the layer
            layer = stack[-1] if stack else None
            where = (
                f"at layer {layer!r} ({type(net.get_submodule(layer)).__name__})"
                if layer
                else "in the model's forward"
            )
            first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise InvalidInputError(f"{what} {where}: {type(e).__name__}: {first}; {fix}") from None


def check_runs(net: nn.Module, sample: Any, *, what: str) -> None:
    """The pruned model must still run on a sample; otherwise name the layer whose shapes broke."""
    net.eval()

    def call() -> None:
        with torch.inference_mode():
            forward(net, sample)

    run_naming_layer(
        net,
        call,
        what=f"{what}: the pruned model no longer runs",
        fix="Torch-Pruning could not follow this model's dependencies; leave that layer out with "
        "protect, or use kind 'unstructured'",
    )


@dataclass
class LayerShape:
    """A Linear/Conv layer's weight before pruning, for the per-layer table."""

    name: str
    type: str
    shape: list[int]
    params: int


def snapshot(net: nn.Module) -> dict[str, LayerShape]:
    return {
        name: LayerShape(name, type(m).__name__, list(m.weight.shape), int(m.weight.numel()))
        for name, m in named_layers(net)
    }


def per_layer_table(before: dict[str, LayerShape], net: nn.Module) -> list[dict[str, Any]]:
    """``per_layer_sparsity`` rows: each layer's weight shape and size before and after, and its sparsity.

    Sparsity is the fraction of the layer's original weights that are gone or zero.
    """
    after = {name: m for name, m in named_layers(net)}
    rows = []
    for name, b in before.items():
        m = after.get(name)
        if m is None:
            rows.append(
                {
                    "layer": name,
                    "type": b.type,
                    "shape_before": b.shape,
                    "shape_after": None,
                    "params_before": b.params,
                    "params_after": 0,
                    "nonzero_after": 0,
                    "sparsity": 1.0,
                }
            )
            continue
        w = m.weight.detach()
        nonzero = int((w != 0).sum())
        rows.append(
            {
                "layer": name,
                "type": b.type,
                "shape_before": b.shape,
                "shape_after": list(w.shape),
                "params_before": b.params,
                "params_after": int(w.numel()),
                "nonzero_after": nonzero,
                "sparsity": round(1.0 - nonzero / max(b.params, 1), 4),
            }
        )
    return rows


def protected(names: list[str], protect: list[str]) -> set[str]:
    """The first and/or last of ``names`` (layers in definition order), as ``protect`` asks."""
    out: set[str] = set()
    if names and "first" in protect:
        out.add(names[0])
    if names and "last" in protect:
        out.add(names[-1])
    return out
