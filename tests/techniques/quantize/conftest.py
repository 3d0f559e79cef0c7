"""What the quantize tests share: small trained models (a digits CNN, an MLP with outlier units), models
exported without leanml, and the helpers that quantize and inspect them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import leanml
from leanml.models import Model
from leanml.pipeline import apply_stage, build_task, load_recipe
from leanml.training import TrainConfig, fit

from ...conftest import FAST_MEASURE, tiny_recipe

runner = CliRunner()


def _quantize(model: Model, task, config: dict, **kw):
    return apply_stage("quantize", model, task, config, measure_config=FAST_MEASURE, **kw)


def _kernels(path: Path) -> dict[str, int]:
    """Op types of the graph ONNX Runtime runs, counted here without leanml's own counting code."""
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(path.with_suffix(".optimized.onnx"))
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    counts: dict[str, int] = {}
    for node in onnx.load(opts.optimized_model_filepath).graph.node:
        counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


@pytest.fixture(scope="package", autouse=True)
def _one_torch_thread():
    """Small models train several times faster on one thread when the machine is busy."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="package")
def digits_cnn():
    task = build_task(load_recipe(tiny_recipe(task={"model_args": {"width": 8, "depth": 2}})))
    torch.manual_seed(0)
    net = task.build_torch_model()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=6, lr=0.01), seed=0)
    return task, Model(torch=net)


class TwoLayer(nn.Module):
    def __init__(self, n_in: int = 64, n_out: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.fc1 = nn.Linear(n_in, hidden)
        self.fc2 = nn.Linear(hidden, n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x.flatten(1))))


@pytest.fixture(scope="package")
def outlier_mlp():
    """A trained MLP whose hidden layer has four outlier units, 300x the others: the float function
    is unchanged (fc2 divides them back), but one per-tensor int8 scale for fc2's input flattens
    every ordinary unit. This is the wide-activation-range case static PTQ cannot handle."""
    task = build_task(load_recipe(tiny_recipe(task={"model": "mlp", "model_args": {}})))
    torch.manual_seed(0)
    net = TwoLayer()
    fit(net, task.data.train, task.data.val, task.metric, TrainConfig(epochs=25, lr=3e-3), seed=0)
    with torch.no_grad():
        net.fc1.weight[:4] *= 300.0
        net.fc1.bias[:4] *= 300.0
        net.fc2.weight[:, :4] /= 300.0
    return task, Model(torch=net)


class _AddBranchOutlier(nn.Module):
    """A conv net whose outlier sits in an Add branch: a constant 200 on one channel of the sum the
    head reads. The head ignores that channel, but one uint8 scale for the whole sum rounds the
    other channels (about 1) to steps of 0.8. No Conv's weights or inputs carry the outlier."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 1)
        self.head = nn.Conv2d(8, 6, 1)
        offset = torch.zeros(1, 8, 1, 1)
        offset[0, 0] = 200.0
        self.register_buffer("offset", offset)
        with torch.no_grad():
            self.head.weight[:, 0] = 0.0
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        return torch.flatten(self.head(a + self.branch(a) + self.offset), 1)


def _plain_export(net: nn.Module, path: Path, shape: tuple[int, ...], opset: int = 17) -> Path:
    """torch.onnx.export with no leanml code: a model leanml did not produce."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net.eval(),
            (torch.zeros(2, *shape),),
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=["pixels"],
            output_names=["logits"],
            dynamic_axes={"pixels": {0: "n"}, "logits": {0: "n"}},
        )
    return path


@pytest.fixture(scope="package")
def foreign_model(tmp_path_factory, digits_cnn):
    """A digits CNN exported with plain torch.onnx.export, and its data as NPZ files."""
    task, model = digits_cnn
    folder = tmp_path_factory.mktemp("foreign")
    _plain_export(model.torch, folder / "cnn.onnx", (1, 8, 8))
    np.savez(folder / "calib.npz", pixels=task.data.train.x[:200], y=task.data.train.y[:200])
    np.savez(folder / "eval.npz", pixels=task.data.test.x, y=task.data.test.y)
    np.savez(folder / "calib_x.npz", x=task.data.train.x[:200])
    np.savez(folder / "eval_x.npz", x=task.data.test.x)
    return folder


class _Embedder(nn.Module):
    """Token ids -> a vector per sequence: an embedding table much larger than the layers after it."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(2000, 64)
        self.proj = nn.Linear(64, 64)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.proj(self.embed(ids)).mean(1)


@pytest.fixture(scope="package")
def embedder_onnx(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("embedder") / "embedder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _Embedder().eval(),
            (torch.zeros(2, 16, dtype=torch.long),),
            str(path),
            dynamo=False,
            input_names=["ids"],
            dynamic_axes={"ids": {0: "n", 1: "seq"}},
        )
    return path


def _embedder_quantize(path: Path, exclude=()):
    ids = np.random.default_rng(0).integers(0, 2000, size=(64, 16))
    return leanml.quantize(
        path,
        data=(ids, None),
        mode="dynamic",
        metric="cosine",  # the model's output is an embedding: cosine to the float model's
        sensitivity=False,
        exclude=list(exclude),
        measure=FAST_MEASURE,
    )
