"""Sensitivity and auto_exclude: the most sensitive tensors kept float until the budget holds
(leanml/techniques/quantize/_exclude.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from leanml.constraints import Constraints
from leanml.measure import MeasureConfig
from leanml.pipeline import Reporter
from leanml.pipeline._context import PipelineContext
from leanml.techniques import get_stage_class
from leanml.techniques.quantize import QuantizeConfig
from leanml.training import TrainConfig

from ...conftest import FAST_MEASURE
from .conftest import (
    _AddBranchOutlier,
    _kernels,
    _plain_export,
    _quantize,
)


def test_auto_exclude_keeps_the_most_sensitive_tensor_float_until_the_constraint_holds(outlier_mlp):
    task, model = outlier_mlp
    out = _quantize(model, task, {"mode": "static"}, max_metric_drop=0.02)
    details = out.result.details
    sensitivity = details["sensitivity"]
    ranked = list(sensitivity)
    # the outlier tensor sits between fc1 and fc2: keeping it float recovers the most
    assert ranked[0] == "output of Gemm /fc1/Gemm (module fc1)" and sensitivity[ranked[0]] > 0.05
    assert sensitivity[ranked[0]] == max(sensitivity.values())
    excluded = details["auto_excluded"]
    kept = details["kept_float_tensors"]
    assert excluded == [k["tensor"] for k in kept] and kept[0]["producer"] == "/fc1/Gemm"
    # the Gemms writing and reading it compute in float, and the notes say why
    assert set(details["float_nodes"]) == {"/fc1/Gemm", "/fc2/Gemm"}
    reason = "kept float by auto_exclude: a tensor it reads or writes is among the most sensitive"
    assert details["float_nodes"]["/fc2/Gemm"].startswith(reason)
    note = next(n for n in out.result.notes if n.startswith("auto_exclude kept"))
    assert f"auto_exclude kept {len(kept)} of {len(sensitivity)} quantized tensors float" in note
    assert "output of Gemm /fc1/Gemm (module fc1)" in note
    assert any("batch 1" in n and "float" in n for n in out.result.notes)
    assert details["val_metric"]["float"] - details["val_metric"]["quantized"] <= 0.02
    assert out.before.metric - out.after.metric <= 0.03


def test_tensor_level_auto_exclude_fixes_an_add_branch_outlier_that_layers_cannot(tmp_path):
    from leanml.pipeline._quantize_file import quantize_onnx_file

    path = _plain_export(_AddBranchOutlier(), tmp_path / "add.onnx", (3, 8, 8))
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "calib.npz", x=rng.normal(size=(64, 3, 8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.normal(size=(96, 3, 8, 8)).astype(np.float32))

    def run(name: str, config: dict):
        return quantize_onnx_file(
            path,
            calib=tmp_path / "calib.npz",
            eval_data=tmp_path / "eval.npz",
            output=tmp_path / name,
            metric="cosine",
            config={"mode": "static", **config},
            measure=FAST_MEASURE,
        )

    # every Conv float (weight-level exclusion): the Add's output is still rounded, the drop stays
    layers = run("layers", {"exclude": ["stem", "branch", "head"], "auto_exclude": False})
    assert not layers.accepted and "cosine dropped" in layers.reason
    assert layers.summary["before"]["metric"] - layers.summary["after"]["metric"] > 0.05

    done = run("tensors", {})
    assert done.accepted, done.reason
    details = done.summary["details"]
    ranked = list(details["sensitivity"])
    assert ranked[0] == "output of Add /Add_1"  # the sum with the outlier, named in full
    kept = details["kept_float_tensors"]
    assert kept[0]["producer"] == "/Add_1" and kept[0]["kind"] == "activation"
    assert len(kept) < len(ranked)  # mixed precision: the other tensors stay int8
    assert {"/stem/Conv", "/branch/Conv"} <= set(details["int8_nodes"])
    assert "/head/Conv" in details["float_nodes"]
    notes = done.summary["notes"]
    note = next(n for n in notes if n.startswith("auto_exclude kept"))
    assert "output of Add /Add_1" in note and "(Add x1)" in note
    # the format comparison times the mixed-precision model against float at each batch size
    mixed = f"Format static QDQ (all ops, {len(kept)} tensors float): "
    assert any(n.startswith(mixed) and "the float latency at batch 1/8" in n for n in notes)
    assert done.summary["before"]["metric"] - done.summary["after"]["metric"] <= 0.01
    kernels = _kernels(done.model_path)
    assert (
        kernels.get("QLinearConv") == 2
        and kernels.get("Conv", 0) + kernels.get("FusedConv", 0) == 1
    )


class _Context(PipelineContext):
    """A pipeline context whose baseline and quantized-model scores a test sets."""

    def __init__(self, task, tmp_path, *, baseline_val, quantized_penalty=0.0):
        super().__init__(
            task=task,
            train_config=TrainConfig(),
            measure_config=MeasureConfig.model_validate(FAST_MEASURE),
            seed=0,
            work_dir=tmp_path,
            constraints=Constraints(max_metric_drop=0.01),
            baseline_val_metric=baseline_val,
            recipe={},
            stage_index=0,
            reporter=Reporter(),
        )
        self.penalty = quantized_penalty

    def evaluate(self, model, split="val"):
        value = super().evaluate(model, split)
        quantized = isinstance(model, Path) and model.name.startswith("quantized-")
        return value - self.penalty if quantized else value


def _float_val(task, model, tmp_path):
    return _Context(task, tmp_path, baseline_val=0.0).evaluate(model)


def test_auto_exclude_does_not_run_when_the_float_input_already_breaks_the_constraint(
    digits_cnn, tmp_path
):
    task, model = digits_cnn
    baseline = _float_val(task, model, tmp_path) + 0.05  # an earlier stage already cost 5 points
    ctx = _Context(task, tmp_path, baseline_val=baseline)
    stage = get_stage_class("quantize")(QuantizeConfig(mode="static", sensitivity=False))
    result = stage.apply(model.clone(), ctx)
    assert result.details["auto_excluded"] == [] and len(result.details["int8_nodes"]) == 5
    assert any(
        n.startswith(
            "auto_exclude did not run: the float model this stage started from already drops 0.05"
        )
        for n in result.notes
    )


def test_auto_exclude_that_cannot_restore_the_metric_keeps_every_layer_quantized(
    digits_cnn, tmp_path
):
    task, model = digits_cnn
    # whatever is kept float, the quantized file scores 0.2 lower: exclusion cannot help
    ctx = _Context(
        task, tmp_path, baseline_val=_float_val(task, model, tmp_path), quantized_penalty=0.2
    )
    stage = get_stage_class("quantize")(QuantizeConfig(mode="static", sensitivity=False))
    result = stage.apply(model.clone(), ctx)
    # every quantized tensor was measured: each layer's weight and the activations between them
    labels = set(result.details["sensitivity"])
    for module in ("features.0.0", "features.1.0", "features.3.0", "features.4.0"):
        assert (
            f"weight of Conv /features/features.{module[9]}/{module}/Conv (module {module})"
            in labels
        )
    assert "weight of Gemm /classifier/Gemm (module classifier)" in labels
    assert "output of MaxPool /features/features.2/MaxPool (module features.2)" in labels
    assert result.details["auto_excluded"] == [] and len(result.details["int8_nodes"]) == 5
    assert any("no mixed-precision int8 model holds the budget" in n for n in result.notes)
    assert "QLinearConv" in _kernels(Path(result.model.onnx))
