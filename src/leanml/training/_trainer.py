"""The trainer shared by the baseline and every stage that fine-tunes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._utils import seed_everything
from ..data import Inputs, Split, take
from ..errors import StageError
from ..metrics import Metric
from ._config import TrainConfig

# loss_fn(model, x_batch, y_batch, batch_indices) -> scalar loss. The indices point into the training
# split, so a loss can look up per-sample cached values (e.g. a teacher's logits).
LossFn = Callable[
    [nn.Module, "torch.Tensor | dict[str, torch.Tensor]", "torch.Tensor | None", torch.Tensor],
    torch.Tensor,
]
# on_epoch(epoch, logs) is called after each epoch; it may raise to stop training (e.g. optuna.TrialPruned).
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class TrainResult:
    """What training did.

    Attributes:
        history: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss``, ``val_metric``, ``lr``.
        best_epoch: the epoch whose weights the model holds (1-based) when restore_best is on.
        stopped_epoch: the last epoch run.
        stopped_early: whether early stopping ended training before ``epochs``.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_epoch: int = 0
    stopped_early: bool = False
    epochs: int = 0


def to_tensor(x: Inputs) -> torch.Tensor | dict[str, torch.Tensor]:
    if isinstance(x, dict):
        return {k: torch.as_tensor(v) for k, v in x.items()}
    return torch.as_tensor(x)


def forward(model: nn.Module, x: torch.Tensor | dict[str, torch.Tensor]) -> torch.Tensor:
    """Call the model on an array or on named inputs; a HF-style output is reduced to its first tensor."""
    out = model(**x) if isinstance(x, dict) else model(x)
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, (tuple, list)):
        return out[0]
    if hasattr(out, "last_hidden_state"):
        return out.last_hidden_state
    raise StageError(f"the model returned {type(out).__name__}; leanml needs a tensor output")


@torch.inference_mode()
def predict(model: nn.Module, x: Inputs, *, batch_size: int = 512) -> np.ndarray:
    """Outputs of ``model`` (eval mode) on ``x``, batched, as a NumPy array."""
    was_training = model.training
    model.eval()
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    outs = []
    for start in range(0, n, batch_size):
        outs.append(
            forward(model, to_tensor(take(x, slice(start, start + batch_size)))).float().numpy()
        )
    model.train(was_training)
    return np.concatenate(outs) if outs else np.zeros((0,))


def task_loss(metric: Metric, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """The loss that fits ``metric``: cross-entropy, soft cross-entropy or MSE."""
    if metric.loss == "cross_entropy":
        return F.cross_entropy(outputs, targets.long())
    if metric.loss == "soft_cross_entropy":
        return torch.sum(-F.softmax(targets, -1) * F.log_softmax(outputs, -1), -1).mean()
    return F.mse_loss(outputs.reshape(len(outputs), -1), targets.reshape(len(targets), -1).float())


def _optimizer(cfg: TrainConfig, params: Sequence[nn.Parameter]) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _scheduler(
    cfg: TrainConfig, opt: torch.optim.Optimizer
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if cfg.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs)
    if cfg.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, cfg.epochs // 3), gamma=0.1)
    return None


def evaluate(
    model: nn.Module, split: Split, metric: Metric, *, batch_size: int = 512
) -> tuple[float, float]:
    """``(loss, metric)`` of ``model`` on a labelled split, in PyTorch."""
    assert split.y is not None
    out = predict(model, split.x, batch_size=batch_size)
    loss = float(task_loss(metric, torch.as_tensor(out), torch.as_tensor(split.y)))
    return loss, metric(out, split.y)


def fit(
    model: nn.Module,
    train: Split,
    val: Split,
    metric: Metric,
    config: TrainConfig,
    *,
    seed: int = 0,
    loss_fn: LossFn | None = None,
    extra_parameters: Sequence[nn.Parameter] = (),
    callbacks: Sequence[EpochCallback] = (),
) -> TrainResult:
    """Train ``model`` in place on ``train``, early-stopping on ``val``.

    Args:
        model: the torch module; it is trained in place and, with ``restore_best``, ends holding the
            weights of its best validation epoch.
        train, val: labelled splits (a ``loss_fn`` may use other targets; ``val`` still needs labels).
        metric: the task metric; its ``loss`` is the default training loss.
        config: epochs, optimizer, schedule, early stopping.
        seed: the same seed gives the same result.
        loss_fn: replaces the task loss, e.g. for distillation.
        extra_parameters: trained alongside the model (e.g. projection layers of a hint loss).
        callbacks: called after every epoch with the epoch's logs; may raise to stop.

    Raises:
        StageError: the loss became NaN or infinite.
    """
    seed_everything(seed)
    rng = np.random.default_rng(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    if not params:
        raise StageError("the model has no trainable parameters")
    opt = _optimizer(config, params)
    sched = _scheduler(config, opt)
    es = config.early_stopping
    sign = 1.0 if (es.monitor == "val_loss" or not metric.higher_is_better) else -1.0
    best_score, best_state, best_epoch, wait = math.inf, None, 0, 0
    result = TrainResult(epochs=config.epochs)
    n = len(train)
    y_all = None if train.y is None else torch.as_tensor(train.y)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = rng.permutation(n)
        total, count = 0.0, 0
        for start in range(0, n, config.batch_size):
            idx = order[start : start + config.batch_size]
            if len(idx) < 2 and n > 1:
                continue  # a batch of one breaks BatchNorm
            xb = to_tensor(take(train.x, idx))
            idx_t = torch.as_tensor(idx)
            yb = None if y_all is None else y_all[idx_t]
            if loss_fn is None:
                loss = task_loss(metric, forward(model, xb), yb)
            else:
                loss = loss_fn(model, xb, yb, idx_t)
            if not torch.isfinite(loss):
                raise StageError(
                    f"training loss became {loss.item()} at epoch {epoch}; lower train.lr "
                    f"(now {config.lr}) or check the data for extreme values"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
            count += len(idx)
        lr = opt.param_groups[0]["lr"]
        if sched is not None:
            sched.step()
        val_loss, val_metric = evaluate(model, val, metric)
        logs = {
            "epoch": float(epoch),
            "train_loss": total / max(count, 1),
            "val_loss": val_loss,
            "val_metric": val_metric,
            "lr": lr,
        }
        result.history.append(logs)
        result.stopped_epoch = epoch
        for cb in callbacks:
            cb(epoch, logs)
        score = sign * logs[es.monitor]
        if score < best_score - es.min_delta:
            best_score, best_epoch, wait = score, epoch, 0
            if es.restore_best:
                best_state = copy.deepcopy(model.state_dict())
        else:
            wait += 1
            if es.enabled and wait >= es.patience:
                result.stopped_early = epoch < config.epochs
                break
    if es.restore_best and best_state is not None:
        model.load_state_dict(best_state)
        result.best_epoch = best_epoch
    else:
        result.best_epoch = result.stopped_epoch
    model.eval()
    return result
