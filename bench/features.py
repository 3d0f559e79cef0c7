"""Features benchmark: every selector on one generated dataset with known informative columns.

make_classification(shuffle=False) puts the 5 informative columns first, then 5 redundant ones
(linear combinations of the informative), then noise. For each selector, side by side in one run:
- how many of the 5 informative columns it kept (and of the 10 useful ones), and how many in all;
- the test metric of the refit model (exported ONNX, in ONNX Runtime) vs the all-columns model;
- the selector's fit time (median of repeated runs) and the batch-1 latency ratio after/before.
Run for a scikit-learn LogisticRegression (the model ranks its own columns) and for an MLP (a
LogisticRegression proxy ranks them; the MLP is rebuilt for the kept width and retrained).
"""

from __future__ import annotations

import argparse
import statistics

import numpy as np
from sklearn.datasets import make_classification
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
    args = ap.parse_args()
    n = 1000 if args.quick else 3000
    repeats = 1 if args.quick else 3
    measure = {
        "batch_sizes": [1],
        "warmup": 20,
        "repeats": 50 if args.quick else 300,
        "memory": False,
    }
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


if __name__ == "__main__":
    main()
