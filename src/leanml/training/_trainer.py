"""The trainer shared by the baseline and every stage that fine-tunes."""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._utils import DEFAULT_SEED, seed_everything
from ..data import Inputs, Split, take
from ..errors import InvalidInputError, StageError
from ..metrics import Metric
from ._config import TrainConfig
from ._lr_find import LrFindResult, find_lr, sweep_steps

# loss_fn(model, x_batch, y_batch, batch_indices) -> scalar loss. The indices point into the training
# split, so a loss can look up per-sample cached values (e.g. a teacher's logits).
LossFn = Callable[
    [nn.Module, "torch.Tensor | dict[str, torch.Tensor]", "torch.Tensor | None", torch.Tensor],
    torch.Tensor,
]
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


def _optimizer(
    cfg: TrainConfig, params: Sequence[nn.Parameter], lr: float
) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=lr, weight_decay=cfg.weight_decay)


def _lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning-rate multiplier at each step: a linear warm-up, then the schedule (per step,
    so a cosine reaches ``lr_floor`` at the last step rather than staying flat within each epoch)."""
    total = cfg.epochs * steps_per_epoch
    warm = int(cfg.warmup * total)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / (warm + 1)
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            cos = 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
            return cfg.lr_floor + (1.0 - cfg.lr_floor) * cos
        if cfg.schedule == "step":
            return 0.1 ** ((step // steps_per_epoch) // max(1, cfg.epochs // 3))
        return 1.0

    return factor


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
        run = _Run(model, params, both, metric, config, seed, loss_fn)
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


class _Run:
    """One training run over a split: batches, optimizer, schedule and moving average."""

    def __init__(
        self,
        model: nn.Module,
        params: Sequence[nn.Parameter],
        train: Split,
        metric: Metric,
        config: TrainConfig,
        seed: int,
        loss_fn: LossFn | None,
        progress: Callable[[str], None] | None = None,
    ) -> None:
        self.model, self.params, self.config, self.seed = model, params, config, seed
        self.progress = progress
        self.n = len(train)
        self.x = train.x
        self.y = None if train.y is None else torch.as_tensor(train.y)
        self.metric, self.loss_fn = metric, loss_fn
        self.steps_per_epoch = max(1, len(self.batches(np.random.default_rng(seed))))
        self.ema: torch.optim.swa_utils.AveragedModel | None = None

    def loss(self, idx: np.ndarray) -> torch.Tensor:
        xb = to_tensor(take(self.x, idx))
        idx_t = torch.as_tensor(idx)
        yb = None if self.y is None else self.y[idx_t]
        if self.loss_fn is not None:
            return self.loss_fn(self.model, xb, yb, idx_t)
        out = forward(self.model, xb)
        if self.config.label_smoothing and self.metric.loss == "cross_entropy":
            assert yb is not None
            return F.cross_entropy(out, yb.long(), label_smoothing=self.config.label_smoothing)
        return task_loss(self.metric, out, yb)

    def batches(self, rng: np.random.Generator) -> list[np.ndarray]:
        order = rng.permutation(self.n)
        size = self.config.batch_size
        out = [order[s : s + size] for s in range(0, self.n, size)]
        return [b for b in out if len(b) >= 2 or self.n == 1]  # a batch of one breaks BatchNorm

    def range_test(self) -> LrFindResult:
        return _range_test(
            self.model,
            self.params,
            self.config,
            self.loss,
            self.batches,
            self.seed,
            self.steps_per_epoch,
            self.progress,
        )

    def start(self, lr: float, epochs: int) -> nn.Module:
        """Optimizer and schedule for ``epochs`` epochs at peak rate ``lr``; returns the module to
        validate (the moving average, with ``average: ema``)."""
        self.rng = np.random.default_rng(self.seed)
        self.lr = lr
        self.opt = _optimizer(self.config, self.params, lr)
        schedule = self.config.model_copy(update={"epochs": epochs})
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, _lr_factor(schedule, self.steps_per_epoch)
        )
        # With averaging, the moving average is what is validated, kept and returned.
        self.ema = _ema(self.model, self.config, self.steps_per_epoch)
        return self.model if self.ema is None else self.ema.module

    def epoch(self, epoch: int) -> tuple[float, float]:
        """One epoch; returns its learning rate and mean training loss."""
        self.model.train()
        total, count = 0.0, 0
        lr = self.opt.param_groups[0]["lr"]
        batches = self.batches(self.rng)
        for k, idx in enumerate(batches, 1):
            if self.progress is not None:
                self.progress(f"epoch {epoch}: batch {k}/{len(batches)}")
            loss = self.loss(idx)
            if not torch.isfinite(loss):
                raise StageError(
                    f"training loss became {loss.item()} at epoch {epoch}; lower train.lr "
                    f"(now {self.lr:.3g}) or check the data for extreme values"
                )
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
            self.sched.step()
            if self.ema is not None:
                self.ema.update_parameters(self.model)
            total += loss.item() * len(idx)
            count += len(idx)
        return lr, total / max(count, 1)

    def finish(self) -> None:
        """Leave the model holding the weights training delivers (the moving average, if any)."""
        if self.ema is not None:
            self.model.load_state_dict(self.ema.module.state_dict())


def _ema(
    model: nn.Module, config: TrainConfig, steps_per_epoch: int
) -> torch.optim.swa_utils.AveragedModel | None:
    """An exponential moving average of the weights and buffers, over ``ema_horizon`` epochs."""
    if config.average == "none":
        return None
    decay = 1.0 - 1.0 / max(1.0, config.ema_horizon * steps_per_epoch)
    return torch.optim.swa_utils.AveragedModel(
        model,
        multi_avg_fn=torch.optim.swa_utils.get_ema_multi_avg_fn(decay),
        use_buffers=True,
    )


def _range_test(
    model: nn.Module,
    params: Sequence[nn.Parameter],
    config: TrainConfig,
    batch_loss: Callable[[np.ndarray], torch.Tensor],
    epoch_batches: Callable[[np.random.Generator], list[np.ndarray]],
    seed: int,
    steps_per_epoch: int,
    progress: Callable[[str], None] | None = None,
) -> LrFindResult:
    rng = np.random.default_rng(seed + 1)
    steps = sweep_steps(config.epochs * steps_per_epoch)
    done = 0

    def batches(k: int) -> list[np.ndarray]:
        out: list[np.ndarray] = []
        while len(out) < k:
            out += epoch_batches(rng)
        return out[:k]

    def step(opt: torch.optim.Optimizer, idx: np.ndarray) -> torch.Tensor:
        nonlocal done
        done += 1
        if progress is not None:
            progress(f"learning-rate range test {done}/{steps}")
        model.train()
        return batch_loss(idx)

    return find_lr(
        [model],
        params,
        lambda lr: _optimizer(config, params, lr),
        step,
        batches,
        optimizer=config.optimizer,
        steps=steps,
    )
