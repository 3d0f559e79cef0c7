"""Training benchmark: leanml's trainer with its defaults against a plain PyTorch loop, side by side.

For each model, in one run and from the same initial weights:
- leanml: ``TrainConfig(epochs=E)`` and nothing else, trained as the baseline of a recipe naming only
  data, model and epochs (``val_reused=False``: no stage follows): ``lr: auto`` range test, cosine
  schedule, early stopping on val_metric, restore-best, then ``refit: auto`` on train+val;
- a plain 20-line loop: Adam at a fixed learning rate, shuffled epochs of the case's batch size, no
  schedule, no early stopping, the last weights, on every row that is not test (train+val: a loop that
  does not early-stop needs no validation split); run at every rate of the case's grid.
It prints the test accuracy of each, measured on the exported ONNX model in ONNX Runtime (mean over
seeds), the plain loop's best learning rate (picked on the test split, in the loop's favour), and the
difference leanml - best plain loop, in points. Target: >= -0.5 on each.

The models: the digits CNN (zoo ``cnn``), an MLP on breast_cancer (zoo ``mlp``), a 1-D conv net (a
user's model, no input scaling) on a generated signal task, the zoo MLP on a make_classification table
whose informative columns relate to the label non-linearly; and three public small-data benchmarks
leanml was not tuned on: MNIST-1D (generated locally, ``mnist1d_bench.py``) with the paper's CNN as a
``pkg.mod:function`` model and the issue's plain loop (batch 100, 6,000 steps), Hastie et al.'s
example 10.2 (2,000 rows) and Lang and Witbrock's two spirals (2,000 noisy points), both with the zoo MLP.

Candidate defaults are measured in the same run, against the same plain loops: each
``--variant NAME='{"key": value}'`` adds a row per model for ``TrainConfig(epochs=E, **overrides)``.
``--plain-rows train`` trains the plain loop without the validation rows (the carve-out's cost).

Usage: python bench/training.py [--quick] [--only NAME] [--seeds N | --seed-list 0,2] [--lrs 1e-2,...]
       [--variant NAME=JSON ...] [--no-default] [--plain-rows train] [--json rows.jsonl]
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from mnist1d_bench import make_dataset as mnist1d_arrays  # this folder is on sys.path
from sklearn.datasets import make_classification, make_hastie_10_2
from torch import nn

from leanml.data import Dataset, Split, import_entry_point, load_data, split_arrays
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


def spirals_data(n: int, seed: int, noise: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
    """Lang and Witbrock's two spirals (1988), three turns each, with Gaussian noise on the points:
    2 columns, 2 classes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    r = rng.uniform(0.5, 3.0, n) * 2 * np.pi  # angle along the spiral, three turns at most
    x = np.stack([r * np.cos(r + np.pi * y), r * np.sin(r + np.pi * y)], 1) / (2 * np.pi)
    x += rng.normal(0, noise / (2 * np.pi), x.shape)
    return x.astype(np.float32), y.astype(np.int64)


