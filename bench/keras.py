"""Keras benchmark: a Keras 3 CNN (trained with Keras on its PyTorch backend, no TensorFlow) measured
side by side in one run, 1 thread:

- fp32 Keras-on-torch eager (the model called as a torch module, inference mode);
- fp32 ONNX Runtime (leanml's export of it, checked against Keras' predictions);
- leanml static int8 (QDQ, per-channel, minmax calibration) on ONNX Runtime.

Prints the test accuracy and its delta vs fp32 ONNX, the size ratio (fp32 ONNX / int8) and latency
ratios (p50, vs fp32 ONNX Runtime) at batch 1 and 64, timed in alternating rounds so that a change in
the machine's load hits every model alike. Size ratios above 1 mean smaller; latency ratios below 1
mean faster.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

os.environ.setdefault("KERAS_BACKEND", "torch")
# `python bench/keras.py` puts bench/ first on sys.path, where this file would shadow the keras package
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

import leanml
from leanml._utils import cpu_description
from leanml.data import Dataset, Split, take
from leanml.runtime import OnnxRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from keras_digits import digits_splits, train_keras_cnn


def _timed(fns: list, rounds: int, calls: int) -> list[float]:
    """p50 (ms) of each callable, alternating between them every round."""
    for fn in fns:
        for _ in range(5):
            fn()
    samples: list[list[float]] = [[] for _ in fns]
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                samples[i].append((time.perf_counter() - t) * 1000.0)
    return [float(np.median(s)) for s in samples]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and timing rounds")
    args = parser.parse_args()
    torch.set_num_threads(1)
    work = Path(tempfile.mkdtemp(prefix="leanml-bench-keras-"))
    splits = digits_splits()
    x_te, y_te = splits["test"]
    path = train_keras_cnn(splits, work / "cnn.keras", epochs=4 if args.quick else 10)

    data = Dataset(
        "digits (channels-last)",
        "image",
        *(Split(*splits[k]) for k in ("train", "val", "test")),
        None,
        10,
    )
    # leanml.quantize: the Keras file is exported (parity-checked against Keras) and quantized;
    # both models measured by the same harness on the same test split
    out = leanml.quantize(
        str(path),
        data=data,
        mode="static",
        calibration={"method": "minmax", "samples": 256},
        measure={"threads": 1, "batch_sizes": [1, 64], "memory": False},
        max_metric_drop=0.01,
        work_dir=work / "quantize",
    )
    fp32_onnx, int8_onnx = work / "quantize" / "before.onnx", out.artifact
    keras_module = leanml.models.load_keras(path)

    rounds, calls = (10, 20) if args.quick else (30, 50)
    print(f"leanml Keras benchmark — {cpu_description()}, 1 thread, torch {torch.__version__}")
    import keras

    print(
        f"Keras {keras.__version__} on the {keras.backend.backend()} backend; test split {len(x_te)} digits\n"
    )
    header = f"{'model':<28}{'accuracy':>9}{'Δ pt':>8}{'size KiB':>10}{'size ×':>8}{'b1 ms':>8}{'b1 ×':>7}{'b64 ms':>8}{'b64 ×':>7}"
    print(header)
    print("-" * len(header))
    runners = [OnnxRunner(p, threads=1) for p in (fp32_onnx, int8_onnx)]
    lat: dict[int, list[float]] = {}
    for batch in (1, 64):
        xb = take(x_te, np.arange(batch) % len(x_te))
        tb = torch.as_tensor(xb)
        feeds = [r.feed(xb) for r in runners]

        def eager(tb=tb):
            with torch.inference_mode():
                keras_module(tb)

        fns = [eager] + [
            (lambda r=r, f=f: r.session.run([r.output], f)) for r, f in zip(runners, feeds)
        ]
        lat[batch] = _timed(fns, rounds, calls)
    with torch.inference_mode():
        eager_acc = float((keras_module(torch.as_tensor(x_te)).argmax(1).numpy() == y_te).mean())
    base = out.before
    rows = [
        ("fp32 Keras-on-torch eager", eager_acc, None, 0),
        ("fp32 ONNX Runtime", base.metric, base.size_bytes, 1),
        ("leanml static int8 (ORT)", out.after.metric, out.after.size_bytes, 2),
    ]
    for name, acc, size, i in rows:
        size_s = f"{size / 1024:>10.1f}" if size else f"{'–':>10}"
        ratio_s = f"{base.size_bytes / size:>8.2f}" if size else f"{'–':>8}"
        print(
            f"{name:<28}{acc:>9.4f}{(acc - base.metric) * 100:>+8.2f}{size_s}{ratio_s}"
            f"{lat[1][i]:>8.3f}{lat[1][i] / lat[1][1]:>7.2f}{lat[64][i]:>8.3f}{lat[64][i] / lat[64][1]:>7.2f}"
        )
    print(
        f"\nstatic int8 vs fp32 ONNX: {base.size_bytes / out.after.size_bytes:.2f}x smaller, "
        f"accuracy {(out.after.metric - base.metric) * 100:+.2f} pt, latency x{lat[1][2] / lat[1][1]:.2f} "
        f"at batch 1 and x{lat[64][2] / lat[64][1]:.2f} at batch 64 (below 1 = faster); "
        f"ONNX Runtime fp32 vs Keras eager: x{lat[1][1] / lat[1][0]:.2f} at batch 1, "
        f"x{lat[64][1] / lat[64][0]:.2f} at batch 64"
    )
    print("quantize: " + "; ".join(out.result.notes[:1]))


if __name__ == "__main__":
    main()
