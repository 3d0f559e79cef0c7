"""One training run's mechanics: the batches, the optimizer and its schedule, the moving average, the
learning-rate range test, and how a batch's loss is computed (the trainer, :mod:`._trainer`, runs
them, early-stops and refits)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..data import Inputs, Split, take
from ..errors import StageError
from ..metrics import Metric
from ._config import TrainConfig
from ._lr_find import LrFindResult, find_lr, sweep_steps

# loss_fn(model, x_batch, y_batch, batch_indices) -> scalar loss. The indices point into the training
# split, so a loss can look up per-sample cached values (e.g. a teacher's logits).
LossFn = Callable[
    [nn.Module, "torch.Tensor | dict[str, torch.Tensor]", "torch.Tensor | None", torch.Tensor],
    torch.Tensor,
]


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
