"""The trainer shared by the baseline and every stage that fine-tunes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .._utils import DEFAULT_SEED, seed_everything
from ..data import Inputs, Split, take
from ..errors import InvalidInputError, StageError
from ..metrics import Metric
from ._config import TrainConfig
from ._lr_find import LrFindResult
from ._run import LossFn, _Run, forward, task_loss, to_tensor

# on_epoch(epoch, logs) is called after each epoch; it may raise to stop training (e.g. optuna.TrialPruned).
EpochCallback = Callable[[int, dict[str, float]], None]


@dataclass
class RefitResult:
    """Whether the delivered weights were retrained on train+val, and why.

    Attributes:
        done: the model holds the refit weights (trained on train+val, never validated).
        epochs: the epoch count early stopping chose on the validation split (the refit's length).
        rows: rows the refit trained on (train+val), when done.
        reason: why it was or was not done, in one sentence.
        held_out_val_metric: the validation metric of the weights early stopping kept, before the
            refit: the last held-out estimate (the refit model has seen the validation rows).
        train_loss: the refit's mean training loss in its last epoch, when done.
    """

    done: bool
    epochs: int
    reason: str
    rows: int = 0
    held_out_val_metric: float | None = None
    train_loss: float | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "done": self.done,
            "epochs": self.epochs,
            "rows": self.rows,
            "reason": self.reason,
            "held_out_val_metric": self.held_out_val_metric,
            "train_loss": self.train_loss,
        }


@dataclass
class TrainResult:
    """What training did.

    Attributes:
        history: one dict per epoch with ``epoch``, ``train_loss``, ``val_loss``, ``val_metric``, ``lr``.
        best_epoch: the epoch whose weights the model holds (1-based) when restore_best is on.
        stopped_epoch: the last epoch run.
        stopped_early: whether early stopping ended training before ``epochs``.
        epochs: the epochs asked for.
        lr: the learning rate trained with (found by the range test with ``lr: auto``).
        lr_find: the range test's curve and pick, when it ran.
        stop_reason: why training ended, in one sentence.
        monitor, patience: what early stopping watched, and for how many epochs.
        refit: whether the weights were retrained on train+val (``train.refit``), and why.
    """

    history: list[dict[str, float]] = field(default_factory=list)
    best_epoch: int = 0
    stopped_epoch: int = 0
    stopped_early: bool = False
    epochs: int = 0
    lr: float = 0.0
    lr_find: LrFindResult | None = None
    stop_reason: str = ""
    monitor: str = ""
    patience: int = 0
    refit: RefitResult | None = None

    def summary(self) -> dict[str, Any]:
        """What the trainer did, for the report: epochs run, why it stopped, the learning rate."""
        return {
            "epochs": self.epochs,
            "epochs_run": self.stopped_epoch,
            "best_epoch": self.best_epoch,
            "stop_reason": self.stop_reason,
            "monitor": self.monitor,
            "patience": self.patience,
            "lr": self.lr,
            "lr_find": None if self.lr_find is None else self.lr_find.as_dict(),
            "refit": None if self.refit is None else self.refit.as_dict(),
        }


# Metrics that count samples: on a validation split of n rows they move in steps of 1/n.
_COUNTED_METRICS = ("accuracy", "f1", "agreement")


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
    seed: int = DEFAULT_SEED,
    loss_fn: LossFn | None = None,
    extra_parameters: Sequence[nn.Parameter] = (),
    callbacks: Sequence[EpochCallback] = (),
    progress: Callable[[str], None] | None = None,
    val_reused: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``train``, early-stopping on ``val``; with ``refit``, retrain
    from the same initial weights on train+val for the epochs early stopping chose.

    Args:
        model: the torch module; it is trained in place and, with ``restore_best``, ends holding the
            weights of its best validation epoch (or, refit, those of the retraining).
        train, val: labelled splits (a ``loss_fn`` may use other targets; ``val`` still needs labels).
        metric: the task metric; its ``loss`` is the default training loss.
        config: epochs, optimizer, schedule, early stopping, refit.
        seed: the same seed gives the same result.
        loss_fn: replaces the task loss, e.g. for distillation.
        extra_parameters: trained alongside the model (e.g. projection layers of a hint loss).
        callbacks: called after every epoch with the epoch's logs; may raise to stop.
        progress: told what runs between epochs, for a progress bar: each step of the
            learning-rate range test and each batch ("range test 12/60", "epoch 3: batch 7/24").
        val_reused: the caller judges the trained model on ``val`` afterwards (a stage's candidate,
            a baseline that stages follow): ``refit: auto`` then keeps the held-out weights. False
            when the model is delivered as trained (the baseline of a run with no stages).

    Raises:
        StageError: the loss became NaN or infinite.
        InvalidInputError: ``refit: true`` with a ``loss_fn`` (it indexes the training split).
    """
    if config.refit is True and loss_fn is not None:
        raise InvalidInputError(
            "train.refit is true but training uses its own loss (loss_fn), whose batch indices point "
            "into the training split; set train.refit to auto or false"
        )
    seed_everything(seed)
    params = [p for p in model.parameters() if p.requires_grad] + list(extra_parameters)
    if not params:
        raise StageError("the model has no trainable parameters")
    initial = _snapshot(model, extra_parameters) if config.refit is not False else None
    result = TrainResult(epochs=config.epochs)
    run = _Run(model, params, train, metric, config, seed, loss_fn, progress)
    if config.lr == "auto":
        result.lr_find = run.range_test()
        result.lr = result.lr_find.lr
        seed_everything(seed)  # the sweep must not change what training draws
    else:
        result.lr = float(config.lr)
    judged = run.start(result.lr, config.epochs)
    es = config.early_stopping
    patience = es.patience_for(config.epochs)
    result.monitor, result.patience = es.monitor, patience
    sign = 1.0 if (es.monitor == "val_loss" or not metric.higher_is_better) else -1.0
    # A count-based metric on a small validation split moves in steps of one sample: an epoch within
    # one sample of the best so far is as good, and the later one (further down the schedule) is kept.
    tie = es.min_delta
    if es.monitor == "val_metric" and metric.name in _COUNTED_METRICS and len(val):
        tie = max(tie, 1.0 / len(val))
    best_score, best_state, best_epoch, best_metric, wait = math.inf, None, 0, math.nan, 0
    result.stop_reason = f"ran all {config.epochs} epochs"
    for epoch in range(1, config.epochs + 1):
        lr, train_loss = run.epoch(epoch)
        val_loss, val_metric = evaluate(judged, val, metric)
        logs = {
            "epoch": float(epoch),
            "train_loss": train_loss,
            "val_loss": val_loss,
            "val_metric": val_metric,
            "lr": lr,
        }
        result.history.append(logs)
        result.stopped_epoch = epoch
        for cb in callbacks:
            cb(epoch, logs)
        score = sign * logs[es.monitor]
        improved = score < best_score - es.min_delta
        if improved or (es.monitor == "val_metric" and score <= best_score + tie):
            best_epoch, best_metric = epoch, val_metric
            if es.restore_best:
                best_state = copy.deepcopy(judged.state_dict())
        if improved:
            best_score, wait = score, 0
        else:
            wait += 1
            if es.enabled and wait >= patience:
                result.stopped_early = epoch < config.epochs
                if result.stopped_early:
                    result.stop_reason = (
                        f"early stopping at epoch {epoch}: {es.monitor} had not improved for "
                        f"{patience} epochs"
                    )
                break
    if es.restore_best and best_state is not None:
        model.load_state_dict(best_state)
        result.best_epoch = best_epoch
        result.stop_reason += f"; kept the weights of epoch {best_epoch} (best {es.monitor})"
    else:
        run.finish()
        result.best_epoch = result.stopped_epoch
        best_metric = result.history[-1]["val_metric"]
    result.refit = _refit_decision(config, result, val_reused, loss_fn, best_metric)
    if result.refit.done:
        assert initial is not None
        _restore(model, extra_parameters, initial)
        seed_everything(seed)
        both = concat_splits(train, val)
        run = _Run(model, params, both, metric, config, seed, loss_fn, progress)
        run.start(result.lr, result.refit.epochs)
        for epoch in range(1, result.refit.epochs + 1):
            _, result.refit.train_loss = run.epoch(epoch)
        run.finish()
        result.refit.rows = len(both)
        result.stop_reason += (
            f"; then retrained from the same initial weights on train+val ({len(both)} rows) for "
            f"{result.refit.epochs} epochs: those weights are delivered"
        )
    model.eval()
    return result


def _refit_decision(
    config: TrainConfig,
    result: TrainResult,
    val_reused: bool,
    loss_fn: LossFn | None,
    held_out: float,
) -> RefitResult:
    """Whether to retrain on train+val, for how many epochs, and why (``train.refit``)."""
    epochs = result.best_epoch
    value = None if math.isnan(held_out) else float(held_out)

    def decided(done: bool, reason: str) -> RefitResult:
        return RefitResult(done=done, epochs=epochs, reason=reason, held_out_val_metric=value)

    if config.refit is False:
        return decided(False, "train.refit is false")
    if config.refit is True:
        return decided(True, f"train.refit is true; early stopping chose {epochs} epochs")
    if loss_fn is not None:
        return decided(False, "refit auto: training uses its own loss, indexed by training rows")
    if val_reused:
        return decided(
            False,
            "refit auto: the model is judged on the validation split afterwards (stages follow), "
            "so it keeps the weights trained without it",
        )
    return decided(
        True,
        f"refit auto: the model is delivered as trained, so the validation rows train it too, "
        f"for the {epochs} epochs early stopping chose on them",
    )


def concat_splits(a: Split, b: Split) -> Split:
    """The rows of ``a`` then those of ``b`` (arrays, or dicts of arrays with the same keys)."""
    if isinstance(a.x, dict):
        assert isinstance(b.x, dict)
        x: Inputs = {k: np.concatenate([a.x[k], b.x[k]]) for k in a.x}
    else:
        x = np.concatenate([np.asarray(a.x), np.asarray(b.x)])
    if a.y is None or b.y is None:
        return Split(x, None)
    masked = np.ma.isMaskedArray(a.y) or np.ma.isMaskedArray(b.y)  # padding a metric excludes
    return Split(x, (np.ma.concatenate if masked else np.concatenate)([a.y, b.y]))


def _snapshot(model: nn.Module, extra: Sequence[nn.Parameter]) -> tuple[dict, list[torch.Tensor]]:
    """The weights, buffers and extra parameters, to start a refit from the same initialisation."""
    return copy.deepcopy(model.state_dict()), [p.detach().clone() for p in extra]


def _restore(
    model: nn.Module, extra: Sequence[nn.Parameter], snap: tuple[dict, list[torch.Tensor]]
) -> None:
    model.load_state_dict(snap[0])
    with torch.no_grad():
        for p, v in zip(extra, snap[1], strict=True):
            p.copy_(v)
