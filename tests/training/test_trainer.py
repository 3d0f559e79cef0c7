from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from leanml.data import Split, load_data
from leanml.errors import InvalidInputError
from leanml.metrics import get_metric
from leanml.models import build_model, get_model_factory
from leanml.training import TrainConfig, check_train_overrides, fit, predict


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
    cfg = TrainConfig(
        epochs=40,
        lr=0.01,
        early_stopping={"monitor": "val_loss", "patience": 2, "restore_best": True},
    )
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
    cfg = TrainConfig(
        epochs=40,
        lr=0.01,
        early_stopping={"monitor": "val_loss", "patience": 2, "restore_best": False},
    )
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

    with np.errstate(invalid="ignore"):  # inf * 0 is NaN on purpose: the data is broken
        bad = Split(digits.train.x * np.float32(np.inf), digits.train.y)
    with pytest.raises(StageError, match="loss became"):
        fit(_cnn(digits), bad, digits.val, get_metric("accuracy"), TrainConfig(epochs=1), seed=0)


def test_merged_overrides_validate():
    cfg = TrainConfig().merged({"epochs": 3, "early_stopping": {"patience": 1}})
    assert cfg.epochs == 3 and cfg.early_stopping.patience == 1 and cfg.lr == TrainConfig().lr
    with pytest.raises(ValueError):
        TrainConfig().merged({"lr": -1})


# -- defaults: lr auto (range test), patience auto, val_metric ------------------------------------


def test_lr_auto_is_the_default_and_a_number_turns_it_off(digits):
    assert TrainConfig().lr == "auto"
    assert TrainConfig().early_stopping.monitor == "val_metric"
    net = _cnn(digits)
    fixed = fit(
        net, digits.train, digits.val, get_metric("accuracy"), TrainConfig(epochs=1, lr=0.01)
    )
    assert fixed.lr_find is None and fixed.lr == 0.01
    auto = fit(
        _cnn(digits), digits.train, digits.val, get_metric("accuracy"), TrainConfig(epochs=2)
    )
    found = auto.lr_find
    assert found is not None and auto.lr == found.lr and auto.history[0]["lr"] == found.lr
    assert 1e-4 <= found.lr <= 3e-2
    assert 3 <= found.steps <= 100 and len(found.lrs) == len(found.losses) == found.steps
    assert found.lrs == sorted(found.lrs)  # an increasing sweep
    summary = auto.summary()
    assert summary["lr_find"]["curve"][0][0] == pytest.approx(found.lrs[0])
    assert summary["epochs_run"] == 2 and "ran all 2 epochs" in summary["stop_reason"]


def test_range_test_restores_the_model_and_keeps_runs_reproducible(digits):
    from leanml.training import find_lr

    net = _cnn(digits)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    params = list(net.parameters())
    rng = np.random.default_rng(0)

    def step(opt, idx):
        out = net(torch.as_tensor(digits.train.x[idx]))
        return torch.nn.functional.cross_entropy(out, torch.as_tensor(digits.train.y[idx]))

    result = find_lr(
        [net],
        params,
        lambda lr: torch.optim.Adam(params, lr=lr),
        step,
        lambda k: [rng.permutation(len(digits.train))[:32] for _ in range(k)],
        optimizer="adam",
        steps=30,
    )
    assert result.steps >= 10
    for k, v in net.state_dict().items():  # weights and BatchNorm statistics
        torch.testing.assert_close(v, before[k])
    cfg = TrainConfig(epochs=1)
    runs = []
    for _ in range(2):
        torch.manual_seed(123)  # the same initial weights
        runs.append(
            fit(_cnn(digits), digits.train, digits.val, get_metric("accuracy"), cfg, seed=3)
        )
    assert runs[0].lr == runs[1].lr and runs[0].history == runs[1].history


def test_patience_auto_is_relative_to_the_epochs():
    es = TrainConfig().early_stopping
    assert es.patience == "auto"
    assert es.patience_for(10) == 10 and es.patience_for(100) == 34 and es.patience_for(300) == 100
    assert TrainConfig(early_stopping={"patience": 3}).early_stopping.patience_for(100) == 3
    with pytest.raises(ValueError, match="must be 'auto' or an integer >= 1"):
        TrainConfig(early_stopping={"patience": 0})
    with pytest.raises(ValueError, match=r"must be a valid number in \(0, 10\], or auto"):
        TrainConfig(lr="fast")


