"""Quantization benchmark: every figure measured side by side in one run, on ONNX Runtime, 1 thread.

Prints, for each mode (static int8, dynamic int8, fp16, QAT int8) on the digits CNN (widths 32 and
64) and on an MLP on breast_cancer: test-metric delta, size ratio (fp32 ONNX / quantized) and
latency ratio (quantized / fp32 ORT, p50) at batch 1 and 64 — each quantized model is measured right
after its fp32 baseline. Then a BERT-style encoder (built from a config, no download): dynamic int8
latency ratio at sequence length 128 and the embedding cosine to the float model.

Size ratios above 1 mean smaller; latency ratios below 1 mean faster.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

import leanml
from leanml._utils import cpu_description
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.pipeline._tasks import train_model
from leanml.training import TrainConfig

MODES = ("static", "dynamic", "fp16", "qat")


def _trained(data: str, model: str, model_args: dict, train: TrainConfig):
    task = build_task(
        load_recipe({"task": {"data": data, "model": model, "model_args": model_args}})
    )
    return train_model(task, train, seed=0).torch, task.data


def _interleaved(paths: list[Path], x, batch: int, rounds: int, calls: int) -> list[float]:
    """p50 latency (ms) of each model at ``batch``, timed in alternating rounds so that a change in
    the machine's load hits every model alike (this machine is shared)."""
    from leanml.data import take
    from leanml.runtime import OnnxRunner

    runners = [OnnxRunner(p, threads=1) for p in paths]
    n = len(next(iter(x.values()))) if isinstance(x, dict) else len(x)
    feeds = [r.feed(take(x, np.arange(batch) % n)) for r in runners]
    samples: list[list[float]] = [[] for _ in paths]
    for r, feed in zip(runners, feeds):
        for _ in range(5):
            r.session.run([r.output], feed)
    for _ in range(rounds):
        for i, (r, feed) in enumerate(zip(runners, feeds)):
            for _ in range(calls):
                t = time.perf_counter()
                r.session.run([r.output], feed)
                samples[i].append((time.perf_counter() - t) * 1000.0)
    return [float(np.median(s)) for s in samples]


def _row(label: str, mode: str, out, x, rounds: int) -> None:
    b, a = out.before, out.after
    paths = [out.artifact.parent / "before.onnx", out.artifact]
    ratios = []
    for batch in (1, 64):
        fp32, quant = _interleaved(paths, x, batch, rounds, calls=20 if batch == 1 else 4)
        ratios.append(quant / fp32)
    int8 = out.result.details.get("int8_nodes", [])
    total = out.result.details.get("compute_nodes", 0)
    print(
        f"{label:16s} {mode:8s} {b.metric:8.4f} {a.metric:8.4f} {a.metric - b.metric:+8.4f} "
        f"{b.size_bytes / a.size_bytes:6.2f}x {ratios[0]:7.2f} {ratios[1]:8.2f} "
        f"{f'{len(int8)}/{total}' if mode != 'fp16' else '-':>6s}"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    repeats = 20 if args.quick else 100
    rounds = 5 if args.quick else 25
    measure = {
        "threads": 1,
        "batch_sizes": [1, 64],
        "warmup": 10,
        "repeats": repeats,
        "memory": False,
    }
    epochs = 4 if args.quick else 25
    qat_train = {"epochs": 2 if args.quick else 5, "lr": 5e-4}
    t0 = time.perf_counter()
    print(
        f"leanml {leanml.__version__}; {cpu_description()}; 1 thread; ORT p50 of >= {repeats} timed runs\n"
    )
    print(
        "size = fp32 ONNX bytes / quantized bytes; lat = quantized p50 / fp32 p50 (below 1 is faster),\n"
        "timed in alternating rounds (fp32, quantized, fp32, ...) so load changes hit both alike"
    )
    print(
        f"{'model':16s} {'mode':8s} {'fp32':>8s} {'quant':>8s} {'delta':>8s} {'size':>7s} "
        f"{'lat b1':>7s} {'lat b64':>8s} {'int8':>6s}"
    )
    cases = [
        ("digits cnn w32", "digits", "cnn", {"width": 32}),
        ("digits cnn w64", "digits", "cnn", {"width": 64}),
        ("mlp breast_canc", "breast_cancer", "mlp", {"width": 256, "depth": 2}),
    ]
    for label, data, model, model_args in cases:
        net, dataset = _trained(data, model, model_args, TrainConfig(epochs=epochs, lr=3e-3))
        for mode in MODES:
            out = leanml.quantize(
                Model(torch=net, model_args=model_args, factory=model),
                data=dataset,
                mode=mode,
                sensitivity=False,
                measure=measure,
                **({"finetune": qat_train} if mode == "qat" else {}),
            )
            _row(label, mode, out, dataset.test.x, rounds)
        for note in out.result.notes[:2]:
            print(f"    qat note: {note}")

    _transformer(args.quick, measure)
    print(f"\ntotal {time.perf_counter() - t0:.0f}s")


def _transformer(quick: bool, measure: dict) -> None:
    try:
        import transformers
    except ImportError:
        print("\ntransformer encoder: skipped (pip install leanml[transformers])")
        return
    hidden, layers = (128, 2) if quick else (256, 4)
    config = transformers.BertConfig(
        vocab_size=8000,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        intermediate_size=4 * hidden,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    bert = transformers.BertModel(config).eval()
    rng = np.random.default_rng(0)
    n, seq = (40, 128)
    x = {
        "input_ids": rng.integers(0, 8000, size=(n, seq)).astype(np.int64),
        "attention_mask": np.ones((n, seq), np.int64),
    }
    m = {**measure, "batch_sizes": [1, 8]}
    out = leanml.quantize(bert, data=(x, None), mode="dynamic", sensitivity=False, measure=m)
    b, a = out.before, out.after
    # How much of the gain is ONNX Runtime's pre-processing of the float graph rather than int8:
    # the pre-processed float graph the quantizer started from is timed in the same rounds.
    import tempfile

    from leanml.techniques.quantize._onnx import prepare

    before = out.artifact.parent / "before.onnx"
    with tempfile.TemporaryDirectory() as tmp:
        pre = prepare(before, Path(tmp) / "pre.onnx").path
        paths = [before, pre, out.artifact]
        rounds = 3 if quick else 10
        b1 = _interleaved(paths, x, 1, rounds, calls=5)
        b8 = _interleaved(paths, x, 8, rounds, calls=2)
    print(
        f"\nBERT encoder (hidden {hidden}, {layers} layers, built from a config), dynamic int8, "
        f"sequence length {seq}"
    )
    print(
        f"  embedding cosine to float: {a.metric:.4f}; size {b.size_bytes / a.size_bytes:.2f}x smaller; "
        f"latency ratio b1 {b1[2] / b1[0]:.2f}, b8 {b8[2] / b8[0]:.2f}"
    )
    print(
        f"  p50 ms b1/b8: fp32 {b1[0]:.2f}/{b8[0]:.2f}, fp32 pre-processed {b1[1]:.2f}/{b8[1]:.2f}, "
        f"int8 {b1[2]:.2f}/{b8[2]:.2f}"
    )
    print(f"  {out.result.notes[0]}")


if __name__ == "__main__":
    main()
