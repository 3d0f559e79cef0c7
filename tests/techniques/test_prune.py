"""The prune stage: each kind, the gradual schedule, sensitivity, honest notes, bad input, a pipeline run."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch
from torch import nn

import leanml
from leanml.constraints import Constraints
from leanml.data import Dataset, Split, take
from leanml.errors import InvalidInputError
from leanml.measure import MeasureConfig
from leanml.models import Model, SmallCNN
from leanml.pipeline import PipelineContext, Reporter, build_task, load_recipe
from leanml.runtime import OnnxRunner, torch_to_onnx
from leanml.task import make_task
from leanml.techniques import get_stage_class
from leanml.training import TrainConfig, fit, predict

from ..conftest import FAST_MEASURE

ONE_EPOCH = {"epochs": 1}


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small models train fastest on one thread, and the machine's other cores stay free."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _trained(data: str, model: str, model_args: dict, epochs: int) -> tuple[nn.Module, Dataset]:
    task = build_task(
        load_recipe({"task": {"data": data, "model": model, "model_args": model_args}})
    )
    torch.manual_seed(0)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=epochs, lr=0.01))
    return net, task.data


@pytest.fixture(scope="module")
def digits_cnn() -> tuple[nn.Module, Dataset]:
    return _trained("digits", "cnn", {"width": 8}, epochs=4)


@pytest.fixture(scope="module")
def mobilenet() -> tuple[nn.Module, Dataset]:
    return _trained("digits", "mobilenet", {"width": 0.5, "depth": 2, "expansion": 2}, epochs=1)


@pytest.fixture(scope="module")
def cancer_mlp() -> tuple[nn.Module, Dataset]:
    return _trained("breast_cancer", "mlp", {"width": 32}, epochs=8)


def _prune(net_data: tuple[nn.Module, Dataset], **kw):
    net, data = net_data
    kw.setdefault("finetune", ONE_EPOCH)
    kw.setdefault("sensitivity", False)
    return leanml.prune(
        net, data=data, train={"epochs": 1, "lr": 0.005}, measure=FAST_MEASURE, **kw
    )


def _onnx_matches(out, data: Dataset) -> None:
    """The artifact runs in ONNX Runtime and agrees with the pruned PyTorch model."""
    x = take(data.test.x, slice(0, 32))
    got = OnnxRunner(out.artifact).predict(x)
    np.testing.assert_allclose(got, predict(out.model.torch, x), rtol=1e-3, atol=1e-4)


# -- structured kinds ------------------------------------------------------------------------------


def test_channel_pruning_shrinks_the_cnn(digits_cnn):
    out = _prune(digits_cnn, kind="channel", amount=0.5, finetune={"epochs": 3, "lr": 0.01})
    net = out.model.torch
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [4, 4, 8, 8]
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert [b.num_features for b in bns] == [4, 4, 8, 8]
    assert net.classifier.in_features == 8
    assert out.after.params < out.before.params / 2
    assert out.after.flops < out.before.flops / 2
    assert out.after.size_bytes < out.before.size_bytes
    rows = {r["layer"]: r for r in out.result.details["per_layer_sparsity"]}
    assert rows["features.0.0"]["shape_before"] == [8, 1, 3, 3]
    assert rows["features.0.0"]["shape_after"] == [4, 1, 3, 3]
    assert rows["classifier"]["shape_after"] == [10, 8]
    _onnx_matches(out, digits_cnn[1])
    assert out.before.metric - out.after.metric < 0.3  # fine-tuning recovers most of it


def test_mobilenet_channel_pruning_keeps_depthwise_and_residuals_consistent(mobilenet):
    out = _prune(mobilenet, kind="channel", amount=0.5, importance="taylor", scope="global")
    net = out.model.torch
    for m in net.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels  # depthwise stays depthwise
    for block in net.blocks:
        if block.use_residual:
            assert block.conv[-1][0].out_channels == block.conv[0][0].in_channels
    assert out.after.params < out.before.params
    assert out.after.flops < out.before.flops
    _onnx_matches(out, mobilenet[1])


@pytest.mark.parametrize(("round_to", "expected"), [(8, [8, 8, 24, 24]), (None, [11, 11, 22, 22])])
def test_round_to_keeps_channel_counts_in_blocks(digits_cnn, round_to, expected):
    net = SmallCNN(
        1, 10, width=16
    )  # layers of 16 and 32 channels; the structure is what counts here
    out = leanml.prune(
        net,
        data=digits_cnn[1],
        kind="channel",
        amount=0.3,
        round_to=round_to,
        finetune=False,
        sensitivity=False,
        measure=FAST_MEASURE,
    )
    convs = [m for m in out.model.torch.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == expected


def test_neuron_pruning_removes_units_and_the_next_layers_inputs(cancer_mlp):
    out = _prune(cancer_mlp, kind="neuron", amount=0.5, importance="l1", protect=["first"])
    body = out.model.torch.body
    assert body[0].out_features == 32  # protected
    assert body[2].out_features == 16
    assert out.model.torch.head.in_features == 16
    assert out.after.params < out.before.params
    _onnx_matches(out, cancer_mlp[1])


def test_layer_pruning_drops_residual_blocks(mobilenet):
    out = _prune(mobilenet, kind="layer", amount=0.5, importance="taylor")
    details = out.result.details
    residual = [f"blocks.{i}" for i, b in enumerate(mobilenet[0].blocks) if b.use_residual]
    assert details["candidate_blocks"] == residual
    assert len(details["dropped_blocks"]) == round(0.5 * len(residual))
    for name in details["dropped_blocks"]:
        assert isinstance(out.model.torch.get_submodule(name), nn.Identity)
    assert out.after.flops < out.before.flops
    _onnx_matches(out, mobilenet[1])


def test_layer_pruning_removes_bert_encoder_layers(tmp_path):
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=64,
        hidden_size=16,
        num_hidden_layers=4,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
    )

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = transformers.BertModel(config, add_pooling_layer=False)

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    torch.manual_seed(0)
    net = Encoder().eval()
    rng = np.random.default_rng(0)

    def split(n: int) -> Split:
        x = {
            "input_ids": rng.integers(1, 64, (n, 8)).astype(np.int64),
            "attention_mask": np.ones((n, 8), np.int64),
        }
        return Split(x, predict(net, x).astype(np.float32))

    data = Dataset("tokens", "other", split(48), split(16), split(16))
    out = leanml.prune(
        net,
        data=data,
        metric="cosine",
        kind="layer",
        amount=0.5,
        finetune=False,
        measure=FAST_MEASURE,
    )
    pruned = out.model.torch.bert
    assert len(pruned.encoder.layer) == 2
    assert pruned.config.num_hidden_layers == 2
    assert len(out.result.details["dropped_blocks"]) == 2
    assert out.after.params < out.before.params
    assert out.after.metric > 0.5  # the shortened encoder still runs and tracks the original
    _onnx_matches(out, data)

    # The bare BertModel (HF output object, keyword inputs) prunes the same way through the stage itself.
    bare = copy.deepcopy(net.bert)
    task = make_task(data, metric="cosine", model="bert")
    stage = get_stage_class("prune")(
        get_stage_class("prune").Config.model_validate(
            {"kind": "layer", "amount": 0.5, "finetune": None}
        )
    )
    ctx = PipelineContext(
        task=task,
        train_config=TrainConfig(),
        measure_config=MeasureConfig(**FAST_MEASURE),
        seed=0,
        work_dir=tmp_path,
        constraints=Constraints(max_metric_drop=0.01),
        baseline_val_metric=1.0,
        recipe={},
        stage_index=0,
        reporter=Reporter(),
    )
    result = stage.apply(Model(torch=bare), ctx)
    assert len(result.model.torch.encoder.layer) == 2
    hidden = predict(result.model.torch, take(data.test.x, slice(0, 4)))
    assert hidden.shape == (4, 8, 16)


# -- sparse kinds ----------------------------------------------------------------------------------


def _weights(net: nn.Module) -> dict[str, torch.Tensor]:
    return {
        n: m.weight.detach()
        for n, m in net.named_modules()
        if isinstance(m, (nn.Linear, nn.Conv2d))
    }


def test_unstructured_global_with_protected_layers_leaves_dense_zeros(cancer_mlp):
    out = _prune(
        cancer_mlp, kind="unstructured", amount=0.8, scope="global", protect=["first", "last"]
    )
    net = out.model.torch
    w = _weights(net)
    assert float((w["body.0"] == 0).float().mean()) == 0.0
    assert float((w["head"] == 0).float().mean()) == 0.0
    assert float((w["body.2"] == 0).float().mean()) == pytest.approx(0.8, abs=1e-3)
    assert not any(k.endswith(("_orig", "_mask")) for k in net.state_dict())  # masks baked in
    assert out.after.params == out.before.params
    assert out.after.nonzero_params < out.before.nonzero_params
    details = out.result.details
    assert details["compressed_bytes_after"] < details["compressed_bytes_before"]
    assert any("does not make the model faster" in n for n in out.result.notes)
    _onnx_matches(out, cancer_mlp[1])


def test_unstructured_local_prunes_each_layer_alike(digits_cnn):
    out = _prune(digits_cnn, kind="unstructured", amount=0.5, scope="local", importance="random")
    for name, w in _weights(out.model.torch).items():
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02), name


def test_n_m_keeps_n_of_every_m_inputs(cancer_mlp):
    out = _prune(cancer_mlp, kind="n_m", n_m=(2, 4))
    w = _weights(out.model.torch)
    for name in ("body.2", "head"):
        groups = (w[name] != 0).reshape(-1, 4).sum(1)
        assert int(groups.max()) <= 2, name
    assert bool((w["body.0"] != 0).all())  # 30 inputs: not a multiple of 4, left whole
    assert "body.0" in out.result.details["skipped_layers"]


def test_n_m_on_conv_weights_groups_input_channels(digits_cnn):
    out = _prune(digits_cnn, kind="n_m", n_m=(1, 4), finetune=False)
    conv = out.model.torch.features[1][0].weight.detach()  # [8, 8, 3, 3]
    per_group = (conv.permute(0, 2, 3, 1) != 0).reshape(-1, 4).sum(1)
    assert int(per_group.max()) <= 1


# -- schedule and sensitivity ----------------------------------------------------------------------


def test_gradual_schedule_follows_the_cubic_curve_and_zeros_stay_zero(cancer_mlp):
    out = _prune(
        cancer_mlp,
        kind="unstructured",
        amount=0.9,
        scope="global",
        schedule={"steps": 3},
        finetune={"epochs": 2},
    )
    history = out.result.details["schedule"]["history"]
    targets = [h["target"] for h in history]
    assert targets == pytest.approx([0.9 * (1 - (1 - k / 3) ** 3) for k in (1, 2, 3)], abs=1e-4)
    assert [h["achieved"] for h in history] == pytest.approx(targets, abs=1e-3)
    w = torch.cat([t.flatten() for t in _weights(out.model.torch).values()])
    assert float((w == 0).float().mean()) == pytest.approx(0.9, abs=1e-3)
    assert any(p.title.startswith("Gradual") for p in out.result.plots)


def test_gradual_channel_pruning_reaches_the_target(digits_cnn):
    out = _prune(digits_cnn, kind="channel", amount=0.5, schedule={"steps": 2})
    history = out.result.details["schedule"]["history"]
    assert len(history) == 2
    assert history[0]["achieved"] < history[1]["achieved"] == pytest.approx(0.5)


def test_sensitivity_analysis_and_scope(cancer_mlp):
    out = _prune(cancer_mlp, kind="unstructured", amount=0.6, scope="sensitivity", finetune=False)
    details = out.result.details
    layers = details["sensitivity"]["layers"]
    assert set(layers) == {"body.0", "body.2", "head"}
    for v in layers.values():  # the configured ratios, plus the amount itself for scope sensitivity
        assert v["ratios"] == [0.25, 0.5, 0.6, 0.75, 0.9] and len(v["drop"]) == 5
    ratios = details["layer_ratios"]
    sizes = {r["layer"]: r["params_before"] for r in details["per_layer_sparsity"]}
    overall = sum(ratios[n] * sizes[n] for n in ratios) / sum(sizes.values())
    assert overall == pytest.approx(0.6, abs=1e-3)
    w = torch.cat([t.flatten() for t in _weights(out.model.torch).values()])
    assert float((w == 0).float().mean()) == pytest.approx(0.6, abs=2e-3)
    worst = max(layers, key=lambda n: layers[n]["drop"][-1])
    best = min(layers, key=lambda n: layers[n]["drop"][-1])
    if layers[worst]["drop"][-1] > layers[best]["drop"][-1]:
        assert ratios[worst] <= ratios[best]
    assert any(p.title.startswith("Sensitivity") for p in out.result.plots)


def test_channel_sensitivity_probes_each_layer_without_changing_the_model(digits_cnn):
    net = digits_cnn[0]
    before = {k: v.clone() for k, v in net.state_dict().items()}
    out = _prune(digits_cnn, kind="channel", amount=0.25, scope="sensitivity", finetune=False)
    layers = out.result.details["sensitivity"]["layers"]
    assert set(layers) == {"features.0.0", "features.1.0", "features.3.0", "features.4.0"}
    assert all(np.all(np.isfinite(v["drop"])) for v in layers.values())
    for k, v in net.state_dict().items():  # the caller's model is untouched
        assert torch.equal(v, before[k]), k


# -- bad input -------------------------------------------------------------------------------------


def test_amount_outside_the_open_interval_names_the_key(cancer_mlp):
    with pytest.raises(InvalidInputError, match=r"^prune\.amount must be in \(0, 1\); got 1\.5$"):
        _prune(cancer_mlp, kind="unstructured", amount=1.5)
    recipe = {"task": {"data": "digits"}, "stages": [{"prune": {"amount": 0.0}}]}
    with pytest.raises(
        InvalidInputError, match=r"^stages\[0\]\.prune\.amount must be in \(0, 1\); got 0\.0$"
    ):
        load_recipe(recipe)
    with pytest.raises(InvalidInputError, match=r"stages\[0\]\.prune\.kind must be one of"):
        load_recipe({"task": {"data": "digits"}, "stages": [{"prune": {"kind": "filters"}}]})


def test_channel_on_an_mlp_says_what_layers_exist(cancer_mlp, tmp_path):
    with pytest.raises(InvalidInputError, match=r"needs|removes Conv filters") as err:
        _prune(cancer_mlp, kind="channel")
    assert "3 Linear (body.0, body.2, head)" in str(err.value) and "neuron" in str(err.value)
    recipe = {
        "task": {"data": "breast_cancer", "model": "mlp"},
        "train": {"epochs": 1},
        "stages": [{"prune": {"kind": "channel"}}],
    }
    with pytest.raises(InvalidInputError, match="Linear"):
        leanml.run(recipe, output=tmp_path / "run")
    assert not (tmp_path / "run" / "metrics.json").exists()  # refused before the baseline trained


def test_onnx_only_model_needs_the_pytorch_model(digits_cnn, tmp_path):
    net, data = digits_cnn
    path = tmp_path / "model.onnx"
    torch_to_onnx(net, data.val.x, path)
    with pytest.raises(InvalidInputError, match="prune needs the PyTorch model"):
        leanml.prune(path, data=data, kind="channel")
    recipe = {
        "task": {"data": "digits", "model": str(path)},
        "stages": [{"prune": {"kind": "unstructured"}}],
    }
    with pytest.raises(InvalidInputError, match="prune needs the PyTorch model"):
        leanml.run(recipe, output=tmp_path / "run")


class _NoGrad(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.fc(self.conv2(self.conv1(x)).mean((2, 3)))


class _Scale(nn.Module):
    """A per-channel scale stored as a buffer: Torch-Pruning does not know to shrink it."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.register_buffer("s", torch.ones(1, n, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.s


