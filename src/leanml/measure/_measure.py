"""Measure the deployable artifact: metric, latency, size, params, FLOPs, memory."""

from __future__ import annotations

import functools
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..data import Inputs, Split, n_rows, take
from ..metrics import Metric
from ..runtime import OnnxRunner, load_onnx
from ..training import forward, to_tensor
from ._config import MeasureConfig
from ._flops import onnx_flops, onnx_param_counts, torch_flops
from ._latency import Timing, time_call
from ._memory import peak_memory_bytes


@dataclass
class Measurement:
    """Everything measured about one artifact.

    Attributes:
        metric: the task metric on the split given (the test split, in a pipeline run).
        runtime: where latency was measured (``onnxruntime`` or ``torch``).
        latency: Timing per batch size.
        size_bytes / compressed_size_bytes: the file's bytes, and after zlib level 9.
        params / nonzero_params: weight elements stored in the artifact, and the non-zero ones.
        flops: forward FLOPs of one sample (None when they cannot be counted).
        peak_memory_bytes: peak resident-memory growth of loading and running the largest batch.
        torch_latency: PyTorch eager timings, when asked for comparison.
    """

    metric: float
    runtime: str
    latency: dict[int, Timing]
    size_bytes: int
    compressed_size_bytes: int
    params: int
    nonzero_params: int
    flops: int | None
    peak_memory_bytes: int | None = None
    torch_latency: dict[int, Timing] = field(default_factory=dict)
    threads: int = 1

    def latency_record(self) -> dict[str, object]:
        """The ``latency_ms`` object of metrics.json."""
        sizes = sorted(self.latency)
        rec: dict[str, object] = {"runtime": self.runtime}
        rec["batch_1"] = self.latency[sizes[0]].as_dict()
        if len(sizes) > 1:
            rec["batch_n"] = self.latency[sizes[-1]].as_dict()
        rec["all"] = [self.latency[b].as_dict() for b in sizes]
        if self.torch_latency:
            rec["torch_eager"] = [
                self.torch_latency[b].as_dict() for b in sorted(self.torch_latency)
            ]
        return rec

    def p50(self, batch_size: int | None = None) -> float:
        b = min(self.latency) if batch_size is None else batch_size
        return self.latency[b].p50


def _batch(x: Inputs, b: int) -> Inputs:
    """``b`` rows of ``x``, repeating rows when the split is smaller."""
    n = n_rows(x)
    idx = np.arange(b) % n
    return take(x, idx)


def artifact_size(path: Path) -> tuple[int, int]:
    """``(bytes on disk, bytes after zlib level 9)`` of an ONNX file and the external-data files
    it names (models over 2 GB keep their weights beside the graph)."""
    import onnx
    from onnx.external_data_helper import uses_external_data

    data = path.read_bytes()
    proto = onnx.load(str(path), load_external_data=False)
    extra = sorted(
        {
            entry.value
            for t in proto.graph.initializer
            if uses_external_data(t)
            for entry in t.external_data
            if entry.key == "location"
        }
    )
    for name in extra:
        data += (path.parent / name).read_bytes()
    return len(data), len(zlib.compress(data, 9))


def measure(
    path: str | Path,
    split: Split,
    metric: Metric,
    config: MeasureConfig | None = None,
    *,
    torch_model=None,
    progress: Callable[[str], None] | None = None,
) -> Measurement:
    """Measure the ONNX artifact at ``path`` in ONNX Runtime.

    Args:
        path: the exported model.
        split: labelled data; the metric is computed on all of it, latency on its first rows.
        metric: the task metric.
        config: threads, batch sizes, warm-up, repeats.
        torch_model: the PyTorch module the artifact came from, if any: FLOPs are counted on it,
            and with ``runtime: torch`` or ``compare_torch`` it is timed in eager mode.
        progress: called with what is measured next (``metric``, ``latency batch 8``,
            ``memory``), e.g. a progress bar's ``update``.

    Example:
        >>> from leanml.measure import measure  # doctest: +SKIP
        >>> m = measure("model.onnx", data.test, get_metric("accuracy"))
        >>> m.latency[1].p50
    """
    cfg = config or MeasureConfig()
    path = Path(path)
    proto = load_onnx(path)
    runner = OnnxRunner(path, threads=cfg.threads)
    if progress:
        progress("metric")
    outputs = runner.predict(split.x)
    assert split.y is not None, "measuring needs labelled data (or fidelity targets)"
    value = metric(outputs, split.y)

    use_torch = cfg.runtime == "torch" and torch_model is not None
    latency: dict[int, Timing] = {}
    torch_latency: dict[int, Timing] = {}
    sizes = cfg.batch_sizes_for(runner.inputs)
    for b in sizes:
        if progress:
            progress(f"latency batch {b}")
        feed = runner.feed(_batch(split.x, b))
        ort_timing = time_call(
            functools.partial(runner.session.run, [runner.output], feed),
            batch_size=b,
            warmup=cfg.warmup,
            repeats=cfg.repeats,
            max_seconds=cfg.max_seconds,
        )
        if use_torch or cfg.compare_torch and torch_model is not None:
            torch_timing = _time_torch(torch_model, _batch(split.x, b), b, cfg)
            torch_latency[b] = torch_timing
        latency[b] = torch_latency[b] if use_torch else ort_timing

    size, compressed = artifact_size(path)
    params, nonzero = onnx_param_counts(proto)
    # counted on the artifact's graph; PyTorch's counter only where the graph's shapes cannot be
    # inferred (and the module is at hand)
    flops = onnx_flops(proto, split.x)
    if flops is None and torch_model is not None:
        try:
            flops = torch_flops(torch_model, split.x)
        except Exception:  # noqa: BLE001 - torch's counter fails on some modules: unknown then
            flops = None
    memory = None
    if cfg.memory:
        if progress:
            progress("memory")
        memory = peak_memory_bytes(path, _batch(split.x, max(sizes)), threads=cfg.threads)
    return Measurement(
        metric=value,
        runtime="torch" if use_torch else "onnxruntime",
        latency=latency,
        size_bytes=size,
        compressed_size_bytes=compressed,
        params=params,
        nonzero_params=nonzero,
        flops=flops or None,
        peak_memory_bytes=memory,
        torch_latency=torch_latency if not use_torch else {},
        threads=cfg.threads,
    )


def _time_torch(net, x: Inputs, b: int, cfg: MeasureConfig) -> Timing:
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        net.eval()
        xt = to_tensor(x)

        def call() -> None:
            with torch.inference_mode():
                forward(net, xt)

        return time_call(
            call, batch_size=b, warmup=cfg.warmup, repeats=cfg.repeats, max_seconds=cfg.max_seconds
        )
    finally:
        torch.set_num_threads(previous)
