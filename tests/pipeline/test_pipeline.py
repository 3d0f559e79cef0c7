from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import leanml
from leanml.errors import InvalidInputError, StageError
from leanml.techniques import Stage, StageConfig, StageResult, register_stage, unregister_stage


class _NoiseConfig(StageConfig):
    scale: float = 0.0
    fail: bool = False


class _NoiseStage(Stage):
    """A test stage: adds Gaussian noise to every weight (scale 0 leaves the model unchanged)."""

    Config = _NoiseConfig

    def apply(self, model, ctx):
        if self.config.fail:
            raise StageError("this stage was asked to fail")
        g = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for p in model.torch.parameters():
                p.add_(torch.randn(p.shape, generator=g) * self.config.scale)
        return StageResult(
            model, notes=[f"noise {self.config.scale}"], details={"noise_scale": self.config.scale}
        )


@pytest.fixture
def noise_stage():
    register_stage("test_noise")(_NoiseStage)
    yield
    unregister_stage("test_noise")


@pytest.mark.slow
def test_baseline_run_writes_the_run_directory(tmp_path, recipe_factory, validate_metrics):
    result = leanml.run(recipe_factory(), output=tmp_path / "run")
    run = tmp_path / "run"
    for name in (
        "recipe.yaml",
        "metrics.json",
        "report.html",
        "report.md",
        "model.onnx",
        "model.safetensors",
        "environment.json",
    ):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    validate_metrics(metrics)
    assert metrics == json.loads(json.dumps(result.metrics, default=str))
    base = metrics["stages"][0]
    assert base["kind"] == "baseline" and base["metric"] > 0.5
    assert (run / base["artifact"]).is_file()
    assert base["size_bytes"] == (run / base["artifact"]).stat().st_size
    # the recipe as run, with defaults filled in
    saved = yaml.safe_load((run / "recipe.yaml").read_text())
    assert saved["train"]["optimizer"] == "adam" and saved["measure"]["threads"] == 1
    assert leanml.load_recipe(saved).train.epochs == 4
    env = json.loads((run / "environment.json").read_text())
    assert {"torch", "onnxruntime", "optuna"} <= set(env)
    html = (run / "report.html").read_text()
    # self-contained: plots inlined, nothing fetched
    assert "<svg" in html
    assert 'src="http' not in html and "<link" not in html and "<script src" not in html


@pytest.mark.slow
def test_a_registered_stage_runs_and_is_rolled_back_when_it_breaks_the_constraint(
    tmp_path, recipe_factory, noise_stage, validate_metrics
):
    recipe = recipe_factory(
        stages=[
            {"test_noise": {"scale": 0.0}, "name": "harmless"},
            {"test_noise": {"scale": 5.0}, "name": "destroy"},
        ]
    )
    result = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(result.metrics)
    stages = {s["name"]: s for s in result.metrics["stages"]}
    assert stages["harmless"]["accepted"] is True
    assert stages["harmless"]["noise_scale"] == 0.0
    assert stages["destroy"]["accepted"] is False
    assert "max_metric_drop" in stages["destroy"]["reason"]
    assert result.metrics["final"] == "harmless"
    final = (tmp_path / "run" / "model.onnx").read_bytes()
    assert final == (tmp_path / "run" / stages["harmless"]["artifact"]).read_bytes()
    assert "destroy" in (tmp_path / "run" / "report.md").read_text()
    # each stage says how it compares with the model it started from, measured in this run
    versus = [n for n in stages["destroy"]["notes"] if n.startswith("Against its input (harmless)")]
    assert len(versus) == 1 and "batch 1 p50" in versus[0] and "size" in versus[0]
    # and keeps a plain-text log: progress, notes, the verdict
    base_log = (tmp_path / "run" / "stages" / "00-baseline" / "log.txt").read_text()
    assert (
        "baseline epoch 1: " in base_log
        and "val_loss" in base_log
        and "measuring: latency" in base_log
    )
    log = (tmp_path / "run" / "stages" / "02-destroy" / "log.txt").read_text()
    assert "note: Against its input" in log and "rolled back" in log and "[yellow]" not in log