def hastie_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Hastie, Tibshirani and Friedman's example 10.2 (The Elements of Statistical Learning): 10
    standard normal columns, class 1 where their sum of squares exceeds 9.34 (chi-square median)."""
    x, y = make_hastie_10_2(n_samples=n, random_state=seed)
    return x.astype(np.float32), (y > 0).astype(np.int64)


def mnist1d(seed: int) -> Dataset:
    """The published MNIST-1D (4,000 training and 1,000 test signals), split as ``task.data`` of an
    NPZ with ``x_train``/``x_test`` is: a stratified 15 % of the training rows is the val split."""
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "mnist1d.npz"
        np.savez(path, **_MNIST1D)
        return load_data(f"npz:{path}", seed=seed)


_MNIST1D = mnist1d_arrays()


def _dataset(name: str, x: np.ndarray, y: np.ndarray, seed: int) -> Dataset:
    tr, va, te = split_arrays(x, y, val=0.15, test=0.2, seed=seed, stratify=True)
    kind = "tabular" if x.ndim == 2 else "signal"
    return Dataset(name, kind, tr, va, te, n_classes=int(y.max()) + 1)


@dataclass
class Case:
    """A model on a dataset. ``epochs`` is what the recipe names; the plain loop runs at ``batch``
    for ``plain_epochs`` (default: the same epochs) at every rate of ``lrs``."""

    name: str
    data: Callable[[int], Dataset]
    model: Callable[[Dataset], nn.Module]
    epochs: int
    batch: int = 64
    plain_epochs: int | None = None
    lrs: tuple[float, ...] = tuple(LRS)


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


def _user(spec: str) -> Callable[[Dataset], nn.Module]:
    """A ``pkg.mod:function`` model, built as the pipeline builds it."""

    def build(data: Dataset) -> nn.Module:
        return build_model(
            import_entry_point(spec, what="task.model entry point"),
            in_shape=data.input_shape,
            n_outputs=data.n_classes or 2,
            model_args={},
            name=spec,
        )

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
        # The MNIST-1D paper's CNN and the issue's plain loop: batch 100, 6,000 steps on 4,000 rows.
        Case(
            "mnist1d cnn (user model)",
            mnist1d,
            _user("mnist1d_bench:conv_base"),
            20 if quick else 100,
            batch=100,
            plain_epochs=30 if quick else 150,
            lrs=(1e-3, 3e-3, 1e-2, 3e-2),
        ),
        Case(
            "hastie 10.2 mlp",
            lambda s: _dataset("hastie", *hastie_data(n_tab, s), s),
            _zoo("mlp"),
            20 if quick else 60,
        ),
        Case(
            "two spirals mlp",
            lambda s: _dataset("spirals", *spirals_data(n_tab, s), s),
            _zoo("mlp"),
            20 if quick else 60,
        ),
    ]


def plain_loop(net: nn.Module, train: Split, lr: float, case: Case, seed: int) -> nn.Module:
    """The 20-line loop: Adam, fixed lr, shuffled epochs of ``case.batch``, last weights."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    x, y = torch.as_tensor(train.x), torch.as_tensor(train.y)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    net.train()
    for _ in range(case.plain_epochs or case.epochs):
        order = rng.permutation(len(x))
        for s in range(0, len(x), case.batch):
            idx = torch.as_tensor(order[s : s + case.batch])
            if len(idx) < 2:
                continue
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def train_and_val(data: Dataset) -> Split:
    """Every labelled row that is not test: what a plain loop, which needs no validation split,
    trains on."""
    assert data.train.y is not None and data.val.y is not None
    return Split(
        np.concatenate([data.train.x, data.val.x]), np.concatenate([data.train.y, data.val.y])
    )


def onnx_accuracy(net: nn.Module, data: Dataset, tmp: Path) -> float:
    path = tmp / "model.onnx"
    torch_to_onnx(net.eval(), data.test.x, path)
    out = OnnxRunner(path).predict(data.test.x)
    assert data.test.y is not None
    return 100.0 * get_metric("accuracy")(out, data.test.y)


def run_case(
    case: Case,
    seeds: list[int],
    tmp: Path,
    variants: dict[str, dict[str, object]],
    *,
    lrs: tuple[float, ...] | None = None,
    plain_rows: str = "train+val",
) -> list[dict]:
    """Each variant and the plain loop at each rate, from the same initial weights, per seed."""
    lrs = case.lrs if lrs is None else lrs
    lean: dict[str, list[float]] = {v: [] for v in variants}
    t_lean = dict.fromkeys(variants, 0.0)
    plain: dict[float, list[float]] = {lr: [] for lr in lrs}
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
                val_reused=False,  # a recipe with no stages: the baseline is delivered as trained
            )
            t_lean[name] += time.perf_counter() - t0
            lean[name].append(onnx_accuracy(net, data, tmp))
            refit = res.refit.as_dict() if res.refit else {}
            notes[name].append(
                f"seed {seed}: {lean[name][-1]:.2f}, lr {res.lr:.2g} "
                f"({res.lr_find.steps if res.lr_find else 0} sweep steps), "
                f"{res.stopped_epoch}/{case.epochs} epochs, best {res.best_epoch}"
                + (f", refit {refit['epochs']} epochs" if refit.get("done") else "")
            )
            print(f"  .. {case.name} {name} {notes[name][-1]}", flush=True)
        rows = train_and_val(data) if plain_rows == "train+val" else data.train
        for lr in lrs:
            t0 = time.perf_counter()
            trained = plain_loop(copy.deepcopy(init), rows, lr, case, seed)
            t_plain += time.perf_counter() - t0
            plain[lr].append(onnx_accuracy(trained, data, tmp))
            print(f"  .. {case.name} plain lr {lr:g} seed {seed}: {plain[lr][-1]:.2f}", flush=True)
    means = {lr: statistics.mean(v) for lr, v in plain.items()}
    best_lr = max(means, key=lambda k: means[k]) if means else math.nan
    best = means.get(best_lr, math.nan)
    return [
        {
            "case": case.name,
            "variant": name,
            "seeds": seeds,
            "leanml": statistics.mean(lean[name]) if lean.get(name) else math.nan,
            "leanml_by_seed": lean.get(name, []),
            "plain_by_lr_and_seed": {str(lr): v for lr, v in plain.items()},
            "best_lr": best_lr,
            "plain_best": best,
            "diff": (statistics.mean(lean[name]) if lean.get(name) else math.nan) - best,
            "time_ratio": t_lean.get(name, 0.0) / (t_plain / len(lrs)) if lrs else math.nan,
            "notes": notes.get(name, [])
            + ["plain loop by lr: " + ", ".join(f"{lr:g} {m:.2f}" for lr, m in means.items())],
        }
        for name in variants or {"(none)": {}}
    ]


