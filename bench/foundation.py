"""Foundation benchmark: the digits CNN baseline, measured side by side in one run.

Prints, for the exported model:
- ONNX Runtime latency vs PyTorch eager (the plain alternative) at batch 1 and 64, same threads;
- the harness's repeatability: the same artifact measured twice, ratio of the two medians;
- a 4x wider CNN vs the baseline: FLOPs ratio and latency ratio (the harness must rank it slower),
  measured one after the other and in alternating rounds (``paired_latency_ratio``, the gate's
  ``max_latency_ratio`` check).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import leanml
from leanml.measure import MeasureConfig, measure, paired_latency_ratio
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.runtime import to_onnx
from leanml.training import TrainConfig, fit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    epochs = 3 if args.quick else 20
    repeats = 30 if args.quick else 200
    recipe = load_recipe({"task": {"data": "digits", "model": "cnn", "model_args": {"width": 32}}})
    task = build_task(recipe)
    cfg = MeasureConfig(
        batch_sizes=[1, 64], repeats=repeats, warmup=20, compare_torch=True, memory=True
    )
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        models = {}
        for label, width in (("cnn w32", 32), ("cnn w128 (4x wider)", 128)):
            net = task.build_torch_model({"width": width})
            fit(
                net,
                task.data.train,
                task.data.val,
                task.metric,
                TrainConfig(epochs=epochs, lr=0.003),
                seed=0,
            )
            path = Path(tmp) / f"{width}.onnx"
            to_onnx(Model(torch=net), task.data.val, path)
            models[label] = (net, path)
        base_net, base_path = models["cnn w32"]
        first = measure(base_path, task.data.test, task.metric, cfg, torch_model=base_net)
        second = measure(base_path, task.data.test, task.metric, cfg, torch_model=base_net)
        wide_net, wide_path = models["cnn w128 (4x wider)"]
        wide = measure(wide_path, task.data.test, task.metric, cfg, torch_model=wide_net)
        paired = paired_latency_ratio(base_path, wide_path, task.data.test.x, cfg)

    print(
        f"leanml {leanml.__version__}; digits CNN; 1 thread; medians of >= {repeats} timed runs each\n"
    )
    print(f"{'comparison':58s} {'batch 1':>10s} {'batch 64':>10s}")
    for b_label, fn in (
        (
            "ORT latency / PyTorch eager latency (w32)",
            lambda b: first.latency[b].p50 / first.torch_latency[b].p50,
        ),
        (
            "harness repeatability: 2nd / 1st median (w32, ORT)",
            lambda b: second.latency[b].p50 / first.latency[b].p50,
        ),
        ("4x wider / baseline latency (ORT)", lambda b: wide.latency[b].p50 / first.latency[b].p50),
        ("4x wider / baseline latency, paired rounds (ORT)", lambda b: paired[b]),
    ):
        rows.append((b_label, fn(1), fn(64)))
        print(f"{b_label:58s} {fn(1):10.2f} {fn(64):10.2f}")
    print(f"\n{'4x wider / baseline FLOPs':58s} {wide.flops / first.flops:10.2f}")
    print(f"{'4x wider / baseline bytes on disk':58s} {wide.size_bytes / first.size_bytes:10.2f}")
    print(
        f"\nbaseline w32: accuracy {first.metric:.4f}; ORT p50 b1 {first.latency[1].p50:.4f} ms, "
        f"b64 {first.latency[64].p50:.3f} ms; torch eager p50 b1 {first.torch_latency[1].p50:.4f} ms, "
        f"b64 {first.torch_latency[64].p50:.3f} ms; peak memory {first.peak_memory_bytes or 0} B"
    )


if __name__ == "__main__":
    main()
