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


def test_a_wider_model_counts_more_flops_and_is_timed_at_every_batch_size(tmp_path, data):
    # which of the two is faster is for bench/foundation.py, measured side by side
    small = _export(_mlp(256), data, tmp_path / "small.onnx")
    wide = _export(_mlp(1024), data, tmp_path / "wide.onnx")
    cfg = MeasureConfig(batch_sizes=[1, 64], warmup=2, repeats=10, memory=False)
    m_small = measure(small, data, get_metric("accuracy"), cfg)
    m_wide = measure(wide, data, get_metric("accuracy"), cfg)
    assert m_wide.flops > 4 * m_small.flops  # 16x the multiply-adds in the hidden layer
    for m in (m_small, m_wide):
        assert m.runtime == "onnxruntime" and sorted(m.latency) == [1, 64]
        for b, t in m.latency.items():
            assert t.batch_size == b and t.repeats >= cfg.repeats and 0 < t.p50 <= t.p95
        assert m.latency_record()["batch_n"]["batch_size"] == 64


class _TokenModel(nn.Module):
    """A tiny sequence model: token ids (batch, sequence) -> one vector per sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, ids):
        return self.head(self.embed(ids).mean(1))


def test_a_model_that_takes_token_ids_is_timed_at_batch_8_unless_batch_sizes_are_given(tmp_path):
    import torch

    path = tmp_path / "tokens.onnx"
    torch.onnx.export(
        _TokenModel().eval(),
        (torch.zeros(2, 16, dtype=torch.long),),
        str(path),
        dynamo=False,
        input_names=["ids"],
        dynamic_axes={"ids": {0: "n", 1: "seq"}},
    )
    ids = np.random.default_rng(0).integers(0, 50, size=(16, 16))
    split = Split(ids, np.zeros((16, 4), np.float32))
    fast = {"warmup": 1, "repeats": 5, "memory": False}
    m = measure(path, split, get_metric("mse"), MeasureConfig(**fast))
    assert sorted(m.latency) == MeasureConfig().sequence_batch_sizes == [1, 8]
    m = measure(path, split, get_metric("mse"), MeasureConfig(batch_sizes=[1, 4], **fast))
    assert sorted(m.latency) == [1, 4]


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
    # 1 + 1.05 + ... passes 30 s at the 19th call: the first block stops there, on budget
    assert t.repeats == 19 and not t.stable and t.stopped == "budget"
    assert t.as_dict()["stopped"] == "budget"


def test_the_budget_bounds_warm_up_and_the_first_block_of_slow_calls():
    clock = FakeClock([4.0] * 1000)  # a large batch of a large model: 4 s a call
    t = time_call(clock.run, batch_size=64, warmup=10, repeats=100, max_seconds=10.0, clock=clock)
    # one warm-up call (it used more than a quarter of the budget), then calls until 10 s are
    # spent, but never fewer than three timed: 4 + 3 x 4 = 16 s instead of 440 s
    assert clock.calls == 1 + 3 and t.repeats == 3 and t.stopped == "budget" and not t.stable


def test_stable_and_capped_timings_say_why_they_stopped():
    clock = FakeClock([0.001] * 1000)
    assert time_call(clock.run, batch_size=1, warmup=0, repeats=20, clock=clock).stopped == "stable"
    clock = FakeClock([0.001 * 1.05**i for i in range(1000)])
    t = time_call(clock.run, batch_size=1, warmup=0, repeats=20, max_repeats=40, clock=clock)
    assert t.stopped == "max_repeats" and not t.stable


class FakeRunners:
    """Stands in for ONNX Runtime in ``paired_latency_ratio``: a call to the model at ``path`` moves
    the fake clock by ``costs[path] = (seconds per call, seconds per row)``, times ``load`` while
    ``spike(call number)`` is true; ``calls`` records which model ran, in order."""

    def __init__(self, costs, spike=lambda i: False, load=10.0):
        self.costs, self.spike, self.load = costs, spike, load
        self.clock, self.calls = FakeClock([]), []

    def runner(self, path, *, threads):
        fake = self

        class Runner:
            output = "y"
            inputs = ()  # no token ids: the configured batch sizes

            def __init__(self):
                self.session = self

            def feed(self, batch):
                return {"x": batch}

            def run(self, outputs, feed):
                per_call, per_row = fake.costs[str(path)]
                cost = per_call + per_row * len(feed["x"])
                fake.clock.now += cost * (fake.load if fake.spike(len(fake.calls)) else 1.0)
                fake.calls.append(str(path))

        return Runner()


@pytest.fixture
def fake_runtime(monkeypatch):
    """Install FakeRunners (built from ``costs``) under ``paired_latency_ratio``."""
    import functools

    from leanml.measure import _paired

    def install(costs, **kw):
        fake = FakeRunners(costs, **kw)
        monkeypatch.setattr(_paired, "OnnxRunner", fake.runner)
        monkeypatch.setattr(_paired, "time_call", functools.partial(time_call, clock=fake.clock))
        return fake

    return install


def runs(seq):
    """Run-length encoding: [("a", 3), ("b", 3), ...]."""
    out = []
    for item in seq:
        if out and out[-1][0] == item:
            out[-1] = (item, out[-1][1] + 1)
        else:
            out.append((item, 1))
    return out


def test_paired_ratio_is_after_over_before_per_batch_size_in_alternating_rounds(fake_runtime):
    from leanml.measure import paired_latency_ratio

    costs = {"before": (1e-3, 1e-4), "after": (3e-3, 1e-4)}
    fake = fake_runtime(costs)
    x = np.zeros((4, 2), np.float32)
    cfg = MeasureConfig(batch_sizes=[1, 8], repeats=20, memory=False)
    ratios = paired_latency_ratio("before", "after", x, cfg, rounds=5)
    assert ratios == {1: pytest.approx(3.1 / 1.1), 8: pytest.approx(3.8 / 1.8)}
    # per batch size, 5 rounds of (before, after), each model 2 warm-up + 10 timed calls a turn
    turns = runs(fake.calls)
    assert [name for name, _ in turns] == ["before", "after"] * 10
    assert {n for _, n in turns} == {12}
    # swapped, the ratio is the reciprocal
    back = paired_latency_ratio("after", "before", x, cfg, rounds=5)
    assert back == {b: pytest.approx(1 / r) for b, r in ratios.items()}


def test_paired_ratio_is_the_median_over_rounds_so_one_disturbed_turn_does_not_move_it(
    fake_runtime,
):
    from leanml.measure import paired_latency_ratio

    # the machine is 10x slower during the second round's "after" turn at batch 1 (calls 36-47)
    fake = fake_runtime({"a": (1e-3, 0.0), "b": (2e-3, 0.0)}, spike=lambda i: 36 <= i < 48)
    cfg = MeasureConfig(batch_sizes=[1], repeats=20, memory=False)
    ratios = paired_latency_ratio("a", "b", np.zeros((4, 2), np.float32), cfg, rounds=5)
    assert ratios == {1: pytest.approx(2.0)}
    assert len(fake.calls) == 5 * 2 * 12


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