@pytest.mark.slow
def test_a_rerun_starts_each_stage_log_afresh(tmp_path, recipe_factory, noise_stage):
    recipe = recipe_factory(stages=[{"test_noise": {"scale": 0.0}, "name": "harmless"}])
    for _ in range(2):
        leanml.run(recipe, output=tmp_path / "run")
    log = (tmp_path / "run" / "stages" / "01-harmless" / "log.txt").read_text()
    assert log.count("harmless (test_noise)") == 1


@pytest.mark.slow
def test_a_failing_stage_degrades_to_the_previous_model(
    tmp_path, recipe_factory, noise_stage, validate_metrics
):
    recipe = recipe_factory(stages=[{"test_noise": {"fail": True}, "name": "broken"}])
    result = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(result.metrics)
    assert result.metrics["final"] == "baseline"
    assert result.metrics["failed_stages"][0]["name"] == "broken"
    assert "asked to fail" in result.metrics["failed_stages"][0]["error"]
    assert (tmp_path / "run" / "stages" / "01-broken" / "error.txt").is_file()
    assert (tmp_path / "run" / "model.onnx").is_file()


@pytest.mark.slow
def test_disabled_stage_is_skipped(tmp_path, recipe_factory, noise_stage):
    recipe = recipe_factory(stages=[{"test_noise": {"scale": 5.0}, "enabled": False}])
    result = leanml.run(recipe, output=tmp_path / "run")
    assert [s["name"] for s in result.metrics["stages"]] == ["baseline"]


def test_unknown_stage_lists_the_known_ones(recipe_factory):
    with pytest.raises(
        InvalidInputError, match=r"stages\[0\]: unknown stage kind 'shrink'; known kinds: .*"
    ):
        leanml.load_recipe(recipe_factory(stages=[{"shrink": {}}]))


@pytest.mark.parametrize(
    "change,message",
    [
        ({"train": {"epochs": 0}}, r"train\.epochs must be greater than or equal to 1; got 0"),
        ({"train": {"lr": "fast"}}, r"train\.lr must be a valid number.*got 'fast'"),
        ({"train": {"optimiser": "adam"}}, r"train\.optimiser is not a known key"),
        (
            {"constraints": {"max_metric_drop": -1}},
            r"constraints\.max_metric_drop must be greater than or equal to 0",
        ),
        (
            {"measure": {"batch_sizes": [0]}},
            r"measure\.batch_sizes must be a non-empty list of batch sizes >= 1; got \[0\]",
        ),
        ({"task": {"data": "digits", "metric": "accurcy"}}, r"task\.metric must be one of"),
        ({"colour": "red"}, r"colour is not a known key"),
        ({"seed": -1}, r"seed must be greater than or equal to 0; got -1"),
        ({"seed": 2**32}, r"seed must be less than 4294967296; got 4294967296"),
    ],
)
def test_recipe_errors_name_the_path_the_rule_and_the_value(recipe_factory, change, message):
    with pytest.raises(InvalidInputError, match=message):
        leanml.load_recipe(recipe_factory(**change))