def test_warmup_ramps_the_learning_rate_up(digits):
    cfg = TrainConfig(epochs=4, lr=0.01, warmup=0.5, schedule="none")
    result = fit(_cnn(digits), digits.train, digits.val, get_metric("accuracy"), cfg)
    lrs = [h["lr"] for h in result.history]
    assert lrs[0] < lrs[1] < lrs[2] == pytest.approx(0.01) and lrs[3] == pytest.approx(0.01)


def test_cosine_ends_at_the_lr_floor(digits):
    cfg = TrainConfig(epochs=4, lr=0.01, lr_floor=0.2)
    result = fit(_cnn(digits), digits.train, digits.val, get_metric("accuracy"), cfg)
    lrs = [h["lr"] for h in result.history]  # the rate at the start of each epoch
    assert lrs[0] == pytest.approx(0.01)
    assert lrs[0] > lrs[1] > lrs[2] > lrs[3] > 0.2 * 0.01
    assert lrs[2] == pytest.approx(0.01 * (0.2 + 0.8 * 0.5), rel=1e-3)  # half way down the cosine
    with pytest.raises(ValueError):
        TrainConfig(lr_floor=1.0)


def test_ema_validates_keeps_and_returns_the_average(digits):
    """With ``average: ema`` the model ends holding the moving average (weights and BatchNorm
    statistics), not the last iterate, and the validation history is the average's."""
    cfg = TrainConfig(epochs=3, lr=0.01, average="ema", early_stopping={"restore_best": False})
    init = _cnn(digits)
    seen = {}

    def remember(epoch, logs):
        seen[epoch] = {k: v.clone() for k, v in last.state_dict().items()}

    last = copy.deepcopy(init)
    plain = fit(
        last,
        digits.train,
        digits.val,
        get_metric("accuracy"),
        TrainConfig(epochs=3, lr=0.01, early_stopping={"restore_best": False}),
        seed=0,
        callbacks=[remember],
    )
    net = copy.deepcopy(init)
    result = fit(net, digits.train, digits.val, get_metric("accuracy"), cfg, seed=0)
    acc = get_metric("accuracy")
    assert result.history[-1]["val_metric"] == pytest.approx(
        acc(predict(net, digits.val.x), digits.val.y)
    )
    assert result.history[-1]["val_metric"] != plain.history[-1]["val_metric"]
    diff = [
        not torch.equal(v, seen[3][k]) for k, v in net.state_dict().items() if v.is_floating_point()
    ]
    assert any(diff)  # the average differs from the last iterate
    bn_mean = next(k for k in net.state_dict() if k.endswith("running_mean"))
    assert not torch.equal(net.state_dict()[bn_mean], init.state_dict()[bn_mean])


class _Conv1d(torch.nn.Module):
    """A user's 1-D CNN (no input scaling of its own)."""

    def __init__(self) -> None:
        super().__init__()
        self.body = torch.nn.Sequential(
            torch.nn.Conv1d(1, 8, 7, padding=3),
            torch.nn.BatchNorm1d(8),
            torch.nn.ReLU(),
            torch.nn.Conv1d(8, 8, 5, padding=2),
            torch.nn.BatchNorm1d(8),
            torch.nn.ReLU(),
        )
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.body(x).mean(-1))


def _signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    t = np.arange(48)
    x = rng.normal(0, 1.0, (n, 48))
    for i, c in enumerate(y):
        a = rng.integers(4, 20)
        inside = (t >= a) & (t < a + 20)
        ramp = (t - a) / 20
        x[i] += 2.0 * inside * [1.0, ramp, 1 - ramp][int(c)]
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


def _plain_loop(net, train: Split, lr: float, epochs: int) -> None:
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    x, y = torch.as_tensor(train.x), torch.as_tensor(train.y)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), 64):
            idx = torch.as_tensor(order[s : s + 64])
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()


def test_defaults_match_a_plain_loop_on_a_user_conv_net():
    """The issue-13 regression: a recipe naming only data, model and epochs trains a user's 1-D
    CNN as well as a plain Adam loop at the best of a few hand-picked rates (same steps, same init)."""
    x, y = _signals(900, 0)
    tr, va, te = Split(x[:600], y[:600]), Split(x[600:720], y[600:720]), Split(x[720:], y[720:])
    acc = get_metric("accuracy")
    torch.manual_seed(0)
    init = _Conv1d()
    epochs = 12
    plain = {}
    for lr in (1e-3, 1e-2):
        net = copy.deepcopy(init)
        _plain_loop(net, tr, lr, epochs)
        plain[lr] = acc(predict(net, te.x), te.y)
    net = copy.deepcopy(init)
    result = fit(net, tr, va, acc, TrainConfig(epochs=epochs), seed=0)
    ours = acc(predict(net, te.x), te.y)
    assert result.lr_find is not None
    # on this model, Adam's usual 1e-3 is too low; the range test must find something better
    assert ours >= max(plain.values()) - 0.02, (ours, plain, result.lr)


