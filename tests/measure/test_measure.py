from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
from torch import nn

from leanml.data import Split
from leanml.measure import MeasureConfig, measure, onnx_flops, time_call, torch_flops
from leanml.metrics import get_metric
from leanml.models import Model
from leanml.runtime import to_onnx


def _mlp(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(), nn.Linear(width, 10)
    ).eval()


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    return Split(rng.normal(size=(256, 64)).astype(np.float32), rng.integers(0, 10, 256))


def _export(net: nn.Module, data: Split, path: Path) -> Path:
    to_onnx(Model(torch=net), data, path)
    return path


def test_four_times_wider_model_measures_slower(tmp_path, data):
    small = _export(_mlp(256), data, tmp_path / "small.onnx")
    wide = _export(_mlp(1024), data, tmp_path / "wide.onnx")
    cfg = MeasureConfig(batch_sizes=[1, 64], warmup=5, repeats=30, memory=False)
    m_small = measure(small, data, get_metric("accuracy"), cfg)
    m_wide = measure(wide, data, get_metric("accuracy"), cfg)
    # 16x the multiply-adds in the hidden layer: the ranking holds on a noisy machine.
    assert m_wide.latency[64].p50 > m_small.latency[64].p50
    assert m_wide.latency[1].p50 > m_small.latency[1].p50
    assert m_wide.flops > 4 * m_small.flops


def test_sizes_are_the_files_sizes(tmp_path, data):
    path = _export(_mlp(128), data, tmp_path / "m.onnx")
    m = measure(
        path, data, get_metric("accuracy"), MeasureConfig(repeats=5, warmup=1, memory=False)
    )
    raw = path.read_bytes()
    assert m.size_bytes == path.stat().st_size == len(raw)
    assert m.compressed_size_bytes == len(zlib.compress(raw, 9))


def test_params_count_the_stored_weights(tmp_path, data):
    net = _mlp(32)
    with_zeros = _mlp(32)
    nn.init.zeros_(with_zeros[0].weight)
    for n, name in ((net, "a"), (with_zeros, "b")):
        m = measure(
            _export(n, data, tmp_path / f"{name}.onnx"),
            data,
            get_metric("accuracy"),
            MeasureConfig(repeats=5, warmup=1, memory=False),
        )
        expected = sum(p.numel() for p in n.parameters())
        assert m.params == expected
        if name == "b":
            assert m.nonzero_params == expected - 64 * 32


def test_onnx_flops_match_torch_flops(tmp_path, data):
    from leanml.models import SmallCNN

    net = SmallCNN(1, 10, width=8, depth=2).eval()
    x = Split(
        np.random.default_rng(0).normal(size=(4, 1, 8, 8)).astype(np.float32),
        np.zeros(4, dtype=np.int64),
    )
    path = _export(net, x, tmp_path / "cnn.onnx")
    counted = onnx_flops(onnx.load(str(path)), x.x)
    assert counted == pytest.approx(torch_flops(net, x.x), rel=0.02)


def test_metric_is_measured_on_the_artifact(tmp_path, data):
    net = _mlp(16)
    path = _export(net, data, tmp_path / "m.onnx")
    from leanml.training import predict

    expected = get_metric("accuracy")(predict(net, data.x), data.y)
    m = measure(
        path, data, get_metric("accuracy"), MeasureConfig(repeats=5, warmup=1, memory=False)
    )
    assert m.metric == pytest.approx(expected)


class FakeClock:
    """A clock that only moves when the timed function runs: each call takes the next duration."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, iter(durations), 0

    def __call__(self) -> float:
        return self.now

    def run(self) -> None:
        self.calls += 1
        self.now += next(self.durations)


def test_timing_stops_adding_blocks_once_the_median_settles():
    clock = FakeClock([0.001] * 1000)
    t = time_call(clock.run, batch_size=1, warmup=3, repeats=20, clock=clock)
    # 3 warm-up calls, 20 timed, one block of 10 more: the median did not move, so it stops
    assert clock.calls == 3 + 20 + 10 and t.repeats == 30 and t.stable
    assert t.p50 == pytest.approx(1.0) and t.p95 == pytest.approx(1.0)


def test_timing_keeps_adding_blocks_while_the_median_drifts_up_to_the_cap():
    clock = FakeClock([0.001 * 1.05**i for i in range(1000)])  # every call 5 % slower
    t = time_call(clock.run, batch_size=1, warmup=0, repeats=20, max_repeats=60, clock=clock)
    assert t.repeats == 60 and not t.stable
    assert t.p50 < t.p95


def test_timing_stops_at_max_seconds():
    clock = FakeClock([1.0 * 1.05**i for i in range(1000)])  # slow and drifting
    t = time_call(clock.run, batch_size=1, warmup=0, repeats=20, max_seconds=30.0, clock=clock)
    # the first 20 calls already take more than 30 s: no block is added
    assert t.repeats == 20 and not t.stable


def test_timing_a_real_call_reports_percentiles():
    calls = []
    t = time_call(lambda: calls.append(1), batch_size=1, warmup=3, repeats=20)
    assert len(calls) == 3 + t.repeats and t.repeats >= 20
    assert 0 < t.p50 <= t.p95


def test_peak_memory_grows_with_the_model(tmp_path, data):
    from leanml.measure import peak_memory_bytes

    small = _export(_mlp(64), data, tmp_path / "s.onnx")
    big = _export(_mlp(2048), data, tmp_path / "b.onnx")  # ~17 MB of weights
    m_small = peak_memory_bytes(small, data.x[:8])
    m_big = peak_memory_bytes(big, data.x[:8])
    assert m_small is not None and m_big is not None
    assert m_big > m_small + 8 * 2**20


def test_size_counts_external_data_files(tmp_path, data):
    from leanml.measure import artifact_size

    path = _export(_mlp(64), data, tmp_path / "m.onnx")
    inline = artifact_size(path)[0]
    model = onnx.load(str(path))
    onnx.save(
        model,
        str(tmp_path / "ext.onnx"),
        save_as_external_data=True,
        location="ext.data",
        size_threshold=0,
    )
    graph, weights = (tmp_path / "ext.onnx").stat().st_size, (tmp_path / "ext.data").stat().st_size
    assert artifact_size(tmp_path / "ext.onnx")[0] == graph + weights
    assert graph < inline / 4  # the weights really are outside the graph file
