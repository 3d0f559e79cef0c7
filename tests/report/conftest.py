"""A run record built by hand: a trained baseline, an accepted stage with a plot, a rolled-back
stage and a stage that failed, so every part of the reports has something to show."""

from __future__ import annotations

import pytest

from leanml.charts import Plot
from leanml.measure import Measurement, Timing
from leanml.report import FailedStage, RunRecord, StageRecord
from leanml.training import TrainResult


def timing(batch_size: int, p50: float) -> Timing:
    return Timing(batch_size, p50=p50, p95=p50 * 1.5, repeats=40, mean=p50 * 1.1, stable=True)


def measurement(metric: float, p50: float, size: int, params: int, **kw) -> Measurement:
    return Measurement(
        metric=metric,
        runtime=kw.pop("runtime", "onnxruntime"),
        latency={1: timing(1, p50), 8: timing(8, p50 * 4)},
        size_bytes=size,
        compressed_size_bytes=size // 2,
        params=params,
        nonzero_params=params // 2,
        flops=params * 2,
        peak_memory_bytes=3 * 2**20,
        **kw,
    )


@pytest.fixture
def run_record() -> RunRecord:
    return make_run_record()


def make_run_record() -> RunRecord:
    history = [
        {
            "epoch": e,
            "train_loss": 1.0 / e,
            "val_loss": 1.2 / e,
            "val_metric": 0.8 + e / 100,
            "lr": 0.01,
        }
        for e in (1, 2, 3)
    ]
    baseline = StageRecord(
        name="baseline",
        kind="baseline",
        measurement=measurement(0.95, 0.50, 40_000, 10_000),
        metric_delta=0.0,
        artifact="stages/00-baseline/model.onnx",
        notes=["trained from scratch"],
        train_result=TrainResult(
            history, best_epoch=2, stopped_epoch=3, stopped_early=True, epochs=10
        ),
        val_metric=0.94,
        duration_s=1.23456,
    )
    pruned = StageRecord(
        name="half-channels",
        kind="prune",
        measurement=measurement(0.945, 0.30, 20_000, 5_000),
        metric_delta=-0.005,
        artifact="stages/01-half-channels/model.onnx",
        notes=["removed 50% of the channels of conv1"],
        details={"sparsity": 0.5, "notes": "a details key that clashes", "metric": 123.0},
        plots=[Plot("Sensitivity per layer", "bar", {"drop": (["conv1", "conv2"], [0.01, 0.02])})],
    )
    quantized = StageRecord(
        name="int8",
        kind="quantize",
        measurement=measurement(0.80, 0.25, 6_000, 5_000),
        metric_delta=-0.15,
        artifact="stages/02-int8/model.onnx",
        accepted=False,
        reason="accuracy dropped 0.1500 vs the baseline; kept half-channels",
        notes=["12 of 14 MatMul nodes run in int8"],
    )
    return RunRecord(
        leanml_version="0.0.test",
        task={
            "name": "hand-made",
            "data": "digits",
            "model": "cnn",
            "metric": "accuracy",
            "higher_is_better": True,
        },
        environment={
            "threads": 1,
            "python": "3.12",
            "torch": "2.13.0",
            "onnxruntime": "1.22",
            "cpu": "test cpu (avx2)",
        },
        stages=[baseline, pruned, quantized],
        final="half-channels",
        constraints={"max_metric_drop": 0.01},
        higher_is_better=True,
        failed=[FailedStage("distill", "distill", "StageError: the student did not converge")],
    )
