"""Pruning benchmark: every figure measured side by side in one run, on ONNX Runtime, 1 thread.

Prints:
- digits CNN and MobileNet-style CNN, channel pruning at 30/50/70% with fine-tuning: test accuracy delta,
  FLOPs ratio (baseline / pruned), ORT latency ratio (baseline / pruned) at batch 1 and 64;
- an MLP on breast_cancer, unstructured 50/80/90% sparsity with a gradual schedule: accuracy delta and
  compressed-size ratio (zlib level 9, baseline / pruned), plus the latency ratio (expected ~1.0);
- l2 vs random importance on the digits CNN at 50% channels, one-shot (no fine-tuning) and fine-tuned.

Latency ratios above 1.0 mean the pruned model is faster. Medians of the harness's repeated runs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import leanml
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._tasks import train_model
from leanml.training import TrainConfig


def _trained(data: str, model: str, model_args: dict, train: TrainConfig):
    task = build_task(
        load_recipe({"task": {"data": data, "model": model, "model_args": model_args}})
    )
    return train_model(task, train, seed=0).torch, task.data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    epochs = 4 if args.quick else 30
    finetune = {"epochs": 2 if args.quick else 15, "lr": 1e-3}
    repeats = 20 if args.quick else 200
    measure = {
        "threads": 1,
        "batch_sizes": [1, 64],
        "warmup": 10,
        "repeats": repeats,
        "memory": False,
    }
    train = TrainConfig(epochs=epochs, lr=3e-3)
    t0 = time.perf_counter()
    print(
        f"leanml {leanml.__version__}; 1 thread; ONNX Runtime medians of >= {repeats} timed runs\n"
    )

    print("Channel pruning + fine-tuning (test accuracy; ratios = baseline / pruned)")
    print(
        f"{'model':12s} {'amount':>6s} {'acc base':>9s} {'acc pruned':>10s} {'delta':>7s} "
        f"{'params':>7s} {'FLOPs':>7s} {'lat b1':>7s} {'lat b64':>8s}"
    )
    models = {
        "digits CNN": ("cnn", {"width": 32}),
        "MobileNet": ("mobilenet", {"width": 1.0}),
    }
    trained = {}
    for label, (model, margs) in models.items():
        trained[label] = _trained("digits", model, margs, train)
        for amount in (0.3, 0.5, 0.7):
            net, data = trained[label]
            out = leanml.prune(
                net,
                data=data,
                kind="channel",
                amount=amount,
                importance="l2",
                finetune=finetune,
                sensitivity=False,
                measure=measure,
                train={"lr": 1e-3},
            )
            b, a = out.before, out.after
            print(
                f"{label:12s} {amount:6.0%} {b.metric:9.4f} {a.metric:10.4f} {a.metric - b.metric:+7.4f} "
                f"{b.params / a.params:7.2f} {b.flops / a.flops:7.2f} "
                f"{b.latency[1].p50 / a.latency[1].p50:7.2f} {b.latency[64].p50 / a.latency[64].p50:8.2f}"
            )

    print(
        "\nUnstructured magnitude pruning, gradual (3 steps, cubic), global, MLP width 512 on breast_cancer"
    )
    print(
        f"{'sparsity':>8s} {'acc base':>9s} {'acc pruned':>10s} {'delta':>7s} {'compressed':>10s} "
        f"{'lat b1':>7s} {'lat b64':>8s}"
    )
    mlp = _trained("breast_cancer", "mlp", {"width": 512, "depth": 2}, train)
    for amount in (0.5, 0.8, 0.9):
        out = leanml.prune(
            mlp[0],
            data=mlp[1],
            kind="unstructured",
            amount=amount,
            scope="global",
            schedule={"steps": 3},
            finetune={"epochs": 2 if args.quick else 10, "lr": 1e-3},
            sensitivity=False,
            measure=measure,
        )
        b, a = out.before, out.after
        print(
            f"{amount:8.0%} {b.metric:9.4f} {a.metric:10.4f} {a.metric - b.metric:+7.4f} "
            f"{b.compressed_size_bytes / a.compressed_size_bytes:9.2f}x "
            f"{b.latency[1].p50 / a.latency[1].p50:7.2f} {b.latency[64].p50 / a.latency[64].p50:8.2f}"
        )

    print("\nImportance at the same amount: digits CNN, 50% of channels (test accuracy)")
    print(f"{'importance':10s} {'one-shot':>9s} {'fine-tuned':>10s}")
    net, data = trained["digits CNN"]
    for imp, seeds in (("l2", [0]), ("random", [0, 1, 2])):
        one_shot, tuned = [], []
        for seed in seeds:
            for ft, bucket in ((False, one_shot), (finetune, tuned)):
                out = leanml.prune(
                    net,
                    data=data,
                    kind="channel",
                    amount=0.5,
                    importance=imp,
                    finetune=ft,
                    seed=seed,
                    sensitivity=False,
                    measure={**measure, "batch_sizes": [1], "repeats": 5},
                    train={"lr": 1e-3},
                )
                bucket.append(out.after.metric)
        each = ", ".join(f"{v:.3f}" for v in one_shot)
        note = f"   mean of seeds {seeds} (one-shot each: {each})" if len(seeds) > 1 else ""
        print(f"{imp:10s} {statistics.mean(one_shot):9.4f} {statistics.mean(tuned):10.4f}{note}")
    print(
        f"\n(baseline digits CNN accuracy {out.before.metric:.4f}; bench took {time.perf_counter() - t0:.0f} s)"
    )


if __name__ == "__main__":
    main()
