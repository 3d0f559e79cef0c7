"""Features benchmark: every selector on one generated dataset with known informative columns.

make_classification(shuffle=False) puts the 5 informative columns first, then 5 redundant ones
(linear combinations of the informative), then noise. For each selector, side by side in one run:
- how many of the 5 informative columns it kept (and of the 10 useful ones), and how many in all;
- the test metric of the refit model (exported ONNX, in ONNX Runtime) vs the all-columns model;
- the selector's fit time (median of repeated runs) and the batch-1 latency ratio after/before.
Run for a scikit-learn LogisticRegression (the model ranks its own columns) and for an MLP (a
LogisticRegression proxy ranks them; the MLP is rebuilt for the kept width and retrained).
Then, on non-linear tables, each ranking; then feature engineering on/off (each transform and
engineer: auto) on a table with a skewed and an interacting signal.
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from sklearn.datasets import make_classification
from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

import leanml

SELECTORS: list[tuple[str, dict]] = [
    ("variance", {}),
    ("correlation", {"correlation_threshold": 0.9}),
    ("mutual_info", {"n_features": 8}),
    ("importance", {"n_features": 8}),
    ("importance gbm", {"n_features": 8, "estimator": "gbm"}),
    ("rfe", {"n_features": 8}),
    ("rfecv", {"step": 2}),
    ("none + pca 0.95", {"transform": "pca", "pca_variance": 0.95}),
]


def _row(
    model, data, label: str, options: dict, repeats: int, measure: dict, train: dict | None
) -> dict:
    select = label.split()[0]
    seconds, out = [], None
    for _ in range(repeats):
        out = leanml.select_features(
            model, data=data, select=select, measure=measure, train=train, **options
        )
        seconds.append(out.result.details["selection_seconds"])
    assert out is not None
    d = out.result.details
    kept = {int(n[1:]) for n in d["selected_features"]}
    return {
        "selector": label,
        "kept": d["n_features_selected"]
        if "pca_components" not in d
        else f"{d['pca_components']} pcs",
        "informative": len(kept & set(range(5))) if select != "none" else "-",
        "useful": len(kept & set(range(10))) if select != "none" else "-",
        "before": out.before.metric,
        "after": out.after.metric,
        "fit_s": statistics.median(seconds),
        "latency": out.after.p50() / out.before.p50(),
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument(
        "--only-engineering", action="store_true", help="run only the engineering table"
    )
    ap.add_argument(
        "--models", default=None, help="engineering table: comma-separated model titles only"
    )
    args = ap.parse_args()
    n = 1000 if args.quick else 3000
    repeats = 1 if args.quick else 3
    measure = {
        "batch_sizes": [1],
        "warmup": 20,
        "repeats": 50 if args.quick else 300,
        "memory": False,
    }
    if args.only_engineering:
        engineering(args.quick, measure, args.models.split(",") if args.models else None)
        return
    x, y = make_classification(
        n_samples=n,
        n_features=40,
        n_informative=5,
        n_redundant=5,
        n_repeated=0,
        shuffle=False,
        random_state=0,
    )
    data = (x.astype(np.float32), y)
    models = [
        ("sklearn:LogisticRegression", LogisticRegression(max_iter=2000), None, repeats),
        (
            "mlp (width 32, LogisticRegression proxy)",
            "mlp",
            {"epochs": 8 if args.quick else 25, "lr": 0.003},
            1,
        ),
    ]
    for title, model, train, reps in models:
        print(
            f"\n{title}: {n} rows x 40 columns, 5 informative (columns 0-4), 5 redundant (5-9), 30 noise"
        )
        head = f"{'selector':<18}{'kept':>8}{'inform.':>9}{'useful':>8}{'acc all':>9}{'acc sel':>9}{'delta':>8}{'fit s':>8}{'lat x':>7}"
        print(head)
        print("-" * len(head))
        for label, options in SELECTORS:
            opts = dict(options)
            if model == "mlp":
                opts["model_args"] = {"width": 32}
            r = _row(model, data, label, opts, reps, measure, train)
            print(
                f"{r['selector']:<18}{r['kept']!s:>8}{r['informative']!s:>9}{r['useful']!s:>8}{r['before']:>9.4f}"
                f"{r['after']:>9.4f}{r['after'] - r['before']:>+8.4f}{r['fit_s']:>8.3f}{r['latency']:>7.2f}"
            )
    print(
        "\nfit s: the selector's fit (median of runs); lat x: batch-1 ONNX Runtime latency after / before; "
        "accuracy on the test split of the exported model"
    )
    nonlinear(args.quick, measure)


# The rankings compared on non-linear tables: (label, select, estimator).
RANKINGS = [
    ("linear proxy", "rfe", "linear"),
    ("gbm proxy", "rfe", "gbm"),
    ("permutation (val)", "rfe", "permutation"),
    ("mutual info", "mutual_info", "auto"),
]


def nonlinear(quick: bool, measure: dict) -> None:
    """Tables whose informative columns relate to the label non-linearly (3 clusters per class, low
    separation, 4 noise columns per informative one), under the zoo MLP: each ranking keeps
    informative + 2 columns, then the MLP is retrained on them (the stage's default)."""
    informative = 6
    settings = [(0, 1500)] if quick else [(0, 1500), (1, 3000), (2, 3000)]
    train = {"epochs": 20 if quick else 60}
    print(
        f"\nnon-linear tables, zoo mlp (train {train}): {informative} informative columns "
        f"(x0-x{informative - 1}), {4 * informative} noise; n_features {informative + 2}; accuracy on "
        "the test split (ONNX Runtime); gate: val metric after >= before - 0.01"
    )
    head = f"{'seed':>4}{'rows':>6}  {'ranking':<20}{'inform.':>8}{'acc all':>9}{'acc sel':>9}{'delta':>8}{'gate':>6}{'fit s':>8}"
    print(head)
    print("-" * len(head))
    for seed, n in settings:
        x, y = make_classification(
            n_samples=n,
            n_features=5 * informative,
            n_informative=informative,
            n_redundant=0,
            n_clusters_per_class=3,
            class_sep=0.8,
            shuffle=False,
            random_state=seed,
        )
        data = (x.astype(np.float32), y)
        for label, select, estimator in RANKINGS:
            out = leanml.select_features(
                "mlp",
                data=data,
                select=select,
                n_features=informative + 2,
                estimator=estimator,
                train=train,
                measure=measure,
                seed=seed,
            )
            d = out.result.details
            kept = {int(c[1:]) for c in d["selected_features"]}
            gate = d["after"]["val_metric"] >= d["before"]["val_metric"] - 0.01
            print(
                f"{seed:>4}{n:>6}  {label:<20}{len(kept & set(range(informative))):>8}"
                f"{out.before.metric:>9.4f}{out.after.metric:>9.4f}"
                f"{out.after.metric - out.before.metric:>+8.4f}{'pass' if gate else 'fail':>6}"
                f"{d['selection_seconds']:>8.2f}",
                flush=True,
            )
    engineering(quick, measure)


# engineering rows: (label, engineer)
ENGINEER_ROWS: list[tuple[str, list[str] | str]] = [
    ("off", []),
    ("log", ["log"]),
    ("quantile", ["quantile"]),
    ("poly", ["poly"]),
    ("bins", ["bins"]),
    ("auto", "auto"),
]


def _skewed_table(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """12 columns: x0 log-normal (skewed, the label depends on its log), x1 skewed noise, x2·x3 an
    interaction (the label depends on the product, not on either alone), x4 linear, x5-x11 noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 12))
    x[:, 0] = np.exp(1.5 * x[:, 0])
    x[:, 1] = np.exp(x[:, 1])
    logit = 1.5 * np.log1p(x[:, 0]) - 1.2 + 2.0 * x[:, 2] * x[:, 3] + 0.8 * x[:, 4]
    y = (logit + 0.5 * rng.logistic(size=n) > 0).astype(int)
    return x.astype(np.float32), y


def engineering(quick: bool, measure: dict, only: list[str] | None = None) -> None:
    """Engineering on/off on a table with a skewed and an interacting signal: select rfe (gbm
    ranking) to 6 columns, then engineer, for a linear model and two tree models (``only``: these
    model titles)."""
    settings = [(0, 2000)] if quick else [(0, 2000), (1, 4000)]
    models = [
        ("LogisticRegression", LogisticRegression(max_iter=3000)),
        ("GradientBoosting", GradientBoostingClassifier(random_state=0)),
        ("HistGradientBoosting", HistGradientBoostingClassifier(random_state=0)),
    ]
    models = [(t, m) for t, m in models if only is None or t in only]
    print(
        "\nengineering: 12 columns (x0 log-normal, label on log(x0); x2*x3 interaction; x4 linear; "
        "x1 skewed noise; 7 noise); select rfe (gbm) to 6 columns, then engineer (poly/bins on the top 4 "
        "kept); accuracy on the test split (ONNX Runtime)"
    )
    head = f"{'seed':>4}{'rows':>6}  {'model':<22}{'engineer':<10}{'kept':<12}{'acc':>8}{'vs off':>8}{'val':>8}{'lat x':>7}{'KiB':>7}"
    print(head)
    print("-" * len(head))
    for seed, n in settings:
        data = _skewed_table(n, seed)
        for title, model in models:
            off = None
            for label, engineer in ENGINEER_ROWS:
                out = leanml.select_features(
                    model,
                    data=data,
                    select="rfe",
                    n_features=6,
                    estimator="gbm",
                    step=2,
                    engineer=engineer,
                    measure=measure,
                    seed=seed,
                )
                d = out.result.details
                acc = out.after.metric
                off = acc if off is None else off
                kept = "+".join(d.get("engineer", [])) or "-"
                print(
                    f"{seed:>4}{n:>6}  {title:<22}{label:<10}{kept:<12}{acc:>8.4f}{acc - off:>+8.4f}"
                    f"{d['after']['val_metric']:>8.4f}{out.after.p50() / out.before.p50():>7.2f}"
                    f"{out.after.size_bytes / 1024:>7.1f}",
                    flush=True,
                )
    print(
        "kept: the transforms in the model (for auto, the ones whose val gain beat 1.645 bootstrap SDs); "
        "vs off: test accuracy minus the selection-only model's; lat x: batch-1 latency vs the "
        "all-columns input model"
    )


if __name__ == "__main__":
    main()