class _Scaled(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.scale = _Scale(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv2(self.scale(self.conv1(x))).mean((2, 3)))


def test_untraceable_model_fails_with_one_line(digits_cnn):
    data = digits_cnn[1]
    with pytest.raises(InvalidInputError, match="Torch-Pruning cannot trace the model") as err:
        leanml.prune(_NoGrad(), data=data, kind="channel", finetune=False, measure=FAST_MEASURE)
    assert "\n" not in str(err.value)
    with pytest.raises(InvalidInputError, match=r"at layer 'scale' \(_Scale\)") as err:
        leanml.prune(
            _Scaled(),
            data=data,
            kind="channel",
            finetune=False,
            sensitivity=False,
            measure=FAST_MEASURE,
        )
    assert "\n" not in str(err.value)


def test_layer_kind_without_blocks_and_neuron_without_hidden_layers(digits_cnn):
    net, data = digits_cnn
    with pytest.raises(InvalidInputError, match="kind 'neuron'.*Conv2d"):
        leanml.prune(net, data=data, kind="neuron", measure=FAST_MEASURE)
    with pytest.raises(InvalidInputError, match="kind 'layer'"):
        leanml.prune(_Scaled(), data=data, kind="layer", measure=FAST_MEASURE)


# -- a whole run -----------------------------------------------------------------------------------


@pytest.mark.slow
def test_pipeline_with_a_prune_stage_writes_valid_metrics(tmp_path, validate_metrics):
    recipe = {
        "name": "prune-test",
        "task": {"data": "digits", "model": "cnn", "model_args": {"width": 8}},
        "train": {"epochs": 3, "lr": 0.01},
        "measure": FAST_MEASURE,
        "constraints": {"max_metric_drop": 1.0},
        "stages": [{"prune": {"kind": "channel", "amount": 0.5, "finetune": ONE_EPOCH}}],
        "export": {"formats": ["onnx"]},
    }
    result = leanml.run(recipe, output=tmp_path / "run")
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    validate_metrics(metrics)
    stage = metrics["stages"][1]
    assert stage["kind"] == "prune" and stage["accepted"]
    assert stage["params"] < metrics["stages"][0]["params"]
    assert stage["flops"] < metrics["stages"][0]["flops"]
    assert isinstance(result.model, Model) and result.model.torch is not None
