"""The final artifact's copy: checked, atomic, and whole (external data included)."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import torch

from leanml.export import copy_onnx


def test_copy_onnx_brings_the_external_data_it_names(tmp_path):
    net = torch.nn.Sequential(torch.nn.Linear(16, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    x = torch.randn(2, 16)
    src_dir, dst_dir = tmp_path / "stage", tmp_path / "run"
    src_dir.mkdir()
    dst_dir.mkdir()
    torch.onnx.export(net, (x,), str(src_dir / "inline.onnx"), dynamo=False, input_names=["x"])
    model = onnx.load(str(src_dir / "inline.onnx"))
    onnx.save(
        model,
        str(src_dir / "model.onnx"),
        save_as_external_data=True,
        location="weights.bin",
        size_threshold=0,
    )
    copy_onnx(src_dir / "model.onnx", dst_dir / "model.onnx")
    assert (dst_dir / "weights.bin").read_bytes() == (src_dir / "weights.bin").read_bytes()
    out = ort.InferenceSession(str(dst_dir / "model.onnx")).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(out, net(x).detach().numpy(), rtol=1e-4, atol=1e-5)
