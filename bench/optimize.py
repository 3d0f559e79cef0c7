"""`leanml optimize` against each single technique at its documented default and the hand-written
examples/digits.yaml plan, side by side in one run, under max_metric_drop 0.01.

For each model (the digits CNN, a MobileNet-style CNN on digits, an MLP on breast_cancer), every
contender is a `leanml run` of a recipe with the same task, training and seed, so all share one
baseline. Their final model.onnx files are then measured here, in one process: the test metric,
the file size, and the batch-1 and batch-64 latency re-timed side by side with the baseline's
artifact (alternating rounds), so the ratios are of runs measured together.

    python bench/optimize.py                      # 40 trials, at most 15 minutes per model
    python bench/optimize.py --models digits --trials 20
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import yaml

import leanml
from leanml._utils import environment
from leanml.measure import MeasureConfig, measure, paired_latency_ratio
from leanml.metrics import get_metric
from leanml.pipeline import build_task, load_recipe

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 0.01
MEASURE = {"threads": 1, "batch_sizes": [1, 64], "memory": False}
TRAIN = {
    "epochs": 40,
    "batch_size": 64,
    "optimizer": "adam",
    "lr": 0.003,
    "schedule": "cosine",
    "early_stopping": {"monitor": "val_loss", "patience": 5, "restore_best": True},
}
MODELS = {
    "digits": {"data": "digits", "model": "cnn", "model_args": {"width": 64}},
    "mobilenet": {"data": "digits", "model": "mobilenet", "model_args": {"width": 1.0, "depth": 2}},
    "table": {"data": "breast_cancer", "model": "mlp", "model_args": {"width": 256, "depth": 2}},
}
# Each technique alone at its documented default (docs/recipes.md); prune's structured kind is the
# one the model has layers for.
SINGLES = {
    "distill": {"distill": {}},
    "prune": {"prune": {}},
    "quantize": {"quantize": {}},
    "features": {"features": {}},
}


def recipe(name: str, task: dict, stages, **extra) -> dict:
    return {
        "name": name,
        "seed": 0,
        "task": {**task, "metric": "accuracy"},
        "train": copy.deepcopy(TRAIN),
        "measure": MEASURE,
        "constraints": {"max_metric_drop": BUDGET},
        "stages": stages,
        **extra,
    }


def contenders(model: str, task: dict, trials: int, timeout: float) -> dict[str, dict]:
    out = {
        "optimize": recipe(
            f"{model}-optimize", task, "auto", optimize={"trials": trials, "timeout": timeout}
        )
    }
    for name, stage in SINGLES.items():
        if name == "features" and model != "table":
            continue
        stage = copy.deepcopy(stage)
        if name == "prune" and model == "table":
            stage["prune"]["kind"] = "neuron"  # an MLP has no channels
        out[name] = recipe(f"{model}-{name}", task, [stage])
    if model == "digits":
        hand = yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text())
        out["digits.yaml"] = {**hand, "name": "digits-hand"}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="digits,mobilenet,table")
    ap.add_argument("--trials", type=int, default=40)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds of search per model")
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "out" / "optimize")
    args = ap.parse_args()
    env = environment(1)
    print(
        f"# leanml optimize bench: {env['cpu']}; torch {env['torch']}, "
        f"onnxruntime {env['onnxruntime']}, optuna {env.get('optuna')}; 1 thread"
    )
    summary = {}
    for model in args.models.split(","):
        task = MODELS[model]
        runs = {}
        for name, r in contenders(model, task, args.trials, args.timeout).items():
            t0 = time.perf_counter()
            result = leanml.run(r, output=args.out / model / name, quiet=True)
            runs[name] = (result, time.perf_counter() - t0)
        rows = compare(model, runs)
        summary[model] = rows
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))


def compare(model: str, runs: dict) -> list[dict]:
    """Measure every contender's model.onnx against the shared baseline, side by side."""
    first = runs["optimize"][0]
    recipe_ = load_recipe(first.record.recipe | {"stages": []})
    task = build_task(recipe_)
    metric = get_metric("accuracy")
    cfg = MeasureConfig(**MEASURE)
    base_path = first.run_dir / "stages" / "00-baseline" / "model.onnx"
    base = measure(base_path, task.data.test, metric, cfg)
    rows = []
    print(
        f"\n## {model}: baseline accuracy {base.metric:.4f}, {base.size_bytes / 1024:.1f} KiB, "
        f"b1 {base.p50(1):.4f} ms, b64 {base.p50(64):.4f} ms"
    )
    print(
        f"{'contender':<12} {'final':<34} {'acc':>7} {'Δ pt':>6} {'smaller':>8} {'b1 faster':>10} "
        f"{'b64 faster':>11} {'budget':>7} {'wall s':>7}"
    )
    for name, (result, seconds) in runs.items():
        path = result.run_dir / "model.onnx"
        m = measure(path, task.data.test, metric, cfg)
        paired = paired_latency_ratio(base_path, path, task.data.test.x, cfg)
        stages = [s["name"] for s in result.metrics["stages"] if s.get("accepted", True)][1:]
        row = {
            "contender": name,
            "final": " → ".join(stages) or "baseline",
            "accuracy": m.metric,
            "delta_pt": 100 * (m.metric - base.metric),
            "size_ratio": base.size_bytes / m.size_bytes,
            "b1_speedup": 1 / paired[1],
            "b64_speedup": 1 / paired[64],
            "holds_budget": base.metric - m.metric <= BUDGET + 1e-12,
            "seconds": seconds,
        }
        if name == "optimize":
            row["trials"] = result.metrics["optimize"]["trials"]
            row["plan"] = result.metrics["optimize"]["reason"]
        rows.append(row)
        print(
            f"{name:<12} {row['final'][:34]:<34} {m.metric:7.4f} {row['delta_pt']:+6.2f} "
            f"{row['size_ratio']:7.2f}x {row['b1_speedup']:9.2f}x {row['b64_speedup']:10.2f}x "
            f"{'yes' if row['holds_budget'] else 'NO':>7} {seconds:7.0f}"
        )
    opt = rows[0]
    others = [r for r in rows[1:] if r["holds_budget"]]
    best_other = max((r["b1_speedup"] for r in others), default=1.0)
    print(f"optimize: {opt.get('trials')} plans; {opt.get('plan')}")
    print(
        f"optimize b1 speed-up {opt['b1_speedup']:.2f}x vs the best other contender within the "
        f"budget {best_other:.2f}x: ratio {opt['b1_speedup'] / best_other:.2f}"
    )
    return rows


if __name__ == "__main__":
    main()
