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

import numpy as np
import torch

import leanml
from leanml._utils import cpu_description
from leanml.models import Model
from leanml.pipeline import build_task, load_recipe
from leanml.training import TrainConfig, fit

MODES = ("static", "dynamic", "fp16", "qat")


def _trained(data: str, model: str, model_args: dict, train: TrainConfig):
    task = build_task(
        load_recipe({"task": {"data": data, "model": model, "model_args": model_args}})
    )
    torch.manual_seed(0)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, train, seed=0)
    return net, task.data


def _row(label: str, mode: str, out) -> None:
    b, a = out.before, out.after
    ratios = [a.latency[n].p50 / b.latency[n].p50 for n in (1, 64)]
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
    repeats = 20 if args.quick else 200
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
        "size = fp32 ONNX bytes / quantized bytes; lat = quantized p50 / fp32 p50 (below 1 is faster)"
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
                finetune=qat_train if mode == "qat" else None,
                measure=measure,
            )
            _row(label, mode, out)
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
    print(
        f"\nBERT encoder (hidden {hidden}, {layers} layers, built from a config), dynamic int8, sequence length {seq}"
    )
    print(
        f"  embedding cosine to float: {a.metric:.4f}; size {b.size_bytes / a.size_bytes:.2f}x smaller; "
        f"latency ratio b1 {a.latency[1].p50 / b.latency[1].p50:.2f} ({b.latency[1].p50:.2f} -> {a.latency[1].p50:.2f} ms), "
        f"b8 {a.latency[8].p50 / b.latency[8].p50:.2f} ({b.latency[8].p50:.2f} -> {a.latency[8].p50:.2f} ms)"
    )
    print(f"  {out.result.notes[0]}")
    # How much of the gain is ONNX Runtime's pre-processing of the float graph rather than int8:
    # the pre-processed float graph the quantizer started from, timed side by side.
    import tempfile
    from pathlib import Path

    from leanml.data import Split
    from leanml.measure import MeasureConfig
    from leanml.measure import measure as measure_file
    from leanml.metrics import get_metric
    from leanml.pipeline._quantize_api import HFEncoder
    from leanml.runtime import OnnxRunner, to_onnx
    from leanml.techniques._quantize_onnx import prepare

    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        to_onnx(Model(torch=HFEncoder(bert)), Split(x), fp32)
        pre = prepare(fp32, Path(tmp) / "pre.onnx").path
        split = Split(x, OnnxRunner(fp32).predict(x))
        cfg = MeasureConfig.model_validate(m)
        raw, prepped, int8 = (
            measure_file(p, split, get_metric("cosine"), cfg) for p in (fp32, pre, out.artifact)
        )
    print(
        f"  p50 ms b1/b8: fp32 {raw.latency[1].p50:.2f}/{raw.latency[8].p50:.2f}, fp32 pre-processed "
        f"{prepped.latency[1].p50:.2f}/{prepped.latency[8].p50:.2f}, int8 {int8.latency[1].p50:.2f}/"
        f"{int8.latency[8].p50:.2f}; int8 cosine {int8.metric:.4f}"
    )


if __name__ == "__main__":
    main()
