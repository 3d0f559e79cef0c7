"""Tuning benchmark: random vs TPE vs GP with the same trial budget, and a multi-objective architecture search.

1. Over 5 seeds, each sampler searches lr, batch size and width of the digits CNN with the same
   budget; the best validation accuracy of each (ONNX Runtime) is printed side by side, with the
   tuner's wall-clock overhead per trial (study time outside the objective: sampling and storage).
2. Multi-objective search of the MobileNet-style model's width and depth on digits
   (accuracy vs batch-1 latency, both measured on the exported ONNX model in ONNX Runtime).

Run: ``.venv/bin/python bench/tuning.py [--quick]``.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import leanml
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe

SAMPLERS = ("random", "tpe", "gp")
MEASURE = {
    "threads": 1,
    "batch_sizes": [1],
    "warmup": 5,
    "repeats": 30,
    "max_seconds": 2.0,
    "memory": False,
}
SPACE = {
    "train.lr": {"low": 1.0e-4, "high": 1.0e-1, "log": True},
    "train.batch_size": [32, 64, 128],
    "task.model_args.width": [4, 8, 16],
}


def compare_samplers(seeds: list[int], trials: int, epochs: int) -> None:
    print(
        f"== random vs tpe vs gp: digits CNN, {trials} trials of {epochs} epochs each, best validation accuracy =="
    )
    print(f"{'seed':>4}  " + "  ".join(f"{s:>8}" for s in SAMPLERS) + "  tpe>=random  gp>=random")
    overhead: dict[str, list[float]] = {s: [] for s in SAMPLERS}
    wins = {"tpe": 0, "gp": 0}
    for seed in seeds:
        recipe = load_recipe(
            {
                "name": f"bench-{seed}",
                "seed": seed,
                "task": {"data": "digits", "model": "cnn", "model_args": {"width": 8, "depth": 2}},
            }
        )
        task = build_task(recipe)
        best: dict[str, float] = {}
        for sampler in SAMPLERS:
            model = Model(
                torch=task.build_torch_model(), model_args=dict(task.model_args), factory=task.model
            )
            with tempfile.TemporaryDirectory() as tmp:
                out = leanml.tune(
                    model,
                    task=task,
                    space=SPACE,
                    sampler=sampler,
                    trials=trials,
                    pruner="none",
                    train={"epochs": epochs, "schedule": "none"},
                    measure=MEASURE,
                    seed=seed,
                    work_dir=Path(tmp),
                )
            d = out.result.details
            best[sampler] = max(t["metric"] for t in d["trials"] if t["state"] == "COMPLETE")
            if d["tuner_overhead_s_per_trial"] is not None:
                overhead[sampler].append(d["tuner_overhead_s_per_trial"])
        for s in ("tpe", "gp"):
            wins[s] += best[s] >= best["random"]
        print(
            f"{seed:>4}  "
            + "  ".join(f"{best[s]:>8.4f}" for s in SAMPLERS)
            + f"  {'yes' if best['tpe'] >= best['random'] else 'no':>11}  {'yes' if best['gp'] >= best['random'] else 'no':>10}",
            flush=True,
        )
    print(
        f"TPE >= random in {wins['tpe']} of {len(seeds)} seeds; GP >= random in {wins['gp']} of {len(seeds)} seeds"
    )
    print(
        "tuner overhead per trial (s, median over seeds; wall-clock outside the objective): "
        + ", ".join(f"{s} {statistics.median(v):.3f}" for s, v in overhead.items() if v)
    )


def mobilenet_pareto(trials: int, epochs: int | None) -> None:
    print(
        f"\n== multi-objective: MobileNet-style width/depth on digits, {trials} trials, accuracy vs latency (ONNX Runtime) =="
    )
    recipe = Path(__file__).resolve().parents[1] / "examples" / "tune_mobilenet.yaml"
    with tempfile.TemporaryDirectory() as tmp:
        r = load_recipe(recipe)
        if epochs is not None:  # --quick: a smoke run; otherwise the example exactly as shipped
            tune = r.stages[0].config.model_copy(
                update={"trials": trials, "train": {**r.stages[0].config.train, "epochs": epochs}}
            )
            train = r.train.model_copy(update={"epochs": epochs})
            r = r.model_copy(
                update={"stages": [r.stages[0].model_copy(update={"config": tune})], "train": train}
            )
        start = time.perf_counter()
        result = leanml.run(r, output=Path(tmp) / "run")
        stage = result.metrics["stages"][1]
    front = stage["pareto_front"]
    print(f"Pareto front: {len(front)} points ({time.perf_counter() - start:.0f} s)")
    print(f"{'trial':>5}  {'val acc':>8}  {'p50 b1 ms':>9}  params")
    for p in front:
        print(f"{p['number']:>5}  {p['metric']:>8.4f}  {p['latency']:>9.4f}  {p['params']}")
    print(
        f"chosen: trial {stage['chosen_trial']}; test accuracy {stage['metric']:.4f}, p50 b1 {stage['latency_ms']['batch_1']['p50']:.4f} ms (baseline {result.metrics['stages'][0]['latency_ms']['batch_1']['p50']:.4f} ms)"
    )


def main() -> None:
    import torch

    torch.set_num_threads(
        1
    )  # the machine is shared; one thread keeps the trials' timings comparable
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="2 seeds, fewer trials (a smoke run, not the figures)"
    )
    args = parser.parse_args()
    if args.quick:
        compare_samplers([0, 1], trials=6, epochs=1)
        mobilenet_pareto(trials=6, epochs=1)
    else:
        compare_samplers([0, 1, 2, 3, 4], trials=12, epochs=2)
        mobilenet_pareto(trials=16, epochs=None)  # examples/tune_mobilenet.yaml as shipped


if __name__ == "__main__":
    main()
