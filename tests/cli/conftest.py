"""Fixtures the CLI tests share."""

from __future__ import annotations

from pathlib import Path

import pytest


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