def test_recipe_file_that_is_not_utf8(tmp_path):
    (tmp_path / "m.onnx").write_bytes(b"\x08\x07\x12\x07pytorch\xb5\xff")
    with pytest.raises(InvalidInputError, match=r"not a UTF-8 YAML recipe.*leanml measure"):
        leanml.load_recipe(tmp_path / "m.onnx")
    (tmp_path / "r.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(InvalidInputError, match=r"not a UTF-8 YAML recipe.*save the recipe as"):
        leanml.load_recipe(tmp_path / "r.yaml")


def test_model_args_the_model_rejects(tmp_path, recipe_factory):
    recipe = recipe_factory(task={"model_args": {"width": -1, "depth": 1}})
    with pytest.raises(
        InvalidInputError,
        match=r"model 'cnn' could not be built with task.model_args \{'width': -1, 'depth': 1\}",
    ):
        leanml.run(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run").exists()


def test_negative_class_labels_are_refused(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.ones((60, 3), np.float32), y=np.arange(60) % 3 - 1)
    recipe = leanml.load_recipe({"task": {"data": "npz:d.npz", "model": "mlp"}})
    recipe = recipe.model_copy(update={"base_dir": tmp_path})
    with pytest.raises(InvalidInputError, match=r"class label -1; class labels must be integers"):
        leanml.pipeline.build_task(recipe)


def test_recipe_from_yaml_file_and_relative_paths(tmp_path):
    rng = np.random.default_rng(0)
    np.savez(
        tmp_path / "d.npz",
        x=rng.normal(size=(200, 4)).astype(np.float32),
        y=rng.integers(0, 2, 200),
    )
    (tmp_path / "r.yaml").write_text("task: {data: npz:d.npz, model: mlp}\ntrain: {epochs: 1}\n")
    recipe = leanml.load_recipe(tmp_path / "r.yaml")
    assert recipe.name == "r" and recipe.base_dir == tmp_path
    task = leanml.pipeline.build_task(recipe)
    assert len(task.data.train) + len(task.data.val) + len(task.data.test) == 200


def test_onnx_model_without_labels_is_measured_by_fidelity(
    tmp_path, fast_measure, validate_metrics
):
    net = torch.nn.Sequential(torch.nn.Linear(6, 3)).eval()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(120, 6)).astype(np.float32)
    torch.onnx.export(
        net,
        (torch.from_numpy(x[:2]),),
        str(tmp_path / "m.onnx"),
        dynamo=False,
        input_names=["features"],
        dynamic_axes={"features": {0: "n"}},
    )
    np.savez(tmp_path / "d.npz", features=x)
    np.savez(tmp_path / "x.npz", x=x)
    recipe = {
        "task": {"data": "npz:x.npz", "model": "m.onnx", "metric": "cosine"},
        "measure": fast_measure,
    }
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    result = leanml.run(tmp_path / "r.yaml", output=tmp_path / "run")
    validate_metrics(result.metrics)
    assert result.metrics["stages"][0]["metric"] == pytest.approx(1.0, abs=1e-6)


@pytest.mark.slow
def test_pretrained_weights_skip_training(tmp_path, recipe_factory):
    first = leanml.run(recipe_factory(), output=tmp_path / "a")
    recipe = recipe_factory(task={"weights": str(tmp_path / "a" / "model.safetensors")})
    second = leanml.run(recipe, output=tmp_path / "b")
    assert "training" not in second.metrics["stages"][0]
    assert second.metrics["stages"][0]["metric"] == pytest.approx(
        first.metrics["stages"][0]["metric"]
    )


@pytest.mark.slow
def test_pickled_model_needs_trust(tmp_path, recipe_factory):
    net = leanml.models.SmallCNN(1, 10, width=4, depth=1)
    torch.save(net, tmp_path / "m.pt")
    recipe = recipe_factory(task={"model": str(tmp_path / "m.pt")})
    with pytest.raises(InvalidInputError, match="--trust-pickle"):
        leanml.run(recipe, output=tmp_path / "run")
    r = leanml.load_recipe(recipe).model_copy(update={"trust_pickle": True})
    result = leanml.run(r, output=tmp_path / "run2")
    assert result.metrics["stages"][0]["params"] > 0


class _Slower(torch.nn.Module):
    """The same outputs (within 1e-9), from a model that also does a lot of useless work."""

    def __init__(self, net: torch.nn.Module, n_in: int) -> None:
        super().__init__()
        self.net = net
        g = torch.Generator().manual_seed(0)
        self.w1 = torch.nn.Parameter(torch.randn(n_in, 1024, generator=g) * 0.01)
        self.w2 = torch.nn.Parameter(torch.randn(1024, 1024, generator=g) * 0.01)

    def forward(self, x):
        h = torch.relu(x.flatten(1) @ self.w1) @ self.w2
        return self.net(x) + 1e-12 * h.mean()


class _SlowerStage(Stage):
    Config = StageConfig

    def apply(self, model, ctx):
        n_in = int(np.prod(ctx.task.data.input_shape))
        model.torch = _Slower(model.torch, n_in)
        return StageResult(model, notes=["added useless work"])


@pytest.fixture
def latency_by_size(monkeypatch):
    """Every ONNX Runtime call timed by ``measure`` and ``paired_latency_ratio`` takes one
    microsecond per byte of its artifact on a fake clock: latency follows the model's size, with
    no noise, so the gate's decision is deterministic (the real side-by-side comparison of a wider
    model is in bench/foundation.py)."""
    from leanml.measure import _measure, _paired, time_call

    def fake_time_call(fn, **kw):
        session = fn.func.__self__  # partial(session.run, [output], feed)
        cost = Path(session._model_path).stat().st_size * 1e-6
        now = [0.0]

        def call():
            fn()
            now[0] += cost

        return time_call(call, clock=lambda: now[0], **kw)

    for module in (_measure, _paired):
        monkeypatch.setattr(module, "time_call", fake_time_call)


@pytest.fixture
def slower_stage():
    register_stage("test_slower")(_SlowerStage)
    register_stage("test_noise")(_NoiseStage)
    yield
    unregister_stage("test_slower")
    unregister_stage("test_noise")


@pytest.mark.slow
def test_max_latency_ratio_rolls_back_a_stage_measured_slower_side_by_side(
    tmp_path, recipe_factory, slower_stage, latency_by_size, validate_metrics
):
    recipe = recipe_factory(
        stages=[{"test_slower": {}}, {"test_noise": {"scale": 0.0}, "name": "same"}],
        constraints={"max_metric_drop": 0.01, "max_latency_ratio": 1.5},
    )
    result = leanml.run(recipe, output=tmp_path / "run")
    validate_metrics(result.metrics)
    base, slow, same = result.metrics["stages"]
    assert slow["accepted"] is False and slow["metric_delta"] == pytest.approx(0.0, abs=1e-9)
    assert "max_latency_ratio 1.5" in slow["reason"] and "measured side by side" in slow["reason"]
    ratio = slow["size_bytes"] / base["size_bytes"]  # what the fake clock makes of the latency
    assert ratio > 1.5 and f"batch 1 {ratio:.2f}x, batch 8 {ratio:.2f}x" in slow["reason"]
    # the same model again (noise 0) is no slower: kept
    assert same["accepted"] is True and result.metrics["final"] == "same"
    # without the constraint the slower stage is kept: metric is all that counts then
    recipe["constraints"] = {"max_metric_drop": 0.01}
    result = leanml.run(recipe, output=tmp_path / "run2")
    assert result.metrics["stages"][1]["accepted"] is True


@pytest.mark.slow
def test_refit_auto_retrains_a_baseline_no_stage_follows(
    tmp_path, recipe_factory, noise_stage, validate_metrics
):
    """``train.refit: auto`` (the default): a baseline delivered as trained is retrained on
    train+val, and metrics.json and the report say so; with a stage after it, the baseline keeps
    the weights trained without the validation split, which the stage is judged on."""
    alone = leanml.run(recipe_factory(), output=tmp_path / "alone")
    validate_metrics(alone.metrics)
    refit = alone.metrics["stages"][0]["training"]["refit"]
    assert refit["done"] is True and refit["reason"].startswith("refit auto")
    assert refit["rows"] == sum(alone.metrics["task"]["splits"][k] for k in ("train", "val"))
    assert 0.0 < refit["held_out_val_metric"] <= 1.0
    assert (
        "retrained from the same initial weights on train+val"
        in (tmp_path / "alone" / "report.md").read_text()
    )
    staged = leanml.run(
        recipe_factory(stages=[{"test_noise": {"scale": 0.0}, "name": "harmless"}]),
        output=tmp_path / "staged",
    )
    refit = staged.metrics["stages"][0]["training"]["refit"]
    assert refit["done"] is False and "judged on the validation split" in refit["reason"]
    assert "Not refit on train+val" in (tmp_path / "staged" / "report.md").read_text()
