"""Tabular baselines side by side: leanml's zoo ``mlp``, scikit-learn's ``MLPClassifier()`` and
``HistGradientBoostingClassifier()``, all with their defaults, on the same splits.

For each table and seed, in one run:
- leanml MLP: what a recipe naming only data, model (``mlp``) and ``train.epochs`` trains (the
  pipeline's own ``build_model`` + ``train_baseline``: lr range test, cosine schedule, early stopping
  on the validation split, restore-best);
- sklearn MLP: ``make_pipeline(StandardScaler(), MLPClassifier())`` fitted on the training split
  (100 hidden ReLU units, Adam 1e-3, L2 1e-4, 200 epochs, no early stopping; the scaler because
  leanml's MLP standardizes its inputs inside the model, and MLPClassifier on raw columns is not the
  comparison anyone makes);
- HGB: ``HistGradientBoostingClassifier()`` fitted on the training split (its early stopping is on
  by default above 10 000 rows only).
Every model is exported to ONNX (torch.onnx / skl2onnx) and measured with leanml's harness in ONNX
Runtime (1 thread): test accuracy in % (mean over seeds) and batch-1 p50 latency as a ratio to the
leanml MLP's, measured in the same run.

Tables: breast_cancer (569 rows, 30 columns), and bench/training.py's ``table_data`` (30 columns,
6 informative, 3 clusters per class, class_sep 0.8) at 2000 and 5000 rows; the seed sets both the
table and the split.

Candidate zoo-mlp defaults are measured in the same run: each ``--variant NAME='{"width": 128}'``
adds a row per table for ``model_args`` overrides (``train:{...}`` keys go to TrainConfig instead,
e.g. ``'{"train": {"weight_decay": 1e-4}}'``).

Usage: python bench/tabular.py [--quick] [--seeds N] [--epochs E] [--only NAME] [--variant NAME=JSON ...]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits
from training import table_data  # bench/training.py's table (this folder is on sys.path)

from leanml.data import Dataset, load_data, split_arrays
from leanml.measure import MeasureConfig, measure
from leanml.metrics import get_metric
from leanml.models import Model
from leanml.pipeline._tasks import build_model, task_for, train_baseline
from leanml.runtime import to_onnx
from leanml.training import TrainConfig

# Batch-1 latency only, one thread; no memory child process (not reported here).
MEASURE = MeasureConfig(batch_sizes=[1], threads=1, warmup=20, repeats=200, memory=False)


def _table(name: str, n: int) -> Callable[[int], Dataset]:
    def load(seed: int) -> Dataset:
        x, y = table_data(n, seed)
        tr, va, te = split_arrays(x, y, val=0.15, test=0.2, seed=seed, stratify=True)
        return Dataset(name, "tabular", tr, va, te, n_classes=int(y.max()) + 1)

    return load


TABLES: dict[str, Callable[[int], Dataset]] = {
    "breast_cancer": lambda seed: load_data("breast_cancer", seed=seed),
    "table 2000": _table("table 2000", 2000),
    "table 5000": _table("table 5000", 5000),
}


def _measured(model: Model, data: Dataset, path: Path) -> tuple[float, float]:
    """Test accuracy (%) and batch-1 p50 latency (ms) of the model's exported ONNX file."""
    to_onnx(model, data.val, path)
    m = measure(path, data.test, get_metric("accuracy"), MEASURE)
    return 100.0 * m.metric, m.latency[1].p50


def leanml_mlp(
    data: Dataset, seed: int, epochs: int, overrides: dict[str, Any], path: Path
) -> tuple[float, float, str]:
    args = {k: v for k, v in overrides.items() if k != "train"}
    task = task_for(data, model=None, spec="mlp", metric="accuracy", model_args=args)
    model = build_model(task, seed=seed)
    config = TrainConfig(epochs=epochs).merged(overrides.get("train"))
    res = train_baseline(model, task, config, seed=seed)
    acc, lat = _measured(model, data, path)
    return acc, lat, f"{res.stopped_epoch}/{epochs} ep, lr {res.lr:.2g}"