def _sweep(loss_at, steps=100):
    """The range test on a loss curve of a known shape, ``loss_at(lr)``."""
    from leanml.training import find_lr

    w = torch.nn.Parameter(torch.zeros(1))

    def step(opt, idx):
        return w.sum() * 0 + float(loss_at(opt.param_groups[0]["lr"]))

    return find_lr(
        [],
        [w],
        lambda lr: torch.optim.Adam([w], lr=lr),
        step,
        lambda k: [np.arange(2)] * k,
        optimizer="adam",
        steps=steps,
    )


@pytest.mark.parametrize("true_min", [3e-3, 3e-2, 0.5])
def test_range_test_picks_a_tenth_of_the_rate_at_the_lowest_loss(true_min):
    """The pick rule (fastai's lr_min): the rate at the lowest smoothed loss, divided by 10, kept
    within Adam's range [1e-4, 3e-2]."""
    # lowest at ``true_min``, exploding above it (the sweep diverges)
    found = _sweep(lambda lr: 1.0 + np.log10(lr / true_min) ** 2 if lr <= true_min else 1e3)
    at_min = found.lrs[int(np.argmin(found.losses))]
    assert true_min / 1.5 < at_min <= true_min and "a tenth" in found.reason
    assert found.lr == pytest.approx(min(3e-2, max(1e-4, at_min / 10)))
    assert ("kept within" in found.reason) == (at_min / 10 > 3e-2)


def test_a_loss_still_falling_at_the_sweeps_end_picks_below_a_tenth_of_its_top():
    """A BatchNorm net under Adam often takes rates up to the sweep's top without diverging: the
    minimum is then the sweep's end, and a tenth of it (3e-2 after clamping) is 10x too high for a
    long run. The pick is halfway (log scale) between that and fastai's valley (two thirds down the
    longest falling stretch)."""
    # flat up to 1e-4, then falling steadily to the top rate 1
    found = _sweep(lambda lr: 3.0 - max(0.0, np.log10(lr / 1e-4)), steps=60)
    assert found.steps == 60 and found.lrs[int(np.argmin(found.losses))] > 0.3
    assert "still fell" in found.reason
    assert "halfway" in found.reason
    # the descent is 1e-4..1 (the smoothed curve starts falling a little after 1e-4): its valley is
    # about 3e-3, so the pick is about sqrt(3e-3 * 3e-2)
    assert 5e-3 < found.lr < 1.5e-2
    # the same fall that then diverges is conclusive: a tenth of the minimum
    diverging = _sweep(lambda lr: 3.0 - np.log10(lr / 1e-4) if lr < 0.3 else 1e3, steps=60)
    at_min = diverging.lrs[int(np.argmin(diverging.losses))]
    assert "a tenth" in diverging.reason and diverging.lr == pytest.approx(at_min / 10)


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_flat_sweep_falls_back_to_a_fixed_rate(optimizer):
    """A loss that moves by less than 5 % over the whole sweep (noise around a plateau, as the
    two-spirals MLP's) shows no best rate: its minimum is noise, and the pick is Adam's 1e-2."""
    from leanml.training._lr_find import _pick

    rng = np.random.default_rng(0)
    lrs = list(np.geomspace(1e-6, 1.0, 60))
    flat = list(0.69 + 0.01 * rng.standard_normal(60))
    found = _pick(lrs, flat, optimizer, diverged=False)
    assert found.lr == 1e-2 and "shows no best rate" in found.reason
    # a fall of 10 % is a curve to read: a tenth of its minimum's rate
    falling = [0.69 * (1 - 0.1 * min(1.0, i / 30)) for i in range(60)]
    read = _pick(lrs, falling, optimizer, diverged=True)
    assert "a tenth" in read.reason and read.lr != 1e-2


def _concat(a: Split, b: Split) -> Split:
    return Split(np.concatenate([a.x, b.x]), np.concatenate([a.y, b.y]))


