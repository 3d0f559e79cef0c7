"""Shared fixtures: small, fast recipes and the metrics.json schema the package ships."""

from __future__ import annotations

import copy
import os
import uuid
from pathlib import Path
from typing import Any

import pytest

# rich wraps its output at the terminal's width (80 columns where it cannot tell, e.g. output piped
# to a file). Tests read what the CLI prints, so every console they see, in this process and in the
# CLI processes they start (which inherit the environment), is wide enough for no line to wrap: no
# test depends on the width of the terminal that runs the suite. Set before leanml is imported,
# since its consoles read COLUMNS when they are made.
os.environ["COLUMNS"] = "500"

# `leanml` in a child process with Ctrl-C's default action (KeyboardInterrupt), also when the suite
# runs in a background job, whose children inherit SIGINT ignored: [sys.executable, "-c", LEANML, *args].
LEANML = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from leanml.cli import main; main()"
)


def stopped_in_a_finalizer(setup: str, signal_name: str) -> tuple[str, str]:
    """Run a child that, after ``setup``, is sent ``signal_name`` while the garbage collector runs
    a weakref callback (where Python drops a KeyboardInterrupt), then loops: its (stdout, stderr),
    "stopped" if the stop reached the program."""
    import subprocess
    import sys

    script = f"""
import gc, os, signal, weakref
{setup}

class Held:
    pass

def finalizer(ref):
    os.kill(os.getpid(), signal.{signal_name})
    sum(range(1000))  # bytecode for the handler to raise in: the KeyboardInterrupt is dropped here

held = Held()
ref = weakref.ref(held, finalizer)
try:
    del held
    gc.collect()
    for _ in range(10_000_000):
        pass
    print("not stopped")
except KeyboardInterrupt:
    print("stopped")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=False
    )
    return proc.stdout.strip(), proc.stderr.strip()


# Small measurement settings: correctness tests do not need stable medians. The one copy: import
# it (or take the fast_measure fixture); a test that needs other settings writes {**FAST_MEASURE, ...}
# and says why.
FAST_MEASURE = {
    "threads": 1,
    "batch_sizes": [1, 8],
    "warmup": 2,
    "repeats": 10,
    "max_seconds": 2.0,
    "memory": False,
}


@pytest.fixture
def fast_measure() -> dict[str, Any]:
    """FAST_MEASURE, a copy a test may change."""
    return copy.deepcopy(FAST_MEASURE)


@pytest.fixture(autouse=True)
def _int8_formats_are_faster(monkeypatch: pytest.MonkeyPatch) -> None:
    """The quantize stage keeps the float model when no int8 format is faster on the machine at hand
    (techniques/quantize/_formats.py); a tiny test model's int8 is often slower, and tests never
    depend on wall-clock speed: every int8 format runs at half the float latency here, so the stage
    keeps its own model. tests/techniques/quantize/test_formats.py replaces this with its own ratios."""
    from leanml.measure import MeasureConfig
    from leanml.runtime import OnnxRunner
    from leanml.techniques.quantize import _formats

    def half(float_path: Path, path: Path, x: Any, config: MeasureConfig) -> dict[int, float]:
        return dict.fromkeys(config.batch_sizes_for(OnnxRunner(path).inputs), 0.5)

    monkeypatch.setattr(_formats, "latency_ratios", half)


@pytest.fixture(scope="session")
def metrics_schema() -> dict[str, Any]:
    from leanml.report import metrics_schema

    return metrics_schema()


@pytest.fixture
def validate_metrics(metrics_schema):
    import jsonschema

    def check(metrics: dict[str, Any]) -> None:
        jsonschema.validate(metrics, metrics_schema)

    return check


@pytest.fixture(scope="module")
def image_onnx(tmp_path_factory) -> Path:
    """An untrained ONNX model taking 1x8x8 images (digits), batch axis dynamic: it scores about
    chance on digits."""
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("onnx") / "img.onnx"
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10)).eval()
    torch.onnx.export(
        net,
        (torch.zeros(2, 1, 8, 8),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
    )
    return path


@pytest.fixture
def pg_study():
    """A PostgreSQL URL and a fresh study name (deleted after); skips without PostgreSQL unless
    LEANML_REQUIRE_POSTGRES=1 (CI, where .ci/run starts it)."""
    url = os.environ.get("LEANML_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("LEANML_REQUIRE_POSTGRES") == "1":
            pytest.fail("LEANML_REQUIRE_POSTGRES=1 but LEANML_TEST_POSTGRES_URL is not set")
        pytest.skip(
            "set LEANML_TEST_POSTGRES_URL=postgresql://leanml:leanml@127.0.0.1:5432/leanml with a running PostgreSQL "
            "(apt-get install postgresql; pg_ctlcluster 15 main start; create role and database leanml) to run this test"
        )
    name = f"leanml-test-{uuid.uuid4().hex[:8]}"
    yield url, name
    try:
        import optuna

        from leanml.search import open_storage

        optuna.delete_study(study_name=name, storage=open_storage(url))
    except KeyError:
        pass


def tiny_recipe(**overrides: Any) -> dict[str, Any]:
    """A digits CNN recipe that trains in a few seconds."""
    recipe: dict[str, Any] = {
        "name": "tiny",
        "seed": 0,
        "task": {"data": "digits", "model": "cnn", "model_args": {"width": 8, "depth": 1}},
        "train": {"epochs": 4, "batch_size": 64, "lr": 0.01, "early_stopping": {"patience": 3}},
        "measure": copy.deepcopy(FAST_MEASURE),
        "constraints": {"max_metric_drop": 0.01},
        "export": {"formats": ["onnx", "safetensors"]},
    }
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(recipe.get(key), dict):
            recipe[key] = {**recipe[key], **value}
        else:
            recipe[key] = value
    return recipe


@pytest.fixture
def recipe_factory():
    return tiny_recipe


def measurement(
    metric: float, size: int, b1: float, b64: float, runtime: str = "onnxruntime"
) -> Any:
    """A hand-made Measurement at batch sizes 1 and 64 (p95 = 1.1 x p50), for tests of what is
    written about measurements (the gate's verdicts, the deploy summary)."""
    from leanml.measure import Measurement, Timing

    def t(b: int, ms: float) -> Timing:
        return Timing(batch_size=b, p50=ms, p95=ms * 1.1, repeats=10, mean=ms, stable=True)

    return Measurement(
        metric=metric,
        latency={1: t(1, b1), 64: t(64, b64)},
        size_bytes=size,
        compressed_size_bytes=size,
        params=size // 4,
        nonzero_params=size // 4,
        flops=None,
        peak_memory_bytes=None,
        runtime=runtime,
    )