def sklearn_model(estimator: Any, data: Dataset, path: Path) -> tuple[float, float]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MLPClassifier's ConvergenceWarning at 200 epochs
        with threadpool_limits(limits=1, user_api="openmp"):  # HGB's threads thrash a busy machine
            estimator.fit(data.train.x, data.train.y)
    return _measured(Model(sklearn=estimator), data, path)


def run_table(
    name: str, seeds: list[int], epochs: int, variants: dict[str, dict[str, Any]], tmp: Path
) -> None:
    lean: dict[str, list[tuple[float, float]]] = {v: [] for v in variants}
    notes: dict[str, list[str]] = {v: [] for v in variants}
    skl: list[tuple[float, float]] = []
    hgb: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    for seed in seeds:
        data = TABLES[name](seed)
        for v, overrides in variants.items():
            acc, lat, note = leanml_mlp(data, seed, epochs, overrides, tmp / "mlp.onnx")
            lean[v].append((acc, lat))
            notes[v].append(f"seed {seed}: {acc:.2f} ({note})")
        mlp = make_pipeline(StandardScaler(), MLPClassifier(random_state=seed))
        skl.append(sklearn_model(mlp, data, tmp / "skl.onnx"))
        hgb.append(
            sklearn_model(HistGradientBoostingClassifier(random_state=seed), data, tmp / "hgb.onnx")
        )

    def acc(rows: list[tuple[float, float]]) -> float:
        return statistics.mean(a for a, _ in rows)

    def lat(rows: list[tuple[float, float]]) -> float:
        return statistics.median(t for _, t in rows)

    ref = lat(lean["default"])
    for v in variants:
        print(
            f"{name:<15}{v:<14}{acc(lean[v]):>9.2f}{acc(skl):>9.2f}{acc(hgb):>9.2f}"
            f"{acc(lean[v]) - acc(skl):>+9.2f}{lat(lean[v]) * 1000:>9.1f}"
            f"{lat(skl) / ref:>9.2f}{lat(hgb) / ref:>9.2f}",
            flush=True,
        )
        for note in notes[v]:
            print(f"    {note}")
    print(
        "    per seed, sklearn MLP / HGB: "
        + ", ".join(f"{a:.2f}/{b:.2f}" for (a, _), (b, _) in zip(skl, hgb, strict=True))
        + f"  ({time.perf_counter() - t0:.0f} s)"
    )


def _variants(specs: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {"default": {}}
    for spec in specs:
        name, _, raw = spec.partition("=")
        out[name] = json.loads(raw or "{}")
        TrainConfig().merged(out[name].get("train"))  # fail before any training
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="one seed, breast_cancer and table 2000")
    ap.add_argument("--seeds", type=int, default=None)
    ap.add_argument("--epochs", type=int, default=60, help="train.epochs of the leanml recipe")
    ap.add_argument("--only", default=None, help="run only tables whose name contains this")
    ap.add_argument("--variant", action="append", default=[], help="NAME=JSON of model_args")
    args = ap.parse_args()
    variants = _variants(args.variant)
    torch.set_num_threads(2)
    seeds = list(range(args.seeds or (1 if args.quick else 3)))
    print(
        f"test accuracy (%, exported ONNX in ONNX Runtime), mean over seeds {seeds}; leanml MLP: "
        f"zoo mlp, train.epochs {args.epochs}; sklearn MLP: StandardScaler + MLPClassifier(); "
        "HGB: HistGradientBoostingClassifier()"
    )
    head = (
        f"{'table':<15}{'variant':<14}{'leanml':>9}{'skl MLP':>9}{'HGB':>9}{'lean-skl':>9}"
        f"{'b1 us':>9}{'skl b1 x':>9}{'HGB b1 x':>9}"
    )
    print(head)
    print("-" * len(head))
    with tempfile.TemporaryDirectory() as d:
        for name in TABLES:
            if args.only and args.only not in name:
                continue
            if args.quick and name == "table 5000":
                continue
            run_table(name, seeds, args.epochs, variants, Path(d))
    print(
        "lean-skl = leanml MLP - sklearn MLPClassifier, in points. b1 us = the leanml MLP's batch-1 "
        "p50 (median over seeds);\nskl b1 x / HGB b1 x = that model's batch-1 p50 / the default "
        "leanml MLP's (below 1: faster)."
    )


if __name__ == "__main__":
    main()