def test_refit_retrains_from_the_initial_weights_on_train_and_val_for_the_chosen_epochs(digits):
    """``refit: true``: after early stopping chose the epochs on val, the model is retrained from
    the same initial weights on train+val for that many epochs (its own schedule over them), with
    the same rate; the result says so."""
    acc = get_metric("accuracy")
    init = _cnn(digits)
    cfg = TrainConfig(epochs=4, lr=0.01, refit=True)
    net = copy.deepcopy(init)
    result = fit(net, digits.train, digits.val, acc, cfg, seed=3)
    refit = result.refit
    assert refit is not None and refit.done
    assert refit.epochs == result.best_epoch
    assert refit.rows == len(digits.train) + len(digits.val)
    assert refit.held_out_val_metric == result.history[result.best_epoch - 1]["val_metric"]
    assert "train+val" in result.stop_reason and "refit" in result.summary()
    assert result.summary()["refit"]["done"] is True
    # the same weights as training on train+val for those epochs, from the same start
    by_hand = copy.deepcopy(init)
    fit(
        by_hand,
        _concat(digits.train, digits.val),
        digits.val,
        acc,
        TrainConfig(
            epochs=refit.epochs,
            lr=0.01,
            refit=False,
            early_stopping={"enabled": False, "restore_best": False},
        ),
        seed=3,
    )
    for k, v in net.state_dict().items():
        torch.testing.assert_close(v, by_hand.state_dict()[k])


def test_refit_false_and_auto_on_a_judged_model_keep_the_best_validation_weights(digits):
    """``refit: false`` changes nothing: the model holds its best validation epoch's weights. So
    does ``auto`` when the caller judges the model on val afterwards (``val_reused``, the default)."""
    acc = get_metric("accuracy")
    init = _cnn(digits)
    seen: dict[int, dict[str, torch.Tensor]] = {}
    runs = {}
    for refit in (False, "auto"):
        net = copy.deepcopy(init)

        def remember(epoch, logs, net=net):
            seen[epoch] = {k: v.clone() for k, v in net.state_dict().items()}

        cfg = TrainConfig(epochs=3, lr=0.01, refit=refit)
        result = fit(net, digits.train, digits.val, acc, cfg, seed=0, callbacks=[remember])
        assert result.refit is not None and not result.refit.done
        for k, v in net.state_dict().items():
            torch.testing.assert_close(v, seen[result.best_epoch][k])
        runs[refit] = (result, net.state_dict())
    assert runs[False][0].refit.reason == "train.refit is false"
    assert "judged on the validation split" in runs["auto"][0].refit.reason
    assert runs[False][0].history == runs["auto"][0].history
    for k, v in runs[False][1].items():
        torch.testing.assert_close(v, runs["auto"][1][k])


def test_refit_auto_retrains_a_model_delivered_as_trained(digits):
    net = _cnn(digits)
    cfg = TrainConfig(epochs=2, lr=0.01)
    result = fit(
        net, digits.train, digits.val, get_metric("accuracy"), cfg, seed=0, val_reused=False
    )
    assert cfg.refit == "auto"
    assert result.refit is not None and result.refit.done
    assert result.refit.reason.startswith("refit auto: the model is delivered as trained")


def test_refit_is_validated():
    assert TrainConfig(refit=True).refit is True
    with pytest.raises(ValidationError, match="must be auto, true or false"):
        TrainConfig(refit="yes")
    with pytest.raises(ValueError, match="refit applies to the baseline"):
        check_train_overrides({"refit": True})
    assert check_train_overrides({"refit": False}) == {"refit": False}


def test_refit_true_with_a_custom_loss_is_a_clear_error(digits):
    def loss_fn(model, x, y, idx):
        return torch.nn.functional.cross_entropy(model(x), y)

    with pytest.raises(InvalidInputError, match="train.refit is true"):
        fit(
            _cnn(digits),
            digits.train,
            digits.val,
            get_metric("accuracy"),
            TrainConfig(epochs=1, lr=0.01, refit=True),
            loss_fn=loss_fn,
        )


def test_label_smoothing_softens_the_training_loss(digits):
    """With label smoothing the training loss cannot reach zero; the validation loss stays the
    task's plain cross-entropy."""
    acc = get_metric("accuracy")
    init = _cnn(digits)
    losses = {}
    for ls in (0.0, 0.2):
        net = copy.deepcopy(init)
        cfg = TrainConfig(epochs=2, lr=0.01, label_smoothing=ls)
        losses[ls] = fit(net, digits.train, digits.val, acc, cfg, seed=0).history
    assert losses[0.2][0]["train_loss"] > losses[0.0][0]["train_loss"]
    with pytest.raises(ValidationError):
        TrainConfig(label_smoothing=1.0)
