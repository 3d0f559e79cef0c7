"""A rerun over an earlier run directory never shows one run's model beside another run's figures,
and leaves no temporary files a killed process wrote."""

from __future__ import annotations

import json

import pytest

import leanml
from leanml.techniques import Stage, StageConfig, register_stage, unregister_stage

from ..conftest import tiny_recipe


class _StopConfig(StageConfig):
    pass


class _Stop(Stage[_StopConfig]):
    """Stands for a process killed mid-stage: the run stops without finishing."""

    Config = _StopConfig

    def apply(self, model, ctx):
        raise KeyboardInterrupt


@pytest.fixture
def stop_stage():
    register_stage("test_stop")(_Stop)
    yield
    unregister_stage("test_stop")


@pytest.mark.slow
def test_a_rerun_stopped_mid_stage_shows_no_model_or_report_of_the_earlier_run(
    tmp_path, stop_stage
):
    run = tmp_path / "run"
    leanml.run(tiny_recipe(), output=run)
    earlier_model = (run / "model.onnx").read_bytes()
    assert (run / "report.html").is_file()
    (run / ".model.onnx.k1ll3d.tmp").write_bytes(b"")  # what kill -9 during a write leaves
    (run / "stages" / "00-baseline" / ".metrics.json.x.tmp").write_bytes(b"")

    rerun = tiny_recipe(task={"model_args": {"width": 4, "depth": 1}}, stages=[{"test_stop": {}}])
    with pytest.raises(KeyboardInterrupt):
        leanml.run(rerun, output=run)

    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["final"] == "baseline" and metrics["task"]["model_args"]["width"] == 4
    # the earlier run's model and reports are gone: nothing claims figures it was not measured with
    assert not (run / "model.onnx").exists() or (run / "model.onnx").read_bytes() != earlier_model
    assert not (run / "report.html").exists() and not (run / "report.md").exists()
    assert list(run.rglob(".*.tmp")) == []


@pytest.mark.slow
def test_a_finished_rerun_replaces_every_result_of_the_earlier_run(tmp_path):
    run = tmp_path / "run"
    leanml.run(tiny_recipe(), output=run)
    (run / ".model.onnx.k1ll3d.tmp").write_bytes(b"")
    result = leanml.run(tiny_recipe(task={"model_args": {"width": 4, "depth": 1}}), output=run)
    assert (run / "model.onnx").read_bytes() == (
        run / "stages" / "00-baseline" / "model.onnx"
    ).read_bytes()
    assert json.loads((run / "metrics.json").read_text()) == json.loads(json.dumps(result.metrics))
    assert list(run.rglob(".*.tmp")) == []
