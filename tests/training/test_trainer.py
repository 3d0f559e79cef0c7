from __future__ import annotations

import numpy as np
import pytest
import torch

from leanml.data import Split, load_data
from leanml.metrics import get_metric
from leanml.models import build_model, get_model_factory
from leanml.training import TrainConfig, fit, predict


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", seed=0)


def _cnn(digits, width=8):
    return build_model(
        get_model_factory("cnn"),
        in_shape=digits.input_shape,
        n_outputs=10,
        model_args={"width": width, "depth": 1},
    )


def test_same_seed_same_result(digits):
    cfg = TrainConfig(epochs=2, lr=0.01)
    outs = []
    for _ in range(2):
        torch.manual_seed(123)  # different init state before fit: fit must reseed
        net = _cnn(digits)
        fit(net, digits.train, digits.val, get_metric("accuracy"), cfg, seed=7)
        outs.append(predict(net, digits.test.x))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_early_stopping_stops_and_restores_best_weights(digits):
    # Validation labels are shuffled: val loss gets worse as the model fits the training labels,
    # so training must stop long before 40 epochs and keep an early epoch's weights.
    rng = np.random.default_rng(0)
    noisy_val = Split(digits.val.x, rng.permutation(digits.val.y))
    cfg = TrainConfig(epochs=40, lr=0.01, early_stopping={"patience": 2, "restore_best": True})
    states = {}

    def remember(epoch, logs):
        states[epoch] = {k: v.clone() for k, v in net.state_dict().items()}

    net = _cnn(digits)
    result = fit(
        net, digits.train, noisy_val, get_metric("accuracy"), cfg, seed=0, callbacks=[remember]
    )
    assert result.stopped_early
    assert result.stopped_epoch < 40
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == int(np.argmin(losses)) + 1
    assert result.stopped_epoch == result.best_epoch + 2
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, states[result.best_epoch][k])


def test_without_restore_keeps_last_weights(digits):
    rng = np.random.default_rng(0)
    noisy_val = Split(digits.val.x, rng.permutation(digits.val.y))
    cfg = TrainConfig(epochs=40, lr=0.01, early_stopping={"patience": 2, "restore_best": False})
    net = _cnn(digits)
    result = fit(net, digits.train, noisy_val, get_metric("accuracy"), cfg, seed=0)
    assert result.best_epoch == result.stopped_epoch


@pytest.mark.parametrize(
    "optimizer,schedule", [("sgd", "step"), ("adamw", "cosine"), ("adam", "none")]
)
def test_optimizers_and_schedules_learn(digits, optimizer, schedule):
    cfg = TrainConfig(
        epochs=6, lr=0.2 if optimizer == "sgd" else 0.01, optimizer=optimizer, schedule=schedule
    )
    net = _cnn(digits)
    result = fit(net, digits.train, digits.val, get_metric("accuracy"), cfg, seed=0)
    assert max(h["val_metric"] for h in result.history) > 0.4  # chance is 0.1
    lrs = [h["lr"] for h in result.history]
    if schedule == "none":
        assert len(set(lrs)) == 1
    else:
        assert lrs[-1] < lrs[0]


def test_regression_with_mse():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 5)).astype(np.float32)
    y = (x @ np.arange(1, 6, dtype=np.float32)).astype(np.float32)
    tr, va = Split(x[:500], y[:500]), Split(x[500:], y[500:])
    net = build_model(
        get_model_factory("mlp"), in_shape=(5,), n_outputs=1, model_args={"width": 32}
    )
    result = fit(net, tr, va, get_metric("r2"), TrainConfig(epochs=30, lr=0.01), seed=0)
    assert result.history[-1]["val_metric"] > 0.9


def test_nan_loss_is_a_clear_error(digits):
    from leanml.errors import StageError

    bad = Split(digits.train.x * np.float32(np.inf), digits.train.y)
    with pytest.raises(StageError, match="loss became"):
        fit(_cnn(digits), bad, digits.val, get_metric("accuracy"), TrainConfig(epochs=1), seed=0)


def test_merged_overrides_validate():
    cfg = TrainConfig().merged({"epochs": 3, "early_stopping": {"patience": 1}})
    assert cfg.epochs == 3 and cfg.early_stopping.patience == 1 and cfg.lr == TrainConfig().lr
    with pytest.raises(ValueError):
        TrainConfig().merged({"lr": -1})