def _variants(specs: list[str], default: bool) -> dict[str, dict[str, object]]:
    """``default`` (the defaults) plus each ``NAME=JSON`` of TrainConfig overrides."""
    out: dict[str, dict[str, object]] = {"default": {}} if default else {}
    for spec in specs:
        name, _, overrides = spec.partition("=")
        out[name] = json.loads(overrides or "{}")
        TrainConfig().merged(out[name])  # fail before any training
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--only", default=None, help="run only cases whose name contains this")
    ap.add_argument("--seeds", type=int, default=None, help="seeds 0 to N-1")
    ap.add_argument("--seed-list", default=None, help="comma-separated seeds (instead of --seeds)")
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        help="NAME=JSON: also train with these TrainConfig overrides, side by side",
    )
    ap.add_argument("--no-default", action="store_true", help="only the --variant rows")
    ap.add_argument(
        "--lrs", default=None, help="the plain loop's rates, comma-separated (empty: no plain loop)"
    )
    ap.add_argument(
        "--plain-rows",
        choices=["train+val", "train"],
        default="train+val",
        help="what the plain loop trains on (train: without the rows leanml holds out for val)",
    )
    ap.add_argument("--json", default=None, help="append each row as one JSON line to this file")
    args = ap.parse_args()
    variants = _variants(args.variant, not args.no_default)
    lrs = None if args.lrs is None else tuple(float(v) for v in args.lrs.split(",") if v)
    torch.set_num_threads(1)
    if args.seed_list:
        seeds = [int(v) for v in args.seed_list.split(",")]
    else:
        seeds = list(range(args.seeds or (1 if args.quick else 3)))
    print(
        f"test accuracy (%, exported ONNX in ONNX Runtime), mean over seeds {seeds}; plain loop = "
        f"Adam at a fixed lr (each case's grid), on {args.plain_rows}, no schedule, last weights"
    )
    head = f"{'case':<28}{'variant':<16}{'leanml':>8}{'best lr':>9}{'plain best':>11}{'diff':>7}{'time x':>8}"
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as d:
        for case in cases(args.quick):
            if args.only and args.only not in case.name:
                continue
            for r in run_case(case, seeds, Path(d), variants, lrs=lrs, plain_rows=args.plain_rows):
                print(
                    f"{r['case']:<28}{r['variant']:<16}{r['leanml']:>8.2f}{r['best_lr']:>9.0e}"
                    f"{r['plain_best']:>11.2f}{r['diff']:>+7.2f}{r['time_ratio']:>8.2f}",
                    flush=True,
                )
                for note in r["notes"]:
                    print(f"    {note}", flush=True)
                if args.json:
                    with open(args.json, "a") as f:
                        f.write(json.dumps({**r, "plain_rows": args.plain_rows}) + "\n")
    print(
        "diff = leanml - the plain loop at its best lr (picked on test, in its favour); target >= -0.5.\n"
        "time x = leanml's training time (range test included) / one plain-loop run."
    )


if __name__ == "__main__":
    main()
