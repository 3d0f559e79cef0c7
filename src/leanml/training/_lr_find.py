"""A learning-rate range test (``train.lr: auto``), as fastai's and PyTorch Lightning's ``lr_find``.

A short run on training batches raises the learning rate geometrically from ``min_lr`` to ``max_lr``,
one step per batch, recording the smoothed training loss; the sweep stops when the loss diverges. The
chosen rate is the one at the lowest smoothed loss divided by 10 (fastai's ``lr_min``): where the loss
still falls fast, an order of magnitude below where it stops falling. When the sweep reaches its top
rate without diverging and its lowest loss lies within a factor 3 of that top, the loss was still
falling when the sweep ended and its minimum marks only the end: the pick is then fastai's ``valley``
(two thirds down the longest falling stretch of the curve). A flat sweep, whose loss never falls 5 %
below its start, shows no best rate: Adam and AdamW then use 1e-2. The model's weights, buffers
(BatchNorm statistics) and any extra parameters are restored afterwards, so training starts from the
same initialisation as with a fixed rate.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..errors import StageError

# One training step at a given learning rate: returns the batch loss (before the update).
StepFn = Callable[[torch.optim.Optimizer, np.ndarray], torch.Tensor]

# Range of the sweep per optimizer: adaptive optimizers need smaller rates than SGD.
_SWEEP = {"adam": (1e-6, 1.0), "adamw": (1e-6, 1.0), "sgd": (1e-5, 10.0)}
# The pick is kept inside a range where the optimizer is known to train stably.
_CLAMP = {"adam": (1e-4, 3e-2), "adamw": (1e-4, 3e-2), "sgd": (1e-3, 1.0)}
# The pick is the rate at the lowest smoothed loss divided by this (fastai's ``lr_min``), unless the
# sweep is inconclusive (below). A third instead was tried on bench/training.py and not kept.
_BELOW_MIN = 10.0
# A sweep that ran to its top rate without diverging, with its lowest loss within this factor of the
# top rate, is inconclusive: the loss was still falling (digits CNN, a 1-D conv net: minimum at
# 0.4-0.6 of a sweep to 1, a tenth of it clamped to 3e-2, 10x the best fixed rate 3e-3).
_STILL_FALLING = 3.0
# A sweep whose smoothed loss never falls this fraction below where it started is flat: the model
# needs more steps than the sweep has to show progress at any rate, and its minimum is noise (the
# two-spirals MLP: the loss moves by 1-2 % over the whole sweep, the minimum lands anywhere from
# 1e-4 to 4e-2, and the pick from 1e-4 trains to 60 % where the plain loop reaches 89 %).
_FLAT = 0.05
# The rate a flat sweep falls back to, per optimizer. A plateau needs large steps to leave it, and the
# cosine halves the mean rate: on the two spirals (seed 0) 3e-3 with the cosine reached 69.5 %, 1e-2
# 86.8 %; the plain loop's best fixed rate there is 3e-3 to 1e-2, and 1e-2 on the table MLP, whose
# sweep is flat on one seed of three. SGD has no measured fallback and keeps the minimum's rule.
_FLAT_FALLBACK = {"adam": 1e-2, "adamw": 1e-2}


@dataclass
class LrFindResult:
    """The range test's curve and its pick.

    Attributes:
        lr: the chosen learning rate.
        lrs, losses: the sweep: learning rate and smoothed training loss at each step.
        steps: steps the sweep ran (it stops early when the loss diverges).
        reason: how the rate was picked, in one sentence.
    """

    lr: float
    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)
    steps: int = 0
    reason: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "lr": self.lr,
            "steps": self.steps,
            "reason": self.reason,
            "curve": [
                [round(a, 8), round(b, 6)] for a, b in zip(self.lrs, self.losses, strict=True)
            ],
        }


def sweep_steps(total_steps: int) -> int:
    """Steps of the range test: about 5 % of the training steps, between 30 and 100."""
    return int(min(100, max(30, round(0.05 * total_steps))))


def find_lr(
    modules: Sequence[nn.Module],
    params: Sequence[nn.Parameter],
    make_optimizer: Callable[[float], torch.optim.Optimizer],
    step: StepFn,
    batches: Callable[[int], list[np.ndarray]],
    *,
    optimizer: str,
    steps: int,
) -> LrFindResult:
    """Run the range test and restore every module's state afterwards.

    Args:
        modules: modules whose state (weights and buffers) the sweep changes and must restore.
        params: the trained parameters (extra parameters outside ``modules`` included).
        make_optimizer: a fresh optimizer at a given learning rate.
        step: forward and loss on a batch of training indices (the optimizer steps outside).
        batches: ``batches(n)`` gives ``n`` batches of training indices.
        optimizer: the optimizer's name (``adam``, ``adamw``, ``sgd``): sets the sweep range.
        steps: how many steps to sweep over.

    Raises:
        StageError: the loss is not finite at the lowest rate (the data or model is broken).
    """
    states = [copy.deepcopy(m.state_dict()) for m in modules]
    param_copies = [p.detach().clone() for p in params]
    lo, hi = _SWEEP[optimizer]
    lrs = np.geomspace(lo, hi, steps)
    opt = make_optimizer(float(lrs[0]))
    beta = 0.9 if steps < 60 else 0.95  # smoothing over fewer steps needs a shorter memory
    avg, best, out_lrs, out_losses = 0.0, math.inf, [], []
    diverged = False
    try:
        for i, idx in enumerate(batches(steps)):
            for g in opt.param_groups:
                g["lr"] = float(lrs[i])
            loss = step(opt, idx)
            value = float(loss.item())
            if not math.isfinite(value):
                if i == 0:
                    raise StageError(
                        f"training loss became {value} on the first batch; check the data for "
                        "extreme values (NaN or inf) or the model for a broken output"
                    )
                diverged = True
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            avg = beta * avg + (1 - beta) * value
            smoothed = avg / (1 - beta ** (i + 1))
            out_lrs.append(float(lrs[i]))
            out_losses.append(smoothed)
            best = min(best, smoothed)
            if i > steps // 5 and smoothed > 4 * best:
                diverged = True
                break
    finally:
        for m, s in zip(modules, states, strict=True):
            m.load_state_dict(s)
        with torch.no_grad():
            for p, c in zip(params, param_copies, strict=True):
                p.copy_(c)
    return _pick(out_lrs, out_losses, optimizer, diverged=diverged)


def _pick(lrs: list[float], losses: list[float], optimizer: str, *, diverged: bool) -> LrFindResult:
    lo, hi = _CLAMP[optimizer]
    if len(losses) < 3:
        lr = lo * 10 if optimizer != "sgd" else 0.01
        return LrFindResult(
            lr, lrs, losses, len(losses), "the sweep diverged at once; a safe default"
        )
    at_min = lrs[int(np.argmin(losses))]
    start = float(np.mean(losses[: max(3, len(losses) // 10)]))
    fell = 1.0 - min(losses) / start if start > 0 else 1.0
    if fell < _FLAT and optimizer in _FLAT_FALLBACK:
        lr = _FLAT_FALLBACK[optimizer]
        reason = (
            f"the loss never fell more than {100 * fell:.1f} % below its start in the sweep, so it "
            f"shows no best rate; {optimizer}'s fallback {lr:g}"
        )
        return LrFindResult(lr, lrs, losses, len(losses), reason)
    if not diverged and at_min * _STILL_FALLING >= lrs[-1]:
        # The loss still fell at the sweep's top rates and never turned up (BatchNorm nets under
        # Adam often take rates up to 1 in a short sweep): its minimum says only that the sweep ended.
        # Halfway (in log scale) between fastai's valley, right for long runs, and a tenth of the
        # top rate clamped, right for short ones.
        valley, tenth = _valley(lrs, losses), min(hi, at_min / _BELOW_MIN)
        at = math.sqrt(valley * tenth)
        reason = (
            f"the loss still fell at the sweep's end (lr {lrs[-1]:.2g}), so its minimum is no "
            f"guide; halfway between the middle of its longest descent ({valley:.2g}) and a tenth "
            f"of its minimum ({tenth:.2g}, at most {hi:g})"
        )
    else:
        at = at_min / _BELOW_MIN
        reason = f"lowest smoothed loss at lr {at_min:.2g}; a tenth of it"
    lr = float(min(hi, max(lo, at)))
    if lr != at:
        reason += f", kept within [{lo:g}, {hi:g}]"
    return LrFindResult(lr, lrs, losses, len(losses), reason)


def _valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's ``valley``: the rate two thirds down the longest stretch over which the smoothed loss
    keeps falling (the longest decreasing subsequence of the curve)."""
    n = len(losses)
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[i] > run[end]:
            end, start = i, i - run[i]
    third = (end - start) / 3
    return lrs[min(n - 1, start + int(third) + int(third / 2))]
