"""Training benchmark: leanml's trainer with its defaults against a plain PyTorch loop, side by side.

For each of four models, in one run and from the same initial weights and the same training split:
- leanml: ``TrainConfig(epochs=E)`` and nothing else (what a recipe naming only data, model and epochs
  gets: ``lr: auto`` range test, cosine schedule, early stopping on val_metric, restore-best);
- a plain 20-line loop: Adam at a fixed learning rate, batch 64, shuffled epochs, the same step budget
  (E epochs), no schedule, no early stopping, the last weights; run at every learning rate of a grid.
It prints the test accuracy of each, measured on the exported ONNX model in ONNX Runtime (mean over
seeds), the plain loop's best learning rate (picked on the test split, in the loop's favour), and the
difference leanml - best plain loop, in points. Target: >= -0.3 on each.

The four: the digits CNN (zoo ``cnn``), an MLP on breast_cancer (zoo ``mlp``), a 1-D conv net (a
user's model, no input scaling) on a generated signal task, and the zoo MLP on a make_classification
table whose informative columns relate to the label non-linearly.

Candidate defaults are measured in the same run, against the same plain loops: each
``--variant NAME='{"key": value}'`` adds a row per model for ``TrainConfig(epochs=E, **overrides)``.

Usage: python bench/training.py [--quick] [--only NAME] [--seeds N] [--variant NAME=JSON ...]
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.datasets import make_classification
from torch import nn

from leanml.data import Dataset, load_data, split_arrays
from leanml.metrics import get_metric
from leanml.models import build_model, get_model_factory
from leanml.runtime import OnnxRunner
from leanml.runtime._convert import torch_to_onnx
from leanml.task import _fit_standardizers
from leanml.training import TrainConfig, fit

LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2]


class Conv1dNet(nn.Module):
    """A small 1-D CNN as a user would write it (three conv blocks, global average pooling)."""

    def __init__(self, n_outputs: int, channels: int = 32) -> None:
        super().__init__()
        c = channels
        self.body = nn.Sequential(
            nn.Conv1d(1, c, 7, padding=3),
            nn.BatchNorm1d(c),
            nn.ReLU(),
            nn.Conv1d(c, c, 5, padding=2),
            nn.BatchNorm1d(c),
            nn.ReLU(),
            nn.Conv1d(c, c, 3, padding=1),
            nn.BatchNorm1d(c),
            nn.ReLU(),
        )
        self.head = nn.Linear(c, n_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x).mean(-1))


def signal_data(n: int, seed: int, length: int = 128) -> tuple[np.ndarray, np.ndarray]:
    """Cylinder-bell-funnel-like shapes (plateau, rising and falling ramps) plus a sine burst, at
    random positions and widths, in heavy noise: 4 classes, shaped (n, 1, length)."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    t = np.arange(length)
    x = rng.normal(0, 1.0, (n, length))
    for i, c in enumerate(y):
        a = rng.integers(8, length // 2)
        b = a + rng.integers(24, length // 2 - 4)
        amp = rng.normal(3.0, 0.6)
        inside = (t >= a) & (t < b)
        ramp = (t - a) / max(1, b - a)
        shape = {
            0: inside * 1.0,
            1: inside * ramp,
            2: inside * (1.0 - ramp),
            3: inside * np.sin(2 * np.pi * (t - a) / rng.uniform(6, 12)),
        }[int(c)]
        x[i] += amp * shape
    return x[:, None, :].astype(np.float32), y.astype(np.int64)


def table_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """6 informative columns, 3 clusters per class, low separation, 24 noise columns."""
    x, y = make_classification(
        n_samples=n,
        n_features=30,
        n_informative=6,
        n_redundant=0,
        n_clusters_per_class=3,
        class_sep=0.8,
        shuffle=False,
        random_state=seed,
    )
    return x.astype(np.float32), y.astype(np.int64)


def _dataset(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> Dataset:
    tr, va, te = split_arrays(x, y, val=0.15, test=0.2, seed=seed, stratify=True)
    kind = "tabular" if x.ndim == 2 else "signal"
    return Dataset(name, kind, tr, va, te, n_classes=int(y.max()) + 1)


@dataclass
class Case:
    name: str
    data: Callable[[int], Dataset]
    model: Callable[[Dataset], nn.Module]
    epochs: int


def _zoo(name: str, **args: object) -> Callable[[Dataset], nn.Module]:
    def build(data: Dataset) -> nn.Module:
        net = build_model(
            get_model_factory(name),
            in_shape=data.input_shape,
            n_outputs=data.n_classes or 2,
            model_args=dict(args),
        )
        _fit_standardizers(net, data.train)  # what task.build_torch_model does for zoo models
        return net

    return build


def cases(quick: bool) -> list[Case]:
    n_sig, n_tab = (800, 1500) if quick else (1500, 2000)
    return [
        Case("digits cnn", lambda s: load_data("digits", seed=s), _zoo("cnn"), 8 if quick else 30),
        Case(
            "breast_cancer mlp",
            lambda s: load_data("breast_cancer", seed=s),
            _zoo("mlp"),
            20 if quick else 60,
        ),
        Case(
            "signal conv1d (user model)",
            lambda s: _dataset("signal", *signal_data(n_sig, s), s),
            lambda d: Conv1dNet(d.n_classes or 2),
            8 if quick else 30,
        ),
        Case(
            "table mlp (non-linear)",
            lambda s: _dataset("table", *table_data(n_tab, s), s),
            _zoo("mlp"),
            20 if quick else 60,
        ),
    ]


def plain_loop(net: nn.Module, data: Dataset, lr: float, epochs: int, seed: int) -> nn.Module:
    """The 20-line loop: Adam, fixed lr, batch 64, shuffled epochs, last weights."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = torch.as_tensor(data.train.x), torch.as_tensor(data.train.y)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), 64):
            idx = torch.as_tensor(order[s : s + 64])
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def onnx_accuracy(net: nn.Module, data: Dataset, tmp: Path) -> float:
    path = tmp / "model.onnx"
    torch_to_onnx(net.eval(), data.test.x, path)
    out = OnnxRunner(path).predict(data.test.x)
    assert data.test.y is not None
    return 100.0 * get_metric("accuracy")(out, data.test.y)


def run_case(
    case: Case, seeds: list[int], tmp: Path, variants: dict[str, dict[str, object]]
) -> list[dict]:
    lean: dict[str, list[float]] = {v: [] for v in variants}
    t_lean = dict.fromkeys(variants, 0.0)
    plain: dict[float, list[float]] = {lr: [] for lr in LRS}
    notes: dict[str, list[str]] = {v: [] for v in variants}
    t_plain = 0.0
    for seed in seeds:
        data = case.data(seed)
        torch.manual_seed(seed)
        init = case.model(data)
        for name, overrides in variants.items():
            net = copy.deepcopy(init)
            t0 = time.perf_counter()
            res = fit(
                net,
                data.train,
                data.val,
                get_metric("accuracy"),
                TrainConfig(epochs=case.epochs).merged(overrides),
                seed=seed,
            )
            t_lean[name] += time.perf_counter() - t0
            lean[name].append(onnx_accuracy(net, data, tmp))
            notes[name].append(
                f"seed {seed}: {lean[name][-1]:.2f}, lr {res.lr:.2g} "
                f"({res.lr_find.steps if res.lr_find else 0} sweep steps), "
                f"{res.stopped_epoch}/{case.epochs} epochs, best {res.best_epoch}"
            )
        for lr in LRS:
            t0 = time.perf_counter()
            trained = plain_loop(copy.deepcopy(init), data, lr, case.epochs, seed)
            t_plain += time.perf_counter() - t0
            plain[lr].append(onnx_accuracy(trained, data, tmp))
    means = {lr: statistics.mean(v) for lr, v in plain.items()}
    best_lr = max(means, key=lambda k: means[k])
    return [
        {
            "case": case.name,
            "variant": name,
            "leanml": statistics.mean(lean[name]),
            "plain_1e-3": means[1e-3],
            "best_lr": best_lr,
            "plain_best": means[best_lr],
            "diff": statistics.mean(lean[name]) - means[best_lr],
            "time_ratio": t_lean[name] / (t_plain / len(LRS)),
            "notes": notes[name]
            + ["plain loop by lr: " + ", ".join(f"{lr:g} {m:.2f}" for lr, m in means.items())],
        }
        for name in variants
    ]


def _variants(specs: list[str]) -> dict[str, dict[str, object]]:
    """``default`` (the defaults) plus each ``NAME=JSON`` of TrainConfig overrides."""
    out: dict[str, dict[str, object]] = {"default": {}}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        out[name] = json.loads(overrides or "{}")
        TrainConfig().merged(out[name])  # fail before any training
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=JSON: also train with these TrainConfig overrides, side by side",
    )
    args = ap.parse_args()
    variants = _variants(args.variant)
    torch.set_num_threads(2)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    print(
        f"test accuracy (%, exported ONNX in ONNX Runtime), mean over seeds {seeds}; plain loop = "
        f"Adam at a fixed lr in {LRS}, batch 64, same epochs, last weights"
    )
    head = (
        f"{'case':<28}{'variant':<12}{'leanml':>8}{'plain@1e-3':>11}{'best lr':>9}{'plain best':>11}"
        f"{'diff':>7}{'time x':>8}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as d:
        for case in cases(args.quick):
            if args.only and args.only not in case.name:
                continue
            for r in run_case(case, seeds, Path(d), variants):
                print(
                    f"{r['case']:<28}{r['variant']:<12}{r['leanml']:>8.2f}{r['plain_1e-3']:>11.2f}"
                    f"{r['best_lr']:>9.0e}{r['plain_best']:>11.2f}{r['diff']:>+7.2f}"
                    f"{r['time_ratio']:>8.2f}",
                    flush=True,
                )
                for note in r["notes"]:
                    print(f"    {note}")
    print(
        "diff = leanml - the plain loop at its best lr (picked on test, in its favour); target >= -0.3.\n"
        "time x = leanml's training time (range test included) / one plain-loop run."
    )


if __name__ == "__main__":
    main()
